//! The `proxy` node agent's command line and the settings it resolves to: kube-proxy's
//! flags and `KubeProxyConfiguration` ([`crate::kpconfig`]), flags given on the command
//! line overriding the file, kube-proxy's defaults for the rest.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory as _, FromArgMatches as _};
use ipnet::IpNet;
use service_core::model::IpFamily;
use service_proxy::node_setup::ConntrackConfig;
use service_proxy::{NodeConfig, ProxyConfig};

use crate::backend::{FlavorArg, IpvsArgs};
use crate::kpconfig::{GoDuration, KubeProxyConfiguration};
use crate::{BackendArg, IpFamilyArg, LogArgs, LogFormat, NodeArgs};

/// Keep a node's Service rules in sync with manifest files: kube-proxy's job, with its
/// flags, configuration file, health checks and metrics.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "proxy", version)]
pub struct ProxyArgs {
    /// Which backend to run (kube-proxy's --proxy-mode; default iptables).
    #[arg(long, alias = "proxy-mode", value_enum, default_value = "iptables")]
    pub backend: BackendArg,
    /// A KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) file; flags given on
    /// the command line override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Write the effective configuration (defaults, file and flags) to this file, and exit.
    #[arg(long)]
    pub write_config_to: Option<PathBuf>,
    /// Apply the rules to the kernel (needs root); otherwise print them.
    #[arg(long)]
    pub apply: bool,
    /// Remove every rule this proxy can install (every backend, both families), and exit.
    #[arg(long)]
    pub cleanup: bool,
    /// Only these families, not every family the node has addresses of (default: dual-stack
    /// when the node has IPs of both families, the first node IP's family first).
    #[arg(long, value_enum)]
    pub ip_family: Option<IpFamilyArg>,
    /// Minimum time between two syncs (kube-proxy's --*-min-sync-period).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub min_sync_period: Duration,
    /// Full resync interval (kube-proxy's --*-sync-period); the health check allows twice
    /// this for a sync that is due.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub sync_period: Duration,
    /// Where /healthz and /livez are served ("" disables).
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: String,
    /// Where /metrics is served ("" disables).
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: String,
    /// Where the lock file lives: one daemon (or `--cleanup`) per network namespace and IP
    /// family at a time, with `--apply`.
    #[arg(long, default_value = "/run/service-proxy")]
    pub run_dir: PathBuf,
    /// The conntrack table's entries per CPU (0 leaves its size alone).
    #[arg(long, default_value_t = 32_768)]
    pub conntrack_max_per_core: u32,
    /// The conntrack table's least size.
    #[arg(long, default_value_t = 131_072)]
    pub conntrack_min: u32,
    /// Idle timeout of established TCP conntrack entries (0 leaves it alone).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
    pub conntrack_tcp_timeout_established: Duration,
    /// Timeout of TCP conntrack entries in CLOSE_WAIT (0 leaves it alone).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    pub conntrack_tcp_timeout_close_wait: Duration,
    /// The masquerade mark bit.
    #[arg(long = "iptables-masquerade-bit", default_value_t = 14)]
    pub masquerade_bit: u8,
    /// The IPVS settings.
    #[command(flatten)]
    pub ipvs: IpvsArgs,
    /// Which iptables programs to run: the system's `iptables-restore`, the nft or the
    /// legacy variant, or `detect`.
    #[arg(long, value_enum, default_value = "system")]
    pub iptables_flavor: FlavorArg,
    /// The node.
    #[command(flatten)]
    pub node: NodeArgs,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
    /// Manifest files (YAML, JSON, `kind: List`); `-` reads standard input once.
    #[arg(required_unless_present_any = ["cleanup", "write_config_to"])]
    pub files: Vec<String>,
    /// The configuration file's `bindAddress` is IPv6: IPv6 is the primary family.
    #[arg(skip)]
    pub ip_family_primary_v6: bool,
}

/// What the agent runs with, once flags and file are combined.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Settings {
    /// The backend.
    pub backend: BackendArg,
    /// The families to program, primary first.
    pub families: Vec<IpFamily>,
    /// The node.
    pub node: NodeConfig,
    /// The proxy settings (both families).
    pub proxy: ProxyConfig,
    /// The IPVS settings.
    pub ipvs: IpvsArgs,
    /// `--sync-period`.
    pub sync_period: Duration,
    /// `--min-sync-period`.
    pub min_sync_period: Duration,
    /// `/healthz` and `/livez` (`None`: disabled).
    pub healthz: Option<SocketAddr>,
    /// `/metrics` (`None`: disabled).
    pub metrics: Option<SocketAddr>,
    /// The conntrack settings.
    pub conntrack: ConntrackConfig,
    /// Logging.
    pub log: LogArgs,
}

