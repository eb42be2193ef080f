//! A sans-IO NVMe over Fabrics target on the TCP transport (NVMe/TCP 1.0,
//! NVMe base 2.0 admin and NVM command sets, Fabrics commands).
//!
//! Like the NBD and iSCSI engines it owns no socket and no device: a
//! [`Connection`] (one TCP connection = one NVMe queue pair) takes the bytes
//! a host sent and gives back bytes to send and block I/O to start;
//! completions come back in. Controllers span connections (one admin queue,
//! any number of I/O queues), so their state lives in the [`Target`], which
//! also owns the configuration (subsystems, namespaces, hosts, listeners,
//! transport options) that management front ends change.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod config;
pub mod conn;
pub mod ctrl;
mod engine;
mod h2c;
mod io;
mod mem;
pub mod pdu;
pub mod spec;
pub mod target;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_endpoint;

pub use config::Config;
pub use conn::{BlockIo, Connection};
pub use target::{QpairInfo, Target};
