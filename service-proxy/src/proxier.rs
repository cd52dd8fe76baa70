//! The one interface every backend is driven through: [`Proxier`], with one request shape,
//! one report and one error type.
//!
//! ```text
//! ChangeTracker ──checkout──► (Snapshot, Changes) ─┐
//! SyncScheduler ──poll──► SyncDue { full } ────────┴─► SyncRequest ─► Proxier::sync
//!                                                                      │
//!                       SyncReport { kind, duration, changes, backend detail } ◄─┘
//!                       or SyncError { kind: Unavailable | Rejected | Transient }
//! ```
//!
//! Implemented by the iptables, nftables, IPVS and userspace proxiers (feature `apply` /
//! `userspace`) and by [`crate::dry_run::DryRun`], which renders without touching anything.

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, Instant};

use service_core::model::IpFamily;
use service_core::snapshot::{ServicePortName, Snapshot};

use crate::SyncKind;

/// The proxy modes, by kube-proxy's names (`/proxyMode` answers these).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProxyMode {
    /// `iptables`.
    Iptables,
    /// `nftables`.
    Nftables,
    /// `ipvs`.
    Ipvs,
    /// `userspace` (Kubernetes v1.0's).
    Userspace,
}

impl ProxyMode {
    /// kube-proxy's name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
            Self::Ipvs => "ipvs",
            Self::Userspace => "userspace",
        }
    }
}

impl fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One sync to run.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct SyncRequest<'a> {
    /// The state to reach.
    pub snapshot: &'a Snapshot,
    /// The service ports that differ from the snapshot of this proxier's last successful
    /// sync (a [`service_core::tracker::ChangeTracker`]'s checkouts since then). `None`:
    /// not known, and the proxier compares the snapshots itself (cheap: unchanged entries
    /// are shared and compared by pointer).
    pub changed: Option<&'a BTreeSet<ServicePortName>>,
    /// A full sync: compare every service port, not only the changed ones, and check the
    /// kernel where the backend can (the periodic resync).
    pub full: bool,
    /// The current time, for what a proxier schedules (deleting flushed chains a moment
    /// later, draining real servers).
    pub now: Instant,
}

impl<'a> SyncRequest<'a> {
    /// A request to reach `snapshot`; what changed is not known.
    pub fn new(snapshot: &'a Snapshot, now: Instant) -> Self {
        Self {
            snapshot,
            changed: None,
            full: false,
            now,
        }
    }

    /// With the service ports that changed since the last successful sync.
    #[must_use]
    pub fn with_changes(mut self, changed: &'a BTreeSet<ServicePortName>) -> Self {
        self.changed = Some(changed);
        self
    }

    /// As a full sync (or not).
    #[must_use]
    pub fn full(mut self, full: bool) -> Self {
        self.full = full;
        self
    }
}

/// What one sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncReport {
    /// Full or partial.
    pub kind: SyncKind,
    /// Whether anything was sent to the kernel (or printed, for a dry run). A sync with
    /// nothing to change sends nothing.
    pub wrote: bool,
    /// Wall time of the sync.
    pub duration: Duration,
    /// Service ports whose rules were rewritten (every port for a full sync).
    pub service_ports_changed: usize,
    /// Endpoints that appeared or disappeared across the changed service ports.
    pub endpoints_changed: usize,
    /// Kernel objects that differed from what the proxier had installed (someone else
    /// changed them) and were put back. nftables: chains, sets and elements that differed
    /// (a deleted table counts once), found by reading the table on every full sync.
    /// IPVS: virtual servers, real servers and addresses, found by a full sync's read.
    /// iptables: 1 when the canary chain was gone (the tables were flushed), 1 when a
    /// partial restore was refused and redone in full (the rules were not as left).
    pub repaired: usize,
    /// Stale conntrack entries deleted.
    pub conntrack_deleted: usize,
    /// Conntrack filters kept for the next sync because the kernel refused the cleanup,
    /// and what it said.
    pub conntrack_failed: Option<(usize, String)>,
    /// Service ports (of this family) with a Local traffic policy and no local endpoint,
    /// for internal and external traffic (kube-proxy's
    /// `sync_proxy_rules_no_local_endpoints_total`).
    pub no_local_endpoints: (usize, usize),
    /// What the backend did.
    pub detail: BackendReport,
}

