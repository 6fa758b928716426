//! capsule's guest-agent API: the protobuf schema (`proto/capsule/agent/v1/agent.proto`), ttrpc
//! framing, error codes carrying the guest errno, the stream and upcall headers, and a blocking
//! client for the host. It is the one home of the wire knowledge host and guest share: the
//! hybrid-vsock handshake ([`hybrid`]), container flags, the name rule and the default PATH
//! ([`container`]), rlimit and capability names ([`process`]), limits and checks
//! ([`validate`]).
//!
//! Ports (guest side, virtio-vsock): [`AGENT_PORT`] serves RPC, [`STREAM_PORT`] takes exec stdio
//! and connect-mode socket bridges; the guest calls the host on [`UPCALL_PORT`] for request-key
//! upcalls. `docs/api.md` describes every call.

pub mod client;
pub mod container;
pub mod frame;
pub mod methods;
pub mod process;
pub mod rpc;
pub mod status;
pub mod stream;
pub mod upcall;
pub mod validate;

/// Types generated from `agent.proto` (package `capsule.agent.v1`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/capsule.agent.v1.rs"));
}

/// The hybrid-vsock handshake (both sides) and the `<uds>_<port>` rule.
pub use capsule_hybrid_vsock as hybrid;

pub use client::{Client, ClientError, Connector, HybridVsock};
pub use container::DEFAULT_PATH;
pub use methods::Method;
pub use status::{Code, RpcError};
pub use stream::{StreamHeader, StreamKind};

/// Version of this API; bumped only for changes old peers would misread.
pub const PROTOCOL_VERSION: u32 = 1;
/// Guest vsock port of the RPC service.
pub const AGENT_PORT: u32 = 1024;
/// Guest vsock port for exec stdio streams and connect-mode socket bridges.
pub const STREAM_PORT: u32 = 1025;
/// Host vsock port (CID 2) the guest's request-key helper sends upcalls to.
pub const UPCALL_PORT: u32 = 1026;
/// vsock CID of the host.
pub const HOST_CID: u32 = 2;
/// Largest frame payload either side sends or accepts (ttrpc's default, 4 MiB).
pub const MAX_MESSAGE_SIZE: u32 = 4 << 20;
