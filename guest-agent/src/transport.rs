//! The transport, the agent's bottom layer: how the host reaches the agent (vsock, or a Unix
//! socket speaking the hybrid-vsock handshake in tests) and how the agent reaches the host.

use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncWrite};

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
                    capsule_protocol::HOST_CID,
                    port,
                ))
                .await?;
                Ok(Box::new(s))
            }
            Transport::Unix(path) => Ok(Box::new(
                tokio::net::UnixStream::connect(capsule_protocol::hybrid::forward_path(path, port))
                    .await?,
            )),
        }
    }
}
