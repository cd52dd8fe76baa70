//! Property: after any sequence of changes, applying the first full render and then every
//! partial render leaves the same rules as a full render of the final snapshot.
//!
//! `iptables-restore --noflush` is modelled in memory, strictly: a `:CHAIN` line creates or
//! flushes, `-A` appends to a chain that exists, `-X` deletes a chain only when it is empty
//! and nothing jumps to it, and a table commits only if every jump targets a chain that
//! exists. (The kernel test in `e2e_iptables.rs` checks the same against the real kernel.)

use std::collections::BTreeMap;

use proptest::prelude::*;
use service_core::defaults;
use service_core::model::{
    AddressType, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, IntOrString,
    LoadBalancerIngress, LoadBalancerStatus, Protocol, Service, ServicePort, ServiceStatus,
    ServiceType, SessionAffinity, TrafficPolicy,
};
use service_core::snapshot::{NodeInfo, Snapshot};
use service_core::validation::validate_service;
use service_proxy::ProxyConfig;
use service_proxy::iptables::{IptablesConfig, Renderer};

type Tables = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// Applies restore input to `tables` as `iptables-restore --noflush` would.
fn restore(tables: &mut Tables, input: &str) -> Result<(), String> {
    let mut staged = tables.clone();
    let mut current: Option<String> = None;
    for line in input.lines() {
        if let Some(t) = line.strip_prefix('*') {
            current = Some(t.to_owned());
            staged.entry(t.to_owned()).or_default();
            continue;
        }
        let table = current.as_ref().ok_or("rule outside a table")?;
        let chains = staged.get_mut(table).ok_or("no table")?;
        if let Some(rest) = line.strip_prefix(':') {
            let name = rest.split_whitespace().next().ok_or("bad chain line")?;
            chains.insert(name.to_owned(), Vec::new());
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, rule) = rest.split_once(' ').ok_or("bad rule")?;
            chains
                .get_mut(chain)
                .ok_or_else(|| format!("append to missing chain {chain}"))?
                .push(rule.to_owned());
        } else if let Some(chain) = line.strip_prefix("-X ") {
            let rules = chains
                .get(chain)
                .ok_or_else(|| format!("delete of missing chain {chain}"))?;
            if !rules.is_empty() {
                return Err(format!("delete of non-empty chain {chain}"));
            }
            let target = format!("-j {chain}");
            if chains.values().flatten().any(|r| r.ends_with(&target)) {
                return Err(format!("delete of referenced chain {chain}"));
            }
            chains.remove(chain);
        } else if line == "COMMIT" {
            let chains = &staged[table];
            for (c, rules) in chains {
                for r in rules {
                    if let Some(t) = r.rsplit_once("-j ").map(|(_, t)| t) {
                        let t = t.split_whitespace().next().unwrap_or_default();
                        if t.starts_with("KUBE-") && !chains.contains_key(t) {
                            return Err(format!("{c}: jump to missing chain {t}"));
                        }
                    }
                }
            }
            current = None;
        } else if !line.is_empty() {
            return Err(format!("unexpected line {line}"));
        }
    }
    *tables = staged;
    Ok(())
}

#[derive(Clone, Debug)]
struct Svc {
    kind: u8,
    affinity: bool,
    local: bool,
    ranges: bool,
    udp: bool,
    endpoints: Vec<(u8, bool, bool)>,
}

