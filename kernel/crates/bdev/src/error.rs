//! Error-injection bdev (SPDK's `bdev_error`): `EE_<base>` over a claimed
//! base device, forwarding every request until told to make some fail.
//!
//! Injections are set per I/O type: the next `num` requests of that type
//! (those that arrive while at least `queue_depth` are in flight at the
//! base) end as the injection says instead of reaching the base:
//!
//! - [`Injected::Failure`]: complete with [`IoStatus::DeviceError`] carrying
//!   [`INJECTED_FAILURE`] (NVMe generic status "internal error").
//! - [`Injected::Nvme`]: complete with the given NVMe status code type and
//!   code, as `DeviceError(sct << 8 | sc)`.
//! - [`Injected::NoMemory`]: complete with [`IoStatus::NoMemory`].
//! - [`Injected::Pending`]: hold the request, unanswered, until
//!   [`ErrorBdev::resume_pending`] has the held requests submitted again (SPDK's
//!   `bdev_error_resume_pending`; SPDK also ends them on a reset, which
//!   this layer does not have). Held requests count as in flight, so the
//!   bdev cannot be deleted while it holds any.
//! - [`Injected::CorruptData`]: let the request through with one byte
//!   XORed: a write's data before it reaches the base, a read's data after.
//!
//! For the appliance's own fault tests as much as for SPDK's clients.

use crate::passthru::Forward;
use crate::registry::{BdevId, SharedBdev};
use crate::types::{BdevInfo, BlockDevice, IoCompletion, IoOp, IoRequest, IoStatus, IoType, Uuid};
use alloc::string::String;
use alloc::vec::Vec;
use core::any::Any;

/// SPDK's product name for error bdevs.
pub const ERROR_PRODUCT: &str = "Error Injection Disk";

/// The device status a `failure` injection completes with.
pub const INJECTED_FAILURE: u16 = 0x0006;

/// The error bdev's name over `base`: SPDK's `EE_` prefix.
pub fn error_bdev_name(base: &str) -> String {
    alloc::format!("EE_{base}")
}

/// What an injected error does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    Failure,
    Nvme { sct: u8, sc: u8 },
    NoMemory,
    Pending,
    CorruptData { offset: u64, value: u8 },
}

/// One I/O type's injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Injection {
    pub error: Injected,
    /// Requests still to hit; 0: none.
    pub num: u32,
    /// Only requests arriving while this many are in flight at the base.
    pub queue_depth: u64,
}

pub struct ErrorBdev {
    fwd: Forward,
    vector: [Option<Injection>; IoType::ALL.len()],
    held: Vec<IoRequest>,
    /// Resubmit `held` at the next poll.
    resume: bool,
    /// Reads to corrupt when they come back: (tag, offset, value).
    corrupt_reads: Vec<(u64, u64, u8)>,
}

impl ErrorBdev {
    /// `EE_<base>` over the claimed `base_name`; without a UUID, one
    /// derived from the name.
    pub fn new(base_name: &str, uuid: Option<Uuid>, base: SharedBdev, base_id: BdevId) -> Self {
        let name = error_bdev_name(base_name);
        let uuid = uuid.unwrap_or_else(|| Uuid::from_name(&[b"error", name.as_bytes()]));
        ErrorBdev {
            fwd: Forward::new(&name, ERROR_PRODUCT, uuid, base, base_id),
            vector: [None; IoType::ALL.len()],
            held: Vec::new(),
            resume: false,
            corrupt_reads: Vec::new(),
        }
    }

    pub fn forward(&self) -> &Forward {
        &self.fwd
    }

    /// Sets the injection for one I/O type, or with `None` for all.
    pub fn inject(&mut self, io_type: Option<IoType>, injection: Injection) {
        for t in IoType::ALL {
            if io_type.is_none_or(|only| only == t) {
                self.vector[t.index()] = Some(injection);
            }
        }
    }

    /// Stops every injection (SPDK's `io_type: "clear"`); held requests
    /// stay held until [`resume_pending`](ErrorBdev::resume_pending).
    pub fn clear(&mut self) {
        self.vector = [None; IoType::ALL.len()];
    }

    /// The injection set for `t`, if any requests are still to hit.
    pub fn injection(&self, t: IoType) -> Option<Injection> {
        self.vector[t.index()].filter(|i| i.num > 0)
    }

    /// Requests held by a `pending` injection.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Has the held requests submitted again at the next poll (they may
    /// meet further injections); any the base cannot take then fail with
    /// `NoMemory`.
    pub fn resume_pending(&mut self) {
        self.resume = true;
    }

