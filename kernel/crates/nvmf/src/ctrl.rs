//! Controllers: Fabrics Connect and properties, the admin command set, the
//! discovery controller, asynchronous events and keep-alive.
//!
//! The dynamic controller model: every admin Connect creates a controller
//! with a fresh ID, which its I/O queues then name. A controller lives in
//! the [`Target`] until its admin queue goes away; when it fails (keep-alive
//! expiry, its subsystem deleted, its host no longer allowed) it stays, dead,
//! until then, so its queues see [`alive`] turn false.

mod identify;
mod log;
#[cfg(test)]
mod tests;

use crate::config::{Config, TransportOptions};
use crate::spec::{self, CNTLID_DYNAMIC, Sqe, Status};
use crate::target::{IoCounters, QpairInfo, Target};
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::net::SocketAddr;
use ironbay_bdev::{BdevId, IoType, Registry, Uuid};

/// The queue a connection serves, once its Connect succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueBinding {
    /// The target's [`QpairInfo`] id.
    pub qpair_id: u32,
    pub cntlid: u16,
    /// 0 = admin queue.
    pub qid: u16,
    /// Entries (Connect SQSIZE + 1).
    pub sqsize: u16,
    /// Connect CATTR bit 2: the host does not use SQ head pointers.
    pub sq_flow_disabled: bool,
    /// Bound to a discovery controller.
    pub discovery: bool,
}

/// How an admin command ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Complete now; `data` goes to the host (C2H) and is cut to the
    /// command's transfer length by the transport.
    Done {
        status: Status,
        dw0: u32,
        dw1: u32,
        data: Vec<u8>,
    },
    /// Asynchronous Event Request parked: the transport keeps the CID and
    /// completes it with [`take_event`].
    Parked,
}

impl Outcome {
    fn ok(dw0: u32) -> Outcome {
        Outcome::Done {
            status: Status::SUCCESS,
            dw0,
            dw1: 0,
            data: Vec::new(),
        }
    }

    fn data(data: Vec<u8>) -> Outcome {
        Outcome::Done {
            status: Status::SUCCESS,
            dw0: 0,
            dw1: 0,
            data,
        }
    }

    fn err(status: Status) -> Outcome {
        Outcome::Done {
            status,
            dw0: 0,
            dw1: 0,
            data: Vec::new(),
        }
    }
}

/// A namespace as an I/O command sees it.
#[derive(Clone, Copy, Debug)]
pub struct NsTarget {
    pub bdev: BdevId,
    pub block_size: u32,
    pub num_blocks: u64,
    pub read_only: bool,
    pub write_cache: bool,
    /// Largest transfer of one block I/O, bytes.
    pub max_transfer: u32,
    pub unmap: bool,
    pub write_zeroes: bool,
}

/// Parked Asynchronous Event Requests per controller (AERL + 1).
pub const MAX_AERS: u8 = 4;
/// Error log entries kept (ELPE + 1).
pub const ERROR_LOG_ENTRIES: usize = 64;
/// Changed namespace list entries before it overflows.
pub const CHANGED_NS_MAX: usize = 1024;
/// Controllers at once, target-wide.
pub const MAX_CONTROLLERS: usize = 1024;
/// CAP.TO, in 500 ms units: how long a host waits for CSTS.RDY.
const CAP_TIMEOUT: u64 = 30;
/// Keep-alive timeout (ms) of a discovery controller connected with KATO 0:
/// otherwise a stale discovery session (host gone without a FIN) would
/// hold its controller, and one of [`MAX_CONTROLLERS`], forever.
pub const DISCOVERY_KATO_MS: u32 = 120_000;

// Controller Configuration and Status bits.
const CC_EN: u32 = 1;
const CC_SHN_SHIFT: u32 = 14;
const CSTS_RDY: u32 = 1;
const CSTS_CFS: u32 = 1 << 1;
const CSTS_SHST_COMPLETE: u32 = 2 << 2;

// Asynchronous Event Configuration bits.
/// SMART / health critical warnings (never raised, but a host may enable them).
const AEC_SMART: u32 = 0xff;
const AEC_NS_ATTR: u32 = 1 << 8;
const AEC_DISCOVERY: u32 = 1 << 31;

/// Offsets the Connect response points at (IPO) when a field is invalid.
const IPO_SQE_QID: u32 = 42;
const IPO_SQE_SQSIZE: u32 = 44;
const IPO_DATA_HOSTID: u32 = 0;
const IPO_DATA_CNTLID: u32 = 16;
const IPO_DATA_SUBNQN: u32 = 256;
const IPO_DATA_HOSTNQN: u32 = 512;
/// IATTR bit: the IPO is in the Connect data, not the SQE.
const IATTR_DATA: u32 = 1 << 16;

/// One error log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ErrorEntry {
    /// Set when logged: the controller's error count.
    pub count: u64,
    pub sqid: u16,
    pub cid: u16,
    pub status: Status,
    pub nsid: u32,
    pub lba: u64,
}

