//! Rendering a snapshot into kube-proxy's nftables layout (`syncProxyRules` in
//! `pkg/proxy/nftables/proxier.go`), and the incremental diff between two renders.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use smallvec::SmallVec;

use service_core::model::IpFamily;
use service_core::snapshot::{EndpointSet, ServicePort, ServicePortName, Snapshot};

use super::model::{
    AffinitySet, BaseHook, Chain, Data, Dir, ENDPOINT_SHARDS, ENDPOINT_SLOTS, Element,
    EndpointChain, Family, FixedSet, Hook, Key, L4, MARK_FOR_MASQUERADE, Name, Rule, Stmt, Verdict,
    endpoint_shard,
};
use super::names::{endpoint_names, prefixed, service_base_name};
use super::transaction::{Op, SetDecl, Transaction};
pub use crate::port_name::PortName;
use crate::{LocalTraffic, ProxyConfig};

/// Settings of the nftables backend.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NftablesConfig {
    /// Node-level settings shared by every backend. Unlike the iptables backend, node
    /// ports are never accepted on loopback addresses (kube-proxy's nftables mode does not
    /// use `route_localnet`), so `localhost_nodeports` is ignored.
    pub proxy: ProxyConfig,
    /// `masquerade fully-random`.
    pub fully_random: bool,
}

impl Default for NftablesConfig {
    fn default() -> Self {
        Self {
            proxy: ProxyConfig::default(),
            fully_random: true,
        }
    }
}

impl NftablesConfig {
    /// A configuration around shared proxy settings.
    pub fn new(proxy: ProxyConfig) -> Self {
        Self {
            proxy,
            ..Self::default()
        }
    }
}

/// Everything one service port puts in the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortObjects {
    /// Its chains (service, local, external, firewall).
    pub chains: Vec<Arc<Chain>>,
    /// Its endpoints' chains.
    pub endpoints: Vec<EndpointChain>,
    /// Its affinity sets (one per endpoint, with ClientIP affinity).
    pub affinity: Vec<AffinitySet>,
    /// Its elements in the fixed sets and maps.
    pub elements: Vec<Element>,
    /// Its blocks of indexes in `service-endpoints` (one per dispatch chain without
    /// affinity).
    pub blocks: SmallVec<[Block; 2]>,
}

/// A block of indexes in `service-endpoints`: `numgen random mod CAPACITY offset OFFSET`
/// draws one of them, and the Service's endpoints own contiguous ranges of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Block {
    /// The endpoint map (`service-endpoints-N`).
    pub shard: u16,
    /// The first index.
    pub offset: u32,
    /// How many indexes it holds: [`ENDPOINT_SLOTS`], or the next power of two for a
    /// Service with more endpoints than that.
    pub capacity: u32,
}

/// Blocks of endpoint-map indexes: per map, a bump allocator with free lists per size.
#[derive(Clone, Debug, Default)]
struct Slots {
    maps: Vec<MapSlots>,
}

#[derive(Clone, Debug, Default)]
struct MapSlots {
    next: u32,
    free: Vec<Vec<u32>>,
}

impl Slots {
    /// A block for `n` endpoints in map `shard` (or, when its index space is used up, in
    /// the next map that has room); `None` when every map is full (2^32 indexes each:
    /// tens of millions of Services).
    fn alloc(&mut self, shard: u16, n: u32) -> Option<Block> {
        let capacity = n.max(1).next_power_of_two().max(ENDPOINT_SLOTS);
        let class = capacity.trailing_zeros() as usize;
        for k in 0..ENDPOINT_SHARDS {
            let shard = (shard + k) % ENDPOINT_SHARDS;
            let at = usize::from(shard);
            if self.maps.len() <= at {
                self.maps.resize_with(at + 1, MapSlots::default);
            }
            let map = &mut self.maps[at];
            if let Some(offset) = map.free.get_mut(class).and_then(Vec::pop) {
                return Some(Block {
                    shard,
                    offset,
                    capacity,
                });
            }
            // The block's end (`offset + capacity`, the interval's end element) must fit.
            if u64::from(map.next) + u64::from(capacity) < 1 << 32 {
                let offset = map.next;
                map.next += capacity;
                return Some(Block {
                    shard,
                    offset,
                    capacity,
                });
            }
        }
        None
    }

    fn free(&mut self, b: Block) {
        let class = b.capacity.trailing_zeros() as usize;
        let Some(map) = self.maps.get_mut(usize::from(b.shard)) else {
            return;
        };
        if map.free.len() <= class {
            map.free.resize_with(class + 1, Vec::new);
        }
        map.free[class].push(b.offset);
    }
}

/// The slots of a block of `capacity` indexes at `offset` that the `j`th of `n` endpoints
/// owns: contiguous ranges tiling the block, their sizes differing by at most one.
pub fn endpoint_range(offset: u32, capacity: u32, j: u32, n: u32) -> (u32, u32) {
    let n = u64::from(n.max(1));
    let cap = u64::from(capacity);
    let start = u64::from(j) * cap / n;
    let end = (u64::from(j) + 1) * cap / n;
    // `end > start` since capacity >= n; both fit in u32 as offset + capacity does.
    let first = u64::from(offset) + start;
    let last = u64::from(offset) + end.max(start + 1) - 1;
    (
        u32::try_from(first).unwrap_or(u32::MAX),
        u32::try_from(last).unwrap_or(u32::MAX),
    )
}

impl PortObjects {
    /// The operations that create this port's sets and chains with their rules (not its
    /// elements).
    pub fn expand(&self) -> Vec<Op> {
        let mut ops = Vec::with_capacity(
            self.affinity.len() + 2 * (self.chains.len() + self.endpoints.len()),
        );
        for s in &self.affinity {
            ops.push(Op::AddSet(SetDecl::Affinity(s.clone())));
        }
        for c in &self.chains {
            ops.push(Op::AddChain(c.clone()));
        }
        for e in &self.endpoints {
            ops.push(Op::AddEndpoint(e.clone()));
        }
        for c in &self.chains {
            ops.push(Op::AddRules(c.clone()));
        }
        for e in &self.endpoints {
            ops.push(Op::AddEndpointRules(e.clone()));
        }
        ops
    }

