//! Published ports: `HOST_PORT:CONTAINER_PORT[/tcp|/udp]`, and whether a host port is free.

use std::fmt;
use std::str::FromStr;

/// Transport protocol of a published port.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A host port forwarded (DNAT) to a port of the VM's address.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Publish {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

/// Why a `--publish` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error(
        "invalid --publish {0:?}: expected HOST_PORT:CONTAINER_PORT[/tcp|/udp], such as 8080:80"
    )]
    Syntax(String),
    #[error("invalid --publish {input:?}: {what} port {value:?} is not a number from 1 to 65535")]
    Port {
        input: String,
        what: &'static str,
        value: String,
    },
    #[error("invalid --publish {input:?}: unknown protocol {proto:?} (tcp or udp)")]
    Protocol { input: String, proto: String },
    #[error("--publish {0} is given twice")]
    Duplicate(Publish),
    #[error("host port {0} is already in use on this host")]
    InUse(String),
    #[error("host port {port} is already published by VM {owner}")]
    Published { port: String, owner: String },
}

impl FromStr for Publish {
    type Err = PublishError;

    fn from_str(s: &str) -> Result<Self, PublishError> {
        let (ports, proto) = match s.split_once('/') {
            Some((p, proto)) => (p, proto),
            None => (s, "tcp"),
        };
        let protocol = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => {
                return Err(PublishError::Protocol {
                    input: s.into(),
                    proto: other.into(),
                })
            }
        };
        let (host, container) = ports
            .split_once(':')
            .ok_or_else(|| PublishError::Syntax(s.into()))?;
        let port = |what, value: &str| {
            value
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| PublishError::Port {
                    input: s.into(),
                    what,
                    value: value.into(),
                })
        };
        Ok(Publish {
            host_port: port("host", host)?,
            container_port: port("container", container)?,
            protocol,
        })
    }
}

impl fmt::Display for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.container_port,
            self.protocol.name()
        )
    }
}

impl Publish {
    /// `8080/tcp`: the host side, as errors name it.
    pub fn host_side(&self) -> String {
        format!("{}/{}", self.host_port, self.protocol.name())
    }

    /// Whether the host port is free for this protocol: binding it on every address succeeds.
    pub fn check_host_port_free(&self) -> Result<(), PublishError> {
        let addr = std::net::SocketAddr::from(([0, 0, 0, 0], self.host_port));
        let bound = match self.protocol {
            Protocol::Tcp => std::net::TcpListener::bind(addr).map(drop),
            Protocol::Udp => std::net::UdpSocket::bind(addr).map(drop),
        };
        match bound {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                Err(PublishError::InUse(self.host_side()))
            }
            // Other failures (a privileged port without the right) show up when it is used.
            _ => Ok(()),
        }
    }
}

/// Refuses a list that publishes one host port twice.
pub fn check_unique(list: &[Publish]) -> Result<(), PublishError> {
    for (i, p) in list.iter().enumerate() {
        if list[..i]
            .iter()
            .any(|q| q.host_port == p.host_port && q.protocol == p.protocol)
        {
            return Err(PublishError::Duplicate(*p));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports_and_protocols() {
        let p: Publish = "8080:80".parse().unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.protocol),
            (8080, 80, Protocol::Tcp)
        );
        let p: Publish = "53:5353/udp".parse().unwrap();
        assert_eq!(p.protocol, Protocol::Udp);
        assert_eq!(p.to_string(), "53:5353/udp");
    }

    #[test]
    fn names_what_is_wrong() {
        assert!(matches!(
            "8080".parse::<Publish>(),
            Err(PublishError::Syntax(_))
        ));
        let e = "0:80".parse::<Publish>().unwrap_err().to_string();
        assert!(e.contains("host port \"0\""), "{e}");
        let e = "80:99999".parse::<Publish>().unwrap_err().to_string();
        assert!(e.contains("container port \"99999\""), "{e}");
        let e = "80:80/sctp".parse::<Publish>().unwrap_err().to_string();
        assert!(e.contains("unknown protocol \"sctp\""), "{e}");
    }

    #[test]
    fn duplicates_are_per_protocol() {
        let a: Publish = "80:80".parse().unwrap();
        let b: Publish = "80:81/udp".parse().unwrap();
        let c: Publish = "80:82".parse().unwrap();
        assert!(check_unique(&[a, b]).is_ok());
        assert!(matches!(
            check_unique(&[a, b, c]),
            Err(PublishError::Duplicate(_))
        ));
    }

    #[test]
    fn a_bound_port_is_in_use() {
        let held = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let p = Publish {
            host_port: port,
            container_port: 80,
            protocol: Protocol::Tcp,
        };
        assert_eq!(
            p.check_host_port_free(),
            Err(PublishError::InUse(format!("{port}/tcp")))
        );
        drop(held);
        assert_eq!(p.check_host_port_free(), Ok(()));
    }
}
