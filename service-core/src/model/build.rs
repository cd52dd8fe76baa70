//! Constructors and chainable setters for building objects in code, as an orchestrator
//! does, instead of loading them from YAML.
//!
//! Every model type is `#[non_exhaustive]` (a new Kubernetes field must not break your
//! code), so struct literals are not available outside this crate; these builders are the
//! way in. Each `with_*` method takes and returns the object, and each sets the field the
//! way `kubectl` would write it.
//!
//! ```
//! use service_core::model::{Container, EndpointSlice, Endpoint, Node, Pod, Service, ServicePort};
//!
//! let web = Service::cluster_ip("shop", "web")
//!     .with_selector([("app", "web")])
//!     .with_port(ServicePort::tcp("http", 80).with_target_port("http"));
//! let db = Service::headless("shop", "db").with_selector([("app", "db")]);
//! let api = Service::node_port("shop", "api").with_port(ServicePort::tcp("", 443));
//! let pod = Pod::new("shop", "web-1")
//!     .with_labels([("app", "web")])
//!     .on_node("node-a")
//!     .with_container(Container::new("app").with_port("http", 8080))
//!     .with_ip("10.244.1.5")
//!     .with_ready(true);
//! assert!(pod.is_ready());
//! let slice = EndpointSlice::ipv4("shop", "web-abc", "web")
//!     .with_port("http", 8080)
//!     .with_endpoint(Endpoint::new("10.244.1.5").on_node("node-a").with_ready(true));
//! let node = Node::new("node-a").with_zone("zone-1");
//! # let _ = (web, db, api, slice, node);
//! ```

use std::collections::BTreeMap;

use super::{
    AddressType, Container, ContainerPort, Endpoint, EndpointConditions, EndpointPort,
    EndpointSlice, EnvVar, IntOrString, LoadBalancerIngress, LoadBalancerStatus, Node, ObjectMeta,
    Pod, PodCondition, PodIp, PodPhase, PodStatus, Protocol, Service, ServicePort, ServiceStatus,
    ServiceType, SessionAffinity, TrafficPolicy, ZONE_LABEL,
};

fn labels<K: Into<String>, V: Into<String>>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> BTreeMap<String, String> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

impl From<i32> for IntOrString {
    fn from(n: i32) -> Self {
        Self::Int(n)
    }
}

impl From<u16> for IntOrString {
    fn from(n: u16) -> Self {
        Self::Int(i32::from(n))
    }
}

impl From<&str> for IntOrString {
    fn from(s: &str) -> Self {
        Self::String(s.to_owned())
    }
}

impl From<String> for IntOrString {
    fn from(s: String) -> Self {
        Self::String(s)
    }
}

impl Service {
    fn typed(namespace: &str, name: &str, type_: ServiceType) -> Self {
        let mut s = Self::new(namespace, name);
        s.spec.type_ = Some(type_);
        s
    }

    /// A `ClusterIP` Service (its cluster IP is allocated by the registry, or set with
    /// [`Service::with_cluster_ip`]).
    pub fn cluster_ip(namespace: &str, name: &str) -> Self {
        Self::typed(namespace, name, ServiceType::ClusterIp)
    }

    /// A headless Service (`clusterIP: None`): DNS answers with its endpoints' addresses.
    pub fn headless(namespace: &str, name: &str) -> Self {
        let mut s = Self::cluster_ip(namespace, name);
        s.spec.cluster_ip = Some("None".into());
        s
    }

    /// A `NodePort` Service (node ports are allocated by the registry unless set on the
    /// ports).
    pub fn node_port(namespace: &str, name: &str) -> Self {
        Self::typed(namespace, name, ServiceType::NodePort)
    }

    /// A `LoadBalancer` Service.
    pub fn load_balancer(namespace: &str, name: &str) -> Self {
        Self::typed(namespace, name, ServiceType::LoadBalancer)
    }

    /// An `ExternalName` Service: a DNS alias (CNAME) of `target`.
    pub fn external_name(namespace: &str, name: &str, target: &str) -> Self {
        let mut s = Self::typed(namespace, name, ServiceType::ExternalName);
        s.spec.external_name = Some(target.to_owned());
        s
    }

    /// Selects the Pods with these labels.
    #[must_use]
    pub fn with_selector<K: Into<String>, V: Into<String>>(
        mut self,
        selector: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.spec.selector = Some(labels(selector));
        self
    }

    /// Adds a port.
    #[must_use]
    pub fn with_port(mut self, port: ServicePort) -> Self {
        self.spec.ports.push(port);
        self
    }

    /// Asks for this cluster IP (instead of one allocated at random).
    #[must_use]
    pub fn with_cluster_ip(mut self, ip: &str) -> Self {
        self.spec.cluster_ip = Some(ip.to_owned());
        self
    }

    /// Adds an external IP.
    #[must_use]
    pub fn with_external_ip(mut self, ip: &str) -> Self {
        self.spec.external_ips.push(ip.to_owned());
        self
    }

