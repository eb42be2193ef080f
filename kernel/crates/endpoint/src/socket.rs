//! What the endpoint needs of a TCP socket, so the same endpoint runs over
//! smoltcp in the kernel, std sockets in the hosted runner and simulated
//! sockets in tests.

use core::net::SocketAddr;

/// A socket's phase as the endpoint sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketState {
    /// Listening or closed: free for a new peer.
    Idle,
    /// A peer's connection is being set up (SYN received).
    Opening,
    /// Connected both ways.
    Open,
    /// The peer sent its FIN; we may still send.
    PeerClosed,
    /// We closed; the close is not finished.
    Closing,
    /// Closed, holding the 4-tuple; nothing more will be said.
    TimeWait,
}

pub trait Socket {
    fn state(&self) -> SocketState;
    fn local(&self) -> Option<SocketAddr>;
    fn peer(&self) -> Option<SocketAddr>;
    fn can_recv(&self) -> bool;
    /// Offers received bytes to `f`, which returns how many it took; those
    /// leave the socket. Returns that count.
    fn recv(&mut self, f: &mut dyn FnMut(&[u8]) -> usize) -> usize;
    /// Queues bytes for the peer; returns how many fitted.
    fn send(&mut self, data: &[u8]) -> usize;
    /// Sends FIN once queued bytes are out.
    fn close(&mut self);
    /// Drops the connection at once (RST); the socket becomes free.
    fn abort(&mut self);
}

impl<T: Socket + ?Sized> Socket for &mut T {
    fn state(&self) -> SocketState {
        (**self).state()
    }
    fn local(&self) -> Option<SocketAddr> {
        (**self).local()
    }
    fn peer(&self) -> Option<SocketAddr> {
        (**self).peer()
    }
    fn can_recv(&self) -> bool {
        (**self).can_recv()
    }
    fn recv(&mut self, f: &mut dyn FnMut(&[u8]) -> usize) -> usize {
        (**self).recv(f)
    }
    fn send(&mut self, data: &[u8]) -> usize {
        (**self).send(data)
    }
    fn close(&mut self) {
        (**self).close()
    }
    fn abort(&mut self) {
        (**self).abort()
    }
}

/// The sockets of one service, indexed like the endpoint's slots: socket
/// `i` of a service listening on several ports belongs to port
/// `i / per_port`.
pub trait Sockets {
    type Socket<'a>: Socket
    where
        Self: 'a;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn get(&mut self, i: usize) -> Self::Socket<'_>;
}
