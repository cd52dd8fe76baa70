//! Randomness for the allocators and the registry, passed in by the caller.
//!
//! This crate never reads the operating system's randomness (it does no IO). The
//! allocators pick a random starting point as Kubernetes does (so that API server replicas
//! rarely race for the same value), and the registry draws `uid`s and `generateName`
//! suffixes. All of that comes from a [`Random`] the caller supplies: usually a
//! [`SeededRandom`] seeded from the operating system, or a fixed seed in tests.
//!
//! ```
//! use service_core::random::{Random, SeededRandom};
//!
//! // In a program: `SeededRandom::new(rand::random())`. In a test, a fixed seed repeats.
//! let mut a = SeededRandom::new(7);
//! let mut b = SeededRandom::new(7);
//! assert_eq!(a.next_u64(), b.next_u64());
//! ```
//!
//! [`Random`] is this crate's own one-method trait, so no random-number crate's version
//! appears in our public API; implement it for any generator you already have.

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// A source of uniformly distributed 64-bit values.
pub trait Random {
    /// The next value.
    fn next_u64(&mut self) -> u64;

    /// A uniform integer in `[0, n)`; `n` must not be 0. Lemire's multiply-shift: the bias
    /// for `n < 2^32` is below `2^-32`.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Fills `dst` with random bytes.
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

impl<R: Random + ?Sized> Random for &mut R {
    fn next_u64(&mut self) -> u64 {
        (**self).next_u64()
    }
}

/// A seeded generator (ChaCha12, from the `rand` crate). Not for secrets: seed it from the
/// operating system where values should differ between runs.
#[derive(Debug)]
pub struct SeededRandom(StdRng);

impl SeededRandom {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self(StdRng::seed_from_u64(seed))
    }
}

impl Random for SeededRandom {
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = SeededRandom::new(1);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let v = r.below(7);
            assert!(v < 7);
            seen[v] = true;
        }
        assert!(
            seen.iter().all(|&s| s),
            "every value of [0, 7) drawn: {seen:?}"
        );
    }

    #[test]
    fn fill_bytes_fills_odd_lengths() {
        let mut r = SeededRandom::new(2);
        let mut b = [0u8; 13];
        r.fill_bytes(&mut b);
        assert!(b[8..].iter().any(|&x| x != 0), "the tail is filled: {b:?}");
    }

    #[test]
    fn seeds_differ() {
        assert_ne!(
            SeededRandom::new(1).next_u64(),
            SeededRandom::new(2).next_u64()
        );
    }
}
