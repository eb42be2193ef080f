//! Physical frame allocator over the boot memory map.
//!
//! Holds free ranges sorted by address in a fixed-capacity list, so it works
//! before the heap exists (the heap itself is carved from it). Allocation is
//! first fit with an alignment and an optional upper bound (for devices or page
//! tables that need memory below 4 GiB); freeing merges neighbours. If the list
//! is ever full, the smallest range is dropped and counted as lost rather than
//! failing the caller.

use core::ops::Range;
use heapless::Vec;

pub const PAGE: u64 = 4096;
const MAX_RANGES: usize = 256;

#[derive(Debug, Default)]
pub struct FrameAllocator {
    free: Vec<Range<u64>, MAX_RANGES>,
    lost: u64,
}

impl FrameAllocator {
    pub const fn new() -> Self {
        FrameAllocator {
            free: Vec::new(),
            lost: 0,
        }
    }

    /// Adds usable memory, trimmed to whole pages.
    pub fn add(&mut self, range: Range<u64>) {
        let Some(start) = range.start.checked_next_multiple_of(PAGE) else {
            return;
        };
        let end = range.end & !(PAGE - 1);
        if start < end {
            self.insert(start..end);
        }
    }

    /// Removes a range (kernel image, modules, firmware areas) from the free set.
    pub fn reserve(&mut self, range: Range<u64>) {
        let start = range.start & !(PAGE - 1);
        let end = range
            .end
            .checked_next_multiple_of(PAGE)
            .unwrap_or(!(PAGE - 1));
        let mut i = 0;
        while i < self.free.len() {
            let r = self.free[i].clone();
            if r.end <= start || r.start >= end {
                i += 1;
                continue;
            }
            self.free.remove(i);
            if r.end > end {
                self.put_at(i, end..r.end);
            }
            if r.start < start {
                self.put_at(i, r.start..start);
                i += 1;
            }
        }
    }

    /// Allocates `size` bytes (rounded up to pages) aligned to `align` (a power
    /// of two, at least a page), ending at or below `limit`.
    pub fn alloc(&mut self, size: u64, align: u64, limit: Option<u64>) -> Option<u64> {
        self.alloc_in(size, align, 0..limit.unwrap_or(u64::MAX))
    }

    /// Like [`alloc`](Self::alloc), with the block inside `window`.
    pub fn alloc_in(&mut self, size: u64, align: u64, window: Range<u64>) -> Option<u64> {
        let size = size.max(1).checked_next_multiple_of(PAGE)?;
        let align = align.max(PAGE);
        if !align.is_power_of_two() {
            return None;
        }
        let (i, base) = self.free.iter().enumerate().find_map(|(i, r)| {
            let base = r.start.max(window.start).checked_next_multiple_of(align)?;
            let end = base.checked_add(size)?;
            (end <= r.end && end <= window.end).then_some((i, base))
        })?;
        let r = self.free.remove(i);
        if base + size < r.end {
            self.put_at(i, base + size..r.end);
        }
        if r.start < base {
            self.put_at(i, r.start..base);
        }
        Some(base)
    }

    /// Takes up to `max` bytes from the start of the largest free range below
    /// `limit` (for the heap).
    pub fn alloc_largest(&mut self, max: u64, limit: Option<u64>) -> Option<Range<u64>> {
        let limit = limit.unwrap_or(u64::MAX);
        let best = self
            .free
            .iter()
            .filter(|r| r.start < limit)
            .max_by_key(|r| r.end.min(limit) - r.start)?
            .clone();
        let end = best.end.min(limit);
        let len = (end - best.start).min(max) & !(PAGE - 1);
        if len == 0 {
            return None;
        }
        let taken = best.start..best.start + len;
        self.reserve(taken.clone());
        Some(taken)
    }

