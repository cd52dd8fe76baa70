//! The registry over a store that fails on purpose, with repair running in the middle of
//! writes.
//!
//! The store fails a call before applying it (nothing happened), after applying it (it
//! happened, but the caller hears an error: a lost answer), or is slow: while the call is
//! in flight, another replica runs repair passes, the clock moving on. Property, across
//! random sequences of creates, updates, deletes and repairs: no cluster IP or node port is
//! ever held by two Services, no value a Service holds is ever free in the stored
//! allocator, and once faults stop, the leaks are gone after one grace period: the bitmaps
//! hold exactly what the Services hold.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use service_core::alloc::PortRange;
use service_core::model::{Service, ServicePort, ServiceType, TrafficPolicy};
use service_core::random::SeededRandom;
use service_core::registry::{
    DEFAULT_LEAK_GRACE, MemoryStore, Precondition, Registry, RegistryConfig, Store, StoreError,
    Versioned,
};

#[derive(Clone, Copy, Debug)]
enum Fault {
    Ok,
    /// The call fails; nothing happened.
    FailBefore,
    /// The call happens, the answer is lost.
    FailAfter,
    /// While the call is in flight, another replica runs `passes` repair passes, the clock
    /// moving `step` on before each.
    Slow {
        passes: u8,
        step: Duration,
    },
}

fn fault() -> impl Strategy<Value = Fault> {
    // The longest a write stays in flight is half the grace period: repair must not free
    // anything under it.
    prop_oneof![
        12 => Just(Fault::Ok),
        3 => Just(Fault::FailBefore),
        3 => Just(Fault::FailAfter),
        2 => (1u8..=3, 0u64..=30).prop_map(|(passes, s)| Fault::Slow {
            passes,
            step: Duration::from_secs(s),
        }),
    ]
}

type Replica = Registry<Arc<MemoryStore>>;

struct FaultyStore {
    inner: Arc<MemoryStore>,
    faults: Mutex<VecDeque<Fault>>,
    /// The other replica, running repair while calls are in flight.
    repairer: Mutex<Replica>,
    clock: Arc<Mutex<Instant>>,
}

impl FaultyStore {
    /// Runs `call` under the next fault.
    fn call<T>(&self, call: impl FnOnce(&MemoryStore) -> T) -> Result<T, StoreError> {
        let fault = self.faults.lock().unwrap().pop_front().unwrap_or(Fault::Ok);
        match fault {
            Fault::Ok => Ok(call(&self.inner)),
            Fault::FailBefore => Err(StoreError::new("injected: connection refused")),
            Fault::FailAfter => {
                let _ = call(&self.inner);
                Err(StoreError::new("injected: the answer was lost"))
            }
            Fault::Slow { passes, step } => {
                let mut repairer = self.repairer.lock().unwrap();
                for _ in 0..passes {
                    let now = {
                        let mut clock = self.clock.lock().unwrap();
                        *clock += step;
                        *clock
                    };
                    repairer.repair(now).expect("repair on a healthy store");
                }
                Ok(call(&self.inner))
            }
        }
    }
}

impl Store for FaultyStore {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.call(|s| s.get(key))?
    }
    fn put(&self, key: &str, value: &[u8], p: Precondition) -> Result<Option<u64>, StoreError> {
        self.call(|s| s.put(key, value, p))?
    }
    fn delete(&self, key: &str, version: u64) -> Result<bool, StoreError> {
        self.call(|s| s.delete(key, version))?
    }
    fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.call(|s| s.list(prefix))?
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        kind: u8,
        ip: Option<u8>,
        port: Option<u16>,
    },
    Update {
        index: usize,
        kind: u8,
    },
    Delete {
        index: usize,
    },
    Repair {
        advance: Duration,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, proptest::option::weighted(0.3, 1u8..15), proptest::option::weighted(0.3, 0u16..20))
            .prop_map(|(kind, ip, port)| Op::Create { kind, ip, port }),
        2 => (any::<usize>(), 0u8..4).prop_map(|(index, kind)| Op::Update { index, kind }),
        2 => any::<usize>().prop_map(|index| Op::Delete { index }),
        1 => (0u64..400).prop_map(|s| Op::Repair { advance: Duration::from_secs(s) }),
    ]
}

/// [`op`] with ClusterIP and ExternalName Services only: the IPAddress property is about
/// ClusterIPs, and node ports are the same bitmap in both modes (the bitmap property covers
/// them, and its known window, see the README's differences).
fn address_op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![Just(0u8), Just(3u8)];
    prop_oneof![
        4 => (kind.clone(), proptest::option::weighted(0.3, 1u8..15))
            .prop_map(|(kind, ip)| Op::Create { kind, ip, port: None }),
        2 => (any::<usize>(), kind).prop_map(|(index, kind)| Op::Update { index, kind }),
        2 => any::<usize>().prop_map(|index| Op::Delete { index }),
        1 => (0u64..400).prop_map(|s| Op::Repair { advance: Duration::from_secs(s) }),
    ]
}