/// Parses kube-proxy's `ip:port` bind addresses; an address without a port gets `port`,
/// the empty string disables.
fn bind_address(flag: &str, text: &str, port: u16) -> Result<Option<SocketAddr>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(Some(a));
    }
    text.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| Some(SocketAddr::new(ip, port)))
        .map_err(|_| format!("{flag}: {text:?} is not an address (like 0.0.0.0:{port})"))
}

fn cidrs(field: &str, texts: &[String]) -> Result<Vec<IpNet>, String> {
    texts
        .iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<IpNet>()
                .map_err(|e| format!("{field}: {t:?} is not a CIDR: {e}"))
        })
        .collect()
}

impl ProxyArgs {
    /// Parses the command line, with what was given explicitly.
    pub fn parse_with_sources() -> (Self, ArgMatches) {
        let matches = Self::command().get_matches();
        let args = Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        (args, matches)
    }

    /// Parses `argv` (for tests), with what was given explicitly.
    ///
    /// # Errors
    /// clap's.
    pub fn try_parse_with_sources(argv: &[&str]) -> Result<(Self, ArgMatches), clap::Error> {
        let matches = Self::command().try_get_matches_from(argv)?;
        Ok((Self::from_arg_matches(&matches)?, matches))
    }

    /// Combines these flags with `file` (flags given on the command line win).
    ///
    /// # Errors
    /// A value is unusable (the message names the flag or field).
    pub fn settings(
        &self,
        matches: &ArgMatches,
        file: Option<&KubeProxyConfiguration>,
    ) -> Result<Settings, String> {
        let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        let mut args = self.clone();
        if let Some(c) = file {
            args.apply_file(c, &given)?;
        }
        args.resolve()
    }

