//! One NVMe/TCP connection (= one queue pair) as a state machine.
//!
//! Driving order, per poll-loop turn:
//! 1. feed received bytes to [`Connection::handle_input`]; it returns how
//!    many it took, and the rest must be offered again later (it stops at a
//!    PDU boundary while too much output or read data is queued, or while
//!    commands wait for memory, see [`Connection::wants_input`]); then,
//!    while [`Connection::waits_for_memory`], call
//!    [`Connection::handle_memory`];
//! 2. start every [`Connection::poll_io`] on the bdev layer, giving back any
//!    the layer refuses with [`Connection::retry_io`] (same order);
//! 3. feed each completion to [`Connection::handle_completion`];
//! 4. when the clock passes [`Connection::poll_timeout`], or the target's
//!    [`Target::events_seq`] changed, call [`Connection::handle_timeout`]
//!    (asynchronous events, keep-alive expiry, controllers that failed,
//!    hosts that stopped sending solicited data);
//! 5. send what [`Connection::poll_output`] offers and report it with
//!    [`Connection::consume_output`];
//! 6. close the socket once [`Connection::finished`], and call
//!    [`Connection::closed`] whenever the socket goes away.
//!
//! Memory: every data buffer a host can make the connection hold (read
//! data, solicited write data, in-capsule data of I/O commands) is charged
//! to the connection's account of the appliance's budget; what cannot have
//! its buffers waits (see [`crate::mem`]). What is not charged is small and
//! fixed per connection: one PDU header or command capsule is assembled at
//! a time (its length checked against the negotiated limits from its
//! 8-byte common header before any of it is buffered; H2CData goes
//! straight into the command's buffers), admin and Fabrics data are used
//! at once, and no new PDU is read while more than [`MAX_UNCHARGED_OUT`]
//! of headers, responses and admin data waits for the socket. Commands are
//! limited to the queue size.
//! - Reads: while queued output plus the read buffers of running commands
//!   exceed [`MAX_BUFFERED`], no new PDU is read.
//! - Writes: a command's buffers for solicited data are taken only once it
//!   is granted room in [`MAX_DATA_OUT`] and the budget (in arrival order;
//!   a command alone is always granted room), and only then is its R2T
//!   sent.

use crate::config::MIN_MAX_IO_SIZE;
use crate::ctrl::{self, Outcome, QueueBinding};
use crate::io::Prep;
use crate::pdu::{self, CH_LEN, Common, DIGEST_LEN, fes, flag, ty};
use crate::spec::{self, Cqe, Sqe, Status};
use crate::target::Target;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::net::SocketAddr;
use ironbay_bdev::{BdevId, IoBuf, IoCompletion, IoOp, IoStatus, Registry};

/// Output plus read data in flight before reading pauses.
pub const MAX_BUFFERED: usize = 32 << 20;
/// Buffers for the solicited write data of one connection: QD32 of
/// 512 KiB writes at once, more than a 10 Gb/s link needs.
pub const MAX_DATA_OUT: usize = 16 << 20;
/// Commands per connection, whatever the queue size says.
pub const MAX_CMDS: usize = 1024;
/// Host data of admin and Fabrics commands (and in-capsule data before
/// Connect), as NVMe/TCP fixes for the admin queue.
pub const ADMIN_DATA: usize = 8192;
/// Largest C2HData PDU we send.
pub const C2H_CHUNK: usize = 128 << 10;
/// Queued output not charged to the budget (PDU headers, responses, admin
/// data) beyond which no new PDU is read.
pub const MAX_UNCHARGED_OUT: usize = 1 << 20;
/// ICReq and Connect must arrive within this time.
const SETUP_TIMEOUT_MS: u64 = 30_000;
/// How often the connection looks at its controller without being asked.
const TICK_MS: u64 = 1000;
/// TTAG: the command's slot in the low bits, its R2T number above.
const TTAG_SLOT_BITS: u32 = 10;
pub(crate) const TTAG_SLOT_MASK: u16 = (1 << TTAG_SLOT_BITS) - 1;
/// R2Ts outstanding per command, whatever the host allows.
const MAX_R2T_PER_CMD: usize = 8;
const _: () = assert!(MAX_CMDS <= 1 << TTAG_SLOT_BITS);
/// Block I/Os waiting for the device beyond which no new command is read.
const MAX_QUEUED_IOS: usize = 8192;
/// Shortest wait for solicited data before the queue is failed, seconds.
const MIN_DATA_WAIT_SEC: u32 = 10;
/// Generic status 22h: the host retries the command.
pub(crate) const TRANSIENT_TRANSPORT_ERROR: Status = Status::generic(0x22);

pub use ironbay_bdev::BlockIo;
use ironbay_bdev::engine::tag::unpack as split_tag;
use ironbay_bdev::engine::{CommandTable, WaitQueue};
use ironbay_bdev::engine::{Out, OutQueue};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for the ICReq.
    Init,
    /// Waiting for (the data of) the Fabrics Connect.
    Connect,
    Ready,
    /// No more input: finish what is in flight, flush, then close.
    Closing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Host data still to come (in R2T windows).
    Receiving,
    /// Waiting for room in [`MAX_DATA_OUT`] and the budget before its R2T
    /// goes out.
    WaitGrant,
    /// Waiting for the budget to give its read or in-capsule data buffers.
    WaitMemory,
    /// Executing (block I/O at the device).
    Running,
}

