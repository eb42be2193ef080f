//! The NVMe/TCP transport against a scripted host, RAM bdevs and the real
//! controller.

use crate::config::{Adrfam, Config, Listener, Namespace, Subsystem, TransportOptions, Trtype};
use crate::pdu::{self, Common, fes, flag, ty};
use crate::spec::{self, Status};
use crate::{Connection, Target};
use ironbay_bdev::{BdevId, IoRequest, MallocBdev, Registry};
use ironbay_crc::crc32c;

pub(crate) const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:0f0e0d0c-0b0a-0908-0706-050403020100";
const BS: usize = 512;
const TRANSIENT: u16 = 0x22;

fn addr(s: &str) -> core::net::SocketAddr {
    s.parse().unwrap()
}

pub(crate) fn listener() -> Listener {
    Listener {
        trtype: Trtype::Tcp,
        adrfam: Adrfam::Ipv4,
        traddr: "127.0.0.1".into(),
        port: 4420,
    }
}

pub(crate) fn namespace(nsid: u32, bdev: &str) -> Namespace {
    Namespace {
        nsid,
        bdev_name: bdev.into(),
        nguid: None,
        eui64: None,
        uuid: None,
    }
}

/// Malloc0 (2048 blocks, 4 KiB transfers to exercise splitting) as nsid 1,
/// read-only Malloc1 as nsid 2.
fn config(reg: &mut Registry, opts: TransportOptions) -> Config {
    let mut m0 = MallocBdev::new("Malloc0", 2048, 512);
    m0.set_max_transfer(4096);
    reg.add(Box::new(m0)).unwrap();
    let mut m1 = MallocBdev::new("Malloc1", 64, 512);
    m1.set_read_only(true);
    reg.add(Box::new(m1)).unwrap();
    reg.add(Box::new(MallocBdev::new("Malloc2", 64, 512)))
        .unwrap();
    Config {
        transport: Some(opts),
        subsystems: vec![Subsystem {
            allow_any_host: true,
            namespaces: vec![namespace(1, "Malloc0"), namespace(2, "Malloc1")],
            listeners: vec![listener()],
            ..Subsystem::new(NQN)
        }],
        ..Config::default()
    }
}

/// One PDU from the target, digests checked.
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
    fn sqhd(&self) -> u16 {
        self.u16(16)
    }
}

struct Rig {
    t: Target,
    reg: Registry,
    conn: Connection,
    out: Vec<u8>,
    now: u64,
    hd: bool,
    dd: bool,
    hold: bool,
    held: Vec<(BdevId, IoRequest)>,
    cid: u16,
    ios: usize,
}

#[derive(Clone, Copy)]
pub(crate) struct Sqe(pub [u8; 64]);

impl Sqe {
    pub(crate) fn new(opc: u8, nsid: u32) -> Sqe {
        let mut b = [0u8; 64];
        b[0] = opc;
        b[1] = 0x40;
        b[4..8].copy_from_slice(&nsid.to_le_bytes());
        Sqe(b)
    }
    pub(crate) fn fabrics(fctype: u8) -> Sqe {
        let mut s = Sqe::new(spec::OPC_FABRICS, 0);
        s.0[4] = fctype;
        s
    }
    pub(crate) fn cdw(mut self, i: usize, v: u32) -> Sqe {
        self.0[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        self
    }
    fn byte(mut self, i: usize, v: u8) -> Sqe {
        self.0[i] = v;
        self
    }
    /// Transport SGL (R2T / C2HData) of `len` bytes.
    pub(crate) fn transport(mut self, len: u32) -> Sqe {
        self.0[24..40].fill(0);
        self.0[32..36].copy_from_slice(&len.to_le_bytes());
        self.0[39] = 0x5a;
        self
    }
    /// In-capsule data block of `len` bytes at offset 0.
    pub(crate) fn in_capsule(mut self, len: u32) -> Sqe {
        self.0[24..40].fill(0);
        self.0[32..36].copy_from_slice(&len.to_le_bytes());
        self.0[39] = 0x01;
        self
    }
    pub(crate) fn rw(opc: u8, nsid: u32, lba: u64, blocks: u32) -> Sqe {
        Sqe::new(opc, nsid)
            .cdw(10, lba as u32)
            .cdw(11, (lba >> 32) as u32)
            .cdw(12, blocks - 1)
    }
}

pub(crate) fn connect_data(cntlid: u16, subnqn: &str) -> Vec<u8> {
    let mut d = vec![0u8; 1024];
    d[..16].copy_from_slice(&[7u8; 16]);
    d[16..18].copy_from_slice(&cntlid.to_le_bytes());
    d[256..256 + subnqn.len()].copy_from_slice(subnqn.as_bytes());
    d[512..512 + HOSTNQN.len()].copy_from_slice(HOSTNQN.as_bytes());
    d
}

pub(crate) fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

impl Rig {
    fn new() -> Rig {
        Rig::with(TransportOptions {
            abort_timeout_sec: 1,
            ..TransportOptions::default()
        })
    }

    fn with(opts: TransportOptions) -> Rig {
        let mut reg = Registry::new();
        let cfg = config(&mut reg, opts);
        Rig {
            t: Target::new(cfg),
            reg,
            conn: Connection::new(addr("127.0.0.1:4420"), addr("127.0.0.1:40000"), 0),
            out: Vec::new(),
            now: 0,
            hd: false,
            dd: false,
            hold: false,
            held: Vec::new(),
            cid: 0,
            ios: 0,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let mut off = 0;
        for _ in 0..10_000 {
            off += self
                .conn
                .handle_input(&bytes[off..], &mut self.t, &self.reg, self.now);
            self.pump();
            if off == bytes.len() || self.conn.finished() || !self.conn.wants_input() {
                break;
            }
        }
    }

    fn pump(&mut self) {
        let mut done = Vec::new();
        for _ in 0..1000 {
            while let Some(io) = self.conn.poll_io() {
                self.ios += 1;
                let req = IoRequest {
                    tag: io.tag,
                    op: io.op,
                    fua: io.fua,
                };
                if self.hold {
                    self.held.push((io.bdev, req));
                } else {
                    self.reg.submit(io.bdev, req, 0).unwrap();
                }
            }
            done.clear();
            self.reg.poll(0, &mut done);
            if done.is_empty() {
                break;
            }
            for (_, c) in done.drain(..) {
                self.conn
                    .handle_completion(c.tag, c, &mut self.t, &self.reg, self.now);
            }
        }
        while let Some(b) = self.conn.poll_output() {
            let n = b.len();
            self.out.extend_from_slice(b);
            self.conn.consume_output(n);
        }
    }

    /// Gives the held I/O to the device in reverse order, completing each
    /// before the next is submitted.
    fn release_reversed(&mut self) {
        self.hold = false;
        let held = core::mem::take(&mut self.held);
        for (id, req) in held.into_iter().rev() {
            self.reg.submit(id, req, 0).unwrap();
            let mut done = Vec::new();
            self.reg.poll(0, &mut done);
            for (_, c) in done {
                self.conn
                    .handle_completion(c.tag, c, &mut self.t, &self.reg, self.now);
            }
        }
        self.pump();
    }

    fn tick(&mut self, ms: u64) {
        self.now += ms;
        self.conn.handle_timeout(&mut self.t, &self.reg, self.now);
        self.pump();
    }

    fn try_recv(&mut self) -> Option<Pdu> {
        let c = Common::parse(&self.out)?;
        let plen = c.plen as usize;
        assert!(self.out.len() >= plen, "partial PDU {c:?}");
        let raw: Vec<u8> = self.out.drain(..plen).collect();
        let hlen = c.hlen as usize;
        let mut data_start = hlen;
        if c.flags & flag::HDGSTF != 0 {
            assert_eq!(pdu::le32(&raw, hlen), crc32c(&raw[..hlen]), "header digest");
            data_start += 4;
        }
        let mut end = plen;
        if c.flags & flag::DDGSTF != 0 {
            end -= 4;
        }
        let data = if end > data_start && c.pdo != 0 {
            assert!(c.pdo as usize >= data_start);
            let d = raw[c.pdo as usize..end].to_vec();
            if c.flags & flag::DDGSTF != 0 {
                assert_eq!(pdu::le32(&raw, end), crc32c(&d), "data digest");
            }
            d
        } else {
            raw[hlen..plen].to_vec()
        };
        Some(Pdu {
            ty: c.ty,
            flags: c.flags,
            hdr: raw[..hlen].to_vec(),
            data,
        })
    }

    fn recv(&mut self) -> Pdu {
        self.try_recv().expect("no PDU from the target")
    }

    fn ic_req(&mut self, hpda: u8, dgst: u8) -> Pdu {
        let mut b = vec![0u8; 128];
        b[0] = ty::IC_REQ;
        b[2] = 128;
        b[4..8].copy_from_slice(&128u32.to_le_bytes());
        b[10] = hpda;
        b[11] = dgst;
        self.send(&b);
        let r = self.recv();
        if r.ty == ty::IC_RESP {
            self.hd = r.hdr[11] & 1 != 0;
            self.dd = r.hdr[11] & 2 != 0;
        }
        r
    }

    /// A CapsuleCmd PDU with the digests in force.
    fn capsule(&self, sqe: &Sqe, data: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 72];
        v[0] = ty::CAPSULE_CMD;
        v[2] = 72;
        v[8..72].copy_from_slice(&sqe.0);
        self.finish_pdu(v, data)
    }

