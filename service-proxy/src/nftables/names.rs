//! kube-proxy's nftables object names (`hashAndTruncate` and `servicePortChainNameBase` in
//! `pkg/proxy/nftables/proxier.go`).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use sha2::{Digest, Sha256};

use service_core::snapshot::ServicePortName;

/// The longest name nft accepts (`NFT_NAME_MAXLEN` minus the terminating NUL).
pub const NAME_MAX: usize = 255;

/// `base32(sha256(name))[:8] + "-" + name`, truncated as kube-proxy does when the result
/// would not leave room for the longest prefix (`endpoint-`) within nft's name limit.
pub fn hash_and_truncate(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let mut hash = [0u8; 8];
    // 8 base32 characters are exactly 5 bytes.
    data_encoding::BASE32_NOPAD.encode_mut(&digest[..5], &mut hash);
    // Base32 output is ASCII.
    let hash = std::str::from_utf8(&hash).unwrap_or_default();
    // kube-proxy keeps base names within 240 bytes, ending them with "..." when cut.
    const MAX: usize = 240;
    let mut out = String::with_capacity((hash.len() + 1 + name.len()).min(MAX));
    out.push_str(hash);
    out.push('-');
    if out.len() + name.len() <= MAX {
        out.push_str(name);
    } else {
        let mut cut = MAX - out.len() - 3;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push_str(&name[..cut]);
        out.push_str("...");
    }
    out
}

/// `ns/svc/proto/portName`: the name a service port's objects are derived from.
pub fn service_base_name(name: &ServicePortName) -> String {
    let mut s = String::with_capacity(
        name.service.namespace.len() + name.service.name.len() + name.port.len() + 8,
    );
    s.push_str(&name.service.namespace);
    s.push('/');
    s.push_str(&name.service.name);
    s.push('/');
    s.push_str(name.protocol.lower());
    s.push('/');
    s.push_str(&name.port);
    s
}

/// The hashed base of a service port's chains (`service-`, `external-`, `local-`,
/// `firewall-` + this).
pub fn service_base(name: &ServicePortName) -> String {
    hash_and_truncate(&service_base_name(name))
}

/// The hashed base of an endpoint's chain and affinity set: the service port's base name,
/// `__`, and `ip/port` with an IPv6 address's colons turned into dots.
pub fn endpoint_base(service_base_name: &str, endpoint: &SocketAddr) -> String {
    let mut s = String::with_capacity(service_base_name.len() + 48);
    s.push_str(service_base_name);
    s.push_str("__");
    match endpoint.ip() {
        IpAddr::V4(ip) => {
            let _ = write!(s, "{ip}");
        }
        IpAddr::V6(ip) => {
            let start = s.len();
            let _ = write!(s, "{ip}");
            // Replace in place: ':' and '.' are both one byte.
            let tail: String = s[start..].replace(':', ".");
            s.truncate(start);
            s.push_str(&tail);
        }
    }
    let _ = write!(s, "/{}", endpoint.port());
    hash_and_truncate(&s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_core::model::Protocol;

    // Names from kube-proxy's own test expectations (TestOverallNFTablesRules in
    // pkg/proxy/nftables/proxier_test.go).
    #[test]
    fn names_match_kube_proxy() {
        let name = ServicePortName::new("ns1", "svc1", "p80", Protocol::Tcp);
        assert_eq!(service_base(&name), "ULMVA6XW-ns1/svc1/tcp/p80");
        let ep = endpoint_base(&service_base_name(&name), &"10.180.0.1:80".parse().unwrap());
        assert_eq!(ep, "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80");
        let name = ServicePortName::new("ns4", "svc4", "p80", Protocol::Tcp);
        assert_eq!(service_base(&name), "LAUZTJTB-ns4/svc4/tcp/p80");
        let ep = endpoint_base(&service_base_name(&name), &"10.180.0.4:80".parse().unwrap());
        assert_eq!(ep, "UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80");
        let ep = endpoint_base(&service_base_name(&name), &"10.180.0.5:80".parse().unwrap());
        assert_eq!(ep, "5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80");
    }

    #[test]
    fn ipv6_endpoints_use_dots_and_long_names_are_cut() {
        let name = ServicePortName::new("ns", "svc", "", Protocol::Udp);
        assert_eq!(service_base_name(&name), "ns/svc/udp/");
        let ep = endpoint_base("ns/svc/udp/", &"[fd00::1]:53".parse().unwrap());
        assert!(ep.ends_with("-ns/svc/udp/__fd00..1/53"), "{ep}");
        let long = "n".repeat(300);
        let cut = hash_and_truncate(&long);
        assert_eq!(cut.len(), 240);
        assert!(cut.ends_with("..."));
        assert!(format!("endpoint-{cut}").len() <= NAME_MAX);
    }
}