/// One command in a slot.
pub(crate) struct Cmd {
    pub sqe: Sqe,
    pub stage: Stage,
    /// Host-to-controller data: buffers of `chunk` bytes (the last may be
    /// shorter), `want` bytes in all, `got` arrived.
    pub data: Vec<IoBuf>,
    pub chunk: usize,
    pub want: usize,
    pub got: usize,
    /// `want` is counted in the connection's granted write buffers.
    pub granted: bool,
    /// Outstanding R2Ts, oldest first: (TTAG, offset, length, received).
    pub windows: Vec<(u16, u32, u32, u32)>,
    /// Where the next R2T starts.
    pub next_r2t: usize,
    /// Numbers the command's R2Ts (the TTAG's upper bits).
    pub r2t_seq: u16,
    /// When data last arrived for it (or its R2T went out).
    pub data_since: u64,
    /// Data arrived with a bad digest: complete with this once it is in.
    pub failed: Option<Status>,
    /// I/O queue command, checked before its data was asked for.
    pub prep: Option<Prep>,
    /// Block I/O at the device.
    pub outstanding: u32,
    /// Read buffers counted in the connection's executing bytes.
    pub exec: usize,
    /// First error of the block I/O, with the LBA it hit.
    pub status: Status,
    pub err_lba: u64,
    /// Read results, by sub-request.
    pub bufs: Vec<Option<IoBuf>>,
    /// In-capsule data of an admin or Fabrics command (used at once).
    pub inline: Vec<u8>,
}

impl Cmd {
    fn new(sqe: Sqe, now: u64) -> Cmd {
        Cmd {
            sqe,
            stage: Stage::Running,
            data: Vec::new(),
            chunk: 0,
            want: 0,
            got: 0,
            granted: false,
            windows: Vec::new(),
            next_r2t: 0,
            r2t_seq: 0,
            data_since: now,
            failed: None,
            prep: None,
            outstanding: 0,
            exec: 0,
            status: Status::SUCCESS,
            err_lba: 0,
            bufs: Vec::new(),
            inline: Vec::new(),
        }
    }

    /// Copies host data at `off` into the command's buffers.
    pub(crate) fn put(&mut self, off: usize, mut bytes: &[u8]) {
        let chunk = self.chunk.max(1);
        let mut at = off;
        while !bytes.is_empty() {
            let Some(buf) = self.data.get_mut(at / chunk) else {
                return;
            };
            let o = at % chunk;
            let dst = buf.as_mut_slice().get_mut(o..).unwrap_or(&mut []);
            let n = dst.len().min(bytes.len());
            if n == 0 {
                return;
            }
            dst[..n].copy_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            at += n;
        }
    }

    /// The host data as one slice (single-buffer commands).
    pub fn host_data(&self) -> &[u8] {
        self.data.first().map_or(&self.inline[..], |b| b.as_slice())
    }

    /// The host data of a command that runs at once, taken out of it.
    fn take_host_data(&mut self) -> HostData {
        HostData {
            bufs: core::mem::take(&mut self.data),
            inline: core::mem::take(&mut self.inline),
        }
    }
}

/// Host data taken out of a command: its buffers or in-capsule bytes.
struct HostData {
    bufs: Vec<IoBuf>,
    inline: Vec<u8>,
}

impl core::ops::Deref for HostData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bufs.first().map_or(&self.inline[..], |b| b.as_slice())
    }
}

/// Data direction of a command (opcode bits 1:0, Fabrics: FCTYPE bits 1:0).
fn host_to_ctrl(sqe: &Sqe) -> bool {
    let d = if sqe.opcode() == spec::OPC_FABRICS {
        sqe.fctype()
    } else {
        sqe.opcode()
    };
    d & 1 != 0
}

pub struct Connection {
    /// Where this connection's data buffers are charged.
    pub(crate) account: ironbay_bdev::Account,
    /// Why the connection ended early, for the log.
    pub error: Option<&'static str>,
    pub(crate) local: SocketAddr,
    pub(crate) peer: SocketAddr,
    pub(crate) phase: Phase,
    rx: Vec<u8>,
    /// Length of the PDU being assembled, 0 while reading a common header
    /// (of H2CData, only its header: the data is streamed).
    need: usize,
    /// The H2CData PDU whose data is coming in.
    pub(crate) h2c: Option<crate::h2c::Incoming>,
    pub(crate) out: OutQueue,
    /// Bytes of `out` not charged to the budget.
    uncharged_out: usize,
    /// Negotiated in the ICReq.
    pub(crate) hd: bool,
    pub(crate) dd: bool,
    /// C2HData PDO alignment in bytes ((HPDA + 1) * 4).
    pub(crate) align: usize,
    pub(crate) maxh2cdata: u32,
    /// R2Ts per command outstanding at once (MAXR2T + 1, capped).
    pub(crate) max_r2t: usize,
    pub(crate) abort_timeout_ms: u64,
    /// The queue, once Connect succeeded.
    pub(crate) queue: Option<QueueBinding>,
    /// `ctrl::disconnect` was called for `queue`.
    released: bool,
    /// Submission queue head after the last command fetched.
    sq_head: u16,
    /// Commands by slot; one gone with block I/O still at the device is
    /// retired until the completions are back.
    pub(crate) slots: CommandTable<Box<Cmd>>,
    pub(crate) ios: VecDeque<BlockIo>,
    /// Read buffers of the commands running at the device.
    pub(crate) executing_bytes: usize,
    /// Solicited write data of the commands granted buffers.
    pub(crate) dout_granted: usize,
    /// Commands waiting for buffers (stage [`Stage::WaitGrant`] or
    /// [`Stage::WaitMemory`]), as (slot, generation), oldest first.
    pub(crate) waiting: WaitQueue,
    /// A command whose in-capsule data waits for buffers.
    pub(crate) parked: Option<crate::mem::Parked>,
    /// Asynchronous Event Requests parked, by CID.
    aers: VecDeque<u16>,
    pub(crate) now: u64,
    started: u64,
    next_tick: u64,
    /// The controller's keep-alive deadline, as last seen (admin queue).
    kato_deadline: Option<u64>,
}

impl Connection {
    pub fn new(local: SocketAddr, peer: SocketAddr, now_ms: u64) -> Self {
        Connection {
            account: ironbay_bdev::Account::default(),
            error: None,
            local,
            peer,
            phase: Phase::Init,
            rx: Vec::new(),
            need: 0,
            h2c: None,
            out: OutQueue::default(),
            uncharged_out: 0,
            hd: false,
            dd: false,
            align: 4,
            maxh2cdata: 4096,
            max_r2t: 1,
            abort_timeout_ms: MIN_DATA_WAIT_SEC as u64 * 1000,
            queue: None,
            released: false,
            sq_head: 0,
            slots: CommandTable::with_limit(MAX_CMDS),
            ios: VecDeque::new(),
            executing_bytes: 0,
            dout_granted: 0,
            waiting: WaitQueue::default(),
            parked: None,
            aers: VecDeque::new(),
            now: now_ms,
            started: now_ms,
            next_tick: now_ms + TICK_MS,
            kato_deadline: None,
        }
    }

