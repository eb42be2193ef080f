//! Pass-through bdev (SPDK's `bdev_passthru`): a new name over a claimed
//! base device, every request forwarded unchanged. A starting point for
//! stacked devices, and a way to give a device a second name while its own
//! stays reserved.
//!
//! The pass-through owns its base exclusively (through
//! [`Registry::claim`](crate::Registry::claim)), so it hands requests on
//! with the registry's tags as they are. [`Forward`] is that forwarding,
//! shared with the error bdev.

use crate::registry::{BdevId, SharedBdev};
use crate::types::{BdevInfo, BlockDevice, IoCompletion, IoOp, IoRequest, IoStatus, Uuid};
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::any::Any;

/// SPDK's product name for pass-through bdevs.
pub const PASSTHRU_PRODUCT: &str = "passthru";

/// A device stacked on one claimed base, covering all of it.
pub struct Forward {
    info: BdevInfo,
    base: SharedBdev,
    base_id: BdevId,
    /// Requests this layer finished itself (past the base's end after it
    /// shrank, or failed on purpose by an error bdev).
    done: VecDeque<IoCompletion>,
}

impl Forward {
    /// Describes itself as the base does, under `name`, `product` and
    /// `uuid`.
    pub fn new(name: &str, product: &str, uuid: Uuid, base: SharedBdev, base_id: BdevId) -> Self {
        let mut info = base.borrow().info().clone();
        info.name = name.into();
        info.product = product.into();
        info.uuid = uuid;
        Forward {
            info,
            base,
            base_id,
            done: VecDeque::new(),
        }
    }

    pub fn info(&self) -> &BdevInfo {
        &self.info
    }

    /// The claimed base's registry id.
    pub fn base_id(&self) -> BdevId {
        self.base_id
    }

    /// Another handle on the base, to pass back to
    /// [`Registry::release`](crate::Registry::release) once this device is
    /// removed from the registry and dropped.
    pub fn base_handle(&self) -> SharedBdev {
        self.base.clone()
    }

    /// Finishes a request here, without the base.
    pub fn complete(&mut self, req: IoRequest, status: IoStatus) {
        self.done.push_back(IoCompletion {
            tag: req.tag,
            status,
            buf: req.op.into_buf(),
        });
    }

    /// Follows the base's size (it may have been resized under us).
    fn sync_size(&mut self) {
        self.info.num_blocks = self.base.borrow().info().num_blocks;
    }

    /// Hands a request to the base. The registry checked it against our
    /// size; the base may have shrunk since, so the range is checked again.
    pub fn submit(&mut self, req: IoRequest, now_us: u64) -> Result<(), IoRequest> {
        self.sync_size();
        let bs = self.info.block_size as u64;
        let end = match &req.op {
            IoOp::Read { lba, buf } | IoOp::Write { lba, buf } => {
                lba.checked_add(buf.len() as u64 / bs)
            }
            IoOp::Unmap { lba, blocks } | IoOp::WriteZeroes { lba, blocks } => {
                lba.checked_add(*blocks as u64)
            }
            IoOp::Flush => Some(0),
        };
        if end.is_none_or(|e| e > self.info.num_blocks) {
            self.complete(req, IoStatus::OutOfRange);
            return Ok(());
        }
        self.base.borrow_mut().submit(req, now_us)
    }

    pub fn poll(&mut self, now_us: u64, out: &mut Vec<IoCompletion>) -> usize {
        let mine = self.done.len();
        out.extend(self.done.drain(..));
        let theirs = self.base.borrow_mut().poll(now_us, out);
        self.sync_size();
        mine + theirs
    }

    pub fn in_flight(&self) -> usize {
        self.done.len() + self.base.borrow().in_flight()
    }

    pub fn allocation(&self, lba: u64, blocks: u64) -> Option<Vec<(u64, bool)>> {
        self.base.borrow().allocation(lba, blocks)
    }
}

/// SPDK's pass-through bdev.
pub struct PassthruBdev {
    fwd: Forward,
}

impl PassthruBdev {
    /// `name` over the claimed `base`; without a UUID, one derived from
    /// the name.
    pub fn new(name: &str, uuid: Option<Uuid>, base: SharedBdev, base_id: BdevId) -> Self {
        let uuid = uuid.unwrap_or_else(|| Uuid::from_name(&[b"passthru", name.as_bytes()]));
        PassthruBdev {
            fwd: Forward::new(name, PASSTHRU_PRODUCT, uuid, base, base_id),
        }
    }

