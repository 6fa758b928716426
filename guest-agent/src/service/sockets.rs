//! Sockets: ConnectSocket, ListenSocket, CloseListener — bridges between host streams and
//! sockets the backend opens in a container's network namespace ([`crate::bridge`]).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use capsule_protocol::validate::absolute_path;
use capsule_protocol::{pb, Code, RpcError};

use super::{Agent, ContainerEntry};
use crate::bridge::{self, Addr};
use crate::lock::lock;

/// Most connected bridges waiting for their stream.
pub const MAX_PENDING_BRIDGES: usize = 256;
/// Most listen-mode bridges.
pub const MAX_LISTENERS: usize = 256;

impl Agent {
    async fn container_socket(
        self: &Arc<Self>,
        c: &Arc<ContainerEntry>,
        family: i32,
    ) -> Result<OwnedFd, RpcError> {
        let c2 = c.clone();
        Self::blocking(move || Ok(c2.ops.socket(family, libc::SOCK_STREAM)?)).await
    }

    pub(super) async fn connect_socket(
        self: &Arc<Self>,
        r: pb::ConnectSocketRequest,
    ) -> Result<pb::ConnectSocketResponse, RpcError> {
        let c = self.container("container", &r.container)?;
        let addr = socket_address(r.family, &r.address, r.port)?;
        if self.attachments.bridges_waiting() >= MAX_PENDING_BRIDGES {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                "too many bridges waiting for their stream",
            ));
        }
        let fd = self.container_socket(&c, addr.family()).await?;
        let stream = bridge::connect(fd, &addr).await.map_err(|e| {
            RpcError::from_errno(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("connecting to {addr} in {:?}: {e}", c.name),
            )
            .with_field("address")
        })?;
        let id = self.id();
        self.attachments.add_bridge(id, stream);
        Ok(pb::ConnectSocketResponse { bridge_id: id })
    }

    pub(super) async fn listen_socket(
        self: &Arc<Self>,
        r: pb::ListenSocketRequest,
    ) -> Result<pb::ListenSocketResponse, RpcError> {
        let c = self.container("container", &r.container)?;
        let addr = socket_address(r.family, &r.address, r.port)?;
        if r.host_port == 0 {
            return Err(RpcError::invalid("host_port", "host port 0"));
        }
        if r.backlog > 4096 {
            return Err(RpcError::invalid("backlog", "more than 4096"));
        }
        if lock(&c.listeners).len() >= MAX_LISTENERS {
            return Err(RpcError::new(Code::ResourceExhausted, "too many listeners"));
        }
        let fd = self.container_socket(&c, addr.family()).await?;
        let backlog = if r.backlog == 0 {
            128
        } else {
            r.backlog as i32
        };
        let (listener, bound_port) = bridge::listen(fd, &addr, backlog).map_err(|e| {
            RpcError::from_errno(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("listening on {addr}: {e}"),
            )
            .with_field("address")
        })?;
        let id = self.id();
        let transport = self.transport.clone();
        let host_port = r.host_port;
        let handle = tokio::spawn(bridge::accept_loop(listener, transport, host_port, id));
        lock(&c.listeners).insert(id, handle);
        Ok(pb::ListenSocketResponse {
            listener_id: id,
            bound_port,
        })
    }

    pub(super) async fn close_listener(
        self: &Arc<Self>,
        r: pb::CloseListenerRequest,
    ) -> Result<pb::Empty, RpcError> {
        let c = self.container("container", &r.container)?;
        let removed = lock(&c.listeners).remove(&r.listener_id);
        match removed {
            Some(h) => {
                h.abort();
                Ok(pb::Empty {})
            }
            None => Err(RpcError::from_errno(
                libc::ENOENT,
                format!("no listener {}", r.listener_id),
            )
            .with_field("listener_id")),
        }
    }
}

/// Parses a socket address of a bridge request.
pub fn socket_address(family: i32, address: &str, port: u32) -> Result<Addr, RpcError> {
    let fam = pb::SocketFamily::try_from(family)
        .map_err(|_| RpcError::invalid("family", format!("unknown family {family}")))?;
    match fam {
        pb::SocketFamily::Unix => {
            absolute_path("address", address)?;
            if address.len() >= 108 {
                return Err(RpcError::invalid(
                    "address",
                    "longer than a sockaddr_un path",
                ));
            }
            Ok(Addr::Unix(address.to_string()))
        }
        pb::SocketFamily::Inet | pb::SocketFamily::Inet6 => {
            let port = u16::try_from(port)
                .map_err(|_| RpcError::invalid("port", format!("{port} is not a port")))?;
            let ip: IpAddr = address.parse().map_err(|_| {
                RpcError::invalid(
                    "address",
                    format!("{address:?} is not a numeric IP address"),
                )
            })?;
            if ip.is_ipv4() != (fam == pb::SocketFamily::Inet) {
                return Err(RpcError::invalid(
                    "address",
                    format!("{address} does not match family {fam:?}"),
                ));
            }
            Ok(Addr::Inet(SocketAddr::new(ip, port)))
        }
    }
}
