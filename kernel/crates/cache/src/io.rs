//! The request side of the data path: admission and ordering.
//!
//! A request runs once no request started or queued before it touches a
//! common cache block (and, for the writes that reach the source beside a
//! dirty block, no write-back of those blocks is in flight); requests
//! over other blocks pass it. Its cache blocks stay held until it ends.

use crate::flight::Waiting;
use crate::plan::Plan;
use crate::{CACHE_BLOCK, CacheBdev, MAX_REQUESTS, Mode, with_store};
use ironbay_bdev::{IoOp, IoRequest, IoStatus, IoType};

/// The part of a request within one cache block.
#[derive(Clone, Copy)]
pub(crate) struct Piece {
    pub(crate) block: u64,
    /// Offset in the range walked.
    pub(crate) off: usize,
    pub(crate) len: usize,
    /// Offset within the cache block.
    pub(crate) within: usize,
}

impl Piece {
    pub(crate) fn full(&self) -> bool {
        self.len as u64 == CACHE_BLOCK
    }
}

/// The pieces of source bytes `start..start + len`.
pub(crate) fn pieces(start: u64, len: u64) -> impl Iterator<Item = Piece> {
    let end = start.saturating_add(len);
    let mut at = start;
    core::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let within = at % CACHE_BLOCK;
        let n = (CACHE_BLOCK - within).min(end - at);
        let p = Piece {
            block: at / CACHE_BLOCK,
            off: (at - start) as usize,
            len: n as usize,
            within: within as usize,
        };
        at += n;
        Some(p)
    })
}

impl CacheBdev {
    /// Checks a request against what we are now; `Ok(None)` for a flush,
    /// else the cache blocks it touches.
    fn check(&self, op: &IoOp) -> Result<Option<(u64, u64)>, IoStatus> {
        let info = &self.info;
        let t = op.io_type();
        if !info.io_types.contains(t) {
            return Err(IoStatus::Unsupported);
        }
        if info.read_only && t != IoType::Read && t != IoType::Flush {
            return Err(IoStatus::ReadOnly);
        }
        let bs = info.block_size as u64;
        let (lba, bytes) = match op {
            IoOp::Flush => return Ok(None),
            IoOp::Read { lba, buf } | IoOp::Write { lba, buf } => {
                let n = buf.len() as u64;
                if n == 0 || !n.is_multiple_of(bs) {
                    return Err(IoStatus::Misaligned);
                }
                if n > info.max_transfer as u64 {
                    return Err(IoStatus::TooLarge);
                }
                (*lba, n)
            }
            IoOp::Unmap { lba, blocks } | IoOp::WriteZeroes { lba, blocks } => {
                if *blocks == 0 {
                    return Err(IoStatus::Misaligned);
                }
                (*lba, *blocks as u64 * bs)
            }
        };
        let start = lba.checked_mul(bs).ok_or(IoStatus::OutOfRange)?;
        match start.checked_add(bytes) {
            Some(end) if end <= info.size_bytes() => {
                Ok(Some((start / CACHE_BLOCK, (end - 1) / CACHE_BLOCK)))
            }
            _ => Err(IoStatus::OutOfRange),
        }
    }

    pub(crate) fn submit_request(&mut self, req: IoRequest, now: u64) -> Result<(), IoRequest> {
        self.now = now;
        self.sync_size();
        if self.io.outstanding() >= MAX_REQUESTS {
            return Err(req);
        }
        let (first, last) = match self.check(&req.op) {
            Err(status) => {
                self.io.complete(req.tag, status, req.op.into_buf());
                return Ok(());
            }
            Ok(None) => {
                self.start_flush(req.tag);
                return Ok(());
            }
            Ok(Some(r)) => r,
        };
        let quiet = self.mode == Mode::WriteBack
            && match req.op {
                IoOp::Write { .. } => req.fua,
                IoOp::Unmap { .. } | IoOp::WriteZeroes { .. } => true,
                _ => false,
            };
        let n = self.io.waiting.len();
        if self.io.locked(first, last)
            || self.io.queued_before(n, first, last)
            || (quiet && self.writeback_touches(first, last))
        {
            self.io.waiting.push_back(Waiting {
                req,
                first,
                last,
                quiet,
            });
        } else {
            self.start(req);
        }
        Ok(())
    }