    /// Takes one hit of the injection for `t`, if one applies now.
    fn hit(&mut self, t: IoType) -> Option<Injected> {
        let in_flight = self.fwd.in_flight() as u64;
        let inj = self.vector[t.index()].as_mut()?;
        if inj.num == 0 || in_flight < inj.queue_depth {
            return None;
        }
        inj.num -= 1;
        Some(inj.error)
    }
}

fn corrupt(buf: Option<&mut crate::IoBuf>, offset: u64, value: u8) {
    if let Some(b) = buf.and_then(|b| b.as_mut_slice().get_mut(offset as usize)) {
        *b ^= value;
    }
}

impl BlockDevice for ErrorBdev {
    fn info(&self) -> &BdevInfo {
        self.fwd.info()
    }

    fn submit(&mut self, mut req: IoRequest, now_us: u64) -> Result<(), IoRequest> {
        let t = req.op.io_type();
        match self.hit(t) {
            None => self.fwd.submit(req, now_us),
            Some(Injected::Failure) => {
                self.fwd
                    .complete(req, IoStatus::DeviceError(INJECTED_FAILURE));
                Ok(())
            }
            Some(Injected::Nvme { sct, sc }) => {
                let code = (sct as u16) << 8 | sc as u16;
                self.fwd.complete(req, IoStatus::DeviceError(code));
                Ok(())
            }
            Some(Injected::NoMemory) => {
                self.fwd.complete(req, IoStatus::NoMemory);
                Ok(())
            }
            Some(Injected::Pending) => {
                self.held.push(req);
                Ok(())
            }
            Some(Injected::CorruptData { offset, value }) => {
                match &mut req.op {
                    IoOp::Write { buf, .. } => corrupt(Some(buf), offset, value),
                    IoOp::Read { .. } => self.corrupt_reads.push((req.tag, offset, value)),
                    _ => {}
                }
                let tag = req.tag;
                let r = self.fwd.submit(req, now_us);
                if r.is_err() {
                    self.corrupt_reads.retain(|c| c.0 != tag);
                }
                r
            }
        }
    }

