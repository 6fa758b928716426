//! Attachments: what waits for a stream from the host on the stream port — the agent-side ends
//! of a process's streamed stdio, and connected socket bridges. The service puts them here when
//! it starts a process or connects a bridge; the stream port takes them out when the host
//! attaches. This table sits below both, so neither imports the other.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use capsule_protocol::StreamKind;
use tokio::sync::Notify;

use crate::lock::lock;
use crate::transport::BoxStream;

/// The streamed stdio of one process: agent-side ends waiting for their stream (stdin's write
/// end, the read ends of stdout and stderr, or the terminal master).
#[derive(Debug, Default)]
pub struct Stdio {
    stdin: Mutex<Option<OwnedFd>>,
    stdout: Mutex<Option<OwnedFd>>,
    stderr: Mutex<Option<OwnedFd>>,
    tty: Mutex<Option<OwnedFd>>,
    /// Wakes an attached stdin copier to close stdin.
    close_stdin: Notify,
}

impl Stdio {
    pub fn new(
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
        tty: Option<OwnedFd>,
    ) -> Self {
        Stdio {
            stdin: Mutex::new(stdin),
            stdout: Mutex::new(stdout),
            stderr: Mutex::new(stderr),
            tty: Mutex::new(tty),
            ..Default::default()
        }
    }

    /// Takes the end for a stream of `kind` (once); `None` when it is not streamed or taken.
    pub fn take(&self, kind: StreamKind) -> Option<OwnedFd> {
        let slot = match kind {
            StreamKind::Stdin => &self.stdin,
            StreamKind::Stdout => &self.stdout,
            StreamKind::Stderr => &self.stderr,
            StreamKind::Tty => &self.tty,
            StreamKind::Socket | StreamKind::Accepted => return None,
        };
        lock(slot).take()
    }

    /// Closes stdin, whether or not its stream is attached.
    pub fn close_stdin(&self) {
        drop(lock(&self.stdin).take());
        self.close_stdin.notify_one();
    }

    /// Resolves when [`Stdio::close_stdin`] is called.
    pub async fn stdin_close_requested(&self) {
        self.close_stdin.notified().await
    }
}

/// Everything waiting for a stream, by id.
#[derive(Default)]
pub struct Attachments {
    stdio: Mutex<HashMap<u64, Arc<Stdio>>>,
    bridges: Mutex<HashMap<u64, BoxStream>>,
}

impl Attachments {
    /// Offers the stdio of process `exec_id`.
    pub fn add_stdio(&self, exec_id: u64, stdio: Arc<Stdio>) {
        lock(&self.stdio).insert(exec_id, stdio);
    }

    /// The stdio of process `exec_id`.
    pub fn stdio(&self, exec_id: u64) -> Option<Arc<Stdio>> {
        lock(&self.stdio).get(&exec_id).cloned()
    }

    /// Forgets the stdio of a process the service no longer keeps.
    pub fn forget_stdio(&self, exec_id: u64) {
        lock(&self.stdio).remove(&exec_id);
    }

    /// How many connected bridges wait for their stream.
    pub fn bridges_waiting(&self) -> usize {
        lock(&self.bridges).len()
    }

    /// Offers connected bridge `id`.
    pub fn add_bridge(&self, id: u64, stream: BoxStream) {
        lock(&self.bridges).insert(id, stream);
    }

    /// Takes connected bridge `id` (once).
    pub fn take_bridge(&self, id: u64) -> Option<BoxStream> {
        lock(&self.bridges).remove(&id)
    }
}
