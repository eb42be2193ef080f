//! A block benchmark in the spirit of SPDK's bdevperf: keep `queue_depth`
//! requests of `block_size` bytes in flight against one bdev for `seconds`,
//! then report IOPS, throughput and latency percentiles.
//!
//! Sans-IO: the caller polls the registry and feeds completions to
//! [`Bench::handle`]; the bench resubmits until its time is up.

use crate::IoBuf;
use crate::pattern;
use crate::registry::{BdevId, Registry};
use crate::rng::Rng;
use crate::stats::LatencyHistogram;
use crate::types::{IoCompletion, IoOp, IoRequest};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Read,
    Write,
    RandRead,
    RandWrite,
    /// Each I/O writes a pattern at a random offset, reads it back and compares.
    Verify,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Read => "read",
            Workload::Write => "write",
            Workload::RandRead => "randread",
            Workload::RandWrite => "randwrite",
            Workload::Verify => "verify",
        }
    }

    fn random(self) -> bool {
        matches!(
            self,
            Workload::RandRead | Workload::RandWrite | Workload::Verify
        )
    }

    fn writes(self) -> bool {
        matches!(self, Workload::Write | Workload::RandWrite)
    }
}

/// One benchmark job: `BDEV:WORKLOAD:BLOCK_SIZE:QUEUE_DEPTH:SECONDS`, e.g.
/// `Nvme0n1:randread:4k:32:10`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchSpec {
    pub bdev: String,
    pub workload: Workload,
    pub block_size: u32,
    pub queue_depth: u32,
    pub seconds: u32,
}

fn parse_bytes(s: &str) -> Option<u32> {
    let (num, mul) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1024),
        b'm' | b'M' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<u32>().ok()?.checked_mul(mul)
}

impl FromStr for BenchSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let f: Vec<&str> = s.split(':').collect();
        let [bdev, workload, bs, qd, secs] = f.as_slice() else {
            return Err(format!(
                "`{s}`: expected BDEV:WORKLOAD:BLOCK_SIZE:QUEUE_DEPTH:SECONDS"
            ));
        };
        let workload = match *workload {
            "read" => Workload::Read,
            "write" => Workload::Write,
            "randread" => Workload::RandRead,
            "randwrite" => Workload::RandWrite,
            "verify" => Workload::Verify,
            w => {
                return Err(format!(
                    "`{w}`: workload is read|write|randread|randwrite|verify"
                ));
            }
        };
        let block_size = parse_bytes(bs)
            .filter(|b| *b > 0)
            .ok_or_else(|| format!("`{bs}`: bad block size"))?;
        let queue_depth = qd
            .parse()
            .ok()
            .filter(|q| (1..=4096).contains(q))
            .ok_or_else(|| format!("`{qd}`: queue depth is 1..4096"))?;
        let seconds = secs
            .parse()
            .ok()
            .filter(|s| (1..=3600).contains(s))
            .ok_or_else(|| format!("`{secs}`: seconds is 1..3600"))?;
        if bdev.is_empty() {
            return Err("empty bdev name".into());
        }
        Ok(BenchSpec {
            bdev: (*bdev).into(),
            workload,
            block_size,
            queue_depth,
            seconds,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Busy,
    /// Verify: the write finished, the read-back is next.
    VerifyRead,
}

struct Slot {
    buf: Option<IoBuf>,
    lba: u64,
    issued_us: u64,
    phase: Phase,
}

pub struct Bench {
    spec: BenchSpec,
    id: BdevId,
    device_block: u32,
    blocks_per_io: u64,
    /// Highest starting LBA + 1, in units of whole I/Os.
    positions: u64,
    cursor: u64,
    rng: Rng,
    slots: Vec<Slot>,
    /// Slots whose submission the device refused (queue full), to retry.
    retry: Vec<usize>,
    start_us: u64,
    end_us: u64,
    last_us: u64,
    ops: u64,
    bytes: u64,
    errors: u64,
    miscompares: u64,
    histogram: LatencyHistogram,
    /// Added to every tag, so the bench's completions can share a registry
    /// with other users' (the caller routes by it).
    tag_base: u64,
}

#[derive(Clone, Debug)]
pub struct BenchReport {
    pub spec: BenchSpec,
    pub seconds: f64,
    pub ops: u64,
    pub iops: f64,
    /// Decimal megabytes per second.
    pub mb_per_s: f64,
    pub avg_us: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub errors: u64,
    pub miscompares: u64,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.spec;
        write!(
            f,
            "bench {} {} bs={} qd={} {:.2}s: {:.0} IOPS, {:.1} MB/s, latency us avg {:.0} p50 {} p99 {} p99.9 {}, errors {}, miscompares {}",
            s.bdev,
            s.workload.name(),
            s.block_size,
            s.queue_depth,
            self.seconds,
            self.iops,
            self.mb_per_s,
            self.avg_us,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.errors,
            self.miscompares
        )
    }
}

