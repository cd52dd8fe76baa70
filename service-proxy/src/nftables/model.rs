//! The typed nftables model: chains, rules made of statements, sets and maps, and their
//! elements. Every object prints itself in `nft -f` syntax ([`fmt::Display`]); the netlink
//! encoder ([`super::wire`]) turns the same values into nf_tables bytecode.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use smallvec::SmallVec;

/// How many `service-endpoints-N` maps Services are spread over (see
/// [`FixedSet::Endpoints`]).
pub const ENDPOINT_SHARDS: u16 = 1024;

/// How many slots a Service's block in its endpoint map has: its rule draws
/// `numgen random mod ENDPOINT_SLOTS`, and its N endpoints own N contiguous ranges of
/// slots (sizes differing by at most one). The rule never depends on N, so an endpoint
/// joining or leaving rewrites map elements only; each endpoint is picked with
/// probability within `1 / ENDPOINT_SLOTS` of `1 / N`.
pub const ENDPOINT_SLOTS: u32 = 1 << 16;

/// The endpoint map a service port's blocks live in: a hash of its base name.
pub fn endpoint_shard(base_name: &str) -> u16 {
    // FNV-1a: stable across releases and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in base_name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    u16::try_from(h % u32::from(ENDPOINT_SHARDS)).unwrap_or(0)
}

/// The name of our table in each family (kube-proxy's).
pub const TABLE: &str = "kube-proxy";

/// An nftables name (chain or set), shared between the model and the committed state.
pub type Name = Arc<str>;

/// The address family of a table: kube-proxy keeps one table per IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `ip`.
    Ip,
    /// `ip6`.
    Ip6,
}

impl Family {
    /// `ip` or `ip6`, as nft spells it (also the address keyword in rules).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Ip6 => "ip6",
        }
    }

    /// The netfilter protocol family number (`NFPROTO_IPV4`/`NFPROTO_IPV6`).
    pub fn nfproto(self) -> u8 {
        match self {
            Self::Ip => 2,
            Self::Ip6 => 10,
        }
    }

    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() { Self::Ip } else { Self::Ip6 }
    }

    /// The address type in set declarations.
    pub fn addr_type(self) -> &'static str {
        match self {
            Self::Ip => "ipv4_addr",
            Self::Ip6 => "ipv6_addr",
        }
    }
}

/// A layer-4 protocol a Service port uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4 {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
}

impl L4 {
    /// The protocol of a Service port, if nftables handles it.
    pub fn of(p: &service_core::model::Protocol) -> Option<Self> {
        use service_core::model::Protocol;
        match p {
            Protocol::Tcp => Some(Self::Tcp),
            Protocol::Udp => Some(Self::Udp),
            Protocol::Sctp => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    /// The protocol with this IP protocol number.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            132 => Some(Self::Sctp),
            _ => None,
        }
    }

    /// nft's keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// A netfilter hook a base chain attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// `prerouting` (`NF_INET_PRE_ROUTING`).
    Prerouting,
    /// `input`.
    Input,
    /// `forward`.
    Forward,
    /// `output`.
    Output,
    /// `postrouting`.
    Postrouting,
}

impl Hook {
    /// nft's keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prerouting => "prerouting",
            Self::Input => "input",
            Self::Forward => "forward",
            Self::Output => "output",
            Self::Postrouting => "postrouting",
        }
    }

    /// The hook number.
    pub fn number(self) -> u32 {
        match self {
            Self::Prerouting => 0,
            Self::Input => 1,
            Self::Forward => 2,
            Self::Output => 3,
            Self::Postrouting => 4,
        }
    }
}

/// The hook of a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BaseHook {
    /// `true` for `type nat`, `false` for `type filter`.
    pub nat: bool,
    /// The hook.
    pub hook: Hook,
    /// The priority.
    pub priority: i32,
}

/// Which address of the packet a statement looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// The source address.
    Saddr,
    /// The destination address.
    Daddr,
}

