//! The SCSI layer against RAM bdevs in a registry: every command is driven
//! through data-out, poll_io, submit, poll and handle_completion, with
//! completions handed back in reverse order.

use super::sense::{asc, key};
use super::*;
use ironbay_bdev::{
    BlockDevice, IoRequest, IoStatus, IoTypes, MallocBdev, NullBdev, Registry, Rng,
};
use std::boxed::Box;
use std::collections::VecDeque;

const TARGET: &str = "iqn.2016-06.io.spdk:disk1";
const PORT: &str = "iqn.1994-05.com.example:a,i,0x800102030405";

/// A RAM bdev that can hide I/O types, claim a write cache and fail I/O.
struct TestBdev {
    inner: MallocBdev,
    info: BdevInfo,
    /// Fail I/O touching this LBA (or flushes, for `u64::MAX`) this way.
    fail: Option<(u64, IoStatus)>,
    done: VecDeque<IoCompletion>,
    fuas: std::rc::Rc<std::cell::RefCell<Vec<(u64, bool)>>>,
}

impl TestBdev {
    fn new(blocks: u64, bs: u32) -> TestBdev {
        let inner = MallocBdev::new("Malloc0", blocks, bs);
        let info = inner.info().clone();
        TestBdev {
            inner,
            info,
            fail: None,
            done: VecDeque::new(),
            fuas: Default::default(),
        }
    }
}

impl BlockDevice for TestBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn submit(&mut self, req: IoRequest, now: u64) -> Result<(), IoRequest> {
        let range = match &req.op {
            IoOp::Read { lba, buf } | IoOp::Write { lba, buf } => {
                Some((*lba, (buf.len() as u64) / self.info.block_size as u64))
            }
            IoOp::Unmap { lba, blocks } | IoOp::WriteZeroes { lba, blocks } => {
                Some((*lba, *blocks as u64))
            }
            IoOp::Flush => None,
        };
        if let IoOp::Write { lba, .. } = &req.op {
            self.fuas.borrow_mut().push((*lba, req.fua));
        }
        if let Some((at, status)) = self.fail {
            let hit = match range {
                Some((lba, n)) => (lba..lba + n).contains(&at),
                None => at == u64::MAX,
            };
            if hit {
                self.done.push_back(IoCompletion {
                    tag: req.tag,
                    status,
                    buf: req.op.into_buf(),
                });
                return Ok(());
            }
        }
        self.inner.submit(req, now)?;
        let mut v = Vec::new();
        self.inner.poll(now, &mut v);
        self.done.extend(v);
        Ok(())
    }

    fn poll(&mut self, _now: u64, out: &mut Vec<IoCompletion>) -> usize {
        let n = self.done.len();
        out.extend(self.done.drain(..));
        n
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn allocation(&self, lba: u64, blocks: u64) -> Option<Vec<(u64, bool)>> {
        self.inner.allocation(lba, blocks)
    }

    fn resize(&mut self, num_blocks: u64) -> Result<(), IoStatus> {
        self.inner.resize(num_blocks)?;
        self.info.num_blocks = num_blocks;
        Ok(())
    }
}

struct Rig {
    reg: Registry,
    id: BdevId,
    shared: LunState,
    nexus: NexusState,
    /// Initiator port and I_T nexus commands come from.
    port: String,
    nexus_id: u64,
    read_only: bool,
    luns: Vec<u64>,
    /// Largest number of I/Os one task had in flight.
    max_in_flight: usize,
    /// Where tasks take their buffers, and what one may hold.
    account: Account,
    memory: usize,
    fuas: std::rc::Rc<std::cell::RefCell<Vec<(u64, bool)>>>,
}

fn rig() -> Rig {
    rig_with(TestBdev::new(2048, 512))
}

fn rig_with(dev: TestBdev) -> Rig {
    let fuas = dev.fuas.clone();
    let mut reg = Registry::new();
    let id = reg.add(Box::new(dev)).unwrap();
    Rig {
        reg,
        id,
        shared: LunState::default(),
        nexus: NexusState::default(),
        port: PORT.into(),
        nexus_id: 1,
        read_only: false,
        luns: vec![0],
        max_in_flight: 0,
        account: Account::default(),
        memory: usize::MAX / 4,
        fuas,
    }
}

fn rig_dev(f: impl FnOnce(&mut TestBdev)) -> Rig {
    let mut d = TestBdev::new(2048, 512);
    f(&mut d);
    rig_with(d)
}

/// Key, ASC, ASCQ of a CHECK CONDITION.
fn sense_of(r: &Response) -> (u8, u8, u8) {
    assert_eq!(r.status, status::CHECK_CONDITION, "{r:?}");
    assert_eq!(r.sense.len(), sense::FIXED_LEN);
    assert_eq!(r.sense[0] & 0x7f, 0x70);
    (r.sense[2], r.sense[12], r.sense[13])
}

fn expect(r: &Response, k: u8, code: (u8, u8)) {
    assert_eq!(sense_of(r), (k, code.0, code.1), "{:02x?}", r.sense);
}

fn illegal(r: &Response, code: (u8, u8)) {
    expect(r, key::ILLEGAL_REQUEST, code);
}

fn good(r: &Response) {
    assert_eq!(r.status, status::GOOD, "sense {:02x?}", r.sense);
    assert!(r.sense.is_empty());
}

fn data(r: &Response) -> Vec<u8> {
    good(r);
    r.data.iter().flat_map(|b| b.as_slice().to_vec()).collect()
}

/// Sense key specific field pointer: (C/D, byte).
fn field(r: &Response) -> (bool, u16) {
    assert_ne!(r.sense[15] & 0x80, 0, "SKSV");
    (
        r.sense[15] & 0x40 != 0,
        u16::from_be_bytes([r.sense[16], r.sense[17]]),
    )
}

fn info_field(r: &Response) -> u32 {
    assert_ne!(r.sense[0] & 0x80, 0, "VALID");
    u32::from_be_bytes([r.sense[3], r.sense[4], r.sense[5], r.sense[6]])
}

impl Rig {
    fn info(&self) -> BdevInfo {
        self.reg.info(self.id).unwrap().clone()
    }

    fn task(&mut self, cdb: &[u8], edtl: usize) -> Task {
        let info = self.info();
        let lun = LunRef {
            id: 0,
            bdev: self.id,
            info: &info,
            read_only: self.read_only,
            target_name: TARGET,
            initiator_port: &self.port,
            nexus_id: self.nexus_id,
            shared: &mut self.shared,
            nexus: &mut self.nexus,
            memory: self.memory,
        };
        let mut t = Task::new(cdb, Some(lun), &self.luns, edtl as u32);
        // The transport's part: every buffer before anything else.
        match t.reserve(&self.account, true) {
            Ok(()) => assert_eq!(t.memory(), (0, 0)),
            Err(Short::Never) => assert!(t.is_done()),
            Err(Short::Wait) => panic!("the rig's account is short"),
        }
        t
    }

    fn cmd(&mut self, cdb: &[u8], out: &[u8]) -> Response {
        self.cmd_edtl(cdb, out, out.len())
    }

    fn cmd_edtl(&mut self, cdb: &[u8], out: &[u8], edtl: usize) -> Response {
        let mut t = self.task(cdb, edtl);
        self.drive(&mut t, out)
    }

    /// Sends data-out in 1000-byte pieces, last first, then runs the I/O.
    fn drive(&mut self, t: &mut Task, out: &[u8]) -> Response {
        let n = t.data_out_len();
        if n > 0 {
            let mut pieces: Vec<(usize, &[u8])> = out[..n.min(out.len())]
                .chunks(1000)
                .enumerate()
                .map(|(i, c)| (i * 1000, c))
                .collect();
            pieces.reverse();
            for (off, c) in pieces {
                assert!(t.write_data_out(off, c));
            }
            t.data_out_done(true);
        }
        assert_eq!(t.data_out_len(), 0);
        if let Some((lba, blocks)) = t.wants_allocation() {
            t.handle_allocation(self.reg.allocation(self.id, lba, blocks));
        }
        self.run_io(t);
        assert!(t.is_done());
        t.take_response()
    }

    fn run_io(&mut self, t: &mut Task) {
        for _ in 0..1_000_000 {
            let mut n = 0;
            while let Some((sub, op, fua)) = t.poll_io() {
                assert!(sub < 1 << 16);
                let req = IoRequest {
                    tag: sub as u64,
                    op,
                    fua,
                };
                self.reg.submit(self.id, req, 0).unwrap();
                n += 1;
            }
            self.max_in_flight = self.max_in_flight.max(n);
            let mut done = Vec::new();
            self.reg.poll(0, &mut done);
            if done.is_empty() {
                return;
            }
            done.reverse();
            for (_, c) in done {
                t.handle_completion(c.tag as u32, c);
            }
        }
        panic!("task never finished");
    }

    fn write(&mut self, lba: u64, bytes: &[u8]) {
        let bs = self.info().block_size as usize;
        let r = self.cmd(&cdb16(0x8a, lba, (bytes.len() / bs) as u32), bytes);
        good(&r);
    }

    fn read(&mut self, lba: u64, blocks: u32) -> Vec<u8> {
        data(&self.cmd(&cdb16(0x88, lba, blocks), &[]))
    }

    fn allocation(&self, lba: u64, blocks: u64) -> Vec<(u64, bool)> {
        self.reg.allocation(self.id, lba, blocks).unwrap()
    }
}

fn cdb10(op: u8, lba: u32, len: u16) -> Vec<u8> {
    let mut c = vec![op, 0];
    c.extend(lba.to_be_bytes());
    c.push(0);
    c.extend(len.to_be_bytes());
    c.push(0);
    c
}

fn cdb12(op: u8, lba: u32, len: u32) -> Vec<u8> {
    let mut c = vec![op, 0];
    c.extend(lba.to_be_bytes());
    c.extend(len.to_be_bytes());
    c.extend([0, 0]);
    c
}

fn cdb16(op: u8, lba: u64, len: u32) -> Vec<u8> {
    let mut c = vec![op, 0];
    c.extend(lba.to_be_bytes());
    c.extend(len.to_be_bytes());
    c.extend([0, 0]);
    c
}

fn with_flags(mut c: Vec<u8>, flags: u8) -> Vec<u8> {
    c[1] = flags;
    c
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn inquiry(evpd: bool, page: u8, alloc: u16) -> Vec<u8> {
    let a = alloc.to_be_bytes();
    vec![0x12, evpd as u8, page, a[0], a[1], 0]
}

fn vpd(r: &mut Rig, page: u8) -> Vec<u8> {
    let d = data(&r.cmd(&inquiry(true, page, 1024), &[]));
    assert_eq!(d[1], page);
    assert_eq!(u16::from_be_bytes([d[2], d[3]]) as usize, d.len() - 4);
    d
}

#[test]
fn standard_inquiry() {
    let mut r = rig();
    let d = data(&r.cmd(&inquiry(false, 0, 255), &[]));
    assert_eq!(d.len(), 96);
    assert_eq!(d[0], 0, "connected direct access block device");
    assert_eq!(d[2], 6, "SPC-4");
    assert_eq!(d[3], 0x12, "HiSup, format 2");
    assert_eq!(d[4] as usize, d.len() - 5);
    assert_eq!(d[5], 0, "no TPGS, no 3PC, no PROTECT");
    assert_eq!(d[7], 0x02, "CmdQue");
    assert_eq!(&d[8..16], b"IRONBAY ");
    assert_eq!(&d[16..32], b"Malloc disk     ");
    assert!(d[32..36].iter().all(|b| (0x20..0x7f).contains(b)));
    let versions: Vec<u16> = d[58..74]
        .chunks(2)
        .map(|v| u16::from_be_bytes([v[0], v[1]]))
        .collect();
    assert!(versions.contains(&0x0460) && versions.contains(&0x04c0));
    // Allocation length cuts, 0 gives nothing, 16-bit lengths work.
    for n in [0usize, 1, 5, 36, 95, 96, 511, 512] {
        let got = data(&r.cmd(&inquiry(false, 0, n as u16), &[]));
        assert_eq!(got, d[..n.min(96)], "{n}");
    }
    // Page code without EVPD; CMDDT.
    let e = r.cmd(&inquiry(false, 0x80, 255), &[]);
    illegal(&e, asc::INVALID_FIELD_IN_CDB);
    assert_eq!(field(&e), (true, 2));
    illegal(
        &r.cmd(&[0x12, 0x02, 0, 0, 255, 0], &[]),
        asc::INVALID_FIELD_IN_CDB,
    );
}

#[test]
fn vpd_pages() {
    let mut r = rig();
    let pages = vpd(&mut r, 0x00);
    assert_eq!(&pages[4..], &[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    for &p in &pages[4..] {
        vpd(&mut r, p);
    }
    let uuid = r.info().uuid.to_string().replace('-', "");
    assert_eq!(&vpd(&mut r, 0x80)[4..], uuid.as_bytes());

    let id = vpd(&mut r, 0x83);
    let mut descs = Vec::new();
    let mut at = 4;
    while at < id.len() {
        let len = id[at + 3] as usize;
        descs.push((id[at], id[at + 1], id[at + 4..at + 4 + len].to_vec()));
        at += 4 + len;
    }
    assert_eq!(at, id.len());
    let naa = descs.iter().find(|d| d.1 & 0x0f == 3).unwrap();
    assert_eq!((naa.0, naa.1 & 0x30, naa.2.len()), (0x01, 0, 16));
    assert_eq!(naa.2[0] >> 4, 6, "NAA IEEE registered extended");
    assert_eq!(&naa.2[8..], &r.info().uuid.0[8..]);
    let t10 = descs.iter().find(|d| d.1 & 0x0f == 1).unwrap();
    assert_eq!(&t10.2[..8], b"IRONBAY ");
    let name = descs.iter().find(|d| d.1 & 0x0f == 8).unwrap();
    assert_eq!(name.1 & 0x30, 0x20, "target device");
    assert_eq!(&name.2[..TARGET.len()], TARGET.as_bytes());
    assert_eq!(name.2.len() % 4, 0);
    assert!(descs.iter().any(|d| d.1 & 0x3f == 0x14), "relative port");

    let bl = vpd(&mut r, 0xb0);
    assert_eq!(bl.len(), 64);
    let be32 = |d: &[u8], at: usize| u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]]);
    assert_eq!(bl[4] & 1, 0, "WSNZ");
    assert_eq!(bl[5], 255, "compare and write length");
    assert_eq!(be32(&bl, 8) as usize, MAX_TRANSFER_BYTES / 512);
    assert_eq!(be32(&bl, 24), MAX_UNMAP_DESCRIPTORS);
    assert_eq!(be32(&bl, 20), u32::MAX);
    assert_eq!(u64::from_be_bytes(bl[36..44].try_into().unwrap()), 0xffff);

    let bc = vpd(&mut r, 0xb1);
    assert_eq!(u16::from_be_bytes([bc[4], bc[5]]), 1, "non-rotating");
    let lbp = vpd(&mut r, 0xb2);
    assert_eq!(lbp[5] & 0xe4, 0xe4, "LBPU LBPWS LBPWS10 LBPRZ");
    assert_eq!(lbp[6] & 7, 2, "thin");

    let e = r.cmd(&inquiry(true, 0x99, 255), &[]);
    illegal(&e, asc::INVALID_FIELD_IN_CDB);
    assert_eq!(data(&r.cmd(&inquiry(true, 0x83, 7), &[])), id[..7]);

    // Without unmap there is no thin provisioning.
    let mut r =
        rig_dev(|d| d.info.io_types = IoTypes::empty().with(IoType::Read).with(IoType::Write));
    let lbp = vpd(&mut r, 0xb2);
    assert_eq!(lbp[5], 0);
    let bl = vpd(&mut r, 0xb0);
    assert_eq!(be32(&bl, 20), 0);
    assert_eq!(be32(&bl, 24), 0);
}

