//! Write-back bookkeeping: the dirty blocks in the order they became dirty
//! (oldest written back first), the blocks under write-back, and the
//! back-off after the source failed one.
//!
//! Every change to a block's RAM data takes a sequence number; a block
//! keeps the number of its oldest change the source lacks. A flush
//! submitted when the counter stood at `F` waits until no dirty block has
//! a number below `F` ([`Dirty::oldest`]), so later writes never hold it up.
//! A block changed while its write-back is in flight joins the list again
//! with a new number; when the write-back ends it stays dirty. A failed
//! write-back puts the block back with its old number.

use crate::map::try_vec;
use alloc::vec::Vec;
use ironbay_bdev::IoStatus;

const NIL: u32 = u32::MAX;
const IN_LIST: u8 = 1;
const IN_FLIGHT: u8 = 2;
const BACKOFF_MIN_US: u64 = 1_000;
const BACKOFF_MAX_US: u64 = 1_000_000;

pub(crate) struct Dirty {
    seq: Vec<u64>,
    prev: Vec<u32>,
    next: Vec<u32>,
    flags: Vec<u8>,
    head: u32,
    tail: u32,
    next_seq: u64,
    count: u64,
    /// Blocks under write-back: (slot, number of the data sent).
    inflight: Vec<(u32, u64)>,
    pause_until: u64,
    backoff: u64,
    errors: u64,
}

impl Dirty {
    /// Tables for `slots` slots, or none at all when the cache never holds
    /// dirty data; `depth` write-backs at once.
    pub(crate) fn new(slots: usize, on: bool, depth: usize) -> Result<Self, IoStatus> {
        let n = if on { slots } else { 0 };
        let mut inflight = Vec::new();
        inflight
            .try_reserve_exact(depth)
            .map_err(|_| IoStatus::NoMemory)?;
        Ok(Dirty {
            seq: try_vec(n, 0)?,
            prev: try_vec(n, NIL)?,
            next: try_vec(n, NIL)?,
            flags: try_vec(n, 0)?,
            head: NIL,
            tail: NIL,
            next_seq: 0,
            count: 0,
            inflight,
            pause_until: 0,
            backoff: BACKOFF_MIN_US,
            errors: 0,
        })
    }

