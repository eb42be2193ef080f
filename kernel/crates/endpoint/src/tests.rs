//! The endpoint's guarantees under the simulated network and a virtual
//! clock, with a small engine whose commands are easy to script.

use crate::sim::{SimNet, deliver, peer};
use crate::{Endpoint, Limits, SocketState, Sockets};
use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::net::SocketAddr;
use ironbay_bdev::engine::{OutQueue, TargetEngine};
use ironbay_bdev::{
    Account, BdevId, BlockIo, Budget, IoCompletion, IoOp, MallocBdev, Registry, Short,
};

/// A toy protocol: "HI" logs in; then `R` + u32 length reads that many
/// bytes from bdev 0 at LBA 0 and sends them; `Q` ends the connection.
struct Toy {
    bdev: BdevId,
    account: Account,
    logged_in: bool,
    head: Vec<u8>,
    /// A read waiting for memory.
    waiting: Option<u32>,
    ios: Vec<BlockIo>,
    out: OutQueue,
    in_flight: usize,
    quit: bool,
    error: Option<&'static str>,
}

impl Toy {
    fn read(&mut self, len: u32) {
        match self.account.try_buf(len as usize) {
            Ok(buf) => {
                self.in_flight += 1;
                self.ios.push(BlockIo {
                    tag: 1,
                    bdev: self.bdev,
                    op: IoOp::Read { lba: 0, buf },
                    fua: false,
                });
            }
            Err(Short::Wait) => self.waiting = Some(len),
            Err(Short::Never) => self.out.push_bytes(b"E".to_vec()),
        }
    }
}

impl TargetEngine for Toy {
    type Target = BdevId;
    const PEER: &'static str = "toy peer";
    fn open(_: SocketAddr, _: SocketAddr, _: u64, account: Account, bdev: &mut BdevId) -> Self {
        let bdev = *bdev;
        Toy {
            bdev,
            account,
            logged_in: false,
            head: Vec::new(),
            waiting: None,
            ios: Vec::new(),
            out: OutQueue::default(),
            in_flight: 0,
            quit: false,
            error: None,
        }
    }
    fn wants_input(&self) -> bool {
        self.waiting.is_none() && !self.quit
    }
    fn handle_input(&mut self, data: &[u8], _: &mut BdevId, _: &Registry, _: u64) -> usize {
        let mut used = 0;
        for &b in data {
            if !self.wants_input() {
                break;
            }
            used += 1;
            self.head.push(b);
            if !self.logged_in {
                if self.head.len() == 2 {
                    self.logged_in = self.head == b"HI";
                    if !self.logged_in {
                        self.error = Some("bad greeting");
                        self.quit = true;
                    }
                    self.head.clear();
                }
                continue;
            }
            match self.head[0] {
                b'Q' => {
                    self.quit = true;
                    self.head.clear();
                }
                b'R' if self.head.len() == 5 => {
                    let len = u32::from_be_bytes([
                        self.head[1],
                        self.head[2],
                        self.head[3],
                        self.head[4],
                    ]);
                    self.head.clear();
                    self.read(len);
                }
                b'R' => {}
                _ => {
                    self.error = Some("bad command");
                    self.quit = true;
                }
            }
        }
        used
    }
    fn waits_for_memory(&self) -> bool {
        self.waiting.is_some()
    }
    fn handle_memory(&mut self, _: &mut BdevId, _: &Registry, _: u64) {
        if let Some(len) = self.waiting.take() {
            self.read(len);
        }
    }
    fn poll_timeout(&self) -> Option<u64> {
        None
    }
    fn handle_timeout(&mut self, _: &mut BdevId, _: &Registry, _: u64) {}
    fn poll_io(&mut self) -> Option<BlockIo> {
        (!self.ios.is_empty()).then(|| self.ios.remove(0))
    }
    fn retry_io(&mut self, io: BlockIo) {
        self.ios.insert(0, io);
    }
    fn handle_completion(&mut self, _: u64, c: IoCompletion, _: &mut BdevId, _: &Registry, _: u64) {
        self.in_flight -= 1;
        if let Some(buf) = c.buf {
            let len = buf.len();
            self.out.push_data(Rc::new(buf), 0, len);
        }
    }
    fn poll_output(&self) -> Option<&[u8]> {
        self.out.front()
    }
    fn consume_output(&mut self, n: usize) {
        self.out.consume(n);
    }
    fn finished(&self) -> bool {
        self.quit && self.in_flight == 0 && self.ios.is_empty()
    }
    fn take_error(&mut self) -> Option<&'static str> {
        self.error.take()
    }
    fn in_handshake(&self) -> bool {
        !self.logged_in
    }
    fn closed(&mut self, _: &mut BdevId) {}
}

