//! The named set of block devices, and the checks every request passes.

use crate::stats::IoStats;
use crate::types::{BdevInfo, BlockDevice, IoCompletion, IoOp, IoRequest, IoStatus, IoType};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// A registered device. Stale ids (of removed devices) find nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BdevId {
    index: u32,
    generation: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryError {
    NameTaken(String),
    NotFound,
    /// The device still has I/O in flight.
    Busy,
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::NameTaken(n) => write!(f, "a bdev named {n} already exists"),
            RegistryError::NotFound => write!(f, "no such bdev"),
            RegistryError::Busy => write!(f, "bdev has I/O in flight"),
        }
    }
}

struct InFlight {
    tag: u64,
    start_us: u64,
    io_type: IoType,
    bytes: u64,
}

struct Slot {
    dev: Box<dyn BlockDevice>,
    aliases: Vec<String>,
    stats: IoStats,
    in_flight: Vec<Option<InFlight>>,
    free: Vec<u32>,
}

#[derive(Default)]
pub struct Registry {
    slots: Vec<Option<Slot>>,
    generations: Vec<u32>,
    /// Requests refused by validation, delivered at the next poll.
    rejected: VecDeque<(BdevId, IoCompletion, IoType)>,
    scratch: Vec<IoCompletion>,
}

