//! Loads N services × 10 endpoints into a namespace's nftables in ONE transaction (table
//! deleted and rebuilt atomically), twice: onto an empty namespace, then over the table
//! the first load left (what a restarting proxier does). Prints the times.
//! Run as root: `cargo run --release -p service-benches --example nft_atomic_load -- 10000`.

use std::time::Instant;

use service_proxy::nftables::apply::NftSocket;
use service_proxy::nftables::{NftablesConfig, Renderer};
use service_testkit::netns::Netns;

fn main() {
    let services = service_benches::arg_or(1, 10_000);
    let ns = Netns::new("nftatomic");
    let mut socket = NftSocket::in_netns(&ns.path()).expect("socket");
    let snap = service_benches::snapshot(services, 10);
    let t = Instant::now();
    let rules =
        Renderer::new(NftablesConfig::new(service_benches::proxy_config()), false).render(&snap);
    let render = t.elapsed();
    let tx = rules.create_one();
    for what in ["empty namespace", "over the existing table"] {
        let t = Instant::now();
        let stats = socket.apply(&[&tx]).expect("load");
        println!(
            "{services} services, {what}: one transaction of {} messages ({} MiB) in {:?} (render {render:?})",
            stats.messages,
            stats.bytes >> 20,
            t.elapsed()
        );
    }
}
