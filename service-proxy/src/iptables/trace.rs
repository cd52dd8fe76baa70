//! Tracing a packet through a rendered iptables rule set.
//!
//! The tracer evaluates the rule model, not text: nat `KUBE-SERVICES` (reached from
//! PREROUTING or, for locally generated packets, OUTPUT), then the filter chains the
//! built-in hooks jump to ([`super::jump_rules`]), with the destination rewritten by any
//! DNAT. Random (`statistic`) rules are followed both ways, so every endpoint a packet may
//! reach is reported; `recent --rcheck` never matches (a new client has no history); the
//! connection state is NEW (plus DNAT once translated); the masquerade decision is the
//! mark bit at the end of the path.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use super::model::{Addr, ChainName, CtState, FixedChain, L4, Match, Rule, RuleSet, Table, Target};
use super::parse::ParseError;
use crate::trace::{Destination, Packet, TraceError, Verdict};
use service_core::model::Protocol;

/// Fate of one branch within one hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Fell off the end or returned: the hook's policy applies (accept).
    Continue,
    Accept,
    Drop,
    Reject,
    Dnat(SocketAddr),
}

#[derive(Clone, Copy, Debug)]
struct State<'a> {
    /// The input interface (empty for the node's own packets).
    iif: &'a str,
    src: IpAddr,
    dst: IpAddr,
    dport: u16,
    proto: Option<L4>,
    mark: u32,
    dnat: bool,
}

/// A rule set indexed by (table, chain), ready to trace packets.
#[derive(Debug)]
pub struct Tracer {
    chains: HashMap<(Table, ChainName), Vec<Rule>>,
    local: Vec<IpAddr>,
    ipv6: bool,
}

const MAX_DEPTH: usize = 16;

impl Tracer {
    /// Indexes a full rule set. `local_addresses` are the node's addresses (loopback is
    /// always local).
    ///
    /// # Errors
    /// The rule text does not parse (never for rule sets this crate renders).
    pub fn new(rules: &RuleSet, local_addresses: &[IpAddr]) -> Result<Self, ParseError> {
        let mut chains: HashMap<(Table, ChainName), Vec<Rule>> = HashMap::new();
        for (table, t) in [(Table::Filter, &rules.filter), (Table::Nat, &rules.nat)] {
            for (chain, rule) in t.rules()? {
                chains.entry((table, chain)).or_default().push(rule);
            }
        }
        Ok(Self {
            chains,
            local: local_addresses.to_vec(),
            ipv6: rules.ipv6,
        })
    }

    fn is_local(&self, ip: &IpAddr) -> bool {
        ip.is_loopback() || self.local.contains(ip)
    }

    fn matches(&self, m: &Match, st: &State<'_>) -> Option<bool> {
        Some(match m {
            Match::Protocol(p) => st.proto == Some(*p),
            Match::Source(a, neg) => contains(a, &st.src) != *neg,
            Match::InInterface(name, neg) => {
                let hit = match name.strip_suffix('+') {
                    Some(prefix) => st.iif.starts_with(prefix),
                    None => st.iif == &**name,
                };
                hit != *neg
            }
            Match::Destination(a, neg) => contains(a, &st.dst) != *neg,
            Match::DestPort(p) => st.dport == *p,
            Match::SrcTypeLocal => self.is_local(&st.src),
            Match::DstTypeLocal => self.is_local(&st.dst),
            // Either way: the caller explores both branches.
            Match::Probability(_) => return None,
            // A new client has no affinity history.
            Match::RecentCheck(..) => false,
            Match::RecentSet(_) => true,
            Match::Mark(mark, neg) => (st.mark & mark == *mark) != *neg,
            // Accounting only.
            Match::Nfacct(_) => true,
            Match::CtState(s, neg) => {
                let hit = match s {
                    CtState::New => true,
                    CtState::Invalid | CtState::RelatedEstablished => false,
                    CtState::RelatedEstablishedDnat => st.dnat,
                };
                hit != *neg
            }
        })
    }

