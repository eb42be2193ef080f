//! The management plane's first front end: SPDK-style JSON-RPC 2.0 over a
//! byte stream, as SPDK's own client speaks it (JSON values back to back, no
//! framing; batches as arrays; notifications without an id).
//!
//! - [`Session`]: one connection; bytes in, response bytes out.
//! - [`methods`]: the method table (modern name, seed-era aliases, handler,
//!   whether it may run before or after `framework_start_init`).
//! - [`Model`] (from `ironbay-model`): what the methods operate on, supplied
//!   by the caller. Handlers only translate JSON to its operations and back,
//!   so later front ends (targetd, QMP, REST) share the same operations.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod methods;
#[cfg(test)]
mod seeds;
mod session;

pub use ironbay_model::{Devices, Model};
pub use methods::{METHODS, Method, RpcError};
pub use session::{
    MAX_BATCH, MAX_BATCH_OUTPUT, MAX_OUTPUT, MAX_REFUSED, MAX_REQUEST, MAX_VALUES, Session, Wait,
};
