//! Where a new connection goes on a node in IPVS mode, from the plan alone: the virtual
//! server that catches it (or the `KUBE-IPVS-FILTER` reject, or the load-balancer
//! source-range drop), and whether the fixed iptables rules mark it for masquerade.
//! Pure. The model of the kernel path:
//!
//! 1. filter `KUBE-PROXY-FIREWALL` (INPUT, before IPVS): a load balancer with source
//!    ranges drops other sources; the node's own packets skip INPUT, and are dropped by
//!    `KUBE-IPVS-OUT-FILTER` when the ranges leave out the node's address;
//! 2. IPVS: a virtual server with real servers DNATs to one of them; one without real
//!    servers lets the packet reach the node's own stack (nothing listens: refused);
//! 3. filter `KUBE-IPVS-FILTER`: a new connection to a bound virtual address on a port that
//!    is no service is rejected;
//! 4. nat `KUBE-SERVICES` (before IPVS) marks for masquerade; `KUBE-LOOP-BACK` masquerades
//!    an endpoint reaching itself.

use std::net::IpAddr;

use service_core::model::Protocol;

use super::model::IpvsProtocol;
use super::plan::{IpSet, IpvsConfig, IpvsPlan};
use crate::trace::{Destination, Packet, Verdict};

impl IpvsPlan {
    /// Where `packet` goes. `config` is the one the plan was built with.
    pub fn trace(&self, config: &IpvsConfig, packet: &Packet) -> Verdict {
        let proto = match packet.protocol {
            Protocol::Tcp => IpvsProtocol::Tcp,
            Protocol::Udp => IpvsProtocol::Udp,
            Protocol::Sctp => IpvsProtocol::Sctp,
            _ => return Verdict::NotHandled,
        };
        let (src, dst, port) = (packet.src, packet.dst, packet.dport);
        let has = |set: IpSet, entry: &str| self.in_set(set, entry);
        let key = format!("{dst},{}:{port}", proto.as_str());
        let local = |ip: &IpAddr| {
            ip.is_loopback()
                || config.proxy.local_addresses.contains(ip)
                || self.addresses.contains(ip)
        };
        let from_node = local(&src);
        if from_node && self.lb_no_node_access.contains(&(dst, proto, port)) {
            // KUBE-IPVS-OUT-FILTER.
            return Verdict::Drop;
        }
        if !from_node && has(IpSet::LoadBalancerFw, &key) {
            let allowed = self
                .ipsets
                .get(&IpSet::LoadBalancerSourceCidr)
                .into_iter()
                .flatten()
                .filter_map(|e| e.strip_prefix(&key)?.strip_prefix(','))
                .filter_map(|cidr| cidr.parse::<ipnet::IpNet>().ok())
                .any(|net| net.contains(&src))
                || has(IpSet::LoadBalancerSourceIp, &format!("{key},{src}"));
            if !allowed {
                return Verdict::Drop;
            }
        }
        let servers = self
            .services
            .iter()
            .find(|(vs, _)| vs.addr == dst && vs.protocol == proto && vs.port == port)
            .map(|(_, rs)| rs);
        match servers {
            Some(rs) if !rs.is_empty() => {
                let masq = self.masquerade(config, packet, proto, &key, local(&dst));
                Verdict::Endpoints(
                    rs.iter()
                        .map(|r| Destination {
                            endpoint: r.addr,
                            // KUBE-LOOP-BACK (`dst,dst,src`): a local endpoint
                            // reaching itself.
                            masquerade: masq
                                || self.in_set(
                                    IpSet::LoopBack,
                                    &format!(
                                        "{},{}:{},{src}",
                                        r.addr.ip(),
                                        proto.as_str(),
                                        r.addr.port()
                                    ),
                                ),
                        })
                        .collect(),
                )
            }
            // No real server: the bound address takes it, nothing listens.
            Some(_) => Verdict::Reject,
            None if self.addresses.contains(&dst) => {
                let service = [
                    IpSet::LoadBalancer,
                    IpSet::ClusterIp,
                    IpSet::ExternalIp,
                    IpSet::ExternalIpLocal,
                ]
                .into_iter()
                .any(|s| has(s, &key))
                    || has(IpSet::HealthCheckNodePort, &port.to_string());
                if service {
                    Verdict::NotHandled
                } else {
                    Verdict::Reject
                }
            }
            None => Verdict::NotHandled,
        }
    }

    /// Whether the plan puts `entry` into `set`.
    fn in_set(&self, set: IpSet, entry: &str) -> bool {
        self.ipsets.get(&set).is_some_and(|e| e.contains(entry))
    }

