//! networking.k8s.io/v1 `ServiceCIDR` and `IPAddress` (GA in Kubernetes 1.33): the ranges
//! Services take their ClusterIPs from, and one object per allocated ClusterIP.

use serde::{Deserialize, Serialize};

use super::{Extra, ObjectMeta};

/// The name of the ServiceCIDR that mirrors `--service-cluster-ip-range`.
pub const DEFAULT_SERVICE_CIDR: &str = "kubernetes";
/// The finalizer that keeps a ServiceCIDR while Service IPs only it covers remain.
pub const SERVICE_CIDR_FINALIZER: &str = "networking.k8s.io/service-cidr-finalizer";
/// The label of an IPAddress's family (`IPv4`, `IPv6`).
pub const IP_FAMILY_LABEL: &str = "ipaddress.kubernetes.io/ip-family";
/// The label naming who manages an IPAddress.
pub const IP_MANAGED_BY_LABEL: &str = "ipaddress.kubernetes.io/managed-by";
/// The API server's allocator, as [`IP_MANAGED_BY_LABEL`] names it.
pub const IP_ALLOCATOR: &str = "ipallocator.k8s.io";

/// A networking.k8s.io/v1 `ServiceCIDR`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ServiceCidr {
    /// `networking.k8s.io/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `ServiceCIDR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Metadata (cluster-scoped: no namespace).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The ranges.
    #[serde(default)]
    pub spec: ServiceCidrSpec,
    /// Status (`conditions`), kept as loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// `ServiceCIDR.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ServiceCidrSpec {
    /// At most one CIDR per family (`cidrs`).
    #[serde(default)]
    pub cidrs: Vec<String>,
    /// Fields this library does not use.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ServiceCidr {
    /// A ServiceCIDR named `name` with these ranges.
    pub fn new(name: &str, cidrs: &[&str]) -> Self {
        let mut metadata = ObjectMeta::default();
        metadata.name = Some(name.to_owned());
        Self {
            api_version: Some("networking.k8s.io/v1".into()),
            kind: Some("ServiceCIDR".into()),
            metadata,
            spec: ServiceCidrSpec {
                cidrs: cidrs.iter().map(|c| (*c).to_owned()).collect(),
                extra: Extra::default(),
            },
            status: None,
        }
    }
}

/// A networking.k8s.io/v1 `IPAddress`: its name is the IP in canonical form.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct IpAddressObject {
    /// `networking.k8s.io/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `IPAddress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Metadata (cluster-scoped; the name is the address).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Who holds the address.
    #[serde(default)]
    pub spec: IpAddressSpec,
}

/// `IPAddress.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct IpAddressSpec {
    /// The object the address belongs to (`parentRef`, required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_ref: Option<ParentReference>,
}

/// `IPAddress.spec.parentRef`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ParentReference {
    /// API group (`""` for Services).
    #[serde(default)]
    pub group: String,
    /// Resource (`services`).
    #[serde(default)]
    pub resource: String,
    /// Namespace (optional).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Name.
    #[serde(default)]
    pub name: String,
}

impl ParentReference {
    /// The reference to a Service.
    pub fn service(namespace: &str, name: &str) -> Self {
        Self {
            group: String::new(),
            resource: "services".into(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}
