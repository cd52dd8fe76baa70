//! kube-proxy's metrics (feature `metrics`): the same names, types, labels and buckets
//! (1.33: `ip_family` labels, `[ALPHA]` help texts), kept in a Prometheus registry of the
//! [`ProxyMetrics`] and fed from what the engine reports. [`ProxyMetrics::encode`] gives
//! the text exposition format a `/metrics` endpoint serves.
//!
//! | Metric | Fed from |
//! | --- | --- |
//! | `kubeproxy_sync_proxy_rules_duration_seconds{ip_family}` (and `_full_`/`_partial_`) | each successful sync's [`SyncReport::duration`] |
//! | `kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family}` | the wall time of each successful sync |
//! | `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family}` | [`ProxyMetrics::queued`] |
//! | `kubeproxy_network_programming_duration_seconds{ip_family}` | [`EngineSync::latencies`] |
//! | `kubeproxy_sync_proxy_rules_{endpoint,service}_changes_{total,pending}` | [`ProxyMetrics::event`], reset at each sync |
//! | `kubeproxy_sync_proxy_rules_iptables_last{table,ip_family}` | iptables syncs' rule counts |
//! | `kubeproxy_sync_proxy_rules_iptables_restore_failures_total`, `..._partial_restore_failures_total`, `..._nftables_sync_failures_total` | failed syncs, by backend |
//! | `kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy,ip_family}` | [`SyncReport::no_local_endpoints`] |
//! | `kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family}` | [`SyncReport::conntrack_deleted`] |
//! | `kubeproxy_proxy_healthz_total{code}`, `kubeproxy_proxy_livez_total{code}` | [`ProxyMetrics::health_answers`] |
//! | `kubeproxy_iptables_ct_state_invalid_dropped_packets_total`, `kubeproxy_iptables_localhost_nodeports_accepted_packets_total` | [`ProxyMetrics::nfacct`] (iptables mode) |
//!
//! The sync durations are observed for successful syncs only (kube-proxy observes failed
//! ones too: the engine reads no clock, and a failed sync reports no duration).

use std::time::SystemTime;

use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder, core::Collector,
};
use service_core::model::IpFamily;
use service_core::tracker::Event;

use crate::engine::EngineSync;
#[cfg(feature = "iptables")]
use crate::proxier::BackendReport;
use crate::proxier::{ProxyMode, SyncReport};
use crate::sync::SyncKind;

/// The content type of [`ProxyMetrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `exp15`: 1 ms doubling 15 times (kube-proxy's sync duration buckets).
fn exp15() -> Vec<f64> {
    (0..15).map(|k| 0.001 * f64::from(1u32 << k)).collect()
}

/// kube-proxy's network programming buckets: 0, then 0.25 s to 300 s.
fn netprog() -> Vec<f64> {
    let mut b = vec![0.0, 0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((12..=24).map(|k| f64::from(k * 5)));
    b.extend((5..=10).map(|k| f64::from(k * 30)));
    b
}

fn family_label(family: &IpFamily) -> &'static str {
    if *family == IpFamily::Ipv6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// kube-proxy's metrics for one node agent. See the [module docs](self).
#[derive(Debug)]
pub struct ProxyMetrics {
    registry: Registry,
    sync_duration: HistogramVec,
    full_duration: HistogramVec,
    partial_duration: HistogramVec,
    last_timestamp: prometheus::GaugeVec,
    last_queued: prometheus::GaugeVec,
    netprog: HistogramVec,
    endpoint_changes_total: IntCounter,
    endpoint_changes_pending: IntGauge,
    service_changes_total: IntCounter,
    service_changes_pending: IntGauge,
    iptables_last: IntGaugeVec,
    restore_failures: IntCounterVec,
    partial_restore_failures: IntCounterVec,
    nftables_failures: IntCounterVec,
    no_local: IntGaugeVec,
    conntrack_deleted: IntCounterVec,
    healthz: IntCounterVec,
    livez: IntCounterVec,
    health_seen: [u64; 4],
    /// The nfacct counters exported so far, by counter name.
    nfacct: Vec<(String, IntCounter)>,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, format!("[ALPHA] {help}"))
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, format!("[ALPHA] {help}")).buckets(buckets),
        &["ip_family"],
    )
    .unwrap_or_else(|e| unreachable!("a fixed metric definition: {e}"))
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, c: &C) {
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| unreachable!("fixed, distinct metric names: {e}"));
}

