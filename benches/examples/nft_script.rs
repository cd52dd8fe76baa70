//! Prints the `nft -f` script of N services × 10 endpoints (to time `nft -f` against our
//! netlink applier): `cargo run --release -p service-benches --example nft_script -- 10000`.

use service_proxy::ProxyConfig;
use service_proxy::nftables::{NftablesConfig, Renderer};

fn main() {
    let services: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let snap = service_benches::snapshot(services, 10);
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = vec!["10.0.0.0/8".parse().expect("cidr")];
    let script = Renderer::new(NftablesConfig::new(proxy), false)
        .render(&snap)
        .create_one()
        .to_string();
    print!("{script}");
}