    fn h2c(&self, cccid: u16, ttag: u16, datao: u32, data: &[u8], last: bool) -> Vec<u8> {
        let mut v = vec![0u8; 24];
        v[0] = ty::H2C_DATA;
        v[1] = if last { flag::LAST_PDU } else { 0 };
        v[2] = 24;
        v[8..10].copy_from_slice(&cccid.to_le_bytes());
        v[10..12].copy_from_slice(&ttag.to_le_bytes());
        v[12..16].copy_from_slice(&datao.to_le_bytes());
        v[16..20].copy_from_slice(&(data.len() as u32).to_le_bytes());
        self.finish_pdu(v, data)
    }

    fn finish_pdu(&self, mut v: Vec<u8>, data: &[u8]) -> Vec<u8> {
        let hlen = v.len();
        let head = hlen + if self.hd { 4 } else { 0 };
        if self.hd {
            v[1] |= flag::HDGSTF;
        }
        if !data.is_empty() {
            v[3] = head as u8;
            if self.dd {
                v[1] |= flag::DDGSTF;
            }
        }
        let plen = head + data.len() + if self.dd && !data.is_empty() { 4 } else { 0 };
        v[4..8].copy_from_slice(&(plen as u32).to_le_bytes());
        if self.hd {
            let crc = crc32c(&v[..hlen]);
            v.extend_from_slice(&crc.to_le_bytes());
        }
        v.extend_from_slice(data);
        if self.dd && !data.is_empty() {
            v.extend_from_slice(&crc32c(data).to_le_bytes());
        }
        v
    }

    fn next_cid(&mut self) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        self.cid
    }

    /// Sends a command with its CID set; returns the CID.
    fn cmd(&mut self, sqe: Sqe, data: &[u8]) -> u16 {
        let cid = self.next_cid();
        let mut s = sqe;
        s.0[2..4].copy_from_slice(&cid.to_le_bytes());
        let v = self.capsule(&s, data);
        self.send(&v);
        cid
    }

    fn connect(&mut self, qid: u16, sqsize: u16, cattr: u8, kato: u32, cntlid: u16) -> Pdu {
        let d = connect_data(cntlid, NQN);
        let sqe = Sqe::fabrics(spec::FCTYPE_CONNECT)
            .cdw(10, (qid as u32) << 16)
            .cdw(11, (sqsize as u32 - 1) | (cattr as u32) << 16)
            .cdw(12, kato)
            .in_capsule(1024);
        self.cmd(sqe, &d);
        self.recv()
    }

    /// ICReq and admin Connect; returns the controller ID.
    fn admin(dgst: u8) -> (Rig, u16) {
        Rig::admin_with(Rig::new(), dgst)
    }

    fn admin_with(mut r: Rig, dgst: u8) -> (Rig, u16) {
        r.ic_req(0, dgst);
        let p = r.connect(0, 32, 0, 0, spec::CNTLID_DYNAMIC);
        let (_, st, dw0) = p.resp();
        assert_eq!(st, 0, "admin connect");
        r.enable();
        (r, dw0 as u16)
    }

    /// CC.EN with the NVM entry sizes, as a host does after Connect.
    fn enable(&mut self) {
        let cc = 1 | 6 << 16 | 4 << 20;
        self.cmd(
            Sqe::fabrics(spec::FCTYPE_PROPERTY_SET)
                .cdw(11, spec::PROP_CC)
                .cdw(12, cc),
            &[],
        );
        assert_eq!(self.recv().resp().1, 0, "CC.EN");
    }

    /// An I/O queue of the controller of `admin` on a new connection.
    fn io_queue(admin: &mut Rig, cntlid: u16, dgst: u8, cattr: u8) -> Rig {
        let mut r = Rig::new();
        core::mem::swap(&mut r.t, &mut admin.t);
        core::mem::swap(&mut r.reg, &mut admin.reg);
        r.conn = Connection::new(addr("127.0.0.1:4420"), addr("127.0.0.1:40001"), 0);
        r.ic_req(0, dgst);
        let p = r.connect(1, 16, cattr, 0, cntlid);
        assert_eq!(p.resp().1, 0, "I/O connect");
        r
    }

    /// Admin queue plus one I/O queue on one rig (the I/O connection is the
    /// rig's; the admin one is returned).
    fn io(dgst: u8, cattr: u8) -> (Rig, Connection) {
        Rig::io_with(Rig::new(), dgst, cattr)
    }

    fn io_with(r: Rig, dgst: u8, cattr: u8) -> (Rig, Connection) {
        let (mut a, cntlid) = Rig::admin_with(r, dgst);
        let mut r = Rig::io_queue(&mut a, cntlid, dgst, cattr);
        let admin = core::mem::replace(
            &mut a.conn,
            Connection::new(addr("127.0.0.1:4420"), addr("127.0.0.1:1"), 0),
        );
        r.now = a.now;
        (r, admin)
    }

    /// Writes `data` in the capsule.
    fn write_inline(&mut self, lba: u64, data: &[u8]) -> (u16, u16) {
        let sqe = Sqe::rw(spec::NVM_WRITE, 1, lba, (data.len() / BS) as u32)
            .in_capsule(data.len() as u32);
        self.cmd(sqe, data);
        let (c, st, _) = self.recv().resp();
        (c, st)
    }

    /// Reads through C2HData; returns data and status.
    fn read(&mut self, nsid: u32, lba: u64, blocks: u32) -> (Vec<u8>, u16) {
        let sqe = Sqe::rw(spec::NVM_READ, nsid, lba, blocks).transport(blocks * BS as u32);
        let cid = self.cmd(sqe, &[]);
        let mut data = Vec::new();
        loop {
            let p = self.recv();
            match p.ty {
                ty::C2H_DATA => {
                    assert_eq!(p.u16(8), cid);
                    assert_eq!(p.u32(12) as usize, data.len(), "datao");
                    data.extend_from_slice(&p.data);
                    if p.flags & flag::SUCCESS != 0 {
                        return (data, 0);
                    }
                }
                _ => {
                    let (c, st, _) = p.resp();
                    assert_eq!(c, cid);
                    return (data, st);
                }
            }
        }
    }

