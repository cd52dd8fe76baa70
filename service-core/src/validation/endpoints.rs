//! Validation of legacy `Endpoints` (`ValidateEndpoints` in `pkg/apis/core/validation`) and
//! of `EndpointSlice` (`pkg/apis/discovery/validation`).

use std::collections::HashSet;

use super::field::{FieldError, Path, ValidationError};
use super::{meta, names};
use crate::model::{
    AddressType, EndpointAddress, EndpointPort, EndpointSlice, Endpoints, Protocol,
};

const MAX_SLICE_ENDPOINTS: usize = 1000;
const MAX_ENDPOINT_ADDRESSES: usize = 100;
const MAX_SLICE_PORTS: usize = 20000;
const MAX_HINTS: usize = 8;
const MAX_TOPOLOGY_LABELS: usize = 16;

/// Validates a legacy `Endpoints` object.
pub fn validate_endpoints(ep: &Endpoints) -> Result<(), ValidationError> {
    let errs = endpoints_errors(ep);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ValidationError::new("Endpoints", ep.metadata.name(), errs))
    }
}

/// Every field error of a legacy `Endpoints` object.
pub fn endpoints_errors(ep: &Endpoints) -> Vec<FieldError> {
    let mut errs = Vec::new();
    meta::object_meta(&ep.metadata, names::dns1123_subdomain, &mut errs);
    let subsets = Path::new("subsets");
    for (i, ss) in ep.subsets.iter().enumerate() {
        let idx = subsets.index(i);
        if ss.addresses.is_empty() && ss.not_ready_addresses.is_empty() {
            errs.push(FieldError::required(
                &idx,
                "must specify `addresses` or `notReadyAddresses`",
            ));
        }
        for (j, a) in ss.addresses.iter().enumerate() {
            endpoint_address(a, &idx.child("addresses").index(j), &mut errs);
        }
        for (j, a) in ss.not_ready_addresses.iter().enumerate() {
            endpoint_address(a, &idx.child("notReadyAddresses").index(j), &mut errs);
        }
        let require_name = ss.ports.len() > 1;
        for (j, p) in ss.ports.iter().enumerate() {
            endpoint_port(p, require_name, &idx.child("ports").index(j), &mut errs);
        }
    }
    errs
}

fn endpoint_address(a: &EndpointAddress, path: &Path, errs: &mut Vec<FieldError>) {
    let ip_path = path.child("ip");
    let parsed = names::parse_ip_sloppy(&a.ip);
    if parsed.is_none() {
        errs.push(FieldError::invalid(&ip_path, &a.ip, names::INVALID_IP));
    }
    if let Some(h) = a.hostname.as_deref().filter(|h| !h.is_empty()) {
        for msg in names::dns1123_label(h) {
            errs.push(FieldError::invalid(&path.child("hostname"), h, &msg));
        }
    }
    if let Some(node) = &a.node_name {
        for msg in names::dns1123_subdomain(node) {
            errs.push(FieldError::invalid(&path.child("nodeName"), node, &msg));
        }
    }
    if let Some(ip) = parsed {
        for msg in names::non_special_ip(&a.ip, ip) {
            errs.push(FieldError::invalid(&ip_path, &a.ip, &msg));
        }
    }
}

/// An `Endpoints` port. Unlike Service ports, names need not be unique (as in Kubernetes).
fn endpoint_port(p: &EndpointPort, require_name: bool, path: &Path, errs: &mut Vec<FieldError>) {
    let name = p.name.as_deref().unwrap_or("");
    if require_name && name.is_empty() {
        errs.push(FieldError::required(&path.child("name"), ""));
    } else if !name.is_empty() {
        for msg in names::dns1123_label(name) {
            errs.push(FieldError::invalid(&path.child("name"), name, &msg));
        }
    }
    let port = p.port.unwrap_or(0);
    if !(1..=65535).contains(&port) {
        errs.push(FieldError::invalid(
            &path.child("port"),
            port,
            "must be between 1 and 65535, inclusive",
        ));
    }
    protocol(p.protocol.as_ref(), &path.child("protocol"), errs);
    if let Some(app) = &p.app_protocol {
        for msg in names::qualified_name(app) {
            errs.push(FieldError::invalid(&path.child("appProtocol"), app, &msg));
        }
    }
}

fn protocol(p: Option<&Protocol>, path: &Path, errs: &mut Vec<FieldError>) {
    match p {
        None => errs.push(FieldError::required(path, "")),
        Some(p) if !p.is_known() => {
            errs.push(FieldError::not_supported(path, p.as_str(), Protocol::KNOWN));
        }
        Some(_) => {}
    }
}

/// Validates an `EndpointSlice`.
pub fn validate_endpoint_slice(slice: &EndpointSlice) -> Result<(), ValidationError> {
    let errs = endpoint_slice_errors(slice);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ValidationError::new(
            "EndpointSlice.discovery.k8s.io",
            slice.metadata.name(),
            errs,
        ))
    }
}

