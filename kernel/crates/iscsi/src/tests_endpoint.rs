//! The iSCSI engine behind the endpoint, under the simulated network and a
//! small I/O budget: initiators that pipeline large commands and do not
//! read what they asked for stay within the budget, wait rather than fail,
//! and give every buffer back when they go.

use crate::config::Config;
use crate::pdu::{self, Bhs, NO_TAG, Pdu, at, flag, op};
use crate::tests::config;
use crate::{Connection, Target};
use ironbay_bdev::{Budget, IoOp, IoRequest, MallocBdev, Registry};
use ironbay_endpoint::sim::{SimNet, deliver, peer};
use ironbay_endpoint::{Endpoint, Limits, Socket, SocketState};

const NODE: &str = "iqn.2016-06.io.spdk:disk1";
const BS: usize = 512;
const MIB: usize = 1 << 20;
/// The LUN: 16 MiB, filled with [`byte_at`].
const LUN_BYTES: usize = 16 * MIB;

/// The byte the LUN holds at `off` before anything is written.
fn byte_at(off: usize) -> u8 {
    (off / BS) as u8 ^ (off % 251) as u8
}

/// One initiator: its socket, what it has read and not parsed, its
/// sequence numbers.
struct Peer {
    sock: usize,
    rx: Vec<u8>,
    itt: u32,
    cmd_sn: u32,
}

/// An endpoint serving the target over simulated sockets, a RAM LUN and
/// a virtual clock (µs).
struct World {
    ep: Endpoint<Connection>,
    net: SimNet,
    target: Target,
    bdevs: Registry,
    budget: Budget,
    now: u64,
    /// Most the budget ever had out, checked after every turn.
    high: usize,
}

fn lun_config(bdevs: &mut Registry, depth: u32) -> Config {
    let mut cfg = config(bdevs);
    let id = bdevs
        .add(Box::new(MallocBdev::new(
            "Big",
            (LUN_BYTES / BS) as u64,
            BS as u32,
        )))
        .unwrap();
    let data: Vec<u8> = (0..LUN_BYTES).map(byte_at).collect();
    let mut buf = ironbay_bdev::IoBuf::new(LUN_BYTES);
    buf.as_mut_slice().copy_from_slice(&data);
    let req = IoRequest {
        tag: 0,
        op: IoOp::Write { lba: 0, buf },
        fua: false,
    };
    bdevs.submit(id, req, 0).unwrap();
    let mut done = Vec::new();
    bdevs.poll(0, &mut done);
    assert!(done.iter().all(|(_, c)| c.status.is_ok()));
    // The simulated sockets listen on 10.0.3.15.
    cfg.portal_groups[0].portals[0].host = "0.0.0.0".into();
    cfg.nodes[0].luns[0].bdev = id;
    cfg.nodes[0].luns[0].bdev_name = "Big".into();
    cfg.nodes[0].queue_depth = depth;
    cfg.options.max_queue_depth = depth;
    cfg.options.initial_r2t = false;
    cfg.options.first_burst_length = 65536;
    cfg
}

impl World {
    fn new(slots: usize, budget: Budget, depth: u32) -> World {
        let mut bdevs = Registry::new();
        let cfg = lun_config(&mut bdevs, depth);
        World {
            ep: Endpoint::new(1, slots, Limits::default(), budget.clone()),
            net: SimNet::new(3260, slots, 64 << 10),
            target: Target::new(cfg),
            bdevs,
            budget,
            now: 0,
            high: 0,
        }
    }

    /// One poll-loop turn and 100 µs of virtual time; the budget is never
    /// exceeded.
    fn turn(&mut self) {
        self.ep.poll(
            &mut self.net,
            &mut self.target,
            &mut self.bdevs,
            self.now,
            false,
        );
        deliver(&mut self.bdevs, &mut self.ep, &mut self.target, self.now);
        self.now += 100;
        let used = self.budget.used();
        assert!(used <= self.budget.limit(), "{used} bytes out");
        self.high = self.high.max(used);
    }

    fn turns(&mut self, n: usize) {
        for _ in 0..n {
            self.turn();
        }
    }

    fn connect(&mut self, n: u8) -> Peer {
        let sock = self.net.connect(peer(n, 40000)).unwrap();
        Peer {
            sock,
            rx: Vec::new(),
            itt: 0,
            cmd_sn: 1,
        }
    }

