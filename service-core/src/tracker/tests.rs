use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::*;
use crate::model::{
    AddressType, Endpoint, EndpointConditions, EndpointHints, EndpointPort, ForZone, ObjectMeta,
    SERVICE_NAME_LABEL, ServicePort as SpecPort, ServiceType, TrafficPolicy,
};

const T0: SystemTime = SystemTime::UNIX_EPOCH;

fn node() -> NodeInfo {
    NodeInfo::new("node-a", vec!["192.168.0.2".parse().unwrap()])
}

/// Service `s{i}` in one of a few shapes; its cluster IP depends on its name only.
fn service(i: u8, shape: u8) -> Service {
    let mut s = Service::new("ns", &format!("s{i}"));
    s.spec.cluster_ip = Some(format!("10.96.0.{}", 10 + i));
    let mut http = SpecPort::tcp("http", 80);
    http.target_port = Some(crate::model::IntOrString::Int(8080));
    s.spec.ports.push(http);
    if shape % 2 == 1 {
        let mut dns = SpecPort::tcp("dns", 53);
        dns.protocol = Some(crate::model::Protocol::Udp);
        s.spec.ports.push(dns);
    }
    if shape % 5 == 4 {
        s.spec.cluster_ip = Some("None".into());
        s.spec.cluster_ips = vec!["None".into()];
    } else if shape % 3 == 1 {
        s.spec.type_ = Some(ServiceType::NodePort);
        s.spec.ports[0].node_port = Some(30000 + i32::from(i));
        s.spec.external_traffic_policy = Some(TrafficPolicy::Local);
    }
    s
}

/// Slice `e{j}` of Service `s{owner}`, with some of a fixed pool of endpoints.
fn slice(j: u8, owner: u8, members: u8, ready_mask: u8) -> EndpointSlice {
    let mut meta = ObjectMeta::named("ns", &format!("e{j}"));
    meta.labels = Some([(SERVICE_NAME_LABEL.to_string(), format!("s{owner}"))].into());
    let endpoints = (0..6u8)
        .filter(|b| members & (1 << b) != 0)
        .map(|b| {
            let mut e = Endpoint::default();
            e.addresses = vec![format!("10.1.{j}.{b}")];
            e.node_name = Some(if b % 2 == 0 { "node-a" } else { "node-b" }.into());
            e.conditions = Some(EndpointConditions {
                ready: Some(ready_mask & (1 << b) != 0),
                serving: Some(true),
                terminating: Some(false),
            });
            // With the top bit set, every endpoint carries a zone hint: the node's zone
            // then decides which endpoints serve it.
            if ready_mask & 0x80 != 0 {
                let mut hints = EndpointHints::default();
                hints.for_zones = vec![ForZone {
                    name: format!("z{}", b % 2),
                }];
                e.hints = Some(hints);
            }
            e
        })
        .collect();
    let mut http = EndpointPort::default();
    http.name = Some("http".into());
    http.port = Some(8080);
    let mut dns = EndpointPort::default();
    dns.name = Some("dns".into());
    dns.port = Some(5353);
    dns.protocol = Some(crate::model::Protocol::Udp);
    EndpointSlice {
        metadata: meta,
        address_type: AddressType::Ipv4,
        endpoints,
        ports: vec![http, dns],
        ..EndpointSlice::default()
    }
}

fn zone_node(zone: u8) -> Node {
    let mut n = Node::default();
    n.metadata = ObjectMeta::named("", "node-a");
    n.metadata.labels = Some([(crate::model::ZONE_LABEL.to_string(), format!("z{zone}"))].into());
    n
}

#[derive(Clone, Debug)]
enum Op {
    UpsertService(u8, u8),
    DeleteService(u8),
    UpsertSlice(u8, u8, u8, u8),
    DeleteSlice(u8),
    Node(u8),
    Checkout,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4u8, 0..30u8).prop_map(|(i, s)| Op::UpsertService(i, s)),
        1 => (0..4u8).prop_map(Op::DeleteService),
        6 => (0..6u8, 0..4u8, any::<u8>(), any::<u8>())
            .prop_map(|(j, o, m, r)| Op::UpsertSlice(j, o, m, r)),
        2 => (0..6u8).prop_map(Op::DeleteSlice),
        1 => (0..2u8).prop_map(Op::Node),
        2 => Just(Op::Checkout),
    ]
}

/// The objects a list would return now.
#[derive(Default)]
struct Lists {
    services: BTreeMap<u8, Service>,
    slices: BTreeMap<u8, EndpointSlice>,
    zone: Option<u8>,
}

