//! A target served on a set of TCP ports of the data NIC: the listeners,
//! and the endpoint that drives one engine per connection over them.

use crate::net::Network;
use alloc::vec::Vec;
use ironbay_bdev::engine::TargetEngine;
use ironbay_bdev::{Budget, IoCompletion, Registry};
use ironbay_endpoint::{Endpoint, Limits};
use ironbay_net::{Listener, SetSockets, TcpTuning};
use smoltcp::iface::SocketHandle;

pub struct PortService<E: TargetEngine> {
    /// For the log: "NBD target", "iSCSI target", "NVMe-oF target".
    what: &'static str,
    stack: usize,
    listeners: Vec<Listener>,
    per_port: usize,
    /// Every listener's sockets in slot order: slot `k * per_port + j` is
    /// socket `j` of listener `k`.
    handles: Vec<SocketHandle>,
    pub endpoint: Endpoint<E>,
    /// Config generation the listeners were last matched against.
    seen_generation: u64,
}

impl<E: TargetEngine> PortService<E> {
    pub fn new(
        stack: usize,
        what: &'static str,
        service: u8,
        per_port: usize,
        limits: Limits,
        budget: Budget,
    ) -> Self {
        PortService {
            what,
            stack,
            listeners: Vec::new(),
            per_port,
            handles: Vec::new(),
            endpoint: Endpoint::new(service, per_port, limits, budget),
            // Config generations start at 0: look at the boot config.
            seen_generation: u64::MAX,
        }
    }

    /// Sockets this service has.
    pub fn sockets(&self) -> usize {
        self.handles.len()
    }

    /// Listens on ports the configuration added since the last look.
    /// Listeners stay when their ports go out of the configuration: logins
    /// through them are refused then. Returns whether any were added.
    pub fn follow(
        &mut self,
        network: &mut Network,
        generation: u64,
        ports: impl FnOnce() -> Vec<u16>,
    ) -> bool {
        if generation == self.seen_generation {
            return false;
        }
        self.seen_generation = generation;
        let mut added = false;
        for port in ports() {
            if self.listeners.iter().any(|l| l.port == port) {
                continue;
            }
            if self.handles.len() + self.per_port > ironbay_endpoint::tag::MAX_SLOTS {
                log::error!("{}: no room for a listener on port {port}", self.what);
                continue;
            }
            let sockets = &mut network.stacks[self.stack].sockets;
            let l = Listener::new(sockets, port, self.per_port, TcpTuning::STORAGE);
            self.handles.extend_from_slice(l.sockets());
            self.listeners.push(l);
            added = true;
            log::info!(
                "data0: {} on TCP port {port}, up to {} connections",
                self.what,
                self.per_port
            );
        }
        added
    }

    /// Serves every socket once. `wake`: run every engine's timeout
    /// handling now (the target has news for them).
    pub fn poll(
        &mut self,
        network: &mut Network,
        target: &mut E::Target,
        bdevs: &mut Registry,
        wake: bool,
    ) -> bool {
        let now_us = crate::time::uptime_us();
        let set = &mut network.stacks[self.stack].sockets;
        let mut sockets = SetSockets {
            set,
            handles: &self.handles,
        };
        let busy = self
            .endpoint
            .poll(&mut sockets, target, bdevs, now_us, wake);
        for l in &self.listeners {
            l.relisten(sockets.set);
        }
        busy
    }

    pub fn complete(&mut self, c: IoCompletion, target: &mut E::Target, bdevs: &Registry) {
        self.endpoint
            .complete(c, target, bdevs, crate::time::uptime_us());
    }
}
