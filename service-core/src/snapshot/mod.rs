//! The proxy [`Snapshot`]: the one contract between the control-plane side and every
//! consumer (service environment variables, DNS, the proxy backends).
//!
//! A snapshot holds only resolved facts for one node: per service port, its cluster IPs,
//! node port, external and load-balancer IPs, source ranges, affinity and traffic policies,
//! and its endpoints with the target port resolved, readiness folded in, locality decided,
//! and the endpoint selection kube-proxy would make on this node already done per IP
//! family ([`FamilyPlan`]). Entries are reference-counted, so a snapshot is cheap to clone
//! and two snapshots built one after the other share every unchanged entry, which makes
//! [`Snapshot::diff`] cheap.

mod build;
mod diff;
mod topology;
mod traffic;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

pub use build::SnapshotError;
pub(crate) use build::{Interner, service_entries};
pub use diff::{Change, SnapshotDiff};
/// The persistent ordered map a [`Snapshot`] keeps its entries in: cloning one is O(1),
/// and a changed clone shares every untouched entry and tree node with its original, so
/// consumers keep the previous snapshot for free and [`Snapshot::diff`] skips what is
/// shared.
pub use imbl::OrdMap;
pub use topology::categorize;
pub use traffic::{EndpointSet, Traffic};

use crate::model::{IpFamily, Protocol, ServiceType};
use crate::valid::{ClusterIps, ServiceKey, ValidServicePort};

/// Facts about the node the snapshot is for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct NodeInfo {
    /// Node name (`--hostname-override`), compared with endpoints' `nodeName`.
    pub name: String,
    /// Node IPs; the first of each family is the primary.
    pub ips: Vec<IpAddr>,
    /// The node's zone (`topology.kubernetes.io/zone`), for topology hints.
    pub zone: Option<String>,
    /// The node's pod CIDRs.
    pub pod_cidrs: Vec<IpNet>,
}

impl NodeInfo {
    /// A node with a name and IPs.
    pub fn new(name: &str, ips: Vec<IpAddr>) -> Self {
        Self {
            name: name.to_owned(),
            ips,
            zone: None,
            pod_cidrs: Vec::new(),
        }
    }

    /// Sets the zone.
    pub fn with_zone(mut self, zone: &str) -> Self {
        self.zone = Some(zone.to_owned());
        self
    }

    /// Sets the pod CIDRs.
    pub fn with_pod_cidrs(mut self, cidrs: Vec<IpNet>) -> Self {
        self.pod_cidrs = cidrs;
        self
    }

    /// The primary node IP of a family.
    pub fn primary_ip(&self, family: &IpFamily) -> Option<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| IpFamily::of(ip) == *family)
    }
}

/// Identifies a service port: `namespace/name`, port name and protocol.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub struct ServicePortName {
    /// The Service.
    pub service: ServiceKey,
    /// Port name (empty for an unnamed port).
    pub port: String,
    /// Protocol.
    pub protocol: Protocol,
}

impl ServicePortName {
    /// A service port name.
    pub fn new(namespace: &str, name: &str, port: &str, protocol: Protocol) -> Self {
        Self {
            service: ServiceKey::new(namespace, name),
            port: port.to_owned(),
            protocol,
        }
    }

    /// kube-proxy's spelling, `namespace/name:port` (no `:port` for an unnamed port), used in
    /// rule comments and chain-name hashes.
    pub fn proxy_name(&self) -> String {
        let key = &self.service;
        let mut s =
            String::with_capacity(key.namespace.len() + key.name.len() + self.port.len() + 2);
        s.push_str(&key.namespace);
        s.push('/');
        s.push_str(&key.name);
        if !self.port.is_empty() {
            s.push(':');
            s.push_str(&self.port);
        }
        s
    }
}

/// `namespace/name:port/PROTOCOL`.
impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.service, self.port, self.protocol)
    }
}

/// One endpoint of a service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Endpoint {
    /// Address.
    pub ip: IpAddr,
    /// Target port, resolved for this service port.
    pub port: u16,
    /// Ready for new connections.
    pub ready: bool,
    /// Serving (ready, ignoring termination).
    pub serving: bool,
    /// Terminating.
    pub terminating: bool,
    /// On this snapshot's node.
    pub is_local: bool,
    /// Node hosting the endpoint.
    pub node_name: Option<Arc<str>>,
    /// Zone of that node.
    pub zone: Option<Arc<str>>,
    /// Zones hinted to use this endpoint.
    pub zone_hints: Vec<Arc<str>>,
    /// Nodes hinted to use this endpoint.
    pub node_hints: Vec<Arc<str>>,
}

impl Endpoint {
    /// `ip:port` as a socket address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

/// The endpoints kube-proxy would use on this node for one service port and IP family
/// (`CategorizeEndpoints`), as indices into [`FamilyPlan::endpoints`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct EndpointSelection {
    /// Endpoints for Cluster traffic policy (topology applied, terminating fallback).
    pub cluster: Vec<u32>,
    /// Endpoints for Local traffic policy (local ready, or local serving-terminating).
    pub local: Vec<u32>,
    /// Union of the two: every endpoint a rule may reach from this node.
    pub all_reachable: Vec<u32>,
    /// Whether any usable endpoint exists anywhere in the cluster.
    pub has_any: bool,
}