impl Lists {
    fn snapshot(&self) -> Snapshot {
        let services: Vec<ValidService> = self
            .services
            .values()
            .map(|s| {
                let mut s = s.clone();
                defaults::service(&mut s);
                validation::validate_service(&s).unwrap()
            })
            .collect();
        let slices: Vec<EndpointSlice> = self
            .slices
            .values()
            .map(|s| {
                let mut s = s.clone();
                defaults::endpoint_slice(&mut s);
                s
            })
            .collect();
        let mut n = node();
        n.zone = self.zone.map(|z| format!("z{z}"));
        Snapshot::build(n, &services, &slices, &[]).unwrap()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any interleaving of events leaves the snapshot a build from the final lists gives,
    /// and each checkout reports exactly the service ports (and Services) whose entries
    /// differ from the previous checkout.
    #[test]
    fn events_give_the_snapshot_of_the_final_lists(ops in proptest::collection::vec(op(), 1..40)) {
        let mut t = ChangeTracker::new(node());
        let mut lists = Lists::default();
        let mut last = Snapshot { node: Arc::new(node()), ..Snapshot::default() };
        for (n, op) in ops.into_iter().chain([Op::Checkout]).enumerate() {
            let at = T0 + Duration::from_secs(n as u64);
            match op {
                Op::UpsertService(i, s) => {
                    let svc = service(i, s);
                    lists.services.insert(i, svc.clone());
                    t.apply(Event::ServiceUpserted(svc), at).unwrap();
                }
                Op::DeleteService(i) => {
                    lists.services.remove(&i);
                    t.apply(Event::ServiceDeleted(ServiceKey::new("ns", &format!("s{i}"))), at).unwrap();
                }
                Op::UpsertSlice(j, o, m, r) => {
                    let s = slice(j, o, m, r);
                    lists.slices.insert(j, s.clone());
                    t.apply(Event::EndpointSliceUpserted(s), at).unwrap();
                }
                Op::DeleteSlice(j) => {
                    lists.slices.remove(&j);
                    t.apply(Event::EndpointSliceDeleted(ServiceKey::new("ns", &format!("e{j}"))), at).unwrap();
                }
                Op::Node(z) => {
                    lists.zone = Some(z);
                    t.apply(Event::NodeUpdated(zone_node(z)), at).unwrap();
                }
                Op::Checkout => {
                    let (snap, changes) = t.checkout();
                    let diff = snap.diff(&last);
                    let want: BTreeSet<ServicePortName> = diff.ports.into_iter().map(|(n, _)| n).collect();
                    prop_assert_eq!(&changes.ports, &want);
                    let want: BTreeSet<ServiceKey> = diff.services.into_iter().map(|(k, _)| k).collect();
                    prop_assert_eq!(&changes.services, &want);
                    prop_assert_eq!(changes.node_changed, diff.node_changed);
                    last = snap;
                }
            }
            prop_assert_eq!(t.snapshot(), &lists.snapshot());
        }
    }
}

#[test]
fn invalid_objects_are_refused_and_the_previous_version_kept() {
    let mut t = ChangeTracker::new(node());
    t.apply(Event::ServiceUpserted(service(1, 0)), T0).unwrap();
    let mut bad = service(1, 0);
    bad.spec.ports[0].port = 0;
    let err = t.apply(Event::ServiceUpserted(bad), T0).unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.ports[0].port: Invalid value: 0"),
        "{err}"
    );
    let port = t.snapshot().ports.values().next().unwrap();
    assert_eq!(port.port, 80);
}

#[test]
fn trigger_times_follow_kube_proxy() {
    let mut t = ChangeTracker::new(node());
    t.apply(Event::ServiceUpserted(service(1, 0)), T0).unwrap();
    let at = |s| T0 + Duration::from_secs(s);
    t.apply(Event::EndpointSliceUpserted(slice(0, 1, 1, 1)), at(5))
        .unwrap();
    t.apply(Event::EndpointSliceUpserted(slice(0, 1, 3, 3)), at(7))
        .unwrap();
    // Service events carry no endpoint trigger time.
    let (_, changes) = t.checkout();
    assert_eq!(changes.trigger_times, [at(5), at(7)]);
    assert_eq!((changes.service_events, changes.endpoint_events), (1, 2));
    // A deleted slice drops what its Service had queued.
    t.apply(Event::EndpointSliceUpserted(slice(1, 1, 1, 1)), at(9))
        .unwrap();
    t.apply(
        Event::EndpointSliceDeleted(ServiceKey::new("ns", "e1")),
        at(10),
    )
    .unwrap();
    assert!(t.checkout().1.trigger_times.is_empty());
    assert_eq!(t.stats().endpoint_events, 4);
}

#[test]
fn a_change_undone_before_checkout_is_no_change() {
    let mut t = ChangeTracker::new(node());
    t.apply(Event::ServiceUpserted(service(1, 0)), T0).unwrap();
    t.apply(Event::EndpointSliceUpserted(slice(0, 1, 1, 1)), T0)
        .unwrap();
    t.checkout();
    t.apply(Event::EndpointSliceUpserted(slice(0, 1, 3, 3)), T0)
        .unwrap();
    t.apply(Event::EndpointSliceUpserted(slice(0, 1, 1, 1)), T0)
        .unwrap();
    assert!(t.has_pending());
    let (_, changes) = t.checkout();
    assert!(changes.is_empty(), "{changes:?}");
}
