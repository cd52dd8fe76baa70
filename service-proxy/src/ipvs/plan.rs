//! The IPVS plan for a node (kube-proxy's IPVS proxier, `pkg/proxy/ipvs/proxier.go`): a
//! virtual server per (address, protocol, port) for ClusterIPs, external IPs and
//! load-balancer IPs, one per node address for node ports; their real servers; the
//! addresses to bind to the dummy interface; and the ipset entries the fixed iptables
//! rules match. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use service_core::model::{IpFamily, Protocol};
use service_core::snapshot::{ServicePort, Snapshot};

use super::model::{FLAG_PERSISTENT, IpvsProtocol, RealServer, Scheduler, VirtualServer};
use crate::{LocalTraffic, ProxyConfig};

/// The dummy interface the virtual addresses are bound to.
pub const DUMMY_DEVICE: &str = "kube-ipvs0";

/// Settings of the IPVS backend.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct IpvsConfig {
    /// Node-level settings shared by every backend.
    pub proxy: ProxyConfig,
    /// The scheduler (`--ipvs-scheduler`, default `rr`).
    pub scheduler: Scheduler,
    /// Virtual servers in these ranges are never deleted, even when no Service asks for
    /// them (`--ipvs-exclude-cidrs`: addresses other software manages).
    pub exclude_cidrs: Vec<IpNet>,
    /// Answer ARP only for addresses of the receiving interface and announce the best
    /// local source (`--ipvs-strict-arp`: `arp_ignore=1`, `arp_announce=2`), so that the
    /// virtual addresses on `kube-ipvs0` are not answered for on the network.
    pub strict_arp: bool,
    /// IPVS's idle timeout of established TCP connections (`--ipvs-tcp-timeout`; zero
    /// keeps the kernel's).
    pub tcp_timeout: Duration,
    /// IPVS's timeout of TCP connections after a FIN (`--ipvs-tcpfin-timeout`; zero keeps
    /// the kernel's).
    pub tcp_fin_timeout: Duration,
    /// IPVS's idle timeout of UDP flows (`--ipvs-udp-timeout`; zero keeps the kernel's).
    pub udp_timeout: Duration,
}

impl IpvsConfig {
    /// A configuration around shared proxy settings: round robin, kube-proxy's defaults
    /// for the rest.
    pub fn new(proxy: ProxyConfig) -> Self {
        Self {
            proxy,
            scheduler: Scheduler::Rr,
            exclude_cidrs: Vec::new(),
            strict_arp: false,
            tcp_timeout: Duration::ZERO,
            tcp_fin_timeout: Duration::ZERO,
            udp_timeout: Duration::ZERO,
        }
    }

    /// Whether a virtual address is in `exclude_cidrs`.
    pub fn excluded(&self, addr: &IpAddr) -> bool {
        self.exclude_cidrs.iter().any(|n| n.contains(addr))
    }
}

/// The longest name ipset accepts (`IPSET_MAXNAMELEN` - 1).
const MAX_IPSET_NAME: usize = 31;

/// The ipsets of IPVS mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpSet {
    /// `KUBE-CLUSTER-IP` (hash:ip,port): every ClusterIP and port.
    ClusterIp,
    /// `KUBE-LOOP-BACK` (hash:ip,port,ip): local endpoint, port, endpoint, for hairpin
    /// masquerade.
    LoopBack,
    /// `KUBE-EXTERNAL-IP` (hash:ip,port).
    ExternalIp,
    /// `KUBE-EXTERNAL-IP-LOCAL` (hash:ip,port): externalTrafficPolicy Local.
    ExternalIpLocal,
    /// `KUBE-LOAD-BALANCER` (hash:ip,port).
    LoadBalancer,
    /// `KUBE-LOAD-BALANCER-LOCAL` (hash:ip,port).
    LoadBalancerLocal,
    /// `KUBE-LOAD-BALANCER-FW` (hash:ip,port): load balancers with source ranges.
    LoadBalancerFw,
    /// `KUBE-LOAD-BALANCER-SOURCE-CIDR` (hash:ip,port,net).
    LoadBalancerSourceCidr,
    /// `KUBE-LOAD-BALANCER-SOURCE-IP` (hash:ip,port,ip): a load balancer reached from its
    /// own address, allowed when the node's address is in its source ranges.
    LoadBalancerSourceIp,
    /// `KUBE-NODE-PORT-TCP` (bitmap:port).
    NodePortTcp,
    /// `KUBE-NODE-PORT-UDP` (bitmap:port).
    NodePortUdp,
    /// `KUBE-NODE-PORT-LOCAL-TCP` (bitmap:port).
    NodePortLocalTcp,
    /// `KUBE-NODE-PORT-LOCAL-UDP` (bitmap:port).
    NodePortLocalUdp,
    /// `KUBE-NODE-PORT-SCTP` (hash:ip,port): SCTP node ports, per node address.
    NodePortSctp,
    /// `KUBE-NODE-PORT-LOCAL-SCTP` (hash:ip,port).
    NodePortLocalSctp,
    /// `KUBE-HEALTH-CHECK-NODE-PORT` (bitmap:port).
    HealthCheckNodePort,
    /// `KUBE-IPVS-IPS` (hash:ip): every address on the dummy interface.
    IpvsIps,
}

