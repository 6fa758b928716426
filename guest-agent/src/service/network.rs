//! ConfigureNetwork: sets a container's interface up from outside. Each NIC of the guest is
//! found by its MAC, moved into the container's network namespace (when it has its own) and
//! renamed, then configured through a netlink socket the container's `container_socket()`
//! gives — the RFC's own use for that call — and the container's /etc/resolv.conf is a
//! read-only bind of a file the agent writes.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use capsule_protocol::{pb, RpcError};

use super::Agent;
use crate::backend::{flags, MountSpec};
use crate::netlink;
use crate::sys;

/// Most NICs and DNS servers in one request (glibc reads at most three servers).
pub const MAX_INTERFACES: usize = 8;
pub const MAX_NAMESERVERS: usize = 3;
/// Where the agent keeps each container's resolv.conf.
const RUN_DIR: &str = "/run/capsule-agent/net";

/// One validated interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSpec {
    pub mac: String,
    pub name: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u32,
}

fn ipv4(field: &str, value: &str) -> Result<Ipv4Addr, RpcError> {
    value
        .parse()
        .map_err(|_| RpcError::invalid(field, format!("{value:?} is not an IPv4 address")))
}

/// Checks a ConfigureNetwork request.
pub fn validate_network(
    r: &pb::ConfigureNetworkRequest,
) -> Result<(Vec<InterfaceSpec>, Vec<Ipv4Addr>), RpcError> {
    if r.interfaces.len() > MAX_INTERFACES {
        return Err(RpcError::invalid(
            "interfaces",
            format!("at most {MAX_INTERFACES} interfaces"),
        ));
    }
    if r.nameservers.len() > MAX_NAMESERVERS {
        return Err(RpcError::invalid(
            "nameservers",
            format!("at most {MAX_NAMESERVERS} servers"),
        ));
    }
    let mut out = Vec::new();
    for i in &r.interfaces {
        let mac = i.mac.to_ascii_lowercase();
        let bytes: Vec<&str> = mac.split(':').collect();
        if bytes.len() != 6
            || !bytes
                .iter()
                .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(RpcError::invalid(
                "interfaces.mac",
                format!("{:?} is not a MAC address (aa:bb:cc:dd:ee:ff)", i.mac),
            ));
        }
        let name = if i.name.is_empty() { "eth0" } else { &i.name };
        if name.len() > 15
            || !name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
        {
            return Err(RpcError::invalid(
                "interfaces.name",
                format!("{name:?} is not an interface name (up to 15 of a-z, 0-9, -, _, .)"),
            ));
        }
        if !(1..=32).contains(&i.prefix_len) {
            return Err(RpcError::invalid(
                "interfaces.prefix_len",
                format!("{} is not a prefix length (1-32)", i.prefix_len),
            ));
        }
        if i.mtu != 0 && !(68..=65535).contains(&i.mtu) {
            return Err(RpcError::invalid(
                "interfaces.mtu",
                format!("{} is not an MTU (68-65535, or 0 to keep it)", i.mtu),
            ));
        }
        out.push(InterfaceSpec {
            mac,
            name: name.to_string(),
            address: ipv4("interfaces.address", &i.address)?,
            prefix_len: i.prefix_len as u8,
            gateway: (!i.gateway.is_empty())
                .then(|| ipv4("interfaces.gateway", &i.gateway))
                .transpose()?,
            mtu: i.mtu,
        });
    }
    let servers = r
        .nameservers
        .iter()
        .map(|s| ipv4("nameservers", s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((out, servers))
}

/// The guest's link with this MAC in the agent's network namespace, from sysfs.
fn link_by_mac(mac: &str) -> Option<(String, i32)> {
    let dir = std::fs::read_dir("/sys/class/net").ok()?;
    dir.flatten().find_map(|e| {
        let path = e.path();
        let addr = std::fs::read_to_string(path.join("address")).ok()?;
        if addr.trim() != mac {
            return None;
        }
        let index = std::fs::read_to_string(path.join("ifindex")).ok()?;
        Some((
            e.file_name().to_string_lossy().into_owned(),
            index.trim().parse().ok()?,
        ))
    })
}

fn errno(e: sys::Errno, what: String) -> RpcError {
    RpcError::from_errno(e, what)
}

/// `nameserver` lines for resolv.conf.
pub fn resolv_conf(servers: &[Ipv4Addr]) -> String {
    let mut s = String::from("# written by capsule's agent: the host's resolvers\n");
    for a in servers {
        s += &format!("nameserver {a}\n");
    }
    s
}

impl Agent {
    pub(super) async fn configure_network(
        self: &Arc<Self>,
        r: pb::ConfigureNetworkRequest,
    ) -> Result<pb::Empty, RpcError> {
        let entry = self.container("container", &r.container)?;
        let (interfaces, servers) = validate_network(&r)?;
        let this = self.clone();
        Self::blocking(move || {
            let own_netns = entry.flags & flags::NEW_NET_NS != 0;
            for i in &interfaces {
                let name = if own_netns {
                    let (_, index) = link_by_mac(&i.mac).ok_or_else(|| {
                        RpcError::from_errno(
                            libc::ENODEV,
                            format!("no network interface with MAC {} in the guest", i.mac),
                        )
                        .with_field("interfaces.mac")
                    })?;
                    let agent_sock = sys::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0)
                        .map_err(|e| errno(e, "netlink socket".into()))?;
                    netlink::move_to_netns(&agent_sock, index, entry.ops.init_pid(), &i.name)
                        .map_err(|e| errno(e, format!("moving {} into the container", i.mac)))?;
                    i.name.clone()
                } else {
                    // The container shares the agent's namespace: configure the NIC in place.
                    link_by_mac(&i.mac).map(|(name, _)| name).ok_or_else(|| {
                        RpcError::from_errno(
                            libc::ENODEV,
                            format!("no network interface with MAC {}", i.mac),
                        )
                        .with_field("interfaces.mac")
                    })?
                };
                let sock = entry.ops.socket(libc::AF_NETLINK, libc::SOCK_RAW)?;
                let index = netlink::link_index(&sock, &name)
                    .map_err(|e| errno(e, format!("finding {name} in the container")))?;
                netlink::link_up(&sock, index, i.mtu)
                    .map_err(|e| errno(e, format!("setting {name} up")))?;
                netlink::add_address(&sock, index, i.address, i.prefix_len).map_err(|e| {
                    errno(
                        e,
                        format!("adding {}/{} to {name}", i.address, i.prefix_len),
                    )
                })?;
                if let Some(gw) = i.gateway {
                    netlink::add_default_route(&sock, index, gw)
                        .map_err(|e| errno(e, format!("adding the route via {gw}")))?;
                }
            }
            if !servers.is_empty() {
                let file = write_resolv_conf(&entry.name, &servers)?;
                let spec = MountSpec {
                    fstype: "bind".into(),
                    source: file.display().to_string(),
                    options: "ro".into(),
                    target: "/etc/resolv.conf".into(),
                    mkdir: false,
                    subdir: String::new(),
                };
                if let Err(e) = entry.ops.mount(&spec, &this.reaper) {
                    // A root without /etc/resolv.conf keeps working, with names unresolved.
                    log::warn!(
                        "container {}: cannot place /etc/resolv.conf: {e}",
                        entry.name
                    );
                }
            }
            Ok(pb::Empty {})
        })
        .await
    }
}

