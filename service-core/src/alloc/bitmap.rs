//! The allocation bitmap behind every allocator (`pkg/registry/core/service/allocator`),
//! with Kubernetes' static/dynamic band strategy and its snapshot format.
//!
//! Two levels of `u64` words: `words` holds one bit per offset, `full` one bit per word of
//! `words` that has no free bit. Padding bits past `max` are kept set at both levels, so a
//! search never has to mask them: finding a free offset touches at most one summary word
//! per 4,096 offsets, whatever the fill level.

use crate::random::Random;

/// Bits per word.
const W: usize = 64;

/// A bitmap of `max` offsets, split into a static band `[0, offset)` and a dynamic band
/// `[offset, max)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmap {
    max: usize,
    offset: usize,
    count: usize,
    words: Vec<u64>,
    full: Vec<u64>,
}

/// `data` of a snapshot sets offsets at or past the end of the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the snapshot marks offset {offset} allocated, but the range has {max} offsets")]
#[non_exhaustive]
pub struct OutOfRangeBits {
    /// The lowest offending offset.
    pub offset: usize,
    /// Offsets in the range.
    pub max: usize,
}

fn words_for(bits: usize) -> usize {
    bits.div_ceil(W)
}

/// The word vector for `bits` offsets, padding bits set.
fn padded(bits: usize) -> Vec<u64> {
    let mut v = vec![0u64; words_for(bits)];
    let rem = bits % W;
    if rem != 0
        && let Some(last) = v.last_mut()
    {
        *last = !0 << rem;
    }
    v
}

/// The first clear bit in `bits` at or after `from`, or `None`.
fn first_clear(bits: &[u64], from: usize) -> Option<usize> {
    let mut i = from / W;
    let word = *bits.get(i)? | ((1u64 << (from % W)) - 1);
    if word != !0 {
        return Some(i * W + (!word).trailing_zeros() as usize);
    }
    i += 1;
    while let Some(&word) = bits.get(i) {
        if word != !0 {
            return Some(i * W + (!word).trailing_zeros() as usize);
        }
        i += 1;
    }
    None
}

impl Bitmap {
    /// An empty bitmap of `max` offsets whose first `offset` form the static band
    /// (`offset` is clamped to `max`).
    pub fn new(max: usize, offset: usize) -> Self {
        Self {
            max,
            offset: offset.min(max),
            count: 0,
            words: padded(max),
            full: padded(words_for(max)),
        }
    }

    /// Number of offsets.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Size of the static band.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Allocated offsets.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Free offsets.
    pub fn free(&self) -> usize {
        self.max - self.count
    }

    /// Whether `offset` is allocated (false outside the range).
    pub fn has(&self, offset: usize) -> bool {
        offset < self.max && self.words[offset / W] & (1 << (offset % W)) != 0
    }

    /// Marks `offset` allocated; false if it already was or is out of range.
    pub fn allocate(&mut self, offset: usize) -> bool {
        if offset >= self.max || self.has(offset) {
            return false;
        }
        let i = offset / W;
        self.words[i] |= 1 << (offset % W);
        if self.words[i] == !0 {
            self.full[i / W] |= 1 << (i % W);
        }
        self.count += 1;
        true
    }

    /// Marks `offset` free; false if it was not allocated.
    pub fn release(&mut self, offset: usize) -> bool {
        if !self.has(offset) {
            return false;
        }
        let i = offset / W;
        self.words[i] &= !(1 << (offset % W));
        self.full[i / W] &= !(1 << (i % W));
        self.count -= 1;
        true
    }

    /// The first free offset in `[from, to)`.
    fn free_in(&self, from: usize, to: usize) -> Option<usize> {
        if from >= to {
            return None;
        }
        // The word holding `from` first, then whole words found through the summary.
        let i = from / W;
        let word = self.words[i] | ((1u64 << (from % W)) - 1);
        let found = if word != !0 {
            i * W + (!word).trailing_zeros() as usize
        } else {
            let j = first_clear(&self.full, i + 1)?;
            j * W + (!self.words[j]).trailing_zeros() as usize
        };
        (found < to).then_some(found)
    }

