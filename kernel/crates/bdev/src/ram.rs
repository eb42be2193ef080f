//! Memory for RAM-backed data: whole 4 KiB pages from a [`PagePool`], taken
//! on first write and given back when every block on them is unmapped,
//! zeroed or the store is cleared. The kernel's pool hands out physical
//! frames outside the heap; tests use [`HeapPages`].
//!
//! A [`RamStore`] maps byte offsets to pages through a two-level table, so a
//! large, mostly empty store costs a few bytes of heap per 2 MiB, and keeps
//! one bit per block for what was written (block status is exact even when
//! blocks are smaller than pages).

use crate::types::IoStatus;
use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

pub const PAGE_SIZE: usize = 4096;

/// One page of data memory, owned by whoever holds it until given back.
pub type Page = &'static mut [u8; PAGE_SIZE];

/// Where RAM bdevs and caches get their pages.
pub trait PagePool {
    /// A page with unspecified contents, or `None` when memory ran out.
    fn alloc(&self) -> Option<Page>;
    /// Gives a page from [`alloc`](Self::alloc) back.
    fn free(&self, page: Page);
    /// Bytes the pool could still hand out.
    fn free_bytes(&self) -> u64;
    /// Bytes of pages currently handed out.
    fn held_bytes(&self) -> u64;
    /// Everything data may ever use: held + free.
    fn capacity(&self) -> u64 {
        self.held_bytes() + self.free_bytes()
    }
}

pub type SharedPool = Rc<dyn PagePool>;

/// Pages of dropped [`HeapPages`] pools, for the next pool to take: a
/// page, once leaked from a `Box`, never goes back to the heap, so tools
/// and fuzzers that make a pool per run keep reusing the same pages.
static RECYCLED: spin::Mutex<Vec<Page>> = spin::Mutex::new(Vec::new());

/// Pages from the heap (host tests and tools), optionally limited.
pub struct HeapPages {
    spare: RefCell<Vec<Page>>,
    held: core::cell::Cell<u64>,
    limit: Option<u64>,
}

impl HeapPages {
    pub fn unlimited() -> SharedPool {
        Rc::new(HeapPages {
            spare: RefCell::new(Vec::new()),
            held: core::cell::Cell::new(0),
            limit: None,
        })
    }

    /// At most `pages` pages out at once.
    pub fn limited(pages: u64) -> SharedPool {
        Rc::new(HeapPages {
            spare: RefCell::new(Vec::new()),
            held: core::cell::Cell::new(0),
            limit: Some(pages),
        })
    }
}

impl Drop for HeapPages {
    fn drop(&mut self) {
        RECYCLED.lock().append(self.spare.get_mut());
    }
}

impl PagePool for HeapPages {
    fn alloc(&self) -> Option<Page> {
        if self.limit.is_some_and(|l| self.held.get() >= l) {
            return None;
        }
        let spare = self.spare.borrow_mut().pop();
        let page = match spare.or_else(|| RECYCLED.lock().pop()) {
            Some(p) => p,
            // Leaked on purpose: a page lives in `spare`, then in
            // `RECYCLED`, once given back.
            None => Box::leak(Box::new([0u8; PAGE_SIZE])),
        };
        self.held.set(self.held.get() + 1);
        Some(page)
    }

    fn free(&self, page: Page) {
        self.held.set(self.held.get() - 1);
        self.spare.borrow_mut().push(page);
    }

    fn free_bytes(&self) -> u64 {
        match self.limit {
            Some(l) => (l - self.held.get()) * PAGE_SIZE as u64,
            None => u64::MAX / 2,
        }
    }

    fn held_bytes(&self) -> u64 {
        self.held.get() * PAGE_SIZE as u64
    }
}

/// `len` bytes from byte offset `off` cut at page boundaries: (page
/// number, offset in the page, range of the caller's buffer).
fn pieces(off: u64, len: usize) -> impl Iterator<Item = (usize, usize, core::ops::Range<usize>)> {
    let mut done = 0;
    core::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let pos = off + done as u64;
        let at = (pos % PAGE_SIZE as u64) as usize;
        let n = (PAGE_SIZE - at).min(len - done);
        let piece = ((pos / PAGE_SIZE as u64) as usize, at, done..done + n);
        done += n;
        Some(piece)
    })
}

/// Pages per second-level table (2 MiB of data each).
const LEAF: usize = 512;

type Leaf = Box<[Option<Page>]>;

/// Sparse RAM storage of `blocks` blocks of `block_size` bytes.
pub struct RamStore {
    pool: SharedPool,
    block_size: u32,
    blocks: u64,
    leaves: Vec<Option<Leaf>>,
    /// One bit per block: written since creation or its last unmap.
    written: Vec<u64>,
    pages: u64,
}

