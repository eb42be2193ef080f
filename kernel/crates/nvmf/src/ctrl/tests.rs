use super::*;
use crate::config::{Adrfam, Listener, Namespace, Subsystem, TransportOptions, Trtype};
use crate::spec::*;
use alloc::boxed::Box;
use alloc::string::ToString;
use ironbay_bdev::{MallocBdev, Uuid};

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
const NQN2: &str = "nqn.2016-06.io.spdk:cnode2";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0f0e0d0c-0b0a-0908-0706-050403020100";
const HOST2: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
const HOSTID: [u8; 16] = [7; 16];

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn local() -> SocketAddr {
    sa("10.0.0.1:4420")
}

fn peer() -> SocketAddr {
    sa("10.0.0.2:50000")
}

fn listener(addr: &str, port: u16) -> Listener {
    Listener {
        trtype: Trtype::Tcp,
        adrfam: if addr.contains(':') {
            Adrfam::Ipv6
        } else {
            Adrfam::Ipv4
        },
        traddr: addr.into(),
        port,
    }
}

fn ns(nsid: u32, bdev: &str) -> Namespace {
    Namespace {
        nsid,
        bdev_name: bdev.into(),
        nguid: None,
        eui64: None,
        uuid: None,
    }
}

/// cnode1: Malloc0 as nsid 1 and Malloc1 (read-only) as nsid 3, HOST
/// allowed, listening on 10.0.0.1:4420. cnode2: any host, wildcard
/// listener on 4421, no namespaces.
fn setup() -> (Target, Registry) {
    let mut reg = Registry::new();
    reg.add(Box::new(MallocBdev::new("Malloc0", 2048, 512)))
        .unwrap();
    let mut m1 = MallocBdev::new("Malloc1", 64, 4096);
    m1.set_read_only(true);
    reg.add(Box::new(m1)).unwrap();
    reg.add(Box::new(MallocBdev::new("Malloc2", 16, 512)))
        .unwrap();
    let mut s1 = Subsystem::new(NQN);
    s1.serial_number = "SN0001".into();
    s1.model_number = "ironbay test".into();
    s1.hosts.push(HOST.into());
    s1.namespaces.push(ns(1, "Malloc0"));
    s1.namespaces.push(ns(3, "Malloc1"));
    s1.listeners.push(listener("10.0.0.1", 4420));
    let mut s2 = Subsystem::new(NQN2);
    s2.allow_any_host = true;
    s2.listeners.push(listener("0.0.0.0", 4421));
    let config = Config {
        transport: Some(TransportOptions::default()),
        subsystems: vec![s1, s2],
        generation: 5,
        ..Config::default()
    };
    (Target::new(config), reg)
}

fn connect_sqe(qid: u16, sqsize: u16, kato: u32) -> Sqe {
    let mut b = [0u8; 64];
    b[0] = OPC_FABRICS;
    b[4] = FCTYPE_CONNECT;
    b[40..44].copy_from_slice(&((qid as u32) << 16).to_le_bytes());
    b[44..48].copy_from_slice(&(sqsize as u32).to_le_bytes());
    b[48..52].copy_from_slice(&kato.to_le_bytes());
    Sqe(b)
}

fn connect_data(hostid: [u8; 16], cntlid: u16, subnqn: &str, hostnqn: &str) -> Vec<u8> {
    let mut d = vec![0u8; 1024];
    d[..16].copy_from_slice(&hostid);
    d[16..18].copy_from_slice(&cntlid.to_le_bytes());
    d[256..256 + subnqn.len()].copy_from_slice(subnqn.as_bytes());
    d[512..512 + hostnqn.len()].copy_from_slice(hostnqn.as_bytes());
    d
}

fn try_connect(
    t: &mut Target,
    reg: &Registry,
    qid: u16,
    cntlid: u16,
    subnqn: &str,
    hostnqn: &str,
    at: SocketAddr,
) -> Result<(QueueBinding, u32), (Status, u32)> {
    let sqe = connect_sqe(qid, 31, 5000);
    let data = connect_data(HOSTID, cntlid, subnqn, hostnqn);
    connect(t, reg, &sqe, &data, at, peer(), 0)
}

fn admin_q(t: &mut Target, reg: &Registry) -> QueueBinding {
    try_connect(t, reg, 0, CNTLID_DYNAMIC, NQN, HOST, local())
        .unwrap()
        .0
}

