use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// Some instant to start the repair clock from (any will do: repair only compares them).
#[allow(clippy::disallowed_methods)]
fn epoch() -> Instant {
    Instant::now()
}
use crate::model::{IpFamilyPolicy, ParentReference, Protocol, ServiceCidr, ServicePort};

fn config(cidrs: &[&str], ports: &str) -> RegistryConfig {
    let cidrs: Vec<IpNet> = cidrs.iter().map(|c| c.parse().unwrap()).collect();
    RegistryConfig::new(&cidrs, ports.parse().unwrap()).unwrap()
}

fn registry(cidrs: &[&str]) -> Registry<MemoryStore> {
    Registry::new(
        config(cidrs, "30000-32767"),
        MemoryStore::new(),
        SeededRandom::new(7),
    )
    .unwrap()
}

fn svc(name: &str) -> Service {
    let mut s = Service::new("default", name);
    s.spec.selector = Some(BTreeMap::from([("app".into(), name.into())]));
    s.spec.ports = vec![ServicePort::tcp("http", 80)];
    s
}

fn typed(name: &str, t: ServiceType) -> Service {
    let mut s = svc(name);
    s.spec.type_ = Some(t);
    s
}

fn used<S: Store, R: Random>(r: &Registry<S, R>) -> (Vec<usize>, usize) {
    let (ips, ports) = r.allocations().unwrap();
    (ips.iter().map(IpAllocator::used).collect(), ports.used())
}

#[test]
fn create_allocates_from_the_dynamic_band() {
    let mut r = registry(&["10.0.0.0/24"]);
    let s = r.create(svc("web")).unwrap().object;
    let ip: IpAddr = s.spec.cluster_ip.as_deref().unwrap().parse().unwrap();
    assert!(matches!(ip, IpAddr::V4(v) if v.octets()[3] >= 17), "{ip}");
    assert_eq!(s.spec.cluster_ips, [ip.to_string()]);
    assert_eq!(s.spec.ip_families, [IpFamily::Ipv4]);
    assert_eq!(s.spec.ip_family_policy, Some(IpFamilyPolicy::SingleStack));
    assert_eq!(s.metadata.uid.as_deref().map(str::len), Some(36));
    assert!(s.metadata.resource_version.is_some());
    assert_eq!(r.get("default", "web").unwrap(), s);
    assert_eq!(used(&r), (vec![1], 0));
}

#[test]
fn keys_stay_out_of_the_api_servers_keyspace() {
    // kube-apiserver keeps its allocators and Services under `--etcd-prefix`, `/registry` by
    // default: sharing an etcd with a cluster must not touch them.
    let mut r = registry(&["10.0.0.0/24"]);
    r.create(typed("web", ServiceType::NodePort)).unwrap();
    let keys: Vec<String> = r
        .store()
        .list("")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.starts_with("/service-registry/")),
        "{keys:?}"
    );
    assert!(r.store().list("/registry").unwrap().is_empty());
}

#[test]
fn explicit_cluster_ip_errors_are_the_api_servers() {
    let mut r = registry(&["10.0.0.0/24"]);
    let mut a = svc("a");
    a.spec.cluster_ip = Some("10.0.0.5".into());
    r.create(a).unwrap();
    let mut b = svc("b");
    b.spec.cluster_ip = Some("10.0.0.5".into());
    let e = r.create(b).unwrap_err();
    assert_eq!((e.code, e.reason), (422, Reason::Invalid));
    assert_eq!(
        e.message,
        r#"Service "b" is invalid: spec.clusterIPs: Invalid value: []string{"10.0.0.5"}: failed to allocate IP 10.0.0.5: provided IP is already allocated"#
    );
    let mut c = svc("c");
    c.spec.cluster_ip = Some("10.0.1.5".into());
    assert_eq!(
        r.create(c).unwrap_err().message,
        r#"Service "c" is invalid: spec.clusterIPs: Invalid value: []string{"10.0.1.5"}: failed to allocate IP 10.0.1.5: provided IP is not in the valid range. The range of valid IPs is 10.0.0.0/24"#
    );
    let mut d = svc("d");
    d.spec.cluster_ip = Some("fd00::5".into());
    assert_eq!(
        r.create(d).unwrap_err().message,
        r#"Service "d" is invalid: spec.clusterIPs[0]: Invalid value: []string{"fd00::5"}: IPv6 is not configured on this cluster"#
    );
    assert_eq!(used(&r), (vec![1], 0));
}

