//! One iSCSI connection as a state machine (RFC 7143 target side).
//!
//! Driving order, per poll-loop turn:
//! 1. feed received bytes to [`Connection::handle_input`]; it returns how
//!    many it took, and the rest must be offered again later (it stops at a
//!    PDU boundary while too much output or read data is queued, see
//!    [`Connection::wants_input`]);
//! 2. start every [`Connection::poll_io`] on the bdev layer, giving back any
//!    the layer refuses with [`Connection::retry_io`] (same order);
//! 3. feed each completion to [`Connection::handle_completion`];
//! 4. when the clock passes [`Connection::poll_timeout`], call
//!    [`Connection::handle_timeout`] (NOP-In pings, their timeout, LUN map
//!    and capacity changes, session reinstatement by another connection,
//!    held commands once output has drained: then it asks for no wait);
//!    while [`Connection::waits_for_memory`], call
//!    [`Connection::handle_memory`] each turn;
//! 5. send what [`Connection::poll_output`] offers and report it with
//!    [`Connection::consume_output`];
//! 6. close the socket once [`Connection::finished`], and call
//!    [`Connection::closed`] whenever the socket goes away.
//!
//! Memory is bounded for the appliance and per connection. Every data
//! buffer an initiator can make a connection hold (data-out, data-in,
//! work buffers, parameter data, immediate and unsolicited data) comes
//! from the connection's [`Account`] of the appliance's I/O budget:
//! - A command is granted its buffers in arrival order, all of them at
//!   once (or, for data-out within the connection's floor of the budget,
//!   the promise of them, kept as the data comes), before its data is
//!   solicited with R2Ts or it runs. When the account says wait, the
//!   command waits in the grant queue and no new PDU is read
//!   ([`Connection::wants_input`]) until [`Connection::handle_memory`]
//!   finds room, except while granted writes still wait for their data,
//!   which only more input brings. When it says never, that command ends
//!   with CHECK CONDITION (INVALID FIELD IN CDB) or TASK SET FULL.
//! - Immediate and unsolicited data of a command not granted yet is held
//!   in a buffer sized for all that may come unsolicited, within half the
//!   connection's floor; without room the command gets TASK SET FULL.
//! - MAXIMUM TRANSFER LENGTH follows the account's share, so an honest
//!   initiator never sends a command that cannot fit.
//!
//! Per-connection bounds remain on top: one PDU of at most the declared
//! MaxRecvDataSegmentLength is assembled at a time, out-of-order commands
//! are held only inside the CmdSN window (as their PDUs), and commands
//! (immediate ones too) are limited to the session's queue depth. No new
//! PDU is read while queued output plus the read buffers of running
//! commands exceed [`MAX_BUFFERED`], or headers and other output not in
//! data buffers exceed [`MAX_CONTROL_OUTPUT`]; writes are granted while
//! their data-out fits [`MAX_DATA_OUT`] (a write alone always does).

use crate::pdu::{self, BHS_LEN, Bhs, FrameError, NO_TAG, Pdu};
use crate::session::{Cmd, Pending};
use crate::target::{ConnInfo, Target};
use crate::text::Params;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::SocketAddr;
use ironbay_bdev::{Account, IoBuf, IoCompletion, IoOp, IoStatus, Registry};

/// Output plus read data in flight before reading pauses.
pub const MAX_BUFFERED: usize = 32 << 20;
/// Output outside data buffers (headers, sense data, NOP-In echoes, Text
/// replies) before reading pauses: it is not charged to the account.
pub const MAX_CONTROL_OUTPUT: usize = 1 << 20;
/// Data-out buffers of the writes a connection has solicited. 16 MiB lets
/// QD32 of 512 KiB writes (or 16 of 1 MiB) be in flight at once, more
/// than a 10 Gb/s link needs, and keeps 16 busy connections within a
/// fraction of the appliance's memory.
pub const MAX_DATA_OUT: usize = 16 << 20;
/// Commands per connection, whatever the node's queue depth says.
pub const MAX_TASKS: usize = 256;
/// How soon a command waiting for the LU's COMPARE AND WRITE lock retries.
const BLOCKED_RETRY_MS: u64 = 5;
/// Shortest time a login may take before the connection is dropped.
const LOGIN_TIMEOUT_MS: u64 = 30_000;
/// Login data segments (RFC 7143 §6.1: 8192 until negotiated).
pub const LOGIN_MRDSL: usize = 8192;

