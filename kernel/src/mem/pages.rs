//! The data page pool: RAM bdev and cache pages straight from the frame
//! allocator, outside the heap. Pages given back go on a free list threaded
//! through the pages themselves and are reused before new frames are taken,
//! so the frame allocator's range list never fragments into single pages.
//! A reserve stays in the frame allocator for DMA rings and page tables of
//! devices attached later.

use super::FRAMES;
use ironbay_bdev::ram::{PAGE_SIZE, Page, PagePool};
use spin::Mutex;

/// Frames the pool leaves to drivers.
const DMA_RESERVE: u64 = 8 << 20;

struct State {
    /// Physical address of the first free page (0: none); each free page
    /// holds the address of the next in its first 8 bytes.
    head: u64,
    spare: u64,
    held: u64,
}

static STATE: Mutex<State> = Mutex::new(State {
    head: 0,
    spare: 0,
    held: 0,
});

/// The kernel's [`PagePool`]: stateless, all state lives in `STATE`.
pub struct FramePages;

/// `addr` is a page-aligned frame this pool owns: taken from the frame
/// allocator or its free list, which only holds pages given back with
/// `free`. All RAM is identity-mapped.
fn page_at(addr: u64) -> Page {
    // SAFETY: an owned, identity-mapped frame; the one caller that gets it owns it.
    unsafe { &mut *(addr as *mut [u8; PAGE_SIZE]) }
}

impl PagePool for FramePages {
    fn alloc(&self) -> Option<Page> {
        let mut s = STATE.lock();
        let addr = if s.head != 0 {
            let addr = s.head;
            let page = page_at(addr);
            s.head = u64::from_ne_bytes(page[..8].try_into().ok()?);
            s.spare -= 1;
            addr
        } else {
            let mut frames = FRAMES.lock();
            if frames.free_bytes() < DMA_RESERVE + PAGE_SIZE as u64 {
                return None;
            }
            frames.alloc(PAGE_SIZE as u64, PAGE_SIZE as u64, None)?
        };
        s.held += 1;
        Some(page_at(addr))
    }

    fn free(&self, page: Page) {
        let mut s = STATE.lock();
        let head = s.head;
        page[..8].copy_from_slice(&head.to_ne_bytes());
        s.head = page.as_ptr() as u64;
        s.spare += 1;
        s.held -= 1;
    }

    fn free_bytes(&self) -> u64 {
        let spare = STATE.lock().spare * PAGE_SIZE as u64;
        spare + FRAMES.lock().free_bytes().saturating_sub(DMA_RESERVE)
    }

    fn held_bytes(&self) -> u64 {
        STATE.lock().held * PAGE_SIZE as u64
    }
}
