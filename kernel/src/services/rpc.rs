//! The JSON-RPC server on the management NIC: sessions on port 5260, the
//! allow-list, deferred init and the benchmark a session asked for.

use crate::net::Network;
use crate::storage::Storage;
use alloc::vec::Vec;
use ironbay_endpoint::tag::BENCH as BENCH_TAG;
use ironbay_nbd::Exports;
use ironbay_net::{Listener, Role, TcpTuning};
use smoltcp::socket::tcp;

pub const RPC_PORT: u16 = 5260;
pub const RPC_CONNECTIONS: usize = 8;
/// A session with no traffic this long is dropped (clients connect per call
/// or keep a session busy; a benchmark's asker is exempt).
const IDLE_US: u64 = 120_000_000;
/// A quiet session may be dropped this soon when every socket is taken.
const EVICT_IDLE_US: u64 = 5_000_000;
/// A close that has not finished by then is aborted.
const LINGER_US: u64 = 2_000_000;

/// The JSON-RPC server on the management NIC.
pub struct Rpc {
    stack: usize,
    listener: Listener,
    sessions: Vec<Option<ironbay_rpc::Session>>,
    /// Per socket: last traffic, and when a close began.
    active_us: Vec<u64>,
    closing_since: Vec<Option<u64>>,
    allow: super::allow::Allow,
    initialized: bool,
    /// `spdk_kill_instance` asked for an orderly shutdown.
    pub shutdown: bool,
    /// A benchmark `bdevperf_run` asked for, and the one running (with the
    /// session waiting for its result).
    bench_request: Option<ironbay_bdev::bench::BenchSpec>,
    running: Option<(usize, ironbay_bdev::bench::Bench)>,
}

pub fn rpc_init(network: &mut Network, cmdline: &ironbay_config::Cmdline) -> Option<Rpc> {
    let Some(stack) = network.stacks.iter().position(|s| s.role == Role::Mgmt) else {
        log::warn!("no management NIC: JSON-RPC not started");
        return None;
    };
    let allow = super::allow::Allow::from_cmdline(cmdline);
    let listener = Listener::new(
        &mut network.stacks[stack].sockets,
        RPC_PORT,
        RPC_CONNECTIONS,
        TcpTuning::MANAGEMENT,
    );
    log::info!(
        "mgmt: JSON-RPC on TCP port {RPC_PORT}, clients from {}",
        allow.describe()
    );
    Some(Rpc {
        stack,
        listener,
        sessions: (0..RPC_CONNECTIONS).map(|_| None).collect(),
        active_us: alloc::vec![0; RPC_CONNECTIONS],
        closing_since: alloc::vec![None; RPC_CONNECTIONS],
        allow,
        initialized: !cmdline.flag("mgmt.wait_for_init"),
        shutdown: false,
        bench_request: None,
        running: None,
    })
}

impl Rpc {
    /// Whether init ran (it waits for `framework_start_init` when deferred).
    pub fn initialized(&self) -> bool {
        self.initialized
    }

    fn allowed(&self, network: &Network, peer: smoltcp::wire::IpAddress) -> bool {
        let smoltcp::wire::IpAddress::Ipv4(ip) = peer else {
            return false;
        };
        let own = super::allow::Allow::own_subnet(network, self.stack);
        self.allow.permits(
            own,
            core::net::IpAddr::V4(core::net::Ipv4Addr::from(ip.octets())),
        )
    }

