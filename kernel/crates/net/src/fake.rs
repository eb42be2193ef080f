//! A fake NIC pair joined by a wire, for host tests of the device glue and
//! the stacks above it.

use crate::device::NetDriver;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

#[derive(Default)]
pub struct Wire {
    /// Frames in flight towards side 0 and side 1.
    pub towards: [VecDeque<Vec<u8>>; 2],
}

pub struct FakeNic {
    wire: Rc<RefCell<Wire>>,
    side: usize,
    posted: VecDeque<(u16, *mut u8, usize)>,
    filled: VecDeque<(u16, usize)>,
    sent: VecDeque<u16>,
    next: u16,
    pub hold_tx: bool,
    pub held: usize,
}

pub const HDR: usize = 12;

impl FakeNic {
    pub fn pair() -> (FakeNic, FakeNic, Rc<RefCell<Wire>>) {
        let wire = Rc::new(RefCell::new(Wire::default()));
        let nic = |side| FakeNic {
            wire: Rc::clone(&wire),
            side,
            posted: VecDeque::new(),
            filled: VecDeque::new(),
            sent: VecDeque::new(),
            next: 0,
            hold_tx: false,
            held: 0,
        };
        (nic(0), nic(1), Rc::clone(&wire))
    }

    fn token(&mut self) -> u16 {
        self.next = (self.next + 1) % 512;
        self.next
    }
}

// SAFETY: buffers are only written while posted (rx) and only read while
// being sent (tx, copied at once), as the trait contract allows.
unsafe impl NetDriver for FakeNic {
    fn mac(&self) -> [u8; 6] {
        [0x52, 0x54, 0, 0, 0, self.side as u8 + 1]
    }

    fn header_len(&self) -> usize {
        HDR
    }

    unsafe fn rx_begin(&mut self, buf: &mut [u8]) -> Option<u16> {
        let t = self.token();
        self.posted.push_back((t, buf.as_mut_ptr(), buf.len()));
        Some(t)
    }

    fn rx_ready(&mut self) -> Option<u16> {
        if self.filled.is_empty() {
            let frame = self.wire.borrow_mut().towards[self.side].pop_front();
            if let Some(frame) = frame {
                let (t, ptr, cap) = self.posted.pop_front()?;
                let n = frame.len().min(cap - HDR);
                // SAFETY: the buffer was posted under `t` and is still ours
                // until rx_complete; the copy stays within its length.
                unsafe { std::ptr::copy_nonoverlapping(frame.as_ptr(), ptr.add(HDR), n) };
                self.filled.push_back((t, n));
            }
        }
        self.filled.front().map(|f| f.0)
    }

    unsafe fn rx_complete(&mut self, token: u16, _buf: &mut [u8]) -> Option<usize> {
        let (t, n) = self.filled.pop_front()?;
        (t == token).then_some(n)
    }

    unsafe fn tx_begin(&mut self, buf: &[u8]) -> Option<u16> {
        if self.hold_tx {
            self.held += 1;
            return None;
        }
        self.wire.borrow_mut().towards[1 - self.side].push_back(buf[HDR..].to_vec());
        let t = self.token();
        self.sent.push_back(t);
        Some(t)
    }

    fn tx_done(&mut self) -> Option<u16> {
        self.sent.front().copied()
    }