#[test]
fn missing_lun() {
    let cmd = |cdb: &[u8]| {
        let mut t = Task::new(cdb, None, &[0, 1], 0);
        assert!(t.is_done());
        t.reserve(&Account::default(), true).unwrap();
        assert!(t.poll_io().is_none());
        t.take_response()
    };
    let d = data(&cmd(&inquiry(false, 0, 255)));
    assert_eq!(d[0], 0x7f, "qualifier 3, no device type");
    illegal(&cmd(&inquiry(true, 0x80, 255)), asc::LU_NOT_SUPPORTED);
    let d = data(&cmd(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]));
    assert_eq!(&d[..4], &16u32.to_be_bytes());
    let s = data(&cmd(&[0x03, 0, 0, 0, 252, 0]));
    assert_eq!((s[2], s[12], s[13]), (key::ILLEGAL_REQUEST, 0x25, 0));
    illegal(&cmd(&[0x00; 6]), asc::LU_NOT_SUPPORTED);
    illegal(&cmd(&cdb10(0x28, 0, 1)), asc::LU_NOT_SUPPORTED);
    illegal(&cmd(&[]), asc::INVALID_OPCODE);
}

#[test]
fn report_luns() {
    let mut r = rig();
    r.luns = vec![300, 0, 5, 5, 0x5000];
    let rl = |sel: u8, alloc: u32| {
        let mut c = vec![0xa0, 0, sel, 0, 0, 0];
        c.extend(alloc.to_be_bytes());
        c.extend([0, 0]);
        c
    };
    let d = data(&r.cmd(&rl(0, 512), &[]));
    assert_eq!(&d[..4], &32u32.to_be_bytes());
    assert_eq!(&d[8..16], &[0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&d[16..24], &[0, 5, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&d[24..32], &[0x41, 0x2c, 0, 0, 0, 0, 0, 0], "flat space");
    assert_eq!(&d[32..40], &0x5000u64.to_be_bytes());
    assert_eq!(data(&r.cmd(&rl(2, 512), &[])), d);
    assert_eq!(data(&r.cmd(&rl(0, 12), &[])), d[..12]);
    assert_eq!(data(&r.cmd(&rl(1, 512), &[])), [0u8; 8]);
    illegal(&r.cmd(&rl(7, 512), &[]), asc::INVALID_FIELD_IN_CDB);
    for id in [0u64, 1, 255, 256, 300, 0x3fff, 0x0102_0304_0506_0708] {
        assert_eq!(decode_lun(encode_lun(id)), id);
    }
}

fn rsoc(options: u8, rctd: bool, opcode: u8, sa: u16, alloc: u32) -> Vec<u8> {
    let mut c = vec![0xa3, 0x0c, options | if rctd { 0x80 } else { 0 }, opcode];
    c.extend(sa.to_be_bytes());
    c.extend(alloc.to_be_bytes());
    c.extend([0, 0]);
    c
}

#[test]
fn report_supported_opcodes() {
    let mut r = rig();
    let all = data(&r.cmd(&rsoc(0, false, 0, 0, 65535), &[]));
    let n = u32::from_be_bytes(all[..4].try_into().unwrap()) as usize;
    assert_eq!(n, all.len() - 4);
    let descs: Vec<&[u8]> = all[4..].chunks(8).collect();
    assert!(descs.len() > 30);
    for d in &descs {
        let (opcode, sa, servactv) = (d[0], u16::from_be_bytes([d[2], d[3]]), d[5] & 1 != 0);
        assert_eq!(d[5] & 2, 0, "no CTDP without RCTD");
        assert!(servactv || sa == 0);
        let cdb_len = u16::from_be_bytes([d[6], d[7]]) as usize;
        let (good_opt, bad_opt) = if servactv { (2, 1) } else { (1, 2) };
        let one = data(&r.cmd(&rsoc(good_opt, false, opcode, sa, 65535), &[]));
        assert_eq!(one[1] & 7, 3, "supported: {opcode:02x}/{sa:02x}");
        assert_eq!(u16::from_be_bytes([one[2], one[3]]) as usize, cdb_len);
        assert_eq!(one.len(), 4 + cdb_len);
        assert_eq!(one[4], opcode);
        if servactv {
            assert_eq!(one[5] as u16, sa);
        }
        let e = r.cmd(&rsoc(bad_opt, false, opcode, sa, 65535), &[]);
        illegal(&e, asc::INVALID_FIELD_IN_CDB);
        let three = data(&r.cmd(&rsoc(3, false, opcode, sa, 65535), &[]));
        assert_eq!(three, one);
    }
    // Every opcode answered by the table is executed, and vice versa.
    let listed: Vec<u8> = descs.iter().map(|d| d[0]).collect();
    for opcode in [
        0x28u8, 0x2a, 0x2e, 0x2f, 0x89, 0x41, 0x93, 0x42, 0x35, 0x1a, 0x5a,
    ] {
        assert!(listed.contains(&opcode), "{opcode:02x}");
    }
    // READ(10) takes DPO and FUA; VERIFY(10) DPO.
    let rd = data(&r.cmd(&rsoc(1, false, 0x28, 0, 65535), &[]));
    assert_eq!(rd[5] & 0x18, 0x18);
    let vf = data(&r.cmd(&rsoc(1, false, 0x2f, 0, 65535), &[]));
    assert_eq!(vf[5] & 0x10, 0x10);
    // With timeouts descriptors.
    let all = data(&r.cmd(&rsoc(0, true, 0, 0, 65535), &[]));
    let descs: Vec<&[u8]> = all[4..].chunks(20).collect();
    assert!(descs.iter().all(|d| d[5] & 2 != 0 && d[8..10] == [0, 0x0a]));
    let one = data(&r.cmd(&rsoc(1, true, 0x28, 0, 65535), &[]));
    assert_eq!(one[1], 0x83);
    assert_eq!(one.len(), 4 + 10 + 12);
    // Not supported; bad options; truncation.
    assert_eq!(
        data(&r.cmd(&rsoc(1, false, 0xc0, 0, 65535), &[])),
        [0, 1, 0, 0]
    );
    assert_eq!(
        data(&r.cmd(&rsoc(2, false, 0x9e, 0x1f, 65535), &[]))[1] & 7,
        1
    );
    illegal(
        &r.cmd(&rsoc(5, false, 0, 0, 65535), &[]),
        asc::INVALID_FIELD_IN_CDB,
    );
    assert_eq!(data(&r.cmd(&rsoc(0, false, 0, 0, 10), &[])).len(), 10);
    let e = r.cmd(&[0xa3, 0x05, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]);
    illegal(&e, asc::INVALID_FIELD_IN_CDB);
    assert_eq!(field(&e), (true, 1));
    // UNMAP is only offered when the bdev unmaps.
    let mut r =
        rig_dev(|d| d.info.io_types = IoTypes::empty().with(IoType::Read).with(IoType::Write));
    let all = data(&r.cmd(&rsoc(0, false, 0, 0, 65535), &[]));
    assert!(all[4..].chunks(8).all(|d| d[0] != 0x42));
    assert_eq!(data(&r.cmd(&rsoc(1, false, 0x42, 0, 65535), &[]))[1] & 7, 1);
}

#[test]
fn simple_commands() {
    let mut r = rig();
    good(&r.cmd(&[0x00; 6], &[]));
    good(&r.cmd(&[0x1b, 1, 0, 0, 0x01, 0], &[]));
    good(&r.cmd(&[0x1b, 0, 0, 0, 0x02, 0], &[]));
    illegal(&r.cmd(&[0xc5, 0, 0, 0, 0, 0], &[]), asc::INVALID_OPCODE);
    // EXTENDED COPY is not offered.
    illegal(&r.cmd(&cdb16(0x83, 0, 0), &[]), asc::INVALID_OPCODE);
    illegal(
        &r.cmd(
            &[0x9e, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
            &[],
        ),
        asc::INVALID_FIELD_IN_CDB,
    );
    // REQUEST SENSE with nothing pending; descriptor format refused.
    let s = data(&r.cmd(&[0x03, 0, 0, 0, 252, 0], &[]));
    assert_eq!((s[0], s[2], s[12], s[13]), (0x70, 0, 0, 0));
    assert_eq!(s.len(), 18);
    assert_eq!(data(&r.cmd(&[0x03, 0, 0, 0, 8, 0], &[])).len(), 8);
    illegal(
        &r.cmd(&[0x03, 1, 0, 0, 252, 0], &[]),
        asc::INVALID_FIELD_IN_CDB,
    );
    // Short and odd CDBs never panic.
    good(&r.cmd(&[0x00], &[]));
    let d = r.cmd(&[0x28], &[]);
    good(&d);
    assert!(d.data.is_empty());
}

#[test]
fn unit_attentions() {
    let mut r = rig();
    r.nexus.raise(UnitAttention::PowerOnReset);
    r.nexus.raise(UnitAttention::PowerOnReset);
    r.nexus.raise(UnitAttention::ReportedLunsChanged);
    r.nexus.raise(UnitAttention::CapacityChanged);
    assert_eq!(r.nexus.pending().len(), 3);
    // INQUIRY and REPORT LUNS are not held up; REPORT LUNS clears its own.
    good(&r.cmd(&inquiry(false, 0, 96), &[]));
    good(&r.cmd(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]));
    assert_eq!(
        r.nexus.pending(),
        [UnitAttention::PowerOnReset, UnitAttention::CapacityChanged]
    );
    expect(
        &r.cmd(&[0; 6], &[]),
        key::UNIT_ATTENTION,
        asc::POWER_ON_RESET,
    );
    // REQUEST SENSE reports and clears.
    let s = data(&r.cmd(&[0x03, 0, 0, 0, 18, 0], &[]));
    assert_eq!((s[2], s[12], s[13]), (key::UNIT_ATTENTION, 0x2a, 0x09));
    good(&r.cmd(&[0; 6], &[]));
    // Even unknown opcodes report a pending UA first.
    r.nexus.raise(UnitAttention::LunReset);
    expect(
        &r.cmd(&[0xc5; 6], &[]),
        key::UNIT_ATTENTION,
        asc::BUS_DEVICE_RESET,
    );
    illegal(&r.cmd(&[0xc5; 6], &[]), asc::INVALID_OPCODE);
    r.nexus.raise(UnitAttention::LunReset);
    r.nexus.clear();
    good(&r.cmd(&[0; 6], &[]));
    // A resize is noticed.
    r.reg.resize(r.id, 4096).unwrap();
    expect(
        &r.cmd(&[0; 6], &[]),
        key::UNIT_ATTENTION,
        asc::CAPACITY_DATA_CHANGED,
    );
    let cap = data(&r.cmd(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]));
    assert_eq!(&cap[..4], &4095u32.to_be_bytes());
}

#[test]
fn read_capacity() {
    let mut r = rig();
    let d = data(&r.cmd(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]));
    assert_eq!(d, [0, 0, 7, 0xff, 0, 0, 2, 0]);
    illegal(
        &r.cmd(&[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], &[]),
        asc::INVALID_FIELD_IN_CDB,
    );
    let rc16 = |alloc: u32| {
        let mut c = vec![0x9e, 0x10];
        c.extend([0u8; 8]);
        c.extend(alloc.to_be_bytes());
        c.extend([0, 0]);
        c
    };
    let d = data(&r.cmd(&rc16(32), &[]));
    assert_eq!(d.len(), 32);
    assert_eq!(&d[..8], &2047u64.to_be_bytes());
    assert_eq!(&d[8..12], &512u32.to_be_bytes());
    assert_eq!(d[12], 0, "no protection");
    assert_eq!(d[13], 0, "one logical block per physical block");
    assert_eq!(d[14], 0xc0, "LBPME LBPRZ");
    for n in 0..16 {
        assert_eq!(data(&r.cmd(&rc16(n), &[])), d[..n as usize]);
    }
    // Larger than READ CAPACITY(10) can say.
    let mut reg = Registry::new();
    let id = reg
        .add(Box::new(NullBdev::new("Null0", 1 << 33, 4096)))
        .unwrap();
    let info = reg.info(id).unwrap().clone();
    let (mut s, mut n) = (LunState::default(), NexusState::default());
    let lun = LunRef {
        id: 0,
        bdev: id,
        info: &info,
        read_only: false,
        target_name: "",
        initiator_port: PORT,
        nexus_id: 1,
        shared: &mut s,
        nexus: &mut n,
        memory: usize::MAX / 4,
    };
    let mut t = Task::new(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], Some(lun), &[0], 0);
    t.reserve(&Account::default(), true).unwrap();
    assert_eq!(
        data(&t.take_response()),
        [0xff, 0xff, 0xff, 0xff, 0, 0, 0x10, 0]
    );
}

