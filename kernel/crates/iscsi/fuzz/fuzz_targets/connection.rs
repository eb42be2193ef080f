//! Arbitrary initiator bytes through login and the full feature phase.
//! The input is prefixed with a valid login (so the fuzzer reaches SCSI,
//! Data-Out, TMF and Text handling) unless its first byte is odd, in which
//! case it starts from the very first Login PDU.
#![no_main]

use ironbay_bdev::{IoRequest, MallocBdev, Registry};
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

fuzz_target!(|data: &[u8]| {
    let mut reg = Registry::new();
    let id = reg
        .add(Box::new(MallocBdev::new("Malloc0", 256, 512)))
        .unwrap();
    let cfg = Config {
        options: Options::default(),
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
        }],
        ..Config::default()
    };
    let mut target = Target::new(cfg);
    let mut conn = Connection::new(
        "127.0.0.1:3260".parse().unwrap(),
        "127.0.0.1:40000".parse().unwrap(),
        0,
    );
    let mut input = Vec::new();
    if data.first().is_some_and(|b| b & 1 == 0) {
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
    let mut off = 0;
    let mut now = 0;
    let mut done = Vec::new();
    for _ in 0..512 {
        off += conn.handle_input(&input[off..], &mut target, &reg, now);
        while let Some(io) = conn.poll_io() {
            let req = IoRequest {
                tag: io.tag,
                op: io.op,
                fua: io.fua,
            };
            if let Err(req) = reg.submit(io.bdev, req, 0) {
                conn.retry_io(ironbay_iscsi::BlockIo {
                    tag: req.tag,
                    bdev: io.bdev,
                    op: req.op,
                    fua: req.fua,
                });
                break;
            }
        }
        done.clear();
        reg.poll(0, &mut done);
        for (_, c) in done.drain(..) {
            conn.handle_completion(c.tag, c, &mut target, &reg, now);
        }
        now += 7_000;
        conn.handle_timeout(&mut target, &reg, now);
        while let Some(b) = conn.poll_output() {
            let n = b.len();
            conn.consume_output(n);
        }
        if (off >= input.len() && conn.poll_output().is_none()) || conn.finished() {
            break;
        }
    }
    conn.closed(&mut target);
    assert!(target.connections().is_empty());
});
