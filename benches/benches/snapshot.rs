//! Snapshot building and diffing at scale.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use service_benches::node;
use service_core::snapshot::Snapshot;

fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot_build");
    g.sample_size(10);
    for services in [1_000, 10_000, 30_000, 100_000] {
        let (svcs, slices) = service_testkit::fixtures::scale(services, 10);
        g.bench_with_input(BenchmarkId::from_parameter(services), &services, |b, _| {
            b.iter(|| Snapshot::build(node(), &svcs, &slices, &[]).unwrap());
        });
    }
    g.finish();
}

fn diff(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot_diff_one_change");
    for services in [1_000, 10_000, 30_000, 100_000] {
        let (before, after, _) = service_benches::one_change(services, 10);
        g.bench_with_input(BenchmarkId::from_parameter(services), &services, |b, _| {
            b.iter(|| after.diff(&before));
        });
    }
    g.finish();
}

criterion_group!(benches, build, diff);
criterion_main!(benches);
