//! The v1 `Service` object, as the API serves it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::{Extra, IntOrString, IpFamily, ObjectMeta, Protocol, string_enum};

string_enum! {
    /// `spec.type` of a Service.
    pub enum ServiceType {
        /// A virtual IP inside the cluster.
        ClusterIp = "ClusterIP",
        /// A cluster IP plus a port on every node.
        NodePort = "NodePort",
        /// A node port plus an external load balancer.
        LoadBalancer = "LoadBalancer",
        /// A DNS alias (CNAME) to an external name; no proxying.
        ExternalName = "ExternalName",
    }
}

string_enum! {
    /// `spec.sessionAffinity`.
    pub enum SessionAffinity {
        /// No affinity: each connection picks an endpoint at random.
        None = "None",
        /// Connections from one client IP stick to one endpoint for a timeout.
        ClientIp = "ClientIP",
    }
}

string_enum! {
    /// `spec.ipFamilyPolicy`.
    pub enum IpFamilyPolicy {
        /// One family.
        SingleStack = "SingleStack",
        /// Both families if the cluster has both, else one.
        PreferDualStack = "PreferDualStack",
        /// Both families, or an error.
        RequireDualStack = "RequireDualStack",
    }
}

string_enum! {
    /// `spec.externalTrafficPolicy` and `spec.internalTrafficPolicy`.
    pub enum TrafficPolicy {
        /// Any ready endpoint in the cluster.
        Cluster = "Cluster",
        /// Only endpoints on the node that received the traffic.
        Local = "Local",
    }
}

string_enum! {
    /// `spec.trafficDistribution`.
    pub enum TrafficDistribution {
        /// Deprecated alias of `PreferSameZone`.
        PreferClose = "PreferClose",
        /// Prefer endpoints in the client's zone.
        PreferSameZone = "PreferSameZone",
        /// Prefer endpoints on the client's node.
        PreferSameNode = "PreferSameNode",
    }
}

string_enum! {
    /// `status.loadBalancer.ingress[].ipMode`.
    pub enum LoadBalancerIpMode {
        /// Traffic arrives with the load balancer IP as destination.
        Vip = "VIP",
        /// The load balancer proxies; the node never sees the VIP.
        Proxy = "Proxy",
    }
}

/// The annotation that asks for topology-aware routing (KEP-2433).
pub const TOPOLOGY_MODE_ANNOTATION: &str = "service.kubernetes.io/topology-mode";
/// The deprecated spelling of [`TOPOLOGY_MODE_ANNOTATION`].
pub const TOPOLOGY_AWARE_HINTS_ANNOTATION: &str = "service.kubernetes.io/topology-aware-hints";
/// The annotation some clouds read for source ranges when the field is empty.
pub const LB_SOURCE_RANGES_ANNOTATION: &str =
    "service.beta.kubernetes.io/load-balancer-source-ranges";
/// The default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_CLIENT_IP_AFFINITY_SECONDS: i32 = 10800;
/// The largest `sessionAffinityConfig.clientIP.timeoutSeconds` (1 day).
pub const MAX_CLIENT_IP_AFFINITY_SECONDS: i32 = 86400;

/// A v1 `Service`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Service {
    /// `v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `Service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Desired state.
    #[serde(default)]
    pub spec: ServiceSpec,
    /// Observed state (load-balancer ingress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceStatus>,
}

impl Service {
    /// A Service with a namespace and name and an empty spec.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            metadata: ObjectMeta::named(namespace, name),
            ..Self::default()
        }
    }

    /// Whether the Service is headless (`clusterIP: None`).
    pub fn is_headless(&self) -> bool {
        self.spec.cluster_ip.as_deref() == Some("None")
            || (self.spec.cluster_ips.len() == 1 && self.spec.cluster_ips[0] == "None")
    }
}

/// `spec` of a Service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ServiceSpec {
    /// Ports the Service exposes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Label selector for the pods behind the Service; absent means endpoints are managed
    /// by someone else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// Primary cluster IP, `None` for headless, empty to allocate.
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    /// Cluster IPs, one per family, primary first.
    #[serde(default, rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<String>,
    /// Service type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,
    /// Extra IPs on which nodes accept traffic for this Service.
    #[serde(default, rename = "externalIPs", skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<String>,
    /// Session affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
    /// Deprecated: requested load-balancer IP.
    #[serde(
        default,
        rename = "loadBalancerIP",
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancer_ip: Option<String>,
    /// Client CIDRs allowed to reach the load balancer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancer_source_ranges: Vec<String>,
    /// Target of an `ExternalName` Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_name: Option<String>,
    /// Routing of external traffic (node ports, load balancer, external IPs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<TrafficPolicy>,
    /// Health-check port for `externalTrafficPolicy: Local` load balancers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_node_port: Option<i32>,
    /// Publish endpoints whether or not they are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_not_ready_addresses: Option<bool>,
    /// Session-affinity settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    /// IP families, primary first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_families: Vec<IpFamily>,
    /// Dual-stack policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family_policy: Option<IpFamilyPolicy>,
    /// Whether node ports are allocated for a `LoadBalancer` Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocate_load_balancer_node_ports: Option<bool>,
    /// Load-balancer implementation class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_class: Option<String>,
    /// Routing of traffic to the cluster IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_traffic_policy: Option<TrafficPolicy>,
    /// Topology preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_distribution: Option<TrafficDistribution>,
    /// Every other field, kept as loaded.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One port of a Service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ServicePort {
    /// Name; required when the Service has several ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Protocol; defaults to `TCP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Application protocol hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// Port on the cluster IP.
    #[serde(default)]
    pub port: i32,
    /// Port (number or container port name) on the pods; defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    /// Port on every node, for `NodePort` and `LoadBalancer` Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i32>,
}

impl ServicePort {
    /// A TCP port with a name (possibly empty) and number.
    pub fn tcp(name: &str, port: i32) -> Self {
        Self {
            name: (!name.is_empty()).then(|| name.to_owned()),
            protocol: Some(Protocol::Tcp),
            port,
            ..Self::default()
        }
    }

    /// The name, or `""`.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
}

/// `spec.sessionAffinityConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SessionAffinityConfig {
    /// ClientIP affinity settings.
    #[serde(default, rename = "clientIP", skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIpConfig>,
}

/// `spec.sessionAffinityConfig.clientIP`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ClientIpConfig {
    /// Stickiness timeout, 1..=86400 seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
}

/// `status` of a Service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ServiceStatus {
    /// Load-balancer status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerStatus>,
    /// Every other field (`conditions`), kept as loaded.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `status.loadBalancer`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct LoadBalancerStatus {
    /// Ingress points of the load balancer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<LoadBalancerIngress>,
}

/// One ingress point of a load balancer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct LoadBalancerIngress {
    /// IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// DNS name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// How traffic reaches the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_mode: Option<LoadBalancerIpMode>,
    /// Every other field (`ports`), kept as loaded.
    #[serde(flatten)]
    pub extra: Extra,
}
