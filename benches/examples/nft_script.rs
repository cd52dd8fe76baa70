//! Prints the `nft -f` script of N services × 10 endpoints (to time `nft -f` against our
//! netlink applier): `cargo run --release -p service-benches --example nft_script -- 10000`.

use service_proxy::nftables::{NftablesConfig, Renderer};

fn main() {
    let services: usize = service_benches::arg_or(1, 10_000);
    let snap = service_benches::snapshot(services, 10);
    let proxy = service_benches::proxy_config();
    let script = Renderer::new(NftablesConfig::new(proxy), false)
        .render(&snap)
        .create_one()
        .to_string();
    print!("{script}");
}
