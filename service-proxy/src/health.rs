//! kube-proxy's health surfaces, as pure state and answers (the HTTP servers that carry
//! them are in [`crate::serve`], feature `serve`):
//!
//! - [`ProxyHealth`]: whether the proxy keeps its rules fresh — kube-proxy's `/healthz` and
//!   `/livez` rule. Each family records when a sync became due ([`ProxyHealth::queued`])
//!   and when one succeeded ([`ProxyHealth::updated`]); a family is unhealthy when a sync
//!   has been due for longer than the timeout (kube-proxy: twice the sync period). The
//!   answers are kube-proxy 1.33's JSON ([`ProxyHealth::healthz`], [`ProxyHealth::livez`]).
//! - [`health_checks`]: what each LoadBalancer Service with `externalTrafficPolicy: Local`
//!   answers on its `healthCheckNodePort` — how many ready endpoints it has on this node
//!   ([`ServiceHealthCheck::response`]): 200 when there are some and the proxy is healthy,
//!   503 otherwise, which is how a cloud load balancer learns which nodes to send traffic to.
//!
//! Time comes in as arguments: [`Instant`]s for the timeout, [`SystemTime`]s for the
//! answers' timestamps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use service_core::model::IpFamily;
use service_core::snapshot::Snapshot;
use service_core::time::format_rfc3339_nanos;
use service_core::valid::ServiceKey;

/// An HTTP answer: status, headers (beyond `Content-Length` and `Date`) and body.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names and values.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: String,
}

impl Response {
    /// An answer with a JSON body and kube-proxy's headers.
    pub fn json(status: u16, body: String) -> Self {
        Self {
            status,
            headers: vec![
                ("Content-Type", "application/json".into()),
                ("X-Content-Type-Options", "nosniff".into()),
            ],
            body,
        }
    }

    /// A plain-text answer.
    pub fn text(status: u16, content_type: &str, body: String) -> Self {
        Self {
            status,
            headers: vec![
                ("Content-Type", content_type.to_owned()),
                ("X-Content-Type-Options", "nosniff".into()),
            ],
            body,
        }
    }

    /// Go's `404 page not found`.
    pub fn not_found() -> Self {
        Self::text(
            404,
            "text/plain; charset=utf-8",
            "404 page not found\n".into(),
        )
    }
}

/// A JSON string literal.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[derive(Clone, Copy, Debug, Default)]
struct FamilyState {
    /// The last successful sync (or the start), monotonic and wall.
    updated: Option<(Instant, SystemTime)>,
    /// When the oldest sync still due was asked for.
    pending: Option<Instant>,
}

/// kube-proxy's proxy health (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct ProxyHealth {
    timeout: Duration,
    families: BTreeMap<&'static str, FamilyState>,
}

/// One family's part of a health answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FamilyHealth {
    /// `IPv4` or `IPv6`.
    pub family: &'static str,
    /// Its last successful sync.
    pub last_updated: SystemTime,
    /// Whether no sync has been due for longer than the timeout.
    pub healthy: bool,
}

fn family_name(family: &IpFamily) -> &'static str {
    if *family == IpFamily::Ipv6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

