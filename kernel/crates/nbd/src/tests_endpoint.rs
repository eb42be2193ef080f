//! The NBD engine behind the endpoint, under the simulated network: the
//! guarantees a hostile client must not break.

use crate::wire::{self, Request, cmd, info, opt};
use crate::{Connection, Export, Exports};
use ironbay_bdev::{Budget, MallocBdev, Registry};
use ironbay_endpoint::sim::{SimNet, deliver, peer};
use ironbay_endpoint::{Endpoint, Limits, Socket, SocketState};

const MS: u64 = 1000;

struct World {
    ep: Endpoint<Connection>,
    net: SimNet,
    exports: Exports,
    bdevs: Registry,
    now: u64,
}

impl World {
    fn new(slots: usize, budget: Budget) -> Self {
        let mut bdevs = Registry::new();
        let id = bdevs
            .add(Box::new(MallocBdev::new("Malloc0", 2048 * 64, 512)))
            .unwrap();
        let info = bdevs.info(id).unwrap().clone();
        let mut exports = Exports::default();
        exports
            .list
            .push(Export::new("Malloc0", "", id, &info, false));
        let limits = Limits {
            handshake_ms: 10_000,
            ..Limits::default()
        };
        World {
            ep: Endpoint::new(0, slots, limits, budget),
            net: SimNet::new(10809, slots, 512 << 10),
            exports,
            bdevs,
            now: 0,
        }
    }

    fn turn(&mut self, step_us: u64) {
        self.ep.poll(
            &mut self.net,
            &mut self.exports,
            &mut self.bdevs,
            self.now,
            false,
        );
        deliver(&mut self.bdevs, &mut self.ep, &mut self.exports, self.now);
        self.now += step_us;
    }

    /// Sends all of `bytes` from peer `i`, turning while the window is full.
    fn send(&mut self, i: usize, bytes: &[u8]) {
        let mut off = 0;
        for _ in 0..10_000 {
            off += self.net.sockets[i].peer_send(&bytes[off..]);
            if off == bytes.len() {
                return;
            }
            self.turn(100);
        }
        panic!("peer {i} could not send");
    }

    /// Turns until peer `i` has `n` bytes to read; returns them.
    fn read(&mut self, i: usize, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        for _ in 0..10_000 {
            got.extend(self.net.sockets[i].peer_read(n - got.len()));
            if got.len() == n {
                return got;
            }
            self.turn(100);
        }
        panic!("peer {i}: {} of {n} bytes", got.len());
    }

    /// Fixed newstyle handshake and GO on Malloc0, reading every reply.
    fn login(&mut self, i: usize) {
        self.read(i, 18);
        let mut go = (7u32).to_be_bytes().to_vec();
        go.extend(b"Malloc0");
        go.extend(1u16.to_be_bytes());
        go.extend(info::BLOCK_SIZE.to_be_bytes());
        let mut v = 3u32.to_be_bytes().to_vec();
        v.extend(wire::IHAVEOPT.to_be_bytes());
        v.extend(opt::GO.to_be_bytes());
        v.extend((go.len() as u32).to_be_bytes());
        v.extend(go);
        self.send(i, &v);
        // INFO export (12), INFO block size (14), ACK (0), each after a
        // 20-byte header.
        self.read(i, 20 + 12 + 20 + 14 + 20);
    }
}

fn request(kind: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    Request {
        flags: 0,
        kind,
        cookie,
        offset,
        length,
    }
    .emit()
    .to_vec()
}

#[test]
fn a_client_that_never_finishes_the_handshake_is_dropped_after_ten_seconds() {
    let mut w = World::new(2, Budget::unlimited());
    let i = w.net.connect(peer(1, 4000)).unwrap();
    w.turns(95);
    assert_eq!(w.net.sockets[i].state(), SocketState::Open);
    w.turns(10);
    assert_eq!(w.net.sockets[i].state(), SocketState::Idle);
    assert_eq!(w.ep.stats().handshake_timeouts, 1);
}

impl World {
    fn turns(&mut self, n: usize) {
        for _ in 0..n {
            self.turn(100 * MS);
        }
    }
}

