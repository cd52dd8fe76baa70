//! Choosing and building the `proxy` daemon's backend: a kernel proxier with `--apply`, a
//! dry run without.

use std::time::Duration;

use service_core::model::IpFamily;
use service_core::snapshot::Snapshot;
use service_proxy::conntrack::Conntrack;
use service_proxy::dry_run::{DryRun, DryRunReport};
use service_proxy::iptables::IptablesConfig;
use service_proxy::iptables::apply::{Flavor, IptablesProxier, SystemRunner};
use service_proxy::ipvs::{IpvsConfig, IpvsError, IpvsProxier, Scheduler};
use service_proxy::nfacct::Nfacct;
use service_proxy::nftables::NftablesConfig;
use service_proxy::nftables::apply::{NftProxier, NftSocket};
use service_proxy::userspace::{UserspaceConfig, UserspaceProxier, UserspaceProxy, rules};
use service_proxy::{
    BackendReport, Proxier, ProxyConfig, ProxyMode, SyncError, SyncErrorKind, SyncKind, SyncReport,
    SyncRequest,
};

use crate::BackendArg;

/// `--iptables-flavor`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum FlavorArg {
    /// `iptables-restore` as found on `PATH`.
    System,
    /// `iptables-nft-restore`.
    Nft,
    /// `iptables-legacy-restore`.
    Legacy,
    /// Legacy if the legacy tables hold more rules (kube-proxy's iptables-wrapper).
    Detect,
}

impl FlavorArg {
    /// The runner of the iptables programs.
    pub fn runner(self) -> SystemRunner {
        let flavor = match self {
            Self::System => Flavor::System,
            Self::Nft => Flavor::Nft,
            Self::Legacy => Flavor::Legacy,
            Self::Detect => Flavor::detect(&SystemRunner::new()),
        };
        SystemRunner::new().with_flavor(flavor)
    }
}

/// The IPVS flags (kube-proxy's `--ipvs-*`).
#[derive(Clone, Debug, clap::Args)]
pub struct IpvsArgs {
    /// The IPVS scheduler: rr, lc, dh, sh, sed, nq, wrr, wlc or mh.
    #[arg(long = "ipvs-scheduler", value_parser = parse_scheduler, default_value = "rr")]
    pub scheduler: Scheduler,
    /// IPVS virtual servers in these ranges are left alone.
    #[arg(long = "ipvs-exclude-cidrs", value_delimiter = ',')]
    pub exclude_cidrs: Vec<ipnet::IpNet>,
    /// Set arp_ignore=1 and arp_announce=2.
    #[arg(long = "ipvs-strict-arp")]
    pub strict_arp: bool,
    /// IPVS idle timeout of established TCP connections (0: the kernel's).
    #[arg(long = "ipvs-tcp-timeout", value_parser = humantime::parse_duration, default_value = "0s")]
    pub tcp_timeout: Duration,
    /// IPVS timeout of TCP connections after a FIN (0: the kernel's).
    #[arg(long = "ipvs-tcpfin-timeout", value_parser = humantime::parse_duration, default_value = "0s")]
    pub tcpfin_timeout: Duration,
    /// IPVS idle timeout of UDP flows (0: the kernel's).
    #[arg(long = "ipvs-udp-timeout", value_parser = humantime::parse_duration, default_value = "0s")]
    pub udp_timeout: Duration,
}

fn parse_scheduler(s: &str) -> Result<Scheduler, String> {
    Scheduler::parse(s).ok_or_else(|| {
        format!("unknown IPVS scheduler {s:?} (rr, lc, dh, sh, sed, nq, wrr, wlc, mh)")
    })
}

impl IpvsArgs {
    /// The IPVS settings over `proxy`.
    pub fn config(&self, proxy: ProxyConfig) -> IpvsConfig {
        let mut config = IpvsConfig::new(proxy);
        config.scheduler = self.scheduler;
        config.exclude_cidrs.clone_from(&self.exclude_cidrs);
        config.strict_arp = self.strict_arp;
        config.tcp_timeout = self.tcp_timeout;
        config.tcp_fin_timeout = self.tcpfin_timeout;
        config.udp_timeout = self.udp_timeout;
        config
    }
}

