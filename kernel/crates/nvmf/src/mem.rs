//! Data buffers from the appliance's budget, and the commands that wait
//! for them.
//!
//! Every buffer a host can make a connection hold (read data, solicited
//! write data, in-capsule data of I/O commands) comes from the connection's
//! [`Account`], all of one command's buffers at once or none. A command
//! the budget cannot serve now waits:
//! - commands with no data in hand (reads, writes before their R2T) queue
//!   in arrival order in `Connection::waiting` and hold nothing meanwhile;
//! - an I/O command whose in-capsule data arrived is parked with a copy of
//!   that data (at most one: no new PDU is read while it is). It does not
//!   queue behind the others: it is small, and it must not wait for
//!   solicited data that only the input behind it can bring.
//!
//! New PDUs are not read while a capsule is parked, nor while commands
//! queue and no solicited data is outstanding. Solicited data comes only
//! with input, so input goes on while any is outstanding; what arrives then
//! queues behind. Admin and Fabrics commands need no budget (their
//! in-capsule data is used at once, their small replies are not charged),
//! so a host can log in whatever the other connections hold.
//!
//! Nothing deadlocks, because what waits always fits in the floor the budget
//! keeps for every connection whatever the others hold (the budget is cut
//! for every socket there is): one command moves
//! at most [`Connection::transfer_cap`] bytes (reported as MDTS), and
//! solicited data outstanding at once (granted, not all in) stays within
//! `grant_limit`; both leave room in the floor for one in-capsule buffer.
//! Everything else a connection holds comes back without its input (read
//! data drains to a host that reads, block I/O completes); a host that
//! stops reading is dropped by the endpoint's stall deadline, which frees
//! its memory.
//!
//! A command that can never have its buffers (larger than one connection
//! may hold, or the heap refused with nothing of the budget out) fails
//! alone: Invalid Field for a size beyond the limit, Data Transfer Error
//! (which a host retries) otherwise. A compare holds the host's data while
//! its read waits, so both together must fit what a connection may hold.

use crate::conn::{Connection, MAX_DATA_OUT, Phase, Stage};
use crate::spec::Status;
use crate::target::Target;
use alloc::vec::Vec;
use ironbay_bdev::{Account, IoBuf, Registry, Short};

/// An I/O command whose in-capsule data waits for buffers, with the data.
pub(crate) struct Parked {
    pub slot: u16,
    pub generation: u8,
    data: Vec<u8>,
}

/// What `bytes` of buffers cost the budget.
pub(crate) fn charge(bytes: usize) -> usize {
    bytes.div_ceil(IoBuf::ALIGN).saturating_mul(IoBuf::ALIGN)
}

/// Buffers for `want` bytes in pieces of `chunk`, from `account`: all of
/// them or none, so a waiting command holds nothing.
pub(crate) fn take_chunks(
    account: &Account,
    want: usize,
    chunk: usize,
) -> Result<Vec<IoBuf>, Short> {
    let chunk = chunk.max(1);
    let count = want.div_ceil(chunk);
    let sizes = (0..count).map(|k| chunk.min(want - k * chunk));
    let total = sizes.clone().map(charge).fold(0, usize::saturating_add);
    let budget = account.budget();
    if total > budget.max_hold() {
        return Err(Short::Never);
    }
    let mut bufs = Vec::new();
    let mut short = bufs.try_reserve_exact(count).err().map(|_| Short::Wait);
    if short.is_none() {
        for n in sizes {
            match account.try_buf(n) {
                Ok(b) => bufs.push(b),
                Err(e) => {
                    short = Some(e);
                    break;
                }
            }
        }
    }
    let Some(short) = short else {
        return Ok(bufs);
    };
    drop(bufs);
    // With nothing of the budget out, only the heap can have refused, and
    // waiting will not change its mind.
    if short == Short::Never || budget.used() == 0 {
        Err(Short::Never)
    } else {
        Err(Short::Wait)
    }
}

