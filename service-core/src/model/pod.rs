//! The parts of v1 `Pod` and `Node` that the endpoints controller, DNS and the service
//! environment need. Every other field is kept in an `extra` map so objects round-trip.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::{Extra, ObjectMeta, Protocol, string_enum};

/// The node label carrying the node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

string_enum! {
    /// `status.phase` of a Pod.
    pub enum PodPhase {
        /// Accepted, not all containers running yet.
        Pending = "Pending",
        /// Bound to a node, containers running.
        Running = "Running",
        /// All containers exited successfully (terminal).
        Succeeded = "Succeeded",
        /// All containers exited, some failed (terminal).
        Failed = "Failed",
        /// State unknown.
        Unknown = "Unknown",
    }
}

string_enum! {
    /// `spec.dnsPolicy` of a Pod.
    pub enum DnsPolicy {
        /// Cluster DNS first, then the node's upstream.
        ClusterFirst = "ClusterFirst",
        /// Like `ClusterFirst`, also for host-network pods.
        ClusterFirstWithHostNet = "ClusterFirstWithHostNet",
        /// The node's resolver configuration.
        Default = "Default",
        /// Only `spec.dnsConfig`.
        None = "None",
    }
}

/// A v1 `Pod`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Pod {
    /// `v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `Pod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Desired state.
    #[serde(default)]
    pub spec: PodSpec,
    /// Observed state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodStatus>,
}

impl Pod {
    /// Whether the Pod's `Ready` condition is `True`.
    pub fn is_ready(&self) -> bool {
        self.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    }

    /// Whether the Pod has finished for good (phase `Succeeded` or `Failed`).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.status.as_ref().and_then(|s| s.phase.as_ref()),
            Some(PodPhase::Succeeded | PodPhase::Failed)
        )
    }

    /// The Pod's IPs as strings: `status.podIPs`, or `status.podIP` when that list is empty.
    pub fn ips(&self) -> Vec<&str> {
        let Some(status) = &self.status else {
            return Vec::new();
        };
        if !status.pod_ips.is_empty() {
            return status.pod_ips.iter().map(|p| p.ip.as_str()).collect();
        }
        status.pod_ip.as_deref().into_iter().collect()
    }
}

/// `spec` of a Pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PodSpec {
    /// Node the Pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Hostname (DNS label); with `subdomain` it gives the Pod a DNS name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Subdomain: the name of a headless Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    /// Containers.
    #[serde(default)]
    pub containers: Vec<Container>,
    /// Init containers (those with `restartPolicy: Always` are sidecars).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    /// Whether service environment variables are injected (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_service_links: Option<bool>,
    /// DNS policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_policy: Option<DnsPolicy>,
    /// Extra DNS configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<PodDnsConfig>,
    /// Whether the Pod uses the node's network namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
    /// Every other field, kept as loaded.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A container of a Pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Container {
    /// Container name.
    #[serde(default)]
    pub name: String,
    /// Ports the container exposes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    /// Environment variables, in declaration order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Sources of environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    /// For init containers: `Always` makes it a sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
    /// Every other field, kept as loaded.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A port of a container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ContainerPort {
    /// Name (IANA service name) that a Service's `targetPort` may refer to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Port number.
    #[serde(default)]
    pub container_port: i32,
    /// Protocol; defaults to `TCP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Port on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<i32>,
}

/// An environment variable of a container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EnvVar {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Value; may reference other variables as `$(NAME)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A source for the value (field, resource, ConfigMap or Secret key), kept as loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<serde_json::Value>,
}

impl EnvVar {
    /// A variable with a literal value.
    pub fn new(name: &str, value: &str) -> Self {
        Self {
            name: name.to_owned(),
            value: Some(value.to_owned()),
            value_from: None,
        }
    }
}

/// A source of several environment variables (`envFrom`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EnvFromSource {
    /// Prefix prepended to every key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<EnvSourceRef>,
    /// A Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<EnvSourceRef>,
}

/// A named ConfigMap or Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EnvSourceRef {
    /// Object name.
    #[serde(default)]
    pub name: String,
    /// Whether a missing object is fine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// `spec.dnsConfig` of a Pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PodDnsConfig {
    /// Extra name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Extra search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub searches: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<PodDnsConfigOption>,
}

/// A resolver option (`ndots: "2"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PodDnsConfigOption {
    /// Option name.
    #[serde(default)]
    pub name: String,
    /// Option value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `status` of a Pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PodStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PodPhase>,
    /// Primary IP.
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// IPs, one per family, primary first.
    #[serde(default, rename = "podIPs", skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<PodIp>,
    /// Conditions (`Ready`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<PodCondition>,
    /// Every other field, kept as loaded.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One IP of a Pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PodIp {
    /// The address.
    #[serde(default)]
    pub ip: String,
}

/// A Pod condition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PodCondition {
    /// Condition type, e.g. `Ready`.
    #[serde(default, rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[serde(default)]
    pub status: String,
    /// Every other field, kept as loaded.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A v1 `Node`, for its zone label.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Node {
    /// `v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `Node`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Metadata; labels carry the zone.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Every other field (`spec`, `status`), kept as loaded.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Node {
    /// The node's zone label.
    pub fn zone(&self) -> Option<&str> {
        self.metadata.label(ZONE_LABEL)
    }

    /// Whether `spec.taints` has a taint with this key (whatever its value and effect).
    pub fn has_taint(&self, key: &str) -> bool {
        self.extra
            .get("spec")
            .and_then(|s| s.get("taints"))
            .and_then(serde_json::Value::as_array)
            .is_some_and(|taints| {
                taints
                    .iter()
                    .any(|t| t.get("key").and_then(serde_json::Value::as_str) == Some(key))
            })
    }
}

/// Labels as a map, for selector matching.
pub type Labels = BTreeMap<String, String>;
