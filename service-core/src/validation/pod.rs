//! Validation of Pods and Nodes (`ValidatePodCreate`, `ValidatePodStatusUpdate` and
//! `ValidateNode` in `pkg/apis/core/validation`), limited to the fields this library
//! reads: the names that become DNS names (`metadata.name`, `spec.hostname`,
//! `spec.subdomain`, `spec.nodeName`), the container ports that `targetPort` names refer
//! to, and the addresses that become endpoints (`status.podIP`, `status.podIPs`). Fields
//! kept only as loaded (`extra`) are not checked.

use std::collections::HashSet;

use super::field::{FieldError, Path, ValidationError};
use super::{meta, names};
use crate::model::{Node, Pod, PodStatus};

const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";

/// Validates a Pod as the API server does on create (and on status update, for its IPs).
///
/// # Errors
/// Every invalid field, with the API server's messages.
pub fn validate_pod(pod: &Pod) -> Result<(), ValidationError> {
    let errs = pod_errors(pod);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ValidationError::new("Pod", pod.metadata.name(), errs))
    }
}

/// Every field error of a Pod.
pub fn pod_errors(pod: &Pod) -> Vec<FieldError> {
    let mut errs = Vec::new();
    meta::object_meta(&pod.metadata, names::dns1123_subdomain, &mut errs);
    let spec = Path::new("spec");
    for (field, value) in [
        ("hostname", &pod.spec.hostname),
        ("subdomain", &pod.spec.subdomain),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            for msg in names::dns1123_label(v) {
                errs.push(FieldError::invalid(&spec.child(field), v, &msg));
            }
        }
    }
    if let Some(node) = pod.spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        for msg in names::dns1123_subdomain(node) {
            errs.push(FieldError::invalid(&spec.child("nodeName"), node, &msg));
        }
    }
    // Container names are unique across containers and init containers.
    let mut container_names = HashSet::new();
    for (list, containers) in [
        ("containers", &pod.spec.containers),
        ("initContainers", &pod.spec.init_containers),
    ] {
        for (i, c) in containers.iter().enumerate() {
            let path = spec.child(list).index(i);
            if c.name.is_empty() {
                errs.push(FieldError::required(&path.child("name"), ""));
            } else {
                for msg in names::dns1123_label(&c.name) {
                    errs.push(FieldError::invalid(&path.child("name"), &c.name, &msg));
                }
                if !container_names.insert(c.name.as_str()) {
                    errs.push(FieldError::duplicate(&path.child("name"), &c.name));
                }
            }
            let mut port_names = HashSet::new();
            for (j, p) in c.ports.iter().enumerate() {
                let pp = path.child("ports").index(j);
                if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                    for msg in names::port_name(name) {
                        errs.push(FieldError::invalid(&pp.child("name"), name, &msg));
                    }
                    if !port_names.insert(name) {
                        errs.push(FieldError::duplicate(&pp.child("name"), name));
                    }
                }
                if !(1..=65_535).contains(&p.container_port) {
                    errs.push(FieldError::invalid(
                        &pp.child("containerPort"),
                        p.container_port,
                        PORT_RANGE,
                    ));
                }
                // 0 (or absent) means no host port.
                if let Some(h) = p.host_port.filter(|&h| h != 0)
                    && !(1..=65_535).contains(&h)
                {
                    errs.push(FieldError::invalid(&pp.child("hostPort"), h, PORT_RANGE));
                }
            }
        }
    }
    if let Some(status) = &pod.status {
        pod_ips(status, &mut errs);
    }
    errs
}

/// `validatePodIPs`: valid addresses, no duplicates, at most one per family.
fn pod_ips(status: &PodStatus, errs: &mut Vec<FieldError>) {
    let path = Path::new("status").child("podIPs");
    if let (Some(ip), Some(first)) = (status.pod_ip.as_deref(), status.pod_ips.first())
        && !ip.is_empty()
        && ip != first.ip
    {
        errs.push(FieldError::invalid(
            &Path::new("status").child("podIP"),
            ip,
            "must be equal to the first entry of status.podIPs",
        ));
    }
    let mut seen = HashSet::new();
    let mut families = Vec::new();
    for (i, p) in status.pod_ips.iter().enumerate() {
        let at = path.index(i).child("ip");
        match names::parse_ip_sloppy(&p.ip) {
            None => errs.push(FieldError::invalid(&at, &p.ip, names::INVALID_IP)),
            Some(ip) => {
                if !seen.insert(ip) {
                    errs.push(FieldError::duplicate(&at, &p.ip));
                }
                families.push(ip.is_ipv4());
            }
        }
    }
    if status.pod_ips.len() > 2 {
        errs.push(FieldError::too_many(&path, status.pod_ips.len(), 2));
    } else if families.len() == 2 && families[0] == families[1] {
        let ips: Vec<String> = status.pod_ips.iter().map(|p| p.ip.clone()).collect();
        errs.push(FieldError::invalid(
            &path,
            ips.as_slice(),
            "may specify no more than one IP for each IP family",
        ));
    }
    if status.pod_ips.is_empty()
        && let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())
        && names::parse_ip_sloppy(ip).is_none()
    {
        errs.push(FieldError::invalid(
            &Path::new("status").child("podIP"),
            ip,
            names::INVALID_IP,
        ));
    }
}

/// Validates a Node as the API server does on create: its name is a DNS subdomain, and it
/// has no namespace (Nodes are cluster-scoped).
///
/// # Errors
/// Every invalid field, with the API server's messages.
pub fn validate_node(node: &Node) -> Result<(), ValidationError> {
    let errs = node_errors(node);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ValidationError::new("Node", node.metadata.name(), errs))
    }
}

/// Every field error of a Node.
pub fn node_errors(node: &Node) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut unnamespaced = node.metadata.clone();
    let namespace = unnamespaced.namespace.take();
    meta::object_meta(&unnamespaced, names::dns1123_subdomain, &mut errs);
    if namespace.is_some_and(|ns| !ns.is_empty()) {
        errs.push(FieldError::forbidden(
            &Path::new("metadata").child("namespace"),
            "not allowed on this type",
        ));
    }
    errs
}
