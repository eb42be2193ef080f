//! Arbitrary host bytes through an NVMe/TCP connection, driven by the
//! endpoint under the simulated network with a small memory budget, so
//! commands also wait for memory. The first input byte picks the start:
//! bit 0 set = from the very first byte (the ICReq);
//! else the fuzzer's bytes follow a valid ICReq (digests from bits 2 and 3)
//! and a Connect, of the admin queue (bit 1 set) or of an I/O queue of a
//! controller another connection created, so it reaches admin, NVM, R2T
//! and H2CData handling. With bit 4 set the rest is a list of records
//! (kind, u16 length, payload) that become well-framed PDUs with correct
//! digests: command capsules (SQE + in-capsule data), H2CData (CCCID, TTAG,
//! DATAO + data) or raw bytes. With bit 5 set the host reads nothing back
//! until all its bytes are in. When both hosts are gone, every buffer must
//! be back in the budget.
#![no_main]

use ironbay_bdev::{Budget, MallocBdev, Registry};
use ironbay_crc::crc32c;
use ironbay_endpoint::sim::{SimNet, deliver, peer};
use ironbay_endpoint::{Endpoint, Limits};
use ironbay_nvmf::config::{
    Adrfam, Config, Listener, Namespace, Subsystem, TransportOptions, Trtype,
};
use ironbay_nvmf::{Connection, Target};
use libfuzzer_sys::fuzz_target;

const NQN: &str = "nqn.2016-06.io.ironbay:fuzz";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";

fn ic_req(dgst: u8) -> Vec<u8> {
    let mut b = vec![0u8; 128];
    b[2] = 128;
    b[4..8].copy_from_slice(&128u32.to_le_bytes());
    b[11] = dgst;
    b
}

fn connect(qid: u16, cntlid: u16, hd: bool, dd: bool) -> Vec<u8> {
    let mut sqe = [0u8; 64];
    sqe[0] = 0x7f;
    sqe[1] = 0x40;
    sqe[2] = 1;
    sqe[4] = 0x01;
    sqe[32..36].copy_from_slice(&1024u32.to_le_bytes());
    sqe[39] = 0x01;
    sqe[42..44].copy_from_slice(&qid.to_le_bytes());
    sqe[44..46].copy_from_slice(&31u16.to_le_bytes());
    let mut data = vec![0u8; 1024];
    data[16..18].copy_from_slice(&cntlid.to_le_bytes());
    data[256..256 + NQN.len()].copy_from_slice(NQN.as_bytes());
    data[512..512 + HOSTNQN.len()].copy_from_slice(HOSTNQN.as_bytes());
    let head = 72 + if hd { 4 } else { 0 };
    let plen = head + 1024 + if dd { 4 } else { 0 };
    let mut v = vec![0x04, (hd as u8) | (dd as u8) << 1, 72, head as u8];
    v.extend_from_slice(&(plen as u32).to_le_bytes());
    v.extend_from_slice(&sqe);
    if hd {
        let crc = crc32c(&v);
        v.extend_from_slice(&crc.to_le_bytes());
    }
    v.extend_from_slice(&data);
    if dd {
        v.extend_from_slice(&crc32c(&data).to_le_bytes());
    }
    v
}

/// Frames `body` (the PDU-specific header after the common header, then
/// data) as a PDU of type `ty` with header length `hlen`.
fn frame(ty: u8, flags: u8, hlen: usize, body: &[u8], hd: bool, dd: bool) -> Vec<u8> {
    let fixed = hlen - 8;
    let (h, data) = body.split_at(fixed.min(body.len()));
    let mut hdr = vec![ty, flags, hlen as u8, 0, 0, 0, 0, 0];
    hdr.extend_from_slice(h);
    hdr.resize(hlen, 0);
    let head = hlen + if hd { 4 } else { 0 };
    let mut plen = head;
    if hd {
        hdr[1] |= 1;
    }
    if !data.is_empty() {
        hdr[3] = head as u8;
        plen += data.len() + if dd { 4 } else { 0 };
        if dd {
            hdr[1] |= 2;
        }
    }
    if ty == 0x06 {
        hdr[16..20].copy_from_slice(&(data.len() as u32).to_le_bytes());
    }
    hdr[4..8].copy_from_slice(&(plen as u32).to_le_bytes());
    if hd {
        let crc = crc32c(&hdr);
        hdr.extend_from_slice(&crc.to_le_bytes());
    }
    hdr.extend_from_slice(data);
    if dd && !data.is_empty() {
        hdr.extend_from_slice(&crc32c(data).to_le_bytes());
    }
    hdr
}

fn records(mut rest: &[u8], hd: bool, dd: bool) -> Vec<u8> {
    let mut v = Vec::new();
    while let [kind, a, b, tail @ ..] = rest {
        let n = (u16::from_le_bytes([*a, *b]) as usize).min(tail.len());
        let (body, next) = tail.split_at(n);
        match kind % 4 {
            0 | 1 => v.extend(frame(0x04, 0, 72, body, hd, dd)),
            2 => v.extend(frame(0x06, kind & 4, 24, body, hd, dd)),
            _ => v.extend_from_slice(body),
        }
        rest = next;
    }
    v
}

