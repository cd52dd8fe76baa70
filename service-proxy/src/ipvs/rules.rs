//! The iptables rules IPVS mode still needs (kube-proxy's IPVS proxier
//! `writeIptablesRules`): a constant number of rules that match the ipsets of the plan —
//! masquerade for node-originated and off-cluster traffic to cluster IPs, for node ports,
//! load balancers and hairpin connections; the load-balancer source-range firewall; and the
//! filter that rejects new connections to a virtual address on a port that is no service
//! (kubernetes#72236). Pure: rendered as `iptables-restore --noflush` input.

use std::fmt::Write as _;

use super::plan::{IpSet, IpvsConfig, IpvsPlan};
use crate::LocalTraffic;
use crate::iptables::Table;

/// A chain IPVS mode owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpvsChain {
    /// nat `KUBE-SERVICES`, from PREROUTING and OUTPUT.
    Services,
    /// nat `KUBE-POSTROUTING`: masquerade marked packets and hairpin connections.
    Postrouting,
    /// nat `KUBE-NODE-PORT`: mark node-port traffic for masquerade.
    NatNodePort,
    /// nat `KUBE-LOAD-BALANCER`: mark load-balancer traffic for masquerade.
    LoadBalancer,
    /// nat `KUBE-MARK-MASQ`.
    MarkMasq,
    /// filter `KUBE-FORWARD`: forward marked and established traffic.
    Forward,
    /// filter `KUBE-NODE-PORT`: accept health-check node ports.
    FilterNodePort,
    /// filter `KUBE-PROXY-FIREWALL`: load balancers with source ranges.
    ProxyFirewall,
    /// filter `KUBE-SOURCE-RANGES-FIREWALL`: allowed sources, else DROP.
    SourceRangesFirewall,
    /// filter `KUBE-IPVS-FILTER`: reject new connections to virtual addresses on other ports.
    IpvsFilter,
    /// filter `KUBE-IPVS-OUT-FILTER`.
    IpvsOutFilter,
}

impl IpvsChain {
    /// Every chain.
    pub const ALL: [Self; 11] = [
        Self::Services,
        Self::Postrouting,
        Self::NatNodePort,
        Self::LoadBalancer,
        Self::MarkMasq,
        Self::Forward,
        Self::FilterNodePort,
        Self::ProxyFirewall,
        Self::SourceRangesFirewall,
        Self::IpvsFilter,
        Self::IpvsOutFilter,
    ];

    /// The chain's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Services => "KUBE-SERVICES",
            Self::Postrouting => "KUBE-POSTROUTING",
            Self::NatNodePort | Self::FilterNodePort => "KUBE-NODE-PORT",
            Self::LoadBalancer => "KUBE-LOAD-BALANCER",
            Self::MarkMasq => "KUBE-MARK-MASQ",
            Self::Forward => "KUBE-FORWARD",
            Self::ProxyFirewall => "KUBE-PROXY-FIREWALL",
            Self::SourceRangesFirewall => "KUBE-SOURCE-RANGES-FIREWALL",
            Self::IpvsFilter => "KUBE-IPVS-FILTER",
            Self::IpvsOutFilter => "KUBE-IPVS-OUT-FILTER",
        }
    }

    /// The chain's table.
    pub fn table(self) -> Table {
        match self {
            Self::Services
            | Self::Postrouting
            | Self::NatNodePort
            | Self::LoadBalancer
            | Self::MarkMasq => Table::Nat,
            _ => Table::Filter,
        }
    }
}

/// A jump from a built-in chain into one of ours (kube-proxy's `iptablesJumpChain`,
/// prepended).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Jump {
    /// The built-in chain.
    pub from: &'static str,
    /// Our chain.
    pub to: IpvsChain,
    /// The rule's comment.
    pub comment: &'static str,
}

impl Jump {
    /// The rule after `-A FROM`, as `iptables-save` prints it.
    pub fn args(&self) -> String {
        format!(
            "-m comment --comment \"{}\" -j {}",
            self.comment,
            self.to.name()
        )
    }
}

