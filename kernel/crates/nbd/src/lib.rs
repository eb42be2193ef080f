//! A sans-IO NBD server (NBD's `doc/proto.md`).
//!
//! The engine owns no socket and no device: [`Connection`] takes the bytes a
//! client sent and gives back the bytes to send and the block I/O to start;
//! completions come back in. The kernel drives it over smoltcp sockets and the
//! bdev registry, the hosted runner over std sockets and file bdevs.
//!
//! Supported: fixed newstyle handshake with NO_ZEROES; options EXPORT_NAME,
//! ABORT, LIST, INFO, GO (export, name, description, block size),
//! STRUCTURED_REPLY, LIST/SET_META_CONTEXT with `base:allocation`; commands
//! READ, WRITE, DISC, FLUSH, TRIM, WRITE_ZEROES (FAST_ZERO), BLOCK_STATUS,
//! CACHE; FUA; many requests in flight with replies in completion order;
//! requests split to the bdev's limits.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod conn;
mod engine;
pub mod export;
pub mod wire;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_endpoint;

pub use conn::{AllocationMap, BlockIo, Connection, NoAllocationMap};
pub use export::{Export, Exports};
