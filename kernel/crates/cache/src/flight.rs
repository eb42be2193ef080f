//! What is in flight: caller requests with children at the source
//! ("parents"), the children and their tags, the cache blocks started
//! requests hold, requests waiting for them, and completions waiting for
//! `poll`. Tables for caller requests are sized for [`MAX_REQUESTS`] up
//! front; children grow with the requests in flight, fallibly.

use crate::{MAX_REQUESTS, WRITEBACK_DEPTH};
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use ironbay_bdev::{IoBuf, IoCompletion, IoRequest, IoStatus, IoType};

/// A caller request with children in flight.
pub(crate) struct Parent {
    pub(crate) tag: u64,
    pub(crate) kind: IoType,
    pub(crate) fua: bool,
    /// Source byte offset.
    pub(crate) start: u64,
    /// The caller's buffer, while no child carries it.
    pub(crate) buf: Option<IoBuf>,
    pub(crate) left: u32,
    pub(crate) status: IoStatus,
    /// Cache blocks it holds against other requests.
    pub(crate) lock: Option<(u64, u64)>,
}

/// A source request of ours.
pub(crate) enum Child {
    /// Bytes `off..off + len` of a request; `own`: in a buffer of its own,
    /// else the request's.
    Part {
        parent: u32,
        off: u64,
        len: u64,
        own: bool,
    },
    WriteBack {
        slot: u32,
        block: u64,
    },
    Flush {
        parent: u32,
    },
}

/// A request waiting for the blocks it touches.
pub(crate) struct Waiting {
    pub(crate) req: IoRequest,
    pub(crate) first: u64,
    pub(crate) last: u64,
    /// Reaches the source beside cached data (write-back's FUA writes,
    /// unmaps, write-zeroes): also waits out write-backs of its blocks.
    pub(crate) quiet: bool,
}

/// Everything in flight.
pub(crate) struct Flight {
    parents: Vec<Option<Parent>>,
    free: Vec<u32>,
    live: usize,
    children: Vec<(u32, Option<Child>)>,
    free_children: Vec<u32>,
    live_children: usize,
    /// (first, last cache block, parent) of started requests.
    locks: Vec<(u64, u64, u32)>,
    pub(crate) waiting: VecDeque<Waiting>,
    /// Children the source refused (queue full), retried at the next poll.
    pub(crate) pending: VecDeque<IoRequest>,
    /// Write-back flushes waiting for dirty data older than their mark.
    pub(crate) flushes: VecDeque<(u32, u64)>,
    pub(crate) done: VecDeque<IoCompletion>,
    pub(crate) scratch: Vec<IoCompletion>,
    /// Write-back buffers, reused.
    pub(crate) spare: Vec<IoBuf>,
    /// A lock went or a write-back ended: waiting requests may start.
    pub(crate) unblocked: bool,
}

fn reserve<T>(v: &mut Vec<T>, n: usize) -> Result<(), IoStatus> {
    v.try_reserve_exact(n).map_err(|_| IoStatus::NoMemory)
}

fn reserve_deque<T>(v: &mut VecDeque<T>, n: usize) -> Result<(), IoStatus> {
    v.try_reserve_exact(n).map_err(|_| IoStatus::NoMemory)
}

impl Flight {
    /// Every per-request table sized for [`MAX_REQUESTS`] up front.
    pub(crate) fn new() -> Result<Self, IoStatus> {
        let mut f = Flight {
            parents: Vec::new(),
            free: Vec::new(),
            live: 0,
            children: Vec::new(),
            free_children: Vec::new(),
            live_children: 0,
            locks: Vec::new(),
            waiting: VecDeque::new(),
            pending: VecDeque::new(),
            flushes: VecDeque::new(),
            done: VecDeque::new(),
            scratch: Vec::new(),
            spare: Vec::new(),
            unblocked: false,
        };
        reserve(&mut f.parents, MAX_REQUESTS)?;
        reserve(&mut f.free, MAX_REQUESTS)?;
        reserve(&mut f.locks, MAX_REQUESTS)?;
        reserve_deque(&mut f.waiting, MAX_REQUESTS)?;
        reserve_deque(&mut f.flushes, MAX_REQUESTS)?;
        reserve_deque(&mut f.done, MAX_REQUESTS)?;
        reserve(&mut f.spare, WRITEBACK_DEPTH)?;
        Ok(f)
    }

