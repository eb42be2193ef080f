//! RAM cache bdev: a RAM disk ([`MallocBdev`]) stacked over any block
//! device, as RapidDisk's `dm-rapiddisk-cache` (write-through,
//! write-around) and `dm-writecache` (write-back) stack a RAM disk over a
//! disk.
//!
//! # Layout
//! The source is cut into 4 KiB cache blocks. Cache slot `i` is bytes
//! `i * 4096..` of the RAM disk, read and written synchronously through its
//! [`RamStore`]; only the source sees asynchronous I/O. Slots form sets of
//! 512 ways (fewer for a small RAM disk); a block's set is fixed, and a
//! miss takes the set's first free slot, else the next clean one round the
//! set (RapidDisk's FIFO-like sweep). Dirty slots are never evicted.
//!
//! # Modes
//! - **write-through**: writes go to the source; whole blocks are cached
//!   once the source has them. Reads hit, or read the source and fill.
//! - **write-around**: writes go to the source only and drop cached copies;
//!   reads fill.
//! - **write-back**: writes complete once in RAM and the blocks are dirty;
//!   [`poll`](BlockDevice::poll) writes the oldest back, a bounded number
//!   at a time, backing off after errors. Read misses are not cached (as in
//!   dm-writecache). A flush completes once every block dirty when it came
//!   is on the source and the source flushed; a FUA write goes through to
//!   the source. A write finding no room (set all dirty, page pool empty)
//!   goes straight to the source.
//!
//! Parts of a request that do not cover a whole cache block go to the
//! source and drop a clean cached copy (write-back merges them into a
//! cached copy instead: it may hold newer data than the source).
//!
//! # Invariants
//! - Requests touching a common cache block run one after the other, in
//!   arrival order, so each sees the cache as whole requests left it.
//! - A slot serves data only when clean or dirty; a fill the source failed
//!   leaves it invalid.
//! - RAM holds a write's data before any source write of it starts, and no
//!   write-back of a block overlaps a FUA write, unmap or write-zeroes of
//!   it on the source.
//! - State is bounded: [`MAX_REQUESTS`] caller requests,
//!   [`WRITEBACK_DEPTH`] write-backs, children only for requests in flight.
//!
//! # Driving
//! As any [`BlockDevice`]: submit, then poll. While dirty blocks remain,
//! [`in_flight`](BlockDevice::in_flight) stays above zero so the registry
//! keeps polling (and refuses to remove the device); call
//! [`CacheBdev::write_back_all`] before removal.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod done;
mod flight;
mod io;
mod map;
mod plan;
mod stats;
mod wb;
mod writeback;

pub use stats::Stats;

use alloc::string::String;
use alloc::vec::Vec;
use core::any::Any;
use ironbay_bdev::sync::Clock;
use ironbay_bdev::{
    BdevId, BdevInfo, BlockDevice, IoCompletion, IoRequest, IoStatus, IoType, MallocBdev, RamStore,
    SharedBdev, Uuid,
};

/// RapidDisk's product name for its caches.
pub const PRODUCT: &str = "RapidDisk cache";
/// Cache block size in bytes (a page, as RapidDisk's).
pub const CACHE_BLOCK: u64 = 4096;
/// Ways per set (RapidDisk's default associativity).
pub const DEFAULT_ASSOC: u32 = 512;
/// Caller requests accepted at once; more are refused from `submit`.
pub const MAX_REQUESTS: usize = 128;
/// Write-backs in flight at once.
pub const WRITEBACK_DEPTH: usize = 32;

/// How writes are cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    WriteThrough,
    WriteAround,
    WriteBack,
}

