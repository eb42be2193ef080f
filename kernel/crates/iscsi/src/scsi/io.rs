//! Block I/O of a task: data-out buffers, the buffers taken from the
//! connection's account before a task may go on, and the phases that cut a
//! command into bdev-sized I/Os.

use super::sense::{Sense, asc, key};
use super::{Cmd, Failure, MAX_IN_FLIGHT, Stage, Task, status};
use alloc::vec::Vec;
use ironbay_bdev::{Account, IoBuf, IoOp, IoStatus, Short};

/// What a buffer of `len` bytes counts against the budget.
pub(super) fn charge(len: usize) -> usize {
    len.div_ceil(IoBuf::ALIGN) * IoBuf::ALIGN
}

/// Buffers of `sizes` from `account`, all or none: a task never holds part
/// of what it needs while waiting for the rest (tasks holding parts of
/// their needs could wait on each other for ever).
pub(super) fn take_all(account: &Account, sizes: &[usize]) -> Result<Vec<IoBuf>, Short> {
    let total: usize = sizes.iter().map(|&s| charge(s)).sum();
    let b = account.budget();
    if total > b.max_hold() {
        return Err(Short::Never);
    }
    // Cheap refusals first, so a waiting task does not allocate and free
    // its buffers on every retry.
    if account.held() + total > b.max_hold() || b.used() + total > b.limit() {
        return Err(Short::Wait);
    }
    let mut v = Vec::new();
    v.try_reserve_exact(sizes.len()).map_err(|_| Short::Wait)?;
    for &s in sizes {
        v.push(account.try_buf(s)?);
    }
    Ok(v)
}

/// What a read piece's data is for. Only data-in is kept; the others use
/// the task's work buffers, given back as each piece completes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Keep {
    DataIn,
    /// Compared with the data-out at the same offset.
    Compare,
    /// Every block compared with the first block of data-out.
    CompareOne,
    /// ORed into the data-out at the same offset (ORWRITE).
    Or,
    Discard,
}

#[derive(Debug)]
pub(super) enum Phase {
    Idle,
    Read {
        lba: u64,
        blocks: u64,
        chunk: u64,
        keep: Keep,
    },
    /// Writes data-out buffers `base..`.
    Write {
        lba: u64,
        blocks: u64,
        chunk: u64,
        base: usize,
        fua: bool,
    },
    /// Writes the WRITE SAME pattern.
    Fill {
        lba: u64,
        blocks: u64,
        chunk: u64,
        fua: bool,
    },
    /// Unmaps or zeroes a range.
    Zero {
        lba: u64,
        blocks: u64,
        chunk: u64,
        unmap: bool,
    },
    /// Unmaps a list of (lba, blocks) ranges.
    Ranges {
        ranges: Vec<(u64, u64)>,
        idx: usize,
        off: u64,
        max: u64,
    },
    Flush,
}

/// Data-out buffers: one or two segments (COMPARE AND WRITE: verify data,
/// then write data), each cut into I/O-sized buffers that the transport has
/// taken from its account (all at once, or as the data arrives) and that go
/// to the bdev without copying.
#[derive(Debug, Default)]
pub(super) struct DataOut {
    pub(super) len: usize,
    pub(super) seg0: usize,
    pub(super) chunk: usize,
    pub(super) bufs: Vec<Option<IoBuf>>,
}

impl Phase {
    /// Pieces the phase splits into; `None` when only known on the way.
    pub(super) fn pieces(&self) -> Option<u64> {
        match self {
            Phase::Idle => Some(0),
            Phase::Read { blocks, chunk, .. }
            | Phase::Write { blocks, chunk, .. }
            | Phase::Fill { blocks, chunk, .. }
            | Phase::Zero { blocks, chunk, .. } => Some(blocks.div_ceil(*chunk)),
            Phase::Ranges { .. } => None,
            Phase::Flush => Some(1),
        }
    }

    pub(super) fn is_write(&self) -> bool {
        matches!(
            self,
            Phase::Write { .. } | Phase::Fill { .. } | Phase::Zero { .. } | Phase::Ranges { .. }
        )
    }
}

