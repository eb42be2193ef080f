//! Hostile clients for load and robustness tests of a booted appliance, and
//! the verified real clients that run beside them.
//!
//! Every attacker is a set of worker threads over std TCP with its own
//! deadline: it connects, sets up a session the way a client would, does
//! what no well-behaved client does, and stops by itself when its time is
//! up (or at once through [`Attack::leave`], which drops every socket).
//! Request loops are bounded by that deadline; nothing here sends to any
//! address but the one it is given, which callers keep on 127.0.0.0/8 or in
//! a network namespace of their own.
//!
//! - [`idle`]: connect N sockets and never send a byte (optionally reopening
//!   the ones the appliance closes, so the slots stay taken).
//! - [`nbd_read_flood`] / [`nbd_slow_write`]: fixed-newstyle handshake with
//!   `NBD_OPT_GO`, then large `NBD_CMD_READ`s pipelined and never read, or
//!   large `NBD_CMD_WRITE`s whose payload trickles in.
//! - [`iscsi_read_flood`] / [`iscsi_slow_write`]: a normal-session login
//!   (no authentication), then READ(16)/READ(10)s pipelined and never read,
//!   or WRITE(16)s whose solicited Data-Out trickles in.
//! - [`nvmf_read_flood`] / [`nvmf_slow_write`]: ICReq and Fabrics Connect
//!   on an admin queue (enabled, KATO 0) and I/O queues, then large READs
//!   up to the queue size that are never read, or WRITEs whose H2CData
//!   trickles in.
//!
//! Real clients: [`Initiator`] (a raw iSCSI initiator), [`NvmfClient`]
//! (built on [`crate::nvmf::Host`]), both behind [`BlockClient`] for
//! [`verified_workload`]; [`fio_nbd_verify`] for fio's nbd engine; and
//! [`Appliance`], the default-like appliance these tests boot.

use crate::machine::{Boot, Disk, Machine, Nic, free_port, sparse_disk};
use crate::nvmf;
use crate::serial::Running;
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one blocking socket call may wait before the worker looks at
/// its deadline again.
const TICK: Duration = Duration::from_millis(100);
/// Longest a session set-up (handshake, login, Connect) may take.
const SETUP: Duration = Duration::from_secs(20);
/// The error a worker returns when its attack ended; not counted as one.
const ENDED: &str = "attack ended";

// ---------------------------------------------------------------------------
// A running attack

#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    established: AtomicU64,
    open: AtomicI64,
    requests: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// What an attack did, for the test output.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub name: String,
    /// TCP connections opened (including reopened ones).
    pub connects: u64,
    /// Sessions that completed their set-up (handshake, login, Connect).
    pub established: u64,
    /// Sessions open when the report was taken.
    pub open: i64,
    /// Hostile requests sent (reads, writes, commands).
    pub requests: u64,
    pub bytes_sent: u64,
    /// Sessions that ended before the attack did (closed by the appliance,
    /// refused, failed set-up).
    pub errors: u64,
    pub last_error: Option<String>,
    pub ran_for: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} connects, {} established, {} open, {} requests, {} KiB sent, {} ended early, {:.1} s",
            self.name,
            self.connects,
            self.established,
            self.open,
            self.requests,
            self.bytes_sent / 1024,
            self.errors,
            self.ran_for.as_secs_f64()
        )?;
        if let Some(e) = &self.last_error {
            write!(f, " (last: {e})")?;
        }
        Ok(())
    }
}

/// What a worker sees of its attack: whether it is over, and the counters.
pub struct Ctx {
    stop: Arc<AtomicBool>,
    started: Instant,
    deadline: Instant,
    c: Arc<Counters>,
}

impl Ctx {
    /// The attack is over: its time is up or it was told to leave.
    pub fn done(&self) -> bool {
        self.stop.load(Relaxed) || Instant::now() >= self.deadline
    }

    /// Sleeps `d` in short steps; false if the attack ended meanwhile.
    pub fn pause(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.done() {
                return false;
            }
            std::thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
        }
        !self.done()
    }

    /// Waits until `at` after the attack started (at once if that passed);
    /// false if the attack ended meanwhile.
    pub fn wait_until(&self, at: Duration) -> bool {
        self.pause((self.started + at).saturating_duration_since(Instant::now()))
    }

    /// Holds until the attack ends.
    pub fn hold(&self) {
        while self.pause(Duration::from_secs(1)) {}
    }

    /// A session completed its set-up; it counts as open while the guard lives.
    pub fn opened(&self) -> OpenGuard {
        self.c.established.fetch_add(1, Relaxed);
        self.c.open.fetch_add(1, Relaxed);
        OpenGuard(Arc::clone(&self.c))
    }

    pub fn request(&self) {
        self.c.requests.fetch_add(1, Relaxed);
    }
}

/// Counts one open session until dropped.
pub struct OpenGuard(Arc<Counters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// A running attack: worker threads that end by themselves at the deadline.
/// Dropping it is [`Attack::leave`].
pub struct Attack {
    name: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    c: Arc<Counters>,
    started: Instant,
}

impl Attack {
    /// Runs `work(worker index, ctx)` on `workers` threads until `duration`
    /// has passed. A worker whose session ends early (error, closed by the
    /// peer) starts a new one after `reconnect`, or stops if that is `None`.
    pub fn spawn<F>(
        name: &str,
        workers: usize,
        duration: Duration,
        reconnect: Option<Duration>,
        work: F,
    ) -> Attack
    where
        F: Fn(usize, &Ctx) -> Result<(), String> + Send + Sync + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let c = Arc::new(Counters::default());
        let started = Instant::now();
        let deadline = started + duration;
        let work = Arc::new(work);
        let threads = (0..workers)
            .map(|i| {
                let ctx = Ctx {
                    stop: Arc::clone(&stop),
                    started,
                    deadline,
                    c: Arc::clone(&c),
                };
                let work = Arc::clone(&work);
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        // Spread the connects a little, as separate clients would.
                        if !ctx.pause(Duration::from_millis(20 * i as u64)) {
                            return;
                        }
                        loop {
                            let r = work(i, &ctx);
                            if let Err(e) = r
                                && e != ENDED
                                && !ctx.done()
                            {
                                ctx.c.errors.fetch_add(1, Relaxed);
                                *ctx.c.last_error.lock().unwrap() = Some(e);
                            }
                            match reconnect {
                                Some(p) if ctx.pause(p) => {}
                                _ => break,
                            }
                        }
                    })
                    .expect("attack thread")
            })
            .collect();
        Attack {
            name: name.into(),
            stop,
            threads,
            c,
            started,
        }
    }

    pub fn report(&self) -> Report {
        Report {
            name: self.name.clone(),
            connects: self.c.connects.load(Relaxed),
            established: self.c.established.load(Relaxed),
            open: self.c.open.load(Relaxed),
            requests: self.c.requests.load(Relaxed),
            bytes_sent: self.c.bytes.load(Relaxed),
            errors: self.c.errors.load(Relaxed),
            last_error: self.c.last_error.lock().unwrap().clone(),
            ran_for: self.started.elapsed(),
        }
    }

    /// Sessions open now.
    pub fn open(&self) -> i64 {
        self.c.open.load(Relaxed)
    }

    /// Waits until at least `n` sessions are open; false after `timeout`.
    pub fn wait_open(&self, n: i64, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if self.open() >= n {
                return true;
            }
            std::thread::sleep(TICK);
        }
        self.open() >= n
    }

    /// Lets the attack run to its deadline; every worker closes its sockets.
    pub fn finish(mut self) -> Report {
        self.join();
        self.report()
    }

    /// Leaves now: every worker drops its sockets at once.
    pub fn leave(mut self) -> Report {
        self.stop.store(true, Relaxed);
        self.join();
        self.report()
    }

    fn join(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        self.join();
    }
}

// ---------------------------------------------------------------------------
// Socket helpers with deadlines

fn would_block(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Opens a TCP connection with short socket timeouts, so a worker blocked
/// on it looks at its deadline every [`TICK`].
pub fn connect(addr: SocketAddr, ctx: &Ctx) -> Result<TcpStream, String> {
    if ctx.done() {
        return Err(ENDED.into());
    }
    ctx.c.connects.fetch_add(1, Relaxed);
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(TICK)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TICK)).map_err(|e| e.to_string())?;
    Ok(s)
}

/// Writes all of `buf` unless the attack ends first (`Err(ENDED)`).
pub fn send(s: &mut TcpStream, buf: &[u8], ctx: &Ctx) -> Result<(), String> {
    let mut at = 0;
    while at < buf.len() {
        if ctx.done() {
            return Err(ENDED.into());
        }
        match s.write(&buf[at..]) {
            Ok(0) => return Err("send: connection closed".into()),
            Ok(n) => {
                at += n;
                ctx.c.bytes.fetch_add(n as u64, Relaxed);
            }
            Err(e) if would_block(&e) => {}
            Err(e) => return Err(format!("send: {e}")),
        }
    }
    Ok(())
}

/// Reads exactly `n` bytes within `limit`, unless the attack ends first.
pub fn recv_exact(
    s: &mut TcpStream,
    n: usize,
    ctx: &Ctx,
    limit: Duration,
) -> Result<Vec<u8>, String> {
    let until = Instant::now() + limit;
    let mut buf = vec![0u8; n];
    let mut at = 0;
    while at < n {
        if ctx.done() {
            return Err(ENDED.into());
        }
        if Instant::now() >= until {
            return Err(format!("no answer within {limit:?} ({at} of {n} bytes)"));
        }
        match s.read(&mut buf[at..]) {
            Ok(0) => return Err("closed by the appliance".into()),
            Ok(k) => at += k,
            Err(e) if would_block(&e) => {}
            Err(e) => return Err(format!("recv: {e}")),
        }
    }
    Ok(buf)
}

/// Bytes received but not parsed yet, for workers that read PDUs while
/// they trickle data.
#[derive(Default)]
struct Inbox(Vec<u8>);

impl Inbox {
    /// One read attempt of at most [`TICK`]; `Err` when the peer closed.
    fn fill(&mut self, s: &mut TcpStream) -> Result<(), String> {
        let mut buf = [0u8; 16384];
        match s.read(&mut buf) {
            Ok(0) => Err("closed by the appliance".into()),
            Ok(k) => {
                self.0.extend_from_slice(&buf[..k]);
                Ok(())
            }
            Err(e) if would_block(&e) => Ok(()),
            Err(e) => Err(format!("recv: {e}")),
        }
    }

    /// Takes the first `n` bytes if they are there.
    fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        (self.0.len() >= n).then(|| self.0.drain(..n).collect())
    }
}

/// Data waiting to be trickled: `chunk` bytes every `interval`.
struct Trickle {
    out: VecDeque<u8>,
    chunk: usize,
    interval: Duration,
    next: Instant,
}