impl IpSet {
    /// Every set IPVS mode keeps (all are created, empty or not: the fixed rules name them).
    pub const ALL: [Self; 17] = [
        Self::ClusterIp,
        Self::LoopBack,
        Self::ExternalIp,
        Self::ExternalIpLocal,
        Self::LoadBalancer,
        Self::LoadBalancerLocal,
        Self::LoadBalancerFw,
        Self::LoadBalancerSourceCidr,
        Self::LoadBalancerSourceIp,
        Self::NodePortTcp,
        Self::NodePortUdp,
        Self::NodePortLocalTcp,
        Self::NodePortLocalUdp,
        Self::NodePortSctp,
        Self::NodePortLocalSctp,
        Self::HealthCheckNodePort,
        Self::IpvsIps,
    ];

    /// The set's name for a family: IPv6 sets are `KUBE-6-...` so that both families'
    /// sets can exist side by side, cut to ipset's 31 characters (kube-proxy's
    /// `NewIPSet`).
    pub fn name_for(self, ipv6: bool) -> String {
        let name = self.name();
        match (ipv6, name.strip_prefix("KUBE-")) {
            (true, Some(rest)) => {
                let mut v6 = format!("KUBE-6-{rest}");
                v6.truncate(MAX_IPSET_NAME);
                v6
            }
            _ => name.to_owned(),
        }
    }

    /// The `ipset create` arguments after the name (kube-proxy's defaults: hashsize 1024,
    /// maxelem 65536; bitmap:port sets cover every port).
    pub fn create_args(self, ipv6: bool) -> String {
        if self.kind() == "bitmap:port" {
            return format!("{} range 0-65535", self.kind());
        }
        let family = if ipv6 { "inet6" } else { "inet" };
        format!(
            "{} family {family} hashsize 1024 maxelem 65536",
            self.kind()
        )
    }

    /// The set's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::ClusterIp => "KUBE-CLUSTER-IP",
            Self::LoopBack => "KUBE-LOOP-BACK",
            Self::ExternalIp => "KUBE-EXTERNAL-IP",
            Self::ExternalIpLocal => "KUBE-EXTERNAL-IP-LOCAL",
            Self::LoadBalancer => "KUBE-LOAD-BALANCER",
            Self::LoadBalancerLocal => "KUBE-LOAD-BALANCER-LOCAL",
            Self::LoadBalancerFw => "KUBE-LOAD-BALANCER-FW",
            Self::LoadBalancerSourceCidr => "KUBE-LOAD-BALANCER-SOURCE-CIDR",
            Self::LoadBalancerSourceIp => "KUBE-LOAD-BALANCER-SOURCE-IP",
            Self::NodePortTcp => "KUBE-NODE-PORT-TCP",
            Self::NodePortUdp => "KUBE-NODE-PORT-UDP",
            Self::NodePortLocalTcp => "KUBE-NODE-PORT-LOCAL-TCP",
            Self::NodePortLocalUdp => "KUBE-NODE-PORT-LOCAL-UDP",
            Self::NodePortSctp => "KUBE-NODE-PORT-SCTP",
            Self::NodePortLocalSctp => "KUBE-NODE-PORT-LOCAL-SCTP",
            Self::HealthCheckNodePort => "KUBE-HEALTH-CHECK-NODE-PORT",
            Self::IpvsIps => "KUBE-IPVS-IPS",
        }
    }

    /// The set's ipset type.
    pub fn kind(self) -> &'static str {
        match self {
            Self::LoopBack | Self::LoadBalancerSourceIp => "hash:ip,port,ip",
            Self::LoadBalancerSourceCidr => "hash:ip,port,net",
            Self::NodePortTcp
            | Self::NodePortUdp
            | Self::NodePortLocalTcp
            | Self::NodePortLocalUdp
            | Self::HealthCheckNodePort => "bitmap:port",
            Self::IpvsIps => "hash:ip",
            _ => "hash:ip,port",
        }
    }
}

