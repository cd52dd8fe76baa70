//! The endpoints controllers: given a Service and the Pods (and optionally Nodes), the
//! EndpointSlices and the legacy Endpoints that kube-controller-manager would write.
//!
//! Semantics (reference: `pkg/controller/endpointslice`, `staging/src/k8s.io/endpointslice`,
//! `pkg/controller/endpoint`):
//! - Services without a selector and `ExternalName` Services get nothing (someone else
//!   manages their endpoints).
//! - A pod counts when its labels match the selector, it is not terminal, and it has an IP.
//!   Slices always include terminating pods (with `terminating: true`); legacy Endpoints only
//!   with `publishNotReadyAddresses`.
//! - `ready = publishNotReadyAddresses || (podReady && !terminating)`, `serving = podReady`.
//! - Named target ports resolve per pod, with matching protocol, through containers and then
//!   sidecar (restartable init) containers; a pod that lacks the port is left out of that
//!   port.
//! - A hostname is set when the pod's `subdomain` names the Service.
//! - Slices group endpoints by their resolved port set, hold at most
//!   [`ControllerConfig::max_endpoints_per_slice`] endpoints, and are reconciled against
//!   the existing slices to minimise churn, as the Kubernetes controller does.
//!
//! The controller returns actions ([`SliceChanges`]); it writes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::model::{
    AddressType, Endpoint, EndpointAddress, EndpointConditions, EndpointHints, EndpointPort,
    EndpointSlice, EndpointSubset, Endpoints, ForNode, ForZone, HEADLESS_LABEL, IpFamily,
    MANAGED_BY_CONTROLLER, MANAGED_BY_LABEL, Node, ObjectMeta, ObjectReference, OwnerReference,
    Pod, Protocol, SERVICE_NAME_LABEL, ServiceType, TrafficDistribution,
};
use crate::valid::{ClusterIps, TargetPort, ValidService, ValidServicePort};

/// Settings of the EndpointSlice controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ControllerConfig {
    /// `--max-endpoints-per-slice` (1..=1000, default 100).
    pub max_endpoints_per_slice: usize,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            max_endpoints_per_slice: 100,
        }
    }
}

/// What to write to make the stored slices match the desired state.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct SliceChanges {
    /// New slices.
    pub create: Vec<EndpointSlice>,
    /// Existing slices with new content (same names).
    pub update: Vec<EndpointSlice>,
    /// Existing slices to delete.
    pub delete: Vec<EndpointSlice>,
    /// Why Topology Aware Routing hints were removed from a `topology-mode: Auto`
    /// Service's slices of an address family (the controller's
    /// `TopologyAwareHintsDisabled` events); empty when hints are in place or not asked
    /// for.
    pub hints_disabled: Vec<(AddressType, topology::HintsDisabled)>,
}

impl SliceChanges {
    /// Whether nothing needs to be written.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }

    /// The slices that exist after applying the changes to `existing`, sorted by name.
    pub fn apply(&self, existing: &[EndpointSlice]) -> Vec<EndpointSlice> {
        let mut by_name: BTreeMap<String, EndpointSlice> = existing
            .iter()
            .map(|s| (s.metadata.name().to_owned(), s.clone()))
            .collect();
        for s in &self.delete {
            by_name.remove(s.metadata.name());
        }
        for s in self.update.iter().chain(&self.create) {
            by_name.insert(s.metadata.name().to_owned(), s.clone());
        }
        by_name.into_values().collect()
    }
}

/// Whether a pod's labels match a Service selector (equality on every key).
pub fn selector_matches(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// `ShouldPodBeInEndpoints`: not terminal, has an IP, and not terminating unless asked.
fn pod_counts(pod: &Pod, include_terminating: bool) -> bool {
    if pod.is_terminal() || pod.ips().is_empty() {
        return false;
    }
    include_terminating || pod.metadata.deletion_timestamp.is_none()
}

/// `ShouldSetHostname`.
fn hostname_for(pod: &Pod, svc: &ValidService) -> Option<String> {
    let hostname = pod.spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    (pod.spec.subdomain.as_deref() == Some(svc.key.name.as_str())
        && pod.metadata.namespace() == svc.key.namespace)
        .then(|| hostname.to_owned())
}

/// `FindPort`: a number is used as is; a name is looked up in the containers, then in
/// restartable init containers, with a matching protocol.
pub fn find_port(pod: &Pod, port: &ValidServicePort) -> Option<u16> {
    match &port.target_port {
        TargetPort::Number(n) => Some(*n),
        TargetPort::Name(name) => {
            let sidecars = pod
                .spec
                .init_containers
                .iter()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            pod.spec
                .containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| &c.ports)
                .find(|cp| {
                    cp.name.as_deref() == Some(name.as_str())
                        && cp.protocol.clone().unwrap_or_default() == port.protocol
                })
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .filter(|&p| p != 0)
        }
    }
}

