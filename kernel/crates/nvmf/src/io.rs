//! NVM command set execution on I/O queues: READ, WRITE, FLUSH, WRITE
//! ZEROES, DATASET MANAGEMENT and COMPARE as block I/O.
//!
//! A command is checked ([`prepare`]) before its data is asked for, so a
//! bad one costs no R2T; once its data is in, [`start`] turns it into
//! block I/O no larger than the bdev takes, and [`completion`] collects
//! the results (in any order) and answers.

use crate::conn::{Connection, Stage, io_status};
use crate::ctrl::{self, NsTarget, QueueBinding};
use crate::mem::{charge, never_status, take_chunks};
use crate::spec::{self, Sqe, Status};
use crate::target::Target;
use alloc::vec::Vec;
use ironbay_bdev::{IoBuf, IoCompletion, IoOp, IoStatus, Registry, Short};

/// Generic status 20h (NVMe 2.0): namespace is write protected.
pub(crate) const WRITE_PROTECTED: Status = Status::generic(0x20).no_retry();
/// Block I/O one command may turn into (the tag has 16 bits for it).
pub(crate) const MAX_SUBS: u64 = 4096;
/// DATASET MANAGEMENT takes at most 256 ranges of 16 bytes.
const DSM_MAX: u32 = 4096;
const DSM_ATTR_DEALLOCATE: u32 = 1 << 2;
const CDW12_FUA: u32 = 1 << 30;
const CDW12_DEAC: u32 = 1 << 25;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Read,
    Write,
    Compare,
    Flush,
    /// Unmap instead when the host allows deallocation and unmapped
    /// blocks read back as zeroes.
    WriteZeroes {
        unmap: bool,
    },
    Dsm {
        deallocate: bool,
    },
}

/// An I/O command that passed its checks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Prep {
    pub action: Action,
    pub ns: NsTarget,
    pub nsid: u32,
    pub slba: u64,
    pub nlb: u64,
    pub fua: bool,
    /// Bytes per block I/O.
    pub chunk: usize,
    /// Bytes per host data buffer (writes: one per block I/O).
    pub buf_chunk: usize,
}

impl Prep {
    fn bytes(&self) -> u64 {
        self.nlb.saturating_mul(self.ns.block_size as u64)
    }

    fn blocks_per_chunk(&self) -> u64 {
        (self.chunk as u64 / (self.ns.block_size as u64).max(1)).max(1)
    }
}

/// Checks an I/O command against its namespace and the transport limits
/// (`max_io`: the most one command may move, as reported in MDTS).
pub(crate) fn prepare(
    target: &Target,
    bdevs: &Registry,
    q: &QueueBinding,
    sqe: &Sqe,
    max_io: usize,
) -> Result<Prep, Status> {
    let action = match sqe.opcode() {
        spec::NVM_READ => Action::Read,
        spec::NVM_WRITE => Action::Write,
        spec::NVM_COMPARE => Action::Compare,
        spec::NVM_FLUSH => Action::Flush,
        spec::NVM_WRITE_ZEROES => Action::WriteZeroes { unmap: false },
        spec::NVM_DATASET_MANAGEMENT => Action::Dsm {
            deallocate: sqe.cdw(11) & DSM_ATTR_DEALLOCATE != 0,
        },
        _ => return Err(Status::INVALID_OPCODE),
    };
    let nsid = sqe.nsid();
    let ns = ctrl::io_namespace(target, bdevs, q, nsid)?;
    let bs = ns.block_size as u64;
    if bs == 0 {
        return Err(Status::INTERNAL);
    }
    let max_io = max_io as u64;
    let per_blocks = ((ns.max_transfer as u64).min(max_io) / bs).max(1);
    let slba = sqe.cdw(10) as u64 | (sqe.cdw(11) as u64) << 32;
    let nlb = (sqe.cdw(12) & 0xffff) as u64 + 1;
    let mut prep = Prep {
        action,
        ns,
        nsid,
        slba,
        nlb,
        fua: sqe.cdw(12) & CDW12_FUA != 0,
        chunk: (per_blocks * bs) as usize,
        buf_chunk: (per_blocks * bs) as usize,
    };
    let in_range = slba.checked_add(nlb).is_some_and(|e| e <= ns.num_blocks);
    let sgl_len = sqe.sgl().length as u64;
    match action {
        Action::Read | Action::Write | Action::Compare => {
            if !in_range {
                return Err(Status::LBA_OUT_OF_RANGE);
            }
            let bytes = nlb * bs;
            if bytes > max_io || nlb.div_ceil(per_blocks) > MAX_SUBS {
                return Err(Status::INVALID_FIELD);
            }
            if sgl_len != bytes {
                return Err(Status::DATA_SGL_LENGTH_INVALID);
            }
            if action == Action::Write {
                if ns.read_only {
                    return Err(WRITE_PROTECTED);
                }
                // Without a volatile cache the host wants, writes go through.
                if ns.write_cache && !ctrl::write_cache_enabled(target, q.cntlid) {
                    prep.fua = true;
                }
            }
            if action == Action::Compare {
                prep.buf_chunk = bytes as usize;
            }
        }
        Action::Flush => {}
        Action::WriteZeroes { .. } => {
            if !in_range {
                return Err(Status::LBA_OUT_OF_RANGE);
            }
            if ns.read_only {
                return Err(WRITE_PROTECTED);
            }
            let zeroes = bdevs.info(ns.bdev).is_some_and(|i| i.unmap_zeroes);
            let unmap = sqe.cdw(12) & CDW12_DEAC != 0 && ns.unmap && zeroes;
            if !unmap && !ns.write_zeroes {
                return Err(Status::INVALID_OPCODE);
            }
            prep.action = Action::WriteZeroes { unmap };
        }
        Action::Dsm { deallocate } => {
            let need = ((sqe.cdw(10) & 0xff) + 1) * 16;
            if sgl_len < need as u64 || sgl_len > DSM_MAX as u64 {
                return Err(Status::DATA_SGL_LENGTH_INVALID);
            }
            if deallocate && ns.read_only {
                return Err(WRITE_PROTECTED);
            }
            prep.buf_chunk = sgl_len as usize;
        }
    }
    Ok(prep)
}

