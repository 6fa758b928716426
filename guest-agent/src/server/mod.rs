//! The server: accepts connections on the RPC port ([`rpc`], calls into the service) and the
//! stream port ([`stream`], hands attachments their stream), over vsock or, in tests, the
//! hybrid-vsock Unix socket.

pub mod rpc;
pub mod stream;

use std::sync::Arc;

use capsule_protocol::{AGENT_PORT, STREAM_PORT};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::service::Agent;
use crate::transport::{BoxStream, Transport};

/// Serves until the agent is told to shut down; returns the grace period asked for.
pub async fn serve(agent: Arc<Agent>) -> anyhow::Result<u32> {
    let mut shutdown = agent.shutdown_requests();
    let accept = {
        let agent = agent.clone();
        async move {
            match agent.transport().clone() {
                Transport::Vsock => serve_vsock(agent).await,
                Transport::Unix(path) => serve_unix(agent, path).await,
            }
        }
    };
    tokio::select! {
        r = accept => { r?; Ok(0) }
        r = shutdown.wait_for(|s| s.is_some()) => {
            Ok(r.ok().and_then(|s| *s).unwrap_or(0))
        }
    }
}

async fn serve_vsock(agent: Arc<Agent>) -> anyhow::Result<()> {
    use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};
    let rpc = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, AGENT_PORT))?;
    let streams = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, STREAM_PORT))?;
    log::info!("listening on vsock ports {AGENT_PORT} (RPC) and {STREAM_PORT} (streams)");
    let a2 = agent.clone();
    let stream_loop = async move {
        loop {
            let (s, peer) = streams.accept().await?;
            if peer.cid() != capsule_protocol::HOST_CID {
                log::warn!("stream connection from CID {} refused", peer.cid());
                continue;
            }
            tokio::spawn(stream::serve(a2.attachments(), Box::new(s)));
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    };
    let rpc_loop = async move {
        loop {
            let (s, peer) = rpc.accept().await?;
            if peer.cid() != capsule_protocol::HOST_CID {
                log::warn!("RPC connection from CID {} refused", peer.cid());
                continue;
            }
            tokio::spawn(rpc::serve(agent.clone(), Box::new(s)));
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    };
    tokio::try_join!(stream_loop, rpc_loop)?;
    Ok(())
}

async fn serve_unix(agent: Arc<Agent>, path: std::path::PathBuf) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(&path);
    let l = tokio::net::UnixListener::bind(&path)?;
    log::info!("listening on {} (hybrid-vsock handshake)", path.display());
    loop {
        let (s, _) = l.accept().await?;
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut s = tokio::io::BufReader::new(s);
            let mut line = Vec::new();
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                (&mut s)
                    .take(capsule_protocol::hybrid::MAX_LINE as u64)
                    .read_until(b'\n', &mut line),
            )
            .await;
            if !matches!(read, Ok(Ok(_))) {
                return;
            }
            let Some(line) = line.strip_suffix(b"\n") else {
                return;
            };
            let Ok(port) = capsule_protocol::hybrid::parse_connect_line(line) else {
                return;
            };
            if port != AGENT_PORT && port != STREAM_PORT {
                return; // nothing listens there: the connection is reset
            }
            if s.get_mut()
                .write_all(capsule_protocol::hybrid::ok_line(port).as_bytes())
                .await
                .is_err()
            {
                return;
            }
            // The BufReader may hold bytes sent right after the handshake line.
            let stream: BoxStream = Box::new(s);
            if port == AGENT_PORT {
                rpc::serve(agent, stream).await;
            } else {
                stream::serve(agent.attachments(), stream).await;
            }
        });
    }
}
