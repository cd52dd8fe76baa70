//! Shared setup of the benchmarks.

use service_core::snapshot::{NodeInfo, Snapshot};
use service_proxy::ProxyConfig;

/// The node the benchmarks render for.
pub fn node() -> NodeInfo {
    NodeInfo::new("node-a", vec!["192.168.0.2".parse().expect("node IP")])
}

/// The proxy settings every backend benchmark uses: pod CIDR 10.0.0.0/8.
pub fn proxy_config() -> ProxyConfig {
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = vec!["10.0.0.0/8".parse().expect("cidr")];
    proxy
}

/// The `index`th command-line argument as a number, or `default`.
pub fn arg_or(index: usize, default: usize) -> usize {
    std::env::args()
        .nth(index)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// A snapshot of `services` Services with `endpoints` endpoints each.
pub fn snapshot(services: usize, endpoints: usize) -> Snapshot {
    let (svcs, slices) = service_testkit::fixtures::scale(services, endpoints);
    Snapshot::build(node(), &svcs, &slices, &[]).expect("bench snapshot")
}

/// Two snapshots of one cluster and the service ports that differ between them.
pub type Change = (
    Snapshot,
    Snapshot,
    Vec<service_core::snapshot::ServicePortName>,
);

/// The same cluster with one endpoint of one Service changed: (before, after, changed).
pub fn one_change(services: usize, endpoints: usize) -> Change {
    change_middle_slice(services, endpoints, |slice| {
        slice.endpoints[0].addresses[0] = "10.250.0.1".into();
    })
}

/// The same cluster with one endpoint of one Service gone (so its number of endpoints
/// changes): (before, after, changed).
pub fn one_endpoint_removed(services: usize, endpoints: usize) -> Change {
    change_middle_slice(services, endpoints, |slice| {
        slice.endpoints.pop();
    })
}

fn change_middle_slice(
    services: usize,
    endpoints: usize,
    change: impl FnOnce(&mut service_core::model::EndpointSlice),
) -> Change {
    let (svcs, mut slices) = service_testkit::fixtures::scale(services, endpoints);
    let before = Snapshot::build(node(), &svcs, &slices, &[]).expect("bench snapshot");
    change(&mut slices[services / 2]);
    let after = before
        .rebuild(node(), &svcs, &slices, &[])
        .expect("bench snapshot");
    let changed = after
        .diff(&before)
        .ports
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    (before, after, changed)
}

/// A snapshot with `in_bench` Services (one endpoint each) in namespace `bench` and
/// `elsewhere` more spread over 50 other namespaces.
pub fn snapshot_with_other_namespaces(in_bench: usize, elsewhere: usize) -> Snapshot {
    let (mut svcs, mut slices) = service_testkit::fixtures::scale(in_bench + elsewhere, 1);
    for (i, (svc, slice)) in svcs.iter_mut().zip(&mut slices).enumerate().skip(in_bench) {
        let namespace = format!("ns-{}", i % 50);
        svc.key.namespace.clone_from(&namespace);
        slice.metadata.namespace = Some(namespace);
    }
    Snapshot::build(node(), &svcs, &slices, &[]).expect("bench snapshot")
}