    /// Writes through one R2T.
    fn write_r2t(&mut self, lba: u64, data: &[u8]) -> u16 {
        let sqe =
            Sqe::rw(spec::NVM_WRITE, 1, lba, (data.len() / BS) as u32).transport(data.len() as u32);
        let cid = self.cmd(sqe, &[]);
        let r2t = self.recv();
        assert_eq!(r2t.ty, ty::R2T);
        assert_eq!(r2t.u16(8), cid);
        assert_eq!(r2t.u32(12), 0);
        assert_eq!(r2t.u32(16) as usize, data.len());
        let ttag = r2t.u16(10);
        let chunk = 8192;
        let mut off = 0;
        while off < data.len() {
            let n = (data.len() - off).min(chunk);
            let v = self.h2c(
                cid,
                ttag,
                off as u32,
                &data[off..off + n],
                off + n == data.len(),
            );
            self.send(&v);
            off += n;
        }
        let (c, st, _) = self.recv().resp();
        assert_eq!(c, cid);
        st
    }

    fn expect_term(&mut self, fes: u16) -> Pdu {
        let p = self.recv();
        assert_eq!(p.ty, ty::C2H_TERM_REQ, "{p:?}");
        assert_eq!(p.u16(8), fes, "FES");
        assert!(self.conn.finished(), "connection should finish");
        p
    }
}

#[test]
fn ic_req_negotiates_digests() {
    let mut r = Rig::new();
    let p = r.ic_req(0, 3);
    assert_eq!(p.ty, ty::IC_RESP);
    assert_eq!(p.hdr.len(), 128);
    assert_eq!(p.u16(8), 0, "pfv");
    assert_eq!(p.hdr[10], 0, "cpda");
    assert_eq!(p.hdr[11], 3);
    assert_eq!(p.u32(12), 131072, "maxh2cdata");

    let mut r = Rig::with(TransportOptions {
        header_digest: false,
        ..TransportOptions::default()
    });
    assert_eq!(r.ic_req(0, 3).hdr[11], 2);
    let mut r = Rig::new();
    assert_eq!(r.ic_req(0, 0).hdr[11], 0);
}

#[test]
fn ic_req_errors() {
    // PFV other than 0.
    let mut r = Rig::new();
    let mut b = vec![0u8; 128];
    b[0] = ty::IC_REQ;
    b[2] = 128;
    b[4..8].copy_from_slice(&128u32.to_le_bytes());
    b[8] = 1;
    r.send(&b);
    let p = r.expect_term(fes::UNSUPPORTED_PARAMETER);
    assert_eq!(p.u32(10), 8);
    assert_eq!(p.data.len(), 128, "offending header");

    // PLEN other than 128.
    let mut r = Rig::new();
    b[8] = 0;
    b[4..8].copy_from_slice(&129u32.to_le_bytes());
    r.send(&b);
    assert_eq!(r.expect_term(fes::INVALID_HEADER_FIELD).u32(10), 4);

    // HLEN.
    let mut r = Rig::new();
    b[2] = 127;
    b[4..8].copy_from_slice(&128u32.to_le_bytes());
    r.send(&b);
    assert_eq!(r.expect_term(fes::INVALID_HEADER_FIELD).u32(10), 2);

    // A command before ICReq.
    let mut r = Rig::new();
    let v = r.capsule(&Sqe::fabrics(spec::FCTYPE_CONNECT), &[]);
    r.send(&v);
    r.expect_term(fes::SEQUENCE_ERROR);

    // A second ICReq.
    let mut r = Rig::new();
    r.ic_req(0, 0);
    b[2] = 128;
    r.send(&b);
    r.expect_term(fes::SEQUENCE_ERROR);

    // No transport configured.
    let mut reg = Registry::new();
    let mut cfg = config(&mut reg, TransportOptions::default());
    cfg.transport = None;
    let mut r = Rig::new();
    r.t = Target::new(cfg);
    b[2] = 128;
    r.send(&b);
    r.expect_term(fes::UNSUPPORTED_PARAMETER);
}

#[test]
fn bad_pdu_headers_terminate() {
    let cases: &[(u8, u8, u8, u32, u16, u32)] = &[
        // type, hlen, pdo, plen, FES, FEI
        (0x05, 24, 0, 24, fes::INVALID_HEADER_FIELD, 0), // CapsuleResp from the host
        (0x0f, 24, 0, 24, fes::INVALID_HEADER_FIELD, 0),
        (ty::CAPSULE_CMD, 24, 0, 72, fes::INVALID_HEADER_FIELD, 2),
        (ty::CAPSULE_CMD, 72, 0, 40, fes::INVALID_HEADER_FIELD, 4),
        (ty::CAPSULE_CMD, 72, 8, 100, fes::INVALID_HEADER_FIELD, 3),
        (ty::CAPSULE_CMD, 72, 72, 72 + 8193, fes::LIMIT_EXCEEDED, 4),
        (ty::H2C_DATA, 24, 24, 24, fes::INVALID_HEADER_FIELD, 4),
        (ty::H2C_DATA, 24, 24, 24 + (1 << 20), fes::LIMIT_EXCEEDED, 4),
        (ty::H2C_TERM_REQ, 24, 0, 400, fes::INVALID_HEADER_FIELD, 4),
    ];
    for &(t, hlen, pdo, plen, f, fei) in cases {
        let mut r = Rig::new();
        r.ic_req(0, 0);
        let mut v = vec![t, 0, hlen, pdo];
        v.extend_from_slice(&plen.to_le_bytes());
        r.send(&v);
        let p = r.expect_term(f);
        assert_eq!(p.u32(10), fei, "type {t:#x} hlen {hlen} plen {plen}");
        assert_eq!(&p.data[..8], &v[..], "offending header returned");
    }
}

#[test]
fn digest_flags_must_match() {
    // Header digest negotiated but HDGSTF clear.
    let mut r = Rig::new();
    r.ic_req(0, 1);
    r.hd = false;
    let v = r.capsule(&Sqe::fabrics(spec::FCTYPE_CONNECT), &[]);
    r.send(&v);
    assert_eq!(r.expect_term(fes::INVALID_HEADER_FIELD).u32(10), 1);

    // Data digest negotiated but DDGSTF clear on a PDU with data.
    let mut r = Rig::new();
    r.ic_req(0, 2);
    r.dd = false;
    let v = r.capsule(
        &Sqe::fabrics(spec::FCTYPE_CONNECT).in_capsule(1024),
        &[0; 1024],
    );
    r.send(&v);
    assert_eq!(r.expect_term(fes::INVALID_HEADER_FIELD).u32(10), 1);
}

#[test]
fn bad_header_digest_terminates() {
    let mut r = Rig::new();
    r.ic_req(0, 3);
    let mut v = r.capsule(
        &Sqe::fabrics(spec::FCTYPE_CONNECT).in_capsule(1024),
        &[0; 1024],
    );
    v[72] ^= 1;
    r.send(&v);
    r.expect_term(fes::HEADER_DIGEST);
}

#[test]
fn connect_refused_then_closes() {
    let mut r = Rig::new();
    r.ic_req(0, 0);
    let d = connect_data(spec::CNTLID_DYNAMIC, "nqn.2016-06.io.spdk:nope");
    let sqe = Sqe::fabrics(spec::FCTYPE_CONNECT)
        .cdw(11, 31)
        .in_capsule(1024);
    r.cmd(sqe, &d);
    let (_, st, _) = r.recv().resp();
    assert_ne!(st, 0);
    assert!(r.conn.finished());
}

#[test]
fn first_command_must_be_connect() {
    let mut r = Rig::new();
    r.ic_req(0, 0);
    r.cmd(Sqe::new(spec::ADM_KEEP_ALIVE, 0), &[]);
    let (_, st, _) = r.recv().resp();
    assert_eq!(st, Status::COMMAND_SEQUENCE_ERROR.field());
    assert!(r.conn.finished());
}