/// kubernetes issue AKS#1843 and friends: a full range is a 500, not a 422.
#[test]
fn a_full_range_is_an_internal_error() {
    let mut r = Registry::new(
        config(&["10.0.0.0/29"], "30000-30001"),
        MemoryStore::new(),
        SeededRandom::new(1),
    )
    .unwrap();
    for i in 0..6 {
        r.create(svc(&format!("s{i}"))).unwrap();
    }
    let e = r.create(svc("s6")).unwrap_err();
    assert_eq!((e.code, e.reason), (500, Reason::InternalError));
    assert_eq!(
        e.message,
        "Internal error occurred: failed to allocate a serviceIP: range is full"
    );
}

#[test]
fn node_ports() {
    let mut r = registry(&["10.0.0.0/24"]);
    // TCP and UDP on the same port share one node port.
    let mut dns = typed("dns", ServiceType::NodePort);
    let mut udp = ServicePort::tcp("dns", 53);
    udp.protocol = Some(Protocol::Udp);
    let mut tcp = ServicePort::tcp("dns-tcp", 53);
    tcp.protocol = Some(Protocol::Tcp);
    dns.spec.ports = vec![udp, tcp];
    let dns = r.create(dns).unwrap().object;
    let np: Vec<i32> = dns.spec.ports.iter().map(node_port).collect();
    assert_eq!(np[0], np[1]);
    assert!(np[0] >= 30086, "{np:?}");
    assert_eq!(used(&r).1, 1);

    // Explicit node ports: taken and out of range are 422 on the port's path.
    let mut a = typed("a", ServiceType::NodePort);
    a.spec.ports[0].node_port = Some(np[0]);
    assert_eq!(
        r.create(a).unwrap_err().message,
        format!(
            r#"Service "a" is invalid: spec.ports[0].nodePort: Invalid value: {}: provided port is already allocated"#,
            np[0]
        )
    );
    let mut b = typed("b", ServiceType::NodePort);
    b.spec.ports[0].node_port = Some(8080);
    assert_eq!(
        r.create(b).unwrap_err().message,
        r#"Service "b" is invalid: spec.ports[0].nodePort: Invalid value: 8080: provided port is not in the valid range. The range of valid ports is 30000-32767"#
    );

    // LoadBalancer without node ports, unless one is asked for.
    let mut lb = typed("lb", ServiceType::LoadBalancer);
    lb.spec.allocate_load_balancer_node_ports = Some(false);
    lb.spec.ports.push(ServicePort::tcp("https", 443));
    lb.spec.ports[1].node_port = Some(30005);
    let lb = r.create(lb).unwrap().object;
    assert_eq!(
        lb.spec.ports.iter().map(node_port).collect::<Vec<_>>(),
        [0, 30005]
    );

    // externalTrafficPolicy: Local gets a health-check node port.
    let mut local = typed("local", ServiceType::LoadBalancer);
    local.spec.external_traffic_policy = Some(TrafficPolicy::Local);
    let local = r.create(local).unwrap().object;
    let hc = local.spec.health_check_node_port.unwrap();
    assert!(hc >= 30000 && hc != node_port(&local.spec.ports[0]));
    assert_eq!(used(&r), (vec![3], 4));
}

