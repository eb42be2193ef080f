//! The JSON-RPC server on the management NIC: sessions on port 5260, the
//! allow-list, deferred init and the benchmark a session asked for.

use super::sessions::Sessions;
use crate::net::Network;
use crate::storage::Storage;
use ironbay_endpoint::tag::BENCH as BENCH_TAG;
use ironbay_nbd::Exports;
use ironbay_net::Role;
use smoltcp::socket::tcp;

pub const RPC_PORT: u16 = 5260;
pub const RPC_CONNECTIONS: usize = 8;
/// A session with no traffic this long is dropped (clients connect per call
/// or keep a session busy; a benchmark's asker is exempt).
const IDLE_US: u64 = 120_000_000;

/// The JSON-RPC server on the management NIC.
pub struct Rpc {
    sessions: Sessions<ironbay_rpc::Session>,
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
    log::info!(
        "mgmt: JSON-RPC on TCP port {RPC_PORT}, clients from {}",
        allow.describe()
    );
    Some(Rpc {
        sessions: Sessions::new(network, stack, RPC_PORT, RPC_CONNECTIONS, allow, "JSON-RPC"),
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
                if let Some(session) = self.sessions.session_mut(*owner) {
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
        for i in 0..self.sessions.len() {
            let Some((s, slot)) = self
                .sessions
                .open(network, i, now, ironbay_rpc::Session::new)
            else {
                continue;
            };
            if bench_owner != Some(i) && now.saturating_sub(slot.active_us) >= IDLE_US {
                self.sessions.drop_session(network, i, "idle too long");
                continue;
            }
            let Some(session) = slot.session.as_mut() else {
                continue;
            };
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
                slot.active_us = now;
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
                        slot.active_us = now;
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
            for session in self.sessions.sessions_mut() {
                session
                    .complete_deferred(ironbay_rpc::Wait::Init, Ok(serde_json::Value::Bool(true)));
            }
            busy = true;
        }
        if handled || (!was_initialized && self.initialized) {
            // After the held-back boot config ran, never between.
            crate::persist::save_storage(storage, nbd, self.initialized);
        }
        self.sessions.finish(network, now, bench_owner);
        busy
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