    /// Takes the file's values for every flag not given on the command line.
    fn apply_file(
        &mut self,
        c: &KubeProxyConfiguration,
        given: &dyn Fn(&str) -> bool,
    ) -> Result<(), String> {
        if !given("backend") {
            self.backend = match c.mode.as_str() {
                "" | "iptables" => BackendArg::Iptables,
                "nftables" => BackendArg::Nftables,
                "ipvs" => BackendArg::Ipvs,
                other => return Err(format!("mode: {other:?} is not iptables, nftables or ipvs")),
            };
        }
        let section = match self.backend {
            BackendArg::Nftables => &c.nftables,
            _ => &c.iptables,
        };
        let (sync, min_sync) = match self.backend {
            BackendArg::Ipvs => (c.ipvs.sync_period, c.ipvs.min_sync_period),
            _ => (section.sync_period, section.min_sync_period),
        };
        if !given("sync_period") {
            self.sync_period = sync.0;
        }
        if !given("min_sync_period") {
            self.min_sync_period = min_sync.0;
        }
        if !given("masquerade_bit") {
            let bit = section.masquerade_bit.unwrap_or(14);
            self.masquerade_bit = u8::try_from(bit)
                .ok()
                .filter(|b| *b <= 31)
                .ok_or_else(|| format!("masqueradeBit: {bit} is not between 0 and 31"))?;
        }
        if !given("masquerade_all") {
            self.node.masquerade_all = section.masquerade_all;
        }
        if !given("no_localhost_nodeports") {
            self.node.no_localhost_nodeports = c.iptables.localhost_node_ports == Some(false);
        }
        if !given("healthz_bind_address") {
            self.healthz_bind_address
                .clone_from(&c.healthz_bind_address);
        }
        if !given("metrics_bind_address") {
            self.metrics_bind_address
                .clone_from(&c.metrics_bind_address);
        }
        if !given("node_name_override") && !c.hostname_override.is_empty() {
            self.node.node_name_override = Some(c.hostname_override.clone());
        }
        if !given("cluster_cidrs") {
            self.node.cluster_cidrs = cidrs("clusterCIDR", std::slice::from_ref(&c.cluster_cidr))?;
        }
        if !given("nodeport_addresses") {
            let texts = c.node_port_addresses.clone().unwrap_or_default();
            self.node.nodeport_addresses = if texts.len() == 1 && texts[0] == "primary" {
                vec![crate::NodePortAddress::Primary]
            } else {
                cidrs("nodePortAddresses", &texts)?
                    .into_iter()
                    .map(crate::NodePortAddress::Cidr)
                    .collect()
            };
        }
        // Checked here with the file's field names; the flags are checked again, with
        // theirs, when resolved.
        service_proxy::DetectLocal::parse(
            &c.detect_local_mode,
            &c.detect_local.bridge_interface,
            &c.detect_local.interface_name_prefix,
        )?;
        if !given("detect_local_mode") && !c.detect_local_mode.is_empty() {
            self.node.detect_local_mode = Some(c.detect_local_mode.clone());
        }
        if !given("pod_bridge_interface") {
            self.node
                .pod_bridge_interface
                .clone_from(&c.detect_local.bridge_interface);
        }
        if !given("pod_interface_name_prefix") {
            self.node
                .pod_interface_name_prefix
                .clone_from(&c.detect_local.interface_name_prefix);
        }
        if !given("scheduler") && !c.ipvs.scheduler.is_empty() {
            self.ipvs.scheduler = service_proxy::ipvs::Scheduler::parse(&c.ipvs.scheduler)
                .ok_or_else(|| {
                    format!("ipvs.scheduler: unknown scheduler {:?}", c.ipvs.scheduler)
                })?;
        }
        if !given("exclude_cidrs") {
            self.ipvs.exclude_cidrs = cidrs(
                "ipvs.excludeCIDRs",
                c.ipvs.exclude_cidrs.as_deref().unwrap_or_default(),
            )?;
        }
        if !given("strict_arp") {
            self.ipvs.strict_arp = c.ipvs.strict_arp;
        }
        let take = |id: &str, slot: &mut Duration, v: GoDuration| {
            if !given(id) {
                *slot = v.0;
            }
        };
        take(
            "tcp_timeout",
            &mut self.ipvs.tcp_timeout,
            c.ipvs.tcp_timeout,
        );
        take(
            "tcpfin_timeout",
            &mut self.ipvs.tcpfin_timeout,
            c.ipvs.tcp_fin_timeout,
        );
        take(
            "udp_timeout",
            &mut self.ipvs.udp_timeout,
            c.ipvs.udp_timeout,
        );
        let nonneg = |field: &str, v: Option<i32>, default: u32| -> Result<u32, String> {
            match v {
                None => Ok(default),
                Some(v) => u32::try_from(v).map_err(|_| format!("{field}: {v} is negative")),
            }
        };
        if !given("conntrack_max_per_core") {
            self.conntrack_max_per_core =
                nonneg("conntrack.maxPerCore", c.conntrack.max_per_core, 32_768)?;
        }
        if !given("conntrack_min") {
            self.conntrack_min = nonneg("conntrack.min", c.conntrack.min, 131_072)?;
        }
        if let Some(t) = c.conntrack.tcp_established_timeout {
            take(
                "conntrack_tcp_timeout_established",
                &mut self.conntrack_tcp_timeout_established,
                t,
            );
        }
        if let Some(t) = c.conntrack.tcp_close_wait_timeout {
            take(
                "conntrack_tcp_timeout_close_wait",
                &mut self.conntrack_tcp_timeout_close_wait,
                t,
            );
        }
        if !given("log_format") {
            self.log.log_format = match c.logging.format.as_str() {
                "" | "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => return Err(format!("logging.format: {other:?} is not text or json")),
            };
        }
        if !given("verbosity") {
            self.log.verbosity = u8::try_from(c.logging.verbosity).unwrap_or(u8::MAX);
        }
        if !given("ip_family") && c.bind_address.contains(':') {
            // An IPv6 bindAddress makes IPv6 the primary family.
            self.ip_family_primary_v6 = true;
        }
        Ok(())
    }

    fn resolve(&self) -> Result<Settings, String> {
        let mut node_args = self.node.clone();
        let primary = crate::NodePortAddress::Primary;
        if node_args.nodeport_addresses.contains(&primary) && node_args.nodeport_addresses.len() > 1
        {
            return Err(
                "--nodeport-addresses: \"primary\" must be the only value, not mixed with CIDRs"
                    .into(),
            );
        }
        // kube-proxy's nftables mode serves node ports on the primary IPs unless told
        // otherwise (`platformApplyDefaults` in cmd/kube-proxy/app/server_linux.go).
        if self.backend == BackendArg::Nftables && node_args.nodeport_addresses.is_empty() {
            node_args.nodeport_addresses = vec![primary];
        }
        let node = node_args.node_config();
        let mut proxy = node_args.proxy_config()?;
        proxy.masquerade_bit = self.masquerade_bit;
        let primary_v6 = match self.ip_family {
            Some(f) => f == IpFamilyArg::Ipv6,
            None => {
                self.ip_family_primary_v6 || self.node.node_ips.first().is_some_and(IpAddr::is_ipv6)
            }
        };
        let (primary, secondary) = if primary_v6 {
            (IpFamily::Ipv6, IpFamily::Ipv4)
        } else {
            (IpFamily::Ipv4, IpFamily::Ipv6)
        };
        let mut families = vec![primary];
        if self.ip_family.is_none() && node.ips.iter().any(|ip| IpFamily::of(ip) == secondary) {
            families.push(secondary);
        }
        let mut conntrack = ConntrackConfig::default();
        conntrack.max_per_core = self.conntrack_max_per_core;
        conntrack.min = self.conntrack_min;
        conntrack.tcp_established_timeout = self.conntrack_tcp_timeout_established;
        conntrack.tcp_close_wait_timeout = self.conntrack_tcp_timeout_close_wait;
        Ok(Settings {
            backend: self.backend,
            families,
            node,
            proxy,
            ipvs: self.ipvs.clone(),
            sync_period: self.sync_period,
            min_sync_period: self.min_sync_period,
            healthz: bind_address("healthzBindAddress", &self.healthz_bind_address, 10256)?,
            metrics: bind_address("metricsBindAddress", &self.metrics_bind_address, 10249)?,
            conntrack,
            log: self.log.clone(),
        })
    }
}

