#![allow(clippy::cloned_ref_to_slice_refs)] // `&[x.clone()]` reads better in tests.

use std::net::IpAddr;

use super::*;
use crate::defaults;
use crate::model::{
    self, EndpointConditions, EndpointHints, EndpointPort, ForNode, ForZone, IntOrString,
    MANAGED_BY_LABEL, ObjectMeta, SERVICE_NAME_LABEL, Service, ServicePort as SpecPort,
    TrafficPolicy,
};
use crate::valid::ValidService;
use crate::validation::validate_service;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn svc(name: &str, f: impl FnOnce(&mut Service)) -> ValidService {
    let mut s = Service::new("ns", name);
    s.spec.cluster_ip = Some("10.96.0.10".into());
    s.spec.selector = Some([("app".to_string(), name.to_string())].into());
    let mut p = SpecPort::tcp("http", 80);
    p.target_port = Some(IntOrString::Int(8080));
    s.spec.ports.push(p);
    f(&mut s);
    defaults::service(&mut s);
    validate_service(&s).unwrap()
}

#[derive(Clone, Copy)]
struct Ep<'a> {
    ip: &'a str,
    node: &'a str,
    ready: bool,
    serving: bool,
    terminating: bool,
}

fn ep<'a>(ip: &'a str, node: &'a str) -> Ep<'a> {
    Ep {
        ip,
        node,
        ready: true,
        serving: true,
        terminating: false,
    }
}

fn slice(service: &str, name: &str, port: u16, eps: &[Ep<'_>]) -> model::EndpointSlice {
    let v6 = eps.first().is_some_and(|e| e.ip.contains(':'));
    let mut meta = ObjectMeta::named("ns", name);
    meta.labels = Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into());
    model::EndpointSlice {
        metadata: meta,
        address_type: if v6 {
            model::AddressType::Ipv6
        } else {
            model::AddressType::Ipv4
        },
        endpoints: eps
            .iter()
            .map(|e| model::Endpoint {
                addresses: vec![e.ip.into()],
                conditions: Some(EndpointConditions {
                    ready: Some(e.ready),
                    serving: Some(e.serving),
                    terminating: Some(e.terminating),
                }),
                node_name: Some(e.node.into()),
                ..model::Endpoint::default()
            })
            .collect(),
        ports: vec![EndpointPort {
            name: Some("http".into()),
            port: Some(i32::from(port)),
            protocol: Some(Protocol::Tcp),
            app_protocol: None,
        }],
        ..model::EndpointSlice::default()
    }
}

fn node() -> NodeInfo {
    NodeInfo::new("node-a", vec![ip("192.168.0.2")])
}

fn port_of<'a>(snap: &'a Snapshot, name: &str) -> &'a ServicePort {
    &snap.ports[&ServicePortName::new("ns", name, "http", Protocol::Tcp)]
}

fn addrs<'a>(it: impl Iterator<Item = &'a Endpoint>) -> Vec<String> {
    it.map(|e| e.addr().to_string()).collect()
}

#[test]
fn cluster_ip_service_with_ready_and_unready_endpoints() {
    let s = svc("web", |_| {});
    let sl = slice(
        "web",
        "web-1",
        8080,
        &[
            ep("10.0.0.9", "node-b"),
            ep("10.0.0.10", "node-a"),
            Ep {
                ready: false,
                serving: false,
                ..ep("10.0.0.11", "node-b")
            },
        ],
    );
    let snap = Snapshot::build(node(), &[s], &[sl], &[]).unwrap();
    let p = port_of(&snap, "web");
    assert_eq!(p.port, 80);
    assert_eq!(p.name.proxy_name(), "ns/web:http");
    assert_eq!(p.name.to_string(), "ns/web:http/TCP");
    let v4 = p.ipv4.as_ref().unwrap();
    assert!(p.ipv6.is_none());
    assert_eq!(v4.cluster_ip, ip("10.96.0.10"));
    // kube-proxy orders endpoints by their "ip:port" *string* (endpointslicecache.go,
    // byEndpoint), so 10.0.0.10 sorts before 10.0.0.9.
    assert_eq!(
        addrs(v4.endpoints.iter()),
        ["10.0.0.10:8080", "10.0.0.11:8080", "10.0.0.9:8080"]
    );
    assert_eq!(
        addrs(v4.cluster_endpoints()),
        ["10.0.0.10:8080", "10.0.0.9:8080"]
    );
    assert!(v4.local_endpoints().next().is_none());
    assert!(v4.selection.has_any);
    assert!(v4.endpoints[0].is_local);
    assert!(!v4.endpoints[2].is_local);
    assert_eq!(snap.endpoint_count(), 3);
}

