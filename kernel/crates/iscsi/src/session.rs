//! Full feature phase: SCSI commands with their Data-Out / R2T / Data-In
//! flow, task management, NOP, Text (SendTargets), Logout and asynchronous
//! events. These are `Connection` methods: with one connection per session
//! (MaxConnections=1) the session state lives in the connection.

use crate::conn::{Connection, MAX_DATA_OUT, MAX_TASKS, Phase};
use crate::pdu::{self, Bhs, NO_TAG, Pdu, at, flag, op};
use crate::scsi::{LunRef, Response, Task, UnitAttention, status};
use crate::target::Target;
use crate::text::{self, NOT_UNDERSTOOD, REJECT};
use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ironbay_bdev::{Account, BdevId, IoBuf, Registry, Short};

/// One data sequence: unsolicited (TTT 0xffffffff) or for one R2T.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seq {
    pub ttt: u32,
    pub end: u32,
    pub next: u32,
    pub data_sn: u32,
}

/// A SCSI command in flight.
pub(crate) struct Cmd {
    pub task: Task,
    pub itt: u32,
    pub lun_raw: [u8; 8],
    pub lun: u64,
    pub bdev: Option<BdevId>,
    pub epoch: u64,
    pub write: bool,
    pub read: bool,
    /// Expected data-out length (EDTL of a write).
    pub write_len: u32,
    /// Expected data-in length.
    pub read_len: u32,
    /// Data-out length the CDB itself asks for (SPDTL).
    pub spdtl: Option<u64>,
    /// Data-out bytes the SCSI layer takes.
    pub want: usize,
    pub written: usize,
    /// The task has its buffers from the account (or, for data-out, the
    /// promise of them: see `promised`) and `want` is counted in the
    /// connection's data-out bound: its data may be solicited and it may
    /// run.
    pub granted: bool,
    /// Data-out the grant promised without allocating, as the budget
    /// counts it: taken as the data arrives, within the connection's
    /// floor of the budget, which it may always have.
    pub promised: usize,
    /// Immediate and unsolicited data that came before the grant, from
    /// offset 0, in a buffer as large as may come unsolicited.
    pub staged: Option<IoBuf>,
    /// Bytes of `staged` that came.
    pub staged_len: usize,
    /// Read buffer bytes counted in the connection's executing bytes.
    pub exec: usize,
    pub unsol: Option<Seq>,
    pub r2ts: Vec<Seq>,
    pub next_r2t: u32,
    pub r2tsn: u32,
    /// R2T and Data-In PDUs sent (ExpDataSN of the response).
    pub data_pdus: u32,
    pub running: bool,
    pub outstanding: u32,
    /// The transport failed the command.
    pub failed: Option<Failed>,
}

/// How the transport ended a command.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Failed {
    /// CHECK CONDITION with this sense data.
    Check([u8; 18]),
    /// A status without sense data.
    Status(u8),
}

/// A response held back until aborted tasks' I/O has drained.
pub(crate) enum Pending {
    Tmf {
        itt: u32,
        response: u8,
        slots: Vec<usize>,
        then_close: bool,
    },
    Logout {
        itt: u32,
    },
}

/// A Text negotiation spanning several PDUs.
#[derive(Default)]
pub(crate) struct TextState {
    itt: u32,
    ttt: u32,
    request: Vec<u8>,
    reply: Vec<u8>,
}