fn config() -> RegistryConfig {
    RegistryConfig::new(
        &["10.0.0.0/28".parse().unwrap()],
        PortRange::new(30000, 30019).unwrap(),
    )
    .unwrap()
}

/// A Service of a kind: ClusterIP, NodePort, LoadBalancer with `Local` traffic (a health
/// check node port too), ExternalName.
fn service(name: &str, kind: u8, ip: Option<u8>, port: Option<u16>) -> Service {
    let mut p = ServicePort::tcp("http", 80);
    let mut s = match kind {
        0 => Service::cluster_ip("faults", name),
        1 => Service::node_port("faults", name),
        2 => Service::load_balancer("faults", name)
            .with_external_traffic_policy(TrafficPolicy::Local),
        _ => Service::external_name("faults", name, "example.com"),
    };
    if let (1 | 2, Some(n)) = (kind, port) {
        p = p.with_node_port(30000 + i32::from(n));
    }
    if let (0..3, Some(host)) = (kind, ip) {
        s = s.with_cluster_ip(&format!("10.0.0.{host}"));
    }
    s.with_port(p)
}

fn kind_type(kind: u8) -> ServiceType {
    match kind {
        0 => ServiceType::ClusterIp,
        1 => ServiceType::NodePort,
        2 => ServiceType::LoadBalancer,
        _ => ServiceType::ExternalName,
    }
}

/// Cluster IPs and node ports, each with the Service holding it.
type Holders = (BTreeMap<IpAddr, String>, BTreeMap<u16, String>);

/// What the stored Services hold.
fn held(checker: &Replica) -> Result<Holders, String> {
    let mut ips = BTreeMap::new();
    let mut ports = BTreeMap::new();
    for s in checker.list().map_err(|e| e.to_string())? {
        let name = s.metadata.name().to_owned();
        for ip in s.spec.cluster_ips.iter().filter_map(|t| t.parse().ok()) {
            if let Some(other) = ips.insert(ip, name.clone()) {
                return Err(format!("cluster IP {ip} held by {other} and {name}"));
            }
        }
        let mut mine: BTreeSet<u16> = s
            .spec
            .ports
            .iter()
            .filter_map(|p| p.node_port)
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        if s.spec.type_ == Some(ServiceType::LoadBalancer) {
            mine.extend(
                s.spec
                    .health_check_node_port
                    .and_then(|p| u16::try_from(p).ok()),
            );
        }
        for p in mine {
            if let Some(other) = ports.insert(p, name.clone()) {
                return Err(format!("node port {p} held by {other} and {name}"));
            }
        }
    }
    Ok((ips, ports))
}

/// No value held twice; every held value allocated in the store.
fn check(checker: &Replica, after: &str) -> Result<(), TestCaseError> {
    let (ips, ports) =
        held(checker).map_err(|e| TestCaseError::fail(format!("after {after}: {e}")))?;
    let (alloc_ips, alloc_ports) = checker.allocations().unwrap();
    for (ip, who) in &ips {
        prop_assert!(
            alloc_ips[0].has(*ip),
            "after {after}: {who}'s cluster IP {ip} is free"
        );
    }
    for (p, who) in &ports {
        prop_assert!(
            alloc_ports.has(*p),
            "after {after}: {who}'s node port {p} is free"
        );
    }
    Ok(())
}

/// Where the test's clock starts (any instant will do: repair only compares them).
#[allow(clippy::disallowed_methods)]
fn epoch() -> Instant {
    Instant::now()
}

/// The registry with Kubernetes 1.33's IPAddress allocator, on the same range.
fn address_config() -> RegistryConfig {
    RegistryConfig::with_ip_addresses(
        &["10.0.0.0/28".parse().unwrap()],
        PortRange::new(30000, 30019).unwrap(),
    )
    .unwrap()
}

