//! One smoltcp interface per NIC role.

use crate::device::{NetDevice, NetDriver};
use alloc::format;
use alloc::string::String;
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::dhcpv4;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr, Ipv6Address, Ipv6Cidr,
};

/// Which job a NIC does. Management APIs bind only to `Mgmt`, targets only to
/// `Data(n)`: each role has its own interface and socket set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Mgmt,
    Data(u8),
}

impl Role {
    pub fn name(self) -> String {
        match self {
            Role::Mgmt => "mgmt".into(),
            Role::Data(n) => format!("data{n}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv4Mode {
    Static {
        cidr: Ipv4Cidr,
        gateway: Option<Ipv4Address>,
    },
    Dhcp,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NicConfig {
    pub ipv4: Ipv4Mode,
    pub ipv6: Option<Ipv6Cidr>,
    pub ipv6_gateway: Option<Ipv6Address>,
    /// Take IPv6 addresses from router advertisements.
    pub slaac: bool,
    /// IP MTU; 1500 unless jumbo frames are configured.
    pub mtu: usize,
}

impl Default for NicConfig {
    fn default() -> Self {
        NicConfig {
            ipv4: Ipv4Mode::Dhcp,
            ipv6: None,
            ipv6_gateway: None,
            slaac: true,
            mtu: 1500,
        }
    }
}

pub struct Stack<D: NetDriver> {
    pub role: Role,
    pub device: NetDevice<D>,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    config: NicConfig,
}

/// Receive and transmit buffers per NIC.
const RX_BUFFERS: usize = 128;
const TX_BUFFERS: usize = 128;

fn link_local(mac: [u8; 6]) -> Ipv6Cidr {
    // Modified EUI-64 interface identifier (RFC 4291, appendix A).
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8] = mac[0] ^ 0x02;
    a[9] = mac[1];
    a[10] = mac[2];
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13] = mac[3];
    a[14] = mac[4];
    a[15] = mac[5];
    Ipv6Cidr::new(Ipv6Address::from(a), 64)
}

impl<D: NetDriver> Stack<D> {
    pub fn new(role: Role, driver: D, config: NicConfig, now: Instant, seed: u64) -> Self {
        let mut device = NetDevice::new(driver, config.mtu, RX_BUFFERS, TX_BUFFERS);
        let mac = device.mac();
        let mut c = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        c.random_seed = seed;
        c.slaac = config.slaac;
        let mut iface = Interface::new(c, &mut device, now);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::Ipv6(link_local(mac)));
            if let Some(v6) = config.ipv6 {
                let _ = addrs.push(IpCidr::Ipv6(v6));
            }
            if let Ipv4Mode::Static { cidr, .. } = config.ipv4 {
                let _ = addrs.push(IpCidr::Ipv4(cidr));
            }
        });
        if let Ipv4Mode::Static {
            gateway: Some(gw), ..
        } = config.ipv4
        {
            let _ = iface.routes_mut().add_default_ipv4_route(gw);
        }
        if let Some(gw) = config.ipv6_gateway {
            let _ = iface.routes_mut().add_default_ipv6_route(gw);
        }
        let mut sockets = SocketSet::new(alloc::vec![]);
        let dhcp = (config.ipv4 == Ipv4Mode::Dhcp).then(|| sockets.add(dhcpv4::Socket::new()));
        Stack {
            role,
            device,
            iface,
            sockets,
            dhcp,
            config,
        }
    }

    pub fn config(&self) -> &NicConfig {
        &self.config
    }

    /// Moves frames between the NIC and the sockets; true if anything happened.
    pub fn poll(&mut self, now: Instant) -> bool {
        let serviced = self.device.service();
        let changed = self.iface.poll(now, &mut self.device, &mut self.sockets)
            == PollResult::SocketStateChanged;
        if let Some(h) = self.dhcp {
            match self.sockets.get_mut::<dhcpv4::Socket<'_>>(h).poll() {
                Some(dhcpv4::Event::Configured(cfg)) => {
                    let role = self.role.name();
                    log::info!("{role}: DHCP lease {} via {:?}", cfg.address, cfg.router);
                    self.iface.update_ip_addrs(|addrs| {
                        addrs.retain(|a| !matches!(a, IpCidr::Ipv4(_)));
                        let _ = addrs.push(IpCidr::Ipv4(cfg.address));
                    });
                    match cfg.router {
                        Some(r) => {
                            let _ = self.iface.routes_mut().add_default_ipv4_route(r);
                        }
                        None => {
                            self.iface.routes_mut().remove_default_ipv4_route();
                        }
                    }
                }
                Some(dhcpv4::Event::Deconfigured) => {
                    // smoltcp reports Deconfigured once at start; only a held lease is news.
                    if self.ipv4().is_some() {
                        log::warn!("{}: DHCP lease lost", self.role.name());
                    }
                    self.iface
                        .update_ip_addrs(|addrs| addrs.retain(|a| !matches!(a, IpCidr::Ipv4(_))));
                    self.iface.routes_mut().remove_default_ipv4_route();
                }
                None => {}
            }
        }
        serviced || changed
    }

    /// How long smoltcp can wait before it needs `poll` again (timers,
    /// retransmissions, DHCP); `None` means only a packet can wake it.
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        self.iface.poll_delay(now, &self.sockets)
    }

    pub fn ipv4(&self) -> Option<Ipv4Cidr> {
        self.iface.ip_addrs().iter().find_map(|a| match a {
            IpCidr::Ipv4(c) => Some(*c),
            _ => None,
        })
    }

    pub fn has_pending_rx(&self) -> bool {
        self.device.has_rx()
    }
}
