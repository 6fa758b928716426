//! The agent's service: validates every request, keeps the container, exec, bridge and
//! listener tables, and drives the backend. One method per RPC; transport-free, so it is
//! unit-tested with a test-double backend.

use std::collections::HashMap;
use std::ffi::CString;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prost::Message;
use protocol::methods::{self as m, Method};
use protocol::validate::{self, *};
use protocol::{pb, Code, RpcError};
use tokio::sync::{watch, Notify};

use crate::backend::child::{self, cstr, decode_failure, PreparedExec};
use crate::backend::{flags, Backend, BackendError, Container, CreateSpec, MountSpec, RootSpec};
use crate::reaper::{ExitStatus, Reaper};
use crate::stream::{BoxStream, Transport};
use crate::sys;

/// Most live containers.
pub const MAX_CONTAINERS: usize = 256;
/// Most exec entries kept (finished ones are dropped oldest first beyond this).
pub const MAX_EXECS: usize = 4096;
/// Most connected bridges waiting for their stream.
pub const MAX_PENDING_BRIDGES: usize = 256;
/// Most listen-mode bridges.
pub const MAX_LISTENERS: usize = 256;
/// PATH used when the request's env has none.
pub use protocol::DEFAULT_PATH;

impl From<BackendError> for RpcError {
    fn from(e: BackendError) -> Self {
        RpcError::from_errno(e.errno, e.to_string()).with_field(e.field)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One process started by Exec.
pub struct ExecEntry {
    pub id: u64,
    pub container: String,
    pub pid: libc::pid_t,
    pub argv: Vec<String>,
    pub exit: watch::Receiver<Option<ExitStatus>>,
    /// Agent-side ends waiting for their stream: stdin (write end), stdout, stderr (read ends),
    /// the terminal master.
    pub stdin: Mutex<Option<OwnedFd>>,
    pub stdout: Mutex<Option<OwnedFd>>,
    pub stderr: Mutex<Option<OwnedFd>>,
    pub tty: Mutex<Option<OwnedFd>>,
    /// A copy of the terminal master for TIOCSWINSZ.
    pub tty_ctl: Option<OwnedFd>,
    /// Wakes an attached stdin copier to close stdin.
    pub close_stdin: Notify,
    pub stdin_closed: AtomicBool,
}

/// One live container.
pub struct ContainerEntry {
    pub name: String,
    pub flags: u32,
    pub ops: Box<dyn Container>,
    pub has_root: AtomicBool,
    pub dead: AtomicBool,
    pub owner: (u32, u32),
    pub listeners: Mutex<HashMap<u64, tokio::task::JoinHandle<()>>>,
}

/// The agent.
pub struct Agent {
    pub backend: Box<dyn Backend>,
    pub reaper: Arc<Reaper>,
    pub transport: Transport,
    containers: Mutex<HashMap<String, Arc<ContainerEntry>>>,
    execs: Mutex<HashMap<u64, Arc<ExecEntry>>>,
    bridges: Mutex<HashMap<u64, BoxStream>>,
    next_id: AtomicU64,
    /// Set by Shutdown; the server acts on it after answering.
    pub shutdown: watch::Sender<Option<u32>>,
}

fn decode<T: Message + Default>(payload: &[u8], method: &str) -> Result<T, RpcError> {
    protocol::rpc::decode_message(payload, method)
}

impl Agent {
    pub fn new(backend: Box<dyn Backend>, reaper: Arc<Reaper>, transport: Transport) -> Arc<Agent> {
        Arc::new(Agent {
            backend,
            reaper,
            transport,
            containers: Mutex::new(HashMap::new()),
            execs: Mutex::new(HashMap::new()),
            bridges: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            shutdown: watch::channel(None).0,
        })
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
                    _ => Err(protocol::rpc::unknown_method(service, method)),
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
        }
    }

    async fn check(
        self: &Arc<Self>,
        _: pb::CheckRequest,
    ) -> Result<pb::HealthCheckResponse, RpcError> {
        Ok(pb::HealthCheckResponse {
            status: pb::health_check_response::ServingStatus::Serving as i32,
        })
    }

    async fn version(
        self: &Arc<Self>,
        _: pb::CheckRequest,
    ) -> Result<pb::VersionCheckResponse, RpcError> {
        // SAFETY: uname into a zeroed struct.
        let release = unsafe {
            let mut u: libc::utsname = std::mem::zeroed();
            libc::uname(&mut u);
            std::ffi::CStr::from_ptr(u.release.as_ptr())
                .to_string_lossy()
                .into_owned()
        };
        Ok(pb::VersionCheckResponse {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: protocol::PROTOCOL_VERSION,
            backend: self.backend.name().into(),
            kernel_release: release,
            max_message_size: protocol::MAX_MESSAGE_SIZE,
            stream_port: protocol::STREAM_PORT,
        })
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

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, RpcError> + Send + 'static,
    ) -> Result<T, RpcError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| RpcError::new(Code::Internal, format!("worker failed: {e}")))?
    }

    async fn create_container(
        self: &Arc<Self>,
        r: pb::CreateContainerRequest,
    ) -> Result<pb::CreateContainerResponse, RpcError> {
        let spec = validate_create(&r)?;
        {
            let table = lock(&self.containers);
            if table
                .get(&spec.name)
                .is_some_and(|c| !c.dead.load(Ordering::Acquire))
            {
                return Err(RpcError::from_errno(
                    libc::EEXIST,
                    format!("a container named {:?} exists", spec.name),
                )
                .with_field("name"));
            }
            if table.len() >= MAX_CONTAINERS {
                return Err(RpcError::new(
                    Code::ResourceExhausted,
                    format!("at most {MAX_CONTAINERS} containers"),
                ));
            }
        }
        let this = self.clone();
        let spec2 = spec.clone();
        let mut ops =
            Self::blocking(move || Ok(this.backend.create(&spec2, &this.reaper)?)).await?;
        if spec.flags & flags::NEW_NET_NS != 0 {
            // A new network namespace starts with lo down; containers expect it up.
            if let Err(e) = ops
                .socket(libc::AF_INET, libc::SOCK_DGRAM)
                .and_then(|s| loopback_up(&s))
            {
                log::warn!("container {}: bringing lo up: {e}", spec.name);
            }
        }
        let init_exit = ops.take_init_exit();
        let entry = Arc::new(ContainerEntry {
            name: spec.name.clone(),
            flags: spec.flags,
            has_root: AtomicBool::new(spec.root != RootSpec::None),
            dead: AtomicBool::new(false),
            owner: (
                // SAFETY: getuid/getgid cannot fail.
                unsafe { libc::getuid() },
                // SAFETY: as above.
                unsafe { libc::getgid() },
            ),
            listeners: Mutex::new(HashMap::new()),
            ops,
        });
        let resp = pb::CreateContainerResponse {
            id: entry.ops.id(),
            init_pid: entry.ops.init_pid(),
        };
        {
            let mut table = lock(&self.containers);
            if table
                .get(&spec.name)
                .is_some_and(|c| !c.dead.load(Ordering::Acquire))
            {
                return Err(
                    RpcError::from_errno(libc::EEXIST, "created concurrently").with_field("name")
                );
            }
            table.insert(spec.name.clone(), entry.clone());
        }
        if let Some(rx) = init_exit {
            self.watch_init(entry, rx);
        }
        Ok(resp)
    }

    /// When the container's init dies, the container is dead: its members are killed, its
    /// resources released, its name freed.
    fn watch_init(
        self: &Arc<Self>,
        entry: Arc<ContainerEntry>,
        rx: tokio::sync::oneshot::Receiver<ExitStatus>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let status = rx.await;
            log::info!("container {} init ended: {status:?}", entry.name);
            entry.dead.store(true, Ordering::Release);
            for (_, h) in lock(&entry.listeners).drain() {
                h.abort();
            }
            let e2 = entry.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let _ = e2.ops.kill(libc::SIGKILL);
                e2.ops.cleanup();
            })
            .await;
            let mut table = lock(&this.containers);
            if table
                .get(&entry.name)
                .is_some_and(|c| Arc::ptr_eq(c, &entry))
            {
                table.remove(&entry.name);
            }
        });
    }

    async fn list_containers(
        self: &Arc<Self>,
        _: pb::ListContainersRequest,
    ) -> Result<pb::ListContainersResponse, RpcError> {
        let states: HashMap<String, String> = lock(&self.containers)
            .values()
            .map(|c| {
                let st = if c.dead.load(Ordering::Acquire) {
                    "dead"
                } else if c.ops.is_frozen() {
                    "frozen"
                } else {
                    "running"
                };
                (c.name.clone(), st.to_string())
            })
            .collect();
        if let Some(rows) = self.backend.list() {
            let rows = rows?;
            return Ok(pb::ListContainersResponse {
                containers: rows
                    .into_iter()
                    .map(|r| pb::ContainerInfo {
                        state: r.state,
                        name: r.name,
                        id: r.id,
                        use_count: r.use_count,
                        flags: r.flags,
                        owner_uid: r.uid,
                        owner_gid: r.gid,
                        current: r.current,
                    })
                    .collect(),
            });
        }
        let mut out = vec![pb::ContainerInfo {
            name: "<current>".into(),
            id: 1,
            use_count: 1,
            flags: 0,
            owner_uid: 0,
            owner_gid: 0,
            current: true,
            state: "running".into(),
        }];
        let table: Vec<Arc<ContainerEntry>> = lock(&self.containers).values().cloned().collect();
        let mut rows: Vec<pb::ContainerInfo> = table
            .iter()
            .map(|c| pb::ContainerInfo {
                name: c.name.clone(),
                id: c.ops.id(),
                use_count: c.ops.procs().len() as u32 + 1,
                flags: c.flags,
                owner_uid: c.owner.0,
                owner_gid: c.owner.1,
                current: false,
                state: states.get(&c.name).cloned().unwrap_or_default(),
            })
            .collect();
        rows.sort_by_key(|r| r.id);
        out.extend(rows);
        Ok(pb::ListContainersResponse { containers: out })
    }

    async fn mount(self: &Arc<Self>, r: pb::MountRequest) -> Result<pb::Empty, RpcError> {
        let c = self.container("container", &r.container)?;
        if r.fstype.is_empty() {
            return Err(RpcError::invalid("fstype", "empty file system type"));
        }
        plain_string("fstype", &r.fstype, 64)?;
        plain_string("source", &r.source, MAX_PATH_LEN)?;
        if r.fstype == "bind" {
            absolute_path("source", &r.source)?;
        }
        plain_string("options", &r.options, MAX_OPTIONS_LEN)?;
        absolute_path("target", &r.target)?;
        let spec = MountSpec {
            fstype: r.fstype,
            source: r.source,
            options: r.options,
            target: r.target,
            mkdir: r.mkdir,
        };
        let this = self.clone();
        let c2 = c.clone();
        let is_root = spec.target.trim_end_matches('/').is_empty();
        Self::blocking(move || {
            c2.ops.mount(&spec, &this.reaper)?;
            if is_root && c2.flags & flags::NEW_PID_NS != 0 && !c2.has_root.load(Ordering::Acquire)
            {
                crate::backend::mainline::mount_proc(c2.ops.as_ref(), &this.reaper)?;
            }
            Ok(())
        })
        .await?;
        if is_root {
            c.has_root.store(true, Ordering::Release);
        }
        Ok(pb::Empty {})
    }

    fn exec_entry(&self, container: &str, id: u64) -> Result<Arc<ExecEntry>, RpcError> {
        validate::container_name("container", container)?;
        match lock(&self.execs).get(&id) {
            Some(e) if e.container == container => Ok(e.clone()),
            _ => Err(RpcError::from_errno(
                libc::ESRCH,
                format!("no process {id} in container {container:?}"),
            )
            .with_field("exec_id")),
        }
    }

    /// Looks up an exec for a stream attach.
    pub fn exec_by_id(&self, id: u64) -> Option<Arc<ExecEntry>> {
        lock(&self.execs).get(&id).cloned()
    }

    /// Takes a connected bridge for a stream attach.
    pub fn take_bridge(&self, id: u64) -> Option<BoxStream> {
        lock(&self.bridges).remove(&id)
    }

    async fn exec(self: &Arc<Self>, r: pb::ExecRequest) -> Result<pb::ExecResponse, RpcError> {
        let c = self.container("container", &r.container)?;
        if !c.has_root.load(Ordering::Acquire) {
            return Err(RpcError::new(
                Code::FailedPrecondition,
                format!(
                    "container {:?} has no root file system yet: mount one at /",
                    c.name
                ),
            )
            .with_field("container"));
        }
        let (candidates, argv, env, cwd) = validate_exec(&r)?;
        let null = || -> Result<OwnedFd, RpcError> {
            // SAFETY: open(2) of a static path.
            let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(RpcError::from_errno(sys::last_errno(), "opening /dev/null"));
            }
            // SAFETY: a new descriptor we own.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        let pipe = || sys::pipe().map_err(|e| RpcError::from_errno(e, "pipe"));
        // (child side, agent side) per stream.
        let mut child_fds: Vec<OwnedFd> = Vec::new();
        let (mut stdin, mut stdout, mut stderr, mut tty, mut tty_ctl) =
            (None, None, None, None, None);
        let stdio: [i32; 3];
        if r.tty {
            let (master, slave) = open_pty(r.tty_size.as_ref())?;
            tty_ctl =
                Some(master.try_clone().map_err(|e| {
                    RpcError::from_errno(e.raw_os_error().unwrap_or(libc::EIO), "dup")
                })?);
            tty = Some(master);
            stdio = [slave.as_raw_fd(); 3];
            child_fds.push(slave);
        } else {
            let mut fds = [0; 3];
            for (i, mode) in [r.stdin, r.stdout, r.stderr].into_iter().enumerate() {
                if mode == pb::StdioMode::StdioStream as i32 {
                    let (rd, wr) = pipe()?;
                    let (child_end, agent_end) = if i == 0 { (rd, wr) } else { (wr, rd) };
                    fds[i] = child_end.as_raw_fd();
                    child_fds.push(child_end);
                    match i {
                        0 => stdin = Some(agent_end),
                        1 => stdout = Some(agent_end),
                        _ => stderr = Some(agent_end),
                    }
                } else if mode == pb::StdioMode::StdioNull as i32 {
                    let n = null()?;
                    fds[i] = n.as_raw_fd();
                    child_fds.push(n);
                } else {
                    return Err(RpcError::invalid(
                        ["stdin", "stdout", "stderr"][i],
                        format!("unknown stdio mode {mode}"),
                    ));
                }
            }
            stdio = fds;
        }
        let (err_r, err_w) = pipe()?;
        let groups: Vec<libc::gid_t> = r.additional_gids.clone();
        let keyring = c.ops.session_keyring_name().cloned();
        let prepared = PreparedExec::new(
            candidates,
            argv,
            env,
            cwd,
            r.uid,
            r.gid,
            groups,
            stdio,
            r.tty,
            keyring,
            err_w.as_raw_fd(),
        );
        let this = self.clone();
        let c2 = c.clone();
        let (pid, exit) = Self::blocking(move || {
            let forked = c2
                .ops
                .fork_into(&this.reaper, &mut || child::exec_child(&prepared))?;
            drop(child_fds);
            drop(err_w);
            drop(prepared);
            let mut b = [0u8; 8];
            let n = sys::read_full_raw(err_r.as_raw_fd(), &mut b)
                .map_err(|e| RpcError::from_errno(e, "reading the exec status"))?;
            if n == 8 {
                let (stage, errno) = decode_failure(&b);
                let field = stage.map_or("argv[0]", |s| s.field());
                let what = match stage {
                    Some(child::Stage::Exec) => "executing the program",
                    Some(child::Stage::Cwd) => "changing to the working directory",
                    Some(child::Stage::Uid)
                    | Some(child::Stage::Gid)
                    | Some(child::Stage::Groups) => "switching user",
                    _ => "setting up the process",
                };
                return Err(RpcError::from_errno(
                    errno,
                    format!(
                        "{field}: {what}: {}",
                        std::io::Error::from_raw_os_error(errno)
                    ),
                )
                .with_field(field));
            }
            Ok((forked.pid, forked.exit))
        })
        .await?;
        let id = self.id();
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            if let Ok(status) = exit.await {
                let _ = tx.send(Some(status));
            }
        });
        let entry = Arc::new(ExecEntry {
            id,
            container: c.name.clone(),
            pid,
            argv: r.argv.clone(),
            exit: rx,
            stdin: Mutex::new(stdin),
            stdout: Mutex::new(stdout),
            stderr: Mutex::new(stderr),
            tty: Mutex::new(tty),
            tty_ctl,
            close_stdin: Notify::new(),
            stdin_closed: AtomicBool::new(false),
        });
        {
            let mut execs = lock(&self.execs);
            if execs.len() >= MAX_EXECS {
                // Forget the oldest finished process.
                if let Some(old) = execs
                    .values()
                    .filter(|e| e.exit.borrow().is_some())
                    .map(|e| e.id)
                    .min()
                {
                    execs.remove(&old);
                }
            }
            execs.insert(id, entry);
        }
        Ok(pb::ExecResponse { exec_id: id, pid })
    }

    async fn wait_process(
        self: &Arc<Self>,
        r: pb::WaitProcessRequest,
    ) -> Result<pb::WaitProcessResponse, RpcError> {
        let e = self.exec_entry(&r.container, r.exec_id)?;
        let mut rx = e.exit.clone();
        let status = rx
            .wait_for(|s| s.is_some())
            .await
            .map_err(|_| RpcError::new(Code::Internal, "exit status lost"))?
            .unwrap_or(ExitStatus::Exited(-1));
        Ok(match status {
            ExitStatus::Exited(code) => pb::WaitProcessResponse {
                exit_code: code,
                signal: 0,
                core_dumped: false,
            },
            ExitStatus::Signaled {
                signal,
                core_dumped,
            } => pb::WaitProcessResponse {
                exit_code: -1,
                signal,
                core_dumped,
            },
        })
    }

    async fn signal_process(
        self: &Arc<Self>,
        r: pb::SignalProcessRequest,
    ) -> Result<pb::Empty, RpcError> {
        let e = self.exec_entry(&r.container, r.exec_id)?;
        check_signal("signal", r.signal)?;
        if e.exit.borrow().is_some() {
            return Err(RpcError::from_errno(
                libc::ESRCH,
                format!("process {} has exited", r.exec_id),
            )
            .with_field("exec_id"));
        }
        // SAFETY: kill(2); the pid is ours and not yet reaped (checked above).
        if unsafe { libc::kill(e.pid, r.signal) } < 0 {
            return Err(RpcError::from_errno(sys::last_errno(), "kill").with_field("signal"));
        }
        Ok(pb::Empty {})
    }

    async fn resize_tty(self: &Arc<Self>, r: pb::ResizeTtyRequest) -> Result<pb::Empty, RpcError> {
        let e = self.exec_entry(&r.container, r.exec_id)?;
        let Some(ctl) = &e.tty_ctl else {
            return Err(
                RpcError::from_errno(libc::ENOTTY, "the process has no terminal")
                    .with_field("exec_id"),
            );
        };
        let size = r.size.unwrap_or_default();
        set_winsize(ctl.as_raw_fd(), &size)?;
        Ok(pb::Empty {})
    }

    async fn close_stdin(
        self: &Arc<Self>,
        r: pb::CloseStdinRequest,
    ) -> Result<pb::Empty, RpcError> {
        let e = self.exec_entry(&r.container, r.exec_id)?;
        drop(lock(&e.stdin).take());
        e.stdin_closed.store(true, Ordering::Release);
        e.close_stdin.notify_one();
        Ok(pb::Empty {})
    }

    async fn list_processes(
        self: &Arc<Self>,
        r: pb::ContainerRef,
    ) -> Result<pb::ListProcessesResponse, RpcError> {
        let c = self.container("container", &r.container)?;
        let mut out: Vec<pb::ProcessInfo> = lock(&self.execs)
            .values()
            .filter(|e| e.container == c.name)
            .map(|e| pb::ProcessInfo {
                exec_id: e.id,
                pid: e.pid,
                argv: e.argv.clone(),
                state: if e.exit.borrow().is_some() {
                    "exited"
                } else {
                    "running"
                }
                .into(),
            })
            .collect();
        for pid in c.ops.procs() {
            if out.iter().any(|p| p.pid == pid) {
                continue;
            }
            let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    b.split(|&x| x == 0)
                        .filter(|s| !s.is_empty())
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect()
                })
                .unwrap_or_default();
            out.push(pb::ProcessInfo {
                exec_id: 0,
                pid,
                argv,
                state: "running".into(),
            });
        }
        out.sort_by_key(|p| p.pid);
        Ok(pb::ListProcessesResponse { processes: out })
    }

    async fn container_socket(
        self: &Arc<Self>,
        c: &Arc<ContainerEntry>,
        family: i32,
    ) -> Result<OwnedFd, RpcError> {
        let c2 = c.clone();
        Self::blocking(move || Ok(c2.ops.socket(family, libc::SOCK_STREAM)?)).await
    }

    async fn connect_socket(
        self: &Arc<Self>,
        r: pb::ConnectSocketRequest,
    ) -> Result<pb::ConnectSocketResponse, RpcError> {
        let c = self.container("container", &r.container)?;
        let addr = socket_address(r.family, &r.address, r.port)?;
        if lock(&self.bridges).len() >= MAX_PENDING_BRIDGES {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                "too many bridges waiting for their stream",
            ));
        }
        let fd = self.container_socket(&c, addr.family()).await?;
        let stream = crate::bridge::connect(fd, &addr).await.map_err(|e| {
            RpcError::from_errno(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("connecting to {addr} in {:?}: {e}", c.name),
            )
            .with_field("address")
        })?;
        let id = self.id();
        lock(&self.bridges).insert(id, stream);
        Ok(pb::ConnectSocketResponse { bridge_id: id })
    }

    async fn listen_socket(
        self: &Arc<Self>,
        r: pb::ListenSocketRequest,
    ) -> Result<pb::ListenSocketResponse, RpcError> {
        let c = self.container("container", &r.container)?;
        let addr = socket_address(r.family, &r.address, r.port)?;
        if r.host_port == 0 {
            return Err(RpcError::invalid("host_port", "host port 0"));
        }
        if r.backlog > 4096 {
            return Err(RpcError::invalid("backlog", "more than 4096"));
        }
        if lock(&c.listeners).len() >= MAX_LISTENERS {
            return Err(RpcError::new(Code::ResourceExhausted, "too many listeners"));
        }
        let fd = self.container_socket(&c, addr.family()).await?;
        let backlog = if r.backlog == 0 {
            128
        } else {
            r.backlog as i32
        };
        let (listener, bound_port) = crate::bridge::listen(fd, &addr, backlog).map_err(|e| {
            RpcError::from_errno(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("listening on {addr}: {e}"),
            )
            .with_field("address")
        })?;
        let id = self.id();
        let transport = self.transport.clone();
        let host_port = r.host_port;
        let handle = tokio::spawn(crate::bridge::accept_loop(
            listener, transport, host_port, id,
        ));
        lock(&c.listeners).insert(id, handle);
        Ok(pb::ListenSocketResponse {
            listener_id: id,
            bound_port,
        })
    }

    async fn close_listener(
        self: &Arc<Self>,
        r: pb::CloseListenerRequest,
    ) -> Result<pb::Empty, RpcError> {
        let c = self.container("container", &r.container)?;
        let removed = lock(&c.listeners).remove(&r.listener_id);
        match removed {
            Some(h) => {
                h.abort();
                Ok(pb::Empty {})
            }
            None => Err(RpcError::from_errno(
                libc::ENOENT,
                format!("no listener {}", r.listener_id),
            )
            .with_field("listener_id")),
        }
    }

    async fn add_key(
        self: &Arc<Self>,
        r: pb::AddKeyRequest,
    ) -> Result<pb::AddKeyResponse, RpcError> {
        let c = self.container("container", &r.container)?;
        if r.key_type.is_empty() || r.key_type.starts_with('.') {
            return Err(RpcError::invalid(
                "key_type",
                format!("key type {:?} cannot be added", r.key_type),
            ));
        }
        plain_string("key_type", &r.key_type, 32)?;
        if r.description.is_empty() {
            return Err(RpcError::invalid("description", "empty description"));
        }
        plain_string("description", &r.description, MAX_KEY_DESC_LEN)?;
        if r.payload.len() > MAX_KEY_PAYLOAD {
            return Err(RpcError::invalid(
                "payload",
                format!("{} bytes, more than {MAX_KEY_PAYLOAD}", r.payload.len()),
            ));
        }
        let ring = c.ops.keyring()?;
        let serial = sys::add_key(&cstr(&r.key_type), &cstr(&r.description), &r.payload, ring)
            .map_err(|e| {
                RpcError::from_errno(e, format!("add_key {}:{}", r.key_type, r.description))
                    .with_field("key_type")
            })?;
        Ok(pb::AddKeyResponse { serial })
    }

    async fn list_keys(
        self: &Arc<Self>,
        r: pb::ContainerRef,
    ) -> Result<pb::ListKeysResponse, RpcError> {
        let c = self.container("container", &r.container)?;
        let ring = c.ops.keyring()?;
        let members = crate::keys::keyring_members(ring)
            .map_err(|e| RpcError::from_errno(e, "reading the container keyring"))?;
        let name_key = crate::keys::NAME_KEY.to_string_lossy();
        let keys = members
            .into_iter()
            .filter_map(|serial| {
                let d = crate::keys::describe(serial).ok()?;
                (d.description != name_key).then_some(pb::KeyInfo {
                    serial,
                    key_type: d.key_type,
                    description: d.description,
                    uid: d.uid,
                    gid: d.gid,
                    perm: d.perm,
                })
            })
            .collect();
        Ok(pb::ListKeysResponse { keys })
    }

    async fn kill_container(
        self: &Arc<Self>,
        r: pb::KillContainerRequest,
    ) -> Result<pb::Empty, RpcError> {
        let c = self.container("container", &r.container)?;
        let sig = if r.signal == 0 {
            libc::SIGKILL
        } else {
            r.signal
        };
        check_signal("signal", sig)?;
        Self::blocking(move || Ok(c.ops.kill(sig)?)).await?;
        Ok(pb::Empty {})
    }

    async fn freeze_container(
        self: &Arc<Self>,
        r: pb::ContainerRef,
    ) -> Result<pb::Empty, RpcError> {
        let c = self.container("container", &r.container)?;
        Self::blocking(move || Ok(c.ops.freeze()?)).await?;
        Ok(pb::Empty {})
    }

    async fn thaw_container(self: &Arc<Self>, r: pb::ContainerRef) -> Result<pb::Empty, RpcError> {
        let c = self.container("container", &r.container)?;
        Self::blocking(move || Ok(c.ops.thaw()?)).await?;
        Ok(pb::Empty {})
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

/// Sets IFF_UP on "lo" through a socket of the container's network namespace.
fn loopback_up(sock: &OwnedFd) -> crate::backend::Result<()> {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: 0,
        pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS with a properly sized ifreq.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(BackendError::new(sys::last_errno(), "SIOCGIFFLAGS lo"));
        }
        req.flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(BackendError::new(sys::last_errno(), "SIOCSIFFLAGS lo"));
        }
    }
    Ok(())
}

