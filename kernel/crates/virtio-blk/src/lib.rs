//! virtio-blk as a bdev.
//!
//! Built on virtio-drivers' transports and split virtqueues rather than its
//! `VirtIOBlk`, which keeps 16 requests, blocks on flush and knows neither
//! DISCARD nor WRITE ZEROES. Here every request owns a slot whose header,
//! segment and status bytes stay put until the device returns the chain, so
//! as many requests run at once as the ring has room for.
//!
//! - [`wire`]: feature bits, configuration layout, request encoding (safe,
//!   host-tested).
//! - [`VirtioBlk`]: the device, generic over virtio-drivers' `Hal` and
//!   `Transport`; tested on the host against a fake device.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

mod device;
pub mod wire;

#[cfg(test)]
mod fake;

pub use device::{QUEUE_SIZE, VirtioBlk};
