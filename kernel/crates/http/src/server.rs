//! A port's HTTP connections over the endpoint's sockets.
//!
//! Driving order, each poll-loop turn: [`Server::poll`] with the port's
//! sockets and the handler, then relisten closed sockets (the socket
//! layer's job).

use crate::conn::{Conn, Limits};
use crate::request::Request;
use crate::response::Response;
use alloc::vec::Vec;
use ironbay_endpoint::{Socket, SocketState, Sockets};

/// What a front end does with a request.
pub trait Handler {
    fn handle(&mut self, req: Request, now_ms: u64) -> Reply;
}

/// A handler's answer: now, or held back until a time (the connection
/// waits; others are served meanwhile).
pub enum Reply {
    Now(Response),
    At(u64, Response),
}

/// What the server did to peers, for tests and the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub accepted: u64,
    pub requests: u64,
    /// Dropped for not reading our output.
    pub stalled: u64,
    /// Dropped for a newcomer while every slot was taken.
    pub evicted: u64,
    /// Closes that did not finish in time and were aborted.
    pub aborted_closes: u64,
    /// Handshakes that never finished.
    pub half_open: u64,
}

/// Server-wide deadlines and quotas.
const LINGER_MS: u64 = 2_000;
const STALL_MS: u64 = 30_000;
const OPENING_MS: u64 = 10_000;
/// A quiet or slow connection may be dropped for a newcomer once it has
/// been quiet this long.
const EVICT_AFTER_MS: u64 = 1_000;
/// Bytes taken from and sent to one connection per turn.
const TURN_BYTES: usize = 64 << 10;

struct Slot {
    conn: Option<Conn>,
    /// Last time output moved, or there was none to move.
    progress_ms: u64,
    closing_since: Option<u64>,
    opening_since: Option<u64>,
}

pub struct Server {
    name: &'static str,
    limits: Limits,
    slots: Vec<Slot>,
    next: usize,
    stats: Stats,
}

impl Server {
    /// `name` is for the log.
    pub fn new(name: &'static str, limits: Limits) -> Self {
        Server {
            name,
            limits,
            slots: Vec::new(),
            next: 0,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Serves every socket once; true if anything moved.
    pub fn poll<S: Sockets>(
        &mut self,
        sockets: &mut S,
        handler: &mut dyn Handler,
        now_ms: u64,
    ) -> bool {
        let n = sockets.len();
        while self.slots.len() < n {
            self.slots.push(Slot {
                conn: None,
                progress_ms: 0,
                closing_since: None,
                opening_since: None,
            });
        }
        if n == 0 {
            return false;
        }
        let start = self.next % n;
        self.next = start + 1;
        let mut busy = false;
        for k in 0..n {
            let i = (start + k) % n;
            let mut s = sockets.get(i);
            busy |= self.serve(i, &mut s, handler, now_ms);
        }
        self.evict_for_newcomers(sockets, now_ms);
        busy
    }

    /// When the next deadline of any connection is due, for the idle loop.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.slots
            .iter()
            .filter_map(|s| s.conn.as_ref()?.poll_timeout())
            .min()
    }

    fn serve(&mut self, i: usize, s: &mut impl Socket, h: &mut dyn Handler, now: u64) -> bool {
        let limits = self.limits;
        let name = self.name;
        let stats = &mut self.stats;
        let slot = &mut self.slots[i];
        match s.state() {
            SocketState::Idle => {
                slot.conn = None;
                slot.closing_since = None;
                slot.opening_since = None;
                return false;
            }
            SocketState::Opening => {
                slot.conn = None;
                slot.closing_since = None;
                let since = *slot.opening_since.get_or_insert(now);
                if now.saturating_sub(since) >= OPENING_MS {
                    stats.half_open += 1;
                    s.abort();
                    slot.opening_since = None;
                    return true;
                }
                return false;
            }
            SocketState::TimeWait => {
                slot.conn = None;
                s.abort();
                return true;
            }
            SocketState::Closing => {
                slot.conn = None;
                let since = *slot.closing_since.get_or_insert(now);
                if now.saturating_sub(since) >= LINGER_MS {
                    stats.aborted_closes += 1;
                    s.abort();
                    slot.closing_since = None;
                    return true;
                }
                return false;
            }
            SocketState::Open | SocketState::PeerClosed => {}
        }
        slot.opening_since = None;
        let mut busy = false;
        let conn = slot.conn.get_or_insert_with(|| {
            stats.accepted += 1;
            busy = true;
            Conn::new(limits, s.peer(), now)
        });
        if slot.closing_since.take().is_some() || busy {
            slot.progress_ms = now;
        }
        if conn.wants_input() && s.can_recv() {
            let mut quota = TURN_BYTES;
            while quota > 0 && conn.wants_input() && s.can_recv() {
                let took = s.recv(&mut |b: &[u8]| {
                    let b = &b[..b.len().min(quota)];
                    conn.handle_input(b, now)
                });
                if took == 0 {
                    break;
                }
                quota -= took.min(quota);
                busy = true;
            }
        }
        if s.state() == SocketState::PeerClosed && !s.can_recv() {
            conn.handle_peer_closed();
        }
        if let Some(req) = conn.poll_request() {
            stats.requests += 1;
            match h.handle(req, now) {
                Reply::Now(r) => conn.respond(&r, None, now),
                Reply::At(at, r) => conn.respond(&r, Some(at), now),
            }
            busy = true;
        }
        if conn.poll_timeout().is_some_and(|t| t <= now) {
            conn.handle_timeout(now);
            busy = true;
        }
        let mut quota = TURN_BYTES;
        while quota > 0 {
            let Some(out) = conn.poll_output() else {
                break;
            };
            let sent = s.send(&out[..out.len().min(quota)]);
            if sent == 0 {
                break;
            }
            conn.consume_output(sent);
            quota -= sent;
            slot.progress_ms = now;
            busy = true;
        }
        if conn.poll_output().is_none() {
            slot.progress_ms = now;
        } else if now.saturating_sub(slot.progress_ms) >= STALL_MS {
            log::warn!("{name}: client {:?} takes no output; dropped", s.peer());
            stats.stalled += 1;
            slot.conn = None;
            s.abort();
            return true;
        }
        if conn.finished() {
            slot.conn = None;
            slot.closing_since = Some(now);
            s.close();
            busy = true;
        }
        busy
    }

    /// When no socket is free for a newcomer, drops the connection quiet
    /// longest (keep-alive idle, or a request trickling in), if it has been
    /// quiet a while.
    fn evict_for_newcomers<S: Sockets>(&mut self, sockets: &mut S, now: u64) {
        let n = sockets.len().min(self.slots.len());
        if (0..n).any(|i| sockets.get(i).state() == SocketState::Idle) {
            return;
        }
        let victim = (0..n)
            .filter_map(|i| {
                let c = self.slots[i].conn.as_ref()?;
                let quiet = now.saturating_sub(c.last_activity_ms());
                (!c.is_busy() && quiet >= EVICT_AFTER_MS).then_some((i, c.last_activity_ms()))
            })
            .min_by_key(|&(_, t)| t);
        if let Some((i, _)) = victim {
            let mut s = sockets.get(i);
            log::warn!(
                "{}: every socket taken; dropped quiet client {:?}",
                self.name,
                s.peer()
            );
            s.abort();
            self.slots[i].conn = None;
            self.stats.evicted += 1;
        }
    }
}