impl ProxyHealth {
    /// Health with this timeout (kube-proxy: twice `--sync-period`, 60 s by default).
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            families: BTreeMap::new(),
        }
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A sync of `family` became due at `now` (a change arrived). Only the oldest pending
    /// time counts: later calls before the next success change nothing.
    pub fn queued(&mut self, family: &IpFamily, now: Instant) {
        let f = self.families.entry(family_name(family)).or_default();
        f.pending.get_or_insert(now);
    }

    /// `family` synced successfully at `now` (or its sync loop started): nothing is pending.
    pub fn updated(&mut self, family: &IpFamily, now: Instant, wall: SystemTime) {
        let f = self.families.entry(family_name(family)).or_default();
        f.updated = Some((now, wall));
        f.pending = None;
    }

    fn family_healthy(&self, f: &FamilyState, now: Instant) -> bool {
        f.pending
            .is_none_or(|p| now.saturating_duration_since(p) < self.timeout)
    }

    /// Each family that has ever been updated, with its state (families never updated are
    /// not judged, as in kube-proxy).
    pub fn families(&self, now: Instant) -> Vec<FamilyHealth> {
        self.families
            .iter()
            .filter_map(|(name, f)| {
                f.updated.map(|(_, wall)| FamilyHealth {
                    family: name,
                    last_updated: wall,
                    healthy: self.family_healthy(f, now),
                })
            })
            .collect()
    }

    /// Whether every family that has been updated is healthy.
    pub fn is_healthy(&self, now: Instant) -> bool {
        self.families(now).iter().all(|f| f.healthy)
    }

    fn answer(&self, now: Instant, wall: SystemTime, node_eligible: Option<bool>) -> Response {
        let families = self.families(now);
        let healthy = families.iter().all(|f| f.healthy);
        let ok = healthy && node_eligible != Some(false);
        let last = families
            .iter()
            .map(|f| f.last_updated)
            .max()
            .unwrap_or(SystemTime::UNIX_EPOCH);
        // kube-proxy reports "now" as the last update while healthy (older clients read it
        // as a freshness stamp).
        let last = if ok { wall } else { last };
        let mut body = format!(
            "{{\"lastUpdated\":{},\"currentTime\":{}",
            quote(&format_rfc3339_nanos(last)),
            quote(&format_rfc3339_nanos(wall))
        );
        if let Some(e) = node_eligible {
            body.push_str(&format!(",\"nodeEligible\":{e}"));
        }
        body.push_str(&format!(",\"healthy\":{healthy}"));
        if !families.is_empty() {
            let parts: Vec<String> = families
                .iter()
                .map(|f| {
                    format!(
                        "{}:{{\"lastUpdated\":{},\"healthy\":{}}}",
                        quote(f.family),
                        quote(&format_rfc3339_nanos(f.last_updated)),
                        f.healthy
                    )
                })
                .collect();
            body.push_str(&format!(",\"status\":{{{}}}", parts.join(",")));
        }
        body.push('}');
        Response::json(if ok { 200 } else { 503 }, body)
    }

    /// kube-proxy's `/healthz`: 200 when healthy and the node is eligible, 503 otherwise.
    /// `node_eligible` is `None` when the Node object is not known (then it is left out of
    /// the body and does not count; kube-proxy 1.33 would answer 503 until it knows the
    /// Node — we read no Node when none is given, so we do not hold that against it).
    pub fn healthz(&self, now: Instant, wall: SystemTime, node_eligible: Option<bool>) -> Response {
        self.answer(now, wall, node_eligible)
    }

    /// kube-proxy's `/livez`: 200 when healthy (the node's eligibility does not count).
    pub fn livez(&self, now: Instant, wall: SystemTime) -> Response {
        self.answer(now, wall, None)
    }
}

/// Whether a Node may take load-balancer traffic (kube-proxy, KEP-3836): not when it is
/// being deleted, nor when the cluster autoscaler has tainted it for deletion.
pub fn node_eligible(node: &service_core::model::Node) -> bool {
    let deleting = node
        .metadata
        .deletion_timestamp
        .as_deref()
        .is_some_and(|t| !t.is_empty());
    !deleting && !node.has_taint("ToBeDeletedByClusterAutoscaler")
}

/// One Service's health check: the port it is answered on and the count it answers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceHealthCheck {
    /// The Service.
    pub service: ServiceKey,
    /// Its `healthCheckNodePort`.
    pub port: u16,
    /// Its ready endpoints on this node: distinct addresses over all its ports (of the
    /// family with the most, so that a dual-stack pod counts once). Serving but terminating
    /// endpoints do not count, as in kube-proxy.
    pub local_endpoints: usize,
}

impl ServiceHealthCheck {
    /// kube-proxy's answer: 200 with the count when there are local endpoints and the
    /// proxy is healthy, 503 otherwise; the body is Go's indented JSON, and the count is
    /// also in `X-Load-Balancing-Endpoint-Weight`.
    pub fn response(&self, proxy_healthy: bool) -> Response {
        let body = format!(
            "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
            quote(&self.service.namespace),
            quote(&self.service.name),
            self.local_endpoints,
            proxy_healthy
        );
        let ok = self.local_endpoints > 0 && proxy_healthy;
        let mut r = Response::json(if ok { 200 } else { 503 }, body);
        r.headers.push((
            "X-Load-Balancing-Endpoint-Weight",
            self.local_endpoints.to_string(),
        ));
        r
    }
}

