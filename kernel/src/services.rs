//! Target services on the data NICs, glued to sockets and the bdev layer.
//!
//! The NBD server on port 10809 of `data0`, exporting every bdev under its
//! own name, read-write, and the iSCSI target on port 3260 serving the target
//! nodes of the object model. Each listening socket carries at most one
//! engine; storage tags carry the service, the socket slot and a generation
//! so a completion for a connection that has since closed is dropped, not
//! delivered to its successor.

use crate::net::Network;
use crate::storage::Storage;
use alloc::vec::Vec;
use ironbay_bdev::{BdevId, IoCompletion, IoOp, IoRequest};
use ironbay_nbd::{BlockIo, Connection, Export, Exports};
use ironbay_net::{Listener, Role, TcpTuning};
use smoltcp::socket::tcp;

pub const NBD_PORT: u16 = 10809;
/// Connections when `nbd.max_connections` is 0 or absent.
const NBD_CONNECTIONS: usize = 16;

pub const ISCSI_PORT: u16 = 3260;
/// Connections when `iscsi.max_connections` is absent.
const ISCSI_CONNECTIONS: usize = 16;

/// Connections per port when `nvmf.max_connections` is absent: the Linux
/// host opens an admin queue and an I/O queue per CPU for each controller.
const NVMF_CONNECTIONS: usize = 16;

/// Heap the default socket pools take (NBD, iSCSI on 3260, NVMe-oF on 4420
/// and 8009, JSON-RPC), allocated once the boot config has run.
pub const SOCKET_MEMORY: usize = (NBD_CONNECTIONS + ISCSI_CONNECTIONS + 2 * NVMF_CONNECTIONS)
    * (TcpTuning::STORAGE.rx_buffer + TcpTuning::STORAGE.tx_buffer)
    + RPC_CONNECTIONS * (TcpTuning::MANAGEMENT.rx_buffer + TcpTuning::MANAGEMENT.tx_buffer);

// Storage tags: bit 63 marks benchmark I/O, bits 61-62 the service, then 8
// bits of socket slot (up to 256 connections per service), 14 of generation
// and 39 of engine tag.
const BENCH_TAG: u64 = 1 << 63;
const SERVICE_SHIFT: u32 = 61;
const SLOT_SHIFT: u32 = 53;
const GEN_SHIFT: u32 = 39;
const GEN_MASK: u16 = (1 << (SLOT_SHIFT - GEN_SHIFT)) - 1;
const ENGINE_MASK: u64 = (1 << GEN_SHIFT) - 1;
const _: () = assert!(SLOT_SHIFT + 8 == SERVICE_SHIFT && SERVICE_SHIFT + 2 == 63);
const NBD_SERVICE: u64 = 0;
const ISCSI_SERVICE: u64 = 1;
const NVMF_SERVICE: u64 = 2;

/// One listening socket's engine, and the generation its tags carry.
struct Slot<C> {
    conn: Option<C>,
    generation: u16,
    /// When a finished engine's socket is closed even if the peer has not.
    linger_until: Option<u64>,
}

impl<C> Slot<C> {
    fn pool(n: usize) -> Vec<Slot<C>> {
        (0..n)
            .map(|_| Slot {
                conn: None,
                generation: 0,
                linger_until: None,
            })
            .collect()
    }

    /// The socket closed: later completions for it are stale.
    fn retire(&mut self) -> Option<C> {
        let conn = self.conn.take();
        self.linger_until = None;
        if conn.is_some() {
            self.generation = self.generation.wrapping_add(1) & GEN_MASK;
        }
        conn
    }
}

pub struct Nbd {
    stack: usize,
    listener: Listener,
    slots: Vec<Slot<Connection>>,
    pub exports: Exports,
}

/// A target served on a set of TCP ports that follows its configuration
/// (iSCSI portal groups, NVMe-oF listeners): the engines, one per socket,
/// and the listeners.
struct PortService<C> {
    /// For the log: "iSCSI target", "NVMe-oF target".
    what: &'static str,
    service: u64,
    stack: usize,
    /// A listener per port, each with `per_port` sockets; slot
    /// `k * per_port + j` is socket `j` of listener `k`.
    listeners: Vec<Listener>,
    per_port: usize,
    slots: Vec<Slot<C>>,
    /// Config generation the listeners were last matched against.
    seen_generation: u64,
}

