//! The ClusterIP allocator of Kubernetes 1.33 (KEP-1880, `MultiCIDRServiceAllocator`):
//! addresses come from every `ServiceCIDR`, and each allocated address is an `IPAddress`
//! object owned by its Service — no bitmap, so ranges are not limited to a /12 and can be
//! added while the cluster runs.
//!
//! - A ServiceCIDR's usable addresses start after the network address and, for IPv4, stop
//!   before the broadcast address; IPv6 ranges shorter than /64 are refused.
//! - Each range has the same static band as the bitmap allocator (`clamp(size / 16, 16,
//!   256)`); [`ServiceCidrAllocator::allocate_next`] picks a random start in the dynamic band,
//!   probes upward with wrap-around, then the static band, then moves to the next
//!   ServiceCIDR of the family (the default `kubernetes` first, then in the order added).
//! - A ServiceCIDR that is being deleted takes no new addresses; it can go once no
//!   allocated address is covered by it alone ([`ServiceCidrAllocator::blocking_deletion`],
//!   the `networking.k8s.io/service-cidr-finalizer`).
//! - [`ServiceCidrAllocator::repair`] compares Services with the IPAddress objects both ways,
//!   as the API server's `RepairIPAddress` controller does.
//!
//! Like the bitmap allocators, this is pure: randomness is passed in, nothing is stored.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::{AllocError, Resource, band_offset};
use crate::model::{
    DEFAULT_SERVICE_CIDR, IP_ALLOCATOR, IP_FAMILY_LABEL, IP_MANAGED_BY_LABEL, IpAddressObject,
    IpAddressSpec, IpFamily, ObjectMeta, ParentReference, ServiceCidr,
};
use crate::random::Random;
use crate::valid::{ServiceKey, ValidService};
use crate::validation::names::parse_cidr_sloppy;

/// One usable range.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Range {
    cidr: IpNet,
    /// The first usable address (network + 1) as an integer.
    first: u128,
    /// Usable addresses.
    size: u128,
    /// The static band.
    offset: u128,
}

fn to_int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl Range {
    fn new(cidr: IpNet) -> Result<Self, String> {
        let cidr = cidr.trunc();
        if let IpNet::V6(v6) = cidr
            && v6.prefix_len() < 64
        {
            return Err(format!(
                "shortest allowed prefix length for service CIDR is 64, got {}",
                v6.prefix_len()
            ));
        }
        let host_bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
        let total: u128 = 1u128.checked_shl(host_bits).unwrap_or(u128::MAX);
        let size = match cidr {
            IpNet::V4(_) => total.saturating_sub(2),
            IpNet::V6(_) => total.saturating_sub(1).min(u128::from(u64::MAX)),
        };
        Ok(Self {
            cidr,
            first: to_int(cidr.network()) + 1,
            size,
            offset: band_offset(total, 16, 256, 16) as u128,
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip)
            && to_int(ip)
                .checked_sub(self.first)
                .is_some_and(|o| o < self.size)
    }

    fn at(&self, offset: u128) -> IpAddr {
        let n = self.first + offset;
        match self.cidr {
            IpNet::V4(_) => IpAddr::V4((n as u32).into()),
            IpNet::V6(_) => IpAddr::V6(n.into()),
        }
    }

    fn family(&self) -> IpFamily {
        IpFamily::of(&self.cidr.addr())
    }
}

fn random_below(rng: &mut impl Random, n: u128) -> u128 {
    if n <= u128::from(u64::MAX) {
        (u128::from(rng.next_u64()) * n) >> 64
    } else {
        ((u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())) % n
    }
}

/// A ServiceCIDR as the allocator keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    name: String,
    ranges: Vec<Range>,
    terminating: bool,
}

/// The multi-CIDR ClusterIP allocator. See the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceCidrAllocator {
    /// In allocation order: the default first, then as added.
    cidrs: Vec<Entry>,
    /// Allocated addresses and their owners.
    allocated: BTreeMap<IpAddr, ParentReference>,
}

