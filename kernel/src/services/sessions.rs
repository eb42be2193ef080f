//! The socket side the session-based management services share (JSON-RPC
//! on 5260, QMP on 4444): one session per accepted socket, `mgmt.allow`
//! checked when a peer connects, closes that linger and then abort, and
//! the quietest session dropped when every socket is taken, so idle
//! clients cannot lock an API out.

use super::allow::Allow;
use crate::net::Network;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr};
use ironbay_net::{Listener, TcpTuning};
use smoltcp::socket::tcp;

/// A quiet session may be dropped this soon when every socket is taken.
const EVICT_IDLE_US: u64 = 5_000_000;
/// A close that has not finished by then is aborted.
const LINGER_US: u64 = 2_000_000;

pub struct Slot<S> {
    pub session: Option<S>,
    /// Last input or output.
    pub active_us: u64,
    closing_since: Option<u64>,
}

pub struct Sessions<S> {
    pub stack: usize,
    listener: Listener,
    slots: Vec<Slot<S>>,
    allow: Allow,
    /// The service, for the console.
    name: &'static str,
}

impl<S> Sessions<S> {
    pub fn new(
        network: &mut Network,
        stack: usize,
        port: u16,
        count: usize,
        allow: Allow,
        name: &'static str,
    ) -> Self {
        let listener = Listener::new(
            &mut network.stacks[stack].sockets,
            port,
            count,
            TcpTuning::MANAGEMENT,
        );
        Sessions {
            stack,
            listener,
            slots: (0..count)
                .map(|_| Slot {
                    session: None,
                    active_us: 0,
                    closing_since: None,
                })
                .collect(),
            allow,
            name,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether any socket has bytes waiting.
    pub fn input_waiting(&self, network: &Network) -> bool {
        self.listener.sockets().iter().any(|&h| {
            network.stacks[self.stack]
                .sockets
                .get::<tcp::Socket<'_>>(h)
                .can_recv()
        })
    }

    /// Brings socket `i` and its session up to date: a socket that closed
    /// loses its session (and a close that lingers is aborted), a new peer
    /// outside `mgmt.allow` is refused, a new permitted one gets `make()`.
    /// Returns the socket and its slot when a session is live on it.
    pub fn open<'n>(
        &mut self,
        network: &'n mut Network,
        i: usize,
        now: u64,
        make: impl FnOnce() -> S,
    ) -> Option<(&'n mut tcp::Socket<'static>, &mut Slot<S>)> {
        let own = Allow::own_subnet(network, self.stack);
        let h = *self.listener.sockets().get(i)?;
        let s = network.stacks[self.stack]
            .sockets
            .get_mut::<tcp::Socket<'static>>(h);
        let slot = &mut self.slots[i];
        let state = s.state();
        if !matches!(state, tcp::State::Established | tcp::State::CloseWait) {
            slot.session = None;
            match state {
                tcp::State::Listen | tcp::State::Closed => slot.closing_since = None,
                // Nothing more will be said: free the socket now.
                tcp::State::TimeWait => s.abort(),
                _ => {
                    let since = *slot.closing_since.get_or_insert(now);
                    if now.saturating_sub(since) >= LINGER_US {
                        s.abort();
                    }
                }
            }
            return None;
        }
        if slot.session.is_none() {
            let peer = s.remote_endpoint();
            let permitted = peer.is_some_and(|p| match p.addr {
                smoltcp::wire::IpAddress::Ipv4(ip) => self
                    .allow
                    .permits(own, IpAddr::V4(Ipv4Addr::from(ip.octets()))),
                _ => false,
            });
            if !permitted {
                log::warn!(
                    "mgmt: {} connection from {peer:?} refused (not in the allow-list)",
                    self.name
                );
                s.abort();
                return None;
            }
            slot.session = Some(make());
            slot.active_us = now;
        }
        Some((s, slot))
    }

    /// Drops the session on socket `i` and aborts the socket.
    pub fn drop_session(&mut self, network: &mut Network, i: usize, why: &str) {
        let Some(&h) = self.listener.sockets().get(i) else {
            return;
        };
        let s = network.stacks[self.stack]
            .sockets
            .get_mut::<tcp::Socket<'_>>(h);
        log::warn!(
            "mgmt: {} client {:?} {why}; dropped",
            self.name,
            s.remote_endpoint()
        );
        s.abort();
        self.slots[i].session = None;
    }

    pub fn session_mut(&mut self, i: usize) -> Option<&mut S> {
        self.slots.get_mut(i)?.session.as_mut()
    }

    pub fn sessions_mut(&mut self) -> impl Iterator<Item = &mut S> {
        self.slots.iter_mut().filter_map(|s| s.session.as_mut())
    }

    /// End of a poll: when no socket listens, drops the session quiet
    /// longest (if quiet a while; `keep` is exempt), then listens again on
    /// the sockets that are free.
    pub fn finish(&mut self, network: &mut Network, now: u64, keep: Option<usize>) {
        let sockets = &mut network.stacks[self.stack].sockets;
        let handles = self.listener.sockets();
        let full = !handles
            .iter()
            .any(|&h| sockets.get::<tcp::Socket<'_>>(h).state() == tcp::State::Listen);
        let victim = (0..handles.len())
            .filter(|&i| full && self.slots[i].session.is_some() && keep != Some(i))
            .filter(|&i| now.saturating_sub(self.slots[i].active_us) >= EVICT_IDLE_US)
            .min_by_key(|&i| self.slots[i].active_us);
        if let Some(i) = victim {
            let s = sockets.get_mut::<tcp::Socket<'_>>(handles[i]);
            log::warn!(
                "mgmt: every {} socket taken; dropped quiet client {:?}",
                self.name,
                s.remote_endpoint()
            );
            s.abort();
            self.slots[i].session = None;
        }
        self.listener.relisten(sockets);
    }
}
