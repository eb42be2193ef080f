//! TCP diagnostics service for network benchmarks: discard, echo or source
//! on one port of a data NIC. Off unless the command line asks for it.

use crate::listener::{Listener, TcpTuning};
use core::str::FromStr;
use smoltcp::iface::SocketSet;
use smoltcp::socket::tcp;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Reads and drops everything.
    Discard,
    /// Sends back what it reads.
    Echo,
    /// Sends a repeating pattern as fast as the peer takes it.
    Source,
}

/// `MODE:PORT`, e.g. `echo:7777`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiagSpec {
    pub mode: Mode,
    pub port: u16,
}

impl FromStr for DiagSpec {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (m, p) = s.split_once(':').ok_or("expected MODE:PORT")?;
        let mode = match m {
            "discard" => Mode::Discard,
            "echo" => Mode::Echo,
            "source" => Mode::Source,
            _ => return Err("mode is discard|echo|source"),
        };
        let port = p
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or("port is 1-65535")?;
        Ok(DiagSpec { mode, port })
    }
}

pub struct Diag {
    pub spec: DiagSpec,
    listener: Listener,
    /// Source pattern position per socket, so the stream is a checkable sequence.
    offsets: alloc::vec::Vec<u64>,
}

const MAX_CONNECTIONS: usize = 4;

/// Byte `i` of the source stream.
pub fn source_byte(i: u64) -> u8 {
    (i % 251) as u8
}

impl Diag {
    pub fn new(set: &mut SocketSet<'static>, spec: DiagSpec) -> Self {
        let listener = Listener::new(set, spec.port, MAX_CONNECTIONS, TcpTuning::STORAGE);
        Diag {
            spec,
            listener,
            offsets: alloc::vec![0; MAX_CONNECTIONS],
        }
    }

    /// Serves every connection once; true if any byte moved.
    pub fn poll(&mut self, set: &mut SocketSet<'static>) -> bool {
        let mut moved = false;
        for (k, &h) in self.listener.sockets().iter().enumerate() {
            let s = set.get_mut::<tcp::Socket<'_>>(h);
            if s.state() == tcp::State::Listen {
                self.offsets[k] = 0;
                continue;
            }
            match self.spec.mode {
                Mode::Discard => {
                    while let Ok(n) = s.recv(|b| (b.len(), b.len()))
                        && n > 0
                    {
                        moved = true;
                    }
                }
                Mode::Echo => {
                    let mut chunk = [0u8; 4096];
                    while s.can_send() && s.can_recv() {
                        let room = (s.send_capacity() - s.send_queue()).min(chunk.len());
                        if room == 0 {
                            break;
                        }
                        let n = s.recv_slice(&mut chunk[..room]).unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        let _ = s.send_slice(&chunk[..n]);
                        moved = true;
                    }
                }
                Mode::Source => {
                    let _ = s.recv(|b| (b.len(), ()));
                    let off = &mut self.offsets[k];
                    while s.can_send() {
                        let n = s
                            .send(|b| {
                                for (i, x) in b.iter_mut().enumerate() {
                                    *x = source_byte(*off + i as u64);
                                }
                                (b.len(), b.len())
                            })
                            .unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        *off += n as u64;
                        moved = true;
                    }
                }
            }
            // The peer finished sending: finish our side once echoes are out.
            if !s.may_recv() && s.send_queue() == 0 && s.state() == tcp::State::CloseWait {
                s.close();
            }
        }
        self.listener.relisten(set);
        moved
    }
}
