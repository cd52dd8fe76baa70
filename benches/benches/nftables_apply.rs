//! nftables apply times in a network namespace (needs root; without it nothing runs):
//!
//! - `nft_apply_full/10000`: building the table of 10k services × 10 endpoints from nothing
//!   over netlink (render, encode, bounded transactions, kernel commit).
//! - `nft_apply_one_change/10000`: one Service's endpoint changes with 10k loaded
//!   (incremental render, one transaction).
//! - `nft_apply_one_tracked_change/10000`: the same change synced with the change tracker's
//!   set of changed ports, as the daemons sync: one port re-rendered, map elements only.
//!   `SCALE_100K=1` adds the same at 100k services.
//! - `nft_apply_one_count_change/10000`: the same with an endpoint leaving and joining, so
//!   that the Service's number of endpoints changes (map elements only too). `SCALE_100K=1`
//!   adds 100k.
//! - `nft_f_full/1000`: the same table's `nft -f` script loaded by Debian's `nft`, at 1k
//!   services (its userspace grows quadratically with the chain count; 10k takes minutes).
//! - `nft_apply_full/1000`: ours at 1k, for the ratio with `nft -f` in the same run.
//!
//! Run: `cargo bench -p service-benches --bench nftables_apply`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use service_proxy::nftables::apply::{NftProxier, NftSocket};
use service_proxy::nftables::{NftablesConfig, Renderer};
use service_proxy::{Proxier, SyncRequest};
use service_testkit::netns::{E2e, Netns, require_programs};

fn renderer() -> Renderer {
    let proxy = service_benches::proxy_config();
    Renderer::new(NftablesConfig::new(proxy), false)
}

fn root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
        && require_programs("nftables_apply", &["ip", "nft"]) == E2e::Run
}

fn full(c: &mut Criterion) {
    let mut g = c.benchmark_group("nft_apply_full");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    for services in [1_000, 10_000] {
        let snap = service_benches::snapshot(services, 10);
        let ns = Netns::new("nft-bench");
        g.bench_function(services.to_string(), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // A fresh proxier each time: the first sync builds the table (after
                    // deleting the previous one in its first transaction).
                    let socket = NftSocket::in_netns(&ns.path()).expect("socket");
                    let mut p = NftProxier::new(renderer(), socket);
                    let t = Instant::now();
                    p.sync_to(&snap).expect("full apply");
                    total += t.elapsed();
                }
                total
            });
        });
    }
    g.finish();
}

fn one_change(c: &mut Criterion) {
    let mut g = c.benchmark_group("nft_apply_one_change");
    let (before, after, _) = service_benches::one_change(10_000, 10);
    let ns = Netns::new("nft-bench");
    let socket = NftSocket::in_netns(&ns.path()).expect("socket");
    let mut p = NftProxier::new(renderer(), socket);
    p.sync_to(&before).expect("full apply");
    let mut flip = false;
    g.bench_function("10000", |b| {
        b.iter(|| {
            flip = !flip;
            let snap = if flip { &after } else { &before };
            let r = p.sync_to(snap).expect("one change");
            assert_eq!(r.nftables().expect("nftables report").transactions, 1);
        });
    });
    g.finish();
}

/// One endpoint change, synced with the change tracker's set of changed service ports (what
/// the daemons do): only that port is re-rendered, and its transaction holds map and set
/// elements only.
fn one_tracked_change(c: &mut Criterion) {
    tracked(
        c,
        "nft_apply_one_tracked_change",
        service_benches::one_change,
    );
}

/// One endpoint leaving and coming back: the Service's number of endpoints changes, and
/// still only map elements do.
fn one_count_change(c: &mut Criterion) {
    tracked(
        c,
        "nft_apply_one_count_change",
        service_benches::one_endpoint_removed,
    );
}

fn tracked(c: &mut Criterion, group: &str, change: fn(usize, usize) -> service_benches::Change) {
    let mut g = c.benchmark_group(group);
    for services in [10_000, 100_000] {
        if services > 10_000 && std::env::var_os("SCALE_100K").is_none() {
            continue;
        }
        let (before, after, changed) = change(services, 10);
        let changed: BTreeSet<_> = changed.into_iter().collect();
        let ns = Netns::new("nft-bench");
        let socket = NftSocket::in_netns(&ns.path()).expect("socket");
        let mut p = NftProxier::new(renderer(), socket);
        p.sync_to(&before).expect("full apply");
        let mut flip = false;
        g.bench_function(services.to_string(), |b| {
            b.iter(|| {
                flip = !flip;
                let snap = if flip { &after } else { &before };
                let r = p
                    .sync(SyncRequest::new(snap, Instant::now()).with_changes(&changed))
                    .expect("one change");
                let detail = r.nftables().expect("nftables report");
                assert_eq!(detail.transactions, 1);
                assert_eq!(r.service_ports_changed, 1);
            });
        });
    }
    g.finish();
}

fn nft_f(c: &mut Criterion) {
    let mut g = c.benchmark_group("nft_f_full");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    let snap = service_benches::snapshot(1_000, 10);
    let script = renderer().render(&snap).create_one().to_string();
    let ns = Netns::new("nft-bench");
    let path = std::env::temp_dir().join(format!("{}.nft", ns.name()));
    std::fs::write(&path, script).expect("script");
    let path_s = path.to_string_lossy().into_owned();
    g.bench_function("1000", |b| b.iter(|| ns.exec("nft", &["-f", &path_s])));
    g.finish();
    let _ = std::fs::remove_file(&path);
}

fn all(c: &mut Criterion) {
    if !root() {
        eprintln!("nftables_apply: needs root and nft; skipped");
        return;
    }
    full(c);
    one_change(c);
    one_tracked_change(c);
    one_count_change(c);
    nft_f(c);
}

criterion_group!(benches, all);
criterion_main!(benches);
