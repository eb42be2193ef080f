//! The QEMU Machine Protocol, server side, as QEMU itself speaks it, so
//! QMP clients (libvirt, the `qemu.qmp` library, `qmp-shell`) can drive the
//! appliance. Sans-IO: bytes in, bytes out, no sockets or clocks.
//!
//! - [`Session`]: one connection. Greeting, capabilities negotiation,
//!   request checking, replies echoing `id`, events, bounded buffers.
//! - [`Dispatch`]: the appliance's commands, supplied by the caller. The
//!   session answers `qmp_capabilities`, `query-version` and
//!   `query-commands` itself.
//! - [`Args`]: reads a command's arguments with the usual
//!   "Parameter 'x' is missing" family of errors.
//! - [`stream`]: where one JSON message ends in the byte stream.
//! - [`block`]: the block node and NBD export commands over the object
//!   model.
//!
//! Invariants: a session holds at most [`MAX_MESSAGE`] bytes of input and
//! [`MAX_PENDING`] bytes of output whatever the peer does; every request
//! gets exactly one reply, in order; malformed input is an error reply to
//! that peer, never a panic. Error texts follow the reference server's
//! wording, since clients and their users match on them.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod args;
mod bitmaps;
pub mod block;
mod error;
mod json;
mod session;
pub mod stream;
mod transaction;

pub use args::Args;
pub use error::{ErrorClass, QmpError};
pub use session::{Dispatch, Greeting, MAX_OUTPUT, MAX_PENDING, MAX_REPLY, Session, Version};
pub use stream::{MAX_DEPTH, MAX_MESSAGE, MAX_VALUES};