fn objects(svcs: &[Option<Svc>]) -> (Vec<service_core::valid::ValidService>, Vec<EndpointSlice>) {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for (i, s) in svcs.iter().enumerate() {
        let Some(s) = s else { continue };
        let mut svc = Service::new("ns", &format!("s{i}"));
        svc.spec.cluster_ip = Some(format!("172.30.0.{}", i + 1));
        let mut port = ServicePort::tcp("p", 80);
        port.target_port = Some(IntOrString::Int(8080));
        if s.udp {
            port.protocol = Some(Protocol::Udp);
        }
        match s.kind % 3 {
            1 => {
                svc.spec.type_ = Some(ServiceType::NodePort);
                port.node_port = Some(30000 + i as i32);
            }
            2 => {
                svc.spec.type_ = Some(ServiceType::LoadBalancer);
                port.node_port = Some(30000 + i as i32);
                if s.ranges {
                    svc.spec.load_balancer_source_ranges =
                        vec!["203.0.113.0/25".into(), "192.168.0.0/24".into()];
                }
                let mut ing = LoadBalancerIngress::default();
                ing.ip = Some(format!("198.51.100.{}", i + 1));
                let mut lb = LoadBalancerStatus::default();
                lb.ingress = vec![ing];
                let mut status = ServiceStatus::default();
                status.load_balancer = Some(lb);
                svc.status = Some(status);
                if s.local {
                    svc.spec.external_traffic_policy = Some(TrafficPolicy::Local);
                    svc.spec.health_check_node_port = Some(31000 + i as i32);
                }
            }
            _ => {
                if s.local {
                    svc.spec.internal_traffic_policy = Some(TrafficPolicy::Local);
                }
            }
        }
        if s.affinity {
            svc.spec.session_affinity = Some(SessionAffinity::ClientIp);
        }
        svc.spec.ports.push(port);
        defaults::service(&mut svc);
        services.push(validate_service(&svc).unwrap());
        let mut slice = EndpointSlice::new(
            "ns",
            &format!("s{i}-x"),
            &format!("s{i}"),
            AddressType::Ipv4,
        );
        slice.ports = vec![EndpointPort::new(
            "p",
            8080,
            if s.udp { Protocol::Udp } else { Protocol::Tcp },
        )];
        for &(host, ready, local) in &s.endpoints {
            let mut ep = Endpoint::new(&format!("10.1.{i}.{host}"));
            ep.conditions = Some(EndpointConditions::new(ready, true, !ready));
            ep.node_name = Some(if local { "node-a" } else { "node-b" }.into());
            slice.endpoints.push(ep);
        }
        slices.push(slice);
    }
    (services, slices)
}

fn svc_strategy() -> impl Strategy<Value = Svc> {
    (
        any::<u8>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        proptest::collection::btree_map(1u8..12, (any::<bool>(), any::<bool>()), 0..5),
    )
        .prop_map(|(kind, affinity, local, ranges, udp, eps)| Svc {
            kind,
            affinity,
            local,
            ranges,
            udp,
            endpoints: eps.into_iter().map(|(h, (r, l))| (h, r, l)).collect(),
        })
}

fn config() -> IptablesConfig {
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
    let mut c = IptablesConfig::new(proxy);
    // A low threshold so that sequences also cross into and out of large-cluster mode.
    c.large_cluster_threshold = 12;
    c
}

