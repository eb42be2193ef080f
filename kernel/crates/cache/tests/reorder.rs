//! Many requests in flight at once over a source that delays, reverses
//! and refuses: data stays right in every mode, write-back included with
//! writes racing their own write-back, and a flush covers every write
//! that ended before it came.

mod common;

use common::{Expect, MODES, Rig, Setup, data, range};
use ironbay_bdev::{IoBuf, IoCompletion, IoOp, Rng};
use ironbay_cache::Mode;
use std::collections::HashMap;

enum Kind {
    Read(u64),
    Write(u64, Vec<u8>),
    Zero(u64, u64),
    /// Expected data when it came, and the byte ranges requests in flight
    /// then or since may have changed.
    Flush(Vec<u8>, Vec<(u64, u64)>),
}

struct Load {
    rig: Rig,
    exp: Expect,
    flight: HashMap<u64, Kind>,
    /// Byte ranges of requests in flight (no two data requests overlap).
    busy: Vec<(u64, u64, u64)>,
    what: String,
}

impl Load {
    fn overlaps(&self, a: u64, b: u64) -> bool {
        self.busy.iter().any(|&(x, y, _)| x < b && a < y)
    }

    /// Bytes a later request may change are no longer a flush's business.
    fn unsettle(&mut self, a: u64, b: u64) {
        for k in self.flight.values_mut() {
            if let Kind::Flush(_, moved) = k {
                moved.push((a, b));
            }
        }
    }

    fn done(&mut self, c: IoCompletion) {
        let k = self.flight.remove(&c.tag).expect("a tag of ours");
        self.busy.retain(|&(_, _, t)| t != c.tag);
        assert!(c.status.is_ok(), "{}: {:?}", self.what, c.status);
        match k {
            Kind::Read(off) => {
                let buf = c.buf.expect("read buffer");
                self.exp.check(off, buf.as_slice(), &self.what);
            }
            Kind::Write(off, bytes) => self.exp.write(off, &bytes),
            Kind::Zero(off, len) => self.exp.zero(off, len),
            Kind::Flush(snap, mut moved) => {
                let src = self.rig.peek(0, snap.len());
                moved.sort();
                moved.push((snap.len() as u64, snap.len() as u64));
                let mut at = 0;
                for (a, b) in moved {
                    let (x, y) = (at as usize, (a as usize).max(at as usize));
                    assert!(
                        src[x..y] == snap[x..y],
                        "{}: bytes {x}..{y} not all on the source after a flush",
                        self.what
                    );
                    at = at.max(b);
                }
            }
        }
    }
}

fn concurrent(setup: Setup, seed: u64, hold: u64, reverse: bool, hot: u64) {
    let rig = Rig::new(&setup, |d| {
        d.hold = hold;
        d.reverse = reverse;
        d.depth = 4;
    });
    let (size, bs) = (setup.size(), setup.bs as u64);
    let mut l = Load {
        rig,
        exp: Expect::new(size),
        flight: HashMap::new(),
        busy: Vec::new(),
        what: String::new(),
    };
    let mut rng = Rng::new(seed);
    for step in 0..1500 {
        l.what = format!("{setup:?} seed {seed} hold {hold} step {step}");
        for _ in 0..3 {
            if l.flight.len() >= 10 {
                break;
            }
            let (off, len) = range(&mut rng, hot.min(size), bs, 16 << 10);
            let kind = rng.below(12);
            if kind == 11 {
                let moved = l.busy.iter().map(|&(a, b, _)| (a, b)).collect();
                let tag = l.rig.submit(IoOp::Flush, false);
                l.flight.insert(tag, Kind::Flush(l.exp.data.clone(), moved));
                continue;
            }
            if l.overlaps(off, off + len) {
                continue;
            }
            let lba = off / bs;
            let (op, k, fua) = match kind {
                0..=4 => (
                    IoOp::Read {
                        lba,
                        buf: IoBuf::new(len as usize),
                    },
                    Kind::Read(off),
                    false,
                ),
                5..=9 => {
                    let bytes = data(&mut rng, len as usize);
                    let mut buf = IoBuf::new(len as usize);
                    buf.as_mut_slice().copy_from_slice(&bytes);
                    let fua = rng.below(8) == 0;
                    (IoOp::Write { lba, buf }, Kind::Write(off, bytes), fua)
                }
                _ => {
                    let blocks = (len / bs) as u32;
                    let op = match rng.below(2) {
                        0 => IoOp::Unmap { lba, blocks },
                        _ => IoOp::WriteZeroes { lba, blocks },
                    };
                    (op, Kind::Zero(off, len), false)
                }
            };
            if !matches!(k, Kind::Read(_)) {
                l.unsettle(off, off + len);
            }
            let tag = l.rig.submit(op, fua);
            l.busy.push((off, off + len, tag));
            l.flight.insert(tag, k);
        }
        for c in l.rig.poll() {
            l.done(c);
        }
    }
    for c in l.rig.settle() {
        l.done(c);
    }
    assert!(l.flight.is_empty());
    let refused = l.rig.src(|d| d.refused);
    assert!(hold == 0 || refused > 0, "the source never pushed back");
    l.rig.write_back_all().expect("write back");
    assert!(
        l.rig.peek(0, size as usize) == l.exp.data,
        "{}: source",
        l.what
    );
    let all = l.rig.read(0, size as usize).unwrap();
    l.exp.check(0, &all, "final read");
    assert_eq!(l.rig.dirty(), 0);
}

