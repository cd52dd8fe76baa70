//! Arbitrary range strings and bitmap bytes as a stored allocator snapshot (what another
//! API server replica, or a corrupted store, may hand us): restoring must never panic, and
//! a restored allocator must snapshot back to what it read and keep allocating sanely.
#![no_main]

use libfuzzer_sys::fuzz_target;
use service_core::alloc::{IpAllocator, PortAllocator, RangeAllocation};

/// A fixed generator: the fuzzer drives the input, not the random start.
struct Counter(u64);

impl service_core::random::Random for Counter {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0
    }
}

fuzz_target!(|input: (&str, &[u8])| {
    let (range, data) = input;
    let snapshot = RangeAllocation::new(range, data.to_vec());
    let trimmed: Vec<u8> = data.iter().copied().skip_while(|&b| b == 0).collect();
    let mut rng = Counter(data.len() as u64);
    if let Ok(mut a) = IpAllocator::from_snapshot(&snapshot) {
        assert_eq!(a.snapshot().data, trimmed);
        let before = a.used();
        if a.allocate_next(&mut rng).is_ok() {
            assert_eq!(a.used(), before + 1);
        } else {
            assert_eq!(a.free(), 0);
        }
    }
    if let Ok(mut p) = PortAllocator::from_snapshot(&snapshot) {
        assert_eq!(p.snapshot().data, trimmed);
        let _ = p.allocate_next(&mut rng);
    }
    // The JSON form, too.
    let _ = RangeAllocation::from_json(data);
});
