//! Listening TCP sockets for one service port.
//!
//! smoltcp has no accept queue: a listening socket becomes the connection. A
//! service therefore owns a fixed pool of sockets on its port; each waits in
//! LISTEN, serves one peer, and listens again once closed. The pool size is
//! both the connection limit and the backlog; SYNs beyond it are refused.
//! Pools are sized at start-up, which also bounds the socket set smoltcp scans
//! for every packet.

use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct TcpTuning {
    pub rx_buffer: usize,
    pub tx_buffer: usize,
    /// Delayed ACKs cap throughput against peers that wait for them.
    pub ack_delay: Option<Duration>,
    /// Nagle delays small replies of request/response protocols.
    pub nagle: bool,
    pub idle_timeout: Option<Duration>,
    pub keep_alive: Option<Duration>,
}

impl TcpTuning {
    /// Storage protocols: large windows (scaled), no Nagle, ACKs held for up
    /// to 1 ms so they ride on the reply (smoltcp still ACKs every second
    /// segment at once): a request then costs the initiator one packet, not
    /// two, which doubled iSCSI and NBD IOPS from TCG guests.
    pub const STORAGE: TcpTuning = TcpTuning {
        rx_buffer: 512 * 1024,
        tx_buffer: 512 * 1024,
        ack_delay: Some(Duration::from_millis(1)),
        nagle: false,
        idle_timeout: Some(Duration::from_secs(300)),
        keep_alive: Some(Duration::from_secs(60)),
    };

    /// Management APIs: small request/response exchanges.
    pub const MANAGEMENT: TcpTuning = TcpTuning {
        rx_buffer: 64 * 1024,
        tx_buffer: 64 * 1024,
        ack_delay: Some(Duration::from_millis(1)),
        nagle: false,
        idle_timeout: Some(Duration::from_secs(120)),
        keep_alive: None,
    };
}

pub struct Listener {
    pub port: u16,
    sockets: Vec<SocketHandle>,
    tuning: TcpTuning,
}

impl Listener {
    /// Adds `max_connections` sockets listening on `port` to `set`.
    pub fn new(
        set: &mut SocketSet<'static>,
        port: u16,
        max_connections: usize,
        tuning: TcpTuning,
    ) -> Self {
        let sockets = (0..max_connections.max(1))
            .map(|_| {
                let rx = tcp::SocketBuffer::new(vec![0u8; tuning.rx_buffer]);
                let tx = tcp::SocketBuffer::new(vec![0u8; tuning.tx_buffer]);
                set.add(tcp::Socket::new(rx, tx))
            })
            .collect();
        let l = Listener {
            port,
            sockets,
            tuning,
        };
        l.relisten(set);
        l
    }

    /// Puts every closed socket back into LISTEN.
    pub fn relisten(&self, set: &mut SocketSet<'static>) {
        for &h in &self.sockets {
            let s = set.get_mut::<tcp::Socket<'_>>(h);
            if s.state() == tcp::State::Closed {
                s.set_ack_delay(self.tuning.ack_delay);
                s.set_nagle_enabled(self.tuning.nagle);
                s.set_timeout(self.tuning.idle_timeout);
                s.set_keep_alive(self.tuning.keep_alive);
                // Only fails if already open or on port 0, neither possible here.
                let _ = s.listen(self.port);
            }
        }
    }

    pub fn sockets(&self) -> &[SocketHandle] {
        &self.sockets
    }

    /// Connections established or closing (not listening, not closed).
    pub fn active(&self, set: &SocketSet<'static>) -> usize {
        self.sockets
            .iter()
            .filter(|&&h| {
                !matches!(
                    set.get::<tcp::Socket<'_>>(h).state(),
                    tcp::State::Listen | tcp::State::Closed
                )
            })
            .count()
    }
}
