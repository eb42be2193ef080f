//! Block self-test and benchmark runner.
//!
//! `test=blk` writes the shared test pattern ([`ironbay_bdev::pattern`]) over
//! every bdev's test extents, flushes, reads everything back and compares;
//! host tests then read the disks' backing files and check the same bytes.
//! `bench=...` runs benchmark jobs after ready.

use crate::storage::Storage;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use ironbay_bdev::bench::{Bench, BenchReport, BenchSpec};
use ironbay_bdev::pattern::{self, Fill};
use ironbay_bdev::{BdevId, IoBuf, IoOp, IoStatus, IoType};

const IO_TIMEOUT_US: u64 = 30_000_000;
/// Chunk for pattern I/O: large enough to need PRP lists, within every MDTS we meet.
const CHUNK: u64 = 256 * 1024;

fn io(s: &mut Storage, id: BdevId, op: IoOp) -> Result<Option<IoBuf>, String> {
    let what = format!("{:?} I/O", op.io_type());
    let c = s
        .run(id, op, IO_TIMEOUT_US)
        .ok_or_else(|| format!("{what} timed out"))?;
    match c.status {
        IoStatus::Success => Ok(c.buf),
        st => Err(format!("{what} failed: {st}")),
    }
}

/// Pattern round trip on one bdev. Returns how many extents were verified.
fn verify_bdev(s: &mut Storage, id: BdevId) -> Result<usize, String> {
    let info = s.bdevs.info(id).ok_or("bdev vanished")?.clone();
    let bs = info.block_size as u64;
    let chunk_blocks = (CHUNK.min(info.max_transfer as u64) / bs).max(1);
    let extents = pattern::extents(&info.name, info.num_blocks, info.block_size);
    // Write every extent with the pattern; zero the Zeroes ones afterwards.
    for e in &extents {
        let mut lba = e.lba;
        while lba < e.lba + e.blocks {
            let n = chunk_blocks.min(e.lba + e.blocks - lba);
            let mut buf = IoBuf::new((n * bs) as usize);
            pattern::fill(buf.as_mut_slice(), &info.name, lba, info.block_size);
            io(s, id, IoOp::Write { lba, buf })?;
            lba += n;
        }
        if e.fill == Fill::Zeroes {
            if info.io_types.contains(IoType::WriteZeroes)
                && e.blocks <= info.max_write_zeroes_blocks as u64
            {
                io(
                    s,
                    id,
                    IoOp::WriteZeroes {
                        lba: e.lba,
                        blocks: e.blocks as u32,
                    },
                )?;
            } else {
                io(
                    s,
                    id,
                    IoOp::Write {
                        lba: e.lba,
                        buf: IoBuf::new((e.blocks * bs) as usize),
                    },
                )?;
            }
        }
    }
    io(s, id, IoOp::Flush)?;
    for e in &extents {
        let mut lba = e.lba;
        while lba < e.lba + e.blocks {
            let n = chunk_blocks.min(e.lba + e.blocks - lba);
            let buf = io(
                s,
                id,
                IoOp::Read {
                    lba,
                    buf: IoBuf::new((n * bs) as usize),
                },
            )?
            .ok_or("read lost its buffer")?;
            let ok = match e.fill {
                Fill::Pattern => pattern::check(buf.as_slice(), &info.name, lba, info.block_size),
                Fill::Zeroes => buf
                    .as_slice()
                    .iter()
                    .position(|&b| b != 0)
                    .map_or(Ok(()), Err),
            };
            if let Err(off) = ok {
                return Err(format!(
                    "miscompare at LBA {} byte {}",
                    lba + off as u64 / bs,
                    off as u64 % bs
                ));
            }
            lba += n;
        }
    }
    // Requests the device must refuse come back as errors, not as I/O.
    let end = info.num_blocks;
    let bad = [
        (
            IoOp::Read {
                lba: end,
                buf: IoBuf::new(bs as usize),
            },
            IoStatus::OutOfRange,
        ),
        (
            IoOp::Read {
                lba: 0,
                buf: IoBuf::new(bs as usize / 2),
            },
            IoStatus::Misaligned,
        ),
    ];
    for (op, want) in bad {
        let c = s.run(id, op, IO_TIMEOUT_US).ok_or("rejection timed out")?;
        if c.status != want {
            return Err(format!("bad request got {} instead of {want}", c.status));
        }
    }
    Ok(extents.len())
}

/// `test=blk`: every bdev that stores data passes the pattern round trip.
pub fn selftest(s: &mut Storage) -> Result<String, String> {
    let ids: Vec<BdevId> = s.bdevs.ids().collect();
    let mut checked = Vec::new();
    for id in ids {
        let info = s.bdevs.info(id).ok_or("bdev vanished")?.clone();
        if info.product == "Null disk" {
            continue; // stores nothing by design
        }
        let n = verify_bdev(s, id).map_err(|e| format!("{}: {e}", info.name))?;
        log::info!(
            "blk self-test {}: {n} extents written, flushed, read back and verified",
            info.name
        );
        checked.push(info.name);
    }
    if s.nvme_controllers() == 0 && checked.iter().all(|n| !n.starts_with("VirtioBlk")) {
        return Err("no NVMe or virtio-blk disks to test".into());
    }
    Ok(format!(
        "{} bdevs verified: {}",
        checked.len(),
        checked.join(" ")
    ))
}

/// Runs one benchmark job to its end.
pub fn bench(s: &mut Storage, spec: BenchSpec) -> Result<BenchReport, String> {
    let mut b = Bench::new(spec, &s.bdevs)?;
    let now = crate::time::uptime_us;
    b.start(&mut s.bdevs, now());
    let mut scratch = Vec::new();
    while !b.poll(&mut s.bdevs, now(), &mut scratch) {}
    Ok(b.report())
}

/// The jobs of `bench=`; returns false if any failed to run or saw errors.
pub fn run_benchmarks(s: &mut Storage, jobs: &str) -> bool {
    let mut ok = true;
    for job in jobs.split(',') {
        let result = job.parse::<BenchSpec>().and_then(|spec| bench(s, spec));
        match result {
            Ok(r) => {
                log::info!("{r}");
                ok &= r.errors == 0 && r.miscompares == 0;
            }
            Err(e) => {
                log::error!("bench {job}: {e}");
                ok = false;
            }
        }
    }
    ok
}
