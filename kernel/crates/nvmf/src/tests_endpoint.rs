//! The NVMe/TCP engine behind the endpoint, under the simulated network and
//! a small memory budget: hosts that pipeline large commands and read
//! nothing back stay within the budget, resume once they read, and cannot
//! keep a new host from connecting.

use crate::config::{Config, Subsystem, TransportOptions};
use crate::pdu::{self, Common, flag, ty};
use crate::spec::{self, Status};
use crate::tests::{NQN, Sqe, connect_data, listener, namespace, pattern};
use crate::{Connection, Target};
use ironbay_bdev::{BdevId, Budget, IoBuf, IoOp, IoRequest, MallocBdev, Registry};
use ironbay_endpoint::sim::{SimNet, SimSocket, deliver, peer};
use ironbay_endpoint::{Endpoint, Limits, Socket};

const BS: usize = 512;
/// Malloc0: 8 MiB.
const BLOCKS: u64 = 16 << 10;
const KIB: usize = 1024;

struct World {
    ep: Endpoint<Connection>,
    net: SimNet,
    t: Target,
    bdevs: Registry,
    budget: Budget,
    now: u64,
    turns: u64,
}

impl World {
    /// `sockets` connection slots sharing `budget`; transfers limited only
    /// by the budget (max_io_size 8 MiB).
    fn new(sockets: usize, budget: Budget) -> World {
        let mut bdevs = Registry::new();
        let mut m = MallocBdev::new("Malloc0", BLOCKS, BS as u32);
        m.set_max_transfer(64 << 10);
        let id = bdevs.add(Box::new(m)).unwrap();
        fill(&mut bdevs, id);
        let config = Config {
            transport: Some(TransportOptions {
                max_io_size: 8 << 20,
                ..TransportOptions::default()
            }),
            subsystems: vec![Subsystem {
                allow_any_host: true,
                namespaces: vec![namespace(1, "Malloc0")],
                listeners: vec![listener()],
                ..Subsystem::new(NQN)
            }],
            ..Config::default()
        };
        World {
            ep: Endpoint::new(2, sockets, Limits::default(), budget.clone()),
            net: SimNet::new(4420, sockets, 256 << 10),
            t: Target::new(config),
            bdevs,
            budget,
            now: 0,
            turns: 0,
        }
    }

    /// One poll-loop turn, then 100 µs.
    fn turn(&mut self) {
        self.ep
            .poll(&mut self.net, &mut self.t, &mut self.bdevs, self.now, false);
        deliver(&mut self.bdevs, &mut self.ep, &mut self.t, self.now);
        assert!(
            self.budget.used() <= self.budget.limit(),
            "{:?} over its limit",
            self.budget
        );
        self.now += 100;
        self.turns += 1;
    }

    fn run(&mut self, n: usize) {
        for _ in 0..n {
            self.turn();
        }
    }

    /// Connections waiting for the budget.
    fn waiting(&self) -> usize {
        self.ep
            .connections()
            .filter(|c| c.waits_for_memory())
            .count()
    }
}

/// Malloc0 holds [`disk`] so reads can be checked.
fn fill(bdevs: &mut Registry, id: BdevId) {
    let all = disk(0, BLOCKS as usize * BS);
    let chunk = 64 << 10;
    for (k, piece) in all.chunks(chunk).enumerate() {
        let mut buf = IoBuf::new(piece.len());
        buf.as_mut_slice().copy_from_slice(piece);
        let req = IoRequest {
            tag: 0,
            op: IoOp::Write {
                lba: (k * chunk / BS) as u64,
                buf,
            },
            fua: false,
        };
        bdevs.submit(id, req, 0).unwrap();
        let mut done = Vec::new();
        bdevs.poll(0, &mut done);
        assert!(done.iter().all(|(_, c)| c.status.is_ok()));
    }
}

/// What Malloc0 holds at `lba`.
fn disk(lba: u64, len: usize) -> Vec<u8> {
    let at = lba as usize * BS;
    (at..at + len).map(|i| (i as u8).wrapping_mul(31)).collect()
}

/// One PDU from the target (no digests are negotiated here).
#[derive(Debug)]
struct Pdu {
    ty: u8,
    flags: u8,
    hdr: Vec<u8>,
    data: Vec<u8>,
}

