//! A RAM disk whose page pool runs dry: writes still succeed (through to
//! the source), reads stay right, in every mode.

mod common;

use common::{Expect, MODES, Rig, Setup, data, range};
use ironbay_bdev::{IoBuf, IoOp, Rng};
use ironbay_cache::Mode;

#[test]
fn writes_succeed_when_the_pool_is_empty() {
    for mode in MODES {
        for (seed, hold) in [(1u64, 0u64), (2, 3)] {
            let setup = Setup {
                ram_blocks: 64,
                assoc: 16,
                pool_pages: Some(3),
                ..Setup::new(mode)
            };
            let mut rig = Rig::new(&setup, |d| {
                d.hold = hold;
                d.reverse = true;
            });
            let (size, bs) = (setup.size(), setup.bs as u64);
            let mut exp = Expect::new(size);
            let mut rng = Rng::new(seed);
            for i in 0..400 {
                let what = format!("{mode:?} seed {seed} op {i}");
                if rng.below(10) == 0 {
                    // A burst of whole-block writes in flight together.
                    let first = rng.below(size / 4096 - 8);
                    let mut tags = Vec::new();
                    for b in first..first + 8 {
                        let bytes = data(&mut rng, 4096);
                        let mut buf = IoBuf::new(4096);
                        buf.as_mut_slice().copy_from_slice(&bytes);
                        let lba = b * 4096 / bs;
                        tags.push(rig.submit(IoOp::Write { lba, buf }, false));
                        exp.write(b * 4096, &bytes);
                    }
                    let done = rig.settle();
                    for t in tags {
                        let c = done.iter().find(|c| c.tag == t).expect("completion");
                        assert!(c.status.is_ok(), "{what}: {:?}", c.status);
                    }
                    continue;
                }
                let (off, len) = range(&mut rng, size, bs, 20 << 10);
                if rng.below(2) == 0 {
                    let bytes = data(&mut rng, len as usize);
                    let st = rig.write(off, &bytes, rng.below(8) == 0);
                    assert!(st.is_ok(), "{what}: {st:?}");
                    exp.write(off, &bytes);
                } else {
                    let got = rig.read(off, len as usize).unwrap();
                    exp.check(off, &got, &what);
                }
                let s = rig.stats();
                let held = s.num_blocks - s.num_free_blocks;
                assert!(held <= 3, "{what}: {held} blocks cached with 3 pages");
            }
            rig.write_back_all().unwrap();
            assert!(rig.peek(0, size as usize) == exp.data, "{mode:?}: source");
            let all = rig.read(0, size as usize).unwrap();
            exp.check(0, &all, "final read");
            let s = rig.stats();
            if mode == Mode::WriteThrough {
                assert!(s.cache_writes > 3, "fills were tried: {s:?}");
            }
        }
    }
}