#[test]
fn terminating_endpoints_are_a_fallback() {
    let s = svc("web", |_| {});
    let draining = Ep {
        ready: false,
        serving: true,
        terminating: true,
        ..ep("10.0.0.1", "node-b")
    };
    let gone = Ep {
        ready: false,
        serving: false,
        terminating: true,
        ..ep("10.0.0.2", "node-b")
    };
    let snap = Snapshot::build(
        node(),
        &[s.clone()],
        &[slice("web", "w", 8080, &[draining, gone])],
        &[],
    )
    .unwrap();
    let v4 = port_of(&snap, "web").ipv4.clone().unwrap();
    assert_eq!(addrs(v4.cluster_endpoints()), ["10.0.0.1:8080"]);
    assert!(v4.selection.has_any);
    // With a ready endpoint, terminating ones are not used.
    let snap = Snapshot::build(
        node(),
        &[s],
        &[slice(
            "web",
            "w",
            8080,
            &[draining, ep("10.0.0.3", "node-b")],
        )],
        &[],
    )
    .unwrap();
    let v4 = port_of(&snap, "web").ipv4.clone().unwrap();
    assert_eq!(addrs(v4.cluster_endpoints()), ["10.0.0.3:8080"]);
}

#[test]
fn external_traffic_policy_local() {
    let s = svc("np", |s| {
        s.spec.type_ = Some(ServiceType::NodePort);
        s.spec.ports[0].node_port = Some(30080);
        s.spec.external_traffic_policy = Some(TrafficPolicy::Local);
    });
    let sl = slice(
        "np",
        "np-1",
        8080,
        &[ep("10.0.0.1", "node-a"), ep("10.0.0.2", "node-b")],
    );
    let snap = Snapshot::build(node(), &[s.clone()], &[sl], &[]).unwrap();
    let p = port_of(&snap, "np");
    assert!(p.external_policy_local);
    assert_eq!(p.node_port, Some(30080));
    let v4 = p.ipv4.as_ref().unwrap();
    assert_eq!(addrs(v4.local_endpoints()), ["10.0.0.1:8080"]);
    assert_eq!(
        addrs(v4.cluster_endpoints()),
        ["10.0.0.1:8080", "10.0.0.2:8080"]
    );
    assert_eq!(v4.selection.all_reachable.len(), 2);

    // No local endpoints: nothing local, but the service still has endpoints.
    let sl = slice("np", "np-1", 8080, &[ep("10.0.0.2", "node-b")]);
    let snap = Snapshot::build(node(), &[s], &[sl], &[]).unwrap();
    let v4 = port_of(&snap, "np").ipv4.clone().unwrap();
    assert!(v4.selection.local.is_empty());
    assert!(v4.selection.has_any);
}

#[test]
fn internal_traffic_policy_local_uses_only_local_endpoints() {
    let s = svc("web", |s| {
        s.spec.internal_traffic_policy = Some(TrafficPolicy::Local)
    });
    let sl = slice(
        "web",
        "w",
        8080,
        &[ep("10.0.0.1", "node-a"), ep("10.0.0.2", "node-b")],
    );
    let snap = Snapshot::build(node(), &[s], &[sl], &[]).unwrap();
    let v4 = port_of(&snap, "web").ipv4.clone().unwrap();
    // Not externally accessible, so cluster endpoints are not computed at all.
    assert!(v4.selection.cluster.is_empty());
    assert_eq!(addrs(v4.local_endpoints()), ["10.0.0.1:8080"]);
    assert_eq!(addrs(v4.reachable_endpoints()), ["10.0.0.1:8080"]);
    assert!(v4.selection.has_any);
}