impl Pdu {
    fn u16(&self, off: usize) -> u16 {
        pdu::le16(&self.hdr, off)
    }
    fn u32(&self, off: usize) -> u32 {
        pdu::le32(&self.hdr, off)
    }
    /// CapsuleResp: (cid, status field, dw0).
    fn resp(&self) -> (u16, u16, u32) {
        assert_eq!(self.ty, ty::CAPSULE_RESP, "{self:?}");
        (self.u16(20), self.u16(22) >> 1, self.u32(8))
    }
}

fn capsule(sqe: &Sqe, data: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 72];
    v[0] = ty::CAPSULE_CMD;
    v[2] = 72;
    if !data.is_empty() {
        v[3] = 72;
    }
    v[4..8].copy_from_slice(&((72 + data.len()) as u32).to_le_bytes());
    v[8..72].copy_from_slice(&sqe.0);
    v.extend_from_slice(data);
    v
}

fn h2c(cccid: u16, ttag: u16, datao: u32, data: &[u8], last: bool) -> Vec<u8> {
    let mut v = vec![0u8; 24];
    v[0] = ty::H2C_DATA;
    v[1] = if last { flag::LAST_PDU } else { 0 };
    v[2] = 24;
    v[3] = 24;
    v[4..8].copy_from_slice(&((24 + data.len()) as u32).to_le_bytes());
    v[8..10].copy_from_slice(&cccid.to_le_bytes());
    v[10..12].copy_from_slice(&ttag.to_le_bytes());
    v[12..16].copy_from_slice(&datao.to_le_bytes());
    v[16..20].copy_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(data);
    v
}

/// A scripted host on one simulated socket.
struct Host {
    i: usize,
    inbox: Vec<u8>,
    cid: u16,
}

impl Host {
    fn new(w: &mut World, n: u8) -> Host {
        let i = w.net.connect(peer(n, 40000 + n as u16)).unwrap();
        Host {
            i,
            inbox: Vec::new(),
            cid: 0,
        }
    }

    /// Sends all of `bytes`, turning while the window is full.
    fn send(&mut self, w: &mut World, bytes: &[u8]) {
        let mut off = 0;
        for _ in 0..100_000 {
            off += w.net.sockets[self.i].peer_send(&bytes[off..]);
            if off == bytes.len() {
                return;
            }
            w.turn();
        }
        panic!("the target stopped taking input");
    }

    /// Takes what the target sent.
    fn read(&mut self, w: &mut World) {
        self.inbox
            .extend(w.net.sockets[self.i].peer_read(usize::MAX));
    }

    fn try_pdu(&mut self) -> Option<Pdu> {
        let c = Common::parse(&self.inbox)?;
        let plen = c.plen as usize;
        if self.inbox.len() < plen {
            return None;
        }
        let raw: Vec<u8> = self.inbox.drain(..plen).collect();
        let data = if c.pdo != 0 {
            raw[c.pdo as usize..].to_vec()
        } else {
            Vec::new()
        };
        Some(Pdu {
            ty: c.ty,
            flags: c.flags,
            hdr: raw[..c.hlen as usize].to_vec(),
            data,
        })
    }

    /// The next PDU, reading and turning until it is there.
    fn pdu(&mut self, w: &mut World) -> Pdu {
        for _ in 0..10_000 {
            self.read(w);
            if let Some(p) = self.try_pdu() {
                return p;
            }
            w.turn();
        }
        panic!("no PDU from the target");
    }

