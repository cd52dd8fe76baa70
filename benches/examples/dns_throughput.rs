//! Cluster DNS throughput with `dnsperf` on loopback, side by side with Knot DNS serving
//! the same records from a zone file, in one run:
//!
//! ```sh
//! cargo run --release -p service-benches --example dns_throughput [SERVICES] [SECONDS]
//! ```
//!
//! Both servers get the whole machine in turn (UDP workers = CPUs; dnsperf shares the
//! cores, as a node-local cache would). Queries: every Service's A record, and as many
//! names that do not exist (what search paths produce), interleaved.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use service_dns::server::{DnsServer, ServerConfig};
use service_dns::{DnsConfig, Rdata, Zone};

fn dnsperf(port: u16, queries: &str, seconds: u32) -> f64 {
    let out = Command::new("dnsperf")
        .args([
            "-s",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-d",
            queries,
            "-l",
            &seconds.to_string(),
            "-c",
            "8",
            "-T",
            "1",
            "-q",
            "200",
        ])
        .output()
        .expect("run dnsperf (Debian package dnsperf)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Queries per second"))
        .unwrap_or_else(|| panic!("dnsperf output:\n{text}"));
    let lost = text
        .lines()
        .find(|l| l.contains("Queries lost"))
        .unwrap_or("");
    println!("    {}\n    {}", line.trim(), lost.trim());
    line.split(':')
        .nth(1)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn zone_file(zone: &Zone) -> String {
    let cfg = zone.config();
    let mut z = format!(
        "$ORIGIN {0}.\n$TTL {1}\n@ IN SOA ns.dns.{0}. hostmaster.{0}. 1 7200 1800 86400 {1}\n",
        cfg.zone, cfg.ttl
    );
    for r in zone.records() {
        if !(r.name == cfg.zone || r.name.ends_with(&format!(".{}", cfg.zone))) {
            continue;
        }
        let name = format!("{}.", r.name);
        let _ = match &r.data {
            Rdata::A(ip) => writeln!(z, "{name} IN A {ip}"),
            Rdata::Aaaa(ip) => writeln!(z, "{name} IN AAAA {ip}"),
            Rdata::Cname(t) => writeln!(z, "{name} IN CNAME {t}."),
            Rdata::Srv {
                priority,
                weight,
                port,
                target,
            } => writeln!(z, "{name} IN SRV {priority} {weight} {port} {target}."),
            Rdata::Txt(t) => writeln!(z, "{name} IN TXT \"{t}\""),
            Rdata::Ns(t) => writeln!(z, "{name} IN NS {t}."),
            _ => Ok(()),
        };
    }
    z.push_str(&format!("ns.dns.{}. IN A 127.0.0.1\n", cfg.zone));
    z
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let services: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let seconds: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let dir = std::env::temp_dir().join(format!("dns-throughput-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let snap = service_benches::snapshot(services, 10);
    let zone = Zone::from_snapshot(DnsConfig::default(), &snap);
    let mut queries = String::new();
    for i in 0..services {
        let _ = writeln!(queries, "svc-{i}.bench.svc.cluster.local A");
        let _ = writeln!(
            queries,
            "svc-{i}.bench.svc.cluster.local.bench.svc.cluster.local A"
        );
    }
    let qfile = dir.join("queries.txt");
    std::fs::write(&qfile, queries).unwrap();
    let qfile = qfile.to_str().unwrap();

    // Ours.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut config = ServerConfig::new("127.0.0.1:0".parse::<SocketAddr>().unwrap());
    config.udp_workers = cpus;
    let server = DnsServer::start(config, zone.view()).expect("start server");
    println!("service-dns ({services} services, {cpus} UDP workers), {seconds} s:");
    let ours = dnsperf(server.local_addr().port(), qfile, seconds);
    server.shutdown();

    // Knot, same records.
    std::fs::write(dir.join("cluster.local.zone"), zone_file(&zone)).unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir.display();
    std::fs::write(
        dir.join("knot.conf"),
        format!("server:\n  listen: 127.0.0.1@{port}\n  rundir: {d}\n  udp-workers: {cpus}\ndatabase:\n  storage: {d}\nlog:\n  - target: stderr\n    any: error\nzone:\n  - domain: cluster.local\n    file: {d}/cluster.local.zone\n    storage: {d}\n"),
    )
    .unwrap();
    let mut knot = Command::new("knotd")
        .args(["-c", &dir.join("knot.conf").to_string_lossy()])
        .stderr(Stdio::null())
        .spawn()
        .expect("start knotd (Debian package knot)");
    std::thread::sleep(Duration::from_secs(3));
    println!(
        "Knot DNS {}, {seconds} s:",
        String::from_utf8_lossy(
            &Command::new("knotd")
                .arg("--version")
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        )
        .trim()
    );
    let peer = dnsperf(port, qfile, seconds);
    let _ = knot.kill();
    let _ = knot.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!("ratio service-dns / Knot: {:.2}", ours / peer);
}