impl DataOut {
    pub(super) fn new(seg0: usize, seg1: usize, chunk: usize) -> DataOut {
        let chunk = chunk.max(1);
        let n = seg0.div_ceil(chunk) + seg1.div_ceil(chunk);
        DataOut {
            len: seg0 + seg1,
            seg0,
            chunk,
            bufs: (0..n).map(|_| None).collect(),
        }
    }

    pub(super) fn seg0_bufs(&self) -> usize {
        self.seg0.div_ceil(self.chunk)
    }

    /// Buffer index, offset in it and its length for data-out offset `off`.
    pub(super) fn locate(&self, off: usize) -> (usize, usize, usize) {
        let (base, seg_off, seg_len) = if off < self.seg0 {
            (0, off, self.seg0)
        } else {
            (self.seg0_bufs(), off - self.seg0, self.len - self.seg0)
        };
        let i = seg_off / self.chunk;
        let start = i * self.chunk;
        (base + i, seg_off - start, self.chunk.min(seg_len - start))
    }

    /// The buffers (index, length) of the bytes `off..off + len` that are
    /// not allocated yet.
    pub(super) fn missing(&self, mut off: usize, len: usize) -> Vec<(usize, usize)> {
        let end = off.saturating_add(len).min(self.len);
        let mut v = Vec::new();
        while off < end {
            let (i, at, n) = self.locate(off);
            if self.bufs.get(i).is_some_and(Option::is_none) {
                v.push((i, n));
            }
            off += n - at;
        }
        v
    }

    /// Copies `bytes` in at `off`; false if outside the data-out or a buffer
    /// is not allocated.
    pub(super) fn write(&mut self, off: usize, bytes: &[u8]) -> bool {
        match off.checked_add(bytes.len()) {
            Some(end) if end <= self.len => {}
            _ => return false,
        }
        let ok = self.visit(off, bytes.len(), |b, done| {
            b.copy_from_slice(&bytes[done..done + b.len()]);
            true
        });
        ok.is_some()
    }

    /// Runs `f` on each buffer slice of `off..off + len` with the bytes of
    /// the range done before it; `None` if a buffer is missing or `f`
    /// stops.
    fn visit(
        &mut self,
        mut off: usize,
        len: usize,
        mut f: impl FnMut(&mut [u8], usize) -> bool,
    ) -> Option<()> {
        let end = off.checked_add(len).filter(|&e| e <= self.len)?;
        let mut done = 0;
        while off < end {
            let (i, at, n) = self.locate(off);
            let k = (n - at).min(end - off);
            let buf = self.bufs.get_mut(i)?.as_mut()?;
            if !f(buf.as_mut_slice().get_mut(at..at + k)?, done) {
                return None;
            }
            off += k;
            done += k;
        }
        Some(())
    }

    /// Offset in `bytes` of the first byte differing from the data-out at
    /// `off` (`Err` if the data-out does not hold that range).
    pub(super) fn compare(&mut self, off: usize, bytes: &[u8]) -> Result<Option<usize>, ()> {
        let mut diff = None;
        let whole = self.visit(off, bytes.len(), |b, done| {
            diff = first_diff(b, &bytes[done..done + b.len()]).map(|p| done + p);
            diff.is_none()
        });
        match (diff, whole) {
            (Some(p), _) => Ok(Some(p)),
            (None, Some(())) => Ok(None),
            (None, None) => Err(()),
        }
    }

    /// ORs `bytes` into the data-out at `off`.
    pub(super) fn or_into(&mut self, off: usize, bytes: &[u8]) -> bool {
        self.visit(off, bytes.len(), |b, done| {
            for (w, r) in b.iter_mut().zip(&bytes[done..]) {
                *w |= *r;
            }
            true
        })
        .is_some()
    }

    /// Every buffer is allocated (every byte arrived when the transport
    /// says the data-out is complete).
    pub(super) fn is_whole(&self) -> bool {
        self.bufs.iter().all(Option::is_some)
    }

    /// All of the data-out as one vector (parameter lists).
    pub(super) fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for b in self.bufs.iter().flatten() {
            v.extend_from_slice(b.as_slice());
        }
        v
    }
}

