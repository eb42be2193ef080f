//! RAM-backed bdev (SPDK's `bdev_malloc`): completes every request on the
//! next poll.

use crate::types::{BdevInfo, BlockDevice, IoCompletion, IoOp, IoRequest, IoStatus, Uuid};
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

pub struct MallocBdev {
    info: BdevInfo,
    data: Vec<u8>,
    done: VecDeque<IoCompletion>,
}

impl MallocBdev {
    /// `num_blocks` zeroed blocks of `block_size` bytes. The caller checks the
    /// size against available memory first.
    pub fn new(name: &str, num_blocks: u64, block_size: u32) -> Self {
        MallocBdev {
            info: BdevInfo::in_memory(
                name,
                "Malloc disk",
                Uuid::from_name(&[b"malloc", name.as_bytes()]),
                num_blocks,
                block_size,
            ),
            data: vec![0; (num_blocks * block_size as u64) as usize],
            done: VecDeque::new(),
        }
    }

    pub fn set_uuid(&mut self, uuid: Uuid) {
        self.info.uuid = uuid;
    }

    /// Lowers the largest transfer (to exercise request splitting).
    pub fn set_max_transfer(&mut self, bytes: u32) {
        self.info.max_transfer = bytes;
    }

    pub fn set_read_only(&mut self, ro: bool) {
        self.info.read_only = ro;
    }

    fn range(&self, lba: u64, bytes: usize) -> core::ops::Range<usize> {
        let start = (lba * self.info.block_size as u64) as usize;
        start..start + bytes
    }
}

impl BlockDevice for MallocBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn submit(&mut self, req: IoRequest, _now_us: u64) -> Result<(), IoRequest> {
        let bs = self.info.block_size as usize;
        let buf = match req.op {
            IoOp::Read { lba, mut buf } => {
                let r = self.range(lba, buf.len());
                buf.as_mut_slice().copy_from_slice(&self.data[r]);
                Some(buf)
            }
            IoOp::Write { lba, buf } => {
                let r = self.range(lba, buf.len());
                self.data[r].copy_from_slice(buf.as_slice());
                Some(buf)
            }
            IoOp::Unmap { lba, blocks } | IoOp::WriteZeroes { lba, blocks } => {
                let r = self.range(lba, blocks as usize * bs);
                self.data[r].fill(0);
                None
            }
            IoOp::Flush => None,
        };
        self.done.push_back(IoCompletion {
            tag: req.tag,
            status: IoStatus::Success,
            buf,
        });
        Ok(())
    }

    fn poll(&mut self, _now_us: u64, out: &mut Vec<IoCompletion>) -> usize {
        let n = self.done.len();
        out.extend(self.done.drain(..));
        n
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }
}