#[test]
fn failed_creates_release_what_they_took() {
    let mut r = registry(&["10.0.0.0/24"]);
    let mut a = typed("a", ServiceType::NodePort);
    a.spec.ports[0].node_port = Some(30100);
    r.create(a).unwrap();
    let before = used(&r);
    // The second port's node port is taken: the IP and the first node port go back.
    let mut b = typed("b", ServiceType::NodePort);
    b.spec.ports.push(ServicePort::tcp("https", 443));
    b.spec.ports[1].node_port = Some(30100);
    assert_eq!(r.create(b).unwrap_err().code, 422);
    assert_eq!(used(&r), before);
    // Validation fails after allocation: everything goes back.
    let mut c = typed("c", ServiceType::NodePort);
    c.spec.ports[0].port = 0;
    assert_eq!(r.create(c).unwrap_err().code, 422);
    assert_eq!(used(&r), before);
    // The name exists: 409, and nothing is kept.
    let e = r.create(svc("a")).unwrap_err();
    assert_eq!(
        (e.code, e.reason, e.message.as_str()),
        (409, Reason::AlreadyExists, r#"services "a" already exists"#)
    );
    assert_eq!(used(&r), before);
}

#[test]
fn ip_families_and_policies() {
    let mut single = registry(&["10.0.0.0/24"]);
    let mut dual = registry(&["10.0.0.0/24", "fd00::/112"]);

    let mut req = svc("req");
    req.spec.ip_family_policy = Some(IpFamilyPolicy::RequireDualStack);
    assert_eq!(
        single.create(req.clone()).unwrap_err().message,
        r#"Service "req" is invalid: spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster is not configured for dual-stack services"#
    );
    let s = dual.create(req).unwrap().object;
    assert_eq!(s.spec.ip_families, [IpFamily::Ipv4, IpFamily::Ipv6]);
    assert!(s.spec.cluster_ips[1].starts_with("fd00::"));

    // PreferDualStack takes what the cluster has.
    let mut pref = svc("pref");
    pref.spec.ip_family_policy = Some(IpFamilyPolicy::PreferDualStack);
    assert_eq!(
        single
            .create(pref.clone())
            .unwrap()
            .object
            .spec
            .cluster_ips
            .len(),
        1
    );
    assert_eq!(dual.create(pref).unwrap().object.spec.cluster_ips.len(), 2);

    // IPv6 first.
    let mut v6 = svc("v6");
    v6.spec.ip_families = vec![IpFamily::Ipv6];
    let s = dual.create(v6).unwrap().object;
    assert!(s.spec.cluster_ip.unwrap().contains(':'));
    let mut v6 = svc("v6");
    v6.spec.ip_families = vec![IpFamily::Ipv6];
    assert_eq!(
        single.create(v6).unwrap_err().message,
        r#"Service "v6" is invalid: spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster"#
    );

    // Headless and selectorless: both families by default, even on a single-stack cluster.
    let mut h = Service::new("default", "h");
    h.spec.cluster_ip = Some("None".into());
    h.spec.ports = vec![ServicePort::tcp("p", 1)];
    let s = single.create(h).unwrap().object;
    assert_eq!(
        s.spec.ip_family_policy,
        Some(IpFamilyPolicy::RequireDualStack)
    );
    assert_eq!(s.spec.ip_families, [IpFamily::Ipv4, IpFamily::Ipv6]);
    assert_eq!(s.spec.cluster_ips, ["None"]);

    let mut two = svc("two");
    two.spec.ip_family_policy = Some(IpFamilyPolicy::SingleStack);
    two.spec.cluster_ip = Some("10.0.0.9".into());
    two.spec.cluster_ips = vec!["10.0.0.9".into(), "fd00::9".into()];
    assert_eq!(
        dual.create(two).unwrap_err().message,
        r#"Service "two" is invalid: spec.ipFamilyPolicy: Invalid value: "SingleStack": must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified"#
    );
}

#[test]
fn updates_keep_allocated_values_and_follow_type_changes() {
    let mut r = registry(&["10.0.0.0/24"]);
    let created = r
        .create(typed("web", ServiceType::NodePort))
        .unwrap()
        .object;
    let ip = created.spec.cluster_ip.clone();
    let np = node_port(&created.spec.ports[0]);

    // Resubmitting the original request (no IP, no node port, no version) keeps both.
    let again = r
        .update(typed("web", ServiceType::NodePort))
        .unwrap()
        .object;
    assert_eq!(again.spec.cluster_ip, ip);
    assert_eq!(node_port(&again.spec.ports[0]), np);
    assert_eq!(used(&r), (vec![1], 1));

    // NodePort → ClusterIP releases the node port, even when the client sent it back.
    let mut to_cluster_ip = again;
    to_cluster_ip.spec.type_ = Some(ServiceType::ClusterIp);
    to_cluster_ip.metadata.resource_version = None;
    let s = r.update(to_cluster_ip).unwrap().object;
    assert_eq!(node_port(&s.spec.ports[0]), 0);
    assert_eq!(used(&r), (vec![1], 0));

    // ClusterIP → LoadBalancer/Local allocates node port and health-check node port.
    let mut lb = s;
    lb.spec.type_ = Some(ServiceType::LoadBalancer);
    lb.spec.external_traffic_policy = Some(TrafficPolicy::Local);
    let s = r.update(lb).unwrap().object;
    assert!(s.spec.health_check_node_port.is_some());
    assert_eq!(used(&r), (vec![1], 2));

    // → ExternalName releases everything.
    let mut ext = s;
    ext.spec.type_ = Some(ServiceType::ExternalName);
    ext.spec.external_name = Some("example.com".into());
    ext.spec.external_traffic_policy = None;
    ext.spec.selector = None;
    let s = r.update(ext).unwrap().object;
    assert_eq!(s.spec.cluster_ip, None);
    assert!(s.spec.cluster_ips.is_empty() && s.spec.ip_families.is_empty());
    assert_eq!(s.spec.health_check_node_port, None);
    assert_eq!(used(&r), (vec![0], 0));

    // ExternalName → ClusterIP allocates again.
    let mut back = svc("web");
    back.spec.type_ = Some(ServiceType::ClusterIp);
    let s = r.update(back).unwrap().object;
    assert!(s.spec.cluster_ip.is_some());
    assert_eq!(used(&r), (vec![1], 0));

    // A stale version is a conflict; a changed cluster IP is invalid; neither leaks.
    let mut stale = s.clone();
    stale.metadata.resource_version = Some("1".into());
    let e = r.update(stale).unwrap_err();
    assert_eq!((e.code, e.reason), (409, Reason::Conflict));
    let mut moved = s;
    moved.spec.cluster_ip = Some("10.0.0.200".into());
    moved.spec.cluster_ips = vec!["10.0.0.200".into()];
    let e = r.update(moved).unwrap_err();
    assert_eq!(e.code, 422);
    assert!(
        e.message.contains(
            "spec.clusterIPs[0]: Invalid value: []string{\"10.0.0.200\"}: may not change once set"
        ),
        "{}",
        e.message
    );
    assert_eq!(used(&r), (vec![1], 0));

    assert_eq!(
        r.update(svc("nobody")).unwrap_err().message,
        r#"services "nobody" not found"#
    );
}

#[test]
fn dual_stack_upgrade_and_downgrade() {
    let mut r = registry(&["10.0.0.0/24", "fd00::/112"]);
    let s = r.create(svc("web")).unwrap().object;
    assert_eq!(s.spec.cluster_ips.len(), 1);
    let mut up = s;
    up.spec.ip_family_policy = Some(IpFamilyPolicy::PreferDualStack);
    let s = r.update(up).unwrap().object;
    assert_eq!(s.spec.cluster_ips.len(), 2);
    assert_eq!(used(&r).0, [1, 1]);
    // Dropping the secondary needs SingleStack.
    let mut bad = s.clone();
    bad.spec.cluster_ips.truncate(1);
    bad.spec.ip_families.truncate(1);
    let e = r.update(bad).unwrap_err();
    assert!(
        e.message
            .contains("must be 'SingleStack' to release the secondary cluster IP"),
        "{}",
        e.message
    );
    let mut down = s;
    down.spec.ip_family_policy = Some(IpFamilyPolicy::SingleStack);
    let s = r.update(down).unwrap().object;
    assert_eq!(s.spec.cluster_ips.len(), 1);
    assert_eq!(s.spec.ip_families, [IpFamily::Ipv4]);
    assert_eq!(used(&r).0, [1, 0]);
}

#[test]
fn delete_releases_everything() {
    let mut r = registry(&["10.0.0.0/24", "fd00::/112"]);
    let mut s = typed("lb", ServiceType::LoadBalancer);
    s.spec.external_traffic_policy = Some(TrafficPolicy::Local);
    s.spec.ip_family_policy = Some(IpFamilyPolicy::RequireDualStack);
    r.create(s).unwrap();
    assert_eq!(used(&r), (vec![1, 1], 2));
    let gone = r.delete("default", "lb").unwrap();
    assert_eq!(gone.metadata.name(), "lb");
    assert_eq!(used(&r), (vec![0, 0], 0));
    assert_eq!(r.delete("default", "lb").unwrap_err().code, 404);
    assert!(r.list().unwrap().is_empty());
}

#[test]
fn status_is_cleared_on_create_and_kept_on_update() {
    let mut r = registry(&["10.0.0.0/24"]);
    let mut s = typed("lb", ServiceType::LoadBalancer);
    let mut ing = crate::model::LoadBalancerIngress::default();
    ing.ip = Some("192.0.2.1".into());
    let mut st = crate::model::ServiceStatus::default();
    st.load_balancer = Some(crate::model::LoadBalancerStatus::default());
    st.load_balancer.as_mut().unwrap().ingress = vec![ing];
    s.status = Some(st.clone());
    let created = r.create(s).unwrap().object;
    assert_eq!(created.status, None);
    let mut with_status = created;
    with_status.status = Some(st);
    let s = r.update_status(&with_status).unwrap();
    assert!(s.status.is_some());
    // A spec update does not touch it.
    let mut spec_only = s;
    spec_only.status = None;
    let s = r.update(spec_only).unwrap().object;
    assert!(s.status.is_some());
    // Another type has no load-balancer status.
    let mut cluster_ip = s;
    cluster_ip.spec.type_ = Some(ServiceType::ClusterIp);
    let s = r.update(cluster_ip).unwrap().object;
    assert_eq!(s.status.and_then(|st| st.load_balancer), None);
    assert_eq!(s.spec.external_traffic_policy, None);
    assert_eq!(used(&r), (vec![1], 0));
}

#[test]
fn generated_names() {
    let mut r = registry(&["10.0.0.0/24"]);
    let mut s = svc("");
    s.metadata.name = None;
    s.metadata.generate_name = Some("web-".into());
    let s = r.create(s).unwrap().object;
    assert!(s.metadata.name().starts_with("web-") && s.metadata.name().len() == 9);
}

#[test]
fn repair_reallocates_reports_and_frees_leaks_on_the_third_pass() {
    let store = Arc::new(MemoryStore::new());
    let mut r = Registry::new(
        config(&["10.0.0.0/24"], "30000-32767"),
        store.clone(),
        SeededRandom::new(3),
    )
    .unwrap();
    let a = r.create(typed("a", ServiceType::NodePort)).unwrap().object;
    let a_ip: IpAddr = a.spec.cluster_ip.as_deref().unwrap().parse().unwrap();

    // A leak: allocated, no Service (a replica died between allocation and write).
    let mut leak = Txn::default();
    let leaked = r
        .take_ip(0, None, &ServiceKey::new("default", "leak"), &mut leak)
        .unwrap();
    let leaked_port = r.take_port(None, &mut leak).unwrap();
    // A Service whose IP the bitmap lost, and a duplicate written behind the registry's back.
    let mut lost = svc("lost");
    lost.spec.cluster_ip = Some("10.0.0.77".into());
    lost.spec.cluster_ips = vec!["10.0.0.77".into()];
    lost.spec.ip_families = vec![IpFamily::Ipv4];
    lost.spec.ip_family_policy = Some(IpFamilyPolicy::SingleStack);
    let mut dup = lost.clone();
    dup.metadata.name = Some("dup".into());
    dup.spec.cluster_ip.clone_from(&a.spec.cluster_ip);
    dup.spec.cluster_ips.clone_from(&a.spec.cluster_ips);
    for s in [&lost, &dup] {
        let key = r.config().service_key(&key_of(s));
        store
            .put(&key, &serde_json::to_vec(s).unwrap(), Precondition::Absent)
            .unwrap();
    }

    let t0 = epoch();
    let first = r.repair(t0).unwrap();
    assert_eq!(first.count("ClusterIPNotAllocated"), 1);
    assert_eq!(first.count("ClusterIPAlreadyAllocated"), 1);
    assert_eq!(first.suspected_leaks, 2);
    let (ips, ports) = r.allocations().unwrap();
    assert!(ips[0].has("10.0.0.77".parse().unwrap()) && ips[0].has(a_ip) && ips[0].has(leaked));
    assert!(ports.has(leaked_port));

    // Passes within the grace period free nothing, however many run (Kubernetes would free
    // on the third: a Service write still in flight would lose its values).
    for i in 1..=10 {
        let pass = r.repair(t0 + DEFAULT_LEAK_GRACE / 20 * i).unwrap();
        assert_eq!((pass.suspected_leaks, pass.freed), (2, 0), "pass {i}");
    }
    let late = r.repair(t0 + DEFAULT_LEAK_GRACE).unwrap();
    assert_eq!((late.suspected_leaks, late.freed), (0, 2));
    assert_eq!(late.count("ClusterIPLeaked") + late.count("PortLeaked"), 2);
    let (ips, ports) = r.allocations().unwrap();
    assert!(!ips[0].has(leaked) && !ports.has(leaked_port));
    assert!(ips[0].has(a_ip) && ports.has(u16::try_from(node_port(&a.spec.ports[0])).unwrap()));
    let after = r.repair(t0 + DEFAULT_LEAK_GRACE * 2).unwrap();
    assert_eq!((after.suspected_leaks, after.freed), (0, 0));
}

#[test]
fn a_value_used_again_within_the_grace_period_is_no_longer_a_leak() {
    let store = Arc::new(MemoryStore::new());
    let cfg = config(&["10.0.0.0/24"], "30000-32767").with_leak_grace(Duration::from_secs(60));
    let mut r = Registry::new(cfg, store.clone(), SeededRandom::new(3)).unwrap();
    // Allocated, its Service not written yet.
    let mut pending = Txn::default();
    let ip = r
        .take_ip(
            0,
            None,
            &ServiceKey::new("default", "pending"),
            &mut pending,
        )
        .unwrap();
    let t0 = epoch();
    assert_eq!(r.repair(t0).unwrap().suspected_leaks, 1);
    // The write lands.
    let mut s = svc("late");
    s.spec.cluster_ip = Some(ip.to_string());
    s.spec.cluster_ips = vec![ip.to_string()];
    s.spec.ip_families = vec![IpFamily::Ipv4];
    s.spec.ip_family_policy = Some(IpFamilyPolicy::SingleStack);
    let key = r.config().service_key(&key_of(&s));
    store
        .put(&key, &serde_json::to_vec(&s).unwrap(), Precondition::Absent)
        .unwrap();
    let pass = r.repair(t0 + Duration::from_secs(61)).unwrap();
    assert_eq!((pass.suspected_leaks, pass.freed), (0, 0));
    // Unused again later: the grace period starts over.
    store
        .delete(&key, store.get(&key).unwrap().unwrap().version)
        .unwrap();
    let t1 = t0 + Duration::from_secs(120);
    assert_eq!(r.repair(t1).unwrap().freed, 0);
    assert_eq!(r.repair(t1 + Duration::from_secs(59)).unwrap().freed, 0);
    assert_eq!(r.repair(t1 + Duration::from_secs(60)).unwrap().freed, 1);
}

#[test]
fn repair_counts_shared_node_ports_once_per_protocol() {
    let mut s = typed("dns", ServiceType::NodePort);
    let mut udp = ServicePort::tcp("dns", 53);
    udp.protocol = Some(Protocol::Udp);
    udp.node_port = Some(30053);
    let mut tcp = ServicePort::tcp("dns-tcp", 53);
    tcp.node_port = Some(30053);
    s.spec.ports = vec![udp, tcp.clone()];
    assert_eq!(repair::held_node_ports_for_tests(&s), [30053]);
    let mut tcp2 = tcp;
    tcp2.name = Some("again".into());
    s.spec.ports.push(tcp2);
    assert_eq!(repair::held_node_ports_for_tests(&s), [30053, 30053]);
}

/// A store that stops accepting writes once `budget` is used up, as if the process died.
struct Dying {
    inner: Arc<MemoryStore>,
    budget: std::sync::atomic::AtomicUsize,
}

impl Store for Dying {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.inner.get(key)
    }
    fn put(&self, key: &str, value: &[u8], p: Precondition) -> Result<Option<u64>, StoreError> {
        use std::sync::atomic::Ordering;
        if self
            .budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
            .is_err()
        {
            return Err(StoreError::new("connection lost"));
        }
        self.inner.put(key, value, p)
    }
    fn delete(&self, key: &str, version: u64) -> Result<bool, StoreError> {
        self.inner.delete(key, version)
    }
    fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.inner.list(prefix)
    }
}

