//! QMP on the management NIC (TCP 4444, `qmp.port=`): monitors as
//! qemu-storage-daemon serves them, driving the NBD exports of the object
//! model. Each monitor is an `ironbay_qmp::Session`; this file moves bytes,
//! keeps deadlines and hands events to every monitor.

use super::Nbd;
use super::allow::Allow;
use super::sessions::Sessions;
use crate::net::Network;
use crate::storage::Storage;
use alloc::vec::Vec;
use core::net::IpAddr;
use ironbay_net::Role;
use ironbay_qmp::block::{Block, BlockState};
use ironbay_qmp::{Greeting, Session, Version};
use smoltcp::socket::tcp;

pub const QMP_PORT: u16 = 4444;
pub const QMP_CONNECTIONS: usize = 8;
/// A monitor that has not sent `qmp_capabilities` by then is dropped.
const NEGOTIATE_US: u64 = 10_000_000;
/// A monitor that leaves replies or events unread this long is dropped.
const STALL_US: u64 = 30_000_000;

struct Monitor {
    session: Session,
    opened_us: u64,
    /// Last time the output was empty or moved.
    progress_us: u64,
}

pub struct Qmp {
    monitors: Sessions<Monitor>,
    greeting: Greeting,
    pub block: BlockState,
    /// Bumped when `nbd-server-start` changes the NBD listener.
    pub server_generation: u64,
}

pub fn init(network: &mut Network, cmdline: &ironbay_config::Cmdline) -> Option<Qmp> {
    let stack = network.stacks.iter().position(|s| s.role == Role::Mgmt)?;
    let port = cmdline.get_as("qmp.port").unwrap_or(QMP_PORT);
    let allow = Allow::from_cmdline(cmdline);
    log::info!(
        "mgmt: QMP on TCP port {port}, clients from {}",
        allow.describe()
    );
    Some(Qmp {
        monitors: Sessions::new(network, stack, port, QMP_CONNECTIONS, allow, "QMP"),
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
        let addrs = if self.monitors.input_waiting(network) {
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
        for i in 0..self.monitors.len() {
            let greeting = &self.greeting;
            let make = || Monitor {
                session: Session::new(greeting),
                opened_us: now,
                progress_us: now,
            };
            let Some((s, slot)) = self.monitors.open(network, i, now, make) else {
                continue;
            };
            let Some(m) = slot.session.as_mut() else {
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
                slot.active_us = now;
                busy = true;
                handled = true;
            }
            if m.session.is_stalled()
                || (!m.session.poll_output().is_empty()
                    && now.saturating_sub(m.progress_us) >= STALL_US)
            {
                self.monitors.drop_session(network, i, "takes no output");
                continue;
            }
            if !m.session.is_negotiated() && now.saturating_sub(m.opened_us) >= NEGOTIATE_US {
                // It reads (or has nothing to read): a close it will see.
                log::warn!(
                    "mgmt: QMP client {:?}: no qmp_capabilities in time; closing",
                    s.remote_endpoint()
                );
                s.close();
                slot.session = None;
                continue;
            }
            if send(m, s, now) {
                slot.active_us = now;
                busy = true;
            }
            if s.state() == tcp::State::CloseWait && m.session.poll_output().is_empty() {
                s.close();
            }
        }
        self.block.reap(&count);
        if !self.block.events.is_empty() {
            busy = true;
            for (name, data) in core::mem::take(&mut self.block.events) {
                log::info!("mgmt: QMP event {name} {data}");
                for m in self.monitors.sessions_mut() {
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
        self.monitors.finish(network, now, None);
        busy
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
    moved
}