impl Bench {
    pub fn new(spec: BenchSpec, reg: &Registry) -> Result<Self, String> {
        let id = reg
            .find(&spec.bdev)
            .ok_or_else(|| format!("no bdev named {}", spec.bdev))?;
        let info = reg.info(id).ok_or("bdev vanished")?;
        let bs = info.block_size;
        if !spec.block_size.is_multiple_of(bs) {
            return Err(format!(
                "I/O size {} is not a multiple of {}'s block size {bs}",
                spec.block_size, spec.bdev
            ));
        }
        if spec.block_size > info.max_transfer {
            return Err(format!(
                "I/O size {} exceeds {}'s maximum transfer {}",
                spec.block_size, spec.bdev, info.max_transfer
            ));
        }
        let blocks_per_io = (spec.block_size / bs) as u64;
        let positions = info.num_blocks / blocks_per_io;
        if positions == 0 {
            return Err(format!("{} is smaller than one I/O", spec.bdev));
        }
        if (spec.workload == Workload::Verify || spec.workload.writes()) && info.read_only {
            return Err(format!("{} is read-only", spec.bdev));
        }
        let qd = spec.queue_depth.min(info.queue_depth).max(1) as usize;
        let slots = (0..qd)
            .map(|_| Slot {
                buf: Some(IoBuf::new(spec.block_size as usize)),
                lba: 0,
                issued_us: 0,
                phase: Phase::Idle,
            })
            .collect();
        Ok(Bench {
            id,
            device_block: bs,
            blocks_per_io,
            positions,
            cursor: 0,
            rng: Rng::new(0x1234_5678 ^ positions),
            slots,
            retry: Vec::new(),
            start_us: 0,
            end_us: 0,
            last_us: 0,
            ops: 0,
            bytes: 0,
            errors: 0,
            miscompares: 0,
            histogram: LatencyHistogram::default(),
            tag_base: 0,
            spec,
        })
    }

    /// Tags this bench uses start at `base` (see [`Bench::handle`]).
    pub fn set_tag_base(&mut self, base: u64) {
        self.tag_base = base;
    }

    pub fn bdev(&self) -> BdevId {
        self.id
    }

    /// Retries submissions the device refused; for callers that poll the
    /// registry themselves and feed completions to [`Bench::handle`].
    pub fn tick(&mut self, reg: &mut Registry, now_us: u64) -> bool {
        for i in core::mem::take(&mut self.retry) {
            self.issue_next(reg, i, now_us);
        }
        self.finished()
    }

    /// The queue depth actually used (capped by the device's).
    pub fn queue_depth(&self) -> usize {
        self.slots.len()
    }

    pub fn start(&mut self, reg: &mut Registry, now_us: u64) {
        self.start_us = now_us;
        self.last_us = now_us;
        self.end_us = now_us + self.spec.seconds as u64 * 1_000_000;
        for i in 0..self.slots.len() {
            self.issue_next(reg, i, now_us);
        }
    }

