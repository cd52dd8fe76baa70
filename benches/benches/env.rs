//! Service environment variables for a pod in a namespace of 5,000 Services (kubelet
//! computes this for every container it starts).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use service_core::model::{Container, EnvVar, Pod};
use service_env::{PodFieldsOnly, for_container, for_namespace};

fn pod() -> Pod {
    let mut pod = Pod::default();
    pod.metadata.name = Some("client".into());
    pod.metadata.namespace = Some("bench".into());
    let mut c = Container::default();
    c.name = "app".into();
    c.env = vec![
        EnvVar::new("SVC_1_SERVICE_HOST", "override"),
        EnvVar::new(
            "URL",
            "http://$(SVC_42_SERVICE_HOST):$(SVC_42_SERVICE_PORT)/",
        ),
    ];
    pod.spec.containers = vec![c];
    pod
}

fn env(c: &mut Criterion) {
    let mut g = c.benchmark_group("env");
    for services in [1_000, 5_000] {
        // Bigger clusters have more namespaces, not more services per namespace; add
        // 25,000 Services in other namespaces so lookups cannot scan everything.
        let snap = service_benches::snapshot_with_other_namespaces(services, 25_000);
        let pod = pod();
        g.bench_with_input(
            BenchmarkId::new("for_namespace", services),
            &services,
            |b, _| {
                b.iter(|| for_namespace(&snap, "bench", true));
            },
        );
        g.bench_with_input(
            BenchmarkId::new("for_container", services),
            &services,
            |b, _| {
                b.iter(|| {
                    for_container(&snap, &pod, &pod.spec.containers[0], &PodFieldsOnly).unwrap()
                });
            },
        );
    }
    g.finish();
}

criterion_group!(benches, env);
criterion_main!(benches);
