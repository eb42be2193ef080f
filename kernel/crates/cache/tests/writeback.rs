//! Write-back: data stays in RAM until written back, flushes and FUA
//! writes put it on the source, reads merge RAM and source, a full cache
//! writes through, and `write_back_all` drains everything without losing
//! other completions.

mod common;

use common::{Rig, Setup};
use ironbay_bdev::{IoBuf, IoOp, IoStatus};
use ironbay_cache::{Mode, WRITEBACK_DEPTH};

fn setup(ram_blocks: u64) -> Setup {
    Setup {
        ram_blocks,
        assoc: 512,
        ..Setup::new(Mode::WriteBack)
    }
}

fn block(v: u8) -> Vec<u8> {
    vec![v; 4096]
}

/// Polls until `f` holds (or fails the test).
fn poll_until(rig: &mut Rig, mut f: impl FnMut(&mut Rig) -> bool) {
    for _ in 0..10_000 {
        if f(rig) {
            return;
        }
        let got = rig.poll();
        assert!(got.is_empty(), "unexpected completions");
    }
    panic!("condition never held");
}

#[test]
fn writes_stay_in_ram_until_written_back() {
    let mut rig = Rig::new(&setup(16), |d| d.hold = 2);
    let data: Vec<u8> = (0..16384u32).map(|i| (i % 251) as u8 + 1).collect();
    let mut buf = IoBuf::new(data.len());
    buf.as_mut_slice().copy_from_slice(&data);
    let tag = rig.submit(IoOp::Write { lba: 8, buf }, false);
    assert_eq!(rig.peek(4096, 16384), vec![0; 16384], "before any poll");
    let c = rig.poll().pop().expect("completes from RAM");
    assert_eq!((c.tag, c.status), (tag, IoStatus::Success));
    // Write-back started but the source has not run it yet.
    assert_eq!(rig.peek(4096, 16384), vec![0; 16384]);
    let s = rig.stats();
    assert_eq!(
        (rig.dirty(), s.num_wb_blocks, s.num_free_blocks),
        (4, 4, 12)
    );
    assert_eq!(rig.read(4096, 16384).unwrap(), data, "served from RAM");
    poll_until(&mut rig, |r| r.dirty() == 0);
    assert_eq!(rig.peek(4096, 16384), data);
    let s = rig.stats();
    assert_eq!((s.num_wb_blocks, s.num_free_blocks, s.errors), (0, 16, 0));
    // Clean blocks still serve reads.
    let reads = rig.src(|d| d.reads);
    assert_eq!(rig.read(4096, 16384).unwrap(), data);
    assert_eq!(rig.src(|d| d.reads), reads);
}

#[test]
fn dirty_set_is_exact_while_the_source_holds_writes() {
    let big = Setup {
        src_blocks: 2048,
        ..setup(64)
    };
    let mut rig = Rig::new(&big, |d| d.gate_writes = true);
    // 40 blocks, every other one, so no request covers two.
    for b in 0..40u64 {
        assert!(rig.write(b * 8192, &block(b as u8 + 1), false).is_ok());
    }
    rig.poll();
    let s = rig.stats();
    assert_eq!(rig.dirty(), 40);
    assert_eq!(s.num_wb_blocks, WRITEBACK_DEPTH as u64);
    assert_eq!((s.num_blocks, s.num_free_blocks), (64, 24));
    // Rewrites, some of blocks under write-back: still 40 dirty blocks.
    for b in [0u64, 5, 39] {
        assert!(rig.write(b * 8192, &block(0xa0 + b as u8), false).is_ok());
    }
    assert_eq!(rig.dirty(), 40);
    assert_eq!(rig.read(0, 4096).unwrap(), block(0xa0), "newest data");
    assert_eq!(rig.peek(0, 40 * 8192), vec![0; 40 * 8192]);
    // A flush waits for all of it.
    let flush = rig.submit(IoOp::Flush, false);
    for _ in 0..20 {
        assert!(rig.poll().is_empty(), "flush completed with data held");
    }
    rig.src(|d| d.gate_writes = false);
    let mut done = false;
    for _ in 0..1000 {
        if rig
            .poll()
            .iter()
            .any(|c| c.tag == flush && c.status.is_ok())
        {
            done = true;
            break;
        }
    }
    assert!(done, "flush never completed");
    assert_eq!(rig.dirty(), 0);
    assert!(rig.src(|d| d.flushes) >= 1, "the source was not flushed");
    for b in 0..40u64 {
        let want = match b {
            0 | 5 | 39 => block(0xa0 + b as u8),
            _ => block(b as u8 + 1),
        };
        assert_eq!(rig.peek(b * 8192, 4096), want, "block {b}");
    }
}

