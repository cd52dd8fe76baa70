//! The iptables backend: kube-proxy's iptables layout, with its chain names and hashes, so
//! that existing tooling recognises the rules.
//!
//! - [`Renderer`] renders a [`Snapshot`](service_core::snapshot::Snapshot) into a
//!   [`RuleSet`]: `iptables-restore --noflush` input for the `filter` and `nat` tables, full
//!   or partial (only the changed service ports' chains, plus the top-level chains).
//! - [`jump_rules`] are the rules in the built-in chains that lead to the proxy's chains;
//!   they are not part of the restore input (the proxy does not own those chains).
//! - [`Tracer`] answers where a packet goes by evaluating the rule model.
//! - [`apply`] (feature `apply`) feeds rule sets to `iptables-restore`/`ip6tables-restore`;
//!   its [`apply::IptablesProxier`] is the backend's [`crate::Proxier`].

mod hash;
mod model;
mod parse;
mod render;
mod trace;

#[cfg(feature = "apply")]
#[cfg_attr(docsrs, doc(cfg(feature = "apply")))]
pub mod apply;

#[cfg(feature = "apply")]
pub use apply::IptablesProxier;
pub use hash::{endpoint_hash, port_hash};
pub use model::{
    Addr, ChainName, Comment, CtState, FixedChain, L4, Match, Phrase, Rule, RuleSet, Segment,
    ServiceChain, Table, TableRules, Target,
};
pub use parse::{ParseError, parse_rule};
pub use render::{IptablesConfig, LARGE_CLUSTER_ENDPOINTS, Renderer};
pub use trace::Tracer;

/// The iptables backend's part of a [`crate::SyncReport`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IptablesReport {
    /// Rules in the restore input (`filter` and `nat`).
    pub rules: usize,
    /// Of those, in the `filter` table.
    pub filter_rules: usize,
    /// Of those, in the `nat` table.
    pub nat_rules: usize,
    /// Whether a failed partial restore was redone in full.
    pub recovered: bool,
}

/// A rule in a built-in chain that jumps to one of the proxy's chains.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JumpRule {
    /// The table.
    pub table: Table,
    /// The built-in chain it sits in.
    pub from: FixedChain,
    /// The rule (its target is the proxy chain).
    pub rule: Rule,
}

impl JumpRule {
    /// The rule's arguments after `-A CHAIN`/`-I CHAIN`/`-D CHAIN`, as iptables prints them.
    pub fn args(&self) -> String {
        let mut line = Vec::new();
        self.rule.write(
            &ChainName::Fixed(self.from),
            &mut Default::default(),
            &mut line,
        );
        let prefix_len = "-A ".len() + self.from.as_str().len() + 1;
        String::from_utf8_lossy(&line[prefix_len..])
            .trim_end()
            .to_owned()
    }
}

/// The jump rules, in the order each built-in chain should hold them (the order kube-proxy
/// ends up with after prepending each). `KUBE-FIREWALL` (IPv4 with localhost node ports) is
/// the chain kubelet also maintains.
pub fn jump_rules(ipv6: bool, localhost_nodeports: bool) -> Vec<JumpRule> {
    use FixedChain::*;
    let new = || Match::CtState(CtState::New, false);
    let j = |table, from, to, comment: Option<&'static str>, ct_new: bool| {
        let mut rule = Rule::to(Target::Jump(ChainName::Fixed(to)));
        if ct_new {
            rule = rule.when(new());
        }
        if let Some(c) = comment {
            rule = rule.comment(Comment::Static(c));
        }
        JumpRule { table, from, rule }
    };
    let mut out = Vec::new();
    let firewall = !ipv6 && localhost_nodeports;
    if firewall {
        out.push(j(Table::Filter, Input, KubeFirewall, None, false));
        out.push(j(Table::Filter, Output, KubeFirewall, None, false));
    }
    out.extend([
        j(
            Table::Filter,
            Input,
            KubeProxyFirewall,
            Some("kubernetes load balancer firewall"),
            true,
        ),
        j(
            Table::Filter,
            Input,
            KubeNodePorts,
            Some("kubernetes health check service ports"),
            false,
        ),
        j(
            Table::Filter,
            Input,
            KubeExternalServices,
            Some("kubernetes externally-visible service portals"),
            true,
        ),
        j(
            Table::Filter,
            Forward,
            KubeProxyFirewall,
            Some("kubernetes load balancer firewall"),
            true,
        ),
        j(
            Table::Filter,
            Forward,
            KubeForward,
            Some("kubernetes forwarding rules"),
            false,
        ),
        j(
            Table::Filter,
            Forward,
            KubeServices,
            Some("kubernetes service portals"),
            true,
        ),
        j(
            Table::Filter,
            Forward,
            KubeExternalServices,
            Some("kubernetes externally-visible service portals"),
            true,
        ),
        j(
            Table::Filter,
            Output,
            KubeProxyFirewall,
            Some("kubernetes load balancer firewall"),
            true,
        ),
        j(
            Table::Filter,
            Output,
            KubeServices,
            Some("kubernetes service portals"),
            true,
        ),
        j(
            Table::Nat,
            Output,
            KubeServices,
            Some("kubernetes service portals"),
            false,
        ),
        j(
            Table::Nat,
            Prerouting,
            KubeServices,
            Some("kubernetes service portals"),
            false,
        ),
        j(
            Table::Nat,
            Postrouting,
            KubePostrouting,
            Some("kubernetes postrouting rules"),
            false,
        ),
    ]);
    out
}

#[cfg(test)]
mod tests;