/// Everything IPVS mode sets up for a node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpvsPlan {
    /// Virtual servers and their real servers.
    pub services: BTreeMap<VirtualServer, BTreeSet<RealServer>>,
    /// Addresses bound to [`DUMMY_DEVICE`].
    pub addresses: BTreeSet<IpAddr>,
    /// ipset entries, in `ipset add` syntax.
    pub ipsets: BTreeMap<IpSet, BTreeSet<String>>,
    /// Load balancers (address, protocol, port) whose source ranges leave out the node's
    /// address: the node's own connections to them are dropped (`KUBE-IPVS-OUT-FILTER`,
    /// kubernetes#119656).
    pub lb_no_node_access: BTreeSet<(IpAddr, IpvsProtocol, u16)>,
    /// The local-traffic detector of the family (`--detect-local-mode`, resolved for the
    /// node): off-cluster traffic to a cluster IP is masqueraded by it.
    pub local_traffic: Option<LocalTraffic>,
}

fn protocol(p: &Protocol) -> Option<IpvsProtocol> {
    match p {
        Protocol::Tcp => Some(IpvsProtocol::Tcp),
        Protocol::Udp => Some(IpvsProtocol::Udp),
        Protocol::Sctp => Some(IpvsProtocol::Sctp),
        _ => None,
    }
}

impl IpvsPlan {
    /// The plan for `snapshot` on this node, for one family.
    pub fn build(config: &IpvsConfig, snapshot: &Snapshot, ipv6: bool) -> Self {
        let family = if ipv6 { IpFamily::Ipv6 } else { IpFamily::Ipv4 };
        let node_ips: Vec<IpAddr> = match config.proxy.nodeport_ips(&family) {
            Some(ips) => ips,
            None => config
                .proxy
                .local_addresses
                .iter()
                .copied()
                .filter(|ip| IpFamily::of(ip) == family)
                .collect(),
        };
        let mut plan = Self {
            local_traffic: config.proxy.local_traffic(&family, &snapshot.node),
            ..Self::default()
        };
        // kube-proxy's `nodeIP`: the node's primary address of the family.
        let node_ip = snapshot.node.primary_ip(&family);
        for sp in snapshot.ports.values() {
            plan.add_port(config, sp, &family, &node_ips, node_ip);
        }
        let bound: Vec<String> = plan.addresses.iter().map(IpAddr::to_string).collect();
        plan.ipsets.entry(IpSet::IpvsIps).or_default().extend(bound);
        plan
    }

