//! The nat rules that send service traffic to the portals, as Kubernetes v1.0's userspace
//! proxy wrote them: `KUBE-PORTALS-CONTAINER` (from PREROUTING: traffic from pods and
//! outside) redirects a service address and port to the portal's local port;
//! `KUBE-PORTALS-HOST` (from OUTPUT: the node's own traffic) DNATs it to the portal on
//! loopback; `KUBE-NODEPORT-CONTAINER`/`-HOST` do the same for node ports on local
//! addresses. Pure: rendered as `iptables-restore --noflush` input.
//!
//! A portal listens on an ephemeral port of every local address (`REDIRECT` delivers to the
//! primary address of the interface a packet came in on, so a portal cannot listen on the
//! service address alone). So that the service is reachable only as the service, through
//! the rules above (and so `loadBalancerSourceRanges` and the like cannot be bypassed at
//! `node-IP:portal-port`), `KUBE-PORTALS-GUARD` in the filter table (from INPUT) drops
//! packets to a portal's port that no rule redirected (`-m conntrack ! --ctstate DNAT`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use service_core::model::{IpFamily, Protocol};
use service_core::snapshot::Snapshot;

use super::PortalInfo;

/// The chains the userspace proxy owns in the nat table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortalChain {
    /// Service addresses, from PREROUTING.
    PortalsContainer,
    /// Service addresses, from OUTPUT.
    PortalsHost,
    /// Node ports, from PREROUTING (local destinations).
    NodePortContainer,
    /// Node ports, from OUTPUT (local destinations).
    NodePortHost,
}

impl PortalChain {
    /// Every chain, in the order they are written.
    pub const ALL: [Self; 4] = [
        Self::PortalsContainer,
        Self::PortalsHost,
        Self::NodePortContainer,
        Self::NodePortHost,
    ];

    /// The chain's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::PortalsContainer => "KUBE-PORTALS-CONTAINER",
            Self::PortalsHost => "KUBE-PORTALS-HOST",
            Self::NodePortContainer => "KUBE-NODEPORT-CONTAINER",
            Self::NodePortHost => "KUBE-NODEPORT-HOST",
        }
    }

    /// The built-in chain that jumps here, and whether the jump is for local destinations
    /// only.
    pub fn from(self) -> (&'static str, bool) {
        match self {
            Self::PortalsContainer => ("PREROUTING", false),
            Self::PortalsHost => ("OUTPUT", false),
            Self::NodePortContainer => ("PREROUTING", true),
            Self::NodePortHost => ("OUTPUT", true),
        }
    }

    /// The jump rule's arguments after `-A CHAIN` (as `iptables-save` prints them).
    pub fn jump_args(self) -> String {
        let (_, local) = self.from();
        if local {
            format!("-m addrtype --dst-type LOCAL -j {}", self.name())
        } else {
            format!("-j {}", self.name())
        }
    }
}

/// Where a rule sends the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortalTarget {
    /// `-j REDIRECT --to-ports P`.
    Redirect(u16),
    /// `-j DNAT --to-destination ADDR`.
    Dnat(SocketAddr),
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortalRule {
    /// Its chain.
    pub chain: PortalChain,
    /// The service address it matches (none for node ports).
    pub dst: Option<IpAddr>,
    /// The protocol.
    pub protocol: Protocol,
    /// The destination port.
    pub dport: u16,
    /// The service port, as a comment.
    pub comment: String,
    /// Where it sends the packet.
    pub target: PortalTarget,
}

impl fmt::Display for PortalRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {}", self.chain.name())?;
        if let Some(ip) = self.dst {
            let len = if ip.is_ipv4() { 32 } else { 128 };
            write!(f, " -d {ip}/{len}")?;
        }
        let p = self.protocol.lower();
        write!(
            f,
            " -p {p} -m comment --comment \"{}\" -m {p} --dport {}",
            self.comment, self.dport
        )?;
        match self.target {
            PortalTarget::Redirect(port) => write!(f, " -j REDIRECT --to-ports {port}"),
            PortalTarget::Dnat(SocketAddr::V4(a)) => write!(f, " -j DNAT --to-destination {a}"),
            PortalTarget::Dnat(SocketAddr::V6(a)) => {
                write!(f, " -j DNAT --to-destination [{}]:{}", a.ip(), a.port())
            }
        }
    }
}

