//! The iptables rule model: typed chains, matches and targets, grouped in [`Segment`]s whose
//! `iptables-restore` text is rendered once, and the [`RuleSet`] that assembles them.

use std::fmt;
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
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Self::Fixed(c) => out.extend_from_slice(c.as_str().as_bytes()),
            Self::Service(kind, hash) => {
                out.extend_from_slice(kind.prefix().as_bytes());
                out.extend_from_slice(hash);
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
        let mut s = Vec::with_capacity(25);
        self.write_to(&mut s);
        f.write_str(&String::from_utf8_lossy(&s))
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
    fn write_text(&self, out: &mut Vec<u8>) {
        match self {
            Self::Static(s) => out.extend_from_slice(s.as_bytes()),
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
                out.extend_from_slice(before.as_bytes());
                out.extend_from_slice(svc.as_bytes());
                out.extend_from_slice(after.as_bytes());
            }
            Self::Endpoint(svc, ep) => {
                out.extend_from_slice(svc.as_bytes());
                out.extend_from_slice(b" -> ");
                write_socket_addr(out, ep);
            }
            Self::NotAcceptedBy(svc, chain) => {
                out.extend_from_slice(svc.as_bytes());
                out.extend_from_slice(b" traffic not accepted by ");
                chain.write_to(out);
            }
        }
    }

    /// Whether the text has spaces (and so is quoted, as kube-proxy quotes it). Service
    /// names never have spaces; every phrase does.
    fn quoted(&self) -> bool {
        match self {
            Self::Static(s) => s.contains(' '),
            Self::Service(_, Phrase::Bare) => false,
            _ => true,
        }
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let q = self.quoted();
        if q {
            out.push(b'"');
        }
        self.write_text(out);
        if q {
            out.push(b'"');
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
    /// `-i NAME` or `! -i NAME` (a trailing `+` matches every name with that prefix).
    InInterface(Arc<str>, bool),
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
    /// `-m nfacct --nfacct-name NAME`: counts the packet into an accounting object
    /// (always matches).
    Nfacct(Arc<str>),
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

fn write_ip(out: &mut Vec<u8>, ip: &IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            out.reserve(15);
            for (i, &b) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if b >= 100 {
                    out.push(b'0' + b / 100);
                }
                if b >= 10 {
                    out.push(b'0' + b / 10 % 10);
                }
                out.push(b'0' + b % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

fn write_socket_addr(out: &mut Vec<u8>, sa: &SocketAddr) {
    if sa.is_ipv6() {
        out.push(b'[');
        write_ip(out, &sa.ip());
        out.push(b']');
    } else {
        write_ip(out, &sa.ip());
    }
    out.push(b':');
    write_u32(out, u32::from(sa.port()));
}

/// Writes a decimal number without going through `fmt` (digit by digit: the numbers are
/// short, and a copy call per number costs more than the pushes).
#[inline]
fn write_u32(out: &mut Vec<u8>, v: u32) {
    if v < 10 {
        out.push(b'0' + v as u8);
        return;
    }
    let mut tmp = [0u8; 10];
    let mut i = tmp.len();
    let mut v = v;
    while v > 0 {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    for &d in &tmp[i..] {
        out.push(d);
    }
}

impl Rule {
    /// Writes `-A CHAIN ...` with a trailing newline.
    pub(crate) fn write(&self, chain: &ChainName, probs: &mut Probabilities, out: &mut Vec<u8>) {
        use std::io::Write as _;
        out.extend_from_slice(b"-A ");
        chain.write_to(out);
        if let Some(c) = &self.comment {
            out.extend_from_slice(b" -m comment --comment ");
            c.write(out);
        }
        for m in &self.matches {
            match m {
                Match::Protocol(p) => {
                    out.extend_from_slice(b" -m ");
                    out.extend_from_slice(p.as_str().as_bytes());
                    out.extend_from_slice(b" -p ");
                    out.extend_from_slice(p.as_str().as_bytes());
                }
                Match::Source(a, neg) | Match::Destination(a, neg) => {
                    if *neg {
                        out.extend_from_slice(b" !");
                    }
                    out.extend_from_slice(if matches!(m, Match::Source(..)) {
                        b" -s "
                    } else {
                        b" -d "
                    });
                    match a {
                        Addr::Ip(ip) => write_ip(out, ip),
                        Addr::Net(n) => {
                            write_ip(out, &n.network());
                            out.push(b'/');
                            write_u32(out, u32::from(n.prefix_len()));
                        }
                    }
                }
                Match::InInterface(name, neg) => {
                    out.extend_from_slice(if *neg { b" ! -i " } else { b" -i " });
                    out.extend_from_slice(name.as_bytes());
                }
                Match::DestPort(p) => {
                    out.extend_from_slice(b" --dport ");
                    write_u32(out, u32::from(*p));
                }
                Match::SrcTypeLocal => out.extend_from_slice(b" -m addrtype --src-type LOCAL"),
                Match::DstTypeLocal => out.extend_from_slice(b" -m addrtype --dst-type LOCAL"),
                Match::Probability(n) => {
                    out.extend_from_slice(b" -m statistic --mode random --probability ");
                    out.extend_from_slice(probs.get(*n).as_bytes());
                }
                Match::RecentCheck(name, secs) => {
                    out.extend_from_slice(b" -m recent --name ");
                    name.write_to(out);
                    out.extend_from_slice(b" --rcheck --seconds ");
                    write_u32(out, *secs);
                    out.extend_from_slice(b" --reap");
                }
                Match::RecentSet(name) => {
                    out.extend_from_slice(b" -m recent --name ");
                    name.write_to(out);
                    out.extend_from_slice(b" --set");
                }
                Match::Mark(mark, neg) => {
                    out.extend_from_slice(if *neg {
                        b" -m mark ! --mark "
                    } else {
                        b" -m mark --mark "
                    });
                    let _ = write!(out, "{mark:#x}/{mark:#x}");
                }
                Match::Nfacct(name) => {
                    out.extend_from_slice(b" -m nfacct --nfacct-name ");
                    out.extend_from_slice(name.as_bytes());
                }
                Match::CtState(s, neg) => {
                    out.extend_from_slice(if *neg {
                        b" -m conntrack ! --ctstate "
                    } else {
                        b" -m conntrack --ctstate "
                    });
                    out.extend_from_slice(s.as_str().as_bytes());
                }
            }
        }
        match &self.target {
            None => {}
            Some(t) => {
                out.extend_from_slice(b" -j ");
                match t {
                    Target::Jump(c) => c.write_to(out),
                    Target::Accept => out.extend_from_slice(b"ACCEPT"),
                    Target::Drop => out.extend_from_slice(b"DROP"),
                    Target::Reject => out.extend_from_slice(b"REJECT"),
                    Target::Return => out.extend_from_slice(b"RETURN"),
                    Target::Dnat(sa) => {
                        out.extend_from_slice(b"DNAT --to-destination ");
                        write_socket_addr(out, sa);
                    }
                    Target::MarkOr(m) => {
                        let _ = write!(out, "MARK --or-mark {m:#x}");
                    }
                    Target::MarkXor(m) => {
                        let _ = write!(out, "MARK --xor-mark {m:#x}");
                    }
                    Target::Masquerade(random_fully) => {
                        out.extend_from_slice(b"MASQUERADE");
                        if *random_fully {
                            out.extend_from_slice(b" --random-fully");
                        }
                    }
                }
            }
        }
        out.push(b'\n');
    }
}

/// Rules for one or more chains of one table, as `iptables-restore` text (`-A` lines),
/// rendered once when the segment is built. Read them back as values with
/// [`Segment::rules`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Segment {
    text: Vec<u8>,
    rules: usize,
}

impl Segment {
    /// The `-A` lines, as bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.text
    }

    /// The `-A` lines, as text (always ASCII apart from service names, which are too).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.text)
    }

    /// The number of rules.
    pub fn rule_count(&self) -> usize {
        self.rules
    }

    /// The rules as values, parsed back from the text.
    ///
    /// # Errors
    /// Never for segments this crate renders (tested); a [`super::ParseError`] otherwise.
    pub fn rules(&self) -> Result<Vec<(ChainName, Rule)>, super::ParseError> {
        self.text().lines().map(super::parse::parse_rule).collect()
    }
}

/// Builds a [`Segment`]: each rule is written as it is pushed.
#[derive(Debug, Default)]
pub(crate) struct SegmentBuilder {
    text: Vec<u8>,
    rules: usize,
}

impl SegmentBuilder {
    /// A builder expecting about `rules` rules.
    pub(crate) fn with_capacity(rules: usize) -> Self {
        Self {
            text: Vec::with_capacity(rules * 128),
            rules: 0,
        }
    }

    pub(crate) fn push(&mut self, chain: ChainName, rule: Rule, probs: &mut Probabilities) {
        rule.write(&chain, probs, &mut self.text);
        self.rules += 1;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rules == 0
    }

    fn start(&mut self, chain: &ChainName, comment: Option<&Comment>) {
        self.text.extend_from_slice(b"-A ");
        chain.write_to(&mut self.text);
        if let Some(c) = comment {
            self.text.extend_from_slice(b" -m comment --comment ");
            c.write(&mut self.text);
        }
        self.rules += 1;
    }

    /// Fast path for a dispatch rule: `[comment] [probability 1/n] -j TARGET`; writes
    /// exactly what [`Rule::write`] writes for the same rule.
    pub(crate) fn push_dispatch(
        &mut self,
        chain: ChainName,
        comment: Option<&Comment>,
        probability: Option<u32>,
        target: ChainName,
        probs: &mut Probabilities,
    ) {
        self.start(&chain, comment);
        if let Some(n) = probability {
            self.text
                .extend_from_slice(b" -m statistic --mode random --probability ");
            self.text.extend_from_slice(probs.get(n).as_bytes());
        }
        self.text.extend_from_slice(b" -j ");
        target.write_to(&mut self.text);
        self.text.push(b'\n');
    }

    /// Fast path for an endpoint chain's hairpin rule: `[comment] -s IP -j KUBE-MARK-MASQ`.
    pub(crate) fn push_hairpin(&mut self, chain: ChainName, comment: Option<&Comment>, ip: IpAddr) {
        self.start(&chain, comment);
        self.text.extend_from_slice(b" -s ");
        write_ip(&mut self.text, &ip);
        self.text.extend_from_slice(b" -j KUBE-MARK-MASQ\n");
    }

    /// Fast path for an endpoint chain's DNAT rule:
    /// `[comment] [-m recent --name CHAIN --set] -m P -p P -j DNAT --to-destination ADDR`.
    pub(crate) fn push_dnat(
        &mut self,
        chain: ChainName,
        comment: Option<&Comment>,
        recent_set: bool,
        proto: L4,
        to: SocketAddr,
    ) {
        self.start(&chain, comment);
        if recent_set {
            self.text.extend_from_slice(b" -m recent --name ");
            chain.write_to(&mut self.text);
            self.text.extend_from_slice(b" --set");
        }
        self.text.extend_from_slice(b" -m ");
        self.text.extend_from_slice(proto.as_str().as_bytes());
        self.text.extend_from_slice(b" -p ");
        self.text.extend_from_slice(proto.as_str().as_bytes());
        self.text.extend_from_slice(b" -j DNAT --to-destination ");
        write_socket_addr(&mut self.text, &to);
        self.text.push(b'\n');
    }

    pub(crate) fn finish(self) -> Arc<Segment> {
        Arc::new(Segment {
            text: self.text,
            rules: self.rules,
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
    /// Every rule with its chain, in order, parsed back from the text.
    ///
    /// # Errors
    /// Never for rule sets this crate renders (tested).
    pub fn rules(&self) -> Result<Vec<(ChainName, Rule)>, super::ParseError> {
        let mut out = Vec::with_capacity(self.rule_count());
        for s in &self.segments {
            out.extend(s.rules()?);
        }
        Ok(out)
    }

    /// The number of rules.
    pub fn rule_count(&self) -> usize {
        self.segments.iter().map(|s| s.rules).sum()
    }

    /// `*table` and the chain lines.
    pub(crate) fn write_head(&self, table: Table, out: &mut Vec<u8>) {
        out.push(b'*');
        out.extend_from_slice(table.as_str().as_bytes());
        out.push(b'\n');
        for c in self.chains.iter().chain(&self.deleted) {
            out.push(b':');
            c.write_to(out);
            out.extend_from_slice(b" - [0:0]\n");
        }
    }

    /// The `-X` lines and `COMMIT`.
    pub(crate) fn write_tail(&self, out: &mut Vec<u8>) {
        for c in &self.deleted {
            out.extend_from_slice(b"-X ");
            c.write_to(out);
            out.push(b'\n');
        }
        out.extend_from_slice(b"COMMIT\n");
    }

    fn write(&self, table: Table, out: &mut Vec<u8>) {
        out.push(b'*');
        out.extend_from_slice(table.as_str().as_bytes());
        out.push(b'\n');
        for c in self.chains.iter().chain(&self.deleted) {
            out.push(b':');
            c.write_to(out);
            out.extend_from_slice(b" - [0:0]\n");
        }
        for s in &self.segments {
            out.extend_from_slice(&s.text);
        }
        for c in &self.deleted {
            out.extend_from_slice(b"-X ");
            c.write_to(out);
            out.push(b'\n');
        }
        out.extend_from_slice(b"COMMIT\n");
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
    /// The `iptables-restore` input as text.
    pub fn to_restore_input(&self) -> String {
        let mut out = Vec::new();
        self.write_restore_input(&mut out);
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// Writes the `iptables-restore` input into `out` (cleared first), reusing its buffer.
    pub fn write_restore_input(&self, out: &mut Vec<u8>) {
        out.clear();
        let size: usize = self
            .filter
            .segments
            .iter()
            .chain(&self.nat.segments)
            .map(|s| s.text.len())
            .sum();
        let chains = self.filter.chains.len() + self.nat.chains.len() + self.nat.deleted.len() * 2;
        out.reserve(size + 32 * chains + 64);
        self.filter.write(Table::Filter, out);
        self.nat.write(Table::Nat, out);
    }

    /// The restore input with the jump rules from the built-in chains appended to each
    /// table (see [`super::jump_rules`]): restored without `--noflush` on a host without
    /// other rules, it reproduces exactly what the proxy installs.
    pub fn to_restore_input_with_jumps(&self, localhost_nodeports: bool) -> String {
        let mut out = Vec::new();
        let jumps = super::jump_rules(self.ipv6, localhost_nodeports);
        for (table, rules) in [(Table::Filter, &self.filter), (Table::Nat, &self.nat)] {
            let mut t = Vec::new();
            rules.write(table, &mut t);
            let commit = t.len() - "COMMIT\n".len();
            out.extend_from_slice(&t[..commit]);
            for j in jumps.iter().filter(|j| j.table == table) {
                out.extend_from_slice(b"-A ");
                out.extend_from_slice(j.from.as_str().as_bytes());
                out.push(b' ');
                out.extend_from_slice(j.args().as_bytes());
                out.push(b'\n');
            }
            out.extend_from_slice(b"COMMIT\n");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The restore input as a list of chunks to write in order, without copying the rule
    /// text: the segments are borrowed, and the chain lines and `COMMIT`s are written into
    /// `scratch` (reused across calls).
    pub fn restore_chunks<'a>(&'a self, scratch: &'a mut [Vec<u8>; 4]) -> Vec<&'a [u8]> {
        let [fh, ft, nh, nt] = scratch;
        for b in [&mut *fh, &mut *ft, &mut *nh, &mut *nt] {
            b.clear();
        }
        self.filter.write_head(Table::Filter, fh);
        self.filter.write_tail(ft);
        self.nat.write_head(Table::Nat, nh);
        self.nat.write_tail(nt);
        let mut out = Vec::with_capacity(self.filter.segments.len() + self.nat.segments.len() + 4);
        out.push(&fh[..]);
        out.extend(self.filter.segments.iter().map(|s| s.bytes()));
        out.push(&ft[..]);
        out.push(&nh[..]);
        out.extend(self.nat.segments.iter().map(|s| s.bytes()));
        out.push(&nt[..]);
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
        let mut out = Vec::new();
        rule.write(&chain, &mut p, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "-A KUBE-SERVICES -m comment --comment \"ns4/svc4:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK\n"
        );
        let mut out = Vec::new();
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
            String::from_utf8_lossy(&out),
            "-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ\n"
        );
        let mut out = Vec::new();
        Rule::to(Target::Return)
            .when(Match::Mark(0x4000, true))
            .write(
                &ChainName::Fixed(FixedChain::KubePostrouting),
                &mut p,
                &mut out,
            );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n"
        );
        let mut out = Vec::new();
        Rule::to(Target::Dnat("[fd00::5]:8080".parse().unwrap()))
            .when(Match::Protocol(L4::Sctp))
            .write(&chain, &mut p, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
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
