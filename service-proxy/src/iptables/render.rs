//! Rendering a snapshot into kube-proxy's iptables layout (`syncProxyRules` in
//! `pkg/proxy/iptables/proxier.go`), full or partial.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use service_core::model::{IpFamily, Protocol};
use service_core::snapshot::{EndpointSet, FamilyPlan, ServicePort, ServicePortName, Snapshot};

use super::hash::{endpoint_hash, port_hash};
use super::model::{
    Addr, ChainName, Comment, CtState, FixedChain, L4, Match, Phrase, Probabilities, Rule, RuleSet,
    Segment, SegmentBuilder, ServiceChain, TableRules, Target,
};
use crate::port_name::PortName as PortKey;
use crate::{LocalTraffic, ProxyConfig};

/// Above this many endpoints (all service ports together), per-endpoint comments are left
/// out, as kube-proxy's `largeClusterEndpointsThreshold` does.
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// Settings of the iptables backend.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct IptablesConfig {
    /// Node-level settings shared by every backend.
    pub proxy: ProxyConfig,
    /// Add `--random-fully` to MASQUERADE (iptables ≥ 1.6.2 and kernel ≥ 3.13).
    pub random_fully: bool,
    /// `nf_conntrack_tcp_be_liberal` is set: do not drop INVALID packets in KUBE-FORWARD.
    pub conntrack_tcp_liberal: bool,
    /// Endpoint count above which per-endpoint comments are dropped.
    pub large_cluster_threshold: usize,
    /// The nfacct counter [`crate::nfacct::CT_STATE_INVALID_DROPPED`] exists: the
    /// KUBE-FORWARD INVALID drop counts into it (`-m nfacct`).
    pub count_invalid_drops: bool,
    /// The nfacct counter [`crate::nfacct::LOCALHOST_NODEPORTS_ACCEPTED`] exists: node
    /// ports on `127.0.0.0/8` (IPv4, with localhost node ports) count into it, through a
    /// rule of their own ahead of each node port's.
    pub count_localhost_nodeports: bool,
}

impl Default for IptablesConfig {
    fn default() -> Self {
        Self {
            proxy: ProxyConfig::default(),
            random_fully: true,
            conntrack_tcp_liberal: false,
            large_cluster_threshold: LARGE_CLUSTER_ENDPOINTS,
            count_invalid_drops: false,
            count_localhost_nodeports: false,
        }
    }
}

impl IptablesConfig {
    /// A configuration around shared proxy settings.
    pub fn new(proxy: ProxyConfig) -> Self {
        Self {
            proxy,
            ..Self::default()
        }
    }
}

/// What a service port contributed to the last render.
#[derive(Clone, Debug)]
struct PortRender {
    /// Rules in filter's top-level chains.
    filter: Option<Arc<Segment>>,
    /// Rules in nat's KUBE-SERVICES and KUBE-NODEPORTS.
    nat_top: Option<Arc<Segment>>,
    /// The port's own nat chains and their rules.
    chains: Vec<ChainName>,
    own: Option<Arc<Segment>>,
    /// Endpoints of this family (for the large-cluster threshold).
    endpoints: usize,
    /// Rendered by the current partial render (its own chains are written).
    fresh: bool,
}

/// Renders rule sets for one IP family and remembers what it rendered, so that the next
/// render after a change can be partial.
///
/// ```
/// use service_proxy::iptables::{IptablesConfig, Renderer};
/// use service_proxy::core::snapshot::{NodeInfo, Snapshot};
///
/// let snapshot = Snapshot::build(NodeInfo::new("node-a", vec![]), &[], &[], &[]).unwrap();
/// let mut renderer = Renderer::new(IptablesConfig::default(), false);
/// let rules = renderer.full(&snapshot);
/// assert!(rules.to_restore_input().contains(":KUBE-SERVICES - [0:0]"));
/// ```
#[derive(Debug)]
pub struct Renderer {
    config: IptablesConfig,
    ipv6: bool,
    probs: Probabilities,
    ports: BTreeMap<PortKey, PortRender>,
    /// Scratch space for endpoint chain names, reused across ports.
    sep_scratch: Vec<Option<ChainName>>,
    large_cluster: Option<bool>,
    node_ip: Option<IpAddr>,
    /// The local-traffic detector the last render used, and its matches
    /// (`[IfLocal, IfNotLocal]`), built once per render.
    local: Option<(LocalTraffic, [Match; 2])>,
    /// Endpoints of this family across the rendered ports.
    endpoints_total: usize,
}