impl ProxyMetrics {
    /// The metrics of a proxy in `mode` for `families` (backend-specific metrics exist only
    /// for their backend, as in kube-proxy; every family's series exist from the start).
    pub fn new(mode: ProxyMode, families: &[IpFamily]) -> Self {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(opts(name, help), labels)
                .unwrap_or_else(|e| unreachable!("a fixed metric definition: {e}"))
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(opts(name, help), labels)
                .unwrap_or_else(|e| unreachable!("a fixed metric definition: {e}"))
        };
        let int_counter = |name: &str, help: &str| {
            IntCounter::with_opts(opts(name, help))
                .unwrap_or_else(|e| unreachable!("a fixed metric definition: {e}"))
        };
        let int_gauge = |name: &str, help: &str| {
            IntGauge::with_opts(opts(name, help))
                .unwrap_or_else(|e| unreachable!("a fixed metric definition: {e}"))
        };
        let float_gauge = |name: &str, help: &str| {
            prometheus::GaugeVec::new(opts(name, help), &["ip_family"])
                .unwrap_or_else(|e| unreachable!("a fixed metric definition: {e}"))
        };
        let m = Self {
            sync_duration: histogram(
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
                exp15(),
            ),
            full_duration: histogram(
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for full resyncs",
                exp15(),
            ),
            partial_duration: histogram(
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for partial resyncs",
                exp15(),
            ),
            last_timestamp: float_gauge(
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
            ),
            last_queued: float_gauge(
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                "The last time a sync of proxy rules was queued",
            ),
            netprog: histogram(
                "kubeproxy_network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
                netprog(),
            ),
            endpoint_changes_total: int_counter(
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                "Cumulative proxy rules Endpoint changes",
            ),
            endpoint_changes_pending: int_gauge(
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                "Pending proxy rules Endpoint changes",
            ),
            service_changes_total: int_counter(
                "kubeproxy_sync_proxy_rules_service_changes_total",
                "Cumulative proxy rules Service changes",
            ),
            service_changes_pending: int_gauge(
                "kubeproxy_sync_proxy_rules_service_changes_pending",
                "Pending proxy rules Service changes",
            ),
            iptables_last: gauge_vec(
                "kubeproxy_sync_proxy_rules_iptables_last",
                "Number of iptables rules written by kube-proxy in last sync",
                &["table", "ip_family"],
            ),
            restore_failures: counter_vec(
                "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
                "Cumulative proxy iptables restore failures",
                &["ip_family"],
            ),
            partial_restore_failures: counter_vec(
                "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
                "Cumulative proxy iptables partial restore failures",
                &["ip_family"],
            ),
            nftables_failures: counter_vec(
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                "Cumulative proxy nftables sync failures",
                &["ip_family"],
            ),
            no_local: gauge_vec(
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                "Number of services with a Local traffic policy and no endpoints",
                &["traffic_policy", "ip_family"],
            ),
            conntrack_deleted: counter_vec(
                "kubeproxy_conntrack_reconciler_deleted_entries_total",
                "Cumulative conntrack flows deleted by conntrack reconciler",
                &["ip_family"],
            ),
            healthz: counter_vec(
                "kubeproxy_proxy_healthz_total",
                "Cumulative proxy healthz HTTP status",
                &["code"],
            ),
            livez: counter_vec(
                "kubeproxy_proxy_livez_total",
                "Cumulative proxy livez HTTP status",
                &["code"],
            ),
            health_seen: [0; 4],
            nfacct: Vec::new(),
            registry,
        };
        let r = &m.registry;
        register(r, &m.sync_duration);
        register(r, &m.last_timestamp);
        register(r, &m.last_queued);
        register(r, &m.netprog);
        register(r, &m.endpoint_changes_total);
        register(r, &m.endpoint_changes_pending);
        register(r, &m.service_changes_total);
        register(r, &m.service_changes_pending);
        register(r, &m.no_local);
        register(r, &m.conntrack_deleted);
        register(r, &m.healthz);
        register(r, &m.livez);
        match mode {
            ProxyMode::Iptables => {
                register(r, &m.full_duration);
                register(r, &m.partial_duration);
                register(r, &m.iptables_last);
                register(r, &m.restore_failures);
                register(r, &m.partial_restore_failures);
            }
            ProxyMode::Ipvs => register(r, &m.restore_failures),
            ProxyMode::Nftables => {
                register(r, &m.full_duration);
                register(r, &m.partial_duration);
                register(r, &m.nftables_failures);
            }
            _ => {}
        }
        // Every label set known from the start, so that scrapers see zeros, not gaps.
        for code in ["200", "503"] {
            m.healthz.with_label_values(&[code]);
            m.livez.with_label_values(&[code]);
        }
        for family in families {
            let f = family_label(family);
            for h in [
                &m.sync_duration,
                &m.full_duration,
                &m.partial_duration,
                &m.netprog,
            ] {
                h.with_label_values(&[f]);
            }
            for c in [
                &m.restore_failures,
                &m.partial_restore_failures,
                &m.nftables_failures,
                &m.conntrack_deleted,
            ] {
                c.with_label_values(&[f]);
            }
            for policy in ["internal", "external"] {
                m.no_local.with_label_values(&[policy, f]);
            }
        }
        m
    }

    /// An event the engine was given: counts Service and EndpointSlice (or Endpoints)
    /// changes, total and pending.
    pub fn event(&self, event: &Event) {
        match event {
            Event::ServiceUpserted(_) | Event::ServiceDeleted(_) => {
                self.service_changes_total.inc();
                self.service_changes_pending.inc();
            }
            Event::EndpointSliceUpserted(_)
            | Event::EndpointSliceDeleted(_)
            | Event::EndpointsUpserted(_)
            | Event::EndpointsDeleted(_) => {
                self.endpoint_changes_total.inc();
                self.endpoint_changes_pending.inc();
            }
            _ => {}
        }
    }

    /// A sync of `family` was asked for at `wall`.
    pub fn queued(&self, family: &IpFamily, wall: SystemTime) {
        self.last_queued
            .with_label_values(&[family_label(family)])
            .set(seconds(wall));
    }

    /// A sync ran at `wall`: durations, timestamps, latencies, counts and failures.
    pub fn sync(&self, sync: &EngineSync, wall: SystemTime) {
        self.endpoint_changes_pending.set(0);
        self.service_changes_pending.set(0);
        for (family, result) in &sync.results {
            let f = family_label(family);
            match result {
                Ok(report) => self.report(f, report, wall),
                Err(e) => {
                    let c = match e.mode() {
                        ProxyMode::Iptables | ProxyMode::Ipvs => &self.restore_failures,
                        ProxyMode::Nftables => &self.nftables_failures,
                        _ => continue,
                    };
                    c.with_label_values(&[f]).inc();
                }
            }
            if sync.ok() {
                for latency in &sync.latencies {
                    self.netprog
                        .with_label_values(&[f])
                        .observe(latency.as_secs_f64());
                }
            }
        }
    }

    fn report(&self, family: &str, report: &SyncReport, wall: SystemTime) {
        let secs = report.duration.as_secs_f64();
        self.sync_duration
            .with_label_values(&[family])
            .observe(secs);
        match report.kind {
            SyncKind::Full => self
                .full_duration
                .with_label_values(&[family])
                .observe(secs),
            _ => self
                .partial_duration
                .with_label_values(&[family])
                .observe(secs),
        }
        self.last_timestamp
            .with_label_values(&[family])
            .set(seconds(wall));
        let (internal, external) = report.no_local_endpoints;
        self.no_local
            .with_label_values(&["internal", family])
            .set(i64::try_from(internal).unwrap_or(i64::MAX));
        self.no_local
            .with_label_values(&["external", family])
            .set(i64::try_from(external).unwrap_or(i64::MAX));
        self.conntrack_deleted
            .with_label_values(&[family])
            .inc_by(report.conntrack_deleted as u64);
        #[cfg(feature = "iptables")]
        if let BackendReport::Iptables(d) = &report.detail {
            let n = |x: usize| i64::try_from(x).unwrap_or(i64::MAX);
            self.iptables_last
                .with_label_values(&["filter", family])
                .set(n(d.filter_rules));
            self.iptables_last
                .with_label_values(&["nat", family])
                .set(n(d.nat_rules));
            if d.recovered {
                self.partial_restore_failures
                    .with_label_values(&[family])
                    .inc();
            }
        }
    }

    /// The health servers' answers so far, by endpoint and code (`/healthz` 200 and 503,
    /// `/livez` 200 and 503): the counters move by what is new since the last call.
    pub fn health_answers(&mut self, counts: [u64; 4]) {
        let targets = [
            (&self.healthz, "200"),
            (&self.healthz, "503"),
            (&self.livez, "200"),
            (&self.livez, "503"),
        ];
        for (i, (c, code)) in targets.into_iter().enumerate() {
            let new = counts[i].saturating_sub(self.health_seen[i]);
            c.with_label_values(&[code]).inc_by(new);
        }
        self.health_seen = counts;
    }

    /// An nfacct counter's packets as the kernel reports them now (iptables mode, see
    /// [`crate::nfacct`]): `ct_state_invalid_dropped_pkts` becomes
    /// `kubeproxy_iptables_ct_state_invalid_dropped_packets_total` and
    /// `localhost_nps_accepted_pkts` `kubeproxy_iptables_localhost_nodeports_accepted_packets_total`,
    /// each exported from its first value on (kube-proxy exports only the counters it could
    /// create). Other names are ignored; a counter that went backwards (recreated) restarts
    /// from its new value.
    pub fn nfacct(&mut self, counter: &str, packets: u64) {
        let (name, help) = match counter {
            "ct_state_invalid_dropped_pkts" => (
                "kubeproxy_iptables_ct_state_invalid_dropped_packets_total",
                "packets dropped by iptables to work around conntrack problems",
            ),
            "localhost_nps_accepted_pkts" => (
                "kubeproxy_iptables_localhost_nodeports_accepted_packets_total",
                "Number of packets accepted on nodeports of loopback interface",
            ),
            _ => return,
        };
        let c = match self.nfacct.iter().find(|(n, _)| n == counter) {
            Some((_, c)) => c.clone(),
            None => {
                let c = IntCounter::with_opts(opts(name, help))
                    .unwrap_or_else(|e| unreachable!("a fixed metric definition: {e}"));
                register(&self.registry, &c);
                self.nfacct.push((counter.to_owned(), c.clone()));
                c
            }
        };
        match packets.checked_sub(c.get()) {
            Some(more) => c.inc_by(more),
            None => {
                c.reset();
                c.inc_by(packets);
            }
        }
    }

    /// The registry, to add metrics of your own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The metrics in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Writing to a Vec does not fail, and every metric is well formed.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

