//! Building a [`Snapshot`] from validated Services and EndpointSlices (legacy Endpoints
//! through the mirroring controller).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::traffic::TrafficInputs;
use super::{
    Endpoint, FamilyPlan, NodeInfo, OrdMap, ServiceEndpoint, ServiceInfo, ServicePort,
    ServicePortName, Snapshot, Traffic, categorize,
};
use crate::controller::mirroring;
use crate::model::{
    AddressType, EndpointSlice, Endpoints, IpFamily, Protocol, SERVICE_PROXY_NAME_LABEL,
};
use crate::valid::{ServiceKey, ValidService};
use crate::validation::names::parse_ip_sloppy;

/// Input that cannot form a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Two Services with the same namespace and name.
    #[error("Service {0} is defined more than once")]
    DuplicateService(ServiceKey),
}

/// An endpoint of a slice, parsed.
struct EndpointView<'a> {
    ip: IpAddr,
    hostname: Option<&'a str>,
    target_name: Option<&'a str>,
    node_name: Option<&'a str>,
    zone: Option<&'a str>,
    ready: bool,
    serving: bool,
    terminating: bool,
    zone_hints: Vec<&'a str>,
    node_hints: Vec<&'a str>,
}

/// A slice: one family, one port set.
struct SliceView<'a> {
    family: IpFamily,
    /// (name, port, protocol); ports without a usable number are kept for DNS as `None`.
    ports: Vec<(&'a str, Option<u16>, Protocol)>,
    endpoints: Vec<EndpointView<'a>>,
}

fn slice_view(slice: &EndpointSlice) -> Option<SliceView<'_>> {
    let family = match slice.address_type {
        AddressType::Ipv4 => IpFamily::Ipv4,
        AddressType::Ipv6 => IpFamily::Ipv6,
        // FQDN slices are deprecated and ignored by proxies and CoreDNS.
        _ => return None,
    };
    let ports = slice
        .ports
        .iter()
        .map(|p| {
            (
                p.name.as_deref().unwrap_or(""),
                p.port
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|&n| n != 0),
                p.protocol.clone().unwrap_or_default(),
            )
        })
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .filter_map(|ep| {
            // Consumers use the first address only.
            let ip = parse_ip_sloppy(ep.addresses.first()?)?;
            if IpFamily::of(&ip) != family {
                return None;
            }
            let c = ep.conditions.unwrap_or_default();
            let hints = ep.hints.as_ref();
            Some(EndpointView {
                ip,
                hostname: ep.hostname.as_deref(),
                target_name: ep.target_ref.as_ref().and_then(|r| r.name.as_deref()),
                node_name: ep.node_name.as_deref(),
                zone: ep.zone.as_deref(),
                ready: c.is_ready(),
                serving: c.is_serving(),
                terminating: c.is_terminating(),
                zone_hints: hints
                    .map(|h| h.for_zones.iter().map(|z| z.name.as_str()).collect())
                    .unwrap_or_default(),
                node_hints: hints
                    .map(|h| h.for_nodes.iter().map(|n| n.name.as_str()).collect())
                    .unwrap_or_default(),
            })
        })
        .collect();
    Some(SliceView {
        family,
        ports,
        endpoints,
    })
}