/// The status of a command whose buffers can never be had.
pub(crate) fn never_status(account: &Account, want: usize) -> Status {
    if charge(want) > account.budget().max_hold() {
        Status::INVALID_FIELD
    } else {
        Status::DATA_TRANSFER_ERROR
    }
}

impl Connection {
    /// Room the floor keeps for one command's in-capsule data on I/O
    /// queues.
    fn capsule_reserve(&self, target: &Target) -> usize {
        let icd = target
            .config
            .transport
            .as_ref()
            .map_or(0, |o| o.in_capsule_data_size as usize);
        charge(icd)
    }

    /// The most one command may move (MDTS): the configured max I/O size,
    /// within [`Connection::budget_cap`].
    pub(crate) fn transfer_cap(&self, target: &Target) -> usize {
        let max_io = target
            .config
            .transport
            .as_ref()
            .map_or(131072, |o| o.max_io_size as usize);
        max_io.min(self.budget_cap(target))
    }

    /// The most one command may move as far as the budget goes: the floor
    /// less the in-capsule room, as a power of two (MDTS counts in powers
    /// of two).
    pub(crate) fn budget_cap(&self, target: &Target) -> usize {
        let room = self
            .account
            .budget()
            .floor()
            .saturating_sub(self.capsule_reserve(target));
        if room == 0 { 0 } else { 1 << room.ilog2() }
    }

    /// Solicited write data that may be outstanding at once (granted,
    /// not yet all in): within the floor, less the in-capsule room.
    fn grant_limit(&self, target: &Target) -> usize {
        let io_queue = self.phase == Phase::Ready && self.qid() != 0;
        let reserve = if io_queue {
            self.capsule_reserve(target)
        } else {
            0
        };
        self.account.budget().floor().saturating_sub(reserve)
    }

    /// Whether waiting for memory keeps new PDUs out.
    pub(crate) fn blocked_on_memory(&self) -> bool {
        self.parked.is_some() || (!self.waiting.is_empty() && !self.receiving())
    }

    /// Whether solicited data is outstanding (only input brings it in).
    fn receiving(&self) -> bool {
        self.dout_granted > 0 && self.slots.iter().any(|(_, c)| c.stage == Stage::Receiving)
    }

    /// Bytes of solicited data granted and not all in yet.
    fn receiving_bytes(&self) -> usize {
        if self.dout_granted == 0 {
            return 0;
        }
        self.slots
            .iter()
            .filter(|(_, c)| c.stage == Stage::Receiving)
            .map(|(_, c)| c.want)
            .sum()
    }

    /// Whether a command waits for the budget.
    pub fn waits_for_memory(&self) -> bool {
        self.parked.is_some() || !self.waiting.is_empty()
    }

    /// Memory may have come back: serve what waits for it.
    pub fn handle_memory(&mut self, target: &mut Target, bdevs: &Registry, now_ms: u64) {
        self.now = now_ms;
        self.retry_waiting(target, bdevs);
        self.sync(target);
    }

    /// Serves the parked capsule, then the queue oldest first until one
    /// still has to wait.
    pub(crate) fn retry_waiting(&mut self, target: &mut Target, bdevs: &Registry) {
        if self.phase == Phase::Closing {
            return;
        }
        if let Some(p) = self.parked.take() {
            self.retry_parked(p, target, bdevs);
        }
        while let Some(s) = self.waiting.at(0, &self.slots, |_| true) {
            let i = s as usize;
            let g = self.slots.generation(s);
            let Some(stage) = self.slots.get(s).map(|c| c.stage) else {
                break;
            };
            match stage {
                Stage::WaitGrant => self.grant(i, target),
                Stage::WaitMemory => {
                    if let Err(st) = crate::io::start(self, i, target, bdevs) {
                        self.fail_cmd(i, st, target);
                    }
                }
                _ => {}
            }
            let still =
                self.slots.is_current(s, g) && self.slots.get(s).is_some_and(|c| c.stage == stage);
            if still {
                break;
            }
            // Completing it may have taken it off already.
            self.waiting.remove_at(0, s, g);
        }
    }

