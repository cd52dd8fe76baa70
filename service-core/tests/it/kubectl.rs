//! Real `kubectl get -o yaml` output loads, validates and round-trips.

use service_core::cluster::Cluster;
use service_core::manifest::{Object, load_str};
use service_core::snapshot::NodeInfo;

const KUBECTL: &str = include_str!("../fixtures/kubectl-get-svc-eps.yaml");

#[test]
fn kubectl_output_round_trips_field_for_field() {
    let original: serde_json::Value = serde_saphyr::from_str(KUBECTL).unwrap();
    let items = original["items"].as_array().unwrap();
    let loaded = load_str("kubectl.yaml", KUBECTL).unwrap();
    assert!(loaded.warnings.is_empty());
    assert_eq!(loaded.objects.len(), items.len());
    for (obj, item) in loaded.objects.iter().zip(items) {
        let back = match &obj.object {
            Object::Service(s) => serde_json::to_value(s),
            Object::EndpointSlice(s) => serde_json::to_value(s),
            other => panic!("unexpected {}", other.kind()),
        }
        .unwrap();
        assert_eq!(&back, item, "{} did not round-trip", obj.location);
    }
}

#[test]
fn kubectl_output_is_valid_and_builds_a_snapshot() {
    let loaded = load_str("kubectl.yaml", KUBECTL).unwrap();
    let (cluster, invalid) = Cluster::from_objects(loaded.objects);
    assert!(invalid.is_empty(), "{invalid:#?}");
    let snap = cluster
        .snapshot(NodeInfo::new(
            "node-a",
            vec!["192.168.1.10".parse().unwrap()],
        ))
        .unwrap();
    let names: Vec<String> = snap.ports.keys().map(ToString::to_string).collect();
    assert_eq!(names, ["shop/edge:https/TCP", "shop/web:http/TCP"]);
    let edge = snap.ports.values().next().unwrap();
    assert_eq!(edge.session_affinity_timeout, Some(10800));
    assert_eq!(edge.health_check_node_port, Some(31877));
    assert!(edge.external_policy_local);
    let v4 = edge.ipv4.as_ref().unwrap();
    assert_eq!(
        v4.load_balancer_ips,
        vec!["198.51.100.40".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        v4.load_balancer_source_ranges,
        vec!["203.0.113.0/25".parse().unwrap()]
    );
    let web = snap.ports.values().nth(1).unwrap().ipv4.as_ref().unwrap();
    assert_eq!(web.endpoints[0].addr().to_string(), "10.244.1.17:8080");
    assert!(web.endpoints[0].is_local);
    assert_eq!(web.endpoints[0].zone.as_deref(), Some("eu-west-1a"));
}