const PORT: u16 = 7000;
const MS: u64 = 1000;

/// An endpoint, its sockets, a RAM bdev and a virtual clock (µs).
struct World {
    ep: Endpoint<Toy>,
    net: SimNet,
    bdev: BdevId,
    bdevs: Registry,
    now: u64,
}

impl World {
    fn new(slots: usize, budget: Budget, limits: Limits) -> Self {
        let mut bdevs = Registry::new();
        let bdev = bdevs
            .add(Box::new(MallocBdev::new("Malloc0", 2048 * 64, 512)))
            .unwrap();
        World {
            ep: Endpoint::new(0, slots, limits, budget),
            net: SimNet::new(PORT, slots, 256 << 10),
            bdev,
            bdevs,
            now: 0,
        }
    }

    /// One poll-loop turn, then `step_us` of virtual time.
    fn turn(&mut self, step_us: u64) {
        self.ep.poll(
            &mut self.net,
            &mut self.bdev,
            &mut self.bdevs,
            self.now,
            false,
        );
        deliver(&mut self.bdevs, &mut self.ep, &mut self.bdev, self.now);
        self.now += step_us;
    }

    fn turns(&mut self, n: usize, step_us: u64) {
        for _ in 0..n {
            self.turn(step_us);
        }
    }

    fn state(&mut self, i: usize) -> SocketState {
        crate::Socket::state(&self.net.get(i))
    }

    fn idle(&mut self) -> usize {
        (0..self.net.len())
            .filter(|&i| self.state(i) == SocketState::Idle)
            .count()
    }

    /// A client logs in, reads `len` bytes, and gets them: the turns it took.
    fn honest_read(&mut self, i: usize, len: u32) -> usize {
        let s = &mut self.net.sockets[i];
        s.peer_send(b"HI");
        let mut cmd = b"R".to_vec();
        cmd.extend(len.to_be_bytes());
        s.peer_send(&cmd);
        let mut got = 0;
        for t in 1..10_000 {
            self.turn(100);
            got += self.net.sockets[i].peer_read(usize::MAX).len();
            if got >= len as usize {
                return t;
            }
        }
        panic!("honest read never finished ({got} of {len} bytes)");
    }
}

fn unlimited(slots: usize) -> World {
    World::new(slots, Budget::unlimited(), Limits::default())
}

#[test]
fn serves_a_client_and_closes_when_the_engine_is_done() {
    let mut w = unlimited(2);
    let i = w.net.connect(peer(1, 4000)).unwrap();
    w.honest_read(i, 4096);
    w.net.sockets[i].peer_send(b"Q");
    w.turns(3, 100);
    assert!(w.net.sockets[i].we_closed());
    w.net.sockets[i].peer_close();
    w.turns(2, 100);
    // We closed first: TIME-WAIT is cut short so the slot listens again.
    assert_eq!(w.state(i), SocketState::Idle);
    assert_eq!(w.ep.stats().accepted, 1);
}

#[test]
fn a_peer_that_never_finishes_the_close_is_aborted_after_the_linger() {
    let mut w = unlimited(1);
    let i = w.net.connect(peer(1, 4000)).unwrap();
    w.net.sockets[i].peer_send(b"HIQ");
    w.turns(2, 100);
    assert_eq!(w.state(i), SocketState::Closing);
    w.turns(30, 100 * MS);
    assert_eq!(w.state(i), SocketState::Idle);
    assert!(w.net.sockets[i].was_reset());
    assert_eq!(w.ep.stats().aborted_closes, 1);
}

