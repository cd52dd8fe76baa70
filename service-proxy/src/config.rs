//! Node-level proxy settings shared by every backend, named after kube-proxy's options.

use std::net::IpAddr;

use ipnet::IpNet;
use service_core::model::IpFamily;
use service_core::snapshot::NodeInfo;

/// Everything about one node that the proxy, the snapshot and the tracers need, given once:
/// name, IPs, zone, CIDRs and node-port addresses. [`NodeConfig::node_info`] and
/// [`NodeConfig::proxy_config`] derive what each consumer takes.
///
/// ```
/// use service_proxy::NodeConfig;
///
/// let node = NodeConfig::new("node-a")
///     .with_ip("192.168.0.2".parse()?)
///     .with_zone("zone-1")
///     .with_cluster_cidr("10.244.0.0/16".parse()?)
///     .with_service_cidr("10.96.0.0/12".parse()?);
/// assert_eq!(node.node_info().name, "node-a");
/// assert_eq!(node.proxy_config().local_addresses, node.ips);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeConfig {
    /// The node's name (endpoints with this `nodeName` are local).
    pub name: String,
    /// The node's IPs; the first of each family is its primary IP.
    pub ips: Vec<IpAddr>,
    /// The node's zone (`topology.kubernetes.io/zone`), for topology hints.
    pub zone: Option<String>,
    /// This node's pod CIDRs (`spec.podCIDRs`).
    pub pod_cidrs: Vec<IpNet>,
    /// `--cluster-cidr`: the whole pod network, one per family.
    pub cluster_cidrs: Vec<IpNet>,
    /// `--service-cidr`: the service IP ranges.
    pub service_cidrs: Vec<IpNet>,
    /// `--nodeport-addresses`: node ports only on local addresses in these ranges (empty:
    /// every local address).
    pub nodeport_addresses: Vec<IpNet>,
}

impl NodeConfig {
    /// A node with a name and nothing else yet.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// With an IP (the first of each family is primary).
    #[must_use]
    pub fn with_ip(mut self, ip: IpAddr) -> Self {
        self.ips.push(ip);
        self
    }

    /// In a zone.
    #[must_use]
    pub fn with_zone(mut self, zone: &str) -> Self {
        self.zone = Some(zone.to_owned());
        self
    }

    /// With a pod CIDR of this node.
    #[must_use]
    pub fn with_pod_cidr(mut self, cidr: IpNet) -> Self {
        self.pod_cidrs.push(cidr);
        self
    }

    /// With the cluster's pod network of a family.
    #[must_use]
    pub fn with_cluster_cidr(mut self, cidr: IpNet) -> Self {
        self.cluster_cidrs.push(cidr);
        self
    }

    /// With a service range.
    #[must_use]
    pub fn with_service_cidr(mut self, cidr: IpNet) -> Self {
        self.service_cidrs.push(cidr);
        self
    }

    /// Node ports only on local addresses in `cidr` (repeatable).
    #[must_use]
    pub fn with_nodeport_addresses(mut self, cidr: IpNet) -> Self {
        self.nodeport_addresses.push(cidr);
        self
    }

    /// The node facts the snapshot is built for.
    pub fn node_info(&self) -> NodeInfo {
        let mut info =
            NodeInfo::new(&self.name, self.ips.clone()).with_pod_cidrs(self.pod_cidrs.clone());
        info.zone.clone_from(&self.zone);
        info
    }

    /// The proxy settings of this node, with kube-proxy's defaults for the rest.
    pub fn proxy_config(&self) -> ProxyConfig {
        ProxyConfig::for_node(self)
    }
}

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
    /// `--detect-local-mode`: how traffic from this cluster's pods is told apart from the
    /// rest (default: by source address in [`ProxyConfig::cluster_cidrs`]).
    pub detect_local: DetectLocal,
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
            detect_local: DetectLocal::ClusterCidr,
            masquerade_bit: 14,
        }
    }
}

impl ProxyConfig {
    /// The settings of `node` (its IPs are the local addresses), with kube-proxy's defaults
    /// for the rest.
    pub fn for_node(node: &NodeConfig) -> Self {
        Self {
            cluster_cidrs: node.cluster_cidrs.clone(),
            service_cidrs: node.service_cidrs.clone(),
            nodeport_addresses: node.nodeport_addresses.clone(),
            local_addresses: node.ips.clone(),
            ..Self::default()
        }
    }