impl Trickle {
    fn new(chunk: usize, interval: Duration) -> Trickle {
        Trickle {
            out: VecDeque::new(),
            chunk: chunk.max(1),
            interval,
            next: Instant::now(),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.out.extend(bytes);
    }

    /// Sends the next piece if it is time.
    fn tick(&mut self, s: &mut TcpStream, ctx: &Ctx) -> Result<(), String> {
        if self.out.is_empty() || Instant::now() < self.next {
            return Ok(());
        }
        self.next = Instant::now() + self.interval;
        let n = self.chunk.min(self.out.len());
        let piece: Vec<u8> = self.out.drain(..n).collect();
        send(s, &piece, ctx)
    }
}

/// Where request `i` of `len` bytes goes on a device of `size` bytes.
fn spread(i: u64, len: u64, size: u64) -> u64 {
    let room = size.saturating_sub(len);
    if room == 0 {
        return 0;
    }
    (i.wrapping_mul(len) % (room + 1)) / 4096 * 4096
}

/// Data for hostile writes: any bytes do.
fn filler(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + 7) as u8).collect()
}

// ---------------------------------------------------------------------------
// Idle connections

/// Sockets that connect and never send a byte.
#[derive(Clone, Debug)]
pub struct Idle {
    pub addr: SocketAddr,
    pub connections: usize,
    pub duration: Duration,
    /// Reopen a socket the appliance closed (or refused) after this pause,
    /// so the slots stay taken; `None`: each socket lives once.
    pub reconnect: Option<Duration>,
}

/// Opens `connections` sockets that send nothing. What the server sends
/// (an NBD greeting) is read and thrown away, which also tells when it
/// closed the socket.
pub fn idle(cfg: Idle) -> Attack {
    let name = format!("idle:{}", cfg.addr.port());
    Attack::spawn(
        &name,
        cfg.connections,
        cfg.duration,
        cfg.reconnect,
        move |_, ctx| {
            let mut s = connect(cfg.addr, ctx)?;
            let _open = ctx.opened();
            let mut sink = [0u8; 4096];
            while !ctx.done() {
                match s.read(&mut sink) {
                    Ok(0) => return Err("closed by the appliance".into()),
                    Ok(_) => {}
                    Err(e) if would_block(&e) => {}
                    Err(e) => return Err(format!("recv: {e}")),
                }
            }
            Ok(())
        },
    )
}

// ---------------------------------------------------------------------------
// NBD

const NBD_IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const NBD_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
const NBD_OPT_GO: u32 = 7;
const NBD_REP_ACK: u32 = 1;
const NBD_REP_INFO: u32 = 3;
const NBD_CMD_READ: u16 = 0;
const NBD_CMD_WRITE: u16 = 1;

