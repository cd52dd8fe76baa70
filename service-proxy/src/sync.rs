//! Full or partial: what each proxier remembers of its last successful sync, and how it
//! decides what the next one rewrites.

use std::collections::BTreeSet;

use service_core::snapshot::{ServicePortName, Snapshot};

/// What kind of sync to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SyncKind {
    /// Rewrite everything (or, for incremental backends, compare every service port).
    Full,
    /// Rewrite the top-level dispatch plus the changed service ports.
    Partial,
}

/// The plan for one sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SyncPlan {
    /// Full or partial.
    pub(crate) kind: SyncKind,
    /// The service ports that changed since the last successful sync (empty for full).
    pub(crate) changed: Vec<ServicePortName>,
}

impl SyncPlan {
    /// Whether there is nothing to do (a partial sync with no change).
    #[cfg_attr(not(feature = "iptables"), allow(dead_code))]
    pub(crate) fn is_noop(&self) -> bool {
        self.kind == SyncKind::Partial && self.changed.is_empty()
    }

    /// The changed service ports as a set, for a partial sync (`None` for a full one,
    /// which looks at every port).
    #[cfg_attr(
        not(all(feature = "apply", any(feature = "iptables", feature = "nftables"))),
        allow(dead_code)
    )]
    pub(crate) fn changed_set(&self) -> Option<BTreeSet<ServicePortName>> {
        (self.kind == SyncKind::Partial).then(|| self.changed.iter().cloned().collect())
    }

    fn full() -> Self {
        Self {
            kind: SyncKind::Full,
            changed: Vec::new(),
        }
    }
}

/// Tracks the last snapshot that reached the kernel and decides how to sync the next.
///
/// A full sync happens first, after any failure, when the node facts change, and when
/// asked for ([`SyncEngine::force_full`], e.g. a canary chain found missing or a periodic
/// resync); otherwise only the changed service ports are re-rendered: those the caller
/// names (from a change tracker), or those that differ from the last committed snapshot.
#[derive(Clone, Debug, Default)]
pub(crate) struct SyncEngine {
    committed: Option<Snapshot>,
    needs_full: bool,
}

impl SyncEngine {
    /// A fresh engine: its first plan is a full sync.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The plan to bring the kernel from the last committed snapshot to `next`.
    pub(crate) fn plan(
        &self,
        next: &Snapshot,
        changed: Option<&BTreeSet<ServicePortName>>,
    ) -> SyncPlan {
        let Some(prev) = self.committed.as_ref().filter(|_| !self.needs_full) else {
            return SyncPlan::full();
        };
        if next.node != prev.node {
            return SyncPlan::full();
        }
        let changed = match changed {
            Some(names) => names.iter().cloned().collect(),
            None => next
                .diff(prev)
                .ports
                .into_iter()
                .map(|(name, _)| name)
                .collect(),
        };
        SyncPlan {
            kind: SyncKind::Partial,
            changed,
        }
    }

    /// Records that `snapshot` reached the kernel.
    pub(crate) fn committed(&mut self, snapshot: Snapshot) {
        self.committed = Some(snapshot);
        self.needs_full = false;
    }

    /// Records a failed sync: the next one is full.
    #[cfg_attr(
        not(all(feature = "apply", any(feature = "iptables", feature = "nftables"))),
        allow(dead_code)
    )]
    pub(crate) fn failed(&mut self) {
        self.needs_full = true;
    }

    /// Forces the next sync to be full.
    pub(crate) fn force_full(&mut self) {
        self.needs_full = true;
    }

    /// The last committed snapshot.
    pub(crate) fn last(&self) -> Option<&Snapshot> {
        self.committed.as_ref()
    }
}
