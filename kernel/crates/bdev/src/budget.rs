//! The appliance-wide I/O memory budget.
//!
//! Every buffer a network peer can make the appliance hold (write payloads,
//! read data waiting for the socket) is charged to one [`Budget`] through the
//! [`Account`] of the connection that asked for it. The charge rides inside
//! the [`IoBuf`] and is released when the buffer is dropped, wherever that
//! happens (sent, failed, connection closed), so accounting cannot leak.
//!
//! Policy, so one slow reader holds only its share and a newcomer always gets
//! some memory: half the budget is split into equal floors, one per
//! connection slot, that a connection may always use; the other half is a
//! shared pool of which one connection may take at most a quarter. A request
//! that does not fit waits (the engine stops reading that socket) until its
//! own or others' buffers are released.

use crate::IoBuf;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Why a buffer could not be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Short {
    /// Wait: memory held elsewhere will come back.
    Wait,
    /// Waiting cannot help (larger than a connection may ever hold, or the
    /// heap refused with nothing outstanding): fail the command.
    Never,
}

struct Inner {
    limit: AtomicUsize,
    slots: AtomicUsize,
    used: AtomicUsize,
    /// Sum over accounts of what each holds beyond its floor.
    shared: AtomicUsize,
    high_water: AtomicUsize,
    /// Requests that had to wait.
    waits: AtomicU64,
}

/// One memory budget; clones share it.
#[derive(Clone)]
pub struct Budget(Arc<Inner>);

impl core::fmt::Debug for Budget {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Budget({} of {} bytes)", self.used(), self.limit())
    }
}

impl Budget {
    /// `limit` bytes shared by up to `slots` connections.
    pub fn new(limit: usize, slots: usize) -> Self {
        Budget(Arc::new(Inner {
            limit: AtomicUsize::new(limit),
            slots: AtomicUsize::new(slots.max(1)),
            used: AtomicUsize::new(0),
            shared: AtomicUsize::new(0),
            high_water: AtomicUsize::new(0),
            waits: AtomicU64::new(0),
        }))
    }

    /// A budget large enough never to say no (tools, tests).
    pub fn unlimited() -> Self {
        Self::new(usize::MAX / 2, 1)
    }

    /// The number of connection slots the floors are cut for (listeners
    /// come and go with the configuration).
    pub fn set_slots(&self, slots: usize) {
        self.0.slots.store(slots.max(1), Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.0.limit.load(Relaxed)
    }

    pub fn used(&self) -> usize {
        self.0.used.load(Relaxed)
    }

    pub fn high_water(&self) -> usize {
        self.0.high_water.load(Relaxed)
    }

    pub fn waits(&self) -> u64 {
        self.0.waits.load(Relaxed)
    }

    /// What one connection may always hold.
    pub fn floor(&self) -> usize {
        self.limit() / 2 / self.0.slots.load(Relaxed)
    }

    fn pool(&self) -> usize {
        self.limit() - self.floor() * self.0.slots.load(Relaxed)
    }

    /// The most one connection may hold: requests larger than this can
    /// never be served in one piece.
    pub fn max_hold(&self) -> usize {
        self.floor() + self.pool() / 4
    }

    /// A new connection's account.
    pub fn account(&self) -> Account {
        Account(Arc::new(AccountInner {
            budget: self.clone(),
            held: AtomicUsize::new(0),
        }))
    }
}

struct AccountInner {
    budget: Budget,
    held: AtomicUsize,
}

/// What one connection holds of a [`Budget`]; clones share it.
#[derive(Clone)]
pub struct Account(Arc<AccountInner>);

impl core::fmt::Debug for Account {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Account({} bytes)", self.held())
    }
}

impl Default for Account {
    fn default() -> Self {
        Budget::unlimited().account()
    }
}

impl Account {
    pub fn held(&self) -> usize {
        self.0.held.load(Relaxed)
    }

    pub fn budget(&self) -> &Budget {
        &self.0.budget
    }