fn sqe(opc: u8, nsid: u32, cdw: &[(usize, u32)]) -> Sqe {
    let mut b = [0u8; 64];
    b[0] = opc;
    b[2] = 0x34;
    b[4..8].copy_from_slice(&nsid.to_le_bytes());
    for &(i, v) in cdw {
        b[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    Sqe(b)
}

fn fabrics_sqe(fctype: u8, cdw: &[(usize, u32)]) -> Sqe {
    let mut s = sqe(OPC_FABRICS, 0, cdw);
    s.0[4] = fctype;
    s
}

struct Done {
    status: Status,
    dw0: u32,
    dw1: u32,
    data: Vec<u8>,
}

fn run_at(t: &mut Target, reg: &Registry, q: &QueueBinding, s: &Sqe, now: u64) -> Done {
    match admin(t, reg, q, s, &[], local(), now) {
        Outcome::Done {
            status,
            dw0,
            dw1,
            data,
        } => Done {
            status,
            dw0,
            dw1,
            data,
        },
        Outcome::Parked => panic!("parked"),
    }
}

fn run(t: &mut Target, reg: &Registry, q: &QueueBinding, s: &Sqe) -> Done {
    run_at(t, reg, q, s, 0)
}

fn ok(t: &mut Target, reg: &Registry, q: &QueueBinding, s: &Sqe) -> Done {
    let d = run(t, reg, q, s);
    assert_eq!(d.status, Status::SUCCESS, "{s:?}");
    d
}

fn prop_get(t: &mut Target, reg: &Registry, q: &QueueBinding, off: u32, eight: bool) -> u64 {
    let d = ok(
        t,
        reg,
        q,
        &fabrics_sqe(FCTYPE_PROPERTY_GET, &[(10, eight as u32), (11, off)]),
    );
    d.dw0 as u64 | (d.dw1 as u64) << 32
}

fn set_cc(t: &mut Target, reg: &Registry, q: &QueueBinding, v: u32) {
    ok(
        t,
        reg,
        q,
        &fabrics_sqe(FCTYPE_PROPERTY_SET, &[(11, PROP_CC), (12, v)]),
    );
}

const CC_ENABLE: u32 = 1 | 6 << 16 | 4 << 20;

fn enabled(t: &mut Target, reg: &Registry) -> QueueBinding {
    let q = admin_q(t, reg);
    set_cc(t, reg, &q, CC_ENABLE);
    q
}

fn identify(t: &mut Target, reg: &Registry, q: &QueueBinding, cns: u8, nsid: u32) -> Vec<u8> {
    ok(t, reg, q, &sqe(ADM_IDENTIFY, nsid, &[(10, cns as u32)])).data
}

fn get_log(
    t: &mut Target,
    reg: &Registry,
    q: &QueueBinding,
    lid: u8,
    len: u32,
    off: u64,
    rae: bool,
) -> Done {
    let numd = len / 4 - 1;
    let cdw10 = lid as u32 | (rae as u32) << 15 | (numd & 0xffff) << 16;
    run(
        t,
        reg,
        q,
        &sqe(
            ADM_GET_LOG_PAGE,
            0xffff_ffff,
            &[
                (10, cdw10),
                (11, numd >> 16),
                (12, off as u32),
                (13, (off >> 32) as u32),
            ],
        ),
    )
}

fn u16at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn text(b: &[u8]) -> &str {
    core::str::from_utf8(b).unwrap()
}

fn io_connect(
    t: &mut Target,
    reg: &Registry,
    cntlid: u16,
    qid: u16,
) -> Result<QueueBinding, (Status, u32)> {
    try_connect(t, reg, qid, cntlid, NQN, HOST, local()).map(|r| r.0)
}

// Connect.

#[test]
fn admin_connect_allocates_controllers() {
    let (mut t, reg) = setup();
    let (q, dw0) = try_connect(&mut t, &reg, 0, CNTLID_DYNAMIC, NQN, HOST, local()).unwrap();
    assert_eq!(dw0, q.cntlid as u32);
    assert_eq!(q.qid, 0);
    assert_eq!(q.sqsize, 32);
    assert!(!q.discovery && !q.sq_flow_disabled);
    let (q2, _) = try_connect(&mut t, &reg, 0, CNTLID_DYNAMIC, NQN, HOST, local()).unwrap();
    assert_ne!(q.cntlid, q2.cntlid);
    assert_eq!(t.qpairs().len(), 2);
    let qp = &t.qpairs()[0];
    assert_eq!((qp.cntlid, qp.qid, qp.subnqn.as_str()), (q.cntlid, 0, NQN));
    assert_eq!(qp.peer, "10.0.0.2:50000");
    assert_eq!(qp.local, "10.0.0.1:4420");
    let ci = t.controllers();
    assert_eq!(ci.len(), 2);
    assert_eq!(ci[0].hostid, Uuid(HOSTID).to_string());
    assert_eq!(ci[0].hostnqn, HOST);
    assert!(alive(&t, q.cntlid));
    assert_eq!(keep_alive_deadline(&t, q.cntlid), Some(5000));
    let st = t.stats();
    assert_eq!(
        (st.admin_qpairs, st.current_admin_qpairs, st.controllers),
        (2, 2, 2)
    );
}

#[test]
fn cntlid_range_of_subsystem() {
    let (mut t, reg) = setup();
    t.config.subsystems[0].min_cntlid = 10;
    t.config.subsystems[0].max_cntlid = 11;
    let a = admin_q(&mut t, &reg);
    let b = admin_q(&mut t, &reg);
    assert_eq!((a.cntlid, b.cntlid), (10, 11));
    let e = try_connect(&mut t, &reg, 0, CNTLID_DYNAMIC, NQN, HOST, local()).unwrap_err();
    assert_eq!(e.0, Status::CONNECT_CONTROLLER_BUSY);
    disconnect(&mut t, &a);
    assert_eq!(admin_q(&mut t, &reg).cntlid, 10);
}

#[test]
fn connect_refusals() {
    let (mut t, reg) = setup();
    let iattr = 1 << 16;
    // Host not on the allow list.
    let e = try_connect(&mut t, &reg, 0, CNTLID_DYNAMIC, NQN, HOST2, local()).unwrap_err();
    assert_eq!(e, (Status::CONNECT_INVALID_HOST, 0));
    // Unknown subsystem.
    let e = try_connect(
        &mut t,
        &reg,
        0,
        CNTLID_DYNAMIC,
        "nqn.2016-06.io.spdk:x",
        HOST,
        local(),
    )
    .unwrap_err();
    assert_eq!(e, (Status::CONNECT_INVALID_PARAMETERS, iattr | 256));
    // No listener on that port.
    let e = try_connect(
        &mut t,
        &reg,
        0,
        CNTLID_DYNAMIC,
        NQN,
        HOST,
        sa("10.0.0.1:4421"),
    )
    .unwrap_err();
    assert_eq!(e, (Status::CONNECT_INVALID_PARAMETERS, iattr | 256));
    // Static controller ID on an admin queue.
    let e = try_connect(&mut t, &reg, 0, 5, NQN, HOST, local()).unwrap_err();
    assert_eq!(e, (Status::CONNECT_INVALID_PARAMETERS, iattr | 16));
    // Record format.
    let mut s = connect_sqe(0, 31, 0);
    s.0[40] = 1;
    let d = connect_data(HOSTID, CNTLID_DYNAMIC, NQN, HOST);
    let e = connect(&mut t, &reg, &s, &d, local(), peer(), 0).unwrap_err();
    assert_eq!(e.0, Status::CONNECT_INCOMPATIBLE_FORMAT);
    // Queue sizes: 0 and past the admin limit.
    for sqsize in [0, 128] {
        let s = connect_sqe(0, sqsize, 0);
        let e = connect(&mut t, &reg, &s, &d, local(), peer(), 0).unwrap_err();
        assert_eq!(e, (Status::CONNECT_INVALID_PARAMETERS, 44));
    }
    // An NQN without its terminating NUL.
    let mut d2 = d.clone();
    d2[512..768].fill(b'a');
    let e = connect(
        &mut t,
        &reg,
        &connect_sqe(0, 31, 0),
        &d2,
        local(),
        peer(),
        0,
    )
    .unwrap_err();
    assert_eq!(e, (Status::CONNECT_INVALID_PARAMETERS, iattr | 512));
    // Short data.
    let e = connect(
        &mut t,
        &reg,
        &connect_sqe(0, 31, 0),
        &d[..100],
        local(),
        peer(),
        0,
    )
    .unwrap_err();
    assert_eq!(e.0, Status::DATA_SGL_LENGTH_INVALID);
    // No transport.
    t.config.transport = None;
    let e = try_connect(&mut t, &reg, 0, CNTLID_DYNAMIC, NQN, HOST, local()).unwrap_err();
    assert_eq!(e.0, Status::CONNECT_CONTROLLER_BUSY);
    assert!(t.qpairs().is_empty());
}

#[test]
fn io_connect_rules() {
    let (mut t, reg) = setup();
    let iattr = 1 << 16;
    let q = admin_q(&mut t, &reg);
    // Not enabled yet.
    let e = io_connect(&mut t, &reg, q.cntlid, 1).unwrap_err();
    assert_eq!(e.0, Status::COMMAND_SEQUENCE_ERROR);
    set_cc(&mut t, &reg, &q, CC_ENABLE);
    // Two queues granted.
    let d = ok(
        &mut t,
        &reg,
        &q,
        &sqe(
            ADM_SET_FEATURES,
            0,
            &[(10, FEAT_NUMBER_OF_QUEUES as u32), (11, 1 | 1 << 16)],
        ),
    );
    assert_eq!(d.dw0, 1 | 1 << 16);
    let (io1, dw0) = try_connect(&mut t, &reg, 1, q.cntlid, NQN, HOST, local()).unwrap();
    assert_eq!(dw0, q.cntlid as u32);
    assert_eq!((io1.qid, io1.cntlid, io1.sqsize), (1, q.cntlid, 32));
    // Duplicate and out of range.
    assert_eq!(
        io_connect(&mut t, &reg, q.cntlid, 1).unwrap_err(),
        (Status::CONNECT_INVALID_PARAMETERS, 42)
    );
    assert_eq!(
        io_connect(&mut t, &reg, q.cntlid, 3).unwrap_err(),
        (Status::CONNECT_INVALID_PARAMETERS, 42)
    );
    // Unknown controller.
    assert_eq!(
        io_connect(&mut t, &reg, 999, 2).unwrap_err(),
        (Status::CONNECT_INVALID_PARAMETERS, iattr | 16)
    );
    // Host identifier mismatch.
    let s = connect_sqe(2, 31, 0);
    let d = connect_data([9; 16], q.cntlid, NQN, HOST);
    assert_eq!(
        connect(&mut t, &reg, &s, &d, local(), peer(), 0).unwrap_err(),
        (Status::CONNECT_INVALID_PARAMETERS, iattr)
    );
    // Queue size beyond MQES.
    let s = connect_sqe(2, 128, 0);
    let d = connect_data(HOSTID, q.cntlid, NQN, HOST);
    assert_eq!(
        connect(&mut t, &reg, &s, &d, local(), peer(), 0).unwrap_err(),
        (Status::CONNECT_INVALID_PARAMETERS, 44)
    );
    // Flow control disabled.
    let mut s = connect_sqe(2, 127, 0);
    s.0[46] = 4;
    let (io2, _) = connect(&mut t, &reg, &s, &d, local(), peer(), 0).unwrap();
    assert!(io2.sq_flow_disabled);
    assert_eq!(io2.sqsize, 128);
    assert_eq!(t.controllers()[0].num_io_qpairs, 2);
    // Number of queues is fixed now.
    let d = run(
        &mut t,
        &reg,
        &q,
        &sqe(
            ADM_SET_FEATURES,
            0,
            &[(10, FEAT_NUMBER_OF_QUEUES as u32), (11, 3 | 3 << 16)],
        ),
    );
    assert_eq!(d.status, Status::COMMAND_SEQUENCE_ERROR);
    let st = t.stats();
    assert_eq!((st.io_qpairs, st.current_io_qpairs), (2, 2));
    // Another host's subsystem name or host NQN for this controller.
    t.config.subsystems[1]
        .listeners
        .push(listener("10.0.0.1", 4420));
    assert_eq!(
        try_connect(&mut t, &reg, 3, q.cntlid, NQN2, HOST, local()).unwrap_err(),
        (Status::CONNECT_INVALID_PARAMETERS, iattr | 256)
    );
    t.config.subsystems[0].hosts.push(HOST2.into());
    assert_eq!(
        try_connect(&mut t, &reg, 3, q.cntlid, NQN, HOST2, local()).unwrap_err(),
        (Status::CONNECT_INVALID_PARAMETERS, iattr | 512)
    );
    // Disconnects.
    disconnect(&mut t, &io1);
    assert_eq!(t.controllers()[0].num_io_qpairs, 1);
    assert!(io_connect(&mut t, &reg, q.cntlid, 1).is_ok());
    disconnect(&mut t, &q);
    assert!(!alive(&t, q.cntlid));
    assert!(t.controllers().is_empty());
    assert_eq!(t.stats().current_admin_qpairs, 0);
}

#[test]
fn io_namespace_lookup() {
    let (mut t, reg) = setup();
    let q = enabled(&mut t, &reg);
    let io = io_connect(&mut t, &reg, q.cntlid, 1).unwrap();
    let n = io_namespace(&t, &reg, &io, 1).unwrap();
    assert_eq!(
        (n.block_size, n.num_blocks, n.read_only),
        (512, 2048, false)
    );
    assert!(n.unmap && n.write_zeroes);
    let n3 = io_namespace(&t, &reg, &io, 3).unwrap();
    assert!(n3.read_only);
    assert_eq!(n3.block_size, 4096);
    assert_eq!(
        io_namespace(&t, &reg, &io, 2).unwrap_err(),
        Status::INVALID_NAMESPACE
    );
    assert_eq!(
        io_namespace(&t, &reg, &io, 0).unwrap_err(),
        Status::INVALID_NAMESPACE
    );
    // The admin queue is no I/O queue.
    assert!(io_namespace(&t, &reg, &q, 1).is_err());
    assert!(!write_cache_enabled(&t, q.cntlid));
}

// Properties.

#[test]
fn properties_and_controller_state() {
    let (mut t, reg) = setup();
    let q = admin_q(&mut t, &reg);
    let cap = prop_get(&mut t, &reg, &q, PROP_CAP, true);
    assert_eq!(cap & 0xffff, 127); // MQES
    assert_eq!(cap >> 16 & 1, 1); // CQR
    assert_eq!(cap >> 24 & 0xff, 30); // TO
    assert_eq!(cap >> 32 & 0xf, 0); // DSTRD
    assert_eq!(cap >> 37 & 0xff, 1); // CSS: NVM
    assert_eq!(cap >> 48 & 0xff, 0); // MPSMIN, MPSMAX
    assert_eq!(
        prop_get(&mut t, &reg, &q, PROP_CAP, false),
        cap & 0xffff_ffff
    );
    assert_eq!(prop_get(&mut t, &reg, &q, 4, false), cap >> 32);
    assert_eq!(prop_get(&mut t, &reg, &q, PROP_VS, false), 0x0002_0000);
    assert_eq!(prop_get(&mut t, &reg, &q, PROP_CSTS, false), 0);
    // Unknown offsets and sizes.
    for (off, size) in [(0x0c, 0), (PROP_VS, 1), (0x40, 0), (PROP_CC, 2)] {
        let d = run(
            &mut t,
            &reg,
            &q,
            &fabrics_sqe(FCTYPE_PROPERTY_GET, &[(10, size), (11, off)]),
        );
        assert_eq!(d.status, Status::INVALID_FIELD);
    }
    // Read-only properties.
    let d = run(
        &mut t,
        &reg,
        &q,
        &fabrics_sqe(FCTYPE_PROPERTY_SET, &[(11, PROP_CSTS), (12, 1)]),
    );
    assert_eq!(d.status, Status::INVALID_FIELD);
    // Admin commands wait for CC.EN.
    let d = run(&mut t, &reg, &q, &sqe(ADM_IDENTIFY, 0, &[(10, 1)]));
    assert_eq!(d.status, Status::COMMAND_SEQUENCE_ERROR);
    set_cc(&mut t, &reg, &q, CC_ENABLE);
    assert_eq!(prop_get(&mut t, &reg, &q, PROP_CC, false), CC_ENABLE as u64);
    assert_eq!(prop_get(&mut t, &reg, &q, PROP_CSTS, false), 1);
    let io = io_connect(&mut t, &reg, q.cntlid, 1).unwrap();
    assert!(queue_alive(&t, &io));
    // Reset: RDY drops, I/O queues detach, the admin queue stays.
    let seq = t.events_seq();
    set_cc(&mut t, &reg, &q, CC_ENABLE & !1);
    assert_eq!(prop_get(&mut t, &reg, &q, PROP_CSTS, false), 0);
    assert!(t.events_seq() != seq);
    assert!(!queue_alive(&t, &io));
    assert!(queue_alive(&t, &q));
    assert!(alive(&t, q.cntlid));
    assert_eq!(
        io_namespace(&t, &reg, &io, 1).unwrap_err(),
        Status::ABORTED_SQ_DELETION
    );
    // Re-enable, then shut down.
    set_cc(&mut t, &reg, &q, CC_ENABLE);
    let io = io_connect(&mut t, &reg, q.cntlid, 1).unwrap();
    set_cc(&mut t, &reg, &q, CC_ENABLE | 1 << 14);
    assert_eq!(prop_get(&mut t, &reg, &q, PROP_CSTS, false), 1 | 2 << 2);
    assert!(!queue_alive(&t, &io));
    assert_eq!(
        io_connect(&mut t, &reg, q.cntlid, 2).unwrap_err().0,
        Status::COMMAND_SEQUENCE_ERROR
    );
}

#[test]
fn bad_cc_sets_fatal_status() {
    let (mut t, reg) = setup();
    let q = admin_q(&mut t, &reg);
    // MPS 1 (8 KiB pages) is beyond MPSMAX.
    set_cc(&mut t, &reg, &q, CC_ENABLE | 1 << 7);
    assert_eq!(prop_get(&mut t, &reg, &q, PROP_CSTS, false), 2);
}

// Identify.

#[test]
fn identify_controller_fields() {
    let (mut t, reg) = setup();
    let q = enabled(&mut t, &reg);
    let b = identify(&mut t, &reg, &q, CNS_CONTROLLER, 0);
    assert_eq!(b.len(), 4096);
    assert_eq!(u16at(&b, 0), 0);
    assert_eq!(text(&b[4..24]), "SN0001              ");
    assert_eq!(text(&b[24..64]).trim_end(), "ironbay test");
    assert_eq!(text(&b[64..72]).trim_end(), env!("CARGO_PKG_VERSION"));
    assert_eq!(b[76], 2); // CMIC
    assert_eq!(b[77], 5); // MDTS: 128 KiB
    assert_eq!(u16at(&b, 78), q.cntlid);
    assert_eq!(u32at(&b, 80), 0x0002_0000);
    assert_eq!(u32at(&b, 92), 1 << 8); // OAES
    assert_eq!(u32at(&b, 96), 1); // CTRATT
    assert_eq!(b[111], 1); // CNTRLTYPE
    assert_eq!(u16at(&b, 256), 0); // OACS
    assert_eq!((b[258], b[259]), (3, 3)); // ACL, AERL
    assert_eq!(b[260], 3); // FRMW
    assert_eq!(b[261], 6); // LPA
    assert_eq!(b[262], 63); // ELPE
    assert_eq!(b[263], 0); // NPSS
    assert_eq!(u16at(&b, 320), 1); // KAS
    assert_eq!((b[512], b[513]), (0x66, 0x44));
    assert_eq!(u16at(&b, 514), 128); // MAXCMD
    assert_eq!(u32at(&b, 516), 1024); // NN
    assert_eq!(u16at(&b, 520), 0x0d); // ONCS
    assert_eq!(u16at(&b, 522), 0); // FUSES
    assert_eq!(b[525], 0); // VWC: malloc bdevs have no cache
    assert_eq!(u32at(&b, 536), 1 | 1 << 20); // SGLS
    assert_eq!(&b[768..768 + NQN.len()], NQN.as_bytes());
    assert_eq!(b[768 + NQN.len()], 0);
    assert_eq!(u32at(&b, 1792), (64 + 4096) / 16); // IOCCSZ
    assert_eq!(u32at(&b, 1796), 1); // IORCSZ
    assert_eq!(u16at(&b, 1800), 0); // ICDOFF
    assert_eq!((b[1802], b[1803]), (0, 1)); // FCATT, MSDBD
}

#[test]
fn identify_namespace_fields() {
    let (mut t, mut reg) = setup();
    let q = enabled(&mut t, &reg);
    let b = identify(&mut t, &reg, &q, CNS_NAMESPACE, 1);
    assert_eq!(u64at(&b, 0), 2048);
    assert_eq!(u64at(&b, 8), 2048);
    assert_eq!(u64at(&b, 16), 2048);
    assert_eq!((b[24], b[25], b[26]), (0, 0, 0)); // NSFEAT, NLBAF, FLBAS
    assert_eq!(b[30], 1); // NMIC
    assert_eq!(b[33], 0b1001); // DLFEAT
    assert_eq!(u64at(&b, 48), 2048 * 512); // NVMCAP
    assert_eq!(b[99], 0); // NSATTR
    let id0 = reg.find("Malloc0").unwrap();
    let uuid = reg.info(id0).unwrap().uuid;
    assert_eq!(&b[104..120], &uuid.0); // NGUID
    assert_eq!(&b[120..128], &[0; 8]); // EUI64
    assert_eq!(u32at(&b, 128), 9 << 16); // LBAF0: LBADS 9
    let b = identify(&mut t, &reg, &q, CNS_NAMESPACE, 3);
    assert_eq!(b[99], 1); // write protected
    assert_eq!(b[130], 12);
    // Inactive namespace: zeroes. Invalid IDs: refused.
    assert!(
        identify(&mut t, &reg, &q, CNS_NAMESPACE, 2)
            .iter()
            .all(|&x| x == 0)
    );
    for nsid in [0, 1025, 0xffff_ffff] {
        let d = run(&mut t, &reg, &q, &sqe(ADM_IDENTIFY, nsid, &[(10, 0)]));
        assert_eq!(d.status, Status::INVALID_NAMESPACE, "{nsid}");
    }
    // Configured identifiers win.
    t.config.subsystems[0].namespaces[0].eui64 = Some([1, 2, 3, 4, 5, 6, 7, 8]);
    t.config.subsystems[0].namespaces[0].nguid = Some([0xab; 16]);
    t.refresh(&reg);
    let b = identify(&mut t, &reg, &q, CNS_NAMESPACE, 1);
    assert_eq!(&b[104..120], &[0xab; 16]);
    assert_eq!(&b[120..128], &[1, 2, 3, 4, 5, 6, 7, 8]);
    // The bdev going away makes the namespace inactive.
    reg.remove(id0).unwrap();
    t.refresh(&reg);
    assert!(
        identify(&mut t, &reg, &q, CNS_NAMESPACE, 1)
            .iter()
            .all(|&x| x == 0)
    );
}

#[test]
fn identify_lists_and_descriptors() {
    let (mut t, reg) = setup();
    let q = enabled(&mut t, &reg);
    let b = identify(&mut t, &reg, &q, CNS_ACTIVE_NS_LIST, 0);
    assert_eq!((u32at(&b, 0), u32at(&b, 4), u32at(&b, 8)), (1, 3, 0));
    let b = identify(&mut t, &reg, &q, CNS_ACTIVE_NS_LIST, 1);
    assert_eq!((u32at(&b, 0), u32at(&b, 4)), (3, 0));
    let d = run(
        &mut t,
        &reg,
        &q,
        &sqe(ADM_IDENTIFY, 0xffff_fffe, &[(10, 2)]),
    );
    assert_eq!(d.status, Status::INVALID_NAMESPACE);
    // CNS 07h for the NVM command set is the same list.
    let b = identify(&mut t, &reg, &q, CNS_CSI_ACTIVE_NS_LIST, 0);
    assert_eq!(u32at(&b, 0), 1);
    let d = run(
        &mut t,
        &reg,
        &q,
        &sqe(ADM_IDENTIFY, 0, &[(10, 7), (11, 2 << 24)]),
    );
    assert_eq!(d.status, Status::INVALID_FIELD);
    // Descriptors: NGUID, UUID, CSI.
    let b = identify(&mut t, &reg, &q, CNS_NS_DESCRIPTORS, 1);
    let uuid = reg.info(reg.find("Malloc0").unwrap()).unwrap().uuid.0;
    assert_eq!(&b[0..4], &[2, 16, 0, 0]);
    assert_eq!(&b[4..20], &uuid);
    assert_eq!(&b[20..24], &[3, 16, 0, 0]);
    assert_eq!(&b[24..40], &uuid);
    assert_eq!(&b[40..45], &[4, 1, 0, 0, 0]);
    assert!(b[45..].iter().all(|&x| x == 0));
    let d = run(&mut t, &reg, &q, &sqe(ADM_IDENTIFY, 2, &[(10, 3)]));
    assert_eq!(d.status, Status::INVALID_NAMESPACE);
    t.config.subsystems[0].namespaces[0].eui64 = Some([9; 8]);
    t.refresh(&reg);
    let b = identify(&mut t, &reg, &q, CNS_NS_DESCRIPTORS, 1);
    assert_eq!(&b[0..12], &[1, 8, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9]);
    assert_eq!(&b[12..14], &[2, 16]);
}

#[test]
fn identify_command_set_structures() {
    let (mut t, reg) = setup();
    let q = enabled(&mut t, &reg);
    // NVM-specific namespace: all zero, but only for valid IDs.
    assert!(
        identify(&mut t, &reg, &q, CNS_CSI_NAMESPACE, 1)
            .iter()
            .all(|&x| x == 0)
    );
    let d = run(&mut t, &reg, &q, &sqe(ADM_IDENTIFY, 0, &[(10, 5)]));
    assert_eq!(d.status, Status::INVALID_NAMESPACE);
    let d = run(
        &mut t,
        &reg,
        &q,
        &sqe(ADM_IDENTIFY, 1, &[(10, 5), (11, 1 << 24)]),
    );
    assert_eq!(d.status, Status::INVALID_FIELD);
    // NVM-specific controller.
    let b = identify(&mut t, &reg, &q, CNS_CSI_CONTROLLER, 0);
    assert_eq!((b[0], b[1], b[2], b[3]), (0, 0, 0, 0));
    assert_eq!(u32at(&b, 4), u32::MAX); // DMRSL of the malloc bdevs
    assert_eq!(u64at(&b, 8), 0);
    // Command set independent namespace.
    let b = identify(&mut t, &reg, &q, CNS_CSI_INDEPENDENT_NAMESPACE, 3);
    assert_eq!((b[0], b[1], b[8], b[14]), (0, 1, 1, 1));
    assert!(
        identify(&mut t, &reg, &q, CNS_CSI_INDEPENDENT_NAMESPACE, 2)
            .iter()
            .all(|&x| x == 0)
    );
    // Command set combinations: NVM only.
    let b = identify(&mut t, &reg, &q, CNS_COMMAND_SET_LIST, 0);
    assert_eq!(u64at(&b, 0), 1);
    assert_eq!(u64at(&b, 8), 0);
    // Unknown CNS.
    for cns in [0x04, 0x10, 0x12, 0x1f] {
        let d = run(&mut t, &reg, &q, &sqe(ADM_IDENTIFY, 1, &[(10, cns)]));
        assert_eq!(d.status, Status::INVALID_FIELD);
    }
}

// Log pages.

#[test]
fn error_log_newest_first() {
    let (mut t, reg) = setup();
    let q = enabled(&mut t, &reg);
    let bad = sqe(0xc0, 0, &[]);
    assert_eq!(run(&mut t, &reg, &q, &bad).status, Status::INVALID_OPCODE);
    t.log_error(q.cntlid, 1, 77, Status::LBA_OUT_OF_RANGE, 1, 4096);
    let d = get_log(&mut t, &reg, &q, LOG_ERROR, 128, 0, false);
    assert_eq!(d.status, Status::SUCCESS);
    let b = d.data;
    assert_eq!(b.len(), 128);
    assert_eq!(u64at(&b, 0), 2);
    assert_eq!((u16at(&b, 8), u16at(&b, 10)), (1, 77));
    assert_eq!(u16at(&b, 12) >> 1, Status::LBA_OUT_OF_RANGE.field());
    assert_eq!(u16at(&b, 14), 0xffff);
    assert_eq!(u64at(&b, 16), 4096);
    assert_eq!(u32at(&b, 24), 1);
    assert_eq!(b[29], 3);
    assert_eq!(u64at(&b, 64), 1);
    assert_eq!(u16at(&b, 64 + 10), 0x34);
    assert_eq!(u16at(&b, 64 + 12) >> 1, Status::INVALID_OPCODE.field());
    // Bounded.
    for i in 0..100 {
        t.log_error(q.cntlid, 1, i, Status::INTERNAL, 1, 0);
    }
    let b = get_log(&mut t, &reg, &q, LOG_ERROR, 4096, 0, false).data;
    assert_eq!(u64at(&b, 0), 102);
    assert_eq!(u64at(&b, 63 * 64), 39);
}

#[test]
fn smart_and_firmware_logs() {
    let (mut t, reg) = setup();
    let q = enabled(&mut t, &reg);
    t.note_io(q.cntlid, false, 512 * 1000 + 1);
    t.note_io(q.cntlid, true, 4096);
    t.note_io(q.cntlid, true, 4096);
    let d = run_at(
        &mut t,
        &reg,
        &q,
        &sqe(ADM_GET_LOG_PAGE, 0xffff_ffff, &[(10, 2 | 127 << 16)]),
        7_200_000,
    );
    let b = d.data;
    assert_eq!(b.len(), 512);
    assert_eq!(b[0], 0);
    assert_eq!(u16at(&b, 1), 321);
    assert_eq!((b[3], b[4], b[5]), (100, 10, 0));
    assert_eq!(u64at(&b, 32), 1); // data units read
    assert_eq!(u64at(&b, 48), 1); // data units written
    assert_eq!(u64at(&b, 64), 1);
    assert_eq!(u64at(&b, 80), 2);
    assert_eq!(u64at(&b, 128), 2); // power on hours
    let st = t.stats();
    assert_eq!(
        (st.read_cmds, st.write_cmds, st.bytes_written),
        (1, 2, 8192)
    );
    let c = &t.controllers()[0];
    assert_eq!((c.read_cmds, c.bytes_read), (1, 512_001));
    let b = get_log(&mut t, &reg, &q, LOG_FIRMWARE_SLOT, 512, 0, false).data;
    assert_eq!(b[0], 1);
    assert_eq!(text(&b[8..16]).trim_end(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn effects_log() {
    let (mut t, reg) = setup();
    let q = enabled(&mut t, &reg);
    let b = get_log(&mut t, &reg, &q, LOG_COMMANDS_EFFECTS, 4096, 0, false).data;
    assert_eq!(u32at(&b, 6 * 4), 1); // Identify
    assert_eq!(u32at(&b, 0x18 * 4), 1); // Keep Alive
    assert_eq!(u32at(&b, 0x10 * 4), 0);
    assert_eq!(u32at(&b, 1024 + 4), 3); // Write: LBCC
    assert_eq!(u32at(&b, 1024 + 8), 1); // Read
    assert_eq!(u32at(&b, 1024 + 4 * 4), 0); // Write Uncorrectable
    // Another command set.
    let d = run(
        &mut t,
        &reg,
        &q,
        &sqe(ADM_GET_LOG_PAGE, 0, &[(10, 5 | 1023 << 16), (14, 2 << 24)]),
    );
    assert_eq!(d.status, Status::INVALID_FIELD);
}

#[test]
fn supported_log_pages() {
    let (mut t, reg) = setup();
    let q = enabled(&mut t, &reg);
    let b = get_log(&mut t, &reg, &q, 0, 1024, 0, false).data;
    let lids: Vec<usize> = (0..256).filter(|&i| u32at(&b, i * 4) & 1 != 0).collect();
    assert_eq!(lids, [0, 1, 2, 3, 4, 5]);
    let dq = disc_q(&mut t, &reg, HOST, sa("10.0.0.9:8009"));
    let b = get_log(&mut t, &reg, &dq, 0, 1024, 0, false).data;
    let lids: Vec<usize> = (0..256).filter(|&i| u32at(&b, i * 4) & 1 != 0).collect();
    assert_eq!(lids, [0, 1, 0x70]);
}

#[test]
fn log_offsets_and_lengths() {
    let (mut t, reg) = setup();
    let q = enabled(&mut t, &reg);
    let full = get_log(&mut t, &reg, &q, LOG_COMMANDS_EFFECTS, 4096, 0, false).data;
    let part = get_log(&mut t, &reg, &q, LOG_COMMANDS_EFFECTS, 8, 1024, false).data;
    assert_eq!(part, &full[1024..1032]);
    // Past the end reads zeroes.
    let tail = get_log(&mut t, &reg, &q, LOG_COMMANDS_EFFECTS, 16, 4088, false).data;
    assert_eq!(&tail[..8], &full[4088..]);
    assert_eq!(&tail[8..], &[0; 8]);
    // Unaligned offset, offset past the page, unknown log page.
    assert_eq!(
        get_log(&mut t, &reg, &q, LOG_COMMANDS_EFFECTS, 8, 2, false).status,
        Status::INVALID_FIELD
    );
    assert_eq!(
        get_log(&mut t, &reg, &q, LOG_COMMANDS_EFFECTS, 8, 8192, false).status,
        Status::INVALID_FIELD
    );
    assert_eq!(
        get_log(&mut t, &reg, &q, 0x0d, 8, 0, false).status,
        Status::INVALID_LOG_PAGE
    );
    assert_eq!(
        get_log(&mut t, &reg, &q, LOG_DISCOVERY, 8, 0, false).status,
        Status::INVALID_LOG_PAGE
    );
    // Huge lengths are bounded.
    let d = run(
        &mut t,
        &reg,
        &q,
        &sqe(ADM_GET_LOG_PAGE, 0, &[(10, 5 | 0xffff << 16), (11, 0xffff)]),
    );
    assert_eq!(d.data.len(), 4096 + (64 << 10));
}

// Features.

#[test]
fn features_get_set() {
    let (mut t, reg) = setup();
    let q = enabled(&mut t, &reg);
    let set = |t: &mut Target, fid: u8, v: u32| {
        run(
            t,
            &reg,
            &q,
            &sqe(ADM_SET_FEATURES, 0, &[(10, fid as u32), (11, v)]),
        )
    };
    let get = |t: &mut Target, fid: u8, sel: u32, cdw11: u32| {
        run(
            t,
            &reg,
            &q,
            &sqe(
                ADM_GET_FEATURES,
                0,
                &[(10, fid as u32 | sel << 8), (11, cdw11)],
            ),
        )
    };
    // Number of queues: default is the maximum; grants are capped.
    assert_eq!(
        get(&mut t, FEAT_NUMBER_OF_QUEUES, 0, 0).dw0,
        126 | 126 << 16
    );
    assert_eq!(
        set(&mut t, FEAT_NUMBER_OF_QUEUES, 500 | 3 << 16).dw0,
        3 | 3 << 16
    );
    assert_eq!(get(&mut t, FEAT_NUMBER_OF_QUEUES, 0, 0).dw0, 3 | 3 << 16);
    assert_eq!(
        get(&mut t, FEAT_NUMBER_OF_QUEUES, 1, 0).dw0,
        126 | 126 << 16
    );
    assert_eq!(
        set(&mut t, FEAT_NUMBER_OF_QUEUES, 0xffff).status,
        Status::INVALID_FIELD
    );
    // Async event configuration.
    assert_eq!(
        set(&mut t, FEAT_ASYNC_EVENT_CONFIG, 1 << 8).status,
        Status::SUCCESS
    );
    assert_eq!(get(&mut t, FEAT_ASYNC_EVENT_CONFIG, 0, 0).dw0, 1 << 8);
    assert_eq!(
        set(&mut t, FEAT_ASYNC_EVENT_CONFIG, 1 << 9).status,
        Status::INVALID_FIELD
    );
    // Keep alive.
    assert_eq!(
        set(&mut t, FEAT_KEEP_ALIVE_TIMER, 10_000).status,
        Status::SUCCESS
    );
    assert_eq!(get(&mut t, FEAT_KEEP_ALIVE_TIMER, 0, 0).dw0, 10_000);
    assert_eq!(keep_alive_deadline(&t, q.cntlid), Some(10_000));
    // Volatile write cache.
    assert_eq!(get(&mut t, FEAT_VOLATILE_WRITE_CACHE, 0, 0).dw0, 0);
    set(&mut t, FEAT_VOLATILE_WRITE_CACHE, 1);
    assert!(write_cache_enabled(&t, q.cntlid));
    assert_eq!(get(&mut t, FEAT_VOLATILE_WRITE_CACHE, 0, 0).dw0, 1);
    // Temperature thresholds.
    assert_eq!(get(&mut t, FEAT_TEMPERATURE_THRESHOLD, 0, 0).dw0, 343);
    set(&mut t, FEAT_TEMPERATURE_THRESHOLD, 300 | 1 << 20);
    assert_eq!(
        get(&mut t, FEAT_TEMPERATURE_THRESHOLD, 0, 1 << 20).dw0,
        300 | 1 << 20
    );
    assert_eq!(
        set(&mut t, FEAT_TEMPERATURE_THRESHOLD, 3 << 16).status,
        Status::INVALID_FIELD
    );
    // Arbitration, power management, error recovery, write atomicity.
    set(&mut t, FEAT_ARBITRATION, 0x0102_0304);
    assert_eq!(get(&mut t, FEAT_ARBITRATION, 0, 0).dw0, 0x0102_0304);
    assert_eq!(
        set(&mut t, FEAT_POWER_MANAGEMENT, 1).status,
        Status::INVALID_FIELD
    );
    assert_eq!(
        set(&mut t, FEAT_ERROR_RECOVERY, 1 << 16).status,
        Status::INVALID_FIELD
    );
    set(&mut t, FEAT_ERROR_RECOVERY, 50);
    assert_eq!(get(&mut t, FEAT_ERROR_RECOVERY, 0, 0).dw0, 50);
    set(&mut t, FEAT_WRITE_ATOMICITY, 1);
    assert_eq!(get(&mut t, FEAT_WRITE_ATOMICITY, 0, 0).dw0, 1);
    // Host identifier.
    let d = get(&mut t, FEAT_HOST_IDENTIFIER, 0, 1);
    assert_eq!(d.data, HOSTID.to_vec());
    assert_eq!(
        get(&mut t, FEAT_HOST_IDENTIFIER, 0, 0).status,
        Status::INVALID_FIELD
    );
    assert_eq!(
        set(&mut t, FEAT_HOST_IDENTIFIER, 1).status,
        Status::COMMAND_SEQUENCE_ERROR
    );
    // Capabilities, save, unknown.
    assert_eq!(get(&mut t, FEAT_ARBITRATION, 3, 0).dw0, 4);
    let d = run(
        &mut t,
        &reg,
        &q,
        &sqe(
            ADM_SET_FEATURES,
            0,
            &[(10, FEAT_ARBITRATION as u32 | 1 << 31)],
        ),
    );
    assert_eq!(d.status, Status::FEATURE_NOT_SAVEABLE);
    assert_eq!(set(&mut t, 0x0e, 0).status, Status::INVALID_FIELD);
    assert_eq!(get(&mut t, 0x0c, 0, 0).status, Status::INVALID_FIELD);
    // Abort is accepted but aborts nothing.
    assert_eq!(ok(&mut t, &reg, &q, &sqe(ADM_ABORT, 0, &[])).dw0, 1);
}

// Events.

#[test]
fn aer_limit_and_namespace_events() {
    let (mut t, mut reg) = setup();
    let q = enabled(&mut t, &reg);
    ok(
        &mut t,
        &reg,
        &q,
        &sqe(
            ADM_SET_FEATURES,
            0,
            &[(10, FEAT_ASYNC_EVENT_CONFIG as u32), (11, 1 << 8)],
        ),
    );
    let aer = sqe(ADM_ASYNC_EVENT_REQUEST, 0, &[]);
    for _ in 0..4 {
        assert_eq!(
            admin(&mut t, &reg, &q, &aer, &[], local(), 0),
            Outcome::Parked
        );
    }
    assert_eq!(
        run(&mut t, &reg, &q, &aer).status,
        Status::ASYNC_EVENT_LIMIT_EXCEEDED
    );
    assert_eq!(take_event(&mut t, q.cntlid), None);
    // A namespace is added: one event.
    let seq = t.events_seq();
    t.config.subsystems[0].namespaces.push(ns(2, "Malloc2"));
    t.refresh(&reg);
    assert_ne!(t.events_seq(), seq);
    assert_eq!(take_event(&mut t, q.cntlid), Some(AEN_NS_ATTR_CHANGED));
    assert_eq!(AEN_NS_ATTR_CHANGED, 0x0004_0002);
    // Masked until the log is read.
    t.config.subsystems[0].namespaces.retain(|n| n.nsid != 3);
    let seq = t.events_seq();
    t.refresh(&reg);
    assert_eq!(t.events_seq(), seq);
    assert_eq!(take_event(&mut t, q.cntlid), None);
    // Read with RAE: cleared but still masked.
    let b = get_log(&mut t, &reg, &q, LOG_CHANGED_NS, 4096, 0, true).data;
    assert_eq!((u32at(&b, 0), u32at(&b, 4), u32at(&b, 8)), (2, 3, 0));
    let b = get_log(&mut t, &reg, &q, LOG_CHANGED_NS, 4096, 0, false).data;
    assert_eq!(u32at(&b, 0), 0);
    // Unmasked now: a resize is a change too.
    let id = reg.find("Malloc0").unwrap();
    reg.resize(id, 4096).unwrap();
    t.refresh(&reg);
    assert_eq!(take_event(&mut t, q.cntlid), Some(AEN_NS_ATTR_CHANGED));
    let b = get_log(&mut t, &reg, &q, LOG_CHANGED_NS, 8, 0, false).data;
    assert_eq!(u32at(&b, 0), 1);
    // Two AERs are still parked: the transport takes events for them.
    t.config.subsystems[0].namespaces.retain(|n| n.nsid != 2);
    t.refresh(&reg);
    assert_eq!(take_event(&mut t, q.cntlid), Some(AEN_NS_ATTR_CHANGED));
    get_log(&mut t, &reg, &q, LOG_CHANGED_NS, 8, 0, false);
    t.config.subsystems[0].namespaces.push(ns(2, "Malloc2"));
    t.refresh(&reg);
    assert_eq!(take_event(&mut t, q.cntlid), Some(AEN_NS_ATTR_CHANGED));
    get_log(&mut t, &reg, &q, LOG_CHANGED_NS, 8, 0, false);
    // None is parked now: the next AER gets the event directly.
    t.config.subsystems[0].namespaces.retain(|n| n.nsid != 2);
    t.refresh(&reg);
    assert_eq!(take_event(&mut t, q.cntlid), None);
    let d = ok(&mut t, &reg, &q, &aer);
    assert_eq!(d.dw0, AEN_NS_ATTR_CHANGED);
}

#[test]
fn no_event_without_config_and_overflow() {
    let (mut t, reg) = setup();
    let q = enabled(&mut t, &reg);
    let aer = sqe(ADM_ASYNC_EVENT_REQUEST, 0, &[]);
    assert_eq!(
        admin(&mut t, &reg, &q, &aer, &[], local(), 0),
        Outcome::Parked
    );
    t.config.subsystems[0].namespaces.push(ns(2, "Malloc2"));
    t.refresh(&reg);
    assert_eq!(take_event(&mut t, q.cntlid), None);
    let b = get_log(&mut t, &reg, &q, LOG_CHANGED_NS, 8, 0, false).data;
    assert_eq!(u32at(&b, 0), 2);
    // More than 1024 changes: the list overflows.
    let c = t.ctrl_mut(q.cntlid).unwrap();
    let many: Vec<u32> = (1..=1100).collect();
    c.ns_changed(&many);
    let b = get_log(&mut t, &reg, &q, LOG_CHANGED_NS, 8, 0, false).data;
    assert_eq!((u32at(&b, 0), u32at(&b, 4)), (0xffff_ffff, 0));
}

// Keep alive.

#[test]
fn keep_alive_expiry() {
    let (mut t, reg) = setup();
    let q = enabled(&mut t, &reg);
    assert_eq!(keep_alive_deadline(&t, q.cntlid), Some(5000));
    run_at(&mut t, &reg, &q, &sqe(ADM_KEEP_ALIVE, 0, &[]), 4000);
    assert_eq!(keep_alive_deadline(&t, q.cntlid), Some(9000));
    check_keep_alive(&mut t, q.cntlid, 8999);
    assert!(alive(&t, q.cntlid));
    let seq = t.events_seq();
    check_keep_alive(&mut t, q.cntlid, 9000);
    assert!(!alive(&t, q.cntlid));
    assert_ne!(t.events_seq(), seq);
    assert_eq!(keep_alive_deadline(&t, q.cntlid), None);
    // A dead controller takes no I/O queues and no commands.
    assert!(io_connect(&mut t, &reg, q.cntlid, 1).is_err());
    assert_eq!(
        run(&mut t, &reg, &q, &sqe(ADM_KEEP_ALIVE, 0, &[])).status,
        Status::COMMAND_SEQUENCE_ERROR
    );
    // KATO 0: no timer.
    let s = connect_sqe(0, 31, 0);
    let d = connect_data(HOSTID, CNTLID_DYNAMIC, NQN, HOST);
    let (q2, _) = connect(&mut t, &reg, &s, &d, local(), peer(), 0).unwrap();
    assert_eq!(keep_alive_deadline(&t, q2.cntlid), None);
}

#[test]
fn discovery_kato_zero_still_expires() {
    let (mut t, reg) = setup();
    // A discovery session with KATO 0 gets a timer, so a host that vanished
    // does not hold its controller forever.
    let q = disc_q(&mut t, &reg, HOST, sa("10.0.0.9:8009"));
    assert_eq!(
        keep_alive_deadline(&t, q.cntlid),
        Some(DISCOVERY_KATO_MS as u64)
    );
    check_keep_alive(&mut t, q.cntlid, DISCOVERY_KATO_MS as u64);
    assert!(!alive(&t, q.cntlid));
    // A KATO the host chose is kept.
    let s = connect_sqe(0, 31, 7000);
    let d = connect_data(HOSTID, CNTLID_DYNAMIC, DISCOVERY_NQN, HOST);
    let (q2, _) = connect(&mut t, &reg, &s, &d, local(), peer(), 0).unwrap();
    assert_eq!(keep_alive_deadline(&t, q2.cntlid), Some(7000));
}

// Refresh.

#[test]
fn refresh_fails_unreachable_controllers() {
    let (mut t, reg) = setup();
    let a = enabled(&mut t, &reg);
    let io = io_connect(&mut t, &reg, a.cntlid, 1).unwrap();
    // Host removed from the allow list.
    t.config.subsystems[0].hosts.clear();
    let seq = t.events_seq();
    t.refresh(&reg);
    assert!(!alive(&t, a.cntlid));
    assert!(!queue_alive(&t, &io));
    assert_ne!(t.events_seq(), seq);
    assert!(!t.controllers()[0].alive);
    // Subsystem deleted.
    t.config.subsystems[0].hosts.push(HOST.into());
    let b = enabled(&mut t, &reg);
    t.config.subsystems.remove(0);
    t.refresh(&reg);
    assert!(!alive(&t, b.cntlid));
    // Listener removed.
    let (mut t, reg) = setup();
    let c = enabled(&mut t, &reg);
    t.config.subsystems[0].listeners.clear();
    t.refresh(&reg);
    assert!(!alive(&t, c.cntlid));
    // Nothing changed: nothing happens.
    let (mut t, reg) = setup();
    let d = enabled(&mut t, &reg);
    let seq = t.events_seq();
    t.refresh(&reg);
    assert!(alive(&t, d.cntlid));
    assert_eq!(t.events_seq(), seq);
}

// Discovery.

fn disc_q(t: &mut Target, reg: &Registry, host: &str, at: SocketAddr) -> QueueBinding {
    let s = connect_sqe(0, 31, 0);
    let d = connect_data(HOSTID, CNTLID_DYNAMIC, DISCOVERY_NQN, host);
    let (q, _) = connect(t, reg, &s, &d, at, peer(), 0).unwrap();
    assert!(q.discovery);
    set_cc(t, reg, &q, 1);
    q
}

#[test]
fn discovery_controller() {
    let (mut t, reg) = setup();
    // Any port, any host.
    let q = disc_q(&mut t, &reg, HOST, sa("10.0.0.9:8009"));
    let b = identify(&mut t, &reg, &q, CNS_CONTROLLER, 0);
    assert_eq!(b[111], 2);
    assert_eq!(u32at(&b, 92), 1 << 31);
    assert_eq!(u32at(&b, 516), 0);
    assert_eq!(b[261], 4);
    assert_eq!(&b[768..768 + DISCOVERY_NQN.len()], DISCOVERY_NQN.as_bytes());
    assert_eq!(u32at(&b, 536), 1 | 1 << 20);
    for cns in [0, 2, 3, 5, 8] {
        let d = run(&mut t, &reg, &q, &sqe(ADM_IDENTIFY, 1, &[(10, cns)]));
        assert_eq!(d.status, Status::INVALID_FIELD);
    }
    assert!(
        identify(&mut t, &reg, &q, CNS_CSI_CONTROLLER, 0)
            .iter()
            .all(|&x| x == 0)
    );
    // No I/O queues, no I/O log pages or features.
    assert_eq!(
        try_connect(
            &mut t,
            &reg,
            1,
            q.cntlid,
            DISCOVERY_NQN,
            HOST,
            sa("10.0.0.9:8009")
        )
        .unwrap_err()
        .0,
        Status::CONNECT_INVALID_PARAMETERS
    );
    assert_eq!(
        get_log(&mut t, &reg, &q, LOG_SMART, 512, 0, false).status,
        Status::INVALID_LOG_PAGE
    );
    let d = run(
        &mut t,
        &reg,
        &q,
        &sqe(ADM_SET_FEATURES, 0, &[(10, FEAT_NUMBER_OF_QUEUES as u32)]),
    );
    assert_eq!(d.status, Status::INVALID_FIELD);
    assert_eq!(
        run(&mut t, &reg, &q, &sqe(ADM_ABORT, 0, &[])).status,
        Status::INVALID_OPCODE
    );
    assert_eq!(
        get_log(&mut t, &reg, &q, LOG_ERROR, 64, 0, false).status,
        Status::SUCCESS
    );
    // The log: HOST sees cnode1 and cnode2; cnode2's wildcard listener
    // reports the address the host reached us on.
    let b = run_disc_log(&mut t, &reg, &q, 3072, 0, sa("10.0.0.9:8009"));
    assert_eq!(u64at(&b, 0), 5); // GENCTR
    assert_eq!(u64at(&b, 8), 2); // NUMREC
    assert_eq!(u16at(&b, 16), 0); // RECFMT
    let e = &b[1024..2048];
    assert_eq!((e[0], e[1], e[2], e[3]), (3, 1, 2, 6));
    assert_eq!(u16at(e, 6), 0xffff);
    assert_eq!(u16at(e, 8), 128);
    assert_eq!(text(&e[32..64]).trim_end(), "4420");
    assert_eq!(&e[256..256 + NQN.len()], NQN.as_bytes());
    assert_eq!(e[256 + NQN.len()], 0);
    assert_eq!(text(&e[512..768]).trim_end(), "10.0.0.1");
    assert!(e[768..].iter().all(|&x| x == 0));
    let e = &b[2048..3072];
    assert_eq!(text(&e[32..64]).trim_end(), "4421");
    assert_eq!(text(&e[512..768]).trim_end(), "10.0.0.9");
    // Port IDs follow the target's port list: 4420, 4421, 8009.
    assert_eq!((u16at(&b, 1024 + 4), u16at(&b, 2048 + 4)), (0, 1));
    // Windows of the log.
    let part = run_disc_log(&mut t, &reg, &q, 1024, 2048, sa("10.0.0.9:8009"));
    assert_eq!(part, &b[2048..3072]);
    let part = run_disc_log(&mut t, &reg, &q, 16, 1020, sa("10.0.0.9:8009"));
    assert_eq!(part, &b[1020..1036]);
    let d = get_log(&mut t, &reg, &q, LOG_DISCOVERY, 8, 4096, false);
    assert_eq!(d.status, Status::INVALID_FIELD);
    // HOST2 sees only cnode2; over IPv6 the wildcard reports IPv6.
    let q2 = disc_q(&mut t, &reg, HOST2, sa("[fd00::1]:4420"));
    let b = run_disc_log(&mut t, &reg, &q2, 2048, 0, sa("[fd00::1]:4420"));
    assert_eq!(u64at(&b, 8), 1);
    assert_eq!(b[1024 + 1], 2);
    assert_eq!(&b[1024 + 256..1024 + 256 + NQN2.len()], NQN2.as_bytes());
    assert_eq!(text(&b[1024 + 512..1024 + 768]).trim_end(), "fd00::1");
    disconnect(&mut t, &q);
    disconnect(&mut t, &q2);
    assert!(t.controllers().is_empty());
}

fn run_disc_log(
    t: &mut Target,
    reg: &Registry,
    q: &QueueBinding,
    len: u32,
    off: u64,
    at: SocketAddr,
) -> Vec<u8> {
    let numd = len / 4 - 1;
    let s = sqe(
        ADM_GET_LOG_PAGE,
        0,
        &[(10, LOG_DISCOVERY as u32 | numd << 16), (12, off as u32)],
    );
    match admin(t, reg, q, &s, &[], at, 0) {
        Outcome::Done { status, data, .. } => {
            assert_eq!(status, Status::SUCCESS);
            data
        }
        Outcome::Parked => panic!(),
    }
}

#[test]
fn discovery_change_events() {
    let (mut t, reg) = setup();
    let at = sa("10.0.0.9:8009");
    let q = disc_q(&mut t, &reg, HOST2, at);
    let d = run(
        &mut t,
        &reg,
        &q,
        &sqe(
            ADM_SET_FEATURES,
            0,
            &[(10, FEAT_ASYNC_EVENT_CONFIG as u32), (11, 1 << 8)],
        ),
    );
    assert_eq!(d.status, Status::INVALID_FIELD);
    ok(
        &mut t,
        &reg,
        &q,
        &sqe(
            ADM_SET_FEATURES,
            0,
            &[(10, FEAT_ASYNC_EVENT_CONFIG as u32), (11, 1 << 31)],
        ),
    );
    let aer = sqe(ADM_ASYNC_EVENT_REQUEST, 0, &[]);
    assert_eq!(admin(&mut t, &reg, &q, &aer, &[], at, 0), Outcome::Parked);
    assert_eq!(admin(&mut t, &reg, &q, &aer, &[], at, 0), Outcome::Parked);
    // A namespace change does not touch the discovery log.
    t.config.subsystems[1].namespaces.push(ns(1, "Malloc2"));
    t.refresh(&reg);
    assert_eq!(take_event(&mut t, q.cntlid), None);
    // HOST2 is let into cnode1: its log changes.
    t.config.subsystems[0].hosts.push(HOST2.into());
    t.refresh(&reg);
    assert_eq!(take_event(&mut t, q.cntlid), Some(AEN_DISCOVERY_CHANGED));
    // Masked until the log is read.
    t.config.subsystems[0]
        .listeners
        .push(listener("10.0.0.1", 4430));
    t.refresh(&reg);
    assert_eq!(take_event(&mut t, q.cntlid), None);
    run_disc_log(&mut t, &reg, &q, 1024, 0, at);
    t.config.subsystems[0].listeners.pop();
    t.refresh(&reg);
    assert_eq!(take_event(&mut t, q.cntlid), Some(AEN_DISCOVERY_CHANGED));
}

#[test]
fn commands_on_wrong_queue_or_gone_controller() {
    let (mut t, reg) = setup();
    let q = enabled(&mut t, &reg);
    let io = io_connect(&mut t, &reg, q.cntlid, 1).unwrap();
    let d = run(&mut t, &reg, &io, &sqe(ADM_IDENTIFY, 0, &[(10, 1)]));
    assert_eq!(d.status, Status::COMMAND_SEQUENCE_ERROR);
    disconnect(&mut t, &q);
    let d = run(&mut t, &reg, &q, &sqe(ADM_IDENTIFY, 0, &[(10, 1)]));
    assert_eq!(d.status, Status::COMMAND_SEQUENCE_ERROR);
    assert_eq!(
        io_namespace(&t, &reg, &io, 1).unwrap_err(),
        Status::ABORTED_SQ_DELETION
    );
    assert_eq!(take_event(&mut t, q.cntlid), None);
    // Late disconnect of the I/O queue is harmless.
    disconnect(&mut t, &io);
    assert!(t.qpairs().is_empty());
}

/// Random commands from a hostile host: nothing may panic, and memory per
/// answer stays bounded.
#[test]
fn random_commands_do_not_panic() {
    let (mut t, reg) = setup();
    let mut rng = ironbay_bdev::Rng::new(0x5eed);
    let q = enabled(&mut t, &reg);
    let dq = disc_q(&mut t, &reg, HOST, sa("10.0.0.9:8009"));
    let opcodes = [
        ADM_GET_LOG_PAGE,
        ADM_IDENTIFY,
        ADM_SET_FEATURES,
        ADM_GET_FEATURES,
        ADM_ASYNC_EVENT_REQUEST,
        ADM_KEEP_ALIVE,
        ADM_ABORT,
        OPC_FABRICS,
        0x7e,
    ];
    for i in 0..20_000u64 {
        let mut b = [0u8; 64];
        for x in b.iter_mut() {
            *x = rng.next_u64() as u8;
        }
        b[0] = opcodes[rng.below(opcodes.len() as u64) as usize];
        if rng.below(2) == 0 {
            // Small values reach more code than random ones.
            for d in 10..16 {
                let v = rng.below(0x120) as u32 | (rng.below(4) as u32) << 16;
                b[d * 4..d * 4 + 4].copy_from_slice(&v.to_le_bytes());
            }
            b[4..8].copy_from_slice(&(rng.below(5) as u32).to_le_bytes());
        }
        if b[0] == OPC_FABRICS {
            // Keep the controller enabled most of the time.
            b[4] = [FCTYPE_PROPERTY_GET, FCTYPE_PROPERTY_SET, 0x08, 0x05][rng.below(4) as usize];
        }
        let s = Sqe(b);
        let target_q = if i % 3 == 0 { &dq } else { &q };
        if let Outcome::Done { data, .. } = admin(&mut t, &reg, target_q, &s, &[], local(), i) {
            assert!(data.len() <= 4096 + (64 << 10) + 4096);
        }
        if b[0] == OPC_FABRICS && b[4] == FCTYPE_PROPERTY_SET {
            set_cc(&mut t, &reg, &q, CC_ENABLE);
        }
        take_event(&mut t, q.cntlid);
        // Random Connect commands and data.
        let mut d = vec![0u8; rng.below(1100) as usize];
        for x in d.iter_mut() {
            *x = rng.next_u64() as u8;
        }
        if d.len() >= 1024 && rng.below(2) == 0 {
            d[256..256 + NQN.len()].copy_from_slice(NQN.as_bytes());
            d[256 + NQN.len()] = 0;
            d[512..512 + HOST.len()].copy_from_slice(HOST.as_bytes());
            d[512 + HOST.len()] = 0;
        }
        let mut cs = connect_sqe(rng.below(4) as u16, rng.below(200) as u16, 0);
        cs.0[44..48].copy_from_slice(&(rng.next_u64() as u32 & 0x00ff_00ff).to_le_bytes());
        if let Ok((nq, _)) = connect(&mut t, &reg, &cs, &d, local(), peer(), i) {
            disconnect(&mut t, &nq);
        }
    }
    assert!(alive(&t, q.cntlid));
}

/// The order a Linux host brings a controller up and down in.
#[test]
fn linux_like_lifecycle() {
    let (mut t, reg) = setup();
    let q = admin_q(&mut t, &reg);
    let cap = prop_get(&mut t, &reg, &q, PROP_CAP, true);
    assert_eq!(prop_get(&mut t, &reg, &q, PROP_VS, false), 0x0002_0000);
    // CC written once without and once with EN.
    set_cc(&mut t, &reg, &q, CC_ENABLE & !1);
    set_cc(&mut t, &reg, &q, CC_ENABLE);
    assert_eq!(prop_get(&mut t, &reg, &q, PROP_CSTS, false) & 1, 1);
    let id = identify(&mut t, &reg, &q, CNS_CONTROLLER, 0);
    assert_eq!(u16at(&id, 78), q.cntlid);
    assert_ne!(id[261] & 2, 0);
    get_log(&mut t, &reg, &q, LOG_COMMANDS_EFFECTS, 4096, 0, false);
    identify(&mut t, &reg, &q, CNS_CSI_CONTROLLER, 0);
    let oaes = u32at(&id, 92);
    ok(
        &mut t,
        &reg,
        &q,
        &sqe(
            ADM_SET_FEATURES,
            0,
            &[(10, FEAT_ASYNC_EVENT_CONFIG as u32), (11, oaes)],
        ),
    );
    let nq = ok(
        &mut t,
        &reg,
        &q,
        &sqe(
            ADM_SET_FEATURES,
            0,
            &[(10, FEAT_NUMBER_OF_QUEUES as u32), (11, 3 | 3 << 16)],
        ),
    )
    .dw0;
    let queues = (nq & 0xffff) as u16 + 1;
    let sqsize = (cap & 0xffff).min(127) as u16;
    let mut ios = Vec::new();
    for qid in 1..=queues {
        let s = connect_sqe(qid, sqsize, 0);
        let d = connect_data(HOSTID, q.cntlid, NQN, HOST);
        ios.push(connect(&mut t, &reg, &s, &d, local(), peer(), 0).unwrap().0);
    }
    assert_eq!(t.stats().current_io_qpairs, 4);
    let aer = sqe(ADM_ASYNC_EVENT_REQUEST, 0, &[]);
    assert_eq!(
        admin(&mut t, &reg, &q, &aer, &[], local(), 0),
        Outcome::Parked
    );
    let list = identify(&mut t, &reg, &q, CNS_ACTIVE_NS_LIST, 0);
    for nsid in [u32at(&list, 0), u32at(&list, 4)] {
        identify(&mut t, &reg, &q, CNS_NS_DESCRIPTORS, nsid);
        let ns = identify(&mut t, &reg, &q, CNS_NAMESPACE, nsid);
        assert_ne!(u64at(&ns, 8), 0);
        assert!(io_namespace(&t, &reg, &ios[0], nsid).is_ok());
    }
    // hwmon: SMART and the composite temperature threshold.
    get_log(&mut t, &reg, &q, LOG_SMART, 512, 0, false);
    ok(
        &mut t,
        &reg,
        &q,
        &sqe(
            ADM_GET_FEATURES,
            0,
            &[(10, FEAT_TEMPERATURE_THRESHOLD as u32)],
        ),
    );
    run_at(&mut t, &reg, &q, &sqe(ADM_KEEP_ALIVE, 0, &[]), 2500);
    // A namespace appears: event, log, rescan.
    t.config.subsystems[0].namespaces.push(ns(2, "Malloc2"));
    t.refresh(&reg);
    assert_eq!(take_event(&mut t, q.cntlid), Some(AEN_NS_ATTR_CHANGED));
    let b = get_log(&mut t, &reg, &q, LOG_CHANGED_NS, 4096, 0, false).data;
    assert_eq!(u32at(&b, 0), 2);
    let list = identify(&mut t, &reg, &q, CNS_ACTIVE_NS_LIST, 0);
    assert_eq!(
        (u32at(&list, 0), u32at(&list, 4), u32at(&list, 8)),
        (1, 2, 3)
    );
    // Teardown: I/O queues go, shutdown, poll SHST, admin queue goes.
    for io in &ios {
        disconnect(&mut t, io);
    }
    set_cc(&mut t, &reg, &q, CC_ENABLE | 1 << 14);
    assert_eq!(prop_get(&mut t, &reg, &q, PROP_CSTS, false) >> 2 & 3, 2);
    assert!(alive(&t, q.cntlid));
    disconnect(&mut t, &q);
    assert!(t.qpairs().is_empty());
    let st = t.stats();
    assert_eq!((st.admin_qpairs, st.io_qpairs, st.controllers), (1, 4, 0));
}
