//! `proxy --backend {iptables|nftables|ipvs|userspace} [--apply] [NODE FLAGS] FILE...`: the
//! node agent. A thin shell over the library's engine: the files are a [`FileSource`] of
//! events, the [`Engine`] tracks them, schedules syncs (at most one per
//! `--min-sync-period`, a full one every `--sync-period`, backoff from 1 s to 30 s after a
//! failure) and drives the backend's proxier. Every sync is logged with its kind, duration
//! and what changed.
//!
//! Without `--apply` nothing touches the kernel: each sync prints what it would send on
//! standard output. SIGTERM or SIGINT stops the daemon and leaves the rules in place, as
//! kube-proxy does (a restart picks them up without a gap); `--cleanup` removes them and
//! exits. SIGHUP re-reads the files. One IP family per process: the family of the first
//! `--node-ip` (or `--ip-family`). With `--apply` (and `--cleanup`) the daemon holds a
//! lock in `--run-dir`: a second daemon for the same family in the same network namespace
//! (or a cleanup while one runs) stops with an error naming the holder.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use service_core::controller::ControllerConfig;
use service_core::model::IpFamily;
use service_core::tracker::{ChangeTracker, Source as _};
use service_examples::backend::{self, BackendChoice, FlavorArg, IpvsArgs};
use service_examples::daemon::{FileSource, NodeLock, Signals, Wake};
use service_examples::{BackendArg, EXIT_INVALID, IpFamilyArg, LogArgs, NodeArgs, init_logging};
use service_proxy::{Engine, EngineSync, Proxier, SchedulerConfig};

/// Keep a node's Service rules in sync with manifest files.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Which backend to run.
    #[arg(long, value_enum)]
    backend: BackendArg,
    /// Apply the rules to the kernel (needs root); otherwise print them.
    #[arg(long)]
    apply: bool,
    /// Remove every rule the backend installs, and exit.
    #[arg(long)]
    cleanup: bool,
    /// IP family (default: the family of the first --node-ip).
    #[arg(long, value_enum)]
    ip_family: Option<IpFamilyArg>,
    /// Minimum time between two syncs (kube-proxy's --min-sync-period).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    min_sync_period: Duration,
    /// Where the lock file lives: one daemon (or `--cleanup`) per network namespace and IP
    /// family at a time, with `--apply`.
    #[arg(long, default_value = "/run/service-proxy")]
    run_dir: std::path::PathBuf,
    /// Full resync interval (kube-proxy's --sync-period).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    sync_period: Duration,
    #[command(flatten)]
    ipvs: IpvsArgs,
    /// Which iptables programs to run: the system's `iptables-restore`, the nft or the
    /// legacy variant, or `detect`.
    #[arg(long, value_enum, default_value = "system")]
    iptables_flavor: FlavorArg,
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    log: LogArgs,
    /// Manifest files (YAML, JSON, `kind: List`); `-` reads standard input once.
    #[arg(required_unless_present = "cleanup")]
    files: Vec<String>,
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

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(&args.log);
    let family = if args.node.ipv6(args.ip_family) {
        IpFamily::Ipv6
    } else {
        IpFamily::Ipv4
    };
    // Two daemons on one node would delete each other's rules; so would a cleanup under a
    // running daemon.
    let _lock = if args.apply || args.cleanup {
        let family_name = if family == IpFamily::Ipv6 {
            "ipv6"
        } else {
            "ipv4"
        };
        match NodeLock::acquire(&args.run_dir, "proxy", family_name) {
            Ok(lock) => {
                tracing::debug!("holding {}", lock.file().display());
                Some(lock)
            }
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let choice = BackendChoice {
        backend: args.backend,
        apply: args.apply || args.cleanup,
        family,
        proxy: args.node.proxy_config(),
        ipvs: args.ipvs.clone(),
        flavor: args.iptables_flavor,
    };
    let mut proxier = match backend::proxier(&choice) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if args.cleanup {
        return match proxier.cleanup() {
            Ok(()) => {
                tracing::info!(
                    "cleanup: every rule of the {} backend removed",
                    proxier.mode()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("cleanup: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let wake = Wake::default();
    let signals = match Signals::install(&wake) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut source = match FileSource::open(
        &args.files,
        ControllerConfig::default(),
        &wake,
        signals.reload.clone(),
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let mut engine = Engine::new(
        ChangeTracker::new(args.node.node_info()),
        SchedulerConfig::new(args.min_sync_period, args.sync_period),
        vec![proxier],
        Instant::now(),
    );
    let mut syncs = 0u64;
    while !signals.stop.load(Ordering::SeqCst) {
        match source.poll_events() {
            Ok(events) => {
                for e in events {
                    if let Err(err) = engine.apply(e.event, e.at, Instant::now()) {
                        tracing::error!("{err}");
                    }
                }
            }
            Err(e) => {
                tracing::error!("the manifest source failed: {e}");
                return ExitCode::FAILURE;
            }
        }
        if let Some(sync) = engine.poll(Instant::now(), SystemTime::now()) {
            syncs += 1;
            log_sync(syncs, &sync);
        }
        let next = match (engine.poll_timeout(), source.next_poll()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        wake.wait_until(next);
    }
    tracing::info!("stopped: the rules stay in place (`proxy --cleanup` removes them)");
    ExitCode::SUCCESS
}
