//! The engine against a scripted client and RAM bdevs.

use crate::wire::{self, Request, chunk, cmd, errno, info, opt, rep};
use crate::{Connection, Export, Exports};
use ironbay_bdev::{MallocBdev, Registry};

struct Rig {
    conn: Connection,
    exports: Exports,
    reg: Registry,
    out: Vec<u8>,
}

fn rig_with(max_transfer: Option<u32>, read_only: bool) -> Rig {
    let mut reg = Registry::new();
    let mut m = MallocBdev::new("Malloc0", 2048, 512);
    if let Some(t) = max_transfer {
        m.set_max_transfer(t);
    }
    let id = reg.add(Box::new(m)).unwrap();
    let info = reg.info(id).unwrap().clone();
    let mut exports = Exports::default();
    exports
        .list
        .push(Export::new("Malloc0", "a RAM disk", id, &info, read_only));
    let id2 = reg
        .add(Box::new(MallocBdev::new("Malloc1", 64, 4096)))
        .unwrap();
    let info2 = reg.info(id2).unwrap().clone();
    exports.list.push(Export::new("ro", "", id2, &info2, true));
    let mut r = Rig {
        conn: Connection::new(),
        exports,
        reg,
        out: Vec::new(),
    };
    r.pump();
    r
}

fn rig() -> Rig {
    rig_with(None, false)
}

fn option(kind: u32, data: &[u8]) -> Vec<u8> {
    let mut v = wire::IHAVEOPT.to_be_bytes().to_vec();
    v.extend(kind.to_be_bytes());
    v.extend((data.len() as u32).to_be_bytes());
    v.extend(data);
    v
}

fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend(name.as_bytes());
    d.extend((infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend(i.to_be_bytes());
    }
    d
}

impl Rig {
    /// Feeds bytes, runs all I/O to completion, collects output.
    fn send(&mut self, bytes: &[u8]) {
        let mut off = 0;
        for _ in 0..10_000 {
            off += self
                .conn
                .handle_input(&bytes[off..], &self.exports, &self.reg);
            self.pump();
            if off == bytes.len() {
                break;
            }
        }
        assert_eq!(off, bytes.len(), "engine stopped taking input");
    }

    fn pump(&mut self) {
        let mut done = Vec::new();
        for _ in 0..1000 {
            while let Some(io) = self.conn.poll_io() {
                let req = ironbay_bdev::IoRequest {
                    tag: io.tag,
                    op: io.op,
                    fua: io.fua,
                };
                self.reg.submit(io.bdev, req, 0).unwrap();
            }
            done.clear();
            self.reg.poll(0, &mut done);
            if done.is_empty() {
                break;
            }
            for (_, c) in done.drain(..) {
                self.conn.handle_completion(c.tag, c);
            }
        }
        while let Some(b) = self.conn.poll_output() {
            let n = b.len();
            self.out.extend_from_slice(b);
            self.conn.consume_output(n);
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        assert!(
            self.out.len() >= n,
            "wanted {n} bytes, have {}",
            self.out.len()
        );
        self.out.drain(..n).collect()
    }

    fn handshake(&mut self, flags: u32) {
        let g = self.take(18);
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(u16::from_be_bytes([g[16], g[17]]), 3);
        self.send(&flags.to_be_bytes());
    }

    /// Reads one option reply: (option, type, data).
    fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let h = self.take(20);
        assert_eq!(
            u64::from_be_bytes(h[..8].try_into().unwrap()),
            wire::OPT_REPLY_MAGIC
        );
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let o = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let t = u32::from_be_bytes(h[12..16].try_into().unwrap());
        (o, t, self.take(len))
    }

    fn go(&mut self, name: &str) {
        self.send(&option(opt::GO, &go_data(name, &[info::BLOCK_SIZE])));
        loop {
            let (o, t, _) = self.option_reply();
            assert_eq!(o, opt::GO);
            if t == rep::ACK {
                break;
            }
            assert_eq!(t, rep::INFO);
        }
        assert!(self.conn.in_transmission());
    }

    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) {
        let mut v = Request {
            flags,
            kind,
            cookie,
            offset,
            length,
        }
        .emit()
        .to_vec();
        v.extend(payload);
        self.send(&v);
    }

    /// Reads one simple reply: (error, cookie).
    fn simple(&mut self) -> (u32, u64) {
        let r = self.take(16);
        assert_eq!(
            u32::from_be_bytes(r[..4].try_into().unwrap()),
            wire::SIMPLE_REPLY_MAGIC
        );
        (
            u32::from_be_bytes(r[4..8].try_into().unwrap()),
            u64::from_be_bytes(r[8..16].try_into().unwrap()),
        )
    }
}