impl Task {
    pub(super) fn start_phase(&mut self, n: u8, phase: Phase) {
        // Pieces that borrow a work buffer are as many as there are buffers.
        self.limit = match phase {
            Phase::Fill { .. }
            | Phase::Read {
                keep: Keep::Compare | Keep::CompareOne | Keep::Or | Keep::Discard,
                ..
            } => self.pool.len().clamp(1, MAX_IN_FLIGHT),
            _ => MAX_IN_FLIGHT,
        };
        if self.slots.len() < self.limit {
            self.slots.resize(self.limit, None);
        }
        self.phase = phase;
        self.next_piece = 0;
        self.stage = Stage::Io(n);
        self.check_phase_end();
    }

    pub(super) fn issued_all(&self) -> bool {
        match &self.phase {
            Phase::Ranges { ranges, idx, .. } => *idx >= ranges.len(),
            p => p.pieces().is_none_or(|n| self.next_piece >= n),
        }
    }

    pub(super) fn make_piece(&mut self, piece: u64) -> Option<(IoOp, bool)> {
        let bs = self.geo.bs;
        match &mut self.phase {
            Phase::Idle => None,
            Phase::Read {
                lba,
                blocks,
                chunk,
                keep,
            } => {
                let (start, n) = span(piece, *blocks, *chunk)?;
                let len = (n * bs) as usize;
                let mut buf = match keep {
                    Keep::DataIn => self.din.get_mut(piece as usize)?.take()?,
                    _ => self.pool.pop()?,
                };
                if !buf.set_len(len) {
                    return None;
                }
                Some((
                    IoOp::Read {
                        lba: *lba + start,
                        buf,
                    },
                    false,
                ))
            }
            Phase::Write {
                lba,
                blocks,
                chunk,
                base,
                fua,
            } => {
                let (start, _) = span(piece, *blocks, *chunk)?;
                let buf = self.dout.bufs.get_mut(*base + piece as usize)?.take()?;
                Some((
                    IoOp::Write {
                        lba: *lba + start,
                        buf,
                    },
                    *fua,
                ))
            }
            Phase::Fill {
                lba,
                blocks,
                chunk,
                fua,
            } => {
                let (start, n) = span(piece, *blocks, *chunk)?;
                let len = (n * bs) as usize;
                let mut buf = self.pool.pop()?;
                if !buf.set_len(len) {
                    return None;
                }
                for block in buf.as_mut_slice().chunks_mut(bs as usize) {
                    let k = block.len().min(self.pattern.len());
                    block[..k].copy_from_slice(&self.pattern[..k]);
                }
                Some((
                    IoOp::Write {
                        lba: *lba + start,
                        buf,
                    },
                    *fua,
                ))
            }
            Phase::Zero {
                lba,
                blocks,
                chunk,
                unmap,
            } => {
                let (start, n) = span(piece, *blocks, *chunk)?;
                let (lba, blocks) = (*lba + start, n as u32);
                let op = if *unmap {
                    IoOp::Unmap { lba, blocks }
                } else {
                    IoOp::WriteZeroes { lba, blocks }
                };
                Some((op, false))
            }
            Phase::Ranges {
                ranges,
                idx,
                off,
                max,
            } => {
                let &(l, n) = ranges.get(*idx)?;
                let k = (n - *off).min(*max);
                let op = IoOp::Unmap {
                    lba: l + *off,
                    blocks: k as u32,
                };
                *off += k;
                if *off >= n {
                    *idx += 1;
                    *off = 0;
                }
                Some((op, false))
            }
            Phase::Flush => (piece == 0).then_some((IoOp::Flush, false)),
        }
    }

