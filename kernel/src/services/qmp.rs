//! QMP on the management NIC (TCP 4444, `qmp.port=`): monitors as
//! qemu-storage-daemon serves them, driving the NBD exports of the object
//! model. Each monitor is an `ironbay_qmp::Session`; this file moves bytes,
//! keeps deadlines and hands events to every monitor.

use super::Nbd;
use super::allow::Allow;
use crate::net::Network;
use crate::storage::Storage;
use alloc::vec::Vec;
use core::net::IpAddr;
use ironbay_net::{Listener, Role, TcpTuning};
use ironbay_qmp::block::{Block, BlockState};
use ironbay_qmp::{Greeting, Session, Version};
use smoltcp::socket::tcp;

pub const QMP_PORT: u16 = 4444;
pub const QMP_CONNECTIONS: usize = 8;
/// A monitor that has not sent `qmp_capabilities` by then is dropped.
const NEGOTIATE_US: u64 = 10_000_000;
/// A monitor that leaves replies or events unread this long is dropped.
const STALL_US: u64 = 30_000_000;
/// A quiet monitor may be dropped this soon when every socket is taken.
const EVICT_IDLE_US: u64 = 5_000_000;
/// A close that has not finished by then is aborted.
const LINGER_US: u64 = 2_000_000;

struct Monitor {
    session: Session,
    opened_us: u64,
    /// Last input or output.
    active_us: u64,
    /// Last time the output was empty or moved.
    progress_us: u64,
}

pub struct Qmp {
    stack: usize,
    listener: Listener,
    monitors: Vec<Option<Monitor>>,
    closing_since: Vec<Option<u64>>,
    allow: Allow,
    greeting: Greeting,
    pub block: BlockState,
    /// Bumped when `nbd-server-start` changes the NBD listener.
    pub server_generation: u64,
}

pub fn init(network: &mut Network, cmdline: &ironbay_config::Cmdline) -> Option<Qmp> {
    let stack = network.stacks.iter().position(|s| s.role == Role::Mgmt)?;
    let port = cmdline.get_as("qmp.port").unwrap_or(QMP_PORT);
    let listener = Listener::new(
        &mut network.stacks[stack].sockets,
        port,
        QMP_CONNECTIONS,
        TcpTuning::MANAGEMENT,
    );
    let allow = Allow::from_cmdline(cmdline);
    log::info!(
        "mgmt: QMP on TCP port {port}, clients from {}",
        allow.describe()
    );
    Some(Qmp {
        stack,
        listener,
        monitors: (0..QMP_CONNECTIONS).map(|_| None).collect(),
        closing_since: alloc::vec![None; QMP_CONNECTIONS],
        allow,
        greeting: Greeting {
            version: Version {
                major: 9,
                minor: 2,
                micro: 0,
                package: alloc::format!("ironbay {}", env!("CARGO_PKG_VERSION")),
            },
        },
        block: BlockState::default(),
        server_generation: 0,
    })
}

/// Data NIC addresses, where NBD may listen.
fn data_addrs(network: &Network) -> Vec<IpAddr> {
    network
        .stacks
        .iter()
        .filter(|s| s.role != Role::Mgmt)
        .filter_map(|s| s.ipv4())
        .map(|c| IpAddr::V4(core::net::Ipv4Addr::from(c.address().octets())))
        .collect()
}

/// Clients attached to the NBD export named `name`.
fn clients(
    nbd: Option<&super::targets::PortService<ironbay_nbd::Connection>>,
    name: &str,
) -> usize {
    nbd.map_or(0, |p| {
        p.endpoint
            .connections()
            .filter(|c| c.in_transmission() && c.export().is_some_and(|e| e.name == name))
            .count()
    })
}

