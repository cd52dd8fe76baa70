//! Structural diff between two snapshots.

use std::sync::Arc;

use imbl::ordmap::DiffItem;

use super::{OrdMap, ServicePortName, Snapshot};
use crate::valid::ServiceKey;

/// How an entry changed between two snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Change {
    /// New in the newer snapshot.
    Added,
    /// Gone from the newer snapshot.
    Removed,
    /// In both, with different content.
    Changed,
}

/// What changed between two snapshots, in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotDiff {
    /// Whether the node facts changed (every consumer should then resync fully).
    pub node_changed: bool,
    /// Changed Services (DNS, environment variables).
    pub services: Vec<(ServiceKey, Change)>,
    /// Changed service ports (proxy backends).
    pub ports: Vec<(ServicePortName, Change)>,
}

impl SnapshotDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.node_changed && self.services.is_empty() && self.ports.is_empty()
    }
}

fn diff_maps<K: Ord + Clone, V: PartialEq>(
    old: &OrdMap<K, Arc<V>>,
    new: &OrdMap<K, Arc<V>>,
) -> Vec<(K, Change)> {
    // Tree nodes the two maps share are skipped unvisited; shared entries compare by
    // pointer, others structurally.
    old.diff(new)
        .filter_map(|d| match d {
            DiffItem::Add(k, _) => Some((k.clone(), Change::Added)),
            DiffItem::Remove(k, _) => Some((k.clone(), Change::Removed)),
            DiffItem::Update {
                old: (k, a),
                new: (_, b),
            } => (!Arc::ptr_eq(a, b) && a != b).then(|| (k.clone(), Change::Changed)),
        })
        .collect()
}

impl Snapshot {
    /// What changed from `old` to `self`. Deterministic, in key order. Between snapshots
    /// derived from one another (a tracker's checkouts, [`Snapshot::rebuild`]) it costs
    /// about the number of changes times the tree's depth: shared tree nodes are skipped,
    /// shared entries compared by pointer.
    pub fn diff(&self, old: &Self) -> SnapshotDiff {
        SnapshotDiff {
            node_changed: self.node != old.node,
            services: diff_maps(&old.services, &self.services),
            ports: diff_maps(&old.ports, &self.ports),
        }
    }
}