    unsafe fn tx_complete(&mut self, token: u16, _buf: &[u8]) {
        if self.sent.front() == Some(&token) {
            self.sent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::{Diag, DiagSpec, source_byte};
    use crate::stack::{Ipv4Mode, NicConfig, Role, Stack};
    use smoltcp::iface::SocketHandle;
    use smoltcp::socket::tcp;
    use smoltcp::time::Instant;
    use smoltcp::wire::{IpAddress, Ipv4Address, Ipv4Cidr};

    fn config(last: u8) -> NicConfig {
        NicConfig {
            ipv4: Ipv4Mode::Static {
                cidr: Ipv4Cidr::new(Ipv4Address::new(10, 9, 0, last), 24),
                gateway: None,
            },
            slaac: false,
            ..NicConfig::default()
        }
    }

    struct Net {
        a: Stack<FakeNic>,
        b: Stack<FakeNic>,
        now: i64,
    }

    impl Net {
        fn new() -> Self {
            let (x, y, _) = FakeNic::pair();
            let t = Instant::from_millis(0);
            Net {
                a: Stack::new(Role::Mgmt, x, config(1), t, 1),
                b: Stack::new(Role::Data(0), y, config(2), t, 2),
                now: 0,
            }
        }

        fn step(&mut self, diag: &mut Option<&mut Diag>) {
            self.now += 1;
            let t = Instant::from_millis(self.now);
            self.a.poll(t);
            self.b.poll(t);
            if let Some(d) = diag {
                d.poll(&mut self.b.sockets);
            }
            self.b.poll(t);
        }

        fn client(&mut self, port: u16) -> SocketHandle {
            let s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 256 * 1024]),
                tcp::SocketBuffer::new(vec![0; 256 * 1024]),
            );
            let h = self.a.sockets.add(s);
            let ctx = self.a.iface.context();
            self.a
                .sockets
                .get_mut::<tcp::Socket<'_>>(h)
                .connect(ctx, (IpAddress::v4(10, 9, 0, 2), port), 49152)
                .unwrap();
            h
        }
    }

    fn data(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn tcp_echo_through_the_device_glue_is_byte_exact() {
        let mut net = Net::new();
        let mut diag = Diag::new(&mut net.b.sockets, "echo:7".parse::<DiagSpec>().unwrap());
        let h = net.client(7);
        let payload = data(2 << 20);
        let (mut sent, mut got) = (0, Vec::new());
        for _ in 0..200_000 {
            let s = net.a.sockets.get_mut::<tcp::Socket<'_>>(h);
            if s.can_send() && sent < payload.len() {
                sent += s.send_slice(&payload[sent..]).unwrap();
            }
            while let Ok(n) = s.recv(|b| (b.len(), b.to_vec())) {
                if n.is_empty() {
                    break;
                }
                got.extend(n);
            }
            if got.len() == payload.len() {
                break;
            }
            net.step(&mut Some(&mut diag));
        }
        assert_eq!(got.len(), payload.len());
        assert!(got == payload, "echo differs");
        assert!(net.a.device.stats.tx_frames > 1000);
        assert_eq!(net.a.device.stats.tx_dropped, 0);
    }

    #[test]
    fn source_stream_follows_the_pattern_and_discard_drains() {
        let mut net = Net::new();
        let mut diag = Diag::new(&mut net.b.sockets, "source:19".parse().unwrap());
        let h = net.client(19);
        let mut got = Vec::new();
        for _ in 0..20_000 {
            let s = net.a.sockets.get_mut::<tcp::Socket<'_>>(h);
            while let Ok(b) = s.recv(|b| (b.len(), b.to_vec())) {
                if b.is_empty() {
                    break;
                }
                got.extend(b);
            }
            if got.len() > 1 << 20 {
                break;
            }
            net.step(&mut Some(&mut diag));
        }
        assert!(got.len() > 1 << 20);
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, &b)| b == source_byte(i as u64))
        );
    }

    #[test]
    fn a_port_without_a_listener_refuses() {
        let mut net = Net::new();
        let mut diag = Diag::new(&mut net.b.sockets, "echo:7".parse().unwrap());
        let h = net.client(5260);
        for _ in 0..100 {
            net.step(&mut Some(&mut diag));
        }
        assert_eq!(
            net.a.sockets.get::<tcp::Socket<'_>>(h).state(),
            tcp::State::Closed,
            "RST expected"
        );
    }

    #[test]
    fn a_transmit_ring_that_refuses_frames_drops_them_and_tcp_retries() {
        let mut net = Net::new();
        net.a.device.driver_mut().hold_tx = true;
        let h = net.client(7);
        for _ in 0..50 {
            net.step(&mut None);
        }
        assert!(net.a.device.driver_mut().held > 0);
        assert_eq!(
            net.a.sockets.get::<tcp::Socket<'_>>(h).state(),
            tcp::State::SynSent
        );
    }

    #[test]
    fn diag_specs() {
        assert!("echo:0".parse::<DiagSpec>().is_err());
        assert!("walk:1".parse::<DiagSpec>().is_err());
        assert!("echo".parse::<DiagSpec>().is_err());
        assert_eq!("discard:9".parse::<DiagSpec>().unwrap().port, 9);
    }
}
