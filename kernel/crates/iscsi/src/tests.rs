//! The transport against a scripted initiator, a RAM bdev and the real SCSI
//! layer.

use crate::chap::{self, Algorithm};
use crate::config::{
    AuthGroup, ChapPolicy, Config, InitiatorGroup, Lun, Options, PgIgMap, Portal, PortalGroup,
    Secret, TargetNode,
};
use crate::pdu::{self, Bhs, NO_TAG, Pdu, at, flag, op};
use crate::{Connection, Target};
use ironbay_bdev::{IoRequest, MallocBdev, Registry};

const NODE: &str = "iqn.2016-06.io.spdk:disk1";
const INITIATOR: &str = "iqn.1994-05.com.example:host";
const BS: usize = 512;

fn addr(s: &str) -> core::net::SocketAddr {
    s.parse().unwrap()
}

pub(crate) fn config(reg: &mut Registry) -> Config {
    let id = reg
        .add(Box::new(MallocBdev::new("Malloc0", 2048, 512)))
        .unwrap();
    Config {
        options: Options {
            nop_in_interval: 0,
            ..Options::default()
        },
        auth_groups: vec![AuthGroup {
            tag: 1,
            secrets: vec![Secret {
                user: "user".into(),
                secret: "secret-of-12".into(),
                muser: Some("muser".into()),
                msecret: Some("msecret-of-12".into()),
            }],
        }],
        portal_groups: vec![PortalGroup {
            tag: 1,
            portals: vec![Portal {
                host: "127.0.0.1".into(),
                port: 3260,
            }],
            private: false,
        }],
        initiator_groups: vec![InitiatorGroup {
            tag: 1,
            initiators: vec!["ANY".into()],
            netmasks: vec!["ANY".into()],
        }],
        nodes: vec![TargetNode {
            name: NODE.into(),
            alias: "Disk one".into(),
            pg_ig_maps: vec![PgIgMap {
                pg_tag: 1,
                ig_tag: 1,
            }],
            luns: vec![Lun {
                id: 0,
                bdev_name: "Malloc0".into(),
                bdev: id,
                read_only: false,
            }],
            queue_depth: 32,
            chap: ChapPolicy::default(),
            header_digest: false,
            data_digest: false,
            masked: false,
            acls: Vec::new(),
        }],
        ..Config::default()
    }
}

pub(crate) struct Rig {
    pub t: Target,
    pub reg: Registry,
    pub conn: Connection,
    pub out: Vec<u8>,
    pub now: u64,
    pub itt: u32,
    pub cmd_sn: u32,
    pub hd: bool,
    pub dd: bool,
    /// I/Os the fake device holds back (for abort tests).
    pub hold: bool,
    held: Vec<IoRequest>,
    held_ids: Vec<ironbay_bdev::BdevId>,
}