    /// Ends the connection: no more input, flush what is queued.
    pub(crate) fn fail(&mut self, why: &'static str) {
        self.error.get_or_insert(why);
        self.close();
    }

    /// Stops reading; in-flight work drains and output flushes first.
    pub(crate) fn close(&mut self) {
        self.phase = Phase::Closing;
        self.rx = Vec::new();
        self.need = 0;
        self.h2c = None;
    }

    /// Sends a C2HTermReq and closes.
    pub(crate) fn terminate(&mut self, fes: u16, fei: u32, bad: &[u8], why: &'static str) {
        if self.phase == Phase::Closing {
            return;
        }
        let hlen = bad.get(2).map_or(CH_LEN, |&h| h as usize).max(CH_LEN);
        let head = bad.get(..hlen.min(bad.len())).unwrap_or(&[]);
        self.send(pdu::c2h_term_req(fes, fei, head));
        self.abort_all();
        self.fail(why);
    }

    pub(crate) fn send(&mut self, v: Vec<u8>) {
        if v.is_empty() {
            return;
        }
        self.uncharged_out += v.len();
        self.out.push_bytes(v);
    }

    fn busy(&self) -> bool {
        // Unmap and write-zeroes ranges fan out into many block I/Os: stop
        // taking commands while the device leaves too many of them queued.
        self.out.bytes() + self.executing_bytes > MAX_BUFFERED
            || self.uncharged_out > MAX_UNCHARGED_OUT
            || self.ios.len() > MAX_QUEUED_IOS
    }

    /// Whether a new PDU may be read.
    fn takes_pdus(&self) -> bool {
        !self.busy() && !self.blocked_on_memory()
    }

    /// Queue entries (1 before Connect).
    fn sqsize(&self) -> u16 {
        self.queue.map_or(1, |q| q.sqsize.max(1))
    }

    pub(crate) fn qid(&self) -> u16 {
        self.queue.map_or(0, |q| q.qid)
    }

    pub(crate) fn cntlid(&self) -> u16 {
        self.queue.map_or(0, |q| q.cntlid)
    }

    /// Commands the host has outstanding on this queue.
    fn in_flight(&self) -> usize {
        self.aers.len() + self.slots.len()
    }

    /// What the commands hold now: (granted write buffers, queued output
    /// plus read buffers at the device).
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> (usize, usize) {
        (self.dout_granted, self.out.bytes() + self.executing_bytes)
    }

    /// Whether [`Connection::handle_input`] takes bytes now: always within
    /// a PDU, at a PDU boundary unless output or memory holds it back.
    pub fn wants_input(&self) -> bool {
        self.phase != Phase::Closing
            && (self.h2c.is_some() || !self.rx.is_empty() || self.takes_pdus())
    }

    /// Takes bytes from the host; returns how many were used. Fewer than
    /// offered means "later": offer the rest again.
    pub fn handle_input(
        &mut self,
        bytes: &[u8],
        target: &mut Target,
        bdevs: &Registry,
        now_ms: u64,
    ) -> usize {
        self.now = now_ms;
        // Keep-alive expiry waits for the end: this input may hold the
        // Keep Alive that renews the timer.
        self.sync_with(target, false);
        let mut used = 0;
        loop {
            if self.phase == Phase::Closing {
                break;
            }
            if self.h2c.is_some() {
                used += self.h2c_stream(&bytes[used..], target, bdevs);
                if self.h2c.is_some() {
                    break;
                }
                continue;
            }
            if self.rx.is_empty() && !self.takes_pdus() {
                break;
            }
            let want = if self.need == 0 { CH_LEN } else { self.need };
            if self.rx.len() < want {
                if used == bytes.len() {
                    break;
                }
                let n = (want - self.rx.len()).min(bytes.len() - used);
                self.rx.extend_from_slice(&bytes[used..used + n]);
                used += n;
                continue;
            }
            if self.need == 0 {
                let Some(c) = Common::parse(&self.rx) else {
                    break;
                };
                if let Err((f, i)) = self.check_header(&c, target) {
                    let bad = core::mem::take(&mut self.rx);
                    self.terminate(f, i, &bad, "invalid PDU header");
                    break;
                }
                // check_header bounds plen to the negotiated limits; the
                // data of H2CData (after PDO) goes to the command's buffers.
                self.need = if c.ty == ty::H2C_DATA {
                    c.pdo as usize
                } else {
                    c.plen as usize
                };
                self.rx
                    .reserve_exact(self.need.saturating_sub(self.rx.len()));
                continue;
            }
            let raw = core::mem::take(&mut self.rx);
            self.need = 0;
            if raw.first() == Some(&ty::H2C_DATA) {
                self.h2c_head(&raw);
            } else {
                self.pdu(&raw, target, bdevs);
            }
            if raw.capacity() <= 2 * ADMIN_DATA {
                self.rx = raw;
                self.rx.clear();
            }
        }
        self.retry_waiting(target, bdevs);
        self.sync(target);
        used
    }

