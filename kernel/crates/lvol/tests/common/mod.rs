//! Shared test helpers: a clock, synchronous volume I/O, content digests.

#![allow(dead_code)]

use ironbay_bdev::{BlockDevice, IoBuf, IoCompletion, IoOp, IoRequest, IoStatus, SharedBdev};
use ironbay_lvol::LvolBdev;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

static NOW: AtomicU64 = AtomicU64::new(0);

pub fn clock() -> u64 {
    NOW.fetch_add(1, Ordering::Relaxed)
}

pub fn shared(dev: impl BlockDevice + 'static) -> SharedBdev {
    Rc::new(RefCell::new(Box::new(dev)))
}

/// Runs one request on a volume to completion.
pub fn io(b: &mut LvolBdev, op: IoOp) -> IoCompletion {
    b.submit(
        IoRequest {
            tag: 77,
            op,
            fua: false,
        },
        clock(),
    )
    .expect("volume takes requests");
    for _ in 0..1_000_000 {
        let mut out = Vec::new();
        b.poll(clock(), &mut out);
        if let Some(c) = out.pop() {
            assert_eq!(c.tag, 77);
            return c;
        }
    }
    panic!("request never completed");
}

/// Bytes with a recognisable pattern for `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 / 7) % 251) as u8)
        .collect()
}

pub fn write(b: &mut LvolBdev, lba: u64, data: &[u8]) -> IoStatus {
    let mut buf = IoBuf::new(data.len());
    buf.as_mut_slice().copy_from_slice(data);
    io(b, IoOp::Write { lba, buf }).status
}

pub fn read(b: &mut LvolBdev, lba: u64, len: usize) -> Result<Vec<u8>, IoStatus> {
    let c = io(
        b,
        IoOp::Read {
            lba,
            buf: IoBuf::new(len),
        },
    );
    if c.status.is_ok() {
        Ok(c.buf.expect("read returns its buffer").as_slice().to_vec())
    } else {
        Err(c.status)
    }
}

/// CRC32C of a whole volume's content.
pub fn digest(b: &mut LvolBdev) -> Result<u32, IoStatus> {
    let info = b.info().clone();
    let total = info.num_blocks * info.block_size as u64;
    let chunk = 64 * 1024u64;
    let mut crc = 0;
    let mut at = 0;
    while at < total {
        let n = chunk.min(total - at);
        let d = read(b, at / info.block_size as u64, n as usize)?;
        crc = ironbay_crc::crc32c_append(crc, &d);
        at += n;
    }
    Ok(crc)
}