#[test]
fn list_info_and_go() {
    let mut r = rig();
    r.handshake(3);
    r.send(&option(opt::LIST, b""));
    let names: Vec<Vec<u8>> = (0..2)
        .map(|_| {
            let (_, t, d) = r.option_reply();
            assert_eq!(t, rep::SERVER);
            let n = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
            d[4..4 + n].to_vec()
        })
        .collect();
    assert_eq!(names, vec![b"Malloc0".to_vec(), b"ro".to_vec()]);
    assert_eq!(r.option_reply().1, rep::ACK);

    r.send(&option(opt::INFO, &go_data("nope", &[])));
    assert_eq!(r.option_reply().1, rep::ERR_UNKNOWN);

    r.send(&option(
        opt::INFO,
        &go_data(
            "Malloc0",
            &[info::NAME, info::DESCRIPTION, info::BLOCK_SIZE],
        ),
    ));
    let (_, t, d) = r.option_reply();
    assert_eq!(
        (t, u16::from_be_bytes([d[0], d[1]])),
        (rep::INFO, info::EXPORT)
    );
    assert_eq!(u64::from_be_bytes(d[2..10].try_into().unwrap()), 2048 * 512);
    let flags = u16::from_be_bytes([d[10], d[11]]);
    assert_ne!(flags & wire::tflag::CAN_MULTI_CONN, 0);
    assert_eq!(flags & wire::tflag::READ_ONLY, 0);
    let mut kinds = Vec::new();
    loop {
        let (_, t, d) = r.option_reply();
        if t == rep::ACK {
            break;
        }
        kinds.push(u16::from_be_bytes([d[0], d[1]]));
    }
    assert_eq!(kinds, vec![info::NAME, info::DESCRIPTION, info::BLOCK_SIZE]);
    assert!(
        !r.conn.in_transmission(),
        "INFO does not enter transmission"
    );
    r.go("");
}