/// A namespace as the controller last saw it (what Identify and I/O use,
/// and what the host was told about).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NsView {
    pub nsid: u32,
    pub nguid: Option<[u8; 16]>,
    pub eui64: Option<[u8; 8]>,
    pub uuid: Option<Uuid>,
    pub bdev: BdevId,
    pub block_size: u32,
    pub num_blocks: u64,
    pub read_only: bool,
}

/// Settable features without behaviour, kept to be read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Features {
    pub arbitration: u32,
    pub power_management: u32,
    /// Over and under temperature thresholds (Kelvin) of the composite
    /// sensor.
    pub temp_over: u16,
    pub temp_under: u16,
    pub error_recovery: u32,
    pub write_atomicity: u32,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            arbitration: 0,
            power_management: 0,
            temp_over: TEMP_OVER_DEFAULT,
            temp_under: 0,
            error_recovery: 0,
            write_atomicity: 0,
        }
    }
}

/// Composite temperature we report (Kelvin, 48 C) and the default over
/// threshold (70 C), well above it so no warning is ever due.
pub(crate) const TEMPERATURE: u16 = 321;
const TEMP_OVER_DEFAULT: u16 = 343;

#[derive(Debug)]
pub(crate) struct Controller {
    pub cntlid: u16,
    pub subnqn: String,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub discovery: bool,
    /// Our end of the admin connection (discovery log wildcard addresses,
    /// listener removal).
    pub local: SocketAddr,
    pub admin_qpair: u32,
    /// Connected I/O queues: (qid, qpair id).
    pub io_queues: Vec<(u16, u32)>,
    pub cc: u32,
    pub csts: u32,
    pub failed: bool,
    /// Keep-alive timeout in ms (0 = none) and when the host last showed
    /// it is there.
    pub kato: u32,
    pub last_keep_alive: u64,
    /// Number of I/O queues granted by Set Features (None: not set yet).
    pub queues_granted: Option<u16>,
    pub aec: u32,
    /// Asynchronous Event Requests the transport holds for us.
    pub aers: u8,
    /// A namespace attribute notice waiting for an AER, and whether that
    /// event type is masked (delivered, log page 04h not read since).
    pub ns_event: bool,
    pub ns_masked: bool,
    pub changed_ns: Vec<u32>,
    pub changed_overflow: bool,
    /// Same for discovery log changes, with a digest of the log as the
    /// host last could have seen it.
    pub disc_event: bool,
    pub disc_masked: bool,
    pub disc_digest: u64,
    /// Active namespaces, by nsid.
    pub ns: Vec<NsView>,
    /// Volatile write cache enabled (Set Features 06h), and whether a
    /// namespace had one when the controller was created (the default).
    pub vwc: bool,
    pub vwc_present: bool,
    pub features: Features,
    /// Newest first.
    pub errors: VecDeque<ErrorEntry>,
    pub error_count: u64,
    pub io: IoCounters,
    /// Largest transfer the transport can hold for one command (MDTS),
    /// bytes; 0 until the admin queue's transport tells.
    pub max_transfer: u32,
}

impl Controller {
    pub(crate) fn log_error(&mut self, mut e: ErrorEntry) {
        self.error_count = self.error_count.saturating_add(1);
        e.count = self.error_count;
        if self.errors.len() >= ERROR_LOG_ENTRIES {
            self.errors.pop_back();
        }
        self.errors.push_front(e);
    }

    fn ready(&self) -> bool {
        self.csts & CSTS_RDY != 0
    }

    fn ns(&self, nsid: u32) -> Option<&NsView> {
        self.ns
            .binary_search_by_key(&nsid, |v| v.nsid)
            .ok()
            .and_then(|i| self.ns.get(i))
    }

    /// Detaches the I/O queues (controller reset or shutdown): their
    /// commands fail from now on and the host connects new ones.
    fn drop_io_queues(&mut self) {
        self.io_queues.clear();
        self.queues_granted = None;
    }

    /// The next event to complete an AER with, if one is due and unmasked.
    fn next_event(&mut self) -> Option<u32> {
        if self.ns_event && !self.ns_masked {
            self.ns_event = false;
            self.ns_masked = true;
            return Some(spec::AEN_NS_ATTR_CHANGED);
        }
        if self.disc_event && !self.disc_masked {
            self.disc_event = false;
            self.disc_masked = true;
            return Some(spec::AEN_DISCOVERY_CHANGED);
        }
        None
    }

    /// Records namespaces whose attributes changed; true if that made an
    /// event due.
    fn ns_changed(&mut self, nsids: &[u32]) -> bool {
        if nsids.is_empty() {
            return false;
        }
        for &n in nsids {
            if self.changed_overflow || self.changed_ns.contains(&n) {
                continue;
            }
            if self.changed_ns.len() >= CHANGED_NS_MAX {
                self.changed_overflow = true;
                self.changed_ns.clear();
            } else {
                self.changed_ns.push(n);
            }
        }
        self.changed_ns.sort_unstable();
        if self.aec & AEC_NS_ATTR != 0 && !self.ns_masked && !self.ns_event {
            self.ns_event = true;
            return true;
        }
        false
    }
}

/// Transport options in force (defaults if no transport was created, which
/// the transport itself refuses before any command gets here).
fn options(config: &Config) -> TransportOptions {
    config.transport.clone().unwrap_or_default()
}

