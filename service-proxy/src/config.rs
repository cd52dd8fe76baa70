//! Node-level proxy settings shared by every backend, named after kube-proxy's options.

use std::net::IpAddr;

use ipnet::IpNet;
use service_core::model::IpFamily;

/// Settings of the proxy on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// `--cluster-cidr`: the pod network. Traffic from outside it to a cluster IP is
    /// masqueraded, and pod traffic to external IPs of `externalTrafficPolicy: Local`
    /// Services is short-circuited to all endpoints. One per family; without one of a
    /// family, those rules are not written (kube-proxy without a local-traffic detector).
    pub cluster_cidrs: Vec<IpNet>,
    /// `--service-cidr`: the service IP ranges (used by backends that reject traffic to
    /// unallocated service IPs).
    pub service_cidrs: Vec<IpNet>,
    /// `--nodeport-addresses`: accept node ports only on local addresses inside these
    /// ranges. Empty means every local address.
    pub nodeport_addresses: Vec<IpNet>,
    /// The node's local addresses, used to resolve `nodeport_addresses` and to decide
    /// which addresses count as local when tracing.
    pub local_addresses: Vec<IpAddr>,
    /// Accept node ports on 127.0.0.0/8 (kube-proxy's `--iptables-localhost-nodeports`,
    /// default true; IPv4 only). Requires `net.ipv4.conf.all.route_localnet=1`.
    pub localhost_nodeports: bool,
    /// `--masquerade-all`: masquerade every packet sent to a cluster IP.
    pub masquerade_all: bool,
    /// `--iptables-masquerade-bit`: the packet-mark bit that asks for SNAT (default 14).
    pub masquerade_bit: u8,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            cluster_cidrs: Vec::new(),
            service_cidrs: Vec::new(),
            nodeport_addresses: Vec::new(),
            local_addresses: Vec::new(),
            localhost_nodeports: true,
            masquerade_all: false,
            masquerade_bit: 14,
        }
    }
}

impl ProxyConfig {
    /// The masquerade mark: `1 << masquerade_bit`.
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit.min(31)
    }

    /// The cluster CIDR of a family (the local-traffic detector), if configured.
    pub fn cluster_cidr(&self, family: &IpFamily) -> Option<IpNet> {
        self.cluster_cidrs
            .iter()
            .copied()
            .find(|n| IpFamily::of(&n.addr()) == *family)
    }

    /// The local addresses of a family on which node ports are accepted, or `None` when
    /// node ports are accepted on every local address.
    pub fn nodeport_ips(&self, family: &IpFamily) -> Option<Vec<IpAddr>> {
        if self.nodeport_addresses.is_empty() {
            return None;
        }
        let mut ips: Vec<IpAddr> = self
            .local_addresses
            .iter()
            .copied()
            .filter(|ip| IpFamily::of(ip) == *family)
            .filter(|ip| self.nodeport_addresses.iter().any(|n| n.contains(ip)))
            .collect();
        ips.sort_unstable();
        ips.dedup();
        Some(ips)
    }
}