    fn next_lba(&mut self) -> u64 {
        let pos = if self.spec.workload.random() {
            self.rng.below(self.positions)
        } else {
            let p = self.cursor;
            self.cursor = (self.cursor + 1) % self.positions;
            p
        };
        pos * self.blocks_per_io
    }

    fn issue_next(&mut self, reg: &mut Registry, i: usize, now_us: u64) {
        if now_us >= self.end_us {
            self.slots[i].phase = Phase::Idle;
            return;
        }
        let lba = self.next_lba();
        let w = self.spec.workload;
        let Some(mut buf) = self.slots[i].buf.take() else {
            return;
        };
        let op = match w {
            Workload::Verify => {
                pattern::fill(buf.as_mut_slice(), "verify", lba, self.device_block);
                IoOp::Write { lba, buf }
            }
            w if w.writes() => IoOp::Write { lba, buf },
            _ => IoOp::Read { lba, buf },
        };
        self.slots[i].lba = lba;
        self.send(reg, i, op, now_us);
    }

    fn send(&mut self, reg: &mut Registry, i: usize, op: IoOp, now_us: u64) {
        let slot = &mut self.slots[i];
        slot.issued_us = now_us;
        slot.phase = Phase::Busy;
        if let Err(req) = reg.submit(
            self.id,
            IoRequest {
                tag: self.tag_base + i as u64,
                op,
                fua: false,
            },
            now_us,
        ) {
            self.slots[i].buf = req.op.into_buf();
            self.slots[i].phase = Phase::Idle;
            self.retry.push(i);
        }
    }

    /// Feeds one completion of this bench's bdev.
    pub fn handle(&mut self, reg: &mut Registry, c: IoCompletion, now_us: u64) {
        let i = c.tag.wrapping_sub(self.tag_base) as usize;
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        self.last_us = now_us;
        let latency = now_us.saturating_sub(slot.issued_us);
        slot.buf = c.buf;
        if !c.status.is_ok() || slot.buf.is_none() {
            self.errors += 1;
            if slot.buf.is_none() {
                // Withheld after a timeout: this slot cannot be used again.
                slot.phase = Phase::Idle;
                return;
            }
            self.issue_next(reg, i, now_us);
            return;
        }
        match (self.spec.workload, slot.phase) {
            (Workload::Verify, Phase::Busy) => {
                // The write landed; read it back into the same buffer.
                slot.phase = Phase::VerifyRead;
                let lba = slot.lba;
                let Some(mut buf) = slot.buf.take() else {
                    return;
                };
                buf.as_mut_slice().fill(0);
                slot.issued_us = now_us;
                let req = IoRequest {
                    tag: self.tag_base + i as u64,
                    op: IoOp::Read { lba, buf },
                    fua: false,
                };
                if let Err(req) = reg.submit(self.id, req, now_us) {
                    self.slots[i].buf = req.op.into_buf();
                    self.slots[i].phase = Phase::Idle;
                    self.retry.push(i);
                }
                return;
            }
            (Workload::Verify, Phase::VerifyRead) => {
                if let Some(buf) = &slot.buf
                    && pattern::check(buf.as_slice(), "verify", slot.lba, self.device_block)
                        .is_err()
                {
                    self.miscompares += 1;
                }
            }
            _ => {}
        }
        self.ops += 1;
        self.bytes += self.spec.block_size as u64;
        self.histogram.record(latency);
        self.issue_next(reg, i, now_us);
    }

    /// Polls the registry once, handles what finished and retries refused
    /// submissions. Returns true when the run is over and nothing is in flight.
    pub fn poll(
        &mut self,
        reg: &mut Registry,
        now_us: u64,
        scratch: &mut Vec<(BdevId, IoCompletion)>,
    ) -> bool {
        scratch.clear();
        reg.poll(now_us, scratch);
        for (id, c) in scratch.drain(..) {
            if id == self.id {
                self.handle(reg, c, now_us);
            }
        }
        self.tick(reg, now_us)
    }