#[test]
fn admin_properties_and_identify() {
    for dgst in [0, 3] {
        let (mut r, _) = Rig::admin(dgst);
        // Property Get VS (4 bytes).
        r.cmd(
            Sqe::fabrics(spec::FCTYPE_PROPERTY_GET).cdw(11, spec::PROP_VS),
            &[],
        );
        let p = r.recv();
        assert_eq!(p.resp().1, 0);
        assert_eq!(p.resp().2, spec::NVME_VERSION);
        // Property Get CAP (8 bytes): MQES in bits 15:0.
        r.cmd(
            Sqe::fabrics(spec::FCTYPE_PROPERTY_GET)
                .byte(40, 1)
                .cdw(11, spec::PROP_CAP),
            &[],
        );
        let p = r.recv();
        assert_eq!(p.resp().1, 0);
        assert_eq!(p.resp().2 & 0xffff, 127);
        // Identify Controller through one C2HData.
        let cid = r.cmd(
            Sqe::new(spec::ADM_IDENTIFY, 0)
                .cdw(10, spec::CNS_CONTROLLER as u32)
                .transport(4096),
            &[],
        );
        let d = r.recv();
        assert_eq!(d.ty, ty::C2H_DATA);
        assert_eq!(d.flags & flag::LAST_PDU, flag::LAST_PDU);
        assert_eq!(d.flags & flag::SUCCESS, 0);
        assert_eq!(d.u16(8), cid);
        assert_eq!(d.data.len(), 4096);
        assert_eq!(pdu::le32(&d.data, 80), spec::NVME_VERSION, "VER");
        let (c, st, _) = r.recv().resp();
        assert_eq!((c, st), (cid, 0));
    }
}

#[test]
fn property_set_cc_enables() {
    let (mut r, _) = Rig::admin(0);
    // CC.EN with IOSQES 6, IOCQES 4.
    let cc = 1 | 6 << 16 | 4 << 20;
    r.cmd(
        Sqe::fabrics(spec::FCTYPE_PROPERTY_SET)
            .cdw(11, spec::PROP_CC)
            .cdw(12, cc),
        &[],
    );
    assert_eq!(r.recv().resp().1, 0);
    r.cmd(
        Sqe::fabrics(spec::FCTYPE_PROPERTY_GET).cdw(11, spec::PROP_CSTS),
        &[],
    );
    let p = r.recv();
    assert_eq!(p.resp().2 & 1, 1, "CSTS.RDY");
}

#[test]
fn sq_head_advances() {
    let (mut r, _) = Rig::admin(0);
    let mut last = None;
    for _ in 0..40 {
        r.cmd(Sqe::new(spec::ADM_KEEP_ALIVE, 0), &[]);
        let p = r.recv();
        assert_eq!(p.resp().1, 0);
        if let Some(l) = last {
            assert_eq!(p.sqhd(), (l + 1) % 32);
        }
        last = Some(p.sqhd());
    }
}

#[test]
fn inline_write_and_read_back() {
    for dgst in [0, 1, 2, 3] {
        let (mut r, _) = Rig::io(dgst, 0);
        let data = pattern(4096, 1);
        let (_, st) = r.write_inline(8, &data);
        assert_eq!(st, 0);
        let (back, st) = r.read(1, 8, 8);
        assert_eq!(st, 0);
        assert_eq!(back, data);
    }
}

#[test]
fn r2t_writes_several_outstanding() {
    let (mut r, _) = Rig::io(3, 0);
    let mut cmds = Vec::new();
    for k in 0..3u64 {
        let data = pattern(16384, k as u8);
        let sqe = Sqe::rw(spec::NVM_WRITE, 1, k * 64, 32).transport(16384);
        let cid = r.cmd(sqe, &[]);
        cmds.push((cid, data));
    }
    let mut r2ts = Vec::new();
    for _ in 0..3 {
        let p = r.recv();
        assert_eq!(p.ty, ty::R2T);
        r2ts.push((p.u16(8), p.u16(10)));
    }
    // Data for the last command first, in two PDUs each.
    for (cid, data) in cmds.iter().rev() {
        let ttag = r2ts.iter().find(|x| x.0 == *cid).unwrap().1;
        let a = r.h2c(*cid, ttag, 0, &data[..8192], false);
        let b = r.h2c(*cid, ttag, 8192, &data[8192..], true);
        r.send(&a);
        r.send(&b);
        let (c, st, _) = r.recv().resp();
        assert_eq!((c, st), (*cid, 0));
    }
    for (k, (_, data)) in cmds.iter().enumerate() {
        let (back, st) = r.read(1, k as u64 * 64, 32);
        assert_eq!(st, 0);
        assert_eq!(&back, data);
    }
}

#[test]
fn r2t_windows_follow_maxh2cdata_and_maxr2t() {
    let mut r = Rig::with(TransportOptions {
        io_unit_size: 4096,
        ..TransportOptions::default()
    });
    let mut b = vec![0u8; 128];
    b[0] = ty::IC_REQ;
    b[2] = 128;
    b[4..8].copy_from_slice(&128u32.to_le_bytes());
    b[12..16].copy_from_slice(&1u32.to_le_bytes()); // MAXR2T 1: two at once
    r.send(&b);
    assert_eq!(r.recv().u32(12), 4096);
    assert_eq!(r.connect(0, 32, 0, 0, spec::CNTLID_DYNAMIC).resp().1, 0);
    r.enable();
    let data = pattern(16384, 8);
    let mut io = Rig::new();
    core::mem::swap(&mut io.t, &mut r.t);
    core::mem::swap(&mut io.reg, &mut r.reg);
    io.t.config.transport.as_mut().unwrap().io_unit_size = 4096;
    io.send(&b);
    io.recv();
    assert_eq!(io.connect(1, 8, 0, 0, 1).resp().1, 0);
    let cid = io.cmd(Sqe::rw(spec::NVM_WRITE, 1, 10, 32).transport(16384), &[]);
    let mut seen = Vec::new();
    let mut pending: Vec<Pdu> = vec![io.recv(), io.recv()];
    assert!(io.try_recv().is_none(), "two R2Ts at once");
    while let Some(t) = pending.pop() {
        assert_eq!(t.ty, ty::R2T);
        assert_eq!(t.u16(8), cid);
        assert_eq!(t.u32(16), 4096);
        let off = t.u32(12) as usize;
        seen.push(off);
        let v = io.h2c(cid, t.u16(10), off as u32, &data[off..off + 4096], true);
        io.send(&v);
        while let Some(p) = io.try_recv() {
            if p.ty == ty::R2T {
                pending.push(p);
            } else {
                assert_eq!(p.resp(), (cid, 0, 0));
            }
        }
    }
    seen.sort();
    assert_eq!(seen, vec![0, 4096, 8192, 12288]);
    assert_eq!(io.read(1, 10, 32).0, data);
}

#[test]
fn connect_data_through_r2t() {
    let (mut a, cntlid) = Rig::admin(0);
    let mut r = Rig::new();
    core::mem::swap(&mut r.t, &mut a.t);
    core::mem::swap(&mut r.reg, &mut a.reg);
    r.ic_req(0, 3);
    let d = connect_data(cntlid, NQN);
    let sqe = Sqe::fabrics(spec::FCTYPE_CONNECT)
        .cdw(10, 1 << 16)
        .cdw(11, 7)
        .transport(1024);
    let cid = r.cmd(sqe, &[]);
    let t = r.recv();
    assert_eq!((t.ty, t.u16(8), t.u32(16)), (ty::R2T, cid, 1024));
    let v = r.h2c(cid, t.u16(10), 0, &d, true);
    r.send(&v);
    assert_eq!(r.recv().resp().1, 0);
    // In-capsule data beyond the I/O queue's size is a fatal error.
    let big = vec![0u8; 8192];
    let sqe = Sqe::rw(spec::NVM_WRITE, 1, 0, 16).in_capsule(8192);
    let v = r.capsule(&sqe, &big);
    r.send(&v);
    r.expect_term(fes::LIMIT_EXCEEDED);
}