#[test]
fn a_silent_peer_is_dropped_at_the_handshake_deadline() {
    let limits = Limits {
        handshake_ms: 10_000,
        ..Limits::default()
    };
    let mut w = World::new(2, Budget::unlimited(), limits);
    let i = w.net.connect(peer(1, 4000)).unwrap();
    w.turns(99, 100 * MS);
    assert_eq!(w.state(i), SocketState::Open);
    w.turns(2, 100 * MS);
    assert_eq!(w.state(i), SocketState::Idle);
    assert!(w.net.sockets[i].was_reset());
    assert_eq!(w.ep.stats().handshake_timeouts, 1);
}

#[test]
fn silent_peers_filling_every_slot_are_evicted_for_a_newcomer() {
    let mut w = unlimited(4);
    for k in 0..4 {
        assert!(w.net.connect(peer(k + 1, 4000)).is_some());
        w.turn(100 * MS);
    }
    // Every slot taken; more silent peers are refused meanwhile.
    assert!(w.net.connect(peer(9, 4000)).is_none() || w.idle() < 4);
    w.turns(12, 100 * MS);
    assert!(w.ep.stats().evicted >= 1);
    let i = w
        .net
        .connect(peer(20, 5000))
        .expect("a slot for the newcomer");
    w.honest_read(i, 512);
    // The logged-in client is never the one evicted.
    w.turns(50, 100 * MS);
    assert_eq!(w.state(i), SocketState::Open);
}

#[test]
fn a_burst_of_logins_is_not_evicted() {
    let mut w = unlimited(4);
    for k in 0..4 {
        w.net.connect(peer(k + 1, 4000)).unwrap();
    }
    w.turns(3, 100);
    assert_eq!(w.ep.stats().evicted, 0);
    for i in 0..4 {
        w.honest_read(i, 512);
    }
}

#[test]
fn a_peer_that_stops_reading_is_dropped_and_its_memory_returns() {
    let budget = Budget::new(64 << 20, 4);
    let mut w = World::new(4, budget.clone(), Limits::default());
    let i = w.net.connect(peer(1, 4000)).unwrap();
    w.net.sockets[i].peer_send(b"HI");
    for _ in 0..8 {
        let mut cmd = b"R".to_vec();
        cmd.extend((1u32 << 20).to_be_bytes());
        w.net.sockets[i].peer_send(&cmd);
    }
    w.turns(20, 100);
    assert!(budget.used() > 0);
    w.turns(400, 100 * MS);
    assert_eq!(w.state(i), SocketState::Idle);
    assert_eq!(w.ep.stats().stalled, 1);
    assert_eq!(budget.used(), 0);
}

#[test]
fn floods_that_never_read_stay_within_the_budget_and_an_honest_client_is_served() {
    let budget = Budget::new(16 << 20, 8);
    let mut w = World::new(8, budget.clone(), Limits::default());
    let mut hogs = Vec::new();
    for k in 0..7 {
        let i = w.net.connect(peer(k + 1, 4000)).unwrap();
        w.net.sockets[i].peer_send(b"HI");
        hogs.push(i);
    }
    let mut high = 0;
    for _ in 0..200 {
        for &i in &hogs {
            let mut cmd = b"R".to_vec();
            cmd.extend((256u32 << 10).to_be_bytes());
            w.net.sockets[i].peer_send(&cmd);
        }
        w.turn(100);
        high = high.max(budget.used());
    }
    assert!(high <= budget.limit(), "{high} > {}", budget.limit());
    assert!(budget.waits() > 0, "the hogs were held back");
    let i = w.net.connect(peer(50, 4000)).unwrap();
    let turns = w.honest_read(i, 128 << 10);
    assert!(turns < 50, "honest read took {turns} turns");
    assert!(budget.used() <= budget.limit());
    // The hogs leave: everything comes back.
    for &h in &hogs {
        w.net.sockets[h].peer_reset();
    }
    w.turns(5, 100);
    assert_eq!(budget.used(), 0);
}

