//! When to sync: kube-proxy's bounded-frequency rules as a sans-IO state machine. Time is
//! passed in and nothing sleeps (quinn-proto's `poll_timeout` is the model): the caller asks
//! [`SyncScheduler::poll`] whether a sync is due, runs it, reports with
//! [`SyncScheduler::finished`], and sleeps until [`SyncScheduler::poll_timeout`] or the next
//! event, whichever comes first.
//!
//! - At most one sync per `min_sync_period` (from the end of one to the start of the next):
//!   changes that arrive meanwhile are coalesced into the next sync.
//! - A full sync every `sync_period` (the first sync is full too).
//! - After a failure, the next attempt waits 1 s, then 2 s, 4 s, ... up to 30 s (changes
//!   arriving meanwhile wait for it), and is full; a success resets the backoff.
//!
//! kube-proxy 1.33's `BoundedFrequencyRunner` is the anchor: `minSyncPeriod` between runs,
//! `syncPeriod` to retry a failed run. Its periodic resync is once an hour
//! (`FullSyncPeriod`), with the iptables canary checked every `syncPeriod`; here the full
//! resync itself runs every `sync_period` (it is what repairs a tampered kernel), and
//! failures back off exponentially instead of waiting a whole `sync_period`.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use service_proxy::scheduler::{SchedulerConfig, SyncScheduler};
//!
//! let t0 = Instant::now();
//! let mut s = SyncScheduler::new(SchedulerConfig::default(), t0);
//! let due = s.poll(t0).expect("the first sync is due at once");
//! assert!(due.full);
//! s.finished(t0, true);
//! s.changed(t0);
//! // The next sync waits for --min-sync-period (1 s by default).
//! assert!(s.poll(t0).is_none());
//! assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(1)));
//! assert!(!s.poll(t0 + Duration::from_secs(1)).unwrap().full);
//! ```

use std::time::{Duration, Instant};

/// The scheduler's settings, named after kube-proxy's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SchedulerConfig {
    /// `--min-sync-period`: the least time between the end of one sync and the start of
    /// the next (default 1 s; 0 syncs on every change).
    pub min_sync_period: Duration,
    /// `--sync-period`: the time between full syncs (default 30 s).
    pub sync_period: Duration,
    /// The wait after a first failure (1 s); it doubles with each further one.
    pub backoff_initial: Duration,
    /// The longest wait after failures (30 s).
    pub backoff_max: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }
}

impl SchedulerConfig {
    /// kube-proxy's defaults with these two periods.
    pub fn new(min_sync_period: Duration, sync_period: Duration) -> Self {
        Self {
            min_sync_period,
            sync_period,
            ..Self::default()
        }
    }
}

/// A sync [`SyncScheduler::poll`] says to run now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncDue {
    /// Run it full: the first sync, the periodic one, one after a failure, or one asked for
    /// with [`SyncScheduler::request_full`].
    pub full: bool,
}

/// Decides when to sync. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct SyncScheduler {
    config: SchedulerConfig,
    /// The oldest change not yet synced.
    pending_since: Option<Instant>,
    /// The pending time a running sync took over (given back if it fails).
    taken: Option<Instant>,
    full_requested: bool,
    running: Option<SyncDue>,
    last_end: Option<Instant>,
    next_full: Instant,
    backoff: Option<Duration>,
    retry_at: Option<Instant>,
    last_success: Option<Instant>,
    failures: u64,
}

