//! nftables rendering at scale (pure: no kernel).
//!
//! - `nft_full_render`: a cold render of 1k/10k/30k/100k services × 10 endpoints into the typed
//!   ruleset (a fresh renderer: nothing cached).
//! - `nft_cold_start_transactions`: splitting that ruleset into the bounded transactions a
//!   cold start sends (10k).
//! - `nft_encode_full`: encoding those transactions as netlink batches (10k).
//! - `nft_script_full`: printing the whole table as an `nft -f` script (10k).
//! - `nft_update_one_change`: the incremental update after one Service changed, at
//!   1k/10k/30k/100k, up to its encoded netlink batch.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use service_proxy::nftables::wire::Batch;
use service_proxy::nftables::{NftablesConfig, Renderer};

fn renderer() -> Renderer {
    let proxy = service_benches::proxy_config();
    Renderer::new(NftablesConfig::new(proxy), false)
}

fn full(c: &mut Criterion) {
    let mut g = c.benchmark_group("nft_full_render");
    g.sample_size(10);
    for services in [1_000, 10_000, 30_000, 100_000] {
        let snap = service_benches::snapshot(services, 10);
        // The ruleset is dropped outside the measurement (a proxier drops the previous
        // one after the sync, off the critical path).
        g.bench_with_input(BenchmarkId::from_parameter(services), &services, |b, _| {
            b.iter_with_large_drop(|| renderer().render(&snap));
        });
    }
    g.finish();
}

fn cold_start(c: &mut Criterion) {
    let mut g = c.benchmark_group("nft_cold_start_transactions");
    g.sample_size(10);
    let snap = service_benches::snapshot(10_000, 10);
    let rules = renderer().render(&snap);
    g.bench_function("10000", |b| b.iter_with_large_drop(|| rules.create(20_000)));
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("nft_encode_full");
    g.sample_size(10);
    let snap = service_benches::snapshot(10_000, 10);
    let txs = renderer().render(&snap).create(20_000);
    g.bench_function("10000", |b| {
        b.iter(|| {
            txs.iter()
                .map(|tx| {
                    let mut batch = Batch::new(1);
                    batch.push(tx);
                    batch.finish().bytes.len()
                })
                .sum::<usize>()
        });
    });
    g.finish();
}

fn script(c: &mut Criterion) {
    let mut g = c.benchmark_group("nft_script_full");
    g.sample_size(10);
    let snap = service_benches::snapshot(10_000, 10);
    let tx = renderer().render(&snap).create_one();
    g.bench_function("10000", |b| b.iter(|| tx.to_string().len()));
    g.finish();
}

fn update(c: &mut Criterion) {
    let mut g = c.benchmark_group("nft_update_one_change");
    for services in [1_000, 10_000, 30_000, 100_000] {
        let (before, after, changed) = service_benches::one_change(services, 10);
        let r = renderer();
        let mut rules = r.render(&before);
        let mut flip = false;
        g.bench_with_input(BenchmarkId::from_parameter(services), &services, |b, _| {
            b.iter(|| {
                // Alternate between the two snapshots so every iteration is a real change.
                flip = !flip;
                let snap = if flip { &after } else { &before };
                let update = r.update(&mut rules, snap, Some(&changed));
                let mut batch = Batch::new(1);
                batch.push(&update.transaction);
                batch.finish().bytes.len()
            });
        });
    }
    g.finish();
}

criterion_group!(benches, full, cold_start, encode, script, update);
criterion_main!(benches);