/// The iptables match of a local-traffic detector (`IfLocal`), or with `negate` its
/// opposite (`IfNotLocal`): `-s CIDR`, `-i BRIDGE` or `-i PREFIX+`.
fn local_match(local: &LocalTraffic, negate: bool) -> Match {
    match local {
        LocalTraffic::Source(net) => Match::Source(Addr::Net(*net), negate),
        LocalTraffic::Interface { name, prefix } => {
            let text: Arc<str> = if *prefix {
                Arc::from(format!("{name}+"))
            } else {
                Arc::from(name.as_str())
            };
            Match::InInterface(text, negate)
        }
    }
}

fn l4(p: &Protocol) -> Option<L4> {
    match p {
        Protocol::Tcp => Some(L4::Tcp),
        Protocol::Udp => Some(L4::Udp),
        Protocol::Sctp => Some(L4::Sctp),
        _ => None,
    }
}

/// `ns/svc[:port]` as an `Arc<str>` with a single allocation (names are short).
fn proxy_name_arc(name: &ServicePortName) -> Arc<str> {
    let key = &name.service;
    let parts: [&str; 5] = [
        &key.namespace,
        "/",
        &key.name,
        if name.port.is_empty() { "" } else { ":" },
        &name.port,
    ];
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut buf = [0u8; 512];
    if len > buf.len() {
        return Arc::from(name.proxy_name());
    }
    let mut n = 0;
    for p in parts {
        buf[n..n + p.len()].copy_from_slice(p.as_bytes());
        n += p.len();
    }
    // Concatenated from `&str`s: valid UTF-8.
    Arc::from(std::str::from_utf8(&buf[..n]).unwrap_or_default())
}

fn affinity_enabled(sp: &ServicePort) -> bool {
    sp.session_affinity_timeout.is_some()
}

fn jump(c: ChainName) -> Target {
    Target::Jump(c)
}

const fn fixed(c: FixedChain) -> ChainName {
    ChainName::Fixed(c)
}

const KUBE_SERVICES: ChainName = fixed(FixedChain::KubeServices);
const KUBE_EXTERNAL_SERVICES: ChainName = fixed(FixedChain::KubeExternalServices);
const KUBE_NODEPORTS: ChainName = fixed(FixedChain::KubeNodePorts);
const KUBE_FORWARD: ChainName = fixed(FixedChain::KubeForward);
const KUBE_PROXY_FIREWALL: ChainName = fixed(FixedChain::KubeProxyFirewall);
const KUBE_POSTROUTING: ChainName = fixed(FixedChain::KubePostrouting);
const KUBE_MARK_MASQ: ChainName = fixed(FixedChain::KubeMarkMasq);
const KUBE_FIREWALL: ChainName = fixed(FixedChain::KubeFirewall);

impl Renderer {
    /// A renderer for IPv4 (`ipv6 == false`) or IPv6.
    pub fn new(config: IptablesConfig, ipv6: bool) -> Self {
        Self {
            config,
            ipv6,
            probs: Probabilities::default(),
            ports: BTreeMap::new(),
            sep_scratch: Vec::new(),
            large_cluster: None,
            node_ip: None,
            local: None,
            endpoints_total: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &IptablesConfig {
        &self.config
    }

    /// Whether this renders IPv6 rules.
    pub fn ipv6(&self) -> bool {
        self.ipv6
    }

    fn family(&self) -> IpFamily {
        if self.ipv6 {
            IpFamily::Ipv6
        } else {
            IpFamily::Ipv4
        }
    }

    fn plan<'a>(&self, sp: &'a ServicePort) -> Option<&'a FamilyPlan> {
        sp.family(&self.family())
    }

