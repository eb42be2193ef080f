//! Null bdev (SPDK's `bdev_null`): accepts everything, stores nothing. Reads
//! leave the buffer as it was, as SPDK's does, so it measures pure overhead.

use crate::types::{
    BdevInfo, BlockDevice, IoCompletion, IoRequest, IoStatus, IoType, IoTypes, Uuid,
};
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

pub struct NullBdev {
    info: BdevInfo,
    done: VecDeque<IoCompletion>,
}

impl NullBdev {
    pub fn new(name: &str, num_blocks: u64, block_size: u32) -> Self {
        let io_types = IoTypes::empty()
            .with(IoType::Read)
            .with(IoType::Write)
            .with(IoType::Flush)
            .with(IoType::Unmap)
            .with(IoType::WriteZeroes);
        NullBdev {
            info: BdevInfo {
                name: String::from(name),
                uuid: Uuid::from_name(&[b"null", name.as_bytes()]),
                product: String::from("Null disk"),
                block_size,
                num_blocks,
                io_types,
                max_transfer: 32 << 20,
                max_unmap_blocks: u32::MAX,
                max_write_zeroes_blocks: u32::MAX,
                queue_depth: 4096,
                write_cache: false,
                read_only: false,
            },
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
}