#[test]
fn a_replica_dying_mid_create_leaks_and_repair_frees_it() {
    let shared = Arc::new(MemoryStore::new());
    let cfg = config(&["10.0.0.0/28"], "30000-30009");
    let mut healthy = Registry::new(cfg.clone(), shared.clone(), SeededRandom::new(1)).unwrap();
    // Writes allowed: the two initialisation attempts, the IP and the node port
    // allocations; then the process is gone (the Service write and the rollback fail).
    let dying = Dying {
        inner: shared,
        budget: std::sync::atomic::AtomicUsize::new(4),
    };
    let mut doomed = Registry::new(cfg, dying, SeededRandom::new(2)).unwrap();
    let e = doomed
        .create(typed("x", ServiceType::NodePort))
        .unwrap_err();
    assert_eq!(e.code, 500);
    drop(doomed);
    assert_eq!(used(&healthy), (vec![1], 1));
    assert!(healthy.list().unwrap().is_empty());
    let t0 = epoch();
    for (pass, at) in [(1, 0), (2, 60), (3, 179), (4, 180)] {
        let report = healthy.repair(t0 + Duration::from_secs(at)).unwrap();
        assert_eq!(report.freed, if pass == 4 { 2 } else { 0 }, "pass {pass}");
    }
    assert_eq!(used(&healthy), (vec![0], 0));
}