/// The health checks the snapshot calls for: every Service with a health-check node port
/// (a LoadBalancer with `externalTrafficPolicy: Local`), by port. Two Services claiming one
/// port (the allocator never allows it) keep the first by name.
pub fn health_checks(snapshot: &Snapshot) -> BTreeMap<u16, ServiceHealthCheck> {
    let mut by_service: BTreeMap<&ServiceKey, (u16, [BTreeSet<IpAddr>; 2])> = BTreeMap::new();
    for port in snapshot.ports.values() {
        let Some(hc) = port.health_check_node_port else {
            continue;
        };
        let entry = by_service
            .entry(&port.name.service)
            .or_insert_with(|| (hc, [BTreeSet::new(), BTreeSet::new()]));
        for (i, plan) in [&port.ipv4, &port.ipv6].into_iter().enumerate() {
            if let Some(plan) = plan {
                entry.1[i].extend(
                    plan.endpoints
                        .iter()
                        .filter(|e| e.is_local && e.ready)
                        .map(|e| e.ip),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    for (service, (port, [v4, v6])) in by_service {
        out.entry(port).or_insert_with(|| ServiceHealthCheck {
            service: service.clone(),
            port,
            local_endpoints: v4.len().max(v6.len()),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_core::cluster::Cluster;
    use service_core::model::Endpoint;
    use service_core::model::{EndpointSlice, Service, ServicePort, TrafficPolicy};
    use service_core::snapshot::NodeInfo;

    fn wall(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_sync_due_for_longer_than_the_timeout_is_unhealthy() {
        let t0 = Instant::now();
        let mut h = ProxyHealth::new(Duration::from_secs(60));
        // Never updated: nothing to judge.
        h.queued(&IpFamily::Ipv4, t0);
        assert!(h.is_healthy(t0 + Duration::from_secs(600)));
        h.updated(&IpFamily::Ipv4, t0, wall(1_000));
        h.queued(&IpFamily::Ipv4, t0 + Duration::from_secs(1));
        // Later changes do not move the oldest pending time.
        h.queued(&IpFamily::Ipv4, t0 + Duration::from_secs(30));
        assert!(h.is_healthy(t0 + Duration::from_secs(60)));
        assert!(!h.is_healthy(t0 + Duration::from_secs(61)));
        let r = h.healthz(t0 + Duration::from_secs(61), wall(1_061), None);
        assert_eq!(r.status, 503);
        assert_eq!(
            r.body,
            r#"{"lastUpdated":"1970-01-01T00:16:40Z","currentTime":"1970-01-01T00:17:41Z","healthy":false,"status":{"IPv4":{"lastUpdated":"1970-01-01T00:16:40Z","healthy":false}}}"#
        );
        h.updated(&IpFamily::Ipv4, t0 + Duration::from_secs(62), wall(1_062));
        let r = h.healthz(t0 + Duration::from_secs(63), wall(1_063), Some(true));
        assert_eq!(r.status, 200);
        // Healthy: lastUpdated is "now".
        assert_eq!(
            r.body,
            r#"{"lastUpdated":"1970-01-01T00:17:43Z","currentTime":"1970-01-01T00:17:43Z","nodeEligible":true,"healthy":true,"status":{"IPv4":{"lastUpdated":"1970-01-01T00:17:42Z","healthy":true}}}"#
        );
    }

    #[test]
    fn nodes_being_deleted_or_drained_by_the_autoscaler_are_not_eligible() {
        let node = |yaml: &str| -> service_core::model::Node {
            serde_json::from_value(serde_json::from_str(yaml).unwrap()).unwrap()
        };
        assert!(node_eligible(&node(r#"{"metadata":{"name":"a"}}"#)));
        assert!(node_eligible(&node(
            r#"{"metadata":{"name":"a"},"spec":{"taints":[{"key":"other","effect":"NoSchedule"}]}}"#
        )));
        assert!(!node_eligible(&node(
            r#"{"metadata":{"name":"a"},"spec":{"taints":[{"key":"ToBeDeletedByClusterAutoscaler","value":"1","effect":"NoSchedule"}]}}"#
        )));
        assert!(!node_eligible(&node(
            r#"{"metadata":{"name":"a","deletionTimestamp":"2026-01-01T00:00:00Z"}}"#
        )));
    }

    #[test]
    fn an_ineligible_node_fails_healthz_but_not_livez() {
        let t0 = Instant::now();
        let mut h = ProxyHealth::new(Duration::from_secs(60));
        h.updated(&IpFamily::Ipv4, t0, wall(5));
        h.updated(&IpFamily::Ipv6, t0, wall(5));
        assert_eq!(h.healthz(t0, wall(6), Some(false)).status, 503);
        assert_eq!(h.livez(t0, wall(6)).status, 200);
        // One family behind makes the whole proxy unhealthy.
        h.queued(&IpFamily::Ipv6, t0);
        let later = t0 + Duration::from_secs(61);
        assert_eq!(h.livez(later, wall(66)).status, 503);
        assert!(h.livez(later, wall(66)).body.contains(r#""IPv4":{"lastUpdated":"1970-01-01T00:00:05Z","healthy":true},"IPv6":{"lastUpdated":"1970-01-01T00:00:05Z","healthy":false}"#));
    }

    #[test]
    fn the_service_health_check_answers_as_kube_proxy() {
        let mut svc = Service::load_balancer("shop", "web")
            .with_cluster_ip("10.96.0.10")
            .with_port(ServicePort::tcp("http", 80).with_node_port(30080))
            .with_port(ServicePort::tcp("https", 443).with_node_port(30443))
            .with_external_traffic_policy(TrafficPolicy::Local);
        svc.spec.health_check_node_port = Some(30100);
        let mut c = Cluster::default();
        c.add_service(svc).unwrap();
        let slice = EndpointSlice::ipv4("shop", "web-1", "web")
            .with_port("http", 80)
            .with_port("https", 443)
            .with_endpoint(Endpoint::new("10.1.0.1").on_node("node-a"))
            .with_endpoint(
                Endpoint::new("10.1.0.2")
                    .on_node("node-a")
                    .with_ready(false),
            )
            .with_endpoint(
                Endpoint::new("10.1.0.3")
                    .on_node("node-a")
                    .terminating(true),
            )
            .with_endpoint(Endpoint::new("10.1.0.4").on_node("node-b"));
        c.add_endpoint_slice(slice).unwrap();
        let snap = c
            .snapshot(NodeInfo::new(
                "node-a",
                vec!["192.168.0.2".parse().unwrap()],
            ))
            .unwrap();
        let checks = health_checks(&snap);
        let check = &checks[&30100];
        // 10.1.0.1 once, though it serves two ports; not ready, terminating and remote
        // endpoints do not count.
        assert_eq!(check.local_endpoints, 1);
        let r = check.response(true);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": true\n}"
        );
        assert!(
            r.headers
                .contains(&("X-Load-Balancing-Endpoint-Weight", "1".into()))
        );
        assert_eq!(check.response(false).status, 503);
        let none = ServiceHealthCheck {
            local_endpoints: 0,
            ..check.clone()
        };
        assert_eq!(none.response(true).status, 503);
        // A Service without Local traffic has no health check.
        let mut plain = Cluster::default();
        let svc = Service::load_balancer("shop", "web")
            .with_cluster_ip("10.96.0.10")
            .with_port(ServicePort::tcp("http", 80).with_node_port(30080))
            .with_external_traffic_policy(TrafficPolicy::Cluster);
        plain.add_service(svc).unwrap();
        let snap = plain
            .snapshot(NodeInfo::new(
                "node-a",
                vec!["192.168.0.2".parse().unwrap()],
            ))
            .unwrap();
        assert!(health_checks(&snap).is_empty());
    }
}
