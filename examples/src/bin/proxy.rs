//! `proxy --backend {iptables|nftables|ipvs|userspace} [--apply] [NODE FLAGS] FILE...`: the proxy daemon's
//! shape. Loads the files, syncs, watches them, and re-syncs when they change (SIGHUP also
//! reloads): at most once per `--min-sync-period`, with a full resync every
//! `--sync-period`, and exponential backoff (1 s up to 30 s) after a failed sync. Every sync
//! is logged on standard error with its kind (full/partial) and duration. SIGTERM or SIGINT
//! removes the rules it installed and exits.
//!
//! Without `--apply` nothing touches the kernel: each sync prints what it would send on
//! standard output (`iptables-restore` input, or an `nft -f` script; the userspace backend
//! listens and prints its redirect rules).
//!
//! One IP family per process: the family of the first `--node-ip` (or `--ip-family`).
//!
//! `--backend ipvs --apply` checks that the kernel has IPVS and the scheduler and, as
//! kube-proxy did, falls back to the iptables backend with a warning when it has not. An
//! IPVS sync diffs against the kernel: full syncs (the first, the periodic ones, any after
//! a failure) read every ipset entry and real server; partial ones trust those as the last
//! sync left them and read only the real servers of virtual servers losing some. A drained
//! real server is deleted by the first sync after its connections are gone.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use service_core::model::IpFamily;
use service_core::snapshot::Snapshot;
use service_examples::{
    BackendArg, EXIT_INVALID, IpFamilyArg, NodeArgs, daemon_signals, load_cluster,
};
use service_proxy::conntrack::Conntrack;
use service_proxy::iptables::apply::{
    ConntrackCleaner, Flavor, NoConntrack, Proxier, SystemRunner,
};
use service_proxy::iptables::{IptablesConfig, Renderer as IptRenderer};
use service_proxy::ipvs::{IpvsConfig, IpvsError, IpvsPlan, IpvsProxier, Scheduler, ipvs_text};
use service_proxy::nftables::apply::{NftProxier, NftSocket};
use service_proxy::nftables::{NftablesConfig, Renderer as NftRenderer, Ruleset};
use service_proxy::userspace::{UserspaceConfig, UserspaceProxier, UserspaceProxy};
use service_proxy::{ProxyConfig, SyncEngine, SyncKind};

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
    /// IP family (default: the family of the first --node-ip).
    #[arg(long, value_enum)]
    ip_family: Option<IpFamilyArg>,
    /// Minimum time between two syncs (kube-proxy's --min-sync-period).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    min_sync_period: Duration,
    /// Full resync interval (kube-proxy's --sync-period).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    sync_period: Duration,
    /// The IPVS scheduler (kube-proxy's --ipvs-scheduler): rr, lc, dh, sh, sed, nq, wrr,
    /// wlc or mh.
    #[arg(long, value_parser = parse_scheduler, default_value = "rr")]
    ipvs_scheduler: Scheduler,
    /// IPVS virtual servers in this range are left alone (repeatable).
    #[arg(long = "ipvs-exclude-cidrs", value_delimiter = ',')]
    ipvs_exclude_cidrs: Vec<ipnet::IpNet>,
    /// Set arp_ignore=1 and arp_announce=2 (kube-proxy's --ipvs-strict-arp).
    #[arg(long)]
    ipvs_strict_arp: bool,
    /// IPVS idle timeout of established TCP connections (0: the kernel's).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    ipvs_tcp_timeout: Duration,
    /// IPVS timeout of TCP connections after a FIN (0: the kernel's).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    ipvs_tcpfin_timeout: Duration,
    /// IPVS idle timeout of UDP flows (0: the kernel's).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    ipvs_udp_timeout: Duration,
    /// Which iptables programs to run: the system's `iptables-restore`, the nft or the
    /// legacy variant, or `detect` (legacy if the legacy tables hold more rules, as
    /// kube-proxy's iptables-wrapper decides).
    #[arg(long, value_enum, default_value = "system")]
    iptables_flavor: FlavorArg,
    #[command(flatten)]
    node: NodeArgs,
    /// Manifest files (YAML, JSON, `kind: List`).
    #[arg(required = true)]
    files: Vec<String>,
}