/// Fixed-newstyle handshake ending in `NBD_OPT_GO` on `export`; returns
/// the export's size.
pub fn nbd_handshake(s: &mut TcpStream, export: &str, ctx: &Ctx) -> Result<u64, String> {
    let hello = recv_exact(s, 18, ctx, SETUP)?;
    if &hello[..8] != b"NBDMAGIC" || hello[8..16] != NBD_IHAVEOPT.to_be_bytes() {
        return Err(format!("not an NBD newstyle greeting: {hello:02x?}"));
    }
    let server = u16::from_be_bytes([hello[16], hello[17]]);
    if server & 1 == 0 {
        return Err("server is not fixed newstyle".into());
    }
    // FIXED_NEWSTYLE, and NO_ZEROES when offered.
    let mut m = (1u32 | u32::from(server & 2)).to_be_bytes().to_vec();
    m.extend_from_slice(&NBD_IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
    m.extend_from_slice(&((4 + export.len() + 2) as u32).to_be_bytes());
    m.extend_from_slice(&(export.len() as u32).to_be_bytes());
    m.extend_from_slice(export.as_bytes());
    m.extend_from_slice(&0u16.to_be_bytes());
    send(s, &m, ctx)?;
    let mut size = None;
    for _ in 0..64 {
        let h = recv_exact(s, 20, ctx, SETUP)?;
        if h[..8] != NBD_REPLY_MAGIC.to_be_bytes() {
            return Err(format!("bad option reply magic {h:02x?}"));
        }
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        if len > 65536 {
            return Err(format!("option reply of {len} bytes"));
        }
        let data = recv_exact(s, len, ctx, SETUP)?;
        match kind {
            NBD_REP_ACK => return size.ok_or_else(|| "GO acknowledged without a size".into()),
            NBD_REP_INFO if data.len() >= 12 && data[..2] == [0, 0] => {
                size = Some(u64::from_be_bytes(data[2..10].try_into().unwrap()));
            }
            k if k & 0x8000_0000 != 0 => {
                return Err(format!(
                    "NBD_OPT_GO {export} refused ({k:#x}): {}",
                    String::from_utf8_lossy(&data)
                ));
            }
            _ => {}
        }
    }
    Err("too many option replies".into())
}

/// A 28-byte transmission-phase request.
pub fn nbd_request(kind: u16, cookie: u64, offset: u64, length: u32) -> [u8; 28] {
    let mut r = [0u8; 28];
    r[..4].copy_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
    r[6..8].copy_from_slice(&kind.to_be_bytes());
    r[8..16].copy_from_slice(&cookie.to_be_bytes());
    r[16..24].copy_from_slice(&offset.to_be_bytes());
    r[24..28].copy_from_slice(&length.to_be_bytes());
    r
}

/// NBD clients that pipeline large reads and never read a reply.
#[derive(Clone, Debug)]
pub struct NbdReadFlood {
    pub addr: SocketAddr,
    pub export: String,
    pub connections: usize,
    pub duration: Duration,
    pub reconnect: Option<Duration>,
    /// Bytes per READ (capped at the export size; 512-byte multiple).
    pub request_bytes: u32,
    /// READs sent at once, `fire_at` after the attack started (sessions
    /// set up later fire at once): every connection's burst lands together.
    pub burst: usize,
    pub fire_at: Duration,
    /// One more READ every this long afterwards (`None`: just hold).
    pub more_every: Option<Duration>,
}

pub fn nbd_read_flood(cfg: NbdReadFlood) -> Attack {
    let name = format!("nbd-read-flood:{}", cfg.export);
    Attack::spawn(
        &name,
        cfg.connections,
        cfg.duration,
        cfg.reconnect,
        move |_, ctx| {
            let mut s = connect(cfg.addr, ctx)?;
            let size = nbd_handshake(&mut s, &cfg.export, ctx)?;
            let _open = ctx.opened();
            let len = (u64::from(cfg.request_bytes).min(size) / 512 * 512).max(512) as u32;
            let mut i = 0u64;
            let read = |s: &mut TcpStream, i: &mut u64| -> Result<(), String> {
                let off = spread(*i, len.into(), size);
                send(s, &nbd_request(NBD_CMD_READ, *i, off, len), ctx)?;
                ctx.request();
                *i += 1;
                Ok(())
            };
            if !ctx.wait_until(cfg.fire_at) {
                return Ok(());
            }
            for _ in 0..cfg.burst {
                read(&mut s, &mut i)?;
            }
            match cfg.more_every {
                Some(every) => {
                    while ctx.pause(every) {
                        read(&mut s, &mut i)?;
                    }
                }
                None => ctx.hold(),
            }
            Ok(())
        },
    )
}

/// NBD clients that send large WRITEs with the payload trickled in, and
/// never read a reply.
#[derive(Clone, Debug)]
pub struct NbdSlowWrite {
    pub addr: SocketAddr,
    pub export: String,
    pub connections: usize,
    pub duration: Duration,
    pub reconnect: Option<Duration>,
    /// Bytes per WRITE (capped at the export size; 512-byte multiple).
    pub request_bytes: u32,
    /// Payload bytes sent per `interval`.
    pub chunk: usize,
    pub interval: Duration,
}

pub fn nbd_slow_write(cfg: NbdSlowWrite) -> Attack {
    let name = format!("nbd-slow-write:{}", cfg.export);
    Attack::spawn(
        &name,
        cfg.connections,
        cfg.duration,
        cfg.reconnect,
        move |_, ctx| {
            let mut s = connect(cfg.addr, ctx)?;
            let size = nbd_handshake(&mut s, &cfg.export, ctx)?;
            let _open = ctx.opened();
            let len = (u64::from(cfg.request_bytes).min(size) / 512 * 512).max(512) as u32;
            let piece = filler(cfg.chunk.max(1));
            for i in 0u64.. {
                let off = spread(i, len.into(), size);
                send(&mut s, &nbd_request(NBD_CMD_WRITE, i, off, len), ctx)?;
                ctx.request();
                let mut left = len as usize;
                while left > 0 {
                    let n = left.min(piece.len());
                    send(&mut s, &piece[..n], ctx)?;
                    left -= n;
                    if !ctx.pause(cfg.interval) {
                        return Ok(());
                    }
                }
            }
            Ok(())
        },
    )
}

// ---------------------------------------------------------------------------
// iSCSI

/// One iSCSI logical unit to log in to.
#[derive(Clone, Debug)]
pub struct IscsiLun {
    pub addr: SocketAddr,
    /// Full target name, e.g. `iqn.2016-06.io.spdk:disk0`.
    pub target: String,
    pub lun: u16,
    /// Initiator name; each session also gets its own ISID.
    pub initiator: String,
}

mod op {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_CMD: u8 = 0x01;
    pub const LOGIN_REQ: u8 = 0x03;
    pub const LOGOUT_REQ: u8 = 0x06;
    pub const DATA_OUT: u8 = 0x05;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RSP: u8 = 0x21;
    pub const LOGIN_RSP: u8 = 0x23;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RSP: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

const NO_TAG: u32 = 0xffff_ffff;

/// An iSCSI PDU as received (no digests are negotiated).
#[derive(Clone, Debug)]
pub struct IscsiPdu {
    pub bhs: [u8; 48],
    pub data: Vec<u8>,
}

impl IscsiPdu {
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    pub fn u32_at(&self, o: usize) -> u32 {
        u32::from_be_bytes(self.bhs[o..o + 4].try_into().unwrap())
    }
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }
}

fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// A whole PDU: header, data segment padded to 4 bytes.
fn iscsi_pdu(mut bhs: [u8; 48], data: &[u8]) -> Vec<u8> {
    let n = data.len() as u32;
    bhs[5..8].copy_from_slice(&n.to_be_bytes()[1..]);
    let mut out = bhs.to_vec();
    out.extend_from_slice(data);
    out.resize(48 + pad4(data.len()), 0);
    out
}

/// Parses one PDU off the front of `inbox` if it is all there.
fn iscsi_take(inbox: &mut Inbox) -> Result<Option<IscsiPdu>, String> {
    if inbox.0.len() < 48 {
        return Ok(None);
    }
    let ahs = inbox.0[4] as usize * 4;
    let dsl = u32::from_be_bytes([0, inbox.0[5], inbox.0[6], inbox.0[7]]) as usize;
    if dsl > 16 << 20 {
        return Err(format!("PDU with a {dsl}-byte data segment"));
    }
    let total = 48 + ahs + pad4(dsl);
    let Some(all) = inbox.take(total) else {
        return Ok(None);
    };
    let mut bhs = [0u8; 48];
    bhs.copy_from_slice(&all[..48]);
    Ok(Some(IscsiPdu {
        bhs,
        data: all[48 + ahs..48 + ahs + dsl].to_vec(),
    }))
}

/// The 8-byte LUN field (peripheral addressing below 256, flat above).
fn lun_field(lun: u16) -> [u8; 8] {
    let mut l = [0u8; 8];
    if lun < 256 {
        l[1] = lun as u8;
    } else {
        l[0] = 0x40 | (lun >> 8) as u8;
        l[1] = lun as u8;
    }
    l
}

static ISID_SEQ: AtomicU64 = AtomicU64::new(1);

/// A fresh ISID of the random format, unique in this process.
fn new_isid() -> [u8; 6] {
    let n = ISID_SEQ.fetch_add(1, Relaxed) as u32;
    let pid = std::process::id() as u16;
    let mut i = [0x80, 0, 0, 0, 0, 0];
    i[1..3].copy_from_slice(&pid.to_be_bytes());
    i[3..6].copy_from_slice(&n.to_be_bytes()[1..]);
    i
}

/// Result of one SCSI command.
#[derive(Clone, Debug)]
pub struct ScsiDone {
    pub status: u8,
    pub data: Vec<u8>,
    /// Sense key, ASC, ASCQ of a CHECK CONDITION.
    pub sense: Option<(u8, u8, u8)>,
}

/// A raw iSCSI initiator: one normal session, one connection, no
/// authentication, no digests. Used as the verified real client and,
/// through its PDU builders, by the iSCSI attackers.
pub struct Initiator {
    s: TcpStream,
    inbox: Inbox,
    lun: [u8; 8],
    itt: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
    /// Largest data segment the target takes from us.
    pub target_mrdsl: u32,
    pub max_burst: u32,
    pub block_size: u32,
    pub blocks: u64,
    /// Per-PDU wait of the real client's commands.
    pub timeout: Duration,
}

impl Initiator {
    /// Connects and logs in (operational stage straight to full feature).
    pub fn login(lun: &IscsiLun, timeout: Duration) -> Result<Initiator, String> {
        let s = TcpStream::connect_timeout(&lun.addr, Duration::from_secs(10))
            .map_err(|e| format!("connect {}: {e}", lun.addr))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(TICK)).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut i = Initiator {
            s,
            inbox: Inbox::default(),
            lun: lun_field(lun.lun),
            itt: 0,
            cmd_sn: 0,
            exp_stat_sn: 0,
            target_mrdsl: 8192,
            max_burst: 262_144,
            block_size: 512,
            blocks: 0,
            timeout,
        };
        i.do_login(lun, &|| true)?;
        Ok(i)
    }

    fn next_itt(&mut self) -> u32 {
        self.itt = self.itt.wrapping_add(1);
        if self.itt == NO_TAG {
            self.itt = 1;
        }
        self.itt
    }

    fn do_login(&mut self, lun: &IscsiLun, alive: &dyn Fn() -> bool) -> Result<(), String> {
        let isid = new_isid();
        let itt = self.next_itt();
        let keys = [
            ("InitiatorName", lun.initiator.as_str()),
            ("TargetName", lun.target.as_str()),
            ("SessionType", "Normal"),
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "262144"),
            ("MaxBurstLength", "1048576"),
            ("FirstBurstLength", "65536"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
            ("MaxOutstandingR2T", "1"),
            ("MaxConnections", "1"),
            ("ErrorRecoveryLevel", "0"),
            ("DefaultTime2Wait", "0"),
            ("DefaultTime2Retain", "0"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
        ];
        let mut text: Vec<u8> = keys
            .iter()
            .flat_map(|(k, v)| format!("{k}={v}\0").into_bytes())
            .collect();
        let until = Instant::now() + SETUP;
        for _ in 0..4 {
            let mut b = [0u8; 48];
            b[0] = 0x40 | op::LOGIN_REQ;
            // Transit from the operational stage to full feature.
            b[1] = 0x80 | (1 << 2) | 3;
            b[8..14].copy_from_slice(&isid);
            b[16..20].copy_from_slice(&itt.to_be_bytes());
            b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
            b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
            let pdu = iscsi_pdu(b, &text);
            self.s
                .write_all(&pdu)
                .map_err(|e| format!("login send: {e}"))?;
            text.clear();
            let r = loop {
                let p = self.read_pdu(until, alive)?;
                if p.opcode() == op::LOGIN_RSP {
                    break p;
                }
            };
            let (class, detail) = (r.bhs[36], r.bhs[37]);
            if class != 0 {
                return Err(format!(
                    "login to {} refused: status {class:#04x}/{detail:#04x}",
                    lun.target
                ));
            }
            self.exp_stat_sn = r.u32_at(24).wrapping_add(1);
            self.cmd_sn = r.u32_at(28);
            for kv in r.data.split(|&c| c == 0).filter(|kv| !kv.is_empty()) {
                let kv = String::from_utf8_lossy(kv);
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let num = v.parse::<u32>().ok();
                match (k, num) {
                    ("MaxRecvDataSegmentLength", Some(n)) => self.target_mrdsl = n.max(512),
                    ("MaxBurstLength", Some(n)) => self.max_burst = n.max(512),
                    _ => {}
                }
            }
            if r.bhs[1] & 0x80 != 0 && r.bhs[1] & 3 == 3 {
                return Ok(());
            }
        }
        Err("login did not reach full feature phase".into())
    }

    /// Next PDU before `until`; answers target NOP-In pings on the way.
    fn read_pdu(&mut self, until: Instant, alive: &dyn Fn() -> bool) -> Result<IscsiPdu, String> {
        loop {
            if let Some(p) = iscsi_take(&mut self.inbox)? {
                if p.opcode() == op::NOP_IN && p.u32_at(20) != NO_TAG {
                    let reply = self.nop_out(&p);
                    self.s
                        .write_all(&reply)
                        .map_err(|e| format!("NOP-Out: {e}"))?;
                    continue;
                }
                return Ok(p);
            }
            if !alive() {
                return Err(ENDED.into());
            }
            if Instant::now() >= until {
                return Err("no answer from the iSCSI target in time".into());
            }
            self.inbox.fill(&mut self.s)?;
        }
    }

    /// The answer to a target's NOP-In ping.
    fn nop_out(&self, ping: &IscsiPdu) -> Vec<u8> {
        let mut b = [0u8; 48];
        b[0] = 0x40 | op::NOP_OUT;
        b[1] = 0x80;
        b[8..16].copy_from_slice(&ping.bhs[8..16]);
        b[16..20].copy_from_slice(&NO_TAG.to_be_bytes());
        b[20..24].copy_from_slice(&ping.bhs[20..24]);
        b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        iscsi_pdu(b, &[])
    }

    /// A SCSI Command PDU (no immediate data); takes a CmdSN.
    fn command_pdu(&mut self, itt: u32, cdb: &[u8], read: bool, write: bool, edtl: u32) -> Vec<u8> {
        let mut b = [0u8; 48];
        b[0] = op::SCSI_CMD;
        b[1] = 0x80 | if read { 0x40 } else { 0 } | if write { 0x20 } else { 0 } | 0x01;
        b[8..16].copy_from_slice(&self.lun);
        b[16..20].copy_from_slice(&itt.to_be_bytes());
        b[20..24].copy_from_slice(&edtl.to_be_bytes());
        b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        b[32..32 + cdb.len()].copy_from_slice(cdb);
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        iscsi_pdu(b, &[])
    }

    /// Data-Out PDUs answering an R2T from `data` (offset and length from
    /// the R2T), each at most the target's MaxRecvDataSegmentLength.
    fn data_out(&self, r2t: &IscsiPdu, data: &dyn Fn(usize, usize) -> Vec<u8>) -> Vec<u8> {
        let (ttt, off, len) = (r2t.u32_at(20), r2t.u32_at(40), r2t.u32_at(44));
        let seg = self.target_mrdsl.min(65536) as usize;
        let mut out = Vec::new();
        let (mut at, end) = (off as usize, (off + len) as usize);
        let mut sn = 0u32;
        while at < end {
            let n = seg.min(end - at);
            let mut b = [0u8; 48];
            b[0] = op::DATA_OUT;
            b[1] = if at + n == end { 0x80 } else { 0 };
            b[8..16].copy_from_slice(&self.lun);
            b[16..20].copy_from_slice(&r2t.bhs[16..20]);
            b[20..24].copy_from_slice(&ttt.to_be_bytes());
            b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
            b[36..40].copy_from_slice(&sn.to_be_bytes());
            b[40..44].copy_from_slice(&(at as u32).to_be_bytes());
            out.extend_from_slice(&iscsi_pdu(b, &data(at, n)));
            at += n;
            sn += 1;
        }
        out
    }

    fn note_stat_sn(&mut self, p: &IscsiPdu) {
        self.exp_stat_sn = p.u32_at(24).wrapping_add(1);
    }

    /// Runs one command: `out` is sent on R2Ts, `in_len` bytes come back.
    pub fn command(&mut self, cdb: &[u8], out: &[u8], in_len: u32) -> Result<ScsiDone, String> {
        let itt = self.next_itt();
        let write = !out.is_empty();
        let edtl = if write { out.len() as u32 } else { in_len };
        let pdu = self.command_pdu(itt, cdb, in_len > 0, write, edtl);
        self.s
            .write_all(&pdu)
            .map_err(|e| format!("send command: {e}"))?;
        let mut data = vec![0u8; in_len as usize];
        loop {
            let until = Instant::now() + self.timeout;
            let p = self.read_pdu(until, &|| true)?;
            match p.opcode() {
                op::DATA_IN if p.itt() == itt => {
                    let off = p.u32_at(40) as usize;
                    let end = off + p.data.len();
                    if end > data.len() {
                        return Err(format!("Data-In past the buffer: {off}+{}", p.data.len()));
                    }
                    data[off..end].copy_from_slice(&p.data);
                    if p.bhs[1] & 0x01 != 0 {
                        self.note_stat_sn(&p);
                        return Ok(ScsiDone {
                            status: p.bhs[3],
                            data,
                            sense: None,
                        });
                    }
                }
                op::SCSI_RSP if p.itt() == itt => {
                    self.note_stat_sn(&p);
                    if p.bhs[2] != 0 {
                        return Err(format!("iSCSI response {:#04x}", p.bhs[2]));
                    }
                    // Fixed (70h/71h) or descriptor (72h/73h) format.
                    let s = p.data.get(2..).unwrap_or(&[]);
                    let sense = match s.first().map(|c| c & 0x7f) {
                        Some(0x72 | 0x73) if s.len() >= 4 => Some((s[1] & 0x0f, s[2], s[3])),
                        Some(_) if s.len() >= 14 => Some((s[2] & 0x0f, s[12], s[13])),
                        _ => None,
                    };
                    return Ok(ScsiDone {
                        status: p.bhs[3],
                        data,
                        sense,
                    });
                }
                op::R2T if p.itt() == itt => {
                    let stream = self.data_out(&p, &|at, n| out[at..at + n].to_vec());
                    self.s
                        .write_all(&stream)
                        .map_err(|e| format!("send Data-Out: {e}"))?;
                }
                op::REJECT => return Err(format!("PDU rejected, reason {:#04x}", p.bhs[2])),
                op::ASYNC => self.note_stat_sn(&p),
                _ => {}
            }
        }
    }

    /// A command, retried while it fails with a unit attention.
    fn checked(&mut self, cdb: &[u8], out: &[u8], in_len: u32) -> Result<Vec<u8>, String> {
        for _ in 0..4 {
            let d = self.command(cdb, out, in_len)?;
            match (d.status, d.sense) {
                (0, _) => return Ok(d.data),
                (2, Some((6, _, _))) => continue,
                (st, sense) => {
                    return Err(format!(
                        "SCSI {:#04x} status {st:#04x} sense {sense:02x?}",
                        cdb[0]
                    ));
                }
            }
        }
        Err(format!("SCSI {:#04x}: unit attentions without end", cdb[0]))
    }

    /// READ CAPACITY(16): sets `block_size` and `blocks`.
    pub fn read_capacity(&mut self) -> Result<(u64, u32), String> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x10;
        cdb[13] = 32;
        let d = self.checked(&cdb, &[], 32)?;
        let last = u64::from_be_bytes(d[..8].try_into().unwrap());
        let bs = u32::from_be_bytes(d[8..12].try_into().unwrap());
        self.blocks = last + 1;
        self.block_size = bs;
        Ok((self.blocks, bs))
    }

    fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
        let mut cdb = [0u8; 16];
        cdb[0] = opcode;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        cdb
    }

    /// Logs out (best effort) and closes.
    pub fn logout(mut self) {
        let itt = self.next_itt();
        let mut b = [0u8; 48];
        b[0] = 0x40 | op::LOGOUT_REQ;
        b[1] = 0x80;
        b[16..20].copy_from_slice(&itt.to_be_bytes());
        b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        if self.s.write_all(&iscsi_pdu(b, &[])).is_ok() {
            let until = Instant::now() + Duration::from_secs(5);
            while let Ok(p) = self.read_pdu(until, &|| true) {
                if p.opcode() == op::LOGOUT_RSP {
                    break;
                }
            }
        }
    }
}