    /// Sends all of `bytes`, turning while the window is full.
    fn send(&mut self, p: &Peer, bytes: &[u8]) {
        let mut off = 0;
        for _ in 0..100_000 {
            off += self.net.sockets[p.sock].peer_send(&bytes[off..]);
            if off == bytes.len() {
                return;
            }
            self.turn();
        }
        panic!("the target takes no input");
    }

    /// Reads what the target sent; the PDUs complete in it.
    fn take(&mut self, p: &mut Peer) -> Vec<Pdu> {
        p.rx.extend(self.net.sockets[p.sock].peer_read(usize::MAX));
        let mut v = Vec::new();
        while let Some(bhs) = Bhs::from_slice(&p.rx) {
            let total = pdu::frame(&bhs, false, false).total;
            if p.rx.len() < total {
                break;
            }
            let raw: Vec<u8> = p.rx.drain(..total).collect();
            v.push(Pdu::parse(&raw, false, false).unwrap());
        }
        v
    }

    /// Turns until the next PDU arrives.
    fn recv(&mut self, p: &mut Peer) -> Pdu {
        for _ in 0..100_000 {
            if let Some(pdu) = self.take_one(p) {
                return pdu;
            }
            self.turn();
        }
        panic!("no PDU from the target");
    }

    fn take_one(&mut self, p: &mut Peer) -> Option<Pdu> {
        p.rx.extend(self.net.sockets[p.sock].peer_read(usize::MAX));
        let bhs = Bhs::from_slice(&p.rx)?;
        let total = pdu::frame(&bhs, false, false).total;
        if p.rx.len() < total {
            return None;
        }
        let raw: Vec<u8> = p.rx.drain(..total).collect();
        Some(Pdu::parse(&raw, false, false).unwrap())
    }

    fn login(&mut self, p: &mut Peer, ops: &[(&str, &str)]) {
        let sec = [
            ("InitiatorName", "iqn.1994-05.com.example:host"),
            ("TargetName", NODE),
            ("SessionType", "Normal"),
            ("AuthMethod", "None"),
        ];
        for (flags, keys) in [(0x81, &sec[..]), (0x87, ops)] {
            let mut b = Bhs::new(op::LOGIN_REQ);
            b.0[0] |= 0x40;
            b.set_flags(flags).set_itt(0);
            b.0[8..14].copy_from_slice(&[0x80, 1, 2, 3, 4, p.sock as u8]);
            b.set_u16(20, 1).set_u32(24, p.cmd_sn);
            let v = pdu::encode(&b, &[], &kv(keys), false, false);
            self.send(p, &v);
            let r = self.recv(p);
            assert_eq!((r.bhs.opcode(), r.bhs.u16_at(36)), (op::LOGIN_RSP, 0));
        }
    }

    /// The connection of socket `i`.
    fn conn(&self, i: usize) -> &Connection {
        let peer = self.net.sockets[i].peer();
        self.ep
            .connections()
            .find(|c| Some(c.peer) == peer)
            .expect("no connection")
    }

    /// A command and its answer, nothing else in flight.
    fn status(&mut self, p: &mut Peer, cdb: &[u8], flags: u8, edtl: u32) -> Pdu {
        let (_, v) = command(p, cdb, flags, edtl, &[]);
        self.send(p, &v);
        loop {
            let r = self.recv(p);
            if r.bhs.opcode() == op::SCSI_RSP || r.bhs.flags() & flag::STATUS != 0 {
                return r;
            }
        }
    }

    /// MAXIMUM TRANSFER LENGTH and OPTIMAL TRANSFER LENGTH (blocks) from the
    /// block limits VPD page.
    fn block_limits(&mut self, p: &mut Peer) -> (usize, usize) {
        let (_, v) = command(
            p,
            &[0x12, 1, 0xb0, 0, 255, 0],
            flag::FINAL | flag::READ,
            255,
            &[],
        );
        self.send(p, &v);
        let r = self.recv(p);
        assert_eq!((r.bhs.opcode(), r.bhs.byte(3)), (op::DATA_IN, 0));
        let be = |o: usize| u32::from_be_bytes(r.data[o..o + 4].try_into().unwrap()) as usize;
        (be(8), be(12))
    }
}