impl<C: TargetEngine> PortService<C> {
    fn new(stack: usize, what: &'static str, service: u64, per_port: usize) -> Self {
        log::info!("data0: {what}, up to {per_port} connections per port");
        PortService {
            what,
            service,
            stack,
            listeners: Vec::new(),
            per_port,
            slots: Vec::new(),
            // Config generations start at 0: look at the boot config.
            seen_generation: u64::MAX,
        }
    }

    /// Listens on ports the configuration added since the last look.
    /// Listeners stay when their ports go out of the configuration: logins
    /// through them are refused then.
    fn follow(&mut self, network: &mut Network, generation: u64, ports: impl FnOnce() -> Vec<u16>) {
        if generation == self.seen_generation {
            return;
        }
        self.seen_generation = generation;
        for port in ports() {
            if self.listeners.iter().any(|l| l.port == port) {
                continue;
            }
            // Slot numbers must fit the storage tag's 8 bits.
            if self.slots.len() + self.per_port > 256 {
                log::error!("{}: no room for a listener on port {port}", self.what);
                continue;
            }
            let sockets = &mut network.stacks[self.stack].sockets;
            self.listeners.push(Listener::new(
                sockets,
                port,
                self.per_port,
                TcpTuning::STORAGE,
            ));
            self.slots.extend(Slot::pool(self.per_port));
            log::info!("data0: {} on TCP port {port}", self.what);
        }
    }

    /// Serves every socket. `wake`: run every engine's timeout handling now
    /// (the target has news for them).
    fn poll(
        &mut self,
        network: &mut Network,
        target: &mut C::Target,
        bdevs: &mut ironbay_bdev::Registry,
        wake: bool,
    ) -> bool {
        let now_ms = crate::time::uptime_us() / 1000;
        let sockets = &mut network.stacks[self.stack].sockets;
        let mut busy = false;
        let takes_io = crate::mem::heap_stats().takes_io();
        let per_port = self.per_port;
        let handles = self.listeners.iter().enumerate().flat_map(|(k, l)| {
            l.sockets()
                .iter()
                .enumerate()
                .map(move |(j, &h)| (k * per_port + j, h))
        });
        for (i, h) in handles {
            let s = sockets.get_mut::<tcp::Socket<'_>>(h);
            let slot = &mut self.slots[i];
            let open = matches!(s.state(), tcp::State::Established | tcp::State::CloseWait);
            if !open {
                if let Some(mut conn) = slot.retire() {
                    conn.gone(target);
                }
                continue;
            }
            if slot.conn.is_none() {
                let (Some(local), Some(peer)) = (s.local_endpoint(), s.remote_endpoint()) else {
                    continue;
                };
                slot.conn = Some(C::open(endpoint(local), endpoint(peer), now_ms));
            }
            let Some(conn) = slot.conn.as_mut() else {
                continue;
            };
            if takes_io
                && conn.wants()
                && s.can_recv()
                && let Ok(n) = s.recv(|b| {
                    let n = conn.input(b, target, bdevs, now_ms);
                    (n, n)
                })
            {
                busy |= n > 0;
            }
            if wake || conn.deadline().is_some_and(|t| t <= now_ms) {
                conn.on_timeout(target, bdevs, now_ms);
            }
            let base = tag(self.service, i, slot.generation, 0);
            busy |= pump(conn, s, bdevs, base, now_ms * 1000, &mut slot.linger_until);
        }
        for l in &self.listeners {
            l.relisten(sockets);
        }
        busy
    }

    fn complete(
        &mut self,
        slot: usize,
        generation: u16,
        engine: u64,
        c: IoCompletion,
        target: &mut C::Target,
        bdevs: &ironbay_bdev::Registry,
    ) {
        if let Some(s) = self.slots.get_mut(slot)
            && s.generation == generation
            && let Some(conn) = s.conn.as_mut()
        {
            let now_ms = crate::time::uptime_us() / 1000;
            conn.completion(engine, c, target, bdevs, now_ms);
        }
    }
}