#[test]
fn write_buffers_wait_for_budget() {
    let mut r = Rig::with(TransportOptions {
        max_io_size: 4 << 20,
        ..TransportOptions::default()
    });
    r.reg
        .add(Box::new(MallocBdev::new("Big", 48 << 11, 512)))
        .unwrap();
    r.t.config.subsystems[0]
        .namespaces
        .push(namespace(3, "Big"));
    let (mut r, _) = Rig::io_with(r, 0, 0);
    let mut cids = Vec::new();
    for k in 0..5u64 {
        let sqe = Sqe::rw(spec::NVM_WRITE, 3, k * 8192, 8192).transport(4 << 20);
        cids.push(r.cmd(sqe, &[]));
    }
    let mut r2ts = Vec::new();
    while let Some(p) = r.try_recv() {
        assert_eq!(p.ty, ty::R2T);
        r2ts.push(p);
    }
    assert_eq!(r2ts.len(), 4, "the fifth write waits for room");
    assert_eq!(r.conn.held_bytes().0, crate::conn::MAX_DATA_OUT);
    let data = pattern(4 << 20, 6);
    let mut t = r2ts.remove(0);
    loop {
        assert_eq!((t.ty, t.u16(8)), (ty::R2T, cids[0]));
        let (off, len) = (t.u32(12) as usize, t.u32(16) as usize);
        assert_eq!(len, 131072, "R2Ts of MAXH2CDATA");
        let v = r.h2c(cids[0], t.u16(10), off as u32, &data[off..off + len], true);
        r.send(&v);
        if off + len == data.len() {
            break;
        }
        t = r.recv();
    }
    assert_eq!(r.recv().resp(), (cids[0], 0, 0));
    let p = r.recv();
    assert_eq!(
        (p.ty, p.u16(8)),
        (ty::R2T, cids[4]),
        "granted once room came"
    );
}

#[test]
fn large_read_splits() {
    let (mut r, _) = Rig::io(0, 0);
    let data = pattern(65536, 9);
    assert_eq!(r.write_r2t(100, &data), 0);
    let before = r.ios;
    let cid = r.cmd(Sqe::rw(spec::NVM_READ, 1, 100, 128).transport(65536), &[]);
    assert_eq!(r.ios - before, 16, "split into bdev max transfers");
    let mut got = Vec::new();
    let mut pdus = 0;
    loop {
        let p = r.recv();
        if p.ty != ty::C2H_DATA {
            assert_eq!(p.resp(), (cid, 0, 0));
            break;
        }
        pdus += 1;
        let last = got.len() + p.data.len() == data.len();
        assert_eq!(p.flags & flag::LAST_PDU != 0, last);
        assert_eq!(p.flags & flag::SUCCESS, 0);
        got.extend_from_slice(&p.data);
    }
    assert!(pdus >= 1);
    assert_eq!(got, data);
}

#[test]
fn read_with_success_flag() {
    // SQ flow control disabled (CATTR bit 2): SUCCESS, no response.
    let (mut r, _) = Rig::io(2, 4);
    let data = pattern(8192, 3);
    assert_eq!(r.write_r2t(0, &data), 0);
    let (back, st) = r.read(1, 0, 16);
    assert_eq!((back, st), (data, 0));
    assert!(r.try_recv().is_none(), "no CapsuleResp after SUCCESS");
    // Responses carry SQHD 0xffff without flow control.
    r.cmd(Sqe::new(spec::NVM_FLUSH, 1), &[]);
    assert_eq!(r.recv().sqhd(), 0xffff);
}

#[test]
fn c2h_pdo_honours_hpda() {
    let (mut a, cntlid) = Rig::admin(0);
    let mut r = Rig::new();
    core::mem::swap(&mut r.t, &mut a.t);
    core::mem::swap(&mut r.reg, &mut a.reg);
    r.ic_req(3, 1);
    assert_eq!(r.connect(1, 8, 0, 0, cntlid).resp().1, 0);
    r.cmd(Sqe::rw(spec::NVM_READ, 1, 0, 1).transport(512), &[]);
    assert_eq!(r.out[0], ty::C2H_DATA);
    assert_eq!(r.out[3], 16 * 2, "PDO 28 rounded up to 16-byte units");
    let p = r.recv();
    assert_eq!(p.data.len(), 512);
}

#[test]
fn bad_data_digest_fails_command() {
    let (mut r, _) = Rig::io(2, 0);
    // In-capsule.
    let data = pattern(1024, 5);
    let sqe = Sqe::rw(spec::NVM_WRITE, 1, 0, 2).in_capsule(1024);
    let mut v = r.capsule(&sqe, &data);
    let n = v.len();
    v[n - 5] ^= 0xff;
    r.send(&v);
    let (_, st, _) = r.recv().resp();
    assert_eq!(st, TRANSIENT);
    // H2CData.
    let sqe = Sqe::rw(spec::NVM_WRITE, 1, 0, 2)
        .transport(1024)
        .cdw(0, 0x4001 | 77 << 16);
    let v = r.capsule(&sqe, &[]);
    r.send(&v);
    let r2t = r.recv();
    let mut v = r.h2c(77, r2t.u16(10), 0, &data, true);
    let n = v.len();
    v[n - 1] ^= 1;
    r.send(&v);
    let (cid, st, _) = r.recv().resp();
    assert_eq!((cid, st), (77, TRANSIENT));
    // Nothing was written; the queue still works.
    let (back, st) = r.read(1, 0, 2);
    assert_eq!(st, 0);
    assert_eq!(back, vec![0u8; 1024]);
}

#[test]
fn h2c_outside_window_terminates() {
    let (mut r, _) = Rig::io(0, 0);
    let cid = r.cmd(Sqe::rw(spec::NVM_WRITE, 1, 0, 8).transport(4096), &[]);
    let t = r.recv();
    let v = r.h2c(cid, t.u16(10), 512, &[0; 512], false);
    r.send(&v);
    r.expect_term(fes::OUT_OF_RANGE);

    let (mut r, _) = Rig::io(0, 0);
    let cid = r.cmd(Sqe::rw(spec::NVM_WRITE, 1, 0, 8).transport(4096), &[]);
    let t = r.recv();
    let v = r.h2c(cid, t.u16(10), 0, &[0; 8192], true);
    r.send(&v);
    r.expect_term(fes::OUT_OF_RANGE);

    // Unknown transfer tag.
    let (mut r, _) = Rig::io(0, 0);
    let cid = r.cmd(Sqe::rw(spec::NVM_WRITE, 1, 0, 8).transport(4096), &[]);
    let t = r.recv();
    let v = r.h2c(cid, t.u16(10) + 5, 0, &[0; 4096], true);
    r.send(&v);
    r.expect_term(fes::INVALID_HEADER_FIELD);

    // LAST_PDU before the end.
    let (mut r, _) = Rig::io(0, 0);
    let cid = r.cmd(Sqe::rw(spec::NVM_WRITE, 1, 0, 8).transport(4096), &[]);
    let t = r.recv();
    let v = r.h2c(cid, t.u16(10), 0, &[0; 512], true);
    r.send(&v);
    r.expect_term(fes::SEQUENCE_ERROR);
}

