//! Topology Aware Routing (`service.kubernetes.io/topology-mode: Auto`): the zone hints the
//! EndpointSlice controller puts on endpoints so that each zone gets a share of a Service's
//! endpoints proportional to its allocatable CPU (reference:
//! `staging/src/k8s.io/endpointslice/topologycache`).
//!
//! Safeguards, as Kubernetes documents them; when one trips, every hint of the Service's
//! slices of that address family is removed:
//! - Node information: every ready node (control-plane nodes aside) needs a zone label and
//!   allocatable CPU, and ready nodes must span at least two zones.
//! - Enough endpoints: at least one ready endpoint per zone.
//! - Overload: every zone's minimum share (its CPU share of the endpoints, less the 20 %
//!   overload threshold, rounded up) must fit in the endpoints there are.
//! - Every ready endpoint needs a zone.
//!
//! Each ready endpoint starts with a hint for its own zone; zones with more than their
//! share then give endpoints to zones with less, one at a time, while a whole endpoint's
//! worth of difference remains. Hints on slices that are not otherwise changing are kept
//! while they still fit the allocations, so a stable cluster writes nothing.

use std::collections::BTreeMap;

use crate::model::{
    EndpointHints, EndpointSlice, ForZone, Node, ObjectMeta, TOPOLOGY_AWARE_HINTS_ANNOTATION,
    TOPOLOGY_MODE_ANNOTATION, ZONE_LABEL,
};

/// The most any endpoint may be overloaded by the allocation (`overloadThreshold`).
const OVERLOAD_THRESHOLD: f64 = 0.2;

/// Whether a Service asks for hints by annotation (`hintsEnabled`): the deprecated
/// `service.kubernetes.io/topology-aware-hints` when present, else
/// `service.kubernetes.io/topology-mode`; the value `Auto` or `auto`.
pub fn hints_enabled(meta: &ObjectMeta) -> bool {
    let annotations = meta.annotations.as_ref();
    let value = annotations
        .and_then(|a| a.get(TOPOLOGY_AWARE_HINTS_ANNOTATION))
        .or_else(|| annotations.and_then(|a| a.get(TOPOLOGY_MODE_ANNOTATION)));
    matches!(value.map(String::as_str), Some("Auto" | "auto"))
}

/// Each zone's share of the cluster's allocatable CPU (`SetNodes`), or `None` when the
/// nodes do not allow hints: a ready node without a zone or allocatable CPU, no CPU at all,
/// or fewer than two zones. Nodes that are not ready, or carry a control-plane role label,
/// do not count.
pub fn zone_cpu_ratios(nodes: &[Node]) -> Option<BTreeMap<String, f64>> {
    let mut by_zone: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = 0u64;
    for node in nodes {
        let labels = node.metadata.labels.as_ref();
        let excluded = labels.is_some_and(|l| {
            l.contains_key("node-role.kubernetes.io/control-plane")
                || l.contains_key("node-role.kubernetes.io/master")
        });
        if excluded || !node_ready(node) {
            continue;
        }
        let zone = node.metadata.label(ZONE_LABEL).filter(|z| !z.is_empty())?;
        let cpu = allocatable_millicpu(node).filter(|&m| m > 0)?;
        total += cpu;
        *by_zone.entry(zone.to_owned()).or_default() += cpu;
    }
    if total == 0 || by_zone.len() < 2 {
        return None;
    }
    Some(
        by_zone
            .into_iter()
            .map(|(z, cpu)| (z, cpu as f64 / total as f64))
            .collect(),
    )
}

fn node_ready(node: &Node) -> bool {
    node.extra
        .get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(serde_json::Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(serde_json::Value::as_str) == Some("Ready"))
        })
        .and_then(|c| c.get("status").and_then(serde_json::Value::as_str))
        == Some("True")
}

/// `status.allocatable.cpu` in millicores (rounded up, as `MilliValue`).
fn allocatable_millicpu(node: &Node) -> Option<u64> {
    let q = node
        .extra
        .get("status")
        .and_then(|s| s.get("allocatable"))
        .and_then(|a| a.get("cpu"))?;
    match q {
        serde_json::Value::String(s) => parse_millis(s),
        serde_json::Value::Number(n) => n.as_f64().and_then(|v| millis_of(v * 1000.0)),
        _ => None,
    }
}

fn millis_of(v: f64) -> Option<u64> {
    (v.is_finite() && v >= 0.0).then(|| v.ceil() as u64)
}

/// A resource quantity (`4`, `3500m`, `1.5`, `2k`, `1Ki`) in thousandths.
fn parse_millis(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    millis_of(value * scale * 1000.0)
}

