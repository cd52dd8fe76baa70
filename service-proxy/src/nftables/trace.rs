//! Where a packet goes through our nftables table, found by evaluating the model hook by
//! hook as the kernel would (in the spirit of kube-proxy's `nftablesTracer`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use super::model::{
    BaseHook, Chain, Data, Dir, EndpointChain, FixedSet, Hook, Key, L4, Stmt, Verdict as NftVerdict,
};
use super::render::Ruleset;
use crate::trace::{Destination, Packet, Verdict};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State<'p> {
    /// The input interface (empty for the node's own packets).
    iif: &'p str,
    src: IpAddr,
    dst: IpAddr,
    dport: u16,
    proto: Option<L4>,
    mark: u32,
    /// Whether the connection was DNATed (`ct status dnat`).
    dnat: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Fell off the chain or returned: the caller continues.
    Continue,
    Accept,
    Drop,
    Reject,
    Dnat(SocketAddr),
    Masquerade,
}

/// Evaluates a [`Ruleset`] for the first packet of a connection.
#[derive(Debug)]
pub struct Tracer<'a> {
    rules: &'a Ruleset,
    chains: HashMap<&'a str, &'a Chain>,
    endpoints: HashMap<&'a str, &'a EndpointChain>,
    /// The endpoint maps' ranges by map and first index: last index and endpoint (the
    /// ruleset keeps them per port).
    endpoint_maps: BTreeMap<(u16, u32), (u32, &'a Data)>,
    local: Vec<IpAddr>,
}

const MAX_DEPTH: usize = 32;

impl<'a> Tracer<'a> {
    /// A tracer for `rules` on a node with these local addresses (loopback addresses are
    /// always local).
    pub fn new(rules: &'a Ruleset, local_addresses: &[IpAddr]) -> Self {
        let chains = rules
            .fixed
            .iter()
            .chain(rules.ports.values().flat_map(|p| p.chains.iter()))
            .map(|c| (&*c.name, &**c))
            .collect();
        let endpoints = rules
            .ports
            .values()
            .flat_map(|p| p.endpoints.iter())
            .map(|e| (&*e.name, e))
            .collect();
        let endpoint_maps = rules
            .ports
            .values()
            .flat_map(|p| p.elements.iter())
            .filter_map(|e| match (e.set, e.key, e.data.as_ref()) {
                (FixedSet::Endpoints(shard), Key::Range(first, last), Some(d)) => {
                    Some(((shard, first), (last, d)))
                }
                _ => None,
            })
            .collect();
        Self {
            rules,
            chains,
            endpoints,
            endpoint_maps,
            local: local_addresses.to_vec(),
        }
    }

    fn is_local(&self, ip: &IpAddr) -> bool {
        ip.is_loopback() || self.local.contains(ip)
    }

    fn lookup(&self, set: FixedSet, key: Key) -> Option<Option<&Data>> {
        self.rules.element(set, &key)
    }

    fn addr_key(&self, st: &State<'_>) -> Option<Key> {
        Some(Key::AddrProtoPort(st.dst, st.proto?, st.dport))
    }

