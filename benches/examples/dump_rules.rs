//! Writes the full iptables-restore input for `N` services × 10 endpoints to stdout.
use std::io::Write as _;

use service_proxy::ProxyConfig;
use service_proxy::iptables::{IptablesConfig, Renderer};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let snap = service_benches::snapshot(n, 10);
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = vec!["10.0.0.0/8".parse().expect("cidr")];
    let mut out = Vec::new();
    Renderer::new(IptablesConfig::new(proxy), false)
        .full(&snap)
        .write_restore_input(&mut out);
    std::io::stdout().write_all(&out).expect("stdout");
}
