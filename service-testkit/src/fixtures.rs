//! Fixtures: cluster state from YAML.

use std::net::IpAddr;

use service_core::cluster::Cluster;
use service_core::controller::ControllerConfig;
use service_core::manifest::load_str;
use service_core::snapshot::{NodeInfo, Snapshot};

/// Loads, defaults and validates YAML; panics with the problems if anything is invalid.
pub fn cluster(yaml: &str) -> Cluster {
    let loaded = load_str("fixture.yaml", yaml).unwrap_or_else(|e| panic!("fixture: {e}"));
    let (mut cluster, invalid) = Cluster::from_objects(loaded.objects);
    assert!(invalid.is_empty(), "invalid fixture objects: {invalid:#?}");
    cluster.derive_endpoint_slices(ControllerConfig::default());
    cluster
}

/// The snapshot of a YAML cluster for a node.
pub fn snapshot(yaml: &str, node: &str, node_ips: &[&str]) -> Snapshot {
    let ips: Vec<IpAddr> = node_ips
        .iter()
        .map(|s| s.parse().unwrap_or_else(|e| panic!("node IP {s}: {e}")))
        .collect();
    cluster(yaml)
        .snapshot(NodeInfo::new(node, ips))
        .unwrap_or_else(|e| panic!("snapshot: {e}"))
}

/// The cluster kube-proxy's own iptables tests use (`TestOverallIPTablesRules` in
/// `pkg/proxy/iptables/proxier_test.go`): pod CIDR 10.0.0.0/8, cluster IPs in
/// 172.30.0.0/16, node "test-node" at 192.168.0.2, external IPs in 192.168.99.0/24.
pub const KUBE_PROXY_CLUSTER: &str = include_str!("../fixtures/kube-proxy-cluster.yaml");

/// The node of [`KUBE_PROXY_CLUSTER`].
pub fn kube_proxy_snapshot() -> Snapshot {
    snapshot(KUBE_PROXY_CLUSTER, "test-node", &["192.168.0.2"])
}

/// A cluster at scale for benchmarks: `services` Services with `endpoints` endpoints each.
/// Every Service is ClusterIP with one TCP port; every 10th is a NodePort (the first 27,000
/// Services: the node-port range holds 2,768), every 50th a LoadBalancer with an ingress
/// IP; a tenth of the endpoints are on `node-a`. Distinct addresses up to 1M Services.
pub fn scale(
    services: usize,
    endpoints: usize,
) -> (
    Vec<service_core::valid::ValidService>,
    Vec<service_core::model::EndpointSlice>,
) {
    let (objects, slices) = scale_objects(services, endpoints);
    let svcs = objects
        .iter()
        .map(|svc| service_core::validation::validate_service(svc).expect("valid bench service"))
        .collect();
    (svcs, slices)
}

/// The objects of [`scale`] as the API server stores them (defaulted, not validated): what
/// a change tracker is fed.
pub fn scale_objects(
    services: usize,
    endpoints: usize,
) -> (
    Vec<service_core::model::Service>,
    Vec<service_core::model::EndpointSlice>,
) {
    use service_core::model::{
        AddressType, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, IntOrString,
        LoadBalancerIngress, LoadBalancerStatus, Protocol, Service, ServicePort, ServiceStatus,
        ServiceType,
    };
    let mut svcs = Vec::with_capacity(services);
    let mut slices = Vec::with_capacity(services);
    for i in 0..services {
        let name = format!("svc-{i}");
        let mut svc = Service::new("bench", &name);
        // 10.96.0.0/12: 250 per /24, past 10.96.255.0/24 on into 10.97.0.0/16.
        let (hi, lo) = (i / 250, i % 250 + 1);
        svc.spec.cluster_ip = Some(format!("10.{}.{}.{lo}", 96 + hi / 256, hi % 256));
        let mut port = ServicePort::tcp("http", 80);
        port.target_port = Some(IntOrString::Int(8080));
        // A node port for every 10th Service, as long as the range (30000-32767) lasts.
        if i % 10 == 0 && i / 10 < 2_700 {
            svc.spec.type_ = Some(ServiceType::NodePort);
            port.node_port = Some(30000 + (i / 10) as i32);
        }
        if i % 50 == 0 {
            svc.spec.type_ = Some(ServiceType::LoadBalancer);
            let mut ing = LoadBalancerIngress::default();
            ing.ip = Some(format!("198.51.{}.{}", i / 250 % 250, i % 250 + 1));
            let mut lb = LoadBalancerStatus::default();
            lb.ingress = vec![ing];
            let mut st = ServiceStatus::default();
            st.load_balancer = Some(lb);
            svc.status = Some(st);
        }
        svc.spec.ports.push(port);
        service_core::defaults::service(&mut svc);
        svcs.push(svc);
        let mut slice = EndpointSlice::new("bench", &format!("{name}-x"), &name, AddressType::Ipv4);
        slice.ports = vec![EndpointPort::new("http", 8080, Protocol::Tcp)];
        for e in 0..endpoints {
            let n = i * endpoints + e;
            let mut ep = Endpoint::new(&format!(
                "10.{}.{}.{}",
                128 + n / 65536 % 64,
                n / 256 % 256,
                n % 256
            ));
            ep.conditions = Some(EndpointConditions::new(true, true, false));
            ep.node_name = Some(if n.is_multiple_of(10) {
                "node-a".into()
            } else {
                format!("node-{}", n % 97)
            });
            slice.endpoints.push(ep);
        }
        slices.push(slice);
    }
    (svcs, slices)
}

/// A headless Service `x/huge` (dual-stack) with `per_family` ready endpoints in each
/// family, in slices of 1,000: what a large StatefulSet or a big peer group looks like to
/// DNS. IPv4 endpoints are `10.2.{i / 250}.{i % 250 + 1}`, IPv6 ones `fd00::{i + 1}`.
pub fn huge_headless(
    per_family: usize,
) -> (
    Vec<service_core::valid::ValidService>,
    Vec<service_core::model::EndpointSlice>,
) {
    use service_core::model::{Endpoint, EndpointSlice, IpFamilyPolicy, Service, ServicePort};
    let mut svc = Service::headless("x", "huge")
        .with_selector([("a", "b")])
        .with_port(ServicePort::tcp("p", 80));
    svc.spec.ip_family_policy = Some(IpFamilyPolicy::PreferDualStack);
    service_core::defaults::service(&mut svc);
    let svc = service_core::validation::validate_service(&svc).expect("valid headless service");
    let mut slices = Vec::new();
    for v6 in [false, true] {
        for i in 0..per_family {
            if i % 1000 == 0 {
                let name = format!("huge-{}-{}", if v6 { "v6" } else { "v4" }, i / 1000);
                let slice = if v6 {
                    EndpointSlice::ipv6("x", &name, "huge")
                } else {
                    EndpointSlice::ipv4("x", &name, "huge")
                };
                slices.push(slice.with_port("p", 80));
            }
            let ip = if v6 {
                format!("fd00::{:x}", i + 1)
            } else {
                format!("10.2.{}.{}", i / 250, i % 250 + 1)
            };
            let last = slices.len() - 1;
            let slice = std::mem::take(&mut slices[last]);
            slices[last] = slice.with_endpoint(Endpoint::new(&ip));
        }
    }
    (vec![svc], slices)
}