impl Dir {
    fn as_str(self) -> &'static str {
        match self {
            Self::Saddr => "saddr",
            Self::Daddr => "daddr",
        }
    }
}

/// A verdict ending a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `return`.
    Return,
    /// `jump CHAIN`: evaluate the chain, then continue here.
    Jump(Name),
    /// `goto CHAIN`: continue in the chain, never come back.
    Goto(Name),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accept => f.write_str("accept"),
            Self::Drop => f.write_str("drop"),
            Self::Return => f.write_str("return"),
            Self::Jump(c) => write!(f, "jump {c}"),
            Self::Goto(c) => write!(f, "goto {c}"),
        }
    }
}

/// The fixed maps and sets of the table, and how their keys are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FixedSet {
    /// `cluster-ips`: every active ClusterIP.
    ClusterIps,
    /// `nodeport-ips`: the addresses node ports are accepted on (with `--nodeport-addresses`).
    NodeportIps,
    /// `service-ips`: ClusterIP, external and load-balancer IP `. proto . port` to a chain.
    ServiceIps,
    /// `service-nodeports`: `proto . port` to an external chain.
    ServiceNodeports,
    /// `no-endpoint-services`: service addresses without usable endpoints to drop/reject.
    NoEndpointServices,
    /// `no-endpoint-nodeports`: node ports without usable endpoints.
    NoEndpointNodeports,
    /// `firewall-ips`: load-balancer IPs with source ranges to their firewall chain.
    FirewallIps,
    /// `service-endpoints-N`: Services' endpoints (without ClientIP affinity) as
    /// `addr . port`, an interval map: each Service owns a block of indexes its `numgen`
    /// picks from, each endpoint a range of that block (our leaner layout: kube-proxy
    /// jumps to a chain per endpoint). Services are spread over
    /// [`ENDPOINT_SHARDS`] maps: the kernel checks every element of a map each time a rule
    /// from another chain starts using it, so one map for all would make loading quadratic.
    Endpoints(u16),
    /// `hairpin-ips`: `endpoint . endpoint` for every endpoint address, so that a pod
    /// reaching itself through a Service is masqueraded (our leaner layout; kube-proxy
    /// marks such packets in each endpoint's chain).
    Hairpin,
}

/// The shape of a set's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyShape {
    /// An address.
    Addr,
    /// `inet_proto . inet_service`.
    ProtoPort,
    /// `addr . inet_proto . inet_service`.
    AddrProtoPort,
    /// `addr . addr`.
    AddrPair,
    /// A range of 32-bit indexes (an interval map; `numgen` produces the index in host
    /// byte order, and the rule turns it big-endian for the lookup, as nft does).
    IndexRange,
}

impl FixedSet {
    /// Every fixed set, in declaration order.
    pub const ALL: [Self; 8] = [
        Self::ClusterIps,
        Self::NodeportIps,
        Self::ServiceIps,
        Self::ServiceNodeports,
        Self::NoEndpointServices,
        Self::NoEndpointNodeports,
        Self::FirewallIps,
        Self::Hairpin,
    ];