fn hinted(mut sl: model::EndpointSlice, zones: &[&str], nodes: &[&str]) -> model::EndpointSlice {
    for (i, e) in sl.endpoints.iter_mut().enumerate() {
        e.hints = Some(EndpointHints {
            for_zones: zones
                .get(i)
                .filter(|z| !z.is_empty())
                .map(|z| vec![ForZone { name: (*z).into() }])
                .unwrap_or_default(),
            for_nodes: nodes
                .get(i)
                .filter(|n| !n.is_empty())
                .map(|n| vec![ForNode { name: (*n).into() }])
                .unwrap_or_default(),
        });
    }
    sl
}

#[test]
fn topology_hints() {
    let s = svc("web", |_| {});
    let eps = [
        ep("10.0.0.1", "node-a"),
        ep("10.0.0.2", "node-b"),
        ep("10.0.0.3", "node-c"),
    ];
    let zoned = hinted(slice("web", "w", 80, &eps), &["z1", "z2", "z1"], &[]);
    let node_z1 = node().with_zone("z1");
    let snap = Snapshot::build(node_z1.clone(), &[s.clone()], &[zoned.clone()], &[]).unwrap();
    let v4 = port_of(&snap, "web").ipv4.clone().unwrap();
    assert_eq!(
        addrs(v4.cluster_endpoints()),
        ["10.0.0.1:80", "10.0.0.3:80"]
    );

    // No endpoint hinted for this node's zone: hints are ignored.
    let snap = Snapshot::build(node().with_zone("z9"), &[s.clone()], &[zoned], &[]).unwrap();
    assert_eq!(
        port_of(&snap, "web")
            .ipv4
            .as_ref()
            .unwrap()
            .selection
            .cluster
            .len(),
        3
    );

    // One ready endpoint without hints: hints are ignored.
    let partial = hinted(slice("web", "w", 80, &eps), &["z1", "", "z1"], &[]);
    let snap = Snapshot::build(node_z1.clone(), &[s.clone()], &[partial], &[]).unwrap();
    assert_eq!(
        port_of(&snap, "web")
            .ipv4
            .as_ref()
            .unwrap()
            .selection
            .cluster
            .len(),
        3
    );

    // Node hints win over zone hints when every endpoint has one.
    let both = hinted(
        slice("web", "w", 80, &eps),
        &["z1", "z1", "z1"],
        &["node-b", "node-a", "node-c"],
    );
    let snap = Snapshot::build(node_z1, &[s], &[both], &[]).unwrap();
    let v4 = port_of(&snap, "web").ipv4.clone().unwrap();
    assert_eq!(addrs(v4.cluster_endpoints()), ["10.0.0.2:80"]);
}

#[test]
fn dual_stack_families_are_separate() {
    let s = svc("web", |s| {
        s.spec.cluster_ips = vec!["10.96.0.10".into(), "fd00::10".into()];
        s.spec.ip_families = vec![IpFamily::Ipv4, IpFamily::Ipv6];
        s.spec.ip_family_policy = Some(model::IpFamilyPolicy::RequireDualStack);
        s.spec.external_ips = vec!["192.0.2.1".into(), "2001:db8::1".into()];
    });
    let v4 = slice("web", "w4", 8080, &[ep("10.0.0.1", "node-a")]);
    let v6 = slice("web", "w6", 8080, &[ep("fd00:1::1", "node-a")]);
    let snap = Snapshot::build(node(), &[s], &[v4, v6], &[]).unwrap();
    let p = port_of(&snap, "web");
    let (a, b) = (p.ipv4.as_ref().unwrap(), p.ipv6.as_ref().unwrap());
    assert_eq!(a.external_ips, vec![ip("192.0.2.1")]);
    assert_eq!(b.external_ips, vec![ip("2001:db8::1")]);
    assert_eq!(addrs(a.cluster_endpoints()), ["10.0.0.1:8080"]);
    assert_eq!(addrs(b.cluster_endpoints()), ["[fd00:1::1]:8080"]);
    assert_eq!(b.cluster_ip, ip("fd00::10"));
}

