//! Shared plumbing of the example binaries: reading manifest files, the node flags named
//! after kube-proxy's options, logging, turning invalid input into exit status 2; the
//! daemons' file source and signals ([`daemon`]) and the proxy's backends ([`backend`]).

pub mod agent;
pub mod backend;
pub mod daemon;
pub mod kpconfig;

use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::Context;
use ipnet::IpNet;
use service_core::cluster::Cluster;
use service_core::controller::ControllerConfig;
use service_core::manifest::{Located, Object, load_str};
use service_core::snapshot::{NodeInfo, Snapshot};

/// Exit status for invalid input (a file that does not parse, an invalid object).
pub const EXIT_INVALID: u8 = 2;

/// The logging flags of the daemons.
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Verbosity, as klog's `-v`: 0-1 info, 2-4 debug, 5 and up trace.
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    pub verbosity: u8,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event: time, level, message, fields.
    Text,
    /// One JSON object per event.
    Json,
}

/// Sends `tracing` events to standard error in the chosen format.
pub fn init_logging(args: &LogArgs) {
    let level = match args.verbosity {
        0..=1 => tracing::Level::INFO,
        2..=4 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    let result = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(e) = result {
        eprintln!("warning: logging already set up: {e}");
    }
}

/// `--ip-family`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IpFamilyArg {
    /// IPv4 (iptables).
    Ipv4,
    /// IPv6 (ip6tables).
    Ipv6,
}

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// kube-proxy's iptables layout.
    Iptables,
    /// kube-proxy's nftables layout (with our leaner DNAT maps).
    Nftables,
    /// kube-proxy's IPVS mode (virtual servers, ipsets and its fixed iptables rules).
    Ipvs,
    /// The userspace L4 proxy (`proxy` only).
    Userspace,
}

/// One `--nodeport-addresses` value: a CIDR, or `primary` (the node's primary IP of each
/// family, as kube-proxy resolves it: `A/32` and `B/128`, loopback left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodePortAddress {
    /// `primary`.
    Primary,
    /// A CIDR.
    Cidr(IpNet),
}

impl std::str::FromStr for NodePortAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "primary" {
            return Ok(Self::Primary);
        }
        s.parse()
            .map(Self::Cidr)
            .map_err(|_| format!("{s:?} must be a valid CIDR (or \"primary\")"))
    }
}

/// The node flags shared by `render`, `trace` and `proxy`, named after kube-proxy's options.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct NodeArgs {
    /// Name of this node, compared with endpoints' `nodeName` to find local endpoints
    /// (kube-proxy: --hostname-override). Default: the host name, lower-cased, as
    /// kube-proxy's; with no name no endpoint is local and `externalTrafficPolicy: Local`
    /// Services drop all external traffic.
    #[arg(long = "node-name", alias = "hostname-override")]
    pub node_name_override: Option<String>,
    /// A node IP; repeat for several, the first of each family is the primary.
    #[arg(long = "node-ip")]
    pub node_ips: Vec<IpAddr>,
    /// This node's zone (topology.kubernetes.io/zone), for topology hints.
    #[arg(long)]
    pub node_zone: Option<String>,
    /// Pod CIDR of the cluster: traffic from outside it to cluster IPs is masqueraded.
    #[arg(long = "cluster-cidr")]
    pub cluster_cidrs: Vec<IpNet>,
    /// Service CIDR (repeatable).
    #[arg(long = "service-cidr")]
    pub service_cidrs: Vec<IpNet>,
    /// Accept node ports only on addresses in these CIDRs, or `primary` alone: the node's
    /// primary IPs (default: every local address; `proxy --backend nftables`: `primary`,
    /// as kube-proxy's nftables mode).
    #[arg(long = "nodeport-addresses", value_parser = clap::value_parser!(NodePortAddress))]
    pub nodeport_addresses: Vec<NodePortAddress>,
    /// Do not accept node-port traffic sent to 127.0.0.0/8.
    #[arg(long)]
    pub no_localhost_nodeports: bool,
    /// Masquerade all traffic sent to cluster IPs.
    #[arg(long)]
    pub masquerade_all: bool,
    /// This node's pod CIDR (`spec.podCIDRs`; repeatable, one per family), for
    /// `--detect-local-mode NodeCIDR`. A Node object of this node in the input overrides
    /// it, as kube-proxy takes it from the Node.
    #[arg(long = "pod-cidr")]
    pub pod_cidrs: Vec<IpNet>,
    /// How traffic from pods is told from the rest (not masqueraded to cluster IPs, let
    /// past `externalTrafficPolicy: Local`): by source address in `--cluster-cidr`
    /// (ClusterCIDR, default) or in this node's `--pod-cidr` (NodeCIDR), or by the
    /// interface it came in on (BridgeInterface, InterfaceNamePrefix).
    #[arg(long = "detect-local-mode", value_parser = ["ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix"])]
    pub detect_local_mode: Option<String>,
    /// The bridge pods are attached to, for `--detect-local-mode BridgeInterface`.
    #[arg(long = "pod-bridge-interface", default_value = "")]
    pub pod_bridge_interface: String,
    /// The name prefix of pods' interfaces on the node (e.g. `cali`, `veth`), for
    /// `--detect-local-mode InterfaceNamePrefix`.
    #[arg(long = "pod-interface-name-prefix", default_value = "")]
    pub pod_interface_name_prefix: String,
}

