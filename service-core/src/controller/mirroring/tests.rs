//! The mirroring controller's behaviour as Kubernetes documents it ("EndpointSlice
//! mirroring" in the Services networking docs, and `pkg/controller/endpointslicemirroring`).

use super::*;
use crate::defaults;
use crate::model::{Protocol, Service, ServicePort};
use crate::validation::validate_service;

fn service(selector: bool) -> ValidService {
    let mut svc = Service::new("shop", "db");
    svc.spec.cluster_ip = Some("10.96.0.30".into());
    if selector {
        svc.spec.selector = Some([("app".to_string(), "db".to_string())].into());
    }
    svc.spec.ports.push(ServicePort::tcp("sql", 5432));
    defaults::service(&mut svc);
    validate_service(&svc).unwrap()
}

fn endpoints(yaml: &str) -> Endpoints {
    let mut ep: Endpoints = serde_saphyr::from_str(yaml).unwrap();
    ep.metadata.uid = Some("ep-uid".into());
    ep
}

const DB: &str = r#"
metadata:
  name: db
  namespace: shop
  labels: {team: data, endpointslice.kubernetes.io/managed-by: someone}
  annotations:
    note: kept
    endpoints.kubernetes.io/last-change-trigger-time: "2026-01-01T00:00:00Z"
    kubectl.kubernetes.io/last-applied-configuration: "{}"
subsets:
- addresses: [{ip: 10.1.0.1, nodeName: node-a, hostname: db-0}, {ip: "fd00::1"}]
  notReadyAddresses: [{ip: 10.1.0.2}]
  ports: [{name: sql, port: 5432, protocol: TCP}]
- addresses: [{ip: 10.1.0.9}]
  ports: [{name: admin, port: 9000, protocol: TCP}]
"#;

fn mirror(
    svc: Option<&ValidService>,
    ep: Option<&Endpoints>,
    existing: &[EndpointSlice],
) -> Mirror {
    reconcile_mirror("shop", "db", svc, ep, existing, MAX_ENDPOINTS_PER_SUBSET)
}

fn addresses(s: &EndpointSlice) -> Vec<(&str, Option<bool>)> {
    s.endpoints
        .iter()
        .map(|e| {
            (
                e.addresses[0].as_str(),
                e.conditions.as_ref().and_then(|c| c.ready),
            )
        })
        .collect()
}

#[test]
fn a_service_without_selector_gets_one_slice_per_family_and_port_set() {
    let m = mirror(Some(&service(false)), Some(&endpoints(DB)), &[]);
    assert!(m.changes.update.is_empty() && m.changes.delete.is_empty());
    let created = &m.changes.create;
    assert_eq!(created.len(), 3, "{created:#?}");
    let find = |family: AddressType, port: i32| {
        created
            .iter()
            .find(|s| s.address_type == family && s.ports[0].port == Some(port))
            .unwrap_or_else(|| panic!("{family:?} {port}: {created:#?}"))
    };
    let v4 = find(AddressType::Ipv4, 5432);
    // Ready addresses first, then the not-ready ones with `ready: false`; nothing else of
    // the newer conditions is set.
    assert_eq!(
        addresses(v4),
        [("10.1.0.1", Some(true)), ("10.1.0.2", Some(false))]
    );
    let c = v4.endpoints[0].conditions.as_ref().unwrap();
    assert_eq!((c.serving, c.terminating), (None, None));
    assert_eq!(v4.endpoints[0].node_name.as_deref(), Some("node-a"));
    assert_eq!(v4.endpoints[0].hostname.as_deref(), Some("db-0"));
    assert_eq!(
        addresses(find(AddressType::Ipv6, 5432)),
        [("fd00::1", Some(true))]
    );
    assert_eq!(
        addresses(find(AddressType::Ipv4, 9000)),
        [("10.1.0.9", Some(true))]
    );
    // Labels copied, then the service name and the mirroring controller as manager.
    let labels = v4.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["team"], "data");
    assert_eq!(labels[SERVICE_NAME_LABEL], "db");
    assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY_MIRRORING);
    // Annotations copied but the trigger time and kubectl's last applied configuration.
    let annotations = v4.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations.len(), 1, "{annotations:?}");
    assert_eq!(annotations["note"], "kept");
    // Owned by the Endpoints; named from it.
    let owner = &v4.metadata.owner_references[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("Endpoints", "db", "ep-uid")
    );
    assert_eq!(owner.controller, Some(true));
    assert!(
        v4.metadata.name().starts_with("db-"),
        "{}",
        v4.metadata.name()
    );
    let names: BTreeSet<&str> = created.iter().map(|s| s.metadata.name()).collect();
    assert_eq!(names.len(), 3, "distinct names");
}