/// What [`ServiceCidrAllocator::repair`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IpRepair {
    /// Service addresses without an IPAddress: to create.
    pub missing: Vec<(IpAddr, ParentReference)>,
    /// IPAddresses held for another owner than the Service using the address: to recreate.
    pub wrong_owner: Vec<(IpAddr, ParentReference)>,
    /// IPAddresses no Service uses: to delete (after Kubernetes' grace period).
    pub orphaned: Vec<IpAddr>,
    /// Service addresses outside every ServiceCIDR ("Cluster IP [%v]: %s is not within any
    /// configured Service CIDR; please recreate service").
    pub out_of_range: Vec<(ServiceKey, IpAddr)>,
}

impl ServiceCidrAllocator {
    /// An allocator with no ranges.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a ServiceCIDR; one being deleted (`deletionTimestamp`) takes no
    /// new addresses.
    ///
    /// # Errors
    /// A CIDR that does not parse, or an IPv6 range shorter than /64 (the ServiceCIDR
    /// controller marks such objects not ready).
    pub fn add(&mut self, sc: &ServiceCidr) -> Result<(), String> {
        let name = sc.metadata.name().to_owned();
        let mut ranges = Vec::new();
        for text in &sc.spec.cidrs {
            let cidr = parse_cidr_sloppy(text)
                .ok_or_else(|| format!("ServiceCIDR {name}: {text:?} is not a CIDR"))?;
            ranges.push(Range::new(cidr).map_err(|e| format!("ServiceCIDR {name}: {e}"))?);
        }
        let entry = Entry {
            name: name.clone(),
            ranges,
            terminating: sc.metadata.deletion_timestamp.is_some(),
        };
        match self.cidrs.iter_mut().find(|e| e.name == name) {
            Some(e) => *e = entry,
            None if name == DEFAULT_SERVICE_CIDR => self.cidrs.insert(0, entry),
            None => self.cidrs.push(entry),
        }
        Ok(())
    }

    /// Removes a ServiceCIDR if nothing holds it ([`Self::blocking_deletion`] is empty).
    ///
    /// # Errors
    /// The addresses that keep it (its finalizer stays while they exist).
    pub fn remove(&mut self, name: &str) -> Result<(), Vec<IpAddr>> {
        let blocking = self.blocking_deletion(name);
        if !blocking.is_empty() {
            return Err(blocking);
        }
        self.cidrs.retain(|e| e.name != name);
        Ok(())
    }

    /// The allocated addresses only `name` covers among the ServiceCIDRs that are not being
    /// deleted: while any remain, the ServiceCIDR's finalizer stays.
    pub fn blocking_deletion(&self, name: &str) -> Vec<IpAddr> {
        let Some(entry) = self.cidrs.iter().find(|e| e.name == name) else {
            return Vec::new();
        };
        self.allocated
            .keys()
            .filter(|ip| entry.ranges.iter().any(|r| r.cidr.contains(*ip)))
            .filter(|ip| {
                !self.cidrs.iter().any(|e| {
                    e.name != name
                        && !e.terminating
                        && e.ranges.iter().any(|r| r.cidr.contains(*ip))
                })
            })
            .copied()
            .collect()
    }

    /// The ranges of a family that take new addresses, in allocation order.
    fn ranges(&self, family: &IpFamily) -> impl Iterator<Item = &Range> {
        self.cidrs
            .iter()
            .filter(|e| !e.terminating)
            .flat_map(|e| e.ranges.iter())
            .filter(move |r| r.family() == *family)
    }

    fn not_in_range(&self, family: &IpFamily) -> AllocError {
        let valid: Vec<String> = self.ranges(family).map(|r| r.cidr.to_string()).collect();
        AllocError::NotInRange {
            resource: Resource::Ip,
            valid: valid.join(","),
        }
    }

    /// Whether `ip` is allocated.
    pub fn has(&self, ip: IpAddr) -> bool {
        self.allocated.contains_key(&ip)
    }

    /// Allocated addresses.
    pub fn used(&self) -> usize {
        self.allocated.len()
    }

    /// The owner of an allocated address.
    pub fn owner(&self, ip: IpAddr) -> Option<&ParentReference> {
        self.allocated.get(&ip)
    }