pub use ironbay_bdev::BlockIo;
use ironbay_bdev::engine::tag::{pack as make_tag, unpack as split_tag};
use ironbay_bdev::engine::{CommandTable, Out, OutQueue, WaitQueue};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Login,
    FullFeature,
    /// No more input: finish what is in flight, flush, then close.
    Closing,
}

/// What the session is, once login has succeeded.
#[derive(Debug, Clone)]
pub(crate) struct SessionInfo {
    pub id: u64,
    pub tsih: u16,
    pub isid: [u8; 6],
    pub cid: u16,
    pub initiator: String,
    /// `None` for discovery sessions.
    pub target: Option<String>,
    pub pg_tag: u32,
}

pub struct Connection {
    /// Where this connection's data buffers are charged.
    pub(crate) account: Account,
    /// Why the connection ended early, for the log.
    pub error: Option<&'static str>,
    pub(crate) local: SocketAddr,
    pub(crate) peer: SocketAddr,
    /// Engine-wide number, 0 until registered with the target.
    pub(crate) id: u32,
    pub(crate) phase: Phase,
    rx: Vec<u8>,
    need: usize,
    out: OutQueue,
    /// Bytes of `out` not in data buffers.
    ctl_out: usize,
    /// Digests in force (from the first full feature phase PDU on).
    pub(crate) hd: bool,
    pub(crate) dd: bool,
    pub(crate) login: Option<Box<crate::login::Login>>,
    pub(crate) sess: Option<SessionInfo>,
    pub(crate) params: Params,
    pub(crate) stat_sn: u32,
    pub(crate) exp_cmd_sn: u32,
    /// Commands the node lets a session have in flight.
    pub(crate) depth: u32,
    /// Non-immediate commands that arrived ahead of a CmdSN gap.
    pub(crate) queued: Vec<Pdu>,
    /// Tasks by slot. One aborted with block I/O still at the device is
    /// retired: its slot and tags stay taken until the completions are
    /// back, and the task sees them (it may hold the LU's COMPARE AND
    /// WRITE lock until then).
    pub(crate) slots: CommandTable<Box<Cmd>>,
    pub(crate) ios: VecDeque<BlockIo>,
    /// Read buffers of the commands running at the device.
    pub(crate) executing_bytes: usize,
    /// Data-out bytes of the commands granted buffers.
    pub(crate) dout_granted: usize,
    /// Staging buffers of commands not granted yet.
    pub(crate) dout_staged: usize,
    /// Data-out granted but not allocated yet, as the budget counts it.
    pub(crate) dout_promised: usize,
    /// Commands waiting for their buffers (and writes for room in
    /// [`MAX_DATA_OUT`]), oldest first.
    pub(crate) grant_queue: WaitQueue,
    /// The head of the grant queue waits for the account.
    pub(crate) mem_blocked: bool,
    /// A held command is next in CmdSN order but waits for output to drain.
    deferred: bool,
    pub(crate) next_ttt: u32,
    pub(crate) pending: Vec<Pending>,
    pub(crate) text: crate::session::TextState,
    pub(crate) now: u64,
    last_rx: u64,
    started: u64,
    /// Outstanding NOP-In ping: its TTT and the deadline for the answer.
    ping: Option<(u32, u64)>,
    next_tick: u64,
    /// Config generation and (LUN, blocks) last seen, for change events.
    pub(crate) seen_generation: u64,
    pub(crate) seen_luns: Vec<(u64, Option<u64>)>,
    /// The SCSI Command being executed arrived with a bad data digest.
    pub(crate) digest_failed_cmd: bool,
}

