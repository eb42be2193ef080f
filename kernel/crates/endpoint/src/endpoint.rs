//! One service's connections: slots, lifecycle, deadlines, fairness.

use crate::socket::{Socket, SocketState, Sockets};
use crate::tag;
use alloc::vec::Vec;
use core::net::SocketAddr;
use ironbay_bdev::engine::TargetEngine;
use ironbay_bdev::{Budget, IoCompletion, IoRequest, Registry};

/// Deadlines and per-turn quotas of an [`Endpoint`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A connection still logging in after this long is dropped (NBD: 10 s,
    /// as qemu-nbd; engines with their own login timers get a backstop).
    pub handshake_ms: u64,
    /// How long a close may take before the socket is aborted.
    pub linger_ms: u64,
    /// A peer that takes none of our output for this long is dropped.
    pub stall_ms: u64,
    /// A connection must have been logging in this long before it may be
    /// evicted for a newcomer, so a burst of honest logins is not.
    pub evict_after_ms: u64,
    /// Bytes taken from and sent to one connection per turn, so one that
    /// floods cannot starve the others.
    pub turn_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_ms: 60_000,
            linger_ms: 2_000,
            stall_ms: 30_000,
            evict_after_ms: 1_000,
            turn_bytes: 256 << 10,
        }
    }
}

/// What the endpoint did to peers, for tests and the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub accepted: u64,
    /// Dropped for not finishing the handshake in time.
    pub handshake_timeouts: u64,
    /// Dropped for a newcomer while every slot was taken.
    pub evicted: u64,
    /// Dropped for not reading our output.
    pub stalled: u64,
    /// Closes that did not finish within the linger and were aborted.
    pub aborted_closes: u64,
}

struct Slot<E> {
    conn: Option<E>,
    generation: u16,
    opened_ms: u64,
    /// Last time output moved or there was none to move.
    progress_ms: u64,
    /// When the close began (by us or by the peer).
    closing_since: Option<u64>,
    /// Since when the peer's TCP handshake has been unfinished.
    opening_since: Option<u64>,
}

impl<E> Slot<E> {
    fn new() -> Self {
        Slot {
            conn: None,
            generation: 0,
            opened_ms: 0,
            progress_ms: 0,
            closing_since: None,
            opening_since: None,
        }
    }
}

/// Routes one service's sockets to engine connections and block I/O back
/// to them. Sans-IO: sockets, the block layer and time come in per call.
///
/// Driving order, each poll-loop turn: [`Endpoint::poll`] with the
/// service's sockets, then relisten closed sockets (the socket layer's
/// job); hand every block completion whose [`tag::service`] is this
/// endpoint's to [`Endpoint::complete`].
pub struct Endpoint<E: TargetEngine> {
    service: u8,
    /// Sockets per listening port: eviction picks within one port.
    per_port: usize,
    limits: Limits,
    budget: Budget,
    slots: Vec<Slot<E>>,
    /// Where the next turn starts, so no slot is always served first.
    next: usize,
    stats: Stats,
}