    /// The masquerade mark: `1 << masquerade_bit`.
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit.min(31)
    }

    /// The cluster CIDR of a family, if configured.
    pub fn cluster_cidr(&self, family: &IpFamily) -> Option<IpNet> {
        self.cluster_cidrs
            .iter()
            .copied()
            .find(|n| IpFamily::of(&n.addr()) == *family)
    }

    /// The local-traffic detector of a family on `node`, as kube-proxy builds it for each
    /// family: `None` where the mode has nothing to match on for that family (no cluster
    /// CIDR, or no pod CIDR of the node, of the family), and then no rule that needs it is
    /// written.
    pub fn local_traffic(&self, family: &IpFamily, node: &NodeInfo) -> Option<LocalTraffic> {
        match &self.detect_local {
            DetectLocal::ClusterCidr => self.cluster_cidr(family).map(LocalTraffic::Source),
            DetectLocal::NodeCidr => node
                .pod_cidrs
                .iter()
                .copied()
                .find(|n| IpFamily::of(&n.addr()) == *family)
                .map(LocalTraffic::Source),
            DetectLocal::BridgeInterface(name) => Some(LocalTraffic::Interface {
                name: name.clone(),
                prefix: false,
            }),
            DetectLocal::InterfaceNamePrefix(prefix) => Some(LocalTraffic::Interface {
                name: prefix.clone(),
                prefix: true,
            }),
        }
    }

    /// The local addresses of a family on which node ports are accepted, or `None` when
    /// node ports are accepted on every local address of that family: no
    /// `nodeport_addresses` of the family, or one of them is the family's whole range
    /// (`0.0.0.0/0`, `::/0`), as kube-proxy's `NewNodePortAddresses` decides.
    pub fn nodeport_ips(&self, family: &IpFamily) -> Option<Vec<IpAddr>> {
        let mut of_family = self
            .nodeport_addresses
            .iter()
            .filter(|n| IpFamily::of(&n.addr()) == *family)
            .peekable();
        if of_family.peek().is_none() || of_family.any(|n| n.prefix_len() == 0) {
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

/// `--detect-local-mode`: how the proxy tells traffic from this cluster's pods (not
/// masqueraded on the way to a cluster IP; short-circuited past `externalTrafficPolicy:
/// Local`) from everything else.
///
/// ```
/// use service_proxy::DetectLocal;
///
/// assert_eq!(DetectLocal::parse("InterfaceNamePrefix", "", "veth"), Ok(DetectLocal::InterfaceNamePrefix("veth".into())));
/// assert!(DetectLocal::parse("BridgeInterface", "", "").is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DetectLocal {
    /// `ClusterCIDR`: the source address is in the family's `--cluster-cidr`.
    #[default]
    ClusterCidr,
    /// `NodeCIDR`: the source address is in this node's pod CIDR of the family
    /// (`spec.podCIDRs` of the Node, [`NodeInfo::pod_cidrs`]).
    NodeCidr,
    /// `BridgeInterface`: the packet came in on this interface (`--pod-bridge-interface`).
    BridgeInterface(String),
    /// `InterfaceNamePrefix`: the packet came in on an interface whose name starts with
    /// this prefix (`--pod-interface-name-prefix`).
    InterfaceNamePrefix(String),
}

/// The longest interface name the kernel takes (`IFNAMSIZ` less its terminating NUL).
pub const MAX_INTERFACE_NAME: usize = 15;

impl DetectLocal {
    /// The mode kube-proxy's `--detect-local-mode` names, with its companion values:
    /// `bridge` (`--pod-bridge-interface`) and `prefix` (`--pod-interface-name-prefix`).
    /// An empty mode is `ClusterCIDR`, as in kube-proxy.
    ///
    /// # Errors
    /// An unknown mode, or an interface mode whose name is empty, too long for an
    /// interface name, or holds characters no interface name has.
    pub fn parse(mode: &str, bridge: &str, prefix: &str) -> Result<Self, String> {
        match mode {
            "" | "ClusterCIDR" => Ok(Self::ClusterCidr),
            "NodeCIDR" => Ok(Self::NodeCidr),
            "BridgeInterface" => {
                check_interface("detectLocal.bridgeInterface", bridge, MAX_INTERFACE_NAME)?;
                Ok(Self::BridgeInterface(bridge.to_owned()))
            }
            "InterfaceNamePrefix" => {
                // iptables writes the prefix with a `+`, which must fit too.
                check_interface(
                    "detectLocal.interfaceNamePrefix",
                    prefix,
                    MAX_INTERFACE_NAME - 1,
                )?;
                Ok(Self::InterfaceNamePrefix(prefix.to_owned()))
            }
            other => Err(format!(
                "detectLocalMode: Unsupported value: {other:?}: supported values: \"ClusterCIDR\", \"NodeCIDR\", \"BridgeInterface\", \"InterfaceNamePrefix\""
            )),
        }
    }

    /// The name kube-proxy's configuration uses for the mode.
    pub fn mode(&self) -> &'static str {
        match self {
            Self::ClusterCidr => "ClusterCIDR",
            Self::NodeCidr => "NodeCIDR",
            Self::BridgeInterface(_) => "BridgeInterface",
            Self::InterfaceNamePrefix(_) => "InterfaceNamePrefix",
        }
    }
}

fn check_interface(field: &str, name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{field}: Invalid value: \"\": must not be empty"));
    }
    if name.len() > max {
        return Err(format!(
            "{field}: Invalid value: {name:?}: must be no more than {max} bytes"
        ));
    }
    // The kernel refuses `/`, `:` and white space in interface names; a quote or `*`/`+`
    // would change the meaning of the rules' text.
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || matches!(c, '/' | ':' | '"' | '\'' | '*' | '+' | '!'))
    {
        return Err(format!(
            "{field}: Invalid value: {name:?}: {c:?} is not allowed in an interface name"
        ));
    }
    Ok(())
}

/// One family's local-traffic match, resolved from [`DetectLocal`] for a node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LocalTraffic {
    /// The source address is in this network.
    Source(IpNet),
    /// The input interface is `name` (or, with `prefix`, starts with it).
    Interface {
        /// The name or prefix.
        name: String,
        /// Whether `name` is a prefix.
        prefix: bool,
    },
}

impl LocalTraffic {
    /// Whether a packet from `src` that came in on `in_interface` (empty: sent by the
    /// node itself) is local traffic.
    pub fn matches(&self, src: &IpAddr, in_interface: &str) -> bool {
        match self {
            Self::Source(net) => net.contains(src),
            Self::Interface { name, prefix } => {
                if *prefix {
                    in_interface.starts_with(name.as_str())
                } else {
                    in_interface == name
                }
            }
        }
    }
}