    pub fn poll(
        &mut self,
        network: &mut Network,
        storage: &mut Storage,
        mut nbd: Option<&mut Exports>,
    ) -> bool {
        let mut busy = false;
        let mut handled = false;
        let was_initialized = self.initialized;
        if let Some((owner, bench)) = &mut self.running {
            busy = true;
            if bench.tick(&mut storage.bdevs, crate::time::uptime_us()) {
                let report = bench.report();
                log::info!("mgmt: benchmark done: {:.0} IOPS", report.iops);
                // The asker may have gone; then the result has nowhere to go.
                if let Some(session) = self.sessions[*owner].as_mut() {
                    session.complete_deferred(
                        ironbay_rpc::Wait::Bench,
                        Ok(ironbay_rpc::methods::bench_result(&report)),
                    );
                }
                self.running = None;
            }
        }
        let now = crate::time::uptime_us();
        let bench_owner = self.running.as_ref().map(|(o, _)| *o);
        for (i, &h) in self.listener.sockets().iter().enumerate() {
            let (state, peer) = {
                let s = network.stacks[self.stack].sockets.get::<tcp::Socket<'_>>(h);
                (s.state(), s.remote_endpoint())
            };
            if !matches!(state, tcp::State::Established | tcp::State::CloseWait) {
                self.sessions[i] = None;
                let s = network.stacks[self.stack]
                    .sockets
                    .get_mut::<tcp::Socket<'_>>(h);
                match state {
                    tcp::State::Listen | tcp::State::Closed => self.closing_since[i] = None,
                    // Nothing more will be said: free the socket now.
                    tcp::State::TimeWait => s.abort(),
                    _ => {
                        let since = *self.closing_since[i].get_or_insert(now);
                        if now.saturating_sub(since) >= LINGER_US {
                            s.abort();
                        }
                    }
                }
                continue;
            }
            if self.sessions[i].is_some()
                && bench_owner != Some(i)
                && now.saturating_sub(self.active_us[i]) >= IDLE_US
            {
                log::warn!("mgmt: JSON-RPC client {peer:?} idle too long; dropped");
                self.sessions[i] = None;
                network.stacks[self.stack]
                    .sockets
                    .get_mut::<tcp::Socket<'_>>(h)
                    .abort();
                continue;
            }
            if self.sessions[i].is_none() {
                if !peer.is_some_and(|p| self.allowed(network, p.addr)) {
                    log::warn!(
                        "mgmt: JSON-RPC connection from {peer:?} refused (not in the allow-list)"
                    );
                    network.stacks[self.stack]
                        .sockets
                        .get_mut::<tcp::Socket<'_>>(h)
                        .abort();
                    continue;
                }
                self.sessions[i] = Some(ironbay_rpc::Session::new());
                self.active_us[i] = now;
            }
            let Some(session) = self.sessions[i].as_mut() else {
                continue;
            };
            let s = network.stacks[self.stack]
                .sockets
                .get_mut::<tcp::Socket<'_>>(h);
            if session.wants_input() && s.can_recv() {
                let mut model = storage.model(
                    nbd.as_deref_mut(),
                    &mut self.initialized,
                    &mut self.shutdown,
                    Some(&mut self.bench_request),
                );
                let _ = s.recv(|b| {
                    session.handle_input(b, &mut model);
                    (b.len(), ())
                });
                self.active_us[i] = now;
                busy = true;
                handled = true;
            }
            if let Some(spec) = self.bench_request.take() {
                if self.running.is_some() {
                    session.complete_deferred(
                        ironbay_rpc::Wait::Bench,
                        Err(ironbay_rpc::RpcError {
                            code: ironbay_rpc::methods::code::INVALID_STATE,
                            message: "a benchmark is already running".into(),
                        }),
                    );
                } else {
                    match ironbay_bdev::bench::Bench::new(spec, &storage.bdevs) {
                        Ok(mut bench) => {
                            log::info!("mgmt: benchmark started over JSON-RPC");
                            bench.set_tag_base(BENCH_TAG);
                            bench.start(&mut storage.bdevs, crate::time::uptime_us());
                            self.running = Some((i, bench));
                        }
                        Err(e) => session.complete_deferred(
                            ironbay_rpc::Wait::Bench,
                            Err(ironbay_rpc::RpcError::params(e)),
                        ),
                    }
                }
            }
            while !session.poll_output().is_empty() {
                match s.send_slice(session.poll_output()) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        session.consume_output(n);
                        self.active_us[i] = now;
                        busy = true;
                    }
                }
            }
            if (session.closed() || s.state() == tcp::State::CloseWait)
                && session.poll_output().is_empty()
            {
                s.close();
            }
        }
        if !was_initialized && self.initialized {
            storage.finish_init();
            for session in self.sessions.iter_mut().flatten() {
                session
                    .complete_deferred(ironbay_rpc::Wait::Init, Ok(serde_json::Value::Bool(true)));
            }
            busy = true;
        }
        if handled || (!was_initialized && self.initialized) {
            // After the held-back boot config ran, never between.
            crate::persist::save_storage(storage, nbd, self.initialized);
        }
        self.evict_when_full(network, now, bench_owner);
        self.listener
            .relisten(&mut network.stacks[self.stack].sockets);
        busy
    }

    /// When no socket listens, drops the session quiet longest (if quiet a
    /// while), so idle connections cannot lock the management API.
    fn evict_when_full(&mut self, network: &mut Network, now: u64, bench_owner: Option<usize>) {
        let sockets = &mut network.stacks[self.stack].sockets;
        let handles = self.listener.sockets();
        if handles
            .iter()
            .any(|&h| sockets.get::<tcp::Socket<'_>>(h).state() == tcp::State::Listen)
        {
            return;
        }
        let victim = (0..handles.len())
            .filter(|&i| self.sessions[i].is_some() && bench_owner != Some(i))
            .filter(|&i| now.saturating_sub(self.active_us[i]) >= EVICT_IDLE_US)
            .min_by_key(|&i| self.active_us[i]);
        if let Some(i) = victim {
            let s = sockets.get_mut::<tcp::Socket<'_>>(handles[i]);
            log::warn!(
                "mgmt: every JSON-RPC socket taken; dropped quiet client {:?}",
                s.remote_endpoint()
            );
            s.abort();
            self.sessions[i] = None;
        }
    }
}

impl Rpc {
    /// Hands a benchmark completion to the running benchmark.
    pub fn complete_bench(&mut self, c: ironbay_bdev::IoCompletion, storage: &mut Storage) {
        if let Some((_, bench)) = &mut self.running {
            bench.handle(&mut storage.bdevs, c, crate::time::uptime_us());
        }
    }
}