fuzz_target!(|data: &[u8]| {
    let mut reg = Registry::new();
    let mut m0 = MallocBdev::new("Malloc0", 256, 512);
    m0.set_max_transfer(4096);
    reg.add(Box::new(m0)).unwrap();
    let cfg = Config {
        transport: Some(TransportOptions {
            in_capsule_data_size: 4096,
            io_unit_size: 8192,
            max_io_size: 65536,
            ..TransportOptions::default()
        }),
        subsystems: vec![Subsystem {
            allow_any_host: true,
            namespaces: vec![Namespace {
                nsid: 1,
                bdev_name: "Malloc0".into(),
                nguid: None,
                eui64: None,
                uuid: None,
            }],
            listeners: vec![Listener {
                trtype: Trtype::Tcp,
                adrfam: Adrfam::Ipv4,
                traddr: "127.0.0.1".into(),
                port: 4420,
            }],
            ..Subsystem::new(NQN)
        }],
        ..Config::default()
    };
    let mut target = Target::new(cfg);
    let first = data.first().copied().unwrap_or(1);
    let rest = data.get(1..).unwrap_or(&[]);
    let (hd, dd) = (first & 4 != 0, first & 8 != 0);
    let dgst = hd as u8 | (dd as u8) << 1;
    // Small enough that commands wait for memory: a 64 KiB floor per
    // connection, 32 KiB transfers (MDTS).
    let budget = Budget::new(256 << 10, 2);
    let mut ep: Endpoint<Connection> = Endpoint::new(2, 2, Limits::default(), budget.clone());
    let mut net = SimNet::new(4420, 2, 64 << 10);
    let mut now = 0u64;

    // An admin queue whose controller I/O queues can join.
    let mut setup = ic_req(0);
    setup.extend(connect(0, 0xffff, false, false));
    // Property Set CC.EN (with the NVM queue entry sizes).
    let mut cc = [0u8; 64];
    cc[0] = 0x7f;
    cc[2] = 2;
    cc[4] = 0x00;
    cc[44..48].copy_from_slice(&0x14u32.to_le_bytes());
    cc[48..52].copy_from_slice(&(1u32 | 6 << 16 | 4 << 20).to_le_bytes());
    setup.extend(frame(0x04, 0, 72, &cc, false, false));
    let admin = net.connect(peer(1, 40000)).unwrap();
    let mut sent = net.sockets[admin].peer_send(&setup);
    for _ in 0..64 {
        if sent == setup.len() {
            break;
        }
        turn(&mut ep, &mut net, &mut target, &mut reg, &budget, &mut now);
        sent += net.sockets[admin].peer_send(&setup[sent..]);
    }
    for _ in 0..4 {
        turn(&mut ep, &mut net, &mut target, &mut reg, &budget, &mut now);
    }

    let mut input = Vec::new();
    if first & 1 == 0 {
        input.extend(ic_req(dgst));
        let qid = if first & 2 != 0 { 0 } else { 1 };
        let cntlid = if qid == 0 { 0xffff } else { 1 };
        input.extend(connect(qid, cntlid, hd, dd));
    }
    if first & 16 != 0 {
        input.extend(records(rest, hd, dd));
    } else {
        input.extend_from_slice(rest);
    }
    let c = net.connect(peer(2, 40001)).unwrap();
    let mut off = 0;
    let mut out = 0usize;
    // Bit 5: the host reads nothing back until its input is all in.
    let slow = first & 32 != 0;
    for _ in 0..512 {
        off += net.sockets[c].peer_send(&input[off..]);
        if !slow || off == input.len() {
            out += net.sockets[c].peer_read(usize::MAX).len();
        }
        net.sockets[admin].peer_read(usize::MAX);
        let busy = turn(&mut ep, &mut net, &mut target, &mut reg, &budget, &mut now);
        assert!(out < 64 << 20);
        if off == input.len() && !busy && net.sockets[c].unread() == 0 {
            break;
        }
    }
    // Both hosts vanish: nothing may stay behind.
    net.sockets[c].peer_reset();
    net.sockets[admin].peer_reset();
    for _ in 0..4 {
        turn(&mut ep, &mut net, &mut target, &mut reg, &budget, &mut now);
    }
    assert_eq!(ep.connections().count(), 0);
    assert!(target.qpairs().is_empty());
    assert_eq!(budget.used(), 0, "buffers left behind");
});

/// One poll-loop turn, its completions, then 300 µs; true if anything
/// moved.
fn turn(
    ep: &mut Endpoint<Connection>,
    net: &mut SimNet,
    target: &mut Target,
    reg: &mut Registry,
    budget: &Budget,
    now: &mut u64,
) -> bool {
    let busy = ep.poll(net, target, reg, *now, false);
    let done = deliver(reg, ep, target, *now);
    assert!(budget.used() <= budget.limit());
    *now += 300;
    busy || done > 0
}