fn check_signal(field: &str, sig: i32) -> Result<(), RpcError> {
    if !(1..=64).contains(&sig) {
        return Err(RpcError::invalid(
            field,
            format!("{sig} is not a signal number (1-64)"),
        ));
    }
    Ok(())
}

/// Validates a CreateContainer request into a backend spec.
pub fn validate_create(r: &pb::CreateContainerRequest) -> Result<CreateSpec, RpcError> {
    validate::container_name("name", &r.name)?;
    let mut f = r.flags;
    if f & !flags::MASK != 0 {
        return Err(RpcError::invalid(
            "flags",
            format!("unknown flag bits {:#x}", f & !flags::MASK),
        ));
    }
    if f & flags::NEW_FS_NS != 0 && f & flags::NEW_EMPTY_FS_NS != 0 {
        return Err(RpcError::invalid(
            "flags",
            "NEW_FS_NS and NEW_EMPTY_FS_NS exclude each other",
        ));
    }
    let kind = pb::RootKind::try_from(r.root)
        .map_err(|_| RpcError::invalid("root", format!("unknown root kind {}", r.root)))?;
    let root = match kind {
        pb::RootKind::RootInitramfs => {
            if f & flags::NEW_EMPTY_FS_NS != 0 {
                return Err(RpcError::invalid("root", "NEW_EMPTY_FS_NS wants ROOT_NONE"));
            }
            RootSpec::Shared
        }
        pb::RootKind::RootBlock | pb::RootKind::RootDirectory => {
            if f & flags::NEW_FS_NS == 0 {
                return Err(RpcError::invalid(
                    "flags",
                    "a block-device or directory root needs CONTAINER_NEW_FS_NS",
                ));
            }
            absolute_path("root_source", &r.root_source)?;
            if kind == pb::RootKind::RootBlock {
                if r.root_fstype.is_empty() {
                    return Err(RpcError::invalid(
                        "root_fstype",
                        "a block-device root needs a file system type",
                    ));
                }
                plain_string("root_fstype", &r.root_fstype, 64)?;
                plain_string("root_options", &r.root_options, MAX_OPTIONS_LEN)?;
                RootSpec::Block {
                    source: r.root_source.clone(),
                    fstype: r.root_fstype.clone(),
                    options: r.root_options.clone(),
                }
            } else {
                RootSpec::Directory(r.root_source.clone())
            }
        }
        pb::RootKind::RootNone => {
            if f & flags::NEW_FS_NS != 0 {
                return Err(RpcError::invalid(
                    "flags",
                    "ROOT_NONE wants NEW_EMPTY_FS_NS, not NEW_FS_NS",
                ));
            }
            f |= flags::NEW_EMPTY_FS_NS;
            RootSpec::None
        }
    };
    if !r.hostname.is_empty() {
        if f & flags::NEW_UTS_NS == 0 {
            return Err(RpcError::invalid(
                "hostname",
                "a hostname needs CONTAINER_NEW_UTS_NS",
            ));
        }
        plain_string("hostname", &r.hostname, 64)?;
    }
    Ok(CreateSpec {
        name: r.name.clone(),
        flags: f,
        root,
        hostname: r.hostname.clone(),
    })
}

