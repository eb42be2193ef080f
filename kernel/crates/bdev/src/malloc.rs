//! RAM-backed bdev (SPDK's `bdev_malloc`, and RapidDisk's RAM disks):
//! data in pages taken on first write, every request completed on the next
//! poll.

use crate::ram::{HeapPages, RamStore, SharedPool};
use crate::types::{BdevInfo, BlockDevice, IoCompletion, IoOp, IoRequest, IoStatus, Uuid};
use alloc::collections::VecDeque;
use alloc::vec::Vec;

pub struct MallocBdev {
    info: BdevInfo,
    store: RamStore,
    done: VecDeque<IoCompletion>,
}

impl MallocBdev {
    /// `num_blocks` zeroed blocks of `block_size` bytes, pages from the heap
    /// (tests and tools).
    pub fn new(name: &str, num_blocks: u64, block_size: u32) -> Self {
        let uuid = Uuid::from_name(&[b"malloc", name.as_bytes()]);
        Self::with_pool(
            name,
            "Malloc disk",
            uuid,
            num_blocks,
            block_size,
            HeapPages::unlimited(),
        )
        .expect("heap tables")
    }

    /// A RAM bdev whose pages come from `pool` as blocks are first written.
    /// `NoMemory` if its tables do not fit the heap.
    pub fn with_pool(
        name: &str,
        product: &str,
        uuid: Uuid,
        num_blocks: u64,
        block_size: u32,
        pool: SharedPool,
    ) -> Result<Self, IoStatus> {
        Ok(MallocBdev {
            info: BdevInfo::in_memory(name, product, uuid, num_blocks, block_size),
            store: RamStore::new(pool, num_blocks, block_size)?,
            done: VecDeque::new(),
        })
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

    /// The data, for a module that stacks on this device and reaches it
    /// directly (a RAM cache).
    pub fn store(&self) -> &RamStore {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut RamStore {
        &mut self.store
    }

    fn complete(&mut self, tag: u64, status: IoStatus, buf: Option<crate::IoBuf>) {
        self.done.push_back(IoCompletion { tag, status, buf });
    }
}

impl BlockDevice for MallocBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn submit(&mut self, req: IoRequest, _now_us: u64) -> Result<(), IoRequest> {
        let bs = self.info.block_size as u64;
        let (status, buf) = match req.op {
            IoOp::Read { lba, mut buf } => {
                self.store.read(lba * bs, buf.as_mut_slice());
                (IoStatus::Success, Some(buf))
            }
            IoOp::Write { lba, buf } => {
                let r = self.store.write(lba * bs, buf.as_slice());
                (r.err().unwrap_or(IoStatus::Success), Some(buf))
            }
            IoOp::Unmap { lba, blocks } | IoOp::WriteZeroes { lba, blocks } => {
                self.store.zero(lba, blocks as u64);
                (IoStatus::Success, None)
            }
            IoOp::Flush => (IoStatus::Success, None),
        };
        self.complete(req.tag, status, buf);
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
        self.store.allocation(lba, blocks)
    }

    /// Grows only: the new blocks read as zeroes. Shrinking would pull data
    /// from under exports that cached the size.
    fn resize(&mut self, num_blocks: u64) -> Result<(), IoStatus> {
        if num_blocks < self.info.num_blocks {
            return Err(IoStatus::Unsupported);
        }
        self.store.resize(num_blocks)?;
        self.info.num_blocks = num_blocks;
        Ok(())
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn core::any::Any> {
        Some(self)
    }
}
