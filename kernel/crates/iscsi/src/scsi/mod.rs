//! The SCSI block device server (SPC-4 / SBC-3) behind the iSCSI transport.
//!
//! Sans-IO like the rest of the crate: a [`Task`] is one SCSI command. The
//! transport drives it in this order:
//! 1. [`Task::new`] parses the CDB against the LUN;
//! 2. [`Task::reserve`] takes every buffer the task will use from the
//!    connection's account, all at once or not at all (the transport may
//!    leave the data-out buffers to [`Task::reserve_data_out`] as the data
//!    arrives); nothing is allocated anywhere else, and no I/O starts
//!    before it;
//! 3. if [`Task::data_out_len`] is non-zero, the transport moves the
//!    initiator's data in with [`Task::write_data_out`] (any order of
//!    offsets) and then calls [`Task::data_out_done`];
//! 4. if [`Task::wants_allocation`] asks for it (GET LBA STATUS), the
//!    transport looks the range up in the bdev registry and hands the runs
//!    to [`Task::handle_allocation`];
//! 5. every [`Task::poll_io`] is started on the bdev layer and its
//!    completion given back with [`Task::handle_completion`]; `poll_io` is
//!    called again after every completion (a task keeps a bounded number
//!    of I/Os in flight and a COMPARE AND WRITE may wait for the LU's
//!    lock, see [`Task::is_blocked`]);
//! 6. once [`Task::is_done`], [`Task::take_response`] gives status, sense
//!    and the data-in buffers.
//!
//! What a task may reserve is bounded by [`LunRef::memory`], the share of
//! the I/O budget one command may hold: MAXIMUM TRANSFER LENGTH is set so
//! that the largest transfer plus the work buffers of a verify fit it.
//!
//! Data-in is the full amount the CDB asks for (truncated to its
//! allocation length); the transport trims it to the initiator's expected
//! length and reports residuals. For data-out the transport passes the
//! expected length to [`Task::new`]: when it is shorter than the CDB asks
//! for, a block command runs on the whole blocks that arrive (or fails
//! with INVALID FIELD IN COMMAND INFORMATION UNIT if that is not a whole
//! number of blocks); [`Task::cdb_out_len`] gives the CDB's own length for
//! the residual.
//!
//! Thin provisioning is reported (LBPME, LBPRZ, UNMAP, WRITE SAME with
//! UNMAP) when the bdev can unmap, on the understanding that unmapped
//! blocks of an ironbay bdev read as zeroes. WRITE SAME with the UNMAP bit
//! unmaps whatever the data block holds, as SBC allows.
//!
//! Reservations (persistent and SPC-2, see `pr.rs`) live in the LU's
//! [`LunState`]; every command is checked against them once its unit
//! attentions are reported. The transport names the I_T nexus in
//! [`LunRef`] and reports its end ([`LunState::nexus_lost`]) and LU resets
//! ([`LunState::reset`]). PREEMPT AND ABORT preempts like PREEMPT but
//! leaves the preempted nexus' tasks running.
//!
//! COMPARE AND WRITE, ORWRITE and WRITE ATOMIC hold a per-LU lock against
//! each other; plain reads and writes of the same blocks are not held off.
//! WRITE ATOMIC is one bdev write (its limit, in the block limits VPD
//! page, is the bdev's largest transfer).
//!
//! Not done here: protection information, XCOPY and removable media
//! commands (they answer INVALID COMMAND OPERATION CODE).

mod cdb;
mod io;
mod pr;
mod sbc;
pub mod sense;
mod spc;
#[cfg(test)]
mod tests;

use alloc::rc::Rc;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use cdb::{Cdb, op};
use core::cell::RefCell;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use io::{DataOut, Keep, Phase, charge, io_failure, span, take_all};
use ironbay_bdev::{Account, BdevId, BdevInfo, IoBuf, IoCompletion, IoOp, IoType, Short};
pub use pr::initiator_port;
use pr::{Nexus, Reservations};
use sbc::lba_len;
pub use sense::Sense;
use sense::{asc, key};
pub use spc::{decode_lun, encode_lun};

/// SCSI status codes (SAM-5).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Largest data transfer of one command (block limits MAXIMUM TRANSFER
/// LENGTH) when the I/O budget allows it; larger ones are refused before
/// any memory is allocated.
pub const MAX_TRANSFER_BYTES: usize = 8 << 20;
/// Reads that are compared, ORed or thrown away go through work buffers of
/// at most this size, so a verify needs little beyond its data-out.
const WORK_CHUNK_BYTES: u64 = 256 << 10;
/// MAXIMUM WRITE SAME LENGTH in blocks.
pub const MAX_WRITE_SAME_BLOCKS: u64 = 0xffff;
/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Most blocks one GET LBA STATUS looks at (the allocation map walk).
pub const LBA_STATUS_SPAN: u64 = 1 << 20;
/// MAXIMUM COMPARE AND WRITE LENGTH (the CDB field is one byte).
const MAX_CAW_BLOCKS: u64 = 255;
/// I/Os one task keeps in flight.
const MAX_IN_FLIGHT: usize = 32;
/// WRITE SAME buffers: size and how many are out at once.
const FILL_CHUNK_BYTES: u64 = 1 << 20;
const FILL_IN_FLIGHT: usize = 4;
/// GET LBA STATUS descriptors in one answer.
const MAX_LBA_STATUS_DESCRIPTORS: usize = 4096;

/// What buffers of `sizes` count against the budget.
fn charge_all(sizes: &[usize]) -> usize {
    sizes.iter().map(|&n| charge(n)).sum()
}

/// The logical unit a command addresses, as the transport sees it now.
pub struct LunRef<'a> {
    /// LUN number (REPORT LUNS, designators).
    pub id: u64,
    pub bdev: BdevId,
    pub info: &'a BdevInfo,
    /// Writes refused with DATA PROTECT / WRITE PROTECTED.
    pub read_only: bool,
    /// Target node name (device identification VPD page).
    pub target_name: &'a str,
    /// The initiator port of the I_T nexus (see [`initiator_port`]):
    /// what persistent reservations register.
    pub initiator_port: &'a str,
    /// The I_T nexus (the session), for SPC-2 reservations.
    pub nexus_id: u64,
    /// State shared by every I_T nexus to this LU (mode pages, ...).
    pub shared: &'a mut LunState,
    /// State of this I_T nexus (pending unit attentions, ...).
    pub nexus: &'a mut NexusState,
    /// Most bytes of buffers one command may hold (the connection's share
    /// of the I/O budget): bounds MAXIMUM TRANSFER LENGTH and the work
    /// buffers of a command.
    pub memory: usize,
}