    pub(super) fn piece_done(&mut self, piece: u64, buf: Option<IoBuf>) -> Result<(), Failure> {
        let bs = self.geo.bs;
        let broken = Failure::Check(Sense::new(
            key::HARDWARE_ERROR,
            asc::INTERNAL_TARGET_FAILURE,
        ));
        match &self.phase {
            Phase::Read {
                blocks,
                chunk,
                keep,
                ..
            } => {
                let (start, n) = span(piece, *blocks, *chunk).ok_or(broken)?;
                let buf = buf.filter(|b| b.len() as u64 == n * bs).ok_or(broken)?;
                let at = start * bs;
                let keep = *keep;
                if let Keep::DataIn = keep {
                    if let Some(slot) = self.din.get_mut(piece as usize) {
                        *slot = Some(buf);
                    }
                    return Ok(());
                }
                let r = match keep {
                    Keep::Compare => match self.dout.compare(at as usize, buf.as_slice()) {
                        Ok(Some(p)) => {
                            self.note_miscompare(at + p as u64);
                            Ok(())
                        }
                        Ok(None) => Ok(()),
                        Err(()) => Err(broken),
                    },
                    Keep::CompareOne => {
                        let want = self.dout.bufs.first().and_then(Option::as_ref);
                        match want {
                            Some(want) => {
                                let blocks = buf.as_slice().chunks(bs as usize);
                                if let Some(off) = blocks.enumerate().find_map(|(k, b)| {
                                    first_diff(b, want.as_slice()).map(|p| k as u64 * bs + p as u64)
                                }) {
                                    self.note_miscompare(at + off);
                                }
                                Ok(())
                            }
                            None => Err(broken),
                        }
                    }
                    Keep::Or if self.dout.or_into(at as usize, buf.as_slice()) => Ok(()),
                    Keep::Or => Err(broken),
                    Keep::DataIn | Keep::Discard => Ok(()),
                };
                // The work buffer serves the next piece.
                self.pool.push(buf);
                return r;
            }
            Phase::Write { base, .. } => {
                // Kept for the read-back compare of WRITE AND VERIFY.
                let keep = matches!(
                    self.cmd,
                    Cmd::Write {
                        verify: Some(true),
                        ..
                    }
                );
                if keep && let Some(slot) = self.dout.bufs.get_mut(*base + piece as usize) {
                    *slot = Some(buf.ok_or(broken)?);
                }
            }
            Phase::Fill { .. } => {
                if let Some(b) = buf {
                    self.pool.push(b);
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn note_miscompare(&mut self, off: u64) {
        self.miscompare = Some(self.miscompare.map_or(off, |m| m.min(off)));
    }
}

/// Blocks `start..start + n` of piece `piece` of a `blocks` range cut in
/// `chunk`s.
pub(super) fn span(piece: u64, blocks: u64, chunk: u64) -> Option<(u64, u64)> {
    let start = piece.checked_mul(chunk)?;
    (start < blocks).then(|| (start, chunk.min(blocks - start)))
}

pub(super) fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// The sense a failed block I/O turns into.
pub(super) fn io_failure(s: IoStatus, phase: &Phase) -> Failure {
    let write = phase.is_write() || matches!(phase, Phase::Flush);
    Failure::Check(match s {
        IoStatus::Success => return Failure::Status(status::GOOD),
        IoStatus::OutOfRange => Sense::lba_out_of_range(),
        IoStatus::Misaligned | IoStatus::TooLarge | IoStatus::Unsupported => {
            Sense::illegal(asc::INVALID_FIELD_IN_CDB)
        }
        IoStatus::ReadOnly => Sense::write_protected(),
        IoStatus::NoSpace => Sense::new(key::DATA_PROTECT, asc::SPACE_ALLOCATION_FAILED),
        IoStatus::NoMemory => return Failure::Status(status::BUSY),
        IoStatus::DeviceError(_) if write => Sense::new(key::MEDIUM_ERROR, asc::WRITE_ERROR),
        IoStatus::DeviceError(_) => Sense::new(key::MEDIUM_ERROR, asc::UNRECOVERED_READ_ERROR),
        IoStatus::Timeout => Sense::new(key::ABORTED_COMMAND, asc::LU_COMMUNICATION_TIMEOUT),
        IoStatus::DeviceFailed | IoStatus::Claimed => {
            Sense::new(key::HARDWARE_ERROR, asc::INTERNAL_TARGET_FAILURE)
        }
    })
}