impl<E: TargetEngine> Endpoint<E> {
    pub fn new(service: u8, per_port: usize, limits: Limits, budget: Budget) -> Self {
        Endpoint {
            service,
            per_port: per_port.max(1),
            limits,
            budget,
            slots: Vec::new(),
            next: 0,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Open connections (engines alive).
    pub fn connections(&self) -> impl Iterator<Item = &E> {
        self.slots.iter().filter_map(|s| s.conn.as_ref())
    }

    /// Serves every socket once; true if anything moved. `wake`: run every
    /// engine's timeout handling now (the target has news for them).
    pub fn poll<S: Sockets>(
        &mut self,
        sockets: &mut S,
        target: &mut E::Target,
        bdevs: &mut Registry,
        now_us: u64,
        wake: bool,
    ) -> bool {
        let n = sockets.len().min(tag::MAX_SLOTS);
        while self.slots.len() < n {
            self.slots.push(Slot::new());
        }
        if n == 0 {
            return false;
        }
        let now_ms = now_us / 1000;
        let mut busy = false;
        let start = self.next % n;
        self.next = start + 1;
        for k in 0..n {
            let i = (start + k) % n;
            let mut s = sockets.get(i);
            busy |= self.serve(i, &mut s, target, bdevs, now_us, wake);
        }
        self.evict_for_newcomers(sockets, target, now_ms);
        busy
    }

    fn serve(
        &mut self,
        i: usize,
        s: &mut impl Socket,
        target: &mut E::Target,
        bdevs: &mut Registry,
        now_us: u64,
        wake: bool,
    ) -> bool {
        let now_ms = now_us / 1000;
        let limits = self.limits;
        let service = self.service;
        let Endpoint {
            slots,
            stats,
            budget,
            ..
        } = self;
        let slot = &mut slots[i];
        match s.state() {
            SocketState::Idle => {
                retire(slot, target);
                slot.closing_since = None;
                slot.opening_since = None;
                return false;
            }
            SocketState::Opening => {
                retire(slot, target);
                slot.closing_since = None;
                slot.opening_since.get_or_insert(now_ms);
                return false;
            }
            SocketState::TimeWait => {
                // Nothing more can be said; holding the 4-tuple would keep a
                // slot out of the pool for the whole TIME-WAIT.
                retire(slot, target);
                s.abort();
                return true;
            }
            SocketState::Closing => {
                retire(slot, target);
                let since = *slot.closing_since.get_or_insert(now_ms);
                if now_ms.saturating_sub(since) >= limits.linger_ms {
                    stats.aborted_closes += 1;
                    s.abort();
                    return true;
                }
                return false;
            }
            SocketState::Open | SocketState::PeerClosed => {}
        }
        if slot.conn.is_none() {
            let (Some(local), Some(peer)) = (s.local(), s.peer()) else {
                return false;
            };
            slot.opening_since = None;
            let account = budget.account();
            slot.conn = Some(E::open(local, peer, now_ms, account, target));
            slot.opened_ms = now_ms;
            slot.progress_ms = now_ms;
            slot.closing_since = None;
            stats.accepted += 1;
        }
        let Some(conn) = slot.conn.as_mut() else {
            return false;
        };
        let mut busy = false;
        // Input, at most a turn's worth.
        let mut left = limits.turn_bytes;
        while left > 0 && conn.wants_input() && s.can_recv() {
            let took = s.recv(&mut |b: &[u8]| {
                let b = &b[..b.len().min(left)];
                conn.handle_input(b, target, bdevs, now_ms)
            });
            if took == 0 {
                break;
            }
            left -= took.min(left);
            busy = true;
        }
        if conn.waits_for_memory() {
            conn.handle_memory(target, bdevs, now_ms);
        }
        if wake || conn.poll_timeout().is_some_and(|t| t <= now_ms) {
            conn.handle_timeout(target, bdevs, now_ms);
        }
        // Block I/O, in the engine's order; what the layer cannot take now
        // goes first next turn.
        while let Some(io) = conn.poll_io() {
            let req = IoRequest {
                tag: tag::pack(service, i, slot.generation, io.tag),
                op: io.op,
                fua: io.fua,
            };
            if let Err(back) = bdevs.submit(io.bdev, req, now_us) {
                conn.retry_io(ironbay_bdev::BlockIo {
                    tag: io.tag,
                    bdev: io.bdev,
                    op: back.op,
                    fua: io.fua,
                });
                break;
            }
            busy = true;
        }
        // Output, at most a turn's worth.
        let mut left = limits.turn_bytes;
        while left > 0
            && let Some(out) = conn.poll_output()
        {
            let sent = s.send(&out[..out.len().min(left)]);
            if sent == 0 {
                break;
            }
            conn.consume_output(sent);
            left -= sent;
            busy = true;
        }
        let pending = conn.poll_output().is_some();
        if busy || !pending {
            slot.progress_ms = now_ms;
        }
        let peer = s.peer();
        if let Some(why) = conn.take_error() {
            log::warn!("{} {}: {why}; closing", E::PEER, show(peer));
        }
        if conn.in_handshake() && now_ms.saturating_sub(slot.opened_ms) >= limits.handshake_ms {
            log::warn!(
                "{} {}: handshake not finished in time; dropped",
                E::PEER,
                show(peer)
            );
            stats.handshake_timeouts += 1;
            retire(slot, target);
            s.abort();
            return true;
        }
        if pending && now_ms.saturating_sub(slot.progress_ms) >= limits.stall_ms {
            log::warn!("{} {}: takes no output; dropped", E::PEER, show(peer));
            stats.stalled += 1;
            retire(slot, target);
            s.abort();
            return true;
        }
        let peer_left = s.state() == SocketState::PeerClosed && !s.can_recv();
        if conn.finished() || peer_left {
            if !pending {
                // Done with this peer: a socket that ends and is reused
                // before the next turn must not reach this engine.
                retire(slot, target);
                s.close();
                slot.closing_since = Some(now_ms);
                return true;
            } else {
                // Flush what is queued, for at most the linger.
                let since = *slot.closing_since.get_or_insert(now_ms);
                if now_ms.saturating_sub(since) >= limits.linger_ms {
                    stats.aborted_closes += 1;
                    retire(slot, target);
                    s.abort();
                    return true;
                }
            }
        }
        busy
    }

    /// When no socket of a port is free, drops the connection of that port
    /// that has been logging in longest, so clients that never finish
    /// cannot lock out the ones that would.
    fn evict_for_newcomers<S: Sockets>(
        &mut self,
        sockets: &mut S,
        target: &mut E::Target,
        now_ms: u64,
    ) {
        let n = self.slots.len().min(sockets.len());
        for port_start in (0..n).step_by(self.per_port) {
            let range = port_start..(port_start + self.per_port).min(n);
            if range
                .clone()
                .any(|i| sockets.get(i).state() == SocketState::Idle)
            {
                continue;
            }
            // Logging in, or not even through TCP's handshake (a SYN
            // flood): since when.
            let since = |s: &Slot<E>| match &s.conn {
                Some(c) if c.in_handshake() => Some(s.opened_ms),
                Some(_) => None,
                None => s.opening_since,
            };
            let victim = range
                .filter_map(|i| Some((i, since(&self.slots[i])?)))
                .filter(|&(_, t)| now_ms.saturating_sub(t) >= self.limits.evict_after_ms)
                .min_by_key(|&(_, t)| t)
                .map(|(i, _)| i);
            if let Some(i) = victim {
                let mut s = sockets.get(i);
                log::warn!(
                    "{} {}: every connection slot taken; evicted while still logging in",
                    E::PEER,
                    show(s.peer())
                );
                self.stats.evicted += 1;
                retire(&mut self.slots[i], target);
                s.abort();
            }
        }
    }

    /// Hands a completion to the connection that asked for it; a closed
    /// connection's completions are dropped (their buffers with them).
    pub fn complete(
        &mut self,
        c: IoCompletion,
        target: &mut E::Target,
        bdevs: &Registry,
        now_us: u64,
    ) {
        let (slot, generation, engine) = tag::unpack(c.tag);
        if let Some(s) = self.slots.get_mut(slot)
            && s.generation == generation
            && let Some(conn) = s.conn.as_mut()
        {
            conn.handle_completion(engine, c, target, bdevs, now_us / 1000);
        }
    }
}

/// The socket is gone for this engine: later completions are stale.
fn retire<E: TargetEngine>(slot: &mut Slot<E>, target: &mut E::Target) {
    if let Some(mut conn) = slot.conn.take() {
        conn.closed(target);
        slot.generation = slot.generation.wrapping_add(1) & tag::GEN_MASK;
    }
}

/// A peer address for the log.
struct Show(Option<SocketAddr>);

impl core::fmt::Display for Show {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("(gone)"),
        }
    }
}

fn show(a: Option<SocketAddr>) -> Show {
    Show(a)
}
