//! Dirty bitmaps: which chunks of a bdev were written since the bitmap was
//! made or last cleared (changed block tracking for incremental backup, as
//! QEMU's block dirty bitmaps). One bit per `granularity` bytes; the
//! registry marks every write, write-zeroes and unmap submitted to the bdev
//! while the bitmap is enabled.

use alloc::string::String;
use alloc::vec::Vec;

/// Bitmaps one bdev may carry.
pub const MAX_PER_BDEV: usize = 64;
/// Smallest and largest granularity (QEMU's bounds).
pub const MIN_GRANULARITY: u32 = 512;
pub const MAX_GRANULARITY: u32 = 1 << 31;
/// Longest bitmap name (QEMU's).
pub const MAX_NAME: usize = 1023;
/// Heap all bitmaps together may take: a fine granularity on a large
/// bdev must not take the heap the appliance serves from.
pub const MAX_TOTAL_BYTES: u64 = 32 << 20;

#[derive(Clone, Debug)]
pub struct DirtyBitmap {
    pub name: String,
    pub granularity: u32,
    /// Writes mark it only while enabled.
    pub enabled: bool,
    /// Kept across reboots where the bdev can store it.
    pub persistent: bool,
    /// Its stored contents could not be trusted (the appliance stopped
    /// without saving it, or the copy is damaged): it records nothing and
    /// can only be removed, as QEMU's in-use bitmaps.
    pub inconsistent: bool,
    size: u64,
    bits: Vec<u64>,
}

impl DirtyBitmap {
    /// A clean bitmap over `size` bytes; `None` if memory for it is short.
    pub fn new(name: &str, granularity: u32, size: u64) -> Option<Self> {
        let mut bits = Vec::new();
        let words = size.div_ceil(granularity as u64).div_ceil(64) as usize;
        bits.try_reserve_exact(words).ok()?;
        bits.resize(words, 0);
        Some(DirtyBitmap {
            name: name.into(),
            granularity,
            enabled: true,
            persistent: false,
            inconsistent: false,
            size,
            bits,
        })
    }

    /// A bitmap with stored contents: `words` little-endian words of 64
    /// chunks each; `None` if their count does not fit the size.
    pub fn from_words(name: &str, granularity: u32, size: u64, words: Vec<u64>) -> Option<Self> {
        if granularity == 0 || words.len() as u64 != Self::heap_bytes(granularity, size) / 8 {
            return None;
        }
        let mut b = DirtyBitmap {
            name: name.into(),
            granularity,
            enabled: true,
            persistent: true,
            inconsistent: false,
            size,
            bits: words,
        };
        // Nothing past the last chunk may count.
        let chunks = b.chunks();
        if let Some(last) = b.bits.last_mut()
            && !chunks.is_multiple_of(64)
        {
            *last &= (1u64 << (chunks % 64)) - 1;
        }
        Some(b)
    }

    /// A stored bitmap whose contents are lost: it holds no bits.
    pub fn lost(name: &str, granularity: u32, size: u64) -> Self {
        DirtyBitmap {
            name: name.into(),
            granularity,
            enabled: false,
            persistent: true,
            inconsistent: true,
            size,
            bits: Vec::new(),
        }
    }

    /// A copy; `None` if memory for it is short (bitmaps may be large:
    /// an infallible clone could stop the appliance).
    pub fn try_clone(&self) -> Option<Self> {
        let mut bits = Vec::new();
        bits.try_reserve_exact(self.bits.len()).ok()?;
        bits.extend_from_slice(&self.bits);
        Some(DirtyBitmap {
            name: self.name.clone(),
            bits,
            ..*self
        })
    }

    /// The bits, 64 chunks per word (what a store saves).
    pub fn words(&self) -> &[u64] {
        &self.bits
    }