/// An engine of a [`PortService`]: one connection of a target whose state
/// spans connections.
trait TargetEngine: Engine {
    type Target;
    fn open(local: core::net::SocketAddr, peer: core::net::SocketAddr, now_ms: u64) -> Self;
    fn wants(&self) -> bool;
    fn input(
        &mut self,
        b: &[u8],
        t: &mut Self::Target,
        bdevs: &ironbay_bdev::Registry,
        now_ms: u64,
    ) -> usize;
    fn deadline(&self) -> Option<u64>;
    fn on_timeout(&mut self, t: &mut Self::Target, bdevs: &ironbay_bdev::Registry, now_ms: u64);
    fn completion(
        &mut self,
        tag: u64,
        c: IoCompletion,
        t: &mut Self::Target,
        bdevs: &ironbay_bdev::Registry,
        now_ms: u64,
    );
    fn gone(&mut self, t: &mut Self::Target);
}

/// Implements [`Engine`] and [`TargetEngine`] for a sans-IO target engine
/// whose connection API has the shared shape (new, handle_input,
/// handle_timeout, poll_io, ...).
macro_rules! target_engine {
    ($conn:ty, $target:ty, $peer:literal) => {
        impl Engine for $conn {
            const PEER: &'static str = $peer;
            fn next_io(&mut self) -> Option<(u64, BdevId, IoOp, bool)> {
                self.poll_io().map(|io| (io.tag, io.bdev, io.op, io.fua))
            }
            fn requeue_io(&mut self, tag: u64, bdev: BdevId, op: IoOp, fua: bool) {
                self.retry_io(BlockIo { tag, bdev, op, fua });
            }
            fn output(&self) -> Option<&[u8]> {
                self.poll_output()
            }
            fn sent(&mut self, n: usize) {
                self.consume_output(n);
            }
            fn done(&self) -> bool {
                self.finished()
            }
            fn take_error(&mut self) -> Option<&'static str> {
                self.error.take()
            }
        }

        impl TargetEngine for $conn {
            type Target = $target;
            fn open(
                local: core::net::SocketAddr,
                peer: core::net::SocketAddr,
                now_ms: u64,
            ) -> Self {
                <$conn>::new(local, peer, now_ms)
            }
            fn wants(&self) -> bool {
                self.wants_input()
            }
            fn input(
                &mut self,
                b: &[u8],
                t: &mut $target,
                bdevs: &ironbay_bdev::Registry,
                now_ms: u64,
            ) -> usize {
                self.handle_input(b, t, bdevs, now_ms)
            }
            fn deadline(&self) -> Option<u64> {
                self.poll_timeout()
            }
            fn on_timeout(&mut self, t: &mut $target, bdevs: &ironbay_bdev::Registry, now_ms: u64) {
                self.handle_timeout(t, bdevs, now_ms)
            }
            fn completion(
                &mut self,
                tag: u64,
                c: IoCompletion,
                t: &mut $target,
                bdevs: &ironbay_bdev::Registry,
                now_ms: u64,
            ) {
                self.handle_completion(tag, c, t, bdevs, now_ms)
            }
            fn gone(&mut self, t: &mut $target) {
                self.closed(t)
            }
        }
    };
}

target_engine!(
    ironbay_iscsi::Connection,
    ironbay_iscsi::Target,
    "iSCSI initiator"
);
target_engine!(
    ironbay_nvmf::Connection,
    ironbay_nvmf::Target,
    "NVMe-oF host"
);

pub struct Services {
    pub nbd: Option<Nbd>,
    iscsi: Option<PortService<ironbay_iscsi::Connection>>,
    nvmf: Option<Nvmf>,
    pub rpc: Option<Rpc>,
}

/// The NVMe-oF target's sockets, and the target event count they last saw.
struct Nvmf {
    ports: PortService<ironbay_nvmf::Connection>,
    seen_events: u64,
}

pub const RPC_PORT: u16 = 5260;
const RPC_CONNECTIONS: usize = 8;

