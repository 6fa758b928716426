//! capsule's nftables rules: one table, `ip capsule`, written whole from what is active (every
//! network with a bridge up, every published port of a running VM) and replaced atomically with
//! `nft -f -`. When nothing is active the table is deleted, so an idle host carries no rule of
//! capsule's.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::ipam::Subnet;
use super::publish::Publish;

/// The table every rule of capsule's lives in.
pub const TABLE: &str = "capsule";

/// Errors while applying the rules.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("nft not found: install Debian's nftables package (scripts/install-deps.sh does)")]
    Missing,
    #[error("cannot run nft")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused capsule's rules: {0}")]
    Refused(String),
}

/// A network whose bridge is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveNetwork {
    pub bridge: String,
    pub subnet: Subnet,
}

/// A published port of a running VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivePublish {
    pub address: Ipv4Addr,
    pub publish: Publish,
}

/// The `nft -f` script that replaces capsule's table with the rules for `networks` and
/// `publishes` (or deletes it when both are empty).
pub fn script(networks: &[ActiveNetwork], publishes: &[ActivePublish]) -> String {
    // Adding first makes the delete succeed whether or not the table exists; nft applies the
    // whole script as one transaction.
    let mut s = format!("table ip {TABLE}\ndelete table ip {TABLE}\n");
    if networks.is_empty() && publishes.is_empty() {
        return s;
    }
    s += &format!("table ip {TABLE} {{\n");
    // Outbound: masquerade what leaves a network for anywhere else. Published ports reached
    // from the host's own loopback (route_localnet on the bridge) get the gateway as source.
    s += "  chain postrouting {\n    type nat hook postrouting priority 100; policy accept;\n";
    for n in networks {
        s += &format!(
            "    ip saddr {0} ip daddr != {0} masquerade\n    oifname \"{1}\" ip saddr 127.0.0.0/8 masquerade\n",
            n.subnet, n.bridge
        );
    }
    s += "  }\n";
    let dnat: String = publishes
        .iter()
        .map(|p| {
            format!(
                "    fib daddr type local {} dport {} dnat to {}:{}\n",
                p.publish.protocol.name(),
                p.publish.host_port,
                p.address,
                p.publish.container_port
            )
        })
        .collect();
    // From elsewhere (prerouting) and from the host itself (output).
    for (chain, hook) in [("prerouting", "prerouting"), ("output", "output")] {
        s += &format!(
            "  chain {chain} {{\n    type nat hook {hook} priority -100; policy accept;\n{dnat}  }}\n"
        );
    }
    s += "  chain forward {\n    type filter hook forward priority 0; policy accept;\n";
    for n in networks {
        s += &format!(
            "    iifname \"{0}\" accept\n    oifname \"{0}\" accept\n",
            n.bridge
        );
    }
    s += "  }\n}\n";
    s
}

/// Replaces capsule's table with `script`.
pub fn apply(script: &str) -> Result<(), FirewallError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FirewallError::Missing,
            _ => FirewallError::Spawn(e),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(FirewallError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(FirewallError::Spawn)?;
    if !out.status.success() {
        return Err(FirewallError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// Whether capsule's table exists (for tests and `capsule network ls`).
pub fn table_exists() -> bool {
    Command::new("nft")
        .args(["list", "table", "ip", TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::publish::Protocol;

    #[test]
    fn nothing_active_deletes_the_table() {
        assert_eq!(
            script(&[], &[]),
            "table ip capsule\ndelete table ip capsule\n"
        );
    }

    #[test]
    fn rules_for_a_network_and_a_published_port() {
        let s = script(
            &[ActiveNetwork {
                bridge: "capsule0".into(),
                subnet: "10.88.0.0/16".parse().unwrap(),
            }],
            &[ActivePublish {
                address: Ipv4Addr::new(10, 88, 0, 2),
                publish: Publish {
                    host_port: 8080,
                    container_port: 80,
                    protocol: Protocol::Tcp,
                },
            }],
        );
        assert!(s.contains("ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 masquerade"));
        assert!(s.contains("oifname \"capsule0\" ip saddr 127.0.0.0/8 masquerade"));
        assert_eq!(
            s.matches("fib daddr type local tcp dport 8080 dnat to 10.88.0.2:80")
                .count(),
            2,
            "{s}"
        );
        assert!(s.contains("iifname \"capsule0\" accept"));
    }
}