    pub fn forward(&self) -> &Forward {
        &self.fwd
    }
}

impl BlockDevice for PassthruBdev {
    fn info(&self) -> &BdevInfo {
        self.fwd.info()
    }

    fn submit(&mut self, req: IoRequest, now_us: u64) -> Result<(), IoRequest> {
        self.fwd.submit(req, now_us)
    }

    fn poll(&mut self, now_us: u64, out: &mut Vec<IoCompletion>) -> usize {
        self.fwd.poll(now_us, out)
    }

    fn in_flight(&self) -> usize {
        self.fwd.in_flight()
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
    use crate::{IoBuf, MallocBdev, NullBdev, Registry, RegistryError};
    use alloc::boxed::Box;

    fn run(reg: &mut Registry, id: BdevId, op: IoOp) -> IoCompletion {
        reg.submit(
            id,
            IoRequest {
                tag: 77,
                op,
                fua: false,
            },
            1,
        )
        .unwrap();
        let mut out = Vec::new();
        for t in 2..10 {
            reg.poll(t, &mut out);
            if !out.is_empty() {
                break;
            }
        }
        assert_eq!(out.len(), 1);
        let (got, c) = out.pop().unwrap();
        assert_eq!((got, c.tag), (id, 77));
        c
    }

    #[test]
    fn forwards_io_and_gives_the_base_back() {
        let mut reg = Registry::new();
        let base = reg
            .add(Box::new(MallocBdev::new("Malloc0", 64, 512)))
            .unwrap();
        let h = reg.claim(base, "PT0").unwrap();
        let pt = reg
            .add(Box::new(PassthruBdev::new("PT0", None, h, base)))
            .unwrap();
        assert!(reg.with_device(pt, |_: &mut PassthruBdev| ()).is_some());
        let info = reg.info(pt).unwrap();
        assert_eq!(
            (info.product.as_str(), info.num_blocks, info.block_size),
            (PASSTHRU_PRODUCT, 64, 512)
        );
        assert_eq!(reg.claimed_by(base), Some("PT0"));
        let mut w = IoBuf::new(1024);
        w.as_mut_slice().fill(0x5a);
        assert!(
            run(&mut reg, pt, IoOp::Write { lba: 3, buf: w })
                .status
                .is_ok()
        );
        let c = run(
            &mut reg,
            base,
            IoOp::Read {
                lba: 3,
                buf: IoBuf::new(512),
            },
        );
        assert_eq!(c.status, IoStatus::Claimed, "the base is ours alone");
        let c = run(
            &mut reg,
            pt,
            IoOp::Read {
                lba: 4,
                buf: IoBuf::new(512),
            },
        );
        assert!(c.buf.unwrap().as_slice().iter().all(|&b| b == 0x5a));
        assert_eq!(
            reg.allocation(pt, 0, 8).unwrap(),
            [(3, false), (2, true), (3, false)]
        );
        assert_eq!(
            reg.remove(base).err(),
            Some(RegistryError::Claimed("PT0".into()))
        );
        // Delete: take a handle, remove and drop the pass-through, release.
        let h = reg
            .with_device(pt, |p: &mut PassthruBdev| p.forward().base_handle())
            .unwrap();
        assert!(
            reg.with_device(pt, |_: &mut MallocBdev| ()).is_none(),
            "not a malloc"
        );
        drop(reg.remove(pt).unwrap());
        reg.release(base, h).unwrap();
        assert_eq!(reg.claimed_by(base), None);
        let c = run(
            &mut reg,
            base,
            IoOp::Read {
                lba: 3,
                buf: IoBuf::new(512),
            },
        );
        assert!(c.buf.unwrap().as_slice().iter().all(|&b| b == 0x5a));
    }

    #[test]
    fn follows_a_base_that_shrinks() {
        let mut reg = Registry::new();
        let base = reg.add(Box::new(NullBdev::new("N", 64, 512))).unwrap();
        let h = reg.claim(base, "PT").unwrap();
        let mut pt = PassthruBdev::new("PT", None, h.clone(), base);
        h.borrow_mut().resize(8).unwrap();
        let req = IoRequest {
            tag: 5,
            op: IoOp::Unmap { lba: 8, blocks: 1 },
            fua: false,
        };
        pt.submit(req, 0).unwrap();
        let mut out = Vec::new();
        assert_eq!(pt.poll(0, &mut out), 1);
        assert_eq!((out[0].tag, out[0].status), (5, IoStatus::OutOfRange));
        assert_eq!(pt.info().num_blocks, 8);
    }
}
