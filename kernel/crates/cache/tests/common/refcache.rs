//! An independent model of what RapidDisk's write-through / write-around
//! cache does with a sequence of requests, each run to completion, to say
//! what its counters must read. Device-mapper splits every request at
//! 4 KiB boundaries and submits the pieces in order before any ends; a
//! piece is "full" when it covers its whole 4 KiB block.

use ironbay_cache::Stats;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Slot {
    Free,
    Valid,
    /// A fill (source read, or write-through write) in flight.
    InProg,
    /// A hit whose RAM read is in flight.
    Reading,
}

pub struct RefCache {
    assoc: usize,
    sets: usize,
    tag: Vec<u64>,
    slot: Vec<Slot>,
    /// Per set: where the eviction sweep starts.
    next: Vec<usize>,
    through: bool,
    pub s: Stats,
}

/// (block, full) for each 4 KiB piece of `off..off + len`.
fn pieces(off: u64, len: u64) -> Vec<(u64, bool)> {
    let (first, last) = (off / 4096, (off + len - 1) / 4096);
    (first..=last)
        .map(|b| {
            let (s, e) = (b * 4096, b * 4096 + 4096);
            (b, off <= s && off + len >= e)
        })
        .collect()
}

impl RefCache {
    /// `blocks` cache blocks in sets of `assoc`; `through`: write-through
    /// (else write-around).
    pub fn new(blocks: usize, assoc: usize, through: bool) -> Self {
        let assoc = assoc.min(blocks);
        let sets = blocks / assoc;
        RefCache {
            assoc,
            sets,
            tag: vec![0; sets * assoc],
            slot: vec![Slot::Free; sets * assoc],
            next: vec![0; sets],
            through,
            s: Stats::default(),
        }
    }

    fn first_way(&self, b: u64) -> usize {
        (b as usize / self.assoc) % self.sets * self.assoc
    }

    fn lookup(&self, b: u64) -> Option<usize> {
        let f = self.first_way(b);
        (f..f + self.assoc).find(|&i| self.slot[i] != Slot::Free && self.tag[i] == b)
    }

    /// A free way, else the next valid one from the set's sweep position.
    fn take(&mut self, b: u64) -> Option<(usize, bool)> {
        let f = self.first_way(b);
        if let Some(i) = (f..f + self.assoc).find(|&i| self.slot[i] == Slot::Free) {
            return Some((i, false));
        }
        let set = f / self.assoc;
        let from = self.next[set];
        let mut pos = from;
        let mut found = None;
        for _ in 0..self.assoc {
            if self.slot[f + pos] == Slot::Valid {
                found = Some(f + pos);
                break;
            }
            pos = (pos + 1) % self.assoc;
        }
        self.next[set] = (pos + 1) % self.assoc;
        found.map(|i| (i, true))
    }

    pub fn read(&mut self, off: u64, len: u64) {
        let mut fills = Vec::new();
        let mut uncached = 0;
        for (b, full) in pieces(off, len) {
            self.s.reads += 1;
            self.s.disk_reads += 1;
            match (full, self.lookup(b)) {
                (false, found) => {
                    if let Some(i) = found {
                        self.slot[i] = Slot::Free;
                        self.s.read_invalidates += 1;
                    }
                    uncached += 1;
                }
                (true, Some(i)) => {
                    self.slot[i] = Slot::Reading;
                    self.s.cache_hits += 1;
                    self.s.cache_reads += 1;
                    self.s.disk_reads -= 1;
                }
                (true, None) => match self.take(b) {
                    Some((i, evicts)) => {
                        self.s.replacement += evicts as u64;
                        self.tag[i] = b;
                        self.slot[i] = Slot::InProg;
                        fills.push(i);
                    }
                    None => uncached += 1,
                },
            }
        }
        self.end(fills, uncached, true);
    }

    pub fn write(&mut self, off: u64, len: u64) {
        let mut fills = Vec::new();
        let mut uncached = 0;
        for (b, full) in pieces(off, len) {
            self.s.writes += 1;
            self.s.disk_writes += 1;
            if let Some(i) = self.lookup(b) {
                self.slot[i] = Slot::Free;
                self.s.write_invalidates += 1;
            }
            match (self.through && full).then(|| self.take(b)).flatten() {
                Some((i, evicts)) => {
                    self.s.write_replacement += evicts as u64;
                    self.tag[i] = b;
                    self.slot[i] = Slot::InProg;
                    fills.push(i);
                }
                None => uncached += 1,
            }
        }
        self.end(fills, uncached, false);
    }

    /// The request's pieces ended, all successfully.
    fn end(&mut self, fills: Vec<usize>, uncached: u64, read: bool) {
        for s in self.slot.iter_mut().filter(|s| **s == Slot::Reading) {
            *s = Slot::Valid;
        }
        for i in fills {
            self.s.cache_writes += 1;
            self.slot[i] = Slot::Valid;
        }
        if read {
            self.s.uncached_reads += uncached;
        } else {
            self.s.uncached_writes += uncached;
        }
    }

    /// Unmap or write-zeroes: every cached block it touches goes.
    pub fn discard(&mut self, off: u64, len: u64) {
        for (b, _) in pieces(off, len) {
            if let Some(i) = self.lookup(b) {
                self.slot[i] = Slot::Free;
                self.s.write_invalidates += 1;
            }
        }
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.s;
        s.num_blocks = self.slot.len() as u64;
        s.num_free_blocks = self.slot.iter().filter(|&&x| x != Slot::Valid).count() as u64;
        s
    }
}
