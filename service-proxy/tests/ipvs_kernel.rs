//! The IPVS backend's first step on a kernel: resolving the `IPVS` generic-netlink family.
//! On a kernel without IPVS (like this project's CI host, see
//! `../shared/reference/uml-ipvs-recipe.md`) that is a typed error, which the `proxy`
//! daemon turns into a fallback to the iptables backend.

use service_proxy::ipvs::{IpvsError, IpvsSocket};

#[test]
fn the_ipvs_family_is_found_or_reported_missing() {
    let has_ipvs = std::path::Path::new("/proc/net/ip_vs").exists();
    match IpvsSocket::open() {
        Ok(s) => {
            assert!(has_ipvs, "the family resolved without /proc/net/ip_vs");
            assert!(s.family() >= 0x10, "a dynamic family id: {}", s.family());
        }
        Err(IpvsError::Unavailable) => assert!(!has_ipvs, "IPVS is there but was not found"),
        Err(e) => panic!("{e}"),
    }
}
