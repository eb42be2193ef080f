//! The connection as the endpoint drives it.

use crate::{Connection, Exports};
use core::net::SocketAddr;
use ironbay_bdev::engine::TargetEngine;
use ironbay_bdev::{Account, BlockIo, IoCompletion, Registry};

impl TargetEngine for Connection {
    type Target = Exports;
    const PEER: &'static str = "NBD client";
    fn open(_: SocketAddr, _: SocketAddr, _: u64, account: Account, e: &mut Exports) -> Self {
        e.connections += 1;
        let mut c = Connection::with_account(account);
        if e.max_connections > 0 && e.connections > e.max_connections {
            c.turn_away("too many clients (max-connections)");
        }
        c
    }
    fn wants_input(&self) -> bool {
        Connection::wants_input(self)
    }
    fn handle_input(&mut self, data: &[u8], e: &mut Exports, bdevs: &Registry, _: u64) -> usize {
        Connection::handle_input(self, data, e, bdevs)
    }
    fn waits_for_memory(&self) -> bool {
        Connection::waits_for_memory(self)
    }
    fn handle_memory(&mut self, _: &mut Exports, bdevs: &Registry, _: u64) {
        Connection::handle_memory(self, bdevs)
    }
    /// The handshake deadline is the endpoint's; nothing else is timed.
    fn poll_timeout(&self) -> Option<u64> {
        None
    }
    /// Runs on a wake (the exports changed): a connection whose export is
    /// gone finishes what is in flight and closes.
    fn handle_timeout(&mut self, e: &mut Exports, _: &Registry, _: u64) {
        Connection::check_export(self, e)
    }
    fn poll_io(&mut self) -> Option<BlockIo> {
        Connection::poll_io(self)
    }
    fn retry_io(&mut self, io: BlockIo) {
        Connection::retry_io(self, io)
    }
    fn handle_completion(
        &mut self,
        tag: u64,
        c: IoCompletion,
        _: &mut Exports,
        _: &Registry,
        _: u64,
    ) {
        Connection::handle_completion(self, tag, c)
    }
    fn poll_output(&self) -> Option<&[u8]> {
        Connection::poll_output(self)
    }
    fn consume_output(&mut self, n: usize) {
        Connection::consume_output(self, n)
    }
    fn finished(&self) -> bool {
        Connection::finished(self)
    }
    fn take_error(&mut self) -> Option<&'static str> {
        self.error.take()
    }
    fn in_handshake(&self) -> bool {
        Connection::in_handshake(self)
    }
    fn closed(&mut self, e: &mut Exports) {
        e.connections = e.connections.saturating_sub(1);
    }
}
