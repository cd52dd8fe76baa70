//! The legacy v1 `Endpoints` object and the discovery.k8s.io/v1 `EndpointSlice`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::{ObjectMeta, ObjectReference, Protocol, string_enum};

/// Label on an EndpointSlice naming the Service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label on an EndpointSlice naming the controller that manages it.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`] for slices written by the EndpointSlice controller.
pub const MANAGED_BY_CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// Label marking the endpoints of a headless Service.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Label that hands a Service to another proxy; kube-proxy ignores such Services.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// A legacy v1 `Endpoints` object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Endpoints {
    /// `v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `Endpoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Metadata; the name is the Service's name.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Groups of addresses that share a port set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<EndpointSubset>,
}

/// A set of addresses that share one set of ports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EndpointSubset {
    /// Ready addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<EndpointAddress>,
    /// Addresses that are not ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready_addresses: Vec<EndpointAddress>,
    /// Ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
}

/// One address of an `Endpoints` subset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EndpointAddress {
    /// The IP.
    #[serde(default)]
    pub ip: String,
    /// DNS hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Node hosting the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The object behind the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<ObjectReference>,
}

/// A port of an `Endpoints` subset or an `EndpointSlice` (the two share a shape, except
/// that a slice may leave the name and port unset).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EndpointPort {
    /// Name; matches the Service port's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Port number on the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Application protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

string_enum! {
    /// `addressType` of an EndpointSlice.
    pub enum AddressType {
        /// IPv4 addresses.
        Ipv4 = "IPv4",
        /// IPv6 addresses.
        Ipv6 = "IPv6",
        /// Domain names (deprecated; ignored by proxies).
        Fqdn = "FQDN",
    }
}

/// A discovery.k8s.io/v1 `EndpointSlice`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EndpointSlice {
    /// `discovery.k8s.io/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `EndpointSlice`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Metadata; the `kubernetes.io/service-name` label names the Service.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Address family of every endpoint in the slice.
    #[serde(default)]
    pub address_type: AddressType,
    /// Endpoints.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Ports every endpoint of the slice serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
}

impl Default for AddressType {
    fn default() -> Self {
        Self::Other(String::new())
    }
}

impl EndpointSlice {
    /// An empty slice of a Service (`kubernetes.io/service-name` label set).
    pub fn new(namespace: &str, name: &str, service: &str, address_type: AddressType) -> Self {
        let mut metadata = ObjectMeta::named(namespace, name);
        metadata.labels = Some([(SERVICE_NAME_LABEL.to_owned(), service.to_owned())].into());
        Self {
            api_version: Some("discovery.k8s.io/v1".into()),
            kind: Some("EndpointSlice".into()),
            metadata,
            address_type,
            endpoints: Vec::new(),
            ports: Vec::new(),
        }
    }

    /// The Service this slice belongs to (its `kubernetes.io/service-name` label).
    pub fn service_name(&self) -> Option<&str> {
        self.metadata.label(SERVICE_NAME_LABEL)
    }
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Endpoint {
    /// Addresses; consumers use the first.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Readiness conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<EndpointConditions>,
    /// DNS hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The object behind the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<ObjectReference>,
    /// Node hosting the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Zone of that node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Topology hints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hints: Option<EndpointHints>,
    /// Deprecated topology map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated_topology: Option<BTreeMap<String, String>>,
}

impl EndpointPort {
    /// A port with a name (possibly empty), number and protocol.
    pub fn new(name: &str, port: i32, protocol: Protocol) -> Self {
        Self {
            name: Some(name.to_owned()),
            port: Some(port),
            protocol: Some(protocol),
            app_protocol: None,
        }
    }
}

impl Endpoint {
    /// An endpoint with one address and no conditions (read as ready).
    pub fn new(address: &str) -> Self {
        Self {
            addresses: vec![address.to_owned()],
            ..Self::default()
        }
    }
}

/// Conditions of an endpoint. Unset `ready` and `serving` mean true; unset `terminating`
/// means false.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EndpointConditions {
    /// Ready for traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// Serving (ready, ignoring termination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    /// Terminating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating: Option<bool>,
}

impl EndpointConditions {
    /// Conditions with all three values set.
    pub fn new(ready: bool, serving: bool, terminating: bool) -> Self {
        Self {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }
    }

    /// `ready`, with unset read as true.
    pub fn is_ready(&self) -> bool {
        self.ready.unwrap_or(true)
    }
    /// `serving`, with unset read as true.
    pub fn is_serving(&self) -> bool {
        self.serving.unwrap_or(true)
    }
    /// `terminating`, with unset read as false.
    pub fn is_terminating(&self) -> bool {
        self.terminating.unwrap_or(false)
    }
}

/// Topology hints of an endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EndpointHints {
    /// Zones that should use this endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub for_zones: Vec<ForZone>,
    /// Nodes that should use this endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub for_nodes: Vec<ForNode>,
}

/// A zone hint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ForZone {
    /// Zone name.
    #[serde(default)]
    pub name: String,
}

/// A node hint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ForNode {
    /// Node name.
    #[serde(default)]
    pub name: String,
}