/// A NUL-terminated NQN in the 256-byte field at `off` of the Connect data.
fn nqn_at(data: &[u8], off: usize) -> Option<&str> {
    let field = data.get(off..off.checked_add(256)?)?;
    let len = field.iter().position(|&b| b == 0)?;
    if len == 0 || len > spec::MAX_NQN {
        return None;
    }
    core::str::from_utf8(field.get(..len)?).ok()
}

fn invalid_param(data_field: bool, ipo: u32) -> (Status, u32) {
    let iattr = if data_field { IATTR_DATA } else { 0 };
    (Status::CONNECT_INVALID_PARAMETERS, iattr | ipo)
}

/// The namespaces of `nqn` as they are now (those whose bdev exists).
pub(crate) fn active_namespaces(config: &Config, bdevs: &Registry, nqn: &str) -> Vec<NsView> {
    let Some(s) = config.subsystem(nqn) else {
        return Vec::new();
    };
    let mut v: Vec<NsView> = s
        .namespaces
        .iter()
        .filter_map(|n| {
            let id = bdevs.find(&n.bdev_name)?;
            let info = bdevs.info(id)?;
            Some(NsView {
                nsid: n.nsid,
                nguid: n.nguid,
                eui64: n.eui64,
                uuid: n.uuid,
                bdev: id,
                block_size: info.block_size,
                num_blocks: info.num_blocks,
                read_only: info.read_only,
            })
        })
        .collect();
    v.sort_by_key(|n| n.nsid);
    v.dedup_by_key(|n| n.nsid);
    v
}

/// Fabrics Connect, the first command on every queue. `data` is the
/// 1024-byte Connect data. Ok: the binding and CQE dw0 (controller ID);
/// Err: the status and CQE dw0 (IATTR/IPO for invalid parameters).
pub fn connect(
    target: &mut Target,
    bdevs: &Registry,
    sqe: &Sqe,
    data: &[u8],
    local: SocketAddr,
    peer: SocketAddr,
    now_ms: u64,
) -> Result<(QueueBinding, u32), (Status, u32)> {
    if sqe.opcode() != spec::OPC_FABRICS || sqe.fctype() != spec::FCTYPE_CONNECT {
        return Err((Status::COMMAND_SEQUENCE_ERROR, 0));
    }
    let cdw10 = sqe.cdw(10);
    let cdw11 = sqe.cdw(11);
    if cdw10 & 0xffff != 0 {
        return Err((Status::CONNECT_INCOMPATIBLE_FORMAT, 0));
    }
    let qid = (cdw10 >> 16) as u16;
    let sqsize = (cdw11 & 0xffff) as u16;
    let cattr = (cdw11 >> 16) as u8;
    let kato = sqe.cdw(12);
    if data.len() < 1024 {
        return Err((Status::DATA_SGL_LENGTH_INVALID, 0));
    }
    let Some(opts) = target.config.transport.clone() else {
        return Err((Status::CONNECT_CONTROLLER_BUSY, 0));
    };
    let mut hostid = [0u8; 16];
    if let Some(h) = data.get(..16) {
        hostid.copy_from_slice(h);
    }
    let cntlid = data
        .get(16..18)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
    let subnqn = nqn_at(data, 256).ok_or_else(|| invalid_param(true, IPO_DATA_SUBNQN))?;
    let hostnqn = nqn_at(data, 512).ok_or_else(|| invalid_param(true, IPO_DATA_HOSTNQN))?;
    let discovery = Config::is_discovery(subnqn);
    let kato = if discovery && kato == 0 {
        DISCOVERY_KATO_MS
    } else {
        kato
    };
    if !discovery {
        let Some(s) = target.config.subsystem(subnqn) else {
            return Err(invalid_param(true, IPO_DATA_SUBNQN));
        };
        if !s.listens_on(local.port()) {
            return Err(invalid_param(true, IPO_DATA_SUBNQN));
        }
        if !s.host_allowed(hostnqn) {
            return Err((Status::CONNECT_INVALID_HOST, 0));
        }
    }
    let max_entries = if qid == 0 {
        opts.max_aq_depth
    } else {
        opts.max_queue_depth
    };
    // SQSIZE is 0-based and a queue has at least two entries.
    if sqsize == 0 || sqsize >= max_entries {
        return Err(invalid_param(false, IPO_SQE_SQSIZE));
    }
    let qpair = QpairInfo {
        id: 0,
        cntlid: 0,
        qid,
        subnqn: subnqn.into(),
        hostnqn: hostnqn.into(),
        peer: format!("{peer}"),
        local: format!("{local}"),
    };
    let binding = |qpair_id, cntlid| QueueBinding {
        qpair_id,
        cntlid,
        qid,
        sqsize: sqsize.saturating_add(1),
        sq_flow_disabled: cattr & 0x4 != 0,
        discovery,
    };
    if qid == 0 {
        if cntlid != CNTLID_DYNAMIC {
            return Err(invalid_param(true, IPO_DATA_CNTLID));
        }
        if target.ctrls.len() >= MAX_CONTROLLERS {
            return Err((Status::CONNECT_CONTROLLER_BUSY, 0));
        }
        let (lo, hi) = match target.config.subsystem(subnqn) {
            Some(s) if !discovery => (
                s.min_cntlid.max(1),
                s.max_cntlid.min(crate::config::MAX_CNTLID),
            ),
            _ => (1, crate::config::MAX_CNTLID),
        };
        let Some(id) = free_cntlid(target, lo, hi) else {
            return Err((Status::CONNECT_CONTROLLER_BUSY, 0));
        };
        let ns = if discovery {
            Vec::new()
        } else {
            active_namespaces(&target.config, bdevs, subnqn)
        };
        let vwc = ns
            .iter()
            .any(|n| bdevs.info(n.bdev).is_some_and(|i| i.write_cache));
        let disc_digest = if discovery {
            log::discovery_digest(&target.config, hostnqn, local)
        } else {
            0
        };
        let qpair_id = target.add_qpair(QpairInfo {
            cntlid: id,
            ..qpair
        });
        target.ctrls.push(Controller {
            cntlid: id,
            subnqn: subnqn.into(),
            hostnqn: hostnqn.into(),
            hostid,
            discovery,
            local,
            admin_qpair: qpair_id,
            io_queues: Vec::new(),
            cc: 0,
            csts: 0,
            failed: false,
            kato,
            last_keep_alive: now_ms,
            queues_granted: None,
            aec: 0,
            aers: 0,
            ns_event: false,
            ns_masked: false,
            changed_ns: Vec::new(),
            changed_overflow: false,
            disc_event: false,
            disc_masked: false,
            disc_digest,
            ns,
            vwc,
            vwc_present: vwc,
            features: Features::default(),
            errors: VecDeque::new(),
            error_count: 0,
            io: IoCounters::default(),
            max_transfer: 0,
        });
        target.next_cntlid = if id >= hi { lo } else { id + 1 };
        return Ok((binding(qpair_id, id), id as u32));
    }
    // An I/O queue joins an existing controller of the same host.
    let Some(c) = target.ctrl(cntlid).filter(|c| !c.failed) else {
        return Err(invalid_param(true, IPO_DATA_CNTLID));
    };
    if c.subnqn != subnqn {
        return Err(invalid_param(true, IPO_DATA_SUBNQN));
    }
    if c.hostnqn != hostnqn {
        return Err(invalid_param(true, IPO_DATA_HOSTNQN));
    }
    if c.hostid != hostid {
        return Err(invalid_param(true, IPO_DATA_HOSTID));
    }
    if c.discovery {
        return Err(invalid_param(false, IPO_SQE_QID));
    }
    if !c.ready() || c.cc >> CC_SHN_SHIFT & 3 != 0 {
        return Err((Status::COMMAND_SEQUENCE_ERROR, 0));
    }
    let granted = c.queues_granted.unwrap_or(opts.max_io_qpairs_per_ctrlr);
    if qid > granted || c.io_queues.iter().any(|&(q, _)| q == qid) {
        return Err(invalid_param(false, IPO_SQE_QID));
    }
    let qpair_id = target.add_qpair(QpairInfo { cntlid, ..qpair });
    if let Some(c) = target.ctrl_mut(cntlid) {
        c.io_queues.push((qid, qpair_id));
    }
    Ok((binding(qpair_id, cntlid), cntlid as u32))
}