    /// Caller requests accepted and not yet handed back.
    pub(crate) fn outstanding(&self) -> usize {
        self.live + self.waiting.len() + self.done.len()
    }

    pub(crate) fn complete(&mut self, tag: u64, status: IoStatus, buf: Option<IoBuf>) {
        self.done.push_back(IoCompletion { tag, status, buf });
    }

    /// Whether a started request holds any of blocks `first..=last`.
    pub(crate) fn locked(&self, first: u64, last: u64) -> bool {
        self.locks.iter().any(|&(a, b, _)| a <= last && first <= b)
    }

    pub(crate) fn queued_before(&self, i: usize, first: u64, last: u64) -> bool {
        self.waiting
            .iter()
            .take(i)
            .any(|w| w.first <= last && first <= w.last)
    }

    /// Slots are reserved for `MAX_REQUESTS`, and admission keeps below it.
    pub(crate) fn open(&mut self, p: Parent) -> u32 {
        self.live += 1;
        let lock = p.lock;
        let i = match self.free.pop() {
            Some(i) => {
                self.parents[i as usize] = Some(p);
                i
            }
            None => {
                self.parents.push(Some(p));
                (self.parents.len() - 1) as u32
            }
        };
        if let Some((a, b)) = lock {
            self.locks.push((a, b, i));
        }
        i
    }

    pub(crate) fn parent_mut(&mut self, i: u32) -> Option<&mut Parent> {
        self.parents.get_mut(i as usize)?.as_mut()
    }

    /// Ends a request: its lock goes, its completion waits for `poll`.
    pub(crate) fn finish(&mut self, i: u32) {
        let Some(p) = self.parents.get_mut(i as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(i);
        self.live -= 1;
        if p.lock.is_some() {
            self.locks.retain(|&(_, _, o)| o != i);
            self.unblocked = true;
        }
        self.complete(p.tag, p.status, p.buf);
    }

    /// A tag for a child; it never equals `sync::SYNC_TAG` (the generation
    /// stays below `u32::MAX`). `None` when the heap is out of room; room
    /// for it in `pending` is made now, so a refused child is never lost.
    pub(crate) fn add_child(&mut self, c: Child) -> Option<u64> {
        let want = (self.live_children + 1).saturating_sub(self.pending.len());
        self.pending.try_reserve(want).ok()?;
        let i = match self.free_children.pop() {
            Some(i) => i,
            None => {
                self.children.try_reserve(1).ok()?;
                // Every child may be free at once: room for all now.
                let more = (self.children.len() + 1).saturating_sub(self.free_children.len());
                self.free_children.try_reserve(more).ok()?;
                self.children.push((0, None));
                (self.children.len() - 1) as u32
            }
        };
        self.live_children += 1;
        let slot = &mut self.children[i as usize];
        slot.0 = (slot.0 + 1) % (u32::MAX - 1);
        slot.1 = Some(c);
        Some((slot.0 as u64) << 32 | i as u64)
    }

    /// The child a source completion belongs to; `None` for a tag that is
    /// not (or no longer) ours.
    pub(crate) fn take_child(&mut self, tag: u64) -> Option<Child> {
        let i = (tag & 0xffff_ffff) as usize;
        let slot = self.children.get_mut(i)?;
        if slot.0 as u64 != tag >> 32 {
            return None;
        }
        let c = slot.1.take()?;
        self.free_children.push(i as u32);
        self.live_children -= 1;
        Some(c)
    }
}
