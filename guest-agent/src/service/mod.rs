//! The service: one method per RPC, split by family as `agent.proto` and `docs/api.md` are —
//! health ([`health`]), containers ([`containers`], [`finish_root`]), processes ([`processes`]), sockets
//! ([`sockets`]), keys ([`keys`]), network ([`network`]), the container fd operations
//! ([`admin`]) — over the container and process tables. It validates every
//! request before the backend sees it and is transport-free, so it is unit-tested with a
//! test-double backend. What waits for a stream goes to [`crate::attach`], never to the server.

mod admin;
mod containers;
mod finish_root;
mod health;
mod keys;
mod network;
mod processes;
mod resources;

pub use resources::enable_controllers;
mod sockets;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use capsule_protocol::methods::{self as m, Method};
use capsule_protocol::{pb, validate, Code, RpcError};
use prost::Message;
use tokio::sync::watch;

pub use containers::{validate_create, ContainerEntry, MAX_CONTAINERS};
pub use processes::{validate_exec, ExecEntry, MAX_EXECS};
pub use sockets::{socket_address, MAX_LISTENERS, MAX_PENDING_BRIDGES};

use crate::attach::Attachments;
use crate::backend::{Backend, BackendError};
use crate::lock::lock;
use crate::reaper::Reaper;
use crate::transport::Transport;

/// PATH used when the request's env has none.
pub use capsule_protocol::DEFAULT_PATH;

impl From<BackendError> for RpcError {
    fn from(e: BackendError) -> Self {
        RpcError::from_errno(e.errno, e.to_string()).with_field(e.field)
    }
}

/// The agent's service and its tables.
pub struct Agent {
    backend: Box<dyn Backend>,
    reaper: Arc<Reaper>,
    transport: Transport,
    containers: Mutex<HashMap<String, Arc<ContainerEntry>>>,
    execs: Mutex<HashMap<u64, Arc<ExecEntry>>>,
    attachments: Arc<Attachments>,
    next_id: AtomicU64,
    /// Set by Shutdown; the server acts on it after answering.
    shutdown: watch::Sender<Option<u32>>,
}

fn decode<T: Message + Default>(payload: &[u8], method: &str) -> Result<T, RpcError> {
    capsule_protocol::rpc::decode_message(payload, method)
}

impl Agent {
    pub fn new(backend: Box<dyn Backend>, reaper: Arc<Reaper>, transport: Transport) -> Arc<Agent> {
        Arc::new(Agent {
            backend,
            reaper,
            transport,
            containers: Mutex::new(HashMap::new()),
            execs: Mutex::new(HashMap::new()),
            attachments: Arc::new(Attachments::default()),
            next_id: AtomicU64::new(1),
            shutdown: watch::channel(None).0,
        })
    }

    /// How the agent is reached and reaches the host.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// What waits for a stream, for the stream port.
    pub fn attachments(&self) -> Arc<Attachments> {
        self.attachments.clone()
    }

    /// Resolves to `Some(grace seconds)` once Shutdown was called.
    pub fn shutdown_requests(&self) -> watch::Receiver<Option<u32>> {
        self.shutdown.subscribe()
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Dispatches one call.
    pub async fn handle(
        self: &Arc<Self>,
        service: &str,
        method: &str,
        payload: &[u8],
    ) -> Result<Vec<u8>, RpcError> {
        macro_rules! dispatch {
            ($($m:ident => $f:ident),* $(,)?) => {
                match (service, method) {
                    $( (m::$m::SERVICE, m::$m::NAME) => {
                        let req: <m::$m as Method>::Request = decode(payload, m::$m::NAME)?;
                        let resp: <m::$m as Method>::Response = self.$f(req).await?;
                        Ok(resp.encode_to_vec())
                    } )*
                    _ => Err(capsule_protocol::rpc::unknown_method(service, method)),
                }
            };
        }
        dispatch! {
            Check => check,
            Version => version,
            CreateContainer => create_container,
            ListContainers => list_containers,
            Mount => mount,
            Exec => exec,
            WaitProcess => wait_process,
            SignalProcess => signal_process,
            ResizeTty => resize_tty,
            CloseStdin => close_stdin,
            ListProcesses => list_processes,
            ConnectSocket => connect_socket,
            ListenSocket => listen_socket,
            CloseListener => close_listener,
            AddKey => add_key,
            ListKeys => list_keys,
            KillContainer => kill_container,
            FreezeContainer => freeze_container,
            ThawContainer => thaw_container,
            Shutdown => shutdown,
            ConfigureNetwork => configure_network,
            SetNamespaces => set_namespaces,
            RebootContainer => reboot_container,
            SetCgroup => set_cgroup,
            SetRoot => set_root,
            SetPolicy => set_policy,
            SetDevices => set_devices,
            ContainerStats => container_stats,
            SetResources => set_resources,
            FinishRoot => finish_root,
        }
    }

    /// The live container named by `field`.
    pub fn container(&self, field: &str, name: &str) -> Result<Arc<ContainerEntry>, RpcError> {
        validate::container_name(field, name)?;
        match lock(&self.containers).get(name) {
            Some(c) if !c.dead.load(Ordering::Acquire) => Ok(c.clone()),
            _ => Err(
                RpcError::from_errno(libc::ENOENT, format!("no container named {name:?}"))
                    .with_field(field),
            ),
        }
    }

    pub(super) async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, RpcError> + Send + 'static,
    ) -> Result<T, RpcError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| RpcError::new(Code::Internal, format!("worker failed: {e}")))?
    }

    async fn shutdown(self: &Arc<Self>, r: pb::ShutdownRequest) -> Result<pb::Empty, RpcError> {
        if r.grace_seconds > 3600 {
            return Err(RpcError::invalid("grace_seconds", "more than an hour"));
        }
        let _ = self.shutdown.send(Some(r.grace_seconds));
        Ok(pb::Empty {})
    }

    /// Stops every container: SIGTERM, up to `grace` for them to go, then SIGKILL.
    pub async fn stop_all(self: &Arc<Self>, grace: std::time::Duration) {
        let all: Vec<Arc<ContainerEntry>> = lock(&self.containers).values().cloned().collect();
        for c in &all {
            let _ = c.ops.thaw();
            if !grace.is_zero() {
                let _ = c.ops.kill(libc::SIGTERM);
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline
            && all.iter().any(|c| !c.dead.load(Ordering::Acquire))
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        for c in all {
            let _ = tokio::task::spawn_blocking(move || {
                let _ = c.ops.kill(libc::SIGKILL);
                c.ops.cleanup();
            })
            .await;
        }
    }
}

pub(crate) fn check_signal(field: &str, sig: i32) -> Result<(), RpcError> {
    if !(1..=64).contains(&sig) {
        return Err(RpcError::invalid(
            field,
            format!("{sig} is not a signal number (1-64)"),
        ));
    }
    Ok(())
}