#[test]
fn nvm_commands() {
    let (mut r, _) = Rig::io(0, 0);
    let data = pattern(8192, 7);
    assert_eq!(r.write_r2t(200, &data), 0);

    // Compare: match and mismatch.
    let sqe_r2t = Sqe::rw(spec::NVM_COMPARE, 1, 200, 16).transport(8192);
    let cid = r.cmd(sqe_r2t, &[]);
    let t = r.recv();
    assert_eq!(t.ty, ty::R2T);
    let v = r.h2c(cid, t.u16(10), 0, &data, true);
    r.send(&v);
    assert_eq!(r.recv().resp().1, 0, "compare matches");
    let mut other = data.clone();
    other[5000] ^= 1;
    let cid = r.cmd(sqe_r2t, &[]);
    let t = r.recv();
    let v = r.h2c(cid, t.u16(10), 0, &other, true);
    r.send(&v);
    assert_eq!(r.recv().resp().1, Status::COMPARE_FAILURE.field());

    // Write zeroes over part of it (with and without DEAC).
    r.cmd(Sqe::rw(spec::NVM_WRITE_ZEROES, 1, 200, 4), &[]);
    assert_eq!(r.recv().resp().1, 0);
    r.cmd(
        Sqe::rw(spec::NVM_WRITE_ZEROES, 1, 204, 4).cdw(12, 3 | 1 << 25),
        &[],
    );
    assert_eq!(r.recv().resp().1, 0);
    let (back, _) = r.read(1, 200, 16);
    assert_eq!(&back[..4096], &[0u8; 4096][..]);
    assert_eq!(&back[4096..], &data[4096..]);

    // DSM deallocate of two ranges.
    let mut ranges = vec![0u8; 32];
    ranges[4..8].copy_from_slice(&2u32.to_le_bytes());
    ranges[8..16].copy_from_slice(&208u64.to_le_bytes());
    ranges[20..24].copy_from_slice(&2u32.to_le_bytes());
    ranges[24..32].copy_from_slice(&212u64.to_le_bytes());
    let sqe = Sqe::new(spec::NVM_DATASET_MANAGEMENT, 1)
        .cdw(10, 1)
        .cdw(11, 4)
        .in_capsule(32);
    r.cmd(sqe, &ranges);
    assert_eq!(r.recv().resp().1, 0);
    let (back, _) = r.read(1, 208, 8);
    assert_eq!(&back[..1024], &[0u8; 1024][..]);
    assert_eq!(&back[1024..2048], &data[9 * 512..11 * 512]);
    assert_eq!(&back[2048..3072], &[0u8; 1024][..]);

    // DSM range beyond the end.
    ranges[24..32].copy_from_slice(&5000u64.to_le_bytes());
    r.cmd(sqe, &ranges);
    assert_eq!(r.recv().resp().1, Status::LBA_OUT_OF_RANGE.field());

    // Flush.
    r.cmd(Sqe::new(spec::NVM_FLUSH, 1), &[]);
    assert_eq!(r.recv().resp().1, 0);

    // Out of range, bad length, unknown opcode, unknown namespace.
    let (_, st) = r.read(1, 2047, 2);
    assert_eq!(st, Status::LBA_OUT_OF_RANGE.field());
    r.cmd(Sqe::rw(spec::NVM_READ, 1, 0, 2).transport(512), &[]);
    assert_eq!(r.recv().resp().1, Status::DATA_SGL_LENGTH_INVALID.field());
    r.cmd(Sqe::new(0x7e, 1), &[]);
    assert_eq!(r.recv().resp().1, Status::INVALID_OPCODE.field());
    let (_, st) = r.read(9, 0, 1);
    assert_eq!(st, Status::INVALID_NAMESPACE.field());
    // Beyond the max I/O size (128 KiB).
    r.cmd(Sqe::rw(spec::NVM_READ, 1, 0, 512).transport(262144), &[]);
    assert_eq!(r.recv().resp().1, Status::INVALID_FIELD.field());
}

#[test]
fn read_only_namespace() {
    let (mut r, _) = Rig::io(0, 0);
    let sqe = Sqe::rw(spec::NVM_WRITE, 2, 0, 1).in_capsule(512);
    r.cmd(sqe, &[1; 512]);
    assert_eq!(r.recv().resp().1, crate::io::WRITE_PROTECTED.field());
    let (d, st) = r.read(2, 0, 1);
    assert_eq!((d.len(), st), (512, 0));
}

#[test]
fn completions_out_of_order() {
    let (mut r, _) = Rig::io(0, 0);
    let a = pattern(2048, 1);
    let b = pattern(2048, 2);
    r.write_inline(0, &a);
    r.write_inline(4, &b);
    r.hold = true;
    let c1 = r.cmd(Sqe::rw(spec::NVM_READ, 1, 0, 4).transport(2048), &[]);
    let c2 = r.cmd(Sqe::rw(spec::NVM_READ, 1, 4, 4).transport(2048), &[]);
    assert!(r.out.is_empty());
    r.release_reversed();
    let p = r.recv();
    assert_eq!(p.u16(8), c2, "second command finished first");
    assert_eq!(p.data, b);
    assert_eq!(r.recv().resp().0, c2);
    let p = r.recv();
    assert_eq!((p.u16(8), &p.data), (c1, &a));
    assert_eq!(r.recv().resp().0, c1);
}

#[test]
fn sqhd_is_current_at_completion() {
    let (mut r, _) = Rig::io(0, 0);
    r.hold = true;
    // Fetched: Connect (head 1), c1 (2), c2 (3).
    let c1 = r.cmd(Sqe::rw(spec::NVM_READ, 1, 0, 1).transport(512), &[]);
    let c2 = r.cmd(Sqe::rw(spec::NVM_READ, 1, 1, 1).transport(512), &[]);
    r.release_reversed();
    for cid in [c2, c1] {
        assert_eq!(r.recv().ty, ty::C2H_DATA);
        let p = r.recv();
        assert_eq!(p.resp().0, cid);
        assert_eq!(p.sqhd(), 3, "SQHD must not move back");
    }
    // A parked AER reports the head at its completion too.
    let (mut r, _) = Rig::admin(0);
    r.cmd(
        Sqe::new(spec::ADM_SET_FEATURES, 0)
            .cdw(10, spec::FEAT_ASYNC_EVENT_CONFIG as u32)
            .cdw(11, 1 << 8),
        &[],
    );
    r.recv();
    let aer = r.cmd(Sqe::new(spec::ADM_ASYNC_EVENT_REQUEST, 0), &[]);
    let mut head = 0;
    for _ in 0..5 {
        r.cmd(Sqe::new(spec::ADM_KEEP_ALIVE, 0), &[]);
        head = r.recv().sqhd();
    }
    r.t.config.subsystems[0]
        .namespaces
        .push(namespace(3, "Malloc2"));
    r.t.refresh(&r.reg);
    r.tick(0);
    let p = r.recv();
    assert_eq!(p.resp().0, aer);
    assert_eq!(p.sqhd(), head);
}

#[test]
fn queue_overflow_terminates() {
    let (mut r, _) = Rig::io(0, 0);
    r.hold = true;
    for _ in 0..16 {
        r.cmd(Sqe::rw(spec::NVM_READ, 1, 0, 1).transport(512), &[]);
    }
    assert!(r.out.is_empty());
    r.cmd(Sqe::rw(spec::NVM_READ, 1, 0, 1).transport(512), &[]);
    let p = r.recv();
    assert_eq!(p.ty, ty::C2H_TERM_REQ);
    assert!(!r.conn.finished(), "waits for the device");
    r.release_reversed();
    assert!(r.conn.finished());
    assert!(r.try_recv().is_none(), "aborted commands get no response");
}

#[test]
fn cid_conflict() {
    let (mut r, _) = Rig::io(0, 0);
    r.hold = true;
    let s = Sqe::rw(spec::NVM_READ, 1, 0, 1)
        .transport(512)
        .cdw(0, 0x4002 | 9 << 16);
    let v = r.capsule(&s, &[]);
    r.send(&v);
    r.send(&v);
    assert_eq!(r.recv().resp(), (9, Status::CID_CONFLICT.field(), 0));
    r.release_reversed();
    assert_eq!(r.recv().ty, ty::C2H_DATA);
    assert_eq!(r.recv().resp(), (9, 0, 0));
}

