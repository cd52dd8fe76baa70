//! `dns-server --listen ADDR:PORT [--zone cluster.local] [--upstream ADDR:PORT] FILE...`:
//! serves the cluster DNS for the files' Services over UDP and TCP until stopped. SIGHUP,
//! or a change to any file, reloads them: only the Services that changed are updated,
//! and queries are answered throughout. Invalid files on reload are reported and the
//! previous state keeps being served.
//!
//! Prints `listening on ADDR` on standard error once it serves (useful with port 0).

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, ValueEnum};
use service_core::cluster::Cluster;
use service_core::snapshot::{NodeInfo, Snapshot};
use service_dns::server::{DnsServer, ServerConfig};
use service_dns::{DnsConfig, PodRecords, Zone};
use service_examples::{EXIT_INVALID, daemon_signals, load_cluster};

/// Serve Kubernetes cluster DNS for manifests.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address for UDP and TCP.
    #[arg(long, default_value = "127.0.0.1:5353")]
    listen: std::net::SocketAddr,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    zone: String,
    /// Forward other names here (and resolve ExternalName targets through it).
    #[arg(long)]
    upstream: Option<std::net::SocketAddr>,
    /// TTL of the records.
    #[arg(long, default_value_t = 30)]
    ttl: u32,
    /// Pod records (`1-2-3-4.ns.pod.zone`).
    #[arg(long, value_enum, default_value_t = Pods::Disabled)]
    pods: Pods,
    /// UDP worker threads (default: one per CPU).
    #[arg(long)]
    udp_workers: Option<usize>,
    /// Manifest files (YAML, JSON, `kind: List`).
    #[arg(required = true)]
    files: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Pods {
    Disabled,
    Insecure,
    Verified,
}

fn snapshot(cluster: &Cluster) -> Option<Snapshot> {
    match cluster.snapshot(NodeInfo::new("", Vec::new())) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("error: {e}");
            None
        }
    }
}

fn pods(cluster: &Cluster) -> Vec<(String, std::net::IpAddr)> {
    cluster
        .pods
        .iter()
        .flat_map(|p| {
            let ns = p.metadata.namespace().to_owned();
            p.ips()
                .into_iter()
                .filter_map(move |ip| ip.parse().ok().map(|ip| (ns.clone(), ip)))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn mtimes(files: &[String]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = DnsConfig::for_zone(&args.zone);
    config.ttl = args.ttl;
    config.pods = match args.pods {
        Pods::Disabled => PodRecords::Disabled,
        Pods::Insecure => PodRecords::Insecure,
        Pods::Verified => PodRecords::Verified,
    };
    let Ok(cluster) = load_cluster(&args.files) else {
        return ExitCode::from(EXIT_INVALID);
    };
    let Some(mut current) = snapshot(&cluster) else {
        return ExitCode::from(EXIT_INVALID);
    };
    let mut zone = Zone::from_snapshot(config, &current);
    zone.set_pods(pods(&cluster));
    let mut server_config = ServerConfig::new(args.listen);
    server_config.upstream = args.upstream;
    if let Some(n) = args.udp_workers {
        server_config.udp_workers = n;
    }
    let server = match DnsServer::start(server_config, zone.view()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot serve on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let (reload, stop) = daemon_signals();
    eprintln!(
        "listening on {} (zone {}, {} services, {} names)",
        server.local_addr(),
        args.zone,
        current.services.len(),
        zone.len()
    );
    let mut seen = mtimes(&args.files);
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        let now = mtimes(&args.files);
        let hup = reload.swap(false, Ordering::SeqCst);
        if !hup && now == seen {
            continue;
        }
        seen = now;
        let started = Instant::now();
        let Ok(cluster) = load_cluster(&args.files) else {
            eprintln!("reload failed: keeping the previous records");
            continue;
        };
        let Some(next) = snapshot(&cluster) else {
            continue;
        };
        let changed = zone.update(&current, &next);
        zone.set_pods(pods(&cluster));
        server.publish(zone.view());
        current = next;
        eprintln!(
            "reloaded ({}): {changed} services changed, {} names, in {:?}",
            if hup { "SIGHUP" } else { "files changed" },
            zone.len(),
            started.elapsed()
        );
    }
    server.shutdown();
    ExitCode::SUCCESS
}