    fn endpoint_total(&self, snapshot: &Snapshot) -> usize {
        snapshot
            .service_ports()
            .filter_map(|sp| self.plan(sp))
            .map(|p| p.endpoints.len())
            .sum()
    }

    /// Every chain of every service port in the last render.
    pub fn service_chains(&self) -> impl Iterator<Item = &ChainName> {
        self.ports.values().flat_map(|p| p.chains.iter())
    }

    /// Forgets what was rendered: the next render behaves as the first.
    pub fn reset(&mut self) {
        self.ports.clear();
        self.large_cluster = None;
        self.node_ip = None;
        self.local = None;
        self.endpoints_total = 0;
    }

    /// Renders every chain. Chains rendered before and now gone are deleted.
    pub fn full(&mut self, snapshot: &Snapshot) -> RuleSet {
        let large = self.endpoint_total(snapshot) > self.config.large_cluster_threshold;
        let node_ip = snapshot.node.primary_ip(&self.family());
        let old = std::mem::take(&mut self.ports);
        self.large_cluster = Some(large);
        self.node_ip = node_ip;
        self.local = self
            .config
            .proxy
            .local_traffic(&self.family(), &snapshot.node)
            .map(|l| {
                let matches = [local_match(&l, false), local_match(&l, true)];
                (l, matches)
            });
        // Snapshot order is key order: collecting builds the map in bulk.
        let rendered: Vec<(PortKey, PortRender)> = snapshot
            .service_ports()
            .filter_map(|sp| Some((PortKey::new(sp.clone()), self.render_port(sp, large)?)))
            .collect();
        self.ports = rendered.into_iter().collect();
        let stale: Vec<ChainName> = if old.is_empty() {
            Vec::new()
        } else {
            let live: std::collections::HashSet<ChainName> =
                self.service_chains().copied().collect();
            old.values()
                .flat_map(|p| p.chains.iter())
                .filter(|c| !live.contains(c))
                .copied()
                .collect()
        };
        self.endpoints_total = self.ports.values().map(|r| r.endpoints).sum();
        self.assemble(true, stale)
    }

