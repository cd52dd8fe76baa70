//! Allocator invariants, for any sequence of operations.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use service_core::alloc::{
    AllocError, Bitmap, IpAllocator, PortAllocator, PortRange, RangeAllocation,
    ServiceCidrAllocator,
};
use service_core::model::{IpFamily, ParentReference, ServiceCidr};
use service_core::random::SeededRandom;

#[derive(Clone, Debug)]
enum Op {
    Next,
    Take(usize),
    Release(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            4 => Just(Op::Next),
            1 => (0usize..64).prop_map(Op::Take),
            2 => (0usize..64).prop_map(Op::Release),
        ],
        0..300,
    )
}

/// What the ClusterIP allocator property needs of an allocator: both the bitmap one and
/// the ServiceCIDR/IPAddress one (Kubernetes 1.33) run the same test.
trait ClusterIps {
    fn next(&mut self, rng: &mut SeededRandom) -> Result<IpAddr, AllocError>;
    fn take(&mut self, ip: IpAddr) -> Result<(), AllocError>;
    fn give_back(&mut self, ip: IpAddr) -> bool;
    fn count(&self) -> usize;
}

impl ClusterIps for IpAllocator {
    fn next(&mut self, rng: &mut SeededRandom) -> Result<IpAddr, AllocError> {
        self.allocate_next(rng)
    }
    fn take(&mut self, ip: IpAddr) -> Result<(), AllocError> {
        self.allocate(ip)
    }
    fn give_back(&mut self, ip: IpAddr) -> bool {
        self.release(ip)
    }
    fn count(&self) -> usize {
        self.used()
    }
}

impl ClusterIps for ServiceCidrAllocator {
    fn next(&mut self, rng: &mut SeededRandom) -> Result<IpAddr, AllocError> {
        self.allocate_next(&IpFamily::Ipv4, ParentReference::service("ns", "svc"), rng)
    }
    fn take(&mut self, ip: IpAddr) -> Result<(), AllocError> {
        self.allocate(ip, ParentReference::service("ns", "svc"))
    }
    fn give_back(&mut self, ip: IpAddr) -> bool {
        self.release(ip)
    }
    fn count(&self) -> usize {
        self.used()
    }
}

/// Never the same address twice; every allocation is in range; the allocator agrees with a
/// plain set; release makes an address available again. Returns the model.
fn behaves_as_a_set(
    a: &mut impl ClusterIps,
    cidr: IpNet,
    seed: u64,
    ops: Vec<Op>,
) -> Result<BTreeSet<IpAddr>, TestCaseError> {
    let mut rng = SeededRandom::new(seed);
    let mut model: BTreeSet<IpAddr> = BTreeSet::new();
    let all: Vec<IpAddr> = cidr.hosts().collect();
    for op in ops {
        match op {
            Op::Next => match a.next(&mut rng) {
                Ok(ip) => {
                    prop_assert!(all.contains(&ip), "{ip} outside {cidr}");
                    prop_assert!(model.insert(ip), "{ip} handed out twice");
                }
                Err(e) => {
                    prop_assert_eq!(e, AllocError::Full);
                    prop_assert_eq!(model.len(), all.len());
                }
            },
            Op::Take(i) => {
                let ip = all[i % all.len()];
                let r = a.take(ip);
                prop_assert_eq!(r.is_ok(), model.insert(ip));
            }
            Op::Release(i) => {
                let ip = all[i % all.len()];
                prop_assert_eq!(a.give_back(ip), model.remove(&ip));
                // Available again, explicitly.
                if i % 2 == 0 {
                    prop_assert!(a.take(ip).is_ok());
                    model.insert(ip);
                }
            }
        }
        prop_assert_eq!(a.count(), model.len());
    }
    Ok(model)
}

