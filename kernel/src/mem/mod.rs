//! Physical memory: the frame allocator, the heap, page tables and DMA buffers.
//!
//! The boot path identity-maps the first 4 GiB with 2 MiB write-back pages.
//! Here we map RAM above 4 GiB the same way, give the heap its share of free
//! memory, and map device registers uncached on demand. Physical and virtual
//! addresses are equal everywhere, which keeps DMA simple: a buffer's address
//! is its bus address.

pub mod dma;
pub mod pages;
pub mod paging;

use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};
use ironbay_boot::{BootInfo, MemKind, PhysRead};
use ironbay_platform::frames::FrameAllocator;
use linked_list_allocator::LockedHeap;
use spin::Mutex;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

pub(crate) static FRAMES: Mutex<FrameAllocator> = Mutex::new(FrameAllocator::new());

static IMAGE: Mutex<Range<u64>> = Mutex::new(0..0);
static USABLE: AtomicU64 = AtomicU64::new(0);
static HEAP_RANGE: Mutex<Range<u64>> = Mutex::new(0..0);
/// Everything below this address is mapped.
static MAPPED_LIMIT: AtomicU64 = AtomicU64::new(paging::BOOT_MAPPED);

/// Below 1 MiB live the BIOS data area, EBDA, option ROMs and the boot
/// trampolines of later SMP bring-up; keep it out of the allocator.
const LOW_RESERVED: u64 = 0x10_0000;

/// Reads physical memory through the identity map.
pub struct Phys;

impl PhysRead for Phys {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(end) = addr.checked_add(buf.len() as u64) else {
            return false;
        };
        if end > MAPPED_LIMIT.load(Ordering::Relaxed) {
            return false;
        }
        // SAFETY: the range lies below MAPPED_LIMIT, so every byte is mapped by
        // the identity map; the copy reads plain memory into a local buffer and
        // tolerates any bit pattern.
        unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) };
        true
    }
}

pub struct Report {
    pub usable: u64,
    pub heap: Range<u64>,
    pub free_frames: u64,
}

/// Sets up frames, maps all RAM and starts the heap with `heap_percent` of the
/// free memory.
pub fn init(info: &BootInfo, image: Range<u64>, heap_percent: u64) -> Report {
    *IMAGE.lock() = image.clone();
    USABLE.store(info.usable_bytes(), Ordering::Relaxed);
    let mut frames = FRAMES.lock();
    for r in info.memory.iter().filter(|r| r.kind == MemKind::Usable) {
        frames.add(r.base..r.end());
    }
    frames.reserve(0..LOW_RESERVED);
    frames.reserve(image);
    for m in &info.modules {
        frames.reserve(m.start..m.end);
    }

    let top = info
        .memory
        .iter()
        .filter(|r| r.kind == MemKind::Usable)
        .map(|r| r.end())
        .max()
        .unwrap_or(0);
    if top > paging::BOOT_MAPPED {
        for r in info
            .memory
            .iter()
            .filter(|r| r.kind == MemKind::Usable && r.end() > paging::BOOT_MAPPED)
        {
            if let Err(e) = paging::map_ram(&mut frames, r.base.max(paging::BOOT_MAPPED)..r.end()) {
                log::error!(
                    "cannot map RAM {:#x}..{:#x}: {e:?}; it stays unused",
                    r.base,
                    r.end()
                );
                frames.reserve(r.base..r.end());
            }
        }
        MAPPED_LIMIT.store(top.next_multiple_of(paging::HUGE_PAGE), Ordering::Relaxed);
    }

    let want = frames.free_bytes() / 100 * heap_percent;
    let heap = frames.alloc_largest(want, None).unwrap_or(0..0);
    if heap.is_empty() {
        drop(frames);
        panic!("no memory for the heap");
    }
    // SAFETY: the range was just taken out of the frame allocator, so nothing
    // else owns it; it is mapped (below MAPPED_LIMIT) and lives forever.
    unsafe {
        HEAP.lock()
            .init(heap.start as *mut u8, (heap.end - heap.start) as usize)
    };
    *HEAP_RANGE.lock() = heap.clone();
    Report {
        usable: info.usable_bytes(),
        heap,
        free_frames: frames.free_bytes(),
    }
}

/// RAM the boot memory map reported usable.
pub fn usable_bytes() -> u64 {
    USABLE.load(Ordering::Relaxed)
}

/// True when `addr..addr+len` lies in memory that holds kernel stacks (the
/// image's .bss and the heap), so a backtrace may read it.
pub fn is_stack_memory(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    let inside = |r: &Range<u64>| addr >= r.start && end <= r.end;
    // try_lock: this runs on fault paths that may have interrupted a holder.
    let image = IMAGE.try_lock().map(|r| inside(&r)).unwrap_or(false);
    let heap = HEAP_RANGE.try_lock().map(|r| inside(&r)).unwrap_or(false);
    image || heap
}

pub struct HeapStats {
    pub size: usize,
    pub used: usize,
}

/// Heap held back for I/O buffers (a quarter of the heap, at most 128 MiB):
/// the target I/O budget is cut from it, and RAM bdevs may not be created
/// into it.
const IO_RESERVE_MAX: usize = 128 << 20;

impl HeapStats {
    pub fn free(&self) -> usize {
        self.size - self.used
    }

    pub fn io_reserve(&self) -> usize {
        (self.size / 4).min(IO_RESERVE_MAX)
    }

    /// What a new RAM bdev may take: what lies beyond the reserve.
    pub fn ram_bdev_budget(&self) -> u64 {
        self.free().saturating_sub(self.io_reserve()) as u64
    }
}

pub fn heap_stats() -> HeapStats {
    let h = HEAP.lock();
    HeapStats {
        size: h.size(),
        used: h.used(),
    }
}

/// Maps device registers uncached; returns the address to access them at.
pub fn map_mmio(phys: u64, len: u64) -> Result<u64, paging::MapError> {
    paging::map_mmio(&mut FRAMES.lock(), phys, len)
}
