//! A sans-IO iSCSI target (RFC 7143) with an SBC-3 / SPC-4 SCSI layer.
//!
//! The engine owns no socket and no device: a [`Connection`] takes the bytes
//! an initiator sent and gives back bytes to send and block I/O to start;
//! completions come back in. The kernel drives it over smoltcp sockets and
//! the bdev registry, the hosted runner over std sockets and file bdevs.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod chap;
pub mod config;
pub mod conn;
mod engine;
pub mod login;
pub mod pdu;
pub mod scsi;
mod session;
pub mod target;
pub mod text;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_endpoint;

pub use config::Config;
pub use conn::{BlockIo, Connection};
pub use target::{ConnInfo, Target};
