//! smoltcp TCP sockets as the endpoint sees them.

use ironbay_endpoint::{Socket, SocketState, Sockets};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, IpEndpoint};

/// One smoltcp TCP socket behind the endpoint's [`Socket`] trait.
pub struct TcpSocket<'a>(pub &'a mut tcp::Socket<'static>);

pub fn socket_addr(e: IpEndpoint) -> core::net::SocketAddr {
    let ip = match e.addr {
        IpAddress::Ipv4(a) => core::net::IpAddr::V4(core::net::Ipv4Addr::from(a.octets())),
        IpAddress::Ipv6(a) => core::net::IpAddr::V6(core::net::Ipv6Addr::from(a.octets())),
    };
    core::net::SocketAddr::new(ip, e.port)
}

impl Socket for TcpSocket<'_> {
    fn state(&self) -> SocketState {
        use tcp::State::*;
        match self.0.state() {
            Listen | Closed => SocketState::Idle,
            SynReceived | SynSent => SocketState::Opening,
            Established => SocketState::Open,
            CloseWait => SocketState::PeerClosed,
            FinWait1 | FinWait2 | Closing | LastAck => SocketState::Closing,
            TimeWait => SocketState::TimeWait,
        }
    }
    fn local(&self) -> Option<core::net::SocketAddr> {
        self.0.local_endpoint().map(socket_addr)
    }
    fn peer(&self) -> Option<core::net::SocketAddr> {
        self.0.remote_endpoint().map(socket_addr)
    }
    fn can_recv(&self) -> bool {
        self.0.can_recv()
    }
    fn recv(&mut self, f: &mut dyn FnMut(&[u8]) -> usize) -> usize {
        self.0
            .recv(|b| {
                let n = f(b).min(b.len());
                (n, n)
            })
            .unwrap_or(0)
    }
    fn send(&mut self, data: &[u8]) -> usize {
        self.0.send_slice(data).unwrap_or(0)
    }
    fn close(&mut self) {
        self.0.close()
    }
    fn abort(&mut self) {
        self.0.abort()
    }
}

/// A service's sockets in one socket set, in slot order.
pub struct SetSockets<'a> {
    pub set: &'a mut SocketSet<'static>,
    pub handles: &'a [SocketHandle],
}

impl Sockets for SetSockets<'_> {
    type Socket<'b>
        = TcpSocket<'b>
    where
        Self: 'b;
    fn len(&self) -> usize {
        self.handles.len()
    }
    fn get(&mut self, i: usize) -> TcpSocket<'_> {
        TcpSocket(self.set.get_mut::<tcp::Socket<'static>>(self.handles[i]))
    }
}