fn write_resolv_conf(container: &str, servers: &[Ipv4Addr]) -> Result<PathBuf, RpcError> {
    let dir = Path::new(RUN_DIR).join(container);
    let file = dir.join("resolv.conf");
    std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::write(&file, resolv_conf(servers)))
        .map_err(|e| {
            RpcError::from_errno(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("writing {}", file.display()),
            )
        })?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface() -> pb::NetworkInterface {
        pb::NetworkInterface {
            mac: "0A:58:0a:58:00:02".into(),
            name: String::new(),
            address: "10.88.0.2".into(),
            prefix_len: 16,
            gateway: "10.88.0.1".into(),
            mtu: 1500,
        }
    }

    fn req(i: pb::NetworkInterface) -> pb::ConfigureNetworkRequest {
        pb::ConfigureNetworkRequest {
            container: "c".into(),
            interfaces: vec![i],
            nameservers: vec!["10.255.255.53".into()],
        }
    }

    #[test]
    fn accepts_a_normal_interface() {
        let (i, s) = validate_network(&req(iface())).unwrap();
        assert_eq!(i[0].mac, "0a:58:0a:58:00:02");
        assert_eq!(i[0].name, "eth0");
        assert_eq!(i[0].gateway, Some(Ipv4Addr::new(10, 88, 0, 1)));
        assert_eq!(s, vec![Ipv4Addr::new(10, 255, 255, 53)]);
    }

    #[test]
    fn names_the_bad_field() {
        type Mutation = fn(&mut pb::NetworkInterface);
        let cases: Vec<(Mutation, &str)> = vec![
            (|i| i.mac = "0a:58".into(), "interfaces.mac"),
            (
                |i| i.name = "a-name-much-too-long".into(),
                "interfaces.name",
            ),
            (|i| i.address = "10.88.0".into(), "interfaces.address"),
            (|i| i.prefix_len = 33, "interfaces.prefix_len"),
            (|i| i.gateway = "gw".into(), "interfaces.gateway"),
            (|i| i.mtu = 20, "interfaces.mtu"),
        ];
        for (mutate, field) in cases {
            let mut i = iface();
            mutate(&mut i);
            let e = validate_network(&req(i)).unwrap_err();
            assert_eq!(e.field, field, "{e:?}");
        }
        let mut r = req(iface());
        r.nameservers = vec!["1.1.1.1".into(); 4];
        assert_eq!(validate_network(&r).unwrap_err().field, "nameservers");
    }

    #[test]
    fn resolv_conf_lists_servers() {
        assert!(resolv_conf(&[Ipv4Addr::new(10, 0, 0, 53)]).ends_with("nameserver 10.0.0.53\n"));
    }
}