    /// About how many netlink messages creating it takes.
    fn weight(&self) -> usize {
        1 + self.affinity.len() + 2 * self.chains.len() + 3 * self.endpoints.len()
    }
}

type ElemKey = (FixedSet, Key);

/// How the elements of a set are shared between service ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sharing {
    /// Several ports may claim a key with different values: the first in name order wins.
    Owned,
    /// Several ports may hold the same value-less element: it stays while any does.
    Counted,
    /// Each key belongs to one port by construction (blocks of the endpoint maps).
    Exclusive,
}

fn sharing(set: FixedSet) -> Sharing {
    match set {
        FixedSet::Endpoints(_) => Sharing::Exclusive,
        FixedSet::Hairpin => Sharing::Counted,
        _ => Sharing::Owned,
    }
}

type CountMap = HashMap<ElemKey, u32, BuildHasherDefault<FxHasher>>;

type SeenSet = std::collections::HashSet<ElemKey, BuildHasherDefault<FxHasher>>;

/// Element owners by key. The keys are a cluster's service addresses and ports: a fast
/// non-cryptographic hash is enough.
type OwnerMap = HashMap<ElemKey, Owners, BuildHasherDefault<FxHasher>>;

/// The multiply-rotate hash of rustc (`FxHasher`): a few instructions per word.
#[derive(Clone, Copy, Debug, Default)]
struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        // A multiply carries information only upwards: bring the well-mixed high bits
        // down, where the table takes its bucket index (as rustc-hash 2 does).
        self.0.rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

/// The owners of a set element, in service-port order: when two service ports claim the
/// same key (two Services sharing an external IP and port), the first one's value wins.
type Owners = SmallVec<[(PortName, Option<Data>); 1]>;

/// The rendered state of one family's table: the fixed chains and elements and every
/// service port's objects.
#[derive(Clone, Debug)]
pub struct Ruleset {
    /// The family.
    pub family: Family,
    /// The base and helper chains, with their rules.
    pub fixed: Vec<Arc<Chain>>,
    /// Elements that do not belong to a service port (`nodeport-ips`).
    pub fixed_elements: Vec<Element>,
    /// Every service port's objects.
    pub ports: BTreeMap<PortName, Arc<PortObjects>>,
    owners: OwnerMap,
    /// How many ports hold each shared value-less element.
    counted: CountMap,
    slots: Slots,
    /// The endpoint maps declared (created with their first block, kept afterwards).
    shards: std::collections::BTreeSet<u16>,
}

impl Ruleset {
    /// The value of a set element as the kernel should hold it (`None` when absent; a set
    /// element without value is `Some(None)`).
    pub fn element(&self, set: FixedSet, key: &Key) -> Option<Option<&Data>> {
        if let Some(e) = self
            .fixed_elements
            .iter()
            .find(|e| e.set == set && e.key == *key)
        {
            return Some(e.data.as_ref());
        }
        match sharing(set) {
            Sharing::Owned => self
                .owners
                .get(&(set, *key))
                .and_then(|o| o.first())
                .map(|(_, v)| v.as_ref()),
            Sharing::Counted => self
                .counted
                .get(&(set, *key))
                .filter(|n| **n > 0)
                .map(|_| None),
            // Linear: for tracing and tests.
            Sharing::Exclusive => self
                .ports
                .values()
                .flat_map(|p| p.elements.iter())
                .find(|e| e.set == set && e.key == *key)
                .map(|e| e.data.as_ref()),
        }
    }

    /// Every element in effect, with fixed elements first.
    pub fn elements(&self) -> Vec<Element> {
        let mut seen = SeenSet::default();
        let mut out: Vec<Element> = self.fixed_elements.clone();
        for (name, objs) in &self.ports {
            for e in &objs.elements {
                if self.emits(name.name(), e, &mut seen) {
                    out.push(e.clone());
                }
            }
        }
        out
    }

    /// Whether `port` is the one to send `e` (the owner of a contested key, the first holder
    /// of a shared one).
    fn emits(&self, port: &ServicePortName, e: &Element, seen: &mut SeenSet) -> bool {
        match sharing(e.set) {
            Sharing::Owned => self
                .owners
                .get(&(e.set, e.key))
                .and_then(|o| o.first())
                .is_some_and(|(n, _)| n.name() == port),
            Sharing::Counted => seen.insert((e.set, e.key)),
            Sharing::Exclusive => true,
        }
    }

    /// A chain by name (fixed, a service port's or an endpoint's); linear in the number
    /// of chains.
    pub fn chain(&self, name: &str) -> Option<Chain> {
        self.fixed
            .iter()
            .chain(self.ports.values().flat_map(|p| p.chains.iter()))
            .find(|c| &*c.name == name)
            .map(|c| (**c).clone())
            .or_else(|| {
                self.ports
                    .values()
                    .flat_map(|p| p.endpoints.iter())
                    .find(|e| &*e.name == name)
                    .map(EndpointChain::to_chain)
            })
    }

    /// The endpoint maps (`service-endpoints-N`) declared.
    pub fn shards(&self) -> &std::collections::BTreeSet<u16> {
        &self.shards
    }

    /// Whether a service port still has a chain of this name.
    pub fn port_has_chain(&self, port: &ServicePortName, chain: &str) -> bool {
        self.ports.get(port).is_some_and(|p| {
            p.chains.iter().any(|c| &*c.name == chain)
                || p.endpoints.iter().any(|e| &*e.name == chain)
        })
    }