    /// Its name.
    pub fn name(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Self::Endpoints(shard) => return Cow::Owned(format!("service-endpoints-{shard}")),
            Self::ClusterIps => "cluster-ips",
            Self::NodeportIps => "nodeport-ips",
            Self::ServiceIps => "service-ips",
            Self::ServiceNodeports => "service-nodeports",
            Self::NoEndpointServices => "no-endpoint-services",
            Self::NoEndpointNodeports => "no-endpoint-nodeports",
            Self::FirewallIps => "firewall-ips",
            Self::Hairpin => "hairpin-ips",
        })
    }

    /// The shape of its keys.
    pub fn key(self) -> KeyShape {
        match self {
            Self::ClusterIps | Self::NodeportIps => KeyShape::Addr,
            Self::ServiceNodeports | Self::NoEndpointNodeports => KeyShape::ProtoPort,
            Self::ServiceIps | Self::NoEndpointServices | Self::FirewallIps => {
                KeyShape::AddrProtoPort
            }
            Self::Hairpin => KeyShape::AddrPair,
            Self::Endpoints(_) => KeyShape::IndexRange,
        }
    }

    /// Whether it maps keys to verdicts.
    pub fn is_map(self) -> bool {
        !matches!(self, Self::ClusterIps | Self::NodeportIps | Self::Hairpin)
    }

    /// Its comment.
    pub fn comment(self) -> &'static str {
        match self {
            Self::ClusterIps => "Active ClusterIPs",
            Self::NodeportIps => "IPs that accept NodePort traffic",
            Self::ServiceIps => "ClusterIP, ExternalIP and LoadBalancer IP traffic",
            Self::ServiceNodeports => "NodePort traffic",
            Self::NoEndpointServices => {
                "vmap to drop or reject packets to services with no endpoints"
            }
            Self::NoEndpointNodeports => {
                "vmap to drop or reject packets to service nodeports with no endpoints"
            }
            Self::FirewallIps => "destinations that are subject to LoadBalancerSourceRanges",
            Self::Hairpin => "endpoints reaching themselves through a Service",
            Self::Endpoints(_) => "endpoints of Services, by index",
        }
    }
}

/// The key of an element of a fixed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// An address.
    Addr(IpAddr),
    /// `proto . port`.
    ProtoPort(L4, u16),
    /// `addr . proto . port`.
    AddrProtoPort(IpAddr, L4, u16),
    /// `addr . addr`.
    AddrPair(IpAddr, IpAddr),
    /// The indexes `FIRST..=LAST` (an element of an interval map).
    Range(u32, u32),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(ip) => write!(f, "{ip}"),
            Self::ProtoPort(p, port) => write!(f, "{} . {port}", p.as_str()),
            Self::AddrProtoPort(ip, p, port) => write!(f, "{ip} . {} . {port}", p.as_str()),
            Self::AddrPair(a, b) => write!(f, "{a} . {b}"),
            Self::Range(a, b) => write!(f, "{a}-{b}"),
        }
    }
}

/// One statement of a rule. Matches come first, then at most one action or verdict.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Stmt {
    /// `ct state new`.
    CtStateNew,
    /// `ip saddr/daddr [!=] NET` (a single address is a /32 or /128).
    Addr {
        /// Which address.
        dir: Dir,
        /// Negated.
        ne: bool,
        /// The network.
        net: IpNet,
    },
    /// `iifname [!=] "NAME"`, or with `prefix` `iifname [!=] "NAME*"`.
    Iifname {
        /// Negated.
        ne: bool,
        /// The interface name, or its prefix.
        name: Name,
        /// Whether `name` is a prefix.
        prefix: bool,
    },
    /// `ip saddr/daddr @SET`.
    AddrInSet {
        /// Which address.
        dir: Dir,
        /// The set.
        set: Name,
    },
    /// `fib saddr/daddr type local`.
    FibLocal(Dir),
    /// `mark and MASK == 0`.
    MarkClear(u32),
    /// `meta l4proto PROTO`.
    L4Proto(L4),
    /// `ip daddr . meta l4proto . th dport vmap @MAP`.
    VmapAddrProtoPort(FixedSet),
    /// `meta l4proto . th dport vmap @MAP`.
    VmapProtoPort(FixedSet),
    /// `numgen random mod N vmap { 0 : goto C0 , ... }`.
    NumgenVmap(Vec<Name>),
    /// `dnat ip addr . port to numgen random mod COUNT offset OFFSET map @service-endpoints`:
    /// picks one of the Service's endpoints and DNATs to it in one statement (our leaner
    /// layout for Services without affinity; kube-proxy jumps to a chain per endpoint).
    DnatMap {
        /// The endpoint map.
        shard: u16,
        /// The first index of the Service's block in it.
        offset: u32,
        /// How many indexes it draws from: the block's size, whatever the number of
        /// endpoints sharing them.
        count: u32,
    },
    /// `ct status dnat`.
    CtStatusDnat,
    /// `ip saddr . ip daddr @SET`.
    PairInSet(FixedSet),
    /// `mark set mark or BITS`.
    MarkOr(u32),
    /// `mark set mark xor BITS`.
    MarkXor(u32),
    /// `masquerade [fully-random]`.
    Masquerade {
        /// `fully-random` port allocation.
        fully_random: bool,
    },
    /// `meta l4proto PROTO dnat to ADDR:PORT` is written as [`Stmt::L4Proto`] then this.
    Dnat(SocketAddr),
    /// `update @SET { ip saddr }`.
    UpdateSaddr(Name),
    /// `reject`.
    Reject,
    /// A verdict.
    Verdict(Verdict),
}

