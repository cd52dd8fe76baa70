//! How the registry fills in and reconciles the linked Service fields before allocating:
//! IP families and policy (`initIPFamilyFields`), values the client omitted on update
//! (`patchAllocatedValues`), `clusterIP` ↔ `clusterIPs` (`normalizeClusterIPs`), and fields
//! a type change leaves meaningless (`dropTypeDependentFields`).

use crate::random::Random;

use super::{
    ApiError, Registry, Store, needs_cluster_ip, needs_health_check, needs_node_port, node_port,
};
use crate::model::{IpFamily, IpFamilyPolicy, Service, ServiceType};
use crate::validation::names::parse_ip_sloppy;
use crate::validation::{BadValue, FieldError, Path, cluster_ips_related};

fn policy_path() -> Path {
    Path::new("spec").child("ipFamilyPolicy")
}

fn policy_value(svc: &Service) -> BadValue {
    BadValue::from(
        svc.spec
            .ip_family_policy
            .as_ref()
            .map_or("", IpFamilyPolicy::as_str),
    )
}

fn other(family: &IpFamily) -> IpFamily {
    if *family == IpFamily::Ipv4 {
        IpFamily::Ipv6
    } else {
        IpFamily::Ipv4
    }
}

fn selectorless(svc: &Service) -> bool {
    svc.spec.selector.as_ref().is_none_or(|s| s.is_empty())
}

fn same_cluster_ips(a: &Service, b: &Service) -> bool {
    a.spec.cluster_ips == b.spec.cluster_ips
}

fn same_ip_families(a: &Service, b: &Service) -> bool {
    a.spec.ip_families == b.spec.ip_families
}

/// An unchanged PreferDualStack Service is never upgraded or downgraded behind its
/// owner's back, even when the cluster's families changed.
pub(super) fn is_matching_prefer_dual_stack(svc: &Service, old: Option<&Service>) -> bool {
    let Some(old) = old else {
        return false;
    };
    let prefer = Some(IpFamilyPolicy::PreferDualStack);
    svc.spec.ip_family_policy.is_some()
        && old.spec.type_ == svc.spec.type_
        && matches!(
            svc.spec.type_,
            Some(ServiceType::ClusterIp | ServiceType::NodePort | ServiceType::LoadBalancer)
        )
        && svc.spec.ip_family_policy == prefer
        && (old.spec.ip_family_policy.is_none() || old.spec.ip_family_policy == prefer)
        && same_cluster_ips(old, svc)
        && same_ip_families(old, svc)
}

