//! Allocators and the registry. Targets: AllocateNext on a /12 at 99 % full under 2 µs
//! median; restoring a /12 snapshot under 1 ms.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use service_core::alloc::{IpAllocator, PortRange};
use service_core::model::{Service, ServicePort};
use service_core::random::{Random, SeededRandom};
use service_core::registry::{MemoryStore, Registry, RegistryConfig};

fn slash12(fill: f64, rng: &mut SeededRandom) -> IpAllocator {
    let mut a = IpAllocator::new("10.96.0.0/12".parse().unwrap());
    let target = (a.size() as f64 * fill) as usize;
    // Random addresses, so free ones are scattered as after years of churn.
    let base = u32::from(std::net::Ipv4Addr::new(10, 96, 0, 1));
    while a.used() < target {
        let off = rng.below(a.size()) as u32;
        let _ = a.allocate(std::net::Ipv4Addr::from(base + off).into());
    }
    a
}

fn allocate_next(c: &mut Criterion) {
    let mut g = c.benchmark_group("ip_allocate_next_slash12");
    let mut rng = SeededRandom::new(1);
    for fill in [0.0, 0.5, 0.99] {
        let mut a = slash12(fill, &mut rng);
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{}%", (fill * 100.0) as u32)),
            &fill,
            |b, _| {
                b.iter(|| {
                    let ip = a.allocate_next(&mut rng).unwrap();
                    a.release(black_box(ip));
                });
            },
        );
    }
    // The worst case for a scan: everything allocated but the last address of the range.
    let mut a = IpAllocator::new("10.96.0.0/12".parse().unwrap());
    while a.allocate_next(&mut rng).is_ok() {}
    let last = a.iter().last().unwrap();
    a.release(last);
    g.bench_function("one_free_address", |b| {
        b.iter(|| {
            let ip = a.allocate_next(&mut rng).unwrap();
            a.release(black_box(ip));
        });
    });
    g.finish();
}

fn snapshot_restore(c: &mut Criterion) {
    let mut g = c.benchmark_group("ip_snapshot_slash12");
    let mut rng = SeededRandom::new(2);
    let a = slash12(0.5, &mut rng);
    let snap = a.snapshot();
    g.bench_function("snapshot", |b| b.iter(|| black_box(a.snapshot())));
    let mut target = IpAllocator::new("10.96.0.0/12".parse().unwrap());
    g.bench_function("restore", |b| {
        b.iter(|| target.restore(black_box(&snap)).unwrap())
    });
    g.finish();
}

fn registry_creates(c: &mut Criterion) {
    let mut g = c.benchmark_group("registry_create_delete_in_memory");
    for cidr in ["10.96.0.0/16", "10.96.0.0/12"] {
        let config =
            RegistryConfig::new(&[cidr.parse().unwrap()], PortRange::DEFAULT_NODE_PORTS).unwrap();
        let mut r = Registry::new(config, MemoryStore::new(), SeededRandom::new(3)).unwrap();
        let mut i = 0u64;
        g.bench_function(BenchmarkId::from_parameter(cidr), |b| {
            b.iter(|| {
                i += 1;
                let name = format!("s{i}");
                let mut s = Service::new("default", &name);
                s.spec.ports = vec![ServicePort::tcp("http", 80)];
                r.create(s).unwrap();
                r.delete("default", &name).unwrap();
            });
        });
    }
    g.finish();
}

/// The same on a real etcd (skipped when the `etcd` program is missing): every create is
/// three compare-and-swap round trips (IP range, Service) and a delete two.
fn registry_creates_etcd(c: &mut Criterion) {
    if std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping registry_create_delete_etcd: no `etcd` program");
        return;
    }
    let server = service_testkit::etcd::EtcdServer::start();
    let store = service_etcd::EtcdStore::connect(
        &[server.endpoint()],
        service_etcd::EtcdOptions::default(),
    )
    .unwrap();
    let config = RegistryConfig::new(
        &["10.96.0.0/16".parse().unwrap()],
        PortRange::DEFAULT_NODE_PORTS,
    )
    .unwrap();
    let mut r = Registry::new(config, store, SeededRandom::new(4)).unwrap();
    let mut g = c.benchmark_group("registry_create_delete_etcd");
    g.sample_size(20);
    let mut i = 0u64;
    g.bench_function("10.96.0.0/16", |b| {
        b.iter(|| {
            i += 1;
            let name = format!("s{i}");
            let mut s = Service::new("default", &name);
            s.spec.ports = vec![ServicePort::tcp("http", 80)];
            r.create(s).unwrap();
            r.delete("default", &name).unwrap();
        });
    });
    g.finish();
}

criterion_group!(
    benches,
    allocate_next,
    snapshot_restore,
    registry_creates,
    registry_creates_etcd
);
criterion_main!(benches);