/// Per logical unit state shared by all sessions.
///
/// Tasks keep a handle on it after [`Task::new`] (MODE SELECT and
/// PERSISTENT RESERVE OUT apply their changes once the data-out has
/// arrived; COMPARE AND WRITE holds the LU lock), so the inside is
/// reference counted.
#[derive(Debug, Default)]
pub struct LunState {
    inner: Rc<LuShared>,
}

#[derive(Debug, Default)]
struct LuShared {
    /// Write cache setting from MODE SELECT: 0 the bdev's own, 1 off, 2 on.
    wce: AtomicU8,
    /// Bumped by every MODE SELECT that changes something.
    mode_gen: AtomicU64,
    /// Held by the COMPARE AND WRITE, ORWRITE or WRITE ATOMIC running on
    /// this LU.
    caw: AtomicBool,
    pr: RefCell<Reservations>,
}

impl LuShared {
    /// The reservations, or BUSY in the (unexpected) case they are in use.
    fn reservations<R>(&self, f: impl FnOnce(&mut Reservations) -> R) -> Result<R, Failure> {
        let mut p = self
            .pr
            .try_borrow_mut()
            .map_err(|_| Failure::Status(status::BUSY))?;
        Ok(f(&mut p))
    }
}

impl LunState {
    /// Whether writes may sit in the bdev's volatile cache (caching mode
    /// page WCE), for a bdev with `info`.
    pub fn write_cache_enabled(&self, info: &BdevInfo) -> bool {
        info.write_cache && self.inner.wce.load(Ordering::Relaxed) != 1
    }

    /// The I_T nexus `nexus_id` ended (logout, connection loss, session
    /// reinstatement): its SPC-2 reservation is released. Persistent
    /// reservations stay.
    pub fn nexus_lost(&mut self, nexus_id: u64) {
        let _ = self.inner.reservations(|p| p.nexus_lost(nexus_id));
    }

    /// A LOGICAL UNIT RESET or target reset: the SPC-2 reservation is
    /// released. Persistent reservations stay.
    pub fn reset(&mut self) {
        let _ = self.inner.reservations(|p| p.reset());
    }
}

/// Per I_T_L nexus state.
#[derive(Debug, Default)]
pub struct NexusState {
    pending: Vec<UnitAttention>,
    /// Mode generation this nexus has been told about.
    mode_seen: Arc<AtomicU64>,
    mode_synced: bool,
    /// Capacity (blocks, block size) the nexus last saw.
    capacity: Option<(u64, u32)>,
}

/// Why a unit attention is raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitAttention {
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29h/00h).
    PowerOnReset,
    /// LOGICAL UNIT RESET by another nexus: BUS DEVICE RESET FUNCTION
    /// OCCURRED (29h/03h).
    LunReset,
    /// CAPACITY DATA HAS CHANGED (2Ah/09h).
    CapacityChanged,
    /// REPORTED LUNS DATA HAS CHANGED (3Fh/0Eh).
    ReportedLunsChanged,
    /// MODE PARAMETERS CHANGED (2Ah/01h) by another nexus.
    ModeParametersChanged,
    /// RESERVATIONS PREEMPTED (2Ah/03h): CLEAR by another nexus.
    ReservationsPreempted,
    /// RESERVATIONS RELEASED (2Ah/04h) by another nexus.
    ReservationsReleased,
    /// REGISTRATIONS PREEMPTED (2Ah/05h) by another nexus' PREEMPT.
    RegistrationsPreempted,
}

impl UnitAttention {
    pub fn sense(self) -> Sense {
        let code = match self {
            UnitAttention::PowerOnReset => asc::POWER_ON_RESET,
            UnitAttention::LunReset => asc::BUS_DEVICE_RESET,
            UnitAttention::CapacityChanged => asc::CAPACITY_DATA_CHANGED,
            UnitAttention::ReportedLunsChanged => asc::REPORTED_LUNS_CHANGED,
            UnitAttention::ModeParametersChanged => asc::MODE_PARAMETERS_CHANGED,
            UnitAttention::ReservationsPreempted => asc::RESERVATIONS_PREEMPTED,
            UnitAttention::ReservationsReleased => asc::RESERVATIONS_RELEASED,
            UnitAttention::RegistrationsPreempted => asc::REGISTRATIONS_PREEMPTED,
        };
        Sense::new(key::UNIT_ATTENTION, code)
    }
}

impl NexusState {
    /// Queues a unit attention for this nexus (once: one already pending
    /// is not queued again, which also bounds the queue).
    pub fn raise(&mut self, ua: UnitAttention) {
        if !self.pending.contains(&ua) {
            self.pending.push(ua);
        }
    }

    /// Unit attentions not reported yet, oldest first.
    pub fn pending(&self) -> &[UnitAttention] {
        &self.pending
    }

    /// Drops every pending unit attention.
    pub fn clear(&mut self) {
        self.pending.clear();
    }

    fn pop(&mut self) -> Option<UnitAttention> {
        (!self.pending.is_empty()).then(|| self.pending.remove(0))
    }

    /// Notices capacity and mode page changes made elsewhere.
    fn sync(&mut self, info: &BdevInfo, lu: &LuShared) {
        let cap = (info.num_blocks, info.block_size);
        if self.capacity.is_some_and(|c| c != cap) {
            self.raise(UnitAttention::CapacityChanged);
        }
        self.capacity = Some(cap);
        let generation = lu.mode_gen.load(Ordering::Relaxed);
        let seen = self.mode_seen.swap(generation, Ordering::Relaxed);
        if self.mode_synced && seen != generation {
            self.raise(UnitAttention::ModeParametersChanged);
        }
        self.mode_synced = true;
    }
}

/// What a finished command gives the transport.
#[derive(Debug, Default)]
pub struct Response {
    pub status: u8,
    /// Sense data (fixed format) for CHECK CONDITION, empty otherwise.
    pub sense: Vec<u8>,
    /// Data-in, in order; the total is [`Response::data_len`].
    pub data: Vec<IoBuf>,
}

impl Response {
    pub fn data_len(&self) -> usize {
        self.data.iter().map(|b| b.len()).sum()
    }

    /// CHECK CONDITION with fixed format sense data.
    pub fn check_condition(key: u8, asc: u8, ascq: u8) -> Response {
        Response::from_sense(&Sense::new(key, (asc, ascq)))
    }

    pub fn from_sense(s: &Sense) -> Response {
        Response {
            status: status::CHECK_CONDITION,
            sense: s.to_fixed(),
            data: Vec::new(),
        }
    }
}

