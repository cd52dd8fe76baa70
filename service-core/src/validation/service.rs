//! Service validation, rule for rule as `ValidateService` and `ValidateServiceUpdate` in
//! `pkg/apis/core/validation/validation.go`.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use super::field::{BadValue, FieldError, Path, ValidationError};
use super::{meta, names};
use crate::model::{
    IntOrString, IpFamily, IpFamilyPolicy, LB_SOURCE_RANGES_ANNOTATION, LoadBalancerIpMode,
    MAX_CLIENT_IP_AFFINITY_SECONDS, Protocol, Service, ServiceType, SessionAffinity,
    TOPOLOGY_AWARE_HINTS_ANNOTATION, TOPOLOGY_MODE_ANNOTATION, TrafficDistribution, TrafficPolicy,
};
use crate::valid::{
    ClusterIps, LoadBalancerIngressIp, ServiceKey, TargetPort, ValidService, ValidServicePort,
};

const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";

fn valid_port(p: i32) -> bool {
    (1..=65535).contains(&p)
}

fn is_headless(svc: &Service) -> bool {
    svc.spec.cluster_ips.len() == 1 && svc.spec.cluster_ips[0] == "None"
}

fn type_is(svc: &Service, t: &ServiceType) -> bool {
    svc.spec.type_.as_ref() == Some(t)
}

/// `apiservice.ExternallyAccessible` on the wire object.
fn externally_accessible(svc: &Service) -> bool {
    type_is(svc, &ServiceType::LoadBalancer)
        || type_is(svc, &ServiceType::NodePort)
        || (type_is(svc, &ServiceType::ClusterIp) && !svc.spec.external_ips.is_empty())
}

fn needs_health_check(svc: &Service) -> bool {
    type_is(svc, &ServiceType::LoadBalancer)
        && svc.spec.external_traffic_policy == Some(TrafficPolicy::Local)
}

/// Validates a Service as the API server does on create, and returns the validated model.
///
/// The object should have been defaulted first ([`crate::defaults::service`]); an object read
/// back from a cluster (`kubectl get -o yaml`) already is.
pub fn validate_service(svc: &Service) -> Result<ValidService, ValidationError> {
    let errs = service_errors(svc);
    if !errs.is_empty() {
        return Err(ValidationError::new("Service", svc.metadata.name(), errs));
    }
    Ok(build_valid(svc))
}

/// Validates an update of `old` to `new` (`ValidateServiceUpdate`): the create rules plus
/// the immutability rules for cluster IPs, IP families, the load-balancer class and the
/// health-check node port.
pub fn validate_service_update(
    new: &Service,
    old: &Service,
) -> Result<ValidService, ValidationError> {
    let mut errs = update_errors(new, old);
    errs.extend(service_errors(new));
    if !errs.is_empty() {
        return Err(ValidationError::new("Service", new.metadata.name(), errs));
    }
    Ok(build_valid(new))
}