#[test]
fn io_counted_and_errors_logged() {
    let (mut r, _) = Rig::io(0, 0);
    let before = r.t.stats();
    r.write_inline(0, &[5; 1024]);
    r.read(1, 0, 2);
    r.read(1, 5000, 1);
    let after = r.t.stats();
    assert_eq!(after.write_cmds - before.write_cmds, 1);
    assert_eq!(after.read_cmds - before.read_cmds, 1);
    assert_eq!(after.bytes_written - before.bytes_written, 1024);
    assert_eq!(after.bytes_read - before.bytes_read, 1024);
}

#[test]
fn controller_reset_closes_io_queues() {
    let (mut r, mut admin) = Rig::io(0, 0);
    r.write_inline(0, &[1; 512]);
    core::mem::swap(&mut r.conn, &mut admin);
    r.cmd(
        Sqe::fabrics(spec::FCTYPE_PROPERTY_SET)
            .cdw(11, spec::PROP_CC)
            .cdw(12, 6 << 16 | 4 << 20),
        &[],
    );
    assert_eq!(r.recv().resp().1, 0);
    assert!(!r.conn.finished(), "the admin queue stays");
    core::mem::swap(&mut r.conn, &mut admin);
    r.tick(0);
    assert!(r.conn.finished(), "I/O queue detached by the reset");
    // The admin queue going away ends the controller.
    r.conn.closed(&mut r.t);
    admin.closed(&mut r.t);
    assert!(r.t.qpairs().is_empty());
}

#[test]
fn discovery_log_page() {
    let mut r = Rig::new();
    r.ic_req(0, 3);
    let d = connect_data(spec::CNTLID_DYNAMIC, spec::DISCOVERY_NQN);
    let sqe = Sqe::fabrics(spec::FCTYPE_CONNECT)
        .cdw(11, 31)
        .cdw(12, 30_000)
        .in_capsule(1024);
    r.cmd(sqe, &d);
    assert_eq!(r.recv().resp().1, 0);
    r.enable();
    // Get Log Page 70h, 4 KiB (NUMDL = dwords - 1).
    let cid = r.cmd(
        Sqe::new(spec::ADM_GET_LOG_PAGE, 0)
            .cdw(10, spec::LOG_DISCOVERY as u32 | 1023 << 16)
            .transport(4096),
        &[],
    );
    let p = r.recv();
    assert_eq!((p.ty, p.u16(8)), (ty::C2H_DATA, cid));
    assert_eq!(p.data.len(), 4096);
    assert_eq!(pdu::le32(&p.data, 8), 1, "one record: the subsystem");
    assert_eq!(r.recv().resp(), (cid, 0, 0));
}

#[test]
fn closed_with_io_at_the_device() {
    let (mut r, _) = Rig::io(0, 0);
    r.hold = true;
    r.cmd(Sqe::rw(spec::NVM_READ, 1, 0, 64).transport(32768), &[]);
    assert_eq!(r.held.len(), 8);
    r.conn.closed(&mut r.t);
    assert!(!r.conn.finished(), "waits for its buffers");
    r.release_reversed();
    assert!(r.conn.finished());
    assert!(r.out.is_empty());
}

#[test]
fn retried_io_is_offered_again() {
    let (mut r, _) = Rig::io(0, 0);
    let v = r.capsule(
        &Sqe::rw(spec::NVM_READ, 1, 0, 1)
            .transport(512)
            .cdw(0, 0x4002 | 5 << 16),
        &[],
    );
    r.conn.handle_input(&v, &mut r.t, &r.reg, 0);
    let io = r.conn.poll_io().unwrap();
    let tag = io.tag;
    assert!(tag < 1 << 39);
    r.conn.retry_io(io);
    let io = r.conn.poll_io().unwrap();
    assert_eq!(io.tag, tag);
    r.conn.retry_io(io);
    r.pump();
    assert_eq!(r.recv().ty, ty::C2H_DATA);
    assert_eq!(r.recv().resp(), (5, 0, 0));
}

/// Random commands, their block I/O completed in random order, against a
/// model of the disk.
#[test]
fn random_io_matches_model() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut r, _) = Rig::io(3, 0);
    let mut model = vec![0u8; 2048 * BS];
    for step in 0..400 {
        let blocks = (rnd() % 64 + 1) as u32;
        let lba = rnd() % (2048 - blocks as u64);
        let (a, b) = (lba as usize * BS, (lba as usize + blocks as usize) * BS);
        let len = blocks * BS as u32;
        r.hold = true;
        let kind = rnd() % 5;
        match kind {
            0 | 1 => {
                let data = pattern(len as usize, step as u8);
                let sqe = Sqe::rw(spec::NVM_WRITE, 1, lba, blocks);
                let cid = if len <= 4096 && kind == 0 {
                    r.cmd(sqe.in_capsule(len), &data)
                } else {
                    let cid = r.cmd(sqe.transport(len), &[]);
                    let mut done = 0;
                    while done < data.len() {
                        let t = r.recv();
                        assert_eq!(t.ty, ty::R2T);
                        let (off, n) = (t.u32(12) as usize, t.u32(16) as usize);
                        let v = r.h2c(cid, t.u16(10), off as u32, &data[off..off + n], true);
                        r.send(&v);
                        done += n;
                    }
                    cid
                };
                shuffle_release(&mut r, &mut rnd);
                assert_eq!(r.recv().resp(), (cid, 0, 0));
                model[a..b].copy_from_slice(&data);
            }
            2 => {
                let cid = r.cmd(
                    Sqe::rw(spec::NVM_WRITE_ZEROES, 1, lba, blocks)
                        .cdw(12, (blocks - 1) | (1 << 25)),
                    &[],
                );
                shuffle_release(&mut r, &mut rnd);
                assert_eq!(r.recv().resp(), (cid, 0, 0));
                model[a..b].fill(0);
            }
            _ => {
                let cid = r.cmd(Sqe::rw(spec::NVM_READ, 1, lba, blocks).transport(len), &[]);
                shuffle_release(&mut r, &mut rnd);
                let mut got = Vec::new();
                loop {
                    let p = r.recv();
                    if p.ty == ty::C2H_DATA {
                        got.extend_from_slice(&p.data);
                    } else {
                        assert_eq!(p.resp(), (cid, 0, 0));
                        break;
                    }
                }
                assert_eq!(got, &model[a..b], "step {step}");
            }
        }
    }
}

fn shuffle_release(r: &mut Rig, rnd: &mut impl FnMut() -> u64) {
    r.hold = false;
    let mut held = core::mem::take(&mut r.held);
    for i in (1..held.len()).rev() {
        let j = (rnd() % (i as u64 + 1)) as usize;
        held.swap(i, j);
    }
    for (id, req) in held {
        r.reg.submit(id, req, 0).unwrap();
        let mut done = Vec::new();
        r.reg.poll(0, &mut done);
        for (_, c) in done {
            r.conn.handle_completion(c.tag, c, &mut r.t, &r.reg, r.now);
        }
    }
    r.pump();
}

#[test]
fn disconnect_finishes() {
    let (mut r, _) = Rig::io(0, 0);
    let cid = r.cmd(Sqe::fabrics(spec::FCTYPE_DISCONNECT), &[]);
    assert_eq!(r.recv().resp(), (cid, 0, 0));
    assert!(r.conn.finished());
    r.conn.closed(&mut r.t);
    assert!(!r.conn.wants_input());
}