/// `--iptables-flavor`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum FlavorArg {
    System,
    Nft,
    Legacy,
    Detect,
}

impl FlavorArg {
    fn runner(self) -> SystemRunner {
        let flavor = match self {
            Self::System => Flavor::System,
            Self::Nft => Flavor::Nft,
            Self::Legacy => Flavor::Legacy,
            Self::Detect => Flavor::detect(&SystemRunner::new()),
        };
        SystemRunner::new().with_flavor(flavor)
    }
}

fn parse_scheduler(s: &str) -> Result<Scheduler, String> {
    Scheduler::parse(s).ok_or_else(|| {
        format!("unknown IPVS scheduler {s:?} (rr, lc, dh, sh, sed, nq, wrr, wlc, mh)")
    })
}

/// `1s`, `250ms`, `2m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("unknown unit in {s} (use ms, s or m)")),
    }
}

/// What a sync did, for the log.
struct Done {
    kind: SyncKind,
    changed: usize,
    detail: String,
}

/// A backend the daemon drives.
trait Backend {
    fn sync(&mut self, snapshot: &Snapshot) -> Result<Done, String>;
    /// Makes the next sync full (backends whose syncs are always full ignore it).
    fn force_full(&mut self) {}
    /// Removes what the backend installed (dry runs install nothing).
    fn cleanup(&mut self) -> Result<(), String> {
        Ok(())
    }
}

fn kind_of(k: SyncKind) -> &'static str {
    if k == SyncKind::Full {
        "full"
    } else {
        "partial"
    }
}

/// The iptables proxier, applying to the kernel.
struct Iptables<C: ConntrackCleaner>(Proxier<SystemRunner, C>);

impl<C: ConntrackCleaner> Backend for Iptables<C> {
    fn sync(&mut self, snapshot: &Snapshot) -> Result<Done, String> {
        let r = self.0.sync(snapshot).map_err(|e| e.to_string())?;
        Ok(Done {
            kind: r.kind,
            changed: r.changed,
            detail: format!(
                "{} rules restored, {} conntrack entries cleared",
                r.rules, r.conntrack_deleted
            ),
        })
    }

    fn force_full(&mut self) {
        self.0.force_full();
    }

    fn cleanup(&mut self) -> Result<(), String> {
        self.0.cleanup().map_err(|e| e.to_string())
    }
}

/// The nftables proxier, applying over netlink.
struct Nftables(NftProxier<NftSocket>);

impl Backend for Nftables {
    fn sync(&mut self, snapshot: &Snapshot) -> Result<Done, String> {
        let r = self.0.sync(snapshot).map_err(|e| e.to_string())?;
        Ok(Done {
            kind: r.kind,
            changed: r.changed,
            detail: format!(
                "{} transactions, {} netlink messages, {} conntrack entries cleared",
                r.transactions, r.messages, r.conntrack_deleted
            ),
        })
    }

    fn force_full(&mut self) {
        self.0.force_full();
    }

    fn cleanup(&mut self) -> Result<(), String> {
        self.0.cleanup().map_err(|e| e.to_string())
    }
}

/// The userspace proxy: portals on its own runtime, and their redirect rules (printed
/// instead of applied without `--apply`).
struct Userspace {
    proxier: Option<UserspaceProxier<SystemRunner>>,
    dry: Option<(UserspaceProxy, IpFamily)>,
    // Declared last: dropped after the portals.
    _runtime: tokio::runtime::Runtime,
}

