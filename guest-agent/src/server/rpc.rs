//! The RPC port: frames are read with a size limit, each request runs as its own task in the
//! service, answers go back through one writer task.

use std::sync::Arc;

use capsule_protocol::frame::{FrameHeader, HEADER_LEN, TYPE_REQUEST};
use capsule_protocol::rpc;
use capsule_protocol::{Code, RpcError, MAX_MESSAGE_SIZE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};

use crate::service::Agent;
use crate::transport::BoxStream;

/// Most requests in flight on one connection.
pub const MAX_IN_FLIGHT: usize = 64;
/// Cap on a request's own timeout.
pub const MAX_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Serves one RPC connection.
pub async fn serve(agent: Arc<Agent>, conn: BoxStream) {
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
            let frame = capsule_protocol::frame::Frame { header: h, payload };
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
