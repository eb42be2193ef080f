//! Random request sequences, one request at a time, against the expected
//! data and (write-through, write-around) an independent model of
//! RapidDisk's counters; write-back against what its dirty set may be.

mod common;

use common::refcache::RefCache;
use common::{Expect, MODES, Rig, Setup, data, range};
use ironbay_bdev::{IoBuf, IoOp, Rng};
use ironbay_cache::{Mode, WRITEBACK_DEPTH};
use std::collections::BTreeSet;

fn run_model(setup: Setup, seed: u64, ops: usize) {
    let mut rig = Rig::new(&setup, |_| {});
    let (size, bs) = (setup.size(), setup.bs as u64);
    let mut rng = Rng::new(seed);
    let mut exp = Expect::new(size);
    let wb = setup.mode == Mode::WriteBack;
    let through = setup.mode == Mode::WriteThrough;
    let blocks = setup.ram_blocks as usize;
    let mut model = (!wb).then(|| RefCache::new(blocks, setup.assoc as usize, through));
    // Blocks written since the cache was last known clean.
    let mut touched = BTreeSet::new();
    let mut max_dirty = 0;
    for i in 0..ops {
        let what = format!("{setup:?} seed {seed} op {i}");
        let (off, len) = range(&mut rng, size, bs, 24 << 10);
        let kind = rng.below(20);
        match kind {
            0..=7 => {
                let got = rig.read(off, len as usize).expect("read");
                exp.check(off, &got, &what);
                if let Some(m) = &mut model {
                    m.read(off, len);
                }
            }
            8..=15 => {
                let bytes = data(&mut rng, len as usize);
                let fua = rng.below(6) == 0;
                assert!(rig.write(off, &bytes, fua).is_ok(), "{what}");
                exp.write(off, &bytes);
                if let Some(m) = &mut model {
                    m.write(off, len);
                }
                touched.extend(off / 4096..=(off + len - 1) / 4096);
                if fua {
                    assert_eq!(rig.peek(off, len as usize), bytes, "{what}: FUA");
                }
            }
            16 => {
                assert!(rig.flush().is_ok(), "{what}");
                if wb {
                    assert_eq!(rig.dirty(), 0, "{what}: dirty after a flush");
                    touched.clear();
                }
            }
            _ => {
                let lba = off / bs;
                let n = (len / bs) as u32;
                let op = match kind {
                    17 | 18 => IoOp::Unmap { lba, blocks: n },
                    _ => IoOp::WriteZeroes { lba, blocks: n },
                };
                assert!(rig.run(op, false).status.is_ok(), "{what}");
                exp.zero(off, len);
                if let Some(m) = &mut model {
                    m.discard(off, len);
                }
            }
        }
        let s = rig.stats();
        match &model {
            Some(m) => {
                assert_eq!(s, m.stats(), "{what}: counters");
                if i % 8 == 0 {
                    assert!(rig.peek(0, size as usize) == exp.data, "{what}: source");
                }
            }
            None => {
                let dirty = rig.dirty();
                max_dirty = max_dirty.max(dirty);
                assert!(dirty as usize <= touched.len(), "{what}: {dirty} dirty");
                assert_eq!(s.num_free_blocks, s.num_blocks - dirty, "{what}");
                assert!(
                    s.num_wb_blocks <= dirty.min(WRITEBACK_DEPTH as u64),
                    "{what}"
                );
                assert_eq!(s.errors, 0, "{what}");
                if i % 97 == 96 {
                    rig.write_back_all().expect("write back");
                    assert_eq!(rig.dirty(), 0);
                    assert!(rig.peek(0, size as usize) == exp.data, "{what}: source");
                    touched.clear();
                }
            }
        }
        let ways = (setup.assoc as usize).min(blocks);
        assert_eq!(s.num_blocks, (blocks / ways * ways) as u64, "{what}");
    }
    // The sequence exercised what it is for.
    let s = rig.stats();
    match &model {
        Some(_) => {
            assert!(s.cache_hits > 0 && s.replacement > 0, "{s:?}");
            // Only sub-4 KiB blocks make partial pieces.
            let partial = bs < 4096;
            assert_eq!(
                s.uncached_reads > 0 && s.read_invalidates > 0,
                partial,
                "{s:?}"
            );
            if through {
                assert!(s.write_replacement > 0, "{s:?}");
            }
        }
        None => assert!(max_dirty > 1, "write-back never held dirty data"),
    }
    // Everything reads back, and the source ends up with it.
    let step = setup.bs as u64 * 16;
    let mut at = 0;
    while at < size {
        let n = step.min(size - at);
        let got = rig.read(at, n as usize).unwrap();
        exp.check(at, &got, "final read");
        at += n;
    }
    rig.write_back_all().unwrap();
    assert!(rig.peek(0, size as usize) == exp.data, "final source");
    assert_eq!(rig.reg.in_flight(rig.id), 0);
}

#[test]
fn sub_block_requests_over_a_small_cache() {
    for mode in MODES {
        for seed in 1..=3 {
            run_model(Setup::new(mode), seed, 700);
        }
    }
}

#[test]
fn four_kib_source_fully_associative() {
    for mode in MODES {
        let setup = Setup {
            bs: 4096,
            src_blocks: 64,
            ram_blocks: 8,
            assoc: 512,
            ..Setup::new(mode)
        };
        run_model(setup, 11, 700);
    }
}

#[test]
fn source_size_not_a_whole_number_of_cache_blocks() {
    for mode in MODES {
        let setup = Setup {
            src_blocks: 509,
            ram_blocks: 6,
            assoc: 2,
            ..Setup::new(mode)
        };
        run_model(setup, 5, 700);
    }
}

#[test]
fn hits_and_counts_as_rapiddisk() {
    // One set of two ways, a 4 KiB-aligned read pattern: known counters.
    let setup = Setup {
        ram_blocks: 2,
        assoc: 2,
        ..Setup::new(Mode::WriteThrough)
    };
    let mut rig = Rig::new(&setup, |_| {});
    for b in [0u64, 1, 0, 2, 1, 0] {
        rig.read(b * 4096, 4096).unwrap();
    }
    let s = rig.stats();
    // 0 miss, 1 miss, 0 hit, 2 evicts 0, 1 hit, 0 evicts 1.
    assert_eq!((s.reads, s.cache_hits, s.replacement), (6, 2, 2));
    assert_eq!((s.disk_reads, s.cache_writes, s.cache_reads), (4, 4, 2));
    // A 16 KiB read counts four pieces; a partial one drops the copy.
    rig.read(0, 16384).unwrap();
    rig.read(512, 512).unwrap();
    let s = rig.stats();
    assert_eq!((s.reads, s.read_invalidates, s.uncached_reads), (11, 1, 3));
    // Write-through caches a written block; a partial write drops it.
    let w = rig.write(8192, &[7u8; 4096], false);
    assert!(w.is_ok());
    let s = rig.stats();
    assert_eq!((s.writes, s.disk_writes, s.write_invalidates), (1, 1, 0));
    let before = s.cache_hits;
    rig.read(8192, 4096).unwrap();
    assert_eq!(rig.stats().cache_hits, before + 1);
    assert!(rig.write(8192 + 1024, &[1u8; 512], false).is_ok());
    let s = rig.stats();
    assert_eq!((s.write_invalidates, s.uncached_writes), (1, 1));
    let buf = IoBuf::new(512);
    let c = rig.run(IoOp::Read { lba: 0, buf }, false);
    assert!(c.status.is_ok());
}