fn node() -> NodeInfo {
    NodeInfo::new("node-a", vec!["192.168.0.2".parse().unwrap()])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn partial_syncs_converge_to_a_full_render(
        initial in proptest::collection::vec(proptest::option::of(svc_strategy()), 1..6),
        steps in proptest::collection::vec(
            (0usize..6, proptest::option::of(svc_strategy())),
            1..8,
        ),
    ) {
        let mut state = initial;
        let (services, slices) = objects(&state);
        let mut snap = Snapshot::build(node(), &services, &slices, &[]).unwrap();
        let mut renderer = Renderer::new(config(), false);
        let mut kernel = Tables::new();
        restore(&mut kernel, &renderer.full(&snap).to_restore_input()).unwrap();

        for (index, replacement) in steps {
            if index < state.len() {
                state[index] = replacement;
            } else {
                state.push(replacement);
            }
            let (services, slices) = objects(&state);
            let next = snap.rebuild(node(), &services, &slices, &[]).unwrap();
            let changed: Vec<_> = next.diff(&snap).ports.into_iter().map(|(k, _)| k).collect();
            let rules = renderer.partial(&next, &changed);
            restore(&mut kernel, &rules.to_restore_input())
                .map_err(|e| TestCaseError::fail(format!("restore failed: {e}\n{}", rules.to_restore_input())))?;
            snap = next;
        }

        let mut expected = Tables::new();
        restore(&mut expected, &Renderer::new(config(), false).full(&snap).to_restore_input()).unwrap();
        prop_assert_eq!(kernel, expected);
    }

    #[test]
    fn rendering_is_deterministic(
        svcs in proptest::collection::vec(proptest::option::of(svc_strategy()), 1..8),
    ) {
        let (services, slices) = objects(&svcs);
        let snap = Snapshot::build(node(), &services, &slices, &[]).unwrap();
        let a = Renderer::new(config(), false).full(&snap).to_restore_input();
        let mut rev_services = services;
        rev_services.reverse();
        let mut rev_slices = slices;
        rev_slices.reverse();
        let snap2 = Snapshot::build(node(), &rev_services, &rev_slices, &[]).unwrap();
        let b = Renderer::new(config(), false).full(&snap2).to_restore_input();
        prop_assert_eq!(a, b);
    }
}

/// nf_tables modelled in memory, as strictly as the kernel: elements go into declared sets
/// (a key already holding another value is refused), rules into existing chains, a chain
/// or set is deleted only when nothing refers to it, and every jump, goto and verdict-map
/// element must name an existing chain when the transaction commits.
#[allow(unreachable_pub)]
mod nft {
    use std::collections::{BTreeMap, BTreeSet};

    use service_proxy::nftables::{
        Data, Element, FixedSet, Key, Op, Rule, SetDecl, Stmt, Transaction, Verdict,
    };

    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct Table {
        pub chains: BTreeMap<String, Vec<Rule>>,
        pub sets: BTreeMap<String, BTreeMap<Key, Option<Data>>>,
    }

    fn targets(rule: &Rule) -> Vec<String> {
        let mut out = Vec::new();
        for s in &rule.stmts {
            match s {
                Stmt::Verdict(Verdict::Jump(c) | Verdict::Goto(c)) => out.push(c.to_string()),
                Stmt::NumgenVmap(t) => out.extend(t.iter().map(|c| c.to_string())),
                _ => {}
            }
        }
        out
    }

    fn sets_used(rule: &Rule) -> Vec<String> {
        let mut out = Vec::new();
        for s in &rule.stmts {
            match s {
                Stmt::AddrInSet { set, .. } | Stmt::UpdateSaddr(set) => out.push(set.to_string()),
                Stmt::VmapAddrProtoPort(m) | Stmt::VmapProtoPort(m) | Stmt::PairInSet(m) => {
                    out.push(m.name().into_owned())
                }
                Stmt::DnatMap { shard, .. } => {
                    out.push(FixedSet::Endpoints(*shard).name().into_owned())
                }
                _ => {}
            }
        }
        out
    }