/// Everything that picks and configures a proxier.
#[derive(Clone, Debug)]
pub struct BackendChoice {
    /// The backend.
    pub backend: BackendArg,
    /// Apply to the kernel, or print what would be applied.
    pub apply: bool,
    /// The family this proxier programs.
    pub family: IpFamily,
    /// The node's proxy settings.
    pub proxy: ProxyConfig,
    /// The IPVS settings.
    pub ipvs: IpvsArgs,
    /// The iptables programs.
    pub flavor: FlavorArg,
}

fn conntrack() -> Option<Conntrack> {
    match Conntrack::new() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("no conntrack cleanup ({e})");
            None
        }
    }
}

/// Builds the proxier. With `--apply` and `ipvs`, a kernel without IPVS or without the
/// scheduler gets the iptables backend instead, as kube-proxy did.
///
/// # Errors
/// The backend cannot start (no netlink socket, no runtime, IPVS refused for another
/// reason).
pub fn proxier(choice: &BackendChoice) -> Result<Box<dyn Proxier>, String> {
    let ipv6 = choice.family == IpFamily::Ipv6;
    let proxy = choice.proxy.clone();
    let iptables = |proxy: ProxyConfig| -> Box<dyn Proxier> {
        let mut config = IptablesConfig::new(proxy);
        // kube-proxy's nfacct counters: rules count into those that could be created.
        match Nfacct::new() {
            Ok(mut n) => {
                for (name, e) in n.ensure_kube_proxy_counters(&mut config) {
                    tracing::warn!("no nfacct counter {name} ({e}); its metric stays absent");
                }
            }
            Err(e) => tracing::warn!("no nfacct ({e}); nfacct-based metrics are absent"),
        }
        let renderer = service_proxy::iptables::Renderer::new(config, ipv6);
        let p = IptablesProxier::new(renderer, choice.flavor.runner());
        match conntrack() {
            Some(c) => Box::new(p.with_conntrack(c)),
            None => Box::new(p),
        }
    };
    Ok(match (choice.backend, choice.apply) {
        (BackendArg::Iptables, true) => iptables(proxy),
        (BackendArg::Iptables, false) => Box::new(DryRun::iptables(
            IptablesConfig::new(proxy),
            choice.family.clone(),
        )),
        (BackendArg::Nftables, true) => {
            let socket = NftSocket::new().map_err(|e| format!("nf_tables netlink socket: {e}"))?;
            let renderer = service_proxy::nftables::Renderer::new(NftablesConfig::new(proxy), ipv6);
            let p = NftProxier::new(renderer, socket);
            match conntrack() {
                Some(c) => Box::new(p.with_conntrack(c)),
                None => Box::new(p),
            }
        }
        (BackendArg::Nftables, false) => Box::new(DryRun::nftables(
            NftablesConfig::new(proxy),
            choice.family.clone(),
        )),
        (BackendArg::Ipvs, false) => Box::new(DryRun::ipvs(
            choice.ipvs.config(proxy),
            choice.family.clone(),
        )),
        (BackendArg::Ipvs, true) => {
            match IpvsProxier::new(
                choice.ipvs.config(proxy.clone()),
                choice.flavor.runner(),
                ipv6,
            ) {
                Ok(p) => match conntrack() {
                    Some(c) => Box::new(p.with_conntrack(c)),
                    None => Box::new(p),
                },
                Err(e @ (IpvsError::Unavailable | IpvsError::Scheduler { .. })) => {
                    tracing::warn!("{e}; falling back to the iptables backend");
                    iptables(proxy)
                }
                Err(e) => return Err(format!("starting the IPVS backend: {e}")),
            }
        }
        (BackendArg::Userspace, apply) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("starting the runtime: {e}"))?;
            let mut config = UserspaceConfig::default();
            if ipv6 {
                config.listen_ip = std::net::Ipv6Addr::UNSPECIFIED.into();
                config.family = IpFamily::Ipv6;
            }
            let proxy = UserspaceProxy::new(config, runtime.handle().clone());
            if apply {
                let p = UserspaceProxier::new(proxy, choice.flavor.runner());
                let p = match conntrack() {
                    Some(c) => p.with_conntrack(c),
                    None => p,
                };
                Box::new(Userspace {
                    proxier: Some(p),
                    dry: None,
                    _runtime: runtime,
                })
            } else {
                Box::new(Userspace {
                    proxier: None,
                    dry: Some(proxy),
                    _runtime: runtime,
                })
            }
        }
    })
}

