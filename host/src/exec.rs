//! Processes in a VM's container: [`Process::start`] forks one into the container (the agent
//! does it at `Exec`), [`Process::attach`] opens its stdio streams, [`Process::resize`] sizes
//! its terminal and [`Process::wait`] gives its exit status. A front end only moves bytes
//! between these streams and its own stdio.

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use capsule_protocol::methods::{Exec, ResizeTty};
use capsule_protocol::{pb, Client, ClientError, StreamKind};

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries; without a `PATH=`, the agent searches
    /// [`capsule_protocol::DEFAULT_PATH`].
    pub env: Vec<String>,
    /// Working directory inside the container (empty: `/`).
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (empty: none).
    pub additional_gids: Vec<u32>,
    /// Run on a terminal of this size (`None`: pipes).
    pub tty: Option<Option<pb::TtySize>>,
    /// Stream stdin (else the process gets /dev/null).
    pub stdin: bool,
    /// Resource limits set before exec, in order.
    pub rlimits: Vec<pb::Rlimit>,
    /// The capability sets (`None`: the agent's own, as uid 0; none for another uid).
    pub capabilities: Option<pb::Capabilities>,
    /// `PR_SET_NO_NEW_PRIVS` before exec.
    pub no_new_privileges: bool,
}

/// Why a process could not be started, followed or resized.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot run {program:?} in {container}")]
    Start {
        program: String,
        container: String,
        #[source]
        source: Box<ClientError>,
    },
    #[error(transparent)]
    Attach(Box<ClientError>),
    #[error("lost the command in {container}")]
    Wait {
        container: String,
        #[source]
        source: Box<ClientError>,
    },
    #[error(transparent)]
    Resize(Box<ClientError>),
}

impl ExecError {
    /// The errno of a failure about the program itself (`argv[0]`: missing, not executable),
    /// 0 otherwise; a shell turns ENOENT into 127 and EACCES/ENOEXEC into 126.
    pub fn program_errno(&self) -> i32 {
        match self {
            ExecError::Start { source, .. } => source
                .rpc()
                .filter(|r| r.field == "argv[0]")
                .map_or(0, |r| r.errno),
            _ => 0,
        }
    }
}

/// The host ends of a process's streams.
pub enum Streams {
    Pipes {
        stdin: Option<UnixStream>,
        stdout: UnixStream,
        stderr: UnixStream,
    },
    /// Both directions of the terminal (stdout and stderr merged).
    Tty(UnixStream),
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, or -1 when a signal killed it.
    pub code: i32,
    /// The signal that killed it, or 0.
    pub signal: i32,
}

impl ExitStatus {
    /// The status a shell would report: the exit code, or 128+N for signal N.
    pub fn shell_code(&self) -> u8 {
        if self.signal > 0 {
            (128 + self.signal).min(255) as u8
        } else {
            self.code.clamp(0, 255) as u8
        }
    }
}

/// A process started in a container (a clone is another handle to the same process).
#[derive(Clone)]
pub struct Process {
    client: Arc<Client>,
    container: String,
    id: u64,
    pid: i32,
    tty: bool,
    stdin: bool,
}

impl Process {
    /// Starts `spec` in `container` through the agent behind `client`.
    pub fn start(
        client: Arc<Client>,
        container: &str,
        spec: ExecSpec,
    ) -> Result<Process, ExecError> {
        let stream = pb::StdioMode::StdioStream as i32;
        let request = pb::ExecRequest {
            container: container.to_string(),
            argv: spec.argv.clone(),
            env: spec.env,
            cwd: spec.cwd,
            uid: spec.uid,
            gid: spec.gid,
            additional_gids: spec.additional_gids,
            tty: spec.tty.is_some(),
            tty_size: spec.tty.flatten(),
            stdin: if spec.stdin {
                stream
            } else {
                pb::StdioMode::StdioNull as i32
            },
            stdout: stream,
            stderr: stream,
            rlimits: spec.rlimits,
            capabilities: spec.capabilities,
            no_new_privileges: spec.no_new_privileges,
        };
        let started = client
            .call::<Exec>(&request)
            .map_err(|source| ExecError::Start {
                program: spec.argv.first().cloned().unwrap_or_default(),
                container: container.to_string(),
                source: Box::new(source),
            })?;
        Ok(Process {
            client,
            container: container.to_string(),
            id: started.exec_id,
            pid: started.pid,
            tty: spec.tty.is_some(),
            stdin: spec.stdin,
        })
    }

    /// The agent's id of the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The process's pid in the guest.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Opens the process's streams, each its own connection, concurrently. The process already
    /// runs; what it wrote before waits in its pipes.
    pub fn attach(&self) -> Result<Streams, ExecError> {
        let (client, id) = (&self.client, self.id);
        if self.tty {
            return client
                .attach(StreamKind::Tty, id)
                .map(Streams::Tty)
                .map_err(|e| ExecError::Attach(Box::new(e)));
        }
        let (stdin, stdout, stderr) = std::thread::scope(|scope| {
            let attach = |kind| scope.spawn(move || client.attach(kind, id));
            let stdin = self.stdin.then(|| attach(StreamKind::Stdin));
            let stdout = attach(StreamKind::Stdout);
            let stderr = attach(StreamKind::Stderr);
            let join = |h: std::thread::ScopedJoinHandle<'_, _>| {
                h.join().unwrap_or(Err(ClientError::Disconnected))
            };
            (stdin.map(join).transpose(), join(stdout), join(stderr))
        });
        Ok(Streams::Pipes {
            stdin: stdin.map_err(|e| ExecError::Attach(Box::new(e)))?,
            stdout: stdout.map_err(|e| ExecError::Attach(Box::new(e)))?,
            stderr: stderr.map_err(|e| ExecError::Attach(Box::new(e)))?,
        })
    }

    /// Sets the size of the process's terminal.
    pub fn resize(&self, size: pb::TtySize) -> Result<(), ExecError> {
        self.client
            .call::<ResizeTty>(&pb::ResizeTtyRequest {
                container: self.container.clone(),
                exec_id: self.id,
                size: Some(size),
            })
            .map(drop)
            .map_err(|e| ExecError::Resize(Box::new(e)))
    }

    /// Waits, without a timeout, for the process to end.
    pub fn wait(&self) -> Result<ExitStatus, ExecError> {
        let done = self
            .client
            .wait_process(&self.container, self.id)
            .map_err(|source| ExecError::Wait {
                container: self.container.clone(),
                source: Box::new(source),
            })?;
        Ok(ExitStatus {
            code: done.exit_code,
            signal: done.signal,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_codes() {
        let st = |code, signal| ExitStatus { code, signal }.shell_code();
        assert_eq!(st(0, 0), 0);
        assert_eq!(st(3, 0), 3);
        assert_eq!(st(-1, 9), 137);
        assert_eq!(st(300, 0), 255);
        assert_eq!(st(-1, 200), 255);
    }
}
