//! A blocking, thread-safe client of the agent.
//!
//! One RPC connection carries any number of concurrent calls (ttrpc stream ids, odd, client
//! chosen); a reader thread hands each response to its caller. Streams (stdio, socket bridges)
//! are separate connections to the stream port, opened with [`Client::attach`].
//!
//! The host reaches guest ports through a [`Connector`]: [`HybridVsock`] speaks the hybrid-vsock
//! handshake of capsule's VMM and of Firecracker (`CONNECT <port>\n` → `OK <n>\n` on a Unix
//! socket); `capsule-agent serve --unix PATH` offers the same handshake, so tests use the same code.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;

use crate::frame::{self, FrameError, TYPE_REQUEST};
use crate::methods::{self, Method};
use crate::status::RpcError;
use crate::stream::{self, StreamHeader, StreamKind};
use crate::{pb, AGENT_PORT, MAX_MESSAGE_SIZE, STREAM_PORT};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting to the agent failed.
    #[error("connecting to guest port {port}")]
    Connect {
        port: u32,
        #[source]
        source: io::Error,
    },
    /// The hybrid-vsock handshake was refused or malformed.
    #[error("hybrid vsock handshake for port {port}: {reason}")]
    Handshake { port: u32, reason: String },
    /// Writing or reading frames failed.
    #[error("RPC connection")]
    Frame(#[source] FrameError),
    /// The connection is gone (agent exited, VM stopped).
    #[error("the agent closed the RPC connection")]
    Disconnected,
    /// No answer within the timeout.
    #[error("{method}: no answer from the agent within {timeout:?}")]
    Timeout { method: String, timeout: Duration },
    /// The answer is not valid protobuf.
    #[error("{method}: undecodable answer")]
    Decode {
        method: String,
        #[source]
        source: prost::DecodeError,
    },
    /// The agent answered with an error.
    #[error("{method}")]
    Rpc {
        method: String,
        #[source]
        source: RpcError,
    },
}

