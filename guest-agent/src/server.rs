//! Accepts connections (vsock ports, or the hybrid-vsock Unix socket in tests) and serves the
//! RPC protocol: frames are read with a size limit, each request runs as its own task, answers
//! go back through one writer task.

use std::sync::Arc;

use protocol::frame::{FrameHeader, HEADER_LEN, TYPE_REQUEST};
use protocol::rpc;
use protocol::{Code, RpcError, AGENT_PORT, MAX_MESSAGE_SIZE, STREAM_PORT};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};

use crate::agent::Agent;
use crate::stream::{serve_stream, BoxStream, Transport};

/// Most requests in flight on one connection.
pub const MAX_IN_FLIGHT: usize = 64;
/// Cap on a request's own timeout.
pub const MAX_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Serves until the agent is told to shut down; returns the grace period asked for.
pub async fn serve(agent: Arc<Agent>) -> anyhow::Result<u32> {
    let mut shutdown = agent.shutdown.subscribe();
    let accept = {
        let agent = agent.clone();
        async move {
            match agent.transport.clone() {
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
            if peer.cid() != protocol::HOST_CID {
                log::warn!("stream connection from CID {} refused", peer.cid());
                continue;
            }
            tokio::spawn(serve_stream(a2.clone(), Box::new(s)));
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    };
    let rpc_loop = async move {
        loop {
            let (s, peer) = rpc.accept().await?;
            if peer.cid() != protocol::HOST_CID {
                log::warn!("RPC connection from CID {} refused", peer.cid());
                continue;
            }
            tokio::spawn(serve_rpc(agent.clone(), Box::new(s)));
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
                    .take(protocol::hybrid::MAX_LINE as u64)
                    .read_until(b'\n', &mut line),
            )
            .await;
            if !matches!(read, Ok(Ok(_))) {
                return;
            }
            let Some(line) = line.strip_suffix(b"\n") else {
                return;
            };
            let Ok(port) = protocol::hybrid::parse_connect_line(line) else {
                return;
            };
            if port != AGENT_PORT && port != STREAM_PORT {
                return; // nothing listens there: the connection is reset
            }
            if s.get_mut()
                .write_all(protocol::hybrid::ok_line(port).as_bytes())
                .await
                .is_err()
            {
                return;
            }
            // The BufReader may hold bytes sent right after the handshake line.
            let stream: BoxStream = Box::new(s);
            if port == AGENT_PORT {
                serve_rpc(agent, stream).await;
            } else {
                serve_stream(agent, stream).await;
            }
        });
    }
}

/// Serves one RPC connection.
pub async fn serve_rpc(agent: Arc<Agent>, conn: BoxStream) {
    let (mut rd, mut wr) = tokio::io::split(conn);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(async move {
        while let Some(buf) = rx.recv().await {
            if wr.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let mut hdr = [0u8; HEADER_LEN];
        if rd.read_exact(&mut hdr).await.is_err() {
            break;
        }
        let h = FrameHeader::decode(&hdr);
        if h.length > MAX_MESSAGE_SIZE {
            // Skip the payload without buffering it, then say why.
            let skipped = tokio::io::copy(
                &mut (&mut rd).take(u64::from(h.length)),
                &mut tokio::io::sink(),
            )
            .await;
            if !matches!(skipped, Ok(n) if n == u64::from(h.length)) {
                break;
            }
            let e = RpcError::new(
                Code::ResourceExhausted,
                format!("request of {} bytes exceeds the maximum message size of {MAX_MESSAGE_SIZE} bytes", h.length),
            );
            if tx
                .send(rpc::response_frame(h.stream_id, Err(e), MAX_MESSAGE_SIZE))
                .await
                .is_err()
            {
                break;
            }
            continue;
        }
        let mut payload = vec![0u8; h.length as usize];
        if rd.read_exact(&mut payload).await.is_err() {
            break;
        }
        if h.kind != TYPE_REQUEST || h.stream_id == 0 {
            log::debug!("ignoring frame type {} on stream {}", h.kind, h.stream_id);
            continue;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let agent = agent.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let frame = protocol::frame::Frame { header: h, payload };
            let result = match rpc::decode_request(&frame) {
                Err(e) => Err(e),
                Ok(req) => {
                    let call = agent.handle(&req.service, &req.method, &req.payload);
                    if req.timeout_nano > 0 {
                        let t = std::time::Duration::from_nanos(req.timeout_nano as u64)
                            .min(MAX_CALL_TIMEOUT);
                        match tokio::time::timeout(t, call).await {
                            Ok(r) => r,
                            Err(_) => Err(RpcError::new(
                                Code::DeadlineExceeded,
                                format!("{} did not finish within {t:?}", req.method),
                            )),
                        }
                    } else {
                        call.await
                    }
                }
            };
            let _ = tx
                .send(rpc::response_frame(h.stream_id, result, MAX_MESSAGE_SIZE))
                .await;
            drop(permit);
        });
    }
    drop(tx);
    let _ = writer.await;
}
