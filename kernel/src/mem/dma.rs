//! DMA buffers: page-aligned, zeroed, physically contiguous memory whose bus
//! address is its physical address (the map is identity).

use super::FRAMES;
use ironbay_platform::frames::PAGE;

pub struct DmaBuffer {
    phys: u64,
    len: usize,
}

#[allow(
    dead_code,
    reason = "used by the block and network drivers in later stages"
)]
impl DmaBuffer {
    /// `len` bytes aligned to `align` (at least a page), optionally below 4 GiB
    /// for devices limited to 32-bit addresses.
    pub fn new(len: usize, align: u64, below_4g: bool) -> Option<Self> {
        let limit = if below_4g {
            super::paging::BOOT_MAPPED
        } else {
            u64::MAX
        };
        Self::new_in(len, align, 0..limit)
    }

    /// A buffer placed inside the physical `window`.
    pub fn new_in(len: usize, align: u64, window: core::ops::Range<u64>) -> Option<Self> {
        let phys = FRAMES
            .lock()
            .alloc_in(len as u64, align.max(PAGE), window)?;
        // SAFETY: the frames were just taken from the allocator, so this buffer
        // owns them; all RAM is mapped, so the range is writable.
        unsafe { core::ptr::write_bytes(phys as *mut u8, 0, len) };
        Some(DmaBuffer { phys, len })
    }

    pub fn phys(&self) -> u64 {
        self.phys
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.phys as *mut u8
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the buffer owns `len` mapped bytes at `phys`; a shared borrow
        // of self prevents mutable access through this API meanwhile (a device
        // may still write them, which is the point of DMA memory).
        unsafe { core::slice::from_raw_parts(self.phys as *const u8, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, with exclusive access through `&mut self`.
        unsafe { core::slice::from_raw_parts_mut(self.phys as *mut u8, self.len) }
    }
}

#[allow(dead_code, reason = "used by the block and network drivers")]
impl DmaBuffer {
    /// Copies bytes the device may have written, with volatile loads so the
    /// compiler cannot reuse an earlier read. Panics if out of range.
    pub fn read_volatile(&self, off: usize, out: &mut [u8]) {
        assert!(
            off.checked_add(out.len())
                .is_some_and(|end| end <= self.len),
            "DMA read out of range"
        );
        let base = (self.phys as usize + off) as *const u8;
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: in range of this buffer's mapped frames (checked above).
            *b = unsafe { core::ptr::read_volatile(base.add(i)) };
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
    }

    /// Copies bytes for the device to read; the fence orders them before any
    /// later doorbell write. Panics if out of range.
    pub fn write(&mut self, off: usize, data: &[u8]) {
        assert!(
            off.checked_add(data.len())
                .is_some_and(|end| end <= self.len),
            "DMA write out of range"
        );
        self.as_mut_slice()[off..off + data.len()].copy_from_slice(data);
        core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        FRAMES.lock().free(self.phys, self.len as u64);
    }
}