impl ClientError {
    /// The agent's error, if the agent answered with one.
    pub fn rpc(&self) -> Option<&RpcError> {
        match self {
            ClientError::Rpc { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Opens a byte stream to a guest port.
pub trait Connector: Send + Sync {
    fn connect(&self, port: u32) -> Result<UnixStream, ClientError>;
}

/// The hybrid-vsock Unix socket of a VM (or of `capsule-agent serve --unix`).
#[derive(Debug, Clone)]
pub struct HybridVsock {
    path: PathBuf,
    handshake_timeout: Duration,
}

impl HybridVsock {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        HybridVsock {
            path: path.into(),
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// How long to wait for `OK` (the guest must accept in that time).
    pub fn with_handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Performs the hybrid-vsock handshake on a connected Unix socket.
pub fn hybrid_handshake(
    s: &mut UnixStream,
    port: u32,
    timeout: Duration,
) -> Result<(), ClientError> {
    let hs = |reason: String| ClientError::Handshake { port, reason };
    s.set_read_timeout(Some(timeout))
        .map_err(|e| hs(e.to_string()))?;
    s.write_all(crate::hybrid::connect_line(port).as_bytes())
        .map_err(|e| hs(format!("sending CONNECT: {e}")))?;
    // Byte by byte: nothing after the newline belongs to the handshake.
    let mut line = Vec::with_capacity(crate::hybrid::MAX_LINE);
    loop {
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => {
                return Err(hs(
                    "the guest did not accept the connection (nothing listening on that port, \
                     or the guest is not running or not answering)"
                        .into(),
                ))
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if line.len() >= crate::hybrid::MAX_LINE => {
                return Err(hs("answer line too long".into()))
            }
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(hs(format!("waiting for OK: {e}"))),
        }
    }
    crate::hybrid::parse_ok_line(&line).map_err(|e| hs(e.to_string()))?;
    s.set_read_timeout(None).map_err(|e| hs(e.to_string()))?;
    Ok(())
}

impl Connector for HybridVsock {
    fn connect(&self, port: u32) -> Result<UnixStream, ClientError> {
        let mut s = UnixStream::connect(&self.path)
            .map_err(|source| ClientError::Connect { port, source })?;
        hybrid_handshake(&mut s, port, self.handshake_timeout)?;
        Ok(s)
    }
}

type Pending = HashMap<u32, mpsc::Sender<Result<Vec<u8>, RpcError>>>;

struct Shared {
    pending: Mutex<Pending>,
    dead: AtomicBool,
}

/// A connection to the agent's RPC port.
pub struct Client {
    connector: Arc<dyn Connector>,
    writer: Mutex<UnixStream>,
    shared: Arc<Shared>,
    next_id: AtomicU32,
    timeout: Duration,
    max_message: u32,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    /// Connects to the agent's RPC port through `connector`.
    pub fn connect(connector: impl Connector + 'static) -> Result<Client, ClientError> {
        Self::connect_arc(Arc::new(connector))
    }

    /// Like [`Client::connect`], with a shared connector.
    pub fn connect_arc(connector: Arc<dyn Connector>) -> Result<Client, ClientError> {
        let conn = connector.connect(AGENT_PORT)?;
        let reader_conn = conn.try_clone().map_err(|source| ClientError::Connect {
            port: AGENT_PORT,
            source,
        })?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            dead: AtomicBool::new(false),
        });
        let max_message = MAX_MESSAGE_SIZE;
        let reader_shared = shared.clone();
        let reader = std::thread::Builder::new()
            .name("capsule-rpc-reader".into())
            .spawn(move || read_loop(reader_conn, reader_shared, max_message))
            .map_err(|source| ClientError::Connect {
                port: AGENT_PORT,
                source,
            })?;
        Ok(Client {
            connector,
            writer: Mutex::new(conn),
            shared,
            next_id: AtomicU32::new(1),
            timeout: Duration::from_secs(30),
            max_message,
            reader: Some(reader),
        })
    }

    /// Default timeout of calls (30 s unless changed). WaitProcess has none.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest request this client sends (default [`MAX_MESSAGE_SIZE`]). Tests raise it to
    /// check that the agent refuses oversized requests itself.
    pub fn with_max_message_size(mut self, max: u32) -> Self {
        self.max_message = max;
        self
    }

    /// Calls `M` with the default timeout.
    pub fn call<M: Method>(&self, req: &M::Request) -> Result<M::Response, ClientError> {
        self.call_timeout::<M>(req, Some(self.timeout))
    }

    /// Calls `M`; `None` waits as long as it takes.
    pub fn call_timeout<M: Method>(
        &self,
        req: &M::Request,
        timeout: Option<Duration>,
    ) -> Result<M::Response, ClientError> {
        let payload = self.call_raw(M::SERVICE, M::NAME, req.encode_to_vec(), timeout)?;
        M::Response::decode(&payload[..]).map_err(|source| ClientError::Decode {
            method: M::NAME.to_string(),
            source,
        })
    }

    /// Sends an already encoded request to any (service, method) and returns the raw answer.
    pub fn call_raw(
        &self,
        service: &str,
        method: &str,
        payload: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, ClientError> {
        if self.shared.dead.load(Ordering::Acquire) {
            return Err(ClientError::Disconnected);
        }
        let id = self.next_id.fetch_add(2, Ordering::Relaxed) | 1;
        let envelope = pb::Request {
            service: service.to_string(),
            method: method.to_string(),
            payload,
            timeout_nano: timeout.map_or(0, |t| i64::try_from(t.as_nanos()).unwrap_or(i64::MAX)),
            metadata: Vec::new(),
        };
        let buf = frame::encode_frame(
            id,
            TYPE_REQUEST,
            0,
            &envelope.encode_to_vec(),
            self.max_message,
        )
        .map_err(ClientError::Frame)?;
        let (tx, rx) = mpsc::channel();
        lock(&self.shared.pending).insert(id, tx);
        let written = lock(&self.writer).write_all(&buf);
        if let Err(e) = written {
            lock(&self.shared.pending).remove(&id);
            return Err(ClientError::Frame(FrameError::Io(e)));
        }
        let answer = match timeout {
            Some(t) => rx.recv_timeout(t),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match answer {
            Ok(Ok(payload)) => Ok(payload),
            Ok(Err(source)) => Err(ClientError::Rpc {
                method: method.to_string(),
                source,
            }),
            Err(RecvTimeoutError::Timeout) => {
                lock(&self.shared.pending).remove(&id);
                Err(ClientError::Timeout {
                    method: method.to_string(),
                    timeout: timeout.unwrap_or_default(),
                })
            }
            Err(RecvTimeoutError::Disconnected) => Err(ClientError::Disconnected),
        }
    }

    /// Opens a stream on the guest's stream port and attaches it (see [`stream::attach`]).
    pub fn attach(&self, kind: StreamKind, id: u64) -> Result<UnixStream, ClientError> {
        let mut s = self.connector.connect(STREAM_PORT)?;
        stream::attach(&mut s, StreamHeader::new(kind, id)).map_err(|e| ClientError::Rpc {
            method: format!("attach {kind:?} stream"),
            source: RpcError::from_errno(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("agent refused {kind:?} stream for id {id}: {e}"),
            ),
        })?;
        Ok(s)
    }

    /// `Health.Check`.
    pub fn health(&self) -> Result<pb::HealthCheckResponse, ClientError> {
        self.call::<methods::Check>(&pb::CheckRequest::default())
    }

    /// `Health.Version`.
    pub fn version(&self) -> Result<pb::VersionCheckResponse, ClientError> {
        self.call::<methods::Version>(&pb::CheckRequest::default())
    }

    /// `Agent.WaitProcess`, without a timeout.
    pub fn wait_process(
        &self,
        container: &str,
        exec_id: u64,
    ) -> Result<pb::WaitProcessResponse, ClientError> {
        self.call_timeout::<methods::WaitProcess>(
            &pb::WaitProcessRequest {
                container: container.to_string(),
                exec_id,
            },
            None,
        )
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = lock(&self.writer).shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read_loop(mut conn: UnixStream, shared: Arc<Shared>, max: u32) {
    loop {
        match frame::read_frame(&mut conn, max) {
            Ok(f) => {
                let Some(tx) = lock(&shared.pending).remove(&f.header.stream_id) else {
                    log::debug!("answer for unknown stream {}", f.header.stream_id);
                    continue;
                };
                let _ = tx.send(crate::rpc::decode_response(&f));
            }
            Err(FrameError::Oversized { header, .. }) => {
                if let Some(tx) = lock(&shared.pending).remove(&header.stream_id) {
                    let _ = tx.send(Err(RpcError::new(
                        crate::Code::ResourceExhausted,
                        format!("answer of {} bytes exceeds {max}", header.length),
                    )));
                }
            }
            Err(e) => {
                log::debug!("RPC reader ends: {e}");
                break;
            }
        }
    }
    shared.dead.store(true, Ordering::Release);
    // Dropping the senders wakes every waiting caller with Disconnected.
    lock(&shared.pending).clear();
}