/// Replicas race on the allocator keys from threads; the crate itself spawns none.
#[test]
#[allow(clippy::disallowed_methods)]
fn replicas_never_hand_out_the_same_value() {
    let shared = Arc::new(MemoryStore::new());
    let cfg = config(&["10.0.0.0/26"], "30000-30079");
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let store = shared.clone();
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let mut r = Registry::new(cfg, store, SeededRandom::new(t)).unwrap();
                let mut full = 0;
                for i in 0..60 {
                    let name = format!("t{t}-{i}");
                    match r.create(typed(&name, ServiceType::NodePort)) {
                        Ok(_) => {
                            if i % 3 == 0 {
                                r.delete("default", &name).unwrap();
                            }
                        }
                        Err(e) => {
                            assert_eq!(e.code, 500, "{e}");
                            assert!(e.message.ends_with("range is full"), "{e}");
                            full += 1;
                        }
                    }
                }
                full
            })
        })
        .collect();
    let full: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(full > 0, "the ranges should run out");
    let r = Registry::new(cfg, shared, SeededRandom::new(9)).unwrap();
    let services = r.list().unwrap();
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for s in &services {
        assert!(
            ips.insert(s.spec.cluster_ip.clone().unwrap()),
            "duplicate IP"
        );
        assert!(
            ports.insert(node_port(&s.spec.ports[0])),
            "duplicate node port"
        );
    }
    // The bitmaps hold exactly what the Services use.
    assert_eq!(used(&r), (vec![services.len()], services.len()));
}