    /// Dirty blocks, those under write-back included.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn errors(&self) -> u64 {
        self.errors
    }

    /// The number the next change will take: a flush's mark.
    pub(crate) fn mark(&self) -> u64 {
        self.next_seq
    }

    pub(crate) fn inflight(&self) -> &[(u32, u64)] {
        &self.inflight
    }

    pub(crate) fn is_in_flight(&self, slot: usize) -> bool {
        self.flags.get(slot).is_some_and(|f| f & IN_FLIGHT != 0)
    }

    /// The number of the oldest change not yet on the source.
    pub(crate) fn oldest(&self) -> Option<u64> {
        let listed = (self.head != NIL).then(|| self.seq[self.head as usize]);
        let sent = self.inflight.iter().map(|&(_, s)| s).min();
        match (listed, sent) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The oldest listed block (not under write-back).
    pub(crate) fn first(&self) -> Option<usize> {
        (self.head != NIL).then_some(self.head as usize)
    }

    pub(crate) fn after(&self, slot: usize) -> Option<usize> {
        let n = *self.next.get(slot)?;
        (n != NIL).then_some(n as usize)
    }

    fn unlink(&mut self, slot: usize) {
        let (p, n) = (self.prev[slot], self.next[slot]);
        match p {
            NIL => self.head = n,
            p => self.next[p as usize] = n,
        }
        match n {
            NIL => self.tail = p,
            n => self.prev[n as usize] = p,
        }
        self.prev[slot] = NIL;
        self.next[slot] = NIL;
        self.flags[slot] &= !IN_LIST;
    }

    /// Links `slot` before `at` (NIL: at the tail).
    fn link_before(&mut self, slot: usize, at: u32) {
        let p = match at {
            NIL => self.tail,
            at => self.prev[at as usize],
        };
        self.prev[slot] = p;
        self.next[slot] = at;
        match p {
            NIL => self.head = slot as u32,
            p => self.next[p as usize] = slot as u32,
        }
        match at {
            NIL => self.tail = slot as u32,
            at => self.prev[at as usize] = slot as u32,
        }
        self.flags[slot] |= IN_LIST;
    }

    /// The slot's RAM data changed.
    pub(crate) fn touch(&mut self, slot: usize) {
        let Some(&f) = self.flags.get(slot) else {
            return;
        };
        if f & IN_LIST != 0 {
            return;
        }
        if f & IN_FLIGHT == 0 {
            self.count += 1;
        }
        self.seq[slot] = self.next_seq;
        self.next_seq += 1;
        self.link_before(slot, NIL);
    }

    /// The slot is no longer dirty: its data reached the source by other
    /// means, or it was dropped. (Callers never drop a slot under
    /// write-back; if one did, its write-back would end unnoticed.)
    pub(crate) fn clear(&mut self, slot: usize) {
        let Some(&f) = self.flags.get(slot) else {
            return;
        };
        if f & IN_LIST != 0 {
            self.unlink(slot);
        }
        if f & IN_FLIGHT != 0 {
            self.inflight.retain(|&(s, _)| s as usize != slot);
            self.flags[slot] &= !IN_FLIGHT;
        }
        if f & (IN_LIST | IN_FLIGHT) != 0 {
            self.count -= 1;
        }
    }

    /// Drops a dirty block that can never be written back; counts as an
    /// error.
    pub(crate) fn lose(&mut self, slot: usize) {
        self.clear(slot);
        self.errors += 1;
    }

    /// Takes a listed slot for write-back.
    pub(crate) fn start(&mut self, slot: usize) {
        if self.flags.get(slot).is_none_or(|f| f & IN_LIST == 0) {
            return;
        }
        self.unlink(slot);
        self.flags[slot] |= IN_FLIGHT;
        self.inflight.push((slot as u32, self.seq[slot]));
    }

    /// Ends a write-back. `Ok(true)`: the block is clean; `Ok(false)`: it
    /// changed meanwhile and stays dirty; `Err(seq)`: it failed and the
    /// block is dirty again from change `seq` on.
    pub(crate) fn finish(&mut self, slot: usize, ok: bool, now: u64) -> Result<bool, u64> {
        let Some(i) = self.inflight.iter().position(|&(s, _)| s as usize == slot) else {
            return Ok(false);
        };
        let (_, sent) = self.inflight.swap_remove(i);
        self.flags[slot] &= !IN_FLIGHT;
        if ok {
            self.backoff = BACKOFF_MIN_US;
            if self.flags[slot] & IN_LIST != 0 {
                return Ok(false);
            }
            self.count -= 1;
            return Ok(true);
        }
        self.errors += 1;
        self.pause_until = now.saturating_add(self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX_US);
        if self.flags[slot] & IN_LIST != 0 {
            self.unlink(slot);
        }
        self.seq[slot] = sent;
        // Keep the list in number order: failures are rare, the walk short.
        let mut at = self.head;
        while at != NIL && self.seq[at as usize] <= sent {
            at = self.next[at as usize];
        }
        self.link_before(slot, at);
        Err(sent)
    }

    /// Whether background write-back may run (not backing off).
    pub(crate) fn may_run(&self, now: u64) -> bool {
        now >= self.pause_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_redirty_and_failure() {
        let mut d = Dirty::new(4, true, 2).unwrap();
        d.touch(2);
        d.touch(0);
        d.touch(2);
        assert_eq!((d.count(), d.first(), d.oldest()), (2, Some(2), Some(0)));
        assert_eq!(d.after(2), Some(0));
        d.start(2);
        // Changed while in flight: listed again, newer, still one block.
        d.touch(2);
        assert_eq!((d.count(), d.first(), d.oldest()), (2, Some(0), Some(0)));
        assert_eq!(d.finish(2, true, 0), Ok(false));
        assert_eq!(d.oldest(), Some(1));
        d.start(0);
        d.start(2);
        assert_eq!(d.finish(0, true, 0), Ok(true));
        assert_eq!(d.finish(2, false, 10), Err(2));
        assert!(!d.may_run(10) && d.may_run(10 + BACKOFF_MIN_US));
        assert_eq!((d.count(), d.first(), d.errors()), (1, Some(2), 1));
        d.touch(3);
        d.clear(2);
        assert_eq!((d.count(), d.first(), d.mark()), (1, Some(3), 4));
    }
}