    impl Table {
        pub fn apply(&mut self, tx: &Transaction) -> Result<(), String> {
            let mut t = self.clone();
            let mut ops: Vec<Op> = Vec::new();
            for op in &tx.ops {
                match op {
                    Op::AddPort(p) => ops.extend(p.expand()),
                    other => ops.push(other.clone()),
                }
            }
            for op in ops {
                match op {
                    Op::AddTable => {}
                    Op::DeleteTable => t = Self::default(),
                    Op::AddSet(SetDecl::Fixed(s)) => {
                        t.sets.entry(s.name().into_owned()).or_default();
                    }
                    Op::AddSet(SetDecl::Affinity(s)) => {
                        t.sets.entry(s.name.to_string()).or_default();
                    }
                    Op::DeleteSet(name) => {
                        if t.chains
                            .values()
                            .flatten()
                            .any(|r| sets_used(r).contains(&name.to_string()))
                        {
                            return Err(format!("delete of set {name} in use"));
                        }
                        t.sets
                            .remove(&*name)
                            .ok_or_else(|| format!("delete of missing set {name}"))?;
                    }
                    Op::AddChain(c) => {
                        t.chains.entry(c.name.to_string()).or_default();
                    }
                    Op::AddEndpoint(e) => {
                        t.chains.entry(e.name.to_string()).or_default();
                    }
                    Op::AddRules(c) => t
                        .chains
                        .get_mut(&*c.name)
                        .ok_or_else(|| format!("rules for missing chain {}", c.name))?
                        .extend(c.rules.iter().cloned()),
                    Op::AddEndpointRules(e) => t
                        .chains
                        .get_mut(&*e.name)
                        .ok_or_else(|| format!("rules for missing chain {}", e.name))?
                        .extend(e.rules()),
                    Op::FlushChain(name) => t
                        .chains
                        .get_mut(&*name)
                        .ok_or_else(|| format!("flush of missing chain {name}"))?
                        .clear(),
                    Op::DeleteChain(name) => {
                        let rules = t
                            .chains
                            .get(&*name)
                            .ok_or_else(|| format!("delete of missing chain {name}"))?;
                        if !rules.is_empty() {
                            return Err(format!("delete of non-empty chain {name}"));
                        }
                        let referenced = t.chains.values().flatten().any(|r| targets(r).contains(&name.to_string()))
                            || t.sets.values().flat_map(|s| s.values()).any(|d| {
                                matches!(d, Some(Data::Verdict(Verdict::Goto(c) | Verdict::Jump(c))) if **c == *name)
                            });
                        if referenced {
                            return Err(format!("delete of referenced chain {name}"));
                        }
                        t.chains.remove(&*name);
                    }
                    Op::AddElement(Element { set, key, data }) => {
                        let s = t
                            .sets
                            .get_mut(&*set.name())
                            .ok_or_else(|| format!("element for missing set {}", set.name()))?;
                        match s.get(&key) {
                            Some(d) if *d != data => {
                                return Err(format!(
                                    "{} {key}: exists with another value",
                                    set.name()
                                ));
                            }
                            _ => {
                                s.insert(key, data);
                            }
                        }
                    }
                    Op::DeleteElement(Element { set, key, .. }) => {
                        t.sets
                            .get_mut(&*set.name())
                            .ok_or_else(|| format!("element of missing set {}", set.name()))?
                            .remove(&key)
                            .ok_or_else(|| {
                                format!("delete of missing element {} {key}", set.name())
                            })?;
                    }
                    Op::AddPort(_) => unreachable!("expanded above"),
                }
            }
            // Commit: every reference resolves.
            for (c, rules) in &t.chains {
                for r in rules {
                    for target in targets(r) {
                        if !t.chains.contains_key(&target) {
                            return Err(format!("{c}: jump to missing chain {target}"));
                        }
                    }
                    for set in sets_used(r) {
                        if !t.sets.contains_key(&set) {
                            return Err(format!("{c}: missing set {set}"));
                        }
                    }
                }
            }
            for (name, s) in &t.sets {
                for d in s.values() {
                    if let Some(Data::Verdict(Verdict::Goto(c) | Verdict::Jump(c))) = d
                        && !t.chains.contains_key(&**c)
                    {
                        return Err(format!("{name}: element to missing chain {c}"));
                    }
                }
            }
            *self = t;
            Ok(())
        }