#[test]
fn readers_that_never_drain_are_held_to_the_budget_and_a_client_is_served() {
    let budget = Budget::new(32 << 20, 16);
    let mut w = World::new(16, budget.clone());
    let hogs: Vec<usize> = (0..15)
        .map(|k| w.net.connect(peer(k + 1, 4000)).unwrap())
        .collect();
    for &h in &hogs {
        w.login(h);
    }
    let max = 4 << 20;
    let mut high = 0;
    for round in 0..40u64 {
        for &h in &hogs {
            let r = request(cmd::READ, round, 0, max);
            w.net.sockets[h].peer_send(&r);
        }
        w.turn(100);
        high = high.max(budget.used());
    }
    assert!(high <= budget.limit(), "{high} of {}", budget.limit());
    assert!(budget.waits() > 0);
    // An honest client logs in and reads and writes while the hogs hold on.
    let c = w.net.connect(peer(99, 4000)).unwrap();
    w.login(c);
    let mut data = request(cmd::WRITE, 7, 1 << 20, 64 << 10);
    data.extend(vec![0x5a; 64 << 10]);
    w.send(c, &data);
    let reply = w.read(c, 16);
    assert_eq!(&reply[4..8], &[0, 0, 0, 0]);
    w.send(c, &request(cmd::READ, 8, 1 << 20, 64 << 10));
    let reply = w.read(c, 16 + (64 << 10));
    assert_eq!(&reply[4..8], &[0, 0, 0, 0]);
    assert!(reply[16..].iter().all(|&b| b == 0x5a));
    // The hogs leave: all memory comes back.
    for &h in &hogs {
        w.net.sockets[h].peer_reset();
    }
    for _ in 0..5 {
        w.turn(100);
    }
    assert!(budget.used() <= budget.floor(), "{}", budget.used());
}

#[test]
fn a_read_larger_than_a_connection_may_hold_is_refused_not_allocated() {
    let budget = Budget::new(8 << 20, 4);
    let mut w = World::new(4, budget.clone());
    let c = w.net.connect(peer(1, 4000)).unwrap();
    w.login(c);
    w.send(c, &request(cmd::READ, 1, 0, 8 << 20));
    let reply = w.read(c, 16);
    assert_ne!(&reply[4..8], &[0, 0, 0, 0]);
    assert_eq!(budget.high_water(), 0);
}

#[test]
fn a_slow_writer_holds_only_its_payload_and_finishes() {
    let budget = Budget::new(32 << 20, 4);
    let mut w = World::new(4, budget.clone());
    let c = w.net.connect(peer(1, 4000)).unwrap();
    w.login(c);
    let len = 1u32 << 20;
    w.send(c, &request(cmd::WRITE, 1, 0, len));
    for k in 0..64 {
        w.send(c, &vec![k as u8; (len / 64) as usize]);
        w.turn(500 * MS);
        assert!(budget.used() <= len as usize);
    }
    let reply = w.read(c, 16);
    assert_eq!(&reply[4..8], &[0, 0, 0, 0]);
    assert_eq!(w.net.sockets[c].state(), SocketState::Open);
}

#[test]
fn a_client_of_a_removed_export_is_closed_at_the_next_wake() {
    let mut w = World::new(2, Budget::unlimited());
    let i = w.net.connect(peer(1, 4000)).unwrap();
    w.login(i);
    let j = w.net.connect(peer(2, 4000)).unwrap();
    w.login(j);
    w.turns(2);
    assert_eq!(w.net.sockets[i].state(), SocketState::Open);
    w.exports.list.clear();
    // Idle clients hear of it only when the endpoint is woken.
    w.turns(2);
    assert_eq!(w.net.sockets[i].state(), SocketState::Open);
    w.ep.poll(&mut w.net, &mut w.exports, &mut w.bdevs, w.now, true);
    w.turns(2);
    assert_ne!(w.net.sockets[i].state(), SocketState::Open);
    assert_ne!(w.net.sockets[j].state(), SocketState::Open);
    assert_eq!(w.ep.connections().count(), 0);
}

#[test]
fn beyond_max_connections_a_newcomer_is_closed_and_the_others_served() {
    let mut w = World::new(4, Budget::unlimited());
    w.exports.max_connections = 1;
    let i = w.net.connect(peer(1, 4000)).unwrap();
    w.login(i);
    let j = w.net.connect(peer(2, 4000)).unwrap();
    w.turns(2);
    assert_ne!(w.net.sockets[j].state(), SocketState::Open);
    assert_eq!(w.net.sockets[i].state(), SocketState::Open);
    assert_eq!(w.exports.connections, 1);
    // Once the first goes, a newcomer is served.
    w.net.sockets[i].peer_close();
    w.turns(30);
    assert_eq!(w.exports.connections, 0);
    let k = w.net.connect(peer(3, 4000)).unwrap();
    w.login(k);
    assert_eq!(w.exports.connections, 1);
}