impl Mode {
    /// RapidDisk's name for the mode.
    pub fn policy(self) -> &'static str {
        match self {
            Mode::WriteThrough => "write-through",
            Mode::WriteAround => "write-around",
            Mode::WriteBack => "write-back",
        }
    }

    /// Parses a policy name, its short form or `writeback`.
    pub fn from_policy(s: &str) -> Option<Mode> {
        match s {
            "write-through" | "writethrough" | "wt" => Some(Mode::WriteThrough),
            "write-around" | "writearound" | "wa" => Some(Mode::WriteAround),
            "write-back" | "writeback" | "wb" => Some(Mode::WriteBack),
            _ => None,
        }
    }

    /// What RapidDisk puts before the source's name to name the cache.
    pub fn prefix(self) -> &'static str {
        match self {
            Mode::WriteThrough => "rc-wt_",
            Mode::WriteAround => "rc-wa_",
            Mode::WriteBack => "rc-wb_",
        }
    }
}

/// A RAM cache over a claimed source, in a claimed RAM disk.
pub struct CacheBdev {
    info: BdevInfo,
    mode: Mode,
    source: SharedBdev,
    source_id: BdevId,
    ram: SharedBdev,
    ram_id: BdevId,
    dir: map::Directory,
    dirty: wb::Dirty,
    counters: Stats,
    io: flight::Flight,
    /// The caller's time at the current submit or poll.
    now: u64,
    /// A write-back failed since [`CacheBdev::write_back_all`] began.
    wb_failed: Option<IoStatus>,
}

impl CacheBdev {
    /// `name` over the claimed `source`, caching in the claimed RAM disk
    /// `ram` (a [`MallocBdev`]). It presents the source's block size and
    /// size; the cache holds the RAM disk's size in 4 KiB blocks.
    ///
    /// `Unsupported`: `ram` is not a RAM disk, or the source's block size
    /// does not divide 4 KiB. `NoSpace`: the RAM disk holds no whole cache
    /// block. `NoMemory`: no heap for the tables.
    pub fn new(
        name: &str,
        mode: Mode,
        source: SharedBdev,
        source_id: BdevId,
        ram: SharedBdev,
        ram_id: BdevId,
    ) -> Result<Self, IoStatus> {
        Self::with_associativity(name, mode, source, source_id, ram, ram_id, DEFAULT_ASSOC)
    }