/// The jumps, per table.
pub const JUMPS: [Jump; 9] = [
    Jump {
        from: "OUTPUT",
        to: IpvsChain::Services,
        comment: "kubernetes service portals",
    },
    Jump {
        from: "PREROUTING",
        to: IpvsChain::Services,
        comment: "kubernetes service portals",
    },
    Jump {
        from: "POSTROUTING",
        to: IpvsChain::Postrouting,
        comment: "kubernetes postrouting rules",
    },
    Jump {
        from: "FORWARD",
        to: IpvsChain::Forward,
        comment: "kubernetes forwarding rules",
    },
    Jump {
        from: "INPUT",
        to: IpvsChain::FilterNodePort,
        comment: "kubernetes health check rules",
    },
    Jump {
        from: "INPUT",
        to: IpvsChain::ProxyFirewall,
        comment: "kube-proxy firewall rules",
    },
    Jump {
        from: "FORWARD",
        to: IpvsChain::ProxyFirewall,
        comment: "kube-proxy firewall rules",
    },
    Jump {
        from: "INPUT",
        to: IpvsChain::IpvsFilter,
        comment: "kubernetes ipvs access filter",
    },
    Jump {
        from: "OUTPUT",
        to: IpvsChain::IpvsOutFilter,
        comment: "kubernetes ipvs access filter",
    },
];

/// The rules of both tables, as `-A CHAIN ...` lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FixedRules {
    /// nat table rules.
    pub nat: Vec<String>,
    /// filter table rules.
    pub filter: Vec<String>,
}

/// The set-driven rules (kube-proxy's `ipsetWithIptablesChain`): set, chain, match
/// directions, target, protocol.
const SET_RULES: [(IpSet, IpvsChain, &str, &str, Option<&str>); 12] = [
    (
        IpSet::LoopBack,
        IpvsChain::Postrouting,
        "dst,dst,src",
        "MASQUERADE",
        None,
    ),
    (
        IpSet::LoadBalancer,
        IpvsChain::Services,
        "dst,dst",
        "KUBE-LOAD-BALANCER",
        None,
    ),
    (
        IpSet::LoadBalancerLocal,
        IpvsChain::LoadBalancer,
        "dst,dst",
        "RETURN",
        None,
    ),
    (
        IpSet::NodePortLocalTcp,
        IpvsChain::NatNodePort,
        "dst",
        "RETURN",
        Some("tcp"),
    ),
    (
        IpSet::NodePortTcp,
        IpvsChain::NatNodePort,
        "dst",
        "KUBE-MARK-MASQ",
        Some("tcp"),
    ),
    (
        IpSet::NodePortLocalUdp,
        IpvsChain::NatNodePort,
        "dst",
        "RETURN",
        Some("udp"),
    ),
    (
        IpSet::NodePortUdp,
        IpvsChain::NatNodePort,
        "dst",
        "KUBE-MARK-MASQ",
        Some("udp"),
    ),
    (
        IpSet::NodePortLocalSctp,
        IpvsChain::NatNodePort,
        "dst,dst",
        "RETURN",
        Some("sctp"),
    ),
    (
        IpSet::NodePortSctp,
        IpvsChain::NatNodePort,
        "dst,dst",
        "KUBE-MARK-MASQ",
        Some("sctp"),
    ),
    (
        IpSet::LoadBalancerFw,
        IpvsChain::ProxyFirewall,
        "dst,dst",
        "KUBE-SOURCE-RANGES-FIREWALL",
        None,
    ),
    (
        IpSet::LoadBalancerSourceCidr,
        IpvsChain::SourceRangesFirewall,
        "dst,dst,src",
        "RETURN",
        None,
    ),
    (
        IpSet::LoadBalancerSourceIp,
        IpvsChain::SourceRangesFirewall,
        "dst,dst,src",
        "RETURN",
        None,
    ),
];

