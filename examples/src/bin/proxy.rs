//! `proxy [--backend iptables|nftables|ipvs|userspace] [--config FILE] [--apply] FILE...`:
//! the node agent, in place of kube-proxy. A shell over the library: the files are a
//! [`FileSource`](service_examples::daemon::FileSource) of events; the [`Engine`] tracks them, schedules syncs (at most one per
//! `--min-sync-period`, a full one every `--sync-period`, backoff from 1 s to 30 s after a
//! failure) and drives one proxier per IP family (dual-stack when the node has IPs of both);
//! [`HealthServers`] answer `/healthz`, `/livez` and every health-check node port;
//! [`ProxyMetrics`] are served on `/metrics`. Every sync is logged with what changed.
//!
//! Without `--apply` nothing touches the kernel: each sync prints what it would send. With
//! it, the daemon holds a lock per family in `--run-dir`, sets the conntrack sysctls (and
//! `route_localnet` for iptables), and on SIGTERM or SIGINT leaves the rules in place, as
//! kube-proxy does; `--cleanup` removes every backend's rules and exits. SIGHUP re-reads
//! the files. `--config` reads a KubeProxyConfiguration (flags given on the command line
//! win); `--write-config-to` writes the effective one and exits.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use service_core::model::IpFamily;
use service_core::tracker::{ChangeTracker, Source as _};
use service_examples::agent::{ProxyArgs, Settings};
use service_examples::backend::{self, BackendChoice};
use service_examples::daemon::{self, NodeLock, Wake};
use service_examples::kpconfig::KubeProxyConfiguration;
use service_examples::{BackendArg, EXIT_INVALID, init_logging};
use service_proxy::health::{Response, node_eligible};
use service_proxy::metrics::{CONTENT_TYPE, ProxyMetrics};
use service_proxy::nfacct::{CT_STATE_INVALID_DROPPED, LOCALHOST_NODEPORTS_ACCEPTED, Nfacct};
use service_proxy::node_setup::{self, Roots};
use service_proxy::serve::{HealthCheckAddresses, HealthServers, HealthState, Request, serve_http};
use service_proxy::{Engine, EngineSync, Proxier, SchedulerConfig};

fn family_name(f: &IpFamily) -> &'static str {
    if *f == IpFamily::Ipv6 { "ipv6" } else { "ipv4" }
}

fn log_sync(n: u64, sync: &EngineSync) {
    for (family, result) in &sync.results {
        match result {
            Ok(report) => {
                tracing::info!(sync = n, family = family.as_str(), "sync {n}: {report}");
                if let Some(d) = report.dry_run() {
                    let mut out = std::io::stdout().lock();
                    if let Err(e) = out.write_all(d.text.as_bytes()).and_then(|()| out.flush()) {
                        tracing::error!("writing the rules: {e}");
                    }
                }
            }
            Err(e) => tracing::error!(
                sync = n,
                family = family.as_str(),
                "sync {n} failed ({:?}): {e}; retrying with backoff",
                e.kind()
            ),
        }
    }
    for latency in &sync.latencies {
        tracing::debug!("network programming latency {latency:?}");
    }
}