/// A controller ID in `lo..=hi` no live controller has, starting at the
/// target's cursor.
fn free_cntlid(target: &Target, lo: u16, hi: u16) -> Option<u16> {
    if lo > hi {
        return None;
    }
    let start = target.next_cntlid.clamp(lo, hi);
    (start..=hi)
        .chain(lo..start)
        .find(|&id| target.ctrls.iter().all(|c| c.cntlid != id))
}

/// Any command on the admin queue (admin opcodes and Fabrics Property
/// Get/Set). `data` is host-to-controller data the transport collected;
/// `local` is our address on this connection.
pub fn admin(
    target: &mut Target,
    bdevs: &Registry,
    q: &QueueBinding,
    sqe: &Sqe,
    data: &[u8],
    local: SocketAddr,
    now_ms: u64,
) -> Outcome {
    let _ = data;
    let out = dispatch(target, bdevs, q, sqe, local, now_ms);
    if let Outcome::Done { status, .. } = &out
        && !status.is_success()
        && let Some(c) = target.ctrl_mut(q.cntlid)
    {
        c.log_error(ErrorEntry {
            count: 0,
            sqid: 0,
            cid: sqe.cid(),
            status: *status,
            nsid: sqe.nsid(),
            lba: 0,
        });
    }
    out
}