    pub fn finished(&self) -> bool {
        self.slots.iter().all(|s| s.phase == Phase::Idle) && self.retry.is_empty()
    }

    pub fn report(&self) -> BenchReport {
        let secs = (self.last_us.saturating_sub(self.start_us)).max(1) as f64 / 1e6;
        let avg = if self.histogram.count() > 0 {
            // Mean from bucket bounds is close enough and needs no extra counter.
            self.histogram
                .buckets()
                .map(|(v, n)| v as f64 * n as f64)
                .sum::<f64>()
                / self.histogram.count() as f64
        } else {
            0.0
        };
        BenchReport {
            spec: self.spec.clone(),
            seconds: secs,
            ops: self.ops,
            iops: self.ops as f64 / secs,
            mb_per_s: self.bytes as f64 / secs / 1e6,
            avg_us: avg,
            p50_us: self.histogram.percentile(50.0),
            p99_us: self.histogram.percentile(99.0),
            p999_us: self.histogram.percentile(99.9),
            errors: self.errors,
            miscompares: self.miscompares,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MallocBdev, NullBdev};
    use alloc::boxed::Box;

    fn run(spec: &str, reg: &mut Registry) -> BenchReport {
        let mut b = Bench::new(spec.parse().unwrap(), reg).unwrap();
        let mut now = 0;
        b.start(reg, now);
        let mut scratch = Vec::new();
        while !b.poll(reg, now, &mut scratch) {
            now += 250; // every poll round takes 250 us of virtual time
            assert!(now < 10_000_000, "bench did not finish");
        }
        b.report()
    }

    #[test]
    fn parses_specs() {
        let s: BenchSpec = "Nvme0n1:randread:4k:32:10".parse().unwrap();
        assert_eq!(
            (s.block_size, s.queue_depth, s.seconds, s.workload),
            (4096, 32, 10, Workload::RandRead)
        );
        for bad in [
            "x",
            "a:read:4k:32",
            "a:walk:4k:1:1",
            "a:read:0:1:1",
            "a:read:4k:0:1",
            "a:read:4k:1:0",
            ":read:4k:1:1",
            "a:read:9999999999:1:1",
        ] {
            assert!(bad.parse::<BenchSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn every_workload_runs_on_malloc_and_verify_finds_no_miscompare() {
        let mut reg = Registry::new();
        reg.add(Box::new(MallocBdev::new("Malloc0", 4096, 512)))
            .unwrap();
        for w in ["read", "write", "randread", "randwrite", "verify"] {
            let r = run(&alloc::format!("Malloc0:{w}:4k:8:1"), &mut reg);
            assert!(r.ops > 1000, "{w}: {r}");
            assert_eq!((r.errors, r.miscompares), (0, 0), "{w}: {r}");
            assert!(r.p50_us <= r.p99_us && r.p99_us <= r.p999_us);
            assert!(r.to_string().contains("IOPS"));
        }
    }

    #[test]
    fn verify_catches_a_device_that_loses_data() {
        let mut reg = Registry::new();
        reg.add(Box::new(NullBdev::new("Null0", 4096, 512)))
            .unwrap();
        let r = run("Null0:verify:4k:4:1", &mut reg);
        assert!(r.miscompares > 0 && r.miscompares == r.ops, "{r}");
    }

    #[test]
    fn refuses_impossible_jobs() {
        let mut reg = Registry::new();
        reg.add(Box::new(MallocBdev::new("Malloc0", 16, 4096)))
            .unwrap();
        for spec in [
            "Nope:read:4k:1:1",
            "Malloc0:read:512:1:1",
            "Malloc0:read:128k:1:1",
            "Malloc0:read:64m:1:1",
        ] {
            assert!(Bench::new(spec.parse().unwrap(), &reg).is_err(), "{spec}");
        }
    }
}
