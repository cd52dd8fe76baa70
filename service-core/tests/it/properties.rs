//! Property tests: serde round trips, no panics on arbitrary input, and snapshot building
//! that depends on the content of its input and not on its order.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::select;
use service_core::defaults;
use service_core::manifest::load_str;
use service_core::model::{
    AddressType, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, IntOrString, Protocol,
    Service, ServicePort, ServiceType, SessionAffinity, TrafficPolicy,
};
use service_core::snapshot::{NodeInfo, Snapshot};
use service_core::validation::{service_errors, validate_service};

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Tcp),
        Just(Protocol::Udp),
        Just(Protocol::Sctp),
        "[A-Z]{1,5}".prop_map(|s| Protocol::from(s.as_str())),
    ]
}

fn int_or_string() -> impl Strategy<Value = IntOrString> {
    prop_oneof![
        any::<i32>().prop_map(IntOrString::Int),
        "[a-z0-9-]{0,16}".prop_map(IntOrString::String),
    ]
}

fn port() -> impl Strategy<Value = ServicePort> {
    (
        proptest::option::of("[a-z0-9-]{0,8}"),
        proptest::option::of(protocol()),
        any::<i32>(),
        proptest::option::of(int_or_string()),
        proptest::option::of(any::<i32>()),
    )
        .prop_map(|(name, protocol, port, target_port, node_port)| {
            let mut p = ServicePort::tcp("", port);
            p.name = name;
            p.protocol = protocol;
            p.target_port = target_port;
            p.node_port = node_port;
            p
        })
}

fn ip_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| format!("10.96.{a}.{b}")),
        any::<u16>().prop_map(|a| format!("fd00::{a:x}")),
        Just("None".to_string()),
        "[0-9.:a-f]{0,12}",
    ]
}

prop_compose! {
    fn service()(
        name in "[a-z][a-z0-9-]{0,10}",
        namespace in select(vec!["default", "shop", "kube-system"]),
        type_ in proptest::option::of(select(vec!["ClusterIP", "NodePort", "LoadBalancer", "ExternalName", "Weird"])),
        ports in proptest::collection::vec(port(), 0..4),
        cluster_ips in proptest::collection::vec(ip_text(), 0..3),
        external_ips in proptest::collection::vec(ip_text(), 0..2),
        affinity in proptest::option::of(select(vec!["None", "ClientIP", "Sticky"])),
        etp in proptest::option::of(select(vec!["Cluster", "Local", "Other"])),
        ranges in proptest::collection::vec("[0-9./]{0,18}", 0..2),
        selector in proptest::option::of(proptest::collection::btree_map("[a-z]{1,4}", "[a-z]{0,4}", 0..3)),
        hc in proptest::option::of(any::<i32>()),
    ) -> Service {
        let mut s = Service::new(namespace, &name);
        s.spec.type_ = type_.map(ServiceType::from);
        s.spec.ports = ports;
        s.spec.cluster_ip = cluster_ips.first().cloned();
        s.spec.cluster_ips = cluster_ips;
        s.spec.external_ips = external_ips;
        s.spec.session_affinity = affinity.map(SessionAffinity::from);
        s.spec.external_traffic_policy = etp.map(TrafficPolicy::from);
        s.spec.load_balancer_source_ranges = ranges;
        s.spec.selector = selector;
        s.spec.health_check_node_port = hc;
        s
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn services_round_trip_through_json(svc in service()) {
        let json = serde_json::to_string(&svc).unwrap();
        let back: Service = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, svc);
    }

    #[test]
    fn defaulting_and_validation_never_panic(mut svc in service()) {
        let _ = service_errors(&svc);
        defaults::service(&mut svc);
        // Defaulting is idempotent.
        let once = svc.clone();
        defaults::service(&mut svc);
        prop_assert_eq!(&once, &svc);
        match validate_service(&svc) {
            Ok(v) => prop_assert!(v.ports.iter().all(|p| p.port != 0)),
            Err(e) => prop_assert!(!e.errors.is_empty()),
        }
    }

    #[test]
    fn loading_never_panics_on_arbitrary_text(text in "\\PC{0,300}") {
        let _ = load_str("fuzz", &text);
    }

    #[test]
    fn loading_never_panics_on_manifest_shaped_text(
        kind in select(vec!["Service", "EndpointSlice", "Endpoints", "Pod", "Node", "List"]),
        body in "[ a-zA-Z0-9:{}\\[\\],.\\-\n\"']{0,200}",
    ) {
        let text = format!("apiVersion: v1\nkind: {kind}\n{body}");
        if let Ok(loaded) = load_str("fuzz", &text) {
            let _ = service_core::cluster::Cluster::from_objects(loaded.objects);
        }
    }
}

