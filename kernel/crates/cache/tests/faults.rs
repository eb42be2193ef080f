//! A source that fails requests: errors reach the caller, a failed fill
//! is never served, and once the source heals the cache serves exactly
//! what the source holds.

mod common;

use common::{Expect, GARBAGE, MODES, Rig, Setup, data, range};
use ironbay_bdev::{IoOp, IoStatus, Rng};
use ironbay_cache::Mode;

#[test]
fn random_failures_never_leave_stale_or_garbage_data() {
    for mode in MODES {
        for (seed, hold) in [(1u64, 0u64), (2, 2), (3, 1)] {
            let setup = Setup::new(mode);
            let mut rig = Rig::new(&setup, |d| {
                d.hold = hold;
                let mut r = Rng::new(seed * 77);
                d.fail = Some(Box::new(move |_| r.below(8) == 0));
            });
            let (size, bs) = (setup.size(), setup.bs as u64);
            let mut exp = Expect::new(size);
            let mut rng = Rng::new(seed);
            let mut failed = 0;
            for i in 0..800 {
                let what = format!("{mode:?} seed {seed} op {i}");
                let (off, len) = range(&mut rng, size, bs, 16 << 10);
                match rng.below(10) {
                    0..=3 => match rig.read(off, len as usize) {
                        Ok(got) => exp.check(off, &got, &what),
                        Err(_) => failed += 1,
                    },
                    4..=7 => {
                        let bytes = data(&mut rng, len as usize);
                        if rig.write(off, &bytes, rng.below(5) == 0).is_ok() {
                            exp.write(off, &bytes);
                        } else {
                            exp.forget(off, len);
                            failed += 1;
                        }
                    }
                    8 => {
                        let _ = rig.flush();
                    }
                    _ => {
                        let op = IoOp::Unmap {
                            lba: off / bs,
                            blocks: (len / bs) as u32,
                        };
                        if rig.run(op, false).status.is_ok() {
                            exp.zero(off, len);
                        } else {
                            exp.forget(off, len);
                        }
                    }
                }
            }
            assert!(failed > 10, "{mode:?}: few failures ({failed})");
            if mode == Mode::WriteBack {
                assert!(rig.stats().errors > 0, "no write-back failed");
            }
            rig.src(|d| d.fail = None);
            rig.write_back_all().expect("healed");
            let seen = rig.read(0, size as usize).unwrap();
            exp.check(0, &seen, "after healing");
            assert!(
                seen == rig.peek(0, size as usize),
                "{mode:?} seed {seed}: the cache serves data the source lacks"
            );
        }
    }
}

#[test]
fn a_failed_fill_is_never_served() {
    for mode in [Mode::WriteThrough, Mode::WriteAround] {
        let mut rig = Rig::new(&Setup::new(mode), |d| {
            d.fill(0, &[4u8; 8192]);
            d.fail = Some(Box::new(|op| matches!(op, IoOp::Read { .. })));
        });
        assert_eq!(rig.read(0, 8192), Err(IoStatus::DeviceError(1)));
        let s = rig.stats();
        assert_eq!((s.cache_writes, s.num_free_blocks), (0, s.num_blocks));
        rig.src(|d| d.fail = None);
        let got = rig.read(0, 8192).unwrap();
        assert!(!got.contains(&GARBAGE));
        assert_eq!(got, vec![4u8; 8192]);
        assert_eq!(rig.stats().cache_hits, 0, "refilled, not served");
        assert_eq!(rig.read(0, 8192).unwrap(), vec![4u8; 8192]);
        assert_eq!(rig.stats().cache_hits, 2);
    }
}

#[test]
fn a_failed_write_leaves_no_new_data_in_the_cache() {
    for mode in MODES {
        let mut rig = Rig::new(&Setup::new(mode), |d| d.fill(0, &[1u8; 4096]));
        assert_eq!(rig.read(0, 4096).unwrap(), vec![1u8; 4096]);
        rig.src(|d| d.fail = Some(Box::new(|op| matches!(op, IoOp::Write { .. }))));
        // FUA: the write must reach the source, so it fails everywhere.
        let st = rig.write(0, &[2u8; 4096], true);
        assert_eq!(st, IoStatus::DeviceError(1), "{mode:?}");
        let seen = rig.read(0, 4096).unwrap();
        match mode {
            // Write-back keeps the data in RAM, to write back later.
            Mode::WriteBack => assert_eq!(seen, vec![2u8; 4096]),
            _ => assert_eq!(seen, rig.peek(0, 4096), "{mode:?}: stale copy"),
        }
        rig.src(|d| d.fail = None);
        rig.write_back_all().unwrap();
        assert_eq!(rig.read(0, 4096).unwrap(), rig.peek(0, 4096));
    }
}