/// Why hints were removed, as the controller's `TopologyAwareHintsDisabled` event says.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HintsDisabled {
    /// A node lacks a zone or CPU, or ready nodes are in one zone only.
    InsufficientNodeInfo,
    /// Fewer ready endpoints than zones.
    InsufficientNumberOfEndpoints {
        /// Ready endpoints.
        endpoints: usize,
        /// Zones.
        zones: usize,
    },
    /// The zones' minimum shares add up to more endpoints than there are.
    MinAllocationExceedsOverloadThreshold {
        /// Ready endpoints.
        endpoints: usize,
        /// Zones.
        zones: usize,
    },
    /// A ready endpoint has no zone.
    NoZoneSpecified,
}

impl std::fmt::Display for HintsDisabled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InsufficientNodeInfo => {
                f.write_str("Insufficient Node information: allocatable CPU or zone not specified on one or more nodes")
            }
            Self::InsufficientNumberOfEndpoints { endpoints, zones } => write!(
                f,
                "Insufficient number of endpoints ({endpoints} endpoints, {zones} zones)"
            ),
            Self::MinAllocationExceedsOverloadThreshold { endpoints, zones } => write!(
                f,
                "Unable to allocate minimum required endpoints to each zone without exceeding overload threshold ({endpoints} endpoints, {zones} zones)"
            ),
            Self::NoZoneSpecified => f.write_str("One or more endpoints do not have a zone specified"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Allocation {
    minimum: usize,
    maximum: usize,
    desired: f64,
}

/// `getAllocations`: each zone's minimum, maximum and desired number of endpoints.
fn allocations(
    ratios: Option<&BTreeMap<String, f64>>,
    endpoints: usize,
) -> Result<BTreeMap<String, Allocation>, HintsDisabled> {
    let ratios = ratios.ok_or(HintsDisabled::InsufficientNodeInfo)?;
    if ratios.len() < 2 {
        return Err(HintsDisabled::InsufficientNodeInfo);
    }
    let zones = ratios.len();
    if zones > endpoints {
        return Err(HintsDisabled::InsufficientNumberOfEndpoints { endpoints, zones });
    }
    let mut out = BTreeMap::new();
    let mut min_total = 0;
    for (zone, ratio) in ratios {
        let desired = ratio * endpoints as f64;
        let minimum = (desired * (1.0 / (1.0 + OVERLOAD_THRESHOLD))).ceil() as usize;
        min_total += minimum;
        if min_total > endpoints {
            return Err(HintsDisabled::MinAllocationExceedsOverloadThreshold { endpoints, zones });
        }
        out.insert(
            zone.clone(),
            Allocation {
                minimum,
                maximum: 0,
                desired: desired.max(minimum as f64),
            },
        );
    }
    for a in out.values_mut() {
        a.maximum = a.minimum + endpoints - min_total;
    }
    Ok(out)
}

fn ready(e: &crate::model::Endpoint) -> bool {
    e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
}

/// One address family's slices of a Service, as the reconciler is about to leave them.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SliceInfo {
    /// Slices to create.
    pub to_create: Vec<EndpointSlice>,
    /// Slices to update.
    pub to_update: Vec<EndpointSlice>,
    /// Slices left as they are (may move to `to_update` when their hints must change).
    pub unchanged: Vec<EndpointSlice>,
}