    /// The transactions that create the whole table from nothing (after deleting any old
    /// one), split so that none holds more than about `max_ops` operations: the first
    /// holds the table, its sets and fixed chains, each further one whole service ports.
    pub fn create(&self, max_ops: usize) -> Vec<Transaction> {
        let mut first = Transaction::new(self.family);
        first.ops.push(Op::DeleteTable);
        first.ops.push(Op::AddTable);
        for set in FixedSet::ALL {
            first.ops.push(Op::AddSet(SetDecl::Fixed(set)));
        }
        for &shard in &self.shards {
            first
                .ops
                .push(Op::AddSet(SetDecl::Fixed(FixedSet::Endpoints(shard))));
        }
        for c in &self.fixed {
            first.ops.push(Op::AddChain(c.clone()));
        }
        for c in &self.fixed {
            first.ops.push(Op::AddRules(c.clone()));
        }
        for e in &self.fixed_elements {
            first.ops.push(Op::AddElement(e.clone()));
        }
        let mut out = vec![first];
        let mut current = Transaction::new(self.family);
        // The endpoint maps' elements go after the transaction's rules: the kernel checks
        // every element of a map each time a rule from another chain starts using it, so
        // rules bound while the maps are still empty load in linear time, not quadratic.
        let mut endpoint_elements = Vec::new();
        let mut weight = 0;
        let mut seen = SeenSet::default();
        for (name, objs) in &self.ports {
            if !current.ops.is_empty() && weight >= max_ops {
                Self::append_by_map(&mut current, &mut endpoint_elements);
                out.push(std::mem::replace(
                    &mut current,
                    Transaction::new(self.family),
                ));
                weight = 0;
            }
            weight += objs.weight() + objs.elements.len();
            current.ops.push(Op::AddPort(objs.clone()));
            for e in &objs.elements {
                if self.emits(name.name(), e, &mut seen) {
                    let op = Op::AddElement(e.clone());
                    if matches!(e.set, FixedSet::Endpoints(_)) {
                        endpoint_elements.push(op);
                    } else {
                        current.ops.push(op);
                    }
                }
            }
        }
        Self::append_by_map(&mut current, &mut endpoint_elements);
        if !current.ops.is_empty() {
            out.push(current);
        }
        out
    }

    /// Appends endpoint-map elements grouped by map, so that each map's go out in few
    /// messages (the kernel finds a set by a walk over the table's sets, per message).
    fn append_by_map(tx: &mut Transaction, ops: &mut Vec<Op>) {
        ops.sort_by_key(|op| match op {
            Op::AddElement(e) => Some(e.set),
            _ => None,
        });
        tx.ops.append(ops);
    }

    /// The whole table as one transaction (what `render` prints).
    pub fn create_one(&self) -> Transaction {
        let mut all = Transaction::new(self.family);
        for t in self.create(usize::MAX) {
            all.ops.extend(t.ops);
        }
        all
    }
}

/// A chain that left the table: flushed at once, deleted by a later transaction (kernels
/// before 6.2 may still count a reference from a map element deleted in the same
/// transaction; kube-proxy waits a second).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleChain {
    /// The service port it belonged to.
    pub port: PortName,
    /// The chain.
    pub name: Name,
}

/// The result of an incremental render: the transaction and the chains it flushed that
/// should be deleted later.
#[derive(Clone, Debug)]
pub struct Update {
    /// The operations, in an order the kernel accepts in one transaction.
    pub transaction: Transaction,
    /// Chains emptied by this transaction, to delete once no map element refers to them.
    pub stale: Vec<StaleChain>,
    /// Service ports re-rendered.
    pub changed: usize,
}

/// Renders one family's table from snapshots and computes incremental updates.
///
/// ```
/// use service_proxy::nftables::{NftablesConfig, Renderer};
/// use service_proxy::core::snapshot::{NodeInfo, Snapshot};
///
/// let snapshot = Snapshot::build(NodeInfo::new("node-a", vec![]), &[], &[], &[]).unwrap();
/// let renderer = Renderer::new(NftablesConfig::default(), false);
/// let script = renderer.render(&snapshot).create_one().to_string();
/// assert!(script.contains("add chain ip kube-proxy services"));
/// ```
#[derive(Clone, Debug)]
pub struct Renderer {
    config: NftablesConfig,
    family: Family,
    /// Shared names of the helper chains every port jumps to.
    mark_for_masquerade: Name,
    reject_chain: Name,
}

fn goto(c: &Name) -> Stmt {
    Stmt::Verdict(Verdict::Goto(c.clone()))
}

fn jump(c: &str) -> Stmt {
    Stmt::Verdict(Verdict::Jump(Name::from(c)))
}

fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

const REJECT_CHAIN: &str = "reject-chain";

/// A family's local-traffic matches, resolved once per render: `[local, not local]`.
type LocalStmts = Option<[Stmt; 2]>;

/// The nftables match of a local-traffic detector (`IfLocalNFT`), or with `ne` its
/// opposite: `ip saddr [!=] CIDR`, `iifname [!=] "BRIDGE"` or `iifname [!=] "PREFIX*"`.
///
/// kube-proxy's nftables mode wrote `iif` (an interface index, resolved when the rule is
/// loaded) for the interface modes, which fails to load for a prefix and breaks when the
/// bridge is recreated; it uses `iifname` since kubernetes#134024 (1.34, backported to
/// 1.33), as here.
fn local_stmt(local: &LocalTraffic, ne: bool) -> Stmt {
    match local {
        LocalTraffic::Source(net) => Stmt::Addr {
            dir: Dir::Saddr,
            ne,
            net: net.trunc(),
        },
        LocalTraffic::Interface { name, prefix } => Stmt::Iifname {
            ne,
            name: Name::from(name.as_str()),
            prefix: *prefix,
        },
    }
}