    /// Renders the top-level chains in full plus the chains of the `changed` service ports,
    /// and deletes the chains those ports no longer have. Falls back to [`Renderer::full`]
    /// when nothing was rendered before, or when the node or the large-cluster mode changed.
    pub fn partial(&mut self, snapshot: &Snapshot, changed: &[ServicePortName]) -> RuleSet {
        let node_ip = snapshot.node.primary_ip(&self.family());
        let local = self
            .config
            .proxy
            .local_traffic(&self.family(), &snapshot.node);
        if self.large_cluster.is_none()
            || self.node_ip != node_ip
            || self.local.as_ref().map(|(l, _)| l) != local.as_ref()
        {
            return self.full(snapshot);
        }
        // The endpoint total, adjusted by the changed ports only.
        let count = |sp: Option<&Arc<ServicePort>>| {
            sp.and_then(|sp| self.plan(sp))
                .map_or(0, |p| p.endpoints.len())
        };
        let mut total = self.endpoints_total;
        for name in changed {
            total -= self.ports.get(name).map_or(0, |r| r.endpoints);
            total += count(snapshot.ports.get(name));
        }
        let large = total > self.config.large_cluster_threshold;
        if self.large_cluster != Some(large) {
            return self.full(snapshot);
        }
        self.endpoints_total = total;
        let mut stale = Vec::new();
        let mut rewritten = Vec::new();
        // Whether a top-level chain (KUBE-SERVICES, KUBE-NODEPORTS, the filter chains)
        // changes: a port came or went, or its rules there differ. An endpoint change
        // usually touches only the port's own chains, and then the top-level chains (one
        // rule per service address: the bulk of a large table) are left out of the restore.
        let same = |a: &Option<Arc<Segment>>, b: &Option<Arc<Segment>>| match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => a.bytes() == b.bytes(),
            _ => false,
        };
        let mut top_changed = false;
        for name in changed {
            let old = self.ports.remove(name);
            let new = snapshot
                .ports
                .get(name)
                .and_then(|sp| self.render_port(sp, large));
            top_changed |= match (&old, &new) {
                (Some(o), Some(n)) => !same(&o.filter, &n.filter) || !same(&o.nat_top, &n.nat_top),
                (None, None) => false,
                _ => true,
            };
            if let Some(old) = old {
                let keep: BTreeSet<&ChainName> = new.iter().flat_map(|n| n.chains.iter()).collect();
                stale.extend(old.chains.iter().filter(|c| !keep.contains(c)).copied());
            }
            if let (Some(mut new), Some(sp)) = (new, snapshot.ports.get(name)) {
                new.fresh = true;
                rewritten.push(name);
                self.ports.insert(PortKey::new(sp.clone()), new);
            }
        }
        let rules = if top_changed {
            self.assemble(false, stale)
        } else {
            self.own_chains_only(&rewritten, stale)
        };
        for name in rewritten {
            if let Some(r) = self.ports.get_mut(name) {
                r.fresh = false;
            }
        }
        rules
    }

    /// A partial rule set of the fresh ports' own chains alone (and the stale chains'
    /// deletion): `iptables-restore --noflush` leaves every chain it does not name as it is.
    fn own_chains_only(&self, fresh: &[&ServicePortName], stale: Vec<ChainName>) -> RuleSet {
        let mut nat = TableRules::default();
        for r in fresh.iter().filter_map(|name| self.ports.get(*name)) {
            nat.chains.extend(r.chains.iter().copied());
            if let Some(s) = &r.own {
                nat.segments.push(s.clone());
            }
        }
        nat.deleted = stale;
        RuleSet {
            ipv6: self.ipv6,
            full: false,
            filter: TableRules::default(),
            nat,
        }
    }

    /// Assembles the rule set from the per-port renders: a full set writes every port's
    /// own chains, a partial one only those of ports marked fresh.
    fn assemble(&mut self, full: bool, stale: Vec<ChainName>) -> RuleSet {
        let proxy = &self.config.proxy;
        let mark = proxy.masquerade_mark();
        let localhost_firewall = !self.ipv6 && proxy.localhost_nodeports;

        let mut filter = TableRules {
            chains: vec![
                KUBE_SERVICES,
                KUBE_EXTERNAL_SERVICES,
                KUBE_FORWARD,
                KUBE_NODEPORTS,
                KUBE_PROXY_FIREWALL,
            ],
            ..TableRules::default()
        };
        let mut nat = TableRules {
            chains: vec![
                KUBE_SERVICES,
                KUBE_NODEPORTS,
                KUBE_POSTROUTING,
                KUBE_MARK_MASQ,
            ],
            ..TableRules::default()
        };

        let mut head = SegmentBuilder::default();
        head.push(
            KUBE_POSTROUTING,
            Rule::to(Target::Return).when(Match::Mark(mark, true)),
            &mut self.probs,
        );
        head.push(
            KUBE_POSTROUTING,
            Rule::to(Target::MarkXor(mark)),
            &mut self.probs,
        );
        head.push(
            KUBE_POSTROUTING,
            Rule::to(Target::Masquerade(self.config.random_fully))
                .comment(Comment::Static("kubernetes service traffic requiring SNAT")),
            &mut self.probs,
        );
        head.push(
            KUBE_MARK_MASQ,
            Rule::to(Target::MarkOr(mark)),
            &mut self.probs,
        );
        nat.segments.push(head.finish());

        if localhost_firewall {
            filter.chains.push(KUBE_FIREWALL);
            let mut fw = SegmentBuilder::default();
            let lo: Addr = Addr::Net("127.0.0.0/8".parse().unwrap_or_default());
            fw.push(
                KUBE_FIREWALL,
                Rule::to(Target::Drop)
                    .comment(Comment::Static("block incoming localnet connections"))
                    .when(Match::Destination(lo, false))
                    .when(Match::Source(lo, true))
                    .when(Match::CtState(CtState::RelatedEstablishedDnat, true)),
                &mut self.probs,
            );
            filter.segments.push(fw.finish());
        }

        for r in self.ports.values() {
            if let Some(s) = &r.filter {
                filter.segments.push(s.clone());
            }
            if let Some(s) = &r.nat_top {
                nat.segments.push(s.clone());
            }
            let write_own = full || r.fresh;
            if write_own {
                nat.chains.extend(r.chains.iter().copied());
                if let Some(s) = &r.own {
                    nat.segments.push(s.clone());
                }
            }
        }
        nat.deleted = stale;

        let mut tail = SegmentBuilder::default();
        let nodeports_comment = Comment::Static(
            "kubernetes service nodeports; NOTE: this must be the last rule in this chain",
        );
        match proxy.nodeport_ips(&self.family()) {
            None => {
                let mut rule = Rule::to(jump(KUBE_NODEPORTS))
                    .comment(nodeports_comment)
                    .when(Match::DstTypeLocal);
                if self.ipv6 {
                    let lo6 = Addr::Net("::1/128".parse().unwrap_or_default());
                    rule = rule.when(Match::Destination(lo6, true));
                } else if !proxy.localhost_nodeports {
                    let lo = Addr::Net("127.0.0.0/8".parse().unwrap_or_default());
                    rule = rule.when(Match::Destination(lo, true));
                }
                tail.push(KUBE_SERVICES, rule, &mut self.probs);
            }
            Some(ips) => {
                for ip in ips {
                    // Loopback node ports need route_localnet (IPv4 only, and only when
                    // localhost node ports are enabled).
                    if ip.is_loopback() && (self.ipv6 || !proxy.localhost_nodeports) {
                        continue;
                    }
                    tail.push(
                        KUBE_SERVICES,
                        Rule::to(jump(KUBE_NODEPORTS))
                            .comment(nodeports_comment.clone())
                            .when(Match::Destination(Addr::Ip(ip), false)),
                        &mut self.probs,
                    );
                }
            }
        }
        nat.segments.push(tail.finish());

        let mut fwd = SegmentBuilder::default();
        if !self.config.conntrack_tcp_liberal {
            let mut drop = Rule::to(Target::Drop).when(Match::CtState(CtState::Invalid, false));
            if self.config.count_invalid_drops {
                drop = drop.when(Match::Nfacct(Arc::from(
                    crate::nfacct::CT_STATE_INVALID_DROPPED,
                )));
            }
            fwd.push(KUBE_FORWARD, drop, &mut self.probs);
        }
        fwd.push(
            KUBE_FORWARD,
            Rule::to(Target::Accept)
                .comment(Comment::Static("kubernetes forwarding rules"))
                .when(Match::Mark(mark, false)),
            &mut self.probs,
        );
        fwd.push(
            KUBE_FORWARD,
            Rule::to(Target::Accept)
                .comment(Comment::Static("kubernetes forwarding conntrack rule"))
                .when(Match::CtState(CtState::RelatedEstablished, false)),
            &mut self.probs,
        );
        filter.segments.push(fwd.finish());

        RuleSet {
            ipv6: self.ipv6,
            full,
            filter,
            nat,
        }
    }

    /// Renders one service port for this family, as kube-proxy's per-service loop does.
    fn render_port(&mut self, sp: &ServicePort, large: bool) -> Option<PortRender> {
        let plan = sp.family(&self.family())?;
        let proto = l4(sp.protocol())?;
        let svc: Arc<str> = proxy_name_arc(&sp.name);
        let proto_s = proto.as_str();
        let hash = port_hash(&svc, proto_s);
        let svc_chain = ChainName::Service(ServiceChain::Svc, hash);
        let svl_chain = ChainName::Service(ServiceChain::Svl, hash);
        let ext_chain = ChainName::Service(ServiceChain::Ext, hash);
        let fw_chain = ChainName::Service(ServiceChain::Fw, hash);
        let proxy = &self.config.proxy;
        let detector = self.local.as_ref().map(|(_, m)| m);
        let count_localhost =
            self.config.count_localhost_nodeports && proxy.localhost_nodeports && !self.ipv6;
        let probs = &mut self.probs;

        // Which endpoints each kind of traffic reaches: derived once, on the snapshot.
        let t = &plan.traffic;
        let has_endpoints = t.has_endpoints;
        let accessible = t.externally_accessible;
        let external_local = t.external == EndpointSet::Local;
        let uses_cluster_chain = t.uses_cluster_set;
        let uses_local_chain = t.uses_local_set;
        let chain_of = |set: EndpointSet| match set {
            EndpointSet::Local => svl_chain,
            _ => svc_chain,
        };
        let (internal_chain, has_internal) = (chain_of(t.internal), t.internal_reachable);
        let (external_policy_chain, has_external) = (chain_of(t.external), t.external_reachable);
        let uses_ext_chain = has_endpoints && accessible;
        let uses_fw = t.firewall;
        let lb_chain = if uses_fw { fw_chain } else { ext_chain };

        let (internal_filter, external_filter) = if !has_endpoints {
            let c = Comment::Service(svc.clone(), Phrase::NoEndpoints);
            (Some((Target::Reject, c.clone())), Some((Target::Reject, c)))
        } else {
            let no_local = Comment::Service(svc.clone(), Phrase::NoLocalEndpoints);
            (
                (!has_internal).then(|| (Target::Drop, no_local.clone())),
                (!has_external).then_some((Target::Drop, no_local)),
            )
        };

        let proto_m = Match::Protocol(proto);
        let port_m = Match::DestPort(sp.port);
        let to = |ip: IpAddr| Match::Destination(Addr::Ip(ip), false);
        let mut filter = SegmentBuilder::default();
        let mut top = SegmentBuilder::with_capacity(
            2 + plan.external_ips.len() + plan.load_balancer_ips.len(),
        );
        let per_ep = if affinity_enabled(sp) { 4 } else { 3 };
        let mut own = SegmentBuilder::with_capacity(6 + per_ep * plan.endpoints.len());

        // Cluster IP.
        if has_internal {
            top.push(
                KUBE_SERVICES,
                Rule::to(jump(internal_chain))
                    .comment(Comment::Service(svc.clone(), Phrase::ClusterIp))
                    .when(proto_m.clone())
                    .when(to(plan.cluster_ip))
                    .when(port_m.clone()),
                probs,
            );
        } else if let Some((target, comment)) = &internal_filter {
            filter.push(
                KUBE_SERVICES,
                Rule::to(*target)
                    .comment(comment.clone())
                    .when(proto_m.clone())
                    .when(to(plan.cluster_ip))
                    .when(port_m.clone()),
                probs,
            );
        }

        // External IPs.
        for &ip in &plan.external_ips {
            if has_endpoints {
                top.push(
                    KUBE_SERVICES,
                    Rule::to(jump(ext_chain))
                        .comment(Comment::Service(svc.clone(), Phrase::ExternalIp))
                        .when(proto_m.clone())
                        .when(to(ip))
                        .when(port_m.clone()),
                    probs,
                );
            }
            if let Some((target, comment)) = &external_filter {
                filter.push(
                    KUBE_EXTERNAL_SERVICES,
                    Rule::to(*target)
                        .comment(comment.clone())
                        .when(proto_m.clone())
                        .when(to(ip))
                        .when(port_m.clone()),
                    probs,
                );
            }
        }

        // Load-balancer ingress IPs.
        for &ip in &plan.load_balancer_ips {
            if has_endpoints {
                top.push(
                    KUBE_SERVICES,
                    Rule::to(jump(lb_chain))
                        .comment(Comment::Service(svc.clone(), Phrase::LoadBalancerIp))
                        .when(proto_m.clone())
                        .when(to(ip))
                        .when(port_m.clone()),
                    probs,
                );
            }
            if uses_fw {
                filter.push(
                    KUBE_PROXY_FIREWALL,
                    Rule::to(Target::Drop)
                        .comment(Comment::NotAcceptedBy(svc.clone(), fw_chain))
                        .when(proto_m.clone())
                        .when(to(ip))
                        .when(port_m.clone()),
                    probs,
                );
            }
        }
        if let Some((target, comment)) = &external_filter {
            for &ip in &plan.load_balancer_ips {
                filter.push(
                    KUBE_EXTERNAL_SERVICES,
                    Rule::to(*target)
                        .comment(comment.clone())
                        .when(proto_m.clone())
                        .when(to(ip))
                        .when(port_m.clone()),
                    probs,
                );
            }
        }

        // Node ports. (They are not subject to loadBalancerSourceRanges.)
        if let Some(node_port) = sp.node_port {
            // Node ports on localhost, counted first (kube-proxy's nfacct metric of who
            // still relies on them).
            if has_endpoints && count_localhost {
                top.push(
                    KUBE_NODEPORTS,
                    Rule::to(jump(ext_chain))
                        .comment(Comment::Service(svc.clone(), Phrase::Bare))
                        .when(proto_m.clone())
                        .when(Match::Destination(
                            Addr::Net("127.0.0.0/8".parse().unwrap_or_default()),
                            false,
                        ))
                        .when(Match::DestPort(node_port))
                        .when(Match::Nfacct(Arc::from(
                            crate::nfacct::LOCALHOST_NODEPORTS_ACCEPTED,
                        ))),
                    probs,
                );
            }
            if has_endpoints {
                top.push(
                    KUBE_NODEPORTS,
                    Rule::to(jump(ext_chain))
                        .comment(Comment::Service(svc.clone(), Phrase::Bare))
                        .when(proto_m.clone())
                        .when(Match::DestPort(node_port)),
                    probs,
                );
            }
            if let Some((target, comment)) = &external_filter {
                filter.push(
                    KUBE_EXTERNAL_SERVICES,
                    Rule::to(*target)
                        .comment(comment.clone())
                        .when(Match::DstTypeLocal)
                        .when(proto_m.clone())
                        .when(Match::DestPort(node_port)),
                    probs,
                );
            }
        }

        // Health-check node port: always accepted.
        if let Some(hc) = sp.health_check_node_port {
            filter.push(
                KUBE_NODEPORTS,
                Rule::to(Target::Accept)
                    .comment(Comment::Service(svc.clone(), Phrase::HealthCheck))
                    .when(Match::Protocol(L4::Tcp))
                    .when(Match::DestPort(hc)),
                probs,
            );
        }

        let mut chains = Vec::new();

        // Internal traffic: masquerade off-cluster (or all) traffic to the cluster IP.
        if has_internal {
            let base = Rule::to(jump(KUBE_MARK_MASQ))
                .comment(Comment::Service(svc.clone(), Phrase::ClusterIp))
                .when(proto_m)
                .when(to(plan.cluster_ip))
                .when(port_m);
            if proxy.masquerade_all {
                own.push(internal_chain, base, probs);
            } else if let Some([_, not_local]) = detector {
                own.push(internal_chain, base.when(not_local.clone()), probs);
            }
        }

        // External traffic.
        if uses_ext_chain {
            chains.push(ext_chain);
            if !external_local {
                own.push(
                    ext_chain,
                    Rule::to(jump(KUBE_MARK_MASQ))
                        .comment(Comment::Service(svc.clone(), Phrase::MasqueradeExternal)),
                    probs,
                );
            } else {
                if let Some([is_local, _]) = detector {
                    own.push(
                        ext_chain,
                        Rule::to(jump(svc_chain))
                            .comment(Comment::Service(svc.clone(), Phrase::PodExternal))
                            .when(is_local.clone()),
                        probs,
                    );
                }
                own.push(
                    ext_chain,
                    Rule::to(jump(KUBE_MARK_MASQ))
                        .comment(Comment::Service(
                            svc.clone(),
                            Phrase::MasqueradeLocalExternal,
                        ))
                        .when(Match::SrcTypeLocal),
                    probs,
                );
                own.push(
                    ext_chain,
                    Rule::to(jump(svc_chain))
                        .comment(Comment::Service(svc.clone(), Phrase::RouteLocalExternal))
                        .when(Match::SrcTypeLocal),
                    probs,
                );
            }
            if has_external {
                own.push(ext_chain, Rule::to(jump(external_policy_chain)), probs);
            }
        }

        // Load-balancer source ranges.
        if uses_fw {
            chains.push(fw_chain);
            let comment = Comment::Service(svc.clone(), Phrase::LoadBalancerIp);
            let mut allow_from_node = false;
            for cidr in &plan.load_balancer_source_ranges {
                own.push(
                    fw_chain,
                    Rule::to(jump(ext_chain))
                        .comment(comment.clone())
                        .when(Match::Source(Addr::Net(*cidr), false)),
                    probs,
                );
                allow_from_node |= self.node_ip.is_some_and(|ip| cidr.contains(&ip));
            }
            // A node reaching its own LB VIP loops back with the VIP as source.
            if allow_from_node {
                for &ip in &plan.load_balancer_ips {
                    own.push(
                        fw_chain,
                        Rule::to(jump(ext_chain))
                            .comment(comment.clone())
                            .when(Match::Source(Addr::Ip(ip), false)),
                        probs,
                    );
                }
            }
            own.push(
                fw_chain,
                Rule {
                    comment: Some(Comment::Service(svc.clone(), Phrase::OtherTrafficDropped)),
                    matches: Default::default(),
                    target: None,
                },
                probs,
            );
        }

        let affinity = sp.session_affinity_timeout;
        // Each reachable endpoint's chain name, hashed once per render (SHA-256 is the
        // largest single cost of a full render), indexed by the endpoint's position.
        let mut sep_names = std::mem::take(&mut self.sep_scratch);
        sep_names.clear();
        sep_names.resize(plan.endpoints.len(), None);
        for &i in &plan.selection.all_reachable {
            let ep = &plan.endpoints[i as usize];
            sep_names[i as usize] = Some(ChainName::Service(
                ServiceChain::Sep,
                endpoint_hash(&svc, proto_s, &ep.addr()),
            ));
        }
        let sep = |i: u32| {
            sep_names[i as usize].unwrap_or_else(|| {
                let addr = plan.endpoints[i as usize].addr();
                ChainName::Service(ServiceChain::Sep, endpoint_hash(&svc, proto_s, &addr))
            })
        };
        let dispatch =
            |chain: ChainName, eps: &[u32], own: &mut SegmentBuilder, probs: &mut Probabilities| {
                let comment = |i: u32| {
                    (!large)
                        .then(|| Comment::Endpoint(svc.clone(), plan.endpoints[i as usize].addr()))
                };
                if let Some(seconds) = affinity {
                    for &i in eps {
                        let c = sep(i);
                        own.push(
                            chain,
                            Rule {
                                comment: comment(i),
                                matches: smallvec::smallvec![Match::RecentCheck(c, seconds)],
                                target: Some(jump(c)),
                            },
                            probs,
                        );
                    }
                }
                let n = eps.len();
                for (k, &i) in eps.iter().enumerate() {
                    let probability = (k + 1 < n).then(|| u32::try_from(n - k).unwrap_or(u32::MAX));
                    own.push_dispatch(chain, comment(i).as_ref(), probability, sep(i), probs);
                }
            };
        if uses_cluster_chain {
            chains.push(svc_chain);
            dispatch(svc_chain, &plan.selection.cluster, &mut own, probs);
        }
        if uses_local_chain {
            chains.push(svl_chain);
            dispatch(svl_chain, &plan.selection.local, &mut own, probs);
        }

        // Endpoint chains.
        let bare = (!large).then(|| Comment::Service(svc.clone(), Phrase::Bare));
        for &i in &plan.selection.all_reachable {
            let ep = &plan.endpoints[i as usize];
            let chain = sep(i);
            chains.push(chain);
            own.push_hairpin(chain, bare.as_ref(), ep.ip);
            own.push_dnat(chain, bare.as_ref(), affinity.is_some(), proto, ep.addr());
        }

        self.sep_scratch = sep_names;
        let seg = |b: SegmentBuilder| (!b.is_empty()).then(|| b.finish());
        Some(PortRender {
            filter: seg(filter),
            nat_top: seg(top),
            chains,
            own: seg(own),
            endpoints: plan.endpoints.len(),
            fresh: false,
        })
    }
}