    /// Returns frames from [`alloc`](Self::alloc).
    pub fn free(&mut self, base: u64, size: u64) {
        let size = size
            .max(1)
            .checked_next_multiple_of(PAGE)
            .unwrap_or(u64::MAX);
        self.insert(base..base.saturating_add(size));
    }

    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|r| r.end - r.start).sum()
    }

    /// Bytes dropped because the range list was full.
    pub fn lost_bytes(&self) -> u64 {
        self.lost
    }

    pub fn ranges(&self) -> &[Range<u64>] {
        &self.free
    }

    fn insert(&mut self, r: Range<u64>) {
        let i = self.free.partition_point(|f| f.start < r.start);
        self.put_at(i, r);
        // Merge around the new entry; overlapping input is folded, not duplicated.
        let mut j = i.saturating_sub(1);
        while j + 1 < self.free.len() {
            if self.free[j + 1].start <= self.free[j].end {
                let next = self.free.remove(j + 1);
                self.free[j].end = self.free[j].end.max(next.end);
            } else if j > i {
                break;
            } else {
                j += 1;
            }
        }
    }

    /// Inserts at `i`; when full, the smallest range (possibly the new one) is lost.
    fn put_at(&mut self, i: usize, r: Range<u64>) {
        if self.free.is_full() {
            let (k, smallest) = self
                .free
                .iter()
                .enumerate()
                .min_by_key(|(_, f)| f.end - f.start)
                .map(|(k, f)| (k, f.end - f.start))
                .unwrap_or((0, 0));
            if smallest >= r.end - r.start {
                self.lost += r.end - r.start;
                return;
            }
            self.lost += smallest;
            self.free.remove(k);
            let i = if k < i { i - 1 } else { i };
            let _ = self.free.insert(i, r);
            return;
        }
        let _ = self.free.insert(i, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_splits_and_alloc_aligns() {
        let mut f = FrameAllocator::new();
        f.add(0x10_0000..0x100_0000);
        f.add(0x100_0000..0x200_0000); // adjacent: merged
        assert_eq!(f.ranges().len(), 1);
        f.reserve(0x10_0000..0x20_0800);
        assert_eq!(f.ranges()[0].start, 0x20_1000);
        let a = f.alloc(100, 0x20_0000, None).unwrap();
        assert_eq!(a % 0x20_0000, 0);
        assert_eq!(a, 0x40_0000);
        // The gap before the aligned block stays free.
        assert!(
            f.ranges()
                .iter()
                .any(|r| r.start == 0x20_1000 && r.end == 0x40_0000)
        );
        f.free(a, 100);
        assert_eq!(f.ranges(), core::slice::from_ref(&(0x20_1000..0x200_0000)));
    }

    #[test]
    fn limits_and_exhaustion() {
        let mut f = FrameAllocator::new();
        f.add(0x1000..0x3000);
        f.add(0x1_0000_0000..0x1_0001_0000);
        assert_eq!(f.alloc(0x1000, PAGE, Some(0x2000)), Some(0x1000));
        assert_eq!(f.alloc(0x2000, PAGE, Some(0x1_0000_0000)), None);
        assert_eq!(f.alloc(0x2000, PAGE, None), Some(0x1_0000_0000));
        assert_eq!(f.alloc(0x1000, 3 * PAGE, None), None);
        assert_eq!(
            f.alloc_in(0x1000, PAGE, 0x1_0000_8000..u64::MAX),
            Some(0x1_0000_8000)
        );
        assert_eq!(f.alloc_in(0x1000, PAGE, 0x2_0000_0000..u64::MAX), None);
        assert_eq!(f.alloc(u64::MAX - 10, PAGE, None), None);
    }

    #[test]
    fn largest_for_heap() {
        let mut f = FrameAllocator::new();
        f.add(0x1000..0x9_f000);
        f.add(0x10_0000..0x2000_0000);
        let h = f.alloc_largest(0x800_0000, None).unwrap();
        assert_eq!(h, 0x10_0000..0x810_0000);
        assert_eq!(
            f.free_bytes(),
            (0x9_f000 - 0x1000) + (0x2000_0000 - 0x810_0000)
        );
    }

    #[test]
    fn overflowing_the_range_list_loses_smallest_not_panics() {
        let mut f = FrameAllocator::new();
        for i in 0..(MAX_RANGES as u64 + 10) {
            f.add(i * 0x10_0000..i * 0x10_0000 + PAGE * (1 + i % 3));
        }
        assert_eq!(f.ranges().len(), MAX_RANGES);
        assert!(f.lost_bytes() > 0);
        assert!(f.ranges().windows(2).all(|w| w[0].end < w[1].start));
    }

    #[test]
    fn unaligned_input_is_trimmed() {
        let mut f = FrameAllocator::new();
        f.add(0x1234..0x5678);
        assert_eq!(f.ranges(), core::slice::from_ref(&(0x2000..0x5000)));
        f.add(0x10..0x20);
        assert_eq!(f.ranges().len(), 1);
    }
}