impl RamStore {
    /// An empty store; only the tables come from the heap (fallibly).
    pub fn new(pool: SharedPool, blocks: u64, block_size: u32) -> Result<Self, IoStatus> {
        let mut s = RamStore {
            pool,
            block_size,
            blocks: 0,
            leaves: Vec::new(),
            written: Vec::new(),
            pages: 0,
        };
        s.resize(blocks)?;
        Ok(s)
    }

    pub fn pool(&self) -> &SharedPool {
        &self.pool
    }

    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn size_bytes(&self) -> u64 {
        self.blocks * self.block_size as u64
    }

    /// Bytes of pages this store holds.
    pub fn held_bytes(&self) -> u64 {
        self.pages * PAGE_SIZE as u64
    }

    /// Heap bytes the tables of a store of `bytes` need.
    pub fn table_bytes(bytes: u64, block_size: u32) -> u64 {
        let pages = bytes.div_ceil(PAGE_SIZE as u64);
        pages.div_ceil(LEAF as u64) * 8
            + pages * 8
            + (bytes / block_size.max(1) as u64).div_ceil(64) * 8
    }

    /// Grows or shrinks; pages past a new, smaller end are given back.
    pub fn resize(&mut self, blocks: u64) -> Result<(), IoStatus> {
        let bytes = blocks
            .checked_mul(self.block_size as u64)
            .ok_or(IoStatus::NoMemory)?;
        let pages =
            usize::try_from(bytes.div_ceil(PAGE_SIZE as u64)).map_err(|_| IoStatus::NoMemory)?;
        let leaves = pages.div_ceil(LEAF);
        let words = usize::try_from(blocks.div_ceil(64)).map_err(|_| IoStatus::NoMemory)?;
        if blocks < self.blocks {
            self.zero(blocks, self.blocks - blocks);
            self.leaves.truncate(leaves);
            self.written.truncate(words);
            self.blocks = blocks;
            return Ok(());
        }
        self.leaves
            .try_reserve_exact(leaves.saturating_sub(self.leaves.len()))
            .map_err(|_| IoStatus::NoMemory)?;
        self.written
            .try_reserve_exact(words.saturating_sub(self.written.len()))
            .map_err(|_| IoStatus::NoMemory)?;
        self.leaves.resize_with(leaves, || None);
        self.written.resize(words, 0);
        self.blocks = blocks;
        Ok(())
    }

    fn page(&self, n: usize) -> Option<&[u8; PAGE_SIZE]> {
        self.leaves.get(n / LEAF)?.as_ref()?[n % LEAF].as_deref()
    }

    fn page_mut(&mut self, n: usize) -> Option<&mut [u8; PAGE_SIZE]> {
        self.leaves.get_mut(n / LEAF)?.as_mut()?[n % LEAF].as_deref_mut()
    }

    fn mark(&mut self, lba: u64, blocks: u64, on: bool) {
        for b in lba..lba + blocks {
            let (w, bit) = ((b / 64) as usize, b % 64);
            if on {
                self.written[w] |= 1 << bit;
            } else {
                self.written[w] &= !(1 << bit);
            }
        }
    }

    pub fn is_written(&self, block: u64) -> bool {
        self.written
            .get((block / 64) as usize)
            .is_some_and(|w| w & (1 << (block % 64)) != 0)
    }

    /// Copies `out.len()` bytes from byte offset `off`; holes read zeroes.
    pub fn read(&self, off: u64, out: &mut [u8]) {
        for (n, at, part) in pieces(off, out.len()) {
            match self.page(n) {
                Some(p) => out[part.clone()].copy_from_slice(&p[at..at + part.len()]),
                None => out[part].fill(0),
            }
        }
    }

    /// Makes sure pages `first..=last` exist; on failure the pages taken by
    /// this call go back, so a failed write holds nothing new.
    fn populate(&mut self, first: usize, last: usize) -> Result<(), IoStatus> {
        let mut taken: Vec<usize> = Vec::new();
        for n in first..=last {
            if self.page(n).is_some() {
                continue;
            }
            let ok = (|| {
                if self.leaves[n / LEAF].is_none() {
                    let leaf: Vec<Option<Page>> = {
                        let mut v = Vec::new();
                        v.try_reserve_exact(LEAF).ok()?;
                        v.resize_with(LEAF, || None);
                        v
                    };
                    self.leaves[n / LEAF] = Some(leaf.into_boxed_slice());
                }
                let page = self.pool.alloc()?;
                page.fill(0);
                self.leaves[n / LEAF].as_mut()?[n % LEAF] = Some(page);
                self.pages += 1;
                taken.try_reserve(1).ok()?;
                taken.push(n);
                Some(())
            })();
            if ok.is_none() {
                for n in taken {
                    self.release(n);
                }
                return Err(IoStatus::NoSpace);
            }
        }
        Ok(())
    }

    fn release(&mut self, n: usize) {
        if let Some(page) = self
            .leaves
            .get_mut(n / LEAF)
            .and_then(|l| l.as_mut())
            .and_then(|l| l[n % LEAF].take())
        {
            self.pages -= 1;
            self.pool.free(page);
        }
    }