fn kv(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in pairs {
        v.extend_from_slice(format!("{k}={val}\0").as_bytes());
    }
    v
}

/// A SCSI Command PDU: (ITT, bytes).
fn command(p: &mut Peer, cdb: &[u8], flags: u8, edtl: u32, data: &[u8]) -> (u32, Vec<u8>) {
    p.itt += 1;
    let mut b = Bhs::new(op::SCSI_CMD);
    b.set_flags(flags).set_itt(p.itt).set_u32(at::W20, edtl);
    b.set_u32(at::W24, p.cmd_sn);
    p.cmd_sn += 1;
    b.0[32..32 + cdb.len()].copy_from_slice(cdb);
    (p.itt, pdu::encode(&b, &[], data, false, false))
}

fn data_out(itt: u32, ttt: u32, sn: u32, off: usize, data: &[u8], last: bool) -> Vec<u8> {
    let mut b = Bhs::new(op::DATA_OUT);
    b.set_flags(if last { flag::FINAL } else { 0 })
        .set_itt(itt)
        .set_u32(at::W20, ttt)
        .set_u32(at::W36, sn)
        .set_u32(at::W40, off as u32);
    pdu::encode(&b, &[], data, false, false)
}

fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// Sense key, ASC and ASCQ of a CHECK CONDITION response.
fn sense(r: &Pdu) -> (u8, u8, u8) {
    assert_eq!((r.bhs.opcode(), r.bhs.byte(3)), (op::SCSI_RSP, 2));
    let s = &r.data[2..];
    (s[2] & 0x0f, s[12], s[13])
}

/// 4 MiB for four connections: 512 KiB floors, at most 1 MiB each.
fn small_budget() -> Budget {
    Budget::new(4 << 20, 4)
}

/// What one command may be promised of a 4-slot budget's share.
fn check_limits(budget: &Budget, max_xfer: usize, opt: usize) {
    assert!(max_xfer > 0 && opt > 0 && opt <= max_xfer);
    assert!(max_xfer * BS <= budget.max_hold(), "{max_xfer} blocks");
}

#[test]
fn pipelined_reads_never_taken_stay_within_the_budget_and_complete_once_read() {
    let budget = small_budget();
    let mut w = World::new(4, budget.clone(), 32);
    let mut p = w.connect(1);
    w.login(&mut p, &[("MaxRecvDataSegmentLength", "65536")]);
    let (max_xfer, opt) = w.block_limits(&mut p);
    check_limits(&budget, max_xfer, opt);
    // 32 reads of the largest transfer, many times what the budget holds.
    let n = 32;
    let mut bytes = Vec::new();
    let mut lbas = Vec::new();
    for k in 0..n {
        let lba = (k * max_xfer) % (LUN_BYTES / BS - max_xfer);
        let cdb = rw16(0x88, lba as u64, max_xfer as u32);
        let (itt, v) = command(
            &mut p,
            &cdb,
            flag::FINAL | flag::READ,
            (max_xfer * BS) as u32,
            &[],
        );
        bytes.extend(v);
        lbas.push((itt, lba));
    }
    assert!(n * max_xfer * BS > 4 * budget.limit());
    // The initiator sends and never reads.
    let mut off = 0;
    for _ in 0..3000 {
        off += w.net.sockets[p.sock].peer_send(&bytes[off..]);
        w.turn();
    }
    assert!(
        w.conn(p.sock).waits_for_memory(),
        "the reads wait for memory"
    );
    assert!(!w.conn(p.sock).wants_input(), "and no more is read");
    assert!(off < bytes.len() || w.net.sockets[p.sock].can_recv());
    assert!(w.high <= budget.max_hold());
    // Reading resumes everything; every byte comes as the LUN holds it.
    let mut got: Vec<(u32, usize)> = lbas.iter().map(|&(itt, _)| (itt, 0)).collect();
    let mut done = 0;
    for _ in 0..200_000 {
        if done == n {
            break;
        }
        off += w.net.sockets[p.sock].peer_send(&bytes[off..]);
        w.turn();
        for r in w.take(&mut p) {
            let itt = r.bhs.itt();
            let k = got.iter().position(|g| g.0 == itt).unwrap();
            match r.bhs.opcode() {
                op::DATA_IN => {
                    let at = r.bhs.u32_at(at::W40) as usize;
                    assert_eq!(at, got[k].1, "in order");
                    let base = lbas[k].1 * BS + at;
                    assert!(
                        r.data
                            .iter()
                            .enumerate()
                            .all(|(j, &b)| b == byte_at(base + j))
                    );
                    got[k].1 += r.data.len();
                    if r.bhs.flags() & flag::STATUS != 0 {
                        assert_eq!(r.bhs.byte(3), 0);
                        done += 1;
                    }
                }
                o => panic!("opcode {o:#x}"),
            }
        }
    }
    assert_eq!(done, n);
    assert!(got.iter().all(|g| g.1 == max_xfer * BS));
    assert!(
        w.high <= budget.max_hold(),
        "one connection holds its share"
    );
    // Everything comes back when the initiator goes.
    w.net.sockets[p.sock].peer_reset();
    w.turns(5);
    assert_eq!(budget.used(), 0);
    assert!(w.target.connections().is_empty());
}