/// Starts the block I/O of command `i`, whose host data is in.
pub(crate) fn start(
    conn: &mut Connection,
    i: usize,
    target: &mut Target,
    bdevs: &Registry,
) -> Result<(), Status> {
    let Some(cmd) = conn.cmd_mut(i) else {
        return Ok(());
    };
    let Some(prep) = cmd.prep else {
        return Err(Status::INTERNAL);
    };
    let bs = prep.ns.block_size as u64;
    let mut ops: Vec<IoOp> = Vec::new();
    if matches!(prep.action, Action::Read | Action::Compare) {
        let total = prep.bytes() as usize;
        // Commands already waiting for memory go first.
        let queued = cmd.stage == Stage::WaitMemory;
        if !queued && !conn.waiting.is_empty() {
            conn.wait_for_memory(i);
            return Ok(());
        }
        // A compare holds the host's data while it waits for the read:
        // both must fit what one connection may hold.
        let holding = if prep.action == Action::Compare {
            charge(total)
        } else {
            0
        };
        if holding + charge(total) > conn.account.budget().max_hold() {
            return Err(Status::INVALID_FIELD);
        }
        let bufs = match take_chunks(&conn.account, total, prep.chunk) {
            Ok(bufs) => bufs,
            Err(Short::Wait) => {
                if !queued {
                    conn.wait_for_memory(i);
                }
                return Ok(());
            }
            Err(Short::Never) => return Err(never_status(&conn.account, total)),
        };
        let mut lba = prep.slba;
        for buf in bufs {
            let n = buf.len() as u64 / bs.max(1);
            ops.push(IoOp::Read { lba, buf });
            lba += n;
        }
        let Some(cmd) = conn.cmd_mut(i) else {
            return Ok(());
        };
        cmd.stage = Stage::Running;
        cmd.bufs = (0..ops.len()).map(|_| None).collect();
        cmd.exec = total;
        conn.executing_bytes += total;
    }
    let Some(cmd) = conn.cmd_mut(i) else {
        return Ok(());
    };
    match prep.action {
        Action::Read | Action::Compare => {}
        Action::Write => {
            let mut lba = prep.slba;
            for buf in core::mem::take(&mut cmd.data) {
                let n = buf.len() as u64 / bs;
                ops.push(IoOp::Write { lba, buf });
                lba += n;
            }
        }
        Action::Flush => ops.push(IoOp::Flush),
        Action::WriteZeroes { unmap } => {
            let info = bdevs.info(prep.ns.bdev).ok_or(Status::INVALID_NAMESPACE)?;
            let max = if unmap {
                info.max_unmap_blocks
            } else {
                info.max_write_zeroes_blocks
            };
            split(&mut ops, prep.slba, prep.nlb, max, unmap)?;
        }
        Action::Dsm { deallocate } => {
            if deallocate && prep.ns.unmap {
                let info = bdevs.info(prep.ns.bdev).ok_or(Status::INVALID_NAMESPACE)?;
                let max = info.max_unmap_blocks;
                let ranges = (cmd.sqe.cdw(10) & 0xff) as usize + 1;
                let data = cmd.host_data();
                for r in 0..ranges {
                    let e = data.get(r * 16..r * 16 + 16).unwrap_or(&[]);
                    let nlb = crate::pdu::le32(e, 4) as u64;
                    let slba =
                        crate::pdu::le32(e, 8) as u64 | (crate::pdu::le32(e, 12) as u64) << 32;
                    if nlb == 0 {
                        continue;
                    }
                    if slba
                        .checked_add(nlb)
                        .is_none_or(|end| end > prep.ns.num_blocks)
                    {
                        return Err(Status::LBA_OUT_OF_RANGE);
                    }
                    split(&mut ops, slba, nlb, max, true)?;
                }
            }
        }
    }
    if ops.is_empty() {
        return finish(conn, i, target);
    }
    let fua = prep.fua && prep.action == Action::Write;
    for (sub, op) in ops.into_iter().enumerate() {
        conn.push_io(i, sub as u32, prep.ns.bdev, op, fua);
    }
    Ok(())
}