fn kv(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in pairs {
        v.extend_from_slice(k.as_bytes());
        v.push(b'=');
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

pub(crate) fn pairs(p: &Pdu) -> Vec<(String, String)> {
    crate::text::parse(&p.data).unwrap()
}

fn get(p: &[(String, String)], k: &str) -> Option<String> {
    p.iter().find(|x| x.0 == k).map(|x| x.1.clone())
}

impl Rig {
    pub fn new() -> Rig {
        let mut reg = Registry::new();
        let cfg = config(&mut reg);
        Rig::with(cfg, reg)
    }

    pub fn with(cfg: Config, reg: Registry) -> Rig {
        Rig {
            t: Target::new(cfg),
            reg,
            conn: Connection::new(addr("127.0.0.1:3260"), addr("127.0.0.1:40000"), 0),
            out: Vec::new(),
            now: 0,
            itt: 1,
            cmd_sn: 1,
            hd: false,
            dd: false,
            hold: false,
            held: Vec::new(),
            held_ids: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        let mut off = 0;
        for _ in 0..10_000 {
            off += self
                .conn
                .handle_input(&bytes[off..], &mut self.t, &self.reg, self.now);
            self.pump();
            if off == bytes.len() || self.conn.finished() {
                break;
            }
        }
    }

    pub fn pump(&mut self) {
        let mut done = Vec::new();
        for _ in 0..1000 {
            while let Some(io) = self.conn.poll_io() {
                let req = IoRequest {
                    tag: io.tag,
                    op: io.op,
                    fua: io.fua,
                };
                if self.hold {
                    self.held.push(req);
                    self.held_ids.push(io.bdev);
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

    pub fn release(&mut self) {
        self.hold = false;
        let ids = core::mem::take(&mut self.held_ids);
        for (req, id) in core::mem::take(&mut self.held).into_iter().zip(ids) {
            self.reg.submit(id, req, 0).unwrap();
        }
        self.pump();
    }

    pub fn tick(&mut self, ms: u64) {
        self.now += ms;
        self.conn.handle_timeout(&mut self.t, &self.reg, self.now);
        self.pump();
    }

    /// The next PDU the target sent.
    pub fn recv(&mut self) -> Pdu {
        self.try_recv().expect("no PDU from the target")
    }

    pub fn try_recv(&mut self) -> Option<Pdu> {
        let bhs = Bhs::from_slice(&self.out)?;
        let f = pdu::frame(&bhs, self.hd, self.dd);
        assert!(self.out.len() >= f.total, "partial PDU");
        let raw: Vec<u8> = self.out.drain(..f.total).collect();
        Some(Pdu::parse(&raw, self.hd, self.dd).expect("bad digest from the target"))
    }

    pub fn pdu(&self, bhs: &Bhs, data: &[u8]) -> Vec<u8> {
        pdu::encode(bhs, &[], data, self.hd, self.dd)
    }

    pub fn next_itt(&mut self) -> u32 {
        self.itt += 1;
        self.itt
    }

    pub fn login_pdu(&mut self, flags: u8, tsih: u16, data: &[u8]) -> Pdu {
        let mut b = Bhs::new(op::LOGIN_REQ);
        b.0[0] |= 0x40;
        b.set_flags(flags).set_itt(self.itt);
        b.0[8..14].copy_from_slice(&[0x80, 1, 2, 3, 4, 5]);
        b.set_u16(14, tsih).set_u16(20, 1).set_u32(24, self.cmd_sn);
        let v = pdu::encode(&b, &[], data, false, false);
        self.send(&v);
        self.recv()
    }

    /// Logs in with the given security and operational keys.
    pub fn login_with(&mut self, sec: &[(&str, &str)], ops: &[(&str, &str)]) -> Pdu {
        let r = self.login_pdu(0x81, 0, &kv(sec));
        assert_eq!(r.bhs.u16_at(36), 0, "security stage: {:?}", pairs(&r));
        assert_eq!(r.bhs.flags(), 0x81);
        let r2 = self.login_pdu(0x87, 0, &kv(ops));
        assert_eq!(r2.bhs.u16_at(36), 0, "operational stage");
        assert_eq!(r2.bhs.flags(), 0x87);
        let p = pairs(&r2);
        self.hd = get(&p, "HeaderDigest").as_deref() == Some("CRC32C");
        self.dd = get(&p, "DataDigest").as_deref() == Some("CRC32C");
        r
    }

    pub fn login(&mut self, ops: &[(&str, &str)]) {
        self.login_with(
            &[
                ("InitiatorName", INITIATOR),
                ("TargetName", NODE),
                ("SessionType", "Normal"),
                ("AuthMethod", "None"),
            ],
            ops,
        );
    }

    /// A SCSI Command PDU.
    pub fn command(&mut self, cdb: &[u8], flags: u8, edtl: u32, data: &[u8]) -> (u32, Vec<u8>) {
        let itt = self.next_itt();
        let mut b = Bhs::new(op::SCSI_CMD);
        b.set_flags(flags).set_itt(itt).set_u32(at::W20, edtl);
        b.set_u32(at::W24, self.cmd_sn).set_u32(28, 0);
        self.cmd_sn += 1;
        b.0[32..32 + cdb.len().min(16)].copy_from_slice(&cdb[..cdb.len().min(16)]);
        (itt, self.pdu(&b, data))
    }

    pub fn data_out(
        &self,
        itt: u32,
        ttt: u32,
        sn: u32,
        off: u32,
        data: &[u8],
        last: bool,
    ) -> Vec<u8> {
        let mut b = Bhs::new(op::DATA_OUT);
        b.set_flags(if last { flag::FINAL } else { 0 })
            .set_itt(itt)
            .set_u32(at::W20, ttt)
            .set_u32(at::W36, sn)
            .set_u32(at::W40, off);
        self.pdu(&b, data)
    }

    pub fn nop_out(&mut self, data: &[u8], immediate: bool) -> (u32, Vec<u8>) {
        let itt = self.next_itt();
        let mut b = Bhs::new(op::NOP_OUT);
        if immediate {
            b.0[0] |= 0x40;
        }
        b.set_flags(flag::FINAL)
            .set_itt(itt)
            .set_u32(at::W20, NO_TAG)
            .set_u32(at::W24, self.cmd_sn);
        if !immediate {
            self.cmd_sn += 1;
        }
        (itt, self.pdu(&b, data))
    }

    pub fn text(&mut self, data: &[u8], flags: u8, ttt: u32) -> Pdu {
        let mut b = Bhs::new(op::TEXT_REQ);
        b.0[0] |= 0x40;
        b.set_flags(flags)
            .set_itt(self.itt)
            .set_u32(at::W20, ttt)
            .set_u32(at::W24, self.cmd_sn);
        let v = self.pdu(&b, data);
        self.send(&v);
        self.recv()
    }

    pub fn tmf(&mut self, function: u8, ref_itt: u32, ref_sn: u32) -> (u32, Vec<u8>) {
        let itt = self.next_itt();
        let mut b = Bhs::new(op::TMF_REQ);
        b.0[0] |= 0x40;
        b.set_flags(0x80 | function)
            .set_itt(itt)
            .set_u32(at::W20, ref_itt)
            .set_u32(at::W24, self.cmd_sn)
            .set_u32(at::W32, ref_sn);
        (itt, self.pdu(&b, &[]))
    }

    /// WRITE(10) with all data as immediate data; returns the response.
    pub fn write(&mut self, lba: u32, data: &[u8]) -> Pdu {
        let cdb = write10(lba, (data.len() / BS) as u16);
        let (_, v) = self.command(&cdb, flag::FINAL | flag::WRITE, data.len() as u32, data);
        self.send(&v);
        self.recv()
    }

    /// READ(10); returns the data and the final status PDU.
    pub fn read(&mut self, lba: u32, blocks: u16, edtl: u32) -> (Vec<u8>, Pdu) {
        let cdb = read10(lba, blocks);
        let (_, v) = self.command(&cdb, flag::FINAL | flag::READ, edtl, &[]);
        self.send(&v);
        let mut data = Vec::new();
        loop {
            let p = self.recv();
            match p.bhs.opcode() {
                op::DATA_IN => {
                    assert_eq!(p.bhs.u32_at(at::W40) as usize, data.len());
                    data.extend_from_slice(&p.data);
                    if p.bhs.flags() & flag::STATUS != 0 {
                        return (data, p);
                    }
                }
                op::SCSI_RSP => return (data, p),
                o => panic!("unexpected opcode {o:#x}"),
            }
        }
    }
}

pub(crate) fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x2a;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub(crate) fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = write10(lba, blocks);
    c[0] = 0x28;
    c
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn status_of(p: &Pdu) -> u8 {
    p.bhs.byte(3)
}

#[test]
fn login_reports_tpgt_and_tsih() {
    let mut r = Rig::new();
    let first = r.login_pdu(
        0x81,
        0,
        &kv(&[
            ("InitiatorName", INITIATOR),
            ("TargetName", NODE),
            ("AuthMethod", "CHAP,None"),
        ]),
    );
    assert_eq!(first.bhs.opcode(), op::LOGIN_RSP);
    let p = pairs(&first);
    assert_eq!(get(&p, "TargetPortalGroupTag").as_deref(), Some("1"));
    assert_eq!(get(&p, "TargetAlias").as_deref(), Some("Disk one"));
    assert_eq!(get(&p, "AuthMethod").as_deref(), Some("None"));
    let r2 = r.login_pdu(
        0x87,
        0,
        &kv(&[
            ("HeaderDigest", "None"),
            ("MaxRecvDataSegmentLength", "65536"),
            ("X-com.example", "1"),
            ("Bogus", "1"),
        ]),
    );
    let p = pairs(&r2);
    assert_eq!(get(&p, "X-com.example").as_deref(), Some("NotUnderstood"));
    assert_eq!(get(&p, "Bogus").as_deref(), Some("NotUnderstood"));
    assert_eq!(
        get(&p, "MaxRecvDataSegmentLength").as_deref(),
        Some("65536")
    );
    assert_ne!(r2.bhs.u16_at(14), 0, "TSIH");
    assert_eq!(r.t.connections()[0].state, "full_feature");
    assert_eq!(r.t.connections()[0].target_name, NODE);
    // The session works.
    let (itt, v) = r.nop_out(b"ping", true);
    r.send(&v);
    let p = r.recv();
    assert_eq!((p.bhs.opcode(), p.bhs.itt()), (op::NOP_IN, itt));
    assert_eq!(p.data, b"ping");
}

fn login_status(sec: &[(&str, &str)]) -> u16 {
    let mut r = Rig::new();
    let p = r.login_pdu(0x81, 0, &kv(sec));
    assert!(r.conn.finished() || p.bhs.u16_at(36) == 0);
    p.bhs.u16_at(36)
}

#[test]
fn login_refusals() {
    assert_eq!(login_status(&[("TargetName", NODE)]), 0x0207);
    assert_eq!(login_status(&[("InitiatorName", INITIATOR)]), 0x0207);
    assert_eq!(
        login_status(&[("InitiatorName", INITIATOR), ("TargetName", "iqn.x:nope")]),
        0x0203
    );
    assert_eq!(
        login_status(&[("InitiatorName", INITIATOR), ("SessionType", "Weird")]),
        0x0209
    );
    // Only a named initiator is let in.
    let mut reg = Registry::new();
    let mut cfg = config(&mut reg);
    cfg.initiator_groups[0].initiators = vec!["iqn.other:host".into()];
    let mut r = Rig::with(cfg, reg);
    let p = r.login_pdu(
        0x81,
        0,
        &kv(&[("InitiatorName", INITIATOR), ("TargetName", NODE)]),
    );
    assert_eq!(p.bhs.u16_at(36), 0x0202);
    assert!(r.conn.finished());
    // TSIH of a session that does not exist.
    let mut r = Rig::new();
    let p = r.login_pdu(
        0x81,
        7,
        &kv(&[("InitiatorName", INITIATOR), ("TargetName", NODE)]),
    );
    assert_eq!(p.bhs.u16_at(36), 0x020a);
    // Version-min above 0.
    let mut r = Rig::new();
    let mut b = Bhs::new(op::LOGIN_REQ);
    b.set_flags(0x81).set_byte(3, 1);
    let v = pdu::encode(&b, &[], &kv(&[("InitiatorName", INITIATOR)]), false, false);
    r.send(&v);
    assert_eq!(r.recv().bhs.u16_at(36), 0x0205);
    // Non-login PDU first.
    let mut r = Rig::new();
    let (_, v) = r.nop_out(b"", true);
    r.send(&v);
    assert!(r.conn.finished());
}

#[test]
fn login_bounds_round_trips() {
    let mut r = Rig::new();
    let sec = kv(&[("InitiatorName", INITIATOR), ("TargetName", NODE)]);
    for _ in 0..crate::login::MAX_LOGIN_PDUS + 2 {
        if r.conn.finished() {
            break;
        }
        r.login_pdu(0x01, 0, &sec);
    }
    assert!(r.conn.finished());
}

fn chap_config(mutual: bool) -> (Config, Registry) {
    let mut reg = Registry::new();
    let mut cfg = config(&mut reg);
    cfg.nodes[0].chap = ChapPolicy {
        disable: false,
        require: true,
        mutual,
        group: 1,
    };
    (cfg, reg)
}

/// Runs CHAP up to the target's challenge; returns (algorithm, id, challenge).
fn chap_start(r: &mut Rig, algs: &str) -> Result<(Algorithm, u8, Vec<u8>), u16> {
    let p = r.login_pdu(
        0x81,
        0,
        &kv(&[
            ("InitiatorName", INITIATOR),
            ("TargetName", NODE),
            ("AuthMethod", "CHAP,None"),
        ]),
    );
    assert_eq!(get(&pairs(&p), "AuthMethod").as_deref(), Some("CHAP"));
    assert_eq!(p.bhs.flags() & 0x80, 0, "no transit before CHAP");
    let p = r.login_pdu(0x01, 0, &kv(&[("CHAP_A", algs)]));
    if p.bhs.u16_at(36) != 0 {
        return Err(p.bhs.u16_at(36));
    }
    let kv = pairs(&p);
    let alg = Algorithm::from_number(get(&kv, "CHAP_A").unwrap().parse().unwrap()).unwrap();
    let id: u8 = get(&kv, "CHAP_I").unwrap().parse().unwrap();
    let c = chap::decode(&get(&kv, "CHAP_C").unwrap()).unwrap();
    assert_eq!(c.len(), chap::CHALLENGE_LEN);
    Ok((alg, id, c))
}

#[test]
fn chap_one_way_all_algorithms() {
    for (list, want) in [
        ("5", Algorithm::Md5),
        ("6,5", Algorithm::Sha1),
        ("7", Algorithm::Sha256),
        ("1,8", Algorithm::Sha3_256),
    ] {
        let (cfg, reg) = chap_config(false);
        let mut r = Rig::with(cfg, reg);
        let (alg, id, c) = chap_start(&mut r, list).unwrap();
        assert_eq!(alg, want);
        let resp = alg.response(id, b"secret-of-12", &c);
        // Base64 for one of them.
        let enc = if alg == Algorithm::Sha1 {
            base64(&resp)
        } else {
            chap::encode_hex(&resp)
        };
        let p = r.login_pdu(0x81, 0, &kv(&[("CHAP_N", "user"), ("CHAP_R", &enc)]));
        assert_eq!(p.bhs.u16_at(36), 0);
        assert_eq!(p.bhs.flags(), 0x81, "transit to operational");
        let p = r.login_pdu(0x87, 0, &[]);
        assert_eq!((p.bhs.u16_at(36), p.bhs.flags()), (0, 0x87));
    }
}

fn base64(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::from("0b");
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[test]
fn chap_mutual_answers_the_initiator() {
    let (cfg, reg) = chap_config(true);
    let mut r = Rig::with(cfg, reg);
    let (alg, id, c) = chap_start(&mut r, "5").unwrap();
    let resp = chap::encode_hex(&alg.response(id, b"secret-of-12", &c));
    let my_c = [7u8; 24];
    let p = r.login_pdu(
        0x81,
        0,
        &kv(&[
            ("CHAP_N", "user"),
            ("CHAP_R", &resp),
            ("CHAP_I", "9"),
            ("CHAP_C", &chap::encode_hex(&my_c)),
        ]),
    );
    assert_eq!(p.bhs.u16_at(36), 0);
    let kv = pairs(&p);
    assert_eq!(get(&kv, "CHAP_N").as_deref(), Some("muser"));
    let want = alg.response(9, b"msecret-of-12", &my_c);
    assert_eq!(get(&kv, "CHAP_R"), Some(chap::encode_hex(&want)));
}

#[test]
fn chap_failures_are_auth_failures() {
    // Wrong response.
    let (cfg, reg) = chap_config(false);
    let mut r = Rig::with(cfg, reg);
    let (alg, id, c) = chap_start(&mut r, "5").unwrap();
    let bad = chap::encode_hex(&alg.response(id, b"wrong", &c));
    let p = r.login_pdu(0x81, 0, &kv(&[("CHAP_N", "user"), ("CHAP_R", &bad)]));
    assert_eq!(p.bhs.u16_at(36), 0x0201);
    assert!(r.conn.finished());
    // Unknown user.
    let (cfg, reg) = chap_config(false);
    let mut r = Rig::with(cfg, reg);
    let (alg, id, c) = chap_start(&mut r, "5").unwrap();
    let ok = chap::encode_hex(&alg.response(id, b"secret-of-12", &c));
    let p = r.login_pdu(0x81, 0, &kv(&[("CHAP_N", "nobody"), ("CHAP_R", &ok)]));
    assert_eq!(p.bhs.u16_at(36), 0x0201);
    // Mutual required but not asked for.
    let (cfg, reg) = chap_config(true);
    let mut r = Rig::with(cfg, reg);
    let (alg, id, c) = chap_start(&mut r, "5").unwrap();
    let ok = chap::encode_hex(&alg.response(id, b"secret-of-12", &c));
    let p = r.login_pdu(0x81, 0, &kv(&[("CHAP_N", "user"), ("CHAP_R", &ok)]));
    assert_eq!(p.bhs.u16_at(36), 0x0201);
    // Reflected challenge.
    let (cfg, reg) = chap_config(true);
    let mut r = Rig::with(cfg, reg);
    let (alg, id, c) = chap_start(&mut r, "5").unwrap();
    let ok = chap::encode_hex(&alg.response(id, b"secret-of-12", &c));
    let p = r.login_pdu(
        0x81,
        0,
        &kv(&[
            ("CHAP_N", "user"),
            ("CHAP_R", &ok),
            ("CHAP_I", "1"),
            ("CHAP_C", &chap::encode_hex(&c)),
        ]),
    );
    assert_eq!(p.bhs.u16_at(36), 0x0201);
    // No algorithm we know, or none at all.
    for bad in ["56", ""] {
        let (cfg, reg) = chap_config(false);
        let mut r = Rig::with(cfg, reg);
        assert_eq!(chap_start(&mut r, bad), Err(0x0201));
    }
    // CHAP required: AuthMethod=None refused; skipping security refused.
    let (cfg, reg) = chap_config(false);
    let mut r = Rig::with(cfg, reg);
    let p = r.login_pdu(
        0x81,
        0,
        &kv(&[
            ("InitiatorName", INITIATOR),
            ("TargetName", NODE),
            ("AuthMethod", "None"),
        ]),
    );
    assert_eq!(p.bhs.u16_at(36), 0x0201);
    let (cfg, reg) = chap_config(false);
    let mut r = Rig::with(cfg, reg);
    let p = r.login_pdu(
        0x87,
        0,
        &kv(&[("InitiatorName", INITIATOR), ("TargetName", NODE)]),
    );
    assert_eq!(p.bhs.u16_at(36), 0x0201);
}

#[test]
fn write_immediate_then_read_back() {
    let mut r = Rig::new();
    r.login(&[("ImmediateData", "Yes"), ("FirstBurstLength", "65536")]);
    let data = pattern(4 * BS, 3);
    let p = r.write(10, &data);
    assert_eq!((p.bhs.opcode(), status_of(&p)), (op::SCSI_RSP, 0));
    let (got, st) = r.read(10, 4, 4 * BS as u32);
    assert_eq!(got, data);
    assert_eq!(st.bhs.opcode(), op::DATA_IN);
    assert_eq!(st.bhs.flags() & (flag::FINAL | flag::STATUS), 0x81);
    assert_eq!(st.bhs.u32_at(at::W44), 0, "no residual");
}

#[test]
fn write_with_r2t_sequences() {
    let mut r = Rig::new();
    r.login(&[
        ("InitialR2T", "Yes"),
        ("ImmediateData", "No"),
        ("MaxBurstLength", "16384"),
        ("MaxRecvDataSegmentLength", "8192"),
    ]);
    let data = pattern(64 * 1024, 9);
    let cdb = write10(100, (data.len() / BS) as u16);
    let (itt, v) = r.command(&cdb, flag::FINAL | flag::WRITE, data.len() as u32, &[]);
    r.send(&v);
    let mut r2ts = 0;
    loop {
        let p = r.recv();
        if p.bhs.opcode() == op::SCSI_RSP {
            assert_eq!(status_of(&p), 0);
            assert_eq!(p.bhs.u32_at(at::W36), r2ts, "ExpDataSN counts R2Ts");
            break;
        }
        assert_eq!(p.bhs.opcode(), op::R2T);
        assert_eq!(p.bhs.u32_at(at::W36), r2ts, "R2TSN");
        let (ttt, off, len) = (
            p.bhs.u32_at(at::W20),
            p.bhs.u32_at(at::W40) as usize,
            p.bhs.u32_at(at::W44) as usize,
        );
        assert_eq!(len, 16384);
        assert!(r.try_recv().is_none(), "one R2T outstanding at a time");
        for (sn, chunk) in data[off..off + len].chunks(8192).enumerate() {
            let last = (sn + 1) * 8192 >= len;
            let v = r.data_out(itt, ttt, sn as u32, (off + sn * 8192) as u32, chunk, last);
            r.send(&v);
        }
        r2ts += 1;
    }
    assert_eq!(r2ts, 4);
    let (got, _) = r.read(100, 128, data.len() as u32);
    assert_eq!(got, data);
}

#[test]
fn unsolicited_data_then_r2t() {
    let mut reg = Registry::new();
    let mut cfg = config(&mut reg);
    cfg.options.initial_r2t = false;
    let mut r = Rig::with(cfg, reg);
    r.login(&[
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("FirstBurstLength", "4096"),
        ("MaxRecvDataSegmentLength", "1024"),
    ]);
    let data = pattern(16 * BS, 1);
    let (itt, v) = r.command(
        &write10(0, 16),
        flag::WRITE,
        data.len() as u32,
        &data[..1024],
    );
    r.send(&v);
    // Unsolicited Data-Out up to FirstBurstLength.
    for (sn, off) in [1024usize, 2048, 3072].into_iter().enumerate() {
        let v = r.data_out(
            itt,
            NO_TAG,
            sn as u32,
            off as u32,
            &data[off..off + 1024],
            off == 3072,
        );
        r.send(&v);
    }
    let p = r.recv();
    assert_eq!(p.bhs.opcode(), op::R2T);
    assert_eq!((p.bhs.u32_at(at::W40), p.bhs.u32_at(at::W44)), (4096, 4096));
    let ttt = p.bhs.u32_at(at::W20);
    for (sn, off) in (4096..8192).step_by(1024).enumerate() {
        let v = r.data_out(
            itt,
            ttt,
            sn as u32,
            off as u32,
            &data[off..off + 1024],
            off == 7168,
        );
        r.send(&v);
    }
    let p = r.recv();
    assert_eq!((p.bhs.opcode(), status_of(&p)), (op::SCSI_RSP, 0));
    assert_eq!(r.read(0, 16, 8192).0, data);
}

#[test]
fn data_in_is_segmented_by_mrdsl_and_burst() {
    let mut r = Rig::new();
    r.login(&[
        ("MaxRecvDataSegmentLength", "4096"),
        ("MaxBurstLength", "16384"),
    ]);
    let data = pattern(64 * 1024, 5);
    for (i, c) in data.chunks(8192).enumerate() {
        assert_eq!(status_of(&r.write(200 + 16 * i as u32, c)), 0);
    }
    let (_, v) = r.command(&read10(200, 128), flag::FINAL | flag::READ, 65536, &[]);
    r.send(&v);
    let mut got = Vec::new();
    for sn in 0..16u32 {
        let p = r.recv();
        assert_eq!(p.bhs.opcode(), op::DATA_IN);
        assert_eq!(p.data.len(), 4096);
        assert_eq!(p.bhs.u32_at(at::W36), sn, "DataSN");
        let f = p.bhs.flags();
        assert_eq!(f & flag::FINAL != 0, sn % 4 == 3, "F at burst ends");
        assert_eq!(f & flag::STATUS != 0, sn == 15);
        got.extend_from_slice(&p.data);
    }
    assert_eq!(got, data);
    assert!(r.try_recv().is_none());
}

#[test]
fn residuals_on_reads_and_writes() {
    let mut r = Rig::new();
    r.login(&[]);
    // Read 1 block, expect 200 bytes: overflow.
    let (d, st) = r.read(0, 1, 200);
    assert_eq!(d.len(), 200);
    assert_eq!(
        st.bhs.flags() & (flag::OVERFLOW | flag::UNDERFLOW),
        flag::OVERFLOW
    );
    assert_eq!(st.bhs.u32_at(at::W44), 312);
    // Expect 10000: underflow.
    let (d, st) = r.read(0, 1, 10000);
    assert_eq!(d.len(), 512);
    assert_eq!(st.bhs.flags() & flag::UNDERFLOW, flag::UNDERFLOW);
    assert_eq!(st.bhs.u32_at(at::W44), 10000 - 512);
    // Expect 0: overflow, no data, SCSI Response.
    let (d, st) = r.read(0, 1, 0);
    assert!(d.is_empty());
    assert_eq!(st.bhs.opcode(), op::SCSI_RSP);
    assert_eq!(st.bhs.flags() & flag::OVERFLOW, flag::OVERFLOW);
    assert_eq!(st.bhs.u32_at(at::W44), 512);
    // Write 1 block, EDTL 2 blocks: underflow of one block.
    let (_, v) = r.command(
        &write10(0, 1),
        flag::FINAL | flag::WRITE,
        1024,
        &pattern(1024, 0),
    );
    r.send(&v);
    let p = r.recv();
    assert_eq!(p.bhs.flags() & flag::UNDERFLOW, flag::UNDERFLOW);
    assert_eq!(p.bhs.u32_at(at::W44), 512);
    // Write 2 blocks, EDTL 1 block: overflow of one block.
    let (_, v) = r.command(
        &write10(0, 2),
        flag::FINAL | flag::WRITE,
        512,
        &pattern(512, 0),
    );
    r.send(&v);
    let p = r.recv();
    assert_eq!(p.bhs.flags() & flag::OVERFLOW, flag::OVERFLOW);
    assert_eq!(p.bhs.u32_at(at::W44), 512);
}

#[test]
fn digests_both_ways() {
    let mut r = Rig::new();
    r.login(&[
        ("HeaderDigest", "CRC32C,None"),
        ("DataDigest", "CRC32C,None"),
    ]);
    assert!(r.hd && r.dd);
    let data = pattern(2 * BS, 4);
    assert_eq!(status_of(&r.write(5, &data)), 0);
    assert_eq!(r.read(5, 2, 1024).0, data);
    // A data digest error: Reject 02h, the session goes on.
    let (_, mut v) = r.nop_out(b"abcd", true);
    let n = v.len();
    v[n - 1] ^= 0xff;
    r.send(&v);
    let p = r.recv();
    assert_eq!(
        (p.bhs.opcode(), p.bhs.byte(2)),
        (op::REJECT, pdu::reject::DATA_DIGEST)
    );
    assert_eq!(&p.data[..48], &v[..48]);
    // A write whose immediate data is corrupt fails with a CRC error.
    let (_, mut v) = r.command(
        &write10(5, 1),
        flag::FINAL | flag::WRITE,
        512,
        &pattern(512, 9),
    );
    let n = v.len();
    v[n - 1] ^= 1;
    r.send(&v);
    assert_eq!(r.recv().bhs.opcode(), op::REJECT);
    let p = r.recv();
    assert_eq!((p.bhs.opcode(), status_of(&p)), (op::SCSI_RSP, 2));
    assert_eq!(&p.data[2 + 12..2 + 14], &[0x47, 0x01]);
    assert_eq!(r.read(5, 2, 1024).0, data, "nothing written");
    // A header digest error ends the connection.
    let (_, mut v) = r.nop_out(b"", true);
    v[49] ^= 1;
    r.send(&v);
    r.pump();
    assert!(r.conn.finished());
    assert_eq!(r.conn.error, Some("header digest error"));
}

#[test]
fn required_digest_refuses_none() {
    let mut reg = Registry::new();
    let mut cfg = config(&mut reg);
    cfg.nodes[0].header_digest = true;
    let mut r = Rig::with(cfg, reg);
    r.login_pdu(
        0x81,
        0,
        &kv(&[
            ("InitiatorName", INITIATOR),
            ("TargetName", NODE),
            ("AuthMethod", "None"),
        ]),
    );
    let p = r.login_pdu(0x87, 0, &kv(&[("HeaderDigest", "None")]));
    assert_ne!(p.bhs.u16_at(36), 0);
    assert!(r.conn.finished());
}

#[test]
fn cmdsn_window() {
    let mut r = Rig::new();
    r.login(&[]);
    let tur = [0u8; 6];
    // Too low and too high are dropped silently.
    let sn = r.cmd_sn;
    r.cmd_sn = sn - 1;
    let (_, v) = r.command(&tur, flag::FINAL, 0, &[]);
    r.send(&v);
    r.cmd_sn = sn + 1000;
    let (_, v) = r.command(&tur, flag::FINAL, 0, &[]);
    r.send(&v);
    assert!(r.try_recv().is_none());
    // Out of order inside the window: held until the gap fills.
    r.cmd_sn = sn + 1;
    let (i2, v2) = r.command(&tur, flag::FINAL, 0, &[]);
    r.send(&v2);
    assert!(r.try_recv().is_none());
    r.cmd_sn = sn;
    let (i1, v1) = r.command(&tur, flag::FINAL, 0, &[]);
    r.send(&v1);
    let (a, b) = (r.recv(), r.recv());
    assert_eq!((a.bhs.itt(), b.bhs.itt()), (i1, i2));
    assert_eq!(b.bhs.u32_at(at::W28), sn + 2, "ExpCmdSN");
    let max = b.bhs.u32_at(at::W32);
    assert_eq!(max, sn + 2 + 31, "MaxCmdSN = ExpCmdSN + depth - 1");
    // StatSN advances by one per response.
    assert_eq!(b.bhs.u32_at(at::W24), a.bhs.u32_at(at::W24) + 1);
}

#[test]
fn nop_in_ping_and_timeout() {
    let mut reg = Registry::new();
    let mut cfg = config(&mut reg);
    cfg.options.nop_in_interval = 5;
    cfg.options.nop_timeout = 10;
    let mut r = Rig::with(cfg, reg);
    r.login(&[]);
    r.tick(6000);
    let p = r.recv();
    assert_eq!((p.bhs.opcode(), p.bhs.itt()), (op::NOP_IN, NO_TAG));
    let ttt = p.bhs.u32_at(at::W20);
    assert_ne!(ttt, NO_TAG);
    // Answer it.
    let mut b = Bhs::new(op::NOP_OUT);
    b.0[0] |= 0x40;
    b.set_flags(0x80).set_itt(NO_TAG).set_u32(at::W20, ttt);
    let v = r.pdu(&b, &[]);
    r.send(&v);
    assert!(r.try_recv().is_none(), "no reply to a ping answer");
    r.tick(4000);
    assert!(r.try_recv().is_none());
    // Next ping goes unanswered.
    r.tick(6000);
    assert_eq!(r.recv().bhs.opcode(), op::NOP_IN);
    r.tick(11_000);
    assert!(r.conn.finished());
    assert_eq!(r.conn.error, Some("NOP-In not answered"));
}

#[test]
fn task_management() {
    let mut r = Rig::new();
    r.login(&[("InitialR2T", "Yes"), ("ImmediateData", "No")]);
    // A write waiting for its R2T data is aborted: no response for it.
    let sn = r.cmd_sn;
    let (witt, v) = r.command(&write10(0, 8), flag::FINAL | flag::WRITE, 4096, &[]);
    r.send(&v);
    assert_eq!(r.recv().bhs.opcode(), op::R2T);
    let (titt, v) = r.tmf(1, witt, sn);
    r.send(&v);
    let p = r.recv();
    assert_eq!(
        (p.bhs.opcode(), p.bhs.itt(), p.bhs.byte(2)),
        (op::TMF_RSP, titt, 0)
    );
    // Late data for it is dropped quietly.
    let v = r.data_out(witt, 1, 0, 0, &[0; 512], true);
    r.send(&v);
    assert!(r.try_recv().is_none());
    // Unknown task, past the window: does not exist.
    let (_, v) = r.tmf(1, 0x5555, sn.wrapping_sub(10));
    r.send(&v);
    assert_eq!(r.recv().bhs.byte(2), 1);
    // Not received yet but inside the window: function complete.
    let (_, v) = r.tmf(1, 0x5556, r.cmd_sn + 1);
    r.send(&v);
    assert_eq!(r.recv().bhs.byte(2), 0);
    for (f, want) in [
        (5u8, 0u8),
        (2, 0),
        (4, 0),
        (3, 5),
        (8, 4),
        (6, 0),
        (99, 255),
    ] {
        let (_, v) = r.tmf(f, NO_TAG, 0);
        r.send(&v);
        assert_eq!(r.recv().bhs.byte(2), want, "function {f}");
    }
    // The resets' unit attentions reach this nexus too (SAM-5).
    let tur = [0u8; 6];
    assert_eq!(r.status(&tur), 2);
    while r.status(&tur) != 0 {}
    // A read in flight at the device: the abort answers once it is back.
    r.hold = true;
    let sn = r.cmd_sn;
    let (ritt, v) = r.command(&read10(0, 8), flag::FINAL | flag::READ, 4096, &[]);
    r.send(&v);
    let (_, v) = r.tmf(1, ritt, sn);
    r.send(&v);
    assert!(r.try_recv().is_none(), "TMF response waits for the device");
    r.release();
    let p = r.recv();
    assert_eq!((p.bhs.opcode(), p.bhs.byte(2)), (op::TMF_RSP, 0));
    assert!(
        r.try_recv().is_none(),
        "no data or status for the aborted read"
    );
    // Target cold reset: answered, then the connection closes.
    let (_, v) = r.tmf(7, NO_TAG, 0);
    r.send(&v);
    assert_eq!(r.recv().bhs.byte(2), 0);
    assert!(r.conn.finished());
}

#[test]
fn logout_closes() {
    let mut r = Rig::new();
    r.login(&[("DefaultTime2Wait", "2"), ("DefaultTime2Retain", "20")]);
    let itt = r.next_itt();
    let mut b = Bhs::new(op::LOGOUT_REQ);
    b.0[0] |= 0x40;
    b.set_flags(0x80)
        .set_itt(itt)
        .set_u16(at::W20, 1)
        .set_u32(24, r.cmd_sn);
    let v = r.pdu(&b, &[]);
    r.send(&v);
    let p = r.recv();
    assert_eq!(
        (p.bhs.opcode(), p.bhs.itt(), p.bhs.byte(2)),
        (op::LOGOUT_RSP, itt, 0)
    );
    assert_eq!((p.bhs.u16_at(40), p.bhs.u16_at(42)), (2, 20));
    assert!(r.conn.finished());
    r.conn.closed(&mut r.t);
    assert!(r.t.connections().is_empty());
}

#[test]
fn rejects_and_discovery() {
    let mut r = Rig::new();
    r.login_with(
        &[("InitiatorName", INITIATOR), ("SessionType", "Discovery")],
        &[("MaxBurstLength", "4096")],
    );
    // SCSI commands are not for discovery sessions.
    let (_, v) = r.command(&[0u8; 6], flag::FINAL, 0, &[]);
    r.send(&v);
    assert_eq!(r.recv().bhs.opcode(), op::REJECT);
    // SNACK and unknown opcodes.
    let mut b = Bhs::new(op::SNACK);
    b.set_flags(0x80);
    let v = r.pdu(&b, &[]);
    r.send(&v);
    assert_eq!(r.recv().bhs.byte(2), pdu::reject::PROTOCOL_ERROR);
    let v = r.pdu(&Bhs::new(0x1e), &[]);
    r.send(&v);
    assert_eq!(r.recv().bhs.byte(2), pdu::reject::NOT_SUPPORTED);
    // SendTargets.
    let p = r.text(b"SendTargets=All\0", flag::FINAL, NO_TAG);
    assert_eq!(p.bhs.flags(), flag::FINAL);
    assert_eq!(
        pairs(&p),
        [
            ("TargetName".to_string(), NODE.to_string()),
            ("TargetAddress".to_string(), "127.0.0.1:3260,1".to_string()),
        ]
    );
    for bad in [
        "SendTargets=Alle",
        "SendTargets=A",
        "sENDtARGETS=aLL",
        "SendTargetsPlease=All",
    ] {
        let mut q = bad.as_bytes().to_vec();
        q.push(0);
        let p = r.text(&q, flag::FINAL, NO_TAG);
        let kv = pairs(&p);
        assert!(get(&kv, "TargetName").is_none(), "{bad}");
        assert!(!kv.is_empty(), "{bad}");
    }
    let p = r.text(b"SendTargets=iqn.2000-01.none:x\0", flag::FINAL, NO_TAG);
    assert!(p.data.is_empty());
}

#[test]
fn text_continuation_both_ways() {
    let mut reg = Registry::new();
    let mut cfg = config(&mut reg);
    for i in 0..40 {
        let mut n = cfg.nodes[0].clone();
        n.name = format!("iqn.2016-06.io.spdk:many-targets-with-long-names-{i:03}");
        cfg.nodes.push(n);
    }
    let mut r = Rig::with(cfg, reg);
    r.login(&[("MaxRecvDataSegmentLength", "512")]);
    // The request arrives in two pieces.
    let p = r.text(b"SendTar", flag::CONTINUE, NO_TAG);
    assert_eq!(p.bhs.flags() & flag::FINAL, 0);
    let ttt = p.bhs.u32_at(at::W20);
    assert_ne!(ttt, NO_TAG);
    let mut p = r.text(b"gets=All\0", flag::FINAL, ttt);
    let mut all = Vec::new();
    let mut n = 0;
    while p.bhs.flags() & flag::CONTINUE != 0 {
        assert!(p.data.len() <= 512);
        all.extend_from_slice(&p.data);
        let ttt = p.bhs.u32_at(at::W20);
        p = r.text(b"", flag::FINAL, ttt);
        n += 1;
    }
    all.extend_from_slice(&p.data);
    assert_eq!(p.bhs.u32_at(at::W20), NO_TAG);
    assert!(n > 3);
    let kv = crate::text::parse(&all).unwrap();
    assert_eq!(kv.iter().filter(|x| x.0 == "TargetName").count(), 41);
}

#[test]
fn session_reinstatement_ends_the_old_connection() {
    let mut r = Rig::new();
    r.login(&[]);
    let mut old = core::mem::replace(
        &mut r.conn,
        Connection::new(addr("127.0.0.1:3260"), addr("127.0.0.1:40001"), 0),
    );
    r.out.clear();
    r.login(&[]);
    old.handle_timeout(&mut r.t, &r.reg, 0);
    assert!(old.finished());
    old.closed(&mut r.t);
    assert_eq!(r.t.connections().len(), 1);
    assert_eq!(r.t.connections()[0].state, "full_feature");
}

#[test]
fn lun_map_change_sends_an_async_event() {
    let mut r = Rig::new();
    r.login(&[]);
    r.tick(1000);
    assert!(r.try_recv().is_none());
    let id = r
        .reg
        .add(Box::new(MallocBdev::new("Malloc1", 64, 512)))
        .unwrap();
    r.t.config.nodes[0].luns.push(Lun {
        id: 1,
        bdev_name: "Malloc1".into(),
        bdev: id,
        read_only: false,
    });
    r.t.config.generation += 1;
    r.tick(1000);
    let p = r.recv();
    assert_eq!(p.bhs.opcode(), op::ASYNC);
    assert_eq!(p.bhs.byte(36), 0);
    assert_eq!(&p.data[..2], &[0, 18]);
    assert_eq!(
        (p.data[2 + 2], p.data[2 + 12], p.data[2 + 13]),
        (6, 0x3f, 0x0e)
    );
}

#[test]
fn capacity_change_sends_an_async_event_and_a_unit_attention() {
    let mut r = Rig::new();
    r.login(&[]);
    r.tick(1000);
    assert!(r.try_recv().is_none());
    let bdev = r.t.config.nodes[0].luns[0].bdev;
    let blocks = r.reg.info(bdev).unwrap().num_blocks;
    r.reg.resize(bdev, blocks * 2).unwrap();
    r.tick(1000);
    let p = r.recv();
    assert_eq!(p.bhs.opcode(), op::ASYNC);
    assert_eq!(
        (p.data[2 + 2], p.data[2 + 12], p.data[2 + 13]),
        (6, 0x2a, 0x09)
    );
    // The next command reports it once, the one after runs.
    assert_eq!(status_of(&r.write(0, &[7; 512])), 2);
    assert_eq!(status_of(&r.write(0, &[7; 512])), 0);
}

#[test]
fn data_sn_errors_fail_the_command() {
    let mut r = Rig::new();
    r.login(&[("InitialR2T", "Yes"), ("ImmediateData", "No")]);
    for bad_sn in [27u32, u32::MAX] {
        let (itt, v) = r.command(&write10(100, 1), flag::FINAL | flag::WRITE, 512, &[]);
        r.send(&v);
        let p = r.recv();
        let ttt = p.bhs.u32_at(at::W20);
        let v = r.data_out(itt, ttt, bad_sn, 0, &[0xa6; 512], true);
        r.send(&v);
        let p = r.recv();
        assert_eq!((p.bhs.opcode(), status_of(&p)), (op::SCSI_RSP, 2));
    }
    // Offset outside the R2T.
    let (itt, v) = r.command(&write10(100, 1), flag::FINAL | flag::WRITE, 512, &[]);
    r.send(&v);
    let ttt = r.recv().bhs.u32_at(at::W20);
    let v = r.data_out(itt, ttt, 0, 512, &[0; 512], true);
    r.send(&v);
    assert_eq!(status_of(&r.recv()), 2);
    // The session still works.
    assert_eq!(status_of(&r.write(100, &[1; 512])), 0);
}

#[test]
fn oversized_segment_ends_the_connection() {
    let mut r = Rig::new();
    r.login(&[]);
    let (_, v) = r.nop_out(&vec![0u8; 70_000], true);
    r.send(&v);
    assert!(r.conn.finished());
}

/// Valid traffic with random corruption must never panic or hang.
#[test]
fn mutated_pdus_never_panic() {
    let mut seed = ironbay_bdev::Rng::new(0x0001_5c51);
    let mut base = Rig::new();
    // Record a valid session's client bytes.
    let mut script: Vec<Vec<u8>> = Vec::new();
    let mut login1 = Bhs::new(op::LOGIN_REQ);
    login1.0[0] |= 0x40;
    login1.set_flags(0x81);
    script.push(pdu::encode(
        &login1,
        &[],
        &kv(&[
            ("InitiatorName", INITIATOR),
            ("TargetName", NODE),
            ("AuthMethod", "None"),
        ]),
        false,
        false,
    ));
    let mut login2 = login1;
    login2.set_flags(0x87);
    script.push(pdu::encode(
        &login2,
        &[],
        &kv(&[("InitialR2T", "No"), ("MaxRecvDataSegmentLength", "4096")]),
        false,
        false,
    ));
    base.cmd_sn = 0;
    script.push(base.write_cmd_bytes(0, &pattern(1024, 1)));
    script.push(
        base.command(&read10(0, 2), flag::FINAL | flag::READ, 1024, &[])
            .1,
    );
    let (itt, v) = base.command(&write10(8, 4), flag::WRITE, 2048, &pattern(512, 2));
    script.push(v);
    script.push(base.data_out(itt, NO_TAG, 0, 512, &pattern(512, 3), true));
    script.push(base.nop_out(b"hello", false).1);
    script.push(base.tmf(5, NO_TAG, 0).1);
    let mut t = Bhs::new(op::TEXT_REQ);
    t.set_flags(0x80).set_itt(99).set_u32(at::W20, NO_TAG);
    script.push(pdu::encode(&t, &[], b"SendTargets=All\0", false, false));
    script.push(base.tmf(1, 1, 0).1);
    let mut l = Bhs::new(op::LOGOUT_REQ);
    l.set_flags(0x80).set_itt(77);
    script.push(pdu::encode(&l, &[], &[], false, false));
    for round in 0..3000 {
        let mut r = Rig::new();
        let mut bytes: Vec<u8> = script.concat();
        let flips = 1 + seed.below(8) as usize;
        for _ in 0..flips {
            let i = seed.below(bytes.len() as u64) as usize;
            match seed.below(4) {
                0 => bytes[i] = seed.next_u64() as u8,
                1 => bytes[i] ^= 1 << seed.below(8),
                2 => {
                    let end = (i + seed.below(64) as usize).min(bytes.len());
                    bytes.drain(i..end);
                }
                _ => {
                    let junk: Vec<u8> =
                        (0..seed.below(64)).map(|_| seed.next_u64() as u8).collect();
                    bytes.splice(i..i, junk);
                }
            }
            if bytes.is_empty() {
                bytes.push(0);
            }
        }
        // Feed in random slices.
        let mut off = 0;
        let mut guard = 0;
        while off < bytes.len() && !r.conn.finished() && guard < 10_000 {
            let n = 1 + seed.below(200) as usize;
            let end = (off + n).min(bytes.len());
            let used = r
                .conn
                .handle_input(&bytes[off..end], &mut r.t, &r.reg, r.now);
            off += used;
            r.pump();
            if round % 7 == 0 {
                r.tick(31_000);
            }
            guard += 1;
            if used == 0 && !r.conn.wants_input() {
                break;
            }
        }
        r.tick(100_000);
        r.conn.closed(&mut r.t);
        assert!(r.t.connections().is_empty());
    }
}

impl Rig {
    fn write_cmd_bytes(&mut self, lba: u32, data: &[u8]) -> Vec<u8> {
        let cdb = write10(lba, (data.len() / BS) as u16);
        self.command(&cdb, flag::FINAL | flag::WRITE, data.len() as u32, data)
            .1
    }
}

// Hostile-input regressions.

fn depth_rig(depth: u32) -> Rig {
    let mut reg = Registry::new();
    let mut cfg = config(&mut reg);
    cfg.nodes[0].queue_depth = depth;
    let mut r = Rig::with(cfg, reg);
    r.login(&[("InitialR2T", "Yes"), ("ImmediateData", "No")]);
    r
}

/// With no credit left MaxCmdSN is ExpCmdSN - 1: commands ahead of it are
/// outside the window, not inside a window wrapped to 2^32.
#[test]
fn closed_window_holds_nothing() {
    let mut r = depth_rig(2);
    for _ in 0..2 {
        let (_, v) = r.command(&write10(0, 8), flag::FINAL | flag::WRITE, 4096, &[]);
        r.send(&v);
        assert_eq!(r.recv().bhs.opcode(), op::R2T);
    }
    let exp = r.cmd_sn;
    assert_eq!(r.conn.max_cmd_sn(), exp.wrapping_sub(1));
    for ahead in 1..40 {
        r.cmd_sn = exp + ahead;
        let (_, v) = r.command(&[0u8; 6], flag::FINAL, 0, &[]);
        r.send(&v);
    }
    assert!(r.conn.queued.is_empty());
    assert!(r.try_recv().is_none());
    // ABORT TASK of a command that cannot be in the window.
    let (_, v) = r.tmf(1, 0x7777, exp + 5);
    r.send(&v);
    assert_eq!(r.recv().bhs.byte(2), 1, "task does not exist");
}

/// Immediate commands skip CmdSN ordering but not the queue depth.
#[test]
fn immediate_commands_count_against_the_depth() {
    let mut r = depth_rig(2);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (_, mut v) = r.command(&write10(0, 8), flag::FINAL | flag::WRITE, 4096, &[]);
        v[0] |= 0x40;
        r.send(&v);
        let p = r.recv();
        statuses.push((p.bhs.opcode(), status_of(&p)));
    }
    assert_eq!(statuses[..2], [(op::R2T, 0), (op::R2T, 0)]);
    assert_eq!(
        statuses[2],
        (op::SCSI_RSP, crate::scsi::status::TASK_SET_FULL)
    );
    assert_eq!(r.conn.active_tasks(), 2);
}

/// Logouts repeated while a command is at the device keep one entry.
#[test]
fn repeated_logouts_do_not_pile_up() {
    let mut r = Rig::new();
    r.login(&[]);
    r.hold = true;
    let (_, v) = r.command(&read10(0, 8), flag::FINAL | flag::READ, 4096, &[]);
    r.send(&v);
    let mut b = Bhs::new(op::LOGOUT_REQ);
    b.0[0] |= 0x40;
    b.set_flags(0x80).set_u32(24, r.cmd_sn);
    for itt in 0..1000 {
        b.set_itt(1000 + itt);
        let v = r.pdu(&b, &[]);
        r.send(&v);
    }
    assert_eq!(r.conn.pending.len(), 1);
    r.release();
    let mut seen = Vec::new();
    while let Some(p) = r.try_recv() {
        seen.push((p.bhs.opcode(), p.bhs.itt()));
    }
    assert_eq!(seen.last(), Some(&(op::LOGOUT_RSP, 1000)));
    assert!(r.conn.finished());
}

/// One Text Request naming SendTargets many times would hold that many
/// copies of the target list.
#[test]
fn repeated_text_keys_are_refused() {
    let mut r = Rig::new();
    r.login(&[]);
    let req = b"SendTargets=All\0".repeat(200);
    let p = r.text(&req, flag::FINAL, NO_TAG);
    assert_eq!(
        (p.bhs.opcode(), p.bhs.byte(2)),
        (op::REJECT, pdu::reject::PROTOCOL_ERROR)
    );
    // A single one still works.
    let p = r.text(b"SendTargets=All\0", flag::FINAL, NO_TAG);
    assert_eq!(get(&pairs(&p), "TargetName").as_deref(), Some(NODE));
}

/// Feeds a Login Request to a second connection on the rig's target.
fn login_on(r: &mut Rig, c: &mut Connection, isid: u8, flags: u8, data: &[u8]) -> Pdu {
    let mut b = Bhs::new(op::LOGIN_REQ);
    b.0[0] |= 0x40;
    b.set_flags(flags).set_itt(1);
    b.0[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, isid]);
    let v = pdu::encode(&b, &[], data, false, false);
    assert_eq!(c.handle_input(&v, &mut r.t, &r.reg, r.now), v.len());
    let mut out = Vec::new();
    while let Some(o) = c.poll_output() {
        let n = o.len();
        out.extend_from_slice(o);
        c.consume_output(n);
    }
    Pdu::parse(&out, false, false).unwrap()
}

/// `max_sessions` holds when several logins pass the first check before
/// any of them is done; reinstating a session does not count twice.
#[test]
fn session_limit_holds_against_concurrent_logins() {
    let mut reg = Registry::new();
    let mut cfg = config(&mut reg);
    cfg.options.max_sessions = 1;
    let mut r = Rig::with(cfg, reg);
    let sec = kv(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", NODE),
        ("AuthMethod", "None"),
    ]);
    let mut conns: Vec<Connection> = (0..3)
        .map(|i| {
            Connection::new(
                addr("127.0.0.1:3260"),
                addr(&format!("127.0.0.1:{}", 41000 + i)),
                0,
            )
        })
        .collect();
    for (c, isid) in conns.iter_mut().zip([1, 2, 1]) {
        let p = login_on(&mut r, c, isid, 0x81, &sec);
        assert_eq!(p.bhs.u16_at(36), 0, "first PDU passes: no session yet");
    }
    let [a, b, c] = &mut conns[..] else {
        unreachable!()
    };
    assert_eq!(login_on(&mut r, a, 1, 0x87, &[]).bhs.u16_at(36), 0);
    let p = login_on(&mut r, b, 2, 0x87, &[]);
    assert_eq!(p.bhs.u16_at(36), crate::login::status::TOO_MANY_CONNECTIONS);
    assert!(b.finished());
    // The same initiator and ISID again: it replaces its own session.
    assert_eq!(login_on(&mut r, c, 1, 0x87, &[]).bhs.u16_at(36), 0);
    assert_eq!(r.t.connections().iter().filter(|x| x.tsih != 0).count(), 2);
    a.handle_timeout(&mut r.t, &r.reg, r.now);
    assert!(a.finished(), "the reinstated session's connection ends");
}

/// With NOP pings off (nop_timeout 0) a silent peer still cannot sit in
/// login for ever.
#[test]
fn login_times_out_without_nop_pings() {
    let mut reg = Registry::new();
    let mut cfg = config(&mut reg);
    cfg.options.nop_timeout = 0;
    let mut r = Rig::with(cfg, reg);
    r.tick(10_000);
    assert!(!r.conn.finished());
    r.tick(25_000);
    assert!(r.conn.finished());
    assert_eq!(r.conn.error, Some("login took too long"));
}

/// DataSN of a sequence wraps instead of overflowing (empty Data-Outs
/// cost the initiator nothing).
#[test]
fn data_sn_wraps() {
    let mut r = depth_rig(4);
    let (itt, v) = r.command(&write10(0, 8), flag::FINAL | flag::WRITE, 4096, &[]);
    r.send(&v);
    let ttt = r.recv().bhs.u32_at(at::W20);
    for (_, c) in r.conn.slots.iter_mut() {
        c.r2ts[0].data_sn = u32::MAX;
    }
    let v = r.data_out(itt, ttt, u32::MAX, 0, &[], false);
    r.send(&v);
    let v = r.data_out(itt, ttt, 0, 0, &pattern(4096, 5), true);
    r.send(&v);
    let p = r.recv();
    assert_eq!((p.bhs.opcode(), status_of(&p)), (op::SCSI_RSP, 0));
}

const RESERVE6: [u8; 6] = [0x16, 0, 0, 0, 0, 0];
const RESERVATION_CONFLICT: u8 = 0x18;

/// Another initiator's connection, swapped in and out of the rig.
struct Other {
    conn: Connection,
    cmd_sn: u32,
}

impl Rig {
    fn other(&mut self, initiator: &str, port: u16) -> Other {
        let mut o = Other {
            conn: Connection::new(
                addr("127.0.0.1:3260"),
                addr(&format!("127.0.0.1:{port}")),
                0,
            ),
            cmd_sn: 1,
        };
        self.swap(&mut o);
        self.login_with(
            &[
                ("InitiatorName", initiator),
                ("TargetName", NODE),
                ("SessionType", "Normal"),
                ("AuthMethod", "None"),
            ],
            &[],
        );
        self.swap(&mut o);
        o
    }

    fn swap(&mut self, o: &mut Other) {
        core::mem::swap(&mut self.conn, &mut o.conn);
        core::mem::swap(&mut self.cmd_sn, &mut o.cmd_sn);
    }

    /// Status of a command without data.
    fn status(&mut self, cdb: &[u8]) -> u8 {
        let (_, v) = self.command(cdb, flag::FINAL, 0, &[]);
        self.send(&v);
        status_of(&self.recv())
    }

    fn status_as(&mut self, o: &mut Other, cdb: &[u8]) -> u8 {
        self.swap(o);
        let s = self.status(cdb);
        self.swap(o);
        s
    }
}

/// SPC-2 reservations end with their I_T nexus (connection loss, logout)
/// and with LUN and target resets; other sessions' do not.
#[test]
fn spc2_reservation_ends_with_the_nexus() {
    let mut r = Rig::new();
    r.login(&[]);
    let mut b = r.other("iqn.1994-05.com.example:other", 40001);
    assert_eq!(r.status(&RESERVE6), 0);
    assert_eq!(r.status_as(&mut b, &RESERVE6), RESERVATION_CONFLICT);
    assert_eq!(r.status_as(&mut b, &[0; 6]), RESERVATION_CONFLICT);
    // The holder's connection goes away.
    r.conn.closed(&mut r.t);
    assert_eq!(r.status_as(&mut b, &RESERVE6), 0);
    // A new session of the first initiator meets B's.
    r.conn = Connection::new(addr("127.0.0.1:3260"), addr("127.0.0.1:40002"), 0);
    r.out.clear();
    r.login(&[]);
    assert_eq!(r.status(&RESERVE6), RESERVATION_CONFLICT);
    // B logs out.
    r.swap(&mut b);
    let mut lo = Bhs::new(op::LOGOUT_REQ);
    lo.set_flags(flag::FINAL)
        .set_itt(r.next_itt())
        .set_u32(at::W24, r.cmd_sn);
    let v = r.pdu(&lo, &[]);
    r.send(&v);
    assert_eq!(r.recv().bhs.opcode(), op::LOGOUT_RSP);
    assert!(r.conn.finished());
    r.conn.closed(&mut r.t);
    r.swap(&mut b);
    assert_eq!(r.status(&RESERVE6), 0);
    // A LUN reset by anyone ends it.
    let mut b = r.other("iqn.1994-05.com.example:other", 40003);
    assert_eq!(r.status_as(&mut b, &RESERVE6), RESERVATION_CONFLICT);
    r.swap(&mut b);
    let (_, v) = r.tmf(5, NO_TAG, 0);
    r.send(&v);
    assert_eq!(r.recv().bhs.opcode(), op::TMF_RSP);
    r.swap(&mut b);
    // The reset's unit attention comes first.
    assert_eq!(r.status(&RESERVE6), 2);
    assert_eq!(r.status(&RESERVE6), 0);
    // So does a target warm reset.
    r.swap(&mut b);
    let (_, v) = r.tmf(6, NO_TAG, 0);
    r.send(&v);
    assert_eq!(r.recv().bhs.opcode(), op::TMF_RSP);
    // The issuer gets the resets' unit attentions as well (its LUN reset's
    // and this one's), then the reservation.
    assert_eq!(r.status(&RESERVE6), 2);
    assert_eq!(r.status(&RESERVE6), 2);
    assert_eq!(r.status(&RESERVE6), 0);
    r.swap(&mut b);
}

/// Persistent registrations outlive the session; only SPC-2 state goes.
#[test]
fn persistent_reservations_outlive_the_session() {
    let mut r = Rig::new();
    r.login(&[]);
    let mut list = 0u64.to_be_bytes().to_vec();
    list.extend(7u64.to_be_bytes());
    list.extend([0u8; 8]);
    let register = [0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0];
    let (_, v) = r.command(&register, flag::FINAL | flag::WRITE, 24, &list);
    r.send(&v);
    assert_eq!(status_of(&r.recv()), 0);
    let mut reserve = list.clone();
    reserve[..8].copy_from_slice(&7u64.to_be_bytes());
    let (_, v) = r.command(
        &[0x5f, 1, 3, 0, 0, 0, 0, 0, 24, 0],
        flag::FINAL | flag::WRITE,
        24,
        &reserve,
    );
    r.send(&v);
    assert_eq!(status_of(&r.recv()), 0);
    let mut b = r.other("iqn.1994-05.com.example:other", 40001);
    let read = read10(0, 1);
    assert_eq!(r.status_as(&mut b, &read), RESERVATION_CONFLICT);
    // Connection loss and a LUN reset leave it in place.
    r.conn.closed(&mut r.t);
    assert_eq!(r.status_as(&mut b, &read), RESERVATION_CONFLICT);
    r.swap(&mut b);
    let (_, v) = r.tmf(5, NO_TAG, 0);
    r.send(&v);
    assert_eq!(r.recv().bhs.opcode(), op::TMF_RSP);
    assert_eq!(r.status(&read), 2, "the reset's unit attention");
    assert_eq!(r.status(&read), RESERVATION_CONFLICT);
    r.swap(&mut b);
    // The same initiator port logs in again: still the holder.
    r.conn = Connection::new(addr("127.0.0.1:3260"), addr("127.0.0.1:40002"), 0);
    r.out.clear();
    r.login(&[]);
    let (_, v) = r.command(&read, flag::FINAL | flag::READ, 512, &[]);
    r.send(&v);
    let p = r.recv();
    assert_eq!(
        (p.bhs.opcode(), p.bhs.flags() & flag::STATUS),
        (op::DATA_IN, flag::STATUS)
    );
}

// Memory bounds against initiators that send commands but not data, or do
// not read what they asked for.

use crate::conn::{MAX_BUFFERED, MAX_DATA_OUT};
use crate::scsi::MAX_TRANSFER_BYTES;

const MIB: usize = 1 << 20;

/// A rig whose LUN is a 16 MiB RAM disk taking 8 MiB per I/O (data-out
/// buffers as large as they get), with room for `depth` commands.
fn big_rig(depth: u32, initial_r2t: bool) -> Rig {
    let mut reg = Registry::new();
    let mut cfg = config(&mut reg);
    let id = reg
        .add(Box::new(MallocBdev::new(
            "Big",
            (16 * MIB / BS) as u64,
            BS as u32,
        )))
        .unwrap();
    cfg.nodes[0].luns[0].bdev = id;
    cfg.nodes[0].luns[0].bdev_name = "Big".into();
    cfg.nodes[0].queue_depth = depth;
    cfg.options.max_queue_depth = depth;
    cfg.options.initial_r2t = initial_r2t;
    cfg.options.max_recv_data_segment_length = MIB as u32;
    cfg.options.first_burst_length = 65536;
    Rig::with(cfg, reg)
}

fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

impl Rig {
    /// Runs the device without taking any output.
    fn device(&mut self) {
        let mut done = Vec::new();
        loop {
            while let Some(io) = self.conn.poll_io() {
                let req = IoRequest {
                    tag: io.tag,
                    op: io.op,
                    fua: io.fua,
                };
                self.reg.submit(io.bdev, req, 0).unwrap();
            }
            done.clear();
            self.reg.poll(0, &mut done);
            if done.is_empty() {
                return;
            }
            for (_, c) in done.drain(..) {
                self.conn
                    .handle_completion(c.tag, c, &mut self.t, &self.reg, self.now);
            }
        }
    }

    /// Answers every R2T with its data until `n` responses came; checks the
    /// data-out held after each PDU against `bound` and that no more than
    /// `granted` commands were soliciting data at once.
    fn complete_writes(&mut self, n: usize, data: &[u8], bound: usize, granted: usize) {
        let seg = MIB;
        let mut soliciting: Vec<u32> = Vec::new();
        let mut responses = 0;
        while responses < n {
            let p = self.recv();
            let itt = p.bhs.itt();
            match p.bhs.opcode() {
                op::R2T => {
                    if !soliciting.contains(&itt) {
                        soliciting.push(itt);
                    }
                    assert!(soliciting.len() <= granted, "R2Ts beyond the budget");
                    let ttt = p.bhs.u32_at(at::W20);
                    let off = p.bhs.u32_at(at::W40) as usize;
                    let len = p.bhs.u32_at(at::W44) as usize;
                    for (sn, o) in (off..off + len).step_by(seg).enumerate() {
                        let end = (o + seg).min(off + len);
                        let v = self.data_out(
                            itt,
                            ttt,
                            sn as u32,
                            o as u32,
                            &data[o..end],
                            end == off + len,
                        );
                        self.send(&v);
                        assert!(self.conn.held_bytes().0 <= bound);
                    }
                }
                op::SCSI_RSP => {
                    assert_eq!(status_of(&p), 0);
                    soliciting.retain(|&x| x != itt);
                    responses += 1;
                }
                o => panic!("unexpected opcode {o:#x}"),
            }
        }
        assert!(self.try_recv().is_none());
        assert_eq!(self.conn.held_bytes().0, 0);
        assert_eq!((self.conn.dout_granted, self.conn.dout_staged), (0, 0));
        assert!(self.conn.grant_queue.is_empty());
    }
}

/// A window of 8 MiB WRITEs with no data: nothing is allocated, R2Ts go
/// out only for what the budget holds, and every write still completes in
/// turn once its data is sent.
#[test]
fn writes_without_data_allocate_nothing() {
    let depth = 64;
    let mut r = big_rig(depth, true);
    r.login(&[
        ("InitialR2T", "Yes"),
        ("ImmediateData", "No"),
        ("MaxBurstLength", "1048576"),
    ]);
    let blocks = (MAX_TRANSFER_BYTES / BS) as u32;
    for _ in 0..depth {
        let cdb = rw16(0x8a, 0, blocks);
        let (_, v) = r.command(
            &cdb,
            flag::FINAL | flag::WRITE,
            MAX_TRANSFER_BYTES as u32,
            &[],
        );
        r.send(&v);
    }
    assert_eq!(r.conn.active_tasks(), depth as usize);
    assert_eq!(r.conn.held_bytes().0, 0);
    assert!(r.conn.dout_granted <= MAX_DATA_OUT);
    let granted = MAX_DATA_OUT / MAX_TRANSFER_BYTES;
    let data = pattern(MAX_TRANSFER_BYTES, 7);
    r.complete_writes(depth as usize, &data, MAX_DATA_OUT, granted);
    let (got, st) = r.read(0, 2048, MIB as u32);
    assert_eq!(status_of(&st), 0);
    assert_eq!(got, data[..MIB]);
}

/// Immediate and unsolicited data of writes waiting for the budget is held
/// as it came, not in the (8 MiB) buffers it would land in.
#[test]
fn unsolicited_data_waits_in_small_buffers() {
    let depth = 32;
    let mut r = big_rig(depth, false);
    r.login(&[
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("FirstBurstLength", "65536"),
        ("MaxBurstLength", "1048576"),
    ]);
    let data = pattern(MAX_TRANSFER_BYTES, 3);
    let blocks = (MAX_TRANSFER_BYTES / BS) as u32;
    let half = 32768;
    for _ in 0..depth {
        let cdb = rw16(0x8a, 0, blocks);
        let (itt, v) = r.command(&cdb, flag::WRITE, MAX_TRANSFER_BYTES as u32, &data[..half]);
        r.send(&v);
        let v = r.data_out(itt, NO_TAG, 0, half as u32, &data[half..2 * half], true);
        r.send(&v);
    }
    let bound = MAX_DATA_OUT + depth as usize * 2 * half;
    let (held, _) = r.conn.held_bytes();
    assert!(held <= bound, "{held} bytes held");
    assert_eq!(r.conn.dout_staged, (depth as usize - 2) * 2 * half);
    r.complete_writes(
        depth as usize,
        &data,
        bound,
        MAX_DATA_OUT / MAX_TRANSFER_BYTES,
    );
    let (got, _) = r.read(0, 2048, MIB as u32);
    assert_eq!(got, data[..MIB]);
}

/// Takes up to `max` bytes of output; counts Data-In per ITT and responses.
fn take_output(r: &mut Rig, max: usize, data_in: &mut Vec<(u32, usize)>, done: &mut usize) {
    let mut left = max;
    while left > 0 {
        let Some(b) = r.conn.poll_output() else { break };
        let n = b.len().min(left);
        r.out.extend_from_slice(&b[..n]);
        r.conn.consume_output(n);
        left -= n;
    }
    // Headers only: the data itself is not looked at.
    while let Some(bhs) = Bhs::from_slice(&r.out) {
        let total = pdu::frame(&bhs, false, false).total;
        if r.out.len() < total {
            break;
        }
        r.out.drain(..total);
        assert_eq!(bhs.opcode(), op::DATA_IN);
        let len = bhs.data_len();
        match data_in.iter_mut().find(|x| x.0 == bhs.itt()) {
            Some(x) => x.1 += len,
            None => data_in.push((bhs.itt(), len)),
        }
        if bhs.flags() & flag::STATUS != 0 {
            assert_eq!(bhs.byte(3), 0);
            *done += 1;
        }
    }
}

/// A window of 8 MiB READs from an initiator that does not read its
/// socket: the read buffers plus queued output stay within MAX_BUFFERED
/// and one command, whether the commands come in order or fill a CmdSN
/// gap last; once output drains they all complete.
#[test]
fn reads_stop_while_output_is_not_taken() {
    let depth = 32u32;
    let bound = MAX_BUFFERED + MAX_TRANSFER_BYTES + 64 * 1024;
    for gap in [false, true] {
        let mut r = big_rig(depth, true);
        r.login(&[
            ("MaxRecvDataSegmentLength", "262144"),
            ("MaxBurstLength", "1048576"),
        ]);
        r.out.clear();
        let blocks = (MAX_TRANSFER_BYTES / BS) as u32;
        let mut cmds: Vec<Vec<u8>> = (0..depth)
            .map(|k| {
                let cdb = rw16(0x88, (k as u64 % 2) * blocks as u64, blocks);
                r.command(
                    &cdb,
                    flag::FINAL | flag::READ,
                    MAX_TRANSFER_BYTES as u32,
                    &[],
                )
                .1
            })
            .collect();
        if gap {
            // CmdSN 2.. first, held; the first one fills the gap.
            cmds.rotate_left(1);
        }
        let bytes = cmds.concat();
        let mut off = 0;
        loop {
            let n = r.conn.handle_input(&bytes[off..], &mut r.t, &r.reg, r.now);
            off += n;
            r.device();
            let held = r.conn.held_bytes().1;
            assert!(held <= bound, "{held} bytes of reads held");
            if n == 0 || off == bytes.len() {
                break;
            }
        }
        assert!(!r.conn.wants_input());
        assert!(r.conn.active_tasks() + r.conn.queued.len() < depth as usize || gap);
        // Output drains slowly; what was held runs as room appears.
        let (mut data_in, mut done) = (Vec::new(), 0);
        let mut turns = 0;
        while done < depth as usize {
            turns += 1;
            assert!(turns < 100_000, "stuck at {done} responses");
            take_output(&mut r, MIB, &mut data_in, &mut done);
            if r.conn.wants_input() && off < bytes.len() {
                off += r.conn.handle_input(&bytes[off..], &mut r.t, &r.reg, r.now);
            }
            if r.conn.poll_timeout().is_some_and(|t| t <= r.now) {
                r.conn.handle_timeout(&mut r.t, &r.reg, r.now);
            }
            r.device();
            let held = r.conn.held_bytes().1;
            assert!(held <= bound, "{held} bytes of reads held");
        }
        assert_eq!(data_in.len(), depth as usize);
        assert!(data_in.iter().all(|x| x.1 == MAX_TRANSFER_BYTES));
        assert_eq!(r.conn.held_bytes(), (0, 0));
    }
}

/// A READ whose EDTL is far below what the CDB reads queues only what is
/// sent, not the read buffers.
#[test]
fn short_edtl_reads_do_not_pin_buffers() {
    let mut r = big_rig(32, true);
    r.login(&[]);
    r.out.clear();
    let blocks = (MAX_TRANSFER_BYTES / BS) as u32;
    for _ in 0..8 {
        let (_, v) = r.command(&rw16(0x88, 0, blocks), flag::FINAL | flag::READ, 512, &[]);
        let n = r.conn.handle_input(&v, &mut r.t, &r.reg, r.now);
        assert_eq!(n, v.len());
        r.device();
    }
    let (_, read) = r.conn.held_bytes();
    assert!(read < 16 * 1024, "{read} bytes held");
    r.pump();
    for _ in 0..8 {
        let p = r.recv();
        assert_eq!(p.data.len(), 512);
        assert_eq!(p.bhs.flags() & flag::OVERFLOW, flag::OVERFLOW);
    }
}

/// A write promised its buffers within the connection's floor fails with
/// BUSY, and nothing else, if they cannot be had when its data comes (the
/// budget cut for fewer connections than it serves, or the heap out of
/// room); the session goes on.
#[test]
fn a_promise_the_budget_cannot_keep_fails_one_write_busy() {
    let budget = ironbay_bdev::Budget::new(4 << 20, 1);
    let mut r = Rig::new();
    r.conn.account = budget.account();
    r.login(&[("InitialR2T", "Yes"), ("ImmediateData", "No")]);
    let (itt, v) = r.command(&write10(0, 8), flag::FINAL | flag::WRITE, 4096, &[]);
    r.send(&v);
    let p = r.recv();
    assert_eq!(p.bhs.opcode(), op::R2T);
    assert_eq!((budget.used(), r.conn.dout_promised), (0, 4096));
    // Two more accounts than the budget was cut for take all of it.
    let mut hogs = Vec::new();
    for _ in 0..2 {
        let a = budget.account();
        while let Ok(b) = a.try_buf(64 << 10) {
            hogs.push(b);
        }
    }
    assert_eq!(budget.used(), budget.limit());
    let v = r.data_out(itt, p.bhs.u32_at(at::W20), 0, 0, &[1; 4096], true);
    r.send(&v);
    let p = r.recv();
    assert_eq!(
        (p.bhs.opcode(), p.bhs.itt(), status_of(&p)),
        (op::SCSI_RSP, itt, crate::scsi::status::BUSY)
    );
    assert_eq!(r.conn.dout_promised, 0);
    drop(hogs);
    assert_eq!(status_of(&r.write(0, &[1; 512])), 0);
    r.conn.closed(&mut r.t);
    assert_eq!(budget.used(), 0);
}

/// Under a small budget the transfer limit shrinks and a connection with
/// reads waiting for memory stops taking input until its output drains.
#[test]
fn reads_wait_for_memory_with_input_stopped() {
    let budget = ironbay_bdev::Budget::new(4 << 20, 4);
    let mut r = big_rig(32, true);
    r.conn.account = budget.account();
    r.login(&[("MaxRecvDataSegmentLength", "262144")]);
    r.out.clear();
    let blocks = (r.conn.command_memory() / 4 * 3 / BS) as u32;
    let bytes: Vec<u8> = (0..8)
        .flat_map(|_| {
            r.command(
                &rw16(0x88, 0, blocks),
                flag::FINAL | flag::READ,
                blocks * 512,
                &[],
            )
            .1
        })
        .collect();
    let n = r.conn.handle_input(&bytes, &mut r.t, &r.reg, r.now);
    r.device();
    assert!(n < bytes.len(), "input stops while a read waits");
    assert!(r.conn.waits_for_memory() && !r.conn.wants_input());
    assert!(budget.used() <= budget.max_hold());
    // Output drains: the waiting read is granted and input resumes.
    let (mut data_in, mut done, mut off) = (Vec::new(), 0, n);
    while done < 8 {
        take_output(&mut r, 64 << 10, &mut data_in, &mut done);
        r.conn.handle_memory(&mut r.t, &r.reg, r.now);
        if r.conn.wants_input() {
            off += r.conn.handle_input(&bytes[off..], &mut r.t, &r.reg, r.now);
        }
        r.device();
        assert!(budget.used() <= budget.max_hold());
    }
    assert!(data_in.iter().all(|x| x.1 == blocks as usize * 512));
    assert_eq!(budget.used(), 0);
}

/// A masked node (targetd's exports): each initiator sees its own LUN map,
/// one without an ACL may not log in or find the node, and one whose ACL
/// has CHAP must answer it.
#[test]
fn masked_node_shows_each_initiator_its_own_luns() {
    const OTHER: &str = "iqn.1994-05.com.example:other";
    const STRANGER: &str = "iqn.1994-05.com.example:stranger";
    let mut reg = Registry::new();
    let mut cfg = config(&mut reg);
    reg.add(Box::new(MallocBdev::new("Malloc1", 2048, 512)))
        .unwrap();
    cfg.set_masked(NODE, true).unwrap();
    assert_eq!(
        cfg.map_lun(NODE, INITIATOR, "Malloc0", Some(0), &reg),
        Ok(0)
    );
    assert_eq!(cfg.map_lun(NODE, OTHER, "Malloc1", None, &reg), Ok(0));
    assert_eq!(cfg.map_lun(NODE, OTHER, "Malloc0", None, &reg), Ok(1));
    // The same volume at the same LUN again is no change; another is refused.
    assert_eq!(cfg.map_lun(NODE, OTHER, "Malloc1", Some(0), &reg), Ok(0));
    assert!(cfg.map_lun(NODE, OTHER, "Malloc0", Some(0), &reg).is_err());
    let mut r = Rig::with(cfg, reg);
    r.login(&[("ImmediateData", "Yes"), ("FirstBurstLength", "65536")]);
    let mut b = r.other(OTHER, 40001);
    let mine = pattern(4 * BS, 7);
    assert_eq!(status_of(&r.write(10, &mine)), 0);
    // The other initiator's LUN 0 is another volume: it does not see it.
    r.swap(&mut b);
    let (got, _) = r.read(10, 4, 4 * BS as u32);
    assert_ne!(got, mine);
    let theirs = pattern(4 * BS, 9);
    assert_eq!(status_of(&r.write(10, &theirs)), 0);
    r.swap(&mut b);
    assert_eq!(r.read(10, 4, 4 * BS as u32).0, mine);
    // REPORT LUNS: one LUN here, two there.
    let report = |r: &mut Rig| {
        let mut cdb = [0u8; 12];
        cdb[0] = 0xa0;
        cdb[9] = 64;
        let (_, v) = r.command(&cdb, flag::FINAL | flag::READ, 64, &[]);
        r.send(&v);
        let p = r.recv();
        u32::from_be_bytes(p.data[..4].try_into().unwrap()) / 8
    };
    assert_eq!(report(&mut r), 1);
    r.swap(&mut b);
    assert_eq!(report(&mut r), 2);
    r.swap(&mut b);
    // No ACL: no login.
    let mut s = Rig::with(r.t.config.clone(), Registry::new());
    let p = s.login_pdu(
        0x81,
        0,
        &kv(&[("InitiatorName", STRANGER), ("TargetName", NODE)]),
    );
    assert_eq!(p.bhs.u16_at(36), 0x0202);
    // CHAP set for an initiator is required, with its own secret.
    let mut cfg = r.t.config.clone();
    cfg.set_acl_chap(
        NODE,
        INITIATOR,
        Some(Secret {
            user: "acl-user".into(),
            secret: "acl-secret-12".into(),
            muser: None,
            msecret: None,
        }),
    )
    .unwrap();
    let mut s = Rig::with(cfg.clone(), Registry::new());
    let p = s.login_pdu(
        0x81,
        0,
        &kv(&[
            ("InitiatorName", INITIATOR),
            ("TargetName", NODE),
            ("AuthMethod", "None"),
        ]),
    );
    assert_ne!(p.bhs.u16_at(36), 0, "AuthMethod=None refused");
    for (secret, want) in [(&b"wrong-secret-1"[..], 0x0201), (b"acl-secret-12", 0)] {
        let mut s = Rig::with(cfg.clone(), Registry::new());
        let (alg, id, c) = chap_start(&mut s, "5").unwrap();
        let resp = chap::encode_hex(&alg.response(id, secret, &c));
        let p = s.login_pdu(0x81, 0, &kv(&[("CHAP_N", "acl-user"), ("CHAP_R", &resp)]));
        assert_eq!(p.bhs.u16_at(36), want);
    }
    // Unmapping the last LUN of an ACL without CHAP removes it.
    let mut cfg = r.t.config.clone();
    let m1 = r.reg.find("Malloc1").unwrap();
    let m0 = r.reg.find("Malloc0").unwrap();
    assert_eq!(cfg.unmap_lun(NODE, OTHER, m1), Ok(vec![0]));
    assert_eq!(cfg.unmap_lun(NODE, OTHER, m0), Ok(vec![1]));
    assert!(cfg.node(NODE).unwrap().acl(OTHER).is_none());
}

/// On a masked node, a change to one initiator's map raises REPORTED LUNS
/// DATA HAS CHANGED for that initiator only.
#[test]
fn masked_map_change_tells_only_that_initiator() {
    const OTHER: &str = "iqn.1994-05.com.example:other";
    let mut reg = Registry::new();
    let mut cfg = config(&mut reg);
    reg.add(Box::new(MallocBdev::new("Malloc1", 64, 512)))
        .unwrap();
    cfg.set_masked(NODE, true).unwrap();
    cfg.map_lun(NODE, INITIATOR, "Malloc0", Some(0), &reg)
        .unwrap();
    cfg.map_lun(NODE, OTHER, "Malloc0", Some(0), &reg).unwrap();
    let mut r = Rig::with(cfg, reg);
    r.login(&[]);
    let mut b = r.other(OTHER, 40001);
    r.tick(1000);
    assert!(r.try_recv().is_none());
    let reg = &r.reg;
    r.t.config
        .map_lun(NODE, INITIATOR, "Malloc1", Some(1), reg)
        .unwrap();
    r.tick(1000);
    let p = r.recv();
    assert_eq!(p.bhs.opcode(), op::ASYNC);
    assert_eq!(
        (p.data[2 + 2], p.data[2 + 12], p.data[2 + 13]),
        (6, 0x3f, 0x0e)
    );
    r.swap(&mut b);
    r.tick(1000);
    assert!(
        r.try_recv().is_none(),
        "the other initiator's map did not change"
    );
    r.swap(&mut b);
}