    fn add_port(
        &mut self,
        config: &IpvsConfig,
        sp: &ServicePort,
        family: &IpFamily,
        node_ips: &[IpAddr],
        node_ip: Option<IpAddr>,
    ) {
        let Some(plan) = sp.family(family) else {
            return;
        };
        let Some(proto) = protocol(sp.protocol()) else {
            return;
        };
        let (flags, timeout) = match sp.session_affinity_timeout {
            Some(t) => (FLAG_PERSISTENT, t),
            None => (0, 0),
        };
        let vs = |addr: IpAddr, port: u16| VirtualServer {
            addr,
            protocol: proto,
            port,
            scheduler: config.scheduler.as_str().to_owned(),
            flags: flags | config.scheduler.flags(),
            timeout,
        };
        let servers = |idx: &[u32]| -> BTreeSet<RealServer> {
            idx.iter()
                .map(|&i| RealServer::new(plan.endpoints[i as usize].addr()))
                .collect()
        };
        // Internal traffic as in every mode; external traffic as IPVS mode sends it, which
        // differs where `Traffic::ipvs_external` says.
        let internal = servers(plan.set(plan.traffic.internal));
        let external = servers(plan.set(plan.traffic.ipvs_external()));
        let entry = |ip: IpAddr, port: u16| format!("{ip},{}:{port}", proto.as_str());
        let set = |s: &mut Self, set: IpSet, e: String| {
            s.ipsets.entry(set).or_default().insert(e);
        };

        // ClusterIP.
        self.services.insert(vs(plan.cluster_ip, sp.port), internal);
        self.addresses.insert(plan.cluster_ip);
        set(self, IpSet::ClusterIp, entry(plan.cluster_ip, sp.port));
        // Hairpin: an endpoint on this node reaching itself through the service. Only local
        // ones, ready or not, as kube-proxy's `syncProxyRules` (pkg/proxy/ipvs/proxier.go:
        // `if !ep.IsLocal() { continue }`): a pod elsewhere never comes through this node's
        // IPVS to itself, and with every endpoint of a large cluster the set would outgrow
        // its 65536 elements (100k endpoints: "Hash is full").
        for ep in plan.endpoints.iter().filter(|ep| ep.is_local) {
            set(
                self,
                IpSet::LoopBack,
                format!("{},{}:{},{}", ep.ip, proto.as_str(), ep.port, ep.ip),
            );
        }
        let is_node = |ip: &IpAddr| config.proxy.local_addresses.contains(ip);
        // External IPs.
        for &ip in &plan.external_ips {
            self.services.insert(vs(ip, sp.port), external.clone());
            if !is_node(&ip) {
                self.addresses.insert(ip);
            }
            let s = if sp.external_policy_local {
                IpSet::ExternalIpLocal
            } else {
                IpSet::ExternalIp
            };
            set(self, s, entry(ip, sp.port));
        }
        // Load-balancer IPs.
        for &ip in &plan.load_balancer_ips {
            self.services.insert(vs(ip, sp.port), external.clone());
            if !is_node(&ip) {
                self.addresses.insert(ip);
            }
            set(self, IpSet::LoadBalancer, entry(ip, sp.port));
            if sp.external_policy_local {
                set(self, IpSet::LoadBalancerLocal, entry(ip, sp.port));
            }
            if !plan.load_balancer_source_ranges.is_empty() {
                set(self, IpSet::LoadBalancerFw, entry(ip, sp.port));
                for cidr in &plan.load_balancer_source_ranges {
                    set(
                        self,
                        IpSet::LoadBalancerSourceCidr,
                        format!("{},{cidr}", entry(ip, sp.port)),
                    );
                }
                // The node reaches a load balancer bound locally from the balancer's own
                // address: allowed if the node's address is in the ranges, else dropped.
                let node_allowed = node_ip.is_some_and(|n| {
                    plan.load_balancer_source_ranges
                        .iter()
                        .any(|c| c.contains(&n))
                });
                if node_allowed {
                    set(
                        self,
                        IpSet::LoadBalancerSourceIp,
                        format!("{},{ip}", entry(ip, sp.port)),
                    );
                } else {
                    self.lb_no_node_access.insert((ip, proto, sp.port));
                }
            }
        }
        // Node ports: a virtual server per node address.
        if let Some(np) = sp.node_port {
            for &ip in node_ips {
                self.services.insert(vs(ip, np), external.clone());
            }
            match (proto, sp.external_policy_local) {
                (IpvsProtocol::Tcp, false) => set(self, IpSet::NodePortTcp, np.to_string()),
                (IpvsProtocol::Tcp, true) => set(self, IpSet::NodePortLocalTcp, np.to_string()),
                (IpvsProtocol::Udp, false) => set(self, IpSet::NodePortUdp, np.to_string()),
                (IpvsProtocol::Udp, true) => set(self, IpSet::NodePortLocalUdp, np.to_string()),
                // SCTP node ports are matched per node address (a bitmap:port set has no
                // protocol): as kube-proxy, hash:ip,port entries.
                (IpvsProtocol::Sctp, local) => {
                    let s = if local {
                        IpSet::NodePortLocalSctp
                    } else {
                        IpSet::NodePortSctp
                    };
                    for &ip in node_ips {
                        set(self, s, entry(ip, np));
                    }
                }
            }
        }
        if let Some(hc) = sp.health_check_node_port {
            set(self, IpSet::HealthCheckNodePort, hc.to_string());
        }
    }

    /// The real servers of a virtual server at this address and port.
    pub fn real_servers(
        &self,
        addr: SocketAddr,
        protocol: IpvsProtocol,
    ) -> Option<&BTreeSet<RealServer>> {
        self.services
            .iter()
            .find(|(vs, _)| {
                vs.addr == addr.ip() && vs.port == addr.port() && vs.protocol == protocol
            })
            .map(|(_, rs)| rs)
    }
}

