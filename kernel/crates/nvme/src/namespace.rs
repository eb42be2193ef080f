//! A namespace as a bdev (`Nvme0n1`: controller 0, namespace 1).

use crate::controller::{Controller, Event, IoCmd, Namespace};
use crate::hal::NvmeHal;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use ironbay_bdev::{
    BdevInfo, BlockDevice, IoBuf, IoCompletion, IoOp, IoRequest, IoStatus, IoType, IoTypes, Uuid,
};

/// NVMe WRITE ZEROES counts blocks in 16 bits.
const MAX_WRITE_ZEROES: u32 = 1 << 16;

enum Pending {
    Free,
    Busy {
        tag: u64,
        buf: Option<IoBuf>,
    },
    /// Timed out and reported; the buffer waits here until the device lets go.
    Withheld {
        _buf: Option<IoBuf>,
    },
}

pub struct NvmeBdev<H: NvmeHal> {
    ctrl: Rc<RefCell<Controller<H>>>,
    owner: u32,
    queue: usize,
    nsid: u32,
    info: BdevInfo,
    pending: Vec<Pending>,
    free: Vec<u32>,
    busy: usize,
    events: Vec<Event>,
}

impl<H: NvmeHal> NvmeBdev<H> {
    /// The bdev `{controller}n{nsid}` for namespace `ns` of the controller
    /// named `controller` (SPDK's `Nvme0`), using I/O queue `queue`
    /// (namespaces may share one).
    pub fn new(
        ctrl: &Rc<RefCell<Controller<H>>>,
        controller: &str,
        ns: &Namespace,
        queue: usize,
    ) -> Self {
        let mut c = ctrl.borrow_mut();
        let owner = c.add_owner();
        let mut io_types = IoTypes::empty()
            .with(IoType::Read)
            .with(IoType::Write)
            .with(IoType::Flush);
        if c.identity.oncs.dataset_management() {
            io_types = io_types.with(IoType::Unmap);
        }
        if c.identity.oncs.write_zeroes() {
            io_types = io_types.with(IoType::WriteZeroes);
        }
        let name = format!("{controller}n{}", ns.nsid);
        let uuid = if ns.uuid == [0; 16] {
            Uuid::from_name(&[c.identity.serial.as_bytes(), &ns.nsid.to_le_bytes()])
        } else {
            Uuid(ns.uuid)
        };
        let depth = c.io_depth().saturating_sub(1).max(1) as u32;
        let info = BdevInfo {
            name,
            uuid,
            product: String::from("NVMe disk"),
            block_size: ns.identity.block_size,
            num_blocks: ns.identity.size_blocks,
            io_types,
            max_transfer: c.max_transfer(),
            max_unmap_blocks: u32::MAX,
            max_write_zeroes_blocks: MAX_WRITE_ZEROES,
            queue_depth: depth,
            write_cache: c.identity.volatile_write_cache,
            read_only: false,
            unmap_zeroes: ns.identity.dealloc_zeroes,
        };
        drop(c);
        NvmeBdev {
            ctrl: Rc::clone(ctrl),
            owner,
            queue,
            nsid: ns.nsid,
            info,
            pending: Vec::new(),
            free: Vec::new(),
            busy: 0,
            events: Vec::new(),
        }
    }

    fn slot(&mut self) -> u32 {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.pending.push(Pending::Free);
                (self.pending.len() - 1) as u32
            }
        }
    }
}

impl<H: NvmeHal> BlockDevice for NvmeBdev<H> {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn submit(&mut self, req: IoRequest, _now_us: u64) -> Result<(), IoRequest> {
        let bs = self.info.block_size as usize;
        let nsid = self.nsid;
        let ctrl = self.ctrl.borrow();
        let cmd = match &req.op {
            IoOp::Read { lba, buf } | IoOp::Write { lba, buf } => {
                let phys = ctrl.hal().buffer_phys(buf.addr());
                let (lba, blocks, len, fua) = (*lba, (buf.len() / bs) as u32, buf.len(), req.fua);
                if matches!(req.op, IoOp::Read { .. }) {
                    IoCmd::Read {
                        nsid,
                        lba,
                        blocks,
                        phys,
                        len,
                        fua,
                    }
                } else {
                    IoCmd::Write {
                        nsid,
                        lba,
                        blocks,
                        phys,
                        len,
                        fua,
                    }
                }
            }
            IoOp::Flush => IoCmd::Flush { nsid },
            IoOp::WriteZeroes { lba, blocks } => IoCmd::WriteZeroes {
                nsid,
                lba: *lba,
                blocks: *blocks,
            },
            IoOp::Unmap { lba, blocks } => IoCmd::Deallocate {
                nsid,
                lba: *lba,
                blocks: *blocks,
            },
        };
        drop(ctrl);
        let slot = self.slot();
        if self
            .ctrl
            .borrow_mut()
            .submit(self.queue, self.owner, slot as u64, cmd)
            .is_err()
        {
            self.free.push(slot);
            return Err(req);
        }
        self.pending[slot as usize] = Pending::Busy {
            tag: req.tag,
            buf: req.op.into_buf(),
        };
        self.busy += 1;
        Ok(())
    }

    fn poll(&mut self, _now_us: u64, out: &mut Vec<IoCompletion>) -> usize {
        let mut events = core::mem::take(&mut self.events);
        {
            let mut ctrl = self.ctrl.borrow_mut();
            ctrl.poll();
            ctrl.take_events(self.owner, &mut events);
        }
        let before = out.len();
        for e in events.drain(..) {
            let (slot, status) = match e {
                Event::Done { tag, status: 0 } => (tag, IoStatus::Success),
                Event::Done { tag, status } => (tag, IoStatus::DeviceError(status)),
                Event::Failed { tag } => (tag, IoStatus::DeviceFailed),
                Event::TimedOut { tag } => (tag, IoStatus::Timeout),
                Event::Released { tag } => {
                    // The device let go of a timed-out command's buffer.
                    if let Some(p) = self.pending.get_mut(tag as usize) {
                        *p = Pending::Free;
                        self.free.push(tag as u32);
                    }
                    continue;
                }
            };
            let Some(p) = self.pending.get_mut(slot as usize) else {
                continue;
            };
            let Pending::Busy { tag, buf } = core::mem::replace(p, Pending::Free) else {
                continue;
            };
            self.busy -= 1;
            if status == IoStatus::Timeout {
                *p = Pending::Withheld { _buf: buf };
                out.push(IoCompletion {
                    tag,
                    status,
                    buf: None,
                });
            } else {
                self.free.push(slot as u32);
                out.push(IoCompletion { tag, status, buf });
            }
        }
        self.events = events;
        out.len() - before
    }

    fn in_flight(&self) -> usize {
        self.busy
    }
}

impl<H: NvmeHal> NvmeBdev<H> {
    /// Buffers held back from timed-out commands.
    pub fn withheld(&self) -> usize {
        self.pending
            .iter()
            .filter(|p| matches!(p, Pending::Withheld { .. }))
            .count()
    }
}