fn pods_for<'a>(svc: &'a ValidService, pods: &'a [Pod]) -> Option<impl Iterator<Item = &'a Pod>> {
    if svc.type_ == ServiceType::ExternalName {
        return None;
    }
    let selector = svc.selector.as_ref()?;
    let mut matching: Vec<&Pod> = pods
        .iter()
        .filter(move |p| {
            p.metadata.namespace() == svc.key.namespace && selector_matches(selector, p)
        })
        .collect();
    matching.sort_by(|a, b| a.metadata.name().cmp(b.metadata.name()));
    Some(matching.into_iter())
}

/// The address types a Service's slices use (`getAddressTypesForService`).
fn address_types(svc: &ValidService) -> Vec<AddressType> {
    let of = |f: &IpFamily| match f {
        IpFamily::Ipv6 => AddressType::Ipv6,
        _ => AddressType::Ipv4,
    };
    if !svc.ip_families.is_empty() {
        return svc.ip_families.iter().map(of).collect();
    }
    match &svc.cluster_ips {
        ClusterIps::Ips(ips) if !ips.is_empty() => {
            ips.iter().map(|ip| of(&IpFamily::of(ip))).collect()
        }
        // Headless without families: both.
        _ => vec![AddressType::Ipv4, AddressType::Ipv6],
    }
}