impl BlockClient for Initiator {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn blocks(&self) -> u64 {
        self.blocks
    }
    fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), String> {
        let blocks = (data.len() / self.block_size as usize) as u32;
        self.checked(&Self::rw16(0x8a, lba, blocks), data, 0)
            .map(|_| ())
    }
    fn read(&mut self, lba: u64, len: usize) -> Result<Vec<u8>, String> {
        let blocks = (len / self.block_size as usize) as u32;
        self.checked(&Self::rw16(0x88, lba, blocks), &[], len as u32)
    }
}

/// Logs in for an attacker: like [`Initiator::login`], on the worker's
/// socket and deadline.
fn iscsi_attacker_login(lun: &IscsiLun, ctx: &Ctx) -> Result<Initiator, String> {
    let s = connect(lun.addr, ctx)?;
    let mut i = Initiator {
        s,
        inbox: Inbox::default(),
        lun: lun_field(lun.lun),
        itt: 0,
        cmd_sn: 0,
        exp_stat_sn: 0,
        target_mrdsl: 8192,
        max_burst: 262_144,
        block_size: 512,
        blocks: 0,
        timeout: SETUP,
    };
    i.do_login(lun, &|| !ctx.done())?;
    // The socket's own timeouts stay short; blocking writes go through `send`.
    i.s.set_write_timeout(Some(TICK))
        .map_err(|e| e.to_string())?;
    Ok(i)
}

/// Which READ the iSCSI flood sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadCdb {
    Read10,
    Read16,
    /// READ(16) on even workers, READ(10) on odd ones.
    Both,
}

/// iSCSI sessions that pipeline large reads and never read the data.
#[derive(Clone, Debug)]
pub struct IscsiReadFlood {
    pub lun: IscsiLun,
    pub connections: usize,
    pub duration: Duration,
    pub reconnect: Option<Duration>,
    /// Bytes per READ (a multiple of `block_size`).
    pub request_bytes: u32,
    pub block_size: u32,
    /// Blocks of the LU to spread the reads over.
    pub lu_blocks: u64,
    pub cdb: ReadCdb,
    /// Commands sent at once, `fire_at` after the attack started.
    pub burst: usize,
    pub fire_at: Duration,
    /// One more command every this long afterwards (`None`: just hold).
    pub more_every: Option<Duration>,
}

pub fn iscsi_read_flood(cfg: IscsiReadFlood) -> Attack {
    let name = format!("iscsi-read-flood:{}", cfg.lun.target);
    Attack::spawn(
        &name,
        cfg.connections,
        cfg.duration,
        cfg.reconnect,
        move |worker, ctx| {
            let mut i = iscsi_attacker_login(&cfg.lun, ctx)?;
            let _open = ctx.opened();
            let bs = u64::from(cfg.block_size.max(1));
            let read16 = match cfg.cdb {
                ReadCdb::Read16 => true,
                ReadCdb::Read10 => false,
                ReadCdb::Both => worker % 2 == 0,
            };
            // READ(10) carries at most 65535 blocks.
            let most = if read16 { u64::from(u32::MAX) } else { 0xffff };
            let blocks = (u64::from(cfg.request_bytes) / bs).clamp(1, most);
            let size = cfg.lu_blocks * bs;
            let mut n = 0u64;
            let read = |i: &mut Initiator, n: &mut u64| -> Result<(), String> {
                let lba = spread(*n, blocks * bs, size) / bs;
                let cdb = if read16 {
                    Initiator::rw16(0x88, lba, blocks as u32).to_vec()
                } else {
                    let mut c = vec![0u8; 10];
                    c[0] = 0x28;
                    c[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
                    c[7..9].copy_from_slice(&(blocks as u16).to_be_bytes());
                    c
                };
                let itt = i.next_itt();
                let pdu = i.command_pdu(itt, &cdb, true, false, (blocks * bs) as u32);
                send(&mut i.s, &pdu, ctx)?;
                ctx.request();
                *n += 1;
                Ok(())
            };
            if !ctx.wait_until(cfg.fire_at) {
                return Ok(());
            }
            for _ in 0..cfg.burst {
                read(&mut i, &mut n)?;
            }
            match cfg.more_every {
                Some(every) => {
                    while ctx.pause(every) {
                        read(&mut i, &mut n)?;
                    }
                }
                None => ctx.hold(),
            }
            Ok(())
        },
    )
}

/// iSCSI sessions that send large WRITEs and trickle the solicited data.
#[derive(Clone, Debug)]
pub struct IscsiSlowWrite {
    pub lun: IscsiLun,
    pub connections: usize,
    pub duration: Duration,
    pub reconnect: Option<Duration>,
    pub request_bytes: u32,
    pub block_size: u32,
    pub lu_blocks: u64,
    /// WRITEs kept outstanding.
    pub commands: usize,
    /// Bytes of the Data-Out stream sent per `interval`.
    pub chunk: usize,
    pub interval: Duration,
}

pub fn iscsi_slow_write(cfg: IscsiSlowWrite) -> Attack {
    let name = format!("iscsi-slow-write:{}", cfg.lun.target);
    Attack::spawn(
        &name,
        cfg.connections,
        cfg.duration,
        cfg.reconnect,
        move |_, ctx| {
            let mut i = iscsi_attacker_login(&cfg.lun, ctx)?;
            let _open = ctx.opened();
            let bs = u64::from(cfg.block_size.max(1));
            let blocks = (u64::from(cfg.request_bytes) / bs).max(1);
            let size = cfg.lu_blocks * bs;
            let mut trickle = Trickle::new(cfg.chunk, cfg.interval);
            let mut n = 0u64;
            let issue = |i: &mut Initiator, t: &mut Trickle, n: &mut u64| {
                let lba = spread(*n, blocks * bs, size) / bs;
                let itt = i.next_itt();
                let cdb = Initiator::rw16(0x8a, lba, blocks as u32);
                t.push(&i.command_pdu(itt, &cdb, false, true, (blocks * bs) as u32));
                ctx.request();
                *n += 1;
            };
            for _ in 0..cfg.commands.max(1) {
                issue(&mut i, &mut trickle, &mut n);
            }
            while !ctx.done() {
                trickle.tick(&mut i.s, ctx)?;
                i.inbox.fill(&mut i.s)?;
                while let Some(p) = iscsi_take(&mut i.inbox)? {
                    match p.opcode() {
                        op::R2T => {
                            let stream = i.data_out(&p, &|at, k| {
                                (at..at + k).map(|j| (j * 31 + 7) as u8).collect()
                            });
                            trickle.push(&stream);
                        }
                        op::SCSI_RSP => {
                            i.note_stat_sn(&p);
                            issue(&mut i, &mut trickle, &mut n);
                        }
                        op::NOP_IN if p.u32_at(20) != NO_TAG => {
                            let reply = i.nop_out(&p);
                            trickle.push(&reply);
                        }
                        op::REJECT => return Err("PDU rejected".into()),
                        op::LOGOUT_RSP => return Err("logged out by the target".into()),
                        _ => {}
                    }
                }
            }
            Ok(())
        },
    )
}

// ---------------------------------------------------------------------------
// NVMe-oF/TCP

/// One NVMe-oF namespace to attack.
#[derive(Clone, Debug)]
pub struct NvmfNs {
    pub addr: SocketAddr,
    pub subnqn: String,
    pub hostnqn: String,
    pub nsid: u32,
    pub block_size: u32,
    /// Blocks of the namespace to spread the I/O over.
    pub ns_blocks: u64,
}

/// A 72-byte CapsuleCmd PDU header with `sqe`, plus in-capsule data.
fn capsule_pdu(sqe: &[u8; 64], data: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 72];
    h[0] = nvmf::CAPSULE_CMD;
    h[2] = 72;
    h[3] = if data.is_empty() { 0 } else { 72 };
    h[4..8].copy_from_slice(&((72 + data.len()) as u32).to_le_bytes());
    h[8..72].copy_from_slice(sqe);
    h.extend_from_slice(data);
    h
}

