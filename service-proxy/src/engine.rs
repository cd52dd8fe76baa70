//! [`Engine`]: the change tracker, the sync scheduler and one proxier per IP family, tied
//! together the way the `proxy` daemon runs them. Sans-IO itself: events, the current time
//! and the wall clock come in as arguments; only the proxiers touch the kernel.
//!
//! ```text
//! events ──apply──► ChangeTracker ──► SyncScheduler ──poll(now)──► for each family:
//!                                                                  Proxier::sync
//!                                       EngineSync { reports, latencies } ◄──┘
//! ```
//!
//! One scheduler serves every family: a sync runs each proxier in turn and succeeds when
//! all do. The changes handed to a proxier are those since *its* last successful sync, so a
//! failed family catches up on its next attempt. Network-programming latency (kube-proxy's
//! `network_programming_duration_seconds`) is measured from each endpoint change's time to
//! the end of the first sync that succeeded for every family after it.
//!
//! ```
//! use std::time::{Instant, SystemTime};
//! use service_core::model::IpFamily;
//! use service_core::snapshot::NodeInfo;
//! use service_proxy::dry_run::DryRun;
//! use service_proxy::engine::Engine;
//! use service_proxy::iptables::IptablesConfig;
//! use service_proxy::{ChangeTracker, ProxyConfig, SchedulerConfig};
//!
//! let node = NodeInfo::new("node-a", vec!["192.168.0.2".parse()?]);
//! let proxier = DryRun::iptables(IptablesConfig::new(ProxyConfig::default()), IpFamily::Ipv4);
//! let now = Instant::now();
//! let mut engine = Engine::new(ChangeTracker::new(node), SchedulerConfig::default(), vec![proxier], now);
//! // The first sync is due at once (and full); events would be `engine.apply(...)`.
//! let sync = engine.poll(now, SystemTime::now()).expect("due");
//! assert!(sync.due.full && sync.ok());
//! assert!(engine.poll(now, SystemTime::now()).is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use service_core::model::IpFamily;
use service_core::snapshot::{ServicePortName, Snapshot};
use service_core::tracker::{ChangeTracker, Event, TrackerError};

use crate::proxier::{Proxier, SyncError, SyncReport, SyncRequest};
use crate::scheduler::{SchedulerConfig, SyncDue, SyncScheduler};

/// One family's proxier and what it has not caught up on yet.
#[derive(Debug)]
struct Lane<P> {
    proxier: P,
    /// Service ports changed since this proxier's last successful sync.
    behind: BTreeSet<ServicePortName>,
    /// Whether its next sync must be full (a failure, the node changed).
    needs_full: bool,
}

/// What one sync of every family did.
#[derive(Debug)]
#[non_exhaustive]
pub struct EngineSync {
    /// What the scheduler asked for.
    pub due: SyncDue,
    /// Each family's outcome, in the order the proxiers were given.
    pub results: Vec<(IpFamily, Result<SyncReport, SyncError>)>,
    /// Network-programming latencies observed by this sync (empty unless it succeeded for
    /// every family): from each endpoint change to the end of the sync.
    pub latencies: Vec<Duration>,
    /// Service and endpoint events since the previous sync.
    pub events: (usize, usize),
}

impl EngineSync {
    /// Whether every family synced.
    pub fn ok(&self) -> bool {
        self.results.iter().all(|(_, r)| r.is_ok())
    }
}

/// The tracker, the scheduler and the proxiers. See the [module docs](self).
#[derive(Debug)]
pub struct Engine<P> {
    tracker: ChangeTracker,
    scheduler: SyncScheduler,
    lanes: Vec<Lane<P>>,
    /// Trigger times of endpoint changes not yet programmed everywhere.
    unobserved: Vec<SystemTime>,
    snapshot: Snapshot,
}

impl<P: Proxier> Engine<P> {
    /// An engine whose first (full) sync is due at `now`.
    pub fn new(
        tracker: ChangeTracker,
        config: SchedulerConfig,
        proxiers: Vec<P>,
        now: Instant,
    ) -> Self {
        Self {
            snapshot: tracker.snapshot().clone(),
            tracker,
            scheduler: SyncScheduler::new(config, now),
            lanes: proxiers
                .into_iter()
                .map(|proxier| Lane {
                    proxier,
                    behind: BTreeSet::new(),
                    needs_full: true,
                })
                .collect(),
            unobserved: Vec::new(),
        }
    }

