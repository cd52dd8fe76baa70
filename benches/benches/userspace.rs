//! The userspace proxy against a direct connection and HAProxy (Debian's, TCP mode), on
//! loopback, in one run: client, proxy and server share the machine's cores.
//!
//! - `tcp_stream/{direct,userspace,haproxy}`: one connection carrying 64 MiB to a sink
//!   (throughput).
//! - `tcp_connect/{direct,userspace,haproxy}`: connect, one byte each way, close, one client
//!   after another (connections per second).
//!
//! Our runtime's worker threads and HAProxy's `nbthread` are both `WORKERS` (default 1:
//! with client and server on the same two cores, one proxy thread each is the fair
//! split). HAProxy runs only when the `haproxy` program is installed. Run:
//! `cargo bench -p service-benches --bench userspace` (or `WORKERS=2 cargo bench ...`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use service_core::defaults;
use service_core::model::{
    AddressType, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, IntOrString, Protocol,
    Service, ServicePort,
};
use service_core::snapshot::{NodeInfo, ServicePortName, Snapshot};
use service_core::validation::validate_service;
use service_proxy::userspace::{UserspaceConfig, UserspaceProxy};

const STREAM: usize = 64 << 20;

/// Reads everything each connection sends, then closes.
fn sink() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 << 10];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// Answers one byte with one byte, then closes when the client does.
fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let mut b = [0u8; 1];
            if c.read_exact(&mut b).is_ok() {
                let _ = c.write_all(&b);
            }
            let _ = c.read(&mut b);
        }
    });
    addr
}

fn service(
    name: &str,
    ip: &str,
    backend: SocketAddr,
) -> (service_core::valid::ValidService, EndpointSlice) {
    let mut svc = Service::new("bench", name);
    svc.spec.cluster_ip = Some(ip.into());
    let mut sp = ServicePort::tcp("p", 80);
    sp.target_port = Some(IntOrString::Int(i32::from(backend.port())));
    svc.spec.ports.push(sp);
    defaults::service(&mut svc);
    let mut slice = EndpointSlice::new("bench", &format!("{name}-x"), name, AddressType::Ipv4);
    slice.ports = vec![EndpointPort::new(
        "p",
        i32::from(backend.port()),
        Protocol::Tcp,
    )];
    let mut ep = Endpoint::new(&backend.ip().to_string());
    ep.conditions = Some(EndpointConditions::new(true, true, false));
    slice.endpoints.push(ep);
    (validate_service(&svc).unwrap(), slice)
}

fn haproxy(
    sink: SocketAddr,
    echo: SocketAddr,
    threads: usize,
) -> Option<(Child, SocketAddr, SocketAddr)> {
    if Command::new("haproxy").arg("-v").output().is_err() {
        eprintln!("haproxy not installed: skipping it");
        return None;
    }
    let free = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (a, b) = (free(), free());
    let cfg = format!(
        "global\n  maxconn 4000\n  nbthread {threads}\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\nlisten sink\n  bind {a}\n  server s {sink}\nlisten echo\n  bind {b}\n  server e {echo}\n"
    );
    let path = std::env::temp_dir().join(format!("bench-haproxy-{}.cfg", std::process::id()));
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // Wait until it listens.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(b).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((child, a, b))
}

fn stream(to: SocketAddr) {
    let mut c = TcpStream::connect(to).unwrap();
    let chunk = vec![7u8; 256 << 10];
    let mut left = STREAM;
    while left > 0 {
        let n = left.min(chunk.len());
        c.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut b = [0u8; 1];
    let _ = c.read(&mut b);
}

fn connect_once(to: SocketAddr) {
    let mut c = TcpStream::connect(to).unwrap();
    let _ = c.set_nodelay(true);
    c.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).unwrap();
}

fn bench(c: &mut Criterion) {
    let (sink, echo) = (sink(), echo());
    let workers: usize = std::env::var("WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    let mut config = UserspaceConfig::default();
    config.listen_ip = "127.0.0.1".parse().unwrap();
    let mut proxy = UserspaceProxy::new(config, rt.handle().clone());
    let (s1, e1) = service("sink", "10.96.0.1", sink);
    let (s2, e2) = service("echo", "10.96.0.2", echo);
    let snap = Snapshot::build(NodeInfo::new("n", vec![]), &[s1, s2], &[e1, e2], &[]).unwrap();
    proxy.sync(&snap).unwrap();
    let portal = |n: &str| {
        proxy
            .portal(&ServicePortName::new("bench", n, "p", Protocol::Tcp))
            .unwrap()
    };
    let mut targets = vec![
        ("direct", sink, echo),
        ("userspace", portal("sink"), portal("echo")),
    ];
    let mut ha = haproxy(sink, echo, workers);
    if let Some((_, a, b)) = &ha {
        targets.push(("haproxy", *a, *b));
    }

    let mut g = c.benchmark_group("tcp_stream");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(STREAM as u64));
    for (name, to, _) in &targets {
        g.bench_function(*name, |b| b.iter(|| stream(*to)));
    }
    g.finish();

    let mut g = c.benchmark_group("tcp_connect");
    g.throughput(Throughput::Elements(1));
    for (name, _, to) in &targets {
        g.bench_function(*name, |b| b.iter(|| connect_once(*to)));
    }
    g.finish();

    if let Some((child, _, _)) = ha.as_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