fn endpoint_ports(svc: &ValidService, pod: &Pod) -> Vec<EndpointPort> {
    svc.ports
        .iter()
        .filter_map(|sp| {
            let port = find_port(pod, sp)?;
            Some(EndpointPort {
                name: Some(sp.name.clone()),
                port: Some(i32::from(port)),
                protocol: Some(sp.protocol.clone()),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect()
}

/// The endpoint a pod contributes to a slice of `address_type`, or `None` when it has no IP
/// of that family.
fn pod_to_endpoint(
    pod: &Pod,
    node: Option<&Node>,
    svc: &ValidService,
    address_type: &AddressType,
) -> Option<Endpoint> {
    let want_v6 = *address_type == AddressType::Ipv6;
    let addresses: Vec<String> = pod
        .ips()
        .into_iter()
        .filter(|ip| ip.contains(':') == want_v6)
        .map(str::to_owned)
        .collect();
    if addresses.is_empty() {
        return None;
    }
    let serving = pod.is_ready();
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready = svc.publish_not_ready_addresses || (serving && !terminating);
    let zone = node
        .and_then(Node::zone)
        .filter(|z| !z.is_empty())
        .map(str::to_owned);
    let node_name = pod.spec.node_name.clone().filter(|n| !n.is_empty());
    // Hints by annotation (Topology Aware Routing) are added once the slices are known, and
    // take precedence over `trafficDistribution`.
    let hints = if !ready || topology::hints_enabled(&svc.object.metadata) {
        None
    } else {
        match &svc.traffic_distribution {
            Some(TrafficDistribution::PreferClose | TrafficDistribution::PreferSameZone) => {
                zone.as_ref().map(|z| EndpointHints {
                    for_zones: vec![ForZone { name: z.clone() }],
                    for_nodes: vec![],
                })
            }
            Some(TrafficDistribution::PreferSameNode) => {
                let for_zones = zone.iter().map(|z| ForZone { name: z.clone() }).collect();
                let for_nodes = node_name
                    .iter()
                    .map(|n| ForNode { name: n.clone() })
                    .collect();
                Some(EndpointHints {
                    for_zones,
                    for_nodes,
                })
            }
            _ => None,
        }
    };
    Some(Endpoint {
        addresses,
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname: hostname_for(pod, svc),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some(pod.metadata.namespace().to_owned()),
            name: Some(pod.metadata.name().to_owned()),
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        node_name,
        zone,
        hints,
        deprecated_topology: None,
    })
}

/// The endpoints each port set should have, per address type.
type Desired = BTreeMap<(AddressType, Vec<EndpointPort>), Vec<Endpoint>>;

fn desired(svc: &ValidService, pods: &[Pod], nodes: Option<&[Node]>) -> Option<Desired> {
    let matching = pods_for(svc, pods)?;
    let node_index: Option<HashMap<&str, &Node>> =
        nodes.map(|ns| ns.iter().map(|n| (n.metadata.name(), n)).collect());
    let types = address_types(svc);
    let mut out = Desired::new();
    for pod in matching {
        if !pod_counts(pod, true) {
            continue;
        }
        let node = match (&node_index, pod.spec.node_name.as_deref()) {
            (Some(index), Some(name)) => match index.get(name) {
                Some(n) => Some(*n),
                // Kubernetes skips pods on unknown nodes unless the Service publishes
                // not-ready addresses.
                None if !svc.publish_not_ready_addresses => continue,
                None => None,
            },
            _ => None,
        };
        let mut ports = endpoint_ports(svc, pod);
        ports.sort();
        for at in &types {
            if let Some(ep) = pod_to_endpoint(pod, node, svc, at) {
                out.entry((at.clone(), ports.clone())).or_default().push(ep);
            }
        }
    }
    Some(out)
}

fn slice_labels(svc: &ValidService) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = svc
        .object
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != SERVICE_NAME_LABEL && k != MANAGED_BY_LABEL && k != HEADLESS_LABEL)
        .collect();
    labels.insert(SERVICE_NAME_LABEL.into(), svc.key.name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_CONTROLLER.into());
    if svc.cluster_ips.ips().is_empty() {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    labels
}

/// Kubernetes' random-name alphabet (no vowels, no confusable digits).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn fnv1a(data: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ seed;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A generated slice name: `<service>-` plus five characters, derived deterministically
/// from the Service and a counter (Kubernetes draws them at random; determinism keeps
/// output stable), avoiding names already taken.
fn generate_name(svc: &ValidService, taken: &mut BTreeSet<String>) -> String {
    generate_name_for(&svc.key.namespace, &svc.key.name, taken)
}

/// [`generate_name`] for any owner `namespace/name`.
fn generate_name_for(namespace: &str, name: &str, taken: &mut BTreeSet<String>) -> String {
    let prefix: &str = if name.len() > 57 { &name[..57] } else { name };
    let seed = format!("{namespace}/{name}");
    for attempt in 0u64.. {
        let mut h = fnv1a(seed.as_bytes(), attempt);
        let mut suffix = String::with_capacity(5);
        for _ in 0..5 {
            suffix.push(char::from(
                NAME_ALPHABET[(h % NAME_ALPHABET.len() as u64) as usize],
            ));
            h /= NAME_ALPHABET.len() as u64;
        }
        let name = format!("{prefix}-{suffix}");
        if taken.insert(name.clone()) {
            return name;
        }
    }
    unreachable!("an unbounded counter always finds a free name")
}

fn new_slice(
    svc: &ValidService,
    name: String,
    address_type: AddressType,
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let mut metadata = ObjectMeta::named(&svc.key.namespace, &name);
    metadata.generate_name = Some(format!("{}-", svc.key.name));
    metadata.labels = Some(slice_labels(svc));
    metadata.owner_references = vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.key.name.clone(),
        uid: svc.object.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }];
    EndpointSlice {
        api_version: Some("discovery.k8s.io/v1".into()),
        kind: Some("EndpointSlice".into()),
        metadata,
        address_type,
        endpoints,
        ports,
    }
}

fn endpoint_key(ep: &Endpoint) -> (&str, Option<&str>) {
    (
        ep.addresses.first().map_or("", String::as_str),
        ep.target_ref.as_ref().and_then(|r| r.uid.as_deref()),
    )
}

fn owned_by(slice: &EndpointSlice, svc: &ValidService) -> bool {
    slice.metadata.namespace() == svc.key.namespace
        && slice.service_name() == Some(svc.key.name.as_str())
        && slice.metadata.label(MANAGED_BY_LABEL) == Some(MANAGED_BY_CONTROLLER)
}

/// Reconciles the slices of one Service (`reconcileByPortMapping`): keeps desired endpoints
/// where they are, drops the rest, fills slices being written anyway (fullest first), then
/// places leftovers in the unchanged slice that ends closest to full if one can take them
/// all, else in new slices. A Service with no endpoints keeps one empty placeholder slice.
///
/// `nodes` is the Node list for zones; pass `None` when you do not track Nodes (then pods
/// are never skipped for an unknown node and endpoints carry no zone).
pub fn reconcile(
    svc: &ValidService,
    pods: &[Pod],
    nodes: Option<&[Node]>,
    existing: &[EndpointSlice],
    config: ControllerConfig,
) -> SliceChanges {
    let max = config.max_endpoints_per_slice.clamp(1, 1000);
    let mut owned: Vec<&EndpointSlice> = existing.iter().filter(|s| owned_by(s, svc)).collect();
    owned.sort_by(|a, b| a.metadata.name().cmp(b.metadata.name()));
    let mut changes = SliceChanges::default();
    let Some(desired) = desired(svc, pods, nodes) else {
        // No selector or ExternalName: the controller leaves the Service alone.
        return changes;
    };
    let mut taken: BTreeSet<String> = existing
        .iter()
        .map(|s| s.metadata.name().to_owned())
        .collect();
    let types = address_types(svc);
    let labels = slice_labels(svc);
    let auto_hints = topology::hints_enabled(&svc.object.metadata);

    // Slices of address types the Service no longer has are deleted.
    let (keep, drop): (Vec<&EndpointSlice>, Vec<&EndpointSlice>) = owned
        .into_iter()
        .partition(|s| types.contains(&s.address_type));
    changes.delete.extend(drop.into_iter().cloned());

    let mut by_group: BTreeMap<(AddressType, Vec<EndpointPort>), Vec<&EndpointSlice>> =
        BTreeMap::new();
    for s in keep {
        let mut ports = s.ports.clone();
        ports.sort();
        by_group
            .entry((s.address_type.clone(), ports))
            .or_default()
            .push(s);
    }
    let mut groups: BTreeSet<(AddressType, Vec<EndpointPort>)> = desired.keys().cloned().collect();
    groups.extend(by_group.keys().cloned());

    let mut total_endpoints = 0;
    for group in groups {
        let wanted = desired.get(&group).cloned().unwrap_or_default();
        total_endpoints += wanted.len();
        let slices = by_group.remove(&group).unwrap_or_default();
        let mut remaining: Vec<Option<Endpoint>> = wanted.into_iter().map(Some).collect();
        let index: HashMap<(String, Option<String>), usize> = remaining
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let (ip, uid) = endpoint_key(e.as_ref()?);
                Some(((ip.to_owned(), uid.map(str::to_owned)), i))
            })
            .collect();

        // 1. Keep desired endpoints in place; update or delete slices that changed.
        let mut updating: Vec<EndpointSlice> = Vec::new();
        let mut unchanged: Vec<&EndpointSlice> = Vec::new();
        for s in slices {
            let mut kept = Vec::new();
            let mut changed = false;
            for ep in &s.endpoints {
                let (ip, uid) = endpoint_key(ep);
                match index.get(&(ip.to_owned(), uid.map(str::to_owned))) {
                    Some(&i) => match remaining[i].take() {
                        Some(want) => {
                            // Topology Aware Routing's hints are checked below, on their
                            // own terms.
                            changed |= if auto_hints {
                                !equal_but_hints(&want, ep)
                            } else {
                                want != *ep
                            };
                            kept.push(want);
                        }
                        // Already placed in an earlier slice: a duplicate to remove.
                        None => changed = true,
                    },
                    None => changed = true,
                }
            }
            let labels_changed = s.metadata.labels.as_ref() != Some(&labels);
            if kept.is_empty() && !s.endpoints.is_empty() {
                changes.delete.push(s.clone());
            } else if changed || labels_changed {
                let mut updated = s.clone();
                updated.endpoints = kept;
                updated.metadata.labels = Some(labels.clone());
                updating.push(updated);
            } else {
                unchanged.push(s);
            }
        }
        let mut leftovers: Vec<Endpoint> = remaining.into_iter().flatten().collect();

        // 2. Fill slices that are being updated anyway, fullest first.
        updating.sort_by_key(|s| std::cmp::Reverse(s.endpoints.len()));
        for s in &mut updating {
            let room = max.saturating_sub(s.endpoints.len());
            let n = room.min(leftovers.len());
            s.endpoints.extend(leftovers.drain(..n));
        }

        // 3. Leftovers: an unchanged slice that ends closest to full, or new slices.
        if !leftovers.is_empty() && leftovers.len() < max {
            let best = unchanged
                .iter()
                .enumerate()
                .filter(|(_, s)| s.endpoints.len() + leftovers.len() <= max)
                .max_by_key(|(_, s)| s.endpoints.len())
                .map(|(i, _)| i);
            if let Some(i) = best {
                let mut filled = unchanged.remove(i).clone();
                filled.endpoints.append(&mut leftovers);
                updating.push(filled);
            }
        }
        while !leftovers.is_empty() {
            let n = max.min(leftovers.len());
            let chunk: Vec<Endpoint> = leftovers.drain(..n).collect();
            let name = generate_name(svc, &mut taken);
            changes.create.push(new_slice(
                svc,
                name,
                group.0.clone(),
                group.1.clone(),
                chunk,
            ));
        }
        // Slices emptied by updates (not the placeholder) are deleted, not written empty.
        for s in updating {
            if s.endpoints.is_empty() && !s.ports.is_empty() {
                changes.delete.push(s);
            } else {
                changes.update.push(s);
            }
        }
    }

    // A Service with no endpoints keeps one placeholder slice (no endpoints, no ports).
    let after = changes.apply(existing);
    let remaining_owned: Vec<&EndpointSlice> = after.iter().filter(|s| owned_by(s, svc)).collect();
    if total_endpoints == 0 && remaining_owned.is_empty() {
        let name = generate_name(svc, &mut taken);
        changes
            .create
            .push(new_slice(svc, name, types[0].clone(), vec![], vec![]));
    } else if total_endpoints > 0 {
        // Once real endpoints exist, placeholders go.
        for s in remaining_owned {
            if s.endpoints.is_empty() && s.ports.is_empty() {
                changes
                    .update
                    .retain(|u| u.metadata.name() != s.metadata.name());
                changes
                    .create
                    .retain(|u| u.metadata.name() != s.metadata.name());
                changes.delete.push(s.clone());
            }
        }
    }
    changes
        .delete
        .sort_by(|a, b| a.metadata.name().cmp(b.metadata.name()));
    changes
        .delete
        .dedup_by(|a, b| a.metadata.name() == b.metadata.name());
    if auto_hints {
        add_topology_hints(svc, nodes, existing, &types, &mut changes);
    }
    changes
        .create
        .sort_by(|a, b| a.metadata.name().cmp(b.metadata.name()));
    changes
        .update
        .sort_by(|a, b| a.metadata.name().cmp(b.metadata.name()));
    changes
}

