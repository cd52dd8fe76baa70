//! The EndpointSlice mirroring controller: the EndpointSlices kube-controller-manager
//! writes for legacy `Endpoints` of Services without a selector (reference:
//! `pkg/controller/endpointslicemirroring`), so that proxies and DNS, which read only
//! EndpointSlices, see endpoints that someone manages by hand or by an older tool.
//!
//! Semantics:
//! - Mirrored only when the Service exists and has no selector, the Endpoints has no
//!   `endpointslice.kubernetes.io/skip-mirror: "true"` label and no leader-election
//!   annotation; otherwise every slice mirrored for that name is deleted.
//! - Each subset contributes at most [`MAX_ENDPOINTS_PER_SUBSET`] addresses (by default;
//!   `--mirroring-max-endpoints-per-subset`), ready ones first; addresses that are not IPs
//!   are skipped and counted.
//! - Subsets with the same ports (in any order) and address family share one slice, which
//!   holds at most that many endpoints; an endpoint is `ready` as its list says and has
//!   nothing else of the newer conditions, no zone and no hints.
//! - The slice copies the Endpoints' labels (then `kubernetes.io/service-name` and
//!   `endpointslice.kubernetes.io/managed-by: endpointslicemirroring-controller.k8s.io`)
//!   and annotations (but `endpoints.kubernetes.io/last-change-trigger-time` and
//!   `kubectl.kubernetes.io/last-applied-configuration`), and is owned by the Endpoints.
//! - Existing mirrored slices are kept when their endpoints already match, updated in place
//!   otherwise, and reused for new slices of the same family before any is deleted.
//!
//! Like [`super::reconcile`], this returns actions ([`SliceChanges`]) and writes nothing.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    AddressType, Endpoint, EndpointAddress, EndpointConditions, EndpointPort, EndpointSlice,
    Endpoints, MANAGED_BY_LABEL, ObjectMeta, OwnerReference, SERVICE_NAME_LABEL,
};
use crate::valid::ValidService;
use crate::validation::names::parse_ip_sloppy;

use super::{SliceChanges, generate_name_for};

/// `endpointslice.kubernetes.io/managed-by` of mirrored slices.
pub const MANAGED_BY_MIRRORING: &str = "endpointslicemirroring-controller.k8s.io";

/// The label that keeps an Endpoints from being mirrored (the Endpoints controller and the
/// API server's own `default/kubernetes` reconciler set it).
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";

/// The annotation of Endpoints used as leader-election locks: never mirrored.
pub const LEADER_ELECTION_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

/// The default of `--mirroring-max-endpoints-per-subset`.
pub const MAX_ENDPOINTS_PER_SUBSET: usize = 1000;

/// Annotations of the Endpoints that mirrored slices do not copy.
const NOT_COPIED: [&str; 2] = [
    "endpoints.kubernetes.io/last-change-trigger-time",
    "kubectl.kubernetes.io/last-applied-configuration",
];

/// What one mirroring pass decided.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Mirror {
    /// The slices to write.
    pub changes: SliceChanges,
    /// Addresses left out because they are not IPs (Kubernetes records a warning event,
    /// `InvalidIPAddress`).
    pub invalid_addresses: usize,
    /// Addresses left out because a subset had more than the limit
    /// (`TooManyAddressesToMirror`).
    pub over_capacity: usize,
}

/// Whether an Endpoints may be mirrored at all (`shouldMirror`): no skip-mirror label set
/// to `"true"` and no leader-election annotation.
pub fn should_mirror(endpoints: &Endpoints) -> bool {
    endpoints.metadata.label(SKIP_MIRROR_LABEL) != Some("true")
        && !endpoints
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(LEADER_ELECTION_ANNOTATION))
}

/// Whether `slice` was mirrored for the Endpoints `namespace/name`.
pub fn is_mirrored_for(slice: &EndpointSlice, namespace: &str, name: &str) -> bool {
    slice.metadata.namespace() == namespace
        && slice.service_name() == Some(name)
        && slice.metadata.label(MANAGED_BY_LABEL) == Some(MANAGED_BY_MIRRORING)
}

