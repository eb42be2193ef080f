//! The NVMe driver's HAL: volatile MMIO on BAR0, DMA frames, the TSC clock.

use crate::mem::dma::DmaBuffer;
use ironbay_nvme::{DmaRegion, NvmeHal};

pub struct Hal {
    base: u64,
    len: u64,
}

impl Hal {
    /// # Safety
    /// `base..base+len` must be the controller's BAR0, mapped uncached, used
    /// by this driver alone.
    pub unsafe fn new(base: u64, len: u64) -> Self {
        Hal { base, len }
    }

    fn reg(&self, offset: usize) -> *mut u32 {
        assert!(
            offset as u64 + 4 <= self.len && offset.is_multiple_of(4),
            "NVMe register {offset:#x} outside BAR0"
        );
        (self.base + offset as u64) as *mut u32
    }
}

pub struct Dma(DmaBuffer);

impl DmaRegion for Dma {
    fn phys(&self) -> u64 {
        self.0.phys()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn read(&self, off: usize, out: &mut [u8]) {
        self.0.read_volatile(off, out);
    }
    fn write(&mut self, off: usize, data: &[u8]) {
        self.0.write(off, data);
    }
}

impl NvmeHal for Hal {
    type Dma = Dma;

    fn read32(&self, offset: usize) -> u32 {
        // SAFETY: `reg` checked the offset lies in BAR0, which `new`'s caller
        // guaranteed is mapped uncached and ours.
        unsafe { core::ptr::read_volatile(self.reg(offset)) }
    }

    fn write32(&self, offset: usize, value: u32) {
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile(self.reg(offset), value) }
    }

    fn dma_alloc(&self, bytes: usize) -> Option<Dma> {
        DmaBuffer::new(bytes, 4096, false).map(Dma)
    }

    fn buffer_phys(&self, addr: usize) -> u64 {
        // Identity map: the heap's virtual addresses are physical.
        addr as u64
    }

    fn now_us(&self) -> u64 {
        crate::time::uptime_us()
    }
}