    /// Writes whole blocks at byte offset `off` (a block multiple).
    /// `NoSpace` when the pool has no page left; nothing changes then.
    pub fn write(&mut self, off: u64, data: &[u8]) -> Result<(), IoStatus> {
        if data.is_empty() {
            return Ok(());
        }
        let first = (off / PAGE_SIZE as u64) as usize;
        let last = ((off + data.len() as u64 - 1) / PAGE_SIZE as u64) as usize;
        self.populate(first, last)?;
        for (n, at, part) in pieces(off, data.len()) {
            if let Some(p) = self.page_mut(n) {
                p[at..at + part.len()].copy_from_slice(&data[part]);
            }
        }
        let bs = self.block_size as u64;
        self.mark(off / bs, data.len() as u64 / bs, true);
        Ok(())
    }

    /// Unmaps `blocks` blocks at `lba`: they read zeroes, and pages left with
    /// no written block go back to the pool.
    pub fn zero(&mut self, lba: u64, blocks: u64) {
        if blocks == 0 {
            return;
        }
        let bs = self.block_size as u64;
        self.mark(lba, blocks, false);
        let (start, end) = (lba * bs, (lba + blocks) * bs);
        let first = (start / PAGE_SIZE as u64) as usize;
        let last = ((end - 1) / PAGE_SIZE as u64) as usize;
        for n in first..=last {
            if self.page(n).is_none() {
                continue;
            }
            let p0 = n as u64 * PAGE_SIZE as u64;
            let (b0, b1) = (
                p0 / bs,
                (p0 + PAGE_SIZE as u64).div_ceil(bs).min(self.blocks),
            );
            if (b0..b1).all(|b| !self.is_written(b)) {
                self.release(n);
            } else if let Some(p) = self.page_mut(n) {
                let s = start.max(p0) - p0;
                let e = end.min(p0 + PAGE_SIZE as u64) - p0;
                p[s as usize..e as usize].fill(0);
            }
        }
    }

    /// Drops all data; every page goes back.
    pub fn clear(&mut self) {
        for n in 0..self.leaves.len() * LEAF {
            self.release(n);
        }
        self.leaves.iter_mut().for_each(|l| *l = None);
        self.written.iter_mut().for_each(|w| *w = 0);
    }

    /// Runs of (blocks, written) over `lba..lba+blocks`.
    pub fn allocation(&self, lba: u64, blocks: u64) -> Option<Vec<(u64, bool)>> {
        let end = lba.checked_add(blocks)?.min(self.blocks);
        let mut runs: Vec<(u64, bool)> = Vec::new();
        for b in lba..end {
            let a = self.is_written(b);
            match runs.last_mut() {
                Some((n, state)) if *state == a => *n += 1,
                _ => runs.push((1, a)),
            }
        }
        Some(runs)
    }
}

impl Drop for RamStore {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_come_on_write_and_go_on_unmap() {
        let pool = HeapPages::limited(4);
        let mut s = RamStore::new(pool.clone(), 64, 512).unwrap();
        assert_eq!(s.held_bytes(), 0);
        let mut out = [1u8; 1024];
        s.read(0, &mut out);
        assert!(out.iter().all(|&b| b == 0));
        s.write(512, &[7u8; 512]).unwrap();
        assert_eq!(s.held_bytes(), 4096);
        s.read(0, &mut out);
        assert!(out[..512].iter().all(|&b| b == 0) && out[512..].iter().all(|&b| b == 7));
        // Another block on the same page stays; the page goes with the last.
        s.write(0, &[9u8; 512]).unwrap();
        s.zero(1, 1);
        assert_eq!(s.held_bytes(), 4096);
        s.read(512, &mut out[..512]);
        assert!(out[..512].iter().all(|&b| b == 0));
        s.zero(0, 1);
        assert_eq!((s.held_bytes(), pool.held_bytes()), (0, 0));
        // Out of pages: the write fails and holds nothing new.
        s.write(0, &[1u8; 3 * 4096]).unwrap();
        assert_eq!(s.write(3 * 4096, &[1u8; 2 * 4096]), Err(IoStatus::NoSpace));
        assert_eq!(s.held_bytes(), 3 * 4096);
        assert_eq!(s.allocation(0, 64).unwrap(), [(24, true), (40, false)]);
        s.clear();
        assert_eq!(pool.held_bytes(), 0);
        s.write(0, &[1u8; 4096]).unwrap();
        s.resize(4).unwrap();
        s.resize(64).unwrap();
        let mut b = [1u8; 4096];
        s.read(0, &mut b);
        assert!(b[..2048].iter().all(|&x| x == 1) && b[2048..].iter().all(|&x| x == 0));
        drop(s);
        assert_eq!(pool.held_bytes(), 0);
    }
}
