//! Polled NVMe over PCIe.
//!
//! The driver touches the controller only through [`NvmeHal`] (register reads
//! and writes, DMA memory, a clock), so the queue logic runs on the host
//! against a fake controller. In the kernel the HAL is volatile MMIO on BAR0
//! and identity-mapped frames.
//!
//! - [`spec`]: register offsets, queue entry layouts, identify data.
//! - [`prp`]: PRP entries and lists for a data buffer.
//! - [`queue`]: one submission/completion queue pair, with phase tags.
//! - [`Controller`]: bring-up, admin commands, I/O submission and polling,
//!   timeouts and fatal status.
//! - [`NvmeBdev`]: a namespace as a block device.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod controller;
mod hal;
mod namespace;
pub mod prp;
pub mod queue;
pub mod spec;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use controller::{Controller, Event, IoCmd, Namespace, NvmeError, Options, QueueFull};
pub use hal::{DmaRegion, NvmeHal};
pub use namespace::NvmeBdev;
