//! A simulated network for driving an endpoint deterministically: sockets
//! whose far side is played by the test (connect, send, read slowly or
//! never, close or never close), a virtual clock, and a block layer of RAM
//! bdevs. Used by this crate's tests and by the engines' test rigs and
//! fuzzers.

use crate::socket::{Socket, SocketState, Sockets};
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};

/// One simulated TCP connection end (ours), with the peer's side exposed.
pub struct SimSocket {
    listening: bool,
    local: SocketAddr,
    peer: Option<SocketAddr>,
    /// Peer to us, not yet taken by the endpoint.
    rx: VecDeque<u8>,
    rx_cap: usize,
    /// Us to the peer, not yet read by the peer.
    tx: VecDeque<u8>,
    tx_cap: usize,
    our_fin: bool,
    our_fin_first: bool,
    peer_fin: bool,
    /// The peer saw our reset.
    reset: bool,
    /// SYN received, handshake not finished.
    opening: bool,
    /// Connections this socket has carried.
    pub generation: u32,
}

impl SimSocket {
    pub fn new(port: u16, rx_cap: usize, tx_cap: usize) -> Self {
        SimSocket {
            listening: true,
            local: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 3, 15)), port),
            peer: None,
            rx: VecDeque::new(),
            rx_cap,
            tx: VecDeque::new(),
            tx_cap,
            our_fin: false,
            our_fin_first: false,
            peer_fin: false,
            reset: false,
            opening: false,
            generation: 0,
        }
    }

    /// A peer sends SYN and never completes the handshake.
    pub fn half_open(&mut self, peer: SocketAddr) -> bool {
        if !self.connect(peer) {
            return false;
        }
        self.opening = true;
        true
    }

    /// A peer connects; false if the socket is not listening (refused).
    pub fn connect(&mut self, peer: SocketAddr) -> bool {
        if self.state() != SocketState::Idle {
            return false;
        }
        let generation = self.generation + 1;
        *self = SimSocket::new(self.local.port(), self.rx_cap, self.tx_cap);
        self.listening = false;
        self.peer = Some(peer);
        self.generation = generation;
        true
    }

    /// Whether the current or last connection ended by our reset.
    pub fn was_reset(&self) -> bool {
        self.reset
    }

    /// The peer sends; returns how much fitted our receive window.
    pub fn peer_send(&mut self, data: &[u8]) -> usize {
        if self.listening || self.peer_fin {
            return 0;
        }
        let n = data.len().min(self.rx_cap - self.rx.len());
        self.rx.extend(&data[..n]);
        n
    }

    /// The peer reads up to `max` bytes.
    pub fn peer_read(&mut self, max: usize) -> Vec<u8> {
        let n = max.min(self.tx.len());
        self.tx.drain(..n).collect()
    }

    /// Bytes we sent that the peer has not read.
    pub fn unread(&self) -> usize {
        self.tx.len()
    }

    /// Whether we sent FIN.
    pub fn we_closed(&self) -> bool {
        self.our_fin && !self.listening
    }

    /// The peer resets the connection: the socket is free again.
    pub fn peer_reset(&mut self) {
        self.listening = true;
        self.opening = false;
        self.rx.clear();
        self.tx.clear();
    }

    /// The peer sends FIN.
    pub fn peer_close(&mut self) {
        if !self.listening {
            self.peer_fin = true;
        }
    }
}

impl Socket for SimSocket {
    fn state(&self) -> SocketState {
        if self.listening {
            return SocketState::Idle;
        }
        if self.opening {
            return SocketState::Opening;
        }
        match (self.our_fin, self.peer_fin) {
            (false, false) => SocketState::Open,
            (false, true) => SocketState::PeerClosed,
            (true, false) => SocketState::Closing,
            (true, true) if !self.tx.is_empty() => SocketState::Closing,
            (true, true) if self.our_fin_first => SocketState::TimeWait,
            (true, true) => SocketState::Idle,
        }
    }

    fn local(&self) -> Option<SocketAddr> {
        (!self.listening).then_some(self.local)
    }

    fn peer(&self) -> Option<SocketAddr> {
        if self.listening { None } else { self.peer }
    }

    fn can_recv(&self) -> bool {
        !self.rx.is_empty()
    }

    fn recv(&mut self, f: &mut dyn FnMut(&[u8]) -> usize) -> usize {
        let (a, _) = self.rx.as_slices();
        let n = f(a).min(a.len());
        self.rx.drain(..n);
        n
    }

    fn send(&mut self, data: &[u8]) -> usize {
        if self.listening || self.our_fin {
            return 0;
        }
        let n = data.len().min(self.tx_cap - self.tx.len());
        self.tx.extend(&data[..n]);
        n
    }

    fn close(&mut self) {
        if !self.listening && !self.our_fin {
            self.our_fin = true;
            self.our_fin_first = !self.peer_fin;
        }
    }

    fn abort(&mut self) {
        if !self.listening {
            self.reset = true;
        }
        self.listening = true;
        self.opening = false;
        self.rx.clear();
        self.tx.clear();
    }
}

/// A listening port's sockets.
pub struct SimNet {
    pub sockets: Vec<SimSocket>,
}

impl SimNet {
    /// `n` sockets listening on `port`, each with `buffer` bytes each way.
    pub fn new(port: u16, n: usize, buffer: usize) -> Self {
        SimNet {
            sockets: (0..n)
                .map(|_| SimSocket::new(port, buffer, buffer))
                .collect(),
        }
    }

    /// A peer connects to the first listening socket, as a TCP stack
    /// would; `None` when refused.
    pub fn connect(&mut self, peer: SocketAddr) -> Option<usize> {
        let i = self
            .sockets
            .iter()
            .position(|s| s.state() == SocketState::Idle)?;
        self.sockets[i].connect(peer);
        Some(i)
    }
}

impl Sockets for SimNet {
    type Socket<'a> = &'a mut SimSocket;
    fn len(&self) -> usize {
        self.sockets.len()
    }
    fn get(&mut self, i: usize) -> &mut SimSocket {
        &mut self.sockets[i]
    }
}

/// A peer address `10.0.0.N:port`.
pub fn peer(n: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)), port)
}

/// Polls the block layer and hands every completion to `endpoint`;
/// returns how many there were.
pub fn deliver<E: ironbay_bdev::engine::TargetEngine>(
    bdevs: &mut ironbay_bdev::Registry,
    endpoint: &mut crate::Endpoint<E>,
    target: &mut E::Target,
    now_us: u64,
) -> usize {
    let mut done = Vec::new();
    bdevs.poll(now_us, &mut done);
    let n = done.len();
    for (_, c) in done {
        endpoint.complete(c, target, bdevs, now_us);
    }
    n
}
