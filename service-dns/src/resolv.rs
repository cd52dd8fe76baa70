//! The `/etc/resolv.conf` kubelet writes into a pod (`pkg/kubelet/network/dns`): cluster
//! name servers and search path for `ClusterFirst`, the node's file for `Default`, nothing
//! but `dnsConfig` for `None`, then `dnsConfig` merged in and the resolver's limits applied.

use std::fmt;
use std::net::IpAddr;

use service_core::model::{DnsPolicy, Pod};

/// At most this many name servers (glibc's `MAXNS`).
pub const MAX_NAMESERVERS: usize = 3;
/// At most this many search domains (`ExpandedDNSConfig`, GA since 1.28).
pub const MAX_SEARCH_PATHS: usize = 32;
/// At most this many characters on the search line.
pub const MAX_SEARCH_CHARS: usize = 2048;
/// Longer search domains are dropped (glibc 2.28 aborts on them).
pub const MAX_SEARCH_DOMAIN: usize = 253;

/// A resolver configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResolvConf {
    /// `nameserver` lines.
    pub nameservers: Vec<String>,
    /// The `search` line.
    pub searches: Vec<String>,
    /// The `options` line (`ndots:5`).
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parses a resolv.conf as kubelet does: name servers accumulate, the last `search`
    /// and the last `options` line win, trailing dots on search domains are dropped.
    ///
    /// # Errors
    /// A `nameserver` line without an address.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut conf = Self::default();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.first().copied() {
                Some("nameserver") => match fields.get(1) {
                    Some(ns) => conf.nameservers.push((*ns).to_owned()),
                    None => return Err("nameserver list is empty".into()),
                },
                Some("search") => {
                    conf.searches = fields[1..]
                        .iter()
                        .map(|s| s.trim_end_matches('.').to_owned())
                        .collect();
                }
                Some("options") => {
                    conf.options = fields[1..].iter().map(|s| (*s).to_owned()).collect()
                }
                _ => {}
            }
        }
        Ok(conf)
    }
}

impl fmt::Display for ResolvConf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for ns in &self.nameservers {
            writeln!(f, "nameserver {ns}")?;
        }
        if !self.searches.is_empty() {
            writeln!(f, "search {}", self.searches.join(" "))?;
        }
        if !self.options.is_empty() {
            writeln!(f, "options {}", self.options.join(" "))?;
        }
        Ok(())
    }
}

/// The kubelet settings that shape pod DNS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KubeletDns {
    /// `--cluster-dns`.
    pub cluster_dns: Vec<IpAddr>,
    /// `--cluster-domain`.
    pub cluster_domain: String,
    /// The node's resolver file (`--resolv-conf`), parsed; `None` when the flag is empty.
    pub host: Option<ResolvConf>,
    /// The node's IPs (for the `Default` policy without `--resolv-conf`).
    pub node_ips: Vec<IpAddr>,
}

/// A pod's resolver configuration and the warnings kubelet would record as events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PodDns {
    /// The file.
    pub conf: ResolvConf,
    /// `DNSConfigForming` / `MissingClusterDNS` warnings.
    pub warnings: Vec<String>,
}