#[test]
fn config_is_checked_like_the_api_server_flags() {
    let p = PortRange::DEFAULT_NODE_PORTS;
    let net = |s: &str| -> IpNet { s.parse().unwrap() };
    assert!(RegistryConfig::new(&[], p).is_err());
    assert_eq!(
        RegistryConfig::new(&[net("10.0.0.0/8")], p)
            .unwrap_err()
            .to_string(),
        "specified service CIDR 10.0.0.0/8 is too large; for 32-bit addresses, the mask must be >= 12"
    );
    assert!(RegistryConfig::new(&[net("fd00::/107")], p).is_err());
    assert!(RegistryConfig::new(&[net("10.0.0.0/24"), net("10.1.0.0/24")], p).is_err());
    assert!(RegistryConfig::new(&[net("fd00::/112"), net("10.1.0.0/24")], p).is_ok());
}

// ---- the IPAddress allocator (Kubernetes 1.33's ServiceCIDRs) ----------------------------

fn address_registry<S: Store>(cidrs: &[&str], store: S, seed: u64) -> Registry<S> {
    let cidrs: Vec<IpNet> = cidrs.iter().map(|c| c.parse().unwrap()).collect();
    let config = RegistryConfig::with_ip_addresses(&cidrs, "30000-32767".parse().unwrap()).unwrap();
    Registry::new(config, store, SeededRandom::new(seed)).unwrap()
}