/// The stored IPAddress objects: address and owner name.
fn stored_addresses(checker: &Replica) -> BTreeMap<IpAddr, String> {
    checker
        .service_cidr_allocator()
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

/// No value held twice; every held address an IPAddress of its Service, every held port
/// allocated.
fn check_addresses(checker: &Replica, after: &str) -> Result<(), TestCaseError> {
    let (ips, ports) =
        held(checker).map_err(|e| TestCaseError::fail(format!("after {after}: {e}")))?;
    let stored = stored_addresses(checker);
    for (ip, who) in &ips {
        prop_assert_eq!(
            stored.get(ip),
            Some(who),
            "after {}: {}'s cluster IP {} has no IPAddress of its own",
            after,
            who,
            ip
        );
    }
    let (_, alloc_ports) = checker.allocations().unwrap();
    for (p, who) in &ports {
        prop_assert!(
            alloc_ports.has(*p),
            "after {after}: {who}'s node port {p} is free"
        );
    }
    Ok(())
}

/// Runs `ops` against a registry of `config` whose store fails as `faults` say, with
/// `check` after each operation; once faults stop, runs repair twice a grace period
/// apart. Returns a healthy replica to read the end state with.
fn exercise(
    config: fn() -> RegistryConfig,
    check: fn(&Replica, &str) -> Result<(), TestCaseError>,
    ops: &[Op],
    faults: Vec<Fault>,
    seed: u64,
) -> Result<Replica, TestCaseError> {
    let inner = Arc::new(MemoryStore::new());
    let clock = Arc::new(Mutex::new(epoch()));
    let repairer = Registry::new(config(), inner.clone(), SeededRandom::new(seed ^ 1)).unwrap();
    let checker = Registry::new(config(), inner.clone(), SeededRandom::new(seed ^ 2)).unwrap();
    let store = Arc::new(FaultyStore {
        inner,
        faults: Mutex::new(VecDeque::new()),
        repairer: Mutex::new(repairer),
        clock: clock.clone(),
    });
    let mut r = Registry::new(config(), store.clone(), SeededRandom::new(seed)).unwrap();
    *store.faults.lock().unwrap() = faults.into();
    let mut names = 0;
    for op in ops {
        match op {
            Op::Create { kind, ip, port } => {
                names += 1;
                let _ = r.create(service(&format!("s{names}"), *kind, *ip, *port));
            }
            Op::Update { index, kind } => {
                let existing = checker.list().unwrap();
                if !existing.is_empty() {
                    let mut s = existing[index % existing.len()].clone();
                    s.metadata.resource_version = None;
                    s.spec.type_ = Some(kind_type(*kind));
                    if *kind == 3 {
                        s.spec.external_name = Some("example.com".into());
                    }
                    if *kind == 2 {
                        s.spec.external_traffic_policy = Some(TrafficPolicy::Local);
                    }
                    let _ = r.update(s);
                }
            }
            Op::Delete { index } => {
                let existing = checker.list().unwrap();
                if !existing.is_empty() {
                    let s = &existing[index % existing.len()];
                    let _ = r.delete(s.metadata.namespace(), s.metadata.name());
                }
            }
            Op::Repair { advance } => {
                let now = {
                    let mut c = clock.lock().unwrap();
                    *c += *advance;
                    *c
                };
                let _ = r.repair(now);
            }
        }
        check(&checker, &format!("{op:?}"))?;
    }
    store.faults.lock().unwrap().clear();
    let now = *clock.lock().unwrap() + Duration::from_secs(1);
    r.repair(now).unwrap();
    r.repair(now + DEFAULT_LEAK_GRACE).unwrap();
    Ok(checker)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn nothing_is_ever_held_twice_and_leaks_go_after_a_grace_period(
        ops in proptest::collection::vec(op(), 1..40),
        faults in proptest::collection::vec(fault(), 0..80),
        seed in any::<u64>(),
    ) {
        let checker = exercise(config, check, &ops, faults, seed)?;
        // Faults over: one grace period later, the bitmaps hold what the Services hold.
        let (ips, ports) = held(&checker).map_err(TestCaseError::fail)?;
        let (alloc_ips, alloc_ports) = checker.allocations().unwrap();
        prop_assert_eq!(alloc_ips[0].iter().collect::<BTreeSet<_>>(), ips.keys().copied().collect());
        prop_assert_eq!(alloc_ports.iter().collect::<BTreeSet<_>>(), ports.keys().copied().collect());
    }

    #[test]
    fn with_ip_addresses_the_stored_addresses_end_equal_to_the_services(
        ops in proptest::collection::vec(address_op(), 1..40),
        faults in proptest::collection::vec(fault(), 0..80),
        seed in any::<u64>(),
    ) {
        let checker = exercise(address_config, check_addresses, &ops, faults, seed)?;
        // Faults over: one grace period later, the IPAddress objects are the Services'
        // addresses.
        let (ips, ports) = held(&checker).map_err(TestCaseError::fail)?;
        let (_, alloc_ports) = checker.allocations().unwrap();
        prop_assert_eq!(stored_addresses(&checker), ips);
        prop_assert_eq!(alloc_ports.iter().collect::<BTreeSet<_>>(), ports.keys().copied().collect());
    }
}