/// Every field error of an `EndpointSlice`.
pub fn endpoint_slice_errors(slice: &EndpointSlice) -> Vec<FieldError> {
    let mut errs = Vec::new();
    meta::object_meta(&slice.metadata, names::dns1123_subdomain, &mut errs);
    let at_path = Path::new("addressType");
    match &slice.address_type {
        AddressType::Other(s) if s.is_empty() => errs.push(FieldError::required(&at_path, "")),
        AddressType::Other(s) => {
            errs.push(FieldError::not_supported(
                &at_path,
                s.as_str(),
                AddressType::KNOWN,
            ));
        }
        _ => {}
    }

    let eps = Path::new("endpoints");
    if slice.endpoints.len() > MAX_SLICE_ENDPOINTS {
        errs.push(FieldError::too_many(
            &eps,
            slice.endpoints.len(),
            MAX_SLICE_ENDPOINTS,
        ));
    } else {
        for (i, ep) in slice.endpoints.iter().enumerate() {
            let idx = eps.index(i);
            let addr_path = idx.child("addresses");
            if ep.addresses.is_empty() {
                errs.push(FieldError::required(
                    &addr_path,
                    "must contain at least 1 address",
                ));
            } else if ep.addresses.len() > MAX_ENDPOINT_ADDRESSES {
                errs.push(FieldError::too_many(
                    &addr_path,
                    ep.addresses.len(),
                    MAX_ENDPOINT_ADDRESSES,
                ));
            }
            for (j, addr) in ep.addresses.iter().enumerate() {
                let p = addr_path.index(j);
                let family_ok =
                    |v4: bool| names::parse_ip_sloppy(addr).filter(|ip| ip.is_ipv4() == v4);
                let check = |ip: Option<std::net::IpAddr>,
                             what: &str,
                             errs: &mut Vec<FieldError>| match ip {
                    None => errs.push(FieldError::invalid(
                        &p,
                        addr,
                        &format!("must be a valid {what} address"),
                    )),
                    Some(ip) => {
                        for msg in names::non_special_ip(addr, ip) {
                            errs.push(FieldError::invalid(&p, addr, &msg));
                        }
                    }
                };
                match slice.address_type {
                    AddressType::Ipv4 => check(family_ok(true), "IPv4", &mut errs),
                    AddressType::Ipv6 => check(family_ok(false), "IPv6", &mut errs),
                    AddressType::Fqdn => {
                        let name = addr.strip_suffix('.').unwrap_or(addr);
                        if !name.contains('.') {
                            errs.push(FieldError::invalid(
                                &p,
                                addr,
                                "should be a domain with at least two segments separated by dots",
                            ));
                        }
                        for msg in names::dns1123_subdomain(name) {
                            errs.push(FieldError::invalid(&p, addr, &msg));
                        }
                    }
                    AddressType::Other(_) => {}
                }
            }
            if let Some(node) = &ep.node_name {
                for msg in names::dns1123_subdomain(node) {
                    errs.push(FieldError::invalid(&idx.child("nodeName"), node, &msg));
                }
            }
            if let Some(topo) = &ep.deprecated_topology {
                let tp = idx.child("deprecatedTopology");
                if topo.len() > MAX_TOPOLOGY_LABELS {
                    errs.push(FieldError::too_many(&tp, topo.len(), MAX_TOPOLOGY_LABELS));
                }
                meta::labels_map(topo, &tp, &mut errs);
            }
            if let Some(h) = &ep.hostname {
                for msg in names::dns1123_label(h) {
                    errs.push(FieldError::invalid(&idx.child("hostname"), h, &msg));
                }
            }
            if let Some(hints) = &ep.hints {
                let hp = idx.child("hints");
                let fz = hp.child("forZones");
                if hints.for_zones.len() > MAX_HINTS {
                    errs.push(FieldError::too_many(&fz, hints.for_zones.len(), MAX_HINTS));
                } else {
                    let mut seen = HashSet::new();
                    for (k, z) in hints.for_zones.iter().enumerate() {
                        let zp = fz.index(k).child("name");
                        if !seen.insert(&z.name) {
                            errs.push(FieldError::duplicate(&zp, &z.name));
                        }
                        for msg in names::label_value(&z.name) {
                            errs.push(FieldError::invalid(&zp, &z.name, &msg));
                        }
                    }
                }
                let fnp = hp.child("forNodes");
                if hints.for_nodes.len() > MAX_HINTS {
                    errs.push(FieldError::too_many(&fnp, hints.for_nodes.len(), MAX_HINTS));
                } else {
                    let mut seen = HashSet::new();
                    for (k, n) in hints.for_nodes.iter().enumerate() {
                        let np = fnp.index(k).child("name");
                        if !seen.insert(&n.name) {
                            errs.push(FieldError::duplicate(&np, &n.name));
                        }
                        for msg in names::dns1123_subdomain(&n.name) {
                            errs.push(FieldError::invalid(&np, &n.name, &msg));
                        }
                    }
                }
            }
        }
    }

    let ports = Path::new("ports");
    if slice.ports.len() > MAX_SLICE_PORTS {
        errs.push(FieldError::too_many(
            &ports,
            slice.ports.len(),
            MAX_SLICE_PORTS,
        ));
        return errs;
    }
    let mut seen = HashSet::new();
    for (i, p) in slice.ports.iter().enumerate() {
        let idx = ports.index(i);
        let name = p.name.as_deref().unwrap_or("");
        if !name.is_empty() {
            for msg in names::dns1123_label(name) {
                errs.push(FieldError::invalid(&idx.child("name"), name, &msg));
            }
        }
        if !seen.insert(name) {
            errs.push(FieldError::duplicate(&idx.child("name"), name));
        }
        protocol(p.protocol.as_ref(), &idx.child("protocol"), &mut errs);
        if let Some(app) = &p.app_protocol {
            for msg in names::qualified_name(app) {
                errs.push(FieldError::invalid(&idx.child("appProtocol"), app, &msg));
            }
        }
    }
    errs
}
