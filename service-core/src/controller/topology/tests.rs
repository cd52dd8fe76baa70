//! Topology Aware Routing as Kubernetes documents it ("Topology Aware Routing":
//! proportional allocation by allocatable CPU, and the safeguards) and as
//! `staging/src/k8s.io/endpointslice/topologycache` implements it.

use super::*;
use crate::controller::{ControllerConfig, SliceChanges, reconcile};
use crate::defaults;
use crate::model::{
    Container, ContainerPort, IntOrString, Pod, PodCondition, PodIp, PodPhase, PodStatus, Protocol,
    Service, ServicePort,
};
use crate::valid::ValidService;
use crate::validation::validate_service;

fn node(name: &str, zone: Option<&str>, cpu: &str, is_ready: bool) -> Node {
    let mut n: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "status": {
            "allocatable": {"cpu": cpu},
            "conditions": [{"type": "Ready", "status": if is_ready { "True" } else { "False" }}],
        },
    }))
    .unwrap();
    if let Some(z) = zone {
        n.metadata.labels = Some([(ZONE_LABEL.to_string(), z.to_string())].into());
    }
    n
}

fn service(mode: Option<&str>) -> ValidService {
    let mut svc = Service::new("shop", "web");
    svc.spec.cluster_ip = Some("10.96.0.10".into());
    svc.spec.selector = Some([("app".to_string(), "web".to_string())].into());
    let mut http = ServicePort::tcp("http", 80);
    http.target_port = Some(IntOrString::Int(8080));
    svc.spec.ports.push(http);
    if let Some(m) = mode {
        svc.metadata.annotations =
            Some([(TOPOLOGY_MODE_ANNOTATION.to_string(), m.to_string())].into());
    }
    defaults::service(&mut svc);
    validate_service(&svc).unwrap()
}

fn pod(name: &str, ip: &str, node: &str) -> Pod {
    let mut pod = Pod {
        metadata: ObjectMeta::named("shop", name),
        ..Pod::default()
    };
    pod.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
    pod.spec.node_name = Some(node.into());
    pod.spec.containers.push(Container {
        name: "app".into(),
        ports: vec![ContainerPort {
            name: None,
            container_port: 8080,
            protocol: Some(Protocol::Tcp),
            host_port: None,
        }],
        ..Container::default()
    });
    pod.status = Some(PodStatus {
        phase: Some(PodPhase::Running),
        pod_ip: Some(ip.into()),
        pod_ips: vec![PodIp { ip: ip.into() }],
        conditions: vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..PodCondition::default()
        }],
        ..PodStatus::default()
    });
    pod
}

/// `n` pods on each of these nodes.
fn pods(per_node: &[(&str, usize)]) -> Vec<Pod> {
    let mut out = Vec::new();
    for (i, (node, n)) in per_node.iter().enumerate() {
        for j in 0..*n {
            out.push(pod(
                &format!("p{i}-{j}"),
                &format!("10.1.{i}.{}", j + 1),
                node,
            ));
        }
    }
    out
}

/// Hints per zone: how many endpoints each zone is given.
fn hints(changes: &SliceChanges) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in changes.create.iter().chain(&changes.update) {
        for e in &s.endpoints {
            if let Some(h) = &e.hints {
                for z in &h.for_zones {
                    *out.entry(z.name.clone()).or_default() += 1;
                }
            }
        }
    }
    out
}

fn three_zones() -> Vec<Node> {
    vec![
        node("a", Some("zone-a"), "4", true),
        node("b", Some("zone-b"), "4", true),
        node("c", Some("zone-c"), "8000m", true),
    ]
}

#[test]
fn the_annotation_turns_hints_on() {
    let mut meta = ObjectMeta::default();
    assert!(!hints_enabled(&meta));
    for (key, value, on) in [
        (TOPOLOGY_MODE_ANNOTATION, "Auto", true),
        (TOPOLOGY_MODE_ANNOTATION, "auto", true),
        (TOPOLOGY_MODE_ANNOTATION, "Disabled", false),
        (TOPOLOGY_AWARE_HINTS_ANNOTATION, "auto", true),
    ] {
        meta.annotations = Some([(key.to_string(), value.to_string())].into());
        assert_eq!(hints_enabled(&meta), on, "{key}={value}");
    }
    // The deprecated annotation wins when both are there.
    meta.annotations = Some(
        [
            (
                TOPOLOGY_AWARE_HINTS_ANNOTATION.to_string(),
                "disabled".to_string(),
            ),
            (TOPOLOGY_MODE_ANNOTATION.to_string(), "Auto".to_string()),
        ]
        .into(),
    );
    assert!(!hints_enabled(&meta));
}