#[test]
fn headless_external_name_and_other_proxies() {
    let headless = svc("db", |s| {
        s.spec.cluster_ip = Some("None".into());
    });
    let mut ext = Service::new("ns", "ext");
    ext.spec.type_ = Some(ServiceType::ExternalName);
    ext.spec.external_name = Some("example.com".into());
    defaults::service(&mut ext);
    let ext = validate_service(&ext).unwrap();
    let other = svc("mesh", |s| {
        s.metadata.labels =
            Some([(model::SERVICE_PROXY_NAME_LABEL.to_string(), "x".to_string())].into());
    });
    let mut sl = slice("db", "db-1", 5432, &[ep("10.0.0.5", "node-b")]);
    sl.endpoints[0].hostname = Some("db-0".into());
    let snap = Snapshot::build(node(), &[headless, ext, other], &[sl], &[]).unwrap();
    assert!(
        snap.ports.is_empty(),
        "{:?}",
        snap.ports.keys().collect::<Vec<_>>()
    );
    assert_eq!(snap.services.len(), 3);
    let db = &snap.services[&ServiceKey::new("ns", "db")];
    assert_eq!(db.endpoints[0].hostname.as_deref(), Some("db-0"));
    assert_eq!(
        db.endpoints[0].ports[0],
        ("http".to_string(), 5432, Protocol::Tcp)
    );
    assert!(snap.services[&ServiceKey::new("ns", "mesh")].other_proxy);
}

/// kube-proxy and CoreDNS read EndpointSlices only; legacy Endpoints reach them through
/// kube-controller-manager's mirroring controller, for Services without a selector
/// (`pkg/controller/endpointslicemirroring`). The Endpoints of a Service with a selector
/// are never read, even when it has no slice.
#[test]
fn legacy_endpoints_reach_the_snapshot_through_mirroring_only() {
    let legacy = model::Endpoints {
        metadata: ObjectMeta::named("ns", "web"),
        subsets: vec![model::EndpointSubset {
            addresses: vec![model::EndpointAddress {
                ip: "10.0.0.1".into(),
                node_name: Some("node-a".into()),
                ..model::EndpointAddress::default()
            }],
            not_ready_addresses: vec![model::EndpointAddress {
                ip: "10.0.0.2".into(),
                ..model::EndpointAddress::default()
            }],
            ports: vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some(Protocol::Tcp),
                app_protocol: None,
            }],
        }],
        ..model::Endpoints::default()
    };
    let cluster = |snap: &Snapshot| {
        let v4 = port_of(snap, "web").ipv4.clone().unwrap();
        addrs(v4.cluster_endpoints())
    };
    // A selector: the Endpoints are someone else's business.
    let with_selector = svc("web", |_| {});
    let snap = Snapshot::build(node(), &[with_selector], &[], &[legacy.clone()]).unwrap();
    assert!(cluster(&snap).is_empty());
    // No selector: mirrored (the not-ready address is there, not ready).
    let s = svc("web", |s| s.spec.selector = None);
    let snap = Snapshot::build(node(), &[s.clone()], &[], &[legacy.clone()]).unwrap();
    assert_eq!(cluster(&snap), ["10.0.0.1:8080"]);
    let v4 = port_of(&snap, "web").ipv4.clone().unwrap();
    assert!(v4.endpoints[0].is_local);
    assert_eq!(v4.endpoints.len(), 2);
    // With a slice someone else wrote for the Service, both count.
    let other = slice("web", "w", 9090, &[ep("10.0.0.3", "node-b")]);
    let snap = Snapshot::build(node(), &[s.clone()], &[other], &[legacy.clone()]).unwrap();
    assert_eq!(cluster(&snap), ["10.0.0.1:8080", "10.0.0.3:9090"]);
    // A mirrored slice from an earlier state is replaced by what the Endpoints say now.
    let mut stale = slice("web", "web-old", 8080, &[ep("10.0.0.9", "node-b")]);
    stale.metadata.labels.as_mut().unwrap().insert(
        MANAGED_BY_LABEL.into(),
        crate::controller::mirroring::MANAGED_BY_MIRRORING.into(),
    );
    let snap = Snapshot::build(node(), &[s.clone()], &[stale.clone()], &[legacy.clone()]).unwrap();
    assert_eq!(cluster(&snap), ["10.0.0.1:8080"]);
    // Without an Endpoints object, mirrored slices are taken as given.
    let snap = Snapshot::build(node(), &[s.clone()], &[stale], &[]).unwrap();
    assert_eq!(cluster(&snap), ["10.0.0.9:8080"]);
    // Endpoints marked skip-mirror are not mirrored.
    let mut skip = legacy;
    skip.metadata.labels = Some(
        [(
            crate::controller::mirroring::SKIP_MIRROR_LABEL.to_string(),
            "true".to_string(),
        )]
        .into(),
    );
    let snap = Snapshot::build(node(), &[s], &[], &[skip]).unwrap();
    assert!(cluster(&snap).is_empty());
}