#[test]
fn nothing_is_mirrored_for_a_selector_a_missing_service_skip_mirror_or_a_lock() {
    let ep = endpoints(DB);
    let made = mirror(Some(&service(false)), Some(&ep), &[]).changes.create;
    // Each case deletes what was mirrored before.
    let check = |svc: Option<&ValidService>, ep: Option<&Endpoints>, why: &str| {
        let m = mirror(svc, ep, &made);
        assert!(
            m.changes.create.is_empty() && m.changes.update.is_empty(),
            "{why}"
        );
        assert_eq!(m.changes.delete.len(), made.len(), "{why}");
    };
    check(
        Some(&service(true)),
        Some(&ep),
        "the Service has a selector",
    );
    check(None, Some(&ep), "no Service");
    check(Some(&service(false)), None, "no Endpoints");
    let mut skip = ep.clone();
    skip.metadata
        .labels
        .get_or_insert_default()
        .insert(SKIP_MIRROR_LABEL.into(), "true".into());
    check(Some(&service(false)), Some(&skip), "skip-mirror");
    let mut lock = ep.clone();
    lock.metadata
        .annotations
        .get_or_insert_default()
        .insert(LEADER_ELECTION_ANNOTATION.into(), "{}".into());
    check(Some(&service(false)), Some(&lock), "leader election");
    // Only "true" skips.
    let mut not_skipped = ep.clone();
    not_skipped
        .metadata
        .labels
        .get_or_insert_default()
        .insert(SKIP_MIRROR_LABEL.into(), "false".into());
    assert!(should_mirror(&not_skipped));
    // Slices of other Endpoints, or managed by someone else, are left alone.
    let mut foreign = made[0].clone();
    foreign.metadata.labels.get_or_insert_default().insert(
        MANAGED_BY_LABEL.into(),
        "endpointslice-controller.k8s.io".into(),
    );
    let m = mirror(Some(&service(true)), Some(&ep), &[foreign]);
    assert!(m.changes.is_empty(), "{m:?}");
}

#[test]
fn at_most_1000_addresses_per_subset_ready_first_and_invalid_ones_skipped() {
    let mut ep = endpoints(DB);
    let subset = &mut ep.subsets[0];
    subset.addresses = (0..1001)
        .map(|i| EndpointAddress {
            ip: format!("10.2.{}.{}", i / 250, i % 250 + 1),
            ..EndpointAddress::default()
        })
        .collect();
    subset.not_ready_addresses = vec![EndpointAddress {
        ip: "10.3.0.1".into(),
        ..EndpointAddress::default()
    }];
    ep.subsets[1].addresses.push(EndpointAddress {
        ip: "not-an-ip".into(),
        ..EndpointAddress::default()
    });
    let m = mirror(Some(&service(false)), Some(&ep), &[]);
    let v4 = m
        .changes
        .create
        .iter()
        .find(|s| s.address_type == AddressType::Ipv4 && s.ports[0].port == Some(5432))
        .unwrap();
    assert_eq!(v4.endpoints.len(), 1000);
    assert!(
        v4.endpoints
            .iter()
            .all(|e| e.conditions.as_ref().unwrap().ready == Some(true))
    );
    assert_eq!(
        m.over_capacity, 2,
        "the last ready address and the not-ready one"
    );
    assert_eq!(m.invalid_addresses, 1);
    // A smaller limit applies the same way.
    let m = reconcile_mirror(
        "shop",
        "db",
        Some(&service(false)),
        Some(&endpoints(DB)),
        &[],
        1,
    );
    let v4 = m
        .changes
        .create
        .iter()
        .find(|s| s.address_type == AddressType::Ipv4 && s.ports[0].port == Some(5432))
        .unwrap();
    assert_eq!(addresses(v4), [("10.1.0.1", Some(true))]);
}