    /// Whether nat `KUBE-SERVICES` marks the packet for masquerade.
    fn masquerade(
        &self,
        config: &IpvsConfig,
        packet: &Packet,
        proto: IpvsProtocol,
        key: &str,
        dst_local: bool,
    ) -> bool {
        let has = |set: IpSet, entry: &str| self.in_set(set, entry);
        let src = packet.src;
        if src.is_loopback() {
            return false;
        }
        let mut mark = false;
        if has(IpSet::LoadBalancer, key) && !has(IpSet::LoadBalancerLocal, key) {
            mark = true;
        }
        if has(IpSet::ClusterIp, key) {
            mark |= if config.proxy.masquerade_all {
                true
            } else if let Some(local) = &self.local_traffic {
                !local.matches(&src, &packet.in_interface)
            } else {
                // src,dst: the source is a virtual address, on the destination's port.
                has(
                    IpSet::ClusterIp,
                    &format!("{src},{}:{}", proto.as_str(), packet.dport),
                )
            };
        }
        if has(IpSet::ExternalIp, key) {
            mark = true;
        }
        // Both external-IP sets end the chain with ACCEPT before the node-port jump.
        if has(IpSet::ExternalIp, key) || has(IpSet::ExternalIpLocal, key) {
            return mark;
        }
        if dst_local {
            let (all, only_local, entry) = match proto {
                IpvsProtocol::Tcp => (
                    IpSet::NodePortTcp,
                    IpSet::NodePortLocalTcp,
                    packet.dport.to_string(),
                ),
                IpvsProtocol::Udp => (
                    IpSet::NodePortUdp,
                    IpSet::NodePortLocalUdp,
                    packet.dport.to_string(),
                ),
                IpvsProtocol::Sctp => (
                    IpSet::NodePortSctp,
                    IpSet::NodePortLocalSctp,
                    key.to_owned(),
                ),
            };
            if !has(only_local, &entry) && has(all, &entry) {
                mark = true;
            }
        }
        mark
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::model::{RealServer, VirtualServer};
    use crate::{LocalTraffic, ProxyConfig};

    fn plan() -> (IpvsPlan, IpvsConfig) {
        let mut proxy = ProxyConfig::default();
        proxy.local_addresses = vec!["192.168.0.2".parse().unwrap()];
        proxy.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
        let config = IpvsConfig::new(proxy);
        let mut p = IpvsPlan {
            local_traffic: Some(LocalTraffic::Source("10.244.0.0/16".parse().unwrap())),
            ..IpvsPlan::default()
        };
        let vs = |addr: &str, port| VirtualServer {
            addr: addr.parse().unwrap(),
            protocol: IpvsProtocol::Tcp,
            port,
            scheduler: "rr".into(),
            flags: 0,
            timeout: 0,
        };
        let rs = |a: &str| RealServer::new(a.parse().unwrap());
        p.services
            .insert(vs("10.96.0.10", 80), [rs("10.244.1.10:8080")].into());
        p.services
            .insert(vs("192.168.0.2", 30080), [rs("10.244.1.10:8080")].into());
        p.services.insert(vs("10.96.0.17", 80), Default::default());
        p.addresses = ["10.96.0.10", "10.96.0.17"]
            .map(|a| a.parse().unwrap())
            .into();
        let mut set = |s, e: &str| {
            p.ipsets.entry(s).or_default().insert(e.to_owned());
        };
        set(IpSet::ClusterIp, "10.96.0.10,tcp:80");
        set(IpSet::ClusterIp, "10.96.0.17,tcp:80");
        set(IpSet::NodePortTcp, "30080");
        set(IpSet::LoopBack, "10.244.1.10,tcp:8080,10.244.1.10");
        (p, config)
    }

    fn packet(src: &str, dst: &str, port: u16) -> Packet {
        Packet::new(
            src.parse().unwrap(),
            dst.parse().unwrap(),
            port,
            Protocol::Tcp,
        )
    }

    fn trace(src: &str, dst: &str, port: u16) -> Verdict {
        let (p, c) = plan();
        p.trace(&c, &packet(src, dst, port))
    }

    fn masq(v: &Verdict) -> Option<bool> {
        matches!(v, Verdict::Endpoints(_)).then(|| v.masquerade())
    }

    #[test]
    fn cluster_ip_masquerades_off_cluster_sources_only() {
        assert_eq!(masq(&trace("10.244.2.5", "10.96.0.10", 80)), Some(false));
        assert_eq!(masq(&trace("192.168.0.100", "10.96.0.10", 80)), Some(true));
        // Hairpin.
        assert_eq!(masq(&trace("10.244.1.10", "10.96.0.10", 80)), Some(true));
    }

    #[test]
    fn an_interface_detector_looks_at_the_input_interface_only() {
        let (mut p, c) = plan();
        p.local_traffic = Some(LocalTraffic::Interface {
            name: "cali".into(),
            prefix: true,
        });
        let via = |src, iif| masq(&p.trace(&c, &packet(src, "10.96.0.10", 80).on_interface(iif)));
        assert_eq!(via("10.244.2.5", "cali1234"), Some(false));
        // The address no longer matters: an outside address on a pod interface is local,
        // a pod address arriving on the uplink is not.
        assert_eq!(via("192.168.0.100", "cali9"), Some(false));
        assert_eq!(via("10.244.2.5", "eth0"), Some(true));
        // The node's own packets have no input interface.
        assert_eq!(via("192.168.0.2", ""), Some(true));
    }

    #[test]
    fn other_ports_of_a_virtual_address_are_rejected_and_empty_services_refused() {
        assert_eq!(trace("10.244.2.5", "10.96.0.10", 81), Verdict::Reject);
        assert_eq!(trace("10.244.2.5", "10.96.0.17", 80), Verdict::Reject);
        assert_eq!(trace("10.244.2.5", "10.1.2.3", 80), Verdict::NotHandled);
    }

    #[test]
    fn node_ports_are_masqueraded() {
        assert_eq!(
            masq(&trace("192.168.0.100", "192.168.0.2", 30080)),
            Some(true)
        );
        // Not on localhost: IPVS mode has no virtual server there.
        assert_eq!(trace("127.0.0.1", "127.0.0.1", 30080), Verdict::NotHandled);
    }
}