    /// Checks a common header against the connection's state and limits.
    /// Err: (FES, FEI).
    fn check_header(&self, c: &Common, target: &Target) -> Result<(), (u16, u32)> {
        let plen = c.plen as usize;
        match (self.phase, c.ty) {
            (Phase::Init, ty::IC_REQ) => {
                if c.hlen as usize != pdu::IC_LEN {
                    return Err((fes::INVALID_HEADER_FIELD, pdu::at::HLEN));
                }
                if plen != pdu::IC_LEN {
                    return Err((fes::INVALID_HEADER_FIELD, pdu::at::PLEN));
                }
                Ok(())
            }
            (_, ty::IC_REQ) => Err((fes::SEQUENCE_ERROR, 0)),
            (_, ty::H2C_TERM_REQ) => {
                if c.hlen as usize != pdu::TERM_HLEN {
                    return Err((fes::INVALID_HEADER_FIELD, pdu::at::HLEN));
                }
                if !(pdu::TERM_HLEN..=pdu::TERM_HLEN + pdu::TERM_MAX_DATA).contains(&plen) {
                    return Err((fes::INVALID_HEADER_FIELD, pdu::at::PLEN));
                }
                Ok(())
            }
            (Phase::Init, ty::CAPSULE_CMD | ty::H2C_DATA) => Err((fes::SEQUENCE_ERROR, 0)),
            (_, ty::CAPSULE_CMD) => {
                let max = match self.queue {
                    Some(q) if q.qid != 0 => target
                        .config
                        .transport
                        .as_ref()
                        .map_or(0, |o| o.in_capsule_data_size as usize),
                    _ => ADMIN_DATA,
                };
                self.check_layout(c, pdu::CMD_HLEN, max)
            }
            (_, ty::H2C_DATA) => {
                self.check_layout(c, pdu::DATA_HLEN, self.maxh2cdata as usize)?;
                if plen <= pdu::DATA_HLEN + self.hd_len() {
                    return Err((fes::INVALID_HEADER_FIELD, pdu::at::PLEN));
                }
                Ok(())
            }
            _ => Err((fes::INVALID_HEADER_FIELD, pdu::at::TYPE)),
        }
    }

    pub(crate) fn hd_len(&self) -> usize {
        if self.hd { DIGEST_LEN } else { 0 }
    }

    pub(crate) fn dd_len(&self) -> usize {
        if self.dd { DIGEST_LEN } else { 0 }
    }

    /// Header length, digest flags, PDO and PLEN of a PDU that may carry
    /// up to `max` bytes of data.
    fn check_layout(&self, c: &Common, hlen: usize, max: usize) -> Result<(), (u16, u32)> {
        if c.hlen as usize != hlen {
            return Err((fes::INVALID_HEADER_FIELD, pdu::at::HLEN));
        }
        if (c.flags & flag::HDGSTF != 0) != self.hd {
            return Err((fes::INVALID_HEADER_FIELD, pdu::at::FLAGS));
        }
        let head = hlen + self.hd_len();
        let plen = c.plen as usize;
        if plen < head {
            return Err((fes::INVALID_HEADER_FIELD, pdu::at::PLEN));
        }
        if plen == head {
            return Ok(());
        }
        let pdo = c.pdo as usize;
        if pdo < head {
            return Err((fes::INVALID_HEADER_FIELD, pdu::at::PDO));
        }
        if (c.flags & flag::DDGSTF != 0) != self.dd {
            return Err((fes::INVALID_HEADER_FIELD, pdu::at::FLAGS));
        }
        let Some(data) = plen.checked_sub(pdo + self.dd_len()).filter(|&d| d > 0) else {
            return Err((fes::INVALID_HEADER_FIELD, pdu::at::PLEN));
        };
        if data > max {
            return Err((fes::LIMIT_EXCEEDED, pdu::at::PLEN));
        }
        Ok(())
    }

    /// A whole PDU (not H2CData) whose common header passed
    /// [`Self::check_header`].
    fn pdu(&mut self, raw: &[u8], target: &mut Target, bdevs: &Registry) {
        let Some(c) = Common::parse(raw) else {
            return;
        };
        match c.ty {
            ty::IC_REQ => return self.ic_req(raw, target),
            ty::H2C_TERM_REQ => {
                self.abort_all();
                return self.fail("host terminated the connection");
            }
            _ => {}
        }
        let hlen = c.hlen as usize;
        if self.hd {
            let want = pdu::le32(raw, hlen);
            let got = raw.get(..hlen).map_or(0, ironbay_crc::crc32c);
            if want != got {
                return self.terminate(fes::HEADER_DIGEST, 0, raw, "header digest error");
            }
        }
        let head = hlen + self.hd_len();
        let plen = raw.len();
        let (data, digest_ok) = if plen > head {
            let end = plen.saturating_sub(self.dd_len());
            let d = raw.get(c.pdo as usize..end).unwrap_or(&[]);
            let ok = !self.dd || pdu::le32(raw, end) == ironbay_crc::crc32c(d);
            (d, ok)
        } else {
            (&[][..], true)
        };
        if c.ty == ty::CAPSULE_CMD {
            self.capsule(raw, data, digest_ok, target, bdevs);
        }
    }

    fn ic_req(&mut self, raw: &[u8], target: &Target) {
        let req = pdu::IcReq::parse(raw);
        let Some(o) = target.config.transport.as_ref() else {
            return self.terminate(
                fes::UNSUPPORTED_PARAMETER,
                0,
                raw,
                "no NVMe/TCP transport configured",
            );
        };
        if req.pfv != 0 {
            return self.terminate(
                fes::UNSUPPORTED_PARAMETER,
                pdu::at::PFV,
                raw,
                "unsupported PDU format version",
            );
        }
        if req.hpda > 31 {
            return self.terminate(
                fes::UNSUPPORTED_PARAMETER,
                pdu::at::HPDA,
                raw,
                "invalid host PDU data alignment",
            );
        }
        self.hd = req.hdgst && o.header_digest;
        self.dd = req.ddgst && o.data_digest;
        self.align = (req.hpda as usize + 1) * 4;
        // Hosts refuse a MAXH2CDATA below 4 KiB or not a multiple of 4.
        self.maxh2cdata = o.io_unit_size.max(4096) & !3;
        self.max_r2t = (req.maxr2t as usize).saturating_add(1).min(MAX_R2T_PER_CMD);
        // A floor well above a busy host's scheduling delay: the wait starts
        // when the R2T is queued, not when the host reads it.
        self.abort_timeout_ms =
            (o.abort_timeout_sec.max(MIN_DATA_WAIT_SEC) as u64).saturating_mul(1000);
        let dgst = self.hd as u8 | (self.dd as u8) << 1;
        self.send(pdu::ic_resp(0, dgst, self.maxh2cdata));
        self.phase = Phase::Connect;
    }

