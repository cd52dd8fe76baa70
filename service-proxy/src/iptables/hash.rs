//! kube-proxy's chain-name hashes: the first 16 base32 characters of a SHA-256.

use std::net::SocketAddr;

use sha2::{Digest, Sha256};

/// `base32(sha256(parts...))[:16]`: 16 base32 characters need exactly 10 bytes.
fn hash16(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let digest = h.finalize();
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
    let ep = endpoint.to_string();
    hash16(&[
        service_port_name.as_bytes(),
        protocol.as_bytes(),
        ep.as_bytes(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(h: [u8; 16]) -> String {
        String::from_utf8(h.to_vec()).unwrap()
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