#[test]
fn unknown_options_and_starttls_are_refused_politely() {
    let mut r = rig();
    r.handshake(1);
    r.send(&option(99, b"xyz"));
    assert_eq!(r.option_reply().1, rep::ERR_UNSUP);
    r.send(&option(opt::STARTTLS, b""));
    assert_eq!(r.option_reply().1, rep::ERR_POLICY);
    r.send(&option(opt::SET_META_CONTEXT, &[0, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(
        r.option_reply().1,
        rep::ERR_INVALID,
        "needs structured replies first"
    );
    r.go("Malloc0");
}

#[test]
fn export_name_with_and_without_zeroes() {
    for (flags, len) in [(3u32, 10usize), (1, 134)] {
        let mut r = rig();
        r.handshake(flags);
        r.send(&option(opt::EXPORT_NAME, b"Malloc0"));
        let d = r.take(len);
        assert_eq!(u64::from_be_bytes(d[..8].try_into().unwrap()), 2048 * 512);
        assert!(r.out.is_empty());
        assert!(r.conn.in_transmission());
    }
}

#[test]
fn writes_reads_flush_trim_zeroes_with_simple_replies() {
    let mut r = rig_with(Some(4096), false);
    r.handshake(3);
    r.go("Malloc0");
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    r.request(cmd::WRITE, cmd::FLAG_FUA, 1, 4096, data.len() as u32, &data);
    assert_eq!(r.simple(), (0, 1));
    r.request(cmd::READ, 0, 2, 4096, data.len() as u32, &[]);
    assert_eq!(r.simple(), (0, 2));
    assert_eq!(
        r.take(data.len()),
        data,
        "read split in 4 KiB pieces comes back in order"
    );
    r.request(cmd::FLUSH, 0, 3, 0, 0, &[]);
    assert_eq!(r.simple(), (0, 3));
    r.request(cmd::WRITE_ZEROES, 0, 4, 4096, 512, &[]);
    assert_eq!(r.simple(), (0, 4));
    r.request(cmd::TRIM, 0, 5, 8192, 4096, &[]);
    assert_eq!(r.simple(), (0, 5));
    r.request(cmd::READ, 0, 6, 4096, 1024, &[]);
    assert_eq!(r.simple(), (0, 6));
    let back = r.take(1024);
    assert!(back[..512].iter().all(|&b| b == 0));
    assert_eq!(&back[512..], &data[512..1024]);
    r.request(cmd::CACHE, 0, 7, 0, 4096, &[]);
    assert_eq!(r.simple(), (0, 7));
}

#[test]
fn bad_requests_get_errors_and_the_stream_stays_in_sync() {
    let mut r = rig();
    r.handshake(3);
    r.go("Malloc0");
    r.request(cmd::READ, 0, 1, 2048 * 512, 512, &[]);
    assert_eq!(r.simple(), (errno::EINVAL, 1));
    r.request(cmd::WRITE, 0, 2, 2048 * 512 - 512, 1024, &[7u8; 1024]);
    assert_eq!(r.simple(), (errno::ENOSPC, 2));
    r.request(cmd::READ, 0, 3, 100, 512, &[]);
    assert_eq!(r.simple(), (errno::EINVAL, 3));
    r.request(cmd::WRITE, 0, 4, 0, 100, &[1u8; 100]);
    assert_eq!(r.simple(), (errno::EINVAL, 4));
    r.request(99, 0, 5, 0, 0, &[]);
    assert_eq!(r.simple(), (errno::EINVAL, 5));
    r.request(cmd::BLOCK_STATUS, 0, 6, 0, 512, &[]);
    assert_eq!(r.simple(), (errno::EINVAL, 6), "no meta context negotiated");
    r.request(cmd::READ, 0, 7, 0, 512, &[]);
    assert_eq!(r.simple(), (0, 7));
    assert_eq!(r.take(512).len(), 512);
}

#[test]
fn read_only_exports_refuse_writes() {
    let mut r = rig();
    r.handshake(3);
    r.go("ro");
    r.request(cmd::WRITE, 0, 1, 0, 4096, &[1u8; 4096]);
    assert_eq!(r.simple(), (errno::EPERM, 1));
    r.request(cmd::TRIM, 0, 2, 0, 4096, &[]);
    assert_eq!(r.simple(), (errno::EPERM, 2));
    r.request(cmd::READ, 0, 3, 0, 4096, &[]);
    assert_eq!(r.simple(), (0, 3));
}

#[test]
fn structured_reads_and_block_status() {
    let mut r = rig();
    r.handshake(3);
    r.send(&option(opt::STRUCTURED_REPLY, b""));
    assert_eq!(r.option_reply().1, rep::ACK);
    let mut q = go_data("Malloc0", &[]);
    q.truncate(4 + 7);
    q.extend(1u32.to_be_bytes());
    q.extend(15u32.to_be_bytes());
    q.extend(b"base:allocation");
    r.send(&option(opt::SET_META_CONTEXT, &q));
    let (_, t, d) = r.option_reply();
    assert_eq!(t, rep::META_CONTEXT);
    assert_eq!(&d[4..], b"base:allocation");
    assert_eq!(r.option_reply().1, rep::ACK);
    r.go("Malloc0");
    r.request(cmd::READ, 0, 9, 512, 1024, &[]);
    let h = r.take(20);
    assert_eq!(
        u32::from_be_bytes(h[..4].try_into().unwrap()),
        wire::STRUCTURED_REPLY_MAGIC
    );
    assert_eq!(u16::from_be_bytes([h[4], h[5]]), chunk::FLAG_DONE);
    assert_eq!(u16::from_be_bytes([h[6], h[7]]), chunk::OFFSET_DATA);
    assert_eq!(u32::from_be_bytes(h[16..20].try_into().unwrap()), 8 + 1024);
    assert_eq!(u64::from_be_bytes(r.take(8).try_into().unwrap()), 512);
    r.take(1024);
    // Nothing written yet: one hole. Then data, then a trimmed hole.
    r.request(cmd::WRITE, 0, 20, 4096, 8192, &[9u8; 8192]);
    assert_eq!(r.simple(), (0, 20));
    r.request(cmd::TRIM, 0, 21, 8192, 4096, &[]);
    assert_eq!(r.simple(), (0, 21));
    r.request(cmd::BLOCK_STATUS, 0, 10, 0, 65536, &[]);
    let h = r.take(20);
    assert_eq!(u16::from_be_bytes([h[6], h[7]]), chunk::BLOCK_STATUS);
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
    let b = r.take(len);
    let ext: Vec<(u32, u32)> = b[4..]
        .chunks(8)
        .map(|e| {
            (
                u32::from_be_bytes(e[..4].try_into().unwrap()),
                u32::from_be_bytes(e[4..].try_into().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        ext,
        vec![(4096, 3), (4096, 0), (4096, 3), (65536 - 12288, 3)]
            .into_iter()
            .fold(Vec::new(), |mut v: Vec<(u32, u32)>, e| {
                match v.last_mut() {
                    Some(l) if l.1 == e.1 => l.0 += e.0,
                    _ => v.push(e),
                }
                v
            })
    );
    r.request(cmd::READ, 0, 11, 1 << 40, 512, &[]);
    let h = r.take(20);
    assert_eq!(u16::from_be_bytes([h[6], h[7]]), chunk::ERROR);
    let e = r.take(6);
    assert_eq!(
        u32::from_be_bytes(e[..4].try_into().unwrap()),
        errno::EINVAL
    );
}

#[test]
fn hostile_input_ends_only_this_connection() {
    // Client flags the server never offered.
    let mut r = rig();
    r.handshake(1 << 5);
    assert!(r.conn.finished());
    // Garbage instead of an option.
    let mut r = rig();
    r.handshake(3);
    r.send(&[0xffu8; 64][..16]);
    assert!(r.conn.finished());
    // An oversized option is skipped with ERR_TOO_BIG, then life goes on.
    let mut r = rig();
    r.handshake(3);
    let mut big = wire::IHAVEOPT.to_be_bytes().to_vec();
    big.extend(opt::LIST.to_be_bytes());
    big.extend((1u32 << 20).to_be_bytes());
    big.extend(vec![0u8; 1 << 20]);
    r.send(&big);
    assert_eq!(r.option_reply().1, rep::ERR_TOO_BIG);
    r.go("Malloc0");
    // A request with bad magic closes after replies in flight.
    let mut bad = Request {
        flags: 0,
        kind: cmd::READ,
        cookie: 1,
        offset: 0,
        length: 512,
    }
    .emit();
    bad[0] ^= 0xff;
    r.send(&bad);
    assert!(r.conn.finished());
    // Option storm.
    let mut r = rig();
    r.handshake(3);
    let mut storm = Vec::new();
    for _ in 0..600 {
        storm.extend(option(99, b""));
    }
    let _ = r.conn.handle_input(&storm, &r.exports, &r.reg);
    r.pump();
    assert!(r.conn.finished());
    // Absurd write length: refused and closed rather than buffered.
    let mut r = rig();
    r.handshake(3);
    r.go("Malloc0");
    r.request(cmd::WRITE, 0, 1, 0, u32::MAX, &[]);
    assert_eq!(r.simple().0, errno::EOVERFLOW);
    assert!(r.conn.finished());
}

#[test]
fn many_requests_in_flight_reply_by_cookie() {
    let mut r = rig();
    r.handshake(3);
    r.go("Malloc0");
    let mut batch = Vec::new();
    for c in 0..64u64 {
        batch.extend(
            Request {
                flags: 0,
                kind: cmd::READ,
                cookie: c,
                offset: c * 512,
                length: 512,
            }
            .emit(),
        );
    }
    r.send(&batch);
    let mut seen = Vec::new();
    for _ in 0..64 {
        let (e, c) = r.simple();
        assert_eq!(e, 0);
        r.take(512);
        seen.push(c);
    }
    seen.sort();
    assert_eq!(seen, (0..64).collect::<Vec<_>>());
}

#[test]
fn disconnect_drains_and_finishes() {
    let mut r = rig();
    r.handshake(3);
    r.go("Malloc0");
    r.request(cmd::DISC, 0, 1, 0, 0, &[]);
    assert!(r.conn.finished());
    assert!(!r.conn.wants_input());
}

/// Traffic captured from real clients talking to this engine (through the
/// hosted runner): what nbdinfo --list and qemu-io sent, byte for byte.
const NBDINFO_LIST: &[u8] = include_bytes!("../fixtures/nbdinfo-list.bin");
const QEMU_IO: &[u8] = include_bytes!("../fixtures/qemu-io-write-read.bin");

fn fixture_rig() -> Rig {
    let mut reg = Registry::new();
    let id = reg
        .add(Box::new(MallocBdev::new("Malloc0", 2048, 512)))
        .unwrap();
    let info = reg.info(id).unwrap().clone();
    let mut exports = Exports::default();
    exports
        .list
        .push(Export::new("Malloc0", "", id, &info, false));
    let mut r = Rig {
        conn: Connection::new(),
        exports,
        reg,
        out: Vec::new(),
    };
    r.pump();
    r.take(18);
    r
}

#[test]
fn nbdinfo_list_capture_replays_cleanly() {
    let mut r = fixture_rig();
    r.send(NBDINFO_LIST);
    assert!(r.conn.error.is_none(), "{:?}", r.conn.error);
    assert!(r.conn.finished(), "nbdinfo ends with NBD_OPT_ABORT");
    let mut kinds = Vec::new();
    while !r.out.is_empty() {
        kinds.push(r.option_reply().1);
    }
    assert!(
        kinds.contains(&rep::SERVER) && kinds.contains(&rep::INFO),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().all(|k| k & (1 << 31) == 0),
        "no error replies: {kinds:?}"
    );
}

#[test]
fn qemu_io_capture_writes_reads_trims_and_disconnects() {
    let mut r = fixture_rig();
    r.send(QEMU_IO);
    assert!(r.conn.error.is_none(), "{:?}", r.conn.error);
    assert!(r.conn.finished(), "qemu-io ends with NBD_CMD_DISC");
    let id = r.exports.list[0].bdev;
    let req = ironbay_bdev::IoRequest {
        tag: 1,
        op: ironbay_bdev::IoOp::Read {
            lba: 8,
            buf: ironbay_bdev::IoBuf::new(8192),
        },
        fua: false,
    };
    r.reg.submit(id, req, 0).unwrap();
    let mut out = Vec::new();
    r.reg.poll(0, &mut out);
    let data = out.pop().unwrap().1.buf.unwrap();
    assert!(
        data.as_slice().iter().all(|&b| b == 0x3c),
        "qemu-io's pattern is on the bdev"
    );
}

/// Mutated real traffic must never panic the engine or grow its buffers
/// without bound (a stable-toolchain stand-in for the cargo-fuzz target).
#[test]
fn mutated_client_traffic_never_panics() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..3000 {
        let base = if round % 2 == 0 {
            NBDINFO_LIST
        } else {
            QEMU_IO
        };
        let mut input = base.to_vec();
        for _ in 0..1 + rnd() % 8 {
            let at = (rnd() % input.len() as u64) as usize;
            match rnd() % 4 {
                0 => input[at] ^= 1 << (rnd() % 8),
                1 => input[at] = rnd() as u8,
                2 => input.truncate(at),
                _ => input
                    .splice(at..at, (0..rnd() % 64).map(|_| rnd() as u8))
                    .for_each(drop),
            }
            if input.is_empty() {
                break;
            }
        }
        let mut r = fixture_rig();
        let mut off = 0;
        for _ in 0..64 {
            off += r.conn.handle_input(&input[off..], &r.exports, &r.reg);
            r.pump();
            if off >= input.len() || r.conn.finished() {
                break;
            }
        }
        assert!(r.out.len() < 64 << 20, "output grew without bound");
    }
}

#[test]
fn list_meta_context_and_abort() {
    let mut r = rig();
    r.handshake(3);
    // LIST with no queries lists every context, even before structured replies.
    let mut q = 7u32.to_be_bytes().to_vec();
    q.extend(b"Malloc0");
    q.extend(0u32.to_be_bytes());
    r.send(&option(opt::LIST_META_CONTEXT, &q));
    let (_, t, d) = r.option_reply();
    assert_eq!((t, &d[4..]), (rep::META_CONTEXT, &b"base:allocation"[..]));
    assert_eq!(r.option_reply().1, rep::ACK);
    // A query for another namespace matches nothing.
    let mut q = 7u32.to_be_bytes().to_vec();
    q.extend(b"Malloc0");
    q.extend(1u32.to_be_bytes());
    q.extend(9u32.to_be_bytes());
    q.extend(b"qemu:foo:");
    r.send(&option(opt::LIST_META_CONTEXT, &q));
    assert_eq!(r.option_reply().1, rep::ACK);
    r.send(&option(opt::ABORT, b""));
    assert_eq!(r.option_reply().1, rep::ACK);
    assert!(r.conn.finished() && r.conn.error.is_none());
}

// ---- handshake conformance review (proposed) ----

/// Negotiates structured replies and `base:allocation` on `Malloc0`.
fn structured_with_allocation(r: &mut Rig) {
    r.send(&option(opt::STRUCTURED_REPLY, b""));
    assert_eq!(r.option_reply().1, rep::ACK);
    r.send(&option(
        opt::SET_META_CONTEXT,
        &meta_query("Malloc0", &[b"base:allocation"]),
    ));
    assert_eq!(r.option_reply().1, rep::META_CONTEXT);
    assert_eq!(r.option_reply().1, rep::ACK);
}

/// LIST/SET_META_CONTEXT data: export name, then the queries.
fn meta_query(name: &str, queries: &[&[u8]]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend(name.as_bytes());
    d.extend((queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend((q.len() as u32).to_be_bytes());
        d.extend(*q);
    }
    d
}

/// An option header announcing `len` bytes of data, followed by them.
fn big_option(kind: u32, len: usize) -> Vec<u8> {
    let mut v = wire::IHAVEOPT.to_be_bytes().to_vec();
    v.extend(kind.to_be_bytes());
    v.extend((len as u32).to_be_bytes());
    v.extend(vec![b'x'; len]);
    v
}

/// Reads one structured chunk: (flags, type, cookie, payload).
fn read_chunk(r: &mut Rig) -> (u16, u16, u64, Vec<u8>) {
    let h = r.take(20);
    assert_eq!(
        u32::from_be_bytes(h[..4].try_into().unwrap()),
        wire::STRUCTURED_REPLY_MAGIC,
        "a structured reply chunk"
    );
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
    (
        u16::from_be_bytes([h[4], h[5]]),
        u16::from_be_bytes([h[6], h[7]]),
        u64::from_be_bytes(h[8..16].try_into().unwrap()),
        r.take(len),
    )
}

/// Transmission flags from GO's NBD_INFO_EXPORT.
fn go_flags(r: &mut Rig, name: &str) -> u16 {
    r.send(&option(opt::GO, &go_data(name, &[])));
    let mut flags = None;
    loop {
        let (_, t, d) = r.option_reply();
        if t == rep::ACK {
            break;
        }
        assert_eq!(t, rep::INFO);
        if u16::from_be_bytes([d[0], d[1]]) == info::EXPORT {
            flags = Some(u16::from_be_bytes([d[10], d[11]]));
        }
    }
    flags.expect("NBD_INFO_EXPORT before ACK")
}

#[test]
fn client_flags_the_server_does_not_know_close_the_connection() {
    for bad in [1u32 << 2, 1 << 31, 3 | 1 << 7] {
        let mut r = rig();
        r.handshake(bad);
        assert!(r.conn.finished(), "client flags {bad:#x} accepted");
        assert!(r.out.is_empty(), "nothing is sent after unknown flags");
    }
}

#[test]
fn plain_newstyle_clients_are_served_through_export_name() {
    // C_FIXED_NEWSTYLE clear: the client may only send NBD_OPT_EXPORT_NAME,
    // and the server may honour it (no other ground for a hard disconnect).
    let mut r = rig();
    r.handshake(0);
    assert!(!r.conn.finished());
    r.send(&option(opt::EXPORT_NAME, b"Malloc0"));
    let d = r.take(8 + 2 + 124);
    assert_eq!(u64::from_be_bytes(d[..8].try_into().unwrap()), 2048 * 512);
    assert!(r.conn.in_transmission());
}

#[test]
fn oversized_export_name_ends_the_session_without_an_option_reply() {
    // EXPORT_NAME has no reply format for errors: an option reply here
    // would be read by the client as size and flags.
    let mut r = rig();
    r.handshake(3);
    let big = big_option(opt::EXPORT_NAME, 128 << 10);
    let _ = r.conn.handle_input(&big, &r.exports, &r.reg);
    r.pump();
    assert!(r.out.is_empty(), "no option reply to EXPORT_NAME");
    assert!(r.conn.finished());
    assert!(!r.conn.in_transmission());
}

#[test]
fn oversized_abort_is_still_acknowledged() {
    let mut r = rig();
    r.handshake(3);
    let big = big_option(opt::ABORT, 128 << 10);
    let _ = r.conn.handle_input(&big, &r.exports, &r.reg);
    r.pump();
    assert_eq!(r.option_reply(), (opt::ABORT, rep::ACK, Vec::new()));
    assert!(r.conn.finished() && r.conn.error.is_none());
}

#[test]
fn send_df_only_once_structured_replies_are_negotiated() {
    let mut r = rig();
    r.handshake(3);
    let plain = go_flags(&mut r, "Malloc0");
    assert_eq!(
        plain & wire::tflag::SEND_DF,
        0,
        "GO without structured replies"
    );

    let mut r = rig();
    r.handshake(3);
    r.send(&option(opt::EXPORT_NAME, b"Malloc0"));
    let d = r.take(8 + 2);
    let flags = u16::from_be_bytes([d[8], d[9]]);
    assert_eq!(
        flags & wire::tflag::SEND_DF,
        0,
        "EXPORT_NAME without structured replies"
    );

    let mut r = rig();
    r.handshake(3);
    r.send(&option(opt::STRUCTURED_REPLY, b""));
    assert_eq!(r.option_reply().1, rep::ACK);
    assert_ne!(go_flags(&mut r, "Malloc0") & wire::tflag::SEND_DF, 0);
}

#[test]
fn base_wildcard_selects_nothing_in_set_meta_context() {
    let mut r = rig();
    r.handshake(3);
    r.send(&option(opt::STRUCTURED_REPLY, b""));
    assert_eq!(r.option_reply().1, rep::ACK);
    r.send(&option(
        opt::SET_META_CONTEXT,
        &meta_query("Malloc0", &[b"base:"]),
    ));
    assert_eq!(
        r.option_reply().1,
        rep::ACK,
        "`base:` must be ignored by SET"
    );
    r.go("Malloc0");
    r.request(cmd::BLOCK_STATUS, 0, 1, 0, 4096, &[]);
    let (flags, kind, cookie, p) = read_chunk(&mut r);
    assert_eq!((flags, kind, cookie), (chunk::FLAG_DONE, chunk::ERROR, 1));
    assert_eq!(
        u32::from_be_bytes(p[..4].try_into().unwrap()),
        errno::EINVAL
    );
}

#[test]
fn a_failed_set_meta_context_still_replaces_the_selection() {
    for failing in [
        meta_query("nope", &[b"base:allocation"]),
        vec![0, 0, 0, 9, b'M'],
    ] {
        let mut r = rig();
        r.handshake(3);
        structured_with_allocation(&mut r);
        r.send(&option(opt::SET_META_CONTEXT, &failing));
        assert!(r.option_reply().1 >= 1 << 31, "the second SET fails");
        r.go("Malloc0");
        r.request(cmd::BLOCK_STATUS, 0, 2, 0, 4096, &[]);
        let (_, kind, _, p) = read_chunk(&mut r);
        assert_eq!(kind, chunk::ERROR, "no context is selected any more");
        assert_eq!(
            u32::from_be_bytes(p[..4].try_into().unwrap()),
            errno::EINVAL
        );
    }
}

#[test]
fn contexts_selected_for_another_export_do_not_carry_over() {
    let mut r = rig();
    r.handshake(3);
    structured_with_allocation(&mut r); // for Malloc0
    r.go("ro");
    r.request(cmd::BLOCK_STATUS, 0, 3, 0, 4096, &[]);
    let (_, kind, _, p) = read_chunk(&mut r);
    assert_eq!(kind, chunk::ERROR);
    assert_eq!(
        u32::from_be_bytes(p[..4].try_into().unwrap()),
        errno::EINVAL
    );
}

#[test]
fn list_meta_context_ids_are_zero() {
    let mut r = rig();
    r.handshake(3);
    r.send(&option(
        opt::LIST_META_CONTEXT,
        &meta_query("Malloc0", &[b"base:"]),
    ));
    let (_, t, d) = r.option_reply();
    assert_eq!(t, rep::META_CONTEXT);
    assert_eq!(u32::from_be_bytes(d[..4].try_into().unwrap()), 0);
    assert_eq!(&d[4..], b"base:allocation");
    assert_eq!(r.option_reply().1, rep::ACK);
}

#[test]
fn zero_length_read_and_block_status_get_valid_structured_replies() {
    let mut r = rig();
    r.handshake(3);
    structured_with_allocation(&mut r);
    r.go("Malloc0");
    r.request(cmd::READ, 0, 4, 0, 0, &[]);
    let (flags, kind, cookie, p) = read_chunk(&mut r);
    assert_eq!((flags, kind, cookie), (chunk::FLAG_DONE, chunk::NONE, 4));
    assert!(p.is_empty());
    // A block status chunk needs at least one extent; with nothing to
    // describe, the answer is an error.
    r.request(cmd::BLOCK_STATUS, 0, 5, 0, 0, &[]);
    let (flags, kind, cookie, p) = read_chunk(&mut r);
    assert_eq!((flags, kind, cookie), (chunk::FLAG_DONE, chunk::ERROR, 5));
    assert_eq!(
        u32::from_be_bytes(p[..4].try_into().unwrap()),
        errno::EINVAL
    );
}

#[test]
fn cache_refuses_command_flags_it_does_not_know() {
    let mut r = rig();
    r.handshake(3);
    r.go("Malloc0");
    r.request(cmd::CACHE, cmd::FLAG_FUA, 1, 0, 4096, &[]);
    assert_eq!(r.simple(), (0, 1), "FUA is valid on every command");
    r.request(cmd::CACHE, cmd::FLAG_NO_HOLE, 2, 0, 4096, &[]);
    assert_eq!(r.simple(), (errno::EINVAL, 2));
}

#[test]
fn too_many_meta_context_queries_are_too_big_not_invalid() {
    let mut r = rig();
    r.handshake(3);
    let queries: Vec<&[u8]> = (0..300).map(|_| &b"base:allocation"[..]).collect();
    r.send(&option(
        opt::LIST_META_CONTEXT,
        &meta_query("Malloc0", &queries),
    ));
    assert_eq!(r.option_reply().1, rep::ERR_TOO_BIG);
}

#[test]
fn qemu_contexts_list_select_and_answer_a_chunk_each() {
    use ironbay_bdev::dirty::DirtyBitmap;
    let mut r = rig();
    let id = r.reg.find("Malloc0").unwrap();
    let mut b = DirtyBitmap::new("b0", 65536, 2048 * 512).unwrap();
    b.mark(65536, 1);
    r.reg.bitmaps_mut(id).unwrap().push(b);
    let e = &mut r.exports.list[0];
    e.bitmaps = vec![(id, "b0".into())];
    e.allocation_depth = true;
    r.handshake(3);
    // LIST with the qemu: namespace: depth and the bitmap, not base.
    r.send(&option(
        opt::LIST_META_CONTEXT,
        &meta_query("Malloc0", &[b"qemu:"]),
    ));
    let mut listed = Vec::new();
    loop {
        let (_, t, d) = r.option_reply();
        if t == rep::ACK {
            break;
        }
        listed.push(String::from_utf8(d[4..].to_vec()).unwrap());
    }
    assert_eq!(listed, ["qemu:allocation-depth", "qemu:dirty-bitmap:b0"]);
    r.send(&option(opt::STRUCTURED_REPLY, b""));
    assert_eq!(r.option_reply().1, rep::ACK);
    r.send(&option(
        opt::SET_META_CONTEXT,
        &meta_query(
            "Malloc0",
            &[
                b"qemu:dirty-bitmap:b0",
                b"base:allocation",
                b"qemu:dirty-bitmap:nope",
            ],
        ),
    ));
    let mut ids = Vec::new();
    loop {
        let (_, t, d) = r.option_reply();
        if t == rep::ACK {
            break;
        }
        let id = u32::from_be_bytes(d[..4].try_into().unwrap());
        ids.push((id, String::from_utf8(d[4..].to_vec()).unwrap()));
    }
    assert_eq!(
        ids,
        [
            (1, "base:allocation".into()),
            (2, "qemu:dirty-bitmap:b0".into())
        ]
    );
    r.go("Malloc0");
    r.request(cmd::BLOCK_STATUS, 0, 3, 0, 4 * 65536, &[]);
    let (flags, kind, _, base) = read_chunk(&mut r);
    assert_eq!(
        (flags, kind),
        (0, chunk::BLOCK_STATUS),
        "more chunks follow"
    );
    assert_eq!(u32::from_be_bytes(base[..4].try_into().unwrap()), 1);
    let (flags, kind, _, p) = read_chunk(&mut r);
    assert_eq!((flags, kind), (chunk::FLAG_DONE, chunk::BLOCK_STATUS));
    let words: Vec<u32> = p
        .chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(
        words,
        [2, 65536, 0, 65536, 1, 2 * 65536, 0],
        "context 2: clean, dirty, clean"
    );
}

#[test]
fn block_status_of_a_fine_bitmap_is_bounded_per_reply() {
    use ironbay_bdev::NullBdev;
    use ironbay_bdev::dirty::DirtyBitmap;
    let mut r = rig();
    // 4 GiB at 512-byte granularity, every other chunk of its first MiB
    // dirty: two thousand runs there, then four gigabytes of clean.
    let id = r
        .reg
        .add(Box::new(NullBdev::new("Big", 8 << 20, 512)))
        .unwrap();
    let mut b = DirtyBitmap::new("b0", 512, 4 << 30).unwrap();
    for i in 0..2048u64 {
        b.mark(i * 1024, 1);
    }
    r.reg.bitmaps_mut(id).unwrap().push(b);
    let info = r.reg.info(id).unwrap().clone();
    let mut e = Export::new("big", "", id, &info, true);
    e.bitmaps = vec![(id, "b0".into())];
    r.exports.list.push(e);
    r.handshake(3);
    r.send(&option(opt::STRUCTURED_REPLY, b""));
    assert_eq!(r.option_reply().1, rep::ACK);
    r.send(&option(
        opt::SET_META_CONTEXT,
        &meta_query("big", &[b"qemu:dirty-bitmap:b0"]),
    ));
    while r.option_reply().1 != rep::ACK {}
    r.go("big");
    let extents = |r: &mut Rig, cookie: u64, off: u64, len: u32| {
        r.request(cmd::BLOCK_STATUS, 0, cookie, off, len, &[]);
        let (_, kind, _, p) = read_chunk(r);
        assert_eq!(kind, chunk::BLOCK_STATUS);
        p[4..]
            .chunks(8)
            .map(|c| {
                (
                    u32::from_be_bytes(c[..4].try_into().unwrap()) as u64,
                    u32::from_be_bytes(c[4..].try_into().unwrap()),
                )
            })
            .collect::<Vec<_>>()
    };
    let fine = extents(&mut r, 1, 0, u32::MAX - 511);
    assert_eq!(fine.len(), 1024, "stops at the reply's limit");
    assert_eq!(fine[..2], [(512, 1), (512, 0)]);
    let clean = extents(&mut r, 2, 2 << 30, (2 << 30) - 512);
    assert_eq!(clean, [(1 << 30, 0)], "one reply describes at most 1 GiB");
}