/// `--cleanup`: every backend's rules of both families. kube-proxy's `--cleanup` also
/// removes every mode's leftovers.
fn cleanup(args: &ProxyArgs, s: &Settings) -> ExitCode {
    let mut failed = false;
    for backend in [
        BackendArg::Iptables,
        BackendArg::Nftables,
        BackendArg::Ipvs,
        BackendArg::Userspace,
    ] {
        for family in [IpFamily::Ipv4, IpFamily::Ipv6] {
            let choice = BackendChoice {
                backend,
                apply: true,
                family: family.clone(),
                proxy: s.proxy.clone(),
                ipvs: s.ipvs.clone(),
                flavor: args.iptables_flavor,
            };
            let quiet = backend == BackendArg::Ipvs;
            match backend::proxier_for_cleanup(&choice) {
                Ok(Some(mut p)) => match p.cleanup() {
                    Ok(()) => tracing::info!(
                        "cleanup: the {} backend's {} rules removed",
                        p.mode(),
                        family.as_str()
                    ),
                    Err(e) => {
                        tracing::error!("cleanup of {backend:?} {}: {e}", family.as_str());
                        failed = true;
                    }
                },
                // A kernel without IPVS has no IPVS state to remove.
                Ok(None) => {}
                Err(e) if quiet => tracing::debug!("cleanup of IPVS skipped: {e}"),
                Err(e) => {
                    tracing::error!("cleanup of {backend:?} {}: {e}", family.as_str());
                    failed = true;
                }
            }
        }
    }
    if failed {
        tracing::error!("encountered an error while tearing down rules");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The conntrack sysctls and `route_localnet`, as kube-proxy sets them; failures are
/// warnings (a container, a namespace whose limits belong to the host).
fn node_setup(s: &Settings) {
    let roots = Roots::default();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let mut settings = node_setup::conntrack(&s.conntrack, cpus, &roots);
    if s.backend == BackendArg::Iptables
        && s.proxy.localhost_nodeports
        && s.families.contains(&IpFamily::Ipv4)
    {
        settings.push(node_setup::route_localnet(&roots));
    }
    for setting in settings {
        match &setting.outcome {
            Ok(true) => tracing::info!("set {} to {}", setting.path.display(), setting.value),
            Ok(false) => tracing::debug!("{} is {} already", setting.path.display(), setting.value),
            Err(e) => tracing::warn!(
                "cannot set {} to {}: {e}",
                setting.path.display(),
                setting.value
            ),
        }
    }
}

/// The Prometheus side: `/metrics`, kube-proxy's `/healthz` (`ok`) and `/proxyMode`.
fn serve_metrics(
    runtime: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    metrics: Arc<Mutex<ProxyMetrics>>,
    health: HealthState,
    mode: &'static str,
    nfacct: Option<Nfacct>,
) -> std::io::Result<std::net::SocketAddr> {
    let nfacct = nfacct.map(Mutex::new);
    let handler = Arc::new(move |r: &Request| match r.path.as_str() {
        "/metrics" => {
            let mut m = metrics.lock().unwrap_or_else(|e| e.into_inner());
            // kube-proxy's nfacct counters, read as they are now.
            if let Some(n) = &nfacct {
                let mut n = n.lock().unwrap_or_else(|e| e.into_inner());
                for name in [CT_STATE_INVALID_DROPPED, LOCALHOST_NODEPORTS_ACCEPTED] {
                    if let Ok(Some(c)) = n.get(name) {
                        m.nfacct(name, c.packets);
                    }
                }
            }
            let c = health.counts();
            m.health_answers([
                c.healthz_ok,
                c.healthz_unhealthy,
                c.livez_ok,
                c.livez_unhealthy,
            ]);
            Response::text(200, CONTENT_TYPE, m.encode())
        }
        "/healthz" => Response::text(200, "text/plain; charset=utf-8", "ok".into()),
        "/proxyMode" => Response::text(200, "text/plain; charset=utf-8", mode.into()),
        _ => Response::not_found(),
    });
    serve_http(runtime.handle(), addr, handler).map(|(a, _)| a)
}

fn main() -> ExitCode {
    let (args, matches) = ProxyArgs::parse_with_sources();
    let file = match &args.config {
        Some(path) => {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: reading {}: {e}", path.display());
                    return ExitCode::from(EXIT_INVALID);
                }
            };
            match KubeProxyConfiguration::parse(&path.display().to_string(), &text) {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_INVALID);
                }
            }
        }
        None => None,
    };
    let s = match args.settings(&matches, file.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    init_logging(&s.log);
    if let Some(c) = &file {
        for field in c.ignored() {
            tracing::warn!("{field}: not used by this proxy; ignored");
        }
    }
    if let Some(path) = &args.write_config_to {
        return match std::fs::write(path, s.to_config().to_yaml()) {
            Ok(()) => {
                tracing::info!("Wrote configuration to {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("writing {}: {e}", path.display());
                ExitCode::FAILURE
            }
        };
    }
    // The input is read (and refused when invalid) before anything is touched.
    let (wake, signals, source) = if args.cleanup {
        (Wake::default(), None, None)
    } else {
        let wake = Wake::default();
        let (signals, source) = match daemon::follow(&args.files, &wake) {
            Ok(x) => x,
            Err((code, e)) => {
                eprintln!("error: {e}");
                return code;
            }
        };
        (wake, Some(signals), Some(source))
    };
    // Two daemons on one node would delete each other's rules; so would a cleanup under a
    // running daemon.
    let mut locks = Vec::new();
    if args.apply || args.cleanup {
        let families: &[IpFamily] = if args.cleanup {
            &[IpFamily::Ipv4, IpFamily::Ipv6]
        } else {
            &s.families
        };
        for family in families {
            match NodeLock::acquire(&args.run_dir, "proxy", family_name(family)) {
                Ok(lock) => locks.push(lock),
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    if args.cleanup {
        return cleanup(&args, &s);
    }
    let (Some(signals), Some(mut source)) = (signals, source) else {
        unreachable!("read unless cleaning up");
    };
    if args.apply {
        node_setup(&s);
    }
    let mut proxiers: Vec<Box<dyn Proxier>> = Vec::new();
    for family in &s.families {
        let choice = BackendChoice {
            backend: s.backend,
            apply: args.apply,
            family: family.clone(),
            proxy: s.proxy.clone(),
            ipvs: s.ipvs.clone(),
            flavor: args.iptables_flavor,
        };
        match backend::proxier(&choice) {
            Ok(p) => proxiers.push(p),
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mode = proxiers[0].mode();
    let families: Vec<IpFamily> = proxiers.iter().map(|p| p.family()).collect();
    tracing::info!(
        "{} proxy for {}",
        mode,
        families
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(" and ")
    );

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("http")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("starting the HTTP runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let health = HealthState::new(s.sync_period * 2);
    // The sync loop starts: every family is fresh (kube-proxy's first `Updated`).
    let start = Instant::now();
    for f in &families {
        health.updated(f, start, SystemTime::now());
    }
    // Health-check node ports listen where node ports are served: on every address when
    // any family serves them on all of its addresses.
    let per_family: Option<Vec<Vec<std::net::IpAddr>>> =
        families.iter().map(|f| s.proxy.nodeport_ips(f)).collect();
    let hc_addresses = match per_family {
        None => HealthCheckAddresses::All,
        Some(ips) => HealthCheckAddresses::Only(ips.concat()),
    };
    let mut servers = HealthServers::new(runtime.handle().clone(), health.clone(), hc_addresses);
    // A dry run serves health and metrics only when asked to: it touches nothing, and
    // several may run on one host.
    let given = |id: &str| {
        matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine) || file.is_some()
    };
    let (healthz, metrics_addr) = if args.apply {
        (s.healthz, s.metrics)
    } else {
        (
            s.healthz.filter(|_| given("healthz_bind_address")),
            s.metrics.filter(|_| given("metrics_bind_address")),
        )
    };
    if let Some(addr) = healthz {
        match servers.serve_healthz(addr) {
            Ok(a) => tracing::info!("serving /healthz and /livez on {a}"),
            Err(e) => {
                tracing::error!("cannot serve /healthz on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let metrics = Arc::new(Mutex::new(ProxyMetrics::new(mode, &families)));
    if let Some(addr) = metrics_addr {
        let mode_name: &'static str = match s.backend {
            BackendArg::Nftables => "nftables",
            BackendArg::Ipvs => "ipvs",
            BackendArg::Userspace => "userspace",
            BackendArg::Iptables => "iptables",
        };
        // The counters the iptables backend created (see `backend::proxier`).
        let nfacct = (s.backend == BackendArg::Iptables)
            .then(Nfacct::new)
            .and_then(Result::ok);
        match serve_metrics(
            &runtime,
            addr,
            metrics.clone(),
            health.clone(),
            mode_name,
            nfacct,
        ) {
            Ok(a) => tracing::info!("serving /metrics on {a}"),
            Err(e) => {
                tracing::error!("cannot serve /metrics on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    let mut engine = Engine::new(
        ChangeTracker::new(s.node.node_info()),
        SchedulerConfig::new(s.min_sync_period, s.sync_period),
        proxiers,
        Instant::now(),
    );
    let mut syncs = 0u64;
    while !signals.stop.load(Ordering::SeqCst) {
        match source.poll_events() {
            Ok(events) if !events.is_empty() => {
                let (now, wall) = (Instant::now(), SystemTime::now());
                {
                    let m = metrics.lock().unwrap_or_else(|e| e.into_inner());
                    for e in &events {
                        m.event(&e.event);
                    }
                    for f in &families {
                        m.queued(f, wall);
                    }
                }
                for f in &families {
                    health.queued(f, now);
                }
                for e in events {
                    if let Err(err) = engine.apply(e.event, e.at, now) {
                        tracing::error!("{err}");
                    }
                }
                health.set_node_eligible(source.node(&s.node.name).map(node_eligible));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!("the manifest source failed: {e}");
                return ExitCode::FAILURE;
            }
        }
        let (now, wall) = (Instant::now(), SystemTime::now());
        if let Some(sync) = engine.poll(now, wall) {
            syncs += 1;
            log_sync(syncs, &sync);
            let done = Instant::now();
            for (family, result) in &sync.results {
                if result.is_ok() {
                    health.updated(family, done, SystemTime::now());
                }
            }
            metrics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .sync(&sync, SystemTime::now());
            if sync.ok() && args.apply {
                let hc = servers.sync_services(engine.synced_snapshot());
                for port in &hc.opened {
                    tracing::info!("health check node port {port} open");
                }
                for port in &hc.closed {
                    tracing::info!("health check node port {port} closed");
                }
                for (port, e) in &hc.failed {
                    tracing::warn!(
                        "cannot open health check node port {port}: {e}; retrying at the next sync"
                    );
                }
            }
        }
        let next = match (engine.poll_timeout(), source.next_poll()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        wake.wait_until(next);
    }
    drop(locks);
    tracing::info!("stopped: the rules stay in place (`proxy --cleanup` removes them)");
    ExitCode::SUCCESS
}