/// `AddHints`: zone hints on the slices of one address family, or every hint removed (with
/// the reason) when a safeguard trips. `ratios` comes from [`zone_cpu_ratios`].
pub fn add_hints(
    si: &mut SliceInfo,
    ratios: Option<&BTreeMap<String, f64>>,
) -> Result<(), HintsDisabled> {
    let total: usize = si
        .to_create
        .iter()
        .chain(&si.to_update)
        .chain(&si.unchanged)
        .map(|s| s.endpoints.iter().filter(|e| ready(e)).count())
        .sum();
    let allocations = match allocations(ratios, total) {
        Ok(a) => a,
        Err(why) => {
            remove_hints(si);
            return Err(why);
        }
    };

    // Hints already on unchanged slices count while they still fit.
    let mut allocated: BTreeMap<String, usize> = BTreeMap::new();
    let mut still = Vec::new();
    for slice in std::mem::take(&mut si.unchanged) {
        match hints_by_zone(&slice, &allocated, &allocations) {
            Some(by_zone) => {
                for (zone, n) in by_zone {
                    *allocated.entry(zone).or_default() += n;
                }
                still.push(slice);
            }
            None => si.to_update.push(slice),
        }
    }
    si.unchanged = still;

    // 1. Every ready endpoint being written starts with its own zone.
    for slice in si.to_create.iter_mut().chain(si.to_update.iter_mut()) {
        for e in &mut slice.endpoints {
            if !ready(e) {
                e.hints = None;
                continue;
            }
            let Some(zone) = e.zone.clone().filter(|z| !z.is_empty()) else {
                remove_hints(si);
                return Err(HintsDisabled::NoZoneSpecified);
            };
            *allocated.entry(zone.clone()).or_default() += 1;
            e.hints = Some(EndpointHints {
                for_zones: vec![ForZone { name: zone }],
                for_nodes: Vec::new(),
            });
        }
    }

    // 2. Which zones give and which receive, in whole endpoints.
    let (mut giving, mut receiving) = giving_and_receiving(&allocations, &allocated);

    // 3. Move hints from giving zones' endpoints to receiving zones.
    'slices: for slice in si.to_create.iter_mut().chain(si.to_update.iter_mut()) {
        for e in &mut slice.endpoints {
            if !ready(e) {
                continue;
            }
            if giving.is_empty() || receiving.is_empty() {
                break 'slices;
            }
            let Some(zone) = e.zone.clone() else { continue };
            if giving.get(&zone).copied().unwrap_or(0) == 0 {
                continue;
            }
            let Some(to) = receiving
                .iter()
                .find(|(_, n)| **n > 0)
                .map(|(z, _)| z.clone())
            else {
                continue;
            };
            e.hints = Some(EndpointHints {
                for_zones: vec![ForZone { name: to.clone() }],
                for_nodes: Vec::new(),
            });
            for (map, key) in [(&mut giving, &zone), (&mut receiving, &to)] {
                let n = map.get_mut(key).expect("present");
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
    }
    Ok(())
}

/// `getHintsByZone`: the hints of an unchanged slice by zone, or `None` when the slice
/// must be rewritten (a ready endpoint without hints, a hint for a zone without an
/// allocation, or more hints for a zone than its maximum).
fn hints_by_zone(
    slice: &EndpointSlice,
    allocated: &BTreeMap<String, usize>,
    allocations: &BTreeMap<String, Allocation>,
) -> Option<BTreeMap<String, usize>> {
    let mut by_zone: BTreeMap<String, usize> = BTreeMap::new();
    for e in slice.endpoints.iter().filter(|e| ready(e)) {
        let zones = &e.hints.as_ref()?.for_zones;
        if zones.is_empty() {
            return None;
        }
        for z in zones {
            allocations.get(&z.name)?;
            *by_zone.entry(z.name.clone()).or_default() += 1;
        }
    }
    for (zone, n) in &by_zone {
        let a = allocations.get(zone)?;
        if n + allocated.get(zone).copied().unwrap_or(0) > a.maximum {
            return None;
        }
    }
    Some(by_zone)
}

/// `getGivingAndReceivingZones`.
fn giving_and_receiving(
    allocations: &BTreeMap<String, Allocation>,
    allocated: &BTreeMap<String, usize>,
) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let mut give_f: BTreeMap<String, f64> = BTreeMap::new();
    let mut take_f: BTreeMap<String, f64> = BTreeMap::new();
    for (zone, a) in allocations {
        let have = allocated.get(zone).copied().unwrap_or(0) as f64;
        if have > a.desired {
            give_f.insert(zone.clone(), have - a.desired);
        } else if have < a.desired {
            take_f.insert(zone.clone(), a.desired - have);
        }
    }
    let most = |m: &BTreeMap<String, f64>| {
        m.iter()
            .filter(|(_, n)| **n > 0.0)
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(z, n)| (z.clone(), *n))
    };
    let mut giving = BTreeMap::new();
    let mut receiving = BTreeMap::new();
    while let (Some((gz, gn)), Some((rz, rn))) = (most(&give_f), most(&take_f)) {
        if (gn < 1.0 && rn < 1.0) || gn < 0.5 || rn < 0.5 {
            break;
        }
        *giving.entry(gz.clone()).or_insert(0) += 1;
        *give_f.get_mut(&gz).expect("present") -= 1.0;
        *receiving.entry(rz.clone()).or_insert(0) += 1;
        *take_f.get_mut(&rz).expect("present") -= 1.0;
    }
    (giving, receiving)
}

/// `RemoveHintsFromSlices`: no hints on slices being written; unchanged slices that had
/// any are rewritten without.
fn remove_hints(si: &mut SliceInfo) {
    for slice in si.to_create.iter_mut().chain(si.to_update.iter_mut()) {
        for e in &mut slice.endpoints {
            e.hints = None;
        }
    }
    let mut still = Vec::new();
    for mut slice in std::mem::take(&mut si.unchanged) {
        if slice.endpoints.iter().any(|e| e.hints.is_some()) {
            for e in &mut slice.endpoints {
                e.hints = None;
            }
            si.to_update.push(slice);
        } else {
            still.push(slice);
        }
    }
    si.unchanged = still;
}

#[cfg(test)]
mod tests;
