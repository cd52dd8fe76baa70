//! Cluster DNS records and answers. Targets: building the records of 10,000 Services under
//! 20 ms; applying one changed Service under 50 µs.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use service_dns::wire::{build_query, rtype};
use service_dns::{DnsConfig, Transport, Zone};

fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("dns_zone_build");
    g.sample_size(20);
    for services in [1_000, 10_000, 30_000, 100_000] {
        let snap = service_benches::snapshot(services, 10);
        g.bench_with_input(BenchmarkId::from_parameter(services), &services, |b, _| {
            b.iter_with_large_drop(|| Zone::from_snapshot(DnsConfig::default(), &snap));
        });
    }
    g.finish();
}

fn one_change(c: &mut Criterion) {
    let mut g = c.benchmark_group("dns_zone_update_one_service");
    for services in [1_000, 10_000, 30_000, 100_000] {
        let (before, after, _) = service_benches::one_change(services, 10);
        // The diff is computed once per snapshot and shared by every consumer.
        let changes = after.diff(&before).services;
        let base = Zone::from_snapshot(DnsConfig::default(), &before);
        g.bench_with_input(BenchmarkId::from_parameter(services), &services, |b, _| {
            b.iter_batched(
                || {
                    let zone = base.clone();
                    // A server keeps answering from the previous view meanwhile, so the
                    // touched shards are copied, as in production.
                    let view = zone.view();
                    (zone, view)
                },
                |(mut zone, view)| {
                    zone.apply(&after, &changes);
                    // Dropping the zones happens outside the measurement.
                    (zone, view)
                },
                criterion::BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

fn respond(c: &mut Criterion) {
    let mut g = c.benchmark_group("dns_respond_10k");
    let snap = service_benches::snapshot(10_000, 10);
    let view = Zone::from_snapshot(DnsConfig::default(), &snap).view();
    let mut out = Vec::with_capacity(1500);
    for (label, name, qtype) in [
        ("a_hit", "svc-4242.bench.svc.cluster.local", rtype::A),
        (
            "srv_hit",
            "_http._tcp.svc-4242.bench.svc.cluster.local",
            rtype::SRV,
        ),
        ("nxdomain", "nope.bench.svc.cluster.local", rtype::A),
        ("ptr_hit", "43.16.96.10.in-addr.arpa", rtype::PTR),
    ] {
        let q = build_query(1, name, qtype);
        g.bench_function(label, |b| {
            b.iter(|| view.respond(black_box(&q), &mut out, Transport::Udp, false))
        });
    }
    g.finish();
}

/// A headless name with 5,000 ready pods per family: each answer costs what it holds, not
/// what the name has (target: under 1 ms, UDP and TCP).
fn respond_headless(c: &mut Criterion) {
    let mut g = c.benchmark_group("dns_respond_headless_5000");
    let (svcs, slices) = service_testkit::fixtures::huge_headless(5_000);
    let snap =
        service_core::snapshot::Snapshot::build(service_benches::node(), &svcs, &slices, &[])
            .expect("snapshot");
    let view = Zone::from_snapshot(DnsConfig::default(), &snap).view();
    let mut out = Vec::with_capacity(65_536);
    let name = "huge.x.svc.cluster.local";
    for (label, qtype, transport) in [
        ("a_udp", rtype::A, Transport::Udp),
        ("a_tcp", rtype::A, Transport::Tcp),
        ("aaaa_tcp", rtype::AAAA, Transport::Tcp),
        ("srv_udp", rtype::SRV, Transport::Udp),
        ("srv_tcp", rtype::SRV, Transport::Tcp),
        ("any_tcp", rtype::ANY, Transport::Tcp),
    ] {
        let q = build_query(1, name, qtype);
        g.bench_function(label, |b| {
            b.iter(|| view.respond(black_box(&q), &mut out, transport, false))
        });
    }
    g.finish();
}

criterion_group!(benches, build, one_change, respond, respond_headless);
criterion_main!(benches);
