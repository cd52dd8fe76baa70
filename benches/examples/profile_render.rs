//! A driver for profilers: one full iptables render of `N` services × 10 endpoints
//! (`N` from the first argument, default 2000).

use service_proxy::ProxyConfig;
use service_proxy::iptables::{IptablesConfig, Renderer};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let snap = service_benches::snapshot(n, 10);
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = vec!["10.0.0.0/8".parse().expect("cidr")];
    let rounds: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let mut text = Vec::new();
    for _ in 0..rounds {
        let start = std::time::Instant::now();
        Renderer::new(IptablesConfig::new(proxy.clone()), false)
            .full(&snap)
            .write_restore_input(&mut text);
        eprintln!("{} bytes in {:?}", text.len(), start.elapsed());
    }
}
