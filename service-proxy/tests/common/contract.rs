//! The contract every [`Proxier`] keeps, checked the same way for each backend: the first
//! sync is full and installs the rules; a change rewrites the changed service ports; a sync
//! with nothing changed writes nothing and leaves the kernel as it was; a forced full sync
//! is full; cleanup removes everything of ours (twice is fine) and a sync after it starts
//! over.

use std::collections::BTreeSet;
use std::time::Instant;

use service_core::snapshot::{ServicePortName, Snapshot};
use service_proxy::{Proxier, SyncKind, SyncRequest};
use service_testkit::fixtures;

/// Two states of a small cluster: `web` (10.96.0.10) with endpoints .10 and .11, then .11
/// replaced by .12 and a new Service `api` (10.96.0.30).
pub const BEFORE: &str = r"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: c}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: c, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node-a}
- {addresses: [10.244.1.11], nodeName: node-b}
";

/// What the cluster becomes.
pub fn after() -> String {
    BEFORE.replace("10.244.1.11", "10.244.1.12")
        + r"
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: c}
spec:
  clusterIP: 10.96.0.30
  ports: [{name: http, port: 80, targetPort: 9090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: c, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: http, port: 9090, protocol: TCP}]
endpoints:
- {addresses: [10.244.3.30], nodeName: node-b}
"
}

fn snapshot(yaml: &str, prev: Option<&Snapshot>) -> Snapshot {
    let snap = fixtures::snapshot(yaml, "node-a", &["192.168.0.2"]);
    match prev {
        Some(p) => {
            let c = fixtures::cluster(yaml);
            p.rebuild(
                snap.node.as_ref().clone(),
                &c.services,
                &c.endpoint_slices,
                &[],
            )
            .unwrap()
        }
        None => snap,
    }
}

/// How a backend shows what it installed.
pub struct Observe<'a> {
    /// The kernel's state as text (`iptables-save`, `nft list table`, `ipvsadm -S -n`), or
    /// `None` for a proxier that installs nothing.
    pub state: Option<&'a dyn Fn() -> String>,
    /// Whether the state names endpoints (the userspace proxy's rules name only portals).
    pub shows_endpoints: bool,
    /// Whether partial syncs exist (the userspace proxy rewrites everything each time).
    pub partial: bool,
}

/// Runs the contract on `proxier`; `name` labels the failures.
pub fn check(name: &str, proxier: &mut dyn Proxier, observe: &Observe<'_>) {
    let state = || observe.state.map(|s| s()).unwrap_or_default();
    let kernel = observe.state.is_some();
    let s1 = snapshot(BEFORE, None);
    let s2 = snapshot(&after(), Some(&s1));
    let changed: BTreeSet<ServicePortName> =
        s2.diff(&s1).ports.into_iter().map(|(n, _)| n).collect();
    let nothing = BTreeSet::new();

    // The first sync is full and installs web.
    let r = proxier
        .sync_to(&s1)
        .unwrap_or_else(|e| panic!("{name}: first sync: {e}"));
    assert_eq!(r.kind, SyncKind::Full, "{name}: {r}");
    assert!(r.wrote, "{name}: {r}");
    if kernel {
        let s = state();
        assert!(
            s.contains("10.96.0.10"),
            "{name}: web missing after the first sync:\n{s}"
        );
        assert!(
            !s.contains("10.96.0.30"),
            "{name}: api before it exists:\n{s}"
        );
    }

    // A change: web's endpoint moves, api appears.
    let r = proxier
        .sync(SyncRequest::new(&s2, Instant::now()).with_changes(&changed))
        .unwrap_or_else(|e| panic!("{name}: sync after a change: {e}"));
    if observe.partial {
        assert_eq!(r.kind, SyncKind::Partial, "{name}: {r}");
    }
    assert!(r.wrote && r.service_ports_changed >= 2, "{name}: {r}");
    assert_eq!(
        r.endpoints_changed, 3,
        "{name}: .11 gone, .12 and api's endpoint new: {r}"
    );
    if kernel {
        let s = state();
        assert!(
            s.contains("10.96.0.30"),
            "{name}: api missing after the change:\n{s}"
        );
        if observe.shows_endpoints {
            assert!(
                s.contains("10.244.1.12"),
                "{name}: the new endpoint is missing:\n{s}"
            );
            assert!(
                !s.contains("10.244.1.11"),
                "{name}: the old endpoint is left:\n{s}"
            );
        }
    }

    // Nothing changed: nothing is written and the kernel is as it was.
    let before = state();
    let r = proxier
        .sync(SyncRequest::new(&s2, Instant::now()).with_changes(&nothing))
        .unwrap_or_else(|e| panic!("{name}: no-op sync: {e}"));
    assert!(!r.wrote, "{name}: a sync with nothing changed wrote: {r}");
    assert_eq!(state(), before, "{name}: a no-op sync changed the kernel");

    // Forced full.
    proxier.force_full();
    let r = proxier
        .sync_to(&s2)
        .unwrap_or_else(|e| panic!("{name}: forced full: {e}"));
    assert_eq!(r.kind, SyncKind::Full, "{name}: {r}");
    if kernel {
        assert!(
            state().contains("10.96.0.30"),
            "{name}: a full resync lost api"
        );
    }

    // Cleanup removes everything of ours; twice is fine; a sync after it starts over.
    proxier
        .cleanup()
        .unwrap_or_else(|e| panic!("{name}: cleanup: {e}"));
    proxier
        .cleanup()
        .unwrap_or_else(|e| panic!("{name}: second cleanup: {e}"));
    if kernel {
        let s = state();
        assert!(
            !s.contains("10.96.0.10") && !s.contains("10.96.0.30"),
            "{name}: left behind by cleanup:\n{s}"
        );
    }
    let r = proxier
        .sync_to(&s2)
        .unwrap_or_else(|e| panic!("{name}: sync after cleanup: {e}"));
    assert_eq!(r.kind, SyncKind::Full, "{name}: {r}");
    if kernel {
        assert!(
            state().contains("10.96.0.30"),
            "{name}: nothing installed after cleanup"
        );
    }
    proxier
        .cleanup()
        .unwrap_or_else(|e| panic!("{name}: final cleanup: {e}"));
}