/// The JSON-RPC server on the management NIC.
pub struct Rpc {
    stack: usize,
    listener: Listener,
    sessions: Vec<Option<ironbay_rpc::Session>>,
    /// Client subnets allowed; empty means the management NIC's own subnet.
    allow: Vec<ironbay_config::net::Ipv4Cidr>,
    initialized: bool,
    /// `spdk_kill_instance` asked for an orderly shutdown.
    pub shutdown: bool,
    /// A benchmark `bdevperf_run` asked for, and the one running (with the
    /// session waiting for its result).
    bench_request: Option<ironbay_bdev::bench::BenchSpec>,
    running: Option<(usize, ironbay_bdev::bench::Bench)>,
}

fn tag(service: u64, slot: usize, generation: u16, engine: u64) -> u64 {
    service << SERVICE_SHIFT
        | (slot as u64) << SLOT_SHIFT
        | ((generation & GEN_MASK) as u64) << GEN_SHIFT
        | (engine & ENGINE_MASK)
}

/// What the glue needs from a target engine once its input is taken.
trait Engine {
    /// For the log.
    const PEER: &'static str;
    fn next_io(&mut self) -> Option<(u64, BdevId, IoOp, bool)>;
    /// The registry was full: the same I/O goes first next time.
    fn requeue_io(&mut self, tag: u64, bdev: BdevId, op: IoOp, fua: bool);
    fn output(&self) -> Option<&[u8]>;
    fn sent(&mut self, n: usize);
    fn done(&self) -> bool;
    fn take_error(&mut self) -> Option<&'static str>;
}

impl Engine for Connection {
    const PEER: &'static str = "NBD client";
    fn next_io(&mut self) -> Option<(u64, BdevId, IoOp, bool)> {
        self.poll_io().map(|io| (io.tag, io.bdev, io.op, io.fua))
    }
    fn requeue_io(&mut self, tag: u64, bdev: BdevId, op: IoOp, fua: bool) {
        self.retry_io(BlockIo { tag, bdev, op, fua });
    }
    fn output(&self) -> Option<&[u8]> {
        self.poll_output()
    }
    fn sent(&mut self, n: usize) {
        self.consume_output(n);
    }
    fn done(&self) -> bool {
        self.finished()
    }
    fn take_error(&mut self) -> Option<&'static str> {
        self.error.take()
    }
}

/// How long a finished engine waits for its peer to close first.
const LINGER_US: u64 = 2_000_000;

/// Starts an engine's block I/O (tags on `tag_base`), sends its output and
/// closes the socket once it is done or the peer left. True if anything moved.
///
/// A finished engine (logout, disconnect) lets the peer close first, for up
/// to `LINGER_US`: the side that closes first holds TIME-WAIT, and here that
/// would take a listening socket out of the pool for 10 s per connection.
fn pump<E: Engine>(
    conn: &mut E,
    s: &mut tcp::Socket<'_>,
    bdevs: &mut ironbay_bdev::Registry,
    tag_base: u64,
    now_us: u64,
    linger_until: &mut Option<u64>,
) -> bool {
    let mut busy = false;
    while let Some((t, bdev, op, fua)) = conn.next_io() {
        let req = IoRequest {
            tag: tag_base | (t & ENGINE_MASK),
            op,
            fua,
        };
        if let Err(back) = bdevs.submit(bdev, req, now_us) {
            conn.requeue_io(t, bdev, back.op, fua);
            break;
        }
        busy = true;
    }
    while let Some(out) = conn.output() {
        match s.send_slice(out) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                conn.sent(n);
                busy = true;
            }
        }
    }
    if let Some(why) = conn.take_error() {
        log::warn!("{} {:?}: {why}; closing", E::PEER, s.remote_endpoint());
    }
    let peer_closed =
        s.state() == tcp::State::CloseWait && !s.can_recv() && conn.output().is_none();
    if conn.done() && !peer_closed {
        let until = *linger_until.get_or_insert(now_us + LINGER_US);
        if now_us >= until || (conn.output().is_none() && s.state() != tcp::State::Established) {
            s.close();
        }
    } else if peer_closed {
        s.close();
    }
    busy
}