    /// Whether a write-back of a block in `first..=last` is in flight.
    pub(crate) fn writeback_touches(&self, first: u64, last: u64) -> bool {
        self.dirty.inflight().iter().any(|&(s, _)| {
            let b = self.dir.tag(s as usize);
            first <= b && b <= last
        })
    }

    /// Starts the waiting requests nothing holds back any more, oldest
    /// first; a request never overtakes an older one it overlaps.
    pub(crate) fn start_waiting(&mut self) {
        if !self.io.unblocked {
            return;
        }
        self.io.unblocked = false;
        let mut i = 0;
        while let Some(w) = self.io.waiting.get(i) {
            let (first, last, quiet) = (w.first, w.last, w.quiet);
            if self.io.locked(first, last)
                || self.io.queued_before(i, first, last)
                || (quiet && self.writeback_touches(first, last))
            {
                i += 1;
                continue;
            }
            if let Some(w) = self.io.waiting.remove(i) {
                self.start(w.req);
            }
        }
    }

    fn start(&mut self, req: IoRequest) {
        // The source may have shrunk while the request waited.
        let lock = match self.check(&req.op) {
            Ok(Some(r)) => r,
            Ok(None) => return self.start_flush(req.tag),
            Err(status) => return self.io.complete(req.tag, status, req.op.into_buf()),
        };
        let bs = self.info.block_size as u64;
        let IoRequest { tag, op, fua } = req;
        let plan = |kind, start, len| Plan::new(tag, kind, fua, start, len, lock);
        match op {
            IoOp::Read { lba, buf } => {
                let p = plan(IoType::Read, lba * bs, buf.len() as u64);
                self.plan_read(p, buf)
            }
            IoOp::Write { lba, buf } => {
                let p = plan(IoType::Write, lba * bs, buf.len() as u64);
                match self.mode {
                    Mode::WriteBack => self.plan_write_back(p, buf),
                    _ => self.plan_write_through(p, buf),
                }
            }
            IoOp::Unmap { lba, blocks } => {
                self.plan_discard(plan(IoType::Unmap, lba * bs, blocks as u64 * bs))
            }
            IoOp::WriteZeroes { lba, blocks } => {
                self.plan_discard(plan(IoType::WriteZeroes, lba * bs, blocks as u64 * bs))
            }
            IoOp::Flush => self.start_flush(tag),
        }
    }

    pub(crate) fn ram_read(&self, slot: usize, within: usize, out: &mut [u8]) -> bool {
        let off = slot as u64 * CACHE_BLOCK + within as u64;
        with_store(&self.ram, |s| s.read(off, out)).is_some()
    }

    pub(crate) fn ram_write(&self, slot: usize, within: usize, data: &[u8]) -> bool {
        let off = slot as u64 * CACHE_BLOCK + within as u64;
        with_store(&self.ram, |s| s.write(off, data)).is_some_and(|r| r.is_ok())
    }

    /// Hands a child to the source, or queues it behind earlier refused
    /// ones (room in the queue was made when its tag was).
    pub(crate) fn send(&mut self, req: IoRequest) {
        if self.io.pending.is_empty()
            && let Ok(mut s) = self.source.try_borrow_mut()
        {
            if let Err(back) = s.submit(req, self.now) {
                self.io.pending.push_back(back);
            }
            return;
        }
        self.io.pending.push_back(req);
    }

    pub(crate) fn retry_pending(&mut self) {
        while let Some(req) = self.io.pending.pop_front() {
            let Ok(mut s) = self.source.try_borrow_mut() else {
                self.io.pending.push_front(req);
                return;
            };
            if let Err(back) = s.submit(req, self.now) {
                self.io.pending.push_front(back);
                return;
            }
        }
    }
}
