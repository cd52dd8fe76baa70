//! kube-proxy's nftables object names (`hashAndTruncate` and `servicePortChainNameBase` in
//! `pkg/proxy/nftables/proxier.go`).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use sha2::{Digest, Sha256};

use service_core::snapshot::ServicePortName;

use super::model::Name;

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

/// kube-proxy's limit for a hashed base name.
const BASE_MAX: usize = 240;

fn hash8(name: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(name);
    let mut hash = [0u8; 8];
    data_encoding::BASE32_NOPAD.encode_mut(&digest[..5], &mut hash);
    hash
}

/// `prefix + hash_and_truncate(name)` as a [`Name`], built in one allocation.
pub(crate) fn prefixed(prefix: &str, name: &str) -> Name {
    if 9 + name.len() > BASE_MAX || prefix.len() > 32 {
        let mut s = String::from(prefix);
        s.push_str(&hash_and_truncate(name));
        return Name::from(s);
    }
    let mut buf = [0u8; 32 + BASE_MAX];
    let n = write_prefixed(&mut buf, prefix, &hash8(name.as_bytes()), name.as_bytes());
    // Built from UTF-8 pieces and ASCII.
    Name::from(std::str::from_utf8(&buf[..n]).unwrap_or_default())
}

fn write_prefixed(buf: &mut [u8], prefix: &str, hash: &[u8; 8], name: &[u8]) -> usize {
    let mut n = 0;
    for part in [prefix.as_bytes(), &hash[..], b"-", name] {
        buf[n..n + part.len()].copy_from_slice(part);
        n += part.len();
    }
    n
}

/// The endpoint chain's name and, when asked, the affinity set's (see [`endpoint_base`]),
/// without intermediate strings.
pub(crate) fn endpoint_names(
    service_base_name: &str,
    endpoint: &SocketAddr,
    affinity: bool,
) -> (Name, Option<Name>) {
    // One buffer: "endpoint-" + hash + "-" + base name, the base name written first.
    const HEAD: usize = "endpoint-".len() + 8 + 1;
    let mut out = [0u8; HEAD + BASE_MAX];
    let mut n = HEAD;
    let mut fits = true;
    let mut push = |bytes: &[u8], n: &mut usize| {
        if *n + bytes.len() > out.len() {
            fits = false;
            return;
        }
        out[*n..*n + bytes.len()].copy_from_slice(bytes);
        *n += bytes.len();
    };
    push(service_base_name.as_bytes(), &mut n);
    push(b"__", &mut n);
    match endpoint {
        SocketAddr::V4(v4) => {
            for (i, o) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    push(b".", &mut n);
                }
                let mut d = [0u8; 3];
                push(decimal(u32::from(*o), &mut d), &mut n);
            }
        }
        SocketAddr::V6(v6) => {
            let text = v6.ip().to_string().replace(':', ".");
            push(text.as_bytes(), &mut n);
        }
    }
    let mut p = [0u8; 5];
    push(b"/", &mut n);
    push(decimal(u32::from(endpoint.port()), &mut p), &mut n);
    if !fits || 9 + (n - HEAD) > BASE_MAX {
        let base = endpoint_base(service_base_name, endpoint);
        let ep = Name::from(format!("endpoint-{base}"));
        return (ep, affinity.then(|| Name::from(format!("affinity-{base}"))));
    }
    let hash = hash8(&out[HEAD..n]);
    out[..9].copy_from_slice(b"endpoint-");
    out[9..17].copy_from_slice(&hash);
    out[17] = b'-';
    let text = std::str::from_utf8(&out[..n]).unwrap_or_default();
    let ep = Name::from(text);
    // "affinity-" is as long as "endpoint-": the rest is the same.
    let aff = affinity.then(|| {
        let mut s = String::with_capacity(n);
        s.push_str("affinity-");
        s.push_str(&text["endpoint-".len()..]);
        Name::from(s)
    });
    (ep, aff)
}

/// Writes `v` in decimal at the end of `buf`; returns the digits.
fn decimal(mut v: u32, buf: &mut [u8]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
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
    fn fast_names_equal_the_plain_ones() {
        for (base, ep) in [
            ("ns4/svc4/tcp/p80", "10.180.0.4:80"),
            ("ns/svc/udp/", "[fd00::1]:53"),
            ("a/b/sctp/x", "255.0.10.1:65535"),
        ] {
            let addr: SocketAddr = ep.parse().unwrap();
            let (e, a) = endpoint_names(base, &addr, true);
            let plain = endpoint_base(base, &addr);
            assert_eq!(&*e, format!("endpoint-{plain}"));
            assert_eq!(a.as_deref(), Some(format!("affinity-{plain}").as_str()));
            assert_eq!(
                &*prefixed("service-", base),
                format!("service-{}", hash_and_truncate(base))
            );
        }
        let long = "n".repeat(300);
        let (e, _) = endpoint_names(&long, &"10.0.0.1:80".parse().unwrap(), false);
        assert_eq!(e.len(), "endpoint-".len() + 240);
        assert_eq!(
            &*prefixed("local-", &long),
            format!("local-{}", hash_and_truncate(&long))
        );
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