/// The plan as `render` prints it: `ipvsadm -S -n` lines, then the addresses to bind and
/// the ipset entries as comments-free commands.
impl fmt::Display for IpvsPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# ipvsadm -S -n")?;
        for (vs, servers) in &self.services {
            writeln!(f, "{vs}")?;
            for rs in servers {
                writeln!(f, "{}", rs.save_line(vs))?;
            }
        }
        writeln!(f, "# ip link add {DUMMY_DEVICE} type dummy")?;
        for ip in &self.addresses {
            let len = if ip.is_ipv4() { 32 } else { 128 };
            writeln!(f, "# ip addr add {ip}/{len} dev {DUMMY_DEVICE}")?;
        }
        for (set, entries) in &self.ipsets {
            writeln!(f, "# ipset create {} {}", set.name(), set.kind())?;
            for e in entries {
                writeln!(f, "# ipset add {} {e}", set.name())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{Packet, Verdict};
    use service_testkit::fixtures;

    const SCTP: &str = "
apiVersion: v1
kind: Service
metadata: {name: sig, namespace: t}
spec:
  type: NodePort
  clusterIP: 10.96.0.30
  ports: [{name: sig, port: 3868, protocol: SCTP, nodePort: 30868}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sig-1, namespace: t, labels: {kubernetes.io/service-name: sig}}
addressType: IPv4
ports: [{name: sig, port: 3868, protocol: SCTP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node-n}
";

    /// kube-proxy keeps SCTP node ports in hash:ip,port sets, one entry per node address
    /// (`KUBE-NODE-PORT-SCTP`), since a bitmap:port set cannot tell protocols apart.
    #[test]
    fn sctp_node_ports_are_matched_per_node_address() {
        let snap = fixtures::snapshot(SCTP, "node-n", &["192.168.0.2", "192.168.1.2"]);
        let mut proxy = ProxyConfig::default();
        proxy.local_addresses = vec![
            "192.168.0.2".parse().unwrap(),
            "192.168.1.2".parse().unwrap(),
        ];
        let config = IpvsConfig::new(proxy);
        let plan = IpvsPlan::build(&config, &snap, false);
        let entries: Vec<&str> = plan.ipsets[&IpSet::NodePortSctp]
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(
            entries,
            ["192.168.0.2,sctp:30868", "192.168.1.2,sctp:30868"]
        );
        assert!(!plan.ipsets.contains_key(&IpSet::NodePortTcp));
        let rules = super::super::rules::render(&plan, &config, false);
        assert!(rules.nat.contains(
            &"-A KUBE-NODE-PORT -p sctp -m set --match-set KUBE-NODE-PORT-SCTP dst,dst -j KUBE-MARK-MASQ"
                .to_owned()
        ));
        let packet = Packet::new(
            "192.168.0.100".parse().unwrap(),
            "192.168.1.2".parse().unwrap(),
            30868,
            Protocol::Sctp,
        );
        assert!(plan.trace(&config, &packet).masquerade());
    }

    const HAIRPIN: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: t}
spec:
  clusterIP: 10.96.0.40
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: t, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.244.1.10], nodeName: node-n}
- {addresses: [10.244.1.11], nodeName: node-n, conditions: {ready: false}}
- {addresses: [10.244.2.10], nodeName: node-m}
";

    /// Surprise: `KUBE-LOOP-BACK` holds only the endpoints on this node, ready or not
    /// (kube-proxy's pkg/proxy/ipvs/proxier.go, `syncProxyRules`: `if !ep.IsLocal()
    /// { continue }` over every endpoint of the service port). A pod on another node
    /// reaching itself through its own node's IPVS is that node's business.
    #[test]
    fn only_local_endpoints_are_hairpin_masqueraded() {
        let snap = fixtures::snapshot(HAIRPIN, "node-n", &["192.168.0.2"]);
        let config = IpvsConfig::new(ProxyConfig::default());
        let plan = IpvsPlan::build(&config, &snap, false);
        let entries: Vec<&str> = plan.ipsets[&IpSet::LoopBack]
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(
            entries,
            [
                "10.244.1.10,tcp:8080,10.244.1.10",
                "10.244.1.11,tcp:8080,10.244.1.11"
            ]
        );
        let from = |src: &str| {
            let packet = Packet::new(
                src.parse().unwrap(),
                "10.96.0.40".parse().unwrap(),
                80,
                Protocol::Tcp,
            );
            plan.trace(&config, &packet)
        };
        // The local endpoint reaching itself is masqueraded; reaching the other one is not.
        let verdict = from("10.244.1.10");
        let Verdict::Endpoints(dests) = &verdict else {
            panic!("{verdict:?}")
        };
        let masqueraded: Vec<(String, bool)> = dests
            .iter()
            .map(|d| (d.endpoint.to_string(), d.masquerade))
            .collect();
        assert_eq!(
            masqueraded,
            [
                ("10.244.1.10:8080".to_owned(), true),
                ("10.244.2.10:8080".to_owned(), false)
            ]
        );
    }
}
