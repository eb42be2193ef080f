//! What the server offers: exports, each a named view of one bdev.

use alloc::string::String;
use alloc::vec::Vec;
use ironbay_bdev::{BdevId, BdevInfo, IoType, IoTypes};

#[derive(Clone, Debug)]
pub struct Export {
    pub name: String,
    /// The management id (QMP's block export id); the name unless given.
    pub id: String,
    pub description: String,
    pub bdev: BdevId,
    pub size: u64,
    pub block_size: u32,
    pub max_transfer: u32,
    pub max_unmap_blocks: u32,
    pub max_write_zeroes_blocks: u32,
    pub io_types: IoTypes,
    pub read_only: bool,
    /// Every connection sees the same data at once (one bdev, no caching here).
    pub multi_conn: bool,
    /// Every write completes only once stable (as if sent with FUA).
    pub writethrough: bool,
    /// Dirty bitmaps offered as `qemu:dirty-bitmap:NAME`: (bdev, name).
    pub bitmaps: Vec<(BdevId, String)>,
    /// `qemu:allocation-depth` is offered.
    pub allocation_depth: bool,
}

/// Largest request payload accepted, whatever the bdev allows (requests are
/// split to the bdev's own limit).
pub const MAX_REQUEST: u32 = 32 << 20;

impl Export {
    pub fn new(
        name: &str,
        description: &str,
        bdev: BdevId,
        info: &BdevInfo,
        read_only: bool,
    ) -> Self {
        Export {
            name: name.into(),
            id: name.into(),
            description: description.into(),
            bdev,
            size: info.size_bytes(),
            block_size: info.block_size,
            max_transfer: info.max_transfer,
            max_unmap_blocks: info.max_unmap_blocks,
            max_write_zeroes_blocks: info.max_write_zeroes_blocks,
            io_types: info.io_types,
            read_only: read_only || info.read_only,
            multi_conn: true,
            writethrough: false,
            bitmaps: Vec::new(),
            allocation_depth: false,
        }
    }

    /// Transmission flags for this export.
    pub fn flags(&self) -> u16 {
        use crate::wire::tflag::*;
        let mut f = HAS_FLAGS
            | SEND_FLUSH
            | SEND_FUA
            | SEND_DF
            | SEND_CACHE
            | SEND_WRITE_ZEROES
            | SEND_FAST_ZERO;
        if self.read_only {
            f |= READ_ONLY;
        }
        if self.io_types.contains(IoType::Unmap) && !self.read_only {
            f |= SEND_TRIM;
        }
        if self.multi_conn {
            f |= CAN_MULTI_CONN;
        }
        f
    }

    /// (minimum, preferred, maximum) request sizes for NBD_INFO_BLOCK_SIZE.
    pub fn block_sizes(&self) -> (u32, u32, u32) {
        let min = self.block_size;
        (min, min.max(4096), MAX_REQUEST)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Exports {
    pub list: Vec<Export>,
    /// Clients at once (QMP's `max-connections`); 0: as many as there are
    /// sockets. Beyond it a newcomer is closed at once.
    pub max_connections: usize,
    /// Clients connected now.
    pub connections: usize,
}

impl Exports {
    /// The export for `name`; the empty name means the first export.
    pub fn find(&self, name: &str) -> Option<&Export> {
        if name.is_empty() {
            return self.list.first();
        }
        self.list.iter().find(|e| e.name == name)
    }

    /// Whether `e` (a connection's copy) is still exported: a connection
    /// whose export was removed is dropped.
    pub fn still_has(&self, e: &Export) -> bool {
        self.list
            .iter()
            .any(|x| x.name == e.name && x.bdev == e.bdev)
    }
}