/// An SQE with CID and an SGL describing `len` bytes: in-capsule data
/// (`in_capsule`) or a transport data block (R2T / C2HData).
fn nvmf_sqe(mut s: [u8; 64], cid: u16, len: u32, in_capsule: bool) -> [u8; 64] {
    s[1] |= 0x40;
    s[2..4].copy_from_slice(&cid.to_le_bytes());
    s[24..32].fill(0);
    s[32..36].copy_from_slice(&len.to_le_bytes());
    s[39] = if in_capsule { 0x01 } else { 0x5a };
    s
}

/// Reads one PDU (common header and the rest) within `limit`.
fn nvmf_recv(s: &mut TcpStream, ctx: &Ctx, limit: Duration) -> Result<(Vec<u8>, u8), String> {
    let ch = recv_exact(s, 8, ctx, limit)?;
    let plen = u32::from_le_bytes(ch[4..8].try_into().unwrap()) as usize;
    if !(8..=1 << 20).contains(&plen) {
        return Err(format!("bad PDU header {ch:02x?}"));
    }
    let mut all = ch.clone();
    all.extend_from_slice(&recv_exact(s, plen - 8, ctx, limit)?);
    if ch[0] == nvmf::C2H_TERM_REQ {
        return Err(format!(
            "C2HTermReq FES {}",
            u16::from_le_bytes([all[8], all[9]])
        ));
    }
    Ok((all, ch[0]))
}

/// Connects, exchanges ICReq/ICResp (no digests); returns the socket and
/// the target's MAXH2CDATA.
fn nvmf_open(addr: SocketAddr, ctx: &Ctx) -> Result<(TcpStream, u32), String> {
    let mut s = connect(addr, ctx)?;
    let mut icreq = vec![0u8; 128];
    icreq[0] = nvmf::ICREQ;
    icreq[2] = 128;
    icreq[4..8].copy_from_slice(&128u32.to_le_bytes());
    send(&mut s, &icreq, ctx)?;
    let (r, kind) = nvmf_recv(&mut s, ctx, SETUP)?;
    if kind != nvmf::ICRESP || r.len() < 16 {
        return Err(format!("ICReq answered with PDU type {kind:#x}"));
    }
    let maxh2c = u32::from_le_bytes(r[12..16].try_into().unwrap());
    Ok((s, if maxh2c == 0 { 8192 } else { maxh2c }))
}

/// Runs one admin-style command (no data back) to its CapsuleResp;
/// returns (status, dw0).
fn nvmf_exchange(
    s: &mut TcpStream,
    sqe: &[u8; 64],
    data: &[u8],
    ctx: &Ctx,
) -> Result<(u16, u32), String> {
    send(s, &capsule_pdu(sqe, data), ctx)?;
    loop {
        let (p, kind) = nvmf_recv(s, ctx, SETUP)?;
        if kind == nvmf::CAPSULE_RESP && p.len() >= 24 {
            let dw0 = u32::from_le_bytes(p[8..12].try_into().unwrap());
            let status = u16::from_le_bytes([p[22], p[23]]) >> 1;
            return Ok((status, dw0));
        }
    }
}

/// Fabrics Connect of queue `qid` (0: a new admin queue) with `sqsize`
/// entries (0-based) and no keep-alive; returns the controller ID.
fn nvmf_connect(
    s: &mut TcpStream,
    ns: &NvmfNs,
    hostid: [u8; 16],
    qid: u16,
    cntlid: u16,
    sqsize: u16,
    ctx: &Ctx,
) -> Result<u16, String> {
    let mut c = nvmf::sqe(0x7f, 0);
    c[4] = 0x01;
    nvmf::set_dw(&mut c, 10, u32::from(qid) << 16);
    nvmf::set_dw(&mut c, 11, u32::from(sqsize));
    let mut d = vec![0u8; 1024];
    d[..16].copy_from_slice(&hostid);
    d[16..18].copy_from_slice(&cntlid.to_le_bytes());
    let (sub, host) = (ns.subnqn.as_bytes(), ns.hostnqn.as_bytes());
    d[256..256 + sub.len().min(255)].copy_from_slice(&sub[..sub.len().min(255)]);
    d[512..512 + host.len().min(255)].copy_from_slice(&host[..host.len().min(255)]);
    let sqe = nvmf_sqe(c, 1, 1024, true);
    let (status, dw0) = nvmf_exchange(s, &sqe, &d, ctx)?;
    if status != 0 {
        return Err(format!("Connect qid {qid}: status {status:#x}"));
    }
    Ok(dw0 as u16)
}

/// A new controller: admin queue connected and enabled (CC.EN, CSTS.RDY).
fn nvmf_controller(ns: &NvmfNs, hostid: [u8; 16], ctx: &Ctx) -> Result<(TcpStream, u16), String> {
    let (mut s, _) = nvmf_open(ns.addr, ctx)?;
    let cntlid = nvmf_connect(&mut s, ns, hostid, 0, 0xffff, 31, ctx)?;
    let mut set = nvmf::sqe(0x7f, 0);
    set[4] = 0x00;
    nvmf::set_dw(&mut set, 11, 0x14);
    nvmf::set_dw(&mut set, 12, 1 | (6 << 16) | (4 << 20));
    let (st, _) = nvmf_exchange(&mut s, &nvmf_sqe(set, 2, 0, false), &[], ctx)?;
    if st != 0 {
        return Err(format!("CC.EN: status {st:#x}"));
    }
    for k in 0..50u16 {
        let mut get = nvmf::sqe(0x7f, 0);
        get[4] = 0x04;
        nvmf::set_dw(&mut get, 11, 0x1c);
        let (st, csts) = nvmf_exchange(&mut s, &nvmf_sqe(get, 3 + k, 0, false), &[], ctx)?;
        if st == 0 && csts & 1 != 0 {
            return Ok((s, cntlid));
        }
        if !ctx.pause(Duration::from_millis(100)) {
            return Err(ENDED.into());
        }
    }
    Err("controller never became ready".into())
}

static HOSTID_SEQ: AtomicU64 = AtomicU64::new(1);

fn new_hostid() -> [u8; 16] {
    let mut h = *b"ironbay-attack00";
    let n = HOSTID_SEQ.fetch_add(1, Relaxed) as u32;
    h[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    h[12..16].copy_from_slice(&n.to_le_bytes());
    h
}

/// NVMe-oF hosts that fill I/O queues with large READs and never read.
#[derive(Clone, Debug)]
pub struct NvmfReadFlood {
    pub ns: NvmfNs,
    /// Controllers (one admin connection each).
    pub controllers: usize,
    /// I/O queues (one connection each) per controller.
    pub queues: usize,
    pub duration: Duration,
    pub reconnect: Option<Duration>,
    /// Bytes per READ (at most the target's max_io_size, 128 KiB by default).
    pub request_bytes: u32,
    /// READs per I/O queue (the queue gets one entry more; below 128),
    /// sent `fire_at` after the attack started.
    pub depth: u16,
    pub fire_at: Duration,
}

/// Runs `per_queue` on `queues` I/O queues of one new controller, each in
/// its own thread, holding the admin connection until they end.
fn nvmf_with_queues(
    ns: &NvmfNs,
    queues: usize,
    sqsize: u16,
    ctx: &Ctx,
    per_queue: &(dyn Fn(TcpStream, u32) -> Result<(), String> + Sync),
) -> Result<(), String> {
    let hostid = new_hostid();
    let (_admin, cntlid) = nvmf_controller(ns, hostid, ctx)?;
    let _open = ctx.opened();
    let results: Vec<Result<(), String>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (1..=queues as u16)
            .map(|qid| {
                sc.spawn(move || -> Result<(), String> {
                    let (mut s, maxh2c) = nvmf_open(ns.addr, ctx)?;
                    nvmf_connect(&mut s, ns, hostid, qid, cntlid, sqsize, ctx)?;
                    let _open = ctx.opened();
                    per_queue(s, maxh2c)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("queue thread panicked".into()))
            })
            .collect()
    });
    results.into_iter().find(|r| r.is_err()).unwrap_or(Ok(()))
}

pub fn nvmf_read_flood(cfg: NvmfReadFlood) -> Attack {
    let name = format!("nvmf-read-flood:{}", cfg.ns.subnqn);
    Attack::spawn(
        &name,
        cfg.controllers,
        cfg.duration,
        cfg.reconnect,
        move |_, ctx| {
            let depth = cfg.depth.clamp(1, 126);
            let bs = u64::from(cfg.ns.block_size.max(1));
            let blocks = (u64::from(cfg.request_bytes) / bs).max(1);
            let size = cfg.ns.ns_blocks * bs;
            nvmf_with_queues(&cfg.ns, cfg.queues, depth, ctx, &|mut s, _| {
                if !ctx.wait_until(cfg.fire_at) {
                    return Ok(());
                }
                for cid in 1..=depth {
                    let lba = spread(u64::from(cid), blocks * bs, size) / bs;
                    let mut c = nvmf::sqe(0x02, cfg.ns.nsid);
                    nvmf::set_dw(&mut c, 10, lba as u32);
                    nvmf::set_dw(&mut c, 11, (lba >> 32) as u32);
                    nvmf::set_dw(&mut c, 12, blocks as u32 - 1);
                    let sqe = nvmf_sqe(c, cid, (blocks * bs) as u32, false);
                    send(&mut s, &capsule_pdu(&sqe, &[]), ctx)?;
                    ctx.request();
                }
                ctx.hold();
                Ok(())
            })
        },
    )
}

/// NVMe-oF hosts whose WRITEs' solicited H2CData trickles in.
#[derive(Clone, Debug)]
pub struct NvmfSlowWrite {
    pub ns: NvmfNs,
    pub controllers: usize,
    pub queues: usize,
    pub duration: Duration,
    pub reconnect: Option<Duration>,
    pub request_bytes: u32,
    /// WRITEs kept outstanding per queue.
    pub depth: u16,
    /// Bytes of the H2CData stream sent per `interval`.
    pub chunk: usize,
    pub interval: Duration,
}

