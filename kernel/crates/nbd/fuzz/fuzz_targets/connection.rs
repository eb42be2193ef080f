//! Arbitrary client bytes through the handshake and transmission phases,
//! driven by the endpoint under the simulated network with a small memory
//! budget, so waits for memory, slow readers and deadlines are reached too.
//! The first byte picks how the peers read; the rest is split between two
//! clients. Seeds: ../fixtures (real nbdinfo and qemu-io traffic).
#![no_main]

use ironbay_bdev::{Budget, MallocBdev, Registry};
use ironbay_endpoint::sim::{SimNet, deliver, peer};
use ironbay_endpoint::{Endpoint, Limits};
use ironbay_nbd::{Connection, Export, Exports};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let mut reg = Registry::new();
    let id = reg
        .add(Box::new(MallocBdev::new("Malloc0", 2048, 512)))
        .unwrap();
    let info = reg.info(id).unwrap().clone();
    let mut exports = Exports::default();
    exports
        .list
        .push(Export::new("Malloc0", "", id, &info, false));
    let budget = Budget::new(2 << 20, 2);
    let limits = Limits {
        handshake_ms: 10_000,
        ..Limits::default()
    };
    let mut ep: Endpoint<Connection> = Endpoint::new(0, 2, limits, budget.clone());
    let mut net = SimNet::new(10809, 2, 64 << 10);
    // Fixtures are one client's traffic: the first client gets it whole
    // unless the mode byte asks for a split.
    let cut = if mode & 1 == 0 {
        data.len()
    } else {
        data.len() / 2
    };
    let inputs = [&data[..cut], &data[cut..]];
    let mut sent = [0usize; 2];
    for (k, input) in inputs.iter().enumerate() {
        if !input.is_empty() {
            net.connect(peer(k as u8 + 1, 4000));
        }
    }
    let mut now = 0u64;
    for turn in 0..512u32 {
        for k in 0..2 {
            if sent[k] < inputs[k].len() {
                sent[k] += net.sockets[k].peer_send(&inputs[k][sent[k]..]);
            }
            // Mode bits 1-2: peer k stops reading (a slow reader).
            if mode & (2 << k) == 0 || turn % 64 == 0 {
                net.sockets[k].peer_read(usize::MAX);
            }
        }
        ep.poll(&mut net, &mut exports, &mut reg, now, false);
        deliver(&mut reg, &mut ep, &mut exports, now);
        assert!(budget.used() <= budget.limit());
        // Mostly quick turns, now and then a long one so deadlines pass.
        now += if turn % 16 == 15 { 5_000_000 } else { 1_000 };
        if sent[0] == inputs[0].len() && sent[1] == inputs[1].len() && ep.connections().count() == 0
        {
            break;
        }
    }
});
