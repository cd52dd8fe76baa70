//! IPVS planning at scale: the plan (virtual servers, real servers, addresses, ipsets) of
//! 1k/10k services × 10 endpoints, encoding every message a cold start sends, and the diff
//! between a loaded table and a plan after one endpoint changed (10k).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use service_proxy::ipvs::genl::{Command, dest_message, service_message};
use service_proxy::ipvs::{IpvsConfig, IpvsPlan};

fn config() -> IpvsConfig {
    let mut proxy = service_benches::proxy_config();
    proxy.local_addresses = vec!["192.168.0.2".parse().expect("ip")];
    IpvsConfig::new(proxy)
}

fn plan(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipvs_plan");
    g.sample_size(10);
    for services in [1_000, 10_000] {
        let snap = service_benches::snapshot(services, 10);
        g.bench_with_input(BenchmarkId::from_parameter(services), &services, |b, _| {
            b.iter_with_large_drop(|| IpvsPlan::build(&config(), &snap, false));
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipvs_encode_cold_start");
    g.sample_size(10);
    let snap = service_benches::snapshot(10_000, 10);
    let p = IpvsPlan::build(&config(), &snap, false);
    g.bench_function("10000", |b| {
        b.iter(|| {
            let mut bytes = 0;
            for (seq, (vs, servers)) in p.services.iter().enumerate() {
                let seq = u32::try_from(seq).unwrap_or(0);
                bytes += service_message(0x1c, seq, Command::NewService, vs).len();
                for rs in servers {
                    bytes += dest_message(0x1c, seq, Command::NewDest, vs, rs).len();
                }
            }
            bytes
        });
    });
    g.finish();
}

fn diff(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipvs_diff_one_change");
    let (before, after, _) = service_benches::one_change(10_000, 10);
    let kernel = service_proxy::ipvs::applied(&IpvsPlan::build(&config(), &before, false));
    let next = IpvsPlan::build(&config(), &after, false);
    g.bench_function("10000", |b| {
        b.iter(|| service_proxy::ipvs::diff(&next, &kernel).len());
    });
    g.finish();
}

criterion_group!(benches, plan, encode, diff);
criterion_main!(benches);
