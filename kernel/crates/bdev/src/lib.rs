//! The block device layer, modelled on SPDK's bdev.
//!
//! Every block device, whatever drives it (NVMe, virtio-blk, RAM, a future
//! logical volume or cache), implements [`BlockDevice`]: it describes itself
//! with a [`BdevInfo`], accepts [`IoRequest`]s and hands back
//! [`IoCompletion`]s when polled. Requests own their data buffer ([`IoBuf`])
//! and get it back in the completion, so no borrow outlives a call and a
//! driver can keep many requests in flight.
//!
//! Callers go through the [`Registry`], which names devices the SPDK way
//! (`Nvme0n1`, `VirtioBlk0`, `Malloc0`, `Null0`), rejects bad requests (out of
//! range, misaligned, unsupported, too large, writes to read-only devices) with
//! an error completion instead of passing them down, and keeps per-device I/O
//! statistics with latency histograms.
//!
//! Driving order, per poll-loop iteration: [`Registry::submit`] any number of
//! requests, then [`Registry::poll`] to collect completions. Time comes in as
//! microseconds from the caller; the layer owns no clock.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod bench;
pub mod budget;
mod buf;
pub mod dirty;
pub mod engine;
pub mod error;
mod malloc;
mod null;
mod nvme_options;
pub mod passthru;
pub mod pattern;
pub mod powercut;
pub mod ram;
mod registry;
mod rng;
pub mod stats;
pub mod sync;
mod types;

pub use budget::{Account, Budget, Short};
pub use buf::IoBuf;
pub use engine::BlockIo;
pub use malloc::MallocBdev;
pub use null::NullBdev;
pub use nvme_options::{NvmeHotplug, NvmeOptions, NvmeSettings, TimeoutAction};
pub use passthru::PassthruBdev;
pub use ram::{HeapPages, PagePool, RamStore, SharedPool};
pub use registry::{BdevId, BdevOptions, QosLimits, Registry, RegistryError, SharedBdev};
pub use rng::Rng;
pub use stats::{IoStats, LatencyHistogram};
pub use types::{
    BdevInfo, BlockDevice, IoCompletion, IoOp, IoRequest, IoStatus, IoType, IoTypes, Uuid,
};