    /// Applies an event that happened at `at`, observed at `now`.
    ///
    /// # Errors
    /// The tracker refused the object (see [`ChangeTracker::apply`]).
    pub fn apply(
        &mut self,
        event: Event,
        at: SystemTime,
        now: Instant,
    ) -> Result<(), TrackerError> {
        self.tracker.apply(event, at)?;
        if self.tracker.has_pending() {
            self.scheduler.changed(now);
        }
        Ok(())
    }

    /// The next sync should be full.
    pub fn request_full(&mut self, now: Instant) {
        self.scheduler.request_full(now);
    }

    /// Runs a sync if one is due at `now`. `wall` is the same moment on the wall clock: the
    /// latencies are measured from the events' times to `wall` plus the time the sync took
    /// (the proxiers' reported durations; the engine reads no clock).
    pub fn poll(&mut self, now: Instant, wall: SystemTime) -> Option<EngineSync> {
        let due = self.scheduler.poll(now)?;
        let (snapshot, changes) = self.tracker.checkout();
        let span = tracing::info_span!(
            "sync",
            full = due.full,
            service_ports_changed = changes.ports.len(),
            service_events = changes.service_events,
            endpoint_events = changes.endpoint_events,
        );
        let _entered = span.enter();
        self.snapshot = snapshot;
        self.unobserved
            .extend(changes.trigger_times.iter().copied());
        let mut results = Vec::with_capacity(self.lanes.len());
        for lane in &mut self.lanes {
            lane.behind.extend(changes.ports.iter().cloned());
            if changes.node_changed {
                lane.needs_full = true;
            }
            let request = SyncRequest::new(&self.snapshot, now)
                .with_changes(&lane.behind)
                .full(due.full || lane.needs_full);
            let result = lane.proxier.sync(request);
            match &result {
                Ok(r) => tracing::debug!(
                    family = lane.proxier.family().as_str(),
                    kind = ?r.kind,
                    duration = ?r.duration,
                    service_ports = r.service_ports_changed,
                    endpoints = r.endpoints_changed,
                    repaired = r.repaired,
                    "synced"
                ),
                Err(e) => tracing::debug!(
                    family = lane.proxier.family().as_str(),
                    error = %e,
                    "sync failed"
                ),
            }
            if result.is_ok() {
                lane.behind.clear();
                lane.needs_full = false;
            } else {
                lane.needs_full = true;
            }
            results.push((lane.proxier.family(), result));
        }
        let ok = results.iter().all(|(_, r)| r.is_ok());
        let end = now
            + results
                .iter()
                .filter_map(|(_, r)| r.as_ref().ok().map(|r| r.duration))
                .sum::<Duration>();
        self.scheduler.finished(end, ok);
        let latencies = if ok {
            std::mem::take(&mut self.unobserved)
                .into_iter()
                .map(|t| wall.duration_since(t).unwrap_or_default())
                .collect()
        } else {
            Vec::new()
        };
        Some(EngineSync {
            due,
            results,
            latencies,
            events: (changes.service_events, changes.endpoint_events),
        })
    }

    /// When to call [`Engine::poll`] next if no event arrives before.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.scheduler.poll_timeout()
    }

    /// The tracker (the current objects and snapshot).
    pub fn tracker(&self) -> &ChangeTracker {
        &self.tracker
    }

    /// The tracker, to apply events without waking the scheduler (e.g. a batch; call
    /// [`Engine::request_full`] or apply one more event through [`Engine::apply`] after).
    pub fn tracker_mut(&mut self) -> &mut ChangeTracker {
        &mut self.tracker
    }

    /// The scheduler (pending changes, last success: the health check reads these).
    pub fn scheduler(&self) -> &SyncScheduler {
        &self.scheduler
    }

    /// The snapshot of the last sync.
    pub fn synced_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The proxiers, in the order given.
    pub fn proxiers_mut(&mut self) -> impl Iterator<Item = &mut P> {
        self.lanes.iter_mut().map(|l| &mut l.proxier)
    }

    /// Removes what every proxier installed; the first error is returned after all ran.
    ///
    /// # Errors
    /// A proxier's cleanup failed.
    pub fn cleanup(&mut self) -> Result<(), SyncError> {
        let mut first = None;
        for lane in &mut self.lanes {
            lane.needs_full = true;
            if let Err(e) = lane.proxier.cleanup() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}