proptest! {
    /// The bitmap allocator is a set; a snapshot restores to the same allocator.
    #[test]
    fn ip_allocator_is_a_set(prefix in 26u8..=30, seed: u64, ops in ops()) {
        let cidr: IpNet = format!("10.1.2.0/{prefix}").parse().unwrap();
        let mut a = IpAllocator::new(cidr);
        let model = behaves_as_a_set(&mut a, cidr, seed, ops)?;
        prop_assert_eq!(a.iter().collect::<BTreeSet<_>>(), model);
        let restored = IpAllocator::from_snapshot(&a.snapshot()).unwrap();
        prop_assert_eq!(&restored, &a);
        let json = RangeAllocation::from_json(&a.snapshot().to_json()).unwrap();
        prop_assert_eq!(IpAllocator::from_snapshot(&json).unwrap(), a);
    }

    /// The ServiceCIDR allocator is the same set; its IPAddress objects restore it.
    #[test]
    fn service_cidr_allocator_is_a_set(prefix in 26u8..=30, seed: u64, ops in ops()) {
        let cidr: IpNet = format!("10.1.2.0/{prefix}").parse().unwrap();
        let range = ServiceCidr::new("kubernetes", &[&cidr.to_string()]);
        let mut a = ServiceCidrAllocator::new();
        a.add(&range).unwrap();
        let model = behaves_as_a_set(&mut a, cidr, seed, ops)?;
        let objects = a.ip_addresses();
        let names: BTreeSet<IpAddr> =
            objects.iter().map(|o| o.metadata.name().parse().unwrap()).collect();
        prop_assert_eq!(names, model);
        let restored = ServiceCidrAllocator::from_objects(&[range], &objects).unwrap();
        prop_assert_eq!(restored, a);
    }

    #[test]
    fn port_allocator_is_a_set(size in 1u16..200, seed: u64, ops in ops()) {
        let range = PortRange::new(30000, 30000 + size - 1).unwrap();
        let mut a = PortAllocator::new(range);
        let mut rng = SeededRandom::new(seed);
        let mut model = BTreeSet::new();
        for op in ops {
            match op {
                Op::Next => match a.allocate_next(&mut rng) {
                    Ok(p) => {
                        prop_assert!(range.contains(p));
                        prop_assert!(model.insert(p), "{p} handed out twice");
                    }
                    Err(_) => prop_assert_eq!(model.len(), range.size()),
                },
                Op::Take(i) => {
                    let p = 30000 + (i % range.size()) as u16;
                    prop_assert_eq!(a.allocate(p).is_ok(), model.insert(p));
                }
                Op::Release(i) => {
                    let p = 30000 + (i % range.size()) as u16;
                    prop_assert_eq!(a.release(p), model.remove(&p));
                }
            }
        }
        prop_assert_eq!(a.iter().collect::<BTreeSet<_>>(), model);
        prop_assert_eq!(PortAllocator::from_snapshot(&a.snapshot()).unwrap(), a);
    }

    /// kubernetes#109927: the static band is used only when the dynamic band is full, and
    /// allocation goes on handing out distinct values from it.
    #[test]
    fn static_band_only_when_dynamic_band_is_full(max in 17usize..600, offset in 1usize..64, seed: u64, pinned in proptest::collection::vec(0usize..600, 0..40)) {
        let offset = offset.min(max - 1);
        let mut b = Bitmap::new(max, offset);
        for p in pinned {
            b.allocate(p % max);
        }
        let mut rng = SeededRandom::new(seed);
        let mut seen = BTreeSet::new();
        while let Some(at) = b.allocate_next(&mut rng) {
            prop_assert!(seen.insert(at));
            if at < offset {
                prop_assert!((offset..max).all(|o| b.has(o)), "static offset {at} while the dynamic band had room");
            }
        }
        prop_assert_eq!(b.count(), max);
    }

    /// Restoring arbitrary bytes either fails cleanly or yields a bitmap that snapshots back
    /// to the same bytes (without leading zeros).
    #[test]
    fn restore_of_arbitrary_bytes(max in 0usize..300, data in proptest::collection::vec(any::<u8>(), 0..48)) {
        let mut b = Bitmap::new(max, 16);
        if b.restore(&data).is_ok() {
            let trimmed: Vec<u8> = data.iter().copied().skip_while(|&x| x == 0).collect();
            prop_assert_eq!(b.to_bytes(), trimmed);
            prop_assert_eq!(b.count(), data.iter().map(|x| x.count_ones() as usize).sum::<usize>());
        }
    }
}