/// What the LU looks like to a task.
#[derive(Clone, Debug, Default)]
pub(crate) struct Geo {
    pub bs: u64,
    pub num_blocks: u64,
    /// Blocks per data I/O (the bdev's largest transfer).
    pub chunk_blocks: u64,
    /// Blocks per command (MAXIMUM TRANSFER LENGTH).
    pub max_xfer_blocks: u64,
    /// Bytes of buffers one command may hold.
    pub mem_limit: usize,
    pub unmap: bool,
    /// Unmapped blocks read back as zeroes (LBPRZ).
    pub unmap_zeroes: bool,
    pub write_zeroes: bool,
    pub flush: bool,
    pub max_unmap_op: u64,
    pub max_zeroes_op: u64,
    pub read_only: bool,
    /// The bdev has a volatile write cache.
    pub cache: bool,
}

impl Geo {
    fn new(info: &BdevInfo, read_only: bool, memory: usize) -> Geo {
        let bs = (info.block_size as u64).max(1);
        // A quarter of what a command may hold is left for its work
        // buffers (verify, compare, ORWRITE), the rest may be data.
        let max_xfer = (MAX_TRANSFER_BYTES as u64).min((memory / 4 * 3) as u64);
        let max_xfer_blocks = (max_xfer / bs).max(1);
        Geo {
            bs,
            num_blocks: info.num_blocks,
            chunk_blocks: (info.max_transfer as u64 / bs).clamp(1, max_xfer_blocks),
            max_xfer_blocks,
            mem_limit: memory,
            unmap: info.io_types.contains(IoType::Unmap),
            unmap_zeroes: info.unmap_zeroes,
            write_zeroes: info.io_types.contains(IoType::WriteZeroes),
            flush: info.io_types.contains(IoType::Flush),
            max_unmap_op: (info.max_unmap_blocks as u64).max(1),
            max_zeroes_op: (info.max_write_zeroes_blocks as u64).max(1),
            read_only: read_only || info.read_only,
            cache: info.write_cache,
        }
    }

    /// MAXIMUM COMPARE AND WRITE LENGTH: both halves of its data-out fit a
    /// transfer.
    pub fn max_caw_blocks(&self) -> u64 {
        MAX_CAW_BLOCKS.min((self.max_xfer_blocks / 2).max(1))
    }

    /// Blocks per work buffer: within the quarter of a command's share
    /// that MAXIMUM TRANSFER LENGTH leaves.
    fn work_blocks(&self) -> u64 {
        let quarter = (self.mem_limit / 4) as u64 / self.bs;
        self.chunk_blocks
            .min(WORK_CHUNK_BYTES / self.bs)
            .min(quarter)
            .max(1)
    }

    /// Blocks per WRITE SAME buffer.
    fn fill_blocks(&self) -> u64 {
        let quarter = (self.mem_limit / 4) as u64 / self.bs;
        self.chunk_blocks
            .min(FILL_CHUNK_BYTES / self.bs)
            .min(quarter)
            .max(1)
    }

    /// MAXIMUM ATOMIC TRANSFER LENGTH: what one bdev write takes.
    pub fn max_atomic_blocks(&self) -> u64 {
        self.chunk_blocks.min(self.max_xfer_blocks)
    }

    fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.num_blocks => Ok(()),
            _ => Err(Sense::lba_out_of_range()),
        }
    }
}

/// How a command ended, when not with GOOD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    Check(Sense),
    Status(u8),
}

