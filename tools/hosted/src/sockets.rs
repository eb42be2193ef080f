//! std TCP sockets behind the endpoint's socket trait: a listener and a
//! fixed set of slots, accepting only while a slot is free (the rest wait
//! in the OS backlog, as a full smoltcp pool refuses).

use ironbay_endpoint::{Socket, SocketState, Sockets};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};

/// Received bytes kept per connection before the OS holds the rest.
const RX_BUFFER: usize = 512 << 10;

#[derive(Default)]
pub struct StdSocket {
    conn: Option<(TcpStream, SocketAddr, SocketAddr)>,
    rx: Vec<u8>,
    peer_eof: bool,
    we_closed: bool,
}

impl StdSocket {
    /// Reads what the OS has, up to the buffer size; true if anything came.
    fn fill(&mut self) -> bool {
        let Some((s, _, _)) = &mut self.conn else {
            return false;
        };
        let mut got = false;
        let mut chunk = [0u8; 64 << 10];
        while !self.peer_eof && self.rx.len() < RX_BUFFER {
            let room = (RX_BUFFER - self.rx.len()).min(chunk.len());
            match s.read(&mut chunk[..room]) {
                Ok(0) => self.peer_eof = true,
                Ok(n) => {
                    self.rx.extend_from_slice(&chunk[..n]);
                    got = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.abort();
                    return true;
                }
            }
        }
        got
    }
}

impl Socket for StdSocket {
    fn state(&self) -> SocketState {
        match (&self.conn, self.we_closed, self.peer_eof) {
            (None, _, _) => SocketState::Idle,
            (Some(_), false, false) => SocketState::Open,
            (Some(_), false, true) => SocketState::PeerClosed,
            (Some(_), true, _) => SocketState::Closing,
        }
    }
    fn local(&self) -> Option<SocketAddr> {
        self.conn.as_ref().map(|c| c.1)
    }
    fn peer(&self) -> Option<SocketAddr> {
        self.conn.as_ref().map(|c| c.2)
    }
    fn can_recv(&self) -> bool {
        !self.rx.is_empty()
    }
    fn recv(&mut self, f: &mut dyn FnMut(&[u8]) -> usize) -> usize {
        let n = f(&self.rx).min(self.rx.len());
        self.rx.drain(..n);
        n
    }
    fn send(&mut self, data: &[u8]) -> usize {
        let Some((s, _, _)) = &mut self.conn else {
            return 0;
        };
        match s.write(data) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
            Err(_) => {
                self.abort();
                0
            }
        }
    }
    fn close(&mut self) {
        if let Some((s, _, _)) = &self.conn {
            let _ = s.shutdown(Shutdown::Write);
            self.we_closed = true;
        }
    }
    fn abort(&mut self) {
        *self = StdSocket::default();
    }
}

/// One listening address and its connection slots.
pub struct StdSockets {
    listener: TcpListener,
    slots: Vec<StdSocket>,
}

impl StdSockets {
    pub fn new(listener: TcpListener, slots: usize) -> Self {
        StdSockets {
            listener,
            slots: (0..slots).map(|_| StdSocket::default()).collect(),
        }
    }

    /// Accepts into free slots and reads what arrived; true if anything
    /// happened.
    pub fn refresh(&mut self) -> bool {
        let mut busy = false;
        // Only slots the endpoint has already seen free take newcomers: a
        // slot freed in this call still has its old engine until the next
        // poll retires it.
        let free: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].conn.is_none())
            .collect();
        for s in &mut self.slots {
            busy |= s.fill();
            // A close we started is done once the peer's FIN is in too.
            if s.we_closed && s.peer_eof {
                s.abort();
            }
        }
        for i in free {
            let Ok((sock, peer)) = self.listener.accept() else {
                break;
            };
            let _ = sock.set_nonblocking(true);
            let _ = sock.set_nodelay(true);
            let Ok(local) = sock.local_addr() else {
                continue;
            };
            self.slots[i] = StdSocket {
                conn: Some((sock, local, peer)),
                ..StdSocket::default()
            };
            busy = true;
        }
        busy
    }
}

impl Sockets for StdSockets {
    type Socket<'a> = &'a mut StdSocket;
    fn len(&self) -> usize {
        self.slots.len()
    }
    fn get(&mut self, i: usize) -> &mut StdSocket {
        &mut self.slots[i]
    }
}