fn dispatch(
    target: &mut Target,
    bdevs: &Registry,
    q: &QueueBinding,
    sqe: &Sqe,
    local: SocketAddr,
    now_ms: u64,
) -> Outcome {
    let mut opts = options(&target.config);
    let Some(c) = target.ctrl(q.cntlid) else {
        return Outcome::err(Status::COMMAND_SEQUENCE_ERROR);
    };
    if c.max_transfer != 0 {
        opts.max_io_size = opts.max_io_size.min(c.max_transfer);
    }
    if c.failed || q.qid != 0 || c.admin_qpair != q.qpair_id {
        return Outcome::err(Status::COMMAND_SEQUENCE_ERROR);
    }
    if sqe.opcode() == spec::OPC_FABRICS {
        return fabrics(target, q.cntlid, sqe, &opts);
    }
    // Only Fabrics commands may come before the controller is ready; the
    // discovery controller is lenient like other targets.
    if !c.ready() && !c.discovery {
        return Outcome::err(Status::COMMAND_SEQUENCE_ERROR);
    }
    let discovery = c.discovery;
    match sqe.opcode() {
        spec::ADM_IDENTIFY => identify::identify(target, bdevs, q.cntlid, sqe, &opts),
        spec::ADM_GET_LOG_PAGE => log::get_log_page(target, q.cntlid, sqe, local, now_ms),
        spec::ADM_KEEP_ALIVE => {
            if let Some(c) = target.ctrl_mut(q.cntlid) {
                c.last_keep_alive = now_ms;
            }
            Outcome::ok(0)
        }
        spec::ADM_SET_FEATURES => set_features(target, q.cntlid, sqe, &opts, now_ms),
        spec::ADM_GET_FEATURES => get_features(target, q.cntlid, sqe, &opts),
        spec::ADM_ASYNC_EVENT_REQUEST => {
            let Some(c) = target.ctrl_mut(q.cntlid) else {
                return Outcome::err(Status::INTERNAL);
            };
            if let Some(ev) = c.next_event() {
                return Outcome::ok(ev);
            }
            if c.aers >= MAX_AERS {
                return Outcome::err(Status::ASYNC_EVENT_LIMIT_EXCEEDED);
            }
            c.aers += 1;
            Outcome::Parked
        }
        // Commands complete too fast to be aborted: bit 0 = not aborted.
        spec::ADM_ABORT if !discovery => Outcome::ok(1),
        _ => Outcome::err(Status::INVALID_OPCODE),
    }
}

fn fabrics(target: &mut Target, cntlid: u16, sqe: &Sqe, opts: &TransportOptions) -> Outcome {
    match sqe.fctype() {
        spec::FCTYPE_PROPERTY_GET => {
            let Some(c) = target.ctrl(cntlid) else {
                return Outcome::err(Status::INTERNAL);
            };
            let eight = sqe.cdw(10) & 0x7 == 1;
            if sqe.cdw(10) & 0x7 > 1 {
                return Outcome::err(Status::INVALID_FIELD);
            }
            match property_get(c, opts, sqe.cdw(11), eight) {
                Some(v) => Outcome::Done {
                    status: Status::SUCCESS,
                    dw0: v as u32,
                    dw1: (v >> 32) as u32,
                    data: Vec::new(),
                },
                None => Outcome::err(Status::INVALID_FIELD),
            }
        }
        spec::FCTYPE_PROPERTY_SET => {
            let size = sqe.cdw(10) & 0x7;
            let offset = sqe.cdw(11);
            if offset != spec::PROP_CC || size != 0 {
                return Outcome::err(Status::INVALID_FIELD);
            }
            let value = sqe.cdw(12);
            let Some(c) = target.ctrl_mut(cntlid) else {
                return Outcome::err(Status::INTERNAL);
            };
            if set_cc(c, value) {
                target.bump();
            }
            Outcome::ok(0)
        }
        // The transport ends the queue itself.
        spec::FCTYPE_DISCONNECT => Outcome::ok(0),
        spec::FCTYPE_CONNECT => Outcome::err(Status::COMMAND_SEQUENCE_ERROR),
        _ => Outcome::err(Status::INVALID_OPCODE),
    }
}

/// The CAP property.
fn cap(opts: &TransportOptions) -> u64 {
    let mqes = opts.max_queue_depth.saturating_sub(1) as u64;
    // CQR (contiguous queues), TO, CSS bit 0 (NVM command set); DSTRD,
    // MPSMIN and MPSMAX 0 (4 KiB pages only).
    mqes | 1 << 16 | CAP_TIMEOUT << 24 | 1 << 37
}

/// Property Get: `offset` and 4- or 8-byte size; None for an unknown
/// property or size.
fn property_get(c: &Controller, opts: &TransportOptions, offset: u32, eight: bool) -> Option<u64> {
    let cap = cap(opts);
    match (offset, eight) {
        (spec::PROP_CAP, _) if eight => Some(cap),
        (spec::PROP_CAP, _) => Some(cap & 0xffff_ffff),
        (0x04, false) => Some(cap >> 32),
        (spec::PROP_VS, false) => Some(spec::NVME_VERSION as u64),
        (spec::PROP_CC, false) => Some(c.cc as u64),
        (spec::PROP_CSTS, false) => Some(c.csts as u64),
        (spec::PROP_NSSR, false) => Some(0),
        _ => None,
    }
}

