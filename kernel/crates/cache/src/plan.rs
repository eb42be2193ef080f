//! Planning a request: its 4 KiB pieces in order, RAM work at once,
//! pieces for the source gathered into runs, each run one child. A
//! request served wholly by the source lends its own buffer to its only
//! child; otherwise each run has a buffer of its own.

use crate::flight::{Child, Parent};
use crate::io::{Piece, pieces};
use crate::map::{NONE, State};
use crate::{CACHE_BLOCK, CacheBdev, Mode, with_store};
use ironbay_bdev::{IoBuf, IoOp, IoRequest, IoStatus, IoType};

const BLOCK: usize = CACHE_BLOCK as usize;

/// A request being planned.
pub(crate) struct Plan {
    tag: u64,
    kind: IoType,
    fua: bool,
    start: u64,
    len: u64,
    lock: (u64, u64),
    parent: Option<u32>,
    /// The run of source pieces being gathered: (offset, bytes).
    run: Option<(u64, u64)>,
    status: IoStatus,
}

impl Plan {
    /// Source bytes `start..start + len`, holding cache blocks `lock`.
    pub(crate) fn new(
        tag: u64,
        kind: IoType,
        fua: bool,
        start: u64,
        len: u64,
        lock: (u64, u64),
    ) -> Self {
        Plan {
            tag,
            kind,
            fua,
            start,
            len,
            lock,
            parent: None,
            run: None,
            status: IoStatus::Success,
        }
    }
}

impl CacheBdev {
    pub(crate) fn plan_read(&mut self, mut plan: Plan, mut buf: IoBuf) {
        let wb = self.mode == Mode::WriteBack;
        for pc in pieces(plan.start, plan.len) {
            let found = self.dir.find(pc.block).map(|s| (s, self.dir.state(s)));
            let out = &mut buf.as_mut_slice()[pc.off..pc.off + pc.len];
            if wb {
                if let Some((s, State::Clean | State::Dirty)) = found
                    && self.ram_read(s, pc.within, out)
                {
                    continue;
                }
                self.plan_add(&mut plan, pc, &buf);
                continue;
            }
            self.counters.reads += 1;
            match found {
                Some((s, State::Clean)) if !pc.full() => {
                    self.dir.set(s, NONE, State::Invalid);
                    self.counters.read_invalidates += 1;
                }
                Some((s, State::Clean)) if self.ram_read(s, 0, out) => {
                    // Pinned until planning ends, as RapidDisk's hit is
                    // until its RAM read ends.
                    self.dir.set_state(s, State::Reading);
                    self.counters.cache_hits += 1;
                    self.counters.cache_reads += 1;
                    continue;
                }
                Some(_) => {}
                None if pc.full() => {
                    if let Some((s, evicts)) = self.dir.victim(pc.block) {
                        self.counters.replacement += evicts as u64;
                        self.dir.set(s, pc.block, State::Filling);
                    }
                }
                None => {}
            }
            self.counters.disk_reads += 1;
            self.plan_add(&mut plan, pc, &buf);
        }
        if !wb {
            for pc in pieces(plan.start, plan.len) {
                if let Some(s) = self.dir.find(pc.block)
                    && self.dir.state(s) == State::Reading
                {
                    self.dir.set_state(s, State::Clean);
                }
            }
        }
        self.plan_finish(plan, Some(buf));
    }

    /// Write-through and write-around: the source gets the whole request;
    /// cached copies go now, write-through refills whole blocks once the
    /// source has them.
    pub(crate) fn plan_write_through(&mut self, mut plan: Plan, buf: IoBuf) {
        let through = self.mode == Mode::WriteThrough;
        for pc in pieces(plan.start, plan.len) {
            self.counters.writes += 1;
            self.counters.disk_writes += 1;
            if let Some(s) = self.dir.find(pc.block)
                && self.dir.state(s) == State::Clean
            {
                self.dir.set(s, NONE, State::Invalid);
                self.counters.write_invalidates += 1;
            }
            if through
                && pc.full()
                && self.dir.find(pc.block).is_none()
                && let Some((s, evicts)) = self.dir.victim(pc.block)
            {
                self.counters.write_replacement += evicts as u64;
                self.dir.set(s, pc.block, State::Filling);
            }
        }
        plan.run = Some((0, plan.len));
        self.plan_finish(plan, Some(buf));
    }