fn seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_kube_proxys() {
        let e = exp15();
        assert_eq!(e.len(), 15);
        assert!((e[14] - 16.384).abs() < 1e-9);
        let n = netprog();
        assert_eq!(n.len(), 81);
        assert_eq!(
            (n[0], n[1], n[3], n[61], n[62], n[75], n[80]),
            (0.0, 0.25, 1.0, 59.0, 60.0, 150.0, 300.0)
        );
    }

    #[test]
    fn names_types_and_labels() {
        let mut m = ProxyMetrics::new(ProxyMode::Nftables, &[IpFamily::Ipv4]);
        m.event(&Event::ServiceDeleted(
            service_core::valid::ServiceKey::new("a", "b"),
        ));
        m.queued(&IpFamily::Ipv4, SystemTime::UNIX_EPOCH);
        m.health_answers([2, 1, 0, 0]);
        let text = m.encode();
        for line in [
            "# TYPE kubeproxy_sync_proxy_rules_service_changes_total counter",
            "kubeproxy_sync_proxy_rules_service_changes_total 1",
            "kubeproxy_sync_proxy_rules_service_changes_pending 1",
            "# HELP kubeproxy_sync_proxy_rules_duration_seconds [ALPHA] SyncProxyRules latency in seconds",
            "# TYPE kubeproxy_network_programming_duration_seconds histogram",
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family=\"IPv4\"} 0",
            "kubeproxy_proxy_healthz_total{code=\"200\"} 2",
            "kubeproxy_proxy_healthz_total{code=\"503\"} 1",
            "kubeproxy_proxy_livez_total{code=\"200\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        // Counters move by the difference.
        m.health_answers([3, 1, 0, 0]);
        assert!(
            m.encode()
                .contains("kubeproxy_proxy_healthz_total{code=\"200\"} 3")
        );
        // Backend metrics only for their backend.
        assert!(text.contains(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv4\"} 0"
        ));
        assert!(!text.contains("iptables"));
        let ipt =
            ProxyMetrics::new(ProxyMode::Iptables, &[IpFamily::Ipv4, IpFamily::Ipv6]).encode();
        assert!(ipt.contains(
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family=\"IPv6\"} 0"
        ));
    }

    #[test]
    fn nfacct_counters_appear_with_their_first_value_and_follow_the_kernel() {
        let mut m = ProxyMetrics::new(ProxyMode::Iptables, &[IpFamily::Ipv4]);
        assert!(!m.encode().contains("nodeports_accepted"));
        m.nfacct("localhost_nps_accepted_pkts", 3);
        m.nfacct("ct_state_invalid_dropped_pkts", 0);
        m.nfacct("someone_elses", 9);
        let text = m.encode();
        for line in [
            "# TYPE kubeproxy_iptables_localhost_nodeports_accepted_packets_total counter",
            "kubeproxy_iptables_localhost_nodeports_accepted_packets_total 3",
            "kubeproxy_iptables_ct_state_invalid_dropped_packets_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        assert!(!text.contains("someone_elses"));
        m.nfacct("localhost_nps_accepted_pkts", 10);
        assert!(
            m.encode()
                .contains("kubeproxy_iptables_localhost_nodeports_accepted_packets_total 10")
        );
        // Recreated by someone: the counter restarts from what the kernel says.
        m.nfacct("localhost_nps_accepted_pkts", 2);
        assert!(
            m.encode()
                .contains("kubeproxy_iptables_localhost_nodeports_accepted_packets_total 2")
        );
    }
}
