//! The sans-IO endpoint under every target (NBD, iSCSI, NVMe-oF/TCP).
//!
//! An [`Endpoint`] owns one service's connection slots: it feeds each
//! socket's bytes to its engine ([`ironbay_bdev::engine::TargetEngine`]),
//! starts the engine's block I/O with storage tags ([`tag`]) that route
//! completions back to the right connection (and drop those of connections
//! that have closed), sends the engine's output, and enforces what no
//! engine can on its own: deadlines for every phase (handshake, stalled
//! readers, closes that never finish, which end in an abort), eviction of
//! connections still logging in when every slot is taken, round-robin
//! turns with byte quotas so one flooding peer cannot starve the others,
//! and one memory [`Budget`](ironbay_bdev::Budget) whose accounts every
//! engine allocates its buffers from.
//!
//! Sockets come in through the [`Sockets`] trait: smoltcp in the kernel,
//! std sockets in the hosted runner, [`sim`] in tests and fuzzers. Time
//! comes in as microseconds per call.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod endpoint;
pub mod sim;
mod socket;
pub mod tag;

#[cfg(test)]
mod tests;

pub use endpoint::{Endpoint, Limits, Stats};
pub use socket::{Socket, SocketState, Sockets};
