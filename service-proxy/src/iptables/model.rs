//! The iptables rule model: typed chains, matches and targets, grouped in [`Segment`]s whose
//! `iptables-restore` text is rendered once, and the [`RuleSet`] that assembles them.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use smallvec::SmallVec;

/// The netfilter tables the proxy writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Table {
    /// `filter`.
    Filter,
    /// `nat`.
    Nat,
    /// `mangle` (only for the canary chain).
    Mangle,
}

impl Table {
    /// The table's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Filter => "filter",
            Self::Nat => "nat",
            Self::Mangle => "mangle",
        }
    }
}

/// The proxy's fixed chains and the built-in chains it jumps from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
#[allow(missing_docs)] // The variants are the chains' own names.
pub enum FixedChain {
    KubeServices,
    KubeExternalServices,
    KubeNodePorts,
    KubeForward,
    KubeProxyFirewall,
    KubePostrouting,
    KubeMarkMasq,
    KubeFirewall,
    KubeProxyCanary,
    Input,
    Output,
    Forward,
    Prerouting,
    Postrouting,
}

impl FixedChain {
    /// The chain's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KubeServices => "KUBE-SERVICES",
            Self::KubeExternalServices => "KUBE-EXTERNAL-SERVICES",
            Self::KubeNodePorts => "KUBE-NODEPORTS",
            Self::KubeForward => "KUBE-FORWARD",
            Self::KubeProxyFirewall => "KUBE-PROXY-FIREWALL",
            Self::KubePostrouting => "KUBE-POSTROUTING",
            Self::KubeMarkMasq => "KUBE-MARK-MASQ",
            Self::KubeFirewall => "KUBE-FIREWALL",
            Self::KubeProxyCanary => "KUBE-PROXY-CANARY",
            Self::Input => "INPUT",
            Self::Output => "OUTPUT",
            Self::Forward => "FORWARD",
            Self::Prerouting => "PREROUTING",
            Self::Postrouting => "POSTROUTING",
        }
    }
}

/// The kinds of per-service chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ServiceChain {
    /// `KUBE-SVC-`: Cluster-policy endpoints.
    Svc,
    /// `KUBE-SVL-`: Local-policy endpoints.
    Svl,
    /// `KUBE-EXT-`: external destinations (node ports, external and LB IPs).
    Ext,
    /// `KUBE-FW-`: load-balancer source ranges.
    Fw,
    /// `KUBE-SEP-`: one endpoint.
    Sep,
}

impl ServiceChain {
    /// The chain-name prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Svc => "KUBE-SVC-",
            Self::Svl => "KUBE-SVL-",
            Self::Ext => "KUBE-EXT-",
            Self::Fw => "KUBE-FW-",
            Self::Sep => "KUBE-SEP-",
        }
    }
}

/// A chain name. Service chains carry their 16-character hash inline, so names are `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ChainName {
    /// A fixed or built-in chain.
    Fixed(FixedChain),
    /// A per-service chain: kind and hash (16 base32 characters).
    Service(ServiceChain, [u8; 16]),
}

impl ChainName {
    /// Writes the name.
    pub fn write_to(&self, out: &mut String) {
        match self {
            Self::Fixed(c) => out.push_str(c.as_str()),
            Self::Service(kind, hash) => {
                out.push_str(kind.prefix());
                // The hash is base32 (A-Z, 2-7): always ASCII.
                out.push_str(std::str::from_utf8(hash).unwrap_or("????????????????"));
            }
        }
    }

