//! Networking glue between NIC drivers and smoltcp.
//!
//! - [`NetDevice`]: a NIC behind smoltcp's `phy::Device`, with a pool of
//!   receive buffers kept posted and transmit buffers reused, so the hot path
//!   never allocates and never waits for the device.
//! - [`Stack`]: one smoltcp interface per NIC role (`mgmt`, `data0`, ...),
//!   with static or DHCP IPv4, optional static IPv6 plus SLAAC, and its own
//!   socket set: a service bound to one role cannot be reached on another.
//! - [`Listener`]: a bounded pool of listening TCP sockets per service port,
//!   tuned for storage traffic.
//! - [`diag`]: the TCP discard/echo/source service for network benchmarks.
//!
//! Driving order per loop iteration: `Stack::poll` (moves frames between the
//! NIC and sockets), then services read and write their sockets, then
//! `Stack::poll` again to flush; `Stack::poll_delay` says when smoltcp next
//! needs attention, for the idle timer.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod device;
pub mod diag;
pub mod listener;
pub mod sockets;
pub mod stack;

#[cfg(test)]
mod fake;

pub use device::{NetDevice, NetDriver, RxStats};
pub use listener::{Listener, TcpTuning};
pub use sockets::{SetSockets, TcpSocket};
pub use stack::{Ipv4Mode, NicConfig, Role, Stack};
