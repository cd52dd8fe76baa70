//! iptables rendering at scale: full renders at 1k/10k/30k services × 10 endpoints, and the
//! partial render after one service changed at 10k. Both include producing the
//! `iptables-restore` text.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use service_proxy::ProxyConfig;
use service_proxy::iptables::{IptablesConfig, Renderer};

fn config() -> IptablesConfig {
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = vec!["10.0.0.0/8".parse().expect("cidr")];
    IptablesConfig::new(proxy)
}

fn full(c: &mut Criterion) {
    let mut g = c.benchmark_group("iptables_full_render");
    g.sample_size(10);
    for services in [1_000, 10_000, 30_000] {
        let snap = service_benches::snapshot(services, 10);
        let bytes = Renderer::new(config(), false)
            .full(&snap)
            .to_restore_input()
            .len();
        g.throughput(Throughput::Bytes(bytes as u64));
        // A syncing proxy reuses its output buffer across syncs, as this does.
        let mut out = Vec::new();
        g.bench_with_input(BenchmarkId::from_parameter(services), &services, |b, _| {
            b.iter(|| {
                Renderer::new(config(), false)
                    .full(&snap)
                    .write_restore_input(&mut out);
            });
        });
    }
    g.finish();
}

fn partial(c: &mut Criterion) {
    let mut g = c.benchmark_group("iptables_partial_render_one_change");
    let (before, after, changed) = service_benches::one_change(10_000, 10);
    let mut renderer = Renderer::new(config(), false);
    renderer.full(&before);
    let mut flip = false;
    let mut out = Vec::new();
    g.bench_function("10000", |b| {
        b.iter(|| {
            // Alternate between the two snapshots so every iteration is a real change.
            flip = !flip;
            let snap = if flip { &after } else { &before };
            renderer
                .partial(snap, &changed)
                .write_restore_input(&mut out);
        });
    });
    g.finish();
}

criterion_group!(benches, full, partial);
criterion_main!(benches);