/// Every field error of a Service, in the API server's order.
pub fn service_errors(svc: &Service) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = &svc.spec;
    let spec_path = Path::new("spec");

    meta::object_meta(&svc.metadata, names::dns1035_label, &mut errs);

    // Topology annotations must agree when both are set.
    if let (Some(mode), Some(hints)) = (
        svc.metadata.annotation(TOPOLOGY_MODE_ANNOTATION),
        svc.metadata.annotation(TOPOLOGY_AWARE_HINTS_ANNOTATION),
    ) && mode != hints
    {
        errs.push(FieldError::invalid(
            &Path::new("metadata")
                .child("annotations")
                .key(TOPOLOGY_MODE_ANNOTATION),
            mode,
            &format!(
                "must match annotations[{TOPOLOGY_AWARE_HINTS_ANNOTATION}] when both are specified"
            ),
        ));
    }

    let headless = is_headless(svc);
    if spec.ports.is_empty() && !headless && !type_is(svc, &ServiceType::ExternalName) {
        errs.push(FieldError::required(&spec_path.child("ports"), ""));
    }

    match &spec.type_ {
        Some(ServiceType::LoadBalancer) if headless => errs.push(FieldError::invalid(
            &spec_path.child("clusterIPs").index(0),
            "None",
            "may not be set to 'None' for LoadBalancer services",
        )),
        Some(ServiceType::NodePort) if headless => errs.push(FieldError::invalid(
            &spec_path.child("clusterIPs").index(0),
            "None",
            "may not be set to 'None' for NodePort services",
        )),
        Some(ServiceType::ExternalName) => {
            if !spec.cluster_ips.is_empty() {
                errs.push(FieldError::forbidden(
                    &spec_path.child("clusterIPs"),
                    "may not be set for ExternalName services",
                ));
            }
            if !spec.ip_families.is_empty() {
                errs.push(FieldError::forbidden(
                    &spec_path.child("ipFamilies"),
                    "may not be set for ExternalName services",
                ));
            }
            if spec.ip_family_policy.is_some() {
                errs.push(FieldError::forbidden(
                    &spec_path.child("ipFamilyPolicy"),
                    "may not be set for ExternalName services",
                ));
            }
            let name = spec.external_name.as_deref().unwrap_or("");
            let cname = name.strip_suffix('.').unwrap_or(name);
            if cname.is_empty() {
                errs.push(FieldError::required(&spec_path.child("externalName"), ""));
            } else {
                for msg in names::dns1123_subdomain(cname) {
                    errs.push(FieldError::invalid(
                        &spec_path.child("externalName"),
                        cname,
                        &msg,
                    ));
                }
            }
        }
        _ => {}
    }

    let ports_path = spec_path.child("ports");
    let mut port_names = HashSet::new();
    let require_name = spec.ports.len() > 1;
    for (i, sp) in spec.ports.iter().enumerate() {
        let path = ports_path.index(i);
        let name = sp.name();
        if require_name && name.is_empty() {
            errs.push(FieldError::required(&path.child("name"), ""));
        } else if !name.is_empty() {
            for msg in names::dns1123_label(name) {
                errs.push(FieldError::invalid(&path.child("name"), name, &msg));
            }
            if !port_names.insert(name) {
                errs.push(FieldError::duplicate(&path.child("name"), name));
            }
        }
        if !valid_port(sp.port) {
            errs.push(FieldError::invalid(
                &path.child("port"),
                sp.port,
                PORT_RANGE,
            ));
        }
        match &sp.protocol {
            None => errs.push(FieldError::required(&path.child("protocol"), "")),
            Some(p) if !p.is_known() => errs.push(FieldError::not_supported(
                &path.child("protocol"),
                p.as_str(),
                Protocol::KNOWN,
            )),
            Some(_) => {}
        }
        port_num_or_name(
            sp.target_port.as_ref().unwrap_or(&IntOrString::Int(0)),
            &path.child("targetPort"),
            &mut errs,
        );
        if let Some(app) = &sp.app_protocol {
            for msg in names::qualified_name(app) {
                errs.push(FieldError::invalid(&path.child("appProtocol"), app, &msg));
            }
        }
    }

    if let Some(selector) = &spec.selector {
        meta::labels_map(selector, &spec_path.child("selector"), &mut errs);
    }

    let affinity_path = spec_path.child("sessionAffinity");
    match &spec.session_affinity {
        None => errs.push(FieldError::required(&affinity_path, "")),
        Some(a) if !a.is_known() => errs.push(FieldError::not_supported(
            &affinity_path,
            a.as_str(),
            SessionAffinity::KNOWN,
        )),
        Some(SessionAffinity::ClientIp) => client_ip_config(svc, &mut errs),
        Some(_) => {
            if spec.session_affinity_config.is_some() {
                errs.push(FieldError::forbidden(
                    &spec_path.child("sessionAffinityConfig"),
                    "must not be set when session affinity is None",
                ));
            }
        }
    }

    cluster_ips_related(svc, &mut errs);

    let ext_path = spec_path.child("externalIPs");
    for (i, ip) in spec.external_ips.iter().enumerate() {
        let path = ext_path.index(i);
        match names::parse_ip_sloppy(ip) {
            None => errs.push(FieldError::invalid(&path, ip, names::INVALID_IP)),
            Some(parsed) => {
                for msg in names::non_special_ip(ip, parsed) {
                    errs.push(FieldError::invalid(&path, ip, &msg));
                }
            }
        }
    }

    match &spec.type_ {
        None => errs.push(FieldError::required(&spec_path.child("type"), "")),
        Some(t) if !t.is_known() => errs.push(FieldError::not_supported(
            &spec_path.child("type"),
            t.as_str(),
            ServiceType::KNOWN,
        )),
        Some(_) => {}
    }

    if type_is(svc, &ServiceType::ClusterIp) {
        for (i, sp) in spec.ports.iter().enumerate() {
            if sp.node_port.unwrap_or(0) != 0 {
                errs.push(FieldError::forbidden(
                    &ports_path.index(i).child("nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
    }

    // Duplicate node ports, per protocol (TCP and UDP may share one).
    let mut node_ports = HashSet::new();
    for (i, sp) in spec.ports.iter().enumerate() {
        let np = sp.node_port.unwrap_or(0);
        if np == 0 {
            continue;
        }
        if !node_ports.insert((sp.protocol.clone(), np)) {
            errs.push(FieldError::duplicate(
                &ports_path.index(i).child("nodePort"),
                np,
            ));
        }
    }

    // Duplicate (protocol, port) pairs.
    let mut ports = HashSet::new();
    for (i, sp) in spec.ports.iter().enumerate() {
        if !ports.insert((sp.protocol.clone(), sp.port)) {
            let proto = sp.protocol.as_ref().map_or("", Protocol::as_str);
            errs.push(FieldError::duplicate(
                &ports_path.index(i),
                BadValue::Raw(format!(
                    "core.ServicePort{{Name:\"\", Protocol:\"{proto}\", AppProtocol:(*string)(nil), Port:{}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}",
                    sp.port
                )),
            ));
        }
    }

    source_ranges(svc, &mut errs);

    if type_is(svc, &ServiceType::LoadBalancer) {
        if spec.allocate_load_balancer_node_ports.is_none() {
            // The path has no `spec.` prefix in Kubernetes too.
            errs.push(FieldError::required(
                &Path::new("allocateLoadBalancerNodePorts"),
                "",
            ));
        }
    } else if spec.allocate_load_balancer_node_ports.is_some() {
        errs.push(FieldError::forbidden(
            &spec_path.child("allocateLoadBalancerNodePorts"),
            "may only be used when `type` is 'LoadBalancer'",
        ));
    }

    if let Some(class) = &spec.load_balancer_class {
        let path = spec_path.child("loadBalancerClass");
        if type_is(svc, &ServiceType::LoadBalancer) {
            for msg in names::qualified_name(class) {
                errs.push(FieldError::invalid(&path, class, &msg));
            }
        } else {
            errs.push(FieldError::forbidden(
                &path,
                "may only be used when service type is 'LoadBalancer'",
            ));
        }
    }

    external_traffic_policy(svc, &mut errs);

    let itp_path = spec_path.child("internalTrafficPolicy");
    match &spec.internal_traffic_policy {
        None => {
            if matches!(
                spec.type_,
                Some(ServiceType::ClusterIp | ServiceType::NodePort | ServiceType::LoadBalancer)
            ) {
                errs.push(FieldError::required(&itp_path, ""));
            }
        }
        Some(p) if !p.is_known() => errs.push(FieldError::not_supported(
            &itp_path,
            p.as_str(),
            TrafficPolicy::KNOWN,
        )),
        Some(_) => {}
    }

    if let Some(td) = &spec.traffic_distribution
        && !td.is_known()
    {
        errs.push(FieldError::not_supported(
            &spec_path.child("trafficDistribution"),
            td.as_str(),
            TrafficDistribution::KNOWN,
        ));
    }

    load_balancer_status(svc, &mut errs);
    errs
}

/// `ValidatePortNumOrName`.
fn port_num_or_name(port: &IntOrString, path: &Path, errs: &mut Vec<FieldError>) {
    match port {
        IntOrString::Int(n) => {
            if !valid_port(*n) {
                errs.push(FieldError::invalid(path, *n, PORT_RANGE));
            }
        }
        IntOrString::String(s) => {
            for msg in names::port_name(s) {
                errs.push(FieldError::invalid(path, s, &msg));
            }
        }
    }
}

fn client_ip_config(svc: &Service, errs: &mut Vec<FieldError>) {
    let path = Path::new("spec").child("sessionAffinityConfig");
    let why = "when session affinity type is ClientIP";
    let Some(config) = &svc.spec.session_affinity_config else {
        errs.push(FieldError::required(&path, why));
        return;
    };
    let Some(client_ip) = &config.client_ip else {
        errs.push(FieldError::required(&path.child("clientIP"), why));
        return;
    };
    let timeout_path = path.child("clientIP").child("timeoutSeconds");
    match client_ip.timeout_seconds {
        None => errs.push(FieldError::required(&timeout_path, why)),
        Some(t) if t <= 0 || t > MAX_CLIENT_IP_AFFINITY_SECONDS => errs.push(FieldError::invalid(
            &timeout_path,
            t,
            &format!("must be greater than 0 and less than {MAX_CLIENT_IP_AFFINITY_SECONDS}"),
        )),
        Some(_) => {}
    }
}

/// `ValidateServiceClusterIPsRelatedFields`.
pub(crate) fn cluster_ips_related(svc: &Service, errs: &mut Vec<FieldError>) {
    let spec = &svc.spec;
    if type_is(svc, &ServiceType::ExternalName) {
        return;
    }
    let spec_path = Path::new("spec");
    let ips_path = spec_path.child("clusterIPs");
    let fam_path = spec_path.child("ipFamilies");

    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    if !cluster_ip.is_empty() {
        if spec.cluster_ips.is_empty() {
            errs.push(FieldError::required(&ips_path, ""));
        } else if spec.cluster_ips[0] != cluster_ip {
            errs.push(FieldError::invalid(
                &ips_path,
                &spec.cluster_ips[..],
                "first value must match `clusterIP`",
            ));
        }
    } else if !spec.cluster_ips.is_empty() {
        errs.push(FieldError::invalid(
            &ips_path,
            &spec.cluster_ips[..],
            "must be empty when `clusterIP` is not specified",
        ));
    }

    let mut seen = Vec::new();
    for (i, fam) in spec.ip_families.iter().enumerate() {
        if !fam.is_known() {
            errs.push(FieldError::not_supported(
                &fam_path.index(i),
                fam.as_str(),
                IpFamily::KNOWN,
            ));
        }
        if seen.contains(&fam) {
            errs.push(FieldError::duplicate(&fam_path.index(i), fam.as_str()));
        }
        seen.push(fam);
    }

    if let Some(policy) = &spec.ip_family_policy
        && !policy.is_known()
    {
        errs.push(FieldError::not_supported(
            &spec_path.child("ipFamilyPolicy"),
            policy.as_str(),
            IpFamilyPolicy::KNOWN,
        ));
    }

    let mut has_invalid = false;
    let mut parsed = Vec::new();
    for (i, ip) in spec.cluster_ips.iter().enumerate() {
        if i == 0 && ip == "None" {
            if spec.cluster_ips.len() > 1 {
                has_invalid = true;
                errs.push(FieldError::invalid(
                    &ips_path,
                    &spec.cluster_ips[..],
                    "'None' must be the first and only value",
                ));
            }
            continue;
        }
        match names::parse_ip_sloppy(ip) {
            Some(p) => parsed.push(p),
            None => {
                has_invalid = true;
                errs.push(FieldError::invalid(
                    &ips_path.index(i),
                    ip,
                    names::INVALID_IP,
                ));
            }
        }
    }
    if spec.cluster_ips.len() > 2 {
        errs.push(FieldError::invalid(
            &ips_path,
            &spec.cluster_ips[..],
            "may only hold up to 2 values",
        ));
    }
    if has_invalid {
        return;
    }
    if spec.cluster_ips.len() > 1 {
        let v4 = parsed.iter().filter(|ip| ip.is_ipv4()).count();
        let dual = v4 >= 1 && parsed.len() - v4 >= 1;
        if !dual {
            errs.push(FieldError::invalid(
                &ips_path,
                &spec.cluster_ips[..],
                "may specify no more than one IP for each IP family",
            ));
        }
    }
    if !is_headless(svc) && !spec.cluster_ips.is_empty() && !spec.ip_families.is_empty() {
        for (i, ip) in spec.cluster_ips.iter().enumerate() {
            let Some(fam) = spec.ip_families.get(i) else {
                break;
            };
            let is_v6 = ip.contains(':');
            if *fam == IpFamily::Ipv4 && is_v6 {
                errs.push(FieldError::invalid(
                    &ips_path.index(i),
                    ip,
                    &format!("expected an IPv4 value as indicated by `ipFamilies[{i}]`"),
                ));
            }
            if *fam == IpFamily::Ipv6 && !is_v6 {
                errs.push(FieldError::invalid(
                    &ips_path.index(i),
                    ip,
                    &format!("expected an IPv6 value as indicated by `ipFamilies[{i}]`"),
                ));
            }
        }
    }
}

fn source_ranges(svc: &Service, errs: &mut Vec<FieldError>) {
    let spec = &svc.spec;
    let lb = type_is(svc, &ServiceType::LoadBalancer);
    if !spec.load_balancer_source_ranges.is_empty() {
        // The capital L is how Kubernetes spells this path.
        let path = Path::new("spec").child("LoadBalancerSourceRanges");
        if !lb {
            errs.push(FieldError::forbidden(
                &path,
                "may only be used when `type` is 'LoadBalancer'",
            ));
        }
        for (i, value) in spec.load_balancer_source_ranges.iter().enumerate() {
            let value = value.trim();
            if names::parse_cidr_sloppy(value).is_none() {
                errs.push(FieldError::invalid(
                    &path.index(i),
                    value,
                    names::INVALID_CIDR,
                ));
            }
        }
    } else if let Some(val) = svc.metadata.annotation(LB_SOURCE_RANGES_ANNOTATION) {
        let path = Path::new("metadata")
            .child("annotations")
            .key(LB_SOURCE_RANGES_ANNOTATION);
        if !lb {
            errs.push(FieldError::forbidden(
                &path,
                "may only be used when `type` is 'LoadBalancer'",
            ));
        }
        let val = val.trim();
        if !val.is_empty() {
            for value in val.split(',').map(str::trim) {
                if names::parse_cidr_sloppy(value).is_none() {
                    errs.push(FieldError::invalid(&path, value, names::INVALID_CIDR));
                }
            }
        }
    }
}

fn external_traffic_policy(svc: &Service, errs: &mut Vec<FieldError>) {
    let spec = &svc.spec;
    let spec_path = Path::new("spec");
    let etp_path = spec_path.child("externalTrafficPolicy");
    if externally_accessible(svc) {
        match &spec.external_traffic_policy {
            None => errs.push(FieldError::required(&etp_path, "")),
            Some(p) if !p.is_known() => errs.push(FieldError::not_supported(
                &etp_path,
                p.as_str(),
                TrafficPolicy::KNOWN,
            )),
            Some(_) => {}
        }
    } else if let Some(p) = &spec.external_traffic_policy {
        errs.push(FieldError::invalid(
            &etp_path,
            p.as_str(),
            "may only be set for externally-accessible services",
        ));
    }
    let hc_path = spec_path.child("healthCheckNodePort");
    let hc = spec.health_check_node_port.unwrap_or(0);
    if needs_health_check(svc) {
        if hc == 0 {
            errs.push(FieldError::required(&hc_path, ""));
        } else if !valid_port(hc) {
            errs.push(FieldError::invalid(&hc_path, hc, PORT_RANGE));
        }
    } else if hc != 0 {
        errs.push(FieldError::invalid(
            &hc_path,
            hc,
            "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
        ));
    }
}

/// `ValidateLoadBalancerStatus` (the parts that apply when loading stored objects).
fn load_balancer_status(svc: &Service, errs: &mut Vec<FieldError>) {
    let Some(lb) = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()) else {
        return;
    };
    let path = Path::new("status").child("loadBalancer").child("ingress");
    for (i, ing) in lb.ingress.iter().enumerate() {
        let idx = path.index(i);
        let ip = ing.ip.as_deref().unwrap_or("");
        if !ip.is_empty() && names::parse_ip_sloppy(ip).is_none() {
            errs.push(FieldError::invalid(&idx.child("ip"), ip, names::INVALID_IP));
        }
        match &ing.ip_mode {
            Some(_) if ip.is_empty() => errs.push(FieldError::forbidden(
                &idx.child("ipMode"),
                "may not be specified when `ip` is not set",
            )),
            Some(m) if !m.is_known() => errs.push(FieldError::not_supported(
                &idx.child("ipMode"),
                m.as_str(),
                LoadBalancerIpMode::KNOWN,
            )),
            _ => {}
        }
        if let Some(host) = ing.hostname.as_deref().filter(|h| !h.is_empty()) {
            for msg in names::dns1123_subdomain(host) {
                errs.push(FieldError::invalid(&idx.child("hostname"), host, &msg));
            }
            if names::parse_ip_sloppy(host).is_some() {
                errs.push(FieldError::invalid(
                    &idx.child("hostname"),
                    host,
                    "must be a DNS name, not an IP address",
                ));
            }
        }
    }
}

fn update_errors(new: &Service, old: &Service) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec_path = Path::new("spec");
    if new.metadata.name != old.metadata.name {
        errs.push(FieldError::invalid(
            &Path::new("metadata").child("name"),
            new.metadata.name(),
            "field is immutable",
        ));
    }
    let either_external_name =
        type_is(new, &ServiceType::ExternalName) || type_is(old, &ServiceType::ExternalName);
    let both_headless = is_headless(new) && is_headless(old);
    let single_stack = new.spec.ip_family_policy == Some(IpFamilyPolicy::SingleStack);

    if !either_external_name && !both_headless && !is_headless(new) && !is_headless(old) {
        let ips_path = spec_path.child("clusterIPs");
        let (n, o) = (&new.spec.cluster_ips, &old.spec.cluster_ips);
        if n.len() == o.len() {
            for (i, (a, b)) in n.iter().zip(o).enumerate() {
                if a != b {
                    errs.push(FieldError::invalid(
                        &ips_path.index(i),
                        &n[..],
                        "may not change once set",
                    ));
                }
            }
        } else if n.len() < o.len() {
            if n.is_empty() {
                errs.push(FieldError::invalid(
                    &ips_path.index(0),
                    &n[..],
                    "primary clusterIP can not be unset",
                ));
            } else if n[0] != o[0] {
                errs.push(FieldError::invalid(
                    &ips_path.index(0),
                    &n[..],
                    "may not change once set",
                ));
            }
            if n.len() == 1 && !single_stack {
                errs.push(FieldError::invalid(
                    &spec_path.child("ipFamilyPolicy"),
                    new.spec
                        .ip_family_policy
                        .as_ref()
                        .map_or("", IpFamilyPolicy::as_str),
                    "must be set to 'SingleStack' when releasing the secondary clusterIP",
                ));
            }
        } else if !o.is_empty() && n[0] != o[0] {
            errs.push(FieldError::invalid(
                &ips_path.index(0),
                &n[..],
                "may not change once set",
            ));
        }

        let fam_path = spec_path.child("ipFamilies");
        let (n, o) = (&new.spec.ip_families, &old.spec.ip_families);
        let names = |v: &[IpFamily]| v.iter().map(|f| f.as_str().to_owned()).collect::<Vec<_>>();
        if n.len() == o.len() {
            for (i, (a, b)) in n.iter().zip(o).enumerate() {
                if a != b {
                    errs.push(FieldError::invalid(
                        &fam_path.index(i),
                        BadValue::StrList(names(n)),
                        "may not change once set",
                    ));
                }
            }
        } else if n.len() < o.len() {
            if n.is_empty() {
                errs.push(FieldError::invalid(
                    &fam_path.index(0),
                    BadValue::StrList(names(n)),
                    "primary ipFamily can not be unset",
                ));
            } else if n[0] != o[0] {
                errs.push(FieldError::invalid(
                    &fam_path.index(0),
                    BadValue::StrList(names(n)),
                    "may not change once set",
                ));
            }
            if n.len() == 1 && !single_stack {
                errs.push(FieldError::invalid(
                    &spec_path.child("ipFamilyPolicy"),
                    new.spec
                        .ip_family_policy
                        .as_ref()
                        .map_or("", IpFamilyPolicy::as_str),
                    "must be set to 'SingleStack' when releasing the secondary ipFamily",
                ));
            }
        } else if !o.is_empty() && n[0] != o[0] {
            errs.push(FieldError::invalid(
                &fam_path.index(0),
                BadValue::StrList(names(n)),
                "may not change once set",
            ));
        }
    }

    if type_is(new, &ServiceType::LoadBalancer)
        && type_is(old, &ServiceType::LoadBalancer)
        && old.spec.load_balancer_class.is_some()
        && new.spec.load_balancer_class != old.spec.load_balancer_class
    {
        errs.push(FieldError::invalid(
            &spec_path.child("loadBalancerClass"),
            new.spec.load_balancer_class.as_deref().unwrap_or(""),
            "may not change once set",
        ));
    }

    if needs_health_check(new)
        && needs_health_check(old)
        && new.spec.health_check_node_port != old.spec.health_check_node_port
    {
        errs.push(FieldError::forbidden(
            &spec_path.child("healthCheckNodePort"),
            "field is immutable",
        ));
    }
    errs
}

/// Builds the validated model of a Service that has no field errors.
fn build_valid(svc: &Service) -> ValidService {
    let spec = &svc.spec;
    let port_u16 = |p: i32| u16::try_from(p).unwrap_or(0);
    let ports = spec
        .ports
        .iter()
        .map(|sp| ValidServicePort {
            name: sp.name().to_owned(),
            protocol: sp.protocol.clone().unwrap_or_default(),
            port: port_u16(sp.port),
            target_port: match &sp.target_port {
                Some(IntOrString::String(s)) if !s.is_empty() => TargetPort::Name(s.clone()),
                Some(IntOrString::Int(n)) if *n != 0 => TargetPort::Number(port_u16(*n)),
                _ => TargetPort::Number(port_u16(sp.port)),
            },
            node_port: sp.node_port.filter(|&n| n != 0).map(port_u16),
            app_protocol: sp.app_protocol.clone(),
        })
        .collect();
    let cluster_ips = if type_is(svc, &ServiceType::ExternalName) || spec.cluster_ips.is_empty() {
        ClusterIps::Unset
    } else if is_headless(svc) {
        ClusterIps::Headless
    } else {
        ClusterIps::Ips(
            spec.cluster_ips
                .iter()
                .filter_map(|ip| names::parse_ip_sloppy(ip))
                .collect(),
        )
    };
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .map(|lb| {
            lb.ingress
                .iter()
                .filter_map(|ing| {
                    let ip: IpAddr = names::parse_ip_sloppy(ing.ip.as_deref()?)?;
                    Some(LoadBalancerIngressIp {
                        ip,
                        proxy_mode: ing.ip_mode == Some(LoadBalancerIpMode::Proxy),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let selector: Option<BTreeMap<String, String>> =
        spec.selector.clone().filter(|s| !s.is_empty());
    ValidService {
        key: ServiceKey::new(svc.metadata.namespace(), svc.metadata.name()),
        type_: spec.type_.clone().unwrap_or(ServiceType::ClusterIp),
        selector,
        ports,
        cluster_ips,
        ip_families: spec.ip_families.clone(),
        ip_family_policy: spec.ip_family_policy.clone(),
        external_ips: spec
            .external_ips
            .iter()
            .filter_map(|ip| names::parse_ip_sloppy(ip))
            .collect(),
        external_name: spec
            .external_name
            .as_deref()
            .filter(|_| type_is(svc, &ServiceType::ExternalName))
            .map(|n| n.strip_suffix('.').unwrap_or(n).to_owned()),
        session_affinity_timeout: (spec.session_affinity == Some(SessionAffinity::ClientIp)).then(
            || {
                spec.session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .and_then(|t| u32::try_from(t).ok())
                    .unwrap_or(crate::model::DEFAULT_CLIENT_IP_AFFINITY_SECONDS as u32)
            },
        ),
        load_balancer_source_ranges: spec
            .load_balancer_source_ranges
            .iter()
            .filter_map(|r| names::parse_cidr_sloppy(r.trim()))
            .collect(),
        load_balancer_ingress: ingress,
        external_traffic_local: spec.external_traffic_policy == Some(TrafficPolicy::Local),
        internal_traffic_local: spec.internal_traffic_policy == Some(TrafficPolicy::Local),
        health_check_node_port: spec
            .health_check_node_port
            .filter(|&p| p != 0)
            .map(port_u16),
        publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
        allocate_load_balancer_node_ports: spec.allocate_load_balancer_node_ports,
        traffic_distribution: spec.traffic_distribution.clone(),
        object: svc.clone(),
    }
}