#[test]
fn keep_alive_expiry_closes() {
    let mut r = Rig::new();
    r.ic_req(0, 0);
    assert_eq!(r.connect(0, 32, 0, 5000, spec::CNTLID_DYNAMIC).resp().1, 0);
    r.enable();
    let d = r.conn.poll_timeout().unwrap();
    assert!(
        d <= 5000 + 1000,
        "poll_timeout includes the KATO deadline: {d}"
    );
    r.tick(3000);
    r.cmd(Sqe::new(spec::ADM_KEEP_ALIVE, 0), &[]);
    assert_eq!(r.recv().resp().1, 0);
    r.tick(3000);
    assert!(!r.conn.finished(), "keep-alive restarted the timer");
    for _ in 0..20 {
        r.tick(1000);
    }
    assert!(r.conn.finished(), "KATO expired");
}

#[test]
fn late_keep_alive_in_the_same_input_renews() {
    let mut r = Rig::new();
    r.ic_req(0, 0);
    assert_eq!(r.connect(0, 32, 0, 5000, spec::CNTLID_DYNAMIC).resp().1, 0);
    r.enable();
    // Past the deadline, but nothing ran the timeout yet: the Keep Alive
    // in this very input keeps the controller.
    r.now += 6000;
    r.cmd(Sqe::new(spec::ADM_KEEP_ALIVE, 0), &[]);
    assert_eq!(r.recv().resp().1, 0);
    r.tick(1000);
    assert!(!r.conn.finished(), "keep-alive renewed the timer");
}

#[test]
fn r2t_data_timeout_closes() {
    let (mut r, _) = Rig::io(0, 0);
    r.cmd(Sqe::rw(spec::NVM_WRITE, 1, 0, 8).transport(4096), &[]);
    assert_eq!(r.recv().ty, ty::R2T);
    let t = r.conn.poll_timeout().unwrap();
    assert!(t <= r.now + 1000);
    // The data wait has a 10 s floor whatever abort_timeout_sec says.
    r.tick(9000);
    assert!(!r.conn.finished());
    r.tick(1500);
    assert!(r.conn.finished());
}

#[test]
fn async_event_after_namespace_added() {
    let (mut r, _) = Rig::admin(0);
    // Enable namespace attribute notices.
    r.cmd(
        Sqe::new(spec::ADM_SET_FEATURES, 0)
            .cdw(10, spec::FEAT_ASYNC_EVENT_CONFIG as u32)
            .cdw(11, 1 << 8),
        &[],
    );
    assert_eq!(r.recv().resp().1, 0);
    let aer = r.cmd(Sqe::new(spec::ADM_ASYNC_EVENT_REQUEST, 0), &[]);
    assert!(r.try_recv().is_none(), "AER parked");
    let bdev_name = "Malloc2";
    r.t.config.subsystems[0]
        .namespaces
        .push(namespace(3, bdev_name));
    let seq = r.t.events_seq();
    r.t.refresh(&r.reg);
    assert_ne!(r.t.events_seq(), seq);
    r.tick(0);
    let (cid, st, dw0) = r.recv().resp();
    assert_eq!((cid, st), (aer, 0));
    assert_eq!(dw0, spec::AEN_NS_ATTR_CHANGED);
}

#[test]
fn input_in_single_bytes() {
    let (mut r, _) = Rig::io(3, 0);
    let data = pattern(1024, 4);
    let sqe = Sqe::rw(spec::NVM_WRITE, 1, 50, 2)
        .in_capsule(1024)
        .cdw(0, 0x4001 | 300 << 16);
    let v = r.capsule(&sqe, &data);
    for b in v.chunks(1) {
        r.send(b);
    }
    assert_eq!(r.recv().resp(), (300, 0, 0));
    assert_eq!(r.read(1, 50, 2).0, data);
}

#[test]
fn backpressure_and_write_budget() {
    let (mut r, _) = Rig::io(0, 0);
    let (dout, _) = r.conn.held_bytes();
    assert_eq!(dout, 0);
    // R2Ts beyond the budget wait: 16 writes of 128 KiB = 2 MiB, fine.
    for k in 0..4u64 {
        r.cmd(
            Sqe::rw(spec::NVM_WRITE, 1, k * 256, 256).transport(131072),
            &[],
        );
    }
    for _ in 0..4 {
        assert_eq!(r.recv().ty, ty::R2T);
    }
    assert_eq!(r.conn.held_bytes().0, 4 * 131072);
    r.conn.closed(&mut r.t);
    assert_eq!(r.conn.held_bytes().0, 0);
}

/// Valid PDU streams with random mutations: never a panic, output stays
/// bounded, the connection ends cleanly.
#[test]
fn mutated_streams() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..3000 {
        let dgst = (round % 4) as u8;
        let (mut a, cntlid) = Rig::admin(0);
        let mut r = Rig::new();
        core::mem::swap(&mut r.t, &mut a.t);
        core::mem::swap(&mut r.reg, &mut a.reg);
        r.hd = dgst & 1 != 0;
        r.dd = dgst & 2 != 0;
        let mut stream = Vec::new();
        let mut ic = vec![0u8; 128];
        ic[0] = 0;
        ic[2] = 128;
        ic[4..8].copy_from_slice(&128u32.to_le_bytes());
        ic[11] = dgst;
        stream.extend_from_slice(&ic);
        let d = connect_data(cntlid, NQN);
        let connect = Sqe::fabrics(spec::FCTYPE_CONNECT)
            .cdw(10, 1 << 16)
            .cdw(11, 15)
            .in_capsule(1024);
        stream.extend(r.capsule(&connect, &d));
        for k in 0..6u16 {
            let lba = rnd() % 2100;
            let blocks = (rnd() % 9 + 1) as u32;
            let len = blocks * 512;
            let s = match rnd() % 6 {
                0 => Sqe::rw(spec::NVM_READ, 1, lba, blocks).transport(len),
                1 => Sqe::rw(spec::NVM_WRITE, 1, lba, blocks).in_capsule(len),
                2 => Sqe::rw(spec::NVM_WRITE, 1, lba, blocks).transport(len),
                3 => Sqe::rw(spec::NVM_WRITE_ZEROES, 1, lba, blocks),
                4 => Sqe::new(spec::NVM_DATASET_MANAGEMENT, 1)
                    .cdw(11, 4)
                    .in_capsule(16),
                _ => Sqe::rw(spec::NVM_COMPARE, 1, lba, blocks).transport(len),
            }
            .cdw(0, 0x4000 | (k as u32 + 1) << 16 | (rnd() as u32 & 0xff));
            let data = match s.0[39] {
                0x01 => pattern(s.0[32] as usize | (s.0[33] as usize) << 8, k as u8),
                _ => Vec::new(),
            };
            stream.extend(r.capsule(&s, &data));
            if s.0[39] == 0x5a && s.0[0] & 1 == 1 {
                stream.extend(r.h2c(k + 1, k, 0, &pattern(len as usize, 1), true));
            }
        }
        // Mutate a few bytes after the ICReq.
        for _ in 0..(rnd() % 4 + 1) {
            let i = 128 + (rnd() as usize % (stream.len() - 128));
            stream[i] = match rnd() % 3 {
                0 => rnd() as u8,
                1 => stream[i] ^ (1 << (rnd() % 8)),
                _ => 0xff,
            };
        }
        let mut off = 0;
        let mut total_out = 0usize;
        for _ in 0..200 {
            off += r.conn.handle_input(&stream[off..], &mut r.t, &r.reg, r.now);
            r.pump();
            total_out += r.out.len();
            r.out.clear();
            r.now += 100;
            r.conn.handle_timeout(&mut r.t, &r.reg, r.now);
            if r.conn.finished() || off >= stream.len() {
                break;
            }
        }
        assert!(total_out < 4 << 20, "round {round}: {total_out} bytes out");
        r.conn.closed(&mut r.t);
        r.pump();
        assert!(r.conn.finished(), "round {round}");
        assert_eq!(r.conn.held_bytes().0, 0);
    }
}
