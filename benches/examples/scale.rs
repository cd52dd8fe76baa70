//! Every step the proxy, DNS and kubelet's environment take at a given scale, timed once
//! each (best of three) in one process, with the process's resident memory after each:
//!
//! ```sh
//! cargo run --release -p service-benches --example scale [SERVICES] [ENDPOINTS]
//! ```
//!
//! Defaults: 100,000 Services × 10 endpoints. The criterion benchmarks (`cargo bench -p
//! service-benches`) measure the same steps with statistics up to 30k; this one is for
//! the sizes where a criterion run would take hours.

use std::time::{Duration, Instant};

use service_dns::{DnsConfig, Zone};
use service_proxy::iptables::{IptablesConfig, Renderer as IptRenderer};
use service_proxy::nftables::wire::Batch;
use service_proxy::nftables::{NftablesConfig, Renderer as NftRenderer};

fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// Runs `f` three times; prints the fastest, and the memory afterwards.
fn step<T>(what: &str, mut f: impl FnMut() -> T) -> T {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..3 {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed());
        out = Some(v);
    }
    println!(
        "{what:<58} {:>12.3} ms   RSS {:>6} MiB",
        best.as_secs_f64() * 1e3,
        rss_mib()
    );
    out.unwrap_or_else(|| unreachable!())
}

fn main() {
    let services = service_benches::arg_or(1, 100_000);
    let endpoints = service_benches::arg_or(2, 10);
    println!(
        "{services} Services × {endpoints} endpoints (RSS at start {} MiB)",
        rss_mib()
    );
    let (before, after, changed) = step("objects, snapshot, one change and its snapshot", || {
        service_benches::one_change(services, endpoints)
    });
    let (svcs, slices) = service_testkit::fixtures::scale(services, endpoints);
    step("snapshot build", || {
        service_core::snapshot::Snapshot::build(service_benches::node(), &svcs, &slices, &[])
            .expect("snapshot")
    });
    drop((svcs, slices));
    let ipt_config = || IptablesConfig::new(service_benches::proxy_config());
    let mut scratch: [Vec<u8>; 4] = Default::default();
    let bytes = step(
        "iptables full render (cold), up to its restore chunks",
        || {
            let rules = IptRenderer::new(ipt_config(), false).full(&before);
            rules
                .restore_chunks(&mut scratch)
                .iter()
                .map(|c| c.len())
                .sum::<usize>()
        },
    );
    println!("    ({} MiB of iptables-restore input)", bytes >> 20);
    let mut ipt = IptRenderer::new(ipt_config(), false);
    ipt.full(&before);
    let mut flip = false;
    step("iptables partial render after one change", || {
        flip = !flip;
        let snap = if flip { &after } else { &before };
        let rules = ipt.partial(snap, &changed);
        rules.restore_chunks(&mut scratch).len()
    });
    drop(ipt);
    let nft = NftRenderer::new(NftablesConfig::new(service_benches::proxy_config()), false);
    let mut rules = step("nftables full render (cold)", || nft.render(&before));
    step("nftables cold-start transactions, encoded", || {
        let txs = rules.create(20_000);
        let mut n = 0;
        for tx in &txs {
            let mut batch = Batch::new(1);
            batch.push(tx);
            n += batch.finish().bytes.len();
        }
        n
    });
    let mut flip = false;
    step(
        "nftables update after one change, up to its netlink batch",
        || {
            flip = !flip;
            let snap = if flip { &after } else { &before };
            let update = nft.update(&mut rules, snap, Some(&changed));
            let mut batch = Batch::new(1);
            batch.push(&update.transaction);
            batch.finish().bytes.len()
        },
    );
    drop(rules);
    let zone = step("DNS zone build", || {
        Zone::from_snapshot(DnsConfig::default(), &before)
    });
    let changes = after.diff(&before).services;
    step("DNS zone update, one Service changed", || {
        let mut z = zone.clone();
        let view = z.view();
        z.apply(&after, &changes);
        (z, view)
    });
    drop(zone);
    let other =
        service_benches::snapshot_with_other_namespaces(5_000, services.saturating_sub(5_000));
    step(
        "service env vars, 5k Services in the pod's namespace",
        || service_env::for_namespace(&other, "bench", true).len(),
    );
    println!("RSS at the end {} MiB", rss_mib());
}