    /// Takes a free command slot.
    fn alloc_slot(&mut self, cmd: Box<Cmd>) -> Option<u16> {
        self.slots.insert(cmd)
    }

    pub(crate) fn cmd_mut(&mut self, i: usize) -> Option<&mut Cmd> {
        self.slots.get_mut(i as u16).map(|c| &mut **c)
    }

    /// The SQ head to report after fetching one more command.
    fn fetch_sq_head(&mut self) -> u16 {
        let n = self.sqsize();
        self.sq_head = (self.sq_head.wrapping_add(1)) % n;
        self.current_sq_head()
    }

    /// SQHD for a completion posted now: the head as it is now, not when
    /// the command was fetched, so it never moves back for the host.
    fn current_sq_head(&self) -> u16 {
        match self.queue {
            Some(q) if q.sq_flow_disabled => 0xffff,
            _ => self.sq_head,
        }
    }

    /// A command capsule.
    fn capsule(
        &mut self,
        raw: &[u8],
        data: &[u8],
        digest_ok: bool,
        target: &mut Target,
        bdevs: &Registry,
    ) {
        let mut s = [0u8; 64];
        if let Some(b) = raw.get(CH_LEN..CH_LEN + 64) {
            s.copy_from_slice(b);
        }
        let sqe = Sqe(s);
        if self.phase == Phase::Connect && self.in_flight() > 0 {
            return self.terminate(
                fes::SEQUENCE_ERROR,
                0,
                raw,
                "command before Connect completed",
            );
        }
        if self.phase == Phase::Ready && self.in_flight() >= self.sqsize() as usize {
            return self.terminate(fes::SEQUENCE_ERROR, 0, raw, "submission queue overflow");
        }
        let sqhd = self.fetch_sq_head();
        let cid = sqe.cid();
        if self.phase == Phase::Connect
            && !(sqe.opcode() == spec::OPC_FABRICS && sqe.fctype() == spec::FCTYPE_CONNECT)
        {
            self.respond(cid, sqhd, Status::COMMAND_SEQUENCE_ERROR, 0, 0);
            return self.fail("first command is not Connect");
        }
        if self.cid_busy(cid) {
            return self.respond(cid, sqhd, Status::CID_CONFLICT, 0, 0);
        }
        let mut cmd = Box::new(Cmd::new(sqe, self.now));
        if !digest_ok {
            cmd.failed = Some(TRANSIENT_TRANSPORT_ERROR);
        }
        let Some(i) = self.alloc_slot(cmd) else {
            return self.terminate(fes::SEQUENCE_ERROR, 0, raw, "too many commands");
        };
        let i = i as usize;
        if let Err(st) = self.begin(i, data, target, bdevs) {
            self.fail_cmd(i, st, target);
        }
    }

    /// Completes command `i` with an error, logged for I/O queues.
    pub(crate) fn fail_cmd(&mut self, i: usize, st: Status, target: &mut Target) {
        let Some(c) = self.cmd_mut(i) else {
            return;
        };
        let sqe = c.sqe;
        if self.phase == Phase::Ready && self.qid() != 0 {
            let slba = sqe.cdw(10) as u64 | (sqe.cdw(11) as u64) << 32;
            target.log_error(self.cntlid(), self.qid(), sqe.cid(), st, sqe.nsid(), slba);
        }
        self.complete(i, st, 0, 0);
    }

    fn cid_busy(&self, cid: u16) -> bool {
        self.aers.iter().any(|&a| a == cid) || self.slots.iter().any(|(_, c)| c.sqe.cid() == cid)
    }

    /// Checks a new command's data transfer and collects its host data
    /// (from the capsule, or by R2T). Err: complete it with that status.
    fn begin(
        &mut self,
        i: usize,
        data: &[u8],
        target: &mut Target,
        bdevs: &Registry,
    ) -> Result<(), Status> {
        let Some(cmd) = self.cmd_mut(i) else {
            return Ok(());
        };
        let sqe = cmd.sqe;
        if sqe.fuse() != 0 {
            return Err(Status::INVALID_FIELD);
        }
        let sgl = sqe.sgl();
        let io_queue = self.phase == Phase::Ready && self.qid() != 0;
        let h2c = host_to_ctrl(&sqe) && sgl.length > 0;
        let mut chunk = sgl.length as usize;
        if io_queue && sqe.opcode() != spec::OPC_FABRICS {
            let q = self.queue.unwrap_or(QueueBinding {
                qpair_id: 0,
                cntlid: 0,
                qid: 0,
                sqsize: 1,
                sq_flow_disabled: false,
                discovery: false,
            });
            let cap = self.transfer_cap(target);
            let prep = crate::io::prepare(target, bdevs, &q, &sqe, cap)?;
            chunk = prep.buf_chunk;
            if let Some(c) = self.cmd_mut(i) {
                c.prep = Some(prep);
            }
        } else if h2c && sgl.length as usize > ADMIN_DATA {
            return Err(Status::DATA_SGL_LENGTH_INVALID);
        }
        if !h2c {
            if !sgl.transport() && !sgl.in_capsule() && sgl.length != 0 {
                return Err(Status::SGL_TYPE_INVALID);
            }
            return self.ready(i, target, bdevs);
        }
        let want = sgl.length as usize;
        let failed = self.cmd_mut(i).is_some_and(|c| c.failed.is_some());
        if sgl.in_capsule() {
            let off = usize::try_from(sgl.address).unwrap_or(usize::MAX);
            if off > data.len() {
                return Err(Status::SGL_OFFSET_INVALID);
            }
            let Some(src) = off.checked_add(want).and_then(|end| data.get(off..end)) else {
                return Err(Status::DATA_SGL_LENGTH_INVALID);
            };
            if failed {
                return Err(TRANSIENT_TRANSPORT_ERROR);
            }
            let Some(c) = self.cmd_mut(i) else {
                return Ok(());
            };
            c.want = want;
            c.chunk = chunk.max(1);
            c.got = want;
            if !io_queue {
                // Admin and Fabrics commands run at once: no buffer to hold.
                c.inline = src.to_vec();
                return self.ready(i, target, bdevs);
            }
            return self.capsule_data(i, src, target, bdevs);
        }
        if !sgl.transport() {
            return Err(Status::SGL_TYPE_INVALID);
        }
        if failed {
            return Err(TRANSIENT_TRANSPORT_ERROR);
        }
        let Some(c) = self.cmd_mut(i) else {
            return Ok(());
        };
        c.want = want;
        c.chunk = chunk.max(1);
        c.stage = Stage::WaitGrant;
        self.waiting.push(&self.slots, i as u16);
        self.retry_waiting(target, bdevs);
        Ok(())
    }

