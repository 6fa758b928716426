//! The stream port: each connection opens with a stream header naming an attachment (a
//! process's stdin, stdout, stderr or terminal, or a connected socket bridge); the agent answers
//! with an errno and then copies bytes until either side ends.

use std::sync::Arc;

use capsule_protocol::stream::{StreamHeader, StreamKind, STREAM_HEADER_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::attach::Attachments;
use crate::transport::BoxStream;

/// Serves one connection on the stream port: header, answer, then bytes.
pub async fn serve(attachments: Arc<Attachments>, mut conn: BoxStream) {
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
    if let Err(errno) = attach(&attachments, conn, header).await {
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

async fn attach(
    attachments: &Attachments,
    mut conn: BoxStream,
    h: StreamHeader,
) -> Result<(), i32> {
    match h.kind {
        StreamKind::Socket => {
            let Some(mut sock) = attachments.take_bridge(h.id) else {
                return ack(&mut conn, libc::ENOENT).await;
            };
            ack(&mut conn, 0).await?;
            let _ = tokio::io::copy_bidirectional(&mut conn, &mut sock).await;
            Ok(())
        }
        StreamKind::Accepted => ack(&mut conn, libc::EINVAL).await,
        kind => {
            let Some(stdio) = attachments.stdio(h.id) else {
                return ack(&mut conn, libc::ENOENT).await;
            };
            let Some(fd) = stdio.take(kind) else {
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
                        _ = stdio.stdin_close_requested() => {}
                    }
                }
                StreamKind::Stdout | StreamKind::Stderr => {
                    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
                        .map_err(|_| libc::EIO)?;
                    let _ = tokio::io::copy(&mut pipe, &mut conn).await;
                    let _ = conn.shutdown().await;
                }
                _ => crate::tty::copy_tty(fd, conn)
                    .await
                    .map_err(|_| libc::EIO)?,
            }
            Ok(())
        }
    }
}