type ExecParts = (Vec<CString>, Vec<CString>, Vec<CString>, CString);

/// Validates an Exec request: (candidate paths, argv, env, cwd).
pub fn validate_exec(r: &pb::ExecRequest) -> Result<ExecParts, RpcError> {
    if r.argv.is_empty() || r.argv[0].is_empty() {
        return Err(RpcError::invalid("argv", "no program given"));
    }
    string_list("argv", &r.argv, MAX_ARGS, MAX_ARG_LEN)?;
    string_list("env", &r.env, MAX_ENV, MAX_ARG_LEN)?;
    for (i, e) in r.env.iter().enumerate() {
        if !e.contains('=') || e.starts_with('=') {
            return Err(RpcError::invalid(
                format!("env[{i}]"),
                format!("{e:?} is not KEY=VALUE"),
            ));
        }
    }
    let cwd = if r.cwd.is_empty() {
        "/"
    } else {
        r.cwd.as_str()
    };
    absolute_path("cwd", cwd)?;
    if r.additional_gids.len() > MAX_GROUPS {
        return Err(RpcError::invalid(
            "additional_gids",
            format!("more than {MAX_GROUPS}"),
        ));
    }
    let prog = &r.argv[0];
    let candidates = if prog.contains('/') {
        vec![cstr(prog)]
    } else {
        let path = r
            .env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        path.split(':')
            .map(|d| if d.is_empty() { "." } else { d })
            .map(|d| cstr(&format!("{}/{prog}", d.trim_end_matches('/'))))
            .collect()
    };
    Ok((
        candidates,
        r.argv.iter().map(|s| cstr(s)).collect(),
        r.env.iter().map(|s| cstr(s)).collect(),
        cstr(cwd),
    ))
}

