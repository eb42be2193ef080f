//! Arbitrary peer bytes through the HTTP server and the RapidDisk REST API:
//! heads, paths and numbers against a model with a small page pool and a
//! disk to cache, so calls create, resize, lock, cache and remove for real.
//!
//! The first byte steers the harness: bits 0-3 give the size the rest is
//! cut into (2^n bytes, n = 0..11); bit 4 lets the clock jump 3 s between
//! pieces; bit 5 plays a peer that reads nothing. A second connection
//! sends one well-formed request at the end, which must be answered.
//! Seeds: ../seeds/rest_http.
#![no_main]

use ironbay_bdev::{HeapPages, MallocBdev, Registry};
use ironbay_endpoint::sim::{SimNet, peer};
use ironbay_http::{Handler, Limits, Reply, Request, Server};
use ironbay_model::Model;
use ironbay_nbd::Exports;
use libfuzzer_sys::fuzz_target;

struct World {
    reg: Registry,
    nbd: Exports,
}

impl Handler for World {
    fn handle(&mut self, req: Request, _now_ms: u64) -> Reply {
        let (mut init, mut down) = (true, false);
        let mut m = Model {
            bdevs: &mut self.reg,
            devices: None,
            nbd: Some(&mut self.nbd),
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
        Reply::Now(ironbay_rapiddisk::handle(&req, &mut m))
    }
}

const GOOD: &[u8] = b"GET /v1/listRapidDiskVolumes HTTP/1.1\r\nHost: x\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&steer, stream)) = data.split_first() else {
        return;
    };
    let piece = 1usize << (steer & 0x0f).min(11);
    let jumps = steer & 0x10 != 0;
    let deaf = steer & 0x20 != 0;
    let mut reg = Registry::new();
    reg.set_page_pool(HeapPages::limited(1024));
    reg.add(Box::new(MallocBdev::new("Disk0", 8 << 11, 512)))
        .unwrap();
    let mut w = World {
        reg,
        nbd: Exports::default(),
    };
    let mut net = SimNet::new(9118, 2, 64 << 10);
    let limits = Limits {
        max_body: ironbay_rapiddisk::MAX_BODY,
        require_length: false,
        ..Limits::default()
    };
    let mut server = Server::new("fuzz", limits);
    let a = net.connect(peer(1, 1)).unwrap();
    let mut now = 1_000u64;
    for chunk in stream.chunks(piece) {
        let mut sent = 0;
        while sent < chunk.len() {
            let n = net.sockets[a].peer_send(&chunk[sent..]);
            server.poll(&mut net, &mut w, now);
            if n == 0 {
                break;
            }
            sent += n;
        }
        if !deaf {
            let _ = net.sockets[a].peer_read(1 << 20);
        }
        assert!(net.sockets[a].unread() <= 64 << 10);
        now += if jumps { 3_000 } else { 10 };
    }
    for _ in 0..5 {
        now += 2_500;
        server.poll(&mut net, &mut w, now);
    }
    let b = match net.connect(peer(2, 2)) {
        Some(b) => b,
        None => {
            now += 2_000;
            server.poll(&mut net, &mut w, now);
            net.connect(peer(2, 2)).expect("a socket for a newcomer")
        }
    };
    net.sockets[b].peer_send(GOOD);
    for _ in 0..4 {
        server.poll(&mut net, &mut w, now);
    }
    let out = net.sockets[b].peer_read(1 << 20);
    assert!(
        out.starts_with(b"HTTP/1.1 200 OK\r\n") && out.windows(10).any(|x| x == b"rapiddisk\""),
        "{}",
        String::from_utf8_lossy(&out)
    );
});