/// A proxier whose `cleanup` removes what `choice`'s backend installs, for `--cleanup`:
/// `None` for IPVS on a kernel without it (nothing to remove).
///
/// # Errors
/// The backend cannot be reached (no netlink socket).
pub fn proxier_for_cleanup(choice: &BackendChoice) -> Result<Option<Box<dyn Proxier>>, String> {
    let ipv6 = choice.family == IpFamily::Ipv6;
    let proxy = choice.proxy.clone();
    Ok(Some(match choice.backend {
        BackendArg::Userspace => return proxier(choice).map(Some),
        BackendArg::Iptables => {
            let renderer = service_proxy::iptables::Renderer::new(IptablesConfig::new(proxy), ipv6);
            Box::new(IptablesProxier::new(renderer, choice.flavor.runner()))
        }
        BackendArg::Nftables => {
            let socket = NftSocket::new().map_err(|e| format!("nf_tables netlink socket: {e}"))?;
            let renderer = service_proxy::nftables::Renderer::new(NftablesConfig::new(proxy), ipv6);
            Box::new(NftProxier::new(renderer, socket))
        }
        BackendArg::Ipvs => {
            match IpvsProxier::new(choice.ipvs.config(proxy), choice.flavor.runner(), ipv6) {
                Ok(p) => Box::new(p),
                Err(IpvsError::Unavailable | IpvsError::Scheduler { .. }) => return Ok(None),
                Err(e) => return Err(format!("the IPVS backend: {e}")),
            }
        }
    }))
}

/// The userspace proxy with its own runtime: applying its redirect rules, or listening and
/// printing them.
struct Userspace {
    proxier: Option<UserspaceProxier<SystemRunner>>,
    dry: Option<UserspaceProxy>,
    // Declared last: dropped after the portals.
    _runtime: tokio::runtime::Runtime,
}

impl Proxier for Userspace {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Userspace
    }

    fn family(&self) -> IpFamily {
        match (&self.proxier, &self.dry) {
            (Some(p), _) => p.family(),
            (None, Some(d)) => d.config().family.clone(),
            (None, None) => IpFamily::Ipv4,
        }
    }

    fn sync(&mut self, request: SyncRequest<'_>) -> Result<SyncReport, SyncError> {
        if let Some(p) = self.proxier.as_mut() {
            return p.sync(request);
        }
        let family = self.family();
        let Some(proxy) = self.dry.as_mut() else {
            return Err(SyncError::new(
                ProxyMode::Userspace,
                SyncErrorKind::Unavailable,
                "the proxy has shut down",
            ));
        };
        let snapshot: &Snapshot = request.snapshot;
        let portals = proxy
            .sync(snapshot)
            .map_err(|e| SyncError::new(ProxyMode::Userspace, SyncErrorKind::Transient, e))?;
        let rendered = rules::render(snapshot, &proxy.portals(), &family);
        let text = rules::restore_input(&rendered, &rules::PortalChain::ALL);
        let mut detail = DryRunReport::default();
        detail.text = text;
        let mut report = SyncReport::new(SyncKind::Full, BackendReport::DryRun(detail));
        report.wrote = true;
        report.service_ports_changed = portals.opened + portals.closed + portals.updated;
        Ok(report)
    }

    fn force_full(&mut self) {}

    fn cleanup(&mut self) -> Result<(), SyncError> {
        if let Some(p) = self.proxier.as_mut() {
            p.cleanup()?;
        }
        if let Some(d) = self.dry.as_mut() {
            d.shutdown();
        }
        Ok(())
    }
}
