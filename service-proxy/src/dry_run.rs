//! [`DryRun`]: a [`Proxier`] that renders what a backend would send and keeps it, touching
//! nothing. The `render` and `proxy` (without `--apply`) commands print it; tests read it.
//!
//! The first sync (and every full one) renders the complete rule set exactly as the
//! `render` command prints it: `iptables-restore` input with the jumps from the built-in
//! chains, an `nft -f` script that replaces the table, or the IPVS plan. Later syncs render
//! what the real proxier would send: a partial `iptables-restore` input, an nftables
//! transaction, the whole IPVS plan again (IPVS syncs diff against the kernel). It reads no
//! clock and does no IO, so its reports' `duration` is zero.
//!
//! ```
//! use service_proxy::dry_run::DryRun;
//! use service_proxy::iptables::IptablesConfig;
//! use service_proxy::{Proxier, ProxyConfig};
//! use service_core::model::IpFamily;
//! use service_core::snapshot::Snapshot;
//!
//! let mut proxier = DryRun::iptables(IptablesConfig::new(ProxyConfig::default()), IpFamily::Ipv4);
//! let report = proxier.sync_to(&Snapshot::default())?;
//! assert!(proxier.last_text().starts_with("*filter"));
//! assert!(report.wrote);
//! # Ok::<(), service_proxy::SyncError>(())
//! ```
// Built without any backend feature, a dry run has nothing to render.
#![cfg_attr(
    not(any(feature = "iptables", feature = "nftables")),
    allow(unused_variables, dead_code)
)]

use service_core::model::IpFamily;

use crate::conntrack::stale_filters;
use crate::proxier::{
    BackendReport, NoLocalEndpoints, Proxier, ProxyMode, SyncError, SyncReport, SyncRequest,
    endpoints_changed,
};
use crate::sync::{SyncEngine, SyncKind};
use crate::trace::{Packet, TraceError, Verdict};

/// What a dry run rendered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DryRunReport {
    /// The text the backend's tool would be fed (empty when nothing would be sent).
    pub text: String,
    /// UDP conntrack filters the real proxier would clear.
    pub conntrack_filters: usize,
}

enum Backend {
    #[cfg(feature = "iptables")]
    Iptables(crate::iptables::Renderer),
    #[cfg(feature = "nftables")]
    Nftables {
        renderer: crate::nftables::Renderer,
        rules: Option<crate::nftables::Ruleset>,
    },
    #[cfg(feature = "ipvs")]
    Ipvs(crate::ipvs::IpvsConfig),
}

/// Renders instead of applying. See the [module docs](self).
pub struct DryRun {
    backend: Backend,
    family: IpFamily,
    engine: SyncEngine,
    no_local: NoLocalEndpoints,
    last: String,
}

impl std::fmt::Debug for DryRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DryRun")
            .field("mode", &self.mode())
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

fn ipv6(family: &IpFamily) -> bool {
    *family == IpFamily::Ipv6
}

impl DryRun {
    fn new(backend: Backend, family: IpFamily) -> Self {
        Self {
            backend,
            family,
            engine: SyncEngine::new(),
            no_local: NoLocalEndpoints::default(),
            last: String::new(),
        }
    }

    /// The iptables backend's rules.
    #[cfg(feature = "iptables")]
    pub fn iptables(config: crate::iptables::IptablesConfig, family: IpFamily) -> Self {
        let renderer = crate::iptables::Renderer::new(config, ipv6(&family));
        Self::new(Backend::Iptables(renderer), family)
    }

    /// The nftables backend's table and transactions.
    #[cfg(feature = "nftables")]
    pub fn nftables(config: crate::nftables::NftablesConfig, family: IpFamily) -> Self {
        let renderer = crate::nftables::Renderer::new(config, ipv6(&family));
        Self::new(
            Backend::Nftables {
                renderer,
                rules: None,
            },
            family,
        )
    }

    /// The IPVS backend's plan and fixed rules.
    #[cfg(feature = "ipvs")]
    pub fn ipvs(config: crate::ipvs::IpvsConfig, family: IpFamily) -> Self {
        Self::new(Backend::Ipvs(config), family)
    }

    /// What the last sync rendered.
    pub fn last_text(&self) -> &str {
        &self.last
    }

    /// Where `packet` goes with the rules of the last sync: the whole rule set as it would
    /// be installed, whatever the last sync changed. The node's own addresses are
    /// [`crate::ProxyConfig::local_addresses`].
    ///
    /// # Errors
    /// [`TraceError::NotSynced`] before the first sync.
    pub fn trace(&mut self, packet: &Packet) -> Result<Verdict, TraceError> {
        // Only the nftables backend traces its last rule set rather than the snapshot.
        #[cfg_attr(not(feature = "iptables"), allow(unused_variables))]
        let snapshot = self.engine.last().ok_or(TraceError::NotSynced)?.clone();
        match &mut self.backend {
            // Without a backend feature there is no backend to hold.
            #[cfg(not(any(feature = "iptables", feature = "nftables")))]
            _ => unreachable!("no backend feature"),
            #[cfg(feature = "iptables")]
            Backend::Iptables(renderer) => {
                let local = renderer.config().proxy.local_addresses.clone();
                renderer.full(&snapshot).trace(packet, &local)
            }
            #[cfg(feature = "nftables")]
            Backend::Nftables { renderer, rules } => {
                let rules = rules.as_ref().ok_or(TraceError::NotSynced)?;
                Ok(rules.trace(packet, &renderer.config().proxy.local_addresses))
            }
            #[cfg(feature = "ipvs")]
            Backend::Ipvs(config) => {
                let plan = crate::ipvs::IpvsPlan::build(config, &snapshot, ipv6(&self.family));
                Ok(plan.trace(config, packet))
            }
        }
    }