fn endpoint(e: smoltcp::wire::IpEndpoint) -> core::net::SocketAddr {
    let ip = match e.addr {
        smoltcp::wire::IpAddress::Ipv4(a) => {
            core::net::IpAddr::V4(core::net::Ipv4Addr::from(a.octets()))
        }
        smoltcp::wire::IpAddress::Ipv6(a) => {
            core::net::IpAddr::V6(core::net::Ipv6Addr::from(a.octets()))
        }
    };
    core::net::SocketAddr::new(ip, e.port)
}

pub fn init(
    network: &mut Network,
    storage: &Storage,
    cmdline: &ironbay_config::Cmdline,
) -> Services {
    let Some(stack) = network.stacks.iter().position(|s| s.role == Role::Data(0)) else {
        log::warn!("no data NIC: NBD and iSCSI targets not started");
        let rpc = rpc_init(network, cmdline);
        return Services {
            nbd: None,
            iscsi: None,
            nvmf: None,
            rpc,
        };
    };
    // QAPI's max-connections: 0 is "no limit of our own", 1 withdraws multi-conn.
    let max: usize = cmdline.get_as("nbd.max_connections").unwrap_or(0);
    let connections = if max == 0 { NBD_CONNECTIONS } else { max };
    let mut exports = Exports::default();
    let mut add = |id, read_only| {
        if let Some(info) = storage.bdevs.info(id) {
            let mut e = Export::new(&info.name, &info.product, id, info, read_only);
            e.multi_conn = connections != 1;
            exports.list.push(e);
        }
    };
    match cmdline.get("nbd.exports") {
        Some(list) => {
            for item in list.split(',') {
                let (name, ro) = item
                    .split_once(':')
                    .map_or((item, false), |(n, m)| (n, m == "ro"));
                match storage.bdevs.find(name) {
                    Some(id) => add(id, ro),
                    None => log::error!("nbd.exports: no bdev named {name}"),
                }
            }
        }
        None => storage.bdevs.ids().for_each(|id| add(id, false)),
    }
    let sockets = &mut network.stacks[stack].sockets;
    let listener = Listener::new(sockets, NBD_PORT, connections, TcpTuning::STORAGE);
    let names: Vec<&str> = exports.list.iter().map(|e| e.name.as_str()).collect();
    log::info!(
        "data0: NBD target on TCP port {NBD_PORT}, up to {connections} connections, exports: {}",
        names.join(" ")
    );
    let mut iscsi = PortService::new(
        stack,
        "iSCSI target",
        ISCSI_SERVICE,
        per_port(cmdline, "iscsi.max_connections", ISCSI_CONNECTIONS),
    );
    let mut nvmf = Nvmf {
        ports: PortService::new(
            stack,
            "NVMe-oF/TCP target",
            NVMF_SERVICE,
            per_port(cmdline, "nvmf.max_connections", NVMF_CONNECTIONS),
        ),
        seen_events: 0,
    };
    // Listen before the ready line: clients may connect at once.
    iscsi.follow(network, storage.iscsi.config.generation, || {
        iscsi_ports(&storage.iscsi.config)
    });
    let nvmf_config = &storage.nvmf.config;
    nvmf.ports
        .follow(network, nvmf_config.generation, || nvmf_config.ports());
    let rpc = rpc_init(network, cmdline);
    Services {
        nbd: Some(Nbd {
            stack,
            listener,
            slots: Slot::pool(connections),
            exports,
        }),
        iscsi: Some(iscsi),
        nvmf: Some(nvmf),
        rpc,
    }
}

/// 3260 and every port a portal group names.
fn iscsi_ports(config: &ironbay_iscsi::Config) -> Vec<u16> {
    let mut ports: Vec<u16> = alloc::vec![ISCSI_PORT];
    ports.extend(
        config
            .portal_groups
            .iter()
            .flat_map(|pg| pg.portals.iter().map(|p| p.port)),
    );
    ports
}

/// Connections per listening port from `key`, `default` when absent or 0.
fn per_port(cmdline: &ironbay_config::Cmdline, key: &str, default: usize) -> usize {
    match cmdline.get_as::<usize>(key) {
        Some(0) | None => default,
        Some(n) => n,
    }
}