impl SyncReport {
    /// A report of `kind` with nothing written yet.
    pub fn new(kind: SyncKind, detail: BackendReport) -> Self {
        Self {
            kind,
            wrote: false,
            duration: Duration::ZERO,
            service_ports_changed: 0,
            endpoints_changed: 0,
            repaired: 0,
            conntrack_deleted: 0,
            conntrack_failed: None,
            no_local_endpoints: (0, 0),
            detail,
        }
    }
}

impl SyncReport {
    /// The iptables backend's detail, if this is its report.
    #[cfg(feature = "iptables")]
    pub fn iptables(&self) -> Option<&crate::iptables::IptablesReport> {
        match &self.detail {
            BackendReport::Iptables(r) => Some(r),
            _ => None,
        }
    }

    /// The nftables backend's detail, if this is its report.
    #[cfg(feature = "nftables")]
    pub fn nftables(&self) -> Option<&crate::nftables::NftablesReport> {
        match &self.detail {
            BackendReport::Nftables(r) => Some(r),
            _ => None,
        }
    }

    /// The IPVS backend's detail, if this is its report.
    #[cfg(feature = "ipvs")]
    pub fn ipvs(&self) -> Option<&crate::ipvs::IpvsReport> {
        match &self.detail {
            BackendReport::Ipvs(r) => Some(r),
            _ => None,
        }
    }

    /// The userspace backend's detail, if this is its report.
    #[cfg(feature = "userspace")]
    pub fn userspace(&self) -> Option<&crate::userspace::UserspaceReport> {
        match &self.detail {
            BackendReport::Userspace(r) => Some(r),
            _ => None,
        }
    }

    /// A dry run's detail, if this is its report.
    pub fn dry_run(&self) -> Option<&crate::dry_run::DryRunReport> {
        match &self.detail {
            BackendReport::DryRun(r) => Some(r),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

impl fmt::Display for SyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            SyncKind::Full => "full",
            _ => "partial",
        };
        write!(f, "{kind} sync")?;
        // A dry run does not time itself.
        if !self.duration.is_zero() {
            write!(f, " in {:?}", self.duration)?;
        }
        write!(
            f,
            ": {} service ports and {} endpoints changed",
            self.service_ports_changed, self.endpoints_changed
        )?;
        if !self.wrote {
            f.write_str(", nothing to write")?;
        }
        write!(f, ", {}", self.detail)?;
        if self.repaired > 0 {
            write!(f, ", {} kernel objects repaired", self.repaired)?;
        }
        if self.conntrack_deleted > 0 {
            write!(f, ", {} conntrack entries cleared", self.conntrack_deleted)?;
        }
        if let Some((n, e)) = &self.conntrack_failed {
            write!(
                f,
                ", conntrack cleanup of {n} filters failed ({e}), retried next sync"
            )?;
        }
        Ok(())
    }
}

/// The backend's own part of a [`SyncReport`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendReport {
    /// iptables.
    #[cfg(feature = "iptables")]
    Iptables(crate::iptables::IptablesReport),
    /// nftables.
    #[cfg(feature = "nftables")]
    Nftables(crate::nftables::NftablesReport),
    /// IPVS.
    #[cfg(feature = "ipvs")]
    Ipvs(crate::ipvs::IpvsReport),
    /// The userspace proxy.
    #[cfg(feature = "userspace")]
    Userspace(crate::userspace::UserspaceReport),
    /// A dry run: what would have been sent.
    DryRun(crate::dry_run::DryRunReport),
}