    /// Sends a command with the next CID; returns the CID.
    fn cmd(&mut self, w: &mut World, sqe: Sqe, data: &[u8]) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        let mut s = sqe;
        s.0[2..4].copy_from_slice(&self.cid.to_le_bytes());
        self.send(w, &capsule(&s, data));
        self.cid
    }

    fn ic_req(&mut self, w: &mut World) {
        let mut b = vec![0u8; 128];
        b[0] = ty::IC_REQ;
        b[2] = 128;
        b[4..8].copy_from_slice(&128u32.to_le_bytes());
        self.send(w, &b);
        assert_eq!(self.pdu(w).ty, ty::IC_RESP);
    }

    /// ICReq and Connect of queue `qid`; returns Connect's DW0.
    fn connect(&mut self, w: &mut World, qid: u16, sqsize: u16, cntlid: u16) -> u32 {
        self.ic_req(w);
        let sqe = Sqe::fabrics(spec::FCTYPE_CONNECT)
            .cdw(10, (qid as u32) << 16)
            .cdw(11, sqsize as u32 - 1)
            .in_capsule(1024);
        let cid = self.cmd(w, sqe, &connect_data(cntlid, NQN));
        let (c, st, dw0) = self.pdu(w).resp();
        assert_eq!((c, st), (cid, 0), "Connect of queue {qid}");
        dw0
    }

    /// A new controller's admin queue, enabled; returns its ID.
    fn admin(w: &mut World, n: u8) -> (Host, u16) {
        let mut h = Host::new(w, n);
        let cntlid = h.connect(w, 0, 32, spec::CNTLID_DYNAMIC) as u16;
        let cc = 1 | 6 << 16 | 4 << 20;
        let sqe = Sqe::fabrics(spec::FCTYPE_PROPERTY_SET)
            .cdw(11, spec::PROP_CC)
            .cdw(12, cc);
        let cid = h.cmd(w, sqe, &[]);
        assert_eq!(h.pdu(w).resp(), (cid, 0, 0), "CC.EN");
        (h, cntlid)
    }

    /// I/O queue `qid` of controller `cntlid`.
    fn io(w: &mut World, n: u8, cntlid: u16, qid: u16) -> Host {
        let mut h = Host::new(w, n);
        h.connect(w, qid, 128, cntlid);
        h
    }

    /// Identify Controller.
    fn identify(&mut self, w: &mut World) -> Vec<u8> {
        let sqe = Sqe::new(spec::ADM_IDENTIFY, 0)
            .cdw(10, spec::CNS_CONTROLLER as u32)
            .transport(4096);
        let cid = self.cmd(w, sqe, &[]);
        let d = self.pdu(w);
        assert_eq!((d.ty, d.u16(8), d.data.len()), (ty::C2H_DATA, cid, 4096));
        assert_eq!(self.pdu(w).resp(), (cid, 0, 0));
        d.data
    }

    fn read_cmd(&mut self, w: &mut World, lba: u64, len: usize) -> u16 {
        let sqe = Sqe::rw(spec::NVM_READ, 1, lba, (len / BS) as u32).transport(len as u32);
        self.cmd(w, sqe, &[])
    }

    fn write_cmd(&mut self, w: &mut World, lba: u64, len: usize) -> u16 {
        let sqe = Sqe::rw(spec::NVM_WRITE, 1, lba, (len / BS) as u32).transport(len as u32);
        self.cmd(w, sqe, &[])
    }
}

/// What a host saw of its commands.
#[derive(Default)]
struct Seen {
    /// Read data by CID.
    data: std::collections::HashMap<u16, Vec<u8>>,
    /// Status by CID.
    done: std::collections::HashMap<u16, u16>,
}

impl Seen {
    /// Takes every whole PDU `h` has received: collects read data and
    /// statuses, and answers R2Ts with the data `writes` says (by CID).
    fn take(&mut self, w: &mut World, h: &mut Host, writes: &dyn Fn(u16) -> Vec<u8>) {
        h.read(w);
        while let Some(p) = h.try_pdu() {
            match p.ty {
                ty::C2H_DATA => {
                    let d = self.data.entry(p.u16(8)).or_default();
                    assert_eq!(p.u32(12) as usize, d.len(), "datao");
                    d.extend_from_slice(&p.data);
                    if p.flags & flag::SUCCESS != 0 {
                        self.done.insert(p.u16(8), 0);
                    }
                }
                ty::R2T => {
                    let (cid, ttag) = (p.u16(8), p.u16(10));
                    let (off, len) = (p.u32(12) as usize, p.u32(16) as usize);
                    let data = writes(cid);
                    h.send(w, &h2c(cid, ttag, off as u32, &data[off..off + len], true));
                }
                _ => {
                    let (cid, st, _) = p.resp();
                    self.done.insert(cid, st);
                }
            }
        }
    }
}