fn rpc_init(network: &mut Network, cmdline: &ironbay_config::Cmdline) -> Option<Rpc> {
    let Some(stack) = network.stacks.iter().position(|s| s.role == Role::Mgmt) else {
        log::warn!("no management NIC: JSON-RPC not started");
        return None;
    };
    let allow: Vec<ironbay_config::net::Ipv4Cidr> = cmdline
        .get("mgmt.allow")
        .map(|l| l.split(',').filter_map(|c| c.parse().ok()).collect())
        .unwrap_or_default();
    let listener = Listener::new(
        &mut network.stacks[stack].sockets,
        RPC_PORT,
        RPC_CONNECTIONS,
        TcpTuning::MANAGEMENT,
    );
    if allow.is_empty() {
        log::info!("mgmt: JSON-RPC on TCP port {RPC_PORT}, clients from the management subnet");
    } else {
        let list: Vec<alloc::string::String> =
            allow.iter().map(|c| alloc::format!("{c}")).collect();
        log::info!(
            "mgmt: JSON-RPC on TCP port {RPC_PORT}, clients from {}",
            list.join(" ")
        );
    }
    Some(Rpc {
        stack,
        listener,
        sessions: (0..RPC_CONNECTIONS).map(|_| None).collect(),
        allow,
        initialized: !cmdline.flag("mgmt.wait_for_init"),
        shutdown: false,
        bench_request: None,
        running: None,
    })
}

impl Rpc {
    fn allowed(&self, network: &Network, peer: smoltcp::wire::IpAddress) -> bool {
        let smoltcp::wire::IpAddress::Ipv4(ip) = peer else {
            return false;
        };
        let ip = core::net::Ipv4Addr::from(ip.octets());
        if self.allow.is_empty() {
            // Default: the management NIC's own subnet.
            return network.stacks[self.stack].ipv4().is_some_and(|c| {
                let addr = core::net::Ipv4Addr::from(c.address().octets());
                ironbay_config::net::Ipv4Cidr {
                    addr,
                    prefix: c.prefix_len(),
                }
                .contains(ip)
            });
        }
        self.allow.iter().any(|c| c.contains(ip))
    }