    /// As [`new`](Self::new) with `assoc` ways per set (RapidDisk's
    /// associativity; clamped to 1..=cache blocks).
    pub fn with_associativity(
        name: &str,
        mode: Mode,
        source: SharedBdev,
        source_id: BdevId,
        ram: SharedBdev,
        ram_id: BdevId,
        assoc: u32,
    ) -> Result<Self, IoStatus> {
        let mut info = source
            .try_borrow()
            .map_err(|_| IoStatus::DeviceFailed)?
            .info()
            .clone();
        let bs = info.block_size as u64;
        if bs == 0 || !CACHE_BLOCK.is_multiple_of(bs) {
            return Err(IoStatus::Unsupported);
        }
        let ram_bytes = {
            let mut r = ram.try_borrow_mut().map_err(|_| IoStatus::DeviceFailed)?;
            let m = r
                .as_any_mut()
                .and_then(|a| a.downcast_mut::<MallocBdev>())
                .ok_or(IoStatus::Unsupported)?;
            m.store().size_bytes()
        };
        let dir = map::Directory::new(ram_bytes / CACHE_BLOCK, assoc)?;
        let dirty = wb::Dirty::new(dir.slots(), mode == Mode::WriteBack, WRITEBACK_DEPTH)?;
        let io = flight::Flight::new()?;
        info.name = String::from(name);
        info.product = String::from(PRODUCT);
        info.uuid = Uuid::from_name(&[b"rapiddisk-cache", name.as_bytes()]);
        info.queue_depth = info.queue_depth.clamp(1, MAX_REQUESTS as u32);
        if mode == Mode::WriteBack {
            // RAM is a volatile cache: callers must flush, and can.
            info.write_cache = true;
            info.io_types = info.io_types.with(IoType::Flush);
        }
        Ok(CacheBdev {
            info,
            mode,
            source,
            source_id,
            ram,
            ram_id,
            dir,
            dirty,
            counters: Stats::default(),
            io,
            now: 0,
            wb_failed: None,
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn source_id(&self) -> BdevId {
        self.source_id
    }

    pub fn ram_id(&self) -> BdevId {
        self.ram_id
    }

    /// Handles on the source and the RAM disk, to pass back to
    /// `Registry::release` once this device is removed and dropped.
    pub fn handles(&self) -> (SharedBdev, SharedBdev) {
        (self.source.clone(), self.ram.clone())
    }

    /// The counters, and the cache's occupancy now.
    pub fn stats(&self) -> Stats {
        let mut s = self.counters;
        let slots = self.dir.slots() as u64;
        s.errors = self.dirty.errors();
        s.num_blocks = slots;
        s.num_free_blocks = match self.mode {
            Mode::WriteBack => slots - self.dirty.count(),
            _ => slots - self.dir.valid(),
        };
        s.num_wb_blocks = self.dirty.inflight().len() as u64;
        s
    }

    /// Ways per set (RapidDisk's associativity).
    pub fn associativity(&self) -> u32 {
        self.dir.assoc() as u32
    }

    /// Blocks whose data the source lacks (those being written back too).
    pub fn dirty_blocks(&self) -> u64 {
        self.dirty.count()
    }

    /// Writes every dirty block back and flushes the source, blocking, for
    /// removal and orderly shutdown. Completions of requests in flight that
    /// end meanwhile are kept for the next `poll`. `Err` if the source
    /// failed a write-back (the data stays dirty in the cache) or stalled.
    pub fn write_back_all(&mut self, clock: Clock<'_>) -> Result<(), IoStatus> {
        self.drain_dirty(clock)
    }

    /// Follows the source's size (it may have been resized under us).
    fn sync_size(&mut self) {
        if let Ok(s) = self.source.try_borrow() {
            self.info.num_blocks = s.info().num_blocks;
        }
    }
}

/// Runs `f` on the RAM disk's store; `None` if it is out of reach.
fn with_store<R>(ram: &SharedBdev, f: impl FnOnce(&mut RamStore) -> R) -> Option<R> {
    let mut dev = ram.try_borrow_mut().ok()?;
    let m = dev.as_any_mut()?.downcast_mut::<MallocBdev>()?;
    Some(f(m.store_mut()))
}

impl BlockDevice for CacheBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn submit(&mut self, req: IoRequest, now_us: u64) -> Result<(), IoRequest> {
        self.submit_request(req, now_us)
    }

    fn poll(&mut self, now_us: u64, out: &mut Vec<IoCompletion>) -> usize {
        self.now = now_us;
        self.sync_size();
        self.pump(writeback::Issue::Background);
        let n = self.io.done.len();
        out.extend(self.io.done.drain(..));
        n
    }

    /// Caller requests not yet handed back, plus dirty blocks: background
    /// write-back needs polls too.
    fn in_flight(&self) -> usize {
        self.io.outstanding() + self.dirty.count() as usize
    }

    fn allocation(&self, lba: u64, blocks: u64) -> Option<Vec<(u64, bool)>> {
        // Dirty data the source does not show yet makes its map wrong.
        if self.mode == Mode::WriteBack {
            return None;
        }
        self.source.try_borrow().ok()?.allocation(lba, blocks)
    }

    fn refresh(&mut self) {
        self.sync_size();
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_round_trip() {
        for m in [Mode::WriteThrough, Mode::WriteAround, Mode::WriteBack] {
            assert_eq!(Mode::from_policy(m.policy()), Some(m));
            assert!(m.prefix().starts_with("rc-w") && m.prefix().ends_with('_'));
        }
        assert_eq!(Mode::from_policy("writeback"), Some(Mode::WriteBack));
        assert_eq!(Mode::from_policy("wt"), Some(Mode::WriteThrough));
        assert_eq!(Mode::from_policy("wa"), Some(Mode::WriteAround));
        assert_eq!(Mode::from_policy("wb"), Some(Mode::WriteBack));
        assert_eq!(Mode::from_policy("write back"), None);
    }
}
