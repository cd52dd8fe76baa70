//! Cluster IPs from one CIDR (`ipallocator.Range`).

use std::net::IpAddr;

use crate::random::Random;
use ipnet::IpNet;

use super::{AllocError, Bitmap, RangeAllocation, Resource, band_offset};

/// The bitmap IP allocator cap for IPv6 ranges: only the first 65,536 addresses.
const IPV6_CAP: u128 = 1 << 16;

/// The largest IPv4 range [`IpAllocator::from_snapshot`] accepts (16 Mi addresses, a 2 MiB
/// bitmap; the API server itself refuses ranges larger than /12).
const MIN_IPV4_PREFIX: u8 = 8;

/// Allocates addresses of one CIDR; see the [module docs](super) for the rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpAllocator {
    cidr: IpNet,
    /// Offset 0 (network + 1) as an integer.
    base: u128,
    bits: Bitmap,
}

fn to_int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl IpAllocator {
    /// An empty allocator for `cidr` (host bits are ignored: `10.0.0.5/24` is
    /// `10.0.0.0/24`). The bitmap takes one bit per address: 128 KiB for a /12, the
    /// largest range the API server accepts.
    pub fn new(cidr: IpNet) -> Self {
        let cidr = cidr.trunc();
        let host_bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
        let size: u128 = 1u128.checked_shl(host_bits).unwrap_or(u128::MAX);
        let usable = match cidr {
            // Network and broadcast addresses are excluded.
            IpNet::V4(_) => size.saturating_sub(2),
            // Only the subnet-router anycast (network) address, and the bitmap cap.
            IpNet::V6(_) => size.min(IPV6_CAP).saturating_sub(1),
        };
        let offset = band_offset(size, 16, 256, 16);
        Self {
            cidr,
            base: to_int(cidr.network()) + 1,
            bits: Bitmap::new(usable as usize, offset),
        }
    }

    /// The range.
    pub fn cidr(&self) -> IpNet {
        self.cidr
    }

    /// Usable addresses.
    pub fn size(&self) -> usize {
        self.bits.max()
    }

    /// Allocated addresses.
    pub fn used(&self) -> usize {
        self.bits.count()
    }

    /// Free addresses.
    pub fn free(&self) -> usize {
        self.bits.free()
    }

    /// Addresses in the static band (`10.0.0.1`–`10.0.0.16` of a /24).
    pub fn static_band(&self) -> usize {
        self.bits.offset()
    }

    fn offset_of(&self, ip: IpAddr) -> Option<usize> {
        if !self.cidr.contains(&ip) {
            return None;
        }
        let off = to_int(ip).checked_sub(self.base)?;
        (off < self.bits.max() as u128).then_some(off as usize)
    }

    fn ip_at(&self, offset: usize) -> IpAddr {
        let n = self.base + offset as u128;
        match self.cidr {
            IpNet::V4(_) => IpAddr::V4((n as u32).into()),
            IpNet::V6(_) => IpAddr::V6(n.into()),
        }
    }

    fn not_in_range(&self) -> AllocError {
        AllocError::NotInRange {
            resource: Resource::Ip,
            valid: self.cidr.to_string(),
        }
    }

    /// Whether `ip` is inside the usable range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.offset_of(ip).is_some()
    }

    /// Whether `ip` is allocated.
    pub fn has(&self, ip: IpAddr) -> bool {
        self.offset_of(ip).is_some_and(|o| self.bits.has(o))
    }

    /// Allocates a specific address.
    ///
    /// # Errors
    /// [`AllocError::NotInRange`] (including the network and broadcast addresses) or
    /// [`AllocError::Allocated`].
    pub fn allocate(&mut self, ip: IpAddr) -> Result<(), AllocError> {
        let offset = self.offset_of(ip).ok_or_else(|| self.not_in_range())?;
        if self.bits.allocate(offset) {
            Ok(())
        } else {
            Err(AllocError::Allocated(Resource::Ip))
        }
    }

    /// Allocates a free address, from the dynamic band first.
    ///
    /// # Errors
    /// [`AllocError::Full`].
    pub fn allocate_next(&mut self, rng: &mut impl Random) -> Result<IpAddr, AllocError> {
        let offset = self.bits.allocate_next(rng).ok_or(AllocError::Full)?;
        Ok(self.ip_at(offset))
    }

    /// Frees an address; false when it was not allocated or is outside the range (as in
    /// Kubernetes, neither is an error).
    pub fn release(&mut self, ip: IpAddr) -> bool {
        self.offset_of(ip).is_some_and(|o| self.bits.release(o))
    }

    /// Allocated addresses, ascending.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.bits.iter().map(|o| self.ip_at(o))
    }

    /// The persisted state.
    pub fn snapshot(&self) -> RangeAllocation {
        RangeAllocation::new(&self.cidr.to_string(), self.bits.to_bytes())
    }

    /// Replaces the allocations with a snapshot's.
    ///
    /// # Errors
    /// [`AllocError::MismatchedRange`] when the snapshot is of another CIDR (as after
    /// `--service-cluster-ip-range` changed), [`AllocError::BadSnapshot`] when it does not
    /// parse or its bitmap does not fit. The allocator is unchanged on error.
    pub fn restore(&mut self, snapshot: &RangeAllocation) -> Result<(), AllocError> {
        let cidr = snapshot_cidr(snapshot)?;
        if cidr != self.cidr {
            return Err(AllocError::MismatchedRange(Resource::Ip));
        }
        self.bits
            .restore(&snapshot.data)
            .map_err(|e| AllocError::BadSnapshot(e.to_string()))
    }

    /// An allocator rebuilt from a snapshot alone (`NewFromSnapshot`).
    ///
    /// # Errors
    /// As [`IpAllocator::restore`].
    pub fn from_snapshot(snapshot: &RangeAllocation) -> Result<Self, AllocError> {
        let cidr = snapshot_cidr(snapshot)?;
        // Untrusted input must not make us allocate a 512 MiB bitmap for 0.0.0.0/0.
        if cidr.network().is_ipv4() && cidr.prefix_len() < MIN_IPV4_PREFIX {
            return Err(AllocError::BadSnapshot(format!(
                "range {cidr} is larger than /{MIN_IPV4_PREFIX}"
            )));
        }
        let mut a = Self::new(cidr);
        a.restore(snapshot)?;
        Ok(a)
    }
}

