//! Null bdev (SPDK's `bdev_null`): accepts everything, stores nothing. Reads
//! leave the buffer as it was, as SPDK's does, so it measures pure overhead.

use crate::types::{BdevInfo, BlockDevice, IoCompletion, IoRequest, IoStatus, Uuid};
use alloc::collections::VecDeque;
use alloc::vec::Vec;

pub struct NullBdev {
    info: BdevInfo,
    done: VecDeque<IoCompletion>,
}

impl NullBdev {
    pub fn new(name: &str, num_blocks: u64, block_size: u32) -> Self {
        NullBdev {
            info: BdevInfo::in_memory(
                name,
                "Null disk",
                Uuid::from_name(&[b"null", name.as_bytes()]),
                num_blocks,
                block_size,
            ),
            done: VecDeque::new(),
        }
    }

    pub fn set_uuid(&mut self, uuid: Uuid) {
        self.info.uuid = uuid;
    }
}

impl BlockDevice for NullBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn submit(&mut self, req: IoRequest, _now_us: u64) -> Result<(), IoRequest> {
        let buf = req.op.into_buf();
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

    /// Any size: nothing is stored.
    fn resize(&mut self, num_blocks: u64) -> Result<(), IoStatus> {
        self.info.num_blocks = num_blocks;
        Ok(())
    }
}