    fn poll(&mut self, now_us: u64, out: &mut Vec<IoCompletion>) -> usize {
        if core::mem::take(&mut self.resume) {
            for req in core::mem::take(&mut self.held) {
                if let Err(req) = self.submit(req, now_us) {
                    self.fwd.complete(req, IoStatus::NoMemory);
                }
            }
        }
        let from = out.len();
        let n = self.fwd.poll(now_us, out);
        if !self.corrupt_reads.is_empty() {
            for c in &mut out[from..] {
                if let Some(i) = self.corrupt_reads.iter().position(|r| r.0 == c.tag) {
                    let (_, offset, value) = self.corrupt_reads.swap_remove(i);
                    if c.status.is_ok() {
                        corrupt(c.buf.as_mut(), offset, value);
                    }
                }
            }
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.fwd.in_flight() + self.held.len()
    }

    fn allocation(&self, lba: u64, blocks: u64) -> Option<Vec<(u64, bool)>> {
        self.fwd.allocation(lba, blocks)
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IoBuf, MallocBdev, Registry};
    use alloc::boxed::Box;

    fn setup() -> (Registry, BdevId, BdevId) {
        let mut reg = Registry::new();
        let base = reg
            .add(Box::new(MallocBdev::new("Malloc0", 64, 512)))
            .unwrap();
        let h = reg.claim(base, "EE_Malloc0").unwrap();
        let ee = reg
            .add(Box::new(ErrorBdev::new("Malloc0", None, h, base)))
            .unwrap();
        (reg, base, ee)
    }

    fn submit(reg: &mut Registry, id: BdevId, tag: u64, op: IoOp) {
        let req = IoRequest {
            tag,
            op,
            fua: false,
        };
        reg.submit(id, req, 0).unwrap();
    }

    fn poll(reg: &mut Registry) -> Vec<(u64, IoStatus, Option<IoBuf>)> {
        let mut out = Vec::new();
        reg.poll(1, &mut out);
        out.into_iter()
            .map(|(_, c)| (c.tag, c.status, c.buf))
            .collect()
    }

    fn read(lba: u64) -> IoOp {
        IoOp::Read {
            lba,
            buf: IoBuf::new(512),
        }
    }

    fn inject(reg: &mut Registry, ee: BdevId, t: Option<IoType>, error: Injected, num: u32) {
        let inj = Injection {
            error,
            num,
            queue_depth: 0,
        };
        reg.with_device(ee, |e: &mut ErrorBdev| e.inject(t, inj))
            .unwrap();
    }

    #[test]
    fn failures_hit_the_next_num_requests_of_their_type() {
        let (mut reg, _, ee) = setup();
        assert_eq!(reg.info(ee).unwrap().name, "EE_Malloc0");
        assert_eq!(reg.info(ee).unwrap().product, ERROR_PRODUCT);
        inject(&mut reg, ee, Some(IoType::Read), Injected::Failure, 2);
        for tag in 0..3 {
            submit(&mut reg, ee, tag, read(0));
        }
        submit(&mut reg, ee, 9, IoOp::Flush);
        let mut got: Vec<(u64, IoStatus)> =
            poll(&mut reg).into_iter().map(|(t, s, _)| (t, s)).collect();
        got.sort_by_key(|g| g.0);
        let failed = IoStatus::DeviceError(INJECTED_FAILURE);
        assert_eq!(
            got,
            [
                (0, failed),
                (1, failed),
                (2, IoStatus::Success),
                (9, IoStatus::Success)
            ]
        );
        inject(&mut reg, ee, None, Injected::Nvme { sct: 2, sc: 0x81 }, 1);
        submit(&mut reg, ee, 4, IoOp::Unmap { lba: 0, blocks: 1 });
        assert_eq!(poll(&mut reg)[0].1, IoStatus::DeviceError(0x281));
        inject(&mut reg, ee, Some(IoType::Write), Injected::NoMemory, 5);
        reg.with_device(ee, |e: &mut ErrorBdev| {
            assert_eq!(e.injection(IoType::Write).unwrap().num, 5);
            e.clear();
            assert_eq!(e.injection(IoType::Write), None);
        })
        .unwrap();
        let w = IoBuf::new(512);
        submit(&mut reg, ee, 5, IoOp::Write { lba: 0, buf: w });
        assert_eq!(poll(&mut reg)[0].1, IoStatus::Success, "cleared");
    }

    #[test]
    fn pending_holds_until_resumed_and_blocks_removal() {
        let (mut reg, _, ee) = setup();
        inject(&mut reg, ee, Some(IoType::Read), Injected::Pending, 1);
        submit(&mut reg, ee, 1, read(0));
        assert!(poll(&mut reg).is_empty());
        assert_eq!(reg.in_flight(ee), 1);
        assert!(reg.remove(ee).is_err(), "busy while it holds a request");
        reg.with_device(ee, |e: &mut ErrorBdev| {
            assert_eq!(e.held(), 1);
            e.resume_pending();
        })
        .unwrap();
        let got = poll(&mut reg);
        assert_eq!((got[0].0, got[0].1), (1, IoStatus::Success));
        assert_eq!(reg.in_flight(ee), 0);
    }

    #[test]
    fn corrupt_data_flips_one_byte_each_way() {
        let (mut reg, _, ee) = setup();
        let corrupt = Injected::CorruptData {
            offset: 3,
            value: 0xff,
        };
        inject(&mut reg, ee, Some(IoType::Write), corrupt, 1);
        let w = IoBuf::new(512);
        submit(&mut reg, ee, 1, IoOp::Write { lba: 2, buf: w });
        poll(&mut reg);
        submit(&mut reg, ee, 2, read(2));
        let got = poll(&mut reg);
        let b = got[0].2.as_ref().unwrap().as_slice();
        assert_eq!(
            (b[2], b[3], b[4]),
            (0, 0xff, 0),
            "the write landed corrupted"
        );
        inject(&mut reg, ee, Some(IoType::Read), corrupt, 1);
        submit(&mut reg, ee, 3, read(2));
        let got = poll(&mut reg);
        assert_eq!(
            got[0].2.as_ref().unwrap().as_slice()[3],
            0,
            "and read back flipped"
        );
        submit(&mut reg, ee, 4, read(2));
        let got = poll(&mut reg);
        assert_eq!(got[0].2.as_ref().unwrap().as_slice()[3], 0xff, "once");
    }

    #[test]
    fn queue_depth_gates_the_injection() {
        let (mut reg, _, ee) = setup();
        let inj = Injection {
            error: Injected::Failure,
            num: 1,
            queue_depth: 1,
        };
        reg.with_device(ee, |e: &mut ErrorBdev| e.inject(Some(IoType::Read), inj))
            .unwrap();
        submit(&mut reg, ee, 1, read(0));
        submit(&mut reg, ee, 2, read(0));
        let mut got: Vec<(u64, IoStatus)> =
            poll(&mut reg).into_iter().map(|(t, s, _)| (t, s)).collect();
        got.sort_by_key(|g| g.0);
        assert_eq!(
            got,
            [
                (1, IoStatus::Success),
                (2, IoStatus::DeviceError(INJECTED_FAILURE))
            ]
        );
    }
}