#[test]
fn pipelined_reads_stay_within_the_budget_and_finish_once_read() {
    let budget = Budget::new(4 << 20, 4);
    let mut w = World::new(4, budget.clone());
    let (mut a, cntlid) = Host::admin(&mut w, 1);
    // Floor 512 KiB less in-capsule room, as a power of two: 256 KiB.
    assert_eq!(a.identify(&mut w)[77], 6, "MDTS");
    let mut hosts: Vec<Host> = (0..3)
        .map(|k| Host::io(&mut w, 2 + k, cntlid, 1 + k as u16))
        .collect();
    let len = 256 * KIB;
    let mut cmds = Vec::new();
    for h in hosts.iter_mut() {
        let mut mine = Vec::new();
        for j in 0..24u64 {
            let lba = (j * 512) % (BLOCKS - 512);
            mine.push((h.read_cmd(&mut w, lba, len), lba));
        }
        cmds.push(mine);
    }
    // 18 MiB asked for, nothing read back.
    w.run(300);
    assert_eq!(w.waiting(), 3, "the readers were held back");
    assert!(budget.used() > 0);
    // The hosts read: every command finishes with its data.
    let mut seen: Vec<Seen> = (0..3).map(|_| Seen::default()).collect();
    for _ in 0..20_000 {
        for (h, s) in hosts.iter_mut().zip(seen.iter_mut()) {
            s.take(&mut w, h, &|_| Vec::new());
        }
        if seen.iter().all(|s| s.done.len() == 24) {
            break;
        }
        w.turn();
    }
    for (mine, s) in cmds.iter().zip(&seen) {
        for &(cid, lba) in mine {
            assert_eq!(s.done.get(&cid), Some(&0), "cid {cid}");
            assert!(s.data[&cid] == disk(lba, len), "data of cid {cid}");
        }
    }
    assert!(budget.high_water() <= budget.limit());
    // Everything comes back once the hosts are gone.
    for h in hosts.iter().chain([&a]) {
        w.net.sockets[h.i].peer_reset();
    }
    w.run(5);
    assert_eq!(budget.used(), 0);
    assert!(w.t.qpairs().is_empty());
}

#[test]
fn r2t_writes_and_reads_wait_for_the_budget_and_finish() {
    let budget = Budget::new(4 << 20, 4);
    let mut w = World::new(4, budget.clone());
    let (a, cntlid) = Host::admin(&mut w, 1);
    let mut hosts: Vec<Host> = (0..3)
        .map(|k| Host::io(&mut w, 2 + k, cntlid, 1 + k as u16))
        .collect();
    // Writes of 128 KiB to disjoint places, reads of 256 KiB elsewhere.
    let wlen = 128 * KIB;
    let rlen = 256 * KIB;
    let mut writes: Vec<Vec<(u16, u64)>> = Vec::new();
    let mut reads: Vec<Vec<(u16, u64)>> = Vec::new();
    for (k, h) in hosts.iter_mut().enumerate() {
        let (mut ws, mut rs) = (Vec::new(), Vec::new());
        for j in 0..12u64 {
            let lba = (k as u64 * 12 + j) * 256;
            ws.push((h.write_cmd(&mut w, lba, wlen), lba));
            let rlba = 9216 + j * 512;
            rs.push((h.read_cmd(&mut w, rlba, rlen), rlba));
        }
        writes.push(ws);
        reads.push(rs);
    }
    w.run(300);
    assert!(w.waiting() > 0, "commands wait for memory");
    let data_for = |k: usize| move |cid: u16| pattern(wlen, (k as u8) << 5 | (cid as u8 & 31));
    let mut seen: Vec<Seen> = (0..3).map(|_| Seen::default()).collect();
    for _ in 0..20_000 {
        for (k, (h, s)) in hosts.iter_mut().zip(seen.iter_mut()).enumerate() {
            s.take(&mut w, h, &data_for(k));
        }
        if seen.iter().all(|s| s.done.len() == 24) {
            break;
        }
        w.turn();
    }
    for k in 0..3 {
        for &(cid, _) in &writes[k] {
            assert_eq!(seen[k].done.get(&cid), Some(&0), "write {cid}");
        }
        for &(cid, lba) in &reads[k] {
            assert_eq!(seen[k].done.get(&cid), Some(&0), "read {cid}");
            assert!(seen[k].data[&cid] == disk(lba, rlen));
        }
    }
    // The writes landed.
    let h = &mut hosts[1];
    let mut s = Seen::default();
    let (cid, lba) = writes[1][5];
    let back = h.read_cmd(&mut w, lba, wlen);
    for _ in 0..1000 {
        s.take(&mut w, h, &|_| Vec::new());
        if s.done.contains_key(&back) {
            break;
        }
        w.turn();
    }
    assert_eq!(s.data[&back], data_for(1)(cid));
    for h in hosts.iter().chain([&a]) {
        w.net.sockets[h.i].peer_reset();
    }
    w.run(5);
    assert_eq!(budget.used(), 0);
}