#[test]
fn endpoints_are_allocated_in_proportion_to_zone_cpu() {
    // CPU 4 : 4 : 8, endpoints 6 : 1 : 1: zone-c should get half of the 8 endpoints.
    let svc = service(Some("Auto"));
    let nodes = three_zones();
    let p = pods(&[("a", 6), ("b", 1), ("c", 1)]);
    let changes = reconcile(&svc, &p, Some(&nodes), &[], ControllerConfig::default());
    assert!(
        changes.hints_disabled.is_empty(),
        "{:?}",
        changes.hints_disabled
    );
    let got = hints(&changes);
    assert_eq!(got.values().sum::<usize>(), 8);
    assert_eq!(got["zone-c"], 4, "{got:?}");
    assert_eq!(got["zone-a"], 2, "{got:?}");
    assert_eq!(got["zone-b"], 2, "{got:?}");
    // Every endpoint keeps its own zone and has exactly one hint.
    for e in &changes.create[0].endpoints {
        assert!(e.zone.is_some());
        assert_eq!(e.hints.as_ref().unwrap().for_zones.len(), 1);
    }
    // Reconciling again with the result changes nothing.
    let existing = changes.apply(&[]);
    let again = reconcile(
        &svc,
        &p,
        Some(&nodes),
        &existing,
        ControllerConfig::default(),
    );
    assert!(again.is_empty(), "{again:#?}");
}

#[test]
fn safeguards_remove_every_hint() {
    let svc = service(Some("Auto"));
    let check = |nodes: &[Node], p: &[Pod], want: HintsDisabled| {
        let changes = reconcile(&svc, p, Some(nodes), &[], ControllerConfig::default());
        assert!(hints(&changes).is_empty(), "{want:?}");
        assert_eq!(
            changes.hints_disabled,
            vec![(crate::model::AddressType::Ipv4, want)]
        );
    };
    let p = pods(&[("a", 2), ("b", 2), ("c", 2)]);
    // A ready node without a zone, or without CPU.
    let mut nodes = three_zones();
    nodes.push(node("d", None, "4", true));
    check(&nodes, &p, HintsDisabled::InsufficientNodeInfo);
    let mut nodes = three_zones();
    nodes[0] = node("a", Some("zone-a"), "0", true);
    check(&nodes, &p, HintsDisabled::InsufficientNodeInfo);
    // Ready nodes in one zone only (the others are not ready).
    let nodes = vec![
        node("a", Some("zone-a"), "4", true),
        node("b", Some("zone-b"), "4", false),
    ];
    check(
        &nodes,
        &pods(&[("a", 2)]),
        HintsDisabled::InsufficientNodeInfo,
    );
    // Fewer endpoints than zones.
    check(
        &three_zones(),
        &pods(&[("a", 1), ("b", 1)]),
        HintsDisabled::InsufficientNumberOfEndpoints {
            endpoints: 2,
            zones: 3,
        },
    );
    // One zone with nearly all the CPU: its minimum share leaves too little for the rest.
    let nodes = vec![
        node("a", Some("zone-a"), "96", true),
        node("b", Some("zone-b"), "1", true),
        node("c", Some("zone-c"), "1", true),
    ];
    check(
        &nodes,
        &pods(&[("a", 1), ("b", 1), ("c", 1)]),
        HintsDisabled::MinAllocationExceedsOverloadThreshold {
            endpoints: 3,
            zones: 3,
        },
    );
    // Control-plane nodes do not count: with the big one, zone-b would want nearly every
    // endpoint (and the overload safeguard would trip); without it the zones are even.
    let mut nodes = vec![
        node("a", Some("zone-a"), "4", true),
        node("b", Some("zone-b"), "4", true),
        node("c", Some("zone-b"), "92", true),
    ];
    nodes[2].metadata.labels.get_or_insert_default().insert(
        "node-role.kubernetes.io/control-plane".into(),
        String::new(),
    );
    let p = pods(&[("a", 2), ("b", 2)]);
    let changes = reconcile(&svc, &p, Some(&nodes), &[], ControllerConfig::default());
    assert!(
        changes.hints_disabled.is_empty(),
        "{:?}",
        changes.hints_disabled
    );
    assert_eq!(
        hints(&changes),
        [("zone-a".to_string(), 2), ("zone-b".to_string(), 2)].into()
    );
}