impl Backend for Userspace {
    fn sync(&mut self, snapshot: &Snapshot) -> Result<Done, String> {
        if let Some(p) = self.proxier.as_mut() {
            let r = p.sync(snapshot).map_err(|e| e.to_string())?;
            return Ok(Done {
                kind: SyncKind::Full,
                changed: r.portals.opened + r.portals.closed + r.portals.updated,
                detail: format!(
                    "{} portals opened, {} closed, {} updated, {} redirect rules",
                    r.portals.opened, r.portals.closed, r.portals.updated, r.rules
                ),
            });
        }
        let Some((proxy, family)) = self.dry.as_mut() else {
            return Err("no proxy".into());
        };
        let s = proxy.sync(snapshot).map_err(|e| e.to_string())?;
        let rules = service_proxy::userspace::rules::render(snapshot, &proxy.portals(), family);
        let text = service_proxy::userspace::rules::restore_input(
            &rules,
            &service_proxy::userspace::rules::PortalChain::ALL,
        );
        print_out(&text)?;
        Ok(Done {
            kind: SyncKind::Full,
            changed: s.opened + s.closed + s.updated,
            detail: format!("{} redirect rules printed", rules.len()),
        })
    }

    fn cleanup(&mut self) -> Result<(), String> {
        if let Some(p) = self.proxier.as_mut() {
            p.cleanup().map_err(|e| e.to_string())?;
        }
        if let Some((proxy, _)) = self.dry.as_mut() {
            proxy.shutdown();
        }
        Ok(())
    }
}

/// The IPVS proxier, applying to the kernel.
struct Ipvs<C: ConntrackCleaner>(IpvsProxier<SystemRunner, C>);

impl<C: ConntrackCleaner> Backend for Ipvs<C> {
    fn sync(&mut self, snapshot: &Snapshot) -> Result<Done, String> {
        let r = self.0.sync(snapshot).map_err(|e| e.to_string())?;
        Ok(Done {
            kind: if r.full {
                SyncKind::Full
            } else {
                SyncKind::Partial
            },
            changed: r.changes,
            detail: format!(
                "{} virtual servers, {} IPVS changes, {} real servers draining, {} addresses bound, {} unbound, {} conntrack entries cleared",
                r.services, r.changes, r.draining, r.bound, r.unbound, r.conntrack_deleted
            ),
        })
    }

    fn force_full(&mut self) {
        self.0.force_full();
    }

    fn cleanup(&mut self) -> Result<(), String> {
        self.0.cleanup().map_err(|e| e.to_string())
    }
}

/// Prints the IPVS plan and its iptables rules.
struct IpvsDryRun {
    config: IpvsConfig,
    ipv6: bool,
}

impl Backend for IpvsDryRun {
    fn sync(&mut self, snapshot: &Snapshot) -> Result<Done, String> {
        let plan = IpvsPlan::build(&self.config, snapshot, self.ipv6);
        print_out(&ipvs_text(&plan, &self.config, self.ipv6))?;
        Ok(Done {
            kind: SyncKind::Full,
            changed: plan.services.len(),
            detail: format!("{} virtual servers planned", plan.services.len()),
        })
    }
}

/// Prints what the iptables backend would restore.
struct IptablesDryRun {
    renderer: IptRenderer,
    engine: SyncEngine,
    localhost: bool,
}

impl Backend for IptablesDryRun {
    fn sync(&mut self, snapshot: &Snapshot) -> Result<Done, String> {
        let plan = self.engine.plan(snapshot);
        let (text, changed) = if plan.kind == SyncKind::Full {
            let rules = self.renderer.full(snapshot);
            (rules.to_restore_input_with_jumps(self.localhost), 0)
        } else {
            let rules = self.renderer.partial(snapshot, &plan.changed);
            (rules.to_restore_input(), plan.changed.len())
        };
        print_out(&text)?;
        self.engine.committed(snapshot.clone());
        Ok(Done {
            kind: plan.kind,
            changed,
            detail: format!("{} bytes printed", text.len()),
        })
    }

    fn force_full(&mut self) {
        self.engine.force_full();
    }
}

/// Prints the transactions the nftables backend would send.
struct NftablesDryRun {
    renderer: NftRenderer,
    engine: SyncEngine,
    rules: Option<Ruleset>,
}