#[test]
fn a_flooding_sender_cannot_starve_another_client() {
    let mut w = unlimited(2);
    let flood = w.net.connect(peer(1, 4000)).unwrap();
    w.net.sockets[flood].peer_send(b"HI");
    let i = w.net.connect(peer(2, 4000)).unwrap();
    let mut turns = 0;
    let mut first = true;
    let mut got = 0;
    while got < 512 {
        // Keep the flooder's window full of small reads it never collects.
        let mut cmds = Vec::new();
        for _ in 0..4096 {
            cmds.push(b'R');
            cmds.extend(512u32.to_be_bytes());
        }
        w.net.sockets[flood].peer_send(&cmds);
        if first {
            w.net.sockets[i].peer_send(b"HIR\0\0\x02\0");
            first = false;
        }
        w.turn(100);
        got += w.net.sockets[i].peer_read(usize::MAX).len();
        turns += 1;
        assert!(turns < 20, "starved for {turns} turns");
    }
}

#[test]
fn completions_for_a_closed_connection_are_dropped() {
    let mut w = unlimited(1);
    let i = w.net.connect(peer(1, 4000)).unwrap();
    w.net.sockets[i].peer_send(b"HIR\0\0\x10\0");
    w.ep.poll(&mut w.net, &mut w.bdev, &mut w.bdevs, 0, false);
    // The peer vanishes before the read completes; a new one takes the slot.
    w.net.sockets[i].peer_reset();
    w.ep.poll(&mut w.net, &mut w.bdev, &mut w.bdevs, 100, false);
    let j = w.net.connect(peer(2, 4000)).unwrap();
    assert_eq!(i, j);
    w.net.sockets[j].peer_send(b"HI");
    w.turns(5, 100);
    assert!(w.net.sockets[j].peer_read(usize::MAX).is_empty());
}

#[test]
fn a_lossy_link_delivering_in_random_pieces_and_gaps_is_served_exactly() {
    // Loss under TCP shows up as stalls and odd segment sizes: deliver the
    // request stream in random pieces with random pauses, read the same way.
    let mut w = unlimited(2);
    let i = w.net.connect(peer(1, 4000)).unwrap();
    let mut rng = ironbay_bdev::Rng::new(7);
    let mut stream = b"HI".to_vec();
    let reads = 40u32;
    for k in 0..reads {
        stream.push(b'R');
        stream.extend((512 * (1 + k % 8)).to_be_bytes());
    }
    let want: usize = (0..reads).map(|k| 512 * (1 + k as usize % 8)).sum();
    let (mut sent, mut got) = (0, 0);
    for _ in 0..100_000 {
        if sent < stream.len() && rng.below(3) == 0 {
            let n = 1 + (rng.next_u64() % 7) as usize;
            let end = (sent + n).min(stream.len());
            sent += w.net.sockets[i].peer_send(&stream[sent..end]);
        }
        if rng.below(4) == 0 {
            got += w.net.sockets[i]
                .peer_read(1 + (rng.next_u64() % 3000) as usize)
                .len();
        }
        // Pauses of up to 200 ms, like retransmission timeouts.
        w.turn(rng.next_u64() % 200_000);
        if got == want {
            break;
        }
    }
    assert_eq!(got, want);
    assert_eq!(w.state(i), SocketState::Open);
}

#[test]
fn half_open_connections_filling_every_slot_are_evicted_for_a_newcomer() {
    let mut w = unlimited(4);
    for (k, s) in w.net.sockets.iter_mut().enumerate() {
        assert!(s.half_open(peer(k as u8 + 1, 4000)));
    }
    w.turns(15, 100 * MS);
    assert!(w.ep.stats().evicted >= 1);
    let i = w
        .net
        .connect(peer(20, 5000))
        .expect("a slot for the newcomer");
    w.honest_read(i, 512);
}