/// The rules for these portals: every ClusterIP, external IP and load-balancer IP of a
/// service port, and its node port, to its portal.
pub fn render(snapshot: &Snapshot, portals: &[PortalInfo], family: &IpFamily) -> Vec<PortalRule> {
    let loopback: IpAddr = match family {
        IpFamily::Ipv6 => Ipv6Addr::LOCALHOST.into(),
        _ => Ipv4Addr::LOCALHOST.into(),
    };
    let mut out = Vec::new();
    for portal in portals {
        let Some(sp) = snapshot.ports.get(&portal.name) else {
            continue;
        };
        let Some(plan) = sp.family(family) else {
            continue;
        };
        let port = portal.local.port();
        let host = PortalTarget::Dnat(SocketAddr::new(loopback, port));
        let comment = portal.name.proxy_name();
        let mut rule = |chain, dst, dport, target| {
            out.push(PortalRule {
                chain,
                dst,
                protocol: portal.protocol.clone(),
                dport,
                comment: comment.clone(),
                target,
            });
        };
        let addresses = std::iter::once(plan.cluster_ip)
            .chain(plan.external_ips.iter().copied())
            .chain(plan.load_balancer_ips.iter().copied());
        for ip in addresses {
            rule(
                PortalChain::PortalsContainer,
                Some(ip),
                sp.port,
                PortalTarget::Redirect(port),
            );
            rule(PortalChain::PortalsHost, Some(ip), sp.port, host);
        }
        if let Some(np) = sp.node_port {
            rule(
                PortalChain::NodePortContainer,
                None,
                np,
                PortalTarget::Redirect(port),
            );
            rule(PortalChain::NodePortHost, None, np, host);
        }
    }
    out
}

/// The filter chain that keeps portals reachable only through the redirect rules.
pub const GUARD_CHAIN: &str = "KUBE-PORTALS-GUARD";

/// The jump to [`GUARD_CHAIN`] (as `iptables-save` prints it).
pub const GUARD_JUMP: &str = "-A INPUT -j KUBE-PORTALS-GUARD";

/// One rule per portal: its port, reached without a redirect, is dropped.
pub fn guard_rules(portals: &[PortalInfo]) -> Vec<String> {
    portals
        .iter()
        .map(|p| {
            let proto = p.protocol.lower();
            format!(
                "-A {GUARD_CHAIN} -p {proto} -m comment --comment \"{} portal\" -m {proto} --dport {} -m conntrack ! --ctstate DNAT -j DROP",
                p.name.proxy_name(),
                p.local.port()
            )
        })
        .collect()
}

/// The filter-table part of the restore input: [`GUARD_CHAIN`] rewritten with `rules`, and
/// the jump from INPUT when it is missing.
pub fn guard_input(rules: &[String], jump_missing: bool) -> String {
    let mut out = format!("*filter\n:{GUARD_CHAIN} - [0:0]\n");
    for r in rules {
        out.push_str(r);
        out.push('\n');
    }
    if jump_missing {
        out.push_str(GUARD_JUMP);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

/// Removes the guard: the jump (when present), then the chain.
pub fn guard_cleanup_input(jump_present: bool) -> String {
    let mut out = String::from("*filter\n");
    if jump_present {
        out.push_str(&GUARD_JUMP.replacen("-A", "-D", 1));
        out.push('\n');
    }
    out.push_str(&format!(
        ":{GUARD_CHAIN} - [0:0]\n-X {GUARD_CHAIN}\nCOMMIT\n"
    ));
    out
}

/// `iptables-restore --noflush` input that rewrites the chains with these rules (declaring
/// a chain flushes it) and appends the jumps listed in `missing_jumps`.
pub fn restore_input(rules: &[PortalRule], missing_jumps: &[PortalChain]) -> String {
    let mut out = String::from("*nat\n");
    for c in PortalChain::ALL {
        out.push_str(&format!(":{} - [0:0]\n", c.name()));
    }
    for c in PortalChain::ALL {
        for r in rules.iter().filter(|r| r.chain == c) {
            out.push_str(&format!("{r}\n"));
        }
    }
    for c in missing_jumps {
        out.push_str(&format!("-A {} {}\n", c.from().0, c.jump_args()));
    }
    out.push_str("COMMIT\n");
    out
}

/// Input that removes the jumps in `present_jumps` and then the chains.
pub fn cleanup_input(present_jumps: &[PortalChain]) -> String {
    let mut out = String::from("*nat\n");
    for c in present_jumps {
        out.push_str(&format!("-D {} {}\n", c.from().0, c.jump_args()));
    }
    for c in PortalChain::ALL {
        out.push_str(&format!(":{} - [0:0]\n", c.name()));
    }
    for c in PortalChain::ALL {
        out.push_str(&format!("-X {}\n", c.name()));
    }
    out.push_str("COMMIT\n");
    out
}
