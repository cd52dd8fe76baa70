//! Node ports from one range (`portallocator.PortAllocator`).

use std::fmt;
use std::str::FromStr;

use crate::random::Random;

use super::{AllocError, Bitmap, RangeAllocation, Resource, band_offset};

/// A port range, written `30000-32767` (or `30000+2767`, base plus extra ports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    base: u16,
    size: u32,
}

/// A port range that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid port range {0:?}: expected FIRST-LAST or FIRST+COUNT with ports 1-65535")]
#[non_exhaustive]
pub struct PortRangeError(pub String);

impl PortRange {
    /// Kubernetes' default NodePort range, `30000-32767`.
    pub const DEFAULT_NODE_PORTS: Self = Self {
        base: 30000,
        size: 2768,
    };

    /// `first..=last`.
    ///
    /// # Errors
    /// `first` is 0 or above `last`.
    pub fn new(first: u16, last: u16) -> Result<Self, PortRangeError> {
        if first == 0 || last < first {
            return Err(PortRangeError(format!("{first}-{last}")));
        }
        Ok(Self {
            base: first,
            size: u32::from(last - first) + 1,
        })
    }

    /// The first port.
    pub fn first(&self) -> u16 {
        self.base
    }

    /// The last port.
    pub fn last(&self) -> u16 {
        (u32::from(self.base) + self.size - 1) as u16
    }

    /// Number of ports.
    pub fn size(&self) -> usize {
        self.size as usize
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        port >= self.base && u32::from(port - self.base) < self.size
    }
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PortRangeError(s.to_owned());
        let t = s.trim();
        let num = |x: &str| x.trim().parse::<u16>().map_err(|_| err());
        if let Some((a, b)) = t.split_once('-') {
            Self::new(num(a)?, num(b)?).map_err(|_| err())
        } else if let Some((a, n)) = t.split_once('+') {
            let first = num(a)?;
            let last = first.checked_add(num(n)?).ok_or_else(err)?;
            Self::new(first, last).map_err(|_| err())
        } else {
            let p = num(t)?;
            Self::new(p, p).map_err(|_| err())
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first(), self.last())
    }
}

/// Allocates ports of one range; see the [module docs](super).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortAllocator {
    range: PortRange,
    bits: Bitmap,
}

impl PortAllocator {
    /// An empty allocator.
    pub fn new(range: PortRange) -> Self {
        let offset = band_offset(u128::from(range.size), 16, 128, 32);
        Self {
            range,
            bits: Bitmap::new(range.size(), offset),
        }
    }

    /// The range.
    pub fn range(&self) -> PortRange {
        self.range
    }

    /// Allocated ports.
    pub fn used(&self) -> usize {
        self.bits.count()
    }

    /// Free ports.
    pub fn free(&self) -> usize {
        self.bits.free()
    }

    /// Ports in the static band (`30000`–`30085` of the default range).
    pub fn static_band(&self) -> usize {
        self.bits.offset()
    }

    fn offset_of(&self, port: u16) -> Option<usize> {
        self.range
            .contains(port)
            .then(|| usize::from(port - self.range.base))
    }

    /// Whether `port` is allocated.
    pub fn has(&self, port: u16) -> bool {
        self.offset_of(port).is_some_and(|o| self.bits.has(o))
    }

    /// Allocates a specific port.
    ///
    /// # Errors
    /// [`AllocError::NotInRange`] or [`AllocError::Allocated`].
    pub fn allocate(&mut self, port: u16) -> Result<(), AllocError> {
        let offset = self.offset_of(port).ok_or_else(|| AllocError::NotInRange {
            resource: Resource::Port,
            valid: self.range.to_string(),
        })?;
        if self.bits.allocate(offset) {
            Ok(())
        } else {
            Err(AllocError::Allocated(Resource::Port))
        }
    }

    /// Allocates a free port, from the dynamic band first.
    ///
    /// # Errors
    /// [`AllocError::Full`].
    pub fn allocate_next(&mut self, rng: &mut impl Random) -> Result<u16, AllocError> {
        let offset = self.bits.allocate_next(rng).ok_or(AllocError::Full)?;
        Ok(self.range.base + offset as u16)
    }