    /// Runs `chain` from rule `i`.
    fn run<'p>(
        &self,
        chain: &str,
        i: usize,
        st: State<'p>,
        depth: usize,
    ) -> Vec<(Fate, State<'p>)> {
        let owned;
        let c: &Chain = match (self.chains.get(chain), self.endpoints.get(chain)) {
            (Some(c), _) => c,
            (None, Some(e)) => {
                owned = e.to_chain();
                &owned
            }
            (None, None) => return vec![(Fate::Continue, st)],
        };
        if depth > MAX_DEPTH {
            return vec![(Fate::Drop, st)];
        }
        // Statements that change the packet (marks) only follow a rule's matches: what
        // they change carries over to the next rules.
        let mut st = st;
        for (at, rule) in c.rules.iter().enumerate().skip(i) {
            let mut matched = true;
            for stmt in &rule.stmts {
                let verdict: Option<NftVerdict> = match stmt {
                    Stmt::CtStateNew => None,
                    Stmt::Addr { dir, ne, net } => {
                        let ip = if *dir == Dir::Saddr { st.src } else { st.dst };
                        if net.contains(&ip) == *ne {
                            matched = false;
                        }
                        None
                    }
                    Stmt::Iifname { ne, name, prefix } => {
                        let hit = if *prefix {
                            st.iif.starts_with(&**name)
                        } else {
                            st.iif == &**name
                        };
                        if hit == *ne {
                            matched = false;
                        }
                        None
                    }
                    Stmt::AddrInSet { dir, set } => {
                        let ip = if *dir == Dir::Saddr { st.src } else { st.dst };
                        let fixed = FixedSet::ALL.into_iter().find(|s| s.name() == **set);
                        // Affinity sets start empty: a first packet never matches them.
                        let hit = fixed.is_some_and(|s| self.lookup(s, Key::Addr(ip)).is_some());
                        if !hit {
                            matched = false;
                        }
                        None
                    }
                    Stmt::FibLocal(dir) => {
                        let ip = if *dir == Dir::Saddr { st.src } else { st.dst };
                        if !self.is_local(&ip) {
                            matched = false;
                        }
                        None
                    }
                    Stmt::MarkClear(m) => {
                        if st.mark & m != 0 {
                            matched = false;
                        }
                        None
                    }
                    Stmt::L4Proto(p) => {
                        if st.proto != Some(*p) {
                            matched = false;
                        }
                        None
                    }
                    Stmt::VmapAddrProtoPort(map) => {
                        match self.addr_key(&st).and_then(|k| self.lookup(*map, k)) {
                            Some(Some(Data::Verdict(v))) => Some(v.clone()),
                            _ => {
                                matched = false;
                                None
                            }
                        }
                    }
                    Stmt::VmapProtoPort(map) => {
                        let key = st.proto.map(|p| Key::ProtoPort(p, st.dport));
                        match key.and_then(|k| self.lookup(*map, k)) {
                            Some(Some(Data::Verdict(v))) => Some(v.clone()),
                            _ => {
                                matched = false;
                                None
                            }
                        }
                    }
                    Stmt::NumgenVmap(targets) => {
                        // Every endpoint is a possible outcome.
                        let mut out = Vec::new();
                        for t in targets {
                            out.extend(self.run(t, 0, st, depth + 1));
                        }
                        return out;
                    }
                    Stmt::DnatMap {
                        shard,
                        offset,
                        count,
                    } => {
                        // Every endpoint owning a range of the Service's block is a
                        // possible outcome (an index no range covers: no DNAT, as in the
                        // kernel, where the lookup fails and the rule does not match).
                        let end = u64::from(*offset) + u64::from(*count);
                        return self
                            .endpoint_maps
                            .range((*shard, *offset)..=(*shard, u32::MAX))
                            .take_while(|((_, first), (last, _))| {
                                u64::from(*first) < end && u64::from(*last) < end
                            })
                            .filter_map(|(_, (_, d))| match *d {
                                Data::Endpoint(a) => Some((Fate::Dnat(*a), st)),
                                Data::Verdict(_) => None,
                            })
                            .collect();
                    }
                    Stmt::CtStatusDnat => {
                        if !st.dnat {
                            matched = false;
                        }
                        None
                    }
                    Stmt::PairInSet(set) => {
                        if self.lookup(*set, Key::AddrPair(st.src, st.dst)).is_none() {
                            matched = false;
                        }
                        None
                    }
                    Stmt::MarkOr(m) => {
                        st.mark |= m;
                        None
                    }
                    Stmt::MarkXor(m) => {
                        st.mark ^= m;
                        None
                    }
                    Stmt::Masquerade { .. } => return vec![(Fate::Masquerade, st)],
                    Stmt::Dnat(sa) => return vec![(Fate::Dnat(*sa), st)],
                    Stmt::UpdateSaddr(_) => None,
                    Stmt::Reject => return vec![(Fate::Reject, st)],
                    Stmt::Verdict(v) => Some(v.clone()),
                };
                if !matched {
                    break;
                }
                if let Some(v) = verdict {
                    return match v {
                        NftVerdict::Accept => vec![(Fate::Accept, st)],
                        NftVerdict::Drop => vec![(Fate::Drop, st)],
                        NftVerdict::Return => vec![(Fate::Continue, st)],
                        NftVerdict::Goto(t) => self.run(&t, 0, st, depth + 1),
                        NftVerdict::Jump(t) => {
                            let mut out = Vec::new();
                            for (fate, s) in self.run(&t, 0, st, depth + 1) {
                                if fate == Fate::Continue {
                                    out.extend(self.run(chain, at + 1, s, depth));
                                } else {
                                    out.push((fate, s));
                                }
                            }
                            out
                        }
                    };
                }
            }
        }
        vec![(Fate::Continue, st)]
    }

    /// Runs the base chains of a hook in priority order. A chain's `accept` ends only that
    /// chain; drop, reject and NAT decide.
    fn hook<'p>(&self, hook: Hook, nat: bool, st: State<'p>) -> Vec<(Fate, State<'p>)> {
        self.bases(st, |h| h.hook == hook && h.nat == nat)
    }

    /// Runs the base chains `which` selects, in priority order.
    fn bases<'p>(
        &self,
        st: State<'p>,
        which: impl Fn(&BaseHook) -> bool,
    ) -> Vec<(Fate, State<'p>)> {
        let mut bases: Vec<&Chain> = self
            .rules
            .fixed
            .iter()
            .filter(|c| c.hook.as_ref().is_some_and(&which))
            .map(|c| &**c)
            .collect();
        bases.sort_by_key(|c| c.hook.map(|h| h.priority));
        let mut branches = vec![(Fate::Continue, st)];
        for c in bases {
            let mut next = Vec::new();
            for (fate, s) in branches {
                if matches!(fate, Fate::Continue | Fate::Accept) {
                    next.extend(self.run(&c.name, 0, s, 0));
                } else {
                    next.push((fate, s));
                }
            }
            branches = next;
        }
        branches
    }

    /// Filter then NAT at a hook where both run (prerouting and output: the filter chains
    /// at -110 come before NAT at -100), then the filter chains at priority 0.
    fn pre_nat<'p>(&self, hook: Hook, st: State<'p>) -> Vec<(Fate, State<'p>)> {
        let mut out = Vec::new();
        for (fate, s) in self.hook_filter(hook, st, |p| p < -100) {
            if matches!(fate, Fate::Drop | Fate::Reject) {
                out.push((fate, s));
                continue;
            }
            for (fate, mut s2) in self.hook(hook, true, s) {
                if let Fate::Dnat(sa) = fate {
                    s2.dst = sa.ip();
                    s2.dport = sa.port();
                    s2.dnat = true;
                }
                out.push((fate, s2));
            }
        }
        out
    }

    /// The filter base chains of a hook whose priority `prio` accepts.
    fn hook_filter<'p>(
        &self,
        hook: Hook,
        st: State<'p>,
        prio: impl Fn(i32) -> bool,
    ) -> Vec<(Fate, State<'p>)> {
        self.bases(st, |h| h.hook == hook && !h.nat && prio(h.priority))
    }

    /// Where the first packet of a new connection goes.
    pub fn trace(&self, packet: &Packet) -> Verdict {
        let proto = L4::of(&packet.protocol);
        let start = State {
            iif: &packet.in_interface,
            src: packet.src,
            dst: packet.dst,
            dport: packet.dport,
            proto,
            mark: 0,
            dnat: false,
        };
        let from_node = self.is_local(&packet.src);
        let first = if from_node {
            Hook::Output
        } else {
            Hook::Prerouting
        };
        let mut dests = Vec::new();
        let mut other: Option<Verdict> = None;
        for (fate, st) in self.pre_nat(first, start) {
            let dnat = match fate {
                Fate::Drop => {
                    other.get_or_insert(Verdict::Drop);
                    continue;
                }
                Fate::Reject => {
                    other.get_or_insert(Verdict::Reject);
                    continue;
                }
                Fate::Dnat(sa) => Some(sa),
                _ => None,
            };
            // The filter chains after NAT, on the (translated) destination.
            let mut after: Vec<Hook> = Vec::new();
            if from_node {
                after.push(Hook::Output);
                if self.is_local(&st.dst) {
                    after.push(Hook::Input);
                }
            } else if self.is_local(&st.dst) {
                after.push(Hook::Input);
            } else {
                after.push(Hook::Forward);
            }
            let mut branches = vec![(Fate::Continue, st)];
            for h in after {
                let mut next = Vec::new();
                for (f, s) in branches {
                    if matches!(f, Fate::Continue | Fate::Accept) {
                        next.extend(self.hook_filter(h, s, |p| p >= -100));
                    } else {
                        next.push((f, s));
                    }
                }
                branches = next;
            }
            for (f, s) in branches {
                match (f, dnat) {
                    (Fate::Drop, _) => {
                        other.get_or_insert(Verdict::Drop);
                    }
                    (Fate::Reject, _) => {
                        other.get_or_insert(Verdict::Reject);
                    }
                    (_, Some(sa)) => {
                        let leaves = from_node || !self.is_local(&s.dst);
                        let masquerade = leaves
                            && self
                                .hook(Hook::Postrouting, true, s)
                                .iter()
                                .any(|(f, _)| *f == Fate::Masquerade);
                        dests.push(Destination {
                            endpoint: sa,
                            masquerade,
                        });
                    }
                    (_, None) => {
                        other.get_or_insert(Verdict::NotHandled);
                    }
                }
            }
        }
        Verdict::from_branches(dests, other)
    }
}

impl Ruleset {
    /// Traces a packet through this ruleset; see [`Tracer`].
    pub fn trace(&self, packet: &Packet, local_addresses: &[IpAddr]) -> Verdict {
        Tracer::new(self, local_addresses).trace(packet)
    }
}
