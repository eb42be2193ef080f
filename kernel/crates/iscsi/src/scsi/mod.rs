//! The SCSI block device server (SPC-4 / SBC-3) behind the iSCSI transport.
//!
//! Sans-IO like the rest of the crate: a [`Task`] is one SCSI command. The
//! transport drives it in this order:
//! 1. [`Task::new`] parses the CDB against the LUN;
//! 2. if [`Task::data_out_len`] is non-zero, the transport moves the
//!    initiator's data in with [`Task::write_data_out`] (any order of
//!    offsets) and then calls [`Task::data_out_done`];
//! 3. every [`Task::poll_io`] is started on the bdev layer and its
//!    completion given back with [`Task::handle_completion`];
//! 4. once [`Task::is_done`], [`Task::take_response`] gives status, sense
//!    and the data-in buffers.

use alloc::vec::Vec;
use ironbay_bdev::{BdevId, BdevInfo, IoBuf, IoCompletion, IoOp};

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
    /// State shared by every I_T nexus to this LU (mode pages, ...).
    pub shared: &'a mut LunState,
    /// State of this I_T nexus (pending unit attentions, ...).
    pub nexus: &'a mut NexusState,
}

/// Per logical unit state shared by all sessions.
#[derive(Debug, Default)]
pub struct LunState {}

/// Per I_T_L nexus state.
#[derive(Debug, Default)]
pub struct NexusState {}

/// Why a unit attention is raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitAttention {
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29h/00h).
    PowerOnReset,
    /// LOGICAL UNIT RESET by another nexus (29h/03h... per SAM).
    LunReset,
    /// CAPACITY DATA HAS CHANGED (2Ah/09h).
    CapacityChanged,
    /// REPORTED LUNS DATA HAS CHANGED (3Fh/0Eh).
    ReportedLunsChanged,
    /// MODE PARAMETERS CHANGED (2Ah/01h) by another nexus.
    ModeParametersChanged,
}

impl NexusState {
    /// Queues a unit attention for this nexus.
    pub fn raise(&mut self, ua: UnitAttention) {
        let _ = ua;
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
}

/// One SCSI command.
pub struct Task {}

impl Task {
    /// Parses `cdb` for `lun` (`None`: the LUN does not exist; REPORT LUNS,
    /// INQUIRY and REQUEST SENSE still answer). `luns` lists the LUN numbers
    /// the nexus sees, for REPORT LUNS. `expected_out` is the initiator's
    /// expected data-out length (iSCSI EDTL for writes).
    pub fn new(cdb: &[u8], lun: Option<LunRef<'_>>, luns: &[u64], expected_out: u32) -> Task {
        let _ = (cdb, lun, luns, expected_out);
        Task {}
    }

    /// Bytes of data-out the command takes before it can run (0: none, or it
    /// already failed).
    pub fn data_out_len(&self) -> usize {
        0
    }

    /// Copies data-out bytes at `offset`; false if outside the data-out length.
    pub fn write_data_out(&mut self, offset: usize, bytes: &[u8]) -> bool {
        let _ = (offset, bytes);
        false
    }

    /// All data-out arrived (or the transport stopped waiting: `complete`
    /// is false and the command ends with an error).
    pub fn data_out_done(&mut self, complete: bool) {
        let _ = complete;
    }

    /// The next block I/O to start: a sub-tag (below 2^16) for the completion,
    /// the op and FUA.
    pub fn poll_io(&mut self) -> Option<(u32, IoOp, bool)> {
        None
    }

    /// A completion for an I/O from [`Task::poll_io`].
    pub fn handle_completion(&mut self, sub: u32, c: IoCompletion) {
        let _ = (sub, c);
    }

    /// No I/O outstanding and the result is known.
    pub fn is_done(&self) -> bool {
        true
    }

    /// The result; call once, when done.
    pub fn take_response(&mut self) -> Response {
        Response::default()
    }
}