/// The IPAddress objects in the store, by address, with their Service's name.
fn ip_objects<S: Store>(r: &Registry<S>) -> BTreeMap<IpAddr, String> {
    r.service_cidr_allocator()
        .unwrap()
        .ip_addresses()
        .into_iter()
        .map(|o| {
            (
                o.metadata.name().parse().unwrap(),
                o.spec.parent_ref.unwrap().name,
            )
        })
        .collect()
}

#[test]
fn cluster_ips_are_ip_address_objects_and_ranges_may_exceed_a_bitmap() {
    // A /8 is refused by the bitmap allocator's flags, taken by the IPAddress allocator.
    let wide: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
    assert!(RegistryConfig::new(&wide, "30000-32767".parse().unwrap()).is_err());
    let narrow_v6: Vec<IpNet> = vec!["fd00::/48".parse().unwrap()];
    assert_eq!(
        RegistryConfig::with_ip_addresses(&narrow_v6, "30000-32767".parse().unwrap())
            .unwrap_err()
            .to_string(),
        "shortest allowed prefix length for service CIDR is 64, got 48"
    );
    let mut r = address_registry(&["10.0.0.0/8"], MemoryStore::new(), 1);
    // The default ServiceCIDR mirrors the flags.
    let cidrs = r.list_service_cidrs().unwrap();
    assert_eq!(cidrs.len(), 1);
    assert_eq!(cidrs[0].metadata.name(), "kubernetes");
    assert_eq!(cidrs[0].spec.cidrs, ["10.0.0.0/8"]);
    let web = r.create(svc("web")).unwrap().object;
    let mut pinned = svc("pinned");
    pinned.spec.cluster_ip = Some("10.200.0.5".into());
    r.create(pinned).unwrap();
    let ip: IpAddr = web.spec.cluster_ip.as_deref().unwrap().parse().unwrap();
    assert_eq!(
        ip_objects(&r),
        BTreeMap::from([
            (ip, "web".into()),
            ("10.200.0.5".parse().unwrap(), "pinned".into())
        ])
    );
    // The same address again: the API server's 422.
    let mut twice = svc("twice");
    twice.spec.cluster_ip = Some("10.200.0.5".into());
    let err = r.create(twice).unwrap_err();
    assert_eq!(err.code, 422);
    assert!(
        err.message
            .ends_with("failed to allocate IP 10.200.0.5: provided IP is already allocated"),
        "{}",
        err.message
    );
    // Deleting a Service deletes its IPAddress.
    r.delete("default", "pinned").unwrap();
    assert_eq!(ip_objects(&r).len(), 1);
}

