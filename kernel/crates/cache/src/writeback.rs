//! Driving the cache: one pass of the poll loop, flushes, and writing
//! dirty blocks back (in the background from `poll`, or all at once
//! before removal).

use crate::flight::Child;
use crate::map::{NONE, State};
use crate::{CACHE_BLOCK, CacheBdev, Mode, WRITEBACK_DEPTH, with_store};
use alloc::vec::Vec;
use ironbay_bdev::sync::{self, Clock};
use ironbay_bdev::{IoBuf, IoCompletion, IoOp, IoRequest, IoStatus, IoType};

/// Dirty blocks looked at per pass for ones free to write back (blocks
/// held by requests in flight are passed over).
const SCAN: usize = 4 * WRITEBACK_DEPTH;
/// How long `write_back_all` waits without any completion. The wait
/// blocks the caller (removal, shutdown), so a source that answers no
/// write-back this long is taken as stalled: the data stays dirty.
const STALL_US: u64 = 10_000_000;

/// Whether a pass starts write-backs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Issue {
    /// Unless backing off after an error.
    Background,
    /// Now, whatever the back-off.
    Now,
    Never,
}

impl CacheBdev {
    /// One pass: source completions, refused children again, waiting
    /// requests, flushes, write-backs. Returns how many completions came.
    pub(crate) fn pump(&mut self, issue: Issue) -> usize {
        let mut got = core::mem::take(&mut self.io.scratch);
        if let Ok(mut s) = self.source.try_borrow_mut() {
            s.poll(self.now, &mut got);
        }
        let n = got.len();
        for c in got.drain(..) {
            self.on_completion(c);
        }
        self.io.scratch = got;
        self.retry_pending();
        self.start_waiting();
        self.check_flushes();
        let run = match issue {
            Issue::Background => self.dirty.may_run(self.now),
            Issue::Now => true,
            Issue::Never => false,
        };
        if run {
            self.start_writebacks();
        }
        n
    }

    pub(crate) fn start_flush(&mut self, tag: u64) {
        let p = self.io.open(crate::flight::Parent {
            tag,
            kind: IoType::Flush,
            fua: false,
            start: 0,
            buf: None,
            left: 0,
            status: IoStatus::Success,
            lock: None,
        });
        if self.mode == Mode::WriteBack {
            self.io.flushes.push_back((p, self.dirty.mark()));
            self.check_flushes();
        } else {
            self.flush_source(p);
        }
    }

    /// Flushes the source for request `p`, or completes it when the source
    /// keeps no volatile cache.
    fn flush_source(&mut self, p: u32) {
        let needed = self.source.try_borrow().is_ok_and(|s| {
            let i = s.info();
            i.write_cache && i.io_types.contains(IoType::Flush)
        });
        if needed {
            if let Some(tag) = self.io.add_child(Child::Flush { parent: p }) {
                if let Some(parent) = self.io.parent_mut(p) {
                    parent.left += 1;
                }
                return self.send(IoRequest {
                    tag,
                    op: IoOp::Flush,
                    fua: false,
                });
            }
            if let Some(parent) = self.io.parent_mut(p) {
                parent.status = IoStatus::NoMemory;
            }
        }
        self.io.finish(p);
    }

    /// Moves on the flushes whose dirty data is all on the source.
    pub(crate) fn check_flushes(&mut self) {
        let oldest = self.dirty.oldest();
        // Marks only grow along the queue.
        while let Some(&(p, mark)) = self.io.flushes.front() {
            if oldest.is_some_and(|o| o < mark) {
                break;
            }
            self.io.flushes.pop_front();
            self.flush_source(p);
        }
    }

    /// Fails the flushes waiting for a change `seq` the source refused.
    fn fail_flushes(&mut self, seq: u64, status: IoStatus) {
        while let Some(i) = self.io.flushes.iter().position(|&(_, m)| m > seq) {
            let Some((p, _)) = self.io.flushes.remove(i) else {
                break;
            };
            if let Some(parent) = self.io.parent_mut(p) {
                parent.status = status;
            }
            self.io.finish(p);
        }
    }

    /// Starts write-backs of the oldest dirty blocks no request holds, up
    /// to [`WRITEBACK_DEPTH`] in flight.
    fn start_writebacks(&mut self) {
        if self.mode != Mode::WriteBack {
            return;
        }
        let bs = self.info.block_size as u64;
        let size = self.info.size_bytes();
        let mut at = self.dirty.first();
        let mut looked = 0;
        while let Some(slot) = at {
            if self.dirty.inflight().len() >= WRITEBACK_DEPTH || looked >= SCAN {
                break;
            }
            looked += 1;
            at = self.dirty.after(slot);
            let block = self.dir.tag(slot);
            if self.dirty.is_in_flight(slot) || self.io.locked(block, block) {
                continue;
            }
            if (block + 1) * CACHE_BLOCK > size {
                // The source shrank under it: nowhere to write it.
                self.dirty.lose(slot);
                self.dir.set(slot, NONE, State::Invalid);
                continue;
            }
            let Some(mut buf) = self.io.spare.pop().or_else(|| IoBuf::try_new(4096)) else {
                break;
            };
            let off = slot as u64 * CACHE_BLOCK;
            if with_store(&self.ram, |s| s.read(off, buf.as_mut_slice())).is_none() {
                self.io.spare.push(buf);
                break;
            }
            let child = Child::WriteBack {
                slot: slot as u32,
                block,
            };
            let Some(tag) = self.io.add_child(child) else {
                self.io.spare.push(buf);
                break;
            };
            self.dirty.start(slot);
            let lba = block * CACHE_BLOCK / bs;
            self.send(IoRequest {
                tag,
                op: IoOp::Write { lba, buf },
                fua: false,
            });
        }
    }

    pub(crate) fn writeback_done(&mut self, slot: usize, block: u64, c: IoCompletion) {
        if let Some(b) = c.buf
            && b.len() == CACHE_BLOCK as usize
            && self.io.spare.len() < WRITEBACK_DEPTH
        {
            self.io.spare.push(b);
        }
        let ok = c.status.is_ok();
        match self.dirty.finish(slot, ok, self.now) {
            Ok(true) if self.dir.tag(slot) == block => self.dir.set_state(slot, State::Clean),
            Ok(_) => {}
            Err(seq) => {
                self.wb_failed = Some(c.status);
                self.fail_flushes(seq, c.status);
            }
        }
        // Requests waiting out this write-back may go.
        self.io.unblocked = true;
    }

    /// [`CacheBdev::write_back_all`].
    pub(crate) fn drain_dirty(&mut self, clock: Clock<'_>) -> Result<(), IoStatus> {
        self.wb_failed = None;
        let mut last = clock();
        loop {
            self.now = clock();
            let issue = match self.wb_failed {
                None => Issue::Now,
                Some(_) => Issue::Never,
            };
            if self.pump(issue) > 0 {
                last = self.now;
            }
            if self.dirty.inflight().is_empty() {
                if let Some(e) = self.wb_failed.take() {
                    return Err(e);
                }
                if self.dirty.count() == 0 {
                    break;
                }
            }
            if self.now.saturating_sub(last) > STALL_US {
                return Err(IoStatus::Timeout);
            }
        }
        let mut others: Vec<IoCompletion> = Vec::new();
        let r = match self.source.try_borrow_mut() {
            Ok(mut s) => sync::flush(&mut **s, clock, &mut others),
            Err(_) => Err(IoStatus::DeviceFailed),
        };
        for c in others {
            self.on_completion(c);
        }
        r
    }
}