impl Settings {
    /// The configuration file that says the same (`--write-config-to`).
    pub fn to_config(&self) -> KubeProxyConfiguration {
        let mut c = KubeProxyConfiguration::defaults();
        c.mode = match self.backend {
            BackendArg::Nftables => "nftables",
            BackendArg::Ipvs => "ipvs",
            _ => "iptables",
        }
        .into();
        let primary_v6 = self.families.first() == Some(&IpFamily::Ipv6);
        c.bind_address = if primary_v6 { "::" } else { "0.0.0.0" }.into();
        c.hostname_override.clone_from(&self.node.name);
        c.healthz_bind_address = self.healthz.map(|a| a.to_string()).unwrap_or_default();
        c.metrics_bind_address = self.metrics.map(|a| a.to_string()).unwrap_or_default();
        c.cluster_cidr = self
            .proxy
            .cluster_cidrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        c.node_port_addresses = (!self.proxy.nodeport_addresses.is_empty()).then(|| {
            self.proxy
                .nodeport_addresses
                .iter()
                .map(ToString::to_string)
                .collect()
        });
        c.detect_local_mode = self.proxy.detect_local.mode().into();
        match &self.proxy.detect_local {
            service_proxy::DetectLocal::BridgeInterface(name) => {
                c.detect_local.bridge_interface.clone_from(name);
            }
            service_proxy::DetectLocal::InterfaceNamePrefix(prefix) => {
                c.detect_local.interface_name_prefix.clone_from(prefix);
            }
            _ => {}
        }
        let periods = (
            GoDuration(self.sync_period),
            GoDuration(self.min_sync_period),
        );
        for section in [&mut c.iptables, &mut c.nftables] {
            section.masquerade_bit = Some(i32::from(self.proxy.masquerade_bit));
            section.masquerade_all = self.proxy.masquerade_all;
        }
        c.iptables.localhost_node_ports = Some(self.proxy.localhost_nodeports);
        match self.backend {
            BackendArg::Nftables => (c.nftables.sync_period, c.nftables.min_sync_period) = periods,
            BackendArg::Ipvs => (c.ipvs.sync_period, c.ipvs.min_sync_period) = periods,
            _ => (c.iptables.sync_period, c.iptables.min_sync_period) = periods,
        }
        c.ipvs.scheduler = self.ipvs.scheduler.as_str().into();
        c.ipvs.exclude_cidrs = (!self.ipvs.exclude_cidrs.is_empty()).then(|| {
            self.ipvs
                .exclude_cidrs
                .iter()
                .map(ToString::to_string)
                .collect()
        });
        c.ipvs.strict_arp = self.ipvs.strict_arp;
        c.ipvs.tcp_timeout = GoDuration(self.ipvs.tcp_timeout);
        c.ipvs.tcp_fin_timeout = GoDuration(self.ipvs.tcpfin_timeout);
        c.ipvs.udp_timeout = GoDuration(self.ipvs.udp_timeout);
        c.conntrack.max_per_core =
            Some(i32::try_from(self.conntrack.max_per_core).unwrap_or(i32::MAX));
        c.conntrack.min = Some(i32::try_from(self.conntrack.min).unwrap_or(i32::MAX));
        c.conntrack.tcp_established_timeout =
            Some(GoDuration(self.conntrack.tcp_established_timeout));
        c.conntrack.tcp_close_wait_timeout =
            Some(GoDuration(self.conntrack.tcp_close_wait_timeout));
        c.logging.format = match self.log.log_format {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        }
        .into();
        c.logging.verbosity = u32::from(self.log.verbosity);
        c
    }
}
