//! Arbitrary monitor bytes through the QMP session and the block commands:
//! framing, negotiation and every command against a model with two bdevs,
//! so exports are made, listed and removed for real.
//!
//! The first byte steers the harness: bits 0-3 give the size the rest is
//! cut into (2^n bytes, n = 0..11); bit 4 plays a monitor that reads
//! nothing (output must stay bounded); bit 5 has one export report a
//! client attached. After the stream, a new monitor must be served.
//! Seeds: ../seeds/qmp.
#![no_main]

use ironbay_bdev::{MallocBdev, Registry};
use ironbay_model::Model;
use ironbay_nbd::Exports;
use ironbay_qmp::block::{Block, BlockState};
use ironbay_qmp::{Greeting, MAX_PENDING, Session, Version};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

fn feed(
    s: &mut Session,
    input: &[u8],
    reg: &mut Registry,
    nbd: &mut Exports,
    state: &mut BlockState,
    attached: bool,
) -> usize {
    let (mut init, mut down) = (true, false);
    let mut m = Model {
        bdevs: reg,
        devices: None,
        nbd: Some(nbd),
        iscsi: None,
        nvmf: None,
        memory_budget: 1 << 20,
        initialized: &mut init,
        shutdown: &mut down,
        bench: None,
        config_store: None,
        lvol: None,
        targetd: None,
    };
    let clients = |name: &str| usize::from(attached && name == "Malloc0");
    let addrs = ["10.0.3.15".parse::<IpAddr>().unwrap()];
    let mut block = Block {
        model: &mut m,
        state,
        clients: &clients,
        data_addrs: &addrs,
    };
    s.handle_input(input, &mut block)
}

fuzz_target!(|data: &[u8]| {
    let Some((&steer, stream)) = data.split_first() else {
        return;
    };
    let piece = 1usize << (steer & 0x0f).min(11);
    let deaf = steer & 0x10 != 0;
    let attached = steer & 0x20 != 0;
    let mut reg = Registry::new();
    reg.add(Box::new(MallocBdev::new("Malloc0", 2048, 512)))
        .unwrap();
    reg.add(Box::new(MallocBdev::new("Malloc1", 512, 4096)))
        .unwrap();
    let mut nbd = Exports::default();
    let mut state = BlockState::default();
    let greeting = Greeting {
        version: Version {
            major: 9,
            minor: 2,
            micro: 0,
            package: "fuzz".into(),
        },
    };
    let mut s = Session::new(&greeting);
    let mut now = 0u64;
    for chunk in stream.chunks(piece) {
        let mut off = 0;
        while off < chunk.len() && s.wants_input() {
            let took = feed(&mut s, &chunk[off..], &mut reg, &mut nbd, &mut state, attached);
            if took == 0 {
                break;
            }
            off += took;
        }
        let clients = |name: &str| usize::from(attached && name == "Malloc0");
        state.reap(&clients);
        for (name, data) in state.events.drain(..) {
            now += 1000;
            s.push_event(name, Some(data), now);
        }
        assert!(s.poll_output().len() <= MAX_PENDING);
        if !deaf {
            let n = s.poll_output().len();
            s.consume_output(n);
        }
    }
    assert!(s.buffered_input() <= ironbay_qmp::MAX_MESSAGE);
    // Whatever this monitor did, the next one is served.
    let mut next = Session::new(&greeting);
    let cmds = b"{\"execute\": \"qmp_capabilities\"}{\"execute\": \"query-block-exports\", \"id\": \"last\"}";
    let took = feed(&mut next, cmds, &mut reg, &mut nbd, &mut state, attached);
    assert_eq!(took, cmds.len());
    let out = String::from_utf8_lossy(next.poll_output()).into_owned();
    assert!(out.contains("\"last\""), "no answer to the next monitor: {out}");
});