#[test]
fn a_command_beyond_what_a_connection_may_hold_fails_alone() {
    let budget = Budget::new(4 << 20, 4);
    let mut w = World::new(4, budget.clone());
    let (_a, cntlid) = Host::admin(&mut w, 1);
    let mut h = Host::io(&mut w, 2, cntlid, 1);
    let invalid = Status::INVALID_FIELD.field();
    assert!(2 << 20 > budget.max_hold());
    // Beyond max_hold, and beyond MDTS (256 KiB) though within max_hold.
    for len in [2 << 20, 512 * KIB] {
        let cid = h.read_cmd(&mut w, 0, len);
        assert_eq!(h.pdu(&mut w).resp(), (cid, invalid, 0), "read of {len}");
        let cid = h.write_cmd(&mut w, 0, len);
        assert_eq!(
            h.pdu(&mut w).resp(),
            (cid, invalid, 0),
            "write of {len}, no R2T"
        );
    }
    // The queue goes on.
    let cid = h.read_cmd(&mut w, 8, 256 * KIB);
    let mut s = Seen::default();
    for _ in 0..1000 {
        s.take(&mut w, &mut h, &|_| Vec::new());
        if s.done.contains_key(&cid) {
            break;
        }
        w.turn();
    }
    assert_eq!(s.done[&cid], 0);
    assert!(s.data[&cid] == disk(8, 256 * KIB));
}

#[test]
fn a_new_host_connects_while_readers_exhaust_the_budget() {
    let budget = Budget::new(4 << 20, 16);
    let mut w = World::new(16, budget.clone());
    let (_a, cntlid) = Host::admin(&mut w, 1);
    // Floor 128 KiB less in-capsule room: MDTS 64 KiB.
    let mut hogs: Vec<Host> = (0..12)
        .map(|k| Host::io(&mut w, 2 + k, cntlid, 1 + k as u16))
        .collect();
    for h in hogs.iter_mut() {
        for j in 0..100u64 {
            h.read_cmd(&mut w, j * 128, 64 * KIB);
        }
    }
    w.run(200);
    assert!(budget.used() > budget.limit() * 3 / 4, "{budget:?}");
    assert!(w.waiting() >= 12, "every reader waits for memory");
    let before = w.turns;
    let (mut b, cntlid) = Host::admin(&mut w, 50);
    assert_eq!(b.identify(&mut w)[77], 4, "MDTS");
    let mut io = Host::io(&mut w, 51, cntlid, 1);
    let took = w.turns - before;
    assert!(took < 20, "login took {took} turns");
    // The newcomer's own reads are served from its floor.
    let cid = io.read_cmd(&mut w, 64, 4096);
    let d = io.pdu(&mut w);
    assert_eq!((d.ty, d.u16(8)), (ty::C2H_DATA, cid));
    assert!(d.data == disk(64, 4096));
    assert_eq!(io.pdu(&mut w).resp(), (cid, 0, 0));
    assert!(w.turns - before < 40, "{} turns", w.turns - before);
    // The readers' memory comes back when they vanish.
    for h in &hogs {
        w.net.sockets[h.i].peer_reset();
    }
    w.run(5);
    assert_eq!(budget.used(), 0);
}

#[test]
fn solicited_data_flows_while_reads_wait() {
    let budget = Budget::new(4 << 20, 4);
    let mut w = World::new(4, budget.clone());
    let (_a, cntlid) = Host::admin(&mut w, 1);
    let mut h = Host::io(&mut w, 2, cntlid, 1);
    // A write granted its R2T, its data yet to come; then more reads than
    // the connection may hold, which wait.
    let big = h.write_cmd(&mut w, 0, 128 * KIB);
    let r2t = h.pdu(&mut w);
    assert_eq!((r2t.ty, r2t.u16(8)), (ty::R2T, big));
    let reads: Vec<u16> = (0..8)
        .map(|j| h.read_cmd(&mut w, 2048 + j * 512, 256 * KIB))
        .collect();
    w.run(20);
    assert_eq!(w.waiting(), 1);
    // An in-capsule write and the first write's data still go in.
    let small = h.cmd(
        &mut w,
        Sqe::rw(spec::NVM_WRITE, 1, 1024, 8).in_capsule(4096),
        &pattern(4096, 9),
    );
    let data = pattern(128 * KIB, 7);
    h.send(&mut w, &h2c(big, r2t.u16(10), 0, &data, true));
    w.run(20);
    assert!(!w.net.sockets[h.i].can_recv(), "input was taken");
    let mut s = Seen::default();
    for _ in 0..10_000 {
        s.take(&mut w, &mut h, &|_| Vec::new());
        if s.done.len() == 10 {
            break;
        }
        w.turn();
    }
    for cid in reads.iter().chain([&big, &small]) {
        assert_eq!(s.done.get(cid), Some(&0), "cid {cid}");
    }
    let back = h.read_cmd(&mut w, 0, 128 * KIB);
    let mut s = Seen::default();
    for _ in 0..1000 {
        s.take(&mut w, &mut h, &|_| Vec::new());
        if s.done.contains_key(&back) {
            break;
        }
        w.turn();
    }
    assert!(s.data[&back] == data);
}