    /// Takes `n` bytes if the policy allows; single-threaded per budget
    /// (the appliance's poll loop), so load-then-store is enough.
    fn reserve(&self, n: usize) -> Result<(), Short> {
        let b = &self.0.budget;
        let held = self.held();
        if held + n > b.max_hold() {
            return Err(if held == 0 { Short::Never } else { Short::Wait });
        }
        let floor = b.floor();
        let extra = (held + n).saturating_sub(floor) - held.saturating_sub(floor);
        let shared = b.0.shared.load(Relaxed);
        let used = b.used();
        if shared + extra > b.pool() || used + n > b.limit() {
            b.0.waits.fetch_add(1, Relaxed);
            return Err(Short::Wait);
        }
        b.0.shared.store(shared + extra, Relaxed);
        b.0.used.store(used + n, Relaxed);
        b.0.high_water.fetch_max(used + n, Relaxed);
        self.0.held.store(held + n, Relaxed);
        Ok(())
    }

    fn release(&self, n: usize) {
        let b = &self.0.budget;
        let held = self.held();
        let n = n.min(held);
        let floor = b.floor();
        let extra = held.saturating_sub(floor) - (held - n).saturating_sub(floor);
        b.0.shared
            .fetch_sub(extra.min(b.0.shared.load(Relaxed)), Relaxed);
        b.0.used.fetch_sub(n.min(b.used()), Relaxed);
        self.0.held.store(held - n, Relaxed);
    }

    /// A zeroed buffer of `len` bytes charged to this account, or why not.
    pub fn try_buf(&self, len: usize) -> Result<IoBuf, Short> {
        let charge_len = len.div_ceil(IoBuf::ALIGN) * IoBuf::ALIGN;
        self.reserve(charge_len)?;
        let charge = Charge {
            account: self.clone(),
            bytes: charge_len,
        };
        match IoBuf::try_new(len) {
            Some(buf) => Ok(buf.with_charge(charge)),
            None => {
                // The heap said no though the budget had room
                // (fragmentation): wait if anything is out, else give up.
                drop(charge);
                if self.0.budget.used() > 0 {
                    Err(Short::Wait)
                } else {
                    Err(Short::Never)
                }
            }
        }
    }
}

/// Bytes of a budget held by a buffer; released when dropped.
pub struct Charge {
    account: Account,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.account.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_charge_and_release() {
        let b = Budget::new(1 << 20, 4);
        let a = b.account();
        let buf = a.try_buf(1000).unwrap();
        assert_eq!((a.held(), b.used()), (1024, 1024));
        drop(buf);
        assert_eq!((a.held(), b.used(), b.high_water()), (0, 0, 1024));
    }

    #[test]
    fn a_hog_keeps_only_its_share_and_newcomers_get_their_floor() {
        let b = Budget::new(8 << 20, 8);
        // Floors 512 KiB each, pool 4 MiB, at most 1 MiB of it per account.
        assert_eq!(
            (b.floor(), b.max_hold()),
            (512 << 10, (512 << 10) + (1 << 20))
        );
        let hogs: alloc::vec::Vec<Account> = (0..6).map(|_| b.account()).collect();
        let mut held = alloc::vec::Vec::new();
        for h in &hogs {
            while let Ok(buf) = h.try_buf(64 << 10) {
                held.push(buf);
            }
        }
        // Four hogs drained the pool; the rest kept their floors.
        assert!(b.used() <= b.limit());
        let newcomer = b.account();
        let mine: alloc::vec::Vec<IoBuf> = (0..8)
            .map(|_| newcomer.try_buf(64 << 10).unwrap())
            .collect();
        assert_eq!(newcomer.try_buf(64 << 10).unwrap_err(), Short::Wait);
        drop(mine);
        assert_eq!(newcomer.held(), 0);
        // Larger than any account may hold: never.
        assert_eq!(
            newcomer.try_buf(b.max_hold() + 1).unwrap_err(),
            Short::Never
        );
        drop(held);
        assert_eq!((b.used(), b.0.shared.load(Relaxed)), (0, 0));
    }
}
