//! The wire model: Kubernetes objects as the API serves them, with Kubernetes' own field
//! names, so that `kubectl get -o yaml|json` output loads and round-trips. Fields the
//! library does not use are kept in `extra` maps. Nothing here is validated; see
//! [`crate::validation`] for the checks and [`crate::valid`] for the checked model.

mod build;
mod common;
mod endpoints;
mod networking;
mod pod;
mod service;

pub use common::{
    Extra, IntOrString, IpFamily, ObjectMeta, ObjectReference, OwnerReference, Protocol,
};
pub use endpoints::{
    AddressType, Endpoint, EndpointAddress, EndpointConditions, EndpointHints, EndpointPort,
    EndpointSlice, EndpointSubset, Endpoints, ForNode, ForZone, HEADLESS_LABEL,
    MANAGED_BY_CONTROLLER, MANAGED_BY_LABEL, SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL,
};
pub use networking::{
    DEFAULT_SERVICE_CIDR, IP_ALLOCATOR, IP_FAMILY_LABEL, IP_MANAGED_BY_LABEL, IpAddressObject,
    IpAddressSpec, ParentReference, SERVICE_CIDR_FINALIZER, ServiceCidr, ServiceCidrSpec,
};
pub use pod::{
    Container, ContainerPort, DnsPolicy, EnvFromSource, EnvSourceRef, EnvVar, Labels, Node, Pod,
    PodCondition, PodDnsConfig, PodDnsConfigOption, PodIp, PodPhase, PodSpec, PodStatus,
    ZONE_LABEL,
};
pub use service::{
    ClientIpConfig, DEFAULT_CLIENT_IP_AFFINITY_SECONDS, IpFamilyPolicy,
    LB_SOURCE_RANGES_ANNOTATION, LoadBalancerIngress, LoadBalancerIpMode, LoadBalancerStatus,
    MAX_CLIENT_IP_AFFINITY_SECONDS, Service, ServicePort, ServiceSpec, ServiceStatus, ServiceType,
    SessionAffinity, SessionAffinityConfig, TOPOLOGY_AWARE_HINTS_ANNOTATION,
    TOPOLOGY_MODE_ANNOTATION, TrafficDistribution, TrafficPolicy,
};