impl<S: Store, R: Random> Registry<S, R> {
    /// `initIPFamilyFields`: defaults `ipFamilyPolicy` and `ipFamilies` from the request
    /// and the cluster's configuration, and rejects what the cluster cannot serve.
    pub(super) fn init_ip_family_fields(
        &self,
        svc: &mut Service,
        old: Option<&Service>,
    ) -> Result<(), ApiError> {
        if svc.spec.type_ == Some(ServiceType::ExternalName) {
            return Ok(());
        }
        if is_matching_prefer_dual_stack(svc, old) {
            return Ok(());
        }
        let name = svc.metadata.name().to_owned();
        let headless_selectorless =
            svc.spec.cluster_ip.as_deref() == Some("None") && selectorless(svc);
        if svc.spec.ip_family_policy.is_none() {
            svc.spec.ip_family_policy = match old.and_then(|o| o.spec.ip_family_policy.clone()) {
                Some(p) => Some(p),
                None if headless_selectorless => Some(IpFamilyPolicy::RequireDualStack),
                None => Some(IpFamilyPolicy::SingleStack),
            };
        }
        let mut errs = Vec::new();
        cluster_ips_related(svc, &mut errs);
        if !errs.is_empty() {
            return Err(ApiError::invalid(&name, errs));
        }

        let single = svc.spec.ip_family_policy == Some(IpFamilyPolicy::SingleStack);
        if let Some(old) = old {
            if single {
                if same_cluster_ips(old, svc) && svc.spec.cluster_ips.len() > 1 {
                    svc.spec.cluster_ips.truncate(1);
                }
                if same_ip_families(old, svc) && svc.spec.ip_families.len() > 1 {
                    svc.spec.ip_families.truncate(1);
                }
            } else {
                let (n, o) = (&svc.spec, &old.spec);
                if !n.cluster_ips.is_empty() && n.cluster_ips.len() < o.cluster_ips.len() {
                    errs.push(FieldError::invalid(
                        &policy_path(),
                        policy_value(svc),
                        "must be 'SingleStack' to release the secondary cluster IP",
                    ));
                }
                if !n.ip_families.is_empty() && n.ip_families.len() < o.ip_families.len() {
                    errs.push(FieldError::invalid(
                        &policy_path(),
                        policy_value(svc),
                        "must be 'SingleStack' to release the secondary IP family",
                    ));
                }
            }
        }
        if single {
            if svc.spec.cluster_ips.len() == 2 {
                errs.push(FieldError::invalid(
                    &policy_path(),
                    policy_value(svc),
                    "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified",
                ));
            }
            if svc.spec.ip_families.len() == 2 {
                errs.push(FieldError::invalid(
                    &policy_path(),
                    policy_value(svc),
                    "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
                ));
            }
        }
        // Infer families from the given addresses.
        for i in 0..svc.spec.cluster_ips.len() {
            let text = &svc.spec.cluster_ips[i];
            if text == "None" {
                break;
            }
            if i < svc.spec.ip_families.len() {
                continue;
            }
            match parse_ip_sloppy(text).map(|ip| IpFamily::of(&ip)) {
                Some(family) if self.configured(&family) => svc.spec.ip_families.push(family),
                family => errs.push(FieldError::invalid(
                    &Path::new("spec").child("clusterIPs").index(i),
                    BadValue::StrList(svc.spec.cluster_ips.clone()),
                    &format!(
                        "{} is not configured on this cluster",
                        family.as_ref().map_or("unknown", IpFamily::as_str)
                    ),
                )),
            }
        }
        if !errs.is_empty() {
            return Err(ApiError::invalid(&name, errs));
        }

        let default_family = self.config.default_family();
        if headless_selectorless {
            // Allowed even on a single-stack cluster: such a Service allocates nothing.
            if svc.spec.ip_families.is_empty() {
                svc.spec.ip_families.push(default_family);
            }
            if svc.spec.ip_families.len() < 2 && !single {
                let second = other(&svc.spec.ip_families[0]);
                svc.spec.ip_families.push(second);
            }
            return Ok(());
        }

        if svc.spec.ip_family_policy == Some(IpFamilyPolicy::RequireDualStack)
            && self.config.service_cidrs.len() < 2
        {
            errs.push(FieldError::invalid(
                &policy_path(),
                policy_value(svc),
                "this cluster is not configured for dual-stack services",
            ));
        }
        for (i, family) in svc.spec.ip_families.iter().enumerate() {
            if !self.configured(family) {
                errs.push(FieldError::invalid(
                    &Path::new("spec").child("ipFamilies").index(i),
                    family.as_str(),
                    "not configured on this cluster",
                ));
            }
        }
        if !errs.is_empty() {
            return Err(ApiError::invalid(&name, errs));
        }
        if svc.spec.ip_families.is_empty() {
            svc.spec.ip_families.push(default_family);
        }
        if !single && svc.spec.ip_families.len() == 1 && self.config.service_cidrs.len() == 2 {
            let second = other(&svc.spec.ip_families[0]);
            svc.spec.ip_families.push(second);
        }
        Ok(())
    }
}