    /// Sends R2Ts for command `i` while it has fewer outstanding than the
    /// host allows, each for at most MAXH2CDATA bytes (hosts before
    /// MAXH2CDATA splitting send one H2CData per R2T).
    pub(crate) fn send_r2ts(&mut self, i: usize) {
        let (hd, unit, max) = (self.hd, self.maxh2cdata.max(1) as usize, self.max_r2t);
        let mut out = Vec::new();
        let Some(c) = self.cmd_mut(i) else {
            return;
        };
        while c.failed.is_none() && c.windows.len() < max && c.next_r2t < c.want {
            let off = c.next_r2t;
            let len = (c.want - off).min(unit);
            let ttag = (i as u16 & TTAG_SLOT_MASK) | c.r2t_seq << TTAG_SLOT_BITS;
            c.r2t_seq = c.r2t_seq.wrapping_add(1) & (u16::MAX >> TTAG_SLOT_BITS);
            c.windows.push((ttag, off as u32, len as u32, 0));
            c.next_r2t = off + len;
            out.push(pdu::r2t(c.sqe.cid(), ttag, off as u32, len as u32, hd));
        }
        for v in out {
            self.send(v);
        }
    }

    /// The command has its data: run it.
    pub(crate) fn ready(
        &mut self,
        i: usize,
        target: &mut Target,
        bdevs: &Registry,
    ) -> Result<(), Status> {
        let Some(cmd) = self.cmd_mut(i) else {
            return Ok(());
        };
        cmd.stage = Stage::Running;
        if let Some(st) = cmd.failed {
            return Err(st);
        }
        let sqe = cmd.sqe;
        if self.phase == Phase::Connect {
            return self.connect(i, target, bdevs);
        }
        let Some(q) = self.queue else {
            return Err(Status::COMMAND_SEQUENCE_ERROR);
        };
        if sqe.opcode() == spec::OPC_FABRICS {
            match sqe.fctype() {
                spec::FCTYPE_DISCONNECT => {
                    self.complete(i, Status::SUCCESS, 0, 0);
                    self.close();
                    return Ok(());
                }
                spec::FCTYPE_CONNECT => return Err(Status::COMMAND_SEQUENCE_ERROR),
                _ if q.qid != 0 => return Err(Status::INVALID_OPCODE),
                _ => {}
            }
        }
        if q.qid == 0 {
            return self.admin(i, &q, target, bdevs);
        }
        crate::io::start(self, i, target, bdevs)
    }

    fn connect(&mut self, i: usize, target: &mut Target, bdevs: &Registry) -> Result<(), Status> {
        let Some(cmd) = self.cmd_mut(i) else {
            return Ok(());
        };
        let sqe = cmd.sqe;
        let data = cmd.take_host_data();
        match ctrl::connect(target, bdevs, &sqe, &data, self.local, self.peer, self.now) {
            Ok((q, dw0)) => {
                self.queue = Some(q);
                self.phase = Phase::Ready;
                if q.qid == 0 {
                    // MDTS cannot say less than 8 KiB; what goes beyond the
                    // cap still fails alone.
                    let cap = self.budget_cap(target).max(MIN_MAX_IO_SIZE as usize);
                    let cap = u32::try_from(cap).unwrap_or(u32::MAX);
                    ctrl::limit_transfer(target, q.cntlid, cap);
                }
                // The Connect itself was the first entry fetched.
                self.sq_head = 1 % q.sqsize.max(1);
                self.complete(i, Status::SUCCESS, dw0, 0);
                self.kato_deadline = ctrl::keep_alive_deadline(target, q.cntlid);
            }
            Err((st, dw0)) => {
                self.complete(i, st, dw0, 0);
                self.fail("Connect refused");
            }
        }
        Ok(())
    }

    fn admin(
        &mut self,
        i: usize,
        q: &QueueBinding,
        target: &mut Target,
        bdevs: &Registry,
    ) -> Result<(), Status> {
        let Some(cmd) = self.cmd_mut(i) else {
            return Ok(());
        };
        let sqe = cmd.sqe;
        let data = cmd.take_host_data();
        match ctrl::admin(target, bdevs, q, &sqe, &data, self.local, self.now) {
            Outcome::Done {
                status,
                dw0,
                dw1,
                data,
            } => {
                let sgl = sqe.sgl();
                if status.is_success() && !host_to_ctrl(&sqe) && sgl.length > 0 && !data.is_empty()
                {
                    let n = data.len().min(sgl.length as usize);
                    let data = data.get(..n).unwrap_or(&[]);
                    // Admin data is small: a response capsule always follows.
                    self.send_c2h_bytes(sqe.cid(), data, false);
                }
                self.complete(i, status, dw0, dw1);
            }
            Outcome::Parked => {
                self.aers.push_back(sqe.cid());
                self.release_slot(i);
            }
        }
        self.kato_deadline = ctrl::keep_alive_deadline(target, q.cntlid);
        Ok(())
    }