impl fmt::Display for BackendReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(feature = "iptables")]
            Self::Iptables(r) => write!(
                f,
                "{} rules restored{}",
                r.rules,
                if r.recovered {
                    " (a failed partial restore redone in full)"
                } else {
                    ""
                }
            ),
            #[cfg(feature = "nftables")]
            Self::Nftables(r) => write!(
                f,
                "{} transactions, {} netlink messages, {} stale chains deleted",
                r.transactions, r.messages, r.chains_deleted
            ),
            #[cfg(feature = "ipvs")]
            Self::Ipvs(r) => write!(
                f,
                "{} virtual servers, {} IPVS changes, {} real servers draining, {} addresses bound, {} unbound",
                r.virtual_servers, r.changes, r.draining, r.bound, r.unbound
            ),
            #[cfg(feature = "userspace")]
            Self::Userspace(r) => write!(
                f,
                "{} portals opened, {} closed, {} updated, {} redirect rules",
                r.portals.opened, r.portals.closed, r.portals.updated, r.rules
            ),
            Self::DryRun(r) => write!(f, "{} bytes rendered", r.text.len()),
        }
    }
}

/// What a caller can do about a failed sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SyncErrorKind {
    /// The kernel (or the system) lacks what the backend needs: no IPVS, no scheduler
    /// module, no `iptables-restore`. Retrying will not help; fall back to another
    /// backend.
    Unavailable,
    /// The kernel refused the changes. Nothing of the refused transaction was applied;
    /// the proxier's next sync is full.
    Rejected,
    /// Talking to the kernel failed (a socket error, a program that died). Retry.
    Transient,
}

/// A failed sync.
#[derive(Debug, thiserror::Error)]
#[error("{mode} sync failed: {source}")]
pub struct SyncError {
    kind: SyncErrorKind,
    mode: ProxyMode,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl SyncError {
    /// An error of `mode`'s backend.
    pub fn new(
        mode: ProxyMode,
        kind: SyncErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            kind,
            mode,
            source: source.into(),
        }
    }

    /// What the caller can do about it.
    pub fn kind(&self) -> SyncErrorKind {
        self.kind
    }

    /// The backend that failed.
    pub fn mode(&self) -> ProxyMode {
        self.mode
    }

    /// The backend's own error (`iptables::apply::ApplyError`, `nftables::ApplyError`,
    /// `ipvs::IpvsError`, ...), for callers that want its details.
    pub fn backend_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.source.downcast_ref()
    }
}

/// A backend: renders a [`Snapshot`] and brings the kernel (or its portals) to it.
///
/// Contract, checked for every implementation by one test suite
/// (`service-proxy/tests/proxier_contract.rs`): the first sync is full; a sync after a
/// change rewrites the changed service ports; a sync with nothing changed writes nothing;
/// [`Proxier::force_full`] makes the next sync full; [`Proxier::cleanup`] removes
/// everything the proxier installed and nothing else.
pub trait Proxier {
    /// The proxy mode.
    fn mode(&self) -> ProxyMode;

    /// The IP family this proxier programs.
    fn family(&self) -> IpFamily;

