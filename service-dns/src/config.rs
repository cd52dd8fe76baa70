//! What the cluster DNS serves and how (the CoreDNS `kubernetes` plugin's options).

use std::net::IpAddr;

/// Pod records (`1-2-3-4.ns.pod.cluster.local`), CoreDNS's `pods` option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PodRecords {
    /// No pod records (the plugin's default; the spec dropped them in 1.1.0).
    #[default]
    Disabled,
    /// Any well-formed dashed address in an existing namespace answers with itself
    /// (kubeadm's `pods insecure`).
    Insecure,
    /// Only addresses of pods known to be in that namespace.
    Verified,
}

/// DNS configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DnsConfig {
    /// The cluster domain (`cluster.local`), lowercase, without trailing dot.
    pub zone: String,
    /// TTL of every record (kubeadm's Corefile: 30 s).
    pub ttl: u32,
    /// Pod records.
    pub pods: PodRecords,
    /// Answer PTR queries under `in-addr.arpa` and `ip6.arpa` for cluster and endpoint IPs.
    pub reverse: bool,
    /// Name endpoints without a hostname after their pod (`endpoint_pod_names`) instead of
    /// their dashed address.
    pub endpoint_pod_names: bool,
    /// Addresses for `ns.dns.<zone>` (the NS record's glue). Empty: the cluster IPs of
    /// `kube-system/kube-dns`, if that Service exists.
    pub ns_ips: Vec<IpAddr>,
    /// SOA serial to start from (CoreDNS uses the time of the last change).
    pub serial: u32,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            zone: "cluster.local".into(),
            ttl: 30,
            pods: PodRecords::Disabled,
            reverse: true,
            endpoint_pod_names: false,
            ns_ips: Vec::new(),
            serial: 1,
        }
    }
}

impl DnsConfig {
    /// The default configuration for `zone` (`cluster.local`; a trailing dot is removed).
    pub fn for_zone(zone: &str) -> Self {
        Self {
            zone: zone.trim_end_matches('.').to_ascii_lowercase(),
            ..Self::default()
        }
    }
}

/// TTL of the `dns-version` TXT record (the specification's example).
pub const DNS_VERSION_TTL: u32 = 28800;
/// The schema version served in `dns-version.<zone>`.
pub const DNS_SCHEMA_VERSION: &str = "1.1.0";
