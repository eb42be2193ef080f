//! Physical frame allocator over the boot memory map.
//!
//! Holds free ranges sorted by address. Allocation is first fit with an
//! alignment and an optional upper bound (for devices or page tables that need
//! memory below 4 GiB); freeing merges neighbours.

use alloc::vec::Vec;
use core::ops::Range;

pub const PAGE: u64 = 4096;

#[derive(Debug, Default)]
pub struct FrameAllocator {
    free: Vec<Range<u64>>,
}

impl FrameAllocator {
    pub const fn new() -> Self {
        FrameAllocator { free: Vec::new() }
    }

    /// Adds usable memory, trimmed to whole pages.
    pub fn add(&mut self, range: Range<u64>) {
        let Some(start) = range.start.checked_next_multiple_of(PAGE) else { return };
        let end = range.end & !(PAGE - 1);
        if start < end {
            self.insert(start..end);
        }
    }

    /// Removes a range (kernel image, modules, firmware areas) from the free set.
    pub fn reserve(&mut self, range: Range<u64>) {
        let start = range.start & !(PAGE - 1);
        let end = range.end.checked_next_multiple_of(PAGE).unwrap_or(u64::MAX & !(PAGE - 1));
        let mut out = Vec::with_capacity(self.free.len() + 1);
        for r in self.free.drain(..) {
            if r.end <= start || r.start >= end {
                out.push(r);
                continue;
            }
            if r.start < start {
                out.push(r.start..start);
            }
            if r.end > end {
                out.push(end..r.end);
            }
        }
        self.free = out;
    }

    /// Allocates `size` bytes (rounded up to pages) aligned to `align` (a power
    /// of two, at least a page), ending at or below `limit`.
    pub fn alloc(&mut self, size: u64, align: u64, limit: Option<u64>) -> Option<u64> {
        let size = size.max(1).checked_next_multiple_of(PAGE)?;
        let align = align.max(PAGE);
        if !align.is_power_of_two() {
            return None;
        }
        let limit = limit.unwrap_or(u64::MAX);
        let (i, base) = self.free.iter().enumerate().find_map(|(i, r)| {
            let base = r.start.checked_next_multiple_of(align)?;
            let end = base.checked_add(size)?;
            (end <= r.end && end <= limit).then_some((i, base))
        })?;
        let r = self.free.remove(i);
        if base + size < r.end {
            self.free.insert(i, base + size..r.end);
        }
        if r.start < base {
            self.free.insert(i, r.start..base);
        }
        Some(base)
    }

    /// Takes the largest free range whole, up to `max` bytes (for the heap).
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
        let size = size.max(1).next_multiple_of(PAGE);
        self.insert(base..base.saturating_add(size));
    }

    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|r| r.end - r.start).sum()
    }

    pub fn ranges(&self) -> &[Range<u64>] {
        &self.free
    }

    fn insert(&mut self, r: Range<u64>) {
        let i = self.free.partition_point(|f| f.start < r.start);
        self.free.insert(i, r);
        // Merge with neighbours; overlapping input is folded, not duplicated.
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(self.free.len());
        for f in self.free.drain(..) {
            match merged.last_mut() {
                Some(last) if f.start <= last.end => last.end = last.end.max(f.end),
                _ => merged.push(f),
            }
        }
        self.free = merged;
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
        assert!(f.ranges().iter().any(|r| r.start == 0x20_1000 && r.end == 0x40_0000));
        f.free(a, 100);
        assert_eq!(f.ranges(), &[0x20_1000..0x200_0000]);
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
        assert_eq!(f.alloc(u64::MAX - 10, PAGE, None), None);
    }

    #[test]
    fn largest_for_heap() {
        let mut f = FrameAllocator::new();
        f.add(0x1000..0x9_f000);
        f.add(0x10_0000..0x2000_0000);
        let h = f.alloc_largest(0x800_0000, None).unwrap();
        assert_eq!(h, 0x10_0000..0x810_0000);
        assert_eq!(f.free_bytes(), (0x9_f000 - 0x1000) + (0x2000_0000 - 0x810_0000));
    }

    #[test]
    fn unaligned_input_is_trimmed() {
        let mut f = FrameAllocator::new();
        f.add(0x1234..0x5678);
        assert_eq!(f.ranges(), &[0x2000..0x5000]);
        f.add(0x10..0x20);
        assert_eq!(f.ranges().len(), 1);
    }
}