fn equal_but_hints(a: &Endpoint, b: &Endpoint) -> bool {
    let strip = |e: &Endpoint| Endpoint {
        hints: None,
        ..e.clone()
    };
    strip(a) == strip(b)
}

/// Topology Aware Routing on the slices the reconcile leaves, one address family at a time
/// (`TopologyCache.AddHints`). Without Node information every hint goes.
fn add_topology_hints(
    svc: &ValidService,
    nodes: Option<&[Node]>,
    existing: &[EndpointSlice],
    types: &[AddressType],
    changes: &mut SliceChanges,
) {
    let ratios = nodes.and_then(topology::zone_cpu_ratios);
    let touched: BTreeSet<String> = changes
        .create
        .iter()
        .chain(&changes.update)
        .chain(&changes.delete)
        .map(|s| s.metadata.name().to_owned())
        .collect();
    for family in types {
        let of = |v: &mut Vec<EndpointSlice>| {
            let (mine, rest): (Vec<EndpointSlice>, Vec<EndpointSlice>) = std::mem::take(v)
                .into_iter()
                .partition(|s| s.address_type == *family);
            *v = rest;
            mine
        };
        let mut si = topology::SliceInfo {
            to_create: of(&mut changes.create),
            to_update: of(&mut changes.update),
            unchanged: existing
                .iter()
                .filter(|s| owned_by(s, svc) && s.address_type == *family)
                .filter(|s| !touched.contains(s.metadata.name()))
                .cloned()
                .collect(),
        };
        if let Err(why) = topology::add_hints(&mut si, ratios.as_ref()) {
            changes.hints_disabled.push((family.clone(), why));
        }
        changes.create.append(&mut si.to_create);
        changes.update.append(&mut si.to_update);
    }
}