impl NodeArgs {
    /// The node these flags describe.
    pub fn node_config(&self) -> service_proxy::NodeConfig {
        let mut node = service_proxy::NodeConfig::new(&self.node_name());
        node.ips.clone_from(&self.node_ips);
        node.zone.clone_from(&self.node_zone);
        node.cluster_cidrs.clone_from(&self.cluster_cidrs);
        node.pod_cidrs.clone_from(&self.pod_cidrs);
        node.service_cidrs.clone_from(&self.service_cidrs);
        node.nodeport_addresses = self.nodeport_cidrs();
        node
    }

    /// `--nodeport-addresses` as CIDRs, `primary` resolved to the primary node IPs.
    pub fn nodeport_cidrs(&self) -> Vec<IpNet> {
        let mut out = Vec::new();
        for a in &self.nodeport_addresses {
            match a {
                NodePortAddress::Cidr(net) => out.push(*net),
                NodePortAddress::Primary => {
                    // kube-proxy's server: the first node IP of each family, unless loopback.
                    for v6 in [false, true] {
                        if let Some(ip) = self
                            .node_ips
                            .iter()
                            .find(|ip| ip.is_ipv6() == v6)
                            .filter(|ip| !ip.is_loopback())
                        {
                            out.push(IpNet::from(*ip));
                        }
                    }
                }
            }
        }
        out
    }

    /// The proxy settings these flags describe.
    ///
    /// # Errors
    /// `--detect-local-mode` names an interface mode without a valid interface name.
    pub fn proxy_config(&self) -> Result<service_proxy::ProxyConfig, String> {
        let mut c = self.node_config().proxy_config();
        c.localhost_nodeports = !self.no_localhost_nodeports;
        c.masquerade_all = self.masquerade_all;
        c.detect_local = self.detect_local()?;
        Ok(c)
    }

    /// `--detect-local-mode` with its companion flags.
    ///
    /// # Errors
    /// An interface mode without a valid interface name (the message names the flag).
    pub fn detect_local(&self) -> Result<service_proxy::DetectLocal, String> {
        service_proxy::DetectLocal::parse(
            self.detect_local_mode.as_deref().unwrap_or_default(),
            &self.pod_bridge_interface,
            &self.pod_interface_name_prefix,
        )
        .map_err(|e| {
            e.replace("detectLocal.bridgeInterface", "--pod-bridge-interface")
                .replace(
                    "detectLocal.interfaceNamePrefix",
                    "--pod-interface-name-prefix",
                )
        })
    }

    /// Whether to render IPv6 rules: `--ip-family`, else the family of the first node IP.
    pub fn ipv6(&self, family: Option<IpFamilyArg>) -> bool {
        match family {
            Some(f) => f == IpFamilyArg::Ipv6,
            None => self.node_ips.first().is_some_and(IpAddr::is_ipv6),
        }
    }

    /// This node's name: `--node-name` if given, else the host name, trimmed and
    /// lower-cased as kube-proxy's `GetHostname` does (empty only when neither exists).
    pub fn node_name(&self) -> String {
        let name = match &self.node_name_override {
            Some(n) => n.clone(),
            None => nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        name.trim().to_lowercase()
    }

    /// The node facts for the snapshot.
    pub fn node_info(&self) -> NodeInfo {
        self.node_config().node_info()
    }
}

/// Reads and parses every file ("-" is standard input), printing skipped kinds to stderr.
///
/// # Errors
/// The first file that cannot be read or parsed.
pub fn load_files(files: &[String]) -> anyhow::Result<Vec<Located<Object>>> {
    let mut objects = Vec::new();
    for file in files {
        let text = if file == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading standard input")?
        } else {
            std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
        };
        let loaded = load_str(file, &text)?;
        for w in &loaded.warnings {
            eprintln!("warning: {w}");
        }
        objects.extend(loaded.objects);
    }
    Ok(objects)
}

/// Loads the files into a validated [`Cluster`], deriving EndpointSlices from Pods for
/// Services that have none. Prints every problem to stderr.
///
/// # Errors
/// `Err(exit code)` when a file does not parse or any object is invalid.
pub fn load_cluster(files: &[String]) -> Result<Cluster, ExitCode> {
    let objects = match load_files(files) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Err(ExitCode::from(EXIT_INVALID));
        }
    };
    let (mut cluster, invalid) = Cluster::from_objects(objects);
    if !invalid.is_empty() {
        for i in &invalid {
            eprintln!("error: {i}");
        }
        return Err(ExitCode::from(EXIT_INVALID));
    }
    cluster.derive_endpoint_slices(ControllerConfig::default());
    Ok(cluster)
}

/// Loads the files and builds the snapshot for the node.
///
/// # Errors
/// `Err(exit code)` on invalid input.
pub fn load_snapshot(files: &[String], node: &NodeArgs) -> Result<Snapshot, ExitCode> {
    let cluster = load_cluster(files)?;
    cluster.snapshot(node.node_info()).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_INVALID)
    })
}