    fn poll(
        &mut self,
        network: &mut Network,
        storage: &mut Storage,
        mut nbd: Option<&mut Exports>,
    ) -> bool {
        let mut busy = false;
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
        for (i, &h) in self.listener.sockets().iter().enumerate() {
            let (state, peer) = {
                let s = network.stacks[self.stack].sockets.get::<tcp::Socket<'_>>(h);
                (s.state(), s.remote_endpoint())
            };
            if !matches!(state, tcp::State::Established | tcp::State::CloseWait) {
                self.sessions[i] = None;
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
            }
            let Some(session) = self.sessions[i].as_mut() else {
                continue;
            };
            let s = network.stacks[self.stack]
                .sockets
                .get_mut::<tcp::Socket<'_>>(h);
            if session.wants_input() && s.can_recv() {
                let heap = crate::mem::heap_stats();
                let mut model = ironbay_rpc::Model {
                    bdevs: &mut storage.bdevs,
                    devices: Some(&mut storage.hw),
                    nbd: nbd.as_deref_mut(),
                    iscsi: Some(&mut storage.iscsi),
                    nvmf: Some(&mut storage.nvmf),
                    memory_budget: heap.ram_bdev_budget(),
                    initialized: &mut self.initialized,
                    shutdown: &mut self.shutdown,
                    bench: Some(&mut self.bench_request),
                };
                let _ = s.recv(|b| {
                    session.handle_input(b, &mut model);
                    (b.len(), ())
                });
                busy = true;
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
        self.listener
            .relisten(&mut network.stacks[self.stack].sockets);
        busy
    }
}

impl Services {
    /// Whether anything serves JSON-RPC (and so could start a deferred init).
    pub fn has_rpc(&self) -> bool {
        self.rpc.is_some()
    }

    pub fn shutdown_requested(&self) -> bool {
        self.rpc.as_ref().is_some_and(|r| r.shutdown)
    }

    /// Moves bytes between sockets and engines and starts block I/O.
    pub fn poll(&mut self, network: &mut Network, storage: &mut Storage) -> bool {
        let mut busy = false;
        if let Some(rpc) = &mut self.rpc {
            busy |= rpc.poll(network, storage, self.nbd.as_mut().map(|n| &mut n.exports));
        }
        busy | self.poll_nbd(network, storage)
            | self.poll_iscsi(network, storage)
            | self.poll_nvmf(network, storage)
    }

    fn poll_iscsi(&mut self, network: &mut Network, storage: &mut Storage) -> bool {
        let Some(iscsi) = &mut self.iscsi else {
            return false;
        };
        let config = &storage.iscsi.config;
        iscsi.follow(network, config.generation, || iscsi_ports(config));
        iscsi.poll(network, &mut storage.iscsi, &mut storage.bdevs, false)
    }

    fn poll_nvmf(&mut self, network: &mut Network, storage: &mut Storage) -> bool {
        let Some(nvmf) = &mut self.nvmf else {
            return false;
        };
        let config = &storage.nvmf.config;
        nvmf.ports
            .follow(network, config.generation, || config.ports());
        let events = storage.nvmf.events_seq();
        let wake = events != nvmf.seen_events;
        nvmf.seen_events = events;
        nvmf.ports
            .poll(network, &mut storage.nvmf, &mut storage.bdevs, wake)
    }

    fn poll_nbd(&mut self, network: &mut Network, storage: &mut Storage) -> bool {
        let Some(nbd) = &mut self.nbd else {
            return false;
        };
        let now = crate::time::uptime_us();
        let sockets = &mut network.stacks[nbd.stack].sockets;
        let mut busy = false;
        let takes_io = crate::mem::heap_stats().takes_io();
        for (i, &h) in nbd.listener.sockets().iter().enumerate() {
            let s = sockets.get_mut::<tcp::Socket<'_>>(h);
            let slot = &mut nbd.slots[i];
            let open = matches!(s.state(), tcp::State::Established | tcp::State::CloseWait);
            if !open {
                slot.retire();
                continue;
            }
            let conn = slot.conn.get_or_insert_with(Connection::new);
            if takes_io
                && conn.wants_input()
                && s.can_recv()
                && let Ok(n) = s.recv(|b| {
                    let n = conn.handle_input(b, &nbd.exports, &storage.bdevs);
                    (n, n)
                })
            {
                busy |= n > 0;
            }
            let base = tag(NBD_SERVICE, i, slot.generation, 0);
            busy |= pump(
                conn,
                s,
                &mut storage.bdevs,
                base,
                now,
                &mut slot.linger_until,
            );
        }
        nbd.listener.relisten(sockets);
        busy
    }

    /// Hands a block completion to the engine that asked for it.
    pub fn complete(&mut self, c: IoCompletion, storage: &mut Storage) {
        if c.tag & BENCH_TAG != 0 {
            if let Some(rpc) = &mut self.rpc
                && let Some((_, bench)) = &mut rpc.running
            {
                bench.handle(&mut storage.bdevs, c, crate::time::uptime_us());
            }
            return;
        }
        let slot = (c.tag >> SLOT_SHIFT) as usize & 0xff;
        let generation = (c.tag >> GEN_SHIFT) as u16 & GEN_MASK;
        let engine = c.tag & ENGINE_MASK;
        match (c.tag >> SERVICE_SHIFT) & 3 {
            NBD_SERVICE => {
                if let Some(nbd) = &mut self.nbd
                    && let Some(s) = nbd.slots.get_mut(slot)
                    && s.generation == generation
                    && let Some(conn) = s.conn.as_mut()
                {
                    conn.handle_completion(engine, c);
                }
            }
            ISCSI_SERVICE => {
                if let Some(iscsi) = &mut self.iscsi {
                    iscsi.complete(
                        slot,
                        generation,
                        engine,
                        c,
                        &mut storage.iscsi,
                        &storage.bdevs,
                    );
                }
            }
            NVMF_SERVICE => {
                if let Some(nvmf) = &mut self.nvmf {
                    let t = &mut storage.nvmf;
                    nvmf.ports
                        .complete(slot, generation, engine, c, t, &storage.bdevs);
                }
            }
            _ => {}
        }
    }
}