/// Parses a socket address of a bridge request.
pub fn socket_address(
    family: i32,
    address: &str,
    port: u32,
) -> Result<crate::bridge::Addr, RpcError> {
    let fam = pb::SocketFamily::try_from(family)
        .map_err(|_| RpcError::invalid("family", format!("unknown family {family}")))?;
    match fam {
        pb::SocketFamily::Unix => {
            absolute_path("address", address)?;
            if address.len() >= 108 {
                return Err(RpcError::invalid(
                    "address",
                    "longer than a sockaddr_un path",
                ));
            }
            Ok(crate::bridge::Addr::Unix(address.to_string()))
        }
        pb::SocketFamily::Inet | pb::SocketFamily::Inet6 => {
            let port = u16::try_from(port)
                .map_err(|_| RpcError::invalid("port", format!("{port} is not a port")))?;
            let ip: IpAddr = address.parse().map_err(|_| {
                RpcError::invalid(
                    "address",
                    format!("{address:?} is not a numeric IP address"),
                )
            })?;
            if ip.is_ipv4() != (fam == pb::SocketFamily::Inet) {
                return Err(RpcError::invalid(
                    "address",
                    format!("{address} does not match family {fam:?}"),
                ));
            }
            Ok(crate::bridge::Addr::Inet(SocketAddr::new(ip, port)))
        }
    }
}