/// The key kube-proxy sorts and deduplicates endpoints by: `ip:port` as text
/// (`net.JoinHostPort`), compared as strings.
fn endpoint_string(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// The endpoints of one service port and family (`EndpointSliceCache.addEndpoints`):
/// first address only, deduplicated by `ip:port` (a local copy wins), sorted by that string.
fn port_endpoints(
    views: &[SliceView<'_>],
    port_name: &str,
    protocol: &Protocol,
    family: &IpFamily,
    node: &NodeInfo,
    interner: &mut Interner,
) -> Vec<Endpoint> {
    let mut intern = |s: &str| interner.get(s);
    let mut set: BTreeMap<String, Endpoint> = BTreeMap::new();
    for view in views.iter().filter(|v| v.family == *family) {
        for &(name, port, ref proto) in &view.ports {
            let Some(port) = port else { continue };
            if name != port_name || proto != protocol {
                continue;
            }
            for ep in &view.endpoints {
                let is_local = ep.node_name == Some(node.name.as_str()) && !node.name.is_empty();
                let key = endpoint_string(ep.ip, port);
                if set.contains_key(&key) && !is_local {
                    continue;
                }
                let endpoint = Endpoint {
                    ip: ep.ip,
                    port,
                    ready: ep.ready,
                    serving: ep.serving,
                    terminating: ep.terminating,
                    is_local,
                    node_name: ep.node_name.map(&mut intern),
                    zone: ep.zone.map(&mut intern),
                    zone_hints: ep.zone_hints.iter().map(|z| intern(z)).collect(),
                    node_hints: ep.node_hints.iter().map(|n| intern(n)).collect(),
                };
                set.insert(key, endpoint);
            }
        }
    }
    set.into_values().collect()
}

fn service_endpoints(views: &[SliceView<'_>]) -> Vec<ServiceEndpoint> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for view in views {
        let ports: Arc<[(String, u16, Protocol)]> = view
            .ports
            .iter()
            .filter_map(|&(name, port, ref proto)| Some((name.to_owned(), port?, proto.clone())))
            .collect();
        for ep in &view.endpoints {
            if !seen.insert(ep.ip) {
                continue;
            }
            out.push(ServiceEndpoint {
                ip: ep.ip,
                hostname: ep.hostname.map(str::to_owned),
                target_name: ep.target_name.map(str::to_owned),
                node_name: ep.node_name.map(str::to_owned),
                ready: ep.ready,
                serving: ep.serving,
                terminating: ep.terminating,
                ports: ports.clone(),
            });
        }
    }
    out
}

fn family_plan(
    svc: &ValidService,
    node_port: Option<u16>,
    family: &IpFamily,
    endpoints: Vec<Endpoint>,
    node: &NodeInfo,
) -> Option<FamilyPlan> {
    let cluster_ip = svc.cluster_ips.of_family(family)?;
    let same = |ip: &IpAddr| IpFamily::of(ip) == *family;
    let external_ips: Vec<IpAddr> = svc.external_ips.iter().copied().filter(same).collect();
    let load_balancer_ips: Vec<IpAddr> = svc
        .load_balancer_ingress
        .iter()
        .filter(|i| !i.proxy_mode && same(&i.ip))
        .map(|i| i.ip)
        .collect();
    let load_balancer_source_ranges: Vec<IpNet> = svc
        .load_balancer_source_ranges
        .iter()
        .copied()
        .filter(|r| same(&r.addr()))
        .collect();
    let externally_accessible =
        node_port.is_some() || !load_balancer_ips.is_empty() || !external_ips.is_empty();
    let external_local = svc.external_traffic_local && svc.externally_accessible();
    let internal_local = svc.internal_traffic_local;
    let selection = categorize(
        &endpoints,
        Traffic::uses_cluster(internal_local, externally_accessible),
        Traffic::uses_local(internal_local, external_local, externally_accessible),
        &node.name,
        node.zone.as_deref(),
    );
    let traffic = Traffic::derive(TrafficInputs {
        has_endpoints: selection.has_any,
        externally_accessible,
        internal_local,
        external_local,
        cluster_empty: selection.cluster.is_empty(),
        local_empty: selection.local.is_empty(),
        load_balancer_ips: !load_balancer_ips.is_empty(),
        source_ranges: !load_balancer_source_ranges.is_empty(),
    });
    Some(FamilyPlan {
        cluster_ip,
        external_ips,
        load_balancer_ips,
        load_balancer_source_ranges,
        endpoints,
        selection,
        traffic,
    })
}

/// Node names and zones shared between endpoints (and between builds).
#[derive(Debug, Default, Clone)]
pub(crate) struct Interner(HashMap<String, Arc<str>>);

impl Interner {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(s.to_owned(), a.clone());
        a
    }
}

/// What a snapshot holds for one Service: its DNS/env view, and the service ports the
/// proxy handles (none for headless, ExternalName, unallocated, or another proxy's
/// Services). Endpoints come from EndpointSlices only, as kube-proxy and CoreDNS read
/// them: `slices` (any order), with the Service's legacy Endpoints (`legacy`) reaching them
/// through the mirroring controller ([`mirroring`]): mirrored when the Service has no
/// selector, ignored when it has one. Without an Endpoints object, mirrored slices in
/// `slices` are taken as they are.
pub(crate) fn service_entries(
    svc: &ValidService,
    slices: &[&EndpointSlice],
    legacy: Option<&Endpoints>,
    node: &NodeInfo,
    interner: &mut Interner,
) -> (Arc<ServiceInfo>, Vec<Arc<ServicePort>>) {
    let (namespace, name) = (svc.key.namespace.as_str(), svc.key.name.as_str());
    let mirrored: Vec<EndpointSlice>;
    let mut sorted: Vec<&EndpointSlice> = match legacy {
        None => slices.to_vec(),
        Some(ep) => {
            let (was_mirrored, others): (Vec<&EndpointSlice>, Vec<&EndpointSlice>) = slices
                .iter()
                .partition(|s| mirroring::is_mirrored_for(s, namespace, name));
            let existing: Vec<EndpointSlice> = was_mirrored.into_iter().cloned().collect();
            let m = mirroring::reconcile_mirror(
                namespace,
                name,
                Some(svc),
                Some(ep),
                &existing,
                mirroring::MAX_ENDPOINTS_PER_SUBSET,
            );
            mirrored = m.changes.apply(&existing);
            others.into_iter().chain(&mirrored).collect()
        }
    };
    sorted.sort_by(|a, b| a.metadata.name().cmp(b.metadata.name()));
    let views: Vec<SliceView<'_>> = sorted.iter().filter_map(|s| slice_view(s)).collect();
    let other_proxy = svc
        .object
        .metadata
        .label(SERVICE_PROXY_NAME_LABEL)
        .is_some();
    let info = Arc::new(ServiceInfo {
        key: svc.key.clone(),
        type_: svc.type_.clone(),
        cluster_ips: svc.cluster_ips.clone(),
        cluster_ip_text: svc.object.spec.cluster_ip.clone().unwrap_or_default(),
        external_name: svc.external_name.clone(),
        ports: svc.ports.clone(),
        endpoints: service_endpoints(&views),
        other_proxy,
    });
    if svc.cluster_ips.ips().is_empty() || other_proxy {
        return (info, Vec::new());
    }
    let ports = svc
        .ports
        .iter()
        .map(|port| {
            let name = ServicePortName {
                service: svc.key.clone(),
                port: port.name.clone(),
                protocol: port.protocol.clone(),
            };
            let mut plan = |family: IpFamily| {
                let eps =
                    port_endpoints(&views, &port.name, &port.protocol, &family, node, interner);
                family_plan(svc, port.node_port, &family, eps, node)
            };
            let ipv4 = plan(IpFamily::Ipv4);
            let ipv6 = plan(IpFamily::Ipv6);
            Arc::new(ServicePort {
                name,
                port: port.port,
                node_port: port.node_port,
                session_affinity_timeout: svc.session_affinity_timeout,
                external_policy_local: svc.external_traffic_local && svc.externally_accessible(),
                internal_policy_local: svc.internal_traffic_local,
                health_check_node_port: if svc.needs_health_check() {
                    svc.health_check_node_port
                } else {
                    None
                },
                ipv4,
                ipv6,
            })
        })
        .collect();
    (info, ports)
}

/// `old` changed into `new`: a clone of `old` (sharing its tree) with the entries that
/// differ in `new` written over it, so that consecutive snapshots share unchanged entries
/// and tree nodes.
fn share<K: Ord + Clone, V: PartialEq>(
    old: &OrdMap<K, Arc<V>>,
    new: OrdMap<K, Arc<V>>,
) -> OrdMap<K, Arc<V>> {
    use imbl::ordmap::DiffItem;
    // One ordered walk of both maps (the diff `Snapshot::diff` uses).
    let mut out = old.clone();
    for d in old.diff(&new) {
        match d {
            DiffItem::Add(k, v) => {
                out.insert(k.clone(), v.clone());
            }
            DiffItem::Remove(k, _) => {
                out.remove(k);
            }
            DiffItem::Update {
                old: (_, a),
                new: (k, b),
            } if a != b => {
                out.insert(k.clone(), b.clone());
            }
            DiffItem::Update { .. } => {}
        }
    }
    out
}

impl Snapshot {
    /// Builds the snapshot for `node` from validated Services, EndpointSlices and legacy
    /// Endpoints. A Service's endpoints come from its EndpointSlices (label
    /// `kubernetes.io/service-name`); legacy Endpoints reach it only as the EndpointSlice
    /// mirroring controller would mirror them (Services without a selector, Endpoints not
    /// labelled `endpointslice.kubernetes.io/skip-mirror`), as in Kubernetes, where proxies
    /// and DNS read slices only. The result does not depend on the order of the inputs.
    ///
    /// # Errors
    /// [`SnapshotError::DuplicateService`] when two Services share a namespace and name.
    pub fn build(
        node: NodeInfo,
        services: &[ValidService],
        slices: &[EndpointSlice],
        endpoints: &[Endpoints],
    ) -> Result<Self, SnapshotError> {
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for s in slices {
            if let Some(name) = s.service_name() {
                by_service
                    .entry((s.metadata.namespace(), name))
                    .or_default()
                    .push(s);
            }
        }
        let legacy: HashMap<(&str, &str), &Endpoints> = endpoints
            .iter()
            .map(|e| ((e.metadata.namespace(), e.metadata.name()), e))
            .collect();

        let mut sorted: Vec<&ValidService> = services.iter().collect();
        sorted.sort_by(|a, b| a.key.cmp(&b.key));
        if let Some(w) = sorted.windows(2).find(|w| w[0].key == w[1].key) {
            return Err(SnapshotError::DuplicateService(w[0].key.clone()));
        }

        let mut interner = Interner::default();
        let mut snapshot = Self {
            node: Arc::new(node),
            ..Self::default()
        };
        for svc in sorted {
            let key = (svc.key.namespace.as_str(), svc.key.name.as_str());
            let slices = by_service.get(&key).map_or(&[][..], Vec::as_slice);
            let (info, ports) = service_entries(
                svc,
                slices,
                legacy.get(&key).copied(),
                &snapshot.node,
                &mut interner,
            );
            snapshot.services.insert(svc.key.clone(), info);
            for port in ports {
                snapshot.ports.insert(port.name.clone(), port);
            }
        }
        Ok(snapshot)
    }

    /// Like [`Snapshot::build`], but shares every entry equal to one of `self`'s, so that
    /// `new.diff(self)` compares unchanged entries by pointer.
    ///
    /// # Errors
    /// As [`Snapshot::build`].
    pub fn rebuild(
        &self,
        node: NodeInfo,
        services: &[ValidService],
        slices: &[EndpointSlice],
        endpoints: &[Endpoints],
    ) -> Result<Self, SnapshotError> {
        let mut new = Self::build(node, services, slices, endpoints)?;
        if new.node == self.node {
            new.node = self.node.clone();
        }
        new.services = share(&self.services, std::mem::take(&mut new.services));
        new.ports = share(&self.ports, std::mem::take(&mut new.ports));
        Ok(new)
    }
}