/// Writes a network as nft does (a bare address for a host prefix).
fn write_net(f: &mut fmt::Formatter<'_>, net: &IpNet) -> fmt::Result {
    if net.prefix_len() == net.max_prefix_len() {
        write!(f, "{}", net.addr())
    } else {
        write!(f, "{net}")
    }
}

impl Stmt {
    /// Writes the statement in `nft` syntax for a table of `family`.
    pub fn write(&self, family: Family, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = family.as_str();
        match self {
            Self::CtStateNew => f.write_str("ct state new"),
            Self::Addr { dir, ne, net } => {
                write!(f, "{ip} {} {}", dir.as_str(), if *ne { "!= " } else { "" })?;
                write_net(f, net)
            }
            Self::Iifname { ne, name, prefix } => write!(
                f,
                "iifname {}\"{name}{}\"",
                if *ne { "!= " } else { "" },
                if *prefix { "*" } else { "" }
            ),
            Self::AddrInSet { dir, set } => write!(f, "{ip} {} @{set}", dir.as_str()),
            Self::FibLocal(dir) => write!(f, "fib {} type local", dir.as_str()),
            Self::MarkClear(m) => write!(f, "mark and {m:#x} == 0"),
            Self::L4Proto(p) => write!(f, "meta l4proto {}", p.as_str()),
            Self::VmapAddrProtoPort(m) => {
                write!(f, "{ip} daddr . meta l4proto . th dport vmap @{}", m.name())
            }
            Self::VmapProtoPort(m) => write!(f, "meta l4proto . th dport vmap @{}", m.name()),
            Self::NumgenVmap(targets) => {
                write!(f, "numgen random mod {} vmap {{ ", targets.len())?;
                for (i, t) in targets.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{i} : goto {t}")?;
                }
                f.write_str(" }")
            }
            Self::DnatMap {
                shard,
                offset,
                count,
            } => {
                write!(f, "dnat {ip} addr . port to numgen random mod {count}")?;
                if *offset != 0 {
                    write!(f, " offset {offset}")?;
                }
                write!(f, " map @{}", FixedSet::Endpoints(*shard).name())
            }
            Self::CtStatusDnat => f.write_str("ct status dnat"),
            Self::PairInSet(set) => write!(f, "{ip} saddr . {ip} daddr @{}", set.name()),
            Self::MarkOr(m) => write!(f, "mark set mark or {m:#x}"),
            Self::MarkXor(m) => write!(f, "mark set mark xor {m:#x}"),
            Self::Masquerade { fully_random } => f.write_str(if *fully_random {
                "masquerade fully-random"
            } else {
                "masquerade"
            }),
            Self::Dnat(SocketAddr::V4(a)) => write!(f, "dnat to {a}"),
            Self::Dnat(SocketAddr::V6(a)) => write!(f, "dnat to [{}]:{}", a.ip(), a.port()),
            Self::UpdateSaddr(set) => write!(f, "update @{set} {{ {ip} saddr }}"),
            Self::Reject => f.write_str("reject"),
            Self::Verdict(v) => write!(f, "{v}"),
        }
    }
}

/// A rule: statements, and an optional comment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// The statements, in order.
    pub stmts: SmallVec<[Stmt; 3]>,
    /// The comment, if any.
    pub comment: Option<&'static str>,
}