    /// Runs `chain` from rule `from`; returns every (fate, state) branch.
    fn run<'a>(
        &self,
        table: Table,
        chain: ChainName,
        from: usize,
        st: State<'a>,
        depth: usize,
    ) -> Vec<(Fate, State<'a>)> {
        if depth > MAX_DEPTH {
            return vec![(Fate::Continue, st)];
        }
        let Some(rules) = self.chains.get(&(table, chain)) else {
            return vec![(Fate::Continue, st)];
        };
        let mut st = st;
        for (i, rule) in rules.iter().enumerate().skip(from) {
            let mut certain = true;
            let mut hit = true;
            for m in &rule.matches {
                match self.matches(m, &st) {
                    Some(true) => {}
                    Some(false) => {
                        hit = false;
                        break;
                    }
                    None => certain = false,
                }
            }
            if !hit {
                continue;
            }
            let taken: Vec<(Fate, State<'a>)> = match rule.target {
                None => continue,
                Some(Target::MarkOr(m)) => {
                    st.mark |= m;
                    continue;
                }
                Some(Target::MarkXor(m)) => {
                    st.mark ^= m;
                    continue;
                }
                Some(Target::Return) => vec![(Fate::Continue, st)],
                Some(Target::Accept) | Some(Target::Masquerade(_)) => vec![(Fate::Accept, st)],
                Some(Target::Drop) => vec![(Fate::Drop, st)],
                Some(Target::Reject) => vec![(Fate::Reject, st)],
                Some(Target::Dnat(sa)) => vec![(Fate::Dnat(sa), st)],
                Some(Target::Jump(c)) => {
                    let mut out = Vec::new();
                    for (fate, sub) in self.run(table, c, 0, st, depth + 1) {
                        if fate == Fate::Continue {
                            out.extend(self.run(table, chain, i + 1, sub, depth));
                        } else {
                            out.push((fate, sub));
                        }
                    }
                    out
                }
            };
            if certain {
                return taken;
            }
            // Probabilistic: the rule may also not match.
            let mut out = taken;
            out.extend(self.run(table, chain, i + 1, st, depth));
            return out;
        }
        vec![(Fate::Continue, st)]
    }

    /// Runs the chains a built-in hook jumps to, in order, until one decides.
    fn hook<'a>(
        &self,
        table: Table,
        chains: &[FixedChain],
        st: State<'a>,
    ) -> Vec<(Fate, State<'a>)> {
        let mut branches = vec![(Fate::Continue, st)];
        for &c in chains {
            let mut next = Vec::new();
            for (fate, s) in branches {
                if fate == Fate::Continue {
                    next.extend(self.run(table, ChainName::Fixed(c), 0, s, 0));
                } else {
                    next.push((fate, s));
                }
            }
            branches = next;
        }
        branches
    }

    /// Where the first packet of a new connection goes.
    pub fn trace(&self, packet: &Packet) -> Verdict {
        let proto = match packet.protocol {
            Protocol::Tcp => Some(L4::Tcp),
            Protocol::Udp => Some(L4::Udp),
            Protocol::Sctp => Some(L4::Sctp),
            _ => None,
        };
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
        let mut dests: Vec<Destination> = Vec::new();
        let mut other: Option<Verdict> = None;
        for (fate, mut st) in self.run(
            Table::Nat,
            ChainName::Fixed(FixedChain::KubeServices),
            0,
            start,
            0,
        ) {
            let dnat = match fate {
                Fate::Dnat(sa) => {
                    st.dst = sa.ip();
                    st.dport = sa.port();
                    st.dnat = true;
                    Some(sa)
                }
                _ => None,
            };
            let filter = self.filter_path(from_node, st);
            let mark = self.mark_of(&filter);
            let decided = filter.iter().find_map(|(f, _)| match f {
                Fate::Drop => Some(Verdict::Drop),
                Fate::Reject => Some(Verdict::Reject),
                Fate::Accept if dnat.is_none() => Some(Verdict::Accept),
                _ => None,
            });
            match (decided, dnat) {
                (Some(v @ (Verdict::Drop | Verdict::Reject)), _) | (Some(v), None) => {
                    other.get_or_insert(v);
                }
                (_, Some(sa)) => dests.push(Destination {
                    endpoint: sa,
                    masquerade: mark,
                }),
                (None, None) => {
                    other.get_or_insert(Verdict::NotHandled);
                }
            }
        }
        Verdict::from_branches(dests, other)
    }

    fn mark_of(&self, branches: &[(Fate, State<'_>)]) -> bool {
        let Some(mark) = self.masquerade_mark() else {
            return false;
        };
        branches.iter().any(|(_, s)| s.mark & mark == mark)
    }

    fn masquerade_mark(&self) -> Option<u32> {
        self.chains
            .get(&(Table::Nat, ChainName::Fixed(FixedChain::KubeMarkMasq)))?
            .iter()
            .find_map(|r| match r.target {
                Some(Target::MarkOr(m)) => Some(m),
                _ => None,
            })
    }

    fn filter_path<'a>(&self, from_node: bool, st: State<'a>) -> Vec<(Fate, State<'a>)> {
        let local_dst = self.is_local(&st.dst);
        let firewall: &[FixedChain] = if self.ipv6 {
            &[]
        } else {
            &[FixedChain::KubeFirewall]
        };
        let input: Vec<FixedChain> = firewall
            .iter()
            .copied()
            .chain([
                FixedChain::KubeProxyFirewall,
                FixedChain::KubeNodePorts,
                FixedChain::KubeExternalServices,
            ])
            .collect();
        if from_node {
            let output: Vec<FixedChain> = firewall
                .iter()
                .copied()
                .chain([FixedChain::KubeProxyFirewall, FixedChain::KubeServices])
                .collect();
            let mut out = Vec::new();
            for (fate, s) in self.hook(Table::Filter, &output, st) {
                if fate == Fate::Continue && local_dst {
                    out.extend(self.hook(Table::Filter, &input, s));
                } else {
                    out.push((fate, s));
                }
            }
            out
        } else if local_dst {
            self.hook(Table::Filter, &input, st)
        } else {
            self.hook(
                Table::Filter,
                &[
                    FixedChain::KubeProxyFirewall,
                    FixedChain::KubeForward,
                    FixedChain::KubeServices,
                    FixedChain::KubeExternalServices,
                ],
                st,
            )
        }
    }
}

fn contains(a: &Addr, ip: &IpAddr) -> bool {
    a.contains(ip)
}

impl RuleSet {
    /// Traces a packet through this rule set, which must be a full one; see [`Tracer`].
    ///
    /// # Errors
    /// [`TraceError::Partial`] for a partial rule set; [`TraceError::Parse`] when the rule
    /// text does not parse (never for rule sets this crate renders).
    pub fn trace(
        &self,
        packet: &Packet,
        local_addresses: &[IpAddr],
    ) -> Result<Verdict, TraceError> {
        if !self.full {
            return Err(TraceError::Partial);
        }
        Tracer::new(self, local_addresses)
            .map(|t| t.trace(packet))
            .map_err(|e| TraceError::Parse(e.to_string()))
    }
}
