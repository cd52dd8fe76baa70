//! [`UserspaceProxier`]: the portals and the nat rules that lead to them, kept in sync.

use std::io;

use service_core::snapshot::Snapshot;

use super::rules::{self, PortalChain};
use super::{UserspaceProxy, UserspaceSync};
use crate::iptables::Table;
use crate::iptables::apply::{ApplyError, Runner};

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

/// What a sync did.
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
}

impl<R: Runner> UserspaceProxier<R> {
    /// Portals from `proxy`, rules through `runner` (its iptables flavour).
    pub fn new(proxy: UserspaceProxy, runner: R) -> Self {
        Self { proxy, runner }
    }

    /// The portals.
    pub fn proxy(&self) -> &UserspaceProxy {
        &self.proxy
    }

    fn ipv6(&self) -> bool {
        self.proxy.config.family == service_core::model::IpFamily::Ipv6
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

    /// Opens and closes portals for `snapshot`, then rewrites the redirect rules (their
    /// chains are small: one rule per address and port).
    ///
    /// # Errors
    /// A portal could not listen or the rules were refused.
    pub fn sync(&mut self, snapshot: &Snapshot) -> Result<UserspaceReport, UserspaceError> {
        let portals = self.proxy.sync(snapshot)?;
        let rules = rules::render(snapshot, &self.proxy.portals(), &self.proxy.config.family);
        let present = self.jumps_present()?;
        let missing: Vec<PortalChain> = PortalChain::ALL
            .into_iter()
            .filter(|c| !present.contains(c))
            .collect();
        let input = rules::restore_input(&rules, &missing);
        let ipv6 = self.ipv6();
        self.runner.restore(ipv6, &[input.as_bytes()])?;
        Ok(UserspaceReport {
            portals,
            rules: rules.len(),
        })
    }

    /// Removes the rules and stops listening.
    ///
    /// # Errors
    /// The rules could not be removed.
    pub fn cleanup(&mut self) -> Result<(), ApplyError> {
        self.proxy.shutdown();
        let present = self.jumps_present()?;
        let ipv6 = self.ipv6();
        let exists = PortalChain::ALL
            .into_iter()
            .map(|c| self.runner.chain_exists(ipv6, Table::Nat, c.name()))
            .collect::<Result<Vec<bool>, _>>()?;
        if exists.iter().any(|e| *e) || !present.is_empty() {
            self.runner
                .restore(ipv6, &[rules::cleanup_input(&present).as_bytes()])?;
        }
        Ok(())
    }
}
