//! RAM-backed bdev (SPDK's `bdev_malloc`): completes every request on the
//! next poll.

use crate::types::{BdevInfo, BlockDevice, IoCompletion, IoOp, IoRequest, IoStatus, Uuid};
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

pub struct MallocBdev {
    info: BdevInfo,
    data: Vec<u8>,
    /// One bit per block: written since creation or the last unmap/zeroing.
    allocated: Vec<u64>,
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
            allocated: vec![0; num_blocks.div_ceil(64) as usize],
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

    fn mark(&mut self, lba: u64, blocks: u64, on: bool) {
        for b in lba..lba + blocks {
            let (w, bit) = ((b / 64) as usize, b % 64);
            if on {
                self.allocated[w] |= 1 << bit;
            } else {
                self.allocated[w] &= !(1 << bit);
            }
        }
    }

    fn is_allocated(&self, b: u64) -> bool {
        self.allocated[(b / 64) as usize] & (1 << (b % 64)) != 0
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
                self.mark(lba, (buf.len() / bs) as u64, true);
                Some(buf)
            }
            IoOp::Unmap { lba, blocks } | IoOp::WriteZeroes { lba, blocks } => {
                let r = self.range(lba, blocks as usize * bs);
                self.data[r].fill(0);
                self.mark(lba, blocks as u64, false);
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

    fn allocation(&self, lba: u64, blocks: u64) -> Option<Vec<(u64, bool)>> {
        let end = lba.checked_add(blocks)?.min(self.info.num_blocks);
        let mut runs: Vec<(u64, bool)> = Vec::new();
        for b in lba..end {
            let a = self.is_allocated(b);
            match runs.last_mut() {
                Some((n, state)) if *state == a => *n += 1,
                _ => runs.push((1, a)),
            }
        }
        Some(runs)
    }

    /// Grows only: the new blocks read as zeroes. Shrinking would pull data
    /// from under exports that cached the size.
    fn resize(&mut self, num_blocks: u64) -> Result<(), IoStatus> {
        if num_blocks < self.info.num_blocks {
            return Err(IoStatus::Unsupported);
        }
        let bytes = num_blocks
            .checked_mul(self.info.block_size as u64)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or(IoStatus::NoMemory)?;
        let words = num_blocks.div_ceil(64) as usize;
        // Fallible: a resize request must not abort the kernel on OOM.
        self.data
            .try_reserve_exact(bytes - self.data.len())
            .map_err(|_| IoStatus::NoMemory)?;
        self.allocated
            .try_reserve_exact(words - self.allocated.len())
            .map_err(|_| IoStatus::NoMemory)?;
        self.data.resize(bytes, 0);
        self.allocated.resize(words, 0);
        self.info.num_blocks = num_blocks;
        Ok(())
    }
}