#[test]
fn read_write_all_sizes() {
    let mut r = rig();
    let d = pattern(512 * 8, 1);
    // WRITE(6) / READ(6)
    good(&r.cmd(&[0x0a, 0, 0, 10, 8, 0], &d));
    assert_eq!(data(&r.cmd(&[0x08, 0, 0, 10, 8, 0], &[])), d);
    // 10, 12, 16
    let d2 = pattern(512 * 3, 2);
    good(&r.cmd(&cdb10(0x2a, 100, 3), &d2));
    assert_eq!(data(&r.cmd(&cdb10(0x28, 100, 3), &[])), d2);
    let d3 = pattern(512 * 5, 3);
    good(&r.cmd(&cdb12(0xaa, 200, 5), &d3));
    assert_eq!(data(&r.cmd(&cdb12(0xa8, 200, 5), &[])), d3);
    let d4 = pattern(512 * 2, 4);
    good(&r.cmd(&with_flags(cdb16(0x8a, 2046, 2), 0x18), &d4));
    assert_eq!(
        data(&r.cmd(&with_flags(cdb16(0x88, 2046, 2), 0x18), &[])),
        d4
    );
    // READ(6) of length 0 is 256 blocks.
    assert_eq!(r.cmd(&[0x08, 0, 0, 0, 0, 0], &[]).data_len(), 256 * 512);
    // Zero length elsewhere moves nothing.
    let z = r.cmd(&cdb10(0x28, 0, 0), &[]);
    good(&z);
    assert_eq!(z.data_len(), 0);
    good(&r.cmd(&cdb16(0x8a, 2048, 0), &[]));
    // WRITE(6) LBA is 21 bits.
    good(&r.cmd(&[0x0a, 0xe0, 0, 0, 1, 0], &pattern(512, 9)));
    assert_eq!(r.read(0, 1), pattern(512, 9));
}

#[test]
fn out_of_range_and_bad_fields() {
    let mut r = rig();
    let n = 2048u64;
    for (lba, len) in [
        (n + 1, 0u32),
        (n, 1),
        (n - 1, 2),
        (u32::MAX as u64, 1),
        (0x8000_0000, 0),
    ] {
        illegal(
            &r.cmd(&cdb10(0x28, lba as u32, len as u16), &[]),
            asc::LBA_OUT_OF_RANGE,
        );
        illegal(
            &r.cmd(
                &cdb10(0x2a, lba as u32, len as u16),
                &vec![0; len as usize * 512],
            ),
            asc::LBA_OUT_OF_RANGE,
        );
        illegal(
            &r.cmd(&cdb10(0x2f, lba as u32, len as u16), &[]),
            asc::LBA_OUT_OF_RANGE,
        );
        illegal(
            &r.cmd(&cdb10(0x34, lba as u32, len as u16), &[]),
            asc::LBA_OUT_OF_RANGE,
        );
    }
    for lba in [u64::MAX, 1 << 63, n + 1] {
        illegal(&r.cmd(&cdb16(0x88, lba, 1), &[]), asc::LBA_OUT_OF_RANGE);
        illegal(&r.cmd(&cdb16(0x8a, lba, 0), &[]), asc::LBA_OUT_OF_RANGE);
        illegal(&r.cmd(&cdb16(0x8f, lba, 0), &[]), asc::LBA_OUT_OF_RANGE);
    }
    illegal(
        &r.cmd(&[0x08, 0x1f, 0xff, 0xff, 1, 0], &[]),
        asc::LBA_OUT_OF_RANGE,
    );
    // 0 blocks right at the end is fine.
    good(&r.cmd(&cdb10(0x28, n as u32, 0), &[]));
    good(&r.cmd(&cdb10(0x34, 0, 0), &[]));
    good(&r.cmd(&cdb16(0x90, n - 10, 10), &[]));
    // RDPROTECT / WRPROTECT / VRPROTECT: no protection information.
    for p in 1..8u8 {
        let e = r.cmd(&with_flags(cdb10(0x28, 0, 1), p << 5), &[]);
        illegal(&e, asc::INVALID_FIELD_IN_CDB);
        assert_eq!(field(&e), (true, 1));
        illegal(
            &r.cmd(&with_flags(cdb10(0x2a, 0, 1), p << 5), &[0; 512]),
            asc::INVALID_FIELD_IN_CDB,
        );
        illegal(
            &r.cmd(&with_flags(cdb10(0x2f, 0, 1), p << 5 | 2), &[0; 512]),
            asc::INVALID_FIELD_IN_CDB,
        );
        illegal(
            &r.cmd(&with_flags(cdb10(0x2e, 0, 1), p << 5), &[0; 512]),
            asc::INVALID_FIELD_IN_CDB,
        );
        illegal(
            &r.cmd(&with_flags(cdb10(0x41, 0, 1), p << 5), &[0; 512]),
            asc::INVALID_FIELD_IN_CDB,
        );
    }
    // Larger than the maximum transfer: refused up front.
    let mut big = rig_with(TestBdev::new(1 << 16, 512));
    let max = (MAX_TRANSFER_BYTES / 512) as u32;
    let mut t = big.task(&cdb16(0x88, 0, max + 1), 0);
    assert!(t.is_done());
    let e = t.take_response();
    illegal(&e, asc::INVALID_FIELD_IN_CDB);
    assert_eq!(field(&e), (true, 10));
    let t = big.task(&cdb16(0x8a, 0, max + 1), (max as usize + 1) * 512);
    assert_eq!(t.data_out_len(), 0);
    assert_eq!(
        big.cmd(&cdb16(0x88, 0, max), &[]).data_len(),
        MAX_TRANSFER_BYTES
    );
}

#[test]
fn split_transfers_keep_order() {
    let mut r = rig_dev(|d| d.info.max_transfer = 4096);
    let d = pattern(512 * 300, 7);
    r.write(5, &d);
    assert_eq!(r.read(5, 300), d);
    assert!(r.max_in_flight > 1);
    let resp = r.cmd(&cdb16(0x88, 5, 300), &[]);
    assert_eq!(resp.data.len(), 300usize.div_ceil(8));
    assert!(resp.data.iter().all(|b| b.len() <= 4096));
    // A block at a time.
    let mut r = rig_dev(|d| d.info.max_transfer = 512);
    r.write(0, &d[..512 * 70]);
    assert_eq!(r.read(0, 70), d[..512 * 70]);
    assert!(r.max_in_flight <= MAX_IN_FLIGHT);
}

#[test]
fn four_k_blocks() {
    let mut r = rig_with(TestBdev::new(256, 4096));
    let cap = data(&r.cmd(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]));
    assert_eq!(cap, [0, 0, 0, 255, 0, 0, 0x10, 0]);
    let d = pattern(4096 * 3, 5);
    good(&r.cmd(&cdb10(0x2a, 253, 3), &d));
    assert_eq!(data(&r.cmd(&cdb10(0x28, 253, 3), &[])), d);
    illegal(&r.cmd(&cdb10(0x28, 254, 3), &[]), asc::LBA_OUT_OF_RANGE);
    good(&r.cmd(&cdb10(0x41, 10, 4), &d[..4096]));
    assert_eq!(data(&r.cmd(&cdb10(0x28, 10, 4), &[])), d[..4096].repeat(4));
}

#[test]
fn data_out_length_mismatches() {
    let mut r = rig();
    let a = vec![b'a'; 1024];
    let b = vec![b'b'; 10000];
    r.write(0, &a);
    // Two blocks asked, one sent: only that one is written.
    let mut t = r.task(&cdb10(0x2a, 0, 2), 512);
    assert_eq!(t.data_out_len(), 512);
    assert_eq!(t.cdb_out_len(), 1024);
    good(&r.drive(&mut t, &b[..512]));
    assert_eq!(r.read(0, 2), [&b[..512], &a[512..]].concat());
    // None sent.
    r.write(0, &a);
    good(&r.cmd_edtl(&cdb10(0x2a, 0, 1), &[], 0));
    assert_eq!(r.read(0, 2), a);
    // Not whole blocks: refused, nothing written.
    let mut t = r.task(&cdb10(0x2a, 0, 1), 200);
    assert_eq!(t.data_out_len(), 0);
    illegal(&r.drive(&mut t, &[]), asc::INVALID_FIELD_IN_IU);
    assert_eq!(r.read(0, 2), a);
    // More sent than asked: the CDB's amount is used.
    let mut t = r.task(&cdb10(0x2a, 0, 1), 10000);
    assert_eq!((t.data_out_len(), t.cdb_out_len()), (512, 512));
    good(&r.drive(&mut t, &b));
    assert_eq!(r.read(0, 2), [&b[..512], &a[512..]].concat());
    // WRITE AND VERIFY: the same.
    r.write(0, &a);
    good(&r.cmd_edtl(&with_flags(cdb10(0x2e, 0, 2), 2), &b[..512], 512));
    assert_eq!(r.read(0, 2), [&b[..512], &a[512..]].concat());
    good(&r.cmd_edtl(&with_flags(cdb10(0x2e, 0, 1), 2), &[], 0));
    // Data-out beyond the length is refused; a transport that gives up
    // ends the command.
    let mut t = r.task(&cdb10(0x2a, 0, 2), 1024);
    assert!(!t.write_data_out(1000, &[0; 25]));
    assert!(!t.write_data_out(usize::MAX, &[0; 2]));
    assert!(t.write_data_out(1000, &[0; 24]));
    t.data_out_done(false);
    assert!(t.is_done());
    expect(
        &t.take_response(),
        key::ABORTED_COMMAND,
        asc::DATA_PHASE_ERROR,
    );
    assert!(t.take_response().data.is_empty(), "second take is empty");
    assert_eq!(r.read(0, 2), [&b[..512], &a[512..]].concat());
    // Data-out arriving for a command that takes none.
    let mut t = r.task(&cdb10(0x28, 0, 1), 512);
    assert!(!t.write_data_out(0, &[1; 512]));
}

#[test]
fn verify() {
    let mut r = rig_dev(|d| d.info.max_transfer = 2048);
    let d = pattern(512 * 20, 3);
    r.write(40, &d);
    good(&r.cmd(&cdb10(0x2f, 40, 20), &[]));
    good(&r.cmd(&with_flags(cdb10(0x2f, 40, 20), 0x02), &d));
    good(&r.cmd(&with_flags(cdb12(0xaf, 40, 20), 0x12), &d));
    good(&r.cmd(&with_flags(cdb16(0x8f, 40, 20), 0x02), &d));
    for off in [0usize, 27, 511, 512, 2047, 2048, 512 * 20 - 1] {
        let mut bad = d.clone();
        bad[off] ^= b'X';
        bad[512 * 20 - 1] ^= 1;
        let e = r.cmd(&with_flags(cdb10(0x2f, 40, 20), 0x02), &bad);
        expect(&e, key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY);
        assert_eq!(info_field(&e) as usize, off);
    }
    // Without BYTCHK the data is not looked at.
    good(&r.cmd(&cdb10(0x2f, 40, 20), &[0; 512 * 20]));
    // BYTCHK 11b: one block against each.
    r.write(100, &[7u8; 512 * 4]);
    good(&r.cmd(&with_flags(cdb10(0x2f, 100, 4), 0x06), &[7; 512]));
    let mut one = vec![7u8; 512];
    one[9] = 8;
    let e = r.cmd(&with_flags(cdb10(0x2f, 100, 4), 0x06), &one);
    assert_eq!(info_field(&e), 9);
    illegal(
        &r.cmd(&with_flags(cdb10(0x2f, 0, 1), 0x04), &[0; 512]),
        asc::INVALID_FIELD_IN_CDB,
    );
    // Zero blocks with BYTCHK.
    good(&r.cmd(&with_flags(cdb10(0x2f, 0, 0), 0x02), &[]));
}