impl Backend for NftablesDryRun {
    fn sync(&mut self, snapshot: &Snapshot) -> Result<Done, String> {
        let plan = self.engine.plan(snapshot);
        let (text, kind, changed) = match self.rules.as_mut() {
            None => {
                let rules = self.renderer.render(snapshot);
                let text = rules.create_one().to_string();
                let n = rules.ports.len();
                self.rules = Some(rules);
                (text, SyncKind::Full, n)
            }
            Some(rules) => {
                let only = (plan.kind == SyncKind::Partial).then_some(&plan.changed[..]);
                let update = self.renderer.update(rules, snapshot, only);
                let mut text = update.transaction.to_string();
                for s in &update.stale {
                    text.push_str(&format!(
                        "# later: delete chain {} {} {}\n",
                        rules.family.as_str(),
                        service_proxy::nftables::TABLE,
                        s.name
                    ));
                }
                (text, plan.kind, update.changed)
            }
        };
        print_out(&text)?;
        self.engine.committed(snapshot.clone());
        Ok(Done {
            kind,
            changed,
            detail: format!("{} bytes printed", text.len()),
        })
    }

    fn force_full(&mut self) {
        self.engine.force_full();
    }
}

fn print_out(text: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing the rules: {e}"))
}

fn ipvs_config(args: &Args, proxy: ProxyConfig) -> IpvsConfig {
    let mut config = IpvsConfig::new(proxy);
    config.scheduler = args.ipvs_scheduler;
    config.exclude_cidrs.clone_from(&args.ipvs_exclude_cidrs);
    config.strict_arp = args.ipvs_strict_arp;
    config.tcp_timeout = args.ipvs_tcp_timeout;
    config.tcp_fin_timeout = args.ipvs_tcpfin_timeout;
    config.udp_timeout = args.ipvs_udp_timeout;
    config
}

fn backend(args: &Args) -> Box<dyn Backend> {
    let proxy = args.node.proxy_config();
    let ipv6 = args.node.ipv6(args.ip_family);
    let conntrack = || match Conntrack::new() {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("warning: no conntrack cleanup ({e})");
            None
        }
    };
    let iptables = |proxy: ProxyConfig| -> Box<dyn Backend> {
        let renderer = IptRenderer::new(IptablesConfig::new(proxy), ipv6);
        match conntrack() {
            Some(c) => Box::new(Iptables(Proxier::new(
                renderer,
                args.iptables_flavor.runner(),
                c,
            ))),
            None => Box::new(Iptables(Proxier::new(
                renderer,
                args.iptables_flavor.runner(),
                NoConntrack,
            ))),
        }
    };
    match (args.backend, args.apply) {
        (BackendArg::Iptables, true) => iptables(proxy),
        (BackendArg::Nftables, true) => {
            let socket = match NftSocket::new() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: nf_tables netlink socket: {e}");
                    std::process::exit(1);
                }
            };
            let mut p = NftProxier::new(NftRenderer::new(NftablesConfig::new(proxy), ipv6), socket);
            if let Some(c) = conntrack() {
                p = p.with_conntrack(c);
            }
            Box::new(Nftables(p))
        }
        (BackendArg::Iptables, false) => {
            let localhost = proxy.localhost_nodeports;
            Box::new(IptablesDryRun {
                renderer: IptRenderer::new(IptablesConfig::new(proxy), ipv6),
                engine: SyncEngine::new(),
                localhost,
            })
        }
        (BackendArg::Userspace, apply) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: starting the runtime: {e}");
                    std::process::exit(1);
                }
            };
            let mut config = UserspaceConfig::default();
            if ipv6 {
                config.listen_ip = std::net::Ipv6Addr::UNSPECIFIED.into();
                config.family = IpFamily::Ipv6;
            }
            let family = config.family.clone();
            let proxy = UserspaceProxy::new(config, runtime.handle().clone());
            if apply {
                Box::new(Userspace {
                    proxier: Some(UserspaceProxier::new(proxy, args.iptables_flavor.runner())),
                    dry: None,
                    _runtime: runtime,
                })
            } else {
                Box::new(Userspace {
                    proxier: None,
                    dry: Some((proxy, family)),
                    _runtime: runtime,
                })
            }
        }
        (BackendArg::Ipvs, false) => Box::new(IpvsDryRun {
            config: ipvs_config(args, proxy),
            ipv6,
        }),
        (BackendArg::Ipvs, true) => {
            let config = ipvs_config(args, proxy.clone());
            match IpvsProxier::new(config, args.iptables_flavor.runner(), ipv6) {
                Ok(p) => match conntrack() {
                    Some(c) => Box::new(Ipvs(p.with_conntrack(c))),
                    None => Box::new(Ipvs(p)),
                },
                // As kube-proxy did: without IPVS (or the scheduler) in the kernel, run the
                // iptables backend.
                Err(e @ (IpvsError::Unavailable | IpvsError::Scheduler { .. })) => {
                    eprintln!("warning: {e}; falling back to the iptables backend");
                    iptables(proxy)
                }
                Err(e) => {
                    eprintln!("error: starting the IPVS backend: {e}");
                    std::process::exit(1);
                }
            }
        }
        (BackendArg::Nftables, false) => Box::new(NftablesDryRun {
            renderer: NftRenderer::new(NftablesConfig::new(proxy), ipv6),
            engine: SyncEngine::new(),
            rules: None,
        }),
    }
}