    /// Whether a successful read ends with a SUCCESS C2HData and no
    /// response capsule.
    pub(crate) fn c2h_success_allowed(&self, target: &Target) -> bool {
        self.queue.is_some_and(|q| q.sq_flow_disabled)
            && target
                .config
                .transport
                .as_ref()
                .is_some_and(|o| o.c2h_success)
    }

    /// C2HData PDUs carrying `data` (copied), LAST_PDU on the last.
    fn send_c2h_bytes(&mut self, cid: u16, data: &[u8], success: bool) {
        let mut off = 0;
        let total = data.len();
        while off < total {
            let n = (total - off).min(C2H_CHUNK);
            let piece = &data[off..off + n];
            let last = off + n == total;
            let mut f = if last { flag::LAST_PDU } else { 0 };
            if last && success {
                f |= flag::SUCCESS;
            }
            let mut v =
                pdu::c2h_data_head(cid, off as u32, n as u32, f, self.hd, self.dd, self.align);
            v.extend_from_slice(piece);
            if self.dd {
                v.extend_from_slice(&pdu::digest_bytes(ironbay_crc::crc32c(piece)));
            }
            self.send(v);
            off += n;
        }
    }

    /// C2HData PDUs straight from read buffers (no copy), LAST_PDU (and
    /// SUCCESS if asked) on the last.
    pub(crate) fn send_c2h_bufs(&mut self, cid: u16, bufs: Vec<IoBuf>, success: bool) {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut off = 0usize;
        for buf in bufs {
            let buf = Rc::new(buf);
            let len = buf.len();
            let mut start = 0;
            while start < len {
                let n = (len - start).min(C2H_CHUNK);
                let last = off + n == total;
                let mut f = if last { flag::LAST_PDU } else { 0 };
                if last && success {
                    f |= flag::SUCCESS;
                }
                let head =
                    pdu::c2h_data_head(cid, off as u32, n as u32, f, self.hd, self.dd, self.align);
                self.send(head);
                self.out.push_data(buf.clone(), start, start + n);
                if self.dd {
                    let piece = buf.as_slice().get(start..start + n).unwrap_or(&[]);
                    self.send(pdu::digest_bytes(ironbay_crc::crc32c(piece)).to_vec());
                }
                start += n;
                off += n;
            }
        }
    }

    /// A CapsuleResp for a command not in a slot.
    fn respond(&mut self, cid: u16, sqhd: u16, status: Status, dw0: u32, dw1: u32) {
        let cqe = Cqe {
            dw0,
            dw1,
            sqhd,
            sqid: self.qid(),
            cid,
            status: status.field(),
        };
        let v = pdu::capsule_resp(&cqe.to_bytes(), self.hd);
        self.send(v);
    }

    /// Sends the command's response and frees its slot.
    pub(crate) fn complete(&mut self, i: usize, status: Status, dw0: u32, dw1: u32) {
        let Some(c) = self.cmd_mut(i) else {
            return;
        };
        let cid = c.sqe.cid();
        let sqhd = self.current_sq_head();
        self.respond(cid, sqhd, status, dw0, dw1);
        self.release_slot(i);
    }

    /// Frees an active slot that has no I/O at the device.
    pub(crate) fn release_slot(&mut self, i: usize) {
        let s = i as u16;
        let g = self.slots.generation(s);
        if self.slots.get(s).is_some()
            && let Some(c) = self.slots.remove(s)
        {
            self.release(i, g, &c);
        }
    }

    /// Gives back what a command leaving its slot held of the connection's
    /// memory bounds.
    /// `g` is the generation the command had.
    fn release(&mut self, i: usize, g: u8, c: &Cmd) {
        if c.granted {
            self.dout_granted = self.dout_granted.saturating_sub(c.want);
        }
        self.executing_bytes = self.executing_bytes.saturating_sub(c.exec);
        if matches!(c.stage, Stage::WaitGrant | Stage::WaitMemory) {
            self.waiting.forget(i as u16, g);
            if self
                .parked
                .as_ref()
                .is_some_and(|p| p.slot as usize == i && p.generation == g)
            {
                self.parked = None;
            }
        }
    }

    /// Queues block I/O for slot `i`.
    pub(crate) fn push_io(&mut self, i: usize, sub: u32, bdev: BdevId, op: IoOp, fua: bool) {
        let tag = self.slots.tag(i as u16, sub);
        let Some(c) = self.cmd_mut(i) else {
            return;
        };
        c.outstanding += 1;
        self.ios.push_back(BlockIo { tag, bdev, op, fua });
    }

    pub fn poll_io(&mut self) -> Option<BlockIo> {
        self.ios.pop_front()
    }

    /// Gives back an I/O the bdev layer could not take yet.
    pub fn retry_io(&mut self, io: BlockIo) {
        match self.slots.find(io.tag) {
            Some(f) if !f.retired => self.ios.push_front(io),
            Some(f) => self.zombie_completion(f.slot as usize),
            None => {}
        }
    }

    fn zombie_completion(&mut self, i: usize) {
        let s = i as u16;
        let g = self.slots.generation(s);
        let Some(c) = self.slots.retired_mut(s) else {
            return;
        };
        c.outstanding = c.outstanding.saturating_sub(1);
        if c.outstanding > 0 {
            return;
        }
        if let Some(c) = self.slots.remove(s) {
            self.release(i, g, &c);
        }
    }

    pub fn handle_completion(
        &mut self,
        tag: u64,
        c: IoCompletion,
        target: &mut Target,
        bdevs: &Registry,
        now_ms: u64,
    ) {
        self.now = now_ms;
        match self.slots.find(tag) {
            Some(f) if !f.retired => {
                crate::io::completion(self, f.slot as usize, f.sub, c, target, bdevs)
            }
            Some(f) => self.zombie_completion(f.slot as usize),
            None => {}
        }
        self.retry_waiting(target, bdevs);
        self.sync(target);
    }

    /// Drops every command without a response; I/O at the device is
    /// waited for quietly.
    pub(crate) fn abort_all(&mut self) {
        for i in 0..self.slots.slot_count() {
            self.abort_slot(i);
        }
        self.aers.clear();
        self.waiting.clear();
        self.parked = None;
        self.h2c = None;
    }

