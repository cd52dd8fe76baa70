use super::*;
use crate::defaults;
use crate::model::{
    Container, ContainerPort, IntOrString, PodCondition, PodIp, PodPhase, PodStatus, Service,
    ServicePort,
};
use crate::validation::validate_service;

fn service(f: impl FnOnce(&mut Service)) -> ValidService {
    let mut svc = Service::new("shop", "web");
    svc.metadata.uid = Some("svc-uid".into());
    svc.spec.cluster_ip = Some("10.96.0.10".into());
    svc.spec.selector = Some([("app".to_string(), "web".to_string())].into());
    let mut http = ServicePort::tcp("http", 80);
    http.target_port = Some(IntOrString::String("http".into()));
    svc.spec.ports.push(http);
    f(&mut svc);
    defaults::service(&mut svc);
    validate_service(&svc).unwrap()
}

struct PodSpec<'a> {
    name: &'a str,
    ip: &'a str,
    ready: bool,
}

fn pod(p: PodSpec<'_>) -> Pod {
    let mut pod = Pod {
        metadata: ObjectMeta::named("shop", p.name),
        ..Pod::default()
    };
    pod.metadata.uid = Some(format!("uid-{}", p.name));
    pod.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
    pod.spec.node_name = Some("node-a".into());
    pod.spec.containers.push(Container {
        name: "app".into(),
        ports: vec![ContainerPort {
            name: Some("http".into()),
            container_port: 8080,
            protocol: Some(Protocol::Tcp),
            host_port: None,
        }],
        ..Container::default()
    });
    pod.status = Some(PodStatus {
        phase: Some(PodPhase::Running),
        pod_ip: Some(p.ip.into()),
        pod_ips: vec![PodIp { ip: p.ip.into() }],
        conditions: vec![PodCondition {
            type_: "Ready".into(),
            status: if p.ready { "True" } else { "False" }.into(),
            ..PodCondition::default()
        }],
        ..PodStatus::default()
    });
    pod
}

fn ready(name: &str, ip: &str) -> Pod {
    pod(PodSpec {
        name,
        ip,
        ready: true,
    })
}