fn open_pty(size: Option<&pb::TtySize>) -> Result<(OwnedFd, OwnedFd), RpcError> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty with valid out-pointers and null name/termios/winsize.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r < 0 {
        return Err(RpcError::from_errno(sys::last_errno(), "openpty").with_field("tty"));
    }
    // SAFETY: openpty returned two descriptors we now own.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
        // SAFETY: fcntl on descriptors we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    if let Some(s) = size {
        set_winsize(master.as_raw_fd(), s)?;
    }
    Ok((master, slave))
}

fn set_winsize(fd: i32, s: &pb::TtySize) -> Result<(), RpcError> {
    let (Ok(rows), Ok(cols)) = (u16::try_from(s.rows), u16::try_from(s.cols)) else {
        return Err(RpcError::invalid("size", "rows and cols must fit 16 bits"));
    };
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(RpcError::from_errno(sys::last_errno(), "TIOCSWINSZ").with_field("size"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{ContainerRow, Forked};

    /// A backend that records what it is asked and forks nothing.
    #[derive(Default)]
    struct FakeBackend {
        log: Arc<Mutex<Vec<String>>>,
    }

    struct FakeContainer {
        log: Arc<Mutex<Vec<String>>>,
        frozen: AtomicBool,
    }

    impl Backend for FakeBackend {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn create(
            &self,
            spec: &CreateSpec,
            _: &Reaper,
        ) -> crate::backend::Result<Box<dyn Container>> {
            lock(&self.log).push(format!(
                "create {} {:#x} {:?}",
                spec.name, spec.flags, spec.root
            ));
            Ok(Box::new(FakeContainer {
                log: self.log.clone(),
                frozen: AtomicBool::new(false),
            }))
        }
        fn list(&self) -> Option<crate::backend::Result<Vec<ContainerRow>>> {
            None
        }
    }

    impl Container for FakeContainer {
        fn id(&self) -> u64 {
            7
        }
        fn init_pid(&self) -> libc::pid_t {
            42
        }
        fn take_init_exit(&mut self) -> Option<tokio::sync::oneshot::Receiver<ExitStatus>> {
            None
        }
        fn fork_into(
            &self,
            _: &Reaper,
            _: &mut dyn FnMut() -> i32,
        ) -> crate::backend::Result<Forked> {
            Err(BackendError::new(libc::EPERM, "fake cannot fork").field("container"))
        }
        fn session_keyring_name(&self) -> Option<&CString> {
            None
        }
        fn mount(&self, spec: &MountSpec, _: &Reaper) -> crate::backend::Result<()> {
            lock(&self.log).push(format!(
                "mount {} {} {}",
                spec.fstype, spec.source, spec.target
            ));
            Ok(())
        }
        fn socket(&self, _: i32, _: i32) -> crate::backend::Result<OwnedFd> {
            Err(BackendError::new(
                libc::EAFNOSUPPORT,
                "no sockets in the fake",
            ))
        }
        fn kill(&self, signal: i32) -> crate::backend::Result<()> {
            lock(&self.log).push(format!("kill {signal}"));
            Ok(())
        }
        fn freeze(&self) -> crate::backend::Result<()> {
            self.frozen.store(true, Ordering::Release);
            Ok(())
        }
        fn thaw(&self) -> crate::backend::Result<()> {
            self.frozen.store(false, Ordering::Release);
            Ok(())
        }
        fn is_frozen(&self) -> bool {
            self.frozen.load(Ordering::Acquire)
        }
        fn keyring(&self) -> crate::backend::Result<i32> {
            Err(BackendError::new(libc::ENOKEY, "no keyring in the fake"))
        }
        fn procs(&self) -> Vec<libc::pid_t> {
            vec![42]
        }
        fn cleanup(&self) {}
    }

    fn agent() -> (Arc<Agent>, Arc<Mutex<Vec<String>>>) {
        let b = FakeBackend::default();
        let log = b.log.clone();
        (
            Agent::new(
                Box::new(b),
                Arc::new(Reaper::new()),
                Transport::Unix("/nonexistent".into()),
            ),
            log,
        )
    }

    async fn call<M: Method>(a: &Arc<Agent>, req: M::Request) -> Result<M::Response, RpcError> {
        let out = a.handle(M::SERVICE, M::NAME, &req.encode_to_vec()).await?;
        Ok(M::Response::decode(&out[..]).unwrap())
    }

    fn create(name: &str, flags: u32) -> pb::CreateContainerRequest {
        pb::CreateContainerRequest {
            name: name.into(),
            flags,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn create_validates_and_refuses_duplicates() {
        let (a, log) = agent();
        let r = call::<m::CreateContainer>(&a, create("web", 0x49))
            .await
            .unwrap();
        assert_eq!((r.id, r.init_pid), (7, 42));
        assert_eq!(lock(&log)[0], "create web 0x49 Shared");
        let e = call::<m::CreateContainer>(&a, create("web", 0))
            .await
            .unwrap_err();
        assert_eq!((e.code, e.field.as_str()), (Code::AlreadyExists, "name"));
        let e = call::<m::CreateContainer>(&a, create("bad/name", 0))
            .await
            .unwrap_err();
        assert_eq!(e.field, "name");
        let e = call::<m::CreateContainer>(&a, create("f", 0x800))
            .await
            .unwrap_err();
        assert_eq!(e.field, "flags");
        let e = call::<m::CreateContainer>(&a, create("f", 0x3))
            .await
            .unwrap_err();
        assert_eq!(e.field, "flags");
        let mut block = create("b", 0);
        block.root = pb::RootKind::RootBlock as i32;
        block.root_source = "/dev/vdb".into();
        block.root_fstype = "ext4".into();
        assert_eq!(
            call::<m::CreateContainer>(&a, block.clone())
                .await
                .unwrap_err()
                .field,
            "flags"
        );
        block.flags = 0x1;
        call::<m::CreateContainer>(&a, block).await.unwrap();
        let mut none = create("n", 0);
        none.root = pb::RootKind::RootNone as i32;
        call::<m::CreateContainer>(&a, none).await.unwrap();
        assert!(
            lock(&log).iter().any(|l| l == "create n 0x2 None"),
            "{:?}",
            lock(&log)
        );
        assert_eq!(
            lock(&log).len(),
            3,
            "rejected requests must not reach the backend"
        );
    }

    #[tokio::test]
    async fn list_has_current_first_and_the_table_after() {
        let (a, _) = agent();
        call::<m::CreateContainer>(&a, create("b", 0x40))
            .await
            .unwrap();
        call::<m::FreezeContainer>(
            &a,
            pb::ContainerRef {
                container: "b".into(),
            },
        )
        .await
        .unwrap();
        let l = call::<m::ListContainers>(&a, pb::ListContainersRequest {})
            .await
            .unwrap();
        assert_eq!(l.containers.len(), 2);
        assert!(l.containers[0].current && l.containers[0].name == "<current>");
        let b = &l.containers[1];
        assert_eq!(
            (b.name.as_str(), b.id, b.flags, b.state.as_str(), b.current),
            ("b", 7, 0x40, "frozen", false)
        );
        call::<m::ThawContainer>(
            &a,
            pb::ContainerRef {
                container: "b".into(),
            },
        )
        .await
        .unwrap();
        let l = call::<m::ListContainers>(&a, pb::ListContainersRequest {})
            .await
            .unwrap();
        assert_eq!(l.containers[1].state, "running");
    }

    #[tokio::test]
    async fn exec_mount_kill_validate_before_the_backend() {
        let (a, log) = agent();
        let exec = |c: &str, argv: &[&str]| pb::ExecRequest {
            container: c.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let e = call::<m::Exec>(&a, exec("nope", &["true"]))
            .await
            .unwrap_err();
        assert_eq!((e.code, e.field.as_str()), (Code::NotFound, "container"));
        call::<m::CreateContainer>(&a, create("c", 0x1))
            .await
            .unwrap();
        assert_eq!(
            call::<m::Exec>(&a, exec("c", &[])).await.unwrap_err().field,
            "argv"
        );
        let mut bad_env = exec("c", &["true"]);
        bad_env.env = vec!["NOEQUALS".into()];
        assert_eq!(
            call::<m::Exec>(&a, bad_env).await.unwrap_err().field,
            "env[0]"
        );
        let mut bad_cwd = exec("c", &["true"]);
        bad_cwd.cwd = "relative".into();
        assert_eq!(call::<m::Exec>(&a, bad_cwd).await.unwrap_err().field, "cwd");
        // A valid request reaches the backend, whose errno comes back with its field.
        let e = call::<m::Exec>(&a, exec("c", &["true"])).await.unwrap_err();
        assert_eq!((e.errno, e.field.as_str()), (libc::EPERM, "container"));

        let e = call::<m::Mount>(
            &a,
            pb::MountRequest {
                container: "c".into(),
                fstype: "tmpfs".into(),
                target: "rel".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.field, "target");
        call::<m::Mount>(
            &a,
            pb::MountRequest {
                container: "c".into(),
                fstype: "tmpfs".into(),
                source: "none".into(),
                target: "/mnt".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(lock(&log).iter().any(|l| l == "mount tmpfs none /mnt"));

        assert_eq!(
            call::<m::KillContainer>(
                &a,
                pb::KillContainerRequest {
                    container: "c".into(),
                    signal: 65
                }
            )
            .await
            .unwrap_err()
            .field,
            "signal"
        );
        call::<m::KillContainer>(
            &a,
            pb::KillContainerRequest {
                container: "c".into(),
                signal: 0,
            },
        )
        .await
        .unwrap();
        assert!(lock(&log)
            .iter()
            .any(|l| l == &format!("kill {}", libc::SIGKILL)));

        let e = call::<m::ConnectSocket>(
            &a,
            pb::ConnectSocketRequest {
                container: "c".into(),
                family: 0,
                address: "::1".into(),
                port: 80,
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.field, "address");
        let e = call::<m::ConnectSocket>(
            &a,
            pb::ConnectSocketRequest {
                container: "c".into(),
                family: 0,
                address: "127.0.0.1".into(),
                port: 70000,
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.field, "port");
        let e = a
            .handle("capsule.agent.v1.Agent", "Nope", &[])
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::Unimplemented);
    }
}