pub fn nvmf_slow_write(cfg: NvmfSlowWrite) -> Attack {
    let name = format!("nvmf-slow-write:{}", cfg.ns.subnqn);
    Attack::spawn(
        &name,
        cfg.controllers,
        cfg.duration,
        cfg.reconnect,
        move |_, ctx| {
            let depth = cfg.depth.clamp(1, 126);
            let bs = u64::from(cfg.ns.block_size.max(1));
            let blocks = (u64::from(cfg.request_bytes) / bs).max(1);
            let len = (blocks * bs) as u32;
            let size = cfg.ns.ns_blocks * bs;
            nvmf_with_queues(&cfg.ns, cfg.queues, depth, ctx, &|mut s, maxh2c| {
                let mut trickle = Trickle::new(cfg.chunk, cfg.interval);
                let mut inbox = Inbox::default();
                let fill = filler(maxh2c.min(1 << 20) as usize);
                let mut n = 0u64;
                let issue = |t: &mut Trickle, cid: u16, n: &mut u64| {
                    let lba = spread(*n, u64::from(len), size) / bs;
                    let mut c = nvmf::sqe(0x01, cfg.ns.nsid);
                    nvmf::set_dw(&mut c, 10, lba as u32);
                    nvmf::set_dw(&mut c, 11, (lba >> 32) as u32);
                    nvmf::set_dw(&mut c, 12, blocks as u32 - 1);
                    t.push(&capsule_pdu(&nvmf_sqe(c, cid, len, false), &[]));
                    ctx.request();
                    *n += 1;
                };
                for cid in 1..=depth {
                    issue(&mut trickle, cid, &mut n);
                }
                while !ctx.done() {
                    trickle.tick(&mut s, ctx)?;
                    inbox.fill(&mut s)?;
                    loop {
                        if inbox.0.len() < 8 {
                            break;
                        }
                        let plen = u32::from_le_bytes(inbox.0[4..8].try_into().unwrap()) as usize;
                        if !(8..=1 << 20).contains(&plen) {
                            return Err("bad PDU from the target".into());
                        }
                        let Some(p) = inbox.take(plen) else {
                            break;
                        };
                        match p[0] {
                            nvmf::R2T if p.len() >= 20 => {
                                let cid = u16::from_le_bytes([p[8], p[9]]);
                                let ttag = u16::from_le_bytes([p[10], p[11]]);
                                let off = u32::from_le_bytes(p[12..16].try_into().unwrap());
                                let r2tl = u32::from_le_bytes(p[16..20].try_into().unwrap());
                                let mut at = 0u32;
                                while at < r2tl {
                                    let k = (r2tl - at).min(maxh2c).min(fill.len() as u32);
                                    let mut h = vec![0u8; 24];
                                    h[0] = nvmf::H2C_DATA;
                                    h[1] = if at + k == r2tl { 0x04 } else { 0 };
                                    h[2] = 24;
                                    h[3] = 24;
                                    h[4..8].copy_from_slice(&(24 + k).to_le_bytes());
                                    h[8..10].copy_from_slice(&cid.to_le_bytes());
                                    h[10..12].copy_from_slice(&ttag.to_le_bytes());
                                    h[12..16].copy_from_slice(&(off + at).to_le_bytes());
                                    h[16..20].copy_from_slice(&k.to_le_bytes());
                                    h.extend_from_slice(&fill[..k as usize]);
                                    trickle.push(&h);
                                    at += k;
                                }
                            }
                            nvmf::CAPSULE_RESP if p.len() >= 24 => {
                                let cid = u16::from_le_bytes([p[20], p[21]]);
                                issue(&mut trickle, cid, &mut n);
                            }
                            nvmf::C2H_TERM_REQ => return Err("terminated by the target".into()),
                            _ => {}
                        }
                    }
                }
                Ok(())
            })
        },
    )
}

// ---------------------------------------------------------------------------
// Real clients and their verified workload

/// A block device a real client reaches over the network.
pub trait BlockClient {
    fn block_size(&self) -> u32;
    fn blocks(&self) -> u64;
    fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), String>;
    fn read(&mut self, lba: u64, len: usize) -> Result<Vec<u8>, String>;
}

/// A verified write/read workload.
#[derive(Clone, Debug)]
pub struct Workload {
    pub duration: Duration,
    /// Bytes per write and per read.
    pub io_bytes: usize,
    /// Distinct slots of `io_bytes` written and read, from LBA `base`.
    pub slots: u64,
    pub base: u64,
    pub seed: u64,
}

/// Per-operation latencies of a workload.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    pub write: Vec<Duration>,
    pub read: Vec<Duration>,
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// The content of `slot` at `generation`.
fn pattern(seed: u64, slot: u64, generation: u64, len: usize) -> Vec<u8> {
    let mut x = (seed ^ slot.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (generation << 32)) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&xorshift(&mut x).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Writes random slots and reads each back at once, then reads every slot
/// written once more at the end; all data is checked. `abort` is asked
/// before each operation (the appliance crashed: stop early).
pub fn verified_workload(
    c: &mut dyn BlockClient,
    w: &Workload,
    abort: &dyn Fn() -> Option<String>,
) -> Result<Latencies, String> {
    let bs = c.block_size() as usize;
    if bs == 0 || !w.io_bytes.is_multiple_of(bs) {
        return Err(format!("I/O size {} is no multiple of {bs}", w.io_bytes));
    }
    let per = (w.io_bytes / bs) as u64;
    if w.base + per > c.blocks() {
        return Err(format!(
            "LBA {} is past the end ({} blocks)",
            w.base,
            c.blocks()
        ));
    }
    let slots = w.slots.min((c.blocks() - w.base) / per).max(1);
    let lba = |slot: u64| w.base + slot * per;
    let mut generation = vec![0u64; slots as usize];
    let mut lat = Latencies::default();
    let mut x = w.seed | 1;
    let until = Instant::now() + w.duration;
    let check = |slot: u64, g: u64, got: &[u8]| -> Result<(), String> {
        let want = pattern(w.seed, slot, g, w.io_bytes);
        if got != want {
            let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
            return Err(format!(
                "slot {slot} (LBA {}) generation {g}: data differs at byte {at} ({} bytes read)",
                lba(slot),
                got.len()
            ));
        }
        Ok(())
    };
    while Instant::now() < until {
        if let Some(why) = abort() {
            return Err(why);
        }
        let slot = xorshift(&mut x) % slots;
        let g = generation[slot as usize] + 1;
        let data = pattern(w.seed, slot, g, w.io_bytes);
        let t = Instant::now();
        c.write(lba(slot), &data)
            .map_err(|e| format!("write slot {slot}: {e}"))?;
        lat.write.push(t.elapsed());
        generation[slot as usize] = g;
        let t = Instant::now();
        let got = c
            .read(lba(slot), w.io_bytes)
            .map_err(|e| format!("read slot {slot}: {e}"))?;
        lat.read.push(t.elapsed());
        check(slot, g, &got)?;
    }
    for slot in 0..slots {
        let g = generation[slot as usize];
        if g == 0 {
            continue;
        }
        if let Some(why) = abort() {
            return Err(why);
        }
        let t = Instant::now();
        let got = c
            .read(lba(slot), w.io_bytes)
            .map_err(|e| format!("final read slot {slot}: {e}"))?;
        lat.read.push(t.elapsed());
        check(slot, g, &got)?;
    }
    Ok(lat)
}

/// `n`, p50, p99 and max of `samples`, for the test output.
pub fn percentiles(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    let mut v = samples.to_vec();
    v.sort();
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        v.len(),
        ms(at(0.50)),
        ms(at(0.99)),
        ms(v[v.len() - 1])
    )
}

/// An NVMe-oF host on 127.0.0.1: an admin queue (kept alive) and one I/O
/// queue, through the raw test host.
pub struct NvmfClient {
    pub admin: nvmf::Host,
    pub io: nvmf::Host,
    pub nsid: u32,
    pub block_size: u32,
    pub blocks: u64,
    last_keep_alive: Instant,
}

impl NvmfClient {
    /// Admin queue, Identify Controller and Namespace, one I/O queue.
    pub fn connect(port: u16, subnqn: &str, hostnqn: &str, nsid: u32) -> Result<Self, String> {
        let (mut admin, cntlid) = nvmf::Host::admin_queue(port, subnqn, hostnqn)?;
        let mut id = nvmf::sqe(0x06, 0);
        nvmf::set_dw(&mut id, 10, 1);
        let ctrl = admin.fetch(id, 4096)?;
        if ctrl.status != 0 || ctrl.data.len() != 4096 {
            return Err(format!("Identify Controller: status {:#x}", ctrl.status));
        }
        let mut id = nvmf::sqe(0x06, nsid);
        nvmf::set_dw(&mut id, 10, 0);
        let ns = admin.fetch(id, 4096)?;
        if ns.status != 0 || ns.data.len() != 4096 {
            return Err(format!("Identify Namespace: status {:#x}", ns.status));
        }
        let blocks = u64::from_le_bytes(ns.data[..8].try_into().unwrap());
        let format = (ns.data[26] & 0x0f) as usize;
        let lbads = ns.data[128 + 4 * format + 2];
        if blocks == 0 || !(9..=16).contains(&lbads) {
            return Err(format!("namespace {nsid}: {blocks} blocks, LBADS {lbads}"));
        }
        let mut io = nvmf::Host::open(port).map_err(|e| e.to_string())?;
        io.icreq(false, false)?;
        let c = io.connect(subnqn, hostnqn, 1, cntlid)?;
        if c.status != 0 {
            return Err(format!("I/O queue Connect: status {:#x}", c.status));
        }
        Ok(NvmfClient {
            admin,
            io,
            nsid,
            block_size: 1 << lbads,
            blocks,
            last_keep_alive: Instant::now(),
        })
    }

    /// Keep Alive on the admin queue every few seconds (KATO is 30 s).
    fn keep_alive(&mut self) -> Result<(), String> {
        if self.last_keep_alive.elapsed() < Duration::from_secs(5) {
            return Ok(());
        }
        self.last_keep_alive = Instant::now();
        let d = self.admin.run(nvmf::sqe(0x18, 0), &[], &[])?;
        if d.status != 0 {
            return Err(format!("Keep Alive: status {:#x}", d.status));
        }
        Ok(())
    }

    fn rw(&self, opcode: u8, lba: u64, bytes: usize) -> [u8; 64] {
        let mut c = nvmf::sqe(opcode, self.nsid);
        nvmf::set_dw(&mut c, 10, lba as u32);
        nvmf::set_dw(&mut c, 11, (lba >> 32) as u32);
        nvmf::set_dw(&mut c, 12, (bytes / self.block_size as usize) as u32 - 1);
        c
    }
}

/// Runs `f`, turning a panic in the raw hosts into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err("the raw host panicked (connection lost?)".into()))
}

impl BlockClient for NvmfClient {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn blocks(&self) -> u64 {
        self.blocks
    }
    fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), String> {
        guarded(|| {
            self.keep_alive()?;
            let c = self.rw(0x01, lba, data.len());
            let d = self.io.run(c, &[], data)?;
            if d.status != 0 {
                return Err(format!("WRITE status {:#x}", d.status));
            }
            Ok(())
        })
    }
    fn read(&mut self, lba: u64, len: usize) -> Result<Vec<u8>, String> {
        guarded(|| {
            self.keep_alive()?;
            let c = self.rw(0x02, lba, len);
            let d = self.io.fetch(c, len as u32)?;
            if d.status != 0 {
                return Err(format!("READ status {:#x}", d.status));
            }
            Ok(d.data)
        })
    }
}