    /// Brings the dataplane to `request.snapshot`.
    ///
    /// # Errors
    /// See [`SyncErrorKind`]. After any error the next sync is full.
    fn sync(&mut self, request: SyncRequest<'_>) -> Result<SyncReport, SyncError>;

    /// Makes the next sync full.
    fn force_full(&mut self);

    /// Removes everything this proxier installed (rules, tables, virtual servers, portals).
    ///
    /// # Errors
    /// The kernel refused a removal.
    fn cleanup(&mut self) -> Result<(), SyncError>;

    /// Syncs to `snapshot` now, without a known change set: a convenience for callers that
    /// do not use a tracker and a scheduler.
    ///
    /// # Errors
    /// As [`Proxier::sync`].
    fn sync_to(&mut self, snapshot: &Snapshot) -> Result<SyncReport, SyncError> {
        self.sync(SyncRequest::new(snapshot, Instant::now()))
    }
}

impl<P: Proxier + ?Sized> Proxier for Box<P> {
    fn mode(&self) -> ProxyMode {
        (**self).mode()
    }
    fn family(&self) -> IpFamily {
        (**self).family()
    }
    fn sync(&mut self, request: SyncRequest<'_>) -> Result<SyncReport, SyncError> {
        (**self).sync(request)
    }
    fn force_full(&mut self) {
        (**self).force_full();
    }
    fn cleanup(&mut self) -> Result<(), SyncError> {
        (**self).cleanup()
    }
}

/// Endpoints that appeared, disappeared or changed state (ready, serving, terminating)
/// across `changed` between two snapshots (every port when `changed` is `None`), for one
/// family.
pub(crate) fn endpoints_changed(
    old: Option<&Snapshot>,
    new: &Snapshot,
    family: &IpFamily,
    changed: Option<&BTreeSet<ServicePortName>>,
) -> usize {
    type State = (bool, bool, bool);
    let endpoints = |s: Option<&Snapshot>, name: &ServicePortName| {
        s.and_then(|s| s.ports.get(name))
            .and_then(|p| p.family(family))
            .map(|f| {
                f.endpoints
                    .iter()
                    .map(|e| (e.addr(), (e.ready, e.serving, e.terminating)))
                    .collect::<std::collections::BTreeMap<std::net::SocketAddr, State>>()
            })
            .unwrap_or_default()
    };
    let count = |name: &ServicePortName| {
        let (a, b) = (endpoints(old, name), endpoints(Some(new), name));
        let gone_or_changed = a
            .iter()
            .filter(|(addr, st)| b.get(*addr) != Some(*st))
            .count();
        gone_or_changed + b.keys().filter(|addr| !a.contains_key(*addr)).count()
    };
    match changed {
        Some(names) => names.iter().map(count).sum(),
        None => {
            let mut names: BTreeSet<&ServicePortName> = new.ports.keys().collect();
            if let Some(old) = old {
                names.extend(old.ports.keys());
            }
            names.into_iter().map(count).sum()
        }
    }
}

/// The service ports of one family whose Local policy finds no local endpoint, kept up to
/// date from the changed ports of each sync (kube-proxy's
/// `sync_proxy_rules_no_local_endpoints_total`, counted only where some endpoint exists in
/// the cluster).
#[derive(Debug, Default)]
pub(crate) struct NoLocalEndpoints {
    internal: BTreeSet<ServicePortName>,
    external: BTreeSet<ServicePortName>,
}

impl NoLocalEndpoints {
    /// Updates the sets for `changed` (every port when `None`) and returns their sizes.
    pub(crate) fn update(
        &mut self,
        snapshot: &Snapshot,
        family: &IpFamily,
        changed: Option<&BTreeSet<ServicePortName>>,
    ) -> (usize, usize) {
        use service_core::snapshot::EndpointSet;
        if changed.is_none() {
            self.internal.clear();
            self.external.clear();
        }
        let (internal_set, external_set) = (&mut self.internal, &mut self.external);
        let mut check = |name: &ServicePortName| {
            let t = snapshot
                .ports
                .get(name)
                .and_then(|sp| sp.family(family))
                .map(|plan| plan.traffic)
                .filter(|t| t.has_endpoints);
            let internal =
                t.is_some_and(|t| t.internal == EndpointSet::Local && !t.internal_reachable);
            let external = t.is_some_and(|t| {
                t.external == EndpointSet::Local && t.externally_accessible && !t.external_reachable
            });
            for (set, now) in [
                (&mut *internal_set, internal),
                (&mut *external_set, external),
            ] {
                if now {
                    set.insert(name.clone());
                } else {
                    set.remove(name);
                }
            }
        };
        match changed {
            Some(names) => names.iter().for_each(&mut check),
            None => snapshot.ports.keys().for_each(&mut check),
        }
        (self.internal.len(), self.external.len())
    }
}