/// The fixed rules for a plan: rules matching an empty set are left out, as kube-proxy
/// does.
pub fn render(plan: &IpvsPlan, config: &IpvsConfig, ipv6: bool) -> FixedRules {
    let mut r = FixedRules::default();
    let used = |s: IpSet| plan.ipsets.get(&s).is_some_and(|e| !e.is_empty());
    let name = |s: IpSet| s.name_for(ipv6);
    let mark = config.proxy.masquerade_mark();
    let loopback = if ipv6 { "::1/128" } else { "127.0.0.0/8" };
    let mut rule = |chain: IpvsChain, text: String| {
        let line = format!("-A {} {text}", chain.name());
        match chain.table() {
            Table::Nat => r.nat.push(line),
            _ => r.filter.push(line),
        }
    };
    // Connections to localhost leave the service chain at once.
    rule(IpvsChain::Services, format!("-s {loopback} -j RETURN"));
    for (set, chain, dirs, target, proto) in SET_RULES {
        if !used(set) {
            continue;
        }
        let p = proto.map(|p| format!("-p {p} ")).unwrap_or_default();
        rule(
            chain,
            format!("{p}-m set --match-set {} {dirs} -j {target}", name(set)),
        );
    }
    if used(IpSet::ClusterIp) {
        let m = format!("-m set --match-set {}", name(IpSet::ClusterIp));
        let text = if config.proxy.masquerade_all {
            format!("{m} dst,dst -j KUBE-MARK-MASQ")
        } else if let Some(local) = &plan.local_traffic {
            // Off-cluster traffic to a cluster IP is masqueraded.
            let not_local = match local {
                LocalTraffic::Source(cidr) => format!("! -s {cidr}"),
                LocalTraffic::Interface { name, prefix } => {
                    format!("! -i {name}{}", if *prefix { "+" } else { "" })
                }
            };
            format!("{m} dst,dst {not_local} -j KUBE-MARK-MASQ")
        } else {
            // The node picks a virtual address as the source of its own connections to
            // another one: masquerade those.
            format!("{m} src,dst -j KUBE-MARK-MASQ")
        };
        rule(IpvsChain::Services, text);
    }
    let external = |set: IpSet| format!("-m set --match-set {} dst,dst", name(set));
    for (set, masq) in [(IpSet::ExternalIp, true), (IpSet::ExternalIpLocal, false)] {
        if !used(set) {
            continue;
        }
        let m = external(set);
        if masq {
            rule(IpvsChain::Services, format!("{m} -j KUBE-MARK-MASQ"));
        }
        // Off-machine traffic (not from a bridge port, not from a local address), and
        // traffic to external IPs that are local addresses, is accepted.
        rule(
            IpvsChain::Services,
            format!("{m} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT"),
        );
        rule(
            IpvsChain::Services,
            format!("{m} -m addrtype --dst-type LOCAL -j ACCEPT"),
        );
    }
    rule(
        IpvsChain::Services,
        "-m addrtype --dst-type LOCAL -j KUBE-NODE-PORT".into(),
    );
    rule(IpvsChain::LoadBalancer, "-j KUBE-MARK-MASQ".into());
    rule(IpvsChain::SourceRangesFirewall, "-j DROP".into());
    // The node's own connections to load balancers whose ranges leave it out (the source
    // is the balancer's address, bound locally; needs the xt_ipvs match).
    for (ip, proto, port) in &plan.lb_no_node_access {
        rule(
            IpvsChain::IpvsOutFilter,
            format!(
                "-s {ip} -m ipvs --vaddr {ip} --vproto {} --vport {port} -j DROP",
                proto.as_str()
            ),
        );
    }
    // Accept traffic to virtual servers in case other rules would drop it.
    for set in [IpSet::ClusterIp, IpSet::LoadBalancer] {
        if used(set) {
            rule(
                IpvsChain::Services,
                format!("-m set --match-set {} dst,dst -j ACCEPT", name(set)),
            );
        }
    }
    rule(
        IpvsChain::Forward,
        format!(
            "-m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark:#x}/{mark:#x} -j ACCEPT"
        ),
    );
    rule(
        IpvsChain::Forward,
        "-m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".into(),
    );
    let hc = name(IpSet::HealthCheckNodePort);
    rule(
        IpvsChain::FilterNodePort,
        format!("-m set --match-set {hc} dst -j ACCEPT"),
    );
    for set in [
        IpSet::LoadBalancer,
        IpSet::ClusterIp,
        IpSet::ExternalIp,
        IpSet::ExternalIpLocal,
    ] {
        rule(
            IpvsChain::IpvsFilter,
            format!("-m set --match-set {} dst,dst -j RETURN", name(set)),
        );
    }
    rule(
        IpvsChain::IpvsFilter,
        format!("-m set --match-set {hc} dst -j RETURN"),
    );
    rule(
        IpvsChain::IpvsFilter,
        format!(
            "-m conntrack --ctstate NEW -m set --match-set {} dst -j REJECT",
            name(IpSet::IpvsIps)
        ),
    );
    rule(
        IpvsChain::Postrouting,
        format!("-m mark ! --mark {mark:#x}/{mark:#x} -j RETURN"),
    );
    rule(
        IpvsChain::Postrouting,
        format!("-j MARK --xor-mark {mark:#x}"),
    );
    rule(
        IpvsChain::Postrouting,
        "-m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully".into(),
    );
    rule(IpvsChain::MarkMasq, format!("-j MARK --or-mark {mark:#x}"));
    r
}