impl Connection {
    pub fn new(local: SocketAddr, peer: SocketAddr, now_ms: u64) -> Self {
        Connection {
            account: Account::default(),
            error: None,
            local,
            peer,
            id: 0,
            phase: Phase::Login,
            rx: Vec::new(),
            need: 0,
            out: OutQueue::default(),
            ctl_out: 0,
            hd: false,
            dd: false,
            login: Some(Box::default()),
            sess: None,
            params: Params::default(),
            stat_sn: 0,
            exp_cmd_sn: 0,
            depth: 1,
            queued: Vec::new(),
            slots: CommandTable::with_limit(MAX_TASKS),
            ios: VecDeque::new(),
            executing_bytes: 0,
            dout_granted: 0,
            dout_staged: 0,
            dout_promised: 0,
            grant_queue: WaitQueue::default(),
            mem_blocked: false,
            deferred: false,
            next_ttt: 1,
            pending: Vec::new(),
            text: Default::default(),
            now: now_ms,
            last_rx: now_ms,
            started: now_ms,
            ping: None,
            next_tick: now_ms,
            seen_generation: 0,
            seen_luns: Vec::new(),
            digest_failed_cmd: false,
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
        self.queued.clear();
        self.rx.clear();
        self.need = 0;
    }

    pub(crate) fn send(&mut self, v: Vec<u8>) {
        self.ctl_out += v.len();
        self.out.push_bytes(v);
    }

    /// Queues a PDU with the digests in force.
    pub(crate) fn send_pdu(&mut self, bhs: &Bhs, data: &[u8]) {
        let v = pdu::encode(bhs, &[], data, self.hd, self.dd);
        self.send(v);
    }

    /// Queues a PDU whose data segment is pieces of read buffers.
    pub(crate) fn send_data_pdu(&mut self, bhs: &Bhs, pieces: &[(Rc<IoBuf>, usize, usize)]) {
        let len: usize = pieces.iter().map(|p| p.2 - p.1).sum();
        let mut b = *bhs;
        b.set_data_len(len);
        let mut head = b.0.to_vec();
        if self.hd {
            head.extend_from_slice(&pdu::digest_bytes(ironbay_crc::crc32c(&b.0)));
        }
        self.send(head);
        for (buf, start, end) in pieces {
            self.out.push_data(buf.clone(), *start, *end);
        }
        let mut tail = alloc::vec![0u8; pdu::pad_len(len)];
        if self.dd && len > 0 {
            let crc = pdu::data_digest(
                pieces
                    .iter()
                    .map(|(b, s, e)| b.as_slice().get(*s..*e).unwrap_or(&[])),
            );
            tail.extend_from_slice(&pdu::digest_bytes(crc));
        }
        if !tail.is_empty() {
            self.send(tail);
        }
    }

    /// Commands the initiator may still send: the window shrinks with
    /// commands running. Not with those held ahead of a CmdSN gap: they lie
    /// inside the window already advertised, and shrinking it under them
    /// would drop the commands after them that the initiator may send.
    fn credit(&self) -> u32 {
        self.depth.saturating_sub(self.active_tasks() as u32)
    }

    /// The MaxCmdSN to advertise.
    pub(crate) fn max_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn.wrapping_add(self.credit()).wrapping_sub(1)
    }

    /// Whether `sn` lies in ExpCmdSN..=MaxCmdSN. Not `sn - exp <= max - exp`:
    /// with no credit MaxCmdSN is ExpCmdSN - 1 and that difference wraps
    /// to the whole number space.
    pub(crate) fn in_window(&self, sn: u32) -> bool {
        sn.wrapping_sub(self.exp_cmd_sn) < self.credit()
    }

    pub(crate) fn active_tasks(&self) -> usize {
        self.slots.len()
    }

    /// StatSN for a status-bearing PDU; advances it.
    pub(crate) fn next_stat_sn(&mut self) -> u32 {
        let s = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        s
    }

