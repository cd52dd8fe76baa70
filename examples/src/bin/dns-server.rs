//! `dns-server --listen ADDR:PORT [--zone cluster.local] [--upstream ADDR:PORT]...
//! [--allow-recursion CIDR]... [--cluster-cidr CIDR]... FILE...`:
//! serves the cluster DNS for the files' Services over UDP and TCP until stopped. SIGHUP,
//! or a change to any file (followed with inotify), reloads them: only the Services that
//! changed are updated, and queries are answered throughout. A file that is invalid, empty
//! or being rewritten keeps its previous records (see `service_examples::daemon`).
//!
//! Prints `listening on ADDR` on standard error once it serves (useful with port 0).

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use service_core::model::Pod;
use service_core::snapshot::NodeInfo;
use service_core::tracker::{ChangeTracker, Source as _};
use service_dns::server::{DnsServer, ServerConfig};
use service_dns::{DnsConfig, PodRecords, Zone};
use service_examples::daemon::{self, FileSource, Wake};
use service_examples::{LogArgs, init_logging};

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
    /// Forward other names here (and resolve ExternalName targets through it); repeat
    /// for several, picked at random among the healthy ones.
    #[arg(long)]
    upstream: Vec<std::net::SocketAddr>,
    /// Clients whose queries for other names are forwarded (repeatable; default: loopback
    /// and the --cluster-cidr networks). Others get REFUSED: not an open resolver.
    #[arg(long)]
    allow_recursion: Vec<ipnet::IpNet>,
    /// The pod network(s), allowed to recurse unless --allow-recursion says otherwise.
    #[arg(long = "cluster-cidr")]
    cluster_cidrs: Vec<ipnet::IpNet>,
    /// Upstream queries in flight per upstream (CoreDNS's max_concurrent).
    #[arg(long, default_value_t = 5_000)]
    max_concurrent: usize,
    /// TCP connections at once (the least recently active one makes room for a new one).
    #[arg(long, default_value_t = 1_000)]
    tcp_max_clients: usize,
    /// TTL of the records.
    #[arg(long, default_value_t = 30)]
    ttl: u32,
    /// Pod records (`1-2-3-4.ns.pod.zone`).
    #[arg(long, value_enum, default_value_t = Pods::Disabled)]
    pods: Pods,
    /// UDP worker threads (default: one per CPU).
    #[arg(long)]
    udp_workers: Option<usize>,
    #[command(flatten)]
    log: LogArgs,
    /// Manifest files (YAML, JSON, `kind: List`); `-` reads standard input once.
    #[arg(required = true)]
    files: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Pods {
    Disabled,
    Insecure,
    Verified,
}

fn pods(pods: &[Pod]) -> Vec<(String, std::net::IpAddr)> {
    pods.iter()
        .flat_map(|p| {
            let ns = p.metadata.namespace().to_owned();
            p.ips()
                .into_iter()
                .filter_map(move |ip| ip.parse().ok().map(|ip| (ns.clone(), ip)))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Applies what the source has to the tracker; whether anything arrived.
fn drain(source: &mut FileSource, tracker: &mut ChangeTracker) -> bool {
    let events = match source.poll_events() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("the manifest source failed: {e}");
            return false;
        }
    };
    let any = !events.is_empty();
    for e in events {
        if let Err(err) = tracker.apply(e.event, e.at) {
            tracing::error!("{err}");
        }
    }
    any
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(&args.log);
    let mut config = DnsConfig::for_zone(&args.zone);
    config.ttl = args.ttl;
    config.pods = match args.pods {
        Pods::Disabled => PodRecords::Disabled,
        Pods::Insecure => PodRecords::Insecure,
        Pods::Verified => PodRecords::Verified,
    };
    let wake = Wake::default();
    let (signals, mut source) = match daemon::follow(&args.files, &wake) {
        Ok(x) => x,
        Err((code, e)) => {
            eprintln!("error: {e}");
            return code;
        }
    };
    // DNS answers do not depend on the node: no name, no IPs.
    let mut tracker = ChangeTracker::new(NodeInfo::new("", Vec::new()));
    drain(&mut source, &mut tracker);
    let (mut current, _) = tracker.checkout();
    let mut zone = Zone::from_snapshot(config, &current);
    let mut pod_ips = pods(source.pods());
    zone.set_pods(pod_ips.clone());
    let mut server_config = ServerConfig::new(args.listen);
    server_config.upstreams = args.upstream.clone();
    if args.allow_recursion.is_empty() {
        server_config
            .allow_recursion
            .extend(args.cluster_cidrs.iter().copied());
    } else {
        server_config.allow_recursion = args.allow_recursion.clone();
    }
    server_config.max_concurrent = args.max_concurrent;
    server_config.tcp_max_clients = args.tcp_max_clients;
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
    eprintln!(
        "listening on {} (zone {}, {} services, {} names)",
        server.local_addr(),
        args.zone,
        current.services.len(),
        zone.len()
    );
    while !signals.stop.load(Ordering::SeqCst) {
        wake.wait_until(source.next_poll());
        let hup = signals.reload.load(Ordering::SeqCst);
        let started = Instant::now();
        let any = drain(&mut source, &mut tracker);
        let next_pods = pods(source.pods());
        if !any && next_pods == pod_ips {
            continue;
        }
        let (next, changes) = tracker.checkout();
        let changed = zone.update(&current, &next);
        if next_pods != pod_ips {
            pod_ips = next_pods;
            zone.set_pods(pod_ips.clone());
        }
        server.publish(zone.view());
        current = next;
        tracing::info!(
            "reloaded ({}): {changed} services changed ({} in the tracker's view), {} names, in {:?}",
            if hup { "SIGHUP" } else { "files changed" },
            changes.services.len(),
            zone.len(),
            started.elapsed()
        );
    }
    server.shutdown();
    ExitCode::SUCCESS
}