    /// Parses a chain name this proxy writes (fixed chains and `KUBE-{SVC,SVL,EXT,FW,SEP}-`).
    pub fn parse(s: &str) -> Option<Self> {
        const FIXED: [FixedChain; 14] = [
            FixedChain::KubeServices,
            FixedChain::KubeExternalServices,
            FixedChain::KubeNodePorts,
            FixedChain::KubeForward,
            FixedChain::KubeProxyFirewall,
            FixedChain::KubePostrouting,
            FixedChain::KubeMarkMasq,
            FixedChain::KubeFirewall,
            FixedChain::KubeProxyCanary,
            FixedChain::Input,
            FixedChain::Output,
            FixedChain::Forward,
            FixedChain::Prerouting,
            FixedChain::Postrouting,
        ];
        if let Some(c) = FIXED.iter().find(|c| c.as_str() == s) {
            return Some(Self::Fixed(*c));
        }
        for kind in [
            ServiceChain::Svc,
            ServiceChain::Svl,
            ServiceChain::Ext,
            ServiceChain::Fw,
            ServiceChain::Sep,
        ] {
            if let Some(rest) = s.strip_prefix(kind.prefix()) {
                let hash: [u8; 16] = rest.as_bytes().try_into().ok()?;
                return Some(Self::Service(kind, hash));
            }
        }
        None
    }

    /// Whether this is a per-service chain.
    pub fn is_service_chain(&self) -> bool {
        matches!(self, Self::Service(..))
    }
}

impl fmt::Display for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(25);
        self.write_to(&mut s);
        f.write_str(&s)
    }
}

impl fmt::Debug for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The fixed phrases of kube-proxy's per-service comments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)] // Each variant's text is in `Comment`'s Display.
pub enum Phrase {
    Bare,
    ClusterIp,
    ExternalIp,
    LoadBalancerIp,
    NoEndpoints,
    NoLocalEndpoints,
    HealthCheck,
    MasqueradeExternal,
    PodExternal,
    MasqueradeLocalExternal,
    RouteLocalExternal,
    OtherTrafficDropped,
}

/// A rule comment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Comment {
    /// A fixed text.
    Static(&'static str),
    /// A phrase about a service port (`"ns/svc:port cluster IP"`).
    Service(Arc<str>, Phrase),
    /// `"ns/svc:port -> 10.1.2.3:8080"`.
    Endpoint(Arc<str>, SocketAddr),
    /// `"ns/svc:port traffic not accepted by KUBE-FW-..."`.
    NotAcceptedBy(Arc<str>, ChainName),
}

impl Comment {
    fn write_text(&self, out: &mut String) {
        match self {
            Self::Static(s) => out.push_str(s),
            Self::Service(svc, phrase) => {
                let (before, after) = match phrase {
                    Phrase::Bare => ("", ""),
                    Phrase::ClusterIp => ("", " cluster IP"),
                    Phrase::ExternalIp => ("", " external IP"),
                    Phrase::LoadBalancerIp => ("", " loadbalancer IP"),
                    Phrase::NoEndpoints => ("", " has no endpoints"),
                    Phrase::NoLocalEndpoints => ("", " has no local endpoints"),
                    Phrase::HealthCheck => ("", " health check node port"),
                    Phrase::MasqueradeExternal => {
                        ("masquerade traffic for ", " external destinations")
                    }
                    Phrase::PodExternal => ("pod traffic for ", " external destinations"),
                    Phrase::MasqueradeLocalExternal => {
                        ("masquerade LOCAL traffic for ", " external destinations")
                    }
                    Phrase::RouteLocalExternal => {
                        ("route LOCAL traffic for ", " external destinations")
                    }
                    Phrase::OtherTrafficDropped => (
                        "other traffic to ",
                        " will be dropped by KUBE-PROXY-FIREWALL",
                    ),
                };
                out.push_str(before);
                out.push_str(svc);
                out.push_str(after);
            }
            Self::Endpoint(svc, ep) => {
                out.push_str(svc);
                out.push_str(" -> ");
                write_socket_addr(out, ep);
            }
            Self::NotAcceptedBy(svc, chain) => {
                out.push_str(svc);
                out.push_str(" traffic not accepted by ");
                chain.write_to(out);
            }
        }
    }

    fn write(&self, out: &mut String) {
        let start = out.len();
        self.write_text(out);
        // Quote when the text has spaces, as kube-proxy does.
        if out[start..].contains(' ') {
            out.insert(start, '"');
            out.push('"');
        }
    }
}

