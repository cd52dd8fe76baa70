//! Allocator invariants, for any sequence of operations.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;
use service_core::alloc::{
    AllocError, Bitmap, IpAllocator, PortAllocator, PortRange, RangeAllocation,
};
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

proptest! {
    /// Never the same address twice; every allocation is in range; the allocator agrees
    /// with a plain set; release makes an address available again; a snapshot restores to
    /// the same allocator.
    #[test]
    fn ip_allocator_is_a_set(prefix in 26u8..=30, seed: u64, ops in ops()) {
        let cidr: IpNet = format!("10.1.2.0/{prefix}").parse().unwrap();
        let mut a = IpAllocator::new(cidr);
        let mut rng = SeededRandom::new(seed);
        let mut model: BTreeSet<IpAddr> = BTreeSet::new();
        let all: Vec<IpAddr> = cidr.hosts().collect();
        for op in ops {
            match op {
                Op::Next => match a.allocate_next(&mut rng) {
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
                    let r = a.allocate(ip);
                    prop_assert_eq!(r.is_ok(), model.insert(ip));
                }
                Op::Release(i) => {
                    let ip = all[i % all.len()];
                    prop_assert_eq!(a.release(ip), model.remove(&ip));
                    // Available again, explicitly.
                    if i % 2 == 0 {
                        prop_assert!(a.allocate(ip).is_ok());
                        model.insert(ip);
                    }
                }
            }
            prop_assert_eq!(a.used(), model.len());
        }
        prop_assert_eq!(a.iter().collect::<BTreeSet<_>>(), model);
        let restored = IpAllocator::from_snapshot(&a.snapshot()).unwrap();
        prop_assert_eq!(&restored, &a);
        let json = RangeAllocation::from_json(&a.snapshot().to_json()).unwrap();
        prop_assert_eq!(IpAllocator::from_snapshot(&json).unwrap(), a);
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