    /// Write-back: each piece into RAM where it can go (a FUA write also
    /// goes whole to the source), the rest to the source.
    pub(crate) fn plan_write_back(&mut self, mut plan: Plan, buf: IoBuf) {
        for pc in pieces(plan.start, plan.len) {
            let data = &buf.as_slice()[pc.off..pc.off + pc.len];
            match self.write_ram(pc, data) {
                Ok(true) => {}
                Ok(false) if !plan.fua => self.plan_add(&mut plan, pc, &buf),
                Ok(false) => {}
                Err(status) => plan.status = status,
            }
        }
        if plan.fua {
            plan.run = Some((0, plan.len));
        }
        self.plan_finish(plan, Some(buf));
    }

    /// Puts a piece in RAM and marks its block dirty. `Ok(false)`: no room
    /// (not cached and no slot or page for it, or partial and not cached).
    fn write_ram(&mut self, pc: Piece, data: &[u8]) -> Result<bool, IoStatus> {
        if let Some(s) = self.dir.find(pc.block) {
            let state = self.dir.state(s);
            if !matches!(state, State::Clean | State::Dirty) {
                return Ok(false);
            }
            if self.ram_write(s, pc.within, data) {
                self.dir.set_state(s, State::Dirty);
                self.dirty.touch(s);
                return Ok(true);
            }
            // RAM refused a page it already holds (it cannot): fail rather
            // than let an older copy be written back over this data.
            return Err(IoStatus::NoSpace);
        }
        if !pc.full() {
            return Ok(false);
        }
        let Some((mut s, _)) = self.dir.victim(pc.block) else {
            return Ok(false);
        };
        if !self.ram_write(s, 0, data) {
            // A free slot whose page the pool cannot give: a clean slot
            // already has one.
            let fresh = self.dir.state(s) == State::Invalid;
            match self.dir.reclaim(pc.block) {
                Some(c) if fresh && self.ram_write(c, 0, data) => s = c,
                _ => return Ok(false),
            }
        }
        self.dir.set(s, pc.block, State::Dirty);
        self.dirty.touch(s);
        Ok(true)
    }

    /// Unmap and write-zeroes: cached copies of whole blocks go; a dirty
    /// block partly covered keeps its other bytes and takes zeroes; the
    /// source gets the request.
    pub(crate) fn plan_discard(&mut self, mut plan: Plan) {
        let (start, end) = (plan.start, plan.start + plan.len);
        let (first, last) = (start / CACHE_BLOCK, (end - 1) / CACHE_BLOCK);
        let count = self.mode != Mode::WriteBack;
        let (dirty, counters, ram) = (&mut self.dirty, &mut self.counters, &self.ram);
        let mut failed = false;
        self.dir.retain_in(first, last + 1, |slot, block, state| {
            let b0 = block * CACHE_BLOCK;
            let (a, b) = (start.max(b0), end.min(b0 + CACHE_BLOCK));
            match state {
                State::Dirty if b - a < CACHE_BLOCK => {
                    let zeroes = [0u8; BLOCK];
                    let off = slot as u64 * CACHE_BLOCK + (a - b0);
                    let ok = with_store(ram, |s| s.write(off, &zeroes[..(b - a) as usize]));
                    // Its other bytes are the newest anywhere: keep them
                    // even if RAM refused the zeroes (it cannot).
                    failed |= ok.is_none_or(|r| r.is_err());
                    dirty.touch(slot);
                    true
                }
                State::Dirty => {
                    dirty.clear(slot);
                    false
                }
                State::Clean => {
                    counters.write_invalidates += count as u64;
                    false
                }
                // Busy slots belong to requests holding other blocks.
                _ => true,
            }
        });
        if failed {
            plan.status = IoStatus::DeviceFailed;
        }
        plan.run = Some((0, plan.len));
        self.plan_finish(plan, None);
    }

    /// Adds a piece to the current run of source pieces.
    fn plan_add(&mut self, plan: &mut Plan, pc: Piece, buf: &IoBuf) {
        let (off, len) = (pc.off as u64, pc.len as u64);
        match &mut plan.run {
            Some((o, l)) if *o + *l == off => *l += len,
            run => {
                if let Some((o, l)) = run.replace((off, len)) {
                    self.emit(plan, o, l, Some(buf));
                }
            }
        }
    }