/// Writes CC; true if that detached I/O queues. A configuration we cannot
/// run sets CSTS.CFS, as the host then expects.
fn set_cc(c: &mut Controller, value: u32) -> bool {
    let old = c.cc;
    c.cc = value;
    let mut dropped = false;
    let was_en = old & CC_EN != 0;
    let en = value & CC_EN != 0;
    let shn = value >> CC_SHN_SHIFT & 3;
    let old_shn = old >> CC_SHN_SHIFT & 3;
    if shn != 0 && old_shn == 0 {
        // Nothing is cached here, so shutdown is complete at once.
        c.csts = (c.csts & !(3 << 2)) | CSTS_SHST_COMPLETE;
        dropped = !c.io_queues.is_empty();
        c.drop_io_queues();
    } else if shn == 0 && old_shn != 0 {
        c.csts &= !(3 << 2);
    }
    if en && !was_en {
        let css = value >> 4 & 7;
        let mps = value >> 7 & 0xf;
        let ams = value >> 11 & 7;
        let iosqes = value >> 16 & 0xf;
        let iocqes = value >> 20 & 0xf;
        // Queue entry sizes may be left 0 by discovery hosts.
        let sizes_ok = (iosqes == 6 || iosqes == 0) && (iocqes == 4 || iocqes == 0);
        if css != 0 || mps != 0 || ams != 0 || !sizes_ok {
            c.csts |= CSTS_CFS;
            return dropped;
        }
        c.csts |= CSTS_RDY;
    } else if !en && was_en {
        // Controller reset: I/O queues are gone, the admin queue stays.
        c.csts &= !(CSTS_RDY | CSTS_CFS);
        dropped |= !c.io_queues.is_empty();
        c.drop_io_queues();
    }
    dropped
}

// Features.

fn set_features(
    target: &mut Target,
    cntlid: u16,
    sqe: &Sqe,
    opts: &TransportOptions,
    now_ms: u64,
) -> Outcome {
    let cdw10 = sqe.cdw(10);
    let fid = cdw10 as u8;
    let v = sqe.cdw(11);
    let Some(c) = target.ctrl_mut(cntlid) else {
        return Outcome::err(Status::INTERNAL);
    };
    if cdw10 & 1 << 31 != 0 {
        return Outcome::err(Status::FEATURE_NOT_SAVEABLE);
    }
    if c.discovery
        && !matches!(
            fid,
            spec::FEAT_KEEP_ALIVE_TIMER | spec::FEAT_ASYNC_EVENT_CONFIG
        )
    {
        return Outcome::err(Status::INVALID_FIELD);
    }
    match fid {
        spec::FEAT_ARBITRATION => c.features.arbitration = v,
        spec::FEAT_POWER_MANAGEMENT => {
            // One power state (NPSS 0).
            if v & 0x1f != 0 {
                return Outcome::err(Status::INVALID_FIELD);
            }
            c.features.power_management = v & 0xff;
        }
        spec::FEAT_TEMPERATURE_THRESHOLD => {
            let tmpth = v as u16;
            let tmpsel = v >> 16 & 0xf;
            let thsel = v >> 20 & 3;
            if tmpsel != 0 && tmpsel != 0xf {
                return Outcome::err(Status::INVALID_FIELD);
            }
            match thsel {
                0 => c.features.temp_over = tmpth,
                1 => c.features.temp_under = tmpth,
                _ => return Outcome::err(Status::INVALID_FIELD),
            }
        }
        spec::FEAT_ERROR_RECOVERY => {
            // DULBE needs deallocated-block errors, which we do not report.
            if v & 1 << 16 != 0 {
                return Outcome::err(Status::INVALID_FIELD);
            }
            c.features.error_recovery = v & 0xffff;
        }
        spec::FEAT_VOLATILE_WRITE_CACHE => c.vwc = v & 1 != 0,
        spec::FEAT_NUMBER_OF_QUEUES => {
            let nsqr = v & 0xffff;
            let ncqr = v >> 16;
            if nsqr == 0xffff || ncqr == 0xffff {
                return Outcome::err(Status::INVALID_FIELD);
            }
            if !c.io_queues.is_empty() {
                return Outcome::err(Status::COMMAND_SEQUENCE_ERROR);
            }
            let max = opts.max_io_qpairs_per_ctrlr.max(1) as u32;
            let n = (nsqr + 1).min(ncqr + 1).min(max);
            c.queues_granted = Some(n as u16);
            return Outcome::ok((n - 1) | (n - 1) << 16);
        }
        spec::FEAT_WRITE_ATOMICITY => c.features.write_atomicity = v & 1,
        spec::FEAT_ASYNC_EVENT_CONFIG => {
            let supported = if c.discovery {
                AEC_DISCOVERY
            } else {
                AEC_SMART | AEC_NS_ATTR
            };
            if v & !supported != 0 {
                return Outcome::err(Status::INVALID_FIELD);
            }
            c.aec = v;
        }
        spec::FEAT_KEEP_ALIVE_TIMER => {
            c.kato = v;
            c.last_keep_alive = now_ms;
        }
        // The Connect command carries the host identifier on fabrics.
        spec::FEAT_HOST_IDENTIFIER => return Outcome::err(Status::COMMAND_SEQUENCE_ERROR),
        _ => return Outcome::err(Status::INVALID_FIELD),
    }
    Outcome::ok(0)
}