/// The EndpointSlices of a Service when none exist yet.
pub fn endpoint_slices(
    svc: &ValidService,
    pods: &[Pod],
    nodes: Option<&[Node]>,
    config: ControllerConfig,
) -> Vec<EndpointSlice> {
    reconcile(svc, pods, nodes, &[], config).create
}

/// The legacy `Endpoints` object of a Service (`pkg/controller/endpoint`), or `None` when
/// the controller leaves the Service alone (no selector, or `ExternalName`).
///
/// Addresses are of the Service's primary family only. Subsets group ports by identical
/// address sets (`RepackSubsets`); a not-ready sighting of an address wins over a ready
/// one. Kubernetes orders ports and subsets by a hash of Go's debug printing, which is not
/// reproducible; this function orders addresses by IP string (as Kubernetes does), ports by
/// (name, port, protocol) and subsets by their first address. At most 1000 addresses are
/// kept, ready ones first, with the `endpoints.kubernetes.io/over-capacity: truncated`
/// annotation.
pub fn endpoints(svc: &ValidService, pods: &[Pod]) -> Option<Endpoints> {
    let matching = pods_for(svc, pods)?;
    let primary_v6 = match (svc.ip_families.first(), svc.cluster_ips.ips().first()) {
        (Some(f), _) => Some(*f == IpFamily::Ipv6),
        (None, Some(ip)) => Some(ip.is_ipv6()),
        (None, None) => None,
    };
    // port -> address key -> (address, ready)
    type AddrKey = (String, Option<String>);
    let mut by_port: BTreeMap<EndpointPort, BTreeMap<AddrKey, (EndpointAddress, bool)>> =
        BTreeMap::new();
    let no_ports_sentinel = EndpointPort {
        name: None,
        port: Some(-1),
        protocol: None,
        app_protocol: None,
    };
    for pod in matching {
        if !pod_counts(pod, svc.publish_not_ready_addresses) {
            continue;
        }
        let ips = pod.ips();
        let ip = match primary_v6 {
            Some(v6) => ips.iter().find(|ip| ip.contains(':') == v6),
            // Headless without families: the family of the pod's primary IP.
            None => ips.first(),
        };
        let Some(ip) = ip else { continue };
        let addr = EndpointAddress {
            ip: (*ip).to_owned(),
            hostname: hostname_for(pod, svc),
            node_name: pod.spec.node_name.clone().filter(|n| !n.is_empty()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some(pod.metadata.namespace().to_owned()),
                name: Some(pod.metadata.name().to_owned()),
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
        };
        let ready = svc.publish_not_ready_addresses || pod.is_ready();
        let key = (addr.ip.clone(), pod.metadata.uid.clone());
        let ports: Vec<EndpointPort> = if svc.ports.is_empty() && svc.is_headless() {
            vec![no_ports_sentinel.clone()]
        } else {
            svc.ports
                .iter()
                .filter_map(|sp| {
                    Some(EndpointPort {
                        name: Some(sp.name.clone()).filter(|n| !n.is_empty()),
                        port: Some(i32::from(find_port(pod, sp)?)),
                        protocol: Some(sp.protocol.clone()),
                        app_protocol: sp.app_protocol.clone(),
                    })
                })
                .collect()
        };
        for port in ports {
            let set = by_port.entry(port).or_default();
            match set.get_mut(&key) {
                // Not-ready wins over ready.
                Some(existing) => existing.1 &= ready,
                None => {
                    set.insert(key.clone(), (addr.clone(), ready));
                }
            }
        }
    }

    // Group ports by identical address sets.
    // address set -> (ready addresses, not-ready addresses, ports)
    type Group = (
        Vec<EndpointAddress>,
        Vec<EndpointAddress>,
        Vec<EndpointPort>,
    );
    let mut groups: BTreeMap<Vec<(AddrKey, bool)>, Group> = BTreeMap::new();
    for (port, addrs) in by_port {
        let signature: Vec<(AddrKey, bool)> = addrs
            .iter()
            .map(|(k, (_, ready))| (k.clone(), *ready))
            .collect();
        let entry = groups.entry(signature).or_insert_with(|| {
            let mut ready = Vec::new();
            let mut not_ready = Vec::new();
            for (addr, r) in addrs.values() {
                if *r {
                    ready.push(addr.clone());
                } else {
                    not_ready.push(addr.clone());
                }
            }
            (ready, not_ready, Vec::new())
        });
        if port != no_ports_sentinel {
            entry.2.push(port);
        }
    }
    let by_ip = |a: &EndpointAddress, b: &EndpointAddress| {
        a.ip.cmp(&b.ip).then_with(|| {
            let uid = |x: &EndpointAddress| x.target_ref.as_ref().and_then(|r| r.uid.clone());
            uid(a).cmp(&uid(b))
        })
    };
    let mut subsets: Vec<EndpointSubset> = groups
        .into_values()
        .map(|(mut addresses, mut not_ready_addresses, mut ports)| {
            addresses.sort_by(by_ip);
            not_ready_addresses.sort_by(by_ip);
            ports.sort_by(|a, b| {
                (
                    a.name.as_deref(),
                    a.port,
                    a.protocol.as_ref().map(Protocol::as_str),
                )
                    .cmp(&(
                        b.name.as_deref(),
                        b.port,
                        b.protocol.as_ref().map(Protocol::as_str),
                    ))
            });
            EndpointSubset {
                addresses,
                not_ready_addresses,
                ports,
            }
        })
        .collect();
    subsets.sort_by(|a, b| {
        let first = |s: &EndpointSubset| {
            s.addresses
                .first()
                .or_else(|| s.not_ready_addresses.first())
                .map(|a| a.ip.clone())
        };
        first(a).cmp(&first(b))
    });

    let mut metadata = ObjectMeta::named(&svc.key.namespace, &svc.key.name);
    let mut labels = svc.object.metadata.labels.clone().unwrap_or_default();
    if svc.cluster_ips.ips().is_empty() {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    metadata.labels = (!labels.is_empty()).then_some(labels);
    if truncate(&mut subsets, 1000) {
        metadata.annotations = Some(
            [(
                "endpoints.kubernetes.io/over-capacity".to_string(),
                "truncated".to_string(),
            )]
            .into(),
        );
    }
    Some(Endpoints {
        api_version: Some("v1".into()),
        kind: Some("Endpoints".into()),
        metadata,
        subsets,
    })
}

/// `truncateEndpoints`: keeps at most `max` addresses, ready ones first, each subset getting
/// a share proportional to its size. Returns whether anything was dropped.
fn truncate(subsets: &mut [EndpointSubset], max: usize) -> bool {
    let total: usize = subsets
        .iter()
        .map(|s| s.addresses.len() + s.not_ready_addresses.len())
        .sum();
    if total <= max {
        return false;
    }
    let ready_total: usize = subsets.iter().map(|s| s.addresses.len()).sum();
    let mut budget = max;
    if ready_total >= max {
        for s in subsets.iter_mut() {
            s.not_ready_addresses.clear();
        }
        for s in subsets.iter_mut() {
            let share = (s.addresses.len() * max).div_ceil(ready_total).min(budget);
            s.addresses.truncate(share);
            budget -= s.addresses.len();
        }
    } else {
        budget -= ready_total;
        let not_ready_total = total - ready_total;
        for s in subsets.iter_mut() {
            let share = (s.not_ready_addresses.len() * (max - ready_total))
                .div_ceil(not_ready_total)
                .min(budget);
            s.not_ready_addresses.truncate(share);
            budget -= s.not_ready_addresses.len();
        }
    }
    true
}

pub mod mirroring;
pub mod topology;

#[cfg(test)]
mod tests;
