//! Network bring-up: one smoltcp stack per virtio-net NIC, named by role
//! (the first NIC is `mgmt`, the rest `data0`, `data1`, ...), configured from
//! the command line, plus the diagnostics service on `data0` when asked for.

use crate::drivers::{virtio, virtio_net::VirtioNic};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::str::FromStr;
use ironbay_config::Cmdline;
use ironbay_net::diag::{Diag, DiagSpec};
use ironbay_net::{Ipv4Mode, NicConfig, Role, Stack};
use ironbay_platform::pci::Function;
use smoltcp::time::Instant;
use smoltcp::wire::{Ipv4Address, Ipv4Cidr, Ipv6Address, Ipv6Cidr};

pub struct Network {
    pub stacks: Vec<Stack<VirtioNic>>,
    diag: Option<(usize, Diag)>,
}

pub fn now() -> Instant {
    Instant::from_micros(crate::time::uptime_us() as i64)
}

fn is_virtio_net(f: &Function) -> bool {
    f.vendor == 0x1af4 && matches!(f.device, 0x1000 | 0x1041)
}

/// The NIC configuration for `prefix` (`mgmt` or `data`) from the command line.
fn nic_config(c: &Cmdline, prefix: &str) -> NicConfig {
    let key = |k: &str| format!("{prefix}.{k}");
    let mut cfg = NicConfig::default();
    if let Some(ip) = c.get(&key("ip")).filter(|v| *v != "dhcp") {
        let cidr = ironbay_config::net::Ipv4Cidr::from_str(ip).ok();
        let gw = c
            .get(&key("gw"))
            .and_then(|g| core::net::Ipv4Addr::from_str(g).ok());
        if let Some(cidr) = cidr {
            cfg.ipv4 = Ipv4Mode::Static {
                cidr: Ipv4Cidr::new(Ipv4Address::from(cidr.addr.octets()), cidr.prefix),
                gateway: gw.map(|g| Ipv4Address::from(g.octets())),
            };
        }
    }
    if let Some((a, p)) = c.get(&key("ip6")).and_then(|v| v.split_once('/'))
        && let (Ok(a), Ok(p)) = (core::net::Ipv6Addr::from_str(a), p.parse::<u8>())
    {
        cfg.ipv6 = Some(Ipv6Cidr::new(Ipv6Address::from(a.octets()), p));
    }
    cfg.mtu = c.get_as(&key("mtu")).unwrap_or(1500);
    cfg
}

fn describe(cfg: &NicConfig) -> String {
    let v4 = match cfg.ipv4 {
        Ipv4Mode::Static { cidr, gateway } => match gateway {
            Some(g) => format!("IPv4 {cidr} via {g}"),
            None => format!("IPv4 {cidr}"),
        },
        Ipv4Mode::Dhcp => "IPv4 by DHCP".into(),
        Ipv4Mode::Off => "no IPv4".into(),
    };
    let v6 = cfg.ipv6.map_or(String::new(), |c| format!(", IPv6 {c}"));
    format!(
        "{v4}{v6}, SLAAC {}, MTU {}",
        if cfg.slaac { "on" } else { "off" },
        cfg.mtu
    )
}

fn attach(f: &Function) -> Result<VirtioNic, String> {
    VirtioNic::new(virtio::transport(f)?).map_err(|e| format!("{e}"))
}

pub fn init(devices: &[Function], c: &Cmdline) -> Network {
    let mut stacks = Vec::new();
    for (i, f) in devices.iter().filter(|f| is_virtio_net(f)).enumerate() {
        let role = if i == 0 {
            Role::Mgmt
        } else {
            Role::Data((i - 1) as u8)
        };
        let name = role.name();
        let prefix = match role {
            Role::Mgmt => "mgmt",
            Role::Data(0) => "data",
            Role::Data(_) => "",
        };
        let cfg = if prefix.is_empty() {
            NicConfig::default()
        } else {
            nic_config(c, prefix)
        };
        match attach(f) {
            Ok(nic) => {
                let seed = crate::arch::cpu::rdtsc() ^ (i as u64) << 56;
                let stack = Stack::new(role, nic, cfg, now(), seed);
                let m = stack.device.mac();
                log::info!(
                    "{name}: virtio-net at {}, MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, {}",
                    f.bdf,
                    m[0],
                    m[1],
                    m[2],
                    m[3],
                    m[4],
                    m[5],
                    describe(&cfg)
                );
                stacks.push(stack);
            }
            Err(e) => log::error!("{name}: virtio-net at {}: {e}", f.bdf),
        }
    }
    if stacks.is_empty() {
        log::warn!("no network interfaces");
    }
    let diag = c
        .get("diag")
        .and_then(|v| v.parse::<DiagSpec>().ok())
        .and_then(|spec| {
            let Some(i) = stacks.iter().position(|s| s.role == Role::Data(0)) else {
                log::warn!("diag={spec:?} needs a data NIC; not started");
                return None;
            };
            log::info!(
                "data0: diagnostics service {:?} on TCP port {}",
                spec.mode,
                spec.port
            );
            Some((i, Diag::new(&mut stacks[i].sockets, spec)))
        });
    Network { stacks, diag }
}

impl Network {
    /// One pass over every NIC and service; true if anything moved.
    pub fn poll(&mut self) -> bool {
        let t = now();
        let mut busy = false;
        for s in &mut self.stacks {
            busy |= s.poll(t);
        }
        if let Some((i, diag)) = &mut self.diag
            && diag.poll(&mut self.stacks[*i].sockets)
        {
            busy = true;
            self.stacks[*i].poll(t);
        }
        busy
    }

    /// Microseconds until some stack needs attention (None: only packets).
    pub fn next_deadline_us(&mut self) -> Option<u64> {
        let t = now();
        self.stacks
            .iter_mut()
            .filter_map(|s| s.poll_delay(t))
            .map(|d| d.total_micros())
            .min()
    }

    pub fn has_pending_rx(&self) -> bool {
        self.stacks.iter().any(|s| s.has_pending_rx())
    }
}