fn get_features(target: &mut Target, cntlid: u16, sqe: &Sqe, opts: &TransportOptions) -> Outcome {
    let cdw10 = sqe.cdw(10);
    let fid = cdw10 as u8;
    let sel = cdw10 >> 8 & 7;
    let cdw11 = sqe.cdw(11);
    let Some(c) = target.ctrl(cntlid) else {
        return Outcome::err(Status::INTERNAL);
    };
    if c.discovery
        && !matches!(
            fid,
            spec::FEAT_KEEP_ALIVE_TIMER | spec::FEAT_ASYNC_EVENT_CONFIG
        )
    {
        return Outcome::err(Status::INVALID_FIELD);
    }
    let max = opts.max_io_qpairs_per_ctrlr.max(1) as u32;
    let queues = |n: u32| (n - 1) | (n - 1) << 16;
    let changeable = fid != spec::FEAT_HOST_IDENTIFIER;
    let (current, default) = match fid {
        spec::FEAT_ARBITRATION => (c.features.arbitration, 0),
        spec::FEAT_POWER_MANAGEMENT => (c.features.power_management, 0),
        spec::FEAT_TEMPERATURE_THRESHOLD => {
            let tmpsel = cdw11 >> 16 & 0xf;
            let thsel = cdw11 >> 20 & 3;
            if tmpsel != 0 {
                return Outcome::err(Status::INVALID_FIELD);
            }
            match thsel {
                0 => (c.features.temp_over as u32, TEMP_OVER_DEFAULT as u32),
                1 => (c.features.temp_under as u32 | 1 << 20, 1 << 20),
                _ => return Outcome::err(Status::INVALID_FIELD),
            }
        }
        spec::FEAT_ERROR_RECOVERY => (c.features.error_recovery, 0),
        spec::FEAT_VOLATILE_WRITE_CACHE => (c.vwc as u32, c.vwc_present as u32),
        spec::FEAT_NUMBER_OF_QUEUES => (
            queues(c.queues_granted.map_or(max, |n| n.max(1) as u32)),
            queues(max),
        ),
        spec::FEAT_WRITE_ATOMICITY => (c.features.write_atomicity, 0),
        spec::FEAT_ASYNC_EVENT_CONFIG => (c.aec, 0),
        spec::FEAT_KEEP_ALIVE_TIMER => (c.kato, 0),
        spec::FEAT_HOST_IDENTIFIER => {
            // Only the 128-bit (extended) identifier exists on fabrics.
            if cdw11 & 1 == 0 {
                return Outcome::err(Status::INVALID_FIELD);
            }
            if sel == 3 {
                return Outcome::ok(0);
            }
            return Outcome::data(c.hostid.to_vec());
        }
        _ => return Outcome::err(Status::INVALID_FIELD),
    };
    let dw0 = match sel {
        0 => current,
        1 | 2 => default,
        // Capabilities: changeable (bit 2), never saveable.
        3 => (changeable as u32) << 2,
        _ => return Outcome::err(Status::INVALID_FIELD),
    };
    Outcome::ok(dw0)
}

// Events, keep-alive, queue lifetime.

/// Next asynchronous event for this controller (CQE dw0), if an AER is
/// parked and an unmasked event is due.
pub fn take_event(target: &mut Target, cntlid: u16) -> Option<u32> {
    let c = target.ctrl_mut(cntlid)?;
    if c.aers == 0 || c.failed {
        return None;
    }
    let ev = c.next_event()?;
    c.aers -= 1;
    Some(ev)
}

/// The controller is still usable: it exists and has not failed (keep-alive
/// expiry, subsystem deleted, host no longer allowed or the listener gone).
/// A controller reset or shutdown (CC) keeps the admin queue usable, so the
/// host can finish the handshake, but detaches the I/O queues: see
/// [`queue_alive`].
pub fn alive(target: &Target, cntlid: u16) -> bool {
    target.ctrl(cntlid).is_some_and(|c| !c.failed)
}

/// This queue is still usable: its controller is [`alive`], and an I/O
/// queue has not been detached by a controller reset or shutdown.
pub fn queue_alive(target: &Target, q: &QueueBinding) -> bool {
    target.ctrl(q.cntlid).is_some_and(|c| {
        !c.failed
            && if q.qid == 0 {
                c.admin_qpair == q.qpair_id
            } else {
                c.io_queues.contains(&(q.qid, q.qpair_id))
            }
    })
}

/// When this controller's keep-alive timer expires (absolute ms), if set.
pub fn keep_alive_deadline(target: &Target, cntlid: u16) -> Option<u64> {
    let c = target.ctrl(cntlid)?;
    if c.failed || c.kato == 0 {
        return None;
    }
    Some(c.last_keep_alive.saturating_add(c.kato as u64))
}

/// Fails the controller if its keep-alive timer expired by `now_ms`.
pub fn check_keep_alive(target: &mut Target, cntlid: u16, now_ms: u64) {
    let Some(deadline) = keep_alive_deadline(target, cntlid) else {
        return;
    };
    if now_ms >= deadline {
        if let Some(c) = target.ctrl_mut(cntlid) {
            c.failed = true;
        }
        target.bump();
    }
}