    /// Renders what a sync from the last committed state to `request.snapshot` sends.
    fn render(&mut self, request: &SyncRequest<'_>) -> (String, SyncKind, usize) {
        let snapshot = request.snapshot;
        let plan = self.engine.plan(snapshot, request.changed);
        match &mut self.backend {
            // Without a backend feature there is no backend to hold.
            #[cfg(not(any(feature = "iptables", feature = "nftables")))]
            _ => unreachable!("no backend feature"),
            #[cfg(feature = "iptables")]
            Backend::Iptables(renderer) => {
                if plan.kind == SyncKind::Full {
                    let localhost = renderer.config().proxy.localhost_nodeports;
                    let text = renderer
                        .full(snapshot)
                        .to_restore_input_with_jumps(localhost);
                    (text, SyncKind::Full, snapshot.ports.len())
                } else if plan.is_noop() {
                    (String::new(), SyncKind::Partial, 0)
                } else {
                    let rules = renderer.partial(snapshot, &plan.changed);
                    let kind = if rules.full {
                        SyncKind::Full
                    } else {
                        SyncKind::Partial
                    };
                    (rules.to_restore_input(), kind, plan.changed.len())
                }
            }
            #[cfg(feature = "nftables")]
            Backend::Nftables { renderer, rules } => match rules {
                Some(rules) => {
                    let only = (plan.kind == SyncKind::Partial).then_some(&plan.changed[..]);
                    let update = renderer.update(rules, snapshot, only);
                    let mut text = update.transaction.to_string();
                    for s in &update.stale {
                        text.push_str(&format!(
                            "# a second later: delete chain {} {} {}\n",
                            rules.family.as_str(),
                            crate::nftables::TABLE,
                            s.name
                        ));
                    }
                    (text, plan.kind, update.changed)
                }
                _ => {
                    let fresh = renderer.render(snapshot);
                    let text = fresh.create_one().to_string();
                    let n = fresh.ports.len();
                    *rules = Some(fresh);
                    (text, SyncKind::Full, n)
                }
            },
            #[cfg(feature = "ipvs")]
            Backend::Ipvs(_) if plan.is_noop() => (String::new(), SyncKind::Partial, 0),
            #[cfg(feature = "ipvs")]
            Backend::Ipvs(config) => {
                let ipv6 = ipv6(&self.family);
                let plan_ = crate::ipvs::IpvsPlan::build(config, snapshot, ipv6);
                let text = crate::ipvs::ipvs_text(&plan_, config, ipv6);
                let n = match plan.kind {
                    SyncKind::Full => snapshot.ports.len(),
                    _ => plan.changed.len(),
                };
                (text, plan.kind, n)
            }
        }
    }
}

impl Proxier for DryRun {
    fn mode(&self) -> ProxyMode {
        match self.backend {
            #[cfg(feature = "iptables")]
            Backend::Iptables(_) => ProxyMode::Iptables,
            #[cfg(feature = "nftables")]
            Backend::Nftables { .. } => ProxyMode::Nftables,
            #[cfg(feature = "ipvs")]
            Backend::Ipvs(_) => ProxyMode::Ipvs,
        }
    }

    fn family(&self) -> IpFamily {
        self.family.clone()
    }

    fn sync(&mut self, request: SyncRequest<'_>) -> Result<SyncReport, SyncError> {
        if request.full {
            self.engine.force_full();
        }
        let (text, kind, ports) = self.render(&request);
        let snapshot = request.snapshot;
        let filters = stale_filters(self.engine.last(), snapshot, &self.family, request.changed);
        let mut report = SyncReport::new(
            kind,
            BackendReport::DryRun(DryRunReport {
                text: text.clone(),
                conntrack_filters: filters.len(),
            }),
        );
        report.wrote = !text.is_empty();
        report.service_ports_changed = ports;
        report.endpoints_changed = endpoints_changed(
            self.engine.last(),
            snapshot,
            &self.family,
            (kind == SyncKind::Partial)
                .then_some(request.changed)
                .flatten(),
        );
        report.no_local_endpoints = self.no_local.update(
            snapshot,
            &self.family,
            (kind == SyncKind::Partial)
                .then_some(request.changed)
                .flatten(),
        );
        // A dry run reads no clock: `duration` stays zero (the caller may time it).
        self.engine.committed(snapshot.clone());
        self.last = text;
        Ok(report)
    }

    fn force_full(&mut self) {
        self.engine.force_full();
    }

    fn cleanup(&mut self) -> Result<(), SyncError> {
        self.engine = SyncEngine::new();
        match &mut self.backend {
            // Without a backend feature there is no backend to hold.
            #[cfg(not(any(feature = "iptables", feature = "nftables")))]
            _ => unreachable!("no backend feature"),
            #[cfg(feature = "iptables")]
            Backend::Iptables(renderer) => renderer.reset(),
            #[cfg(feature = "nftables")]
            Backend::Nftables { rules, .. } => *rules = None,
            #[allow(unreachable_patterns)]
            _ => {}
        }
        self.last.clear();
        Ok(())
    }
}
