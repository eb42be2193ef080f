//! What the driver needs from its environment.
//!
//! The kernel implements these with volatile MMIO on BAR0 and physically
//! contiguous DMA frames; host tests implement them with a fake controller.

/// A physically contiguous, zero-initialised memory region the controller can
/// access. Reads and writes go through these methods so an implementation can
/// make them volatile: the controller changes the memory behind the CPU's back.
pub trait DmaRegion {
    /// Bus address of the first byte.
    fn phys(&self) -> u64;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies `out.len()` bytes from offset `off`. Panics on out-of-range
    /// offsets, which are driver bugs, never device or network input.
    fn read(&self, off: usize, out: &mut [u8]);
    fn write(&mut self, off: usize, data: &[u8]);
}

pub trait NvmeHal {
    type Dma: DmaRegion;

    /// 32-bit read of a controller register at `offset` in BAR0.
    fn read32(&self, offset: usize) -> u32;
    fn write32(&self, offset: usize, value: u32);

    /// 64-bit registers as two 32-bit accesses, low half first.
    fn read64(&self, offset: usize) -> u64 {
        self.read32(offset) as u64 | (self.read32(offset + 4) as u64) << 32
    }
    fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }

    /// `bytes` of page-aligned DMA memory, or `None` when memory is exhausted.
    fn dma_alloc(&self, bytes: usize) -> Option<Self::Dma>;

    /// Bus address of a data buffer at CPU address `addr`.
    fn buffer_phys(&self, addr: usize) -> u64;

    /// Monotonic microseconds.
    fn now_us(&self) -> u64;
}