#[test]
fn a_flush_waits_only_for_older_data_and_fails_with_the_source() {
    // Writes to the second cache block keep failing.
    let mut rig = Rig::new(&setup(16), |d| {
        d.fail = Some(Box::new(|op| matches!(op, IoOp::Write { lba: 8, .. })));
    });
    assert!(rig.write(0, &block(1), false).is_ok());
    let first = rig.submit(IoOp::Flush, false);
    let tag = rig.submit(
        IoOp::Write {
            lba: 8,
            buf: {
                let mut b = IoBuf::new(4096);
                b.as_mut_slice().fill(2);
                b
            },
        },
        false,
    );
    let second = rig.submit(IoOp::Flush, false);
    let mut got = Vec::new();
    for _ in 0..100 {
        got.extend(rig.poll());
    }
    let status = |t| got.iter().find(|c| c.tag == t).map(|c| c.status);
    assert_eq!(status(tag), Some(IoStatus::Success), "the write is in RAM");
    assert_eq!(status(first), Some(IoStatus::Success), "not held up");
    assert_eq!(status(second), Some(IoStatus::DeviceError(1)));
    assert_eq!(rig.peek(0, 4096), block(1));
    let s = rig.stats();
    assert!(s.errors >= 1);
    assert_eq!(rig.dirty(), 1, "the failed block stays dirty");
    assert_eq!(rig.read(4096, 4096).unwrap(), block(2));
    // Backing off: no source write while time stands still.
    let writes = rig.src(|d| d.writes);
    let now = rig.now;
    for _ in 0..50 {
        let mut out = Vec::new();
        rig.reg.poll(now, &mut out);
    }
    assert!(rig.src(|d| d.writes) <= writes + 1, "write-back spins");
    assert_eq!(rig.write_back_all(), Err(IoStatus::DeviceError(1)));
    assert_eq!(rig.dirty(), 1);
    rig.src(|d| d.fail = None);
    assert_eq!(rig.write_back_all(), Ok(()));
    assert_eq!((rig.dirty(), rig.peek(4096, 4096)), (0, block(2)));
}

#[test]
fn fua_writes_are_on_the_source_when_they_complete() {
    let mut rig = Rig::new(&setup(16), |d| d.hold = 3);
    assert!(rig.write(0, &block(1), true).is_ok());
    assert_eq!(rig.peek(0, 4096), block(1));
    assert_eq!(rig.dirty(), 0, "a whole block written through is clean");
    // A partial FUA write over a dirty block: those bytes on the source,
    // the block still dirty for the rest.
    rig.src(|d| d.gate_writes = true);
    assert!(rig.write(8192, &block(2), false).is_ok());
    rig.src(|d| d.gate_writes = false);
    let tag = rig.submit(
        IoOp::Write {
            lba: 17,
            buf: {
                let mut b = IoBuf::new(512);
                b.as_mut_slice().fill(3);
                b
            },
        },
        true,
    );
    loop {
        if rig.poll().iter().any(|c| c.tag == tag) {
            break;
        }
    }
    assert_eq!(rig.peek(8704, 512), vec![3; 512]);
    let mut want = block(2);
    want[512..1024].fill(3);
    assert_eq!(rig.read(8192, 4096).unwrap(), want);
    rig.write_back_all().unwrap();
    assert_eq!(rig.peek(8192, 4096), want);
}

#[test]
fn reads_merge_ram_and_source_and_see_the_newest_data() {
    let mut rig = Rig::new(&setup(16), |d| {
        d.fill(0, &[9u8; 16384]);
        d.gate_writes = true;
    });
    assert!(rig.write(4096, &block(1), false).is_ok());
    rig.poll();
    // Block 1 is under write-back; write it again and read across.
    assert!(rig.write(4096, &block(2), false).is_ok());
    let mut want = vec![9u8; 16384];
    want[4096..8192].fill(2);
    // A partial read of blocks 0 and 2..4 from the source, 1 from RAM.
    assert_eq!(rig.read(1024, 14336).unwrap(), want[1024..15360]);
    rig.src(|d| d.gate_writes = false);
    rig.settle();
    assert_eq!(rig.dirty(), 0);
    assert_eq!(rig.peek(0, 16384), want, "the newer data won");
}

#[test]
fn a_full_cache_writes_through() {
    let mut rig = Rig::new(&setup(4), |d| d.gate_writes = true);
    for b in 0..4u64 {
        assert!(rig.write(b * 4096, &block(b as u8 + 1), false).is_ok());
    }
    assert_eq!(rig.dirty(), 4);
    // Nothing free or clean: this one goes to the (held) source.
    let mut buf = IoBuf::new(4096);
    buf.as_mut_slice().fill(5);
    let tag = rig.submit(IoOp::Write { lba: 32, buf }, false);
    for _ in 0..10 {
        assert!(rig.poll().is_empty());
    }
    rig.src(|d| d.gate_writes = false);
    let c = rig.settle();
    assert!(c.iter().any(|c| c.tag == tag && c.status.is_ok()));
    assert_eq!(rig.peek(16384, 4096), block(5));
    assert_eq!(rig.read(16384, 4096).unwrap(), block(5));
}

#[test]
fn write_back_all_keeps_other_completions() {
    let mut rig = Rig::new(&setup(32), |d| {
        d.hold = 3;
        d.fill(50 * 4096, &[7u8; 4096]);
    });
    for b in 0..20u64 {
        assert!(rig.write(b * 4096, &block(b as u8 + 1), false).is_ok());
    }
    let read = rig.submit(
        IoOp::Read {
            lba: 400,
            buf: IoBuf::new(4096),
        },
        false,
    );
    let unmap = rig.submit(IoOp::Unmap { lba: 0, blocks: 8 }, false);
    rig.write_back_all().unwrap();
    assert_eq!(rig.dirty(), 0);
    assert_eq!(rig.peek(0, 4096), vec![0; 4096]);
    for b in 1..20u64 {
        assert_eq!(rig.peek(b * 4096, 4096), block(b as u8 + 1));
    }
    let got = rig.poll();
    let r = got
        .iter()
        .find(|c| c.tag == read)
        .expect("the read's completion");
    assert_eq!(r.buf.as_ref().unwrap().as_slice(), &[7u8; 4096][..]);
    assert!(got.iter().any(|c| c.tag == unmap && c.status.is_ok()));
    assert_eq!(rig.reg.in_flight(rig.id), 0);
}
