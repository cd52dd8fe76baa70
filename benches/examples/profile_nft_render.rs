//! Where a cold nftables render of N services × 10 endpoints spends its time: render, the
//! cold-start transactions, and dropping both. Run:
//! `cargo run --release -p service-benches --example profile_nft_render -- 10000`.

use std::time::Instant;

use service_proxy::nftables::{NftablesConfig, Renderer};

fn main() {
    let services: usize = service_benches::arg_or(1, 10_000);
    let snap = service_benches::snapshot(services, 10);
    let proxy = service_benches::proxy_config();
    let renderer = Renderer::new(NftablesConfig::new(proxy), false);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    if std::env::var("KEEP").is_ok() {
        let mut kept = Vec::new();
        for _ in 0..rounds {
            let t = Instant::now();
            kept.push(renderer.render(&snap));
            println!("render (nothing freed before) {:?}", t.elapsed());
        }
        return;
    }
    for _ in 0..rounds {
        let t = Instant::now();
        let rules = renderer.render(&snap);
        let rendered = t.elapsed();
        let t = Instant::now();
        let txs = rules.create(20_000);
        let created = t.elapsed();
        let t = Instant::now();
        drop(txs);
        drop(rules);
        println!(
            "render {rendered:?}, transactions {created:?}, drop {:?}",
            t.elapsed()
        );
    }
}