#[test]
fn write_and_verify() {
    let mut r = rig();
    let d = pattern(512 * 4, 8);
    for (opcode, cdb) in [
        (0x2e, cdb10(0x2e, 7, 4)),
        (0xae, cdb12(0xae, 7, 4)),
        (0x8e, cdb16(0x8e, 7, 4)),
    ] {
        good(&r.cmd(&with_flags(cdb.clone(), 0x02), &d));
        assert_eq!(r.read(7, 4), d, "{opcode:02x}");
        good(&r.cmd(&cdb, &d));
        illegal(
            &r.cmd(&with_flags(cdb, 0x04), &d),
            asc::INVALID_FIELD_IN_CDB,
        );
    }
    // Writes of WRITE AND VERIFY go to the medium.
    assert!(r.fuas.borrow().iter().all(|&(_, fua)| fua));
}

fn caw(lba: u64, blocks: u8, flags: u8) -> Vec<u8> {
    let mut c = vec![0x89, flags];
    c.extend(lba.to_be_bytes());
    c.extend([0, 0, 0, blocks, 0, 0]);
    c
}

#[test]
fn compare_and_write() {
    let mut r = rig_dev(|d| d.info.max_transfer = 1024);
    let a = vec![b'A'; 512 * 5];
    let b = vec![b'B'; 512 * 5];
    r.write(10, &a);
    good(&r.cmd(&caw(10, 5, 0x18), &[a.clone(), b.clone()].concat()));
    assert_eq!(r.read(10, 5), b);
    // Miscompare: nothing written, offset of the first difference.
    for off in [0usize, 100, 511, 512, 2000, 512 * 5 - 27] {
        let mut cmp = b.clone();
        cmp[off] = b'C';
        cmp[512 * 5 - 1] = b'D';
        let e = r.cmd(&caw(10, 5, 0), &[cmp, a.clone()].concat());
        expect(&e, key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY);
        assert_eq!(info_field(&e) as usize, off);
        assert_eq!(r.read(10, 5), b);
    }
    // Zero blocks, too many blocks, wrong data-out size.
    good(&r.cmd(&caw(10, 0, 0), &[]));
    let mut big = rig_with(TestBdev::new(4096, 512));
    big.write(0, &vec![1; 512 * 255]);
    good(&big.cmd(
        &caw(0, 255, 0),
        &[vec![1; 512 * 255], vec![2; 512 * 255]].concat(),
    ));
    let mut t = r.task(&caw(10, 1, 0), 2048);
    assert_eq!(t.data_out_len(), 0);
    let e = t.take_response();
    illegal(&e, asc::INVALID_FIELD_IN_CDB);
    assert_eq!(field(&e), (true, 13));
    illegal(
        &r.cmd_edtl(&caw(10, 3, 0), &[0; 2048], 2048),
        asc::INVALID_FIELD_IN_CDB,
    );
    // 256 blocks do not fit the one-byte field: 0 blocks with data.
    illegal(
        &r.cmd(&caw(10, 0, 0), &[0; 1024]),
        asc::INVALID_FIELD_IN_CDB,
    );
    illegal(&r.cmd(&caw(2047, 2, 0), &[0; 2048]), asc::LBA_OUT_OF_RANGE);
    illegal(
        &r.cmd(&caw(0, 1, 0x20), &[0; 1024]),
        asc::INVALID_FIELD_IN_CDB,
    );
}

#[test]
fn compare_and_write_is_serialised() {
    let mut r = rig();
    r.write(0, &[0; 512]);
    let one = [vec![0u8; 512], vec![1u8; 512]].concat();
    let two = [vec![1u8; 512], vec![2u8; 512]].concat();
    let mut t1 = r.task(&caw(0, 1, 0), 1024);
    let mut t2 = r.task(&caw(0, 1, 0), 1024);
    assert!(t1.write_data_out(0, &one));
    t1.data_out_done(true);
    assert!(t2.write_data_out(0, &two));
    t2.data_out_done(true);
    assert!(!t1.is_blocked());
    assert!(t2.is_blocked(), "second waits for the first");
    assert!(t2.poll_io().is_none());
    good(&r.drive(&mut t1, &[]));
    // Once the first is done the second runs, and sees its write.
    good(&r.drive(&mut t2, &[]));
    assert_eq!(r.read(0, 1), vec![2u8; 512]);
    // A dropped holder does not keep the lock.
    let mut t4 = r.task(&caw(0, 1, 0), 1024);
    assert!(t4.write_data_out(0, &two));
    t4.data_out_done(true);
    assert!(!t4.is_blocked());
    drop(t4);
    let mut t5 = r.task(&caw(0, 1, 0), 1024);
    let e = r.drive(&mut t5, &two);
    expect(&e, key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY);
    let mut t6 = r.task(&caw(0, 1, 0), 1024);
    good(&r.drive(&mut t6, &[vec![2u8; 512], vec![3u8; 512]].concat()));
}

fn ws10(lba: u32, blocks: u16, flags: u8) -> Vec<u8> {
    with_flags(cdb10(0x41, lba, blocks), flags)
}

fn ws16(lba: u64, blocks: u32, flags: u8) -> Vec<u8> {
    with_flags(cdb16(0x93, lba, blocks), flags)
}

#[test]
fn write_same() {
    let mut r = rig_dev(|d| d.info.max_transfer = 4096);
    let blk = pattern(512, 6);
    good(&r.cmd(&ws10(3, 100, 0), &blk));
    good(&r.cmd(&ws16(2040, 8, 0), &blk));
    assert!(r.max_in_flight <= FILL_IN_FLIGHT);
    assert_eq!(r.read(3, 100), blk.repeat(100));
    assert_eq!(r.read(2040, 8), blk.repeat(8));
    // UNMAP deallocates, whatever the block holds.
    r.write(0, &[0xff; 512 * 16]);
    good(&r.cmd(&ws10(0, 16, 0x08), &[0; 512]));
    assert_eq!(r.allocation(0, 16), [(16, false)]);
    assert_eq!(r.read(0, 16), vec![0; 512 * 16]);
    r.write(0, &[0xff; 512 * 4]);
    good(&r.cmd(&ws16(0, 4, 0x08), &blk));
    assert_eq!(r.allocation(0, 4), [(4, false)]);
    assert_eq!(r.read(0, 4), vec![0; 2048]);
    // Without UNMAP the data is written (bit 3 is not FUA here).
    r.fuas.borrow_mut().clear();
    good(&r.cmd(&ws16(0, 4, 0), &blk));
    assert_eq!(r.read(0, 4), blk.repeat(4));
    assert_eq!(*r.fuas.borrow(), [(0, false)]);
    // NDOB: zeroes without data-out.
    let mut t = r.task(&ws16(0, 4, 0x01), 0);
    assert_eq!((t.data_out_len(), t.cdb_out_len()), (0, 0));
    good(&r.drive(&mut t, &[]));
    assert_eq!(r.read(0, 4), vec![0; 2048]);
    // Zero blocks: to the end of the LUN.
    good(&r.cmd(&ws16(2000, 0, 0), &blk));
    assert_eq!(r.read(2000, 48), blk.repeat(48));
    good(&r.cmd(&ws10(2048, 0, 0), &blk));
    illegal(&r.cmd(&ws10(2049, 0, 0), &blk), asc::LBA_OUT_OF_RANGE);
    illegal(&r.cmd(&ws16(u64::MAX, 0, 0), &blk), asc::LBA_OUT_OF_RANGE);
    illegal(&r.cmd(&ws16(2047, 2, 0), &blk), asc::LBA_OUT_OF_RANGE);
    // ANCHOR, PBDATA/LBDATA.
    illegal(&r.cmd(&ws10(0, 1, 0x10), &blk), asc::INVALID_FIELD_IN_CDB);
    illegal(&r.cmd(&ws16(0, 1, 0x18), &blk), asc::INVALID_FIELD_IN_CDB);
    illegal(&r.cmd(&ws16(0, 1, 0x04), &blk), asc::INVALID_FIELD_IN_CDB);
    // Data-out must be exactly one block.
    illegal(
        &r.cmd(&ws10(0, 1, 0x08), &blk[..256]),
        asc::INVALID_FIELD_IN_IU,
    );
    illegal(
        &r.cmd(&ws10(0, 1, 0x08), &[0; 1024]),
        asc::INVALID_FIELD_IN_IU,
    );
    // Beyond MAXIMUM WRITE SAME LENGTH.
    let mut big = rig_with(TestBdev::new(0x20000, 512));
    let e = big.cmd(&ws16(0, 0x10000, 0x08), &[0; 512]);
    illegal(&e, asc::INVALID_FIELD_IN_CDB);
    assert_eq!(field(&e), (true, 10));
    illegal(
        &big.cmd(&ws16(0, 0, 0), &[0; 512]),
        asc::INVALID_FIELD_IN_CDB,
    );
    good(&big.cmd(&ws16(0x20000 - 0xffff, 0, 0x08), &[0; 512]));
    good(&big.cmd(&ws16(0, 0xffff, 0), &blk));
    assert_eq!(data(&big.cmd(&cdb16(0x88, 0xfffe, 1), &[])), blk);
}

fn unmap_cdb(len: u16, anchor: bool) -> Vec<u8> {
    let mut c = cdb10(0x42, 0, len);
    c[1] = anchor as u8;
    c
}

fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let mut d = ((6 + 16 * ranges.len()) as u16).to_be_bytes().to_vec();
    d.extend(((16 * ranges.len()) as u16).to_be_bytes());
    d.extend([0; 4]);
    for &(lba, n) in ranges {
        d.extend(lba.to_be_bytes());
        d.extend(n.to_be_bytes());
        d.extend([0; 4]);
    }
    d
}

