//! Arbitrary initiator bytes through login and the full feature phase, with
//! the connection behind the endpoint on a simulated socket, as the
//! appliance drives it.
//!
//! The first byte sets the scene: bit 0 set starts from the very first
//! Login PDU, clear prefixes a valid login (so the fuzzer reaches SCSI,
//! Data-Out, TMF and Text handling); bits 1-2 pick the I/O budget (small
//! ones make commands wait for memory or be refused); bits 3-4 how the
//! initiator reads what it gets (at once, now and then, never); bit 5 makes
//! time jump seconds per turn (NOP-In pings, timeouts). Whatever happens,
//! the target ends with no connection and every buffer back in the budget.
#![no_main]

use ironbay_bdev::{Budget, MallocBdev, Registry};
use ironbay_endpoint::sim::{SimNet, deliver, peer};
use ironbay_endpoint::{Endpoint, Limits, Socket, SocketState};
use ironbay_iscsi::config::{
    ChapPolicy, Config, InitiatorGroup, Lun, Options, PgIgMap, Portal, PortalGroup, TargetNode,
};
use ironbay_iscsi::pdu::{self, Bhs, op};
use ironbay_iscsi::{Connection, Target};
use libfuzzer_sys::fuzz_target;

const NODE: &str = "iqn.2016-06.io.ironbay:fuzz";

fn login(flags: u8, kv: &[u8]) -> Vec<u8> {
    let mut b = Bhs::new(op::LOGIN_REQ);
    b.0[0] |= 0x40;
    b.set_flags(flags).set_itt(1);
    pdu::encode(&b, &[], kv, false, false)
}

fn config(reg: &mut Registry) -> Config {
    let id = reg
        .add(Box::new(MallocBdev::new("Malloc0", 256, 512)))
        .unwrap();
    Config {
        options: Options::default(),
        portal_groups: vec![PortalGroup {
            tag: 1,
            portals: vec![Portal {
                host: "0.0.0.0".into(),
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
            alias: String::new(),
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
            queue_depth: 16,
            chap: ChapPolicy::default(),
            header_digest: false,
            data_digest: false,
            masked: false,
            acls: Vec::new(),
        }],
        ..Config::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let scene = data.first().copied().unwrap_or(0);
    let mut reg = Registry::new();
    let mut target = Target::new(config(&mut reg));
    let budget = match (scene >> 1) & 3 {
        0 => Budget::unlimited(),
        1 => Budget::new(4 << 20, 4),
        2 => Budget::new(1 << 20, 2),
        _ => Budget::new(128 << 10, 2),
    };
    let mut ep = Endpoint::<Connection>::new(0, 2, Limits::default(), budget.clone());
    let mut net = SimNet::new(3260, 2, 64 << 10);
    let i = net.connect(peer(1, 40000)).unwrap();
    let mut input = Vec::new();
    if scene & 1 == 0 {
        input.extend(login(
            0x81,
            format!("InitiatorName=iqn.fuzz:i\0TargetName={NODE}\0AuthMethod=None\0").as_bytes(),
        ));
        input.extend(login(
            0x87,
            b"InitialR2T=No\0MaxRecvDataSegmentLength=4096\0",
        ));
    }
    input.extend_from_slice(data.get(1..).unwrap_or(&[]));
    let read_every = match (scene >> 3) & 3 {
        0 | 1 => 1,
        2 => 16,
        _ => usize::MAX,
    };
    let step_us = if scene & 0x20 != 0 { 7_000_000 } else { 1_000 };
    let (mut off, mut now, mut quiet) = (0, 0u64, 0);
    for turn in 0..512 {
        let sent = net.sockets[i].peer_send(&input[off..]);
        off += sent;
        ep.poll(&mut net, &mut target, &mut reg, now, false);
        deliver(&mut reg, &mut ep, &mut target, now);
        assert!(budget.used() <= budget.limit());
        let mut got = 0;
        if turn % read_every == 0 {
            got = net.sockets[i].peer_read(usize::MAX).len();
        }
        now += step_us;
        quiet = if sent + got == 0 { quiet + 1 } else { 0 };
        let gone = net.sockets[i].state() == SocketState::Idle;
        if gone || (off >= input.len() && quiet > 8) {
            break;
        }
    }
    // The initiator goes away: nothing of it may stay behind.
    net.sockets[i].peer_reset();
    for _ in 0..4 {
        ep.poll(&mut net, &mut target, &mut reg, now, false);
        deliver(&mut reg, &mut ep, &mut target, now);
        now += step_us;
    }
    assert_eq!(ep.connections().count(), 0);
    assert!(target.connections().is_empty());
    assert_eq!(budget.used(), 0, "buffers outlived the connection");
});