    /// Sets `externalTrafficPolicy`.
    #[must_use]
    pub fn with_external_traffic_policy(mut self, policy: TrafficPolicy) -> Self {
        self.spec.external_traffic_policy = Some(policy);
        self
    }

    /// Sets `internalTrafficPolicy`.
    #[must_use]
    pub fn with_internal_traffic_policy(mut self, policy: TrafficPolicy) -> Self {
        self.spec.internal_traffic_policy = Some(policy);
        self
    }

    /// ClientIP session affinity (kube-proxy's default timeout of 3 hours).
    #[must_use]
    pub fn with_client_ip_affinity(mut self) -> Self {
        self.spec.session_affinity = Some(SessionAffinity::ClientIp);
        self
    }

    /// Adds a load-balancer ingress IP to the status (what a cloud controller writes).
    #[must_use]
    pub fn with_load_balancer_ip(mut self, ip: &str) -> Self {
        let mut ingress = LoadBalancerIngress::default();
        ingress.ip = Some(ip.to_owned());
        let status = self.status.get_or_insert_with(ServiceStatus::default);
        status
            .load_balancer
            .get_or_insert_with(LoadBalancerStatus::default)
            .ingress
            .push(ingress);
        self
    }

    /// Sets a label.
    #[must_use]
    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.metadata = self.metadata.with_label(key, value);
        self
    }
}

impl ServicePort {
    fn with_protocol(name: &str, port: i32, protocol: Protocol) -> Self {
        let mut p = Self::tcp(name, port);
        p.protocol = Some(protocol);
        p
    }

    /// A UDP port with a name (possibly empty) and number.
    pub fn udp(name: &str, port: i32) -> Self {
        Self::with_protocol(name, port, Protocol::Udp)
    }

    /// An SCTP port with a name (possibly empty) and number.
    pub fn sctp(name: &str, port: i32) -> Self {
        Self::with_protocol(name, port, Protocol::Sctp)
    }

    /// Sends traffic to this port of the endpoints: a number, or the name of a container
    /// port (resolved per Pod). Without one, the Service's own port is used.
    #[must_use]
    pub fn with_target_port(mut self, target: impl Into<IntOrString>) -> Self {
        self.target_port = Some(target.into());
        self
    }

    /// Asks for this node port (instead of one allocated at random).
    #[must_use]
    pub fn with_node_port(mut self, node_port: i32) -> Self {
        self.node_port = Some(node_port);
        self
    }
}

impl ObjectMeta {
    /// With a label set.
    #[must_use]
    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }
}

impl Pod {
    /// A Pod with a namespace and name, no containers, not scheduled, no IP.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            metadata: ObjectMeta::named(namespace, name),
            ..Self::default()
        }
    }

    /// With these labels (Services select Pods by them).
    #[must_use]
    pub fn with_labels<K: Into<String>, V: Into<String>>(
        mut self,
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .extend(labels(pairs));
        self
    }

    /// Scheduled on `node`.
    #[must_use]
    pub fn on_node(mut self, node: &str) -> Self {
        self.spec.node_name = Some(node.to_owned());
        self
    }

    /// With a container.
    #[must_use]
    pub fn with_container(mut self, container: Container) -> Self {
        self.spec.containers.push(container);
        self
    }

    /// With an IP (the first one is `status.podIP`; add one per family for dual stack).
    /// The Pod is `Running`.
    #[must_use]
    pub fn with_ip(mut self, ip: &str) -> Self {
        let status = self.status.get_or_insert_with(PodStatus::default);
        status.phase.get_or_insert(PodPhase::Running);
        if status.pod_ip.is_none() {
            status.pod_ip = Some(ip.to_owned());
        }
        let mut pod_ip = PodIp::default();
        pod_ip.ip = ip.to_owned();
        status.pod_ips.push(pod_ip);
        self
    }

    /// With its `Ready` condition `True` or `False`.
    #[must_use]
    pub fn with_ready(mut self, ready: bool) -> Self {
        self.set_ready(ready);
        self
    }

    /// Sets the `Ready` condition to `True` or `False` (a readiness probe's verdict).
    pub fn set_ready(&mut self, ready: bool) {
        let status = self.status.get_or_insert_with(PodStatus::default);
        let value = if ready { "True" } else { "False" };
        match status.conditions.iter_mut().find(|c| c.type_ == "Ready") {
            Some(c) => c.status = value.to_owned(),
            None => {
                let mut c = PodCondition::default();
                c.type_ = "Ready".into();
                c.status = value.to_owned();
                status.conditions.push(c);
            }
        }
    }
}

impl Container {
    /// A container with a name.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// Exposes a TCP port under a name (possibly empty) that a Service's `targetPort` may
    /// use.
    #[must_use]
    pub fn with_port(self, name: &str, port: i32) -> Self {
        self.with_port_protocol(name, port, Protocol::Tcp)
    }