/// Unmap or write-zeroes requests for `nlb` blocks at `slba`, each at most
/// `max` blocks.
fn split(ops: &mut Vec<IoOp>, slba: u64, nlb: u64, max: u32, unmap: bool) -> Result<(), Status> {
    let max = (max as u64).clamp(1, u32::MAX as u64);
    if (ops.len() as u64).saturating_add(nlb.div_ceil(max)) > MAX_SUBS {
        return Err(Status::INVALID_FIELD);
    }
    let mut lba = slba;
    let mut left = nlb;
    while left > 0 {
        let n = left.min(max);
        let blocks = n as u32;
        ops.push(if unmap {
            IoOp::Unmap { lba, blocks }
        } else {
            IoOp::WriteZeroes { lba, blocks }
        });
        lba += n;
        left -= n;
    }
    Ok(())
}

/// A block I/O of command `i` finished.
pub(crate) fn completion(
    conn: &mut Connection,
    i: usize,
    sub: u32,
    c: IoCompletion,
    target: &mut Target,
    bdevs: &Registry,
) {
    let _ = bdevs;
    let Some(cmd) = conn.cmd_mut(i) else {
        return;
    };
    cmd.outstanding = cmd.outstanding.saturating_sub(1);
    let Some(prep) = cmd.prep else {
        return;
    };
    let write = !matches!(prep.action, Action::Read | Action::Compare);
    let ok =
        c.status.is_ok() || (prep.action == Action::Flush && c.status == IoStatus::Unsupported);
    if !ok && cmd.status.is_success() {
        cmd.status = io_status(c.status, write);
        cmd.err_lba = match prep.action {
            Action::Read | Action::Write | Action::Compare => prep
                .slba
                .saturating_add((sub as u64).saturating_mul(prep.blocks_per_chunk())),
            _ => prep.slba,
        };
    }
    if ok
        && matches!(prep.action, Action::Read | Action::Compare)
        && let Some(slot) = cmd.bufs.get_mut(sub as usize)
    {
        *slot = c.buf;
    }
    if cmd.outstanding > 0 {
        return;
    }
    if let Err(st) = finish(conn, i, target) {
        conn.complete(i, st, 0, 0);
    }
}

/// All block I/O of command `i` is back: answer the host.
fn finish(conn: &mut Connection, i: usize, target: &mut Target) -> Result<(), Status> {
    let (cntlid, qid) = (conn.cntlid(), conn.qid());
    let success = conn.c2h_success_allowed(target);
    let Some(cmd) = conn.cmd_mut(i) else {
        return Ok(());
    };
    let Some(prep) = cmd.prep else {
        return Err(Status::INTERNAL);
    };
    let cid = cmd.sqe.cid();
    if !cmd.status.is_success() {
        let (st, lba) = (cmd.status, cmd.err_lba);
        target.log_error(cntlid, qid, cid, st, prep.nsid, lba);
        conn.complete(i, st, 0, 0);
        return Ok(());
    }
    match prep.action {
        Action::Read => {
            let bufs: Option<Vec<IoBuf>> = core::mem::take(&mut cmd.bufs).into_iter().collect();
            let Some(bufs) = bufs else {
                return Err(Status::INTERNAL);
            };
            target.note_io(cntlid, false, prep.bytes());
            conn.send_c2h_bufs(cid, bufs, success);
            if success {
                conn.release_slot(i);
            } else {
                conn.complete(i, Status::SUCCESS, 0, 0);
            }
        }
        Action::Compare => {
            let read = cmd.bufs.iter().flatten().flat_map(|b| b.as_slice().iter());
            let host = cmd.data.iter().flat_map(|b| b.as_slice().iter());
            let same = cmd.bufs.iter().all(Option::is_some) && read.eq(host);
            if same {
                target.note_io(cntlid, false, prep.bytes());
                conn.complete(i, Status::SUCCESS, 0, 0);
            } else {
                target.log_error(
                    cntlid,
                    qid,
                    cid,
                    Status::COMPARE_FAILURE,
                    prep.nsid,
                    prep.slba,
                );
                conn.complete(i, Status::COMPARE_FAILURE, 0, 0);
            }
        }
        Action::Write => {
            target.note_io(cntlid, true, prep.bytes());
            conn.complete(i, Status::SUCCESS, 0, 0);
        }
        _ => conn.complete(i, Status::SUCCESS, 0, 0),
    }
    Ok(())
}