impl SyncScheduler {
    /// A scheduler whose first (full) sync is due at `now`.
    pub fn new(config: SchedulerConfig, now: Instant) -> Self {
        Self {
            config,
            pending_since: Some(now),
            taken: None,
            full_requested: true,
            running: None,
            last_end: None,
            next_full: now,
            backoff: None,
            retry_at: None,
            last_success: None,
            failures: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Something changed at `now` and needs a sync.
    pub fn changed(&mut self, now: Instant) {
        self.pending_since.get_or_insert(now);
    }

    /// The next sync should be full (e.g. a canary chain is gone).
    pub fn request_full(&mut self, now: Instant) {
        self.full_requested = true;
        self.changed(now);
    }

    /// The oldest change that no successful sync has covered yet (kube-proxy's health
    /// check reports unhealthy when this gets too old).
    pub fn pending_since(&self) -> Option<Instant> {
        match (self.pending_since, self.taken) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the last sync succeeded.
    pub fn last_success(&self) -> Option<Instant> {
        self.last_success
    }

    /// Failed syncs since the last success.
    pub fn consecutive_failures(&self) -> u64 {
        self.failures
    }

    /// Whether a sync is running (between [`SyncScheduler::poll`] and
    /// [`SyncScheduler::finished`]).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The earliest time the rate limits allow the next sync to start.
    fn earliest(&self) -> Option<Instant> {
        let rested = self.last_end.map(|t| t + self.config.min_sync_period);
        match (rested, self.retry_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    fn wanted(&self, now: Instant) -> bool {
        self.pending_since.is_some()
            || self.full_requested
            || self.retry_at.is_some()
            || now >= self.next_full
    }

    /// Whether a sync should start at `now`; if so, it is considered running until
    /// [`SyncScheduler::finished`].
    pub fn poll(&mut self, now: Instant) -> Option<SyncDue> {
        if self.running.is_some() || !self.wanted(now) {
            return None;
        }
        if self.earliest().is_some_and(|t| now < t) {
            return None;
        }
        let due = SyncDue {
            full: self.full_requested || self.retry_at.is_some() || now >= self.next_full,
        };
        self.taken = self.pending_since.take();
        self.running = Some(due);
        Some(due)
    }

    /// The sync [`SyncScheduler::poll`] started ended at `now`, successfully or not.
    pub fn finished(&mut self, now: Instant, ok: bool) {
        let Some(due) = self.running.take() else {
            return;
        };
        self.last_end = Some(now);
        if ok {
            self.taken = None;
            self.failures = 0;
            self.backoff = None;
            self.retry_at = None;
            self.last_success = Some(now);
            if due.full {
                self.full_requested = false;
                self.next_full = now + self.config.sync_period;
            }
        } else {
            self.failures += 1;
            // The changes it took are still to be synced.
            if let Some(t) = self.taken.take() {
                self.pending_since = Some(self.pending_since.map_or(t, |p| p.min(t)));
            }
            let backoff = match self.backoff {
                None => self.config.backoff_initial,
                Some(b) => (b * 2).min(self.config.backoff_max),
            };
            self.backoff = Some(backoff);
            self.retry_at = Some(now + backoff);
            self.full_requested = true;
        }
    }

    /// When to call [`SyncScheduler::poll`] next if nothing changes before (`None` while a
    /// sync runs).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.running.is_some() {
            return None;
        }
        let urgent = self.pending_since.is_some() || self.full_requested || self.retry_at.is_some();
        Some(match (urgent, self.earliest()) {
            // As soon as the rate limits allow.
            (true, Some(earliest)) => earliest,
            // Never synced: due since the change arrived.
            (true, None) => self.pending_since.unwrap_or(self.next_full),
            // Nothing waiting: the periodic full sync.
            (false, earliest) => earliest.map_or(self.next_full, |e| e.max(self.next_full)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    fn sched(min: Duration, period: Duration) -> (SyncScheduler, Instant) {
        let t0 = Instant::now();
        (
            SyncScheduler::new(SchedulerConfig::new(min, period), t0),
            t0,
        )
    }

    /// Runs every due sync from `from` to `to` in 1 ms steps, calling `changes` first at
    /// each step; returns the start times and kinds of the syncs.
    fn run(
        s: &mut SyncScheduler,
        from: Instant,
        to: Instant,
        mut changes: impl FnMut(Instant) -> bool,
        mut outcome: impl FnMut(Instant) -> bool,
    ) -> Vec<(Duration, bool)> {
        let mut out = Vec::new();
        let mut now = from;
        while now <= to {
            if changes(now) {
                s.changed(now);
            }
            if let Some(due) = s.poll(now) {
                out.push((now - from, due.full));
                s.finished(now, outcome(now));
            }
            now += MS;
        }
        out
    }

    #[test]
    fn the_first_sync_is_full_and_immediate() {
        let (mut s, t0) = sched(S, 30 * S);
        assert_eq!(s.poll_timeout(), Some(t0));
        assert_eq!(s.poll(t0), Some(SyncDue { full: true }));
        assert!(s.is_running());
        assert_eq!(s.poll_timeout(), None, "nothing else while it runs");
        s.finished(t0 + 5 * MS, true);
        assert_eq!(s.pending_since(), None);
        assert_eq!(s.poll_timeout(), Some(t0 + 5 * MS + 30 * S));
    }

    #[test]
    fn bursts_coalesce_into_one_sync_per_min_sync_period() {
        let (mut s, t0) = sched(S, 30 * S);
        s.poll(t0).unwrap();
        s.finished(t0, true);
        // A change every 10 ms for 3 s.
        let syncs = run(
            &mut s,
            t0 + MS,
            t0 + 3 * S,
            |t| (t - t0).as_millis() % 10 == 0,
            |_| true,
        );
        let starts: Vec<Duration> = syncs.iter().map(|(d, _)| *d).collect();
        assert_eq!(starts, [999 * MS, 1999 * MS, 2999 * MS], "{syncs:?}");
        assert!(syncs.iter().all(|(_, full)| !full));
    }

    #[test]
    fn a_change_right_after_a_sync_waits_min_sync_period() {
        let (mut s, t0) = sched(S, 30 * S);
        s.poll(t0).unwrap();
        s.finished(t0 + 200 * MS, true);
        s.changed(t0 + 201 * MS);
        assert_eq!(s.poll(t0 + 201 * MS), None);
        assert_eq!(s.poll_timeout(), Some(t0 + 1200 * MS));
        assert_eq!(s.poll(t0 + 1199 * MS), None);
        assert_eq!(s.poll(t0 + 1200 * MS), Some(SyncDue { full: false }));
        assert_eq!(s.pending_since(), Some(t0 + 201 * MS));
    }

    #[test]
    fn zero_min_sync_period_syncs_every_change() {
        let (mut s, t0) = sched(Duration::ZERO, 30 * S);
        s.poll(t0).unwrap();
        s.finished(t0, true);
        let syncs = run(
            &mut s,
            t0 + MS,
            t0 + 50 * MS,
            |t| (t - t0).as_millis() % 10 == 0,
            |_| true,
        );
        assert_eq!(syncs.len(), 5, "{syncs:?}");
    }

    #[test]
    fn resync_happens_at_sync_period_and_is_full() {
        let (mut s, t0) = sched(S, 30 * S);
        s.poll(t0).unwrap();
        s.finished(t0, true);
        assert_eq!(s.poll(t0 + 29 * S), None);
        assert_eq!(s.poll_timeout(), Some(t0 + 30 * S));
        assert_eq!(s.poll(t0 + 30 * S), Some(SyncDue { full: true }));
        s.finished(t0 + 30 * S, true);
        // Partial syncs in between do not move the next full one.
        s.changed(t0 + 40 * S);
        assert_eq!(s.poll(t0 + 40 * S), Some(SyncDue { full: false }));
        s.finished(t0 + 40 * S, true);
        assert_eq!(s.poll_timeout(), Some(t0 + 60 * S));
    }

    #[test]
    fn failures_back_off_and_recover() {
        let (mut s, t0) = sched(Duration::ZERO, 3600 * S);
        // Syncs fail for the first 100 s, with changes arriving all the time.
        let syncs = run(&mut s, t0, t0 + 125 * S, |_| true, |t| t - t0 >= 100 * S);
        let starts: Vec<u64> = syncs.iter().map(|(d, _)| d.as_secs()).collect();
        // 0, then +1, +2, +4, +8, +16, +30, +30, +30: the one at 121 s succeeds.
        assert_eq!(
            &starts[..9],
            [0, 1, 3, 7, 15, 31, 61, 91, 121],
            "{starts:?}"
        );
        assert!(syncs[..9].iter().all(|(_, full)| *full), "retries are full");
        // Then every change is synced again at once (min-sync-period 0), partially.
        assert_eq!(syncs[9], (121 * S + MS, false));
        assert_eq!(s.consecutive_failures(), 0);
    }

    #[test]
    fn a_failed_sync_keeps_its_changes_pending_until_a_success() {
        let (mut s, t0) = sched(Duration::ZERO, 3600 * S);
        s.poll(t0).unwrap();
        s.finished(t0, true);
        s.changed(t0 + S);
        s.poll(t0 + S).unwrap();
        s.changed(t0 + S + MS); // arrives while it runs
        s.finished(t0 + 2 * S, false);
        assert_eq!(s.pending_since(), Some(t0 + S));
        assert_eq!(s.consecutive_failures(), 1);
        assert_eq!(s.poll(t0 + 2 * S + 500 * MS), None, "backing off");
        assert_eq!(s.poll_timeout(), Some(t0 + 3 * S));
        assert_eq!(s.poll(t0 + 3 * S), Some(SyncDue { full: true }));
        s.finished(t0 + 3 * S, true);
        assert_eq!(s.pending_since(), None);
        assert_eq!(s.consecutive_failures(), 0);
        // The backoff starts over.
        s.changed(t0 + 4 * S);
        s.poll(t0 + 4 * S).unwrap();
        s.finished(t0 + 4 * S, false);
        assert_eq!(s.poll_timeout(), Some(t0 + 5 * S));
    }

    #[test]
    fn request_full_makes_the_next_sync_full() {
        let (mut s, t0) = sched(Duration::ZERO, 3600 * S);
        s.poll(t0).unwrap();
        s.finished(t0, true);
        s.request_full(t0 + S);
        assert_eq!(s.poll(t0 + S), Some(SyncDue { full: true }));
    }
}