/// An address or network in a `-s`/`-d` match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Addr {
    /// A single address, written without a prefix length.
    Ip(IpAddr),
    /// A network, written with its prefix length.
    Net(IpNet),
}

impl Addr {
    /// Whether an address is in it.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match self {
            Self::Ip(a) => a == ip,
            Self::Net(n) => n.contains(ip),
        }
    }
}

/// `conntrack --ctstate` values used by the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CtState {
    /// `NEW`.
    New,
    /// `INVALID`.
    Invalid,
    /// `RELATED,ESTABLISHED`.
    RelatedEstablished,
    /// `RELATED,ESTABLISHED,DNAT`.
    RelatedEstablishedDnat,
}

impl CtState {
    fn as_str(self) -> &'static str {
        match self {
            Self::New => "NEW",
            Self::Invalid => "INVALID",
            Self::RelatedEstablished => "RELATED,ESTABLISHED",
            Self::RelatedEstablishedDnat => "RELATED,ESTABLISHED,DNAT",
        }
    }
}

/// A layer-4 protocol match (`-m tcp -p tcp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum L4 {
    Tcp,
    Udp,
    Sctp,
}

impl L4 {
    /// The protocol's lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// One match of a rule, in the order it is written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Match {
    /// `-m P -p P`.
    Protocol(L4),
    /// `-s A` or `! -s A`.
    Source(Addr, bool),
    /// `-d A` or `! -d A`.
    Destination(Addr, bool),
    /// `--dport N` (after a protocol match).
    DestPort(u16),
    /// `-m addrtype --src-type LOCAL`.
    SrcTypeLocal,
    /// `-m addrtype --dst-type LOCAL`.
    DstTypeLocal,
    /// `-m statistic --mode random --probability P`, with P = 1/n written to 10 digits.
    Probability(u32),
    /// `-m recent --name CHAIN --rcheck --seconds N --reap`.
    RecentCheck(ChainName, u32),
    /// `-m recent --name CHAIN --set`.
    RecentSet(ChainName),
    /// `-m mark --mark M/M` or `-m mark ! --mark M/M`.
    Mark(u32, bool),
    /// `-m conntrack --ctstate S` or `-m conntrack ! --ctstate S`.
    CtState(CtState, bool),
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Target {
    /// `-j CHAIN`.
    Jump(ChainName),
    /// `-j ACCEPT`.
    Accept,
    /// `-j DROP`.
    Drop,
    /// `-j REJECT`.
    Reject,
    /// `-j RETURN`.
    Return,
    /// `-j DNAT --to-destination ADDR`.
    Dnat(SocketAddr),
    /// `-j MARK --or-mark M`.
    MarkOr(u32),
    /// `-j MARK --xor-mark M`.
    MarkXor(u32),
    /// `-j MASQUERADE [--random-fully]`.
    Masquerade(bool),
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Rule {
    /// Comment (written first).
    pub comment: Option<Comment>,
    /// Matches, in the order they are written.
    pub matches: SmallVec<[Match; 3]>,
    /// Target; `None` for a comment-only rule.
    pub target: Option<Target>,
}

impl Rule {
    /// A rule with a target and no matches.
    pub fn to(target: Target) -> Self {
        Self {
            comment: None,
            matches: SmallVec::new(),
            target: Some(target),
        }
    }

    /// Adds a comment.
    #[must_use]
    pub fn comment(mut self, c: Comment) -> Self {
        self.comment = Some(c);
        self
    }

    /// Adds a match.
    #[must_use]
    pub fn when(mut self, m: Match) -> Self {
        self.matches.push(m);
        self
    }
}

/// The `%0.10f` probability strings of 1/n, cached.
#[derive(Clone, Debug, Default)]
pub(crate) struct Probabilities(Vec<String>);

impl Probabilities {
    pub(crate) fn get(&mut self, n: u32) -> &str {
        let n = n.max(1) as usize;
        while self.0.len() < n {
            let k = self.0.len() + 1;
            self.0.push(format!("{:.10}", 1.0 / k as f64));
        }
        &self.0[n - 1]
    }
}

fn write_ip(out: &mut String, ip: &IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let mut buf = itoa_buf();
            for (i, b) in o.iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(buf.format(*b));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn write_socket_addr(out: &mut String, sa: &SocketAddr) {
    if sa.is_ipv6() {
        out.push('[');
        write_ip(out, &sa.ip());
        out.push(']');
    } else {
        write_ip(out, &sa.ip());
    }
    out.push(':');
    out.push_str(itoa_buf().format(sa.port()));
}

/// A tiny integer formatter (no allocation).
struct IntBuf([u8; 10]);

fn itoa_buf() -> IntBuf {
    IntBuf([0; 10])
}

impl IntBuf {
    fn format<T: Into<u32>>(&mut self, v: T) -> &str {
        let mut v: u32 = v.into();
        let mut i = self.0.len();
        loop {
            i -= 1;
            self.0[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        // Only ASCII digits were written.
        std::str::from_utf8(&self.0[i..]).unwrap_or("0")
    }
}

impl Rule {
    /// Writes `-A CHAIN ...` with a trailing newline.
    pub(crate) fn write(&self, chain: &ChainName, probs: &mut Probabilities, out: &mut String) {
        out.push_str("-A ");
        chain.write_to(out);
        if let Some(c) = &self.comment {
            out.push_str(" -m comment --comment ");
            c.write(out);
        }
        let mut buf = itoa_buf();
        for m in &self.matches {
            match m {
                Match::Protocol(p) => {
                    out.push_str(" -m ");
                    out.push_str(p.as_str());
                    out.push_str(" -p ");
                    out.push_str(p.as_str());
                }
                Match::Source(a, neg) | Match::Destination(a, neg) => {
                    out.push_str(if *neg { " !" } else { "" });
                    out.push_str(if matches!(m, Match::Source(..)) {
                        " -s "
                    } else {
                        " -d "
                    });
                    match a {
                        Addr::Ip(ip) => write_ip(out, ip),
                        Addr::Net(n) => {
                            write_ip(out, &n.network());
                            out.push('/');
                            out.push_str(buf.format(n.prefix_len()));
                        }
                    }
                }
                Match::DestPort(p) => {
                    out.push_str(" --dport ");
                    out.push_str(buf.format(*p));
                }
                Match::SrcTypeLocal => out.push_str(" -m addrtype --src-type LOCAL"),
                Match::DstTypeLocal => out.push_str(" -m addrtype --dst-type LOCAL"),
                Match::Probability(n) => {
                    out.push_str(" -m statistic --mode random --probability ");
                    out.push_str(probs.get(*n));
                }
                Match::RecentCheck(name, secs) => {
                    out.push_str(" -m recent --name ");
                    name.write_to(out);
                    out.push_str(" --rcheck --seconds ");
                    out.push_str(buf.format(*secs));
                    out.push_str(" --reap");
                }
                Match::RecentSet(name) => {
                    out.push_str(" -m recent --name ");
                    name.write_to(out);
                    out.push_str(" --set");
                }
                Match::Mark(mark, neg) => {
                    out.push_str(if *neg {
                        " -m mark ! --mark "
                    } else {
                        " -m mark --mark "
                    });
                    let _ = write!(out, "{mark:#x}/{mark:#x}");
                }
                Match::CtState(s, neg) => {
                    out.push_str(if *neg {
                        " -m conntrack ! --ctstate "
                    } else {
                        " -m conntrack --ctstate "
                    });
                    out.push_str(s.as_str());
                }
            }
        }
        match &self.target {
            None => {}
            Some(t) => {
                out.push_str(" -j ");
                match t {
                    Target::Jump(c) => c.write_to(out),
                    Target::Accept => out.push_str("ACCEPT"),
                    Target::Drop => out.push_str("DROP"),
                    Target::Reject => out.push_str("REJECT"),
                    Target::Return => out.push_str("RETURN"),
                    Target::Dnat(sa) => {
                        out.push_str("DNAT --to-destination ");
                        write_socket_addr(out, sa);
                    }
                    Target::MarkOr(m) => {
                        let _ = write!(out, "MARK --or-mark {m:#x}");
                    }
                    Target::MarkXor(m) => {
                        let _ = write!(out, "MARK --xor-mark {m:#x}");
                    }
                    Target::Masquerade(random_fully) => {
                        out.push_str("MASQUERADE");
                        if *random_fully {
                            out.push_str(" --random-fully");
                        }
                    }
                }
            }
        }
        out.push('\n');
    }
}

/// Rules for one or more chains of one table, with their `iptables-restore` text rendered
/// once when the segment is built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Segment {
    /// `(chain, rule)` in the order written.
    pub rules: Vec<(ChainName, Rule)>,
    text: String,
}

impl Segment {
    /// The `-A` lines.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Builds a [`Segment`].
#[derive(Debug, Default)]
pub(crate) struct SegmentBuilder {
    rules: Vec<(ChainName, Rule)>,
    text: String,
}

impl SegmentBuilder {
    pub(crate) fn push(&mut self, chain: ChainName, rule: Rule, probs: &mut Probabilities) {
        rule.write(&chain, probs, &mut self.text);
        self.rules.push((chain, rule));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub(crate) fn finish(self) -> Arc<Segment> {
        Arc::new(Segment {
            rules: self.rules,
            text: self.text,
        })
    }
}

/// One table of a rule set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableRules {
    /// Chains written by this rule set (each line `:CHAIN - [0:0]` creates or flushes it).
    pub chains: Vec<ChainName>,
    /// Rule segments, in order.
    pub segments: Vec<Arc<Segment>>,
    /// Chains deleted (`-X`) after being flushed.
    pub deleted: Vec<ChainName>,
}

impl TableRules {
    /// Every rule with its chain, in order.
    pub fn rules(&self) -> impl Iterator<Item = &(ChainName, Rule)> {
        self.segments.iter().flat_map(|s| s.rules.iter())
    }

    /// The number of rules.
    pub fn rule_count(&self) -> usize {
        self.segments.iter().map(|s| s.rules.len()).sum()
    }

    fn write(&self, table: Table, out: &mut String) {
        out.push('*');
        out.push_str(table.as_str());
        out.push('\n');
        for c in self.chains.iter().chain(&self.deleted) {
            out.push(':');
            c.write_to(out);
            out.push_str(" - [0:0]\n");
        }
        for s in &self.segments {
            out.push_str(&s.text);
        }
        for c in &self.deleted {
            out.push_str("-X ");
            c.write_to(out);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
}

/// A complete or partial `iptables-restore --noflush` input for one IP family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuleSet {
    /// IPv6 (ip6tables) rather than IPv4.
    pub ipv6: bool,
    /// Whether this is a full rule set (every chain written).
    pub full: bool,
    /// The filter table.
    pub filter: TableRules,
    /// The nat table.
    pub nat: TableRules,
}

impl RuleSet {
    /// The `iptables-restore` input.
    pub fn to_restore_input(&self) -> String {
        let size: usize = self
            .filter
            .segments
            .iter()
            .chain(&self.nat.segments)
            .map(|s| s.text.len())
            .sum();
        let mut out = String::with_capacity(size + 64 * (self.nat.chains.len() + 32));
        self.filter.write(Table::Filter, &mut out);
        self.nat.write(Table::Nat, &mut out);
        out
    }

    /// The restore input with the jump rules from the built-in chains appended to each
    /// table (see [`super::jump_rules`]): restored without `--noflush` on a host without
    /// other rules, it reproduces exactly what the proxy installs.
    pub fn to_restore_input_with_jumps(&self, localhost_nodeports: bool) -> String {
        let mut out = String::new();
        let jumps = super::jump_rules(self.ipv6, localhost_nodeports);
        for (table, rules) in [(Table::Filter, &self.filter), (Table::Nat, &self.nat)] {
            let mut t = String::new();
            rules.write(table, &mut t);
            let commit = t.len() - "COMMIT\n".len();
            out.push_str(&t[..commit]);
            for j in jumps.iter().filter(|j| j.table == table) {
                out.push_str("-A ");
                out.push_str(j.from.as_str());
                out.push(' ');
                out.push_str(&j.args());
                out.push('\n');
            }
            out.push_str("COMMIT\n");
        }
        out
    }

    /// The rules of a table.
    pub fn table(&self, table: Table) -> Option<&TableRules> {
        match table {
            Table::Filter => Some(&self.filter),
            Table::Nat => Some(&self.nat),
            Table::Mangle => None,
        }
    }
}

impl fmt::Display for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_restore_input())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_match_kube_proxy() {
        // TestComputeProbability in kube-proxy's proxier_test.go.
        let mut p = Probabilities::default();
        assert_eq!(p.get(1), "1.0000000000");
        assert_eq!(p.get(2), "0.5000000000");
        assert_eq!(p.get(10), "0.1000000000");
        assert_eq!(p.get(3), "0.3333333333");
        assert_eq!(p.get(100001), "0.0000099999");
    }

    #[test]
    fn rule_text() {
        let mut p = Probabilities::default();
        let chain = ChainName::Fixed(FixedChain::KubeServices);
        let svc: Arc<str> = Arc::from("ns4/svc4:p80");
        let rule = Rule::to(Target::Jump(ChainName::Service(
            ServiceChain::Svc,
            *b"4SW47YFZTEDKD3PK",
        )))
        .comment(Comment::Service(svc.clone(), Phrase::ClusterIp))
        .when(Match::Protocol(L4::Tcp))
        .when(Match::Destination(
            Addr::Ip("172.30.0.44".parse().unwrap()),
            false,
        ))
        .when(Match::DestPort(80));
        let mut out = String::new();
        rule.write(&chain, &mut p, &mut out);
        assert_eq!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"ns4/svc4:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK\n"
        );
        let mut out = String::new();
        Rule::to(Target::Jump(ChainName::Fixed(FixedChain::KubeMarkMasq)))
            .comment(Comment::Service(svc, Phrase::Bare))
            .when(Match::Source(
                Addr::Ip("10.180.0.4".parse().unwrap()),
                false,
            ))
            .write(
                &ChainName::Service(ServiceChain::Sep, *b"UKSFD7AGPMPPLUHC"),
                &mut p,
                &mut out,
            );
        assert_eq!(
            out,
            "-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ\n"
        );
        let mut out = String::new();
        Rule::to(Target::Return)
            .when(Match::Mark(0x4000, true))
            .write(
                &ChainName::Fixed(FixedChain::KubePostrouting),
                &mut p,
                &mut out,
            );
        assert_eq!(
            out,
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n"
        );
        let mut out = String::new();
        Rule::to(Target::Dnat("[fd00::5]:8080".parse().unwrap()))
            .when(Match::Protocol(L4::Sctp))
            .write(&chain, &mut p, &mut out);
        assert_eq!(
            out,
            "-A KUBE-SERVICES -m sctp -p sctp -j DNAT --to-destination [fd00::5]:8080\n"
        );
    }

    #[test]
    fn chain_names_parse_back() {
        for s in [
            "KUBE-SERVICES",
            "KUBE-SVC-4SW47YFZTEDKD3PK",
            "KUBE-FW-NUKIZ6OKUXPJNT4C",
            "PREROUTING",
        ] {
            assert_eq!(ChainName::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(ChainName::parse("KUBE-SVC-short"), None);
        assert_eq!(ChainName::parse("DOCKER"), None);
    }
}
