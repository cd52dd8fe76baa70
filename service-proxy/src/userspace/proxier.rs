//! [`UserspaceProxier`]: the portals and the nat rules that lead to them, kept in sync.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use service_core::model::{IpFamily, Protocol};
use service_core::snapshot::{ServicePortName, Snapshot};

use super::rules::{self, PortalChain};
use super::{UserspaceProxy, UserspaceSync};
use crate::conntrack::{Cleanup, ConntrackCleaner, Filter};
use crate::iptables::Table;
use crate::iptables::apply::{ApplyError, Runner};
use crate::proxier::{
    BackendReport, NoLocalEndpoints, Proxier, ProxyMode, SyncError, SyncErrorKind, SyncReport,
    SyncRequest, endpoints_changed,
};
use crate::sync::SyncKind;

/// Why a userspace sync failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserspaceError {
    /// A portal could not listen.
    #[error("opening a portal: {0}")]
    Portal(#[from] io::Error),
    /// The nat rules could not be applied.
    #[error(transparent)]
    Rules(#[from] ApplyError),
}

/// The userspace backend's part of a [`crate::SyncReport`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserspaceReport {
    /// Portals opened, closed, updated.
    pub portals: UserspaceSync,
    /// Redirect rules written.
    pub rules: usize,
}

/// The userspace proxy with its redirect rules, for one family.
#[derive(Debug)]
pub struct UserspaceProxier<R: Runner> {
    proxy: UserspaceProxy,
    runner: R,
    conntrack: Cleanup,
    no_local: NoLocalEndpoints,
    /// The snapshot and portals of the last successful sync.
    last: Option<(Snapshot, BTreeMap<ServicePortName, SocketAddr>)>,
    /// The rules the last sync restored.
    last_input: String,
}

fn error(e: UserspaceError) -> SyncError {
    let kind = match &e {
        UserspaceError::Portal(_) => SyncErrorKind::Transient,
        UserspaceError::Rules(ApplyError::Spawn { .. }) => SyncErrorKind::Unavailable,
        UserspaceError::Rules(_) => SyncErrorKind::Rejected,
    };
    SyncError::new(ProxyMode::Userspace, kind, e)
}

impl<R: Runner> UserspaceProxier<R> {
    /// Portals from `proxy`, rules through `runner` (its iptables flavour).
    pub fn new(proxy: UserspaceProxy, runner: R) -> Self {
        Self {
            proxy,
            runner,
            conntrack: Cleanup::default(),
            no_local: NoLocalEndpoints::default(),
            last: None,
            last_input: String::new(),
        }
    }

    /// Also clears the conntrack entries of UDP flows redirected to a portal that closed or
    /// moved, so that their next packet follows the new redirect rule.
    #[must_use]
    pub fn with_conntrack(mut self, cleaner: impl ConntrackCleaner + 'static) -> Self {
        self.conntrack = Cleanup::new(cleaner);
        self
    }

    /// The portals.
    pub fn proxy(&self) -> &UserspaceProxy {
        &self.proxy
    }

    fn ipv6(&self) -> bool {
        self.proxy.config.family == IpFamily::Ipv6
    }

    /// The jumps from the built-in chains that are in place.
    fn jumps_present(&mut self) -> Result<Vec<PortalChain>, ApplyError> {
        let saved = self.runner.save(self.ipv6(), Table::Nat)?;
        Ok(PortalChain::ALL
            .into_iter()
            .filter(|c| {
                let line = format!("-A {} {}", c.from().0, c.jump_args());
                saved.lines().any(|l| l == line)
            })
            .collect())
    }

    /// Whether the jump to the portal guard is in place.
    fn guard_jump_present(&mut self) -> Result<bool, ApplyError> {
        let saved = self.runner.save(self.ipv6(), Table::Filter)?;
        Ok(saved.lines().any(|l| l == rules::GUARD_JUMP))
    }

    /// Opens and closes portals for `snapshot`, then rewrites the redirect rules (their
    /// chains are small: one rule per address and port) unless they are what the last sync
    /// restored and every jump to them is in place; returns whether it restored.
    fn sync_portals(
        &mut self,
        snapshot: &Snapshot,
    ) -> Result<(UserspaceReport, bool), UserspaceError> {
        let portals = self.proxy.sync(snapshot)?;
        let portal_list = self.proxy.portals();
        let rules = rules::render(snapshot, &portal_list, &self.proxy.config.family);
        let present = self.jumps_present()?;
        let missing: Vec<PortalChain> = PortalChain::ALL
            .into_iter()
            .filter(|c| !present.contains(c))
            .collect();
        let guard_missing = !self.guard_jump_present()?;
        let mut input = rules::restore_input(&rules, &missing);
        input.push_str(&rules::guard_input(
            &rules::guard_rules(&portal_list),
            guard_missing,
        ));
        let report = UserspaceReport {
            portals,
            rules: rules.len(),
        };
        if missing.is_empty() && !guard_missing && input == self.last_input {
            return Ok((report, false));
        }
        let ipv6 = self.ipv6();
        self.last_input.clear();
        self.runner.restore(ipv6, &[input.as_bytes()])?;
        self.last_input = input;
        Ok((report, true))
    }

