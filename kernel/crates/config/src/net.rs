//! Address values that appear in options.

use core::fmt;
use core::net::Ipv4Addr;
use core::str::FromStr;

/// An IPv4 address with a prefix length, as `10.0.2.15/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// True when `ip` lies inside this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix as u32)
        };
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl FromStr for Ipv4Cidr {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s.split_once('/').ok_or("expected ADDRESS/PREFIX")?;
        let addr = Ipv4Addr::from_str(a).map_err(|_| "not an IPv4 address")?;
        let prefix: u8 = p.parse().map_err(|_| "prefix is not a number")?;
        if prefix > 32 {
            return Err("prefix longer than 32");
        }
        Ok(Ipv4Cidr { addr, prefix })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let c: Ipv4Cidr = "10.0.2.15/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.2.15/24");
        assert!(c.contains(Ipv4Addr::new(10, 0, 2, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 0, 3, 1)));
        let any: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains(Ipv4Addr::new(1, 2, 3, 4)));
        for bad in [
            "10.0.2.15",
            "10.0.2/24",
            "10.0.2.15/33",
            "x/1",
            "1.2.3.4/-1",
            "",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
    }
}
