//! `mgmt.allow=`: which client subnets the management services answer.
//! Empty means the management NIC's own subnet.

use crate::net::Network;
use alloc::vec::Vec;
use ironbay_config::net::Ipv4Cidr;

pub struct Allow(Vec<Ipv4Cidr>);

impl Allow {
    pub fn from_cmdline(cmdline: &ironbay_config::Cmdline) -> Self {
        Allow(
            cmdline
                .get("mgmt.allow")
                .map(|l| l.split(',').filter_map(|c| c.parse().ok()).collect())
                .unwrap_or_default(),
        )
    }

    /// Who may connect, for the console.
    pub fn describe(&self) -> alloc::string::String {
        if self.0.is_empty() {
            return "the management subnet".into();
        }
        let list: Vec<alloc::string::String> =
            self.0.iter().map(|c| alloc::format!("{c}")).collect();
        list.join(" ")
    }

    /// The management NIC's own subnet (what an empty list allows).
    pub fn own_subnet(network: &Network, stack: usize) -> Option<Ipv4Cidr> {
        network.stacks[stack].ipv4().map(|c| Ipv4Cidr {
            addr: core::net::Ipv4Addr::from(c.address().octets()),
            prefix: c.prefix_len(),
        })
    }

    pub fn permits(&self, own: Option<Ipv4Cidr>, peer: core::net::IpAddr) -> bool {
        let core::net::IpAddr::V4(ip) = peer else {
            return false;
        };
        if self.0.is_empty() {
            return own.is_some_and(|c| c.contains(ip));
        }
        self.0.iter().any(|c| c.contains(ip))
    }
}