    /// Frees a port; false when it was not allocated or is out of range.
    pub fn release(&mut self, port: u16) -> bool {
        self.offset_of(port).is_some_and(|o| self.bits.release(o))
    }

    /// Allocated ports, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.bits.iter().map(|o| self.range.base + o as u16)
    }

    /// The persisted state.
    pub fn snapshot(&self) -> RangeAllocation {
        RangeAllocation::new(&self.range.to_string(), self.bits.to_bytes())
    }

    /// Replaces the allocations with a snapshot's.
    ///
    /// # Errors
    /// [`AllocError::MismatchedRange`] for another range (as after
    /// `--service-node-port-range` changed), [`AllocError::BadSnapshot`] when it does not
    /// parse or does not fit. The allocator is unchanged on error.
    pub fn restore(&mut self, snapshot: &RangeAllocation) -> Result<(), AllocError> {
        let range = snapshot_range(snapshot)?;
        if range != self.range {
            return Err(AllocError::MismatchedRange(Resource::Port));
        }
        self.bits
            .restore(&snapshot.data)
            .map_err(|e| AllocError::BadSnapshot(e.to_string()))
    }

    /// An allocator rebuilt from a snapshot alone.
    ///
    /// # Errors
    /// As [`PortAllocator::restore`].
    pub fn from_snapshot(snapshot: &RangeAllocation) -> Result<Self, AllocError> {
        let range = snapshot_range(snapshot)?;
        let mut a = Self::new(range);
        a.restore(snapshot)?;
        Ok(a)
    }
}

/// The range a snapshot covers.
fn snapshot_range(snapshot: &RangeAllocation) -> Result<PortRange, AllocError> {
    snapshot
        .range
        .parse()
        .map_err(|e: PortRangeError| AllocError::BadSnapshot(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_print_as_kubernetes_does() {
        let r: PortRange = "30000-32767".parse().unwrap();
        assert_eq!(r, PortRange::DEFAULT_NODE_PORTS);
        assert_eq!(r.to_string(), "30000-32767");
        assert_eq!("30000+2767".parse::<PortRange>().unwrap(), r);
        assert_eq!("8080".parse::<PortRange>().unwrap().size(), 1);
        for bad in ["", "0-10", "10-5", "a-b", "65535+1", "1-65536"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bands_match_kubernetes() {
        for (range, band) in [
            ("30000-32767", 86),
            ("30000-30015", 0),
            ("30000-30016", 16),
            ("1-65535", 128),
        ] {
            let a = PortAllocator::new(range.parse().unwrap());
            assert_eq!(a.static_band(), band, "{range}");
        }
    }

    #[test]
    fn errors_are_the_api_servers() {
        let mut a = PortAllocator::new(PortRange::DEFAULT_NODE_PORTS);
        assert_eq!(
            a.allocate(8080).unwrap_err().to_string(),
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        );
        a.allocate(30080).unwrap();
        assert_eq!(
            a.allocate(30080).unwrap_err().to_string(),
            "provided port is already allocated"
        );
        let mut other = PortAllocator::new("30000-30100".parse().unwrap());
        assert_eq!(
            other.restore(&a.snapshot()).unwrap_err().to_string(),
            "the provided port range does not match the current port range"
        );
    }

    #[test]
    fn dynamic_band_first_then_static() {
        let mut a = PortAllocator::new(PortRange::DEFAULT_NODE_PORTS);
        let mut rng = crate::random::SeededRandom::new(1);
        for _ in 0..(2768 - 86) {
            assert!(a.allocate_next(&mut rng).unwrap() >= 30086);
        }
        for _ in 0..86 {
            assert!(a.allocate_next(&mut rng).unwrap() < 30086);
        }
        assert_eq!(a.allocate_next(&mut rng), Err(AllocError::Full));
        let b = PortAllocator::from_snapshot(&a.snapshot()).unwrap();
        assert_eq!(b, a);
        assert_eq!(b.iter().count(), 2768);
    }
}