#[test]
fn subsets_with_the_same_ports_share_a_slice_and_addresses_are_canonical() {
    let ep = endpoints(
        r#"
metadata: {name: db, namespace: shop}
subsets:
- addresses: [{ip: 10.1.0.1}]
  ports: [{name: a, port: 1, protocol: TCP}, {name: b, port: 2, protocol: UDP}]
- addresses: [{ip: 10.1.0.1}, {ip: "010.001.000.002"}]
  ports: [{name: b, port: 2, protocol: UDP}, {name: a, port: 1, protocol: TCP}]
"#,
    );
    let m = mirror(Some(&service(false)), Some(&ep), &[]);
    assert_eq!(m.changes.create.len(), 1, "{:#?}", m.changes.create);
    // The duplicate is one endpoint; a sloppy IPv4 address is written canonically.
    assert_eq!(
        addresses(&m.changes.create[0]),
        [("10.1.0.1", Some(true)), ("10.1.0.2", Some(true))]
    );
    assert_eq!(m.changes.create[0].ports[1].protocol, Some(Protocol::Udp));
}

#[test]
fn existing_slices_are_kept_updated_in_place_or_recycled() {
    let svc = service(false);
    let ep = endpoints(DB);
    let made = mirror(Some(&svc), Some(&ep), &[]).changes.create;
    // Nothing changed: nothing to write.
    assert!(mirror(Some(&svc), Some(&ep), &made).changes.is_empty());
    // An address changes: the slice of that port set is updated under its name.
    let mut ep2 = ep.clone();
    ep2.subsets[1].addresses[0].ip = "10.1.0.10".into();
    let m = mirror(Some(&svc), Some(&ep2), &made);
    assert!(
        m.changes.create.is_empty() && m.changes.delete.is_empty(),
        "{m:#?}"
    );
    assert_eq!(m.changes.update.len(), 1);
    let admin = made.iter().find(|s| s.ports[0].port == Some(9000)).unwrap();
    assert_eq!(m.changes.update[0].metadata.name(), admin.metadata.name());
    assert_eq!(addresses(&m.changes.update[0]), [("10.1.0.10", Some(true))]);
    // The admin port moves: its slice is reused for the new port set, not deleted and
    // created again.
    let mut ep3 = ep.clone();
    ep3.subsets[1].ports[0].port = Some(9001);
    let m = mirror(Some(&svc), Some(&ep3), &made);
    assert!(
        m.changes.create.is_empty() && m.changes.delete.is_empty(),
        "{m:#?}"
    );
    assert_eq!(m.changes.update[0].metadata.name(), admin.metadata.name());
    assert_eq!(m.changes.update[0].ports[0].port, Some(9001));
    // A second slice for the same port set (written by hand) is deleted.
    let mut extra = admin.clone();
    extra.metadata.name = Some("db-extra".into());
    let mut existing = made.clone();
    existing.push(extra);
    let m = mirror(Some(&svc), Some(&ep), &existing);
    assert_eq!(
        m.changes
            .delete
            .iter()
            .map(|s| s.metadata.name())
            .collect::<Vec<_>>(),
        ["db-extra"]
    );
    // Endpoints being deleted get no new slices.
    let mut going = ep;
    going.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
    assert!(
        mirror(Some(&svc), Some(&going), &[])
            .changes
            .create
            .is_empty()
    );
}