    /// Follows the bdev to a new size: chunks past the old end start
    /// clean, as QEMU's. `false` if memory for a larger bitmap is short;
    /// the bitmap is then lost (inconsistent), since it can no longer
    /// tell what changed.
    pub fn resize(&mut self, size: u64) -> bool {
        if self.inconsistent || size == self.size {
            self.size = size;
            return true;
        }
        let words = Self::heap_bytes(self.granularity, size) / 8;
        let extra = (words as usize).saturating_sub(self.bits.len());
        if self.bits.try_reserve_exact(extra).is_err() {
            self.bits = Vec::new();
            self.inconsistent = true;
            self.enabled = false;
            self.size = size;
            return false;
        }
        // Bits of a partial last chunk past the new end must not linger.
        let chunks = size.div_ceil(self.granularity as u64);
        self.bits.resize(words as usize, 0);
        if let Some(last) = self.bits.last_mut()
            && !chunks.is_multiple_of(64)
        {
            *last &= (1u64 << (chunks % 64)) - 1;
        }
        self.size = size;
        true
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Heap a bitmap over `size` bytes at `granularity` takes.
    pub fn heap_bytes(granularity: u32, size: u64) -> u64 {
        size.div_ceil(granularity as u64).div_ceil(64) * 8
    }

    /// Heap this bitmap takes.
    pub fn bytes(&self) -> u64 {
        self.bits.len() as u64 * 8
    }

    fn chunks(&self) -> u64 {
        self.size.div_ceil(self.granularity as u64)
    }

    fn get(&self, i: u64) -> bool {
        self.bits
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Marks the chunks bytes `off..off + len` touch (if enabled).
    pub fn mark(&mut self, off: u64, len: u64) {
        if self.enabled && !self.inconsistent {
            self.set_range(off, len);
        }
    }

    fn set_range(&mut self, off: u64, len: u64) {
        if len == 0 || off >= self.size || self.inconsistent {
            return;
        }
        let g = self.granularity as u64;
        let end = (off + len).min(self.size);
        for i in off / g..end.div_ceil(g) {
            self.bits[(i / 64) as usize] |= 1 << (i % 64);
        }
    }

    pub fn clear(&mut self) {
        self.bits.iter_mut().for_each(|w| *w = 0);
    }

    /// Bytes in dirty chunks (the last chunk counts only up to the size).
    pub fn dirty_bytes(&self) -> u64 {
        let g = self.granularity as u64;
        let set: u64 = self.bits.iter().map(|w| w.count_ones() as u64).sum();
        // Whole words at a time; only the last chunk may be short.
        let last = self.chunks().saturating_sub(1);
        if set > 0 && self.get(last) {
            set * g - (g - (self.size - last * g))
        } else {
            set * g
        }
    }

    /// Marks everything dirty in `other` (any granularity) here too.
    pub fn merge_from(&mut self, other: &DirtyBitmap) {
        if other.granularity == self.granularity && other.size == self.size {
            for (w, o) in self.bits.iter_mut().zip(&other.bits) {
                *w |= o;
            }
            return;
        }
        other.runs(0, other.size, |off, len, dirty| {
            if dirty {
                self.set_range(off, len);
            }
            true
        });
    }

    /// Runs of (offset, length, dirty) covering `off..off + len`, cut at
    /// the bitmap's size; at most `max` of them (the rest of the range is
    /// left out).
    pub fn extents(&self, off: u64, len: u64, max: usize) -> Vec<(u64, u64, bool)> {
        let mut out = Vec::new();
        self.runs(off, len, |o, n, d| {
            if out.len() == max {
                return false;
            }
            out.push((o, n, d));
            true
        });
        out
    }

    /// Calls `f` with each run of (offset, length, dirty) in `off..off +
    /// len` (cut at the size) until it returns false. Whole words of equal
    /// chunks are skipped at once, so clean or dirty stretches cost little
    /// however fine the granularity.
    pub fn runs(&self, off: u64, len: u64, mut f: impl FnMut(u64, u64, bool) -> bool) {
        let end = off.saturating_add(len).min(self.size);
        let g = self.granularity as u64;
        let last = end.div_ceil(g);
        let mut pos = off;
        while pos < end {
            let d = self.get(pos / g);
            let mut j = pos / g + 1;
            while j < last {
                let same = if d { u64::MAX } else { 0 };
                if j.is_multiple_of(64)
                    && self.bits.get((j / 64) as usize).copied().unwrap_or(0) == same
                {
                    j += 64;
                } else if self.get(j) == d {
                    j += 1;
                } else {
                    break;
                }
            }
            let next = (j * g).min(end);
            if !f(pos, next - pos, d) {
                return;
            }
            pos = next;
        }
    }
}

/// QEMU's default granularity: the device's cluster size where it has
/// one (at least 4 KiB), else 64 KiB.
pub fn default_granularity(cluster: Option<u64>) -> u32 {
    match cluster {
        Some(c) if c > 0 => c.clamp(4096, MAX_GRANULARITY as u64) as u32,
        _ => 64 << 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_chunks_and_reports_runs() {
        let mut b = DirtyBitmap::new("b0", 65536, 1 << 20).unwrap();
        b.mark(4096, 512);
        b.mark(65536 * 3 - 1, 2);
        assert_eq!(
            b.extents(0, 1 << 20, usize::MAX),
            [
                (0, 65536, true),
                (65536, 65536, false),
                (131072, 131072, true),
                (262144, (1 << 20) - 262144, false)
            ]
        );
        assert_eq!(b.extents(140_000, 10, 9), [(140_000, 10, true)]);
        assert_eq!(b.dirty_bytes(), 3 * 65536);
        b.enabled = false;
        b.mark(900_000, 10);
        assert_eq!(b.dirty_bytes(), 3 * 65536);
        b.clear();
        assert_eq!(b.extents(0, 1 << 20, usize::MAX), [(0, 1 << 20, false)]);
    }

    #[test]
    fn merging_across_granularities_and_a_short_last_chunk() {
        let mut a = DirtyBitmap::new("a", 4096, 10_000).unwrap();
        let mut b = DirtyBitmap::new("b", 65536, 10_000).unwrap();
        a.mark(8192, 1);
        assert_eq!(a.dirty_bytes(), 10_000 - 8192);
        b.merge_from(&a);
        assert_eq!(b.extents(0, 10_000, 9), [(0, 10_000, true)]);
        assert_eq!(default_granularity(None), 65536);
        assert_eq!(default_granularity(Some(1 << 20)), 1 << 20);
        assert_eq!(default_granularity(Some(512)), 4096);
    }

    #[test]
    fn resizing_keeps_old_bits_and_starts_new_chunks_clean() {
        let mut b = DirtyBitmap::new("b", 4096, 100 * 4096).unwrap();
        b.mark(99 * 4096, 1);
        b.mark(10 * 4096, 1);
        assert!(b.resize(70 * 4096));
        assert_eq!(b.dirty_bytes(), 4096);
        assert!(b.resize(200 * 4096));
        assert_eq!(b.extents(0, 200 * 4096, 9).len(), 3, "chunk 99 was cut off");
        let w = b.words().to_vec();
        let c = DirtyBitmap::from_words("b", 4096, 200 * 4096, w).unwrap();
        assert_eq!(c.extents(0, 200 * 4096, 9), b.extents(0, 200 * 4096, 9));
        assert!(DirtyBitmap::from_words("b", 4096, 200 * 4096, vec![0; 2]).is_none());
        // Bits past the end in stored words do not count.
        let all = DirtyBitmap::from_words("b", 4096, 70 * 4096 - 100, vec![u64::MAX; 2]).unwrap();
        assert_eq!(all.dirty_bytes(), 70 * 4096 - 100);
        let mut l = DirtyBitmap::lost("b", 4096, 4096);
        l.mark(0, 4096);
        assert_eq!(l.dirty_bytes(), 0);
        assert_eq!(l.extents(0, 4096, 9), [(0, 4096, false)]);
    }

    #[test]
    fn runs_skip_whole_words_and_stop_at_the_limit() {
        // 1 GiB at 512 bytes: two million chunks.
        let mut b = DirtyBitmap::new("b", 512, 1 << 30).unwrap();
        b.mark(100 << 20, 512 * 70);
        b.mark(900 << 20, 1);
        let want = [
            (0, 100 << 20, false),
            (100 << 20, 512 * 70, true),
            ((100 << 20) + 512 * 70, (800 << 20) - 512 * 70, false),
            (900 << 20, 512, true),
            ((900 << 20) + 512, (124 << 20) - 512, false),
        ];
        assert_eq!(b.extents(0, 1 << 30, 99), want);
        // Every other chunk dirty: the reply stops at the limit.
        for i in 0..10_000u64 {
            b.mark(i * 1024, 1);
        }
        assert_eq!(b.extents(0, 1 << 30, 1024).len(), 1024);
        let mut c = DirtyBitmap::new("c", 65536, 1 << 30).unwrap();
        c.merge_from(&b);
        // 157 chunks of 64 KiB over the first 10 MiB, one at 100 MiB, one at 900.
        assert_eq!(c.dirty_bytes(), 159 * 65536);
        let mut d = DirtyBitmap::new("d", 512, 1 << 30).unwrap();
        d.merge_from(&b);
        assert_eq!(d.words(), b.words());
    }
}