fn mtimes(files: &[String]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// Loads the files into a snapshot for the node (reusing `prev`'s unchanged parts).
fn load(args: &Args, prev: Option<&Snapshot>) -> Option<Snapshot> {
    let cluster = load_cluster(&args.files).ok()?;
    let node = args.node.node_info();
    let built = match prev {
        Some(p) => p.rebuild(
            node,
            &cluster.services,
            &cluster.endpoint_slices,
            &cluster.endpoints,
        ),
        None => cluster.snapshot(node),
    };
    match built {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("error: {e}");
            None
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Some(mut snapshot) = load(&args, None) else {
        return ExitCode::from(EXIT_INVALID);
    };
    let (reload, stop) = daemon_signals();
    let mut backend = backend(&args);
    let mut seen = mtimes(&args.files);
    let mut dirty = true;
    let mut last_sync: Option<Instant> = None;
    let mut last_full = Instant::now();
    let mut backoff = Duration::ZERO;
    let mut retry_at = Instant::now();
    let mut syncs = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        // Reload on a changed file or SIGHUP; an invalid file keeps the previous state.
        let files_now = mtimes(&args.files);
        if reload.swap(false, Ordering::SeqCst) || files_now != seen {
            seen = files_now;
            match load(&args, Some(&snapshot)) {
                Some(next) => {
                    snapshot = next;
                    dirty = true;
                }
                None => eprintln!("reload failed: keeping the previous rules"),
            }
        }
        if now.duration_since(last_full) >= args.sync_period {
            backend.force_full();
            last_full = now;
            dirty = true;
        }
        let rested = last_sync.is_none_or(|t| now.duration_since(t) >= args.min_sync_period);
        if dirty && rested && now >= retry_at {
            syncs += 1;
            let started = Instant::now();
            match backend.sync(&snapshot) {
                Ok(done) => {
                    eprintln!(
                        "sync {syncs}: {} ({} service ports changed), {:?}, {}",
                        kind_of(done.kind),
                        done.changed,
                        started.elapsed(),
                        done.detail
                    );
                    if done.kind == SyncKind::Full {
                        last_full = Instant::now();
                    }
                    dirty = false;
                    backoff = Duration::ZERO;
                }
                Err(e) => {
                    backoff = (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
                    retry_at = Instant::now() + backoff;
                    eprintln!(
                        "sync {syncs} failed after {:?}: {e}; retrying in {backoff:?}",
                        started.elapsed()
                    );
                }
            }
            last_sync = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match backend.cleanup() {
        Ok(()) => {
            eprintln!(
                "{}",
                if args.apply {
                    "stopped: rules removed"
                } else {
                    "stopped"
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cleanup: {e}");
            ExitCode::FAILURE
        }
    }
}