/// Answers R2Ts with data until `n` writes completed; output is read only
/// every `lazy` turns. Returns the statuses.
fn answer_r2ts(
    w: &mut World,
    p: &mut Peer,
    n: usize,
    lbas: &[(u32, usize)],
    lazy: usize,
) -> Vec<u8> {
    let mut statuses = Vec::new();
    for t in 0..1_000_000 {
        if statuses.len() == n {
            return statuses;
        }
        w.turn();
        if t % lazy != 0 {
            continue;
        }
        for r in w.take(p) {
            let itt = r.bhs.itt();
            match r.bhs.opcode() {
                op::R2T => {
                    let &(_, lba) = lbas.iter().find(|x| x.0 == itt).unwrap();
                    let ttt = r.bhs.u32_at(at::W20);
                    let off = r.bhs.u32_at(at::W40) as usize;
                    let len = r.bhs.u32_at(at::W44) as usize;
                    let mut v = Vec::new();
                    for (sn, o) in (off..off + len).step_by(65536).enumerate() {
                        let end = (o + 65536).min(off + len);
                        let d: Vec<u8> = (o..end).map(|x| !byte_at(lba * BS + x)).collect();
                        v.extend(data_out(itt, ttt, sn as u32, o, &d, end == off + len));
                    }
                    w.send(p, &v);
                }
                op::SCSI_RSP => statuses.push(r.bhs.byte(3)),
                o => panic!("opcode {o:#x}"),
            }
        }
    }
    panic!("{} of {n} writes done", statuses.len());
}

/// 32 pipelined WRITEs of `blocks` (the largest transfer if 0), data
/// solicited by R2T, answered slowly and then promptly: they all complete
/// and read back, within the budget.
fn pipelined_writes(blocks: usize) {
    let budget = small_budget();
    let mut w = World::new(4, budget.clone(), 32);
    let mut p = w.connect(1);
    w.login(
        &mut p,
        &[
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
            ("MaxBurstLength", "262144"),
            ("MaxRecvDataSegmentLength", "65536"),
        ],
    );
    let (max_xfer, opt) = w.block_limits(&mut p);
    check_limits(&budget, max_xfer, opt);
    let blocks = if blocks == 0 { max_xfer } else { blocks };
    let n = 32;
    let mut bytes = Vec::new();
    let mut lbas = Vec::new();
    for k in 0..n {
        // Overlaps write the same bytes: they depend on the offset only.
        let lba = (k * blocks) % (LUN_BYTES / BS - blocks);
        let cdb = rw16(0x8a, lba as u64, blocks as u32);
        let edtl = (blocks * BS) as u32;
        let (itt, v) = command(&mut p, &cdb, flag::FINAL | flag::WRITE, edtl, &[]);
        bytes.extend(v);
        lbas.push((itt, lba));
    }
    assert!(n * blocks * BS > budget.max_hold());
    w.send(&p, &bytes);
    w.turns(200);
    assert!(
        w.conn(p.sock).waits_for_memory(),
        "the writes wait for memory"
    );
    if blocks * BS < budget.floor() / 2 {
        // Promised, not taken: no data came yet.
        assert!(w.conn(p.sock).dout_promised > 0);
        assert_eq!(budget.used(), 0);
    } else {
        assert!(budget.used() >= blocks * BS);
    }
    // Slow readers of R2Ts and responses first, then prompt ones.
    let statuses = answer_r2ts(&mut w, &mut p, n / 2, &lbas, 50);
    let rest = answer_r2ts(&mut w, &mut p, n / 2, &lbas, 1);
    assert!(statuses.iter().chain(&rest).all(|&s| s == 0));
    assert!(w.high <= budget.max_hold());
    // What was written reads back.
    let (itt, v) = command(
        &mut p,
        &rw16(0x88, 0, 64),
        flag::FINAL | flag::READ,
        64 * 512,
        &[],
    );
    w.send(&p, &v);
    let r = w.recv(&mut p);
    assert_eq!(
        (r.bhs.itt(), r.bhs.flags() & flag::STATUS),
        (itt, flag::STATUS)
    );
    assert!(r.data.iter().enumerate().all(|(j, &b)| b == !byte_at(j)));
    w.net.sockets[p.sock].peer_close();
    w.turns(10);
    assert_eq!(budget.used(), 0);
}