/// Connects a client and runs a short verified workload: one real client
/// getting through, start to end.
pub fn nvmf_client_check(port: u16, subnqn: &str, hostnqn: &str) -> Result<String, String> {
    guarded(|| {
        let mut c = NvmfClient::connect(port, subnqn, hostnqn, 1)?;
        let w = Workload {
            duration: Duration::from_millis(200),
            io_bytes: 16384,
            slots: 64,
            base: 0,
            seed: 0x5eed_0001,
        };
        let lat = verified_workload(&mut c, &w, &|| None)?;
        Ok(format!(
            "NVMe-oF {subnqn}: {} blocks of {}, {} writes verified",
            c.blocks,
            c.block_size,
            lat.write.len()
        ))
    })
}

/// The discovery log page through the discovery controller on `port`:
/// the subsystem NQNs it lists.
pub fn nvmf_discovery(port: u16, hostnqn: &str) -> Result<Vec<String>, String> {
    guarded(|| {
        let mut h = nvmf::Host::open(port).map_err(|e| e.to_string())?;
        h.icreq(false, false)?;
        let c = h.connect("nqn.2014-08.org.nvmexpress.discovery", hostnqn, 0, 0xffff)?;
        if c.status != 0 {
            return Err(format!("discovery Connect: status {:#x}", c.status));
        }
        h.property_set(0x14, 1)?;
        let mut cmd = nvmf::sqe(0x02, 0);
        nvmf::set_dw(&mut cmd, 10, 0x70 | 1023 << 16);
        let d = h.fetch(cmd, 4096)?;
        if d.status != 0 || d.data.len() != 4096 {
            return Err(format!("discovery log: status {:#x}", d.status));
        }
        let numrec = u64::from_le_bytes(d.data[8..16].try_into().unwrap()) as usize;
        Ok((0..numrec.min(3))
            .map(|i| {
                let nqn = &d.data[1024 * (i + 1) + 256..1024 * (i + 1) + 512];
                let end = nqn.iter().position(|&b| b == 0).unwrap_or(256);
                String::from_utf8_lossy(&nqn[..end]).trim().to_string()
            })
            .collect())
    })
}

/// Logs in, reads the capacity and runs a short verified workload.
pub fn iscsi_client_check(lun: &IscsiLun) -> Result<String, String> {
    let mut i = Initiator::login(lun, Duration::from_secs(30))?;
    let (blocks, bs) = i.read_capacity()?;
    let w = Workload {
        duration: Duration::from_millis(200),
        io_bytes: 16384,
        slots: 64,
        base: 0,
        seed: 0x5eed_0002,
    };
    let lat = verified_workload(&mut i, &w, &|| None)?;
    i.logout();
    Ok(format!(
        "iSCSI {}: {blocks} blocks of {bs}, {} writes verified",
        lun.target,
        lat.write.len()
    ))
}

// ---------------------------------------------------------------------------
// External clients

static RUN_SEQ: AtomicU64 = AtomicU64::new(1);

