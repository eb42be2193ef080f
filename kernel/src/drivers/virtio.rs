//! virtio-drivers' HAL and PCI configuration access over our own.

use crate::mem::FRAMES;
use core::ptr::NonNull;
use ironbay_platform::pci::{Bdf, ConfigAccess};
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};
use virtio_drivers::{BufferDirection, PhysAddr};

pub struct Hal;

// SAFETY: dma_alloc hands out zeroed, page-aligned frames taken from the
// frame allocator (owned until dma_dealloc returns them); physical and virtual
// addresses are equal everywhere, so `share` can give the buffer's own
// address; MMIO regions are mapped uncached before use.
unsafe impl virtio_drivers::Hal for Hal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let bytes = pages as u64 * 4096;
        let Some(phys) = FRAMES.lock().alloc(bytes, 4096, None) else {
            panic!("out of DMA memory for a virtqueue ({pages} pages)");
        };
        // SAFETY: the frames were just allocated for us and are mapped.
        unsafe { core::ptr::write_bytes(phys as *mut u8, 0, bytes as usize) };
        (
            phys,
            NonNull::new(phys as *mut u8).expect("frame at address 0"),
        )
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        FRAMES.lock().free(paddr, pages as u64 * 4096);
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let addr = crate::mem::map_mmio(paddr, size as u64)
            .unwrap_or_else(|e| panic!("map virtio BAR {paddr:#x}: {e:?}"));
        NonNull::new(addr as *mut u8).expect("MMIO at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// Our configuration-space access, as virtio-drivers' PCI root wants it.
pub struct Cam {
    pub access: &'static dyn ConfigAccess,
    pub segment: u16,
}

impl Cam {
    fn bdf(&self, df: DeviceFunction) -> Bdf {
        Bdf {
            segment: self.segment,
            bus: df.bus,
            device: df.device,
            function: df.function,
        }
    }
}

impl ConfigurationAccess for Cam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        self.access.read32(self.bdf(df), offset as u16)
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
        self.access.write32(self.bdf(df), offset as u16, data);
    }

    unsafe fn unsafe_clone(&self) -> Self {
        Cam {
            access: self.access,
            segment: self.segment,
        }
    }
}

/// The virtio PCI transport of function `f`, with DMA enabled.
pub fn transport(
    f: &ironbay_platform::pci::Function,
) -> Result<virtio_drivers::transport::pci::PciTransport, alloc::string::String> {
    use virtio_drivers::transport::pci::bus::PciRoot;
    let access =
        crate::pci::config(f.bdf.segment).ok_or("no configuration access for its segment")?;
    let mut root = PciRoot::new(Cam {
        access,
        segment: f.bdf.segment,
    });
    let df = DeviceFunction {
        bus: f.bdf.bus,
        device: f.bdf.device,
        function: f.bdf.function,
    };
    crate::pci::enable_dma(f);
    virtio_drivers::transport::pci::PciTransport::new::<Hal, _>(&mut root, df)
        .map_err(|e| alloc::format!("transport: {e}"))
}