impl Rule {
    /// A rule of these statements.
    pub fn new(stmts: impl IntoIterator<Item = Stmt>) -> Self {
        Self {
            stmts: stmts.into_iter().collect(),
            comment: None,
        }
    }

    /// The same rule with a comment.
    pub fn comment(mut self, c: &'static str) -> Self {
        self.comment = Some(c);
        self
    }

    /// The rule's text after `add rule FAMILY TABLE CHAIN `.
    pub fn display(&self, family: Family) -> impl fmt::Display + '_ {
        DisplayRule(self, family)
    }
}

struct DisplayRule<'a>(&'a Rule, Family);

impl fmt::Display for DisplayRule<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.stmts.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            s.write(self.1, f)?;
        }
        if let Some(c) = self.0.comment {
            write!(f, " comment \"{c}\"")?;
        }
        Ok(())
    }
}

/// A chain and its rules.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Chain {
    /// Its name.
    pub name: Name,
    /// Its hook, for a base chain.
    pub hook: Option<BaseHook>,
    /// Its rules, in order (most chains have one or two: they live inline).
    pub rules: SmallVec<[Rule; 2]>,
}

impl Chain {
    /// A regular chain.
    pub fn new(name: impl Into<Name>) -> Self {
        Self {
            name: name.into(),
            hook: None,
            rules: SmallVec::new(),
        }
    }
}

/// A per-endpoint affinity set: `type ADDR ; flags dynamic,timeout ; timeout Ns`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AffinitySet {
    /// Its name (`affinity-<endpoint base>`).
    pub name: Name,
    /// Its element timeout, in seconds.
    pub timeout: u32,
}

/// An element of a fixed set or map.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Element {
    /// The set.
    pub set: FixedSet,
    /// The key.
    pub key: Key,
    /// The value, for a map.
    pub data: Option<Data>,
}

/// The value of a map element.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Data {
    /// A verdict (verdict maps).
    Verdict(Verdict),
    /// `addr . port` (the DNAT map).
    Endpoint(SocketAddr),
}

impl From<Verdict> for Data {
    fn from(v: Verdict) -> Self {
        Self::Verdict(v)
    }
}

impl fmt::Display for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Verdict(v) => write!(f, "{v}"),
            Self::Endpoint(a) => write!(f, "{} . {}", a.ip(), a.port()),
        }
    }
}

/// An endpoint's chain, kept compact (a cluster has far more endpoints than anything
/// else): hairpin masquerade, the affinity update, DNAT. [`EndpointChain::rules`] spells
/// out its rules.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointChain {
    /// Its name (`endpoint-<endpoint base>`).
    pub name: Name,
    /// The endpoint.
    pub addr: SocketAddr,
    /// The protocol it is DNATed for.
    pub proto: L4,
    /// Its affinity set, with ClientIP affinity.
    pub affinity: Option<Name>,
}

/// The helper chain that marks packets for masquerade.
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";

impl EndpointChain {
    /// Its rules: `ip saddr EP jump mark-for-masquerade`, `update @affinity { ip saddr }`
    /// (with affinity), `meta l4proto P dnat to EP`.
    pub fn rules(&self) -> SmallVec<[Rule; 2]> {
        let mut rules = SmallVec::new();
        rules.push(Rule::new([
            Stmt::Addr {
                dir: Dir::Saddr,
                ne: false,
                net: IpNet::from(self.addr.ip()),
            },
            Stmt::Verdict(Verdict::Jump(Name::from(MARK_FOR_MASQUERADE))),
        ]));
        if let Some(set) = &self.affinity {
            rules.push(Rule::new([Stmt::UpdateSaddr(set.clone())]));
        }
        rules.push(Rule::new([
            Stmt::L4Proto(self.proto),
            Stmt::Dnat(self.addr),
        ]));
        rules
    }

    /// The same as a plain chain.
    pub fn to_chain(&self) -> Chain {
        Chain {
            name: self.name.clone(),
            hook: None,
            rules: self.rules(),
        }
    }
}