/// Runs `cmd` with its output captured, killing it after `timeout` or as
/// soon as `abort` says so. `Ok(output)` on success.
pub fn run_bounded(
    cmd: &mut Command,
    timeout: Duration,
    abort: &dyn Fn() -> Option<String>,
) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let dir = std::env::temp_dir().join(format!(
        "ironbay-attack-{}-{}",
        std::process::id(),
        RUN_SEQ.fetch_add(1, Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let file = |p: &Path| std::fs::File::create(p).map_err(|e| e.to_string());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file(&out)?)
        .stderr(file(&err)?)
        .spawn()
        .map_err(|e| format!("{shown}: {e}"))?;
    let until = Instant::now() + timeout;
    let outcome = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) => {}
            Err(e) => break Err(format!("{shown}: {e}")),
        }
        if let Some(why) = abort() {
            let _ = child.kill();
            let _ = child.wait();
            break Err(format!("{shown}: stopped: {why}"));
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            break Err(format!("{shown}: still running after {timeout:?}, killed"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = format!(
        "{}{}",
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    let _ = std::fs::remove_dir_all(&dir);
    match outcome {
        Ok(st) if st.success() => Ok(text),
        Ok(st) => Err(format!("{shown} failed ({st}):\n{text}")),
        Err(e) => Err(format!("{e}\n{text}")),
    }
}

/// What fio reported for a verified run.
#[derive(Clone, Debug, Default)]
pub struct FioOutcome {
    pub errors: u64,
    pub write_iops: f64,
    pub read_iops: f64,
    /// Completion latency percentiles in µs: (p50, p99).
    pub write_clat_us: Option<(f64, f64)>,
    pub read_clat_us: Option<(f64, f64)>,
    pub output: String,
}

/// fio's nbd engine against `uri`: random writes with crc32c verification
/// (`verify_backlog`, fatal on mismatch) for `runtime`.
pub fn fio_nbd_verify(
    uri: &str,
    runtime: Duration,
    bs: &str,
    iodepth: u32,
    size: &str,
    abort: &dyn Fn() -> Option<String>,
) -> Result<FioOutcome, String> {
    let secs = runtime.as_secs().max(1);
    let out = run_bounded(
        Command::new("fio").args([
            "--name=hostile-verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            &format!("--bs={bs}"),
            &format!("--size={size}"),
            &format!("--iodepth={iodepth}"),
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_backlog=64",
            "--verify_state_save=0",
            "--time_based",
            &format!("--runtime={secs}"),
            "--output-format=terse",
            "--terse-version=3",
        ]),
        runtime + Duration::from_secs(60),
        abort,
    )?;
    parse_fio_terse(&out).ok_or_else(|| format!("no fio terse line in:\n{out}"))
}

/// The fields of fio's first terse (v3) line this module uses.
pub fn parse_fio_terse(text: &str) -> Option<FioOutcome> {
    let line = text.lines().find(|l| l.starts_with("3;"))?;
    let f: Vec<&str> = line.split(';').collect();
    let num = |i: usize| f.get(i)?.trim().parse::<f64>().ok();
    // Read: 5 total KiB .. 17-36 clat percentiles; write the same from 46.
    let pct = |base: usize| -> Option<(f64, f64)> {
        let find = |p: &str| {
            f.get(base + 17..base + 37)?
                .iter()
                .find_map(|e| e.strip_prefix(p)?.parse::<f64>().ok())
        };
        Some((find("50.000000%=")?, find("99.000000%=")?))
    };
    Some(FioOutcome {
        errors: num(4)? as u64,
        read_iops: num(7)?,
        write_iops: num(48)?,
        read_clat_us: pct(0).filter(|_| num(7).unwrap_or(0.0) > 0.0),
        write_clat_us: pct(41).filter(|_| num(48).unwrap_or(0.0) > 0.0),
        output: line.to_string(),
    })
}

/// nbdinfo on `uri`, then qemu-io writes a pattern at 1 MiB and reads it
/// back: one real NBD client getting through, start to end.
pub fn nbd_client_check(uri: &str) -> Result<String, String> {
    let info = run_bounded(
        Command::new("nbdinfo").arg(uri),
        Duration::from_secs(30),
        &|| None,
    )?;
    let size = info
        .lines()
        .find(|l| l.contains("export-size:"))
        .ok_or_else(|| format!("nbdinfo: {info}"))?
        .trim()
        .to_string();
    qemu_io_check(uri, 1 << 20, "256k", 0x5c)?;
    Ok(format!(
        "nbdinfo and qemu-io write/read-verify on {uri}: {size}"
    ))
}

/// qemu-io writes a pattern and reads it back (`len` at `offset`) over NBD.
pub fn qemu_io_check(uri: &str, offset: u64, len: &str, pattern: u8) -> Result<String, String> {
    let out = run_bounded(
        Command::new("qemu-io").args([
            "-f",
            "raw",
            "-c",
            &format!("write -P {pattern:#x} {offset} {len}"),
            "-c",
            &format!("read -P {pattern:#x} {offset} {len}"),
            uri,
        ]),
        Duration::from_secs(60),
        &|| None,
    )?;
    if out.contains("Pattern verification failed") || out.contains("failed:") {
        return Err(out);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// The appliance under attack

/// Console lines that mean the appliance died.
pub const CRASH_MARKERS: &[&str] = &["PANIC", "!!! EXCEPTION", "halted"];

/// The crash report in `console` (from its first line on), if any.
pub fn crash_report(console: &str) -> Option<String> {
    let lines: Vec<&str> = console.lines().collect();
    let at = lines
        .iter()
        .position(|l| CRASH_MARKERS.iter().any(|m| l.contains(m)))?;
    Some(lines[at.saturating_sub(2)..(at + 24).min(lines.len())].join("\n"))
}

/// The last `io budget: high-water N KiB of M KiB` line, or failing that
/// the last other `io budget:` line, if the kernel prints one.
pub fn budget_line(console: &str) -> Option<String> {
    let last = |needle: &str| {
        console
            .lines()
            .rev()
            .find(|l| l.contains(needle))
            .map(|l| l.trim().to_string())
    };
    last("io budget: high-water").or_else(|| last("io budget:"))
}

pub const IQN_PREFIX: &str = "iqn.2016-06.io.spdk";
/// The default boot config's target node and NVMe-oF subsystem (Malloc0):
/// what the attackers use.
pub const ATTACK_IQN: &str = "iqn.2016-06.io.spdk:disk0";
pub const ATTACK_NQN: &str = "nqn.2016-06.io.spdk:cnode1";
pub const ATTACK_NBD: &str = "Malloc0";
/// What [`Appliance::add_client_exports`] adds for the real clients.
pub const CLIENT_IQN: &str = "iqn.2016-06.io.spdk:disk1";
pub const CLIENT_NQN: &str = "nqn.2016-06.io.spdk:cnode2";
pub const CLIENT_NBD: &str = "VirtioBlk0";
pub const HOSTNQN: &str = "nqn.2014-08.org.ironbay:hostile-client";
/// Malloc0 of the default boot config: 64 MiB of 512-byte blocks.
pub const MALLOC0_BLOCKS: u64 = 131_072;

/// The appliance as `cargo xtask run` boots it (512 MiB, 2 vCPUs, one NVMe
/// and one virtio-blk disk of 1 GiB, the default boot config), with its
/// service ports forwarded from free 127.0.0.1 ports.
pub struct Appliance {
    pub vm: Running,
    pub nbd: u16,
    pub iscsi: u16,
    pub nvme: u16,
    pub discovery: u16,
    pub rpc: u16,
    pub dir: PathBuf,
}

impl Appliance {
    /// Boots `kernel` with the default boot config; scratch files go to `dir`.
    pub fn boot(kernel: &Path, dir: &Path, extra_args: &str) -> Result<Appliance, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../boot/default-config.json");
        let (nvme_img, vblk_img) = (dir.join("nvme0.img"), dir.join("vblk0.img"));
        for d in [&nvme_img, &vblk_img] {
            let _ = std::fs::remove_file(d);
            sparse_disk(d, 1 << 30).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let mut m = Machine::new(Boot::Kernel {
            image: kernel.to_path_buf(),
            append: format!(
                "mgmt.ip=10.0.2.15/24 mgmt.gw=10.0.2.2 data.ip=10.0.3.15/24 {extra_args}"
            )
            .trim()
            .to_string(),
            config: Some(config),
        });
        m.disks = vec![Disk::nvme(0, 1, nvme_img), Disk::virtio(vblk_img)];
        let (nbd, iscsi, nvme, discovery, rpc) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        m.forwards = vec![
            (Nic::Data, nbd, 10809),
            (Nic::Data, iscsi, 3260),
            (Nic::Data, nvme, 4420),
            (Nic::Data, discovery, 8009),
            (Nic::Mgmt, rpc, 5260),
        ];
        let mut vm = Running::spawn(m.command()).map_err(|e| format!("start QEMU: {e}"))?;
        vm.wait_for(crate::READY, Duration::from_secs(180))?;
        Ok(Appliance {
            vm,
            nbd,
            iscsi,
            nvme,
            discovery,
            rpc,
            dir: dir.to_path_buf(),
        })
    }

    /// A second iSCSI target node (VirtioBlk0) and NVMe-oF subsystem
    /// (Nvme0n1) for the real clients, through SPDK's `spdk-rpc`.
    pub fn add_client_exports(&self) -> Result<(), String> {
        let calls: [&[&str]; 4] = [
            &[
                "iscsi_create_target_node",
                "disk1",
                "disk1",
                "VirtioBlk0:0",
                "1:1",
                "64",
                "-d",
            ],
            &[
                "nvmf_create_subsystem",
                CLIENT_NQN,
                "-s",
                "IRONBAY0000000000002",
                "-d",
                "ironbay hostile client",
                "-a",
            ],
            &[
                "nvmf_subsystem_add_listener",
                CLIENT_NQN,
                "-t",
                "tcp",
                "-a",
                "0.0.0.0",
                "-s",
                "4420",
                "-f",
                "ipv4",
            ],
            &["nvmf_subsystem_add_ns", CLIENT_NQN, "Nvme0n1"],
        ];
        for args in calls {
            let mut last = String::new();
            let ok = (0..5).any(|_| match crate::spdk_rpc(self.rpc, args) {
                Ok(_) => true,
                Err(e) => {
                    last = e;
                    std::thread::sleep(Duration::from_secs(1));
                    false
                }
            });
            if !ok {
                return Err(format!("spdk-rpc {args:?}: {last}"));
            }
        }
        Ok(())
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    pub fn nbd_uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.nbd)
    }

    pub fn iscsi_url(&self, iqn: &str, lun: u16) -> String {
        format!("iscsi://127.0.0.1:{}/{iqn}/{lun}", self.iscsi)
    }

    pub fn iscsi_lun(&self, iqn: &str, initiator: &str) -> IscsiLun {
        IscsiLun {
            addr: self.addr(self.iscsi),
            target: iqn.into(),
            lun: 0,
            initiator: initiator.into(),
        }
    }

    pub fn nvmf_ns(&self, subnqn: &str, ns_blocks: u64) -> NvmfNs {
        NvmfNs {
            addr: self.addr(self.nvme),
            subnqn: subnqn.into(),
            hostnqn: "nqn.2014-08.org.ironbay:attacker".into(),
            nsid: 1,
            block_size: 512,
            ns_blocks,
        }
    }

    /// The crash report if the appliance died.
    pub fn crashed(&self) -> Option<String> {
        crash_report(&self.vm.output())
    }

    /// The last `n` console lines.
    pub fn console_tail(&self, n: usize) -> String {
        let out = self.vm.output();
        let lines: Vec<&str> = out.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn console_crash_and_budget_lines() {
        let console = "[ 1.0] INFO  init: ready\n[ 2.0] INFO  mem: io budget: high-water 10 KiB of 20 KiB\n\
                       [ 3.0] INFO  mem: io budget: high-water 512 KiB of 65536 KiB\n\
                       [ 4.0] INFO  mem: io budget: 65536 KiB over 64 slots\n\n\
                       !!! PANIC at alloc.rs:1:1: memory allocation of 33554432 bytes failed\n    backtrace:\nhalted (panic=halt)\n";
        assert_eq!(
            budget_line(console).as_deref(),
            Some("[ 3.0] INFO  mem: io budget: high-water 512 KiB of 65536 KiB")
        );
        let crash = crash_report(console).unwrap();
        assert!(crash.contains("memory allocation") && crash.contains("halted"));
        assert!(crash_report("[ 1.0] INFO  init: ready\n").is_none());
        assert_eq!(
            budget_line("x\n[ 0.3] INFO  services: io budget: 48878 KiB for target I/O\n")
                .as_deref(),
            Some("[ 0.3] INFO  services: io budget: 48878 KiB for target I/O")
        );
    }

    #[test]
    fn fio_terse_fields_and_percentiles() {
        let mut f = vec!["0".to_string(); 130];
        f[0] = "3".into();
        f[4] = "0".into();
        f[7] = "0".into();
        f[48] = "123.5".into();
        f[58 + 6] = "50.000000%=1500".into();
        f[58 + 12] = "99.000000%=9000".into();
        let out = parse_fio_terse(&format!("fio noise\n{}\n", f.join(";"))).unwrap();
        assert_eq!(out.errors, 0);
        assert_eq!(out.write_iops, 123.5);
        assert_eq!(out.write_clat_us, Some((1500.0, 9000.0)));
        assert_eq!(out.read_clat_us, None);
    }

    #[test]
    fn spread_stays_inside_and_aligned() {
        for i in 0..1000 {
            let off = spread(i, 32 << 20, 64 << 20);
            assert!(off + (32 << 20) <= 64 << 20 && off.is_multiple_of(4096));
        }
        assert_eq!(spread(5, 1 << 20, 1 << 20), 0);
    }

    #[test]
    fn percentiles_of_samples() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = percentiles(&v);
        assert!(p.starts_with("n=100 p50=51.00 ms p99=99.00 ms"), "{p}");
        assert_eq!(percentiles(&[]), "no samples");
    }

    /// Idle sockets open, hold without sending, and go at once on `leave`.
    #[test]
    fn idle_sockets_hold_then_leave() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            (0..5)
                .map(|_| l.accept().unwrap().0)
                .collect::<Vec<TcpStream>>()
        });
        let a = idle(Idle {
            addr,
            connections: 5,
            duration: Duration::from_secs(30),
            reconnect: None,
        });
        assert!(a.wait_open(5, Duration::from_secs(10)));
        let mut accepted = server.join().unwrap();
        let t = Instant::now();
        let r = a.leave();
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "leave took {:?}",
            t.elapsed()
        );
        assert_eq!((r.connects, r.open, r.bytes_sent), (5, 0, 0), "{r}");
        for s in &mut accepted {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut b = [0u8; 1];
            assert_eq!(s.read(&mut b).unwrap_or(0), 0, "an idle socket sent data");
        }
    }

    /// A fake NBD server: the handshake, then the requests it receives.
    #[test]
    fn nbd_read_flood_handshakes_and_pipelines() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut hello = b"NBDMAGIC".to_vec();
            hello.extend_from_slice(&NBD_IHAVEOPT.to_be_bytes());
            hello.extend_from_slice(&3u16.to_be_bytes());
            s.write_all(&hello).unwrap();
            let mut head = [0u8; 20];
            s.read_exact(&mut head).unwrap();
            assert_eq!(u32::from_be_bytes(head[..4].try_into().unwrap()), 3);
            assert_eq!(
                u32::from_be_bytes(head[12..16].try_into().unwrap()),
                NBD_OPT_GO
            );
            let len = u32::from_be_bytes(head[16..20].try_into().unwrap()) as usize;
            let mut data = vec![0u8; len];
            s.read_exact(&mut data).unwrap();
            assert_eq!(&data[4..11], b"Malloc0");
            let reply = |kind: u32, payload: &[u8]| {
                let mut r = NBD_REPLY_MAGIC.to_be_bytes().to_vec();
                r.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
                r.extend_from_slice(&kind.to_be_bytes());
                r.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                r.extend_from_slice(payload);
                r
            };
            let mut info = vec![0u8, 0];
            info.extend_from_slice(&(8u64 << 20).to_be_bytes());
            info.extend_from_slice(&1u16.to_be_bytes());
            s.write_all(&reply(NBD_REP_INFO, &info)).unwrap();
            s.write_all(&reply(NBD_REP_ACK, &[])).unwrap();
            let mut reqs = Vec::new();
            for _ in 0..3 {
                let mut r = [0u8; 28];
                s.read_exact(&mut r).unwrap();
                reqs.push(r);
            }
            reqs
        });
        let a = nbd_read_flood(NbdReadFlood {
            addr,
            export: "Malloc0".into(),
            connections: 1,
            duration: Duration::from_secs(30),
            reconnect: None,
            request_bytes: 32 << 20,
            burst: 3,
            fire_at: Duration::ZERO,
            more_every: None,
        });
        let reqs = server.join().unwrap();
        for (i, r) in reqs.iter().enumerate() {
            assert_eq!(r[..4], NBD_REQUEST_MAGIC.to_be_bytes());
            assert_eq!(u16::from_be_bytes([r[6], r[7]]), NBD_CMD_READ);
            assert_eq!(u64::from_be_bytes(r[8..16].try_into().unwrap()), i as u64);
            // Capped at the 8 MiB export.
            assert_eq!(u32::from_be_bytes(r[24..28].try_into().unwrap()), 8 << 20);
        }
        let r = a.leave();
        assert_eq!((r.established, r.requests, r.errors), (1, 3, 0), "{r}");
    }

    #[test]
    fn iscsi_pdus_round_trip_through_the_inbox() {
        let mut b = [0u8; 48];
        b[0] = op::R2T;
        b[16..20].copy_from_slice(&7u32.to_be_bytes());
        let mut inbox = Inbox::default();
        let pdu = iscsi_pdu(b, b"abcde");
        assert_eq!(pdu.len(), 48 + 8);
        inbox.0.extend_from_slice(&pdu[..50]);
        assert!(iscsi_take(&mut inbox).unwrap().is_none());
        inbox.0.extend_from_slice(&pdu[50..]);
        let p = iscsi_take(&mut inbox).unwrap().unwrap();
        assert_eq!(
            (p.opcode(), p.itt(), p.data.as_slice()),
            (op::R2T, 7, &b"abcde"[..])
        );
        assert!(inbox.0.is_empty());
        assert_eq!(lun_field(3)[..2], [0, 3]);
        assert_eq!(lun_field(300)[..2], [0x41, 0x2c]);
    }
}
