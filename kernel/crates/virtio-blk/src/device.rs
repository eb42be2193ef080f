//! The virtio-blk device: slots, submission and completion.

use crate::wire::{self, Features, Geometry, Header, RawConfig, Segment, req, status};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use ironbay_bdev::{
    BdevInfo, BlockDevice, IoBuf, IoCompletion, IoOp, IoRequest, IoStatus, IoType, IoTypes, Uuid,
};
use virtio_drivers::Hal;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;
use zerocopy::IntoBytes;

/// Descriptors in the request queue.
pub const QUEUE_SIZE: usize = 128;
/// Header, data or segment, status: three direct descriptors a request.
const SLOTS: usize = QUEUE_SIZE / 3;
/// We hand each request one data descriptor; cap transfers accordingly.
const MAX_TRANSFER: u32 = 1 << 20;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    /// Header and status only.
    Bare,
    /// Header, discard/write-zeroes segment, status.
    Segment,
}

struct Slot {
    header: Header,
    segment: Segment,
    status: [u8; 1],
    kind: Kind,
    tag: u64,
    buf: Option<IoBuf>,
}

impl Slot {
    /// The request's buffers as the device sees them: the ones it reads, then
    /// the ones it writes, each with how many of the two places are used.
    fn buffers(&mut self) -> ([&[u8]; 2], usize, [&mut [u8]; 2], usize) {
        let Slot {
            header,
            segment,
            status,
            buf,
            kind,
            ..
        } = self;
        let header = header.as_bytes();
        let data: &mut [u8] = match buf {
            Some(b) => b.as_mut_slice(),
            None => &mut [],
        };
        match kind {
            Kind::Read => ([header, &[]], 1, [data, status], 2),
            Kind::Write => ([header, data], 2, [status, &mut []], 1),
            Kind::Bare => ([header, &[]], 1, [status, &mut []], 1),
            Kind::Segment => ([header, segment.as_bytes()], 2, [status, &mut []], 1),
        }
    }
}

pub struct VirtioBlk<H: Hal, T: Transport> {
    transport: T,
    queue: VirtQueue<H, QUEUE_SIZE>,
    /// Boxed so the headers and status bytes the device points at never move.
    slots: Box<[Slot]>,
    free: Vec<u16>,
    by_token: [u16; QUEUE_SIZE],
    immediate: VecDeque<IoCompletion>,
    info: BdevInfo,
    geometry: Geometry,
    busy: usize,
}

/// Reads an optional config field; devices may expose a shorter config space.
fn field<T: Transport>(t: &T, offset: usize) -> u32 {
    t.read_config_space::<u32>(offset).unwrap_or(0)
}

impl<H: Hal, T: Transport> VirtioBlk<H, T> {
    pub fn new(mut transport: T, name: &str) -> Result<Self, virtio_drivers::Error> {
        let features = transport.begin_init(wire::WANTED);
        let capacity = transport.read_consistent(|| {
            let lo = transport.read_config_space::<u32>(wire::config::CAPACITY)? as u64;
            let hi = transport.read_config_space::<u32>(wire::config::CAPACITY + 4)? as u64;
            Ok(hi << 32 | lo)
        })?;
        let raw = RawConfig {
            capacity,
            seg_max: field(&transport, wire::config::SEG_MAX),
            blk_size: field(&transport, wire::config::BLK_SIZE),
            max_discard_sectors: field(&transport, wire::config::MAX_DISCARD_SECTORS),
            max_discard_seg: field(&transport, wire::config::MAX_DISCARD_SEG),
            max_write_zeroes_sectors: field(&transport, wire::config::MAX_WRITE_ZEROES_SECTORS),
            max_write_zeroes_seg: field(&transport, wire::config::MAX_WRITE_ZEROES_SEG),
        };
        let geometry = Geometry::new(features, &raw);
        let queue = VirtQueue::new(&mut transport, 0, false, false)?;
        transport.finish_init();

        let mut io_types = IoTypes::empty().with(IoType::Read).with(IoType::Flush);
        if !geometry.read_only {
            io_types = io_types.with(IoType::Write);
            if geometry.max_discard_blocks > 0 {
                io_types = io_types.with(IoType::Unmap);
            }
            if geometry.max_write_zeroes_blocks > 0 {
                io_types = io_types.with(IoType::WriteZeroes);
            }
        }
        let info = BdevInfo {
            name: String::from(name),
            uuid: Uuid::from_name(&[b"virtio-blk", name.as_bytes(), &capacity.to_le_bytes()]),
            product: String::from("VirtioBlk Disk"),
            block_size: geometry.block_size,
            num_blocks: geometry.num_blocks,
            io_types,
            max_transfer: MAX_TRANSFER,
            max_unmap_blocks: geometry.max_discard_blocks,
            max_write_zeroes_blocks: geometry.max_write_zeroes_blocks,
            queue_depth: SLOTS as u32,
            write_cache: geometry.flush,
            read_only: geometry.read_only,
            // Discard promises nothing about what later reads return.
            unmap_zeroes: false,
        };
        let slots = (0..SLOTS)
            .map(|_| Slot {
                header: Header::default(),
                segment: Segment::default(),
                status: [0xff],
                kind: Kind::Bare,
                tag: 0,
                buf: None,
            })
            .collect();
        Ok(VirtioBlk {
            transport,
            queue,
            slots,
            free: (0..SLOTS as u16).rev().collect(),
            by_token: [u16::MAX; QUEUE_SIZE],
            immediate: VecDeque::new(),
            info,
            geometry,
            busy: 0,
        })
    }