fn dedup(list: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for s in list {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Kubelet's `GetPodDNS`. Option order: kubelet merges options in a Go map (random order);
/// here the base options come first, in order, then new ones from `dnsConfig`.
pub fn pod_dns(pod: &Pod, kubelet: &KubeletDns) -> PodDns {
    let mut warnings = Vec::new();
    let host = kubelet.host.clone().unwrap_or_default();
    let host_network = pod.spec.host_network.unwrap_or(false);
    let policy = pod
        .spec
        .dns_policy
        .clone()
        .unwrap_or(DnsPolicy::ClusterFirst);
    enum Kind {
        Cluster,
        Host,
        None,
    }
    let kind = match policy {
        DnsPolicy::None => Kind::None,
        DnsPolicy::ClusterFirstWithHostNet => Kind::Cluster,
        DnsPolicy::ClusterFirst if !host_network => Kind::Cluster,
        _ => Kind::Host,
    };
    let mut conf = host.clone();
    let use_host = match kind {
        Kind::None => {
            conf = ResolvConf::default();
            false
        }
        Kind::Cluster if !kubelet.cluster_dns.is_empty() => {
            conf.nameservers = kubelet
                .cluster_dns
                .iter()
                .map(ToString::to_string)
                .collect();
            if !kubelet.cluster_domain.is_empty() {
                let d = &kubelet.cluster_domain;
                let ns = pod.metadata.namespace();
                let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
                searches.extend(host.searches.iter().cloned());
                conf.searches = dedup(searches);
            }
            conf.options = vec!["ndots:5".into()];
            false
        }
        Kind::Cluster => {
            warnings.push(
                "kubelet does not have ClusterDNS IP configured and cannot create Pod using \"ClusterFirst\" policy. Falling back to \"Default\" policy.".into(),
            );
            true
        }
        Kind::Host => true,
    };
    if use_host && kubelet.host.is_none() {
        conf.nameservers = kubelet
            .node_ips
            .iter()
            .map(|ip| if ip.is_ipv6() { "::1" } else { "127.0.0.1" }.to_owned())
            .collect();
        if conf.nameservers.is_empty() {
            conf.nameservers.push("127.0.0.1".into());
        }
        conf.searches = vec![".".into()];
    }
    if let Some(extra) = &pod.spec.dns_config {
        conf.nameservers.extend(extra.nameservers.iter().cloned());
        conf.nameservers = dedup(std::mem::take(&mut conf.nameservers));
        conf.searches.extend(extra.searches.iter().cloned());
        conf.searches = dedup(std::mem::take(&mut conf.searches));
        // Options merge by name; the pod's value wins.
        let mut opts: Vec<(String, String)> = conf
            .options
            .iter()
            .map(|o| match o.split_once(':') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (o.clone(), String::new()),
            })
            .collect();
        for o in &extra.options {
            let value = o.value.clone().unwrap_or_default();
            match opts.iter_mut().find(|(k, _)| *k == o.name) {
                Some(existing) => existing.1 = value,
                None => opts.push((o.name.clone(), value)),
            }
        }
        conf.options = opts
            .into_iter()
            .map(|(k, v)| if v.is_empty() { k } else { format!("{k}:{v}") })
            .collect();
    }
    // Limits.
    if conf.nameservers.len() > MAX_NAMESERVERS {
        conf.nameservers.truncate(MAX_NAMESERVERS);
        warnings.push(format!(
            "Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: {}",
            conf.nameservers.join(" ")
        ));
    }
    let mut exceeded = false;
    if conf.searches.len() > MAX_SEARCH_PATHS {
        conf.searches.truncate(MAX_SEARCH_PATHS);
        exceeded = true;
    }
    let before = conf.searches.len();
    conf.searches.retain(|s| s.len() <= MAX_SEARCH_DOMAIN);
    exceeded |= conf.searches.len() != before;
    let mut line = conf.searches.join(" ").len();
    while line > MAX_SEARCH_CHARS {
        let Some(last) = conf.searches.pop() else {
            break;
        };
        line -= last.len() + usize::from(!conf.searches.is_empty());
        exceeded = true;
    }
    if exceeded {
        warnings.push(format!(
            "Search Line limits were exceeded, some search paths have been omitted, the applied search line is: {}",
            conf.searches.join(" ")
        ));
    }
    PodDns { conf, warnings }
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_core::model::{PodDnsConfig, PodDnsConfigOption};

    fn kubelet() -> KubeletDns {
        KubeletDns {
            cluster_dns: vec!["10.96.0.10".parse().unwrap()],
            cluster_domain: "cluster.local".into(),
            host: Some(
                ResolvConf::parse(
                    "nameserver 192.168.0.1\nsearch corp.example. lab.example\noptions timeout:2\n",
                )
                .unwrap(),
            ),
            node_ips: vec!["192.168.0.2".parse().unwrap()],
        }
    }

    fn pod(ns: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some(ns.into());
        p.metadata.name = Some("p".into());
        p
    }

    #[test]
    fn cluster_first() {
        let d = pod_dns(&pod("shop"), &kubelet());
        assert_eq!(
            d.conf.to_string(),
            "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example\noptions ndots:5\n"
        );
        assert!(d.warnings.is_empty());
    }

    #[test]
    fn host_network_falls_back_to_default_unless_asked() {
        let mut p = pod("shop");
        p.spec.host_network = Some(true);
        let d = pod_dns(&p, &kubelet());
        assert_eq!(d.conf.nameservers, ["192.168.0.1"]);
        assert_eq!(d.conf.options, ["timeout:2"]);
        p.spec.dns_policy = Some(DnsPolicy::ClusterFirstWithHostNet);
        assert_eq!(pod_dns(&p, &kubelet()).conf.nameservers, ["10.96.0.10"]);
    }

    #[test]
    fn default_without_resolv_conf_uses_localhost() {
        let mut k = kubelet();
        k.host = None;
        k.node_ips.push("fd00::2".parse().unwrap());
        let mut p = pod("a");
        p.spec.dns_policy = Some(DnsPolicy::Default);
        let d = pod_dns(&p, &k);
        assert_eq!(d.conf.nameservers, ["127.0.0.1", "::1"]);
        assert_eq!(d.conf.searches, ["."]);
    }

    #[test]
    fn none_and_dns_config_merging() {
        let mut p = pod("a");
        p.spec.dns_policy = Some(DnsPolicy::None);
        let mut cfg = PodDnsConfig::default();
        cfg.nameservers = vec!["1.1.1.1".into(), "1.1.1.1".into()];
        cfg.searches = vec!["x.example".into()];
        let mut ndots = PodDnsConfigOption::default();
        ndots.name = "ndots".into();
        ndots.value = Some("2".into());
        let mut edns = PodDnsConfigOption::default();
        edns.name = "edns0".into();
        cfg.options = vec![ndots, edns];
        p.spec.dns_config = Some(cfg.clone());
        let d = pod_dns(&p, &kubelet());
        assert_eq!(
            d.conf.to_string(),
            "nameserver 1.1.1.1\nsearch x.example\noptions ndots:2 edns0\n"
        );
        // ClusterFirst plus dnsConfig: the pod's ndots replaces the default.
        let mut p = pod("a");
        p.spec.dns_config = Some(cfg);
        let d = pod_dns(&p, &kubelet());
        assert_eq!(d.conf.options, ["ndots:2", "edns0"]);
        assert_eq!(d.conf.nameservers, ["10.96.0.10", "1.1.1.1"]);
    }

    #[test]
    fn limits_and_missing_cluster_dns() {
        let mut p = pod("a");
        let mut cfg = PodDnsConfig::default();
        cfg.nameservers = (1..=4).map(|i| format!("10.0.0.{i}")).collect();
        cfg.searches = (0..40).map(|i| format!("d{i}.example")).collect();
        cfg.searches.push("x".repeat(254));
        p.spec.dns_config = Some(cfg);
        let d = pod_dns(&p, &kubelet());
        assert_eq!(d.conf.nameservers.len(), 3);
        assert_eq!(d.conf.searches.len(), 32);
        assert_eq!(d.warnings.len(), 2);
        let mut k = kubelet();
        k.cluster_dns.clear();
        let d = pod_dns(&pod("a"), &k);
        assert_eq!(d.conf.nameservers, ["192.168.0.1"]);
        assert!(d.warnings[0].contains("ClusterFirst"));
    }
}
