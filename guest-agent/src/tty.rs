//! Terminals of `tty` processes: opening a pseudo-terminal of a given size, resizing it, and
//! copying between its master and a host stream.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use capsule_protocol::{pb, RpcError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::sys;
use crate::transport::BoxStream;

/// A new pseudo-terminal, (master, slave), both close-on-exec, of `size` when given: on the
/// container's own devpts master `ptmx` when it has one, else the guest's.
pub fn open_pty(
    ptmx: Option<OwnedFd>,
    size: Option<&pb::TtySize>,
) -> Result<(OwnedFd, OwnedFd), RpcError> {
    let (master, slave) = match ptmx {
        Some(master) => {
            let slave = sys::pty_peer(&master)
                .map_err(|e| RpcError::from_errno(e, "TIOCGPTPEER").with_field("tty"))?;
            (master, slave)
        }
        None => sys::openpty().map_err(|e| RpcError::from_errno(e, "openpty").with_field("tty"))?,
    };
    if let Some(s) = size {
        set_winsize(master.as_raw_fd(), s)?;
    }
    Ok((master, slave))
}

/// Sets a terminal's size.
pub fn set_winsize(fd: RawFd, s: &pb::TtySize) -> Result<(), RpcError> {
    let (Ok(rows), Ok(cols)) = (u16::try_from(s.rows), u16::try_from(s.cols)) else {
        return Err(RpcError::invalid("size", "rows and cols must fit 16 bits"));
    };
    sys::set_winsize(fd, rows, cols)
        .map_err(|e| RpcError::from_errno(e, "TIOCSWINSZ").with_field("size"))
}

/// Copies between a terminal master and a host stream until either side ends.
pub async fn copy_tty(master: OwnedFd, conn: BoxStream) -> std::io::Result<()> {
    sys::set_nonblocking(master.as_raw_fd());
    let master = Arc::new(sys::async_fd(master)?);
    let (mut rd, mut wr) = tokio::io::split(conn);
    let m2 = master.clone();
    let to_host = async move {
        let mut buf = [0u8; 8192];
        loop {
            let mut guard = match m2.readable().await {
                Ok(g) => g,
                Err(_) => break,
            };
            match guard.try_io(|fd| sys::read(fd.as_raw_fd(), &mut buf)) {
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
                match guard.try_io(|fd| sys::write(fd.as_raw_fd(), &buf[off..n])) {
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
    Ok(())
}
