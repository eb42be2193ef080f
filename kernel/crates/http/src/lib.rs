//! The HTTP/1.1 server every management front end shares (targetd, the
//! RapidDisk-style REST API, the status page): sans-IO like the engines.
//!
//! - [`Conn`]: one connection. Bytes in ([`Conn::handle_input`]), at most
//!   one parsed [`Request`] out at a time ([`Conn::poll_request`]), its
//!   [`Response`] in ([`Conn::respond`], now or at a later time), bytes out
//!   ([`Conn::poll_output`] / [`Conn::consume_output`]), deadlines
//!   ([`Conn::poll_timeout`] / [`Conn::handle_timeout`]).
//! - [`Server`]: a port's connection slots over the endpoint's
//!   [`Sockets`](ironbay_endpoint::Sockets): accept, serve each in turn
//!   with a byte quota, idle and stall deadlines, closes that end in an
//!   abort, and eviction of the quietest connection when every slot is
//!   taken, so a client that stalls mid-request never blocks another.
//!
//! Memory is bounded per connection by [`Limits`] (head, body, queued
//! output), and per port by the slot count.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod conn;
mod request;
mod response;
mod server;

pub use conn::{Conn, Limits};
pub use request::{Credentials, Request};
pub use response::{Response, reason};
pub use server::{Handler, Reply, Server, Stats};
