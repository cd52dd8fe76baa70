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