/// Reconciles the slices mirrored for the Endpoints `namespace/name` (`syncEndpoints`):
/// `service` is the Service of that name (if any), `endpoints` the Endpoints (if any),
/// `existing` any slices (those mirrored for this name are considered), and
/// `max_per_subset` the per-subset limit ([`MAX_ENDPOINTS_PER_SUBSET`] by default).
pub fn reconcile_mirror(
    namespace: &str,
    name: &str,
    service: Option<&ValidService>,
    endpoints: Option<&Endpoints>,
    existing: &[EndpointSlice],
    max_per_subset: usize,
) -> Mirror {
    let max = max_per_subset.max(1);
    let mut mirrored: Vec<&EndpointSlice> = existing
        .iter()
        .filter(|s| is_mirrored_for(s, namespace, name))
        .collect();
    mirrored.sort_by(|a, b| a.metadata.name().cmp(b.metadata.name()));
    let wanted = match (service, endpoints) {
        (Some(svc), Some(ep)) if svc.selector.is_none() && should_mirror(ep) => ep,
        _ => {
            return Mirror {
                changes: SliceChanges {
                    delete: mirrored.into_iter().cloned().collect(),
                    ..SliceChanges::default()
                },
                ..Mirror::default()
            };
        }
    };
    let mut out = Mirror::default();
    let desired = desired(wanted, max, &mut out);

    // Existing slices by the same key (family and port set).
    let mut by_key: BTreeMap<Key, Vec<&EndpointSlice>> = BTreeMap::new();
    for s in &mirrored {
        by_key
            .entry(key_of(s.address_type.clone(), &s.ports))
            .or_default()
            .push(s);
    }
    let mut create = Vec::new();
    let mut update = Vec::new();
    let mut delete: Vec<EndpointSlice> = Vec::new();
    for (key, group) in &desired.groups {
        let olds = by_key.remove(key).unwrap_or_default();
        if group.endpoints.is_empty() {
            delete.extend(olds.into_iter().cloned());
            continue;
        }
        let mut endpoints = group.endpoints.clone();
        endpoints.truncate(max);
        if let Some((first, rest)) = olds.split_first() {
            delete.extend(rest.iter().map(|s| (*s).clone()));
            if same_endpoints(&first.endpoints, &endpoints) {
                continue;
            }
            update.push(new_slice(
                wanted,
                first.metadata.name(),
                key.0.clone(),
                group.ports.clone(),
                endpoints,
            ));
        } else {
            create.push((key.0.clone(), group.ports.clone(), endpoints));
        }
    }
    // Port sets no longer wanted.
    for olds in by_key.into_values() {
        delete.extend(olds.into_iter().cloned());
    }
    // A slice being deleted is reused for a new one of its family (`recycleSlices`).
    let mut taken: BTreeSet<String> = existing
        .iter()
        .filter(|s| s.metadata.namespace() == namespace)
        .map(|s| s.metadata.name().to_owned())
        .collect();
    for (family, ports, endpoints) in create {
        if let Some(i) = delete.iter().position(|s| s.address_type == family) {
            let old = delete.remove(i);
            update.push(new_slice(
                wanted,
                old.metadata.name(),
                family,
                ports,
                endpoints,
            ));
        } else if wanted.metadata.deletion_timestamp.is_none() {
            let slice_name = generate_name_for(namespace, name, &mut taken);
            out.changes
                .create
                .push(new_slice(wanted, &slice_name, family, ports, endpoints));
        }
    }
    out.changes.update = update;
    out.changes.delete = delete;
    out
}

/// A slice's identity within one Endpoints: its family and its ports as a set.
type Key = (AddressType, Vec<PortKey>);
type PortKey = (Option<String>, Option<i32>, Option<String>, Option<String>);

fn key_of(family: AddressType, ports: &[EndpointPort]) -> Key {
    let mut ports: Vec<PortKey> = ports
        .iter()
        .map(|p| {
            (
                p.name.clone().filter(|n| !n.is_empty()),
                p.port,
                p.protocol.as_ref().map(|x| x.as_str().to_owned()),
                p.app_protocol.clone(),
            )
        })
        .collect();
    ports.sort();
    (family, ports)
}