        /// What the table means, whatever indexes the endpoint maps use: `numgen` DNAT
        /// statements resolved to their endpoints, the endpoint maps left out.
        pub fn canonical(
            &self,
        ) -> (
            BTreeMap<String, Vec<String>>,
            BTreeMap<String, BTreeSet<String>>,
        ) {
            let chains = self
                .chains
                .iter()
                .map(|(name, rules)| {
                    let rules = rules
                        .iter()
                        .map(|r| {
                            r.stmts
                                .iter()
                                .map(|s| match s {
                                    Stmt::DnatMap {
                                        shard,
                                        offset,
                                        count,
                                    } => {
                                        let map = &self.sets[&*FixedSet::Endpoints(*shard).name()];
                                        let eps: Vec<String> = (0..*count)
                                            .map(|i| {
                                                format!("{:?}", map.get(&Key::Index(offset + i)))
                                            })
                                            .collect();
                                        format!("dnat-one-of {eps:?}")
                                    }
                                    other => format!("{other:?}"),
                                })
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .collect();
                    (name.clone(), rules)
                })
                .collect();
            let sets = self
                .sets
                .iter()
                .filter(|(name, _)| !name.starts_with("service-endpoints-"))
                .map(|(name, s)| {
                    (
                        name.clone(),
                        s.iter().map(|(k, d)| format!("{k} {d:?}")).collect(),
                    )
                })
                .collect();
            (chains, sets)
        }
    }
}

fn nft_config() -> service_proxy::nftables::NftablesConfig {
    let mut proxy = ProxyConfig::default();
    proxy.cluster_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
    proxy.service_cidrs = vec!["172.30.0.0/16".parse().unwrap()];
    service_proxy::nftables::NftablesConfig::new(proxy)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The nftables backend: a cold start, then one incremental transaction per change
    /// (stale chains deleted one step later, as the proxier does), leaves a table that means
    /// the same as a cold start of the final snapshot, and every transaction is one the
    /// kernel accepts.
    #[test]
    fn nftables_updates_converge_to_a_fresh_table(
        initial in proptest::collection::vec(proptest::option::of(svc_strategy()), 1..6),
        steps in proptest::collection::vec(
            (0usize..6, proptest::option::of(svc_strategy())),
            1..8,
        ),
        full_compare in any::<bool>(),
    ) {
        use service_proxy::nftables::{Op, Renderer as NftRenderer, Transaction};
        let mut state = initial;
        let (services, slices) = objects(&state);
        let mut snap = Snapshot::build(node(), &services, &slices, &[]).unwrap();
        let renderer = NftRenderer::new(nft_config(), false);
        let mut rules = renderer.render(&snap);
        let mut kernel = nft::Table::default();
        for tx in rules.create(5) {
            kernel.apply(&tx).map_err(|e| TestCaseError::fail(format!("cold start: {e}\n{tx}")))?;
        }
        let mut stale = Vec::new();
        for (index, replacement) in steps {
            if index < state.len() {
                state[index] = replacement;
            } else {
                state.push(replacement);
            }
            let (services, slices) = objects(&state);
            let next = snap.rebuild(node(), &services, &slices, &[]).unwrap();
            let changed: Vec<_> = next.diff(&snap).ports.into_iter().map(|(k, _)| k).collect();
            let update = renderer.update(&mut rules, &next, (!full_compare).then_some(&changed[..]));
            let mut tx = update.transaction;
            for s in std::mem::take(&mut stale) {
                let s: service_proxy::nftables::StaleChain = s;
                if !rules.port_has_chain(s.port.name(), &s.name) {
                    tx.ops.push(Op::DeleteChain(s.name.clone()));
                }
            }
            kernel.apply(&tx).map_err(|e| TestCaseError::fail(format!("update: {e}\n{tx}")))?;
            stale = update.stale;
            snap = next;
        }
        let mut tx = Transaction::new(rules.family);
        for s in stale {
            if !rules.port_has_chain(s.port.name(), &s.name) {
                tx.ops.push(Op::DeleteChain(s.name.clone()));
            }
        }
        kernel.apply(&tx).map_err(|e| TestCaseError::fail(format!("stale chains: {e}\n{tx}")))?;

        let mut fresh = nft::Table::default();
        for tx in NftRenderer::new(nft_config(), false).render(&snap).create(5) {
            fresh.apply(&tx).unwrap();
        }
        prop_assert_eq!(kernel.canonical(), fresh.canonical());
    }
}
