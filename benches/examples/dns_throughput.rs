//! Cluster DNS throughput with `dnsperf` on loopback, side by side with Knot DNS serving
//! the same records from a zone file, in one run:
//!
//! ```sh
//! cargo run --release -p service-benches --example dns_throughput [SERVICES] [SECONDS]
//! ```
//!
//! Both servers get the whole machine in turn (UDP workers = CPUs; dnsperf shares the
//! cores, as a node-local cache would). Two query mixes, each measured on both servers:
//!
//! - `services`: every Service's A record, and as many names that do not exist (what
//!   search paths produce), interleaved.
//! - `headless`: the same, with one query in twenty (5 %) for a headless Service of 5,000
//!   ready endpoints per family (A, AAAA and SRV in turn): answers that fill a UDP message
//!   and set TC, the worst case for an answer built per query.

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

    let (mut svcs, mut slices) = service_testkit::fixtures::scale(services, 10);
    let (huge_svcs, huge_slices) = service_testkit::fixtures::huge_headless(5_000);
    svcs.extend(huge_svcs);
    slices.extend(huge_slices);
    let snap =
        service_core::snapshot::Snapshot::build(service_benches::node(), &svcs, &slices, &[])
            .expect("bench snapshot");
    let zone = Zone::from_snapshot(DnsConfig::default(), &snap);
    let mut plain = String::new();
    let mut headless = String::new();
    for i in 0..services {
        for (j, line) in [
            format!("svc-{i}.bench.svc.cluster.local A"),
            format!("svc-{i}.bench.svc.cluster.local.bench.svc.cluster.local A"),
        ]
        .into_iter()
        .enumerate()
        {
            let _ = writeln!(plain, "{line}");
            let n = 2 * i + j;
            if n % 20 == 19 {
                let qtype = ["A", "AAAA", "SRV"][(n / 20) % 3];
                let _ = writeln!(headless, "huge.x.svc.cluster.local {qtype}");
            } else {
                let _ = writeln!(headless, "{line}");
            }
        }
    }
    let mixes = [("services", plain), ("headless", headless)];
    let mut files = Vec::new();
    for (name, queries) in &mixes {
        let f = dir.join(format!("{name}.txt"));
        std::fs::write(&f, queries).unwrap();
        files.push((*name, f.to_string_lossy().into_owned()));
    }

    // Ours.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut config = ServerConfig::new("127.0.0.1:0".parse::<SocketAddr>().unwrap());
    config.udp_workers = cpus;
    let server = DnsServer::start(config, zone.view()).expect("start server");
    let mut ours = Vec::new();
    // Each server gets the same 2 s warm-up (caches, page faults) before it is measured.
    println!("service-dns warm-up:");
    dnsperf(server.local_addr().port(), &files[0].1, 2);
    for (name, f) in &files {
        println!("service-dns ({services} services, {cpus} UDP workers), mix {name}, {seconds} s:");
        ours.push(dnsperf(server.local_addr().port(), f, seconds));
    }
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
    // Knot loads the zone (tens of thousands of records) before it answers.
    std::thread::sleep(Duration::from_secs(5));
    let version = String::from_utf8_lossy(
        &Command::new("knotd")
            .arg("--version")
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default(),
    )
    .trim()
    .to_owned();
    let mut peer = Vec::new();
    println!("Knot DNS warm-up:");
    dnsperf(port, &files[0].1, 2);
    for (name, f) in &files {
        println!("Knot DNS {version}, mix {name}, {seconds} s:");
        peer.push(dnsperf(port, f, seconds));
    }
    let _ = knot.kill();
    let _ = knot.wait();
    let _ = std::fs::remove_dir_all(&dir);
    for (i, (name, _)) in files.iter().enumerate() {
        println!(
            "ratio service-dns / Knot, mix {name}: {:.2}",
            ours[i] / peer[i]
        );
    }
}