#[test]
fn unmap() {
    let mut r = rig_dev(|d| d.info.max_unmap_blocks = 3);
    r.write(0, &[0xaa; 512 * 64]);
    let l = unmap_list(&[(0, 10), (20, 1), (30, 0), (2048, 0)]);
    good(&r.cmd(&unmap_cdb(l.len() as u16, false), &l));
    assert_eq!(
        r.allocation(0, 32),
        [(10, false), (10, true), (1, false), (11, true)]
    );
    assert_eq!(r.read(0, 10), vec![0; 5120]);
    assert_eq!(r.read(10, 1), vec![0xaa; 512]);
    // Empty lists and zero lengths.
    good(&r.cmd(&unmap_cdb(0, false), &[]));
    let empty = unmap_list(&[]);
    good(&r.cmd(&unmap_cdb(8, false), &empty));
    illegal(
        &r.cmd(&unmap_cdb(7, false), &empty[..7]),
        asc::PARAMETER_LIST_LENGTH_ERROR,
    );
    // Descriptor length beyond the list.
    let mut bad = unmap_list(&[(0, 1)]);
    bad[3] = 32;
    illegal(
        &r.cmd(&unmap_cdb(bad.len() as u16, false), &bad),
        asc::PARAMETER_LIST_LENGTH_ERROR,
    );
    // The initiator sends less than the CDB says.
    let l = unmap_list(&[(0, 1), (1, 1)]);
    illegal(
        &r.cmd_edtl(&unmap_cdb(l.len() as u16, false), &l[..20], 20),
        asc::PARAMETER_LIST_LENGTH_ERROR,
    );
    // Out of range: nothing unmapped.
    r.write(40, &[0xbb; 512]);
    let l = unmap_list(&[(40, 1), (2047, 2)]);
    illegal(
        &r.cmd(&unmap_cdb(l.len() as u16, false), &l),
        asc::LBA_OUT_OF_RANGE,
    );
    assert_eq!(r.read(40, 1), vec![0xbb; 512]);
    let l = unmap_list(&[(u64::MAX, 1)]);
    illegal(
        &r.cmd(&unmap_cdb(l.len() as u16, false), &l),
        asc::LBA_OUT_OF_RANGE,
    );
    // Too many descriptors.
    let many: Vec<(u64, u32)> = (0..=MAX_UNMAP_DESCRIPTORS as u64).map(|i| (i, 1)).collect();
    let l = unmap_list(&many);
    illegal(
        &r.cmd(&unmap_cdb(l.len() as u16, false), &l),
        asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    let l = unmap_list(&many[..MAX_UNMAP_DESCRIPTORS as usize]);
    good(&r.cmd(&unmap_cdb(l.len() as u16, false), &l));
    // ANCHOR.
    illegal(
        &r.cmd(&unmap_cdb(8, true), &empty),
        asc::INVALID_FIELD_IN_CDB,
    );
    // A bdev that cannot unmap has no UNMAP.
    let mut r =
        rig_dev(|d| d.info.io_types = IoTypes::empty().with(IoType::Read).with(IoType::Write));
    illegal(&r.cmd(&unmap_cdb(8, false), &empty), asc::INVALID_OPCODE);
    let rc = data(&r.cmd(
        &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &[],
    ));
    assert_eq!(rc[14], 0, "no LBPME");
    // WRITE SAME with UNMAP then writes zeroes.
    r.write(0, &[1; 1024]);
    good(&r.cmd(&ws10(0, 2, 0x08), &[0; 512]));
    assert_eq!(r.read(0, 2), vec![0; 1024]);
}

#[test]
fn synchronize_cache() {
    let mut r = rig();
    good(&r.cmd(&cdb10(0x35, 0, 0), &[]));
    good(&r.cmd(&cdb16(0x91, 100, 1948), &[]));
    good(&r.cmd(&cdb10(0x35, 2048, 0), &[]));
    illegal(&r.cmd(&cdb10(0x35, 2049, 0), &[]), asc::LBA_OUT_OF_RANGE);
    illegal(&r.cmd(&cdb16(0x91, 2000, 49), &[]), asc::LBA_OUT_OF_RANGE);
    let mut r = rig_dev(|d| d.fail = Some((u64::MAX, IoStatus::DeviceError(1))));
    expect(
        &r.cmd(&cdb10(0x35, 0, 0), &[]),
        key::MEDIUM_ERROR,
        asc::WRITE_ERROR,
    );
    let mut r =
        rig_dev(|d| d.info.io_types = IoTypes::empty().with(IoType::Read).with(IoType::Write));
    good(&r.cmd(&cdb10(0x35, 0, 0), &[]));
}

fn mode_sense6(dbd: bool, pc: u8, page: u8, sub: u8, alloc: u8) -> Vec<u8> {
    vec![0x1a, if dbd { 8 } else { 0 }, pc << 6 | page, sub, alloc, 0]
}

fn mode_sense10(flags: u8, pc: u8, page: u8, alloc: u16) -> Vec<u8> {
    let a = alloc.to_be_bytes();
    vec![0x5a, flags, pc << 6 | page, 0, 0, 0, 0, a[0], a[1], 0]
}

/// Pages after the header and block descriptors: (code, bytes).
fn pages(d: &[u8], ten: bool) -> Vec<(u8, Vec<u8>)> {
    let (hdr, bdl) = if ten {
        (8, u16::from_be_bytes([d[6], d[7]]) as usize)
    } else {
        (4, d[3] as usize)
    };
    let mut out = Vec::new();
    let mut at = hdr + bdl;
    while at < d.len() {
        let len = d[at + 1] as usize;
        out.push((d[at] & 0x3f, d[at..at + 2 + len].to_vec()));
        at += 2 + len;
    }
    assert_eq!(at, d.len());
    out
}

#[test]
fn mode_sense() {
    let mut r = rig();
    let d = data(&r.cmd(&mode_sense6(false, 0, 0x3f, 0, 255), &[]));
    assert_eq!(d[0] as usize, d.len() - 1);
    assert_eq!(d[2], 0x10, "DPOFUA, not write protected");
    assert_eq!(d[3], 8);
    assert_eq!(&d[4..8], &2048u32.to_be_bytes());
    assert_eq!(&d[9..12], &[0, 2, 0]);
    let p = pages(&d, false);
    assert_eq!(
        p.iter().map(|p| p.0).collect::<Vec<_>>(),
        [0x08, 0x0a, 0x1c]
    );
    assert_eq!(p[0].1.len(), 20);
    assert_eq!(p[0].1[2] & 0x04, 0, "no write cache on a RAM disk");
    assert_eq!(p[1].1.len(), 12);
    assert_eq!(p[1].1[2] & 0x04, 0, "fixed format sense");
    // One page, without block descriptors; the same page as in 3Fh.
    let c = data(&r.cmd(&mode_sense6(true, 0, 0x0a, 0, 255), &[]));
    assert_eq!(c[3], 0);
    assert_eq!(pages(&c, false), [p[1].clone()]);
    // 255 subpages with all pages.
    assert_eq!(
        data(&r.cmd(&mode_sense6(false, 0, 0x3f, 0xff, 255), &[])),
        d
    );
    illegal(
        &r.cmd(&mode_sense6(false, 0, 0x08, 1, 255), &[]),
        asc::INVALID_FIELD_IN_CDB,
    );
    illegal(
        &r.cmd(&mode_sense6(false, 0, 0x19, 0, 255), &[]),
        asc::INVALID_FIELD_IN_CDB,
    );
    illegal(
        &r.cmd(&mode_sense6(false, 3, 0x08, 0, 255), &[]),
        asc::SAVING_PARAMETERS_NOT_SUPPORTED,
    );
    // Changeable: nothing on this bdev.
    let ch = data(&r.cmd(&mode_sense6(true, 1, 0x3f, 0, 255), &[]));
    assert!(
        pages(&ch, false)
            .iter()
            .all(|(_, p)| p[2..].iter().all(|&b| b == 0))
    );
    good(&r.cmd(&mode_sense6(true, 2, 0x3f, 0, 255), &[]));
    // Truncation: header only, or nothing.
    assert_eq!(
        data(&r.cmd(&mode_sense6(false, 0, 0x3f, 0, 4), &[])),
        d[..4]
    );
    assert!(data(&r.cmd(&mode_sense6(false, 0, 0x3f, 0, 0), &[])).is_empty());
    // MODE SENSE(10), short and long LBA block descriptors.
    let d10 = data(&r.cmd(&mode_sense10(0, 0, 0x3f, 1024), &[]));
    assert_eq!(u16::from_be_bytes([d10[0], d10[1]]) as usize, d10.len() - 2);
    assert_eq!((d10[3], d10[4], d10[7]), (0x10, 0, 8));
    assert_eq!(pages(&d10, true), p);
    let l = data(&r.cmd(&mode_sense10(0x10, 0, 0x08, 1024), &[]));
    assert_eq!((l[4], l[7]), (1, 16));
    assert_eq!(&l[8..16], &2048u64.to_be_bytes());
    assert_eq!(&l[20..24], &512u32.to_be_bytes());
    let n = data(&r.cmd(&mode_sense10(0x18, 0, 0x08, 1024), &[]));
    assert_eq!((n[4], n[7]), (0, 0));
    // Read-only LUNs say so.
    r.read_only = true;
    let d = data(&r.cmd(&mode_sense6(true, 0, 0x3f, 0, 255), &[]));
    assert_eq!(d[2] & 0x80, 0x80);
}

fn mode_select6(len: u8, sp: bool) -> Vec<u8> {
    vec![0x15, 0x10 | sp as u8, 0, 0, len, 0]
}

#[test]
fn mode_select_write_cache() {
    let mut r = rig_dev(|d| d.info.write_cache = true);
    let cache_page = |r: &mut Rig, pc: u8| {
        let d = data(&r.cmd(&mode_sense6(true, pc, 0x08, 0, 255), &[]));
        pages(&d, false)[0].1.clone()
    };
    assert_eq!(cache_page(&mut r, 0)[2] & 4, 4, "WCE on");
    assert_eq!(cache_page(&mut r, 1)[2], 4, "WCE changeable");
    good(&r.cmd(&cdb10(0x2a, 0, 1), &[0; 512]));
    assert_eq!(r.fuas.borrow().last(), Some(&(0, false)));
    // Another nexus, to see the unit attention.
    let mut other = NexusState::default();
    let info = r.info();
    let peek = |r: &mut Rig, n: &mut NexusState| {
        let lun = LunRef {
            id: 0,
            bdev: r.id,
            info: &info,
            read_only: false,
            target_name: TARGET,
            initiator_port: "iqn.1994-05.com.example:b,i,0x800102030405",
            nexus_id: 2,
            shared: &mut r.shared,
            nexus: n,
            memory: usize::MAX / 4,
        };
        Task::new(&[0; 6], Some(lun), &[0], 0).take_response()
    };
    good(&peek(&mut r, &mut other));
    // Turn the cache off.
    let mut page = cache_page(&mut r, 0);
    page[2] &= !4;
    let mut list = vec![0, 0, 0, 0];
    list.extend(&page);
    good(&r.cmd(&mode_select6(list.len() as u8, false), &list));
    assert_eq!(cache_page(&mut r, 0)[2] & 4, 0);
    assert!(!r.shared.write_cache_enabled(&r.info()));
    good(&r.cmd(&[0; 6], &[]));
    expect(
        &peek(&mut r, &mut other),
        key::UNIT_ATTENTION,
        asc::MODE_PARAMETERS_CHANGED,
    );
    good(&peek(&mut r, &mut other));
    // Now every write is FUA.
    good(&r.cmd(&cdb10(0x2a, 0, 1), &[0; 512]));
    assert_eq!(r.fuas.borrow().last(), Some(&(0, true)));
    // The same values again change nothing; the MODE SELECT(10) form.
    let mut list10 = vec![0; 8];
    list10.extend(&page);
    let mut c = cdb10(0x55, 0, list10.len() as u16);
    c[1] = 0x10;
    good(&r.cmd(&c, &list10));
    good(&peek(&mut r, &mut other));
    // Changing what cannot change; saving; truncated lists.
    let mut bad = list.clone();
    bad[4 + 2] |= 1; // RCD
    let e = r.cmd(&mode_select6(bad.len() as u8, false), &bad);
    illegal(&e, asc::INVALID_FIELD_IN_PARAMETER_LIST);
    assert_eq!(field(&e), (false, 6));
    illegal(
        &r.cmd(&mode_select6(list.len() as u8, true), &list),
        asc::INVALID_FIELD_IN_CDB,
    );
    illegal(
        &r.cmd(&mode_select6(10, false), &list[..10]),
        asc::PARAMETER_LIST_LENGTH_ERROR,
    );
    let mut unknown = list.clone();
    unknown[4] = 0x19;
    illegal(
        &r.cmd(&mode_select6(unknown.len() as u8, false), &unknown),
        asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    good(&r.cmd(&mode_select6(0, false), &[]));
    // A block descriptor restating the block size is fine, another is not.
    let mut bd = vec![0, 0, 0, 8, 0, 0, 8, 0, 0, 0, 2, 0];
    good(&r.cmd(&mode_select6(bd.len() as u8, false), &bd));
    bd[10] = 4;
    illegal(
        &r.cmd(&mode_select6(bd.len() as u8, false), &bd),
        asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    // Control page round trip (what libiscsi's SWP check sends).
    let ctl = data(&r.cmd(&mode_sense6(true, 0, 0x0a, 0, 255), &[]));
    let mut list = vec![0, 0, 0, 0];
    list.extend(&pages(&ctl, false)[0].1);
    good(&r.cmd(&mode_select6(list.len() as u8, false), &list));
    list[4 + 4] |= 0x08; // SWP
    illegal(
        &r.cmd(&mode_select6(list.len() as u8, false), &list),
        asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
}

#[test]
fn read_only_lun() {
    let mut r = rig();
    r.write(0, &[5; 512]);
    r.read_only = true;
    let ro = |r: &Response| expect(r, key::DATA_PROTECT, asc::WRITE_PROTECTED);
    ro(&r.cmd(&cdb10(0x2a, 0, 1), &[0; 512]));
    ro(&r.cmd(&[0x0a, 0, 0, 0, 1, 0], &[0; 512]));
    ro(&r.cmd(&cdb12(0xaa, 0, 1), &[0; 512]));
    ro(&r.cmd(&cdb16(0x8a, 0, 1), &[0; 512]));
    ro(&r.cmd(&with_flags(cdb10(0x2e, 0, 1), 2), &[0; 512]));
    ro(&r.cmd(&cdb16(0x8e, 0, 1), &[0; 512]));
    ro(&r.cmd(&ws10(0, 1, 0), &[0; 512]));
    ro(&r.cmd(&ws10(0, 1, 0x08), &[]));
    ro(&r.cmd(&ws16(0, 1, 0x08), &[]));
    ro(&r.cmd(&caw(0, 1, 0), &[0; 1024]));
    let l = unmap_list(&[(0, 1)]);
    ro(&r.cmd(&unmap_cdb(l.len() as u16, false), &l));
    assert_eq!(r.read(0, 1), vec![5; 512]);
    good(&r.cmd(&with_flags(cdb10(0x2f, 0, 1), 2), &[5; 512]));
    good(&r.cmd(&cdb10(0x35, 0, 0), &[]));
    // A read-only bdev is the same.
    let mut r = rig_dev(|d| d.info.read_only = true);
    ro(&r.cmd(&cdb10(0x2a, 0, 1), &[0; 512]));
}

fn lba_status(lba: u64, alloc: u32) -> Vec<u8> {
    let mut c = vec![0x9e, 0x12];
    c.extend(lba.to_be_bytes());
    c.extend(alloc.to_be_bytes());
    c.extend([0, 0]);
    c
}

/// (lba, blocks, status) descriptors.
fn descriptors(d: &[u8]) -> Vec<(u64, u32, u8)> {
    assert_eq!(
        u32::from_be_bytes(d[..4].try_into().unwrap()) as usize,
        d.len() - 4
    );
    d[8..]
        .chunks(16)
        .map(|c| {
            (
                u64::from_be_bytes(c[..8].try_into().unwrap()),
                u32::from_be_bytes(c[8..12].try_into().unwrap()),
                c[12],
            )
        })
        .collect()
}

#[test]
fn get_lba_status() {
    let mut r = rig();
    r.write(0, &[1; 512 * 16]);
    let l = unmap_list(&[(4, 4)]);
    good(&r.cmd(&unmap_cdb(l.len() as u16, false), &l));
    let d = data(&r.cmd(&lba_status(0, 1024), &[]));
    assert_eq!(
        descriptors(&d),
        [(0, 4, 0), (4, 4, 1), (8, 8, 0), (16, 2032, 1)]
    );
    let d = data(&r.cmd(&lba_status(5, 24), &[]));
    assert_eq!(descriptors(&d), [(5, 3, 1)]);
    let d = data(&r.cmd(&lba_status(5, 40), &[]));
    assert_eq!(descriptors(&d), [(5, 3, 1), (8, 8, 0)]);
    assert_eq!(data(&r.cmd(&lba_status(5, 10), &[])).len(), 10);
    let d = data(&r.cmd(&lba_status(2047, 24), &[]));
    assert_eq!(descriptors(&d), [(2047, 1, 1)]);
    good(&r.cmd(&lba_status(0, 0), &[]));
    illegal(&r.cmd(&lba_status(2048, 24), &[]), asc::LBA_OUT_OF_RANGE);
    illegal(
        &r.cmd(&lba_status(u64::MAX, 24), &[]),
        asc::LBA_OUT_OF_RANGE,
    );
    // Without a map everything is mapped.
    let mut t = r.task(&lba_status(100, 64), 0);
    assert!(!t.is_done());
    assert_eq!(t.wants_allocation(), Some((100, 1948)));
    assert!(t.poll_io().is_none());
    t.handle_allocation(None);
    assert!(t.is_done());
    assert_eq!(descriptors(&data(&t.take_response())), [(100, 1948, 0)]);
}

#[test]
fn io_errors() {
    let cases = [
        (
            IoStatus::DeviceError(3),
            key::MEDIUM_ERROR,
            asc::UNRECOVERED_READ_ERROR,
            asc::WRITE_ERROR,
        ),
        (
            IoStatus::Timeout,
            key::ABORTED_COMMAND,
            asc::LU_COMMUNICATION_TIMEOUT,
            asc::LU_COMMUNICATION_TIMEOUT,
        ),
        (
            IoStatus::DeviceFailed,
            key::HARDWARE_ERROR,
            asc::INTERNAL_TARGET_FAILURE,
            asc::INTERNAL_TARGET_FAILURE,
        ),
        (
            IoStatus::ReadOnly,
            key::DATA_PROTECT,
            asc::WRITE_PROTECTED,
            asc::WRITE_PROTECTED,
        ),
    ];
    for (st, k, read_code, write_code) in cases {
        let mut r = rig_dev(|d| {
            d.info.max_transfer = 1024;
            d.fail = Some((10, st));
        });
        expect(&r.cmd(&cdb10(0x28, 0, 40), &[]), k, read_code);
        expect(&r.cmd(&cdb10(0x2a, 0, 40), &[0; 512 * 40]), k, write_code);
        expect(&r.cmd(&caw(10, 1, 0), &[0; 1024]), k, read_code);
        good(&r.cmd(&cdb10(0x28, 11, 4), &[]));
    }
    let mut r = rig_dev(|d| d.fail = Some((0, IoStatus::NoMemory)));
    let resp = r.cmd(&cdb10(0x28, 0, 1), &[]);
    assert_eq!(resp.status, status::BUSY);
    assert!(resp.sense.is_empty());
    // A failed COMPARE AND WRITE does not keep the lock.
    let mut r = rig_dev(|d| d.fail = Some((3, IoStatus::DeviceError(1))));
    expect(
        &r.cmd(&caw(3, 1, 0), &[0; 1024]),
        key::MEDIUM_ERROR,
        asc::UNRECOVERED_READ_ERROR,
    );
    good(&r.cmd(&caw(4, 1, 0), &[0; 1024]));
}

#[test]
fn abort() {
    let mut r = rig_dev(|d| d.info.max_transfer = 512);
    let mut t = r.task(&cdb10(0x28, 0, 100), 0);
    let mut started = Vec::new();
    for _ in 0..3 {
        started.push(t.poll_io().unwrap());
    }
    t.abort();
    assert!(t.poll_io().is_none());
    assert!(!t.is_done());
    for (sub, op, _) in started {
        let buf = op.into_buf();
        t.handle_completion(
            sub,
            IoCompletion {
                tag: 0,
                status: IoStatus::Success,
                buf,
            },
        );
    }
    assert!(t.is_done());
    let resp = t.take_response();
    assert_eq!(resp.status, status::TASK_ABORTED);
    assert!(resp.data.is_empty());
    // Completions for unknown sub-tags are ignored.
    t.handle_completion(
        7,
        IoCompletion {
            tag: 0,
            status: IoStatus::Success,
            buf: None,
        },
    );
    // Aborting while waiting for data-out.
    let mut t = r.task(&cdb10(0x2a, 0, 1), 512);
    t.abort();
    assert!(t.is_done());
    assert_eq!(t.data_out_len(), 0);
}

#[test]
fn response_helpers() {
    let r = Response::check_condition(key::ILLEGAL_REQUEST, 0x24, 0);
    assert_eq!(sense_of(&r), (5, 0x24, 0));
    assert_eq!(sense::fixed(6, 0x29, 0)[..3], [0x70, 0, 6]);
    let s = Sense::invalid_cdb(2, Some(5)).to_fixed();
    assert_eq!(&s[15..18], &[0xc0 | 0x08 | 5, 0, 2]);
    let m = Sense::miscompare(0x01020304).to_fixed();
    assert_eq!(&m[..7], &[0xf0, 0, 0x0e, 1, 2, 3, 4]);
}

/// Random CDBs, lengths and data-out never panic and always finish.
#[test]
fn random_commands_finish() {
    let mut rng = Rng::new(0x5c51);
    let opcodes: Vec<u8> = cdb::OPS.iter().map(|o| o.op).chain([0xc0, 0x00]).collect();
    let mut d = TestBdev::new(64, 512);
    d.info.max_transfer = 4096;
    let mut r = rig_with(d);
    for i in 0..20_000 {
        let len = rng.below(17) as usize;
        let mut cdb: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if let Some(b) = cdb.first_mut() {
            *b = opcodes[rng.below(opcodes.len() as u64) as usize];
        }
        // Small lengths, so that some commands get through.
        if len > 8 && rng.below(2) == 0 {
            for b in &mut cdb[2..len - 2] {
                *b &= 0x01;
            }
        }
        let out: Vec<u8> = (0..rng.below(4096) as usize)
            .map(|_| rng.next_u64() as u8)
            .collect();
        if i % 7 == 0 {
            r.nexus.raise(UnitAttention::PowerOnReset);
        }
        r.read_only = i % 5 == 0;
        let mut t = r.task(&cdb, out.len());
        let n = t.data_out_len();
        assert!(n <= out.len(), "{cdb:02x?}");
        let resp = r.drive(&mut t, &out);
        assert!(resp.data_len() <= MAX_TRANSFER_BYTES);
        if resp.status == status::CHECK_CONDITION {
            assert_eq!(resp.sense.len(), sense::FIXED_LEN);
        }
    }
}

// Reservations.

const PORT_B: &str = "iqn.1994-05.com.example:b,i,0x800102030405";
const PORT_C: &str = "iqn.1994-05.com.example:c,i,0x000000000001";

const REGISTER: u8 = 0;
const RESERVE: u8 = 1;
const RELEASE: u8 = 2;
const CLEAR: u8 = 3;
const PREEMPT: u8 = 4;
const PREEMPT_AND_ABORT: u8 = 5;
const REGISTER_AND_IGNORE: u8 = 6;

const WE: u8 = 1;
const EA: u8 = 3;
const WE_RO: u8 = 5;
const EA_RO: u8 = 6;
const WE_AR: u8 = 7;
const EA_AR: u8 = 8;

/// Another I_T nexus to the rig's LU.
struct Peer {
    nexus: NexusState,
    port: String,
    id: u64,
}

fn peer(port: &str, id: u64) -> Peer {
    Peer {
        nexus: NexusState::default(),
        port: port.into(),
        id,
    }
}

fn prin(sa: u8, alloc: u16) -> Vec<u8> {
    let a = alloc.to_be_bytes();
    vec![0x5e, sa, 0, 0, 0, 0, 0, a[0], a[1], 0]
}

fn prout_cdb(sa: u8, kind: u8, len: u32) -> Vec<u8> {
    let mut c = vec![0x5f, sa, kind, 0, 0];
    c.extend(len.to_be_bytes());
    c.push(0);
    c
}

fn prout_list(rk: u64, sark: u64, flags: u8) -> Vec<u8> {
    let mut d = rk.to_be_bytes().to_vec();
    d.extend(sark.to_be_bytes());
    d.extend([0, 0, 0, 0, flags, 0, 0, 0]);
    d
}

impl Rig {
    /// Runs a command from `p` rather than the rig's own nexus.
    fn cmd_as(&mut self, p: &mut Peer, cdb: &[u8], out: &[u8]) -> Response {
        self.swap_nexus(p);
        let r = self.cmd(cdb, out);
        self.swap_nexus(p);
        r
    }

    fn swap_nexus(&mut self, p: &mut Peer) {
        core::mem::swap(&mut self.nexus, &mut p.nexus);
        core::mem::swap(&mut self.port, &mut p.port);
        core::mem::swap(&mut self.nexus_id, &mut p.id);
    }

    /// PERSISTENT RESERVE OUT with a basic parameter list.
    fn pr_out(&mut self, sa: u8, kind: u8, rk: u64, sark: u64) -> Response {
        self.cmd(&prout_cdb(sa, kind, 24), &prout_list(rk, sark, 0))
    }

    fn pr_out_as(&mut self, p: &mut Peer, sa: u8, kind: u8, rk: u64, sark: u64) -> Response {
        self.swap_nexus(p);
        let r = self.pr_out(sa, kind, rk, sark);
        self.swap_nexus(p);
        r
    }

    /// PRgeneration and the registered keys.
    fn keys(&mut self) -> (u32, Vec<u64>) {
        let d = data(&self.cmd(&prin(0, u16::MAX), &[]));
        let n = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
        assert_eq!(n, d.len() - 8);
        let keys = d[8..]
            .chunks(8)
            .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
            .collect();
        (u32::from_be_bytes(d[..4].try_into().unwrap()), keys)
    }

    /// The reservation: its key and type.
    fn reservation(&mut self) -> Option<(u64, u8)> {
        let d = data(&self.cmd(&prin(1, 1024), &[]));
        match u32::from_be_bytes(d[4..8].try_into().unwrap()) {
            0 => {
                assert_eq!(d.len(), 8);
                None
            }
            n => {
                assert_eq!((n, d.len()), (16, 24));
                assert_eq!(d[21] >> 4, 0, "LU scope");
                Some((u64::from_be_bytes(d[8..16].try_into().unwrap()), d[21] & 15))
            }
        }
    }
}

fn conflict(r: &Response) {
    assert_eq!(r.status, status::RESERVATION_CONFLICT, "{r:?}");
    assert!(r.sense.is_empty() && r.data.is_empty());
}

#[test]
fn persistent_registration() {
    let mut r = rig();
    assert_eq!(r.keys(), (0, vec![]));
    assert_eq!(r.reservation(), None);
    // Not registered: REGISTER needs a zero reservation key.
    conflict(&r.pr_out(REGISTER, 0, 5, 7));
    // Unregistering while not registered does nothing.
    good(&r.pr_out(REGISTER, 0, 0, 0));
    assert_eq!(r.keys(), (0, vec![]));
    good(&r.pr_out(REGISTER, 0, 0, 7));
    assert_eq!(r.keys(), (1, vec![7]));
    // Registered: the key must match, except with REGISTER AND IGNORE.
    conflict(&r.pr_out(REGISTER, 0, 0, 8));
    good(&r.pr_out(REGISTER, 0, 7, 8));
    good(&r.pr_out(REGISTER_AND_IGNORE, 0, 1234, 9));
    assert_eq!(r.keys(), (3, vec![9]));
    let mut b = peer(PORT_B, 2);
    good(&r.pr_out_as(&mut b, REGISTER_AND_IGNORE, 0, 0, 10));
    assert_eq!(r.keys(), (4, vec![9, 10]));
    // The key list is cut to the allocation length, its length is not.
    let d = data(&r.cmd(&prin(0, 12), &[]));
    assert_eq!(d, [0, 0, 0, 4, 0, 0, 0, 16, 0, 0, 0, 0]);
    good(&r.pr_out(REGISTER, 0, 9, 0));
    assert_eq!(r.keys(), (5, vec![10]));
    good(&r.pr_out_as(&mut b, REGISTER_AND_IGNORE, 0, 0, 0));
    assert_eq!(r.keys(), (6, vec![]));
    // Not offered: APTPL, ALL_TG_PT, SPEC_I_PT, other service actions.
    for (flags, bit) in [(0x01, 0), (0x04, 2), (0x08, 3)] {
        let e = r.cmd(&prout_cdb(REGISTER, 0, 24), &prout_list(0, 1, flags));
        illegal(&e, asc::INVALID_FIELD_IN_PARAMETER_LIST);
        assert_eq!(e.sense[15], 0x88 | bit, "bit pointer");
        assert_eq!(field(&e), (false, 20));
    }
    for sa in [7, 8, 0x1f] {
        illegal(
            &r.cmd(&prout_cdb(sa, 0, 24), &prout_list(0, 1, 0)),
            asc::INVALID_FIELD_IN_CDB,
        );
    }
    for sa in 4..0x20 {
        illegal(&r.cmd(&prin(sa, 1024), &[]), asc::INVALID_FIELD_IN_CDB);
    }
    // The parameter list is 24 bytes.
    for len in [0u32, 20, 28] {
        let list = [prout_list(0, 1, 0), vec![0; 8]].concat();
        illegal(
            &r.cmd(&prout_cdb(REGISTER, 0, len), &list),
            asc::PARAMETER_LIST_LENGTH_ERROR,
        );
    }
    illegal(
        &r.cmd(&prout_cdb(REGISTER, 0, 1 << 20), &[]),
        asc::PARAMETER_LIST_LENGTH_ERROR,
    );
    // Too little data-out for the list.
    illegal(
        &r.cmd_edtl(&prout_cdb(REGISTER, 0, 24), &prout_list(0, 1, 0), 16),
        asc::PARAMETER_LIST_LENGTH_ERROR,
    );
    // A bad type or scope for the service actions that take them.
    for kind in [0u8, 2, 4, 9, 15, 0x13] {
        illegal(
            &r.cmd(&prout_cdb(RESERVE, kind, 24), &prout_list(0, 0, 0)),
            asc::INVALID_FIELD_IN_CDB,
        );
    }
    assert_eq!(r.keys(), (6, vec![]));
}

#[test]
fn persistent_registrations_are_bounded() {
    let mut r = rig();
    for i in 0..pr::MAX_REGISTRATIONS as u64 {
        let mut p = peer(&format!("iqn.x:{i},i,0x000000000000"), 10 + i);
        good(&r.pr_out_as(&mut p, REGISTER, 0, 0, i + 1));
    }
    let mut p = peer(PORT_B, 2);
    expect(
        &r.pr_out_as(&mut p, REGISTER, 0, 0, 1),
        key::ILLEGAL_REQUEST,
        asc::INSUFFICIENT_REGISTRATION_RESOURCES,
    );
    // A registered port may still change its key.
    let mut p = peer("IQN.X:0,i,0x000000000000", 10);
    good(&r.pr_out_as(&mut p, REGISTER, 0, 1, 77));
    assert_eq!(r.keys().1.len(), pr::MAX_REGISTRATIONS);
}

#[test]
fn persistent_reservation_access() {
    let read = cdb10(0x28, 1, 1);
    let write = cdb10(0x2a, 1, 1);
    let blk = [0u8; 512];
    // Type; registered B may read, write; unregistered C may read, write.
    let table = [
        (WE, true, false, true, false),
        (EA, false, false, false, false),
        (WE_RO, true, true, true, false),
        (EA_RO, true, true, false, false),
        (WE_AR, true, true, true, false),
        (EA_AR, true, true, false, false),
    ];
    for (kind, b_read, b_write, c_read, c_write) in table {
        let mut r = rig();
        let mut b = peer(PORT_B, 2);
        let mut c = peer(PORT_C, 3);
        good(&r.pr_out(REGISTER, 0, 0, 1));
        good(&r.pr_out_as(&mut b, REGISTER, 0, 0, 2));
        good(&r.pr_out(RESERVE, kind, 1, 0));
        let all = kind == WE_AR || kind == EA_AR;
        assert_eq!(r.reservation(), Some((if all { 0 } else { 1 }, kind)));
        good(&r.cmd(&read, &[]));
        good(&r.cmd(&write, &blk));
        let check = |ok: bool, resp: &Response| {
            if ok { good(resp) } else { conflict(resp) }
        };
        check(b_read, &r.cmd_as(&mut b, &read, &[]));
        check(b_write, &r.cmd_as(&mut b, &write, &blk));
        check(c_read, &r.cmd_as(&mut c, &read, &[]));
        check(c_write, &r.cmd_as(&mut c, &write, &blk));
        // Reads and writes of other kinds follow the same rules.
        check(
            c_read,
            &r.cmd_as(&mut c, &mode_sense6(true, 0, 0x3f, 0, 255), &[]),
        );
        check(c_write, &r.cmd_as(&mut c, &cdb10(0x35, 0, 0), &[]));
        check(c_write, &r.cmd_as(&mut c, &ws10(0, 1, 0), &blk));
        // Always allowed.
        for cdb in [
            vec![0u8; 6],
            inquiry(false, 0, 96),
            vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            prin(1, 100),
            vec![0x1b, 0, 0, 0, 1, 0],
        ] {
            good(&r.cmd_as(&mut c, &cdb, &[]));
        }
        // Unregistered nexuses may register, nothing else.
        conflict(&r.pr_out_as(&mut c, RESERVE, kind, 0, 0));
        conflict(&r.pr_out_as(&mut c, RELEASE, kind, 0, 0));
        conflict(&r.pr_out_as(&mut c, CLEAR, 0, 0, 0));
        conflict(&r.pr_out_as(&mut c, PREEMPT, kind, 0, 1));
        // SPC-2 RESERVE and RELEASE: without effect for holders, a
        // conflict for others.
        let holder_like = kind != WE && kind != EA;
        let e = r.cmd_as(&mut b, &[0x16, 0, 0, 0, 0, 0], &[]);
        check(holder_like, &e);
        check(false, &r.cmd_as(&mut c, &[0x17, 0, 0, 0, 0, 0], &[]));
        good(&r.cmd(&[0x16, 0, 0, 0, 0, 0], &[]));
        conflict(&r.cmd_as(&mut c, &[0x16, 0, 0, 0, 0, 0], &[]));
        // Reserving again: the same type is fine, another is not.
        good(&r.pr_out(RESERVE, kind, 1, 0));
        conflict(&r.pr_out(RESERVE, if kind == WE { EA } else { WE }, 1, 0));
        let b_reserve = r.pr_out_as(&mut b, RESERVE, kind, 2, 0);
        check(all, &b_reserve);
        // A non-holder's RELEASE does nothing; the holder's must name
        // the type.
        if !all {
            good(&r.pr_out_as(&mut b, RELEASE, kind, 2, 0));
            assert!(r.reservation().is_some());
        }
        conflict(&r.pr_out(RELEASE, kind, 2, 0));
        let e = r.pr_out(RELEASE, if kind == WE { EA } else { WE }, 1, 0);
        illegal(&e, asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION);
        good(&r.pr_out(RELEASE, kind, 1, 0));
        assert_eq!(r.reservation(), None);
        good(&r.cmd_as(&mut c, &write, &blk));
        // Releasing nothing is fine.
        good(&r.pr_out(RELEASE, kind, 1, 0));
        assert_eq!(r.keys().0, 2, "RESERVE and RELEASE leave PRgeneration");
    }
}

/// The next command from `p` reports `ua` first.
fn expect_ua(r: &mut Rig, p: &mut Peer, ua: (u8, u8)) {
    expect(&r.cmd_as(p, &[0; 6], &[]), key::UNIT_ATTENTION, ua);
    good(&r.cmd_as(p, &[0; 6], &[]));
}

#[test]
fn persistent_reservation_ownership() {
    for kind in [WE, EA, WE_RO, EA_RO, WE_AR, EA_AR] {
        let mut r = rig();
        let mut b = peer(PORT_B, 2);
        good(&r.pr_out(REGISTER, 0, 0, 1));
        good(&r.pr_out_as(&mut b, REGISTER, 0, 0, 2));
        good(&r.pr_out(RESERVE, kind, 1, 0));
        // The holder unregisters.
        good(&r.pr_out(REGISTER, 0, 1, 0));
        match kind {
            WE_AR | EA_AR => {
                // B still holds it, and can release it.
                assert_eq!(r.reservation(), Some((0, kind)));
                good(&r.cmd_as(&mut b, &[0; 6], &[]));
                good(&r.pr_out_as(&mut b, RELEASE, kind, 2, 0));
                good(&r.cmd_as(&mut b, &[0; 6], &[]));
            }
            WE_RO | EA_RO => {
                assert_eq!(r.reservation(), None);
                expect_ua(&mut r, &mut b, asc::RESERVATIONS_RELEASED);
            }
            _ => {
                assert_eq!(r.reservation(), None);
                good(&r.cmd_as(&mut b, &[0; 6], &[]));
            }
        }
        assert_eq!(r.reservation(), None);
        // The last registrant of an all-registrants reservation takes it
        // along.
        good(&r.pr_out(REGISTER, 0, 0, 1));
        good(&r.pr_out(RESERVE, kind, 1, 0));
        good(&r.pr_out_as(&mut b, REGISTER, 0, 2, 0));
        good(&r.pr_out(REGISTER, 0, 1, 0));
        assert_eq!(r.reservation(), None);
    }
}

#[test]
fn release_tells_the_other_registrants() {
    let mut r = rig();
    let mut b = peer(PORT_B, 2);
    let mut c = peer(PORT_C, 3);
    good(&r.pr_out(REGISTER, 0, 0, 1));
    good(&r.pr_out_as(&mut b, REGISTER, 0, 0, 2));
    for kind in [WE_RO, EA_AR] {
        good(&r.pr_out(RESERVE, kind, 1, 0));
        good(&r.pr_out(RELEASE, kind, 1, 0));
        expect_ua(&mut r, &mut b, asc::RESERVATIONS_RELEASED);
        good(&r.cmd_as(&mut c, &[0; 6], &[]));
        good(&r.cmd(&[0; 6], &[]));
    }
    good(&r.pr_out(RESERVE, EA, 1, 0));
    good(&r.pr_out(RELEASE, EA, 1, 0));
    good(&r.cmd_as(&mut b, &[0; 6], &[]));
}

#[test]
fn clear_and_preempt() {
    let mut r = rig();
    let mut b = peer(PORT_B, 2);
    let mut c = peer(PORT_C, 3);
    good(&r.pr_out(REGISTER, 0, 0, 1));
    good(&r.pr_out_as(&mut b, REGISTER, 0, 0, 2));
    good(&r.pr_out_as(&mut c, REGISTER, 0, 0, 2));
    good(&r.pr_out_as(&mut b, RESERVE, EA, 2, 0));
    // CLEAR needs the caller's key, then drops everything.
    conflict(&r.pr_out(CLEAR, 0, 2, 0));
    let generation = r.keys().0;
    good(&r.pr_out(CLEAR, 0, 1, 0));
    assert_eq!(r.keys(), (generation + 1, vec![]));
    assert_eq!(r.reservation(), None);
    expect_ua(&mut r, &mut b, asc::RESERVATIONS_PREEMPTED);
    expect_ua(&mut r, &mut c, asc::RESERVATIONS_PREEMPTED);
    good(&r.cmd(&[0; 6], &[]));

    // Without a reservation PREEMPT removes registrations.
    good(&r.pr_out(REGISTER, 0, 0, 1));
    good(&r.pr_out_as(&mut b, REGISTER, 0, 0, 2));
    good(&r.pr_out_as(&mut c, REGISTER, 0, 0, 3));
    illegal(
        &r.pr_out(PREEMPT, EA, 1, 0),
        asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    conflict(&r.pr_out(PREEMPT, EA, 1, 99));
    conflict(&r.pr_out(PREEMPT, EA, 5, 2));
    let generation = r.keys().0;
    good(&r.pr_out(PREEMPT, EA, 1, 2));
    assert_eq!(r.keys(), (generation + 1, vec![1, 3]));
    assert_eq!(r.reservation(), None);
    expect_ua(&mut r, &mut b, asc::REGISTRATIONS_PREEMPTED);
    good(&r.cmd_as(&mut c, &[0; 6], &[]));
    // Preempting one's own key keeps one's registration.
    good(&r.pr_out(PREEMPT, EA, 1, 1));
    assert_eq!(r.keys().1, vec![1, 3]);

    // The holder's key: its reservation passes over, with a new type.
    good(&r.pr_out_as(&mut b, REGISTER, 0, 0, 2));
    good(&r.pr_out_as(&mut c, RESERVE, WE_RO, 3, 0));
    good(&r.pr_out(PREEMPT_AND_ABORT, EA_RO, 1, 3));
    assert_eq!(r.reservation(), Some((1, EA_RO)));
    assert_eq!(r.keys().1, vec![1, 2]);
    expect_ua(&mut r, &mut c, asc::REGISTRATIONS_PREEMPTED);
    expect_ua(&mut r, &mut b, asc::RESERVATIONS_RELEASED);
    conflict(&r.cmd_as(&mut c, &cdb10(0x28, 0, 1), &[]));
    // Another registrant's key: only the registration goes.
    good(&r.pr_out_as(&mut c, REGISTER, 0, 0, 3));
    good(&r.pr_out_as(&mut b, PREEMPT, EA_RO, 2, 3));
    assert_eq!(r.reservation(), Some((1, EA_RO)));
    assert_eq!(r.keys().1, vec![1, 2]);
    expect_ua(&mut r, &mut c, asc::REGISTRATIONS_PREEMPTED);
    good(&r.cmd(&[0; 6], &[]));
    // A zero key only preempts all-registrants reservations.
    illegal(
        &r.pr_out_as(&mut b, PREEMPT, EA_RO, 2, 0),
        asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    good(&r.pr_out(RELEASE, EA_RO, 1, 0));
    expect_ua(&mut r, &mut b, asc::RESERVATIONS_RELEASED);
    good(&r.pr_out_as(&mut c, REGISTER, 0, 0, 3));
    good(&r.pr_out(RESERVE, WE_AR, 1, 0));
    good(&r.pr_out_as(&mut b, PREEMPT, WE, 2, 0));
    expect(
        &r.cmd(&[0; 6], &[]),
        key::UNIT_ATTENTION,
        asc::REGISTRATIONS_PREEMPTED,
    );
    assert_eq!(r.reservation(), Some((2, WE)));
    assert_eq!(r.keys().1, vec![2]);
    expect_ua(&mut r, &mut c, asc::REGISTRATIONS_PREEMPTED);
    conflict(&r.cmd(&cdb10(0x2a, 0, 1), &[0; 512]));
}

#[test]
fn read_full_status_and_capabilities() {
    let mut r = rig();
    let mut b = peer(PORT_B, 2);
    good(&r.pr_out(REGISTER, 0, 0, 0x1111));
    good(&r.pr_out_as(&mut b, REGISTER, 0, 0, 0x2222));
    good(&r.pr_out_as(&mut b, RESERVE, WE_RO, 0x2222, 0));
    let d = data(&r.cmd(&prin(3, 4096), &[]));
    assert_eq!(u32::from_be_bytes(d[..4].try_into().unwrap()), 2);
    assert_eq!(
        u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize,
        d.len() - 8
    );
    let mut at = 8;
    let mut seen = Vec::new();
    while at < d.len() {
        let e = &d[at..];
        let key = u64::from_be_bytes(e[..8].try_into().unwrap());
        let tid_len = u32::from_be_bytes(e[20..24].try_into().unwrap()) as usize;
        let tid = &e[24..24 + tid_len];
        assert_eq!(u16::from_be_bytes([e[18], e[19]]), 1, "relative port");
        assert_eq!(tid[0], 0x45, "iSCSI, initiator port format");
        assert_eq!(u16::from_be_bytes([tid[2], tid[3]]) as usize, tid_len - 4);
        assert_eq!(tid_len % 4, 0);
        let name: Vec<u8> = tid[4..].iter().copied().take_while(|&c| c != 0).collect();
        seen.push((key, e[12], e[13], String::from_utf8(name).unwrap()));
        at += 24 + tid_len;
    }
    assert_eq!(
        seen,
        [
            (0x1111, 0, 0, PORT.to_string()),
            (0x2222, 1, WE_RO, PORT_B.to_string())
        ]
    );
    // Truncated like any parameter data.
    assert_eq!(data(&r.cmd(&prin(3, 10), &[])), d[..10]);
    good(&r.pr_out_as(&mut b, RELEASE, WE_RO, 0x2222, 0));
    expect(
        &r.cmd(&prin(2, 100), &[]),
        key::UNIT_ATTENTION,
        asc::RESERVATIONS_RELEASED,
    );
    let caps = data(&r.cmd(&prin(2, 100), &[]));
    // CRH; TMV, ALLOW COMMANDS 3; every type; no PTPL.
    assert_eq!(caps, [0, 8, 0x10, 0xb0, 0xea, 0x01, 0, 0]);
    assert_eq!(
        initiator_port("iqn.x", [0x80, 1, 2, 3, 0xab, 5]),
        "iqn.x,i,0x80010203ab05"
    );
}

#[test]
fn spc2_reservations() {
    let mut r = rig();
    let mut b = peer(PORT_B, 2);
    let reserve6 = [0x16, 0, 0, 0, 0, 0];
    let release6 = [0x17, 0, 0, 0, 0, 0];
    good(&r.cmd(&reserve6, &[]));
    good(&r.cmd(&reserve6, &[]));
    good(&r.cmd(&[0; 6], &[]));
    conflict(&r.cmd_as(&mut b, &reserve6, &[]));
    // Everything but INQUIRY, REPORT LUNS, REQUEST SENSE and RELEASE.
    for cdb in [
        vec![0u8; 6],
        cdb10(0x28, 0, 1),
        mode_sense6(true, 0, 0x3f, 0, 255),
        prin(0, 100),
        prout_cdb(REGISTER, 0, 24),
        vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ] {
        conflict(&r.cmd_as(&mut b, &cdb, &prout_list(0, 1, 0)));
    }
    good(&r.cmd_as(&mut b, &inquiry(false, 0, 96), &[]));
    good(&r.cmd_as(&mut b, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]));
    good(&r.cmd_as(&mut b, &[0x03, 0, 0, 0, 18, 0], &[]));
    // Another nexus' RELEASE does nothing.
    good(&r.cmd_as(&mut b, &release6, &[]));
    conflict(&r.cmd_as(&mut b, &[0; 6], &[]));
    // Unknown commands still say so.
    illegal(
        &r.cmd_as(&mut b, &[0xc5, 0, 0, 0, 0, 0], &[]),
        asc::INVALID_OPCODE,
    );
    // The holder releases.
    good(&r.cmd(&release6, &[]));
    good(&r.cmd_as(&mut b, &[0; 6], &[]));
    // RESERVE(10) / RELEASE(10) the same; no third-party reservations.
    let reserve10 = [0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    good(&r.cmd_as(&mut b, &reserve10, &[]));
    conflict(&r.cmd(&reserve10, &[]));
    illegal(
        &r.cmd_as(&mut b, &[0x56, 0x10, 0, 0, 0, 0, 0, 0, 0, 0], &[]),
        asc::INVALID_FIELD_IN_CDB,
    );
    illegal(
        &r.cmd_as(&mut b, &[0x57, 0x02, 0, 0, 0, 0, 0, 0, 8, 0], &[]),
        asc::INVALID_FIELD_IN_CDB,
    );
    // The nexus goes: so does its reservation.
    r.shared.nexus_lost(1);
    conflict(&r.cmd(&reserve6, &[]));
    r.shared.nexus_lost(2);
    good(&r.cmd(&reserve6, &[]));
    // So on a LU reset.
    r.shared.reset();
    good(&r.cmd_as(&mut b, &reserve6, &[]));
    good(&r.cmd_as(&mut b, &release6, &[]));
    // With registrations RESERVE and RELEASE conflict, and without a
    // persistent reservation even for registrants.
    good(&r.pr_out(REGISTER, 0, 0, 1));
    conflict(&r.cmd(&reserve6, &[]));
    conflict(&r.cmd_as(&mut b, &release6, &[]));
    // The persistent reservation holder's do nothing.
    good(&r.pr_out(RESERVE, EA, 1, 0));
    good(&r.cmd(&reserve6, &[]));
    good(&r.pr_out(REGISTER, 0, 1, 0));
    good(&r.cmd_as(&mut b, &reserve6, &[]));
    good(&r.cmd_as(&mut b, &release6, &[]));
}

fn orwrite(lba: u64, blocks: u32, flags: u8) -> Vec<u8> {
    with_flags(cdb16(0x8b, lba, blocks), flags)
}

#[test]
fn orwrite_ors_the_data_in() {
    let mut r = rig_dev(|d| d.info.max_transfer = 1024);
    let a = pattern(512 * 5, 1);
    let b = pattern(512 * 5, 2);
    r.write(10, &a);
    good(&r.cmd(&orwrite(10, 5, 0x18), &b));
    let or: Vec<u8> = a.iter().zip(&b).map(|(x, y)| x | y).collect();
    assert_eq!(r.read(10, 5), or);
    assert!(r.fuas.borrow().iter().rev().take(3).all(|&(_, fua)| fua));
    good(&r.cmd(&orwrite(2048, 0, 0), &[]));
    illegal(&r.cmd(&orwrite(2049, 0, 0), &[]), asc::LBA_OUT_OF_RANGE);
    illegal(
        &r.cmd(&orwrite(2047, 2, 0), &[0; 1024]),
        asc::LBA_OUT_OF_RANGE,
    );
    illegal(
        &r.cmd(&orwrite(u64::MAX, 1, 0), &[0; 512]),
        asc::LBA_OUT_OF_RANGE,
    );
    for protect in 1..8u8 {
        illegal(
            &r.cmd(&orwrite(0, 1, protect << 5), &[0; 512]),
            asc::INVALID_FIELD_IN_CDB,
        );
    }
    // Short data-out: the whole blocks that came.
    good(&r.cmd_edtl(&orwrite(20, 4, 0), &[0x80; 1024], 1024));
    assert_eq!(r.read(20, 2), vec![0x80; 1024]);
    r.read_only = true;
    expect(
        &r.cmd(&orwrite(0, 1, 0), &[0; 512]),
        key::DATA_PROTECT,
        asc::WRITE_PROTECTED,
    );
}

fn write_atomic(lba: u64, blocks: u16, flags: u8) -> Vec<u8> {
    let mut c = vec![0x9c, flags];
    c.extend(lba.to_be_bytes());
    c.extend([0, 0]);
    c.extend(blocks.to_be_bytes());
    c.extend([0, 0]);
    c
}

#[test]
fn write_atomic_is_one_write() {
    let mut r = rig_dev(|d| d.info.max_transfer = 4096);
    let bl = vpd(&mut r, 0xb0);
    assert_eq!(&bl[44..48], 8u32.to_be_bytes(), "one bdev transfer");
    assert_eq!(&bl[48..64], [0; 16], "no alignment, granularity, boundary");
    let d = pattern(512 * 8, 3);
    r.fuas.borrow_mut().clear();
    good(&r.cmd(&write_atomic(100, 8, 0x08), &d));
    assert_eq!(*r.fuas.borrow(), [(100, true)]);
    assert_eq!(r.read(100, 8), d);
    illegal(
        &r.cmd(&write_atomic(0, 9, 0), &[0; 512 * 9]),
        asc::INVALID_FIELD_IN_CDB,
    );
    let mut c = write_atomic(0, 1, 0);
    c[11] = 1;
    illegal(&r.cmd(&c, &[0; 512]), asc::INVALID_FIELD_IN_CDB);
    for protect in 1..8u8 {
        illegal(
            &r.cmd(&write_atomic(0, 1, protect << 5), &[0; 512]),
            asc::INVALID_FIELD_IN_CDB,
        );
    }
    good(&r.cmd(&write_atomic(0, 0, 0), &[]));
    illegal(
        &r.cmd(&write_atomic(2049, 0, 0), &[]),
        asc::LBA_OUT_OF_RANGE,
    );
    illegal(&r.cmd(&write_atomic(2044, 8, 0), &d), asc::LBA_OUT_OF_RANGE);
    illegal(
        &r.cmd(&write_atomic(1 << 63, 1, 0), &[0; 512]),
        asc::LBA_OUT_OF_RANGE,
    );
}

#[test]
fn orwrite_and_write_atomic_take_the_lu_lock() {
    let mut r = rig();
    r.write(0, &[0; 512]);
    let mut t1 = r.task(&caw(0, 1, 0), 1024);
    assert!(t1.write_data_out(0, &[vec![0u8; 512], vec![1u8; 512]].concat()));
    t1.data_out_done(true);
    let mut t2 = r.task(&orwrite(0, 1, 0), 512);
    assert!(t2.write_data_out(0, &[2; 512]));
    t2.data_out_done(true);
    let mut t3 = r.task(&write_atomic(0, 1, 0), 512);
    assert!(t3.write_data_out(0, &[4; 512]));
    t3.data_out_done(true);
    assert!(!t1.is_blocked());
    assert!(t2.is_blocked() && t3.is_blocked());
    assert!(t2.poll_io().is_none() && t3.poll_io().is_none());
    good(&r.drive(&mut t1, &[]));
    good(&r.drive(&mut t2, &[]));
    assert_eq!(r.read(0, 1), vec![3; 512]);
    good(&r.drive(&mut t3, &[]));
    assert_eq!(r.read(0, 1), vec![4; 512]);
}

#[test]
fn read_defect_data_is_empty() {
    let mut r = rig();
    let d10 = [0x37, 0, 0x18 | 5, 0, 0, 0, 0, 0, 32, 0];
    assert_eq!(data(&r.cmd(&d10, &[])), [0, 0x1d, 0, 0]);
    let d12 = [0xb7, 0x10 | 4, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
    assert_eq!(data(&r.cmd(&d12, &[])), [0, 0x14, 0, 0, 0, 0, 0, 0]);
    let mut short = d12;
    short[9] = 3;
    assert_eq!(data(&r.cmd(&short, &[])), [0, 0x14, 0]);
}

/// With a small share of the I/O budget the block limits shrink so that
/// the largest transfer, with the work buffers of a verify beside it, fits
/// what one command may hold; larger commands are refused, the largest
/// ones run.
#[test]
fn block_limits_follow_what_a_command_may_hold() {
    let mut r = rig_dev(|d| d.info.max_transfer = 64 << 10);
    r.memory = 512 << 10;
    let be32 = |d: &[u8], at: usize| u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]]);
    let bl = vpd(&mut r, 0xb0);
    let (max, opt) = (be32(&bl, 8) as usize, be32(&bl, 12) as usize);
    assert_eq!(max * 512, 384 << 10, "three quarters of the share");
    assert_eq!(opt * 512, 64 << 10, "the bdev's transfer");
    assert_eq!(
        bl[5] as usize, 255,
        "both halves of a COMPARE AND WRITE fit"
    );
    assert_eq!(be32(&bl, 44) as usize, opt, "atomic: one bdev write");
    illegal(
        &r.cmd(&cdb16(0x88, 0, max as u32 + 1), &[]),
        asc::INVALID_FIELD_IN_CDB,
    );
    let d = pattern(max * 512, 4);
    illegal(
        &r.cmd(&cdb16(0x8a, 0, max as u32 + 1), &d),
        asc::INVALID_FIELD_IN_CDB,
    );
    r.write(0, &d);
    assert_eq!(r.read(0, max as u32), d);
    // Compare, OR and write-and-verify go through work buffers that fit
    // beside the data-out.
    good(&r.cmd(&with_flags(cdb16(0x8f, 0, max as u32), 0x02), &d));
    good(&r.cmd(&with_flags(cdb16(0x8e, 0, max as u32), 0x02), &d));
    good(&r.cmd(&orwrite(0, max as u32, 0), &d));
    assert_eq!(r.read(0, max as u32), d);
    let mut bad = d.clone();
    bad[300_000] ^= 1;
    let e = r.cmd(&with_flags(cdb16(0x8f, 0, max as u32), 0x02), &bad);
    expect(&e, key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY);
    assert_eq!(info_field(&e), 300_000);
    // Parameter data larger than the share can never be held.
    r.memory = 16 << 10;
    let mut list = vec![0u8; 20_000];
    list[1] = 6;
    let select = [0x55, 0x10, 0, 0, 0, 0, 0, 0x4e, 0x20, 0];
    illegal(&r.cmd(&select, &list), asc::INVALID_FIELD_IN_CDB);
}