#[test]
fn a_full_range_continues_in_the_next_service_cidr_and_a_used_one_cannot_go() {
    let mut r = address_registry(&["10.0.0.0/30"], MemoryStore::new(), 2);
    r.create(svc("a")).unwrap();
    r.create(svc("b")).unwrap();
    let full = r.create(svc("c")).unwrap_err();
    assert_eq!(full.code, 500);
    assert!(full.message.contains("range is full"), "{}", full.message);
    // A second range, added while running.
    r.create_service_cidr(ServiceCidr::new("more", &["10.1.0.0/30"]))
        .unwrap();
    let c = r.create(svc("c")).unwrap().object;
    assert!(c.spec.cluster_ip.as_deref().unwrap().starts_with("10.1.0."));
    // Invalid ServiceCIDRs get the API server's 422; names are unique.
    let bad = r
        .create_service_cidr(ServiceCidr::new("bad", &["10.2.0.0/24", "10.3.0.0/24"]))
        .unwrap_err();
    assert_eq!(bad.code, 422);
    assert!(
        bad.message
            .starts_with("ServiceCIDR \"bad\" is invalid: spec.cidrs"),
        "{}",
        bad.message
    );
    let dup = r
        .create_service_cidr(ServiceCidr::new("more", &["10.4.0.0/30"]))
        .unwrap_err();
    assert_eq!(dup.code, 409);
    // "more" holds c's address: deleting it only marks it; it takes no new addresses.
    let (marked, blocking) = r
        .delete_service_cidr("more", "2026-12-07T00:00:00Z")
        .unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(blocking.len(), 1);
    assert_eq!(r.list_service_cidrs().unwrap().len(), 2);
    assert_eq!(r.create(svc("d")).unwrap_err().code, 500);
    // Once the Service is gone, the ServiceCIDR goes.
    r.delete("default", "c").unwrap();
    let (_, blocking) = r
        .delete_service_cidr("more", "2026-12-07T00:01:00Z")
        .unwrap();
    assert!(blocking.is_empty());
    assert_eq!(r.list_service_cidrs().unwrap().len(), 1);
}

#[test]
fn replicas_on_one_store_never_share_an_address() {
    let store = Arc::new(MemoryStore::new());
    let mut a = address_registry(&["10.0.0.0/28"], store.clone(), 3);
    let mut b = address_registry(&["10.0.0.0/28"], store, 3);
    // Same seed: both pick the same first candidates; the store decides.
    let mut seen = HashSet::new();
    for i in 0..7 {
        for (r, who) in [(&mut a, "a"), (&mut b, "b")] {
            let s = r.create(svc(&format!("{who}{i}"))).unwrap().object;
            assert!(seen.insert(s.spec.cluster_ip.clone().unwrap()), "{s:?}");
        }
    }
    assert_eq!(ip_objects(&a).len(), 14);
}

#[test]
fn repair_keeps_ip_addresses_and_services_one_to_one() {
    let mut r = address_registry(&["10.0.0.0/24"], MemoryStore::new(), 4);
    let web = r.create(svc("web")).unwrap().object;
    let web_ip: IpAddr = web.spec.cluster_ip.as_deref().unwrap().parse().unwrap();
    // Someone deletes web's IPAddress and leaves a stray one.
    let key = r.config.ip_address_key(web_ip);
    let v = r.store.get(&key).unwrap().unwrap();
    r.store.delete(&key, v.version).unwrap();
    let stray: IpAddr = "10.0.0.77".parse().unwrap();
    let obj = crate::alloc::ip_address_object(stray, ParentReference::service("default", "gone"));
    r.store
        .put(
            &r.config.ip_address_key(stray),
            &serde_json::to_vec(&obj).unwrap(),
            Precondition::Absent,
        )
        .unwrap();
    let t0 = epoch();
    let report = r.repair(t0).unwrap();
    assert_eq!(report.count("ClusterIPNotAllocated"), 1, "{report:?}");
    assert_eq!(report.suspected_leaks, 1);
    assert_eq!(ip_objects(&r).get(&web_ip).map(String::as_str), Some("web"));
    assert!(ip_objects(&r).contains_key(&stray));
    // After the grace period the stray goes.
    let report = r
        .repair(t0 + r.config.leak_grace + Duration::from_secs(1))
        .unwrap();
    assert_eq!(report.freed, 1);
    assert!(!ip_objects(&r).contains_key(&stray));
}