struct Group {
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
}

struct Desired {
    groups: BTreeMap<Key, Group>,
}

/// The endpoints of every (family, port set), in the order the subsets list them.
fn desired(ep: &Endpoints, max: usize, out: &mut Mirror) -> Desired {
    let mut groups: BTreeMap<Key, Group> = BTreeMap::new();
    for subset in &ep.subsets {
        // Both families get a (possibly empty) group for the subset's ports.
        for family in [AddressType::Ipv4, AddressType::Ipv6] {
            groups
                .entry(key_of(family, &subset.ports))
                .or_insert_with(|| Group {
                    ports: subset.ports.clone(),
                    endpoints: Vec::new(),
                });
        }
        let total = subset.addresses.len() + subset.not_ready_addresses.len();
        let mut added = 0;
        let mut invalid = 0;
        let listed = subset
            .addresses
            .iter()
            .map(|a| (a, true))
            .chain(subset.not_ready_addresses.iter().map(|a| (a, false)));
        for (address, ready) in listed {
            if added >= max {
                break;
            }
            let Some((family, endpoint)) = to_endpoint(address, ready) else {
                invalid += 1;
                continue;
            };
            added += 1;
            let group = groups
                .get_mut(&key_of(family, &subset.ports))
                .expect("both families were inserted above");
            // The same endpoint twice (same address, hostname and target): the later wins,
            // as Kubernetes' endpoint set replaces by hash.
            match group
                .endpoints
                .iter_mut()
                .find(|e| same_identity(e, &endpoint))
            {
                Some(e) => *e = endpoint,
                None => group.endpoints.push(endpoint),
            }
        }
        // Past the limit, the rest of the subset is skipped unread.
        out.invalid_addresses += invalid;
        out.over_capacity += total - added - invalid;
    }
    Desired { groups }
}

/// `addressToEndpoint`: the address re-written in canonical form, `ready`, the target,
/// node and hostname.
fn to_endpoint(a: &EndpointAddress, ready: bool) -> Option<(AddressType, Endpoint)> {
    let ip = parse_ip_sloppy(&a.ip)?;
    let family = if ip.is_ipv4() {
        AddressType::Ipv4
    } else {
        AddressType::Ipv6
    };
    Some((
        family,
        Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                ..EndpointConditions::default()
            }),
            hostname: a.hostname.clone().filter(|h| !h.is_empty()),
            target_ref: a.target_ref.clone(),
            node_name: a.node_name.clone(),
            ..Endpoint::default()
        },
    ))
}

fn same_identity(a: &Endpoint, b: &Endpoint) -> bool {
    let target = |e: &Endpoint| {
        e.target_ref
            .as_ref()
            .map(|r| (r.namespace.clone(), r.name.clone()))
    };
    a.addresses == b.addresses && a.hostname == b.hostname && target(a) == target(b)
}

/// Whether a slice already holds exactly these endpoints (in any order).
fn same_endpoints(have: &[Endpoint], want: &[Endpoint]) -> bool {
    have.len() == want.len()
        && want
            .iter()
            .all(|w| have.iter().any(|h| same_identity(h, w) && h == w))
}

fn new_slice(
    ep: &Endpoints,
    slice_name: &str,
    family: AddressType,
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let namespace = ep.metadata.namespace();
    let name = ep.metadata.name();
    let mut metadata = ObjectMeta::named(namespace, slice_name);
    metadata.generate_name = Some(format!("{name}-"));
    let mut labels = ep.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), name.to_owned());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_MIRRORING.into());
    metadata.labels = Some(labels);
    let annotations: BTreeMap<String, String> = ep
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    metadata.owner_references = vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Endpoints".into(),
        name: name.to_owned(),
        uid: ep.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }];
    EndpointSlice {
        api_version: Some("discovery.k8s.io/v1".into()),
        kind: Some("EndpointSlice".into()),
        metadata,
        address_type: family,
        endpoints,
        ports,
    }
}

#[cfg(test)]
mod tests;