impl Renderer {
    /// A renderer for IPv4 (`ipv6 == false`) or IPv6.
    pub fn new(config: NftablesConfig, ipv6: bool) -> Self {
        Self {
            config,
            family: if ipv6 { Family::Ip6 } else { Family::Ip },
            mark_for_masquerade: Name::from(MARK_FOR_MASQUERADE),
            reject_chain: Name::from(REJECT_CHAIN),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NftablesConfig {
        &self.config
    }

    /// The family it renders.
    pub fn family(&self) -> Family {
        self.family
    }

    fn ip_family(&self) -> IpFamily {
        match self.family {
            Family::Ip => IpFamily::Ipv4,
            Family::Ip6 => IpFamily::Ipv6,
        }
    }

    /// Renders the whole table.
    pub fn render(&self, snapshot: &Snapshot) -> Ruleset {
        let (fixed, fixed_elements) = self.fixed(snapshot);
        let mut ports = Vec::with_capacity(snapshot.ports.len());
        let mut slots = Slots::default();
        let mut counted = CountMap::default();
        let mut owners: OwnerMap = HashMap::with_capacity_and_hasher(
            snapshot.ports.len() * 2,
            BuildHasherDefault::default(),
        );
        let local = self.local_stmts(snapshot);
        for sp in snapshot.ports.values() {
            if let Some(objs) = self.render_port(snapshot, sp, local.as_ref(), &mut slots, None) {
                let name = PortName::new(sp.clone());
                for e in &objs.elements {
                    match sharing(e.set) {
                        // Ports come in name order: pushing keeps each owner list sorted.
                        Sharing::Owned => owners
                            .entry((e.set, e.key))
                            .or_default()
                            .push((name.clone(), e.data.clone())),
                        Sharing::Counted => *counted.entry((e.set, e.key)).or_default() += 1,
                        Sharing::Exclusive => {}
                    }
                }
                ports.push((name, Arc::new(objs)));
            }
        }
        Ruleset {
            family: self.family,
            fixed,
            fixed_elements,
            // In snapshot (name) order already: built in bulk.
            shards: ports
                .iter()
                .flat_map(|(_, o)| o.blocks.iter().map(|b| b.shard))
                .collect(),
            ports: ports.into_iter().collect(),
            owners,
            counted,
            slots,
        }
    }

    /// Brings `rules` up to date with `snapshot` and returns the transaction that does the
    /// same to a kernel holding `rules`. With `changed`, only those service ports are
    /// re-rendered (their names from a snapshot diff); without, every port is, and only
    /// those whose objects differ are sent.
    pub fn update(
        &self,
        rules: &mut Ruleset,
        snapshot: &Snapshot,
        changed: Option<&[ServicePortName]>,
    ) -> Update {
        let mut tx = Transaction::new(self.family);
        let mut stale = Vec::new();
        // Fixed chains and elements.
        let (fixed, fixed_elements) = self.fixed(snapshot);
        let mut fixed_ops = Vec::new();
        for (old, new) in rules.fixed.iter().zip(&fixed) {
            if old != new {
                fixed_ops.push(Op::FlushChain(new.name.clone()));
                fixed_ops.push(Op::AddRules(new.clone()));
            }
        }
        let mut elem_del = Vec::new();
        let mut elem_add = Vec::new();
        for e in &rules.fixed_elements {
            if !fixed_elements.contains(e) {
                elem_del.push(e.clone());
            }
        }
        for e in &fixed_elements {
            if !rules.fixed_elements.contains(e) {
                elem_add.push(e.clone());
            }
        }
        rules.fixed = fixed;
        rules.fixed_elements = fixed_elements;

        // Which ports to look at.
        let names: Vec<ServicePortName> = match changed {
            Some(c) => c.to_vec(),
            None => {
                let mut all: Vec<ServicePortName> =
                    rules.ports.keys().map(|k| k.name().clone()).collect();
                all.extend(
                    snapshot
                        .ports
                        .keys()
                        .filter(|k| !rules.ports.contains_key(*k))
                        .cloned(),
                );
                all
            }
        };

        let mut sets_add = Vec::new();
        let mut sets_del = Vec::new();
        let mut chains_add = Vec::new();
        let mut rules_ops = Vec::new();
        // Each touched key's value before this update (what the kernel holds).
        let mut before: HashMap<ElemKey, Option<Option<Data>>> = HashMap::new();
        let mut counted_delta: HashMap<ElemKey, i64> = HashMap::new();
        let mut n_changed = 0;
        let local = self.local_stmts(snapshot);
        for pname in names {
            let old = rules.ports.get(&pname).cloned();
            let new = snapshot.ports.get(&pname).and_then(|sp| {
                self.render_port(
                    snapshot,
                    sp,
                    local.as_ref(),
                    &mut rules.slots,
                    old.as_deref(),
                )
            });
            if let (Some(o), Some(n)) = (&old, &new)
                && **o == *n
            {
                continue;
            }
            // Blocks of `service-endpoints` the port no longer uses go back to the pool.
            if let Some(o) = &old {
                for b in &o.blocks {
                    if !new.as_ref().is_some_and(|n| n.blocks.contains(b)) {
                        rules.slots.free(*b);
                    }
                }
            }
            n_changed += 1;
            let key: PortName = match (
                snapshot.ports.get(&pname),
                rules.ports.get_key_value(&pname),
            ) {
                (Some(sp), _) => PortName::new(sp.clone()),
                (None, Some((k, _))) => k.clone(),
                (None, None) => continue,
            };
            let empty = PortObjects {
                chains: Vec::new(),
                endpoints: Vec::new(),
                affinity: Vec::new(),
                elements: Vec::new(),
                blocks: SmallVec::new(),
            };
            let o = old.as_deref().unwrap_or(&empty);
            let n = new.as_ref().unwrap_or(&empty);
            // Endpoint maps used for the first time.
            for b in &n.blocks {
                if rules.shards.insert(b.shard) {
                    sets_add.push(Op::AddSet(SetDecl::Fixed(FixedSet::Endpoints(b.shard))));
                }
            }
            // Affinity sets.
            for s in &n.affinity {
                if !o.affinity.contains(s) {
                    sets_add.push(Op::AddSet(SetDecl::Affinity(s.clone())));
                }
            }
            for s in &o.affinity {
                if !n.affinity.iter().any(|x| x.name == s.name) {
                    sets_del.push(Op::DeleteSet(s.name.clone()));
                }
            }
            // Chains.
            for c in &n.chains {
                match o.chains.iter().find(|x| x.name == c.name) {
                    Some(prev) if prev == c => {}
                    Some(_) => {
                        rules_ops.push(Op::FlushChain(c.name.clone()));
                        rules_ops.push(Op::AddRules(c.clone()));
                    }
                    None => {
                        chains_add.push(Op::AddChain(c.clone()));
                        rules_ops.push(Op::AddRules(c.clone()));
                    }
                }
            }
            for e in &n.endpoints {
                match o.endpoints.iter().find(|x| x.name == e.name) {
                    Some(prev) if prev == e => {}
                    Some(_) => {
                        rules_ops.push(Op::FlushChain(e.name.clone()));
                        rules_ops.push(Op::AddEndpointRules(e.clone()));
                    }
                    None => {
                        chains_add.push(Op::AddEndpoint(e.clone()));
                        rules_ops.push(Op::AddEndpointRules(e.clone()));
                    }
                }
            }
            let gone_chains = o
                .chains
                .iter()
                .map(|c| &c.name)
                .filter(|name| !n.chains.iter().any(|x| x.name == **name));
            let gone_endpoints = o
                .endpoints
                .iter()
                .map(|e| &e.name)
                .filter(|name| !n.endpoints.iter().any(|x| x.name == **name));
            for name in gone_chains.chain(gone_endpoints) {
                stale.push(StaleChain {
                    port: key.clone(),
                    name: name.clone(),
                });
            }
            // Elements of exclusive keys: this port's old and new lists decide.
            for e in o
                .elements
                .iter()
                .filter(|e| sharing(e.set) == Sharing::Exclusive)
            {
                let kept = n.elements.iter().any(|x| x.key == e.key && x.set == e.set);
                let same = n.elements.iter().any(|x| x == e);
                if !kept || !same {
                    elem_del.push(e.clone());
                }
            }
            for e in n
                .elements
                .iter()
                .filter(|e| sharing(e.set) == Sharing::Exclusive)
            {
                if !o.elements.contains(e) {
                    elem_add.push(e.clone());
                }
            }
            // Shared value-less elements: counted.
            for e in o
                .elements
                .iter()
                .filter(|e| sharing(e.set) == Sharing::Counted)
            {
                *counted_delta.entry((e.set, e.key)).or_default() -= 1;
            }
            for e in n
                .elements
                .iter()
                .filter(|e| sharing(e.set) == Sharing::Counted)
            {
                *counted_delta.entry((e.set, e.key)).or_default() += 1;
            }
            // Element ownership.
            for e in o
                .elements
                .iter()
                .chain(&n.elements)
                .filter(|e| sharing(e.set) == Sharing::Owned)
            {
                let k = (e.set, e.key);
                before.entry(k).or_insert_with(|| {
                    rules
                        .owners
                        .get(&k)
                        .and_then(|o| o.first())
                        .map(|(_, v)| v.clone())
                });
            }
            for e in o
                .elements
                .iter()
                .filter(|e| sharing(e.set) == Sharing::Owned)
            {
                let k = (e.set, e.key);
                if let Some(list) = rules.owners.get_mut(&k) {
                    list.retain(|(n, _)| *n.name() != pname);
                    if list.is_empty() {
                        rules.owners.remove(&k);
                    }
                }
            }
            for e in n
                .elements
                .iter()
                .filter(|e| sharing(e.set) == Sharing::Owned)
            {
                let k = (e.set, e.key);
                let list = rules.owners.entry(k).or_default();
                let at = list.partition_point(|(n, _)| *n.name() < pname);
                list.insert(at, (key.clone(), e.data.clone()));
            }
            match new {
                Some(n) => {
                    rules.ports.insert(key, Arc::new(n));
                }
                None => {
                    rules.ports.remove(&pname);
                }
            }
        }
        tx.ops.extend(sets_add);
        tx.ops.extend(chains_add);
        tx.ops.extend(fixed_ops);
        tx.ops.extend(rules_ops);
        let mut touched: Vec<(ElemKey, Option<Option<Data>>)> = before.into_iter().collect();
        touched.sort_unstable_by_key(|t| t.0);
        for (k, was) in touched {
            let now = rules.owners.get(&k).and_then(|o| o.first()).map(|(_, v)| v);
            let elem = |data: Option<Data>| Element {
                set: k.0,
                key: k.1,
                data,
            };
            match (was, now) {
                (Some(b), Some(n)) if b == *n => {}
                (Some(_), Some(n)) => {
                    elem_del.push(elem(None));
                    elem_add.push(elem(n.clone()));
                }
                (Some(_), None) => elem_del.push(elem(None)),
                (None, Some(n)) => elem_add.push(elem(n.clone())),
                (None, None) => {}
            }
        }
        let mut deltas: Vec<(ElemKey, i64)> = counted_delta.into_iter().collect();
        deltas.sort_unstable_by_key(|d| d.0);
        for (k, delta) in deltas {
            let was = rules.counted.get(&k).copied().unwrap_or(0);
            let now = u32::try_from((i64::from(was) + delta).max(0)).unwrap_or(u32::MAX);
            let elem = Element {
                set: k.0,
                key: k.1,
                data: None,
            };
            match (was > 0, now > 0) {
                (false, true) => elem_add.push(elem),
                (true, false) => elem_del.push(elem),
                _ => {}
            }
            if now == 0 {
                rules.counted.remove(&k);
            } else {
                rules.counted.insert(k, now);
            }
        }
        tx.ops.extend(elem_del.into_iter().map(Op::DeleteElement));
        tx.ops.extend(elem_add.into_iter().map(Op::AddElement));
        for s in &stale {
            tx.ops.push(Op::FlushChain(s.name.clone()));
        }
        tx.ops.extend(sets_del);
        Update {
            transaction: tx,
            stale,
            changed: n_changed,
        }
    }

    /// The base and helper chains, and the `nodeport-ips` elements.
    fn fixed(&self, snapshot: &Snapshot) -> (Vec<Arc<Chain>>, Vec<Element>) {
        let proxy = &self.config.proxy;
        let mark = proxy.masquerade_mark();
        let family = self.ip_family();
        let base = |name: &str, nat: bool, hook: Hook, priority: i32, rules: Vec<Rule>| Chain {
            name: Name::from(name),
            hook: Some(BaseHook {
                nat,
                hook,
                priority,
            }),
            rules: rules.into(),
        };
        let new_jump = |c: &str| Rule::new([Stmt::CtStateNew, jump(c)]);
        let helper = |name: &str, rules: Vec<Rule>| Chain {
            name: Name::from(name),
            hook: None,
            rules: rules.into(),
        };
        let nodeport_ips = proxy.nodeport_ips(&family);
        let loopback: IpNet = match self.family {
            Family::Ip => "127.0.0.0/8".parse().unwrap_or_default(),
            Family::Ip6 => "::1/128".parse().unwrap_or_default(),
        };
        let nodeport_match = |map: FixedSet| -> Rule {
            match nodeport_ips {
                Some(_) => Rule::new([
                    Stmt::AddrInSet {
                        dir: Dir::Daddr,
                        set: Name::from(FixedSet::NodeportIps.name()),
                    },
                    Stmt::VmapProtoPort(map),
                ]),
                None => Rule::new([
                    Stmt::FibLocal(Dir::Daddr),
                    Stmt::Addr {
                        dir: Dir::Daddr,
                        ne: true,
                        net: loopback,
                    },
                    Stmt::VmapProtoPort(map),
                ]),
            }
        };
        let mut cluster_ips_check = vec![
            Rule::new([
                Stmt::AddrInSet {
                    dir: Dir::Daddr,
                    set: Name::from(FixedSet::ClusterIps.name()),
                },
                Stmt::Reject,
            ])
            .comment("Reject traffic to invalid ports of ClusterIPs"),
        ];
        for cidr in proxy
            .service_cidrs
            .iter()
            .filter(|n| IpFamily::of(&n.addr()) == family)
        {
            cluster_ips_check.push(
                Rule::new([
                    Stmt::Addr {
                        dir: Dir::Daddr,
                        ne: false,
                        net: cidr.trunc(),
                    },
                    Stmt::Verdict(Verdict::Drop),
                ])
                .comment("Drop traffic to unallocated ClusterIPs"),
            );
        }
        let chains = vec![
            base(
                "filter-prerouting-pre-dnat",
                false,
                Hook::Prerouting,
                -110,
                vec![new_jump("firewall-check")],
            ),
            base(
                "filter-output-pre-dnat",
                false,
                Hook::Output,
                -110,
                vec![new_jump("firewall-check")],
            ),
            base(
                "filter-forward",
                false,
                Hook::Forward,
                0,
                vec![
                    new_jump("service-endpoints-check"),
                    new_jump("cluster-ips-check"),
                ],
            ),
            base(
                "filter-input",
                false,
                Hook::Input,
                0,
                vec![
                    new_jump("nodeport-endpoints-check"),
                    new_jump("service-endpoints-check"),
                ],
            ),
            base(
                "filter-output",
                false,
                Hook::Output,
                0,
                vec![
                    new_jump("service-endpoints-check"),
                    new_jump("cluster-ips-check"),
                ],
            ),
            base(
                "nat-prerouting",
                true,
                Hook::Prerouting,
                -100,
                vec![Rule::new([jump("services")])],
            ),
            base(
                "nat-output",
                true,
                Hook::Output,
                -100,
                vec![Rule::new([jump("services")])],
            ),
            base(
                "nat-postrouting",
                true,
                Hook::Postrouting,
                100,
                vec![Rule::new([jump("masquerading")])],
            ),
            helper(
                "firewall-check",
                vec![Rule::new([Stmt::VmapAddrProtoPort(FixedSet::FirewallIps)])],
            ),
            helper(
                "services",
                vec![
                    Rule::new([Stmt::VmapAddrProtoPort(FixedSet::ServiceIps)]),
                    nodeport_match(FixedSet::ServiceNodeports),
                ],
            ),
            helper(
                "service-endpoints-check",
                vec![Rule::new([Stmt::VmapAddrProtoPort(
                    FixedSet::NoEndpointServices,
                )])],
            ),
            helper(
                "nodeport-endpoints-check",
                vec![nodeport_match(FixedSet::NoEndpointNodeports)],
            ),
            helper("cluster-ips-check", cluster_ips_check),
            helper(REJECT_CHAIN, vec![Rule::new([Stmt::Reject])]),
            helper(MARK_FOR_MASQUERADE, vec![Rule::new([Stmt::MarkOr(mark)])]),
            helper(
                "masquerading",
                vec![
                    Rule::new([
                        Stmt::CtStatusDnat,
                        Stmt::PairInSet(FixedSet::Hairpin),
                        Stmt::Masquerade {
                            fully_random: self.config.fully_random,
                        },
                    ]),
                    Rule::new([Stmt::MarkClear(mark), Stmt::Verdict(Verdict::Return)]),
                    Rule::new([Stmt::MarkXor(mark)]),
                    Rule::new([Stmt::Masquerade {
                        fully_random: self.config.fully_random,
                    }]),
                ],
            ),
        ];
        let elements = nodeport_ips
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| !ip.is_loopback())
            .map(|ip| Element {
                set: FixedSet::NodeportIps,
                key: Key::Addr(ip),
                data: None,
            })
            .collect();
        let _ = snapshot;
        (chains.into_iter().map(Arc::new).collect(), elements)
    }

    /// The local-traffic matches of this family on the snapshot's node.
    fn local_stmts(&self, snapshot: &Snapshot) -> LocalStmts {
        let local = self
            .config
            .proxy
            .local_traffic(&self.ip_family(), &snapshot.node)?;
        Some([local_stmt(&local, false), local_stmt(&local, true)])
    }

    /// Renders one service port for this family; `detector` is [`Renderer::local_stmts`].
    fn render_port(
        &self,
        snapshot: &Snapshot,
        sp: &ServicePort,
        detector: Option<&[Stmt; 2]>,
        slots: &mut Slots,
        prev: Option<&PortObjects>,
    ) -> Option<PortObjects> {
        let family = self.ip_family();
        let plan = sp.family(&family)?;
        let proto = L4::of(sp.protocol())?;
        let proxy = &self.config.proxy;
        let node_ip = snapshot.node.primary_ip(&family);

        let base_name = service_base_name(&sp.name);
        let cluster_chain = prefixed("service-", &base_name);
        // The other chains share the hash: swap the prefix, for the chains the port uses.
        let swap = |prefix: &str, used: bool| {
            if !used {
                return cluster_chain.clone();
            }
            let rest = &cluster_chain["service-".len()..];
            let mut s = String::with_capacity(prefix.len() + rest.len());
            s.push_str(prefix);
            s.push_str(rest);
            Name::from(s)
        };
        // Which endpoints each kind of traffic reaches: derived once, on the snapshot.
        let t = &plan.traffic;
        let accessible = t.externally_accessible;
        let has_endpoints = t.has_endpoints;
        let local_chain = swap(
            "local-",
            sp.internal_policy_local || sp.external_policy_local,
        );
        let external_chain = swap("external-", has_endpoints && accessible);
        let firewall_chain = swap("firewall-", t.source_ranges);

        let external_local = t.external == EndpointSet::Local;
        let uses_cluster_chain = t.uses_cluster_set;
        let uses_local_chain = t.uses_local_set;
        let chain_of = |set: EndpointSet| match set {
            EndpointSet::Local => &local_chain,
            _ => &cluster_chain,
        };
        let (internal_chain, has_internal) = (chain_of(t.internal), t.internal_reachable);
        let (external_policy_chain, has_external) = (chain_of(t.external), t.external_reachable);
        let uses_external_chain = has_endpoints && accessible;
        let uses_firewall = t.source_ranges;
        let (cluster, local) = (&plan.selection.cluster, &plan.selection.local);

        let reject = Verdict::Goto(self.reject_chain.clone());
        let (internal_filter, external_filter) = if !has_endpoints {
            (Some(reject.clone()), Some(reject))
        } else {
            (
                (!has_internal).then_some(Verdict::Drop),
                (!has_external).then_some(Verdict::Drop),
            )
        };

        let mut elements = Vec::with_capacity(4 + plan.selection.all_reachable.len());
        let mut el = |set: FixedSet, key: Key, verdict: Option<Verdict>| {
            elements.push(Element {
                set,
                key,
                data: verdict.map(Data::Verdict),
            })
        };
        let app = |ip: IpAddr| Key::AddrProtoPort(ip, proto, sp.port);

        // Cluster IP.
        el(FixedSet::ClusterIps, Key::Addr(plan.cluster_ip), None);
        if has_internal {
            el(
                FixedSet::ServiceIps,
                app(plan.cluster_ip),
                Some(Verdict::Goto(internal_chain.clone())),
            );
        } else if let Some(v) = &internal_filter {
            el(
                FixedSet::NoEndpointServices,
                app(plan.cluster_ip),
                Some(v.clone()),
            );
        }
        // External and load-balancer IPs.
        let mut external_ips: Vec<IpAddr> = plan.external_ips.clone();
        external_ips.extend(plan.load_balancer_ips.iter().copied());
        for &ip in &external_ips {
            if uses_external_chain {
                el(
                    FixedSet::ServiceIps,
                    app(ip),
                    Some(Verdict::Goto(external_chain.clone())),
                );
            }
            if let Some(v) = &external_filter {
                el(FixedSet::NoEndpointServices, app(ip), Some(v.clone()));
            }
        }
        if uses_firewall {
            for &ip in &plan.load_balancer_ips {
                el(
                    FixedSet::FirewallIps,
                    app(ip),
                    Some(Verdict::Goto(firewall_chain.clone())),
                );
            }
        }
        // Node port.
        if let Some(np) = sp.node_port {
            if uses_external_chain {
                el(
                    FixedSet::ServiceNodeports,
                    Key::ProtoPort(proto, np),
                    Some(Verdict::Goto(external_chain.clone())),
                );
            }
            if let Some(v) = &external_filter {
                el(
                    FixedSet::NoEndpointNodeports,
                    Key::ProtoPort(proto, np),
                    Some(v.clone()),
                );
            }
        }

        // Hairpin: every endpoint reaching itself through the Service is masqueraded.
        for &i in &plan.selection.all_reachable {
            let ip = plan.endpoints[i as usize].ip;
            el(FixedSet::Hairpin, Key::AddrPair(ip, ip), None);
        }

        let mut chains: Vec<Arc<Chain>> = Vec::with_capacity(4);
        let to_masq = || Stmt::Verdict(Verdict::Jump(self.mark_for_masquerade.clone()));

        // Firewall chain: allowed sources return, the rest is dropped (kube-proxy writes
        // one `ip saddr != { ranges } drop`; a rule per range behaves the same and needs
        // no anonymous interval set).
        if uses_firewall {
            let mut fw = Chain::new(firewall_chain);
            let mut allow_from_node = false;
            for cidr in &plan.load_balancer_source_ranges {
                fw.rules.push(Rule::new([
                    Stmt::Addr {
                        dir: Dir::Saddr,
                        ne: false,
                        net: cidr.trunc(),
                    },
                    Stmt::Verdict(Verdict::Return),
                ]));
                allow_from_node |= node_ip.is_some_and(|ip| cidr.contains(&ip));
            }
            // A node reaching its own load balancer may loop back with the VIP as source.
            if allow_from_node {
                for &ip in &plan.load_balancer_ips {
                    fw.rules.push(Rule::new([
                        Stmt::Addr {
                            dir: Dir::Saddr,
                            ne: false,
                            net: host(ip),
                        },
                        Stmt::Verdict(Verdict::Return),
                    ]));
                }
            }
            fw.rules.push(Rule::new([Stmt::Verdict(Verdict::Drop)]));
            chains.push(Arc::new(fw));
        }

        // External chain.
        if uses_external_chain {
            let mut ext = Chain::new(external_chain);
            if !external_local {
                ext.rules.push(
                    Rule::new([to_masq()]).comment("masquerade traffic from outside the cluster"),
                );
            } else {
                if let Some([is_local, _]) = detector {
                    ext.rules.push(
                        Rule::new([is_local.clone(), goto(&cluster_chain)])
                            .comment("short-circuit pod traffic"),
                    );
                }
                ext.rules.push(
                    Rule::new([Stmt::FibLocal(Dir::Saddr), to_masq()])
                        .comment("masquerade local traffic"),
                );
                ext.rules.push(
                    Rule::new([Stmt::FibLocal(Dir::Saddr), goto(&cluster_chain)])
                        .comment("short-circuit local traffic"),
                );
            }
            if has_external {
                ext.rules.push(Rule::new([goto(external_policy_chain)]));
            }
            chains.push(Arc::new(ext));
        }

        // Endpoint names, computed once.
        let affinity = sp.session_affinity_timeout;
        // Endpoint chains only where ClientIP affinity needs them: otherwise one statement
        // picks the endpoint and DNATs to it.
        let reachable = &plan.selection.all_reachable;
        let chained: &[u32] = if affinity.is_some() { reachable } else { &[] };
        let endpoints: Vec<EndpointChain> = chained
            .iter()
            .map(|&i| {
                let addr = plan.endpoints[i as usize].addr();
                let (name, affinity) = endpoint_names(&base_name, &addr, affinity.is_some());
                EndpointChain {
                    name,
                    addr,
                    proto,
                    affinity,
                }
            })
            .collect();
        let find = |i: u32| {
            reachable
                .iter()
                .position(|&j| j == i)
                .map(|at| &endpoints[at])
        };

        let dispatch = |chain_name: &Name,
                        list: &[u32],
                        masq_cluster_ip: bool,
                        block: Option<Block>|
         -> Chain {
            let mut c = Chain::new(chain_name.clone());
            if masq_cluster_ip {
                let daddr = Stmt::Addr {
                    dir: Dir::Daddr,
                    ne: false,
                    net: host(plan.cluster_ip),
                };
                if proxy.masquerade_all {
                    c.rules.push(Rule::new([daddr, to_masq()]));
                } else if let Some([_, not_local]) = detector {
                    c.rules
                        .push(Rule::new([daddr, not_local.clone(), to_masq()]));
                }
            }
            if affinity.is_some() {
                for &i in list {
                    if let Some(EndpointChain {
                        name,
                        affinity: Some(aff),
                        ..
                    }) = find(i)
                    {
                        c.rules.push(Rule::new([
                            Stmt::AddrInSet {
                                dir: Dir::Saddr,
                                set: aff.clone(),
                            },
                            goto(name),
                        ]));
                    }
                }
            }
            if affinity.is_some() {
                let targets: Vec<Name> = list
                    .iter()
                    .filter_map(|&i| find(i).map(|e| e.name.clone()))
                    .collect();
                if !targets.is_empty() {
                    c.rules.push(Rule::new([Stmt::NumgenVmap(targets)]));
                }
            } else if let Some(b) = block {
                c.rules.push(Rule::new([
                    Stmt::L4Proto(proto),
                    Stmt::DnatMap {
                        shard: b.shard,
                        offset: b.offset,
                        count: b.capacity,
                    },
                ]));
            }
            c
        };
        // A block of `service-endpoints` for each dispatch chain without affinity: the
        // previous render's when it is large enough, so that endpoints joining, leaving
        // or changing rewrite map elements only (the rule draws from the whole block
        // whatever their number); a new one otherwise.
        let mut blocks: SmallVec<[Block; 2]> = SmallVec::new();
        let mut block_for = |list: &[u32], slots: &mut Slots| -> Option<Block> {
            if affinity.is_some() || list.is_empty() {
                return None;
            }
            let n = u32::try_from(list.len()).unwrap_or(u32::MAX);
            let b = match prev
                .and_then(|p| p.blocks.get(blocks.len()))
                .filter(|b| b.capacity >= n)
            {
                Some(b) => *b,
                None => slots.alloc(endpoint_shard(&base_name), n)?,
            };
            blocks.push(b);
            for (j, &i) in list.iter().enumerate() {
                let j = u32::try_from(j).unwrap_or(u32::MAX);
                let (first, last) = endpoint_range(b.offset, b.capacity, j, n);
                elements.push(Element {
                    set: FixedSet::Endpoints(b.shard),
                    key: Key::Range(first, last),
                    data: Some(Data::Endpoint(plan.endpoints[i as usize].addr())),
                });
            }
            Some(b)
        };
        if uses_cluster_chain {
            let masq = has_internal && *internal_chain == cluster_chain;
            let block = block_for(cluster, slots);
            chains.push(Arc::new(dispatch(&cluster_chain, cluster, masq, block)));
        }
        if uses_local_chain {
            let masq = has_internal && *internal_chain == local_chain;
            let block = block_for(local, slots);
            chains.push(Arc::new(dispatch(&local_chain, local, masq, block)));
        }

        // Endpoint chains and affinity sets.
        let affinity_sets = match affinity {
            Some(timeout) => endpoints
                .iter()
                .filter_map(|e| e.affinity.clone())
                .map(|name| AffinitySet { name, timeout })
                .collect(),
            None => Vec::new(),
        };

        Some(PortObjects {
            chains,
            endpoints,
            affinity: affinity_sets,
            elements,
            blocks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A block's ranges tile it exactly, in order, and their sizes differ by at most
        /// one: each endpoint is drawn with probability within 1/capacity of 1/n.
        #[test]
        fn endpoint_ranges_tile_the_block_evenly(
            n in 1u32..5000,
            block in 0u32..60_000,
            big in any::<bool>(),
        ) {
            let capacity = if big { n.next_power_of_two().max(ENDPOINT_SLOTS) } else { ENDPOINT_SLOTS };
            let offset = block * ENDPOINT_SLOTS;
            prop_assume!(u64::from(offset) + u64::from(capacity) < 1 << 32);
            let mut next = u64::from(offset);
            let (mut smallest, mut largest) = (u64::MAX, 0);
            for j in 0..n {
                let (first, last) = endpoint_range(offset, capacity, j, n);
                prop_assert_eq!(u64::from(first), next);
                prop_assert!(last >= first);
                let size = u64::from(last - first) + 1;
                smallest = smallest.min(size);
                largest = largest.max(size);
                next = u64::from(last) + 1;
            }
            prop_assert_eq!(next, u64::from(offset) + u64::from(capacity));
            prop_assert!(largest - smallest <= 1);
        }
    }

    #[test]
    fn blocks_are_reused_and_spill_to_the_next_map_when_one_is_full() {
        let mut slots = Slots::default();
        let a = slots.alloc(7, 3).unwrap();
        let b = slots.alloc(7, 10).unwrap();
        assert_eq!((a.shard, a.offset, a.capacity), (7, 0, ENDPOINT_SLOTS));
        assert_eq!(b.offset, ENDPOINT_SLOTS);
        // More endpoints than slots: a larger block, a power of two.
        let c = slots.alloc(7, ENDPOINT_SLOTS + 1).unwrap();
        assert_eq!(c.capacity, 2 * ENDPOINT_SLOTS);
        slots.free(a);
        assert_eq!(slots.alloc(7, 1).unwrap().offset, a.offset);
        // The last block of a map ends at the last index (its end element, the index
        // past it, still fits in 32 bits); after it, blocks go to the next map.
        slots.maps.resize_with(10, MapSlots::default);
        slots.maps[9].next = u32::MAX - ENDPOINT_SLOTS;
        assert_eq!(slots.alloc(9, 2).unwrap().shard, 9);
        let d = slots.alloc(9, 2).unwrap();
        assert_eq!((d.shard, d.offset), (10, 0));
        // The last map wraps around to the first.
        slots
            .maps
            .resize_with(usize::from(ENDPOINT_SHARDS), MapSlots::default);
        slots.maps[usize::from(ENDPOINT_SHARDS) - 1].next = u32::MAX;
        assert_eq!(slots.alloc(ENDPOINT_SHARDS - 1, 2).unwrap().shard, 0);
    }
}