    /// The first free offset scanning `[lo, hi)` from `start` and wrapping around.
    fn scan_band(&self, lo: usize, hi: usize, start: usize) -> Option<usize> {
        self.free_in(start, hi).or_else(|| self.free_in(lo, start))
    }

    /// Allocates a free offset as Kubernetes does (`randomScanStrategyWithOffset`): from a
    /// random point of the dynamic band, scanning up and wrapping; when that band is full,
    /// likewise in the static band. `None` when everything is allocated.
    pub fn allocate_next(&mut self, rng: &mut impl Random) -> Option<usize> {
        if self.count >= self.max {
            return None;
        }
        let dynamic = self.max - self.offset;
        let mut found = None;
        if dynamic > 0 {
            let start = self.offset + rng.below(dynamic);
            found = self.scan_band(self.offset, self.max, start);
        }
        if found.is_none() && self.offset > 0 {
            let start = rng.below(self.offset);
            found = self.scan_band(0, self.offset, start);
        }
        let at = found?;
        self.allocate(at);
        Some(at)
    }

    /// Allocated offsets, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(move |(i, &word)| {
            let mut w = word;
            std::iter::from_fn(move || {
                while w != 0 {
                    let b = w.trailing_zeros() as usize;
                    w &= w - 1;
                    let at = i * W + b;
                    if at < self.max {
                        return Some(at);
                    }
                }
                None
            })
        })
    }

    /// The bitmap as Kubernetes stores it (`RangeAllocation.data`): the big-endian bytes of
    /// the bitmap read as one integer with offset 0 as its least significant bit, without
    /// leading zero bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.words.len() * 8);
        let rem = self.max % W;
        for (i, &word) in self.words.iter().enumerate().rev() {
            let word = if i + 1 == self.words.len() && rem != 0 {
                word & ((1u64 << rem) - 1)
            } else {
                word
            };
            if out.is_empty() {
                if word == 0 {
                    continue;
                }
                let bytes = word.to_be_bytes();
                let skip = (word.leading_zeros() / 8) as usize;
                out.extend_from_slice(&bytes[skip..]);
            } else {
                out.extend_from_slice(&word.to_be_bytes());
            }
        }
        out
    }

    /// Replaces the allocations with those of `data` (the format of [`Bitmap::to_bytes`];
    /// leading zero bytes are allowed).
    ///
    /// # Errors
    /// `data` marks an offset at or past `max` allocated; the bitmap is unchanged then.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), OutOfRangeBits> {
        let mut words = padded(self.max);
        let n = words.len();
        // Byte k from the end holds offsets 8k..8k+7.
        for (k, &byte) in data.iter().rev().enumerate() {
            if byte == 0 {
                continue;
            }
            let base = k * 8;
            let past_end = if base >= self.max {
                byte
            } else if base + 8 > self.max {
                byte & !((1u8 << (self.max - base)) - 1)
            } else {
                0
            };
            if past_end != 0 {
                return Err(OutOfRangeBits {
                    offset: base + past_end.trailing_zeros() as usize,
                    max: self.max,
                });
            }
            words[k / 8] |= u64::from(byte) << ((k % 8) * 8);
        }
        let mut full = padded(n);
        let mut count = 0usize;
        let rem = self.max % W;
        for (i, &word) in words.iter().enumerate() {
            let real = if i + 1 == n && rem != 0 {
                word & ((1u64 << rem) - 1)
            } else {
                word
            };
            count += real.count_ones() as usize;
            if word == !0 {
                full[i / W] |= 1 << (i % W);
            }
        }
        self.words = words;
        self.full = full;
        self.count = count;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic generator for tests: returns the values it was given, in turn.
    struct Fixed(Vec<u64>, usize);

    impl Random for Fixed {
        fn next_u64(&mut self) -> u64 {
            let v = self.0[self.1 % self.0.len()];
            self.1 += 1;
            v
        }
    }

    #[test]
    fn allocate_release_count() {
        let mut b = Bitmap::new(130, 0);
        assert!(b.allocate(0));
        assert!(!b.allocate(0));
        assert!(b.allocate(129));
        assert!(!b.allocate(130));
        assert_eq!(b.count(), 2);
        assert_eq!(b.iter().collect::<Vec<_>>(), [0, 129]);
        assert!(b.release(0));
        assert!(!b.release(0));
        assert_eq!(b.free(), 129);
    }

    #[test]
    fn snapshot_bytes_are_big_endian_with_offset_zero_last() {
        let mut b = Bitmap::new(254, 16);
        assert!(b.to_bytes().is_empty());
        b.allocate(0);
        assert_eq!(b.to_bytes(), [0x01]);
        b.allocate(9);
        assert_eq!(b.to_bytes(), [0x02, 0x01]);
        b.allocate(253);
        let bytes = b.to_bytes();
        assert_eq!(bytes.len(), 32);
        assert_eq!(bytes[0], 0x20);
        let mut c = Bitmap::new(254, 16);
        c.restore(&bytes).unwrap();
        assert_eq!(c, b);
        // Leading zero bytes are accepted.
        let mut padded = vec![0, 0];
        padded.extend_from_slice(&[0x02, 0x01]);
        c.restore(&padded).unwrap();
        assert_eq!(c.iter().collect::<Vec<_>>(), [0, 9]);
    }

    #[test]
    fn restore_rejects_bits_past_the_end() {
        let mut b = Bitmap::new(10, 0);
        b.allocate(3);
        let before = b.clone();
        assert_eq!(
            b.restore(&[0x04, 0x00]),
            Err(OutOfRangeBits {
                offset: 10,
                max: 10
            })
        );
        assert_eq!(
            b.restore(&[0x01, 0, 0, 0, 0, 0, 0, 0, 0])
                .unwrap_err()
                .offset,
            64
        );
        assert_eq!(b, before);
        assert!(b.restore(&[0x02, 0x00]).is_ok());
        assert_eq!(b.iter().collect::<Vec<_>>(), [9]);
    }

    #[test]
    fn next_scans_up_from_a_random_start_then_wraps() {
        let mut b = Bitmap::new(100, 10);
        // A start of 0 in the dynamic band is offset 10.
        assert_eq!(b.allocate_next(&mut Fixed(vec![0], 0)), Some(10));
        assert_eq!(b.allocate_next(&mut Fixed(vec![0], 0)), Some(11));
        // The largest start is offset 99; next after it wraps to 12.
        assert_eq!(b.allocate_next(&mut Fixed(vec![u64::MAX], 0)), Some(99));
        assert_eq!(b.allocate_next(&mut Fixed(vec![u64::MAX], 0)), Some(12));
    }

    /// kubernetes#109927: once the dynamic band was full, the early static-subrange code
    /// kept handing out the same address. The static band must be scanned like the other.
    #[test]
    fn static_band_only_after_dynamic_band_is_full() {
        let mut b = Bitmap::new(32, 16);
        let mut rng = Fixed(vec![7, 1 << 60, 3 << 62], 0);
        let mut got = Vec::new();
        while let Some(at) = b.allocate_next(&mut rng) {
            got.push(at);
        }
        assert_eq!(got.len(), 32);
        assert!(got[..16].iter().all(|&o| o >= 16), "{got:?}");
        assert!(got[16..].iter().all(|&o| o < 16), "{got:?}");
        let mut sorted = got.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 32);
        assert_eq!(b.allocate_next(&mut rng), None);
    }

    #[test]
    fn zero_sized_and_all_static() {
        let mut b = Bitmap::new(0, 0);
        assert_eq!(b.allocate_next(&mut Fixed(vec![1], 0)), None);
        assert!(b.to_bytes().is_empty());
        let mut b = Bitmap::new(5, 16);
        assert_eq!(b.offset(), 5);
        for _ in 0..5 {
            assert!(b.allocate_next(&mut Fixed(vec![3], 0)).is_some());
        }
        assert_eq!(b.allocate_next(&mut Fixed(vec![3], 0)), None);
    }

    #[test]
    fn summary_skips_full_words() {
        let mut b = Bitmap::new(64 * 200, 0);
        for o in 0..64 * 199 {
            b.allocate(o);
        }
        assert_eq!(b.free_in(0, b.max()), Some(64 * 199));
        b.release(64 * 3 + 5);
        assert_eq!(b.free_in(0, b.max()), Some(64 * 3 + 5));
        assert_eq!(b.free_in(64 * 3 + 6, 64 * 199), None);
    }
}
