//! Transports (vsock, or a Unix socket speaking the hybrid-vsock handshake for tests) and the
//! stream port: exec stdio and connect-mode bridges attached by a StreamHeader.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use protocol::stream::{StreamHeader, StreamKind, STREAM_HEADER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::agent::Agent;

/// A bidirectional byte stream.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}
pub type BoxStream = Box<dyn AsyncStream>;

/// How the agent is reached and how it reaches the host.
#[derive(Debug, Clone)]
pub enum Transport {
    /// AF_VSOCK: listen on guest ports, connect to CID 2.
    Vsock,
    /// A Unix socket at `path` taking `CONNECT <port>\n`; the host's port P is `path_P`.
    Unix(PathBuf),
}

impl Transport {
    /// Connects to a host port.
    pub async fn connect_host(&self, port: u32) -> std::io::Result<BoxStream> {
        match self {
            Transport::Vsock => {
                let s = tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(
                    protocol::HOST_CID,
                    port,
                ))
                .await?;
                Ok(Box::new(s))
            }
            Transport::Unix(path) => Ok(Box::new(
                tokio::net::UnixStream::connect(protocol::hybrid::forward_path(path, port)).await?,
            )),
        }
    }
}

/// Serves one connection on the stream port: header, answer, then bytes.
pub async fn serve_stream(agent: Arc<Agent>, mut conn: BoxStream) {
    let mut hdr = [0u8; STREAM_HEADER_LEN];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.read_exact(&mut hdr),
    )
    .await;
    if !matches!(read, Ok(Ok(_))) {
        return;
    }
    let header = match StreamHeader::decode(&hdr) {
        Ok(h) => h,
        Err(e) => {
            log::warn!("stream header refused: {e}");
            let _ = conn.write_all(&libc::EINVAL.to_be_bytes()).await;
            return;
        }
    };
    if let Err(errno) = attach(agent, conn, header).await {
        log::debug!("stream {header:?} refused: errno {errno}");
    }
}

async fn ack(conn: &mut BoxStream, errno: i32) -> Result<(), i32> {
    conn.write_all(&errno.to_be_bytes())
        .await
        .map_err(|_| libc::EPIPE)?;
    if errno != 0 {
        return Err(errno);
    }
    Ok(())
}

fn take(slot: &std::sync::Mutex<Option<OwnedFd>>) -> Option<OwnedFd> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

async fn attach(agent: Arc<Agent>, mut conn: BoxStream, h: StreamHeader) -> Result<(), i32> {
    match h.kind {
        StreamKind::Socket => {
            let Some(mut sock) = agent.take_bridge(h.id) else {
                return ack(&mut conn, libc::ENOENT).await;
            };
            ack(&mut conn, 0).await?;
            let _ = tokio::io::copy_bidirectional(&mut conn, &mut sock).await;
            Ok(())
        }
        StreamKind::Accepted => ack(&mut conn, libc::EINVAL).await,
        kind => {
            let Some(e) = agent.exec_by_id(h.id) else {
                return ack(&mut conn, libc::ENOENT).await;
            };
            let slot = match kind {
                StreamKind::Stdin => &e.stdin,
                StreamKind::Stdout => &e.stdout,
                StreamKind::Stderr => &e.stderr,
                _ => &e.tty,
            };
            let Some(fd) = take(slot) else {
                // Not a streamed fd of this process, or already attached.
                return ack(&mut conn, libc::EBUSY).await;
            };
            ack(&mut conn, 0).await?;
            match kind {
                StreamKind::Stdin => {
                    let mut pipe =
                        tokio::net::unix::pipe::Sender::from_owned_fd(fd).map_err(|_| libc::EIO)?;
                    let (mut rd, _wr) = tokio::io::split(conn);
                    tokio::select! {
                        _ = tokio::io::copy(&mut rd, &mut pipe) => {}
                        _ = e.close_stdin.notified() => {}
                    }
                    e.stdin_closed.store(true, Ordering::Release);
                }
                StreamKind::Stdout | StreamKind::Stderr => {
                    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
                        .map_err(|_| libc::EIO)?;
                    let _ = tokio::io::copy(&mut pipe, &mut conn).await;
                    let _ = conn.shutdown().await;
                }
                _ => {
                    crate::bridge::set_nonblocking(fd.as_raw_fd());
                    // SAFETY: an OwnedFd always returns the descriptor it owns, open until dropped.
                    let master =
                        unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|_| libc::EIO)?;
                    crate::bridge::copy_tty(master, conn).await;
                }
            }
            Ok(())
        }
    }
}