    pub fn features_summary(&self) -> Features {
        let mut f = Features::VERSION_1;
        f.set(Features::FLUSH, self.geometry.flush);
        f.set(Features::DISCARD, self.geometry.max_discard_blocks > 0);
        f.set(
            Features::WRITE_ZEROES,
            self.geometry.max_write_zeroes_blocks > 0,
        );
        f.set(Features::RO, self.geometry.read_only);
        f
    }
}

impl<H: Hal, T: Transport> BlockDevice for VirtioBlk<H, T> {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn submit(&mut self, req: IoRequest, _now_us: u64) -> Result<(), IoRequest> {
        let per_block = self.geometry.block_size as u64 / wire::SECTOR;
        let (kind, header, segment) = match &req.op {
            IoOp::Read { lba, .. } => (
                Kind::Read,
                Header {
                    kind: req::IN,
                    reserved: 0,
                    sector: lba * per_block,
                },
                None,
            ),
            IoOp::Write { lba, .. } => (
                Kind::Write,
                Header {
                    kind: req::OUT,
                    reserved: 0,
                    sector: lba * per_block,
                },
                None,
            ),
            IoOp::Flush if !self.geometry.flush => {
                // No volatile cache to flush.
                self.immediate.push_back(IoCompletion {
                    tag: req.tag,
                    status: IoStatus::Success,
                    buf: None,
                });
                return Ok(());
            }
            IoOp::Flush => (
                Kind::Bare,
                Header {
                    kind: req::FLUSH,
                    reserved: 0,
                    sector: 0,
                },
                None,
            ),
            IoOp::Unmap { lba, blocks } | IoOp::WriteZeroes { lba, blocks } => {
                let discard = matches!(req.op, IoOp::Unmap { .. });
                let kind = if discard {
                    req::DISCARD
                } else {
                    req::WRITE_ZEROES
                };
                let seg = Segment {
                    sector: lba * per_block,
                    sectors: (*blocks as u64 * per_block) as u32,
                    flags: 0,
                };
                (
                    Kind::Segment,
                    Header {
                        kind,
                        reserved: 0,
                        sector: 0,
                    },
                    Some(seg),
                )
            }
        };
        let Some(i) = self.free.pop() else {
            return Err(req);
        };
        let slot = &mut self.slots[i as usize];
        slot.header = header;
        slot.segment = segment.unwrap_or_default();
        slot.status = [0xff];
        slot.kind = kind;
        slot.tag = req.tag;
        slot.buf = req.op.into_buf();
        let (inputs, ni, mut outputs, no) = slot.buffers();
        #[allow(unsafe_code, reason = "virtqueue buffers must outlive the request")]
        // SAFETY: every buffer handed to the device lives in `self.slots[i]`
        // (boxed, never moved or touched until this token is popped in `poll`)
        // or in the IoBuf that slot owns until then.
        let token = unsafe { self.queue.add(&inputs[..ni], &mut outputs[..no]) };
        match token {
            Ok(token) => {
                self.by_token[token as usize] = i;
                self.busy += 1;
                if self.queue.should_notify() {
                    self.transport.notify(0);
                }
                Ok(())
            }
            Err(_) => {
                // Three descriptors per slot make this unreachable; fail the
                // request rather than trust it.
                let buf = self.slots[i as usize].buf.take();
                self.free.push(i);
                self.immediate.push_back(IoCompletion {
                    tag: req.tag,
                    status: IoStatus::DeviceFailed,
                    buf,
                });
                Ok(())
            }
        }
    }

    fn poll(&mut self, _now_us: u64, out: &mut Vec<IoCompletion>) -> usize {
        let before = out.len();
        out.extend(self.immediate.drain(..));
        while let Some(token) = self.queue.peek_used() {
            let i = self
                .by_token
                .get(token as usize)
                .copied()
                .unwrap_or(u16::MAX);
            let Some(slot) = self.slots.get_mut(i as usize) else {
                break;
            };
            let (inputs, ni, mut outputs, no) = slot.buffers();
            #[allow(unsafe_code, reason = "returning virtqueue buffers")]
            // SAFETY: these are exactly the buffers `submit` added under this
            // token, rebuilt from the same slot.
            let popped = unsafe {
                self.queue
                    .pop_used(token, &inputs[..ni], &mut outputs[..no])
            };
            if popped.is_err() {
                break;
            }
            self.by_token[token as usize] = u16::MAX;
            let result = match slot.status[0] {
                status::OK => IoStatus::Success,
                status::UNSUPP => IoStatus::Unsupported,
                code => IoStatus::DeviceError(code as u16),
            };
            out.push(IoCompletion {
                tag: slot.tag,
                status: result,
                buf: slot.buf.take(),
            });
            self.free.push(i);
            self.busy -= 1;
        }
        out.len() - before
    }

    fn in_flight(&self) -> usize {
        self.busy + self.immediate.len()
    }
}
