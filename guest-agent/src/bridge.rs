//! Socket bridges: connecting or listening inside a container with a socket the backend made
//! in its network namespace, and copying bytes to and from host streams.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use protocol::stream::{StreamHeader, StreamKind};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stream::{BoxStream, Transport};

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

/// Encodes a sockaddr.
fn sockaddr(a: &Addr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        Addr::Inet(SocketAddr::V4(v4)) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        Addr::Inet(SocketAddr::V6(v6)) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
        Addr::Unix(p) => {
            // SAFETY: sockaddr_un is plain old data.
            let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (d, s) in sun.sun_path.iter_mut().zip(p.bytes()) {
                *d = s as libc::c_char;
            }
            // SAFETY: as above, for sockaddr_un.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sun) };
            std::mem::size_of::<libc::sa_family_t>() + p.len() + 1
        }
    };
    (ss, len as libc::socklen_t)
}

fn last() -> std::io::Error {
    std::io::Error::last_os_error()
}

pub fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on a descriptor the caller holds.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
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
    let (ss, len) = sockaddr(a);
    // SAFETY: connect with a valid sockaddr of `len` bytes.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r < 0 {
        let e = last();
        if e.raw_os_error() != Some(libc::EINPROGRESS) && e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
        // SAFETY: an OwnedFd always returns the descriptor it owns, open until dropped.
        let afd = unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), afd.writable())
            .await
            .map_err(|_| std::io::Error::from_raw_os_error(libc::ETIMEDOUT))??;
        let fd = afd.into_inner();
        let mut err: libc::c_int = 0;
        let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: SO_ERROR into a local int.
        unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut l,
            )
        };
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
    let one: libc::c_int = 1;
    // SAFETY: SO_REUSEADDR with a local int.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            4,
        )
    };
    let (ss, len) = sockaddr(a);
    // SAFETY: bind/listen with a valid sockaddr.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    } < 0
    {
        return Err(last());
    }
    // SAFETY: listen(2) on our socket.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } < 0 {
        return Err(last());
    }
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

/// Copies between a terminal master and a host stream until either side ends.
pub async fn copy_tty(master: AsyncFd<OwnedFd>, conn: BoxStream) {
    let (mut rd, mut wr) = tokio::io::split(conn);
    let master = std::sync::Arc::new(master);
    let m2 = master.clone();
    let to_host = async move {
        let mut buf = [0u8; 8192];
        loop {
            let mut guard = match m2.readable().await {
                Ok(g) => g,
                Err(_) => break,
            };
            match guard.try_io(|fd| {
                // SAFETY: read into a local buffer of the length passed.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(last())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(0)) | Ok(Err(_)) => break, // EIO once the slave side is closed
                Ok(Ok(n)) => {
                    if wr.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                Err(_would_block) => continue,
            }
        }
        let _ = wr.shutdown().await;
    };
    let to_tty = async move {
        let mut buf = [0u8; 8192];
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut off = 0;
            while off < n {
                let mut guard = match master.writable().await {
                    Ok(g) => g,
                    Err(_) => return,
                };
                match guard.try_io(|fd| {
                    // SAFETY: write from the live part of a local buffer.
                    let w = unsafe {
                        libc::write(fd.as_raw_fd(), buf[off..n].as_ptr().cast(), n - off)
                    };
                    if w < 0 {
                        Err(last())
                    } else {
                        Ok(w as usize)
                    }
                }) {
                    Ok(Ok(w)) => off += w,
                    Ok(Err(_)) => return,
                    Err(_) => continue,
                }
            }
        }
    };
    let input = tokio::spawn(to_tty);
    to_host.await;
    input.abort();
}
