//! Logical volume stores, in the manner of SPDK's lvol/blobstore: a store
//! on any bdev, carved into clusters; volumes thick or thin, snapshots and
//! clones sharing clusters; found again at boot by tasting.
//!
//! Sans-IO in the bdev layer's sense: the store drives its base device only
//! through [`ironbay_bdev::BlockDevice`] and takes time from the caller's
//! clock. Metadata is a checkpoint in one of two slots plus a journal of
//! checksummed records (docs/lvol-format.md argues why every update is
//! crash-consistent); `tests/powercut.rs` cuts power at every write of every
//! operation.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod bitmaps;
mod extents;
mod format;
mod io;
mod meta;
mod state;
mod store;

use alloc::string::String;
use core::fmt;
use ironbay_bdev::IoStatus;

pub use bitmaps::BitmapInfo;
pub use format::{MAX_BITMAP_NAME, MAX_BITMAPS, MAX_NAME, MAX_VOLUMES};
pub use store::{Clear, ClockFn, LvolBdev, Store, StoreInfo, VolumeInfo};

/// SPDK's default cluster size.
pub const DEFAULT_CLUSTER_SIZE: u64 = 4 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    NotFound,
    /// The name is taken.
    Exists(String),
    Invalid(String),
    /// Refused while something depends on it.
    Busy(String),
    /// No free cluster.
    NoSpace,
    /// The metadata area cannot hold the result.
    MetadataFull,
    /// The on-disk metadata fails its checks; the store is not loaded.
    Damaged(String),
    Io(IoStatus),
}

impl Error {
    /// The status a data request that hit this error ends with.
    pub fn io_status(&self) -> IoStatus {
        match self {
            Error::NoSpace | Error::MetadataFull => IoStatus::NoSpace,
            Error::Io(s) => *s,
            _ => IoStatus::DeviceFailed,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotFound => write!(f, "no such volume"),
            Error::Exists(m) | Error::Invalid(m) | Error::Busy(m) => write!(f, "{m}"),
            Error::NoSpace => write!(f, "not enough free clusters in the store"),
            Error::MetadataFull => write!(f, "the store's metadata area is full"),
            Error::Damaged(m) => write!(f, "store metadata is damaged: {m}"),
            Error::Io(s) => write!(f, "I/O error on the base bdev: {s}"),
        }
    }
}