impl Qmp {
    pub fn poll(
        &mut self,
        network: &mut Network,
        storage: &mut Storage,
        nbd: Option<&mut Nbd>,
        initialized: bool,
    ) -> bool {
        let now = crate::time::uptime_us();
        // Only a command needs the data NIC addresses: no allocation on
        // the turns nothing arrives.
        let input = self.listener.sockets().iter().any(|&h| {
            network.stacks[self.stack]
                .sockets
                .get::<tcp::Socket<'_>>(h)
                .can_recv()
        });
        let addrs = if input {
            data_addrs(network)
        } else {
            Vec::new()
        };
        let (ports, mut exports) = match nbd {
            Some(n) => (Some(&n.ports), Some(&mut n.exports)),
            None => (None, None),
        };
        let count = |name: &str| clients(ports, name);
        let server_before = self.block.server.clone();
        let mut busy = false;
        let mut handled = false;
        let own = Allow::own_subnet(network, self.stack);
        for (i, &h) in self.listener.sockets().iter().enumerate() {
            let s = network.stacks[self.stack]
                .sockets
                .get_mut::<tcp::Socket<'_>>(h);
            let state = s.state();
            if !matches!(state, tcp::State::Established | tcp::State::CloseWait) {
                self.monitors[i] = None;
                match state {
                    tcp::State::Listen | tcp::State::Closed => self.closing_since[i] = None,
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
            if self.monitors[i].is_none() {
                let peer = s.remote_endpoint();
                let permitted = peer.is_some_and(|p| match p.addr {
                    smoltcp::wire::IpAddress::Ipv4(ip) => self
                        .allow
                        .permits(own, IpAddr::V4(core::net::Ipv4Addr::from(ip.octets()))),
                    _ => false,
                });
                if !permitted {
                    log::warn!("mgmt: QMP connection from {peer:?} refused (not in mgmt.allow)");
                    s.abort();
                    continue;
                }
                self.monitors[i] = Some(Monitor {
                    session: Session::new(&self.greeting),
                    opened_us: now,
                    active_us: now,
                    progress_us: now,
                });
            }
            let Some(m) = self.monitors[i].as_mut() else {
                continue;
            };
            if m.session.wants_input() && s.can_recv() {
                let (mut init, mut down) = (initialized, false);
                let mut model = storage.model(exports.as_deref_mut(), &mut init, &mut down, None);
                let mut block = Block {
                    model: &mut model,
                    state: &mut self.block,
                    clients: &count,
                    data_addrs: &addrs,
                };
                let _ = s.recv(|b| (m.session.handle_input(b, &mut block), ()));
                m.active_us = now;
                busy = true;
                handled = true;
            }
            if m.session.is_stalled()
                || (!m.session.poll_output().is_empty()
                    && now.saturating_sub(m.progress_us) >= STALL_US)
            {
                log::warn!(
                    "mgmt: QMP client {:?} takes no output; dropped",
                    s.remote_endpoint()
                );
                s.abort();
                self.monitors[i] = None;
                continue;
            }
            if !m.session.is_negotiated() && now.saturating_sub(m.opened_us) >= NEGOTIATE_US {
                // It reads (or has nothing to read): a close it will see.
                log::warn!(
                    "mgmt: QMP client {:?}: no qmp_capabilities in time; closing",
                    s.remote_endpoint()
                );
                s.close();
                self.monitors[i] = None;
                continue;
            }
            busy |= send(m, s, now);
            if s.state() == tcp::State::CloseWait && m.session.poll_output().is_empty() {
                s.close();
            }
        }
        self.block.reap(&count);
        if !self.block.events.is_empty() {
            busy = true;
            for (name, data) in core::mem::take(&mut self.block.events) {
                log::info!("mgmt: QMP event {name} {data}");
                for m in self.monitors.iter_mut().flatten() {
                    m.session.push_event(name, Some(data.clone()), now);
                }
            }
        }
        if self.block.server != server_before {
            self.server_generation += 1;
        }
        if handled {
            crate::persist::save_storage(storage, exports, initialized);
        }
        self.evict_when_full(network, now);
        self.listener
            .relisten(&mut network.stacks[self.stack].sockets);
        busy
    }

    /// When no socket listens, drops the monitor quiet longest (if quiet a
    /// while), so idle connections cannot lock QMP out.
    fn evict_when_full(&mut self, network: &mut Network, now: u64) {
        let sockets = &mut network.stacks[self.stack].sockets;
        let handles = self.listener.sockets();
        if handles
            .iter()
            .any(|&h| sockets.get::<tcp::Socket<'_>>(h).state() == tcp::State::Listen)
        {
            return;
        }
        let victim = (0..handles.len())
            .filter_map(|i| self.monitors[i].as_ref().map(|m| (i, m.active_us)))
            .filter(|&(_, active)| now.saturating_sub(active) >= EVICT_IDLE_US)
            .min_by_key(|&(_, active)| active);
        if let Some((i, _)) = victim {
            let s = sockets.get_mut::<tcp::Socket<'_>>(handles[i]);
            log::warn!(
                "mgmt: every QMP socket taken; dropped quiet monitor {:?}",
                s.remote_endpoint()
            );
            s.abort();
            self.monitors[i] = None;
        }
    }
}

/// Moves a monitor's output to its socket; true if anything went.
fn send(m: &mut Monitor, s: &mut tcp::Socket<'_>, now: u64) -> bool {
    let mut moved = false;
    while !m.session.poll_output().is_empty() {
        match s.send_slice(m.session.poll_output()) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                m.session.consume_output(n);
                moved = true;
            }
        }
    }
    if moved || m.session.poll_output().is_empty() {
        m.progress_us = now;
    }
    if moved {
        m.active_us = now;
    }
    moved
}
