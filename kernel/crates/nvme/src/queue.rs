//! One submission/completion queue pair.
//!
//! Command identifiers double as slot numbers: a command owns its slot (and
//! the slot's page for PRP lists or DSM ranges) from submission until its
//! completion entry arrives. At most `depth - 1` commands are outstanding, so
//! the submission ring can never overrun. Completion entries are consumed
//! while their phase tag matches the expected phase, which flips each time the
//! head wraps.

use crate::hal::{DmaRegion, NvmeHal};
use crate::spec::{Cap, Command, Completion, doorbell};
use alloc::vec::Vec;
use zerocopy::{FromBytes, IntoBytes};

pub const PAGE: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Free,
    /// Outstanding for `owner` (a namespace bdev) with its `tag`.
    Busy {
        owner: u32,
        tag: u64,
        deadline_us: u64,
    },
    /// Timed out and reported; the device may still complete it.
    Abandoned {
        owner: u32,
        tag: u64,
    },
}

pub struct QueuePair<D: DmaRegion> {
    pub id: u16,
    depth: u16,
    sq: D,
    cq: D,
    pages: D,
    tail: u16,
    head: u16,
    phase: bool,
    slots: Vec<Slot>,
    free: Vec<u16>,
}

impl<D: DmaRegion> QueuePair<D> {
    /// Allocates the rings and one page per command slot.
    pub fn new<H: NvmeHal<Dma = D>>(hal: &H, id: u16, depth: u16) -> Option<Self> {
        let depth = depth.max(2);
        let slots = depth as usize - 1;
        Some(QueuePair {
            id,
            depth,
            sq: hal.dma_alloc(depth as usize * 64)?,
            cq: hal.dma_alloc(depth as usize * 16)?,
            pages: hal.dma_alloc(slots * PAGE)?,
            tail: 0,
            head: 0,
            phase: true,
            slots: alloc::vec![Slot::Free; slots],
            free: (0..slots as u16).rev().collect(),
        })
    }

    pub fn depth(&self) -> u16 {
        self.depth
    }

    pub fn sq_phys(&self) -> u64 {
        self.sq.phys()
    }

    pub fn cq_phys(&self) -> u64 {
        self.cq.phys()
    }

    /// Commands that may still be outstanding (including abandoned ones).
    pub fn outstanding(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn alloc(&mut self) -> Option<u16> {
        self.free.pop()
    }

    /// Returns an unused slot from `alloc` (a command that was never pushed).
    pub fn release(&mut self, cid: u16) {
        self.slots[cid as usize] = Slot::Free;
        self.free.push(cid);
    }

    pub fn slot(&self, cid: u16) -> Slot {
        self.slots.get(cid as usize).copied().unwrap_or(Slot::Free)
    }

    pub fn set_slot(&mut self, cid: u16, s: Slot) {
        self.slots[cid as usize] = s;
    }

    pub fn slots(&self) -> impl Iterator<Item = (u16, Slot)> + '_ {
        self.slots.iter().enumerate().map(|(i, s)| (i as u16, *s))
    }

    /// Bus address of slot `cid`'s page.
    pub fn page_phys(&self, cid: u16) -> u64 {
        self.pages.phys() + cid as u64 * PAGE as u64
    }

    pub fn write_page(&mut self, cid: u16, off: usize, data: &[u8]) {
        self.pages.write(cid as usize * PAGE + off, data);
    }

    /// Places `cmd` at the tail and rings the doorbell.
    pub fn push<H: NvmeHal>(&mut self, hal: &H, cap: Cap, cmd: &Command) {
        self.sq.write(self.tail as usize * 64, cmd.as_bytes());
        self.tail = (self.tail + 1) % self.depth;
        hal.write32(doorbell(cap, self.id, false), self.tail as u32);
    }

    /// Consumes every new completion entry, then updates the head doorbell.
    /// Entries for slots not outstanding are device bugs and are skipped.
    pub fn reap<H: NvmeHal>(
        &mut self,
        hal: &H,
        cap: Cap,
        mut f: impl FnMut(Slot, &Completion),
    ) -> usize {
        let mut n = 0;
        loop {
            // The phase tag first: the rest of the entry is only valid once it
            // has flipped, and the device may still be writing it otherwise.
            let at = self.head as usize * 16;
            let mut status = [0u8; 2];
            self.cq.read(at + 14, &mut status);
            if (u16::from_le_bytes(status) & 1 != 0) != self.phase {
                break;
            }
            let mut raw = [0u8; 16];
            self.cq.read(at, &mut raw);
            let Ok(cqe) = Completion::read_from_bytes(&raw) else {
                break;
            };
            self.head += 1;
            if self.head == self.depth {
                self.head = 0;
                self.phase = !self.phase;
            }
            n += 1;
            if let Some(slot) = self.slots.get(cqe.cid as usize).copied()
                && slot != Slot::Free
            {
                self.release(cqe.cid);
                f(slot, &cqe);
            }
        }
        if n > 0 {
            hal.write32(doorbell(cap, self.id, true), self.head as u32);
        }
        n
    }
}
