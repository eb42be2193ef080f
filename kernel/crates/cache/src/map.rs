//! The set-associative directory: which source block each cache slot holds
//! and in what state.
//!
//! Slots form sets of `assoc` ways, and `assoc` consecutive source blocks
//! share a set (RapidDisk's hash), so a sequential stream fills one set
//! before the next. A lookup scans the set's tags, as RapidDisk does; a
//! per-block index would cost 8 more bytes per slot for a scan of a few
//! KiB of contiguous tags.

use alloc::vec::Vec;
use ironbay_bdev::IoStatus;

/// The tag of a slot that holds nothing.
pub(crate) const NONE: u64 = u64::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Invalid,
    /// Holds the source's data.
    Clean,
    /// Holds data newer than the source's (write-back).
    Dirty,
    /// Reserved for data a source request in flight brings (RapidDisk's
    /// INPROG); serves nothing until filled.
    Filling,
    /// A hit of the request being planned (RapidDisk's CACHEREADINPROG):
    /// not evicted by that request's later pieces. Never outlives a submit.
    Reading,
}

impl State {
    /// Counted as cached (RapidDisk's VALID).
    pub(crate) fn holds_data(self) -> bool {
        matches!(self, State::Clean | State::Dirty | State::Reading)
    }
}

pub(crate) fn try_vec<T: Clone>(n: usize, v: T) -> Result<Vec<T>, IoStatus> {
    let mut out = Vec::new();
    out.try_reserve_exact(n).map_err(|_| IoStatus::NoMemory)?;
    out.resize(n, v);
    Ok(out)
}

pub(crate) struct Directory {
    assoc: usize,
    sets: usize,
    tags: Vec<u64>,
    states: Vec<State>,
    /// Per set: the way the next eviction sweep starts from.
    sweep: Vec<u32>,
    valid: u64,
}

impl Directory {
    /// `blocks` slots rounded down to whole sets of `assoc` ways (fewer
    /// ways when there are fewer blocks than `assoc`).
    pub(crate) fn new(blocks: u64, assoc: u32) -> Result<Self, IoStatus> {
        // Slot numbers travel as u32 in write-back links.
        let blocks = blocks.min(u32::MAX as u64 - 1) as usize;
        if blocks == 0 {
            return Err(IoStatus::NoSpace);
        }
        let assoc = (assoc as usize).clamp(1, blocks);
        let sets = blocks / assoc;
        let slots = sets * assoc;
        Ok(Directory {
            assoc,
            sets,
            tags: try_vec(slots, NONE)?,
            states: try_vec(slots, State::Invalid)?,
            sweep: try_vec(sets, 0)?,
            valid: 0,
        })
    }

    pub(crate) fn slots(&self) -> usize {
        self.tags.len()
    }

    pub(crate) fn assoc(&self) -> usize {
        self.assoc
    }

    /// Slots holding data.
    pub(crate) fn valid(&self) -> u64 {
        self.valid
    }

    fn set_start(&self, block: u64) -> usize {
        ((block / self.assoc as u64) % self.sets as u64) as usize * self.assoc
    }

    /// The slot tagged with `block`, in any state but Invalid.
    pub(crate) fn find(&self, block: u64) -> Option<usize> {
        let s = self.set_start(block);
        self.tags[s..s + self.assoc]
            .iter()
            .position(|&t| t == block)
            .map(|i| s + i)
    }

    pub(crate) fn state(&self, slot: usize) -> State {
        self.states.get(slot).copied().unwrap_or(State::Invalid)
    }

    pub(crate) fn tag(&self, slot: usize) -> u64 {
        self.tags.get(slot).copied().unwrap_or(NONE)
    }

    /// Gives `slot` to `block` in `state` (Invalid frees it).
    pub(crate) fn set(&mut self, slot: usize, block: u64, state: State) {
        let Some(st) = self.states.get_mut(slot) else {
            return;
        };
        if st.holds_data() {
            self.valid -= 1;
        }
        if state.holds_data() {
            self.valid += 1;
        }
        *st = state;
        self.tags[slot] = if state == State::Invalid { NONE } else { block };
    }