    /// Queues command `i` (not yet queued) for memory, behind what waits.
    pub(crate) fn wait_for_memory(&mut self, i: usize) {
        let Some(c) = self.cmd_mut(i) else {
            return;
        };
        c.stage = Stage::WaitMemory;
        self.waiting.push(&self.slots, i as u16);
    }

    /// Grants command `i` its solicited-data buffers and sends its R2Ts,
    /// if the grant limit and the budget allow.
    fn grant(&mut self, i: usize, target: &mut Target) {
        let limit = self.grant_limit(target);
        let Some(c) = self.cmd_mut(i) else {
            return;
        };
        let (want, chunk) = (c.want, c.chunk);
        // A command alone is always granted room (its size is within the
        // limits); buffers of writes already at the device count against
        // MAX_DATA_OUT, not the floor, since they come back without input.
        if self.dout_granted > 0 && self.dout_granted + want > MAX_DATA_OUT {
            return;
        }
        let receiving = self.receiving_bytes();
        if receiving > 0 && receiving + want > limit {
            return;
        }
        match take_chunks(&self.account, want, chunk) {
            Ok(bufs) => {
                self.dout_granted += want;
                let now = self.now;
                if let Some(c) = self.cmd_mut(i) {
                    c.granted = true;
                    c.data = bufs;
                    c.stage = Stage::Receiving;
                    c.data_since = now;
                }
                self.send_r2ts(i);
            }
            Err(Short::Wait) => {}
            Err(Short::Never) => {
                let st = never_status(&self.account, want);
                self.fail_cmd(i, st, target);
            }
        }
    }

    /// Takes the in-capsule data `src` of I/O command `i` into buffers and
    /// runs the command, or parks it until the budget has them.
    pub(crate) fn capsule_data(
        &mut self,
        i: usize,
        src: &[u8],
        target: &mut Target,
        bdevs: &Registry,
    ) -> Result<(), Status> {
        if self.fill_capsule_bufs(i, src)? {
            return self.ready(i, target, bdevs);
        }
        let mut data = Vec::new();
        if data.try_reserve_exact(src.len()).is_err() {
            return Err(Status::DATA_TRANSFER_ERROR);
        }
        data.extend_from_slice(src);
        let Some(c) = self.cmd_mut(i) else {
            return Ok(());
        };
        c.stage = Stage::WaitMemory;
        let generation = self.slots.generation(i as u16);
        self.parked = Some(Parked {
            slot: i as u16,
            generation,
            data,
        });
        Ok(())
    }

    fn retry_parked(&mut self, p: Parked, target: &mut Target, bdevs: &Registry) {
        let i = p.slot as usize;
        if !self.slots.is_current(p.slot, p.generation) {
            return;
        }
        let r = match self.fill_capsule_bufs(i, &p.data) {
            Ok(true) => self.ready(i, target, bdevs),
            Ok(false) => {
                self.parked = Some(p);
                Ok(())
            }
            Err(st) => Err(st),
        };
        if let Err(st) = r {
            self.fail_cmd(i, st, target);
        }
    }

    /// Buffers for command `i`'s in-capsule data, filled with `src`.
    /// Ok(false): the budget has none now.
    fn fill_capsule_bufs(&mut self, i: usize, src: &[u8]) -> Result<bool, Status> {
        let Some(c) = self.cmd_mut(i) else {
            return Ok(false);
        };
        let (want, chunk) = (c.want, c.chunk);
        match take_chunks(&self.account, want, chunk) {
            Ok(bufs) => {
                if let Some(c) = self.cmd_mut(i) {
                    c.data = bufs;
                    c.put(0, src);
                }
                Ok(true)
            }
            Err(Short::Wait) => Ok(false),
            Err(Short::Never) => Err(never_status(&self.account, want)),
        }
    }
}
