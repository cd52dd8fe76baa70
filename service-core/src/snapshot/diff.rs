//! Structural diff between two snapshots.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{ServicePortName, Snapshot};
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
    old: &BTreeMap<K, Arc<V>>,
    new: &BTreeMap<K, Arc<V>>,
) -> Vec<(K, Change)> {
    let mut out = Vec::new();
    let mut a = old.iter().peekable();
    let mut b = new.iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((ka, _)), None) => {
                out.push(((*ka).clone(), Change::Removed));
                a.next();
            }
            (None, Some((kb, _))) => {
                out.push(((*kb).clone(), Change::Added));
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    out.push(((*ka).clone(), Change::Removed));
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.push(((*kb).clone(), Change::Added));
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    // Shared entries (the common case between consecutive builds) compare
                    // by pointer; others structurally.
                    if !Arc::ptr_eq(va, vb) && va != vb {
                        out.push(((*ka).clone(), Change::Changed));
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
    out
}

impl Snapshot {
    /// What changed from `old` to `self`. Deterministic, in key order; linear in the number
    /// of entries, with unchanged shared entries compared by pointer.
    pub fn diff(&self, old: &Self) -> SnapshotDiff {
        SnapshotDiff {
            node_changed: self.node != old.node,
            services: diff_maps(&old.services, &self.services),
            ports: diff_maps(&old.ports, &self.ports),
        }
    }
}