fn table_text(out: &mut String, table: Table, rules: &[String], jumps: &[&Jump]) {
    let _ = writeln!(out, "*{}", table.as_str());
    for c in IpvsChain::ALL.iter().filter(|c| c.table() == table) {
        let _ = writeln!(out, ":{} - [0:0]", c.name());
    }
    for r in rules {
        out.push_str(r);
        out.push('\n');
    }
    for j in jumps.iter().filter(|j| j.to.table() == table) {
        let _ = writeln!(out, "-I {} 1 {}", j.from, j.args());
    }
    out.push_str("COMMIT\n");
}

/// `iptables-restore --noflush` input that rewrites our chains (declaring a chain flushes
/// it) and prepends the jumps in `missing`.
pub fn restore_input(rules: &FixedRules, missing: &[&Jump]) -> String {
    let mut out = String::new();
    table_text(&mut out, Table::Nat, &rules.nat, missing);
    table_text(&mut out, Table::Filter, &rules.filter, missing);
    out
}

/// Input that deletes the jumps in `present`, then our chains.
pub fn cleanup_input(present: &[&Jump]) -> String {
    let mut out = String::new();
    for table in [Table::Nat, Table::Filter] {
        let _ = writeln!(out, "*{}", table.as_str());
        for j in present.iter().filter(|j| j.to.table() == table) {
            let _ = writeln!(out, "-D {} {}", j.from, j.args());
        }
        for c in IpvsChain::ALL.iter().filter(|c| c.table() == table) {
            let _ = writeln!(out, ":{} - [0:0]", c.name());
        }
        for c in IpvsChain::ALL.iter().filter(|c| c.table() == table) {
            let _ = writeln!(out, "-X {}", c.name());
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// Everything IPVS mode sets up for `plan`, as `render --backend ipvs` prints it: the plan
/// (`ipvsadm -S -n` lines, addresses, ipsets), then the fixed iptables rules with their
/// jumps as `iptables-restore --noflush` input.
pub fn ipvs_text(plan: &IpvsPlan, config: &IpvsConfig, ipv6: bool) -> String {
    let jumps: Vec<&Jump> = JUMPS.iter().collect();
    format!(
        "{plan}# iptables-restore --noflush\n{}",
        restore_input(&render(plan, config, ipv6), &jumps)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DetectLocal, ProxyConfig};
    use service_core::model::IpFamily;
    use service_core::snapshot::NodeInfo;

    fn plan_with(sets: &[(IpSet, &str)]) -> IpvsPlan {
        let mut plan = IpvsPlan::default();
        for (set, entry) in sets {
            plan.ipsets
                .entry(*set)
                .or_default()
                .insert((*entry).to_owned());
        }
        plan
    }

    fn chain<'a>(lines: &'a [String], name: &str) -> Vec<&'a str> {
        let prefix = format!("-A {name} ");
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect()
    }

    #[test]
    fn cluster_ip_masquerade_follows_the_local_traffic_detector() {
        let mut config = IpvsConfig::new(ProxyConfig::default());
        let node = NodeInfo::new("node-a", vec![]).with_pod_cidrs(vec![
            "10.244.1.0/24".parse().unwrap(),
            "fd00:10:244:1::/64".parse().unwrap(),
        ]);
        // The plan resolves the detector for the node, as `IpvsPlan::build` does.
        let masq = |config: &IpvsConfig| {
            let mut plan = plan_with(&[(IpSet::ClusterIp, "10.96.0.1,tcp:443")]);
            plan.local_traffic = config.proxy.local_traffic(&IpFamily::Ipv4, &node);
            chain(&render(&plan, config, false).nat, "KUBE-SERVICES")
                .into_iter()
                .filter(|r| r.ends_with("-j KUBE-MARK-MASQ"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        // No cluster CIDR: only the node's own connections with a virtual source address.
        assert_eq!(
            masq(&config),
            ["-m set --match-set KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ"]
        );
        config.proxy.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
        assert_eq!(
            masq(&config),
            ["-m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"]
        );
        config.proxy.detect_local = DetectLocal::NodeCidr;
        assert_eq!(
            masq(&config),
            ["-m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.1.0/24 -j KUBE-MARK-MASQ"]
        );
        config.proxy.detect_local = DetectLocal::BridgeInterface("cbr0".into());
        assert_eq!(
            masq(&config),
            ["-m set --match-set KUBE-CLUSTER-IP dst,dst ! -i cbr0 -j KUBE-MARK-MASQ"]
        );
        config.proxy.detect_local = DetectLocal::InterfaceNamePrefix("cali".into());
        assert_eq!(
            masq(&config),
            ["-m set --match-set KUBE-CLUSTER-IP dst,dst ! -i cali+ -j KUBE-MARK-MASQ"]
        );
        config.proxy.masquerade_all = true;
        assert_eq!(
            masq(&config),
            ["-m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ"]
        );
    }

    #[test]
    fn the_ipvs_filter_returns_for_services_and_rejects_the_rest_last() {
        let plan = plan_with(&[]);
        let config = IpvsConfig::new(ProxyConfig::default());
        let r = render(&plan, &config, true);
        let filter = chain(&r.filter, "KUBE-IPVS-FILTER");
        assert_eq!(filter.len(), 6);
        assert!(filter[..5].iter().all(|l| l.ends_with("-j RETURN")));
        assert_eq!(
            filter[5],
            "-m conntrack --ctstate NEW -m set --match-set KUBE-6-IPVS-IPS dst -j REJECT"
        );
        // Rules that match an empty set are left out; the IPv6 loopback returns early.
        let services = chain(&r.nat, "KUBE-SERVICES");
        assert_eq!(services[0], "-s ::1/128 -j RETURN");
        assert!(!services.iter().any(|l| l.contains("CLUSTER-IP")));
        assert!(chain(&r.nat, "KUBE-NODE-PORT").is_empty());
    }

    #[test]
    fn restore_input_declares_every_chain_and_prepends_missing_jumps() {
        let config = IpvsConfig::new(ProxyConfig::default());
        let rules = render(&IpvsPlan::default(), &config, false);
        let input = restore_input(&rules, &[&JUMPS[1]]);
        for c in IpvsChain::ALL {
            assert!(input.contains(&format!(":{} - [0:0]\n", c.name())), "{c:?}");
        }
        assert!(input.contains(
            "-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\nCOMMIT\n*filter"
        ));
        assert_eq!(input.matches("-I ").count(), 1);
        let cleanup = cleanup_input(&[&JUMPS[0]]);
        assert!(cleanup.starts_with(
            "*nat\n-D OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
        ));
        assert_eq!(cleanup.matches("-X ").count(), IpvsChain::ALL.len());
    }
}
