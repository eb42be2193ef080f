//! The connection as the endpoint drives it.

use crate::{Connection, Target};
use core::net::SocketAddr;
use ironbay_bdev::engine::TargetEngine;
use ironbay_bdev::{Account, BlockIo, IoCompletion, Registry};

impl TargetEngine for Connection {
    type Target = Target;
    const PEER: &'static str = "iSCSI initiator";
    fn open(
        local: SocketAddr,
        peer: SocketAddr,
        now_ms: u64,
        account: Account,
        _: &mut Target,
    ) -> Self {
        let mut c = Connection::new(local, peer, now_ms);
        c.account = account;
        c
    }
    fn wants_input(&self) -> bool {
        Connection::wants_input(self)
    }
    fn handle_input(
        &mut self,
        data: &[u8],
        t: &mut Target,
        bdevs: &Registry,
        now_ms: u64,
    ) -> usize {
        Connection::handle_input(self, data, t, bdevs, now_ms)
    }
    fn waits_for_memory(&self) -> bool {
        Connection::waits_for_memory(self)
    }
    fn handle_memory(&mut self, t: &mut Target, bdevs: &Registry, now_ms: u64) {
        Connection::handle_memory(self, t, bdevs, now_ms)
    }
    fn poll_timeout(&self) -> Option<u64> {
        Connection::poll_timeout(self)
    }
    fn handle_timeout(&mut self, t: &mut Target, bdevs: &Registry, now_ms: u64) {
        Connection::handle_timeout(self, t, bdevs, now_ms)
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
        t: &mut Target,
        bdevs: &Registry,
        now_ms: u64,
    ) {
        Connection::handle_completion(self, tag, c, t, bdevs, now_ms)
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
        self.phase == crate::conn::Phase::Login
    }
    fn closed(&mut self, t: &mut Target) {
        Connection::closed(self, t)
    }
}
