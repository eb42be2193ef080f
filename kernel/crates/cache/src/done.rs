//! The completion side of the data path: source completions back to the
//! requests they serve, and what a finished run means for the cache
//! (fills, counters, blocks a FUA write made clean).

use crate::flight::Child;
use crate::io::pieces;
use crate::map::State;
use crate::{CACHE_BLOCK, CacheBdev, Mode};
use ironbay_bdev::{IoCompletion, IoStatus, IoType};

impl CacheBdev {
    /// Takes one completion from the source.
    pub(crate) fn on_completion(&mut self, c: IoCompletion) {
        let Some(child) = self.io.take_child(c.tag) else {
            return;
        };
        match child {
            Child::Part {
                parent,
                off,
                len,
                own,
            } => self.part_done(parent, off, len, own, c),
            Child::WriteBack { slot, block } => self.writeback_done(slot as usize, block, c),
            Child::Flush { parent } => {
                if let Some(p) = self.io.parent_mut(parent) {
                    if p.status.is_ok() {
                        p.status = c.status;
                    }
                    p.left = p.left.saturating_sub(1);
                    if p.left == 0 {
                        self.io.finish(parent);
                    }
                }
            }
        }
    }

    fn part_done(&mut self, pi: u32, off: u64, len: u64, own: bool, c: IoCompletion) {
        let Some(p) = self.io.parent_mut(pi) else {
            return;
        };
        let (kind, fua, start) = (p.kind, p.fua, p.start);
        let mut status = c.status;
        // The caller's buffer: back from the child that carried it, or kept.
        let (mut pbuf, child_buf) = if own {
            (p.buf.take(), c.buf)
        } else {
            (c.buf, None)
        };
        let data_op = matches!(kind, IoType::Read | IoType::Write);
        let (o, n) = (off as usize, len as usize);
        if status.is_ok() && own && kind == IoType::Read {
            let src = child_buf.as_ref().and_then(|b| b.as_slice().get(..n));
            let dst = pbuf
                .as_mut()
                .and_then(|b| b.as_mut_slice().get_mut(o..o + n));
            match (src, dst) {
                (Some(s), Some(d)) => d.copy_from_slice(s),
                _ => status = IoStatus::DeviceFailed,
            }
        }
        if status.is_ok() && data_op && !own && pbuf.as_ref().is_none_or(|b| b.len() < o + n) {
            // The source kept the buffer: nothing to fill from.
            status = IoStatus::DeviceFailed;
        }
        let data = match (own, &child_buf, &pbuf) {
            (true, Some(b), _) => b.as_slice().get(..n),
            (false, _, Some(b)) => b.as_slice().get(o..o + n),
            _ => None,
        };
        self.settle(kind, fua, start, off, len, status.is_ok(), data);
        let Some(p) = self.io.parent_mut(pi) else {
            return;
        };
        if pbuf.is_some() {
            p.buf = pbuf;
        }
        if p.status.is_ok() {
            p.status = status;
        }
        p.left = p.left.saturating_sub(1);
        if p.left == 0 {
            self.io.finish(pi);
        }
    }

    /// What a run of a request (source bytes `start + off..` for `len`)
    /// ending means for the cache; `data`: its bytes when it moved data.
    /// Write-through and write-around fill the slots reserved for its
    /// whole blocks and count as RapidDisk does when a bio ends.
    #[allow(clippy::too_many_arguments, reason = "one run's description")]
    pub(crate) fn settle(
        &mut self,
        kind: IoType,
        fua: bool,
        start: u64,
        off: u64,
        len: u64,
        ok: bool,
        data: Option<&[u8]>,
    ) {
        let fill = match (self.mode, kind) {
            (Mode::WriteBack, IoType::Write) if fua && ok => {
                // The source has these whole blocks as RAM does.
                for pc in pieces(start + off, len).filter(|pc| pc.full()) {
                    if let Some(s) = self.dir.find(pc.block)
                        && self.dir.state(s) == State::Dirty
                        && !self.dirty.is_in_flight(s)
                    {
                        self.dirty.clear(s);
                        self.dir.set_state(s, State::Clean);
                    }
                }
                return;
            }
            (Mode::WriteBack, _) => return,
            (_, IoType::Read) => true,
            (Mode::WriteThrough, IoType::Write) => true,
            (Mode::WriteAround, IoType::Write) => false,
            _ => return,
        };
        for pc in pieces(start + off, len) {
            let reserved = self
                .dir
                .find(pc.block)
                .filter(|&s| pc.full() && fill && self.dir.state(s) == State::Filling);
            let Some(s) = reserved else {
                match kind {
                    IoType::Read => self.counters.uncached_reads += 1,
                    _ => self.counters.uncached_writes += 1,
                }
                continue;
            };
            let bytes = data.and_then(|d| d.get(pc.off..pc.off + CACHE_BLOCK as usize));
            let stored = match bytes {
                Some(b) if ok => {
                    self.counters.cache_writes += 1;
                    self.ram_write(s, 0, b)
                }
                _ => false,
            };
            let state = if stored { State::Clean } else { State::Invalid };
            self.dir.set_state(s, state);
        }
    }
}