#[test]
fn duplicates_across_slices_prefer_the_local_copy() {
    let s = svc("web", |_| {});
    let a = slice("web", "w-a", 8080, &[ep("10.0.0.1", "node-b")]);
    let b = slice("web", "w-b", 8080, &[ep("10.0.0.1", "node-a")]);
    let snap = Snapshot::build(node(), &[s.clone()], &[a.clone(), b.clone()], &[]).unwrap();
    let v4 = port_of(&snap, "web").ipv4.clone().unwrap();
    assert_eq!(v4.endpoints.len(), 1);
    assert!(v4.endpoints[0].is_local);
    let snap2 = Snapshot::build(node(), &[s], &[b, a], &[]).unwrap();
    assert_eq!(snap, snap2);
}

#[test]
fn port_names_must_match() {
    let s = svc("web", |_| {});
    let mut sl = slice("web", "w", 8080, &[ep("10.0.0.1", "node-b")]);
    sl.ports[0].name = Some("metrics".into());
    let snap = Snapshot::build(node(), &[s], &[sl], &[]).unwrap();
    let v4 = port_of(&snap, "web").ipv4.clone().unwrap();
    assert!(v4.endpoints.is_empty());
    assert!(!v4.selection.has_any);
}

#[test]
fn duplicate_services_are_an_error() {
    let s = svc("web", |_| {});
    let err = Snapshot::build(node(), &[s.clone(), s], &[], &[]).unwrap_err();
    assert_eq!(err.to_string(), "Service ns/web is defined more than once");
}

#[test]
fn diff_reports_added_removed_and_changed() {
    let web = svc("web", |_| {});
    let api = svc("api", |s| s.spec.cluster_ip = Some("10.96.0.11".into()));
    let db = svc("db", |s| s.spec.cluster_ip = Some("10.96.0.12".into()));
    let slices = vec![slice("web", "w", 8080, &[ep("10.0.0.1", "node-b")])];
    let old = Snapshot::build(node(), &[web.clone(), api], &slices, &[]).unwrap();
    assert!(old.diff(&old).is_empty());

    let slices2 = vec![slice("web", "w", 8080, &[ep("10.0.0.2", "node-b")])];
    let new = old.rebuild(node(), &[web, db], &slices2, &[]).unwrap();
    let d = new.diff(&old);
    let ports: Vec<(String, Change)> = d.ports.iter().map(|(k, c)| (k.to_string(), *c)).collect();
    assert_eq!(
        ports,
        vec![
            ("ns/api:http/TCP".to_string(), Change::Removed),
            ("ns/db:http/TCP".to_string(), Change::Added),
            ("ns/web:http/TCP".to_string(), Change::Changed),
        ]
    );
    assert_eq!(d.services.len(), 3);
    assert!(!d.node_changed);
    // Unchanged entries are shared after a rebuild.
    let again = new
        .rebuild(
            node(),
            &[
                svc("web", |_| {}),
                svc("db", |s| s.spec.cluster_ip = Some("10.96.0.12".into())),
            ],
            &slices2,
            &[],
        )
        .unwrap();
    for (k, v) in &again.ports {
        assert!(Arc::ptr_eq(v, &new.ports[k]));
    }
    assert!(again.diff(&new).is_empty());
    let moved = again.rebuild(node().with_zone("z"), &[], &[], &[]).unwrap();
    assert!(moved.diff(&again).node_changed);
}
