//! IPv4 subnets and address allocation: parsing `10.88.0.0/16`, overlap, which addresses a VM
//! may have (not the network, gateway or broadcast address), and picking a free one.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Shortest and longest prefix of a capsule network: a /30 still has one VM address.
pub const MIN_PREFIX: u8 = 8;
pub const MAX_PREFIX: u8 = 30;

/// Why a subnet or an address was refused; each names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("invalid subnet {0:?}: expected an IPv4 CIDR such as 10.89.0.0/24")]
    Syntax(String),
    #[error("invalid subnet {input}: the prefix must be /{MIN_PREFIX} to /{MAX_PREFIX}")]
    Prefix { input: String },
    #[error("invalid subnet {input}: host bits are set (did you mean {network}?)")]
    HostBits { input: String, network: Subnet },
    #[error("invalid address {0:?}: expected an IPv4 address such as 10.88.0.5")]
    Address(String),
    #[error("address {addr} is outside network {network}'s subnet {subnet}")]
    Outside {
        addr: Ipv4Addr,
        network: String,
        subnet: Subnet,
    },
    #[error("address {addr} is the {what} address of network {network}")]
    Reserved {
        addr: Ipv4Addr,
        network: String,
        what: &'static str,
    },
    #[error("address {addr} of network {network} is taken by VM {owner}")]
    Taken {
        addr: Ipv4Addr,
        network: String,
        owner: String,
    },
    #[error("network {network} ({subnet}) has no free address left")]
    Full { network: String, subnet: Subnet },
}

/// An IPv4 subnet with its host bits clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// `network/prefix`; host bits of `network` must be clear.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, IpamError> {
        let input = format!("{network}/{prefix}");
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(IpamError::Prefix { input });
        }
        let subnet = Subnet {
            network: Ipv4Addr::from(u32::from(network) & mask(prefix)),
            prefix,
        };
        if subnet.network != network {
            return Err(IpamError::HostBits {
                input,
                network: subnet,
            });
        }
        Ok(subnet)
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The first address, the host's side of the network.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix) == u32::from(self.network)
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        let m = mask(self.prefix.min(other.prefix));
        u32::from(self.network) & m == u32::from(other.network) & m
    }

    /// Whether any address of `addr/prefix` (any prefix, such as a host route) is in the subnet.
    pub fn overlaps_range(&self, addr: Ipv4Addr, prefix: u8) -> bool {
        let m = mask(self.prefix.min(prefix.min(32)));
        u32::from(self.network) & m == u32::from(addr) & m
    }

    /// Checks that `addr` may be given to a VM of `network` (named in errors).
    pub fn check_vm_address(&self, addr: Ipv4Addr, network: &str) -> Result<(), IpamError> {
        if !self.contains(addr) {
            return Err(IpamError::Outside {
                addr,
                network: network.to_string(),
                subnet: *self,
            });
        }
        let what = if addr == self.network {
            "network"
        } else if addr == self.gateway() {
            "gateway"
        } else if addr == self.broadcast() {
            "broadcast"
        } else {
            return Ok(());
        };
        Err(IpamError::Reserved {
            addr,
            network: network.to_string(),
            what,
        })
    }

    /// The lowest VM address of the subnet that is not in `taken`.
    pub fn first_free(
        &self,
        taken: &BTreeSet<Ipv4Addr>,
        network: &str,
    ) -> Result<Ipv4Addr, IpamError> {
        let first = u32::from(self.gateway()) + 1;
        let last = u32::from(self.broadcast()) - 1;
        (first..=last)
            .map(Ipv4Addr::from)
            .find(|a| !taken.contains(a))
            .ok_or(IpamError::Full {
                network: network.to_string(),
                subnet: *self,
            })
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl FromStr for Subnet {
    type Err = IpamError;

    fn from_str(s: &str) -> Result<Self, IpamError> {
        let syntax = || IpamError::Syntax(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        if prefix > 32 {
            return Err(syntax());
        }
        Subnet::new(addr, prefix)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl serde::Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses a VM address given on the command line.
pub fn parse_address(s: &str) -> Result<Ipv4Addr, IpamError> {
    s.parse().map_err(|_| IpamError::Address(s.to_string()))
}

/// The MAC address of a VM's NIC: locally administered, unicast, derived from its address so
/// that it is unique wherever the address is.
pub fn mac_for(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_names_bad_subnets() {
        let s = net("10.88.0.0/16");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 88, 255, 255));
        assert_eq!(s.to_string(), "10.88.0.0/16");
        assert!(matches!(
            "10.88.0.0".parse::<Subnet>(),
            Err(IpamError::Syntax(_))
        ));
        assert!(matches!("x/8".parse::<Subnet>(), Err(IpamError::Syntax(_))));
        assert!(matches!(
            "10.0.0.0/33".parse::<Subnet>(),
            Err(IpamError::Syntax(_))
        ));
        assert!(matches!(
            "10.0.0.0/31".parse::<Subnet>(),
            Err(IpamError::Prefix { .. })
        ));
        let e = "10.88.1.7/16".parse::<Subnet>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid subnet 10.88.1.7/16: host bits are set (did you mean 10.88.0.0/16?)"
        );
    }

    #[test]
    fn overlap_in_both_directions() {
        assert!(net("10.88.0.0/16").overlaps(&net("10.88.3.0/24")));
        assert!(net("10.88.3.0/24").overlaps(&net("10.88.0.0/16")));
        assert!(!net("10.88.0.0/16").overlaps(&net("10.89.0.0/16")));
        assert!(!net("192.168.1.0/24").overlaps(&net("192.168.2.0/24")));
        assert!(net("10.88.0.0/16").overlaps_range(Ipv4Addr::new(10, 88, 4, 4), 32));
        assert!(!net("10.88.0.0/16").overlaps_range(Ipv4Addr::new(192, 0, 2, 0), 24));
    }

    #[test]
    fn vm_addresses_exclude_network_gateway_broadcast() {
        let s = net("10.9.0.0/24");
        assert!(s.check_vm_address(Ipv4Addr::new(10, 9, 0, 2), "n").is_ok());
        for (a, what) in [(0, "network"), (1, "gateway"), (255, "broadcast")] {
            match s.check_vm_address(Ipv4Addr::new(10, 9, 0, a), "n") {
                Err(IpamError::Reserved { what: w, .. }) => assert_eq!(w, what),
                other => panic!("{a}: {other:?}"),
            }
        }
        assert!(matches!(
            s.check_vm_address(Ipv4Addr::new(10, 9, 1, 2), "n"),
            Err(IpamError::Outside { .. })
        ));
    }

    #[test]
    fn allocates_lowest_free_until_full() {
        let s = net("10.9.0.0/30");
        let mut taken = BTreeSet::new();
        let a = s.first_free(&taken, "n").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 9, 0, 2));
        taken.insert(a);
        assert!(matches!(
            s.first_free(&taken, "n"),
            Err(IpamError::Full { .. })
        ));
        let s = net("10.9.0.0/24");
        taken.insert(Ipv4Addr::new(10, 9, 0, 3));
        assert_eq!(
            s.first_free(&taken, "n").unwrap(),
            Ipv4Addr::new(10, 9, 0, 4)
        );
    }

    #[test]
    fn mac_is_local_unicast_and_follows_the_address() {
        let mac = mac_for(Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered, unicast");
        assert_eq!(format_mac(&mac), "0a:58:0a:58:00:02");
    }
}
