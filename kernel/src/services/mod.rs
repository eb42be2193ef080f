//! Target services on the data NICs and the JSON-RPC server on the
//! management NIC, glued to sockets and the bdev layer.
//!
//! The NBD server on port 10809 of `data0` (every bdev under its own name,
//! read-write, unless `nbd.exports` says otherwise), the iSCSI target on
//! 3260 and the ports its portal groups name, and the NVMe-oF/TCP target on
//! the ports its listeners name. Each is a [`targets::PortService`]: an
//! [`ironbay_endpoint::Endpoint`] over the listeners' sockets, and all of
//! them charge their buffers to one I/O memory budget sized at boot.

mod allow;
mod http;
mod qmp;
mod rest;
mod rpc;
mod sessions;
mod targetd;
mod targets;

use crate::net::Network;
use crate::storage::Storage;
use alloc::vec::Vec;
use ironbay_bdev::{Budget, IoCompletion};
use ironbay_endpoint::{Limits, tag};
use ironbay_nbd::{Export, Exports};
use ironbay_net::{Role, TcpTuning};
use qmp::{QMP_CONNECTIONS, Qmp};
use rest::{REST_CONNECTIONS, RestService};
use rpc::{RPC_CONNECTIONS, Rpc, rpc_init};
use targetd::{TARGETD_CONNECTIONS, TargetdService};
use targets::PortService;

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
    + (RPC_CONNECTIONS + TARGETD_CONNECTIONS + REST_CONNECTIONS + QMP_CONNECTIONS)
        * (TcpTuning::MANAGEMENT.rx_buffer + TcpTuning::MANAGEMENT.tx_buffer);

const NBD_SERVICE: u8 = 0;
const ISCSI_SERVICE: u8 = 1;
const NVMF_SERVICE: u8 = 2;

/// The NBD handshake deadline when `nbd.handshake_timeout` is absent, as
/// qemu-nbd's.
const NBD_HANDSHAKE_S: u64 = 10;
/// Backstop for iSCSI login and NVMe-oF ICReq/Connect, whose engines time
/// their own phases.
const LOGIN_BACKSTOP_S: u64 = 60;
/// A peer that leaves our replies unread this long is dropped.
const STALL_S: u64 = 30;

pub struct Services {
    pub nbd: Option<Nbd>,
    iscsi: Option<PortService<ironbay_iscsi::Connection>>,
    nvmf: Option<Nvmf>,
    pub rpc: Option<Rpc>,
    targetd: Option<TargetdService>,
    rest: Option<RestService>,
    qmp: Option<Qmp>,
    budget: Budget,
    /// High-water mark last reported on the console, and when.
    reported_high: usize,
    reported_us: u64,
}

pub struct Nbd {
    ports: PortService<ironbay_nbd::Connection>,
    pub exports: Exports,
}

/// The NVMe-oF target's sockets, and the target event count they last saw.
struct Nvmf {
    ports: PortService<ironbay_nvmf::Connection>,
    seen_events: u64,
}

/// The I/O budget: the heap's I/O reserve less a margin for what engines
/// hold outside data buffers (PDU headers, command tables, output headers).
fn io_budget(slots: usize) -> Budget {
    let heap = crate::mem::heap_stats();
    let limit = heap.io_reserve() / 4 * 3;
    let budget = Budget::new(limit, slots);
    log::info!(
        "io budget: {} KiB for target I/O over {} connection slots, up to {} KiB per connection",
        limit >> 10,
        slots,
        budget.max_hold() >> 10
    );
    budget
}

fn limits(cmdline: &ironbay_config::Cmdline, handshake_s: u64) -> Limits {
    let stall: u64 = cmdline.get_as("target.stall_timeout").unwrap_or(STALL_S);
    Limits {
        handshake_ms: handshake_s * 1000,
        stall_ms: stall * 1000,
        ..Limits::default()
    }
}