    fn open_parent(&mut self, plan: &mut Plan) -> u32 {
        if let Some(p) = plan.parent {
            return p;
        }
        let p = self.io.open(Parent {
            tag: plan.tag,
            kind: plan.kind,
            fua: plan.fua,
            start: plan.start,
            buf: None,
            left: 0,
            status: IoStatus::Success,
            lock: (plan.kind != IoType::Flush).then_some(plan.lock),
        });
        plan.parent = Some(p);
        p
    }

    /// Sends a run as one child in a buffer of its own; a write's data
    /// comes from `buf`, the caller's.
    fn emit(&mut self, plan: &mut Plan, off: u64, len: u64, buf: Option<&IoBuf>) {
        let p = self.open_parent(plan);
        let bs = self.info.block_size as u64;
        let lba = (plan.start + off) / bs;
        let Some(mut b) = IoBuf::try_new(len as usize) else {
            return self.run_failed(p, off, len, IoStatus::NoMemory);
        };
        let (o, n) = (off as usize, len as usize);
        let op = match (plan.kind, buf.and_then(|s| s.as_slice().get(o..o + n))) {
            (IoType::Read, _) => IoOp::Read { lba, buf: b },
            (IoType::Write, Some(data)) => {
                b.as_mut_slice().copy_from_slice(data);
                IoOp::Write { lba, buf: b }
            }
            // Discards always go whole; a write without its data cannot.
            _ => return self.run_failed(p, off, len, IoStatus::DeviceFailed),
        };
        self.send_part(
            p,
            off,
            len,
            true,
            op,
            plan.fua && plan.kind == IoType::Write,
        );
    }

    fn send_part(&mut self, p: u32, off: u64, len: u64, own: bool, op: IoOp, fua: bool) {
        let child = Child::Part {
            parent: p,
            off,
            len,
            own,
        };
        let Some(tag) = self.io.add_child(child) else {
            return self.run_failed(p, off, len, IoStatus::NoMemory);
        };
        if let Some(parent) = self.io.parent_mut(p) {
            parent.left += 1;
        }
        self.send(IoRequest { tag, op, fua });
    }

    /// A run that never reached the source: its slots are let go.
    fn run_failed(&mut self, p: u32, off: u64, len: u64, status: IoStatus) {
        let Some(parent) = self.io.parent_mut(p) else {
            return;
        };
        if parent.status.is_ok() {
            parent.status = status;
        }
        let (kind, fua, start) = (parent.kind, parent.fua, parent.start);
        self.settle(kind, fua, start, off, len, false, None);
    }

    /// Sends the last run and completes the request now if nothing of it
    /// went to the source.
    fn plan_finish(&mut self, mut plan: Plan, mut buf: Option<IoBuf>) {
        if let Some((off, len)) = plan.run.take() {
            if plan.parent.is_none() && off == 0 && len == plan.len {
                let p = self.open_parent(&mut plan);
                let bs = self.info.block_size as u64;
                let lba = plan.start / bs;
                let blocks = (plan.len / bs) as u32;
                let op = match (plan.kind, buf.take()) {
                    (IoType::Read, Some(b)) => Ok(IoOp::Read { lba, buf: b }),
                    (IoType::Write, Some(b)) => Ok(IoOp::Write { lba, buf: b }),
                    (IoType::Unmap, _) => Ok(IoOp::Unmap { lba, blocks }),
                    (IoType::WriteZeroes, _) => Ok(IoOp::WriteZeroes { lba, blocks }),
                    // A data request without its buffer cannot go.
                    (_, b) => Err(b),
                };
                match op {
                    Ok(op) => self.send_part(p, off, len, false, op, plan.fua),
                    Err(b) => {
                        buf = b;
                        self.run_failed(p, off, len, IoStatus::DeviceFailed);
                    }
                }
            } else {
                self.emit(&mut plan, off, len, buf.as_ref());
            }
        }
        let Some(p) = plan.parent else {
            return self.io.complete(plan.tag, plan.status, buf);
        };
        let Some(parent) = self.io.parent_mut(p) else {
            return;
        };
        if parent.status.is_ok() {
            parent.status = plan.status;
        }
        if buf.is_some() {
            parent.buf = buf;
        }
        if parent.left == 0 {
            self.io.finish(p);
        }
    }
}