/// Checks a request against what the device says about itself.
fn validate(info: &BdevInfo, op: &IoOp) -> Result<(), IoStatus> {
    let t = op.io_type();
    if !info.io_types.contains(t) {
        return Err(IoStatus::Unsupported);
    }
    if info.read_only && matches!(t, IoType::Write | IoType::Unmap | IoType::WriteZeroes) {
        return Err(IoStatus::ReadOnly);
    }
    let bs = info.block_size as u64;
    let (lba, blocks) = match op {
        IoOp::Read { lba, buf } | IoOp::Write { lba, buf } => {
            let len = buf.len() as u64;
            if len == 0 || !len.is_multiple_of(bs) {
                return Err(IoStatus::Misaligned);
            }
            if len > info.max_transfer as u64 {
                return Err(IoStatus::TooLarge);
            }
            (*lba, len / bs)
        }
        IoOp::Unmap { lba, blocks } | IoOp::WriteZeroes { lba, blocks } => {
            if *blocks == 0 {
                return Err(IoStatus::Misaligned);
            }
            let max = if t == IoType::Unmap {
                info.max_unmap_blocks
            } else {
                info.max_write_zeroes_blocks
            };
            if *blocks > max {
                return Err(IoStatus::TooLarge);
            }
            (*lba, *blocks as u64)
        }
        IoOp::Flush => return Ok(()),
    };
    match lba.checked_add(blocks) {
        Some(end) if end <= info.num_blocks => Ok(()),
        _ => Err(IoStatus::OutOfRange),
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self, id: BdevId) -> Option<&Slot> {
        let live = self.generations.get(id.index as usize) == Some(&id.generation);
        self.slots.get(id.index as usize)?.as_ref().filter(|_| live)
    }

    fn slot_mut(&mut self, id: BdevId) -> Option<&mut Slot> {
        let live = self.generations.get(id.index as usize) == Some(&id.generation);
        self.slots
            .get_mut(id.index as usize)?
            .as_mut()
            .filter(|_| live)
    }

    /// Registers a device under its own name.
    pub fn add(&mut self, dev: Box<dyn BlockDevice>) -> Result<BdevId, RegistryError> {
        let name = dev.info().name.clone();
        if self.find(&name).is_some() {
            return Err(RegistryError::NameTaken(name));
        }
        let slot = Slot {
            dev,
            aliases: Vec::new(),
            stats: IoStats::default(),
            in_flight: Vec::new(),
            free: Vec::new(),
        };
        let index = match self.slots.iter().position(Option::is_none) {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.generations.push(0);
                self.slots.len() - 1
            }
        };
        Ok(BdevId {
            index: index as u32,
            generation: self.generations[index],
        })
    }

    /// Unregisters a device with nothing in flight and hands it back.
    pub fn remove(&mut self, id: BdevId) -> Result<Box<dyn BlockDevice>, RegistryError> {
        let slot = self.slot(id).ok_or(RegistryError::NotFound)?;
        if slot.dev.in_flight() > 0 || slot.in_flight.iter().any(Option::is_some) {
            return Err(RegistryError::Busy);
        }
        let slot = self.slots[id.index as usize]
            .take()
            .ok_or(RegistryError::NotFound)?;
        self.generations[id.index as usize] += 1;
        Ok(slot.dev)
    }

    pub fn add_alias(&mut self, id: BdevId, alias: &str) -> Result<(), RegistryError> {
        if self.find(alias).is_some() {
            return Err(RegistryError::NameTaken(alias.into()));
        }
        self.slot_mut(id)
            .ok_or(RegistryError::NotFound)?
            .aliases
            .push(alias.into());
        Ok(())
    }

    /// Looks a device up by name or alias.
    pub fn find(&self, name: &str) -> Option<BdevId> {
        self.ids().find(|&id| {
            self.slot(id)
                .is_some_and(|s| s.dev.info().name == name || s.aliases.iter().any(|a| a == name))
        })
    }

    pub fn ids(&self) -> impl Iterator<Item = BdevId> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| BdevId {
                index: i as u32,
                generation: self.generations[i],
            })
    }

    pub fn info(&self, id: BdevId) -> Option<&BdevInfo> {
        self.slot(id).map(|s| s.dev.info())
    }

    pub fn aliases(&self, id: BdevId) -> &[String] {
        self.slot(id).map_or(&[], |s| s.aliases.as_slice())
    }

    pub fn stats(&self, id: BdevId) -> Option<&IoStats> {
        self.slot(id).map(|s| &s.stats)
    }

    /// Allocation runs of a range, if the device tracks them (see
    /// [`BlockDevice::allocation`]).
    pub fn allocation(&self, id: BdevId, lba: u64, blocks: u64) -> Option<Vec<(u64, bool)>> {
        self.slot(id)?.dev.allocation(lba, blocks)
    }

    pub fn in_flight(&self, id: BdevId) -> usize {
        self.slot(id).map_or(0, |s| s.dev.in_flight())
    }

    /// Starts a request. Invalid requests are accepted and complete with an
    /// error at the next poll; `Err` gives the request back only when the
    /// device queue is full.
    pub fn submit(&mut self, id: BdevId, mut req: IoRequest, now_us: u64) -> Result<(), IoRequest> {
        let io_type = req.op.io_type();
        let Some(slot) = self.slot_mut(id) else {
            let c = IoCompletion {
                tag: req.tag,
                status: IoStatus::DeviceFailed,
                buf: req.op.into_buf(),
            };
            self.rejected.push_back((id, c, io_type));
            return Ok(());
        };
        if let Err(status) = validate(slot.dev.info(), &req.op) {
            let c = IoCompletion {
                tag: req.tag,
                status,
                buf: req.op.into_buf(),
            };
            self.rejected.push_back((id, c, io_type));
            return Ok(());
        }
        let entry = InFlight {
            tag: req.tag,
            start_us: now_us,
            io_type,
            bytes: req.op.data_bytes() as u64,
        };
        let internal = match slot.free.pop() {
            Some(i) => {
                slot.in_flight[i as usize] = Some(entry);
                i
            }
            None => {
                slot.in_flight.push(Some(entry));
                (slot.in_flight.len() - 1) as u32
            }
        };
        req.tag = internal as u64;
        match slot.dev.submit(req, now_us) {
            Ok(()) => Ok(()),
            Err(mut req) => {
                let entry = slot.in_flight[internal as usize].take();
                slot.free.push(internal);
                req.tag = entry.map_or(0, |e| e.tag);
                Err(req)
            }
        }
    }

    /// Collects finished requests from every device into `out`.
    pub fn poll(&mut self, now_us: u64, out: &mut Vec<(BdevId, IoCompletion)>) -> usize {
        let before = out.len();
        while let Some((id, c, t)) = self.rejected.pop_front() {
            if let Some(slot) = self.slot_mut(id) {
                slot.stats.record(t, 0, 0, false);
            }
            out.push((id, c));
        }
        let ids: Vec<BdevId> = self.ids().collect();
        let mut scratch = core::mem::take(&mut self.scratch);
        for id in ids {
            let Some(slot) = self.slot_mut(id) else {
                continue;
            };
            if slot.dev.in_flight() == 0 {
                continue;
            }
            scratch.clear();
            slot.dev.poll(now_us, &mut scratch);
            for mut c in scratch.drain(..) {
                let internal = c.tag as usize;
                let Some(entry) = slot.in_flight.get_mut(internal).and_then(Option::take) else {
                    // A driver returning a tag we never gave it is a driver bug.
                    continue;
                };
                slot.free.push(internal as u32);
                let latency = now_us.saturating_sub(entry.start_us);
                slot.stats
                    .record(entry.io_type, entry.bytes, latency, c.status.is_ok());
                c.tag = entry.tag;
                out.push((id, c));
            }
        }
        self.scratch = scratch;
        out.len() - before
    }

    /// Polls until nothing is in flight on `id` or `max_polls` passes; for
    /// start-up and self-tests. `now` supplies the clock.
    pub fn drain(
        &mut self,
        id: BdevId,
        now: &mut dyn FnMut() -> u64,
        max_polls: u64,
        out: &mut Vec<(BdevId, IoCompletion)>,
    ) {
        for _ in 0..max_polls {
            if self.in_flight(id) == 0 && self.rejected.is_empty() {
                break;
            }
            self.poll(now(), out);
        }
        self.poll(now(), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IoBuf, MallocBdev, NullBdev};

    fn req(tag: u64, op: IoOp) -> IoRequest {
        IoRequest {
            tag,
            op,
            fua: false,
        }
    }

    fn run(reg: &mut Registry, id: BdevId, r: IoRequest) -> IoCompletion {
        reg.submit(id, r, 10).unwrap();
        let mut out = Vec::new();
        reg.poll(15, &mut out);
        assert_eq!(out.len(), 1);
        out.pop().unwrap().1
    }

    #[test]
    fn names_aliases_and_removal() {
        let mut reg = Registry::new();
        let a = reg
            .add(Box::new(MallocBdev::new("Malloc0", 64, 512)))
            .unwrap();
        assert_eq!(
            reg.add(Box::new(NullBdev::new("Malloc0", 64, 512)))
                .unwrap_err(),
            RegistryError::NameTaken("Malloc0".into())
        );
        reg.add_alias(a, "boot").unwrap();
        assert_eq!(reg.find("boot"), Some(a));
        assert!(reg.add_alias(a, "Malloc0").is_err());
        reg.remove(a).unwrap();
        assert_eq!(reg.find("Malloc0"), None);
        assert!(
            reg.info(a).is_none(),
            "stale id must not find the slot's next tenant"
        );
        let b = reg.add(Box::new(NullBdev::new("Null0", 64, 512))).unwrap();
        assert!(reg.info(a).is_none());
        assert_eq!(reg.info(b).unwrap().name, "Null0");
    }

    #[test]
    fn bad_requests_complete_with_errors_and_keep_their_buffers() {
        let mut reg = Registry::new();
        let id = reg
            .add(Box::new(MallocBdev::new("Malloc0", 64, 512)))
            .unwrap();
        let cases = [
            (
                IoOp::Read {
                    lba: 64,
                    buf: IoBuf::new(512),
                },
                IoStatus::OutOfRange,
            ),
            (
                IoOp::Read {
                    lba: u64::MAX,
                    buf: IoBuf::new(512),
                },
                IoStatus::OutOfRange,
            ),
            (
                IoOp::Write {
                    lba: 63,
                    buf: IoBuf::new(1024),
                },
                IoStatus::OutOfRange,
            ),
            (
                IoOp::Read {
                    lba: 0,
                    buf: IoBuf::new(100),
                },
                IoStatus::Misaligned,
            ),
            (
                IoOp::Read {
                    lba: 0,
                    buf: IoBuf::new(0),
                },
                IoStatus::Misaligned,
            ),
            (IoOp::Unmap { lba: 0, blocks: 0 }, IoStatus::Misaligned),
            (
                IoOp::WriteZeroes { lba: 60, blocks: 5 },
                IoStatus::OutOfRange,
            ),
            (
                IoOp::Read {
                    lba: 0,
                    buf: IoBuf::new(33 << 20),
                },
                IoStatus::TooLarge,
            ),
        ];
        for (i, (op, want)) in cases.into_iter().enumerate() {
            let had_buf = op.data_bytes() > 0 || matches!(op, IoOp::Read { .. });
            let c = run(&mut reg, id, req(i as u64, op));
            assert_eq!((c.tag, c.status), (i as u64, want), "case {i}");
            assert_eq!(c.buf.is_some(), had_buf);
        }
        assert_eq!(reg.stats(id).unwrap().get(IoType::Read).errors, 5);
        let null = reg.add(Box::new(NullBdev::new("Null0", 8, 4096))).unwrap();
        let c = run(&mut reg, null, req(1, IoOp::Flush));
        assert_eq!(c.status, IoStatus::Success);
    }

    #[test]
    fn unsupported_and_read_only() {
        let mut reg = Registry::new();
        let mut m = MallocBdev::new("Malloc0", 64, 512);
        m.set_read_only(true);
        let id = reg.add(Box::new(m)).unwrap();
        let c = run(
            &mut reg,
            id,
            req(
                1,
                IoOp::Write {
                    lba: 0,
                    buf: IoBuf::new(512),
                },
            ),
        );
        assert_eq!(c.status, IoStatus::ReadOnly);
        let c = run(
            &mut reg,
            id,
            req(
                2,
                IoOp::Read {
                    lba: 0,
                    buf: IoBuf::new(512),
                },
            ),
        );
        assert_eq!(c.status, IoStatus::Success);
        let stale = id;
        reg.remove(id).unwrap();
        let c = run(&mut reg, stale, req(3, IoOp::Flush));
        assert_eq!(c.status, IoStatus::DeviceFailed);
    }

    #[test]
    fn data_round_trip_and_statistics() {
        let mut reg = Registry::new();
        let id = reg
            .add(Box::new(MallocBdev::new("Malloc0", 128, 512)))
            .unwrap();
        let mut w = IoBuf::new(2048);
        w.as_mut_slice()
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8);
        assert!(
            run(&mut reg, id, req(7, IoOp::Write { lba: 10, buf: w }))
                .status
                .is_ok()
        );
        let c = run(
            &mut reg,
            id,
            req(
                8,
                IoOp::Read {
                    lba: 10,
                    buf: IoBuf::new(2048),
                },
            ),
        );
        let r = c.buf.unwrap();
        assert!(r.as_slice().iter().enumerate().all(|(i, &b)| b == i as u8));
        assert!(
            run(
                &mut reg,
                id,
                req(9, IoOp::WriteZeroes { lba: 11, blocks: 1 })
            )
            .status
            .is_ok()
        );
        let c = run(
            &mut reg,
            id,
            req(
                10,
                IoOp::Read {
                    lba: 10,
                    buf: IoBuf::new(1536),
                },
            ),
        );
        let r = c.buf.unwrap();
        assert!(r.as_slice()[512..1024].iter().all(|&b| b == 0));
        assert_eq!(r.as_slice()[1024], 0);
        assert_eq!(r.as_slice()[1025], 1);
        let s = reg.stats(id).unwrap();
        assert_eq!(s.get(IoType::Write).ops, 1);
        assert_eq!(s.get(IoType::Read).bytes, 2048 + 1536);
        assert_eq!(s.get(IoType::Read).latency_sum_us, 10);
    }
}
