//! Socket bridges: connecting or listening inside a container with a socket the backend made
//! in its network namespace; accepted connections are bridged to new connections to the host.
//! (A connected bridge waits in [`crate::attach`] until the host attaches its stream.)

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use capsule_protocol::stream::{StreamHeader, StreamKind};
use tokio::io::AsyncWriteExt;

use crate::sys;
use crate::transport::{BoxStream, Transport};

/// A bridge address inside a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    Inet(SocketAddr),
    Unix(String),
}

impl Addr {
    pub fn family(&self) -> i32 {
        match self {
            Addr::Inet(SocketAddr::V4(_)) => libc::AF_INET,
            Addr::Inet(SocketAddr::V6(_)) => libc::AF_INET6,
            Addr::Unix(_) => libc::AF_UNIX,
        }
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Inet(a) => write!(f, "{a}"),
            Addr::Unix(p) => write!(f, "unix:{p}"),
        }
    }
}

impl Addr {
    fn sockaddr(&self) -> sys::SockAddr {
        match self {
            Addr::Inet(a) => sys::SockAddr::inet(a),
            Addr::Unix(p) => sys::SockAddr::unix(p),
        }
    }
}

fn into_stream(fd: OwnedFd, a: &Addr) -> std::io::Result<BoxStream> {
    Ok(match a {
        Addr::Inet(_) => Box::new(tokio::net::TcpStream::from_std(std::net::TcpStream::from(
            fd,
        ))?),
        Addr::Unix(_) => Box::new(tokio::net::UnixStream::from_std(
            std::os::unix::net::UnixStream::from(fd),
        )?),
    })
}

/// Connects a (non-blocking) socket to `a`.
pub async fn connect(fd: OwnedFd, a: &Addr) -> std::io::Result<BoxStream> {
    if let Err(e) = sys::connect(&fd, &a.sockaddr()) {
        if e.raw_os_error() != Some(libc::EINPROGRESS) && e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
        let afd = sys::async_fd(fd)?;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), afd.writable())
            .await
            .map_err(|_| std::io::Error::from_raw_os_error(libc::ETIMEDOUT))??;
        let fd = afd.into_inner();
        let err = sys::socket_error(&fd);
        if err != 0 {
            return Err(std::io::Error::from_raw_os_error(err));
        }
        return into_stream(fd, a);
    }
    into_stream(fd, a)
}

/// A listening socket of a listen-mode bridge.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Binds and listens; returns the listener and the bound port.
pub fn listen(fd: OwnedFd, a: &Addr, backlog: i32) -> std::io::Result<(Listener, u32)> {
    sys::bind_listen(&fd, &a.sockaddr(), backlog)?;
    Ok(match a {
        Addr::Inet(_) => {
            let l = std::net::TcpListener::from(fd);
            let port = l.local_addr()?.port();
            (
                Listener::Tcp(tokio::net::TcpListener::from_std(l)?),
                u32::from(port),
            )
        }
        Addr::Unix(_) => (
            Listener::Unix(tokio::net::UnixListener::from_std(
                std::os::unix::net::UnixListener::from(fd),
            )?),
            0,
        ),
    })
}

/// Accepts connections and bridges each to a new connection to the host's `host_port`.
pub async fn accept_loop(l: Listener, transport: Transport, host_port: u32, id: u64) {
    loop {
        let conn: BoxStream = match &l {
            Listener::Tcp(t) => match t.accept().await {
                Ok((s, _)) => Box::new(s),
                Err(e) => {
                    log::warn!("listener {id}: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            Listener::Unix(u) => match u.accept().await {
                Ok((s, _)) => Box::new(s),
                Err(e) => {
                    log::warn!("listener {id}: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let transport = transport.clone();
        tokio::spawn(async move {
            let mut conn = conn;
            let mut host = match transport.connect_host(host_port).await {
                Ok(h) => h,
                Err(e) => {
                    log::warn!("listener {id}: host port {host_port}: {e}");
                    return;
                }
            };
            if host
                .write_all(&StreamHeader::new(StreamKind::Accepted, id).encode())
                .await
                .is_err()
            {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut conn, &mut host).await;
        });
    }
}