/// Writes larger than the connection's floor take their buffers when
/// granted.
#[test]
fn pipelined_writes_wait_for_memory_and_complete() {
    pipelined_writes(0);
}

/// Small writes are promised their buffers within the floor and take them
/// as the data comes; no more is promised than the floor holds.
#[test]
fn pipelined_small_writes_are_promised_within_the_floor() {
    pipelined_writes(128);
}

#[test]
fn commands_larger_than_a_connection_may_hold_are_refused() {
    let budget = small_budget();
    let mut w = World::new(4, budget.clone(), 32);
    let mut p = w.connect(1);
    w.login(&mut p, &[("ImmediateData", "Yes"), ("InitialR2T", "No")]);
    let (max_xfer, _) = w.block_limits(&mut p);
    let too_many = (budget.max_hold() / BS + 1) as u32;
    for blocks in [max_xfer as u32 + 1, too_many] {
        let len = blocks * BS as u32;
        let r = w.status(
            &mut p,
            &rw16(0x88, 0, blocks),
            flag::FINAL | flag::READ,
            len,
        );
        assert_eq!(sense(&r), (5, 0x24, 0), "READ of {blocks} blocks");
        // A write: refused, and what data it solicits is dropped.
        let (itt, v) = command(&mut p, &rw16(0x8a, 0, blocks), flag::WRITE, len, &[7; 4096]);
        w.send(&p, &v);
        let v = data_out(itt, NO_TAG, 0, 4096, &[7; 4096], true);
        w.send(&p, &v);
        let r = loop {
            let r = w.recv(&mut p);
            if r.bhs.opcode() != op::R2T {
                break r;
            }
            let (ttt, off) = (r.bhs.u32_at(at::W20), r.bhs.u32_at(at::W40) as usize);
            let n = r.bhs.u32_at(at::W44) as usize;
            for (sn, o) in (off..off + n).step_by(65536).enumerate() {
                let end = (o + 65536).min(off + n);
                let v = data_out(itt, ttt, sn as u32, o, &vec![7; end - o], end == off + n);
                w.send(&p, &v);
            }
        };
        assert_eq!(sense(&r), (5, 0x24, 0), "WRITE of {blocks} blocks");
        assert_eq!(budget.used(), 0, "nothing was taken for it");
    }
    // The largest one runs.
    let r = w.status(
        &mut p,
        &rw16(0x88, 8, max_xfer as u32),
        flag::FINAL | flag::READ,
        (max_xfer * BS) as u32,
    );
    assert_eq!(r.bhs.byte(3), 0);
    // Parameter data larger than a command's share ends the same way: a
    // budget whose share is smaller than a 60000-byte MODE SELECT list.
    let tiny = Budget::new(256 << 10, 4);
    let mut w = World::new(4, tiny.clone(), 32);
    let mut p = w.connect(1);
    w.login(&mut p, &[("MaxRecvDataSegmentLength", "65536")]);
    let mut select = [0x55, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];
    select[7..9].copy_from_slice(&60000u16.to_be_bytes());
    let r = w.status(&mut p, &select, flag::FINAL | flag::WRITE, 60000);
    assert_eq!(sense(&r), (5, 0x24, 0));
    // A GET LBA STATUS answer is cut to what fits instead.
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9e;
    cdb[1] = 0x12;
    cdb[10..14].copy_from_slice(&(1u32 << 20).to_be_bytes());
    let r = w.status(&mut p, &cdb, flag::FINAL | flag::READ, 1 << 20);
    assert_eq!((r.bhs.opcode(), r.bhs.byte(3)), (op::DATA_IN, 0));
    w.net.sockets[p.sock].peer_reset();
    w.turns(3);
    assert_eq!(tiny.used(), 0);
}

