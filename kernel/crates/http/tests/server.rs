//! The HTTP server against simulated peers: framing, limits, keep-alive,
//! deadlines, held-back answers and peers that stall.

use ironbay_endpoint::sim::{SimNet, peer};
use ironbay_http::{Handler, Limits, Reply, Request, Response, Server};

/// Echoes method, path and body; `/slow` answers 2 s later.
struct Echo {
    seen: Vec<Request>,
}

impl Handler for Echo {
    fn handle(&mut self, req: Request, now_ms: u64) -> Reply {
        let body = format!("{} {} {}", req.method, req.path(), req.body.len());
        let slow = req.path() == "/slow";
        self.seen.push(req);
        let r = Response::new(200, "text/plain", body);
        if slow {
            Reply::At(now_ms + 2000, r)
        } else {
            Reply::Now(r)
        }
    }
}

struct Rig {
    net: SimNet,
    server: Server,
    echo: Echo,
    now: u64,
}

impl Rig {
    fn new(slots: usize) -> Self {
        Rig {
            net: SimNet::new(18700, slots, 256 << 10),
            server: Server::new("test", Limits::default()),
            echo: Echo { seen: Vec::new() },
            now: 1_000,
        }
    }

    fn turn(&mut self, ms: u64) {
        self.now += ms;
        for _ in 0..4 {
            self.server.poll(&mut self.net, &mut self.echo, self.now);
        }
    }

    fn connect(&mut self, n: u8) -> usize {
        self.net.connect(peer(n, 40000)).expect("a free socket")
    }

    fn send(&mut self, i: usize, data: &[u8]) {
        assert_eq!(self.net.sockets[i].peer_send(data), data.len());
        self.turn(1);
    }

    fn read(&mut self, i: usize) -> String {
        String::from_utf8_lossy(&self.net.sockets[i].peer_read(1 << 20)).into_owned()
    }
}