/// The range a snapshot covers.
fn snapshot_cidr(snapshot: &RangeAllocation) -> Result<IpNet, AllocError> {
    snapshot
        .range
        .parse()
        .map_err(|_| AllocError::BadSnapshot(format!("invalid CIDR {:?}", snapshot.range)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sizes_and_bands_match_kubernetes() {
        // (cidr, usable, static band) from the API server's bitmap allocator.
        for (cidr, usable, band) in [
            ("10.0.0.0/28", 14, 0),
            ("10.0.0.0/27", 30, 16),
            ("10.0.0.0/24", 254, 16),
            ("10.0.0.0/22", 1022, 64),
            ("10.0.0.0/20", 4094, 256),
            ("10.96.0.0/12", 1_048_574, 256),
            ("10.0.0.0/31", 0, 0),
            ("10.0.0.0/32", 0, 0),
            ("fd00::/112", 65_535, 256),
            ("fd00::/108", 65_535, 256),
            ("fd00::/64", 65_535, 256),
            ("fd00::/120", 255, 16),
            ("fd00::/128", 0, 0),
        ] {
            let a = IpAllocator::new(net(cidr));
            assert_eq!((a.size(), a.static_band()), (usable, band), "{cidr}");
        }
    }

    #[test]
    fn network_and_broadcast_are_never_allocated() {
        let mut a = IpAllocator::new(net("192.168.1.0/24"));
        let not_in_range =
            "provided IP is not in the valid range. The range of valid IPs is 192.168.1.0/24";
        for bad in ["192.168.1.0", "192.168.1.255", "192.168.2.1", "fd00::1"] {
            assert_eq!(
                a.allocate(ip(bad)).unwrap_err().to_string(),
                not_in_range,
                "{bad}"
            );
        }
        a.allocate(ip("192.168.1.1")).unwrap();
        a.allocate(ip("192.168.1.254")).unwrap();
        assert_eq!(
            a.allocate(ip("192.168.1.1")).unwrap_err().to_string(),
            "provided IP is already allocated"
        );
        // IPv6: the subnet address is excluded, there is no broadcast, and the cap applies.
        let mut a = IpAllocator::new(net("fd00::/64"));
        assert!(a.allocate(ip("fd00::")).is_err());
        a.allocate(ip("fd00::ffff")).unwrap();
        assert!(a.allocate(ip("fd00::1:0")).is_err());
    }

    #[test]
    fn host_bits_are_ignored() {
        let a = IpAllocator::new(net("10.0.0.5/24"));
        assert_eq!(a.cidr().to_string(), "10.0.0.0/24");
        assert_eq!(a.snapshot().range, "10.0.0.0/24");
    }

    #[test]
    fn the_first_addresses_form_the_static_band() {
        let mut a = IpAllocator::new(net("10.0.0.0/24"));
        let mut rng = crate::random::SeededRandom::new(1);
        for _ in 0..238 {
            let got = a.allocate_next(&mut rng).unwrap();
            assert!(to_int(got) >= to_int(ip("10.0.0.17")), "{got}");
        }
        let got = a.allocate_next(&mut rng).unwrap();
        assert!(to_int(got) <= to_int(ip("10.0.0.16")), "{got}");
        for _ in 0..15 {
            a.allocate_next(&mut rng).unwrap();
        }
        assert_eq!(a.allocate_next(&mut rng), Err(AllocError::Full));
        assert_eq!(AllocError::Full.to_string(), "range is full");
    }

    #[test]
    fn snapshot_round_trip_and_mismatch() {
        let mut a = IpAllocator::new(net("10.0.0.0/24"));
        a.allocate(ip("10.0.0.1")).unwrap();
        a.allocate(ip("10.0.0.10")).unwrap();
        let snap = a.snapshot();
        // Offset 0 and 9: bits 0 and 9, big-endian.
        assert_eq!(snap.data, [0x02, 0x01]);
        assert_eq!(
            String::from_utf8(snap.to_json()).unwrap(),
            r#"{"range":"10.0.0.0/24","data":"AgE="}"#
        );
        let b = IpAllocator::from_snapshot(&RangeAllocation::from_json(&snap.to_json()).unwrap())
            .unwrap();
        assert_eq!(b, a);
        let mut other = IpAllocator::new(net("10.0.1.0/24"));
        assert_eq!(
            other.restore(&snap).unwrap_err().to_string(),
            "the provided network does not match the current range"
        );
        let mut small = RangeAllocation::new("10.0.0.0/28", vec![0xff, 0xff]);
        assert!(matches!(
            IpAllocator::from_snapshot(&small),
            Err(AllocError::BadSnapshot(_))
        ));
        small.range = "not a cidr".into();
        assert!(IpAllocator::from_snapshot(&small).is_err());
    }

    #[test]
    fn release_is_lenient() {
        let mut a = IpAllocator::new(net("10.0.0.0/24"));
        assert!(!a.release(ip("10.0.0.7")));
        assert!(!a.release(ip("10.9.9.9")));
        a.allocate(ip("10.0.0.7")).unwrap();
        assert!(a.release(ip("10.0.0.7")));
        a.allocate(ip("10.0.0.7")).unwrap();
        assert_eq!(a.iter().collect::<Vec<_>>(), [ip("10.0.0.7")]);
    }
}