/// `patchAllocatedValues`: a client that resubmits what it created (without the cluster
/// IPs, node ports and health-check node port the registry chose) keeps them.
pub(super) fn patch_allocated_values(svc: &mut Service, old: &Service) {
    if needs_cluster_ip(old) && needs_cluster_ip(svc) {
        if svc.spec.cluster_ip.as_deref().is_none_or(str::is_empty) {
            svc.spec.cluster_ip.clone_from(&old.spec.cluster_ip);
        }
        if svc.spec.cluster_ips.is_empty() && !old.spec.cluster_ips.is_empty() {
            svc.spec.cluster_ips.clone_from(&old.spec.cluster_ips);
        }
    }
    if needs_node_port(old) && needs_node_port(svc) {
        // Node ports present in both cannot be patched onto another port.
        let used: Vec<i32> = old
            .spec
            .ports
            .iter()
            .map(node_port)
            .filter(|&n| n != 0 && svc.spec.ports.iter().any(|p| node_port(p) == n))
            .collect();
        for p in &mut svc.spec.ports {
            if node_port(p) == 0 {
                let by_name = old
                    .spec
                    .ports
                    .iter()
                    .filter(|o| o.name == p.name)
                    .map(node_port)
                    .next_back()
                    .unwrap_or(0);
                if !used.contains(&by_name) {
                    p.node_port = Some(by_name).filter(|&n| n != 0);
                }
            }
        }
    }
    if needs_health_check(old)
        && needs_health_check(svc)
        && svc.spec.health_check_node_port.unwrap_or(0) == 0
    {
        svc.spec.health_check_node_port = old.spec.health_check_node_port;
    }
}

/// `normalizeClusterIPs` on update: keeps `clusterIPs` in step with a `clusterIP` an old
/// client changed or cleared.
pub(super) fn normalize_cluster_ips(svc: &mut Service, old: &Service) {
    let cluster_ip = |s: &Service| s.spec.cluster_ip.clone().unwrap_or_default();
    if !old.spec.cluster_ips.is_empty()
        && svc.spec.cluster_ips.is_empty()
        && cluster_ip(old) == cluster_ip(svc)
    {
        svc.spec.cluster_ips.clone_from(&old.spec.cluster_ips);
    }
    if cluster_ip(old) != cluster_ip(svc) {
        if !cluster_ip(old).is_empty() && cluster_ip(svc).is_empty() {
            if same_cluster_ips(old, svc) {
                svc.spec.cluster_ips.clear();
            }
        } else if same_cluster_ips(old, svc) {
            svc.spec.cluster_ips = vec![cluster_ip(svc)];
        }
    }
}

/// `dropTypeDependentFields`: after a type change, clears the fields the new type does not
/// use, when the client left them as they were (changed ones fail validation instead).
pub(super) fn drop_type_dependent_fields(svc: &mut Service, old: &Service) {
    if needs_cluster_ip(old) && !needs_cluster_ip(svc) {
        if old.spec.cluster_ip == svc.spec.cluster_ip && same_cluster_ips(old, svc) {
            svc.spec.cluster_ip = None;
            svc.spec.cluster_ips.clear();
        }
        if same_ip_families(old, svc) {
            svc.spec.ip_families.clear();
        }
        if old.spec.ip_family_policy == svc.spec.ip_family_policy {
            svc.spec.ip_family_policy = None;
        }
    }
    let node_ports = |s: &Service| -> Vec<i32> {
        s.spec
            .ports
            .iter()
            .map(node_port)
            .filter(|&n| n != 0)
            .collect()
    };
    let old_ports = node_ports(old);
    if needs_node_port(old)
        && !needs_node_port(svc)
        && node_ports(svc).iter().all(|n| old_ports.contains(n))
    {
        for p in &mut svc.spec.ports {
            p.node_port = None;
        }
    }
    if needs_health_check(old)
        && !needs_health_check(svc)
        && old.spec.health_check_node_port == svc.spec.health_check_node_port
    {
        svc.spec.health_check_node_port = None;
    }
    let lb = |s: &Service| s.spec.type_ == Some(ServiceType::LoadBalancer);
    if lb(old) && !lb(svc) {
        if svc.spec.allocate_load_balancer_node_ports.is_some()
            && old.spec.allocate_load_balancer_node_ports
                == svc.spec.allocate_load_balancer_node_ports
        {
            svc.spec.allocate_load_balancer_node_ports = None;
        }
        if old.spec.load_balancer_class == svc.spec.load_balancer_class {
            svc.spec.load_balancer_class = None;
        }
    }
    if needs_node_port(old)
        && !needs_node_port(svc)
        && old.spec.external_traffic_policy == svc.spec.external_traffic_policy
    {
        svc.spec.external_traffic_policy = None;
    }
    // Load-balancer status means nothing for another type.
    if !lb(svc)
        && let Some(status) = svc.status.as_mut()
    {
        status.load_balancer = None;
    }
}