#[test]
fn out_of_order_source_keeps_data_right() {
    for mode in MODES {
        for (seed, hold, reverse) in [(1, 0, true), (2, 3, true), (3, 7, false)] {
            concurrent(Setup::new(mode), seed, hold, reverse, u64::MAX);
        }
    }
}

#[test]
fn hot_blocks_race_their_write_back() {
    for mode in MODES {
        let setup = Setup {
            ram_blocks: 16,
            ..Setup::new(mode)
        };
        // 24 KiB of hot data over a 16-block cache.
        concurrent(setup, 7, 4, true, 24 << 10);
    }
    // A write-back cache roomy enough that nothing falls through to the
    // source: every write races write-backs of the same blocks.
    let setup = Setup {
        ram_blocks: 64,
        assoc: 64,
        ..Setup::new(Mode::WriteBack)
    };
    concurrent(setup, 8, 5, true, 16 << 10);
}

/// Overlapping requests in flight: their results are the block layer's
/// "any order", but afterwards what the cache serves must be what the
/// source holds (no stale fill, no block marked clean that is not).
fn overlapping(setup: Setup, seed: u64, hold: u64) {
    let mut rig = Rig::new(&setup, |d| {
        d.hold = hold;
        d.reverse = seed.is_multiple_of(2);
        d.depth = 5;
    });
    let (size, bs) = (setup.size(), setup.bs as u64);
    let hot = 32 << 10;
    let mut rng = Rng::new(seed);
    let mut flight = 0usize;
    for step in 0..3000 {
        for _ in 0..2 {
            if flight >= 10 {
                break;
            }
            let (off, len) = range(&mut rng, hot, bs, 12 << 10);
            let lba = off / bs;
            let (op, fua) = match rng.below(10) {
                0..=3 => {
                    let buf = IoBuf::new(len as usize);
                    (IoOp::Read { lba, buf }, false)
                }
                4..=8 => {
                    let mut buf = IoBuf::new(len as usize);
                    buf.as_mut_slice()
                        .copy_from_slice(&data(&mut rng, len as usize));
                    (IoOp::Write { lba, buf }, rng.below(4) == 0)
                }
                _ => {
                    let blocks = (len / bs) as u32;
                    (IoOp::Unmap { lba, blocks }, false)
                }
            };
            rig.submit(op, fua);
            flight += 1;
        }
        for c in rig.poll() {
            assert!(c.status.is_ok(), "{:?}", c.status);
            flight -= 1;
        }
        if step % 300 == 299 {
            flight -= rig.settle().len();
            assert_eq!(flight, 0);
            rig.write_back_all().expect("write back");
            let seen = rig.read(0, size as usize).unwrap();
            let src = rig.peek(0, size as usize);
            let bad = (0..size as usize).find(|&i| seen[i] != src[i]);
            assert!(
                bad.is_none(),
                "{setup:?} seed {seed} step {step}: cache serves byte {bad:?} (block {:?}) unlike the source",
                bad.map(|b| b / 4096)
            );
        }
    }
}

#[test]
fn overlapping_requests_leave_the_cache_consistent() {
    for mode in MODES {
        for (seed, hold) in [(1, 2), (2, 3), (3, 1)] {
            let setup = Setup {
                ram_blocks: 8,
                assoc: 8,
                ..Setup::new(mode)
            };
            overlapping(setup, seed, hold);
        }
    }
}
