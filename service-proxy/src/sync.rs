//! The sync engine: decides between a full and a partial sync.

use service_core::snapshot::{ServicePortName, Snapshot};

/// What kind of sync to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SyncKind {
    /// Rewrite everything.
    Full,
    /// Rewrite the top-level dispatch plus the changed service ports.
    Partial,
}

/// The plan for one sync.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncPlan {
    /// Full or partial.
    pub kind: SyncKind,
    /// The service ports that changed since the last successful sync (empty for full).
    pub changed: Vec<ServicePortName>,
}

impl SyncPlan {
    /// Whether there is nothing to do (a partial sync with no change).
    pub fn is_noop(&self) -> bool {
        self.kind == SyncKind::Partial && self.changed.is_empty()
    }
}

/// Tracks the last snapshot that reached the kernel and decides how to sync the next.
///
/// A full sync happens first, after any failure, when the node facts change, and when
/// asked for ([`SyncEngine::force_full`], e.g. a canary chain found missing or a periodic
/// resync); otherwise only the service ports that differ from the last committed snapshot
/// are re-rendered.
#[derive(Clone, Debug, Default)]
pub struct SyncEngine {
    committed: Option<Snapshot>,
    needs_full: bool,
}

impl SyncEngine {
    /// A fresh engine: its first plan is a full sync.
    pub fn new() -> Self {
        Self::default()
    }

    /// The plan to bring the kernel from the last committed snapshot to `next`.
    pub fn plan(&self, next: &Snapshot) -> SyncPlan {
        let Some(prev) = self.committed.as_ref().filter(|_| !self.needs_full) else {
            return SyncPlan {
                kind: SyncKind::Full,
                changed: Vec::new(),
            };
        };
        let diff = next.diff(prev);
        if diff.node_changed {
            return SyncPlan {
                kind: SyncKind::Full,
                changed: Vec::new(),
            };
        }
        SyncPlan {
            kind: SyncKind::Partial,
            changed: diff.ports.into_iter().map(|(name, _)| name).collect(),
        }
    }

    /// Records that `snapshot` reached the kernel.
    pub fn committed(&mut self, snapshot: Snapshot) {
        self.committed = Some(snapshot);
        self.needs_full = false;
    }

    /// Records a failed sync: the next one is full.
    pub fn failed(&mut self) {
        self.needs_full = true;
    }

    /// Forces the next sync to be full.
    pub fn force_full(&mut self) {
        self.needs_full = true;
    }

    /// The last committed snapshot.
    pub fn last(&self) -> Option<&Snapshot> {
        self.committed.as_ref()
    }
}
