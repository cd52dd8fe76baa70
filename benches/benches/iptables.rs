//! iptables rendering at scale.
//!
//! - `iptables_full_render`: a cold full render (fresh renderer, nothing cached) of 1k/10k/30k/100k
//!   services × 10 endpoints, up to the chunk list the applier streams into
//!   `iptables-restore` (the complete text, never copied into one buffer).
//! - `iptables_concatenate`: copying that text into one contiguous buffer (only `render`
//!   and debugging need it).
//! - `iptables_partial_render_one_change`: the partial render after one Service changed,
//!   at 10k and 100k services, up to the chunk list.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use service_proxy::iptables::{IptablesConfig, Renderer};

fn config() -> IptablesConfig {
    let proxy = service_benches::proxy_config();
    IptablesConfig::new(proxy)
}

fn full(c: &mut Criterion) {
    let mut g = c.benchmark_group("iptables_full_render");
    g.sample_size(10);
    let mut scratch: [Vec<u8>; 4] = Default::default();
    for services in [1_000, 10_000, 30_000, 100_000] {
        let snap = service_benches::snapshot(services, 10);
        let bytes = Renderer::new(config(), false)
            .full(&snap)
            .to_restore_input()
            .len();
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_with_input(BenchmarkId::from_parameter(services), &services, |b, _| {
            b.iter(|| {
                let rules = Renderer::new(config(), false).full(&snap);
                rules.restore_chunks(&mut scratch).len()
            });
        });
    }
    g.finish();
}

fn concatenate(c: &mut Criterion) {
    let mut g = c.benchmark_group("iptables_concatenate");
    g.sample_size(10);
    let snap = service_benches::snapshot(10_000, 10);
    let rules = Renderer::new(config(), false).full(&snap);
    let mut out = Vec::new();
    g.bench_function("10000", |b| b.iter(|| rules.write_restore_input(&mut out)));
    g.finish();
}

fn partial(c: &mut Criterion) {
    let mut g = c.benchmark_group("iptables_partial_render_one_change");
    for services in [10_000, 100_000] {
        let (before, after, changed) = service_benches::one_change(services, 10);
        let mut renderer = Renderer::new(config(), false);
        renderer.full(&before);
        let mut flip = false;
        let mut scratch: [Vec<u8>; 4] = Default::default();
        g.bench_with_input(BenchmarkId::from_parameter(services), &services, |b, _| {
            b.iter(|| {
                // Alternate between the two snapshots so every iteration is a real change.
                flip = !flip;
                let snap = if flip { &after } else { &before };
                let rules = renderer.partial(snap, &changed);
                rules.restore_chunks(&mut scratch).len()
            });
        });
    }
    g.finish();
}

criterion_group!(benches, full, concatenate, partial);
criterion_main!(benches);
