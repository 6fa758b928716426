//! A VM inside a network namespace that someone else set up (CNI for a Kubernetes pod, or
//! `ip netns` by hand): its interface (a veth, usually `eth0`) keeps the address that was
//! assigned, and capsule joins a TAP to it with tc redirects both ways, the way Kata
//! Containers does. The guest's NIC takes the interface's MAC and address, so the pod's
//! address is the container's and nothing on the network side notices the VM.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::ipam::Subnet;
use super::link::LinkError;

/// Errors about the namespace and its interface; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("--netns {0}: no such network namespace (a path such as /var/run/netns/NAME)")]
    Missing(PathBuf),
    #[error(
        "--netns {0}: no interface with an IPv4 address and a default route (CNI sets one up; \
         by hand: a veth with `ip addr add` and `ip route add default`)"
    )]
    NoInterface(PathBuf),
    #[error("cannot run {what} in {path}: {message}")]
    Command {
        what: String,
        path: PathBuf,
        message: String,
    },
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// The namespace's interface the VM takes over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInterface {
    pub name: String,
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// Runs `program args` inside the network namespace at `path`; returns stdout.
fn run_in(path: &Path, program: &str, args: &[&str]) -> Result<String, NetnsError> {
    let net = format!("--net={}", path.display());
    let out = Command::new("nsenter")
        .arg(&net)
        .arg(program)
        .args(args)
        .output()
        .map_err(|e| NetnsError::Command {
            what: format!("nsenter {program}"),
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            what: format!("{program} {}", args.join(" ")),
            path: path.to_path_buf(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

/// Finds the interface of the default route and its IPv4 address in `ip -j` output.
fn pick(links: &str, routes: &str) -> Option<PodInterface> {
    let links: serde_json::Value = serde_json::from_str(links).ok()?;
    let routes: serde_json::Value = serde_json::from_str(routes).ok()?;
    let route = routes.as_array()?.iter().find(|r| r["dst"] == "default")?;
    let dev = route["dev"].as_str()?;
    let gateway: Ipv4Addr = route["gateway"].as_str()?.parse().ok()?;
    let link = links.as_array()?.iter().find(|l| l["ifname"] == dev)?;
    let addr = link["addr_info"]
        .as_array()?
        .iter()
        .find(|a| a["family"] == "inet")?;
    let address: Ipv4Addr = addr["local"].as_str()?.parse().ok()?;
    let prefix = addr["prefixlen"].as_u64()? as u8;
    let network = Ipv4Addr::from(u32::from(address) & (u32::MAX << (32 - u32::from(prefix))));
    Some(PodInterface {
        name: dev.to_string(),
        mac: parse_mac(link["address"].as_str()?)?,
        address,
        subnet: Subnet::new(network, prefix).ok()?,
        gateway,
        mtu: link["mtu"].as_u64().unwrap_or(1500) as u32,
    })
}

/// The interface of the namespace's default route, with its address.
pub fn inspect(path: &Path) -> Result<PodInterface, NetnsError> {
    if !path.exists() {
        return Err(NetnsError::Missing(path.to_path_buf()));
    }
    let links = run_in(path, "ip", &["-j", "addr", "show"])?;
    let routes = run_in(path, "ip", &["-j", "-4", "route", "show", "default"])?;
    pick(&links, &routes).ok_or_else(|| NetnsError::NoInterface(path.to_path_buf()))
}

/// Makes the TAP in the namespace and redirects every frame between it and the interface.
pub fn attach(path: &Path, pod: &PodInterface, tap: &str) -> Result<(), NetnsError> {
    let _ = detach(path, pod, tap);
    let mtu = pod.mtu.to_string();
    run_in(
        path,
        "ip",
        &["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"],
    )?;
    run_in(path, "ip", &["link", "set", tap, "mtu", &mtu, "up"])?;
    for (from, to) in [(pod.name.as_str(), tap), (tap, pod.name.as_str())] {
        run_in(path, "tc", &["qdisc", "add", "dev", from, "ingress"])?;
        run_in(
            path,
            "tc",
            &[
                "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match",
                "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ],
        )?;
    }
    Ok(())
}

/// Removes the TAP (and with it its redirect) and the interface's ingress redirect.
pub fn detach(path: &Path, pod: &PodInterface, tap: &str) -> Result<(), NetnsError> {
    if !path.exists() {
        // The namespace went first (the pod was torn down): so did everything in it.
        return Ok(());
    }
    let _ = run_in(path, "tc", &["qdisc", "del", "dev", &pod.name, "ingress"]);
    let exists = run_in(path, "ip", &["link", "show", tap]).is_ok();
    if exists {
        run_in(path, "ip", &["link", "del", tap])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINKS: &str = r#"[{"ifname":"lo","mtu":65536,"address":"00:00:00:00:00:00",
        "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
        {"ifname":"eth0","mtu":1450,"address":"92:14:9c:eb:96:8f",
        "addr_info":[{"family":"inet6","local":"fe80::1","prefixlen":64},
                     {"family":"inet","local":"10.244.1.7","prefixlen":24}]}]"#;

    #[test]
    fn picks_the_default_route_interface() {
        let routes = r#"[{"dst":"default","gateway":"10.244.1.1","dev":"eth0"}]"#;
        let pod = pick(LINKS, routes).unwrap();
        assert_eq!(pod.name, "eth0");
        assert_eq!(pod.mac, [0x92, 0x14, 0x9c, 0xeb, 0x96, 0x8f]);
        assert_eq!(pod.address, Ipv4Addr::new(10, 244, 1, 7));
        assert_eq!(pod.subnet.to_string(), "10.244.1.0/24");
        assert_eq!(pod.gateway, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(pod.mtu, 1450);
    }

    #[test]
    fn no_default_route_is_no_interface() {
        assert!(pick(LINKS, "[]").is_none());
        assert!(pick(
            LINKS,
            r#"[{"dst":"default","gateway":"10.0.0.1","dev":"eth9"}]"#
        )
        .is_none());
    }
}
