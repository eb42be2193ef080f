//! Arbitrary peer bytes through the HTTP server and the targetd API: heads,
//! bodies, Basic credentials and JSON-RPC requests against a model with a
//! volume store on a RAM bdev, with the clock moving (tarpits, deadlines).
//!
//! The first byte steers the harness: bits 0-3 give the size the rest is
//! cut into (2^n bytes, n = 0..11); bit 4 lets the clock jump 3 s between
//! pieces; bit 5 plays a peer that reads nothing. A second connection
//! sends one well-formed request at the end, which must be answered.
//! Seeds: ../seeds/targetd_http (requests with the password `fuzz`).
#![no_main]

use ironbay_bdev::{MallocBdev, Registry};
use ironbay_endpoint::sim::{SimNet, peer};
use ironbay_http::{Handler, Limits, Reply, Request, Server};
use ironbay_model::Model;
use ironbay_model::lvol::Lvols;
use ironbay_model::targetd::Settings;
use ironbay_targetd::Targetd;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

struct World {
    reg: Registry,
    lvols: Lvols,
    settings: Settings,
    api: Targetd,
}

impl Handler for World {
    fn handle(&mut self, req: Request, now_ms: u64) -> Reply {
        let (mut init, mut down) = (true, false);
        let mut m = Model {
            bdevs: &mut self.reg,
            devices: None,
            nbd: None,
            iscsi: None,
            nvmf: None,
            memory_budget: 0,
            initialized: &mut init,
            shutdown: &mut down,
            bench: None,
            config_store: None,
            lvol: Some(&mut self.lvols),
            targetd: Some(&mut self.settings),
        };
        self.api.handle(&req, &mut m, now_ms)
    }
}

/// The password hash, made once (the slow hash would dominate each run).
fn hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| {
        let mut s = Settings::new(1);
        s.set_password("admin", "fuzz").unwrap();
        s.password_hash().unwrap()
    })
}

fn world() -> World {
    let mut reg = Registry::new();
    reg.add(Box::new(MallocBdev::new("Malloc0", 16 << 11, 512)))
        .unwrap();
    let mut w = World {
        reg,
        lvols: Lvols::new(|| 0, 3),
        settings: Settings::new(2),
        api: Targetd::new(),
    };
    w.settings.set_password_hash("admin", hash()).unwrap();
    let (mut init, mut down) = (true, false);
    let mut m = Model {
        bdevs: &mut w.reg,
        devices: None,
        nbd: None,
        iscsi: None,
        nvmf: None,
        memory_budget: 0,
        initialized: &mut init,
        shutdown: &mut down,
        bench: None,
        config_store: None,
        lvol: Some(&mut w.lvols),
        targetd: None,
    };
    m.lvs_create("Malloc0", "pool0", Some(1 << 20), ironbay_lvol::Clear::None)
        .unwrap();
    w
}

const GOOD: &[u8] = b"POST /targetrpc HTTP/1.1\r\nAuthorization: Basic YWRtaW46ZnV6eg==\r\n\
Content-Length: 45\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"pool_list\"}";

fuzz_target!(|data: &[u8]| {
    let Some((&steer, stream)) = data.split_first() else {
        return;
    };
    let piece = 1usize << (steer & 0x0f).min(11);
    let jumps = steer & 0x10 != 0;
    let deaf = steer & 0x20 != 0;
    let mut w = world();
    let mut net = SimNet::new(18700, 2, 64 << 10);
    let mut server = Server::new("fuzz", Limits::default());
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
    // Another client is served whatever the first did.
    let b = match net.connect(peer(2, 2)) {
        Some(b) => b,
        None => {
            // Every socket taken by the first: it must have been dropped
            // for the newcomer by now.
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
        out.starts_with(b"HTTP/1.1 200 OK\r\n") && out.windows(6).any(|x| x == b"pool0\""),
        "{}",
        String::from_utf8_lossy(&out)
    );
});
