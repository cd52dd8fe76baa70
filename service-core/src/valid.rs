//! The validated model: what validation returns, with IPs and CIDRs parsed and every
//! enumeration known. Later stages (allocators, the endpoints controller, the Snapshot)
//! only ever see these types.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{IpFamily, IpFamilyPolicy, Protocol, Service, ServiceType, TrafficDistribution};

/// `namespace/name` of an object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ServiceKey {
    /// A key from namespace and name.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a Service port sends traffic on its endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// The name of a container port, resolved per pod.
    Name(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Name(s) => f.write_str(s),
        }
    }
}

/// A validated Service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ValidServicePort {
    /// Name (empty for the single unnamed port).
    pub name: String,
    /// Protocol (never [`Protocol::Other`]).
    pub protocol: Protocol,
    /// Port on the cluster IP.
    pub port: u16,
    /// Port on the endpoints.
    pub target_port: TargetPort,
    /// Node port, if allocated.
    pub node_port: Option<u16>,
    /// Application protocol.
    pub app_protocol: Option<String>,
}

/// The cluster IPs of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClusterIps {
    /// None yet (to be allocated), or an `ExternalName` Service.
    Unset,
    /// `clusterIP: None`.
    Headless,
    /// One or two IPs (one per family), primary first.
    Ips(Vec<IpAddr>),
}

impl ClusterIps {
    /// The IPs, empty for headless and unset.
    pub fn ips(&self) -> &[IpAddr] {
        match self {
            Self::Ips(ips) => ips,
            _ => &[],
        }
    }

    /// The cluster IP of one family.
    pub fn of_family(&self, family: &IpFamily) -> Option<IpAddr> {
        self.ips()
            .iter()
            .copied()
            .find(|ip| IpFamily::of(ip) == *family)
    }
}

/// A load-balancer ingress point that the node must capture.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct LoadBalancerIngressIp {
    /// The IP.
    pub ip: IpAddr,
    /// `ipMode: Proxy`: the load balancer proxies, so nodes do not capture the IP.
    pub proxy_mode: bool,
}

/// A Service that passed validation.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ValidService {
    /// `namespace/name`.
    pub key: ServiceKey,
    /// Type.
    pub type_: ServiceType,
    /// Selector; `None` when absent or empty (endpoints managed by someone else).
    pub selector: Option<BTreeMap<String, String>>,
    /// Ports, in spec order.
    pub ports: Vec<ValidServicePort>,
    /// Cluster IPs.
    pub cluster_ips: ClusterIps,
    /// IP families, primary first (may be empty before allocation).
    pub ip_families: Vec<IpFamily>,
    /// Dual-stack policy, if set.
    pub ip_family_policy: Option<IpFamilyPolicy>,
    /// External IPs.
    pub external_ips: Vec<IpAddr>,
    /// `ExternalName` target, with one trailing dot removed.
    pub external_name: Option<String>,
    /// ClientIP affinity timeout in seconds; `None` without affinity.
    pub session_affinity_timeout: Option<u32>,
    /// Load-balancer source ranges (network form).
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// Load-balancer ingress IPs from the status.
    pub load_balancer_ingress: Vec<LoadBalancerIngressIp>,
    /// `externalTrafficPolicy: Local`.
    pub external_traffic_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_traffic_local: bool,
    /// Health-check node port.
    pub health_check_node_port: Option<u16>,
    /// `publishNotReadyAddresses`.
    pub publish_not_ready_addresses: bool,
    /// `allocateLoadBalancerNodePorts` (LoadBalancer only).
    pub allocate_load_balancer_node_ports: Option<bool>,
    /// Topology preference.
    pub traffic_distribution: Option<TrafficDistribution>,
    /// The object as validated (after defaulting), for callers that need other fields.
    pub object: Service,
}

impl ValidService {
    /// Headless: `clusterIP: None`.
    pub fn is_headless(&self) -> bool {
        self.cluster_ips == ClusterIps::Headless
    }

    /// Reachable from outside the cluster: a node port, a load balancer, or external IPs
    /// (`apiservice.ExternallyAccessible`).
    pub fn externally_accessible(&self) -> bool {
        matches!(
            self.type_,
            ServiceType::NodePort | ServiceType::LoadBalancer
        ) || (self.type_ == ServiceType::ClusterIp && !self.external_ips.is_empty())
    }

    /// Needs a health-check node port: a `LoadBalancer` with `externalTrafficPolicy: Local`.
    pub fn needs_health_check(&self) -> bool {
        self.type_ == ServiceType::LoadBalancer && self.external_traffic_local
    }
}