#[test]
fn an_endpoint_without_a_zone_disables_hints() {
    let svc = service(Some("Auto"));
    // The pods' node has no zone label, but Node info is sufficient otherwise... no: a
    // ready node without a zone is itself insufficient information. So the zone-less
    // endpoint comes from a slice written by hand.
    let nodes = three_zones();
    let p = pods(&[("a", 1), ("b", 1), ("c", 2)]);
    let mut existing =
        reconcile(&svc, &p, Some(&nodes), &[], ControllerConfig::default()).apply(&[]);
    existing[0].endpoints[0].zone = None;
    existing[0].endpoints[0].hints = None;
    // The reconcile puts the zone back (it comes from the node), so hints stay on.
    let changes = reconcile(
        &svc,
        &p,
        Some(&nodes),
        &existing,
        ControllerConfig::default(),
    );
    assert!(changes.hints_disabled.is_empty());
    // The topology cache alone, on a slice with a zone-less ready endpoint.
    let ratios = zone_cpu_ratios(&nodes);
    let mut si = SliceInfo {
        to_update: existing,
        ..SliceInfo::default()
    };
    assert_eq!(
        add_hints(&mut si, ratios.as_ref()),
        Err(HintsDisabled::NoZoneSpecified)
    );
    assert!(si.to_update[0].endpoints.iter().all(|e| e.hints.is_none()));
}

#[test]
fn turning_the_annotation_off_removes_the_hints_and_precedes_traffic_distribution() {
    let nodes = three_zones();
    let p = pods(&[("a", 2), ("b", 2), ("c", 4)]);
    let on = service(Some("Auto"));
    let existing = reconcile(&on, &p, Some(&nodes), &[], ControllerConfig::default()).apply(&[]);
    assert!(existing[0].endpoints.iter().all(|e| e.hints.is_some()));
    let off = service(None);
    let changes = reconcile(
        &off,
        &p,
        Some(&nodes),
        &existing,
        ControllerConfig::default(),
    );
    assert_eq!(changes.update.len(), 1);
    assert!(
        changes.update[0]
            .endpoints
            .iter()
            .all(|e| e.hints.is_none())
    );
    // With the annotation, `trafficDistribution: PreferSameNode` adds no node hints.
    let mut both = Service::new("shop", "web");
    both.spec = on.object.spec.clone();
    both.metadata.annotations = on.object.metadata.annotations;
    both.spec.traffic_distribution = Some(crate::model::TrafficDistribution::PreferSameNode);
    let both = validate_service(&both).unwrap();
    let changes = reconcile(&both, &p, Some(&nodes), &[], ControllerConfig::default());
    assert!(
        changes.create[0]
            .endpoints
            .iter()
            .all(|e| e.hints.as_ref().unwrap().for_nodes.is_empty())
    );
}

#[test]
fn cpu_quantities() {
    for (q, m) in [
        ("4", 4000),
        ("3500m", 3500),
        ("1.5", 1500),
        ("2k", 2_000_000),
        ("0.0001", 1),
    ] {
        assert_eq!(parse_millis(q), Some(m), "{q}");
    }
    assert_eq!(parse_millis("four"), None);
}

/// Surprising but Kubernetes': an endpoint in a zone whose nodes do not count (here, only
/// control-plane nodes) keeps a hint for its own zone. `AddHints` gives every ready
/// endpoint its own zone first and redistributes only between zones that have an
/// allocation (`staging/src/k8s.io/endpointslice/topologycache/topologycache.go`).
#[test]
fn a_zone_without_counted_capacity_keeps_its_own_hints() {
    let svc = service(Some("Auto"));
    let mut nodes = three_zones();
    nodes[2].metadata.labels.get_or_insert_default().insert(
        "node-role.kubernetes.io/control-plane".into(),
        String::new(),
    );
    let p = pods(&[("a", 2), ("b", 2), ("c", 2)]);
    let changes = reconcile(&svc, &p, Some(&nodes), &[], ControllerConfig::default());
    assert_eq!(
        hints(&changes),
        [
            ("zone-a".to_string(), 2),
            ("zone-b".to_string(), 2),
            ("zone-c".to_string(), 2)
        ]
        .into()
    );
}