    pub(crate) fn set_state(&mut self, slot: usize, state: State) {
        self.set(slot, self.tag(slot), state);
    }

    /// A slot for `block`: the set's first free one, else the next clean
    /// one from the sweep (`true`: it evicts a cached block). `None`: every
    /// slot of the set is busy or dirty.
    pub(crate) fn victim(&mut self, block: u64) -> Option<(usize, bool)> {
        let s = self.set_start(block);
        if let Some(i) = self.tags[s..s + self.assoc].iter().position(|&t| t == NONE) {
            return Some((s + i, false));
        }
        self.reclaim(block).map(|i| (i, true))
    }

    /// The next clean slot of `block`'s set from the sweep pointer, which
    /// moves past it (or one way on when none is clean), so evictions go
    /// round the set like a FIFO.
    pub(crate) fn reclaim(&mut self, block: u64) -> Option<usize> {
        let s = self.set_start(block);
        let set = s / self.assoc;
        let from = self.sweep[set] as usize % self.assoc;
        let found = (0..self.assoc)
            .map(|k| (from + k) % self.assoc)
            .find(|&w| self.states[s + w] == State::Clean);
        self.sweep[set] = ((found.unwrap_or(from) + 1) % self.assoc) as u32;
        found.map(|w| s + w)
    }

    /// Visits every slot tagged with a block in `first..end`; those `keep`
    /// refuses are freed. Scans only the sets the range maps to.
    pub(crate) fn retain_in(
        &mut self,
        first: u64,
        end: u64,
        mut keep: impl FnMut(usize, u64, State) -> bool,
    ) {
        if first >= end {
            return;
        }
        let a = self.assoc as u64;
        let (c0, c1) = (first / a, (end - 1) / a);
        let mut visit = |d: &mut Self, slot: usize| {
            let t = d.tags[slot];
            if t != NONE && t >= first && t < end && !keep(slot, t, d.states[slot]) {
                d.set(slot, NONE, State::Invalid);
            }
        };
        if c1 - c0 + 1 >= self.sets as u64 {
            for slot in 0..self.slots() {
                visit(self, slot);
            }
        } else {
            // Fewer chunks than sets: each maps to a different set.
            for c in c0..=c1 {
                let s = (c % self.sets as u64) as usize * self.assoc;
                for slot in s..s + self.assoc {
                    visit(self, slot);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_first_then_sweep_over_clean_slots() {
        let mut d = Directory::new(8, 4).unwrap();
        assert_eq!((d.slots(), d.assoc()), (8, 4));
        // Blocks 0..4 share set 0, 4..8 set 1, 8..12 set 0 again.
        for b in 0..4 {
            let (s, evicts) = d.victim(b).unwrap();
            assert!(!evicts);
            d.set(s, b, State::Clean);
        }
        assert_eq!(d.find(2), Some(2));
        assert_eq!(d.find(6), None);
        assert_eq!(d.victim(8), Some((0, true)));
        d.set(0, 8, State::Clean);
        d.set_state(1, State::Dirty);
        // The sweep moved past way 0; way 1 is dirty, so way 2 goes.
        assert_eq!(d.victim(9), Some((2, true)));
        d.set(3, 3, State::Filling);
        d.set(2, 9, State::Dirty);
        d.set_state(0, State::Dirty);
        assert_eq!(d.victim(10), None);
        assert_eq!(d.valid(), 3);
    }

    #[test]
    fn retain_visits_only_the_range() {
        let mut d = Directory::new(12, 2).unwrap();
        for b in [0, 1, 2, 5, 11] {
            let (s, _) = d.victim(b).unwrap();
            d.set(s, b, State::Clean);
        }
        let mut seen = Vec::new();
        d.retain_in(1, 6, |_, t, _| {
            seen.push(t);
            t == 5
        });
        seen.sort();
        assert_eq!(seen, [1, 2, 5]);
        assert!(d.find(1).is_none() && d.find(5).is_some() && d.find(0).is_some());
        d.retain_in(0, u64::MAX - 1, |_, _, _| false);
        assert_eq!(d.valid(), 0);
    }
}
