//! Blocking I/O on a device the caller owns outright (a claimed base under a
//! volume store, a configuration area): submit one request and poll until it
//! ends. Metadata paths use it; the data path never does.
//!
//! Completions of other requests that arrive meanwhile are handed to the
//! caller's `others`, so a stacked device can keep its data I/O in flight
//! while it writes metadata.

use crate::buf::IoBuf;
use crate::types::{BlockDevice, IoCompletion, IoOp, IoRequest, IoStatus};
use alloc::vec::Vec;

/// The tag blocking requests carry; stacked devices keep it out of their own
/// tag space.
pub const SYNC_TAG: u64 = u64::MAX;

/// Longest wait for one request before the device counts as failed.
const DEADLINE_US: u64 = 60_000_000;

/// The caller's clock, in microseconds.
pub type Clock<'a> = &'a mut dyn FnMut() -> u64;

/// Runs `op` to completion. Returns the buffer (for reads and writes).
pub fn run(
    dev: &mut dyn BlockDevice,
    op: IoOp,
    fua: bool,
    clock: Clock<'_>,
    others: &mut Vec<IoCompletion>,
) -> Result<Option<IoBuf>, IoStatus> {
    let start = clock();
    let mut req = IoRequest {
        tag: SYNC_TAG,
        op,
        fua,
    };
    let mut done = Vec::new();
    loop {
        match dev.submit(req, clock()) {
            Ok(()) => break,
            Err(back) => {
                req = back;
                // Queue full: let earlier requests finish first.
                done.clear();
                dev.poll(clock(), &mut done);
                others.append(&mut done);
                if clock().saturating_sub(start) > DEADLINE_US {
                    return Err(IoStatus::Timeout);
                }
            }
        }
    }
    loop {
        done.clear();
        dev.poll(clock(), &mut done);
        let mut mine = None;
        for c in done.drain(..) {
            if c.tag == SYNC_TAG && mine.is_none() {
                mine = Some(c);
            } else {
                others.push(c);
            }
        }
        if let Some(c) = mine {
            return if c.status.is_ok() {
                Ok(c.buf)
            } else {
                Err(c.status)
            };
        }
        if clock().saturating_sub(start) > DEADLINE_US {
            return Err(IoStatus::Timeout);
        }
    }
}

/// Reads `len` bytes at `lba`.
pub fn read(
    dev: &mut dyn BlockDevice,
    lba: u64,
    len: usize,
    clock: Clock<'_>,
    others: &mut Vec<IoCompletion>,
) -> Result<IoBuf, IoStatus> {
    let buf = IoBuf::try_new(len).ok_or(IoStatus::NoMemory)?;
    run(dev, IoOp::Read { lba, buf }, false, clock, others)?.ok_or(IoStatus::DeviceFailed)
}

/// Reads into `out` (a whole number of blocks) at `lba`, split to the
/// device's largest transfer.
pub fn read_into(
    dev: &mut dyn BlockDevice,
    lba: u64,
    out: &mut [u8],
    clock: Clock<'_>,
    others: &mut Vec<IoCompletion>,
) -> Result<(), IoStatus> {
    let bs = dev.info().block_size as usize;
    let chunk = (dev.info().max_transfer as usize / bs).max(1) * bs;
    let mut buf: Option<IoBuf> = None;
    for (i, part) in out.chunks_mut(chunk).enumerate() {
        let b = match buf.take() {
            Some(mut b) if b.capacity() >= part.len() => {
                b.set_len(part.len());
                b
            }
            _ => IoBuf::try_new(part.len()).ok_or(IoStatus::NoMemory)?,
        };
        let at = lba + (i * chunk / bs) as u64;
        let b = run(dev, IoOp::Read { lba: at, buf: b }, false, clock, others)?
            .ok_or(IoStatus::DeviceFailed)?;
        part.copy_from_slice(b.as_slice());
        buf = Some(b);
    }
    Ok(())
}

/// Writes `data` (a whole number of blocks) at `lba`, split to the device's
/// largest transfer.
pub fn write(
    dev: &mut dyn BlockDevice,
    lba: u64,
    data: &[u8],
    clock: Clock<'_>,
    others: &mut Vec<IoCompletion>,
) -> Result<(), IoStatus> {
    let bs = dev.info().block_size as usize;
    let chunk = (dev.info().max_transfer as usize / bs).max(1) * bs;
    let mut buf: Option<IoBuf> = None;
    for (i, part) in data.chunks(chunk).enumerate() {
        let mut b = match buf.take() {
            Some(mut b) if b.capacity() >= part.len() => {
                b.set_len(part.len());
                b
            }
            _ => IoBuf::try_new(part.len()).ok_or(IoStatus::NoMemory)?,
        };
        b.as_mut_slice().copy_from_slice(part);
        let at = lba + (i * chunk / bs) as u64;
        buf = run(dev, IoOp::Write { lba: at, buf: b }, false, clock, others)?;
    }
    Ok(())
}

/// Makes earlier writes durable (nothing to do on a device without a
/// volatile cache).
pub fn flush(
    dev: &mut dyn BlockDevice,
    clock: Clock<'_>,
    others: &mut Vec<IoCompletion>,
) -> Result<(), IoStatus> {
    let info = dev.info();
    if !info.write_cache || !info.io_types.contains(crate::IoType::Flush) {
        return Ok(());
    }
    run(dev, IoOp::Flush, false, clock, others).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MallocBdev;

    #[test]
    fn round_trip_keeps_other_completions() {
        let mut dev = MallocBdev::new("m", 64, 512);
        let mut t = 0u64;
        let mut clock = || {
            t += 1;
            t
        };
        let mut others = Vec::new();
        let data: Vec<u8> = (0..2048u32).map(|i| i as u8).collect();
        // A request of the caller's own is in flight meanwhile.
        dev.submit(
            IoRequest {
                tag: 7,
                op: IoOp::Flush,
                fua: false,
            },
            0,
        )
        .unwrap();
        write(&mut dev, 3, &data, &mut clock, &mut others).unwrap();
        let back = read(&mut dev, 3, 2048, &mut clock, &mut others).unwrap();
        assert_eq!(back.as_slice(), &data[..]);
        assert_eq!(others.len(), 1);
        assert_eq!(others[0].tag, 7);
        flush(&mut dev, &mut clock, &mut others).unwrap();
    }
}
