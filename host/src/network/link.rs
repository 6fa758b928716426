//! Host links through iproute2's `ip`: a network's bridge with its gateway address, and one
//! persistent TAP per VM on that bridge.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// Errors while changing host links; each names the link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("ip not found: install Debian's iproute2 package (scripts/install-deps.sh does)")]
    Missing,
    #[error("cannot run ip")]
    Spawn(#[source] std::io::Error),
    #[error(
        "/dev/net/tun is missing: load the tun module (`modprobe tun`) to give VMs a network, \
         or use --net none"
    )]
    NoTun,
    #[error(
        "cannot {what} {link}: not permitted; creating VM networks needs CAP_NET_ADMIN (run as \
         root), or use --net none"
    )]
    NotPermitted { what: &'static str, link: String },
    #[error("cannot {what} {link}: {message}")]
    Failed {
        what: &'static str,
        link: String,
        message: String,
    },
}

fn ip(what: &'static str, link: &str, args: &[&str]) -> Result<(), LinkError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LinkError::Missing,
            _ => LinkError::Spawn(e),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if message.contains("Operation not permitted") {
        return Err(LinkError::NotPermitted {
            what,
            link: link.to_string(),
        });
    }
    Err(LinkError::Failed {
        what,
        link: link.to_string(),
        message,
    })
}

/// Whether a link of that name exists.
pub fn exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Creates the bridge if it is missing, gives it the gateway address and brings it up. Also
/// lets it route the host's loopback sources, so a published port answers on 127.0.0.1.
pub fn bridge_up(name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<(), LinkError> {
    if !exists(name) {
        ip(
            "create bridge",
            name,
            &["link", "add", name, "type", "bridge"],
        )?;
    }
    let addr = format!("{gateway}/{prefix}");
    ip(
        "address bridge",
        name,
        &["addr", "replace", &addr, "dev", name],
    )?;
    ip("bring up bridge", name, &["link", "set", name, "up"])?;
    let sysctl = format!("/proc/sys/net/ipv4/conf/{name}/route_localnet");
    std::fs::write(&sysctl, "1").map_err(|e| LinkError::Failed {
        what: "set route_localnet on",
        link: name.to_string(),
        message: e.to_string(),
    })?;
    // Forwarding is host-wide; NAT to the outside needs it.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| LinkError::Failed {
        what: "enable IPv4 forwarding for",
        link: name.to_string(),
        message: e.to_string(),
    })
}

/// Whether the bridge has no port left.
pub fn bridge_is_empty(name: &str) -> bool {
    std::fs::read_dir(Path::new("/sys/class/net").join(name).join("brif"))
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

/// Creates a persistent TAP on `bridge`, up. An old TAP of that name (left by a crash) is
/// replaced.
pub fn tap_add(name: &str, bridge: &str) -> Result<(), LinkError> {
    if !Path::new("/dev/net/tun").exists() {
        return Err(LinkError::NoTun);
    }
    delete(name)?;
    ip(
        "create TAP",
        name,
        &["tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"],
    )?;
    ip(
        "attach TAP",
        name,
        &["link", "set", name, "master", bridge, "up"],
    )
}

/// Deletes a link if it exists.
pub fn delete(name: &str) -> Result<(), LinkError> {
    if !exists(name) {
        return Ok(());
    }
    ip("delete", name, &["link", "del", name])
}