impl From<Sense> for Failure {
    fn from(s: Sense) -> Failure {
        Failure::Check(s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    None,
    /// Data-out holds every block.
    Full,
    /// Data-out holds one block, compared with each.
    One,
}

#[derive(Clone, Copy, Debug)]
enum Cmd {
    None,
    Read,
    Write {
        lba: u64,
        blocks: u64,
        fua: bool,
        /// WRITE AND VERIFY: read back after writing, comparing if true.
        verify: Option<bool>,
    },
    Verify {
        lba: u64,
        blocks: u64,
        cmp: Cmp,
    },
    CompareAndWrite {
        lba: u64,
        blocks: u64,
        fua: bool,
    },
    OrWrite {
        lba: u64,
        blocks: u64,
        fua: bool,
    },
    WriteAtomic {
        lba: u64,
        blocks: u64,
        fua: bool,
    },
    WriteSame {
        lba: u64,
        blocks: u64,
        fua: bool,
        unmap: bool,
    },
    Unmap,
    ModeSelect {
        ten: bool,
    },
    PrOut {
        sa: u16,
        scope_type: u8,
    },
    Flush,
    LbaStatus {
        lba: u64,
        blocks: u64,
        alloc: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Result known; I/O may still be draining.
    Done,
    DataOut,
    /// COMPARE AND WRITE, ORWRITE or WRITE ATOMIC waiting for the LU lock.
    Lock,
    /// GET LBA STATUS waiting for the allocation map.
    Allocation,
    /// Running I/O phase n of the command.
    Io(u8),
}

/// One SCSI command.
pub struct Task {
    stage: Stage,
    cmd: Cmd,
    geo: Geo,
    /// Result once known.
    status: u8,
    sense: Option<Sense>,
    data: Vec<IoBuf>,
    taken: bool,
    dout: DataOut,
    cdb_out: usize,
    /// The I/O phase in progress, its next piece and the pieces in flight
    /// by sub-tag.
    phase: Phase,
    next_piece: u64,
    slots: Vec<Option<u64>>,
    in_flight: usize,
    limit: usize,
    error: Option<Failure>,
    aborted: bool,
    /// Read data kept for data-in, by piece.
    din: Vec<Option<IoBuf>>,
    /// Lowest byte offset of a miscompare.
    miscompare: Option<u64>,
    /// WRITE SAME block.
    pattern: Vec<u8>,
    /// Work buffers: WRITE SAME's pattern buffers, reads that are compared,
    /// ORed or discarded. Each serves one piece at a time.
    pool: Vec<IoBuf>,
    /// Parameter data made before its buffer was reserved.
    reply: Vec<u8>,
    /// The buffer GET LBA STATUS answers in.
    reply_buf: Option<IoBuf>,
    /// [`Task::reserve`] has taken what the task needs.
    reserved: bool,
    lu: Option<Rc<LuShared>>,
    nexus_mode: Option<Arc<AtomicU64>>,
    caw_held: bool,
    /// Initiator port of a PERSISTENT RESERVE OUT.
    port: String,
}

impl Task {
    fn empty() -> Task {
        Task {
            stage: Stage::Done,
            cmd: Cmd::None,
            // Without a LUN only short parameter data is made.
            geo: Geo {
                mem_limit: usize::MAX,
                ..Geo::default()
            },
            status: status::GOOD,
            sense: None,
            data: Vec::new(),
            taken: false,
            dout: DataOut::default(),
            cdb_out: 0,
            phase: Phase::Idle,
            next_piece: 0,
            slots: Vec::new(),
            in_flight: 0,
            limit: MAX_IN_FLIGHT,
            error: None,
            aborted: false,
            din: Vec::new(),
            miscompare: None,
            pattern: Vec::new(),
            pool: Vec::new(),
            reply: Vec::new(),
            reply_buf: None,
            reserved: false,
            lu: None,
            nexus_mode: None,
            caw_held: false,
            port: String::new(),
        }
    }

    /// Parses `cdb` for `lun` (`None`: the LUN does not exist; REPORT LUNS,
    /// INQUIRY and REQUEST SENSE still answer). `luns` lists the LUN numbers
    /// the nexus sees, for REPORT LUNS. `expected_out` is the initiator's
    /// expected data-out length (iSCSI EDTL for writes, 0 otherwise).
    pub fn new(cdb: &[u8], lun: Option<LunRef<'_>>, luns: &[u64], expected_out: u32) -> Task {
        let mut t = Task::empty();
        let c = Cdb(cdb);
        if cdb.is_empty() {
            t.fail(Sense::illegal(asc::INVALID_OPCODE));
            return t;
        }
        let opcode = c.opcode();
        let Some(lun) = lun else {
            match opcode {
                op::INQUIRY => t.inquiry(c, None),
                op::REPORT_LUNS => t.report_luns(c, luns),
                op::REQUEST_SENSE => {
                    let s = Sense::illegal(asc::LU_NOT_SUPPORTED);
                    t.request_sense(c, Some(s))
                }
                _ => t.fail(Sense::illegal(asc::LU_NOT_SUPPORTED)),
            }
            return t;
        };
        t.geo = Geo::new(lun.info, lun.read_only, lun.memory);
        lun.nexus.sync(lun.info, &lun.shared.inner);
        let who = Nexus {
            port: lun.initiator_port,
            id: lun.nexus_id,
        };
        let nexus = &mut *lun.nexus;
        if let Err(f) = lun
            .shared
            .inner
            .reservations(|p| p.take_uas(who.port, nexus))
        {
            t.finish(Err(f));
            return t;
        }
        match opcode {
            op::INQUIRY => {
                t.inquiry(c, Some(&lun));
                return t;
            }
            op::REPORT_LUNS => {
                lun.nexus
                    .pending
                    .retain(|&u| u != UnitAttention::ReportedLunsChanged);
                t.report_luns(c, luns);
                return t;
            }
            op::REQUEST_SENSE => {
                let ua = lun.nexus.pop().map(UnitAttention::sense);
                t.request_sense(c, ua);
                return t;
            }
            _ => {}
        }
        if let Some(ua) = lun.nexus.pop() {
            t.fail(ua.sense());
            return t;
        }
        match lun.shared.inner.reservations(|p| p.conflicts(who, c)) {
            Ok(false) => {}
            Ok(true) => {
                t.finish(Err(Failure::Status(status::RESERVATION_CONFLICT)));
                return t;
            }
            Err(f) => {
                t.finish(Err(f));
                return t;
            }
        }
        t.lu = Some(lun.shared.inner.clone());
        if let Err(f) = t.dispatch(c, expected_out as usize, who) {
            t.finish(Err(f));
        }
        if matches!(t.cmd, Cmd::ModeSelect { .. }) {
            t.nexus_mode = Some(lun.nexus.mode_seen.clone());
        }
        t
    }

    fn dispatch(&mut self, c: Cdb<'_>, edtl: usize, who: Nexus<'_>) -> Result<(), Failure> {
        let g = self.geo.clone();
        match c.opcode() {
            op::TEST_UNIT_READY | op::START_STOP_UNIT => self.good(),
            op::RESERVE_6 | op::RESERVE_10 | op::RELEASE_6 | op::RELEASE_10 => {
                self.reserve_release(c, who.id)?
            }
            op::PERSISTENT_RESERVE_IN => {
                let d = self.pr(|p| p.read(c.sa()))??;
                self.reply(d, c.be(7, 2));
            }
            op::PERSISTENT_RESERVE_OUT => self.prout(c, edtl, who)?,
            op::ORWRITE_16 => self.orwrite(c, edtl)?,
            op::WRITE_ATOMIC_16 => self.write_atomic(c, edtl)?,
            op::READ_DEFECT_DATA_10 => {
                // No defects: an empty list in the format asked for.
                self.reply(vec![0, c.b(2) & 0x1f, 0, 0], c.be(7, 2));
            }
            op::READ_DEFECT_DATA_12 => {
                self.reply(vec![0, c.b(1) & 0x1f, 0, 0, 0, 0, 0, 0], c.be(6, 4));
            }
            op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => self.read(c)?,
            op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => {
                self.write(c, None, edtl)?
            }
            op::WRITE_VERIFY_10 | op::WRITE_VERIFY_12 | op::WRITE_VERIFY_16 => {
                let bytchk = (c.b(1) >> 1) & 3;
                if bytchk > 1 {
                    return Err(Sense::invalid_cdb(1, Some(2)).into());
                }
                self.write(c, Some(bytchk == 1), edtl)?
            }
            op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => self.verify(c, edtl)?,
            op::COMPARE_AND_WRITE => self.compare_and_write(c, edtl)?,
            op::WRITE_SAME_10 | op::WRITE_SAME_16 => self.write_same(c, edtl)?,
            op::UNMAP => self.unmap(c, edtl)?,
            op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => {
                let (lba, blocks) = lba_len(c);
                if lba > g.num_blocks {
                    return Err(Sense::lba_out_of_range().into());
                }
                if blocks != 0 {
                    g.check_range(lba, blocks)?;
                }
                if g.flush {
                    self.cmd = Cmd::Flush;
                    self.start_phase(0, Phase::Flush);
                } else {
                    self.good();
                }
            }
            op::PRE_FETCH_10 | op::PRE_FETCH_16 => {
                let (lba, blocks) = lba_len(c);
                g.check_range(lba, blocks)?;
                self.good();
            }
            op::MODE_SENSE_6 | op::MODE_SENSE_10 => {
                let ten = c.opcode() == op::MODE_SENSE_10;
                let m = self.mode_state();
                let d = spc::mode_sense(c, ten, &g, &m)?;
                let alloc = if ten { c.be(7, 2) } else { c.b(4) as u64 };
                self.reply(d, alloc);
            }
            op::MODE_SELECT_6 | op::MODE_SELECT_10 => {
                let ten = c.opcode() == op::MODE_SELECT_10;
                if c.b(1) & 0x01 != 0 {
                    return Err(Sense::invalid_cdb(1, Some(0)).into());
                }
                let len = if ten { c.be(7, 2) } else { c.b(4) as u64 } as usize;
                self.cdb_out = len;
                self.cmd = Cmd::ModeSelect { ten };
                let n = len.min(edtl);
                if n == 0 {
                    self.good();
                } else {
                    self.expect_out(DataOut::new(n, 0, n));
                }
            }
            op::READ_CAPACITY_10 => {
                if c.b(8) & 1 == 0 && c.be(2, 4) != 0 {
                    return Err(Sense::invalid_cdb(2, None).into());
                }
                self.reply(spc::read_capacity_10(&g), 8);
            }
            op::SERVICE_ACTION_IN_16 => match c.sa() {
                op::SA_READ_CAPACITY_16 => self.reply(spc::read_capacity_16(&g), c.be(10, 4)),
                op::SA_GET_LBA_STATUS => {
                    let lba = c.be(2, 8);
                    let alloc = c.be(10, 4).min(u32::MAX as u64) as usize;
                    if lba >= g.num_blocks {
                        return Err(Sense::lba_out_of_range().into());
                    }
                    if alloc == 0 {
                        self.good();
                    } else {
                        let blocks = (g.num_blocks - lba).min(LBA_STATUS_SPAN);
                        self.cmd = Cmd::LbaStatus { lba, blocks, alloc };
                        self.stage = Stage::Allocation;
                    }
                }
                _ => return Err(Sense::invalid_cdb(1, Some(4)).into()),
            },
            op::MAINTENANCE_IN => match c.sa() {
                op::SA_REPORT_SUPPORTED_OPCODES => {
                    let rctd = c.b(2) & 0x80 != 0;
                    let options = c.b(2) & 0x07;
                    let d = if options == 0 {
                        spc::supported_opcodes_all(rctd, g.unmap)
                    } else {
                        spc::supported_opcodes_one(
                            options,
                            c.b(3),
                            c.be(4, 2) as u16,
                            rctd,
                            g.unmap,
                        )?
                    };
                    self.reply(d, c.be(6, 4));
                }
                _ => return Err(Sense::invalid_cdb(1, Some(4)).into()),
            },
            _ => return Err(Sense::illegal(asc::INVALID_OPCODE).into()),
        }
        Ok(())
    }

    /// Runs `f` on the LU's reservations.
    fn pr<R>(&self, f: impl FnOnce(&mut Reservations) -> R) -> Result<R, Failure> {
        match &self.lu {
            Some(lu) => lu.reservations(f),
            None => Err(Failure::Status(status::BUSY)),
        }
    }

    /// RESERVE and RELEASE (6) and (10): SPC-2 reservations of the whole
    /// LU by this I_T nexus. Conflicts were ruled out before.
    fn reserve_release(&mut self, c: Cdb<'_>, nexus: u64) -> Result<(), Failure> {
        if matches!(c.opcode(), op::RESERVE_10 | op::RELEASE_10) {
            // Third-party reservations are not offered.
            if c.b(1) & 0x10 != 0 {
                return Err(Sense::invalid_cdb(1, Some(4)).into());
            }
            if c.b(1) & 0x02 != 0 {
                return Err(Sense::invalid_cdb(1, Some(1)).into());
            }
            if c.be(7, 2) != 0 {
                return Err(Sense::invalid_cdb(7, None).into());
            }
        }
        let reserve = matches!(c.opcode(), op::RESERVE_6 | op::RESERVE_10);
        self.pr(|p| {
            if reserve {
                p.reserve2(nexus)
            } else {
                p.release2(nexus)
            }
        })?;
        self.good();
        Ok(())
    }

    /// PERSISTENT RESERVE OUT: the parameter list is applied once it is in.
    fn prout(&mut self, c: Cdb<'_>, edtl: usize, who: Nexus<'_>) -> Result<(), Failure> {
        pr::check_out_cdb(c)?;
        let len = c.be(5, 4) as usize;
        self.cdb_out = len;
        let n = len.min(edtl);
        if len > pr::MAX_OUT_LIST || n < 24 {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR).into());
        }
        self.cmd = Cmd::PrOut {
            sa: c.sa(),
            scope_type: c.b(2),
        };
        self.port = who.port.into();
        self.expect_out(DataOut::new(n, 0, n));
        Ok(())
    }

    fn mode_state(&self) -> spc::ModeState {
        spc::ModeState {
            wce: self.wce(),
            cache: self.geo.cache,
        }
    }

    /// Write cache enabled (caching mode page WCE).
    fn wce(&self) -> bool {
        self.geo.cache
            && self
                .lu
                .as_ref()
                .is_none_or(|l| l.wce.load(Ordering::Relaxed) != 1)
    }

    fn inquiry(&mut self, c: Cdb<'_>, lun: Option<&LunRef<'_>>) {
        let evpd = c.b(1) & 0x01 != 0;
        let alloc = c.be(3, 2);
        let r = if c.b(1) & 0x02 != 0 {
            Err(Sense::invalid_cdb(1, Some(1)))
        } else if !evpd {
            if c.b(2) != 0 {
                Err(Sense::invalid_cdb(2, Some(7)))
            } else {
                Ok(spc::standard_inquiry(lun.map(|l| l.info)))
            }
        } else {
            match lun {
                None => Err(Sense::illegal(asc::LU_NOT_SUPPORTED)),
                Some(l) => spc::vpd(c.b(2), l.info, l.target_name, &self.geo)
                    .ok_or(Sense::invalid_cdb(2, Some(7))),
            }
        };
        match r {
            Ok(d) => self.reply(d, alloc),
            Err(s) => self.fail(s),
        }
    }

    fn report_luns(&mut self, c: Cdb<'_>, luns: &[u64]) {
        let d = match c.b(2) {
            0x00 | 0x02 => spc::report_luns(luns),
            // Well-known and administrative LUs: there are none.
            0x01 | 0x10 | 0x11 => spc::report_luns(&[]),
            _ => return self.fail(Sense::invalid_cdb(2, Some(7))),
        };
        self.reply(d, c.be(6, 4));
    }

    fn request_sense(&mut self, c: Cdb<'_>, s: Option<Sense>) {
        if c.b(1) & 0x01 != 0 {
            // Descriptor format is not offered.
            return self.fail(Sense::invalid_cdb(1, Some(0)));
        }
        let s = s.unwrap_or(Sense::new(key::NO_SENSE, asc::NONE));
        self.reply(s.to_fixed(), c.b(4) as u64);
    }

    // Results.

    fn finish(&mut self, r: Result<Vec<IoBuf>, Failure>) {
        self.stage = Stage::Done;
        match r {
            Ok(d) => {
                self.status = status::GOOD;
                self.data = d;
            }
            Err(Failure::Check(s)) => {
                self.status = status::CHECK_CONDITION;
                self.sense = Some(s);
            }
            Err(Failure::Status(st)) => self.status = st,
        }
        if self.in_flight == 0 {
            self.release_lock();
        }
    }

    fn good(&mut self) {
        self.finish(Ok(Vec::new()));
    }

    fn fail(&mut self, s: Sense) {
        self.finish(Err(s.into()));
    }

    /// Parameter data, cut to the allocation length: into the reserved
    /// buffer (cut to it too), or kept until [`Task::reserve`] takes one
    /// for it.
    fn reply(&mut self, mut d: Vec<u8>, alloc: u64) {
        d.truncate(alloc.min(d.len() as u64) as usize);
        let mut data = Vec::new();
        match self.reply_buf.take() {
            Some(mut b) => {
                d.truncate(b.capacity());
                b.set_len(d.len());
                b.as_mut_slice().copy_from_slice(&d);
                if !d.is_empty() {
                    data.push(b);
                }
            }
            _ => self.reply = d,
        }
        self.finish(Ok(data));
    }

    fn expect_out(&mut self, d: DataOut) {
        self.dout = d;
        self.stage = Stage::DataOut;
    }

    fn release_lock(&mut self) {
        if self.caw_held {
            if let Some(lu) = &self.lu {
                lu.caw.store(false, Ordering::Release);
            }
            self.caw_held = false;
        }
    }

    fn try_lock(&mut self) {
        if self.stage != Stage::Lock {
            return;
        }
        let got = self.lu.as_ref().is_none_or(|lu| {
            lu.caw
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        });
        if !got {
            return;
        }
        self.caw_held = self.lu.is_some();
        let chunk = self.geo.work_blocks();
        match self.cmd {
            Cmd::CompareAndWrite { lba, blocks, .. } => self.start_phase(
                0,
                Phase::Read {
                    lba,
                    blocks,
                    chunk,
                    keep: Keep::Compare,
                },
            ),
            Cmd::OrWrite { lba, blocks, .. } => self.start_phase(
                0,
                Phase::Read {
                    lba,
                    blocks,
                    chunk,
                    keep: Keep::Or,
                },
            ),
            // All of it in one write.
            Cmd::WriteAtomic { lba, blocks, fua } => self.start_phase(
                0,
                Phase::Write {
                    lba,
                    blocks,
                    chunk: blocks,
                    base: 0,
                    fua,
                },
            ),
            _ => {}
        }
    }

    // Data-out.

    /// Bytes of data-out the command takes before it can run (0: none, or it
    /// already failed).
    pub fn data_out_len(&self) -> usize {
        if self.stage == Stage::DataOut {
            self.dout.len
        } else {
            0
        }
    }

    // Memory.

    /// Sizes of the buffers the task needs besides its data-out: all of a
    /// READ's data-in, the work buffers of a verify, compare, ORWRITE or
    /// WRITE SAME, parameter data.
    fn run_buffers(&self) -> Vec<usize> {
        let mut v = Vec::new();
        let g = &self.geo;
        let bs = g.bs as usize;
        // Work buffers of `piece` blocks, as many as may be in flight and
        // the command's share leaves room for.
        let mut work = |blocks: u64, piece: u64, in_flight: usize| {
            let piece = piece.min(blocks).max(1);
            let len = piece as usize * bs;
            let room = g.mem_limit.saturating_sub(charge(self.dout.len)) / charge(len).max(1);
            let n = (blocks.div_ceil(piece) as usize)
                .min(in_flight)
                .min(room.max(1));
            v.extend(core::iter::repeat_n(len, n));
        };
        if self.stage != Stage::Done {
            match (self.cmd, &self.phase) {
                (Cmd::Read, Phase::Read { blocks, chunk, .. }) => {
                    for p in 0..blocks.div_ceil(*chunk) {
                        if let Some((_, n)) = span(p, *blocks, *chunk) {
                            v.push(n as usize * bs);
                        }
                    }
                }
                (
                    Cmd::Write {
                        blocks,
                        verify: Some(_),
                        ..
                    }
                    | Cmd::Verify { blocks, .. }
                    | Cmd::CompareAndWrite { blocks, .. }
                    | Cmd::OrWrite { blocks, .. },
                    _,
                ) => work(blocks, g.work_blocks(), MAX_IN_FLIGHT),
                // Unmapping or zeroing needs no pattern buffers.
                (Cmd::WriteSame { .. }, Phase::Zero { .. }) => {}
                (Cmd::WriteSame { unmap: true, .. }, _) if g.unmap => {}
                (Cmd::WriteSame { blocks, .. }, _) => work(blocks, g.fill_blocks(), FILL_IN_FLIGHT),
                // A longer list than one command may hold is cut short, as
                // an allocation length would cut it.
                (Cmd::LbaStatus { alloc, .. }, _) => v.push(
                    alloc
                        .min(8 + 16 * MAX_LBA_STATUS_DESCRIPTORS)
                        .min(g.mem_limit),
                ),
                _ => {}
            }
        }
        if !self.reply.is_empty() {
            v.push(self.reply.len());
        }
        v
    }

    /// What the task takes from its account, as the budget counts it:
    /// (data-out buffers not allocated yet, everything else). Zero once
    /// reserved.
    pub fn memory(&self) -> (usize, usize) {
        let dout = self
            .dout
            .missing(0, self.data_out_len())
            .iter()
            .map(|m| charge(m.1))
            .sum();
        if self.reserved {
            return (dout, 0);
        }
        (dout, self.run_buffers().iter().map(|&n| charge(n)).sum())
    }

    /// Takes every buffer the task needs from `account`, with its
    /// data-out buffers too if `data_out` (otherwise they come with
    /// [`Task::reserve_data_out`] as the data arrives), all or none.
    /// `Wait`: nothing is held, try again once memory came back. `Never`:
    /// the command ends, with INVALID FIELD IN CDB if it needs more than
    /// one command may hold, TASK SET FULL if the heap has no room at all.
    pub fn reserve(&mut self, account: &Account, data_out: bool) -> Result<(), Short> {
        if self.reserved {
            if data_out {
                self.reserve_data_out(account, 0, self.data_out_len())?;
            }
            return Ok(());
        }
        let (dout, run) = self.memory();
        if dout.saturating_add(run) > self.geo.mem_limit {
            self.refuse(true);
            return Err(Short::Never);
        }
        let run = self.run_buffers();
        let missing = if data_out {
            self.dout.missing(0, self.data_out_len())
        } else {
            Vec::new()
        };
        let mut sizes = run.clone();
        sizes.extend(missing.iter().map(|m| m.1));
        let mut bufs = match take_all(account, &sizes) {
            Ok(b) => b,
            Err(Short::Never) => {
                self.refuse(dout + charge_all(&run) > account.budget().max_hold());
                return Err(Short::Never);
            }
            Err(Short::Wait) => return Err(Short::Wait),
        };
        for ((i, _), b) in missing.iter().zip(bufs.drain(run.len()..)) {
            if let Some(slot) = self.dout.bufs.get_mut(*i) {
                *slot = Some(b);
            }
        }
        let mut bufs = bufs.into_iter();
        if !self.reply.is_empty()
            && let Some(mut b) = bufs.next_back()
        {
            b.as_mut_slice().copy_from_slice(&self.reply);
            self.reply = Vec::new();
            self.data = vec![b];
        }
        match self.cmd {
            Cmd::Read => {
                for (slot, b) in self.din.iter_mut().zip(bufs) {
                    *slot = Some(b);
                }
            }
            Cmd::LbaStatus { .. } => self.reply_buf = bufs.next(),
            _ => self.pool.extend(bufs),
        }
        self.reserved = true;
        // A phase started before its buffers came sizes itself by them.
        if let Stage::Io(n) = self.stage
            && self.next_piece == 0
            && self.in_flight == 0
        {
            let phase = core::mem::replace(&mut self.phase, Phase::Idle);
            self.start_phase(n, phase);
        }
        Ok(())
    }

    /// Takes the data-out buffers holding bytes `off..off + len` that are
    /// not there yet, all or none; returns what they count against the
    /// budget.
    pub fn reserve_data_out(
        &mut self,
        account: &Account,
        off: usize,
        len: usize,
    ) -> Result<usize, Short> {
        if self.stage != Stage::DataOut {
            return Ok(0);
        }
        let missing = self.dout.missing(off, len);
        if missing.is_empty() {
            return Ok(0);
        }
        let sizes: Vec<usize> = missing.iter().map(|m| m.1).collect();
        let bufs = take_all(account, &sizes)?;
        for ((i, _), b) in missing.iter().zip(bufs) {
            if let Some(slot) = self.dout.bufs.get_mut(*i) {
                *slot = Some(b);
            }
        }
        Ok(charge_all(&sizes))
    }

    /// Ends a command whose buffers can never be had.
    fn refuse(&mut self, too_large: bool) {
        self.reply = Vec::new();
        if too_large {
            self.fail(Sense::illegal(asc::INVALID_FIELD_IN_CDB));
        } else {
            self.finish(Err(Failure::Status(status::TASK_SET_FULL)));
        }
    }

    /// Bytes of buffers the task holds for its run (data-in, work
    /// buffers, parameter data): the transport counts them against its
    /// per-connection bound, next to [`Task::data_out_len`].
    pub fn read_buffer_len(&self) -> usize {
        let sum = |v: &[Option<IoBuf>]| v.iter().flatten().map(IoBuf::len).sum::<usize>();
        sum(&self.din)
            + self.pool.iter().map(IoBuf::capacity).sum::<usize>()
            + self.reply_buf.as_ref().map_or(0, IoBuf::capacity)
            + self.data.iter().map(IoBuf::len).sum::<usize>()
    }

    /// Bytes of data-out and of read buffers the task holds now.
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> (usize, usize) {
        let sum = |v: &[Option<IoBuf>]| v.iter().flatten().map(IoBuf::len).sum::<usize>();
        (sum(&self.dout.bufs), self.read_buffer_len())
    }

    /// Data-out bytes the CDB itself asks for (SCSI's expected data
    /// transfer length), before any cut to what the initiator sends: what
    /// the transport compares with EDTL for residuals.
    pub fn cdb_out_len(&self) -> usize {
        self.cdb_out
    }

    /// Copies data-out bytes at `offset`; false if outside the data-out length.
    pub fn write_data_out(&mut self, offset: usize, bytes: &[u8]) -> bool {
        self.stage == Stage::DataOut && self.dout.write(offset, bytes)
    }

    /// All data-out arrived (or the transport stopped waiting: `complete`
    /// is false and the command ends with an error).
    pub fn data_out_done(&mut self, complete: bool) {
        if self.stage != Stage::DataOut {
            return;
        }
        if !complete {
            return self.fail(Sense::new(key::ABORTED_COMMAND, asc::DATA_PHASE_ERROR));
        }
        if !self.dout.is_whole() {
            // Every byte came, so every buffer is there; if not, the
            // transport lost track and the command must not run.
            return self.fail(Sense::new(
                key::HARDWARE_ERROR,
                asc::INTERNAL_TARGET_FAILURE,
            ));
        }
        let chunk = self.geo.chunk_blocks;
        match self.cmd {
            Cmd::Write {
                lba, blocks, fua, ..
            } => self.start_phase(
                0,
                Phase::Write {
                    lba,
                    blocks,
                    chunk,
                    base: 0,
                    fua,
                },
            ),
            Cmd::Verify { .. } => self.begin_verify_read(),
            Cmd::CompareAndWrite { .. } | Cmd::OrWrite { .. } | Cmd::WriteAtomic { .. } => {
                self.stage = Stage::Lock;
                self.try_lock();
            }
            Cmd::PrOut { sa, scope_type } => {
                let d = self.dout.bytes();
                let port = core::mem::take(&mut self.port);
                match self.pr(|p| p.update(&port, sa, scope_type, &d)) {
                    Ok(Ok(())) => self.good(),
                    Ok(Err(f)) | Err(f) => self.finish(Err(f)),
                }
            }
            Cmd::WriteSame { .. } => {
                self.pattern = self.dout.bytes();
                self.pattern.resize(self.geo.bs as usize, 0);
                self.begin_write_same();
            }
            Cmd::Unmap => {
                let d = self.dout.bytes();
                match self.unmap_list(&d) {
                    Ok(ranges) => {
                        let max = self.geo.max_unmap_op.min(u32::MAX as u64);
                        self.start_phase(
                            0,
                            Phase::Ranges {
                                ranges,
                                idx: 0,
                                off: 0,
                                max,
                            },
                        );
                    }
                    Err(s) => self.fail(s),
                }
            }
            Cmd::ModeSelect { ten } => self.mode_select(ten),
            _ => self.good(),
        }
    }

    fn mode_select(&mut self, ten: bool) {
        let d = self.dout.bytes();
        let m = self.mode_state();
        match spc::mode_select(ten, &d, &self.geo, &m) {
            Ok(Some(wce)) => {
                if let Some(lu) = &self.lu {
                    lu.wce.store(if wce { 2 } else { 1 }, Ordering::Relaxed);
                    let generation = lu.mode_gen.fetch_add(1, Ordering::Relaxed) + 1;
                    // The nexus that made the change is not told about it.
                    if let Some(seen) = &self.nexus_mode {
                        seen.store(generation, Ordering::Relaxed);
                    }
                }
                self.good();
            }
            Ok(None) => self.good(),
            Err(s) => self.fail(s),
        }
    }

    // GET LBA STATUS.

    /// The range whose allocation map the task needs, as (lba, blocks),
    /// until [`Task::handle_allocation`] gives it.
    pub fn wants_allocation(&self) -> Option<(u64, u64)> {
        match (self.stage, self.cmd) {
            (Stage::Allocation, Cmd::LbaStatus { lba, blocks, .. }) => Some((lba, blocks)),
            _ => None,
        }
    }

    /// The allocation runs (blocks, allocated) of [`Task::wants_allocation`]'s
    /// range, as `Registry::allocation` gives them (`None`: not tracked,
    /// all mapped).
    pub fn handle_allocation(&mut self, runs: Option<Vec<(u64, bool)>>) {
        let (Stage::Allocation, Cmd::LbaStatus { lba, blocks, alloc }) = (self.stage, self.cmd)
        else {
            return;
        };
        let max = (alloc.saturating_sub(8) / 16).clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
        let end = lba + blocks;
        let mut descs: Vec<(u64, u64, bool)> = Vec::new();
        let mut at = lba;
        for (n, allocated) in runs.unwrap_or_else(|| vec![(blocks, true)]) {
            let n = n.min(end - at);
            if n == 0 {
                if at == end {
                    break;
                }
                continue;
            }
            let full = descs.len() == max;
            match descs.last_mut() {
                Some(d) if d.2 == allocated => d.1 += n,
                _ if full => break,
                _ => descs.push((at, n, allocated)),
            }
            at += n;
        }
        if descs.is_empty() {
            descs.push((lba, blocks, true));
        }
        let mut d = ((4 + 16 * descs.len()) as u32).to_be_bytes().to_vec();
        d.extend([0u8; 4]);
        for (l, n, allocated) in descs {
            d.extend(l.to_be_bytes());
            d.extend((n.min(u32::MAX as u64) as u32).to_be_bytes());
            // Provisioning status: mapped, or deallocated.
            d.push(if allocated { 0 } else { 1 });
            d.extend([0u8; 3]);
        }
        self.reply(d, alloc as u64);
    }

    // Block I/O.

    /// The next block I/O to start: a sub-tag (below 2^16) for the completion,
    /// the op and FUA.
    pub fn poll_io(&mut self) -> Option<(u32, IoOp, bool)> {
        if !self.reserved {
            return None;
        }
        self.try_lock();
        if !matches!(self.stage, Stage::Io(_))
            || self.aborted
            || self.error.is_some()
            || self.in_flight >= self.limit
            || self.issued_all()
        {
            return None;
        }
        let slot = self.slots.iter().position(Option::is_none)?;
        let piece = self.next_piece;
        let Some((op, fua)) = self.make_piece(piece) else {
            // No buffer for the piece and none in flight to come back: the
            // reservation fell short, which must not hang the command.
            if self.in_flight == 0 {
                let broken = Sense::new(key::HARDWARE_ERROR, asc::INTERNAL_TARGET_FAILURE);
                self.error.get_or_insert(broken.into());
                self.check_phase_end();
            }
            return None;
        };
        self.next_piece += 1;
        self.slots[slot] = Some(piece);
        self.in_flight += 1;
        Some((slot as u32, op, fua))
    }

    /// A completion for an I/O from [`Task::poll_io`].
    pub fn handle_completion(&mut self, sub: u32, c: IoCompletion) {
        let Some(piece) = self.slots.get_mut(sub as usize).and_then(Option::take) else {
            return;
        };
        self.in_flight -= 1;
        if c.status.is_ok() {
            if let Err(f) = self.piece_done(piece, c.buf) {
                self.error.get_or_insert(f);
            }
        } else {
            let f = io_failure(c.status, &self.phase);
            self.error.get_or_insert(f);
        }
        self.check_phase_end();
    }

    /// Moves on once the phase has nothing left in flight.
    fn check_phase_end(&mut self) {
        if self.in_flight > 0 {
            return;
        }
        let Stage::Io(n) = self.stage else {
            if self.stage == Stage::Done {
                self.release_lock();
            }
            return;
        };
        if let Some(f) = self.error.take() {
            return self.finish(Err(f));
        }
        if self.issued_all() {
            self.advance(n);
        }
    }

    fn advance(&mut self, n: u8) {
        let chunk = self.geo.chunk_blocks;
        let checked = match self.miscompare {
            Some(off) => Err(Sense::miscompare(off.min(u32::MAX as u64) as u32).into()),
            None => Ok(Vec::new()),
        };
        match self.cmd {
            Cmd::Read => {
                let data = self.din.drain(..).flatten().collect();
                self.finish(Ok(data));
            }
            Cmd::Write {
                lba,
                blocks,
                verify: Some(compare),
                ..
            } if n == 0 => {
                let keep = if compare {
                    Keep::Compare
                } else {
                    Keep::Discard
                };
                self.start_phase(
                    1,
                    Phase::Read {
                        lba,
                        blocks,
                        chunk: self.geo.work_blocks(),
                        keep,
                    },
                );
            }
            Cmd::CompareAndWrite { lba, blocks, fua } if n == 0 && checked.is_ok() => {
                let base = self.dout.seg0_bufs();
                self.start_phase(
                    1,
                    Phase::Write {
                        lba,
                        blocks,
                        chunk,
                        base,
                        fua,
                    },
                );
            }
            // The data-out now holds the OR of both.
            Cmd::OrWrite { lba, blocks, fua } if n == 0 => self.start_phase(
                1,
                Phase::Write {
                    lba,
                    blocks,
                    chunk,
                    base: 0,
                    fua,
                },
            ),
            _ => self.finish(checked),
        }
    }

    /// No I/O outstanding and the result is known.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done && self.in_flight == 0
    }

    /// A COMPARE AND WRITE, ORWRITE or WRITE ATOMIC waiting for another one
    /// on the same LU to end; it starts from [`Task::poll_io`] once the
    /// lock is free.
    pub fn is_blocked(&self) -> bool {
        self.stage == Stage::Lock
    }

    /// Stops the command (ABORT TASK, LU reset, connection loss): nothing
    /// new is started and it ends with TASK ABORTED once the I/O in flight
    /// has come back.
    pub fn abort(&mut self) {
        self.aborted = true;
        if self.stage != Stage::Done {
            self.finish(Err(Failure::Status(status::TASK_ABORTED)));
        }
    }

    /// The result; call once, when done.
    pub fn take_response(&mut self) -> Response {
        if self.taken {
            return Response::default();
        }
        self.taken = true;
        Response {
            status: self.status,
            sense: self.sense.map(|s| s.to_fixed()).unwrap_or_default(),
            data: core::mem::take(&mut self.data),
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.release_lock();
    }
}