    /// Allocates a specific address for `owner`.
    ///
    /// # Errors
    /// [`AllocError::NotInRange`] when no ServiceCIDR that takes addresses covers it (the
    /// network and IPv4 broadcast addresses included), [`AllocError::Allocated`].
    pub fn allocate(&mut self, ip: IpAddr, owner: ParentReference) -> Result<(), AllocError> {
        let family = IpFamily::of(&ip);
        if !self.ranges(&family).any(|r| r.contains(ip)) {
            return Err(self.not_in_range(&family));
        }
        if self.allocated.contains_key(&ip) {
            return Err(AllocError::Allocated(Resource::Ip));
        }
        self.allocated.insert(ip, owner);
        Ok(())
    }

    /// Allocates a free address of `family` for `owner`: the dynamic band of each range
    /// from a random start, then its static band, then the next range.
    ///
    /// # Errors
    /// [`AllocError::Full`] when every range of the family is full (or there is none).
    pub fn allocate_next(
        &mut self,
        family: &IpFamily,
        owner: ParentReference,
        rng: &mut impl Random,
    ) -> Result<IpAddr, AllocError> {
        let ranges: Vec<Range> = self.ranges(family).cloned().collect();
        for r in &ranges {
            for (lo, hi) in [(r.offset, r.size), (0, r.offset.min(r.size))] {
                if let Some(ip) = self.probe(r, lo, hi, rng) {
                    self.allocated.insert(ip, owner);
                    return Ok(ip);
                }
            }
        }
        Err(AllocError::Full)
    }

    /// The first free address of `[lo, hi)` of a range, from a random start, wrapping.
    fn probe(&self, r: &Range, lo: u128, hi: u128, rng: &mut impl Random) -> Option<IpAddr> {
        if hi <= lo {
            return None;
        }
        let start = lo + random_below(rng, hi - lo);
        // Walk up from the start, skipping runs of allocated addresses; then from `lo`.
        for (from, to) in [(start, hi), (lo, start)] {
            let mut candidate = from;
            for (ip, _) in self.allocated.range(r.at(from)..) {
                if candidate >= to {
                    break;
                }
                let at = to_int(*ip) - r.first;
                if at > candidate {
                    break;
                }
                candidate = at + 1;
            }
            if candidate < to {
                return Some(r.at(candidate));
            }
        }
        None
    }

    /// Releases an address; returns whether it was allocated.
    pub fn release(&mut self, ip: IpAddr) -> bool {
        self.allocated.remove(&ip).is_some()
    }

    /// Every allocated address as the `IPAddress` object the API server stores.
    pub fn ip_addresses(&self) -> Vec<IpAddressObject> {
        self.allocated
            .iter()
            .map(|(ip, owner)| ip_address_object(*ip, owner.clone()))
            .collect()
    }

    /// An allocator from stored ServiceCIDRs and IPAddresses (addresses outside every range
    /// are kept: they are the repair loop's to report).
    ///
    /// # Errors
    /// A ServiceCIDR [`Self::add`] refuses.
    pub fn from_objects(
        cidrs: &[ServiceCidr],
        addresses: &[IpAddressObject],
    ) -> Result<Self, String> {
        let mut a = Self::new();
        for sc in cidrs {
            a.add(sc)?;
        }
        for obj in addresses {
            if let (Ok(ip), Some(owner)) = (
                obj.metadata.name().parse::<IpAddr>(),
                obj.spec.parent_ref.clone(),
            ) {
                a.allocated.insert(ip, owner);
            }
        }
        Ok(a)
    }

    /// Compares the Services' ClusterIPs with the allocated addresses both ways
    /// (`RepairIPAddress`).
    pub fn repair(&self, services: &[ValidService]) -> IpRepair {
        let mut out = IpRepair::default();
        let mut used: BTreeSet<IpAddr> = BTreeSet::new();
        for svc in services {
            let owner = ParentReference::service(&svc.key.namespace, &svc.key.name);
            for ip in svc.cluster_ips.ips() {
                used.insert(*ip);
                let family = IpFamily::of(ip);
                if !self
                    .cidrs
                    .iter()
                    .flat_map(|e| e.ranges.iter())
                    .any(|r| r.family() == family && r.contains(*ip))
                {
                    out.out_of_range.push((svc.key.clone(), *ip));
                }
                match self.allocated.get(ip) {
                    None => out.missing.push((*ip, owner.clone())),
                    Some(o) if *o != owner => out.wrong_owner.push((*ip, owner.clone())),
                    Some(_) => {}
                }
            }
        }
        out.orphaned = self
            .allocated
            .keys()
            .filter(|ip| !used.contains(ip))
            .copied()
            .collect();
        out
    }
}