#[test]
fn a_parked_capsule_holds_input_until_output_drains() {
    let budget = Budget::new(4 << 20, 4);
    let mut w = World::new(4, budget.clone());
    // Small send windows, so read data waits in the engine, not the socket.
    w.net.sockets = (0..4)
        .map(|_| SimSocket::new(4420, 256 << 10, 4096))
        .collect();
    let (_a, cntlid) = Host::admin(&mut w, 1);
    let mut h = Host::io(&mut w, 2, cntlid, 1);
    // Outstanding solicited data keeps input open while reads fill the
    // connection's share (1 MiB) to the byte and more wait.
    let big = h.write_cmd(&mut w, 0, 128 * KIB);
    let r2t = h.pdu(&mut w);
    assert_eq!(r2t.ty, ty::R2T);
    let reads: Vec<u16> = (0..12)
        .map(|j| h.read_cmd(&mut w, 2048 + j * 256, 128 * KIB))
        .collect();
    w.run(20);
    let held = w.ep.connections().map(|c| c.account.held()).max();
    assert_eq!(held, Some(budget.max_hold()), "the share is full");
    // In-capsule data finds no room: the capsule is parked and input
    // stops, with the first write's data behind it (the order a host's
    // send queue may put them in).
    let small = h.cmd(
        &mut w,
        Sqe::rw(spec::NVM_WRITE, 1, 1024, 8).in_capsule(4096),
        &pattern(4096, 9),
    );
    let data = pattern(128 * KIB, 7);
    h.send(&mut w, &h2c(big, r2t.u16(10), 0, &data, true));
    w.run(20);
    assert!(w.net.sockets[h.i].can_recv(), "input held back");
    assert_eq!(w.waiting(), 1);
    // The host reads its data: the capsule goes on, then the write's data.
    let mut s = Seen::default();
    for _ in 0..10_000 {
        s.take(&mut w, &mut h, &|_| Vec::new());
        if s.done.len() == 14 {
            break;
        }
        w.turn();
    }
    for cid in reads.iter().chain([&big, &small]) {
        assert_eq!(s.done.get(cid), Some(&0), "cid {cid}");
    }
    // Gone while a transfer is half in: everything comes back.
    let big = h.write_cmd(&mut w, 0, 128 * KIB);
    let r2t = h.pdu(&mut w);
    assert_eq!(r2t.ty, ty::R2T);
    h.send(&mut w, &h2c(big, r2t.u16(10), 0, &data[..4096], false));
    w.run(5);
    assert!(budget.used() >= 128 * KIB);
    w.net.sockets[h.i].peer_reset();
    w.run(5);
    assert_eq!(budget.used(), 0);
}

#[test]
fn input_stops_while_reads_wait_and_resumes_once_output_drains() {
    let budget = Budget::new(4 << 20, 4);
    let mut w = World::new(4, budget.clone());
    let (_a, cntlid) = Host::admin(&mut w, 1);
    let mut h = Host::io(&mut w, 2, cntlid, 1);
    let reads: Vec<u16> = (0..16)
        .map(|j| h.read_cmd(&mut w, j * 512, 256 * KIB))
        .collect();
    w.run(50);
    let small = h.cmd(
        &mut w,
        Sqe::rw(spec::NVM_WRITE, 1, 12000, 8).in_capsule(4096),
        &pattern(4096, 3),
    );
    let flush = h.cmd(&mut w, Sqe::new(spec::NVM_FLUSH, 1), &[]);
    w.run(50);
    assert!(w.net.sockets[h.i].can_recv(), "input held back");
    let mut s = Seen::default();
    for _ in 0..10_000 {
        s.take(&mut w, &mut h, &|_| Vec::new());
        if s.done.len() == 18 {
            break;
        }
        w.turn();
    }
    for cid in reads.iter().chain([&small, &flush]) {
        assert_eq!(s.done.get(cid), Some(&0), "cid {cid}");
    }
    w.net.sockets[h.i].peer_reset();
    w.run(5);
    // The admin queue holds nothing.
    assert_eq!(budget.used(), 0);
}