/// The queue went away (Disconnect or the socket closed). The admin queue
/// takes its controller with it.
pub fn disconnect(target: &mut Target, q: &QueueBinding) {
    target.remove_qpair(q.qpair_id);
    let Some(c) = target.ctrl_mut(q.cntlid) else {
        return;
    };
    if q.qid != 0 {
        c.io_queues.retain(|&e| e != (q.qid, q.qpair_id));
    } else if c.admin_qpair == q.qpair_id {
        target.remove_ctrl(q.cntlid);
    }
}

/// The namespace an I/O command on queue `q` addresses.
pub fn io_namespace(
    target: &Target,
    bdevs: &Registry,
    q: &QueueBinding,
    nsid: u32,
) -> Result<NsTarget, Status> {
    let Some(c) = target.ctrl(q.cntlid) else {
        return Err(Status::ABORTED_SQ_DELETION);
    };
    if c.failed || !c.io_queues.contains(&(q.qid, q.qpair_id)) {
        return Err(Status::ABORTED_SQ_DELETION);
    }
    let v = c.ns(nsid).ok_or(Status::INVALID_NAMESPACE)?;
    let info = bdevs.info(v.bdev).ok_or(Status::INVALID_NAMESPACE)?;
    Ok(NsTarget {
        bdev: v.bdev,
        block_size: info.block_size,
        num_blocks: info.num_blocks,
        read_only: info.read_only,
        write_cache: info.write_cache,
        max_transfer: info.max_transfer,
        unmap: info.io_types.contains(IoType::Unmap),
        write_zeroes: info.io_types.contains(IoType::WriteZeroes),
    })
}

/// Caps the transfer size the controller reports (MDTS) to what the
/// transport can hold for one command.
pub fn limit_transfer(target: &mut Target, cntlid: u16, bytes: u32) {
    if let Some(c) = target.ctrl_mut(cntlid) {
        c.max_transfer = bytes;
    }
}

/// Volatile write cache enabled for this controller (Set Features 06h).
pub fn write_cache_enabled(target: &Target, cntlid: u16) -> bool {
    target.ctrl(cntlid).is_some_and(|c| c.vwc)
}

/// Brings live controllers in line with the configuration; true if any
/// controller failed or got an event.
pub(crate) fn refresh(target: &mut Target, bdevs: &Registry) -> bool {
    let mut any = false;
    let config = &target.config;
    for c in target.ctrls.iter_mut().filter(|c| !c.failed) {
        if c.discovery {
            let d = log::discovery_digest(config, &c.hostnqn, c.local);
            if d != c.disc_digest {
                c.disc_digest = d;
                if c.aec & AEC_DISCOVERY != 0 && !c.disc_masked && !c.disc_event {
                    c.disc_event = true;
                    any = true;
                }
            }
            continue;
        }
        let reachable = config
            .subsystem(&c.subnqn)
            .is_some_and(|s| s.host_allowed(&c.hostnqn) && s.listens_on(c.local.port()));
        if !reachable {
            c.failed = true;
            any = true;
            continue;
        }
        let now = active_namespaces(config, bdevs, &c.subnqn);
        let mut changed = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < c.ns.len() || j < now.len() {
            match (c.ns.get(i), now.get(j)) {
                (Some(a), Some(b)) if a.nsid == b.nsid => {
                    if a != b {
                        changed.push(a.nsid);
                    }
                    i += 1;
                    j += 1;
                }
                (Some(a), Some(b)) if a.nsid < b.nsid => {
                    changed.push(a.nsid);
                    i += 1;
                }
                (Some(a), None) => {
                    changed.push(a.nsid);
                    i += 1;
                }
                (_, Some(b)) => {
                    changed.push(b.nsid);
                    j += 1;
                }
                (None, None) => break,
            }
        }
        c.ns = now;
        any |= c.ns_changed(&changed);
    }
    any
}

// Byte layout helpers for the structures we build.

pub(crate) fn put(b: &mut [u8], off: usize, v: &[u8]) {
    if let Some(d) = b.get_mut(off..off + v.len()) {
        d.copy_from_slice(v);
    }
}

pub(crate) fn put16(b: &mut [u8], off: usize, v: u16) {
    put(b, off, &v.to_le_bytes());
}

pub(crate) fn put32(b: &mut [u8], off: usize, v: u32) {
    put(b, off, &v.to_le_bytes());
}

pub(crate) fn put64(b: &mut [u8], off: usize, v: u64) {
    put(b, off, &v.to_le_bytes());
}

/// ASCII text in a fixed field, space padded.
pub(crate) fn put_ascii(b: &mut [u8], off: usize, len: usize, s: &str) {
    let mut f = vec![b' '; len];
    for (d, c) in f.iter_mut().zip(s.bytes()) {
        *d = if (0x20..0x7f).contains(&c) { c } else { b' ' };
    }
    put(b, off, &f);
}

/// A string in a fixed field, NUL padded (NQNs).
pub(crate) fn put_nul(b: &mut [u8], off: usize, len: usize, s: &str) {
    let n = s.len().min(len.saturating_sub(1));
    put(b, off, s.as_bytes().get(..n).unwrap_or(&[]));
}

/// FNV-1a, for change detection.
pub(crate) fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

pub(crate) const FNV_SEED: u64 = 0xcbf2_9ce4_8422_2325;