#[test]
fn a_reader_that_stops_does_not_starve_another() {
    let budget = small_budget();
    let mut w = World::new(4, budget.clone(), 32);
    let mut hog = w.connect(1);
    let mut p = w.connect(2);
    w.login(&mut hog, &[]);
    w.login(&mut p, &[]);
    let (max_xfer, _) = w.block_limits(&mut p);
    let len = (max_xfer * BS) as u32;
    let mut bytes = Vec::new();
    for _ in 0..32 {
        let cdb = rw16(0x88, 0, max_xfer as u32);
        bytes.extend(command(&mut hog, &cdb, flag::FINAL | flag::READ, len, &[]).1);
    }
    let mut off = 0;
    for _ in 0..500 {
        off += w.net.sockets[hog.sock].peer_send(&bytes[off..]);
        w.turn();
    }
    assert!(w.conn(hog.sock).waits_for_memory());
    for k in 0..8 {
        let lba = k * max_xfer;
        let (itt, v) = command(
            &mut p,
            &rw16(0x88, lba as u64, max_xfer as u32),
            flag::FINAL | flag::READ,
            len,
            &[],
        );
        w.send(&p, &v);
        let mut n = 0;
        for t in 0.. {
            assert!(t < 2000, "the honest read is starved");
            w.turn();
            let mut last = false;
            for r in w.take(&mut p) {
                assert_eq!(r.bhs.itt(), itt);
                let o = r.bhs.u32_at(at::W40) as usize;
                assert!(
                    r.data
                        .iter()
                        .enumerate()
                        .all(|(j, &b)| b == byte_at(lba * BS + o + j))
                );
                n += r.data.len();
                last |= r.bhs.flags() & flag::STATUS != 0;
            }
            if last {
                break;
            }
        }
        assert_eq!(n, len as usize);
    }
    assert_eq!(w.net.sockets[hog.sock].state(), SocketState::Open);
    w.net.sockets[hog.sock].peer_reset();
    w.net.sockets[p.sock].peer_reset();
    w.turns(5);
    assert_eq!(budget.used(), 0);
}

#[test]
fn unsolicited_data_waits_within_its_staging_room() {
    let budget = small_budget();
    let mut w = World::new(4, budget.clone(), 32);
    let mut p = w.connect(1);
    w.login(
        &mut p,
        &[
            ("ImmediateData", "Yes"),
            ("InitialR2T", "No"),
            ("FirstBurstLength", "65536"),
            ("MaxBurstLength", "262144"),
        ],
    );
    let (max_xfer, _) = w.block_limits(&mut p);
    // Writes of the largest transfer with their first burst unsolicited,
    // pipelined: those that find no room are told TASK SET FULL, the rest
    // complete; nothing goes past the budget.
    let n = 24;
    let mut lbas = Vec::new();
    let mut bytes = Vec::new();
    for k in 0..n {
        let lba = (k * max_xfer) % (LUN_BYTES / BS - max_xfer);
        let first: Vec<u8> = (0..65536).map(|x| !byte_at(lba * BS + x)).collect();
        let cdb = rw16(0x8a, lba as u64, max_xfer as u32);
        let len = (max_xfer * BS) as u32;
        let (itt, v) = command(&mut p, &cdb, flag::WRITE, len, &first[..32768]);
        bytes.extend(v);
        bytes.extend(data_out(itt, NO_TAG, 0, 32768, &first[32768..], true));
        lbas.push((itt, lba));
    }
    w.send(&p, &bytes);
    let statuses = answer_r2ts(&mut w, &mut p, n, &lbas, 3);
    assert!(
        statuses.iter().all(|&s| s == 0 || s == 0x28),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&0) && statuses.contains(&0x28),
        "{statuses:?}"
    );
    assert!(w.high <= budget.max_hold());
    w.net.sockets[p.sock].peer_reset();
    w.turns(3);
    assert_eq!(budget.used(), 0);
}