pub fn init(
    network: &mut Network,
    storage: &mut Storage,
    cmdline: &ironbay_config::Cmdline,
) -> Services {
    let targetd = targetd::init(network, storage, cmdline);
    let rest = rest::init(network, cmdline);
    let qmp = qmp::init(network, cmdline);
    let Some(stack) = network.stacks.iter().position(|s| s.role == Role::Data(0)) else {
        log::warn!("no data NIC: NBD, iSCSI and NVMe-oF targets not started");
        let rpc = rpc_init(network, cmdline);
        return Services {
            nbd: None,
            iscsi: None,
            nvmf: None,
            rpc,
            targetd,
            rest,
            qmp,
            budget: Budget::new(0, 1),
            reported_high: 0,
            reported_us: 0,
        };
    };
    // QAPI's max-connections: 0 is "no limit of our own", 1 withdraws multi-conn.
    let nbd_max = per_port(cmdline, "nbd.max_connections", NBD_CONNECTIONS);
    let iscsi_max = per_port(cmdline, "iscsi.max_connections", ISCSI_CONNECTIONS);
    let nvmf_max = per_port(cmdline, "nvmf.max_connections", NVMF_CONNECTIONS);
    let budget = io_budget(nbd_max + iscsi_max + 2 * nvmf_max);
    let mut exports = Exports::default();
    let mut add = |id, read_only| {
        // NBD can only advertise a power-of-two minimum block size.
        if let Some(info) = storage.bdevs.info(id)
            && info.block_size.is_power_of_two()
        {
            let mut e = Export::new(&info.name, &info.product, id, info, read_only);
            e.multi_conn = nbd_max != 1;
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
        // Bdevs a store or the config area claimed take no I/O of their own.
        None => storage
            .bdevs
            .ids()
            .filter(|&id| storage.bdevs.claimed_by(id).is_none())
            .for_each(|id| add(id, false)),
    }
    for call in &storage.nbd_calls {
        let arg = |k: &str| call.params.get(k).and_then(serde_json::Value::as_str);
        match (call.method.as_str(), arg("bdev_name"), arg("nbd_device")) {
            ("nbd_start_disk" | "start_nbd_disk", Some(bdev), Some(name)) => {
                match storage
                    .bdevs
                    .find(bdev)
                    .and_then(|id| Some((id, storage.bdevs.info(id)?)))
                {
                    Some((id, info)) if !exports.list.iter().any(|e| e.name == name) => {
                        let mut e = Export::new(name, &info.product, id, info, false);
                        e.multi_conn = nbd_max != 1;
                        exports.list.push(e);
                    }
                    Some(_) => log::error!("config: NBD export {name} exists already"),
                    None => log::error!("config: nbd_start_disk: no bdev named {bdev}"),
                }
            }
            (m, ..) => log::error!("config: {m} in the nbd subsystem not understood"),
        }
    }
    let names: Vec<&str> = exports.list.iter().map(|e| e.name.as_str()).collect();
    log::info!("data0: NBD exports: {}", names.join(" "));
    let handshake: u64 = cmdline
        .get_as("nbd.handshake_timeout")
        .unwrap_or(NBD_HANDSHAKE_S);
    let mut nbd = PortService::new(
        stack,
        "NBD target",
        NBD_SERVICE,
        nbd_max,
        limits(cmdline, handshake),
        budget.clone(),
    );
    nbd.follow(network, 0, || alloc::vec![NBD_PORT]);
    let login = limits(cmdline, LOGIN_BACKSTOP_S);
    let mut iscsi = PortService::new(
        stack,
        "iSCSI target",
        ISCSI_SERVICE,
        iscsi_max,
        login,
        budget.clone(),
    );
    let mut nvmf = Nvmf {
        ports: PortService::new(
            stack,
            "NVMe-oF/TCP target",
            NVMF_SERVICE,
            nvmf_max,
            login,
            budget.clone(),
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
    let mut services = Services {
        nbd: Some(Nbd {
            ports: nbd,
            exports,
        }),
        iscsi: Some(iscsi),
        nvmf: Some(nvmf),
        rpc,
        targetd,
        rest,
        qmp,
        budget,
        reported_high: 0,
        reported_us: 0,
    };
    services.resize_budget();
    services
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

impl Services {
    /// Whether anything serves JSON-RPC (and so could start a deferred init).
    pub fn has_rpc(&self) -> bool {
        self.rpc.is_some()
    }

    pub fn shutdown_requested(&self) -> bool {
        self.rpc.as_ref().is_some_and(|r| r.shutdown)
    }

    /// Cuts the budget's per-connection floors for every socket there is.
    fn resize_budget(&mut self) {
        let slots = self.nbd.as_ref().map_or(0, |n| n.ports.sockets())
            + self.iscsi.as_ref().map_or(0, |p| p.sockets())
            + self.nvmf.as_ref().map_or(0, |n| n.ports.sockets());
        self.budget.set_slots(slots);
    }

    /// Moves bytes between sockets and engines and starts block I/O.
    pub fn poll(&mut self, network: &mut Network, storage: &mut Storage) -> bool {
        // NBD first: a client that has just said goodbye is gone before a
        // management command asks who is attached.
        let mut busy = false;
        if let Some(nbd) = &mut self.nbd {
            busy |= nbd
                .ports
                .poll(network, &mut nbd.exports, &mut storage.bdevs, false);
        }
        // Management traffic may have removed exports: NBD connections
        // then check theirs.
        let mut mgmt = false;
        if let Some(rpc) = &mut self.rpc {
            mgmt |= rpc.poll(network, storage, self.nbd.as_mut().map(|n| &mut n.exports));
        }
        if let Some(t) = &mut self.targetd {
            let initialized = self.rpc.as_ref().is_none_or(Rpc::initialized);
            let nbd = self.nbd.as_mut().map(|n| &mut n.exports);
            mgmt |= t.poll(network, storage, nbd, initialized);
        }
        if let Some(r) = &mut self.rest {
            let initialized = self.rpc.as_ref().is_none_or(Rpc::initialized);
            let nbd = self.nbd.as_mut().map(|n| &mut n.exports);
            mgmt |= r.poll(network, storage, nbd, initialized);
        }
        if let Some(q) = &mut self.qmp {
            let initialized = self.rpc.as_ref().is_none_or(Rpc::initialized);
            mgmt |= q.poll(network, storage, self.nbd.as_mut(), initialized);
            // nbd-server-start's port (listeners stay once made).
            if let (Some(server), Some(nbd)) = (&q.block.server, &mut self.nbd) {
                let port = server.port;
                if nbd
                    .ports
                    .follow(network, 1 + q.server_generation, || alloc::vec![port])
                {
                    self.resize_budget();
                }
            }
        }
        busy |= mgmt;
        if mgmt && let Some(nbd) = &mut self.nbd {
            nbd.ports
                .poll(network, &mut nbd.exports, &mut storage.bdevs, true);
        }
        let mut grew = false;
        if let Some(iscsi) = &mut self.iscsi {
            let config = &storage.iscsi.config;
            grew |= iscsi.follow(network, config.generation, || iscsi_ports(config));
            busy |= iscsi.poll(network, &mut storage.iscsi, &mut storage.bdevs, false);
        }
        if let Some(nvmf) = &mut self.nvmf {
            let config = &storage.nvmf.config;
            grew |= nvmf
                .ports
                .follow(network, config.generation, || config.ports());
            let events = storage.nvmf.events_seq();
            let wake = events != nvmf.seen_events;
            nvmf.seen_events = events;
            busy |= nvmf
                .ports
                .poll(network, &mut storage.nvmf, &mut storage.bdevs, wake);
        }
        if grew {
            self.resize_budget();
        }
        self.report_budget();
        busy
    }

    /// Says on the console when target I/O memory reached a new high, at
    /// most once a second.
    fn report_budget(&mut self) {
        let high = self.budget.high_water();
        if high < self.reported_high + (1 << 20) {
            return;
        }
        let now = crate::time::uptime_us();
        if now < self.reported_us + 1_000_000 {
            return;
        }
        self.reported_high = high;
        self.reported_us = now;
        log::info!(
            "io budget: high-water {} KiB of {} KiB",
            high >> 10,
            self.budget.limit() >> 10
        );
    }

    /// Hands a block completion to what asked for it.
    pub fn complete(&mut self, c: IoCompletion, storage: &mut Storage) {
        match tag::service(c.tag) {
            None => {
                if let Some(rpc) = &mut self.rpc {
                    rpc.complete_bench(c, storage);
                }
            }
            Some(NBD_SERVICE) => {
                if let Some(nbd) = &mut self.nbd {
                    nbd.ports.complete(c, &mut nbd.exports, &storage.bdevs);
                }
            }
            Some(ISCSI_SERVICE) => {
                if let Some(iscsi) = &mut self.iscsi {
                    iscsi.complete(c, &mut storage.iscsi, &storage.bdevs);
                }
            }
            Some(NVMF_SERVICE) => {
                if let Some(nvmf) = &mut self.nvmf {
                    nvmf.ports.complete(c, &mut storage.nvmf, &storage.bdevs);
                }
            }
            Some(_) => {}
        }
    }
}