    fn abort_slot(&mut self, i: usize) {
        let s = i as u16;
        let generation = self.slots.generation(s);
        let Some(c) = self.slots.get_mut(s) else {
            return;
        };
        let before = self.ios.len();
        self.ios.retain(|io| {
            let (t, g, _) = split_tag(io.tag);
            !(t == i && g == generation)
        });
        let dropped = (before - self.ios.len()) as u32;
        c.outstanding = c.outstanding.saturating_sub(dropped);
        if c.outstanding == 0 {
            if let Some(c) = self.slots.remove(s) {
                self.release(i, generation, &c);
            }
        } else {
            // Its buffers stay counted until the device gives them back.
            self.slots.retire(s);
        }
    }

    /// Things the target changed: controller failure, keep-alive expiry,
    /// asynchronous events to deliver.
    pub(crate) fn sync(&mut self, target: &mut Target) {
        self.sync_with(target, true);
    }

    fn sync_with(&mut self, target: &mut Target, expire: bool) {
        let Some(q) = self.queue else {
            return;
        };
        if self.phase != Phase::Ready {
            return;
        }
        if q.qid == 0 && expire {
            if let Some(d) = ctrl::keep_alive_deadline(target, q.cntlid)
                && self.now >= d
            {
                ctrl::check_keep_alive(target, q.cntlid, self.now);
            }
            self.kato_deadline = ctrl::keep_alive_deadline(target, q.cntlid);
        }
        if !ctrl::queue_alive(target, &q) {
            self.abort_all();
            return self.fail("controller failed or was reset");
        }
        while let Some(&cid) = self.aers.front() {
            let Some(dw0) = ctrl::take_event(target, q.cntlid) else {
                break;
            };
            self.aers.pop_front();
            let sqhd = self.current_sq_head();
            self.respond(cid, sqhd, Status::SUCCESS, dw0, 0);
        }
    }

    pub fn handle_timeout(&mut self, target: &mut Target, bdevs: &Registry, now_ms: u64) {
        self.now = now_ms;
        if self.phase == Phase::Closing {
            return;
        }
        self.sync(target);
        if matches!(self.phase, Phase::Init | Phase::Connect)
            && now_ms >= self.started.saturating_add(SETUP_TIMEOUT_MS)
        {
            self.abort_all();
            return self.fail("no Connect in time");
        }
        if let Some(d) = self.data_deadline()
            && now_ms >= d
        {
            self.abort_all();
            return self.fail("solicited data not received in time");
        }
        self.retry_waiting(target, bdevs);
        if now_ms >= self.next_tick {
            self.next_tick = now_ms.saturating_add(TICK_MS);
        }
    }

    /// When the oldest outstanding R2T times out.
    fn data_deadline(&self) -> Option<u64> {
        // Only granted commands wait for data: skip the scan when none is.
        if self.dout_granted == 0 {
            return None;
        }
        self.slots
            .iter()
            .filter(|(_, c)| c.stage == Stage::Receiving && !c.windows.is_empty())
            .map(|(_, c)| c.data_since.saturating_add(self.abort_timeout_ms))
            .min()
    }

    /// The next time [`Connection::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.phase == Phase::Closing {
            return None;
        }
        let mut t = self.next_tick;
        if matches!(self.phase, Phase::Init | Phase::Connect) {
            t = t.min(self.started.saturating_add(SETUP_TIMEOUT_MS));
        }
        if let Some(d) = self.kato_deadline {
            t = t.min(d);
        }
        if let Some(d) = self.data_deadline() {
            t = t.min(d);
        }
        Some(t)
    }

    /// Bytes waiting to be sent (a prefix of them, at least one if any).
    pub fn poll_output(&self) -> Option<&[u8]> {
        self.out.front()
    }

    pub fn consume_output(&mut self, mut n: usize) {
        // Piece by piece, to count what leaves of the uncharged bytes.
        while n > 0 {
            let (Some(front), Some(piece)) = (self.out.front(), self.out.iter().next()) else {
                return;
            };
            let k = n.min(front.len());
            if k == 0 {
                return;
            }
            if matches!(piece, Out::Bytes(_)) {
                self.uncharged_out = self.uncharged_out.saturating_sub(k);
            }
            self.out.consume(k);
            n -= k;
        }
    }

    /// Nothing more to do: close the socket once this is true.
    pub fn finished(&self) -> bool {
        self.phase == Phase::Closing
            && self.out.is_empty()
            && self.ios.is_empty()
            && self.slots.retired() == 0
            && self.slots.iter().all(|(_, c)| c.outstanding == 0)
    }

    /// The socket is gone: the queue goes with it.
    pub fn closed(&mut self, target: &mut Target) {
        self.abort_all();
        if self.phase != Phase::Closing {
            self.error.get_or_insert("connection closed by peer");
        }
        self.close();
        if let Some(q) = self.queue
            && !self.released
        {
            self.released = true;
            ctrl::disconnect(target, &q);
        }
    }
}

/// The NVMe status for a block I/O that failed.
pub(crate) fn io_status(s: IoStatus, write: bool) -> Status {
    match s {
        IoStatus::Success => Status::SUCCESS,
        IoStatus::OutOfRange => Status::LBA_OUT_OF_RANGE,
        IoStatus::Misaligned | IoStatus::TooLarge => Status::INVALID_FIELD,
        IoStatus::Unsupported => Status::INVALID_OPCODE,
        IoStatus::ReadOnly => crate::io::WRITE_PROTECTED,
        IoStatus::NoSpace => Status::CAPACITY_EXCEEDED,
        IoStatus::DeviceError(_) if write => Status::WRITE_FAULT,
        IoStatus::DeviceError(_) => Status::UNRECOVERED_READ,
        IoStatus::Timeout | IoStatus::DeviceFailed | IoStatus::Claimed => {
            Status::DATA_TRANSFER_ERROR
        }
        IoStatus::NoMemory => Status::INTERNAL,
    }
}