/// A service port as seen by the proxy of one IP family on this node: only that family's
/// addresses, and that family's endpoints already selected.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct FamilyPlan {
    /// The cluster IP of this family.
    pub cluster_ip: IpAddr,
    /// External IPs of this family.
    pub external_ips: Vec<IpAddr>,
    /// Load-balancer ingress IPs of this family (VIP mode only).
    pub load_balancer_ips: Vec<IpAddr>,
    /// Load-balancer source ranges of this family.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// Endpoints of this family, in kube-proxy's order (by `ip:port` string).
    pub endpoints: Vec<Endpoint>,
    /// The selection.
    pub selection: EndpointSelection,
    /// Which of the selected endpoints each kind of traffic reaches.
    pub traffic: Traffic,
}

impl FamilyPlan {
    /// Reachable from outside: a node port, load-balancer IPs or external IPs of this family.
    pub fn externally_accessible(&self, node_port: Option<u16>) -> bool {
        node_port.is_some() || !self.load_balancer_ips.is_empty() || !self.external_ips.is_empty()
    }

    /// The Cluster-policy endpoints.
    pub fn cluster_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.selection
            .cluster
            .iter()
            .map(|&i| &self.endpoints[i as usize])
    }

    /// The Local-policy endpoints.
    pub fn local_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.selection
            .local
            .iter()
            .map(|&i| &self.endpoints[i as usize])
    }

    /// The endpoints of one set, as indices into [`FamilyPlan::endpoints`].
    pub fn set(&self, set: EndpointSet) -> &[u32] {
        match set {
            EndpointSet::Cluster => &self.selection.cluster,
            EndpointSet::Local => &self.selection.local,
        }
    }

    /// The endpoints of one set.
    pub fn set_endpoints(&self, set: EndpointSet) -> impl Iterator<Item = &Endpoint> {
        self.set(set).iter().map(|&i| &self.endpoints[i as usize])
    }

    /// Every endpoint a rule may reach from this node.
    pub fn reachable_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.selection
            .all_reachable
            .iter()
            .map(|&i| &self.endpoints[i as usize])
    }
}

/// A service port: what every proxy backend renders.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ServicePort {
    /// Name.
    pub name: ServicePortName,
    /// Port on the cluster, external and load-balancer IPs.
    pub port: u16,
    /// Node port.
    pub node_port: Option<u16>,
    /// ClientIP affinity timeout (seconds).
    pub session_affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local` (and externally accessible).
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// Health-check node port (LoadBalancer with `externalTrafficPolicy: Local`).
    pub health_check_node_port: Option<u16>,
    /// IPv4 view, if the Service has an IPv4 cluster IP.
    pub ipv4: Option<FamilyPlan>,
    /// IPv6 view, if the Service has an IPv6 cluster IP.
    pub ipv6: Option<FamilyPlan>,
}

impl ServicePort {
    /// The view of one family.
    pub fn family(&self, family: &IpFamily) -> Option<&FamilyPlan> {
        match family {
            IpFamily::Ipv6 => self.ipv6.as_ref(),
            _ => self.ipv4.as_ref(),
        }
    }

    /// Protocol.
    pub fn protocol(&self) -> &Protocol {
        &self.name.protocol
    }
}

/// One endpoint of a Service as DNS sees it (from any slice of the Service).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ServiceEndpoint {
    /// Address.
    pub ip: IpAddr,
    /// `hostname` from the slice.
    pub hostname: Option<String>,
    /// Name of the pod behind it.
    pub target_name: Option<String>,
    /// Node hosting it.
    pub node_name: Option<String>,
    /// Ready (unset counts as ready, as CoreDNS reads it).
    pub ready: bool,
    /// Serving.
    pub serving: bool,
    /// Terminating.
    pub terminating: bool,
    /// Ports of its slice: (name, port, protocol).
    pub ports: Arc<[(String, u16, Protocol)]>,
}

/// A Service as DNS and the environment-variable generator see it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ServiceInfo {
    /// `namespace/name`.
    pub key: ServiceKey,
    /// Type.
    pub type_: ServiceType,
    /// Cluster IPs.
    pub cluster_ips: ClusterIps,
    /// `spec.clusterIP` as written (`None`, empty, or an address in its original spelling,
    /// e.g. `2001:DB8::`): kubelet puts it in environment variables verbatim.
    pub cluster_ip_text: String,
    /// `ExternalName` target.
    pub external_name: Option<String>,
    /// Ports in spec order.
    pub ports: Vec<ValidServicePort>,
    /// Every endpoint of every slice, deduplicated by IP, in slice order.
    pub endpoints: Vec<ServiceEndpoint>,
    /// Handled by another proxy (`service.kubernetes.io/service-proxy-name` set): kube-proxy
    /// skips it, DNS still serves it.
    pub other_proxy: bool,
}

/// The state every consumer reads, for one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The node.
    pub node: Arc<NodeInfo>,
    /// Every valid Service, for DNS and environment variables.
    pub services: OrdMap<ServiceKey, Arc<ServiceInfo>>,
    /// Every service port the proxy handles: Services with a cluster IP, not handed to
    /// another proxy.
    pub ports: OrdMap<ServicePortName, Arc<ServicePort>>,
}

impl Snapshot {
    /// The service ports in key order.
    pub fn service_ports(&self) -> impl Iterator<Item = &Arc<ServicePort>> {
        self.ports.values()
    }

    /// The number of endpoints across all service ports and families.
    pub fn endpoint_count(&self) -> usize {
        self.ports
            .values()
            .flat_map(|p| [p.ipv4.as_ref(), p.ipv6.as_ref()])
            .flatten()
            .map(|f| f.endpoints.len())
            .sum()
    }
}

#[cfg(test)]
mod tests;