fn valid_service(i: usize, ports: usize, affinity: bool) -> Service {
    let mut s = Service::new("ns", &format!("svc{i}"));
    s.spec.cluster_ip = Some(format!("10.96.{}.{}", i / 250, i % 250 + 1));
    s.spec.selector = Some(BTreeMap::from([("app".to_string(), format!("a{i}"))]));
    for p in 0..ports {
        let mut sp = ServicePort::tcp(&format!("p{p}"), 80 + p as i32);
        sp.target_port = Some(IntOrString::Int(8080 + p as i32));
        s.spec.ports.push(sp);
    }
    if affinity {
        s.spec.session_affinity = Some(SessionAffinity::ClientIp);
    }
    defaults::service(&mut s);
    s
}

fn slice_for(i: usize, part: usize, ports: usize, eps: &[(u8, bool, u8)]) -> EndpointSlice {
    let mut slice = EndpointSlice::new(
        "ns",
        &format!("svc{i}-{part}"),
        &format!("svc{i}"),
        AddressType::Ipv4,
    );
    slice.endpoints = eps
        .iter()
        .map(|&(host, ready, node)| {
            let mut ep = Endpoint::new(&format!("10.1.{i}.{host}"));
            ep.conditions = Some(EndpointConditions::new(ready, ready, false));
            ep.node_name = Some(format!("node-{node}"));
            ep
        })
        .collect();
    slice.ports = (0..ports)
        .map(|p| EndpointPort::new(&format!("p{p}"), 8080 + p as i32, Protocol::Tcp))
        .collect();
    slice
}

prop_compose! {
    fn cluster()(
        specs in proptest::collection::vec(
            (1usize..3, any::<bool>(), proptest::collection::vec((1u8..20, any::<bool>(), 0u8..3), 0..6), 1usize..3),
            1..12,
        )
    ) -> (Vec<Service>, Vec<EndpointSlice>) {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for (i, (ports, affinity, eps, parts)) in specs.into_iter().enumerate() {
            services.push(valid_service(i, ports, affinity));
            let chunk = eps.len().div_ceil(parts).max(1);
            for (part, c) in eps.chunks(chunk).enumerate() {
                slices.push(slice_for(i, part, ports, c));
            }
        }
        (services, slices)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn snapshot_is_deterministic_and_order_independent(
        (services, slices) in cluster(),
        seed in any::<u64>(),
    ) {
        let valid: Vec<_> = services.iter().map(|s| validate_service(s).unwrap()).collect();
        let node = NodeInfo::new("node-1", vec!["192.168.0.2".parse().unwrap()]);
        let a = Snapshot::build(node.clone(), &valid, &slices, &[]).unwrap();
        let b = Snapshot::build(node.clone(), &valid, &slices, &[]).unwrap();
        prop_assert_eq!(&a, &b);

        // Shuffle both inputs with a simple deterministic permutation.
        let mut v2 = valid;
        let mut s2 = slices;
        let mut x = seed | 1;
        for i in (1..v2.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            v2.swap(i, (x % (i as u64 + 1)) as usize);
        }
        for i in (1..s2.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            s2.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let c = Snapshot::build(node, &v2, &s2, &[]).unwrap();
        prop_assert_eq!(&a, &c);
        prop_assert!(a.diff(&c).is_empty());
    }
}
