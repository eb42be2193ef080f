//! Page tables over the boot identity map.
//!
//! RAM above 4 GiB is mapped write-back with 2 MiB pages. Device registers are
//! mapped uncached with 4 KiB pages; a boot 2 MiB page that covers them is split
//! first, so RAM sharing that 2 MiB stays write-back.

use ironbay_platform::frames::{FrameAllocator, PAGE};
use x86_64::instructions::tlb;
use x86_64::registers::control::Cr3;

/// The boot path maps [0, 4 GiB).
pub const BOOT_MAPPED: u64 = 4 << 30;
pub const HUGE_PAGE: u64 = 2 << 20;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// Highest physical address a 4-level table maps.
const MAX_PHYS: u64 = 1 << 46;

#[derive(Debug)]
pub enum MapError {
    OutOfFrames,
    OutOfRange,
}

type Table = [u64; 512];

/// The table an entry points to. Tables are allocated below 4 GiB, which the
/// boot map covers, so their physical address is usable as a pointer.
fn table_at(phys: u64) -> *mut Table {
    phys as *mut Table
}

fn new_table(frames: &mut FrameAllocator) -> Result<u64, MapError> {
    let f = frames
        .alloc(PAGE, PAGE, Some(BOOT_MAPPED))
        .ok_or(MapError::OutOfFrames)?;
    // SAFETY: the frame was just allocated (owned by us alone) and lies below
    // 4 GiB, inside the identity map.
    unsafe { core::ptr::write_bytes(table_at(f), 0, 1) };
    Ok(f)
}

/// Follows or creates the next-level table behind `entry`.
///
/// # Safety
/// `entry` must point at a live entry of the active page-table hierarchy
/// above the page-directory level, so it never holds a huge page.
unsafe fn next(entry: *mut u64, frames: &mut FrameAllocator) -> Result<*mut Table, MapError> {
    // SAFETY: guaranteed by the caller.
    let e = unsafe { *entry };
    if e & PRESENT != 0 {
        return Ok(table_at(e & ADDR_MASK));
    }
    let t = new_table(frames)?;
    // SAFETY: as above; the new table is zeroed and fully ours.
    unsafe { *entry = t | PRESENT | WRITABLE };
    Ok(table_at(t))
}

/// The page-directory entry that maps `addr`, creating upper levels.
fn pd_entry(addr: u64, frames: &mut FrameAllocator) -> Result<*mut u64, MapError> {
    if addr >= MAX_PHYS {
        return Err(MapError::OutOfRange);
    }
    let pml4 = table_at(Cr3::read().0.start_address().as_u64());
    let i4 = ((addr >> 39) & 511) as usize;
    let i3 = ((addr >> 30) & 511) as usize;
    let i2 = ((addr >> 21) & 511) as usize;
    // SAFETY: CR3 holds the live PML4; all tables below it are identity-mapped
    // (boot tables or frames below 4 GiB), and with no 1 GiB pages PML4 and
    // PDPT entries always point at tables. One CPU, no concurrent walkers.
    unsafe {
        let pdpt = next(&raw mut (*pml4)[i4], frames)?;
        let pd = next(&raw mut (*pdpt)[i3], frames)?;
        Ok(&raw mut (*pd)[i2])
    }
}

/// Maps `range` of RAM write-back with 2 MiB pages (rounded outwards).
pub fn map_ram(frames: &mut FrameAllocator, range: core::ops::Range<u64>) -> Result<(), MapError> {
    let mut a = range.start & !(HUGE_PAGE - 1);
    while a < range.end {
        let pde = pd_entry(a, frames)?;
        // SAFETY: `pde` points into a live page directory; the entry is either
        // empty or already maps this same address.
        unsafe {
            if *pde & PRESENT == 0 {
                *pde = a | PRESENT | WRITABLE | HUGE;
            }
        }
        a += HUGE_PAGE;
    }
    Ok(())
}

/// Maps device registers `phys..phys+len` uncached and returns the address to
/// use (identical to `phys`). Whole aligned 2 MiB stretches get 2 MiB pages
/// (ECAM windows are hundreds of MiB); the rest gets 4 KiB pages.
pub fn map_mmio(frames: &mut FrameAllocator, phys: u64, len: u64) -> Result<u64, MapError> {
    const UNCACHED: u64 = PRESENT | WRITABLE | WRITE_THROUGH | CACHE_DISABLE;
    let end = phys.checked_add(len.max(1)).ok_or(MapError::OutOfRange)?;
    let mut a = phys & !(PAGE - 1);
    while a < end {
        let pde = pd_entry(a, frames)?;
        if a.is_multiple_of(HUGE_PAGE) && a + HUGE_PAGE <= end {
            // SAFETY: `pde` is a live page-directory entry (see `pd_entry`); the
            // whole 2 MiB is device space, so one uncached huge page replaces
            // whatever mapped it (a 4 KiB table there is simply abandoned).
            unsafe { *pde = a | UNCACHED | HUGE };
            a += HUGE_PAGE;
            continue;
        }
        // SAFETY: `pde` is a live page-directory entry. A huge page is replaced
        // by an equivalent 4 KiB table before any attribute changes, so RAM in
        // the same 2 MiB keeps its mapping; the TLB is flushed at the end.
        unsafe {
            let e = *pde;
            let pt = if e & PRESENT == 0 {
                let t = new_table(frames)?;
                *pde = t | PRESENT | WRITABLE;
                table_at(t)
            } else if e & HUGE != 0 {
                let t = new_table(frames)?;
                let base = e & ADDR_MASK & !(HUGE_PAGE - 1);
                let flags = e & (WRITABLE | WRITE_THROUGH | CACHE_DISABLE);
                for (i, pte) in (*table_at(t)).iter_mut().enumerate() {
                    *pte = (base + i as u64 * PAGE) | PRESENT | flags;
                }
                *pde = t | PRESENT | WRITABLE;
                table_at(t)
            } else {
                table_at(e & ADDR_MASK)
            };
            (*pt)[((a >> 12) & 511) as usize] = a | UNCACHED;
        }
        a += PAGE;
    }
    tlb::flush_all();
    Ok(phys)
}

/// True if the 4 KiB page holding `addr` is mapped uncached (for self-tests).
pub fn is_uncached(addr: u64) -> Option<bool> {
    let pml4 = table_at(Cr3::read().0.start_address().as_u64());
    // SAFETY: read-only walk of the live tables, all inside the identity map.
    unsafe {
        let e4 = (*pml4)[((addr >> 39) & 511) as usize];
        if e4 & PRESENT == 0 {
            return None;
        }
        let e3 = (*table_at(e4 & ADDR_MASK))[((addr >> 30) & 511) as usize];
        if e3 & PRESENT == 0 {
            return None;
        }
        let e2 = (*table_at(e3 & ADDR_MASK))[((addr >> 21) & 511) as usize];
        if e2 & PRESENT == 0 {
            return None;
        }
        let leaf = if e2 & HUGE != 0 {
            e2
        } else {
            (*table_at(e2 & ADDR_MASK))[((addr >> 12) & 511) as usize]
        };
        (leaf & PRESENT != 0).then_some(leaf & CACHE_DISABLE != 0)
    }
}