    /// Exposes a port of a protocol.
    #[must_use]
    pub fn with_port_protocol(mut self, name: &str, port: i32, protocol: Protocol) -> Self {
        let mut p = ContainerPort::default();
        p.name = (!name.is_empty()).then(|| name.to_owned());
        p.container_port = port;
        p.protocol = Some(protocol);
        self.ports.push(p);
        self
    }

    /// With an environment variable.
    #[must_use]
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push(EnvVar::new(name, value));
        self
    }
}

impl EndpointSlice {
    /// An empty IPv4 slice of a Service.
    pub fn ipv4(namespace: &str, name: &str, service: &str) -> Self {
        Self::new(namespace, name, service, AddressType::Ipv4)
    }

    /// An empty IPv6 slice of a Service.
    pub fn ipv6(namespace: &str, name: &str, service: &str) -> Self {
        Self::new(namespace, name, service, AddressType::Ipv6)
    }

    /// With a TCP port every endpoint serves (its name matches the Service port's).
    #[must_use]
    pub fn with_port(self, name: &str, port: i32) -> Self {
        self.with_port_protocol(name, port, Protocol::Tcp)
    }

    /// With a port of a protocol.
    #[must_use]
    pub fn with_port_protocol(mut self, name: &str, port: i32, protocol: Protocol) -> Self {
        self.ports.push(EndpointPort::new(name, port, protocol));
        self
    }

    /// With an endpoint.
    #[must_use]
    pub fn with_endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }
}

impl Endpoint {
    /// On `node` (kube-proxy's local endpoints are those on its node).
    #[must_use]
    pub fn on_node(mut self, node: &str) -> Self {
        self.node_name = Some(node.to_owned());
        self
    }

    /// In `zone`.
    #[must_use]
    pub fn in_zone(mut self, zone: &str) -> Self {
        self.zone = Some(zone.to_owned());
        self
    }

    /// Ready (and serving) or not; not terminating.
    #[must_use]
    pub fn with_ready(mut self, ready: bool) -> Self {
        self.conditions = Some(EndpointConditions::new(ready, ready, false));
        self
    }

    /// Terminating, still serving or not (a Pod being deleted).
    #[must_use]
    pub fn terminating(mut self, serving: bool) -> Self {
        self.conditions = Some(EndpointConditions::new(false, serving, true));
        self
    }

    /// With a DNS hostname (headless Services answer `hostname.service.ns.svc`).
    #[must_use]
    pub fn with_hostname(mut self, hostname: &str) -> Self {
        self.hostname = Some(hostname.to_owned());
        self
    }
}

impl Node {
    /// A Node with a name.
    pub fn new(name: &str) -> Self {
        Self {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            metadata: ObjectMeta::named("", name),
            ..Self::default()
        }
    }

    /// In `zone` (its `topology.kubernetes.io/zone` label).
    #[must_use]
    pub fn with_zone(mut self, zone: &str) -> Self {
        self.metadata = self.metadata.with_label(ZONE_LABEL, zone);
        self
    }

    /// With pod CIDRs (`spec.podCIDRs`).
    #[must_use]
    pub fn with_pod_cidrs(mut self, cidrs: &[&str]) -> Self {
        let spec = self
            .extra
            .entry("spec".to_owned())
            .or_insert_with(|| serde_json::json!({}));
        if let Some(obj) = spec.as_object_mut() {
            obj.insert("podCIDRs".into(), serde_json::json!(cidrs));
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defaults;
    use crate::validation::validate_service;

    #[test]
    fn built_objects_pass_validation_as_kubectl_would_write_them() {
        for svc in [
            Service::cluster_ip("a", "b")
                .with_cluster_ip("10.96.0.1")
                .with_port(ServicePort::tcp("", 80)),
            Service::headless("a", "h").with_port(ServicePort::udp("dns", 53)),
            Service::node_port("a", "n")
                .with_cluster_ip("10.96.0.2")
                .with_port(ServicePort::sctp("s", 9).with_node_port(30009)),
            Service::external_name("a", "e", "example.com"),
        ] {
            let mut svc = svc;
            defaults::service(&mut svc);
            validate_service(&svc).unwrap_or_else(|e| panic!("{}: {e}", svc.metadata.name()));
        }
    }

    #[test]
    fn readiness_can_flip_and_round_trips_as_yaml() {
        let mut pod = Pod::new("a", "p").with_ip("10.1.0.1").with_ready(true);
        assert!(pod.is_ready());
        pod.set_ready(false);
        assert!(!pod.is_ready());
        assert_eq!(pod.status.as_ref().unwrap().conditions.len(), 1);
        let json = serde_json::to_value(&pod).unwrap();
        assert_eq!(json["status"]["podIP"], "10.1.0.1");
        assert_eq!(json["status"]["phase"], "Running");
        let node = Node::new("n").with_pod_cidrs(&["10.244.1.0/24"]);
        assert_eq!(
            serde_json::to_value(&node).unwrap()["spec"]["podCIDRs"][0],
            "10.244.1.0/24"
        );
    }
}
