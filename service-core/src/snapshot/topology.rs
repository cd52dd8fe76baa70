//! Endpoint selection as kube-proxy does it (`pkg/proxy/topology.go`, `CategorizeEndpoints`).

use super::{Endpoint, EndpointSelection};

#[derive(Clone, Copy, PartialEq, Eq)]
enum TopologyMode {
    None,
    SameNode,
    SameZone,
}

/// The topology mode the hints allow on this node: same-node when every ready endpoint has
/// a node hint and one names this node; else same-zone when every ready endpoint has a
/// zone hint and one names this zone; else none.
fn topology_mode(endpoints: &[Endpoint], node: &str, zone: Option<&str>) -> TopologyMode {
    let mut has_for_node = false;
    let mut all_node_hints = true;
    let mut has_for_zone = false;
    let mut all_zone_hints = true;
    for ep in endpoints.iter().filter(|e| e.ready) {
        if ep.node_hints.is_empty() {
            all_node_hints = false;
        } else if ep.node_hints.iter().any(|n| &**n == node) {
            has_for_node = true;
        }
        if ep.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if ep.zone_hints.iter().any(|z| Some(&**z) == zone) {
            has_for_zone = true;
        }
    }
    if all_node_hints && has_for_node {
        TopologyMode::SameNode
    } else if all_zone_hints && has_for_zone {
        TopologyMode::SameZone
    } else {
        TopologyMode::None
    }
}

fn available(ep: &Endpoint, mode: TopologyMode, node: &str, zone: Option<&str>) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::SameNode => ep.node_hints.iter().any(|n| &**n == node),
        TopologyMode::SameZone => ep.zone_hints.iter().any(|z| Some(&**z) == zone),
    }
}

fn indices(endpoints: &[Endpoint], keep: impl Fn(&Endpoint) -> bool) -> Vec<u32> {
    endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| keep(e))
        .map(|(i, _)| u32::try_from(i).unwrap_or(u32::MAX))
        .collect()
}

/// Selects the endpoints of one service port and family for this node.
///
/// - Cluster endpoints (when `uses_cluster`): ready endpoints allowed by topology hints; if
///   none, serving-and-terminating endpoints.
/// - Local endpoints (when `uses_local`): local ready endpoints; if none, local
///   serving-and-terminating endpoints.
/// - `has_any`: whether a usable endpoint exists anywhere.
///
/// `endpoints` must be in kube-proxy's order; the result keeps that order.
pub fn categorize(
    endpoints: &[Endpoint],
    uses_cluster: bool,
    uses_local: bool,
    node: &str,
    zone: Option<&str>,
) -> EndpointSelection {
    let mut sel = EndpointSelection::default();
    let mut mode = TopologyMode::None;
    if uses_cluster {
        mode = topology_mode(endpoints, node, zone);
        sel.cluster = indices(endpoints, |e| e.ready && available(e, mode, node, zone));
        if sel.cluster.is_empty() {
            sel.cluster = indices(endpoints, |e| e.serving && e.terminating);
        }
        sel.has_any = !sel.cluster.is_empty();
    }
    if !uses_local {
        sel.all_reachable = sel.cluster.clone();
        return sel;
    }
    let mut local_ready = false;
    let mut local_terminating = false;
    for e in endpoints {
        if e.ready {
            sel.has_any = true;
            local_ready |= e.is_local;
        } else if e.serving && e.terminating {
            sel.has_any = true;
            local_terminating |= e.is_local;
        }
    }
    let mut using_terminating = false;
    if local_ready {
        sel.local = indices(endpoints, |e| e.is_local && e.ready);
    } else if local_terminating {
        using_terminating = true;
        sel.local = indices(endpoints, |e| e.is_local && e.serving && e.terminating);
    }
    if !uses_cluster {
        sel.all_reachable = sel.local.clone();
    } else if mode == TopologyMode::None && !using_terminating {
        // Cluster endpoints are every ready endpoint, a superset of the local ones.
        sel.all_reachable = sel.cluster.clone();
    } else {
        let mut all = sel.cluster.clone();
        all.extend(&sel.local);
        all.sort_unstable();
        all.dedup();
        sel.all_reachable = all;
    }
    sel
}
