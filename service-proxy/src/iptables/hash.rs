//! kube-proxy's chain-name hashes: the first 16 base32 characters of a SHA-256.

use std::net::SocketAddr;

use sha2::{Digest, Sha256};

/// `base32(sha256(parts...))[:16]`: 16 base32 characters need exactly 10 bytes. The parts
/// are joined on the stack so the digest runs in one call.
fn hash16(parts: &[&[u8]]) -> [u8; 16] {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut stack = [0u8; 256];
    let digest = if len <= stack.len() {
        let mut n = 0;
        for p in parts {
            stack[n..n + p.len()].copy_from_slice(p);
            n += p.len();
        }
        Sha256::digest(&stack[..n])
    } else {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        h.finalize()
    };
    let mut out = [0u8; 16];
    data_encoding::BASE32_NOPAD.encode_mut(&digest[..10], &mut out);
    out
}

/// The hash of a service port's chains (`portProtoHash`): `servicePortName + protocol`,
/// where the name is `ns/svc[:port]` and the protocol lower-case.
pub fn port_hash(service_port_name: &str, protocol: &str) -> [u8; 16] {
    hash16(&[service_port_name.as_bytes(), protocol.as_bytes()])
}

/// The hash of an endpoint chain: `servicePortName + protocol + "ip:port"` (IPv6 in brackets).
pub fn endpoint_hash(service_port_name: &str, protocol: &str, endpoint: &SocketAddr) -> [u8; 16] {
    let mut buf = [0u8; 64];
    let ep = format_endpoint(endpoint, &mut buf);
    hash16(&[service_port_name.as_bytes(), protocol.as_bytes(), ep])
}

/// Writes `ip:port` (`[v6]:port`, as Go's `net.JoinHostPort`) into `buf` without going
/// through `fmt`, which costs more than the hash itself at 100k endpoints.
fn format_endpoint<'a>(endpoint: &SocketAddr, buf: &'a mut [u8; 64]) -> &'a [u8] {
    use std::io::Write as _;
    let mut n = 0;
    match endpoint {
        SocketAddr::V4(v4) => {
            for (i, o) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                n += dec(u32::from(*o), &mut buf[n..]);
            }
        }
        SocketAddr::V6(v6) => {
            // IPv6 text is irregular (zero compression); fmt is fine for this rarer case.
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "[{}]", v6.ip());
            n = usize::try_from(cursor.position()).unwrap_or(0);
        }
    }
    buf[n] = b':';
    n += 1;
    n += dec(u32::from(endpoint.port()), &mut buf[n..]);
    &buf[..n]
}

/// Writes `v` in decimal at the start of `out`; returns the digit count.
fn dec(v: u32, out: &mut [u8]) -> usize {
    let mut tmp = [0u8; 10];
    let mut i = tmp.len();
    let mut v = v;
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let len = tmp.len() - i;
    out[..len].copy_from_slice(&tmp[i..]);
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(h: [u8; 16]) -> String {
        String::from_utf8(h.to_vec()).unwrap()
    }

    #[test]
    fn endpoint_text_matches_join_host_port() {
        for e in [
            "10.180.0.1:80",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[fd00::1]:8080",
            "[2001:db8:0:1:1:1:1:1]:1",
        ] {
            let sa: SocketAddr = e.parse().unwrap();
            let mut buf = [0u8; 64];
            assert_eq!(
                std::str::from_utf8(format_endpoint(&sa, &mut buf)).unwrap(),
                e
            );
        }
    }

    #[test]
    fn kube_proxy_test_vectors() {
        // Values from kube-proxy's proxier_test.go expectations.
        assert_eq!(s(port_hash("ns1/svc1:p80", "tcp")), "XPGD46QRK7WJZT7O");
        assert_eq!(s(port_hash("ns2/svc2:p80", "tcp")), "GNZBNJ2PO5MGZ6GT");
        assert_eq!(s(port_hash("ns3/svc3:p80", "tcp")), "X27LE4BHSL4DOUIK");
        assert_eq!(s(port_hash("ns4/svc4:p80", "tcp")), "4SW47YFZTEDKD3PK");
        assert_eq!(s(port_hash("ns5/svc5:p80", "tcp")), "NUKIZ6OKUXPJNT4C");
        assert_eq!(s(port_hash("ns2/svc2:p8080", "tcp")), "2VJB64SDSIJUP5T6");
        let ep = |e: &str| e.parse::<SocketAddr>().unwrap();
        assert_eq!(
            s(endpoint_hash("ns1/svc1:p80", "tcp", &ep("10.180.0.1:80"))),
            "SXIVWICOYRO3J4NJ"
        );
        assert_eq!(
            s(endpoint_hash("ns4/svc4:p80", "tcp", &ep("10.180.0.4:80"))),
            "UKSFD7AGPMPPLUHC"
        );
        assert_eq!(
            s(endpoint_hash("ns4/svc4:p80", "tcp", &ep("10.180.0.5:80"))),
            "C6EBXVWJJZMIWKLZ"
        );
        assert_eq!(
            s(endpoint_hash("ns5/svc5:p80", "tcp", &ep("10.180.0.3:80"))),
            "I77PXRDZVX7PMWMN"
        );
        assert_eq!(
            s(endpoint_hash("ns3/svc3:p80", "tcp", &ep("10.180.0.3:80"))),
            "OYPFS5VJICHGATKP"
        );
        assert_eq!(
            s(endpoint_hash("ns2/svc2:p80", "tcp", &ep("10.180.0.2:80"))),
            "RS4RBKLTHTF2IUXJ"
        );
    }
}