    /// Sets StatSN (advancing it), ExpCmdSN and MaxCmdSN.
    pub(crate) fn stamp(&mut self, b: &mut Bhs) {
        let s = self.next_stat_sn();
        b.set_sns(s, self.exp_cmd_sn, self.max_cmd_sn());
    }

    /// Sets StatSN (without advancing it), ExpCmdSN and MaxCmdSN.
    pub(crate) fn stamp_peek(&self, b: &mut Bhs) {
        b.set_sns(self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn());
    }

    pub(crate) fn new_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == NO_TAG {
            self.next_ttt = 1;
        }
        t
    }

    /// Sends a Reject carrying the offending header.
    pub(crate) fn reject(&mut self, reason: u8, bad: &Bhs) {
        let mut b = Bhs::new(pdu::op::REJECT);
        b.set_flags(pdu::flag::FINAL)
            .set_byte(2, reason)
            .set_itt(NO_TAG);
        self.stamp(&mut b);
        self.send_pdu(&b, &bad.0);
    }

    fn busy(&self) -> bool {
        self.out.bytes() + self.executing_bytes > MAX_BUFFERED || self.ctl_out > MAX_CONTROL_OUTPUT
    }

    /// No new PDU until memory comes back: the head of the grant queue
    /// waits for it. Not while granted writes wait for data, though: only
    /// more input completes them and frees what they hold.
    fn stalled(&self) -> bool {
        self.mem_blocked
            && !self
                .slots
                .iter()
                .any(|(_, c)| c.granted && !c.running && c.want > 0)
    }

    /// A command waits for the account to have room.
    pub fn waits_for_memory(&self) -> bool {
        self.mem_blocked
    }

    /// Memory may have come back: grants what waited for it.
    pub fn handle_memory(&mut self, target: &mut Target, bdevs: &Registry, now_ms: u64) {
        self.now = now_ms;
        self.sync(target);
        self.grant_waiting(bdevs);
    }

    /// What the commands hold now: (data-out buffers and held data, read
    /// buffers plus queued output, whole buffers for queued Data-In).
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> (usize, usize) {
        let (mut dout, mut read) = (0, 0);
        let mut last = core::ptr::null();
        for o in self.out.iter() {
            match o {
                Out::Bytes(v) => read += v.len(),
                Out::Data { buf, .. } if Rc::as_ptr(buf) != last => {
                    last = Rc::as_ptr(buf);
                    read += buf.len();
                }
                Out::Data { .. } => {}
            }
        }
        for c in self.slots.iter_all() {
            let (d, r) = c.task.held_bytes();
            dout += d + c.staged.as_ref().map_or(0, IoBuf::len);
            read += r;
        }
        (dout, read)
    }

    fn recv_limit(&self) -> usize {
        match self.phase {
            Phase::Login => LOGIN_MRDSL,
            _ => (self.params.target_mrdsl as usize).max(LOGIN_MRDSL),
        }
    }

    fn register(&mut self, target: &mut Target) {
        if self.id != 0 {
            return;
        }
        self.id = target.register(ConnInfo {
            id: 0,
            cid: 0,
            tsih: 0,
            isid: [0; 6],
            initiator_name: String::new(),
            initiator_addr: alloc::format!("{}", self.peer.ip()),
            target_name: String::new(),
            target_addr: alloc::format!("{}", self.local.ip()),
            portal_group_tag: 0,
            state: "login",
        });
        target.seed_entropy(self.now ^ (self.peer.port() as u64) << 48 ^ self.id as u64);
    }

    /// Things other connections or the configuration changed.
    fn sync(&mut self, target: &mut Target) {
        self.register(target);
        if self.phase != Phase::Closing && target.should_end(self.id) {
            self.abort_all();
            self.fail("session reinstated or reset elsewhere");
            return;
        }
        if self.phase == Phase::FullFeature {
            self.check_resets(target);
        }
    }

    pub fn wants_input(&self) -> bool {
        self.phase != Phase::Closing && !self.busy() && !self.stalled()
    }

    /// Takes bytes from the initiator; returns how many were used. Fewer
    /// than offered means "later": offer the rest again.
    pub fn handle_input(
        &mut self,
        bytes: &[u8],
        target: &mut Target,
        bdevs: &Registry,
        now_ms: u64,
    ) -> usize {
        self.now = now_ms;
        self.sync(target);
        self.run_queued(target, bdevs);
        let mut used = 0;
        loop {
            if self.phase == Phase::Closing
                || (self.rx.is_empty() && (self.busy() || self.stalled()))
            {
                break;
            }
            let want = if self.need == 0 { BHS_LEN } else { self.need };
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
                let Some(bhs) = Bhs::from_slice(&self.rx) else {
                    break;
                };
                let f = pdu::frame(&bhs, self.hd, self.dd);
                if f.data > self.recv_limit() {
                    self.fail("data segment longer than MaxRecvDataSegmentLength");
                    break;
                }
                self.need = f.total;
                continue;
            }
            let mut raw = core::mem::take(&mut self.rx);
            self.need = 0;
            self.frame(&raw, target, bdevs);
            raw.clear();
            if raw.capacity() <= 2 * LOGIN_MRDSL {
                self.rx = raw;
            }
        }
        if used > 0 {
            self.last_rx = now_ms;
        }
        self.grant_waiting(bdevs);
        used
    }

    fn frame(&mut self, raw: &[u8], target: &mut Target, bdevs: &Registry) {
        match Pdu::parse(raw, self.hd, self.dd) {
            Ok(p) => self.dispatch(p, target, bdevs),
            Err((FrameError::DataDigest, Some(bhs))) => {
                self.data_digest_error(bhs, raw, target, bdevs)
            }
            Err(_) => self.fail("header digest error"),
        }
    }

    fn data_digest_error(&mut self, bhs: Bhs, raw: &[u8], target: &mut Target, bdevs: &Registry) {
        self.reject(pdu::reject::DATA_DIGEST, &bhs);
        match bhs.opcode() {
            pdu::op::DATA_OUT => self.data_out_digest_error(&bhs, bdevs),
            pdu::op::SCSI_CMD => {
                // Keep CmdSN order: the command runs without its data and
                // fails with a CRC error.
                if let Ok(mut p) = Pdu::parse(raw, self.hd, false) {
                    p.data.clear();
                    self.digest_failed_cmd = true;
                    self.command(p, target, bdevs);
                    self.digest_failed_cmd = false;
                }
            }
            _ if !bhs.immediate() && bhs.cmd_sn() == self.exp_cmd_sn => {
                self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, p: Pdu, target: &mut Target, bdevs: &Registry) {
        use pdu::op;
        if self.phase == Phase::Login {
            if p.bhs.opcode() == op::LOGIN_REQ {
                return self.login_pdu(p, target, bdevs);
            }
            return self.fail("non-login PDU during login");
        }
        if self.phase != Phase::FullFeature {
            return;
        }
        match p.bhs.opcode() {
            op::NOP_OUT if p.bhs.itt() == NO_TAG => self.nop_answer(&p),
            op::SCSI_CMD | op::NOP_OUT | op::TMF_REQ | op::TEXT_REQ | op::LOGOUT_REQ => {
                self.command(p, target, bdevs)
            }
            op::DATA_OUT => self.data_out(p, bdevs),
            op::SNACK | op::LOGIN_REQ => self.reject(pdu::reject::PROTOCOL_ERROR, &p.bhs),
            _ => self.reject(pdu::reject::NOT_SUPPORTED, &p.bhs),
        }
    }

    /// CmdSN ordering (RFC 7143 §3.2.2.1): immediate commands run now,
    /// in-order ones run and release any queued successors, in-window
    /// early ones wait, the rest are dropped silently.
    fn command(&mut self, p: Pdu, target: &mut Target, bdevs: &Registry) {
        if p.bhs.immediate() {
            return self.execute(p, target, bdevs);
        }
        let sn = p.bhs.cmd_sn();
        let ahead = sn.wrapping_sub(self.exp_cmd_sn);
        if ahead == 0 {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            self.execute(p, target, bdevs);
            self.run_queued(target, bdevs);
            return;
        }
        if self.in_window(sn)
            && self.queued.len() < MAX_TASKS
            && !self.queued.iter().any(|q| q.bhs.cmd_sn() == sn)
        {
            self.queued.push(p);
        }
    }

    /// Runs held commands that are next in CmdSN order. Not while busy:
    /// filling a CmdSN gap could otherwise start a whole window of reads
    /// at once; they run from [`Connection::handle_timeout`] once output
    /// drains.
    fn run_queued(&mut self, target: &mut Target, bdevs: &Registry) {
        self.deferred = false;
        while self.phase == Phase::FullFeature {
            let Some(i) = self
                .queued
                .iter()
                .position(|q| q.bhs.cmd_sn() == self.exp_cmd_sn)
            else {
                break;
            };
            if self.busy() {
                self.deferred = true;
                break;
            }
            let q = self.queued.swap_remove(i);
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            self.execute(q, target, bdevs);
        }
    }

    fn execute(&mut self, p: Pdu, target: &mut Target, bdevs: &Registry) {
        use pdu::op;
        let discovery = self.sess.as_ref().is_none_or(|s| s.target.is_none());
        match p.bhs.opcode() {
            op::NOP_OUT => self.nop_out(&p),
            op::TEXT_REQ => self.text_request(&p, target),
            op::LOGOUT_REQ => self.logout(&p),
            op::SCSI_CMD | op::TMF_REQ if discovery => {
                self.reject(pdu::reject::PROTOCOL_ERROR, &p.bhs)
            }
            op::SCSI_CMD => self.scsi_command(p, target, bdevs),
            op::TMF_REQ => self.tmf(&p, target),
            _ => {}
        }
    }

    /// Takes a free task slot.
    pub(crate) fn alloc_slot(&mut self, cmd: Box<Cmd>) -> Option<u16> {
        self.slots.insert(cmd)
    }

    pub(crate) fn cmd_mut(&mut self, i: usize) -> Option<&mut Cmd> {
        self.slots.get_mut(i as u16).map(|c| &mut **c)
    }

    /// Moves the task's block I/O to the queue and finishes it when done.
    pub(crate) fn pump(&mut self, i: usize, bdevs: &Registry) {
        let generation = self.slots.generation(i as u16);
        let Some(c) = self.slots.get_mut(i as u16) else {
            return;
        };
        if !c.running {
            return;
        }
        if let Some((lba, blocks)) = c.task.wants_allocation() {
            let runs = c.bdev.and_then(|b| bdevs.allocation(b, lba, blocks));
            c.task.handle_allocation(runs);
        }
        let mut local_fail = Vec::new();
        while let Some((sub, op, fua)) = c.task.poll_io() {
            let tag = make_tag(i as u16, generation, sub);
            match c.bdev {
                Some(bdev) => {
                    c.outstanding += 1;
                    self.ios.push_back(BlockIo { tag, bdev, op, fua });
                }
                None => local_fail.push((sub, op)),
            }
        }
        for (sub, op) in local_fail {
            c.task.handle_completion(
                sub,
                IoCompletion {
                    tag: 0,
                    status: IoStatus::DeviceFailed,
                    buf: op.into_buf(),
                },
            );
        }
        if c.outstanding == 0 && c.task.is_done() {
            self.finish(i);
        }
    }

    pub fn poll_io(&mut self) -> Option<BlockIo> {
        self.ios.pop_front()
    }

    /// Gives back an I/O the bdev layer could not take yet.
    pub fn retry_io(&mut self, io: BlockIo) {
        match self.slots.find(io.tag) {
            Some(f) if !f.retired => self.ios.push_front(io),
            Some(f) => {
                let done = IoCompletion {
                    tag: io.tag,
                    status: IoStatus::DeviceFailed,
                    buf: io.op.into_buf(),
                };
                self.zombie_completion(f.slot as usize, f.sub, done);
            }
            None => {}
        }
    }

    fn zombie_completion(&mut self, i: usize, sub: u32, done: IoCompletion) {
        let s = i as u16;
        let g = self.slots.generation(s);
        let Some(c) = self.slots.retired_mut(s) else {
            return;
        };
        c.outstanding = c.outstanding.saturating_sub(1);
        c.task.handle_completion(sub, done);
        if c.outstanding > 0 {
            return;
        }
        if let Some(c) = self.slots.remove(s) {
            self.release(i, g, &c);
            self.check_pending();
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
                if let Some(cmd) = self.slots.get_mut(f.slot) {
                    cmd.outstanding = cmd.outstanding.saturating_sub(1);
                    cmd.task.handle_completion(f.sub, c);
                }
                self.pump(f.slot as usize, bdevs);
            }
            Some(f) => self.zombie_completion(f.slot as usize, f.sub, c),
            None => {}
        }
        self.sync(target);
        self.pump_blocked(bdevs);
        self.run_queued(target, bdevs);
        self.grant_waiting(bdevs);
    }

    /// Gives back what a command leaving its slot held of the connection's
    /// memory bounds; `g` is the generation it had.
    pub(crate) fn release(&mut self, i: usize, g: u8, c: &Cmd) {
        if c.granted {
            self.dout_granted = self.dout_granted.saturating_sub(c.want);
        }
        self.dout_staged = self
            .dout_staged
            .saturating_sub(c.staged.as_ref().map_or(0, IoBuf::len));
        self.dout_promised = self.dout_promised.saturating_sub(c.promised);
        self.executing_bytes = self.executing_bytes.saturating_sub(c.exec);
        self.grant_queue.forget(i as u16, g);
    }

    /// Aborts a task without a response; its I/O at the device is waited
    /// for quietly.
    pub(crate) fn abort_slot(&mut self, i: usize) {
        let s = i as u16;
        let generation = self.slots.generation(s);
        let Some(c) = self.slots.get_mut(s) else {
            return;
        };
        c.task.abort();
        let mut queued = Vec::new();
        self.ios.retain_mut(|io| {
            let (t, g, sub) = split_tag(io.tag);
            let mine = t == i && g == generation;
            if mine {
                let op = core::mem::replace(&mut io.op, IoOp::Flush);
                queued.push((sub, op));
            }
            !mine
        });
        for (sub, op) in queued {
            c.outstanding = c.outstanding.saturating_sub(1);
            c.task.handle_completion(
                sub,
                IoCompletion {
                    tag: 0,
                    status: IoStatus::DeviceFailed,
                    buf: op.into_buf(),
                },
            );
        }
        if c.outstanding == 0 {
            if let Some(c) = self.slots.remove(s) {
                self.release(i, generation, &c);
            }
        } else {
            // Its buffers stay counted until the device gives them back.
            self.slots.retire(s);
        }
    }

    /// COMPARE AND WRITEs waiting for the LU lock get another try.
    pub(crate) fn pump_blocked(&mut self, bdevs: &Registry) {
        for i in 0..self.slots.slot_count() {
            let cmd = self.slots.get(i as u16);
            if cmd.is_some_and(|c| c.running && c.task.is_blocked()) {
                self.pump(i, bdevs);
            }
        }
    }

    fn any_blocked(&self) -> bool {
        self.slots
            .iter()
            .any(|(_, c)| c.running && c.task.is_blocked())
    }

    pub(crate) fn abort_all(&mut self) {
        for i in 0..self.slots.slot_count() {
            self.abort_slot(i);
        }
        self.queued.clear();
    }

    /// Whether slot `i` still has I/O at the device.
    pub(crate) fn slot_busy(&self, i: usize) -> bool {
        self.slots.is_retired(i as u16)
    }

    pub fn handle_timeout(&mut self, target: &mut Target, bdevs: &Registry, now_ms: u64) {
        self.now = now_ms;
        self.sync(target);
        self.pump_blocked(bdevs);
        self.run_queued(target, bdevs);
        self.grant_waiting(bdevs);
        let o = &target.config.options;
        let timeout = o.nop_timeout as u64 * 1000;
        let interval = o.nop_in_interval as u64 * 1000;
        match self.phase {
            // Unconditional: with NOP pings off, a silent peer would
            // otherwise hold a connection slot in login for ever.
            Phase::Login if now_ms >= self.started + timeout.max(LOGIN_TIMEOUT_MS) => {
                self.fail("login took too long")
            }
            Phase::FullFeature => {
                if let Some((_, deadline)) = self.ping
                    && now_ms >= deadline
                {
                    self.abort_all();
                    return self.fail("NOP-In not answered");
                }
                if self.ping.is_none() && interval > 0 && now_ms >= self.last_rx + interval {
                    let ttt = self.new_ttt();
                    let mut b = Bhs::new(pdu::op::NOP_IN);
                    b.set_flags(pdu::flag::FINAL)
                        .set_itt(NO_TAG)
                        .set_u32(pdu::at::W20, ttt);
                    self.stamp_peek(&mut b);
                    self.send_pdu(&b, &[]);
                    let deadline = if timeout > 0 {
                        now_ms + timeout
                    } else {
                        u64::MAX
                    };
                    self.ping = Some((ttt, deadline));
                }
            }
            _ => {}
        }
        if self.phase == Phase::FullFeature && now_ms >= self.next_tick {
            self.check_luns(target, bdevs);
        }
        if now_ms >= self.next_tick {
            self.next_tick = now_ms + 1000;
        }
        if self.any_blocked() {
            self.next_tick = self.next_tick.min(now_ms + BLOCKED_RETRY_MS);
        }
    }

    /// The initiator's NOP-Out answering our ping (ITT 0xffffffff).
    fn nop_answer(&mut self, p: &Pdu) {
        let ttt = p.bhs.u32_at(pdu::at::W20);
        if self.ping.is_some_and(|(t, _)| t == ttt) {
            self.ping = None;
        }
    }

    /// The next time [`Connection::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.phase == Phase::Closing {
            return None;
        }
        if self.deferred && !self.busy() {
            return Some(self.now);
        }
        let mut t = self.next_tick;
        if let Some((_, d)) = self.ping {
            t = t.min(d);
        }
        Some(t)
    }

    /// Bytes waiting to be sent (a prefix of them, at least one if any).
    pub fn poll_output(&self) -> Option<&[u8]> {
        self.out.front()
    }

    pub fn consume_output(&mut self, n: usize) {
        let mut left = n;
        for (k, o) in self.out.iter().enumerate() {
            if left == 0 {
                break;
            }
            let unsent = if k == 0 {
                self.out.front().map_or(0, <[u8]>::len)
            } else {
                o.bytes().len()
            };
            let sent = left.min(unsent);
            if let Out::Bytes(_) = o {
                self.ctl_out = self.ctl_out.saturating_sub(sent);
            }
            left -= sent;
        }
        self.out.consume(n);
    }

    /// Nothing more to do: close the socket once this is true.
    pub fn finished(&self) -> bool {
        self.phase == Phase::Closing
            && self.out.is_empty()
            && self.ios.is_empty()
            && self.slots.retired() == 0
            && self.slots.iter().all(|(_, c)| c.outstanding == 0)
    }

    /// The socket is gone: the session and registration go with it.
    pub fn closed(&mut self, target: &mut Target) {
        self.abort_all();
        if self.phase != Phase::Closing {
            self.error.get_or_insert("connection closed by peer");
        }
        self.phase = Phase::Closing;
        if self.id != 0 {
            target.unregister(self.id);
        }
    }

    /// Updates the target's view of this connection.
    pub(crate) fn publish(&self, target: &mut Target, state: &'static str) {
        let s = self.sess.clone();
        target.update_conn(self.id, |c| {
            c.state = state;
            if let Some(s) = s {
                c.cid = s.cid;
                c.tsih = s.tsih;
                c.isid = s.isid;
                c.initiator_name = s.initiator;
                c.target_name = s.target.unwrap_or_default();
                c.portal_group_tag = s.pg_tag;
            }
        });
    }
}