/// Fixed-format sense data.
pub(crate) fn sense(key: u8, asc: u8, ascq: u8) -> [u8; 18] {
    let mut s = [0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    s
}

const ABORTED_COMMAND: u8 = 0x0b;
const UNIT_ATTENTION: u8 = 0x06;

/// DATA PHASE ERROR: Data-Out out of sequence or outside its R2T.
fn data_phase_error() -> [u8; 18] {
    sense(ABORTED_COMMAND, 0x4b, 0x00)
}

/// DATA PHASE CRC ERROR DETECTED.
fn crc_error() -> [u8; 18] {
    sense(ABORTED_COMMAND, 0x47, 0x01)
}

/// Residual flags and count for `expected` against `actual` bytes.
fn residual(expected: u64, actual: u64) -> (u8, u32) {
    if actual > expected {
        (
            flag::OVERFLOW,
            (actual - expected).min(u32::MAX as u64) as u32,
        )
    } else if actual < expected {
        (flag::UNDERFLOW, (expected - actual) as u32)
    } else {
        (0, 0)
    }
}

/// The first `len` bytes of `data`. A buffer only partly sent is copied
/// when the account has room: queued output must not pin whole read
/// buffers for a short EDTL. Otherwise it is sent from as it is (it is
/// charged already).
fn trim(data: Vec<IoBuf>, len: usize, account: &Account) -> Vec<IoBuf> {
    let mut left = len;
    let mut out = Vec::new();
    for b in data {
        if left == 0 {
            break;
        }
        if b.len() <= left {
            left -= b.len();
            out.push(b);
        } else {
            match account.try_buf(left) {
                Ok(mut part) => {
                    part.as_mut_slice()
                        .copy_from_slice(b.as_slice().get(..left).unwrap_or(&[]));
                    out.push(part);
                }
                Err(_) => out.push(b),
            }
            left = 0;
        }
    }
    out
}

fn valid_name(v: &str) -> bool {
    let l = v.to_ascii_lowercase();
    (l.starts_with("iqn.") || l.starts_with("eui.") || l.starts_with("naa."))
        && v.len() <= 223
        && !v.contains(',')
}

impl Connection {
    fn node_name(&self) -> Option<String> {
        self.sess.as_ref().and_then(|s| s.target.clone())
    }

    fn initiator(&self) -> &str {
        self.sess.as_ref().map_or("", |s| s.initiator.as_str())
    }

    fn session_id(&self) -> u64 {
        self.sess.as_ref().map_or(0, |s| s.id)
    }

    fn find_itt(&self, itt: u32) -> Option<usize> {
        self.slots
            .iter()
            .find(|(_, c)| c.itt == itt)
            .map(|(s, _)| s as usize)
    }

    pub(crate) fn scsi_command(&mut self, p: Pdu, target: &mut Target, bdevs: &Registry) {
        let bhs = p.bhs;
        let Some(ahs) = pdu::parse_ahs(&p.ahs) else {
            return self.reject(pdu::reject::INVALID_FIELD, &bhs);
        };
        if self.find_itt(bhs.itt()).is_some() {
            return self.reject(pdu::reject::TASK_IN_PROGRESS, &bhs);
        }
        let read = bhs.flags() & flag::READ != 0;
        let write = bhs.flags() & flag::WRITE != 0;
        let edtl = bhs.u32_at(at::W20);
        let write_len = if write { edtl } else { 0 };
        let read_len = match (read, write) {
            (true, true) => ahs.bidi_read_len.unwrap_or(0),
            (true, false) => edtl,
            _ => 0,
        };
        let mut cdb = bhs.cdb().to_vec();
        cdb.extend_from_slice(&ahs.extended_cdb);
        let lun = pdu::decode_lun(bhs.lun_raw());
        let name = self.node_name().unwrap_or_default();
        let (entry, luns) = match target.config.node(&name) {
            Some(n) => {
                let seen = n.luns_for(self.initiator());
                (
                    seen.iter().find(|l| l.id == lun).cloned(),
                    seen.iter().map(|l| l.id).collect::<Vec<u64>>(),
                )
            }
            None => (None, Vec::new()),
        };
        let info = entry.as_ref().and_then(|l| bdevs.info(l.bdev));
        let epoch = entry
            .as_ref()
            .map_or(0, |l| target.lun_epoch(&name, l.bdev));
        let memory = self.command_memory();
        let task = match (&entry, info) {
            (Some(l), Some(info)) => {
                let sid = self.session_id();
                let (shared, nexus, port) = target.lun_states(&name, l.bdev, lun, sid);
                let r = LunRef {
                    id: lun,
                    bdev: l.bdev,
                    info,
                    read_only: l.read_only,
                    target_name: &name,
                    initiator_port: port,
                    nexus_id: sid,
                    shared,
                    nexus,
                    memory,
                };
                Task::new(&cdb, Some(r), &luns, write_len)
            }
            _ => Task::new(&cdb, None, &luns, write_len),
        };
        let want = task.data_out_len();
        let spdtl = task.cdb_out_len() as u64;
        let failed = self.digest_failed_cmd.then(|| Failed::Check(crc_error()));
        let cmd = Box::new(Cmd {
            task,
            itt: bhs.itt(),
            lun_raw: bhs.lun_raw(),
            lun,
            bdev: entry.filter(|_| info.is_some()).map(|l| l.bdev),
            epoch,
            write,
            read,
            write_len,
            read_len,
            spdtl: write.then_some(spdtl),
            want,
            written: 0,
            granted: false,
            promised: 0,
            staged: None,
            staged_len: 0,
            exec: 0,
            unsol: None,
            r2ts: Vec::new(),
            next_r2t: 0,
            r2tsn: 0,
            data_pdus: 0,
            running: false,
            outstanding: 0,
            failed,
        });
        // Immediate commands skip the CmdSN window: the depth bounds them
        // (and the data buffers they hold) all the same.
        if self.active_tasks() >= (self.depth as usize).min(MAX_TASKS) {
            return self.busy_response(&bhs);
        }
        let Some(i) = self.alloc_slot(cmd) else {
            return self.busy_response(&bhs);
        };
        let i = i as usize;
        let imm = if write {
            p.data.len().min(write_len as usize)
        } else {
            0
        };
        let first_burst = self.params.first_burst_length;
        let unsolicited = write && !bhs.is_final() && !self.params.initial_r2t;
        // Straight to its buffers when nothing waits ahead and the account
        // and data-out bound have room; queued otherwise.
        let mut refused = false;
        if failed.is_none() {
            // A command needing no memory (a status, an error) need not
            // wait behind one that does.
            let free = self.cmd_mut(i).is_some_and(|c| c.task.memory() == (0, 0));
            let now = free
                || (!self.mem_blocked
                    && (want == 0 || (!self.writes_queued() && self.has_room(want))));
            match if now {
                self.try_grant(i)
            } else {
                Err(Short::Wait)
            } {
                Ok(()) => {}
                Err(Short::Wait) => {
                    self.mem_blocked |= now;
                    self.grant_queue.push(&self.slots, i as u16);
                }
                Err(Short::Never) => refused = true,
            }
        }
        if !refused
            && !self
                .cmd_mut(i)
                .is_some_and(|c| c.granted || c.failed.is_some())
        {
            // What may come before the grant, immediate and unsolicited, is
            // held in a buffer of its own; without room for it the
            // command is turned away rather than waited for with input
            // stopped.
            let unsol_end = if unsolicited {
                first_burst.min(write_len) as usize
            } else {
                0
            };
            let len = unsol_end.max(imm).min(want);
            if len > 0 {
                match self.stage_buffer(len) {
                    Some(b) => {
                        self.dout_staged += b.len();
                        if let Some(c) = self.cmd_mut(i) {
                            c.staged = Some(b);
                        }
                    }
                    None => {
                        self.abort_slot(i);
                        return self.busy_response(&bhs);
                    }
                }
            }
        }
        if !self.give_data(i, 0, p.data.get(..imm).unwrap_or(&[])) {
            return self.fail_cmd(i, Failed::Status(status::BUSY), bdevs);
        }
        if let Some(c) = self.cmd_mut(i) {
            c.next_r2t = imm as u32;
            let end = first_burst.min(write_len);
            if unsolicited && (imm as u32) < end && !refused {
                c.unsol = Some(Seq {
                    ttt: NO_TAG,
                    end,
                    next: imm as u32,
                    data_sn: 0,
                });
            }
        }
        if refused {
            // The task ended itself (too large, or no memory at all).
            return self.start(i, bdevs);
        }
        self.advance(i, bdevs);
    }

    /// Whether `want` more data-out bytes fit the per-connection bound.
    /// With nothing granted they always do: nothing else would ever free
    /// room.
    fn has_room(&self, want: usize) -> bool {
        self.dout_granted == 0 || self.dout_granted + want <= MAX_DATA_OUT
    }

    /// A write waits in the grant queue: later writes queue behind it.
    fn writes_queued(&self) -> bool {
        self.grant_queue.any(&self.slots, |c| c.want > 0)
    }

    /// What staged data may take of the account: half its floor of the
    /// budget, so staging never takes from the shared pool and the
    /// command at the head of the queue always fits beside it.
    pub(crate) fn staging_cap(&self) -> usize {
        self.account.budget().floor() / 2
    }

    /// Most one command may hold: what the account may hold, less the
    /// room staged data may take.
    pub(crate) fn command_memory(&self) -> usize {
        let b = self.account.budget();
        b.max_hold().saturating_sub(self.staging_cap())
    }

    /// A staging buffer of `len` bytes, if the cap and the account allow.
    fn stage_buffer(&self, len: usize) -> Option<IoBuf> {
        if self.dout_staged.saturating_add(len) > self.staging_cap() {
            return None;
        }
        self.account.try_buf(len).ok()
    }

    /// Gives the command in slot `i` its buffers from the account and
    /// counts its data-out in the per-connection bound. Data-out buffers
    /// are only promised while the connection, with every promise it made
    /// and the staging room, stays within its floor of the budget (which
    /// it may always have): they come as the data does, so writes whose
    /// data is slow to come hold no memory. Beyond the floor they are
    /// taken now, and no grant may go past it while promises are out.
    fn try_grant(&mut self, i: usize) -> Result<(), Short> {
        let b = self.account.budget();
        let (floor, held) = (b.floor(), self.account.held());
        let cap = self.staging_cap();
        let Connection {
            slots,
            account,
            dout_promised,
            dout_granted,
            dout_staged,
            ..
        } = self;
        let Some(c) = slots.get_mut(i as u16) else {
            return Ok(());
        };
        if c.granted {
            return Ok(());
        }
        let (dout, run) = c.task.memory();
        let within = held
            .saturating_add(*dout_promised)
            .saturating_add(dout)
            .saturating_add(run)
            .saturating_add(cap)
            <= floor;
        if *dout_promised > 0 && !within {
            return Err(Short::Wait);
        }
        let lazy = within && dout > 0 && c.staged.is_none();
        c.task.reserve(account, !lazy)?;
        if lazy {
            c.promised = dout;
            *dout_promised += dout;
        }
        c.granted = true;
        *dout_granted += c.want;
        // What came before the grant moves into the task's buffers.
        if let Some(staged) = c.staged.take() {
            *dout_staged = dout_staged.saturating_sub(staged.len());
            let n = c.staged_len.min(staged.len());
            if c.task.write_data_out(0, &staged.as_slice()[..n]) {
                c.written += n;
            }
        }
        Ok(())
    }

    /// Grants waiting commands in arrival order while the account has
    /// room (writes also while the data-out bound has room; reads may
    /// pass writes waiting for that), and solicits their data or starts
    /// them. The first one the account has no room for stops the rest:
    /// the connection then waits for memory.
    pub(crate) fn grant_waiting(&mut self, bdevs: &Registry) {
        self.mem_blocked = false;
        let mut k = 0;
        let mut writes_held = false;
        while self.phase == Phase::FullFeature {
            let waiting = self
                .grant_queue
                .at(k, &self.slots, |c| !c.granted && !c.running);
            let Some(s) = waiting else {
                break;
            };
            let (i, g) = (s as usize, self.slots.generation(s));
            let Some((want, all_staged)) = self
                .slots
                .get(s)
                .map(|c| (c.want, c.want > 0 && c.staged_len >= c.want))
            else {
                break;
            };
            // A write whose data all came unsolicited may pass the
            // data-out bound: it holds that data already.
            if want > 0 && !all_staged && (writes_held || !self.has_room(want)) {
                writes_held = true;
                k += 1;
                continue;
            }
            match self.try_grant(i) {
                Ok(()) => {
                    self.grant_queue.remove_at(k, s, g);
                    self.advance(i, bdevs);
                }
                Err(Short::Wait) => {
                    self.mem_blocked = true;
                    return;
                }
                Err(Short::Never) => {
                    self.grant_queue.remove_at(k, s, g);
                    self.start(i, bdevs);
                }
            }
        }
    }

    /// TASK SET FULL for a command that found no room.
    fn busy_response(&mut self, bhs: &Bhs) {
        let mut b = Bhs::new(op::SCSI_RSP);
        b.set_flags(flag::FINAL)
            .set_byte(3, status::TASK_SET_FULL)
            .set_itt(bhs.itt());
        self.stamp(&mut b);
        self.send_pdu(&b, &[]);
    }

    /// Hands data-out bytes at `offset` to the task, within what it takes,
    /// or holds them until the task is granted its buffers. Only immediate
    /// and unsolicited data come before the grant, in order from offset 0
    /// (the sequence checks see to it), into the buffer staged for them.
    /// False if a promised buffer could not be had after all: the command
    /// must fail.
    fn give_data(&mut self, i: usize, offset: usize, bytes: &[u8]) -> bool {
        let Connection {
            slots,
            account,
            dout_promised,
            ..
        } = self;
        let Some(c) = slots.get_mut(i as u16) else {
            return true;
        };
        if offset >= c.want || bytes.is_empty() {
            return true;
        }
        let n = bytes.len().min(c.want - offset);
        let Some(bytes) = bytes.get(..n) else {
            return true;
        };
        if c.granted {
            if c.promised > 0 {
                // Within the floor this only fails if the heap itself is
                // out of room.
                let Ok(got) = c.task.reserve_data_out(account, offset, n) else {
                    return false;
                };
                let got = got.min(c.promised);
                c.promised -= got;
                *dout_promised = dout_promised.saturating_sub(got);
            }
            if c.task.write_data_out(offset, bytes) {
                c.written += n;
            }
            return true;
        }
        let end = offset + n;
        if let Some(to) = c
            .staged
            .as_mut()
            .and_then(|b| b.as_mut_slice().get_mut(offset..end))
        {
            to.copy_from_slice(bytes);
            c.staged_len = c.staged_len.max(end);
        }
        true
    }

    /// Solicits missing data with R2Ts, or starts the command once all
    /// data-out is in.
    fn advance(&mut self, i: usize, bdevs: &Registry) {
        loop {
            let max_r2t = self.params.max_outstanding_r2t.max(1) as usize;
            let burst = self.params.max_burst_length.max(512);
            let Some(c) = self.cmd_mut(i) else { return };
            if c.running {
                return;
            }
            if c.failed.is_some() {
                return self.start(i, bdevs);
            }
            if !c.granted {
                // `grant_waiting` moves it on.
                return;
            }
            if c.unsol.is_some() {
                return;
            }
            if c.r2ts.len() < max_r2t && c.next_r2t < c.write_len {
                let offset = c.next_r2t;
                let len = burst.min(c.write_len - offset);
                let (itt, lun, r2tsn) = (c.itt, c.lun_raw, c.r2tsn);
                let ttt = self.new_ttt();
                let Some(c) = self.cmd_mut(i) else { return };
                c.r2tsn += 1;
                c.data_pdus += 1;
                c.next_r2t += len;
                c.r2ts.push(Seq {
                    ttt,
                    end: offset + len,
                    next: offset,
                    data_sn: 0,
                });
                let mut b = Bhs::new(op::R2T);
                b.set_flags(flag::FINAL)
                    .set_lun_raw(lun)
                    .set_itt(itt)
                    .set_u32(at::W20, ttt)
                    .set_u32(at::W36, r2tsn)
                    .set_u32(at::W40, offset)
                    .set_u32(at::W44, len);
                self.stamp_peek(&mut b);
                self.send_pdu(&b, &[]);
                continue;
            }
            if c.r2ts.is_empty() && c.next_r2t >= c.write_len {
                return self.start(i, bdevs);
            }
            return;
        }
    }

    /// All data-out is in (or the command failed): run it.
    fn start(&mut self, i: usize, bdevs: &Registry) {
        let Some(c) = self.cmd_mut(i) else { return };
        c.running = true;
        c.unsol = None;
        c.r2ts.clear();
        if c.failed.is_some() {
            return self.finish(i);
        }
        if c.want > 0 {
            let complete = c.written >= c.want;
            c.task.data_out_done(complete);
        }
        c.exec = c.task.read_buffer_len();
        self.executing_bytes += c.exec;
        self.pump(i, bdevs);
    }

    fn fail_cmd(&mut self, i: usize, s: Failed, bdevs: &Registry) {
        if let Some(c) = self.cmd_mut(i)
            && !c.running
        {
            c.failed = Some(s);
            self.start(i, bdevs);
        }
    }

    pub(crate) fn data_out(&mut self, p: Pdu, bdevs: &Registry) {
        let b = &p.bhs;
        let (itt, ttt) = (b.itt(), b.u32_at(at::W20));
        let (data_sn, offset) = (b.u32_at(at::W36), b.u32_at(at::W40));
        let len = p.data.len() as u32;
        // Data for a command that is gone (aborted, failed) is dropped.
        let Some(i) = self.find_itt(itt) else { return };
        let Some(c) = self.cmd_mut(i) else { return };
        if c.running {
            return;
        }
        let seq = if ttt == NO_TAG {
            c.unsol.as_mut()
        } else {
            c.r2ts.iter_mut().find(|s| s.ttt == ttt)
        };
        let Some(seq) = seq else {
            return self.fail_cmd(i, Failed::Check(data_phase_error()), bdevs);
        };
        let fits = offset.checked_add(len).is_some_and(|e| e <= seq.end);
        if seq.next != offset || seq.data_sn != data_sn || !fits {
            return self.fail_cmd(i, Failed::Check(data_phase_error()), bdevs);
        }
        seq.next += len;
        seq.data_sn = seq.data_sn.wrapping_add(1);
        let (next, end) = (seq.next, seq.end);
        if b.is_final() {
            if ttt == NO_TAG {
                // The unsolicited burst may stop short: R2Ts take over.
                c.unsol = None;
                c.next_r2t = c.next_r2t.max(next);
            } else if next != end {
                return self.fail_cmd(i, Failed::Check(data_phase_error()), bdevs);
            } else {
                c.r2ts.retain(|s| s.ttt != ttt);
            }
        }
        if !self.give_data(i, offset as usize, &p.data) {
            return self.fail_cmd(i, Failed::Status(status::BUSY), bdevs);
        }
        self.advance(i, bdevs);
    }

    pub(crate) fn data_out_digest_error(&mut self, b: &Bhs, bdevs: &Registry) {
        if let Some(i) = self.find_itt(b.itt()) {
            self.fail_cmd(i, Failed::Check(crc_error()), bdevs);
        }
    }

    /// The task is done: Data-In, then status (collapsed into the last
    /// Data-In when there is no sense data).
    pub(crate) fn finish(&mut self, i: usize) {
        let (s, g) = (i as u16, self.slots.generation(i as u16));
        if self.slots.get(s).is_none() {
            return;
        }
        let Some(mut c) = self.slots.remove(s) else {
            return;
        };
        self.release(i, g, &c);
        let resp = match c.failed {
            Some(Failed::Check(s)) => Response {
                status: status::CHECK_CONDITION,
                sense: s.to_vec(),
                data: Vec::new(),
            },
            Some(Failed::Status(st)) => Response {
                status: st,
                sense: Vec::new(),
                data: Vec::new(),
            },
            None => c.task.take_response(),
        };
        let total = resp.data_len() as u64;
        let send = total.min(c.read_len as u64) as usize;
        let (rflags, rcount) = residual(c.read_len as u64, total);
        let (wflags, wcount) = residual(c.write_len as u64, c.spdtl.unwrap_or(c.want as u64));
        // Bidirectional commands report the read residual separately.
        let (main_flags, main_count, bidi_flags, bidi_count) = match (c.read, c.write) {
            (true, true) => (wflags, wcount, rflags << 2, rcount),
            (false, true) => (wflags, wcount, 0, 0),
            _ => (rflags, rcount, 0, 0),
        };
        let collapse = send > 0
            && resp.sense.is_empty()
            && matches!(resp.status, status::GOOD | status::CONDITION_MET)
            && bidi_flags == 0;
        let bufs: Vec<Rc<IoBuf>> = trim(resp.data, send, &self.account)
            .into_iter()
            .map(Rc::new)
            .collect();
        let seg_max = (self
            .params
            .initiator_mrdsl
            .min(self.params.max_burst_length) as usize)
            .max(512);
        let burst = (self.params.max_burst_length as usize).max(512);
        let (mut off, mut bi, mut bo, mut data_sn) = (0usize, 0usize, 0usize, 0u32);
        while off < send {
            let burst_end = (off / burst + 1) * burst;
            let seg = seg_max.min(send - off).min(burst_end - off);
            let mut pieces = Vec::new();
            let mut need = seg;
            while need > 0 {
                let Some(buf) = bufs.get(bi) else { break };
                let n = need.min(buf.len() - bo);
                if n > 0 {
                    pieces.push((buf.clone(), bo, bo + n));
                }
                bo += n;
                need -= n;
                if bo >= buf.len() {
                    bi += 1;
                    bo = 0;
                }
            }
            let last = off + seg == send;
            let mut f = 0;
            if last || off + seg == burst_end {
                f |= flag::FINAL;
            }
            let mut b = Bhs::new(op::DATA_IN);
            b.set_lun_raw(c.lun_raw)
                .set_itt(c.itt)
                .set_u32(at::W20, NO_TAG)
                .set_u32(at::W36, data_sn)
                .set_u32(at::W40, off as u32);
            if last && collapse {
                f |= flag::STATUS | main_flags;
                b.set_byte(3, resp.status).set_u32(at::W44, main_count);
                self.stamp(&mut b);
            } else {
                b.set_sns(0, self.exp_cmd_sn, self.max_cmd_sn());
            }
            b.set_flags(f);
            self.send_data_pdu(&b, &pieces);
            data_sn += 1;
            off += seg;
        }
        c.data_pdus += data_sn;
        if !collapse {
            let mut b = Bhs::new(op::SCSI_RSP);
            b.set_flags(flag::FINAL | main_flags | bidi_flags)
                .set_byte(3, resp.status)
                .set_itt(c.itt)
                .set_u32(at::W36, c.data_pdus)
                .set_u32(at::W40, bidi_count)
                .set_u32(at::W44, main_count);
            self.stamp(&mut b);
            let mut data = Vec::new();
            if !resp.sense.is_empty() {
                let n = resp.sense.len().min(0xffff);
                data.extend((n as u16).to_be_bytes());
                data.extend_from_slice(&resp.sense[..n]);
            }
            self.send_pdu(&b, &data);
        }
        self.check_pending();
    }

    /// Sends held-back TMF and Logout responses whose tasks have drained.
    pub(crate) fn check_pending(&mut self) {
        let mut k = 0;
        while k < self.pending.len() {
            let ready = match &self.pending[k] {
                Pending::Tmf { slots, .. } => slots.iter().all(|&s| !self.slot_busy(s)),
                Pending::Logout { .. } => self.slots.is_empty() && self.slots.retired() == 0,
            };
            if !ready {
                k += 1;
                continue;
            }
            match self.pending.remove(k) {
                Pending::Tmf {
                    itt,
                    response,
                    then_close,
                    ..
                } => {
                    self.tmf_response(itt, response);
                    if then_close {
                        self.close();
                    }
                }
                Pending::Logout { itt } => {
                    self.logout_response(itt, 0);
                    self.close();
                }
            }
        }
    }

    fn tmf_response(&mut self, itt: u32, response: u8) {
        let mut b = Bhs::new(op::TMF_RSP);
        b.set_flags(flag::FINAL).set_byte(2, response).set_itt(itt);
        self.stamp(&mut b);
        self.send_pdu(&b, &[]);
    }

    /// Tasks of other sessions' LUN resets are aborted here.
    pub(crate) fn check_resets(&mut self, target: &Target) {
        let Some(name) = self.node_name() else { return };
        let Some(node) = target.config.node(&name) else {
            return;
        };
        let seen = node.luns_for(self.initiator());
        let mut stale = Vec::new();
        for i in 0..self.slots.slot_count() {
            if let Some(c) = self.slots.get(i as u16) {
                let epoch = seen
                    .iter()
                    .find(|l| l.id == c.lun)
                    .map_or(0, |l| target.lun_epoch(&name, l.bdev));
                if epoch != c.epoch {
                    stale.push(i);
                }
            }
        }
        for i in stale {
            self.abort_slot(i);
        }
    }

    pub(crate) fn tmf(&mut self, p: &Pdu, target: &mut Target) {
        const COMPLETE: u8 = 0;
        const NO_TASK: u8 = 1;
        const NO_LUN: u8 = 2;
        const NO_REASSIGN: u8 = 4;
        const NOT_SUPPORTED: u8 = 5;
        const REJECTED: u8 = 255;
        let b = &p.bhs;
        let function = b.flags() & 0x7f;
        let (itt, ref_itt, ref_sn) = (b.itt(), b.u32_at(at::W20), b.u32_at(at::W32));
        let lun = pdu::decode_lun(b.lun_raw());
        let name = self.node_name().unwrap_or_default();
        // (LUN, bdev) of what this session sees.
        let seen: Vec<(u64, BdevId)> = target
            .config
            .node(&name)
            .map(|n| {
                n.luns_for(self.initiator())
                    .iter()
                    .map(|l| (l.id, l.bdev))
                    .collect()
            })
            .unwrap_or_default();
        let this_lu = seen.iter().find(|x| x.0 == lun).map(|x| x.1);
        let has_lun = this_lu.is_some();
        let mut aborted = Vec::new();
        let mut then_close = false;
        let response = match function {
            1 => {
                if let Some(i) = self.find_itt(ref_itt) {
                    self.abort_slot(i);
                    aborted.push(i);
                    COMPLETE
                } else if let Some(q) = self.queued.iter().position(|q| q.bhs.itt() == ref_itt) {
                    self.queued.swap_remove(q);
                    COMPLETE
                } else {
                    // Not received yet (inside the window): nothing left to abort.
                    if ref_sn == self.exp_cmd_sn || self.in_window(ref_sn) {
                        COMPLETE
                    } else {
                        NO_TASK
                    }
                }
            }
            2 | 4 | 5 if !has_lun => NO_LUN,
            2 | 4 | 5 => {
                for i in 0..self.slots.slot_count() {
                    if self.slots.get(i as u16).is_some_and(|c| c.lun == lun) {
                        self.abort_slot(i);
                        aborted.push(i);
                    }
                }
                self.queued.retain(|q| {
                    q.bhs.opcode() != op::SCSI_CMD || pdu::decode_lun(q.bhs.lun_raw()) != lun
                });
                match (function, this_lu) {
                    (5, Some(bdev)) => {
                        target.reset_lun(&name, bdev, Some(UnitAttention::LunReset));
                        target.lu_reset(&name, bdev);
                    }
                    (4, Some(bdev)) => target.reset_lun(&name, bdev, None),
                    _ => {}
                }
                COMPLETE
            }
            3 => NOT_SUPPORTED,
            6 | 7 => {
                for i in 0..self.slots.slot_count() {
                    if self.slots.get(i as u16).is_some() {
                        self.abort_slot(i);
                        aborted.push(i);
                    }
                }
                self.queued.clear();
                for (_, bdev) in seen {
                    target.reset_lun(&name, bdev, Some(UnitAttention::PowerOnReset));
                    target.lu_reset(&name, bdev);
                }
                if function == 7 {
                    target.end_node_sessions(&name, self.id);
                    then_close = true;
                }
                COMPLETE
            }
            8 => NO_REASSIGN,
            _ => REJECTED,
        };
        if aborted.iter().any(|&i| self.slot_busy(i)) {
            self.pending.push(Pending::Tmf {
                itt,
                response,
                slots: aborted,
                then_close,
            });
            return;
        }
        self.tmf_response(itt, response);
        if then_close {
            self.close();
        }
    }

    pub(crate) fn nop_out(&mut self, p: &Pdu) {
        if p.bhs.itt() == NO_TAG {
            return;
        }
        let mut b = Bhs::new(op::NOP_IN);
        b.set_flags(flag::FINAL)
            .set_lun_raw(p.bhs.lun_raw())
            .set_itt(p.bhs.itt())
            .set_u32(at::W20, NO_TAG);
        self.stamp(&mut b);
        let n = p.data.len().min(self.params.initiator_mrdsl as usize);
        self.send_pdu(&b, &p.data[..n]);
    }

    pub(crate) fn logout(&mut self, p: &Pdu) {
        let reason = p.bhs.flags() & 0x7f;
        let cid = p.bhs.u16_at(at::W20);
        let ours = self.sess.as_ref().map_or(0, |s| s.cid);
        let response = match reason {
            0 => 0,
            1 if cid == ours => 0,
            1 => 1,
            2 => 2,
            _ => return self.reject(pdu::reject::INVALID_FIELD, &p.bhs),
        };
        if response != 0 {
            return self.logout_response(p.bhs.itt(), response);
        }
        // Commands waiting for data-out will get none now.
        for i in 0..self.slots.slot_count() {
            if self.slots.get(i as u16).is_some_and(|c| !c.running) {
                self.abort_slot(i);
            }
        }
        self.queued.clear();
        // One is enough: repeats while tasks drain would pile up.
        if self
            .pending
            .iter()
            .any(|x| matches!(x, Pending::Logout { .. }))
        {
            return;
        }
        self.pending.push(Pending::Logout { itt: p.bhs.itt() });
        self.check_pending();
    }

    fn logout_response(&mut self, itt: u32, response: u8) {
        let mut b = Bhs::new(op::LOGOUT_RSP);
        b.set_flags(flag::FINAL)
            .set_byte(2, response)
            .set_itt(itt)
            .set_u16(at::W40, self.params.default_time2wait as u16)
            .set_u16(42, self.params.default_time2retain as u16);
        self.stamp(&mut b);
        self.send_pdu(&b, &[]);
    }

    pub(crate) fn text_request(&mut self, p: &Pdu, target: &Target) {
        let b = &p.bhs;
        let (itt, ttt) = (b.itt(), b.u32_at(at::W20));
        if ttt != NO_TAG {
            if ttt != self.text.ttt || itt != self.text.itt {
                self.text = TextState::default();
                return self.reject(pdu::reject::INVALID_FIELD, b);
            }
            if !self.text.reply.is_empty() {
                return self.send_text_reply(b);
            }
        } else if itt != self.text.itt || !self.text.reply.is_empty() {
            // A new negotiation resets any unfinished one.
            self.text = TextState::default();
        }
        self.text.itt = itt;
        if self.text.request.len() + p.data.len() > text::MAX_TEXT {
            self.text = TextState::default();
            return self.reject(pdu::reject::PROTOCOL_ERROR, b);
        }
        self.text.request.extend_from_slice(&p.data);
        if b.flags() & flag::CONTINUE != 0 {
            let t = self.new_ttt();
            self.text.ttt = t;
            let mut r = Bhs::new(op::TEXT_RSP);
            r.set_lun_raw(b.lun_raw()).set_itt(itt).set_u32(at::W20, t);
            self.stamp(&mut r);
            return self.send_pdu(&r, &[]);
        }
        let req = core::mem::take(&mut self.text.request);
        let Ok(pairs) = text::parse(&req) else {
            self.text = TextState::default();
            return self.reject(pdu::reject::INVALID_FIELD, b);
        };
        // A repeated SendTargets would multiply the reply.
        if text::has_duplicate_keys(&pairs) {
            self.text = TextState::default();
            return self.reject(pdu::reject::PROTOCOL_ERROR, b);
        }
        let mut answer: Vec<(String, String)> = Vec::new();
        for (k, v) in pairs {
            match k.as_str() {
                "SendTargets" => match self.send_targets(&v, target) {
                    Some(list) => answer.extend(list),
                    None => answer.push((k, REJECT.into())),
                },
                "MaxRecvDataSegmentLength" => match text::number(&v) {
                    Some(n) if (text::MIN_LEN as u64..=text::MAX_LEN as u64).contains(&n) => {
                        self.params.initiator_mrdsl = n as u32;
                    }
                    _ => answer.push((k, REJECT.into())),
                },
                _ if text::is_login_only(&k) => answer.push((k, REJECT.into())),
                _ => answer.push((k, NOT_UNDERSTOOD.into())),
            }
        }
        self.text.reply = text::encode(&answer);
        self.send_text_reply(b)
    }

    /// Sends the next piece of a Text reply (C bit while more follows).
    fn send_text_reply(&mut self, req: &Bhs) {
        let max = self.params.initiator_mrdsl as usize;
        let n = self.text.reply.len().min(max);
        let chunk: Vec<u8> = self.text.reply.drain(..n).collect();
        let mut r = Bhs::new(op::TEXT_RSP);
        r.set_lun_raw(req.lun_raw()).set_itt(self.text.itt);
        if self.text.reply.is_empty() {
            r.set_flags(flag::FINAL).set_u32(at::W20, NO_TAG);
            self.text = TextState::default();
        } else {
            let t = self.new_ttt();
            self.text.ttt = t;
            r.set_flags(flag::CONTINUE).set_u32(at::W20, t);
        }
        self.stamp(&mut r);
        self.send_pdu(&r, &chunk);
    }

    /// SendTargets records; `None` for a value to refuse.
    fn send_targets(&self, v: &str, target: &Target) -> Option<Vec<(String, String)>> {
        let cfg = &target.config;
        let sess = self.sess.as_ref()?;
        let names: Vec<String> = match v {
            "All" => cfg.nodes.iter().map(|n| n.name.clone()).collect(),
            "" => alloc::vec![sess.target.clone()?],
            _ if valid_name(v) => cfg
                .node(v)
                .map(|n| alloc::vec![n.name.clone()])
                .unwrap_or_default(),
            _ => return None,
        };
        let mut out = Vec::new();
        let local = self.local.ip().to_string();
        for name in names {
            let Some(node) = cfg.node(&name) else {
                continue;
            };
            let mut addrs: Vec<String> = Vec::new();
            for m in &node.pg_ig_maps {
                let Some(pg) = cfg.portal_group(m.pg_tag) else {
                    continue;
                };
                let hidden = node.masked && node.acl(&sess.initiator).is_none();
                if pg.private
                    || hidden
                    || !cfg.allows(node, &sess.initiator, self.peer.ip(), pg.tag)
                {
                    continue;
                }
                for portal in &pg.portals {
                    let host = match portal.host.as_str() {
                        "0.0.0.0" | "[::]" | "::" | "*" | "" => local.as_str(),
                        h => h.trim_start_matches('[').trim_end_matches(']'),
                    };
                    let a = text::target_address(host, portal.port, pg.tag);
                    if !addrs.contains(&a) {
                        addrs.push(a);
                    }
                }
            }
            if addrs.is_empty() {
                continue;
            }
            out.push(("TargetName".to_string(), node.name.clone()));
            for a in addrs {
                out.push(("TargetAddress".to_string(), a));
            }
        }
        Some(out)
    }

    /// LUN map and capacity changes: unit attentions plus an Async Message
    /// carrying the same sense data.
    pub(crate) fn check_luns(&mut self, target: &mut Target, bdevs: &Registry) {
        let Some(name) = self.node_name() else { return };
        let now: Vec<(u64, Option<u64>)> = match target.config.node(&name) {
            Some(n) => n
                .luns_for(self.initiator())
                .iter()
                .map(|l| (l.id, bdevs.info(l.bdev).map(|i| i.num_blocks)))
                .collect(),
            None => Vec::new(),
        };
        if target.config.generation != self.seen_generation {
            self.seen_generation = target.config.generation;
            target.prune_luns();
        }
        if now == self.seen_luns {
            return;
        }
        let old = core::mem::replace(&mut self.seen_luns, now.clone());
        let sid = self.session_id();
        let ids = |v: &[(u64, Option<u64>)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
        if ids(&old) != ids(&now) {
            for (l, _) in &now {
                target.raise(sid, *l, UnitAttention::ReportedLunsChanged);
            }
            self.async_event(0, &sense(UNIT_ATTENTION, 0x3f, 0x0e));
        }
        for (l, blocks) in &now {
            let before = old.iter().find(|x| x.0 == *l).and_then(|x| x.1);
            if let (Some(a), Some(b)) = (before, *blocks)
                && a != b
            {
                target.raise(sid, *l, UnitAttention::CapacityChanged);
                self.async_event(*l, &sense(UNIT_ATTENTION, 0x2a, 0x09));
            }
        }
    }

    /// AsyncEvent 0: a SCSI asynchronous event with sense data.
    fn async_event(&mut self, lun: u64, s: &[u8]) {
        let mut b = Bhs::new(op::ASYNC);
        b.set_flags(flag::FINAL)
            .set_lun_raw(pdu::encode_lun(lun))
            .set_itt(NO_TAG)
            .set_u32(at::W20, NO_TAG)
            .set_byte(36, 0);
        self.stamp(&mut b);
        let mut data = (s.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(s);
        self.send_pdu(&b, &data);
    }
}