fn status(resp: &str) -> u16 {
    resp.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[test]
fn keep_alive_pipelining_and_split_input() {
    let mut r = Rig::new(2);
    let c = r.connect(1);
    // Two pipelined requests, the second split mid-head and mid-body.
    r.send(
        c,
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHo",
    );
    r.send(
        c,
        b"st: x\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 4\r\n\r\nab",
    );
    r.send(c, b"cd");
    let out = r.read(c);
    let parts: Vec<&str> = out.split("HTTP/1.1 ").filter(|s| !s.is_empty()).collect();
    assert_eq!(parts.len(), 3, "{out}");
    assert!(parts[0].ends_with("POST /a 5"), "{out}");
    assert!(parts[1].ends_with("GET /b 0"), "{out}");
    assert!(parts[2].ends_with("POST /c 4"), "{out}");
    assert_eq!(r.echo.seen[2].body, b"abcd");
    assert!(!r.net.sockets[c].we_closed());
    // Connection: close is honoured.
    r.send(c, b"GET /d HTTP/1.1\r\nConnection: close\r\n\r\n");
    let out = r.read(c);
    assert!(out.contains("Connection: close"), "{out}");
    assert!(r.net.sockets[c].we_closed());
}

#[test]
fn protocol_errors_answer_and_close() {
    let cases: [(&[u8], u16); 8] = [
        (b"POST /x HTTP/1.1\r\n\r\n", 411),
        (
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            411,
        ),
        (b"POST /x HTTP/1.1\r\nContent-Length: 200000\r\n\r\n", 413),
        (b"POST /x HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400),
        (
            b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
        ),
        (b"GET /x HTTP/2.0\r\n\r\n", 505),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nExpect: bananas\r\n\r\n", 417),
    ];
    for (req, want) in cases {
        let mut r = Rig::new(1);
        let c = r.connect(1);
        r.send(c, req);
        let out = r.read(c);
        assert_eq!(
            status(&out),
            want,
            "{}: {out}",
            String::from_utf8_lossy(req)
        );
        assert!(r.net.sockets[c].we_closed());
        assert!(r.echo.seen.is_empty());
    }
    // A head beyond 8 KiB: 431; so are too many fields.
    let mut r = Rig::new(1);
    let c = r.connect(1);
    let mut big = b"GET / HTTP/1.1\r\nX-A: ".to_vec();
    big.resize(9000, b'a');
    r.send(c, &big);
    assert_eq!(status(&r.read(c)), 431);
    let mut r = Rig::new(1);
    let c = r.connect(1);
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for k in 0..80 {
        many.extend_from_slice(format!("X-{k}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    r.send(c, &many);
    assert_eq!(status(&r.read(c)), 431);
}

#[test]
fn expect_continue_and_head() {
    let mut r = Rig::new(1);
    let c = r.connect(1);
    r.send(
        c,
        b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
    );
    assert_eq!(r.read(c), "HTTP/1.1 100 Continue\r\n\r\n");
    r.send(c, b"abc");
    assert!(r.read(c).ends_with("POST /a 3"));
    r.send(c, b"HEAD /h HTTP/1.1\r\n\r\n");
    let out = r.read(c);
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("\r\n\r\n"),
        "{out}"
    );
    assert!(out.contains("Content-Length: 9\r\n"), "{out}");
}

#[test]
fn held_back_answer_does_not_hold_others() {
    let mut r = Rig::new(2);
    let a = r.connect(1);
    let b = r.connect(2);
    r.send(a, b"GET /slow HTTP/1.1\r\n\r\n");
    r.send(b, b"GET /fast HTTP/1.1\r\n\r\n");
    assert!(r.read(b).ends_with("GET /fast 0"));
    assert_eq!(r.read(a), "", "held back");
    r.turn(1500);
    assert_eq!(r.read(a), "");
    r.turn(600);
    assert!(r.read(a).ends_with("GET /slow 0"));
}

#[test]
fn deadlines_stalls_and_eviction() {
    let mut r = Rig::new(2);
    // A request that never finishes: 408 after 10 s, then closed.
    let a = r.connect(1);
    r.send(a, b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nab");
    r.turn(10_001);
    assert_eq!(status(&r.read(a)), 408);
    assert!(r.net.sockets[a].we_closed());
    r.net.sockets[a].peer_close();
    r.turn(1);
    r.turn(3000);
    // An idle keep-alive connection is closed after 60 s.
    let mut r = Rig::new(2);
    let a = r.connect(1);
    r.send(a, b"GET / HTTP/1.1\r\n\r\n");
    r.read(a);
    r.turn(59_000);
    assert!(!r.net.sockets[a].we_closed());
    r.turn(1_001);
    assert!(r.net.sockets[a].we_closed());
    // Slots full of trickling clients: a newcomer gets one after 1 s.
    let mut r = Rig::new(2);
    let a = r.connect(1);
    let b = r.connect(2);
    r.send(a, b"GET / HT");
    r.send(b, b"GET / HT");
    assert!(r.net.connect(peer(3, 1)).is_none());
    r.turn(1_100);
    let c = r
        .net
        .connect(peer(3, 1))
        .expect("a slot freed for the newcomer");
    r.send(c, b"GET /new HTTP/1.1\r\n\r\n");
    assert!(r.read(c).ends_with("GET /new 0"));
    assert!(r.server.stats().evicted >= 1);
    // A reader that never reads a large answer is dropped after 30 s.
    struct Big;
    impl Handler for Big {
        fn handle(&mut self, _: Request, _: u64) -> Reply {
            Reply::Now(Response::new(200, "text/plain", vec![b'x'; 1 << 20]))
        }
    }
    let mut net = SimNet::new(1, 2, 64 << 10);
    let mut s = Server::new("test", Limits::default());
    let i = net.connect(peer(1, 1)).unwrap();
    net.sockets[i].peer_send(b"GET / HTTP/1.1\r\n\r\n");
    let mut now = 0;
    for _ in 0..40 {
        now += 1000;
        s.poll(&mut net, &mut Big, now);
    }
    assert_eq!(s.stats().stalled, 1);
    assert!(net.sockets[i].was_reset());
}

#[test]
fn basic_credentials_reach_the_handler() {
    let mut r = Rig::new(1);
    let c = r.connect(1);
    r.send(
        c,
        b"POST /targetrpc HTTP/1.1\r\nAuthorization: Basic YWRtaW46c2VjcmV0\r\nContent-Length: 2\r\n\r\n{}",
    );
    let cred = r.echo.seen[0].basic_auth().unwrap();
    assert_eq!(
        (cred.user.as_str(), cred.password.as_str()),
        ("admin", "secret")
    );
    assert_eq!(r.echo.seen[0].peer, Some(peer(1, 40000)));
}

#[test]
fn posts_without_a_length_have_an_empty_body_when_allowed() {
    let mut r = Rig::new(1);
    r.server = Server::new(
        "rest",
        Limits {
            require_length: false,
            ..Limits::default()
        },
    );
    let c = r.connect(1);
    // curl -X POST sends neither Content-Length nor Transfer-Encoding.
    r.send(
        c,
        b"POST /v1/createRapidDisk/8 HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTTP/1.1\r\n\r\n",
    );
    let out = r.read(c);
    assert!(out.contains("POST /v1/createRapidDisk/8 0"), "{out}");
    assert!(out.ends_with("GET /a 0"), "{out}");
    assert!(!r.net.sockets[c].we_closed());
}
