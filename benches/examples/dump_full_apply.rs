//! Writes what the iptables applier feeds to iptables-restore on a first full sync of `N`
//! services × 10 endpoints.
use std::io::Write as _;

use service_proxy::ProxyConfig;
use service_proxy::iptables::apply::{Applier, FakeRunner};
use service_proxy::iptables::{IptablesConfig, Renderer};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let snap = service_benches::snapshot(n, 10);
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = vec!["10.0.0.0/8".parse().expect("cidr")];
    let rules = Renderer::new(IptablesConfig::new(proxy), false).full(&snap);
    let mut a = Applier::new(FakeRunner::default(), false, true);
    a.apply(&rules).expect("fake apply");
    std::io::stdout()
        .write_all(a.runner().restores[0].as_bytes())
        .expect("stdout");
}