fn cond(ep: &Endpoint) -> (bool, bool, bool) {
    let c = ep.conditions.unwrap();
    (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
}

fn ips(slice: &EndpointSlice) -> Vec<&str> {
    slice
        .endpoints
        .iter()
        .map(|e| e.addresses[0].as_str())
        .collect()
}

#[test]
fn which_pods_count_and_their_conditions() {
    let svc = service(|_| {});
    let mut terminating = ready("c-terminating", "10.1.0.3");
    terminating.metadata.deletion_timestamp = Some("2024-01-01T00:00:00Z".into());
    let mut terminal = ready("d-done", "10.1.0.4");
    terminal.status.as_mut().unwrap().phase = Some(PodPhase::Succeeded);
    let mut no_ip = ready("e-pending", "10.1.0.5");
    no_ip.status.as_mut().unwrap().pod_ip = None;
    no_ip.status.as_mut().unwrap().pod_ips.clear();
    let mut other_ns = ready("f-elsewhere", "10.1.0.6");
    other_ns.metadata.namespace = Some("other".into());
    let mut other_app = ready("g-other", "10.1.0.7");
    other_app.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
    let pods = vec![
        ready("a-ready", "10.1.0.1"),
        pod(PodSpec {
            name: "b-unready",
            ip: "10.1.0.2",
            ready: false,
        }),
        terminating,
        terminal,
        no_ip,
        other_ns,
        other_app,
    ];

    let slices = endpoint_slices(&svc, &pods, None, ControllerConfig::default());
    assert_eq!(slices.len(), 1);
    let s = &slices[0];
    assert_eq!(ips(s), ["10.1.0.1", "10.1.0.2", "10.1.0.3"]);
    assert_eq!(cond(&s.endpoints[0]), (true, true, false));
    assert_eq!(cond(&s.endpoints[1]), (false, false, false));
    // Terminating pods are in slices, never ready.
    assert_eq!(cond(&s.endpoints[2]), (false, true, true));
    assert_eq!(s.ports[0].port, Some(8080));
    assert_eq!(s.ports[0].name.as_deref(), Some("http"));
    assert_eq!(s.address_type, AddressType::Ipv4);
    assert_eq!(s.service_name(), Some("web"));
    assert_eq!(
        s.metadata.label(MANAGED_BY_LABEL),
        Some(MANAGED_BY_CONTROLLER)
    );
    assert!(s.metadata.name().starts_with("web-"));
    assert_eq!(s.metadata.owner_references[0].uid, "svc-uid");
    assert_eq!(
        s.endpoints[0].target_ref.as_ref().unwrap().name.as_deref(),
        Some("a-ready")
    );

    // Legacy Endpoints leave terminating pods out and split ready from not ready.
    let ep = endpoints(&svc, &pods).unwrap();
    assert_eq!(ep.subsets.len(), 1);
    let ss = &ep.subsets[0];
    assert_eq!(ss.addresses.len(), 1);
    assert_eq!(ss.addresses[0].ip, "10.1.0.1");
    assert_eq!(ss.not_ready_addresses.len(), 1);
    assert_eq!(ss.not_ready_addresses[0].ip, "10.1.0.2");
    assert_eq!(ss.ports[0].port, Some(8080));
}

#[test]
fn publish_not_ready_addresses_makes_everything_ready() {
    let svc = service(|s| s.spec.publish_not_ready_addresses = Some(true));
    let mut terminating = ready("c", "10.1.0.3");
    terminating.metadata.deletion_timestamp = Some("2024-01-01T00:00:00Z".into());
    let pods = vec![
        pod(PodSpec {
            name: "b",
            ip: "10.1.0.2",
            ready: false,
        }),
        terminating,
    ];
    let slices = endpoint_slices(&svc, &pods, None, ControllerConfig::default());
    assert_eq!(cond(&slices[0].endpoints[0]), (true, false, false));
    assert_eq!(cond(&slices[0].endpoints[1]), (true, true, true));
    let ep = endpoints(&svc, &pods).unwrap();
    assert_eq!(ep.subsets[0].addresses.len(), 2);
    assert!(ep.subsets[0].not_ready_addresses.is_empty());
}

#[test]
fn named_target_ports_resolve_per_pod_and_group_slices() {
    let svc = service(|_| {});
    let mut other = ready("b", "10.1.0.2");
    other.spec.containers[0].ports[0].container_port = 9090;
    let mut missing = ready("c", "10.1.0.3");
    missing.spec.containers[0].ports[0].name = Some("metrics".into());
    let mut udp_only = ready("d", "10.1.0.4");
    udp_only.spec.containers[0].ports[0].protocol = Some(Protocol::Udp);
    let mut sidecar = ready("e", "10.1.0.5");
    sidecar.spec.containers[0].ports.clear();
    sidecar.spec.init_containers.push(Container {
        name: "proxy".into(),
        restart_policy: Some("Always".into()),
        ports: vec![ContainerPort {
            name: Some("http".into()),
            container_port: 15001,
            protocol: Some(Protocol::Tcp),
            host_port: None,
        }],
        ..Container::default()
    });
    let pods = vec![ready("a", "10.1.0.1"), other, missing, udp_only, sidecar];
    let mut slices = endpoint_slices(&svc, &pods, None, ControllerConfig::default());
    slices.sort_by_key(|s| s.ports.first().and_then(|p| p.port));
    let summary: Vec<(Option<i32>, Vec<&str>)> = slices
        .iter()
        .map(|s| (s.ports.first().and_then(|p| p.port), ips(s)))
        .collect();
    assert_eq!(
        summary,
        vec![
            // Pods without a TCP port named "http" are still endpoints, with no ports.
            (None, vec!["10.1.0.3", "10.1.0.4"]),
            (Some(8080), vec!["10.1.0.1"]),
            (Some(9090), vec!["10.1.0.2"]),
            (Some(15001), vec!["10.1.0.5"]),
        ]
    );
    // Legacy Endpoints: one subset per distinct address set.
    let ep = endpoints(&svc, &pods).unwrap();
    let ports: Vec<Option<i32>> = ep.subsets.iter().map(|s| s.ports[0].port).collect();
    assert_eq!(ports, vec![Some(8080), Some(9090), Some(15001)]);
}

#[test]
fn hostname_only_when_subdomain_names_the_service() {
    let svc = service(|s| {
        s.spec.cluster_ip = Some("None".into());
    });
    let mut a = ready("a", "10.1.0.1");
    a.spec.hostname = Some("web-0".into());
    a.spec.subdomain = Some("web".into());
    let mut b = ready("b", "10.1.0.2");
    b.spec.hostname = Some("web-1".into());
    b.spec.subdomain = Some("other".into());
    let slices = endpoint_slices(&svc, &[a, b], None, ControllerConfig::default());
    assert_eq!(slices[0].endpoints[0].hostname.as_deref(), Some("web-0"));
    assert_eq!(slices[0].endpoints[1].hostname, None);
    assert_eq!(slices[0].metadata.label(HEADLESS_LABEL), Some(""));
    let ep = endpoints(&svc, &slices_pods()).unwrap();
    assert!(ep.metadata.label(HEADLESS_LABEL).is_some());
}

fn slices_pods() -> Vec<Pod> {
    vec![ready("a", "10.1.0.1")]
}

#[test]
fn at_most_max_endpoints_per_slice() {
    let svc = service(|_| {});
    let pods: Vec<Pod> = (0..250)
        .map(|i| {
            ready(
                &format!("p{i:03}"),
                &format!("10.1.{}.{}", i / 200, i % 200 + 1),
            )
        })
        .collect();
    let slices = endpoint_slices(&svc, &pods, None, ControllerConfig::default());
    let sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
    let mut sorted = sizes;
    sorted.sort_unstable();
    assert_eq!(sorted, vec![50, 100, 100]);
    let names: BTreeSet<&str> = slices.iter().map(|s| s.metadata.name()).collect();
    assert_eq!(names.len(), 3, "slice names are unique");
    let small = endpoint_slices(
        &svc,
        &pods[..5],
        None,
        ControllerConfig {
            max_endpoints_per_slice: 2,
        },
    );
    assert_eq!(small.len(), 3);
}

#[test]
fn dual_stack_services_get_a_slice_per_family() {
    let svc = service(|s| {
        s.spec.cluster_ips = vec!["10.96.0.10".into(), "fd00::10".into()];
        s.spec.ip_families = vec![IpFamily::Ipv4, IpFamily::Ipv6];
        s.spec.ip_family_policy = Some(crate::model::IpFamilyPolicy::PreferDualStack);
    });
    let mut p = ready("a", "10.1.0.1");
    p.status.as_mut().unwrap().pod_ips.push(PodIp {
        ip: "fd00:1::1".into(),
    });
    let slices = endpoint_slices(&svc, &[p.clone()], None, ControllerConfig::default());
    let families: Vec<(&AddressType, Vec<&str>)> =
        slices.iter().map(|s| (&s.address_type, ips(s))).collect();
    assert!(families.contains(&(&AddressType::Ipv4, vec!["10.1.0.1"])));
    assert!(families.contains(&(&AddressType::Ipv6, vec!["fd00:1::1"])));
    // Legacy Endpoints carry the primary family only.
    let ep = endpoints(&svc, &[p]).unwrap();
    assert_eq!(ep.subsets[0].addresses.len(), 1);
    assert_eq!(ep.subsets[0].addresses[0].ip, "10.1.0.1");
}

#[test]
fn headless_without_ports() {
    let svc = service(|s| {
        s.spec.cluster_ip = Some("None".into());
        s.spec.ports.clear();
    });
    let slices = endpoint_slices(
        &svc,
        &[ready("a", "10.1.0.1")],
        None,
        ControllerConfig::default(),
    );
    assert!(slices.iter().all(|s| s.ports.is_empty()));
    assert!(slices.iter().any(|s| ips(s) == ["10.1.0.1"]));
    let ep = endpoints(&svc, &[ready("a", "10.1.0.1")]).unwrap();
    assert_eq!(ep.subsets.len(), 1);
    assert!(ep.subsets[0].ports.is_empty());
    assert_eq!(ep.subsets[0].addresses[0].ip, "10.1.0.1");
}

#[test]
fn no_selector_or_external_name_means_no_controller() {
    let svc = service(|s| s.spec.selector = None);
    assert!(
        reconcile(
            &svc,
            &[ready("a", "10.1.0.1")],
            None,
            &[],
            ControllerConfig::default()
        )
        .is_empty()
    );
    assert!(endpoints(&svc, &[ready("a", "10.1.0.1")]).is_none());
    // An empty selector behaves as an absent one (protobuf storage drops empty maps).
    let svc = service(|s| s.spec.selector = Some(BTreeMap::new()));
    assert!(endpoints(&svc, &[ready("a", "10.1.0.1")]).is_none());
    let mut ext = Service::new("shop", "ext");
    ext.spec.type_ = Some(ServiceType::ExternalName);
    ext.spec.external_name = Some("example.com".into());
    ext.spec.selector = Some([("app".to_string(), "web".to_string())].into());
    defaults::service(&mut ext);
    let ext = validate_service(&ext).unwrap();
    assert!(endpoints(&ext, &[ready("a", "10.1.0.1")]).is_none());
}

#[test]
fn reconcile_minimises_churn() {
    let svc = service(|_| {});
    let cfg = ControllerConfig::default();
    let first = endpoint_slices(
        &svc,
        &[ready("a", "10.1.0.1"), ready("b", "10.1.0.2")],
        None,
        cfg,
    );
    assert_eq!(first.len(), 1);
    let name = first[0].metadata.name().to_owned();

    // Nothing changed: nothing to write.
    let same = reconcile(
        &svc,
        &[ready("a", "10.1.0.1"), ready("b", "10.1.0.2")],
        None,
        &first,
        cfg,
    );
    assert!(same.is_empty(), "{same:#?}");

    // b goes, c comes: the existing slice is updated in place.
    let pods = [ready("a", "10.1.0.1"), ready("c", "10.1.0.3")];
    let changes = reconcile(&svc, &pods, None, &first, cfg);
    assert!(changes.create.is_empty() && changes.delete.is_empty());
    assert_eq!(changes.update.len(), 1);
    assert_eq!(changes.update[0].metadata.name(), name);
    assert_eq!(ips(&changes.update[0]), ["10.1.0.1", "10.1.0.3"]);

    // A readiness change updates the endpoint where it is.
    let pods = [
        ready("a", "10.1.0.1"),
        pod(PodSpec {
            name: "b",
            ip: "10.1.0.2",
            ready: false,
        }),
    ];
    let changes = reconcile(&svc, &pods, None, &first, cfg);
    assert_eq!(changes.update.len(), 1);
    assert!(!cond(&changes.update[0].endpoints[1]).0);

    // Everything gone: the slice is replaced by an empty placeholder.
    let changes = reconcile(&svc, &[], None, &first, cfg);
    assert_eq!(changes.delete.len(), 1);
    assert_eq!(changes.create.len(), 1);
    assert!(changes.create[0].endpoints.is_empty() && changes.create[0].ports.is_empty());
    let after = changes.apply(&first);
    // And the placeholder stays while there are no endpoints.
    assert!(reconcile(&svc, &[], None, &after, cfg).is_empty());
    // Pods come back: a real slice is created and the placeholder deleted.
    let changes = reconcile(&svc, &[ready("a", "10.1.0.1")], None, &after, cfg);
    assert_eq!(changes.create.len(), 1);
    assert_eq!(changes.delete.len(), 1);
    assert!(changes.delete[0].endpoints.is_empty());
}

#[test]
fn reconcile_fills_the_closest_to_full_slice() {
    let svc = service(|_| {});
    let cfg = ControllerConfig {
        max_endpoints_per_slice: 3,
    };
    let pods: Vec<Pod> = (1..=5)
        .map(|i| ready(&format!("p{i}"), &format!("10.1.0.{i}")))
        .collect();
    let existing = endpoint_slices(&svc, &pods, None, cfg);
    assert_eq!(existing.iter().map(|s| s.endpoints.len()).sum::<usize>(), 5);
    let mut more = pods;
    more.push(ready("p6", "10.1.0.6"));
    let changes = reconcile(&svc, &more, None, &existing, cfg);
    assert!(
        changes.create.is_empty(),
        "the slice with room takes the new endpoint"
    );
    assert_eq!(changes.update.len(), 1);
    assert_eq!(changes.update[0].endpoints.len(), 3);
}

#[test]
fn zones_hints_and_unknown_nodes() {
    let svc = service(|s| s.spec.traffic_distribution = Some(TrafficDistribution::PreferClose));
    let mut node = Node {
        metadata: ObjectMeta::named("", "node-a"),
        ..Node::default()
    };
    node.metadata.labels =
        Some([(crate::model::ZONE_LABEL.to_string(), "zone-1".to_string())].into());
    let mut elsewhere = ready("b", "10.1.0.2");
    elsewhere.spec.node_name = Some("node-gone".into());
    let pods = [ready("a", "10.1.0.1"), elsewhere];
    let slices = endpoint_slices(&svc, &pods, Some(&[node]), ControllerConfig::default());
    // The pod on an unknown node is skipped.
    assert_eq!(ips(&slices[0]), ["10.1.0.1"]);
    let ep = &slices[0].endpoints[0];
    assert_eq!(ep.zone.as_deref(), Some("zone-1"));
    assert_eq!(ep.hints.as_ref().unwrap().for_zones[0].name, "zone-1");
    // Without a node list, nothing is skipped and no zones are known.
    let slices = endpoint_slices(&svc, &pods, None, ControllerConfig::default());
    assert_eq!(slices[0].endpoints.len(), 2);
    assert!(slices[0].endpoints[0].hints.is_none());
}

#[test]
fn legacy_endpoints_truncate_at_1000() {
    let svc = service(|_| {});
    let pods: Vec<Pod> = (0..1100)
        .map(|i| {
            pod(PodSpec {
                name: &format!("p{i:04}"),
                ip: &format!("10.1.{}.{}", i / 250, i % 250 + 1),
                ready: i < 900,
            })
        })
        .collect();
    let ep = endpoints(&svc, &pods).unwrap();
    let ready: usize = ep.subsets.iter().map(|s| s.addresses.len()).sum();
    let not_ready: usize = ep.subsets.iter().map(|s| s.not_ready_addresses.len()).sum();
    assert_eq!(ready, 900);
    assert_eq!(not_ready, 100);
    assert_eq!(
        ep.metadata
            .annotation("endpoints.kubernetes.io/over-capacity"),
        Some("truncated")
    );
}

#[test]
fn legacy_addresses_sort_as_strings() {
    // Kubernetes sorts Endpoints addresses by the IP *string*: "10.0.0.10" < "10.0.0.9"
    // (pkg/api/v1/endpoints/util.go, LessEndpointAddress).
    let svc = service(|_| {});
    let ep = endpoints(&svc, &[ready("a", "10.0.0.9"), ready("b", "10.0.0.10")]).unwrap();
    let got: Vec<&str> = ep.subsets[0]
        .addresses
        .iter()
        .map(|a| a.ip.as_str())
        .collect();
    assert_eq!(got, ["10.0.0.10", "10.0.0.9"]);
}