    /// Filters for the UDP flows redirected to portals that closed or moved.
    fn stale_redirects(&self, now: &BTreeMap<ServicePortName, SocketAddr>) -> Vec<Filter> {
        let Some((snapshot, before)) = &self.last else {
            return Vec::new();
        };
        let family = &self.proxy.config.family;
        let mut out = Vec::new();
        for (name, addr) in before {
            if name.protocol != Protocol::Udp || now.get(name) == Some(addr) {
                continue;
            }
            let Some(sp) = snapshot.ports.get(name) else {
                continue;
            };
            let Some(plan) = sp.family(family) else {
                continue;
            };
            let ips = std::iter::once(plan.cluster_ip)
                .chain(plan.external_ips.iter().copied())
                .chain(plan.load_balancer_ips.iter().copied());
            out.extend(ips.map(|ip| Filter {
                protocol: 17,
                orig_dst: Some(ip),
                orig_dport: Some(sp.port),
                ..Filter::default()
            }));
        }
        out
    }
}

impl<R: Runner> Proxier for UserspaceProxier<R> {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Userspace
    }

    fn family(&self) -> IpFamily {
        self.proxy.config.family.clone()
    }

    /// Opens and closes portals for the snapshot and rewrites the redirect rules (every
    /// sync is full: the chains hold one rule per address and port).
    fn sync(&mut self, request: SyncRequest<'_>) -> Result<SyncReport, SyncError> {
        let start = Instant::now();
        let snapshot = request.snapshot;
        let (detail, wrote) = self.sync_portals(snapshot).map_err(error)?;
        let portals: BTreeMap<ServicePortName, SocketAddr> = self
            .proxy
            .portals()
            .into_iter()
            .map(|p| (p.name, p.local))
            .collect();
        let family = self.family();
        let mut report = SyncReport::new(SyncKind::Full, BackendReport::Userspace(detail));
        report.wrote = wrote || detail.portals != Default::default();
        report.service_ports_changed =
            detail.portals.opened + detail.portals.closed + detail.portals.updated;
        report.endpoints_changed = endpoints_changed(
            self.last.as_ref().map(|(s, _)| s),
            snapshot,
            &family,
            request.changed,
        );
        let cleaned = self.conntrack.run(&family, self.stale_redirects(&portals));
        report.conntrack_deleted = cleaned.deleted;
        report.conntrack_failed = cleaned.failed;
        report.no_local_endpoints = self.no_local.update(snapshot, &family, None);
        self.last = Some((snapshot.clone(), portals));
        report.duration = start.elapsed();
        Ok(report)
    }

    /// Every sync is full already.
    fn force_full(&mut self) {}

    /// Removes the rules and stops listening.
    fn cleanup(&mut self) -> Result<(), SyncError> {
        self.proxy.shutdown();
        self.last = None;
        self.last_input.clear();
        let present = self.jumps_present().map_err(|e| error(e.into()))?;
        let ipv6 = self.ipv6();
        let exists = PortalChain::ALL
            .into_iter()
            .map(|c| self.runner.chain_exists(ipv6, Table::Nat, c.name()))
            .collect::<Result<Vec<bool>, _>>()
            .map_err(|e| error(e.into()))?;
        if exists.iter().any(|e| *e) || !present.is_empty() {
            self.runner
                .restore(ipv6, &[rules::cleanup_input(&present).as_bytes()])
                .map_err(|e| error(e.into()))?;
        }
        let guard_jump = self.guard_jump_present().map_err(|e| error(e.into()))?;
        let guard_chain = self
            .runner
            .chain_exists(ipv6, Table::Filter, rules::GUARD_CHAIN)
            .map_err(|e| error(e.into()))?;
        if guard_jump || guard_chain {
            self.runner
                .restore(ipv6, &[rules::guard_cleanup_input(guard_jump).as_bytes()])
                .map_err(|e| error(e.into()))?;
        }
        Ok(())
    }
}