/// The `IPAddress` object of an allocated address: named by the address, labelled with
/// its family and the allocator, pointing at its owner.
pub fn ip_address_object(ip: IpAddr, owner: ParentReference) -> IpAddressObject {
    let mut metadata = ObjectMeta::default();
    metadata.name = Some(ip.to_string());
    let family = match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    };
    metadata.labels = Some(
        [
            (IP_FAMILY_LABEL.to_owned(), family.to_owned()),
            (IP_MANAGED_BY_LABEL.to_owned(), IP_ALLOCATOR.to_owned()),
        ]
        .into(),
    );
    IpAddressObject {
        api_version: Some("networking.k8s.io/v1".into()),
        kind: Some("IPAddress".into()),
        metadata,
        spec: IpAddressSpec {
            parent_ref: Some(owner),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SeededRandom;

    fn owner(name: &str) -> ParentReference {
        ParentReference::service("default", name)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_beyond_a_bitmap_and_the_ipv6_floor() {
        let mut a = ServiceCidrAllocator::new();
        // A /8 of IPv4 and a /64 of IPv6: far beyond the bitmap's /12 and 65,536.
        a.add(&ServiceCidr::new(
            "kubernetes",
            &["10.0.0.0/8", "fd00:10:96::/64"],
        ))
        .unwrap();
        let mut rng = SeededRandom::new(1);
        for _ in 0..1000 {
            let v6 = a
                .allocate_next(&IpFamily::Ipv6, owner("a"), &mut rng)
                .unwrap();
            let net: IpNet = "fd00:10:96::/64".parse().unwrap();
            assert!(net.contains(&v6), "{v6}");
        }
        a.allocate(ip("10.255.255.254"), owner("b")).unwrap();
        // Network and IPv4 broadcast addresses are not usable.
        for bad in ["10.0.0.0", "10.255.255.255", "fd00:10:96::"] {
            assert!(
                matches!(
                    a.allocate(ip(bad), owner("c")),
                    Err(AllocError::NotInRange { .. })
                ),
                "{bad}"
            );
        }
        // IPv6 ranges shorter than /64 are refused, as the API server does.
        let err = a
            .add(&ServiceCidr::new("wide", &["fd00::/48"]))
            .unwrap_err();
        assert_eq!(
            err,
            "ServiceCIDR wide: shortest allowed prefix length for service CIDR is 64, got 48"
        );
    }

    #[test]
    fn a_full_range_moves_on_to_the_next_service_cidr() {
        let mut a = ServiceCidrAllocator::new();
        a.add(&ServiceCidr::new("extra", &["10.2.0.0/30"])).unwrap();
        // The default range comes first whatever the order they are added in.
        a.add(&ServiceCidr::new("kubernetes", &["10.1.0.0/30"]))
            .unwrap();
        let mut rng = SeededRandom::new(7);
        let mut got: Vec<IpAddr> = (0..4)
            .map(|_| {
                a.allocate_next(&IpFamily::Ipv4, owner("x"), &mut rng)
                    .unwrap()
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            ["10.1.0.1", "10.1.0.2", "10.2.0.1", "10.2.0.2"].map(ip)
        );
        assert_eq!(
            a.allocate_next(&IpFamily::Ipv4, owner("x"), &mut rng),
            Err(AllocError::Full)
        );
        // No IPv6 range at all: full.
        assert_eq!(
            a.allocate_next(&IpFamily::Ipv6, owner("x"), &mut rng),
            Err(AllocError::Full)
        );
        // Outside every range: the message lists them.
        assert_eq!(
            a.allocate(ip("10.9.0.1"), owner("y"))
                .unwrap_err()
                .to_string(),
            "provided IP is not in the valid range. The range of valid IPs is 10.1.0.0/30,10.2.0.0/30"
        );
    }

    #[test]
    fn the_static_band_is_used_last() {
        let mut a = ServiceCidrAllocator::new();
        a.add(&ServiceCidr::new("kubernetes", &["10.0.0.0/24"]))
            .unwrap();
        let mut rng = SeededRandom::new(3);
        // 254 usable, 16 in the static band (10.0.0.1-10.0.0.16).
        for _ in 0..238 {
            let got = a
                .allocate_next(&IpFamily::Ipv4, owner("x"), &mut rng)
                .unwrap();
            let last = match got {
                IpAddr::V4(v4) => v4.octets()[3],
                IpAddr::V6(_) => unreachable!(),
            };
            assert!(last > 16, "{got} from the static band too early");
        }
        let got = a
            .allocate_next(&IpFamily::Ipv4, owner("x"), &mut rng)
            .unwrap();
        assert!(got <= ip("10.0.0.16"), "{got}");
    }

    #[test]
    fn a_service_cidr_in_use_cannot_go() {
        let mut a = ServiceCidrAllocator::new();
        a.add(&ServiceCidr::new("kubernetes", &["10.1.0.0/24"]))
            .unwrap();
        a.add(&ServiceCidr::new("more", &["10.2.0.0/24"])).unwrap();
        a.allocate(ip("10.2.0.5"), owner("a")).unwrap();
        assert_eq!(a.blocking_deletion("more"), vec![ip("10.2.0.5")]);
        assert_eq!(a.remove("more"), Err(vec![ip("10.2.0.5")]));
        // Being deleted: no new addresses from it, existing ones stay.
        let mut going = ServiceCidr::new("more", &["10.2.0.0/24"]);
        going.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        a.add(&going).unwrap();
        assert!(matches!(
            a.allocate(ip("10.2.0.6"), owner("b")),
            Err(AllocError::NotInRange { .. })
        ));
        assert!(a.has(ip("10.2.0.5")));
        // Another ServiceCIDR covering the address releases the block.
        a.add(&ServiceCidr::new("wider", &["10.2.0.0/16"])).unwrap();
        assert!(a.blocking_deletion("more").is_empty());
        assert_eq!(a.remove("more"), Ok(()));
        // With the address released, an unused range goes at once.
        assert!(a.release(ip("10.2.0.5")));
        assert_eq!(a.remove("wider"), Ok(()));
    }

    #[test]
    fn repair_compares_services_and_ip_addresses_both_ways() {
        use crate::model::Service;
        let svc = |name: &str, cluster_ip: &str| {
            let mut s = Service::new("default", name);
            s.spec.cluster_ip = Some(cluster_ip.into());
            s.spec
                .ports
                .push(crate::model::ServicePort::tcp("http", 80));
            crate::defaults::service(&mut s);
            crate::validation::validate_service(&s).unwrap()
        };
        let mut a = ServiceCidrAllocator::new();
        a.add(&ServiceCidr::new("kubernetes", &["10.96.0.0/16"]))
            .unwrap();
        a.allocate(ip("10.96.0.10"), owner("web")).unwrap();
        a.allocate(ip("10.96.0.11"), owner("someone-else")).unwrap();
        a.allocate(ip("10.96.0.99"), owner("gone")).unwrap();
        let services = [
            svc("web", "10.96.0.10"),
            svc("db", "10.96.0.11"),
            svc("cache", "10.96.0.12"),
            svc("stray", "10.200.0.1"),
        ];
        let r = a.repair(&services);
        assert_eq!(
            r.missing,
            vec![
                (ip("10.96.0.12"), owner("cache")),
                (ip("10.200.0.1"), owner("stray"))
            ]
        );
        assert_eq!(r.wrong_owner, vec![(ip("10.96.0.11"), owner("db"))]);
        assert_eq!(r.orphaned, vec![ip("10.96.0.99")]);
        assert_eq!(
            r.out_of_range,
            vec![(ServiceKey::new("default", "stray"), ip("10.200.0.1"))]
        );
    }

    #[test]
    fn ip_address_objects_are_the_api_servers() {
        let obj = ip_address_object(ip("fd00::a"), owner("web"));
        assert_eq!(obj.metadata.name(), "fd00::a");
        let labels = obj.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[IP_FAMILY_LABEL], "IPv6");
        assert_eq!(labels[IP_MANAGED_BY_LABEL], "ipallocator.k8s.io");
        let parent = obj.spec.parent_ref.as_ref().unwrap();
        assert_eq!(
            (
                parent.group.as_str(),
                parent.resource.as_str(),
                parent.name.as_str()
            ),
            ("", "services", "web")
        );
        assert!(crate::validation::validate_ip_address(&obj).is_ok());
    }
}
