//! Container objects built from mainline primitives, for kernels without capsule's patch.
//!
//! - create: a cgroup v2 directory per container; the init (a small reaper, [`holder_main`]) is
//!   started with clone3(CLONE_NEW* | CLONE_PIDFD | CLONE_INTO_CGROUP); its pidfd anchors the
//!   namespaces. A root is mounted over "/" of the new mount namespace with the mount API.
//! - fork into: a child setns()es into the init's namespaces through the pidfd, then clone3s
//!   (CLONE_PARENT | CLONE_INTO_CGROUP) the real process, which is thus the agent's child, in
//!   the container's PID namespace and cgroup.
//! - socket: a short-lived thread setns()es into the network namespace and opens the socket.
//! - kill/freeze/thaw: cgroup.kill / cgroup.freeze. Keyring: a named keyring that members join
//!   as their session keyring.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::oneshot;

use super::child::{self, cstr, holder_main, HolderSetup};
use super::mount::{detached_mount, needs_member};
use super::{
    flags, read_status, Backend, BackendError, Container, ContainerRow, CreateSpec, Forked,
    MountSpec, Result, RootSpec,
};
use crate::reaper::{ExitStatus, Reaper};
use crate::sys::{self, CloneArgs};

/// Namespace clone flags for RFC container flags.
pub fn ns_flags(f: u32) -> u64 {
    let mut ns = 0;
    if f & (flags::NEW_FS_NS | flags::NEW_EMPTY_FS_NS) != 0 {
        ns |= sys::CLONE_NEWNS;
    }
    if f & flags::NEW_CGROUP_NS != 0 {
        ns |= sys::CLONE_NEWCGROUP;
    }
    if f & flags::NEW_UTS_NS != 0 {
        ns |= sys::CLONE_NEWUTS;
    }
    if f & flags::NEW_IPC_NS != 0 {
        ns |= sys::CLONE_NEWIPC;
    }
    if f & flags::NEW_USER_NS != 0 {
        ns |= sys::CLONE_NEWUSER;
    }
    if f & flags::NEW_PID_NS != 0 {
        ns |= sys::CLONE_NEWPID;
    }
    if f & flags::NEW_NET_NS != 0 {
        ns |= sys::CLONE_NEWNET;
    }
    ns
}

/// Finds the cgroup v2 mount point and the agent's own cgroup: `<mount>/<own>/capsule`.
pub fn default_cgroup_parent() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(own.trim_start_matches('/')).join("capsule"))
}

pub struct MainlineBackend {
    cgroup_parent: Option<PathBuf>,
    next_id: AtomicU64,
}

impl MainlineBackend {
    pub fn new(cgroup_parent: Option<PathBuf>) -> Self {
        MainlineBackend {
            cgroup_parent: cgroup_parent.or_else(default_cgroup_parent),
            next_id: AtomicU64::new(2),
        }
    }
}

fn err(errno: i32, what: impl Into<String>) -> BackendError {
    BackendError::new(errno, what)
}

fn io_err(e: std::io::Error, what: impl Into<String>) -> BackendError {
    BackendError::new(e.raw_os_error().unwrap_or(libc::EIO), what)
}

impl Backend for MainlineBackend {
    fn name(&self) -> &'static str {
        "mainline"
    }

    fn list(&self) -> Option<Result<Vec<ContainerRow>>> {
        None
    }

    fn create(&self, spec: &CreateSpec, reaper: &Reaper) -> Result<Box<dyn Container>> {
        if !spec.shares.is_empty() {
            return Err(
                super::unsupported("sharing another container's namespaces").field("share_ns")
            );
        }
        let parent = self
            .cgroup_parent
            .clone()
            .ok_or_else(|| err(libc::ENOENT, "no cgroup v2 hierarchy is mounted"))?;
        std::fs::create_dir_all(&parent)
            .map_err(|e| io_err(e, format!("creating {}", parent.display())))?;
        let cg = parent.join(&spec.name);
        if let Err(e) = std::fs::create_dir(&cg) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(io_err(e, format!("creating cgroup {}", cg.display())));
            }
            // A stale directory of a dead container with the same name.
            std::fs::remove_dir(&cg)
                .and_then(|_| std::fs::create_dir(&cg))
                .map_err(|e| io_err(e, format!("recreating cgroup {}", cg.display())))?;
        }
        let result = self.create_in(spec, reaper, &cg);
        if result.is_err() {
            let _ = std::fs::write(cg.join("cgroup.kill"), "1");
            let _ = std::fs::remove_dir(&cg);
        }
        result
    }
}

impl MainlineBackend {
    fn create_in(
        &self,
        spec: &CreateSpec,
        reaper: &Reaper,
        cg: &Path,
    ) -> Result<Box<dyn Container>> {
        let cgfd = open_dir(cg)?;
        let ns = ns_flags(spec.flags);
        let (go_r, go_w) = sys::pipe().map_err(|e| err(e, "pipe"))?;
        let (ready_r, ready_w) = sys::pipe().map_err(|e| err(e, "pipe"))?;
        let hostname = (spec.flags & flags::NEW_UTS_NS != 0).then(|| {
            cstr(if spec.hostname.is_empty() {
                &spec.name
            } else {
                &spec.hostname
            })
        });
        let setup = HolderSetup {
            go_fd: go_r.as_raw_fd(),
            ready_fd: ready_w.as_raw_fd(),
            hostname,
            make_private: ns & sys::CLONE_NEWNS != 0,
        };
        let mut pidfd: libc::c_int = -1;
        let (pid, init_exit) = {
            let mut reg = reaper.lock();
            let mut args = CloneArgs {
                flags: ns | sys::CLONE_PIDFD | sys::CLONE_INTO_CGROUP,
                pidfd: &mut pidfd as *mut libc::c_int as u64,
                exit_signal: libc::SIGCHLD as u64,
                cgroup: cgfd.as_raw_fd() as u64,
                ..Default::default()
            };
            // SAFETY: the child only runs holder_main, which makes system calls on `setup`.
            let pid = unsafe { sys::clone3(&mut args) }
                .map_err(|e| err(e, "clone3 of the container init"))?;
            if pid == 0 {
                sys::exit_now(holder_main(&setup));
            }
            (pid, reg.register(pid))
        };
        // SAFETY: CLONE_PIDFD stored a new descriptor we now own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        drop(go_r);
        drop(ready_w);
        let mut c = MainlineContainer {
            name: spec.name.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            flags: spec.flags,
            ns,
            pidfd,
            pid,
            cgroup: cg.to_path_buf(),
            cgfd,
            keyring_name: cstr(&format!("capsule:{}:{}", std::process::id(), spec.name)),
            keyring: 0,
            init_exit: Some(init_exit),
            frozen: AtomicBool::new(false),
        };
        if ns & sys::CLONE_NEWUSER != 0 {
            for map in ["uid_map", "gid_map"] {
                std::fs::write(format!("/proc/{pid}/{map}"), "0 0 4294967295")
                    .map_err(|e| io_err(e, format!("writing {map}")))?;
            }
        }
        sys::write_all_raw(go_w.as_raw_fd(), b"g").map_err(|e| err(e, "starting init"))?;
        match read_status(&ready_r) {
            Some(0) => {}
            Some(e) => return Err(err(e, "setting up the container init")),
            None => return Err(err(libc::ECHILD, "the container init died while starting")),
        }
        let root = match &spec.root {
            RootSpec::Shared => None,
            RootSpec::Block {
                source,
                fstype,
                options,
                subdir,
            } => Some(MountSpec {
                fstype: fstype.clone(),
                source: source.clone(),
                options: options.clone(),
                target: "/".into(),
                mkdir: false,
                subdir: subdir.clone(),
            }),
            RootSpec::Directory(dir) => Some(MountSpec {
                fstype: "bind".into(),
                source: dir.clone(),
                options: "rbind".into(),
                target: "/".into(),
                mkdir: false,
                subdir: String::new(),
            }),
            RootSpec::None => Some(MountSpec {
                fstype: "tmpfs".into(),
                source: "none".into(),
                options: "ro,mode=755".into(),
                target: "/".into(),
                mkdir: false,
                subdir: String::new(),
            }),
        };
        if let Some(root) = root {
            c.mount(&root, reaper).map_err(|e| BackendError {
                field: if e.field.is_empty() {
                    "root_source"
                } else {
                    e.field
                },
                ..e
            })?;
        }
        if spec.flags & flags::NEW_PID_NS != 0 && spec.root != RootSpec::None {
            mount_proc(&c, reaper)?;
        }
        c.keyring = make_keyring(&c.keyring_name, &spec.name)?;
        Ok(Box::new(c))
    }
}

/// Mounts a proc instance of the container's PID namespace at /proc, if the root has one.
pub(crate) fn mount_proc(c: &dyn Container, reaper: &Reaper) -> Result<()> {
    let proc = MountSpec {
        fstype: "proc".into(),
        source: "proc".into(),
        options: "nosuid,nodev,noexec".into(),
        target: "/proc".into(),
        mkdir: false,
        subdir: String::new(),
    };
    match c.mount(&proc, reaper) {
        Err(e) if e.errno == libc::ENOENT => {
            log::info!("container root has no /proc: not mounting proc");
            Ok(())
        }
        r => r,
    }
}

/// Creates the container keyring in the agent's session keyring and records the container's
/// name in it (the request-key helper reads it back).
fn make_keyring(name: &CString, container: &str) -> Result<i32> {
    let ring = sys::add_key(c"keyring", name, &[], sys::KEY_SPEC_SESSION_KEYRING)
        .map_err(|e| err(e, "creating the container keyring"))?;
    // Possessor and owner (the agent's uid) get every right: the agent's threads do not all
    // possess its session keyring (keyrings are per-thread credentials).
    sys::keyctl(
        sys::KEYCTL_SETPERM,
        ring as libc::c_ulong,
        0x3f3f_0000,
        0,
        0,
    )
    .map_err(|e| err(e, "setting the container keyring's permissions"))?;
    sys::add_key(
        c"user",
        crate::keyring::NAME_KEY,
        container.as_bytes(),
        ring,
    )
    .map_err(|e| err(e, "adding the container name key"))?;
    Ok(ring)
}

fn open_dir(p: &Path) -> Result<OwnedFd> {
    let c = cstr(&p.to_string_lossy());
    // SAFETY: NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(err(sys::last_errno(), format!("opening {}", p.display())));
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub struct MainlineContainer {
    name: String,
    id: u64,
    flags: u32,
    ns: u64,
    pidfd: OwnedFd,
    pid: libc::pid_t,
    cgroup: PathBuf,
    cgfd: OwnedFd,
    keyring_name: CString,
    keyring: i32,
    init_exit: Option<oneshot::Receiver<ExitStatus>>,
    frozen: AtomicBool,
}

impl MainlineContainer {
    pub fn flags(&self) -> u32 {
        self.flags
    }

    fn wait_exit_code(f: Forked) -> std::result::Result<i32, BackendError> {
        match f.exit.blocking_recv() {
            Ok(ExitStatus::Exited(code)) => Ok(code),
            Ok(ExitStatus::Signaled { signal, .. }) => Err(err(
                libc::EINTR,
                format!("helper process killed by signal {signal}"),
            )),
            Err(_) => Err(err(libc::ECHILD, "helper process vanished")),
        }
    }
}

impl Container for MainlineContainer {
    fn id(&self) -> u64 {
        self.id
    }

    fn init_pid(&self) -> libc::pid_t {
        self.pid
    }

    fn take_init_exit(&mut self) -> Option<oneshot::Receiver<ExitStatus>> {
        self.init_exit.take()
    }

    fn fork_into(&self, reaper: &Reaper, child: &mut dyn FnMut() -> i32) -> Result<Forked> {
        let (pid_r, pid_w) = sys::pipe().map_err(|e| err(e, "pipe"))?;
        let pidfd = self.pidfd.as_raw_fd();
        let cgfd = self.cgfd.as_raw_fd();
        let ns = self.ns;
        let pid_wfd = pid_w.as_raw_fd();
        let mut reg = reaper.lock();
        let mut args = CloneArgs {
            exit_signal: libc::SIGCHLD as u64,
            ..Default::default()
        };
        // SAFETY: both children only make system calls on memory prepared before the fork
        // (`child` is documented to follow the same rule).
        let helper = unsafe { sys::clone3(&mut args) }.map_err(|e| err(e, "fork"))?;
        if helper == 0 {
            if ns != 0 {
                if let Err(e) = sys::setns(pidfd, ns) {
                    let _ = sys::write_all_raw(pid_wfd, &(-e).to_ne_bytes());
                    sys::exit_now(1);
                }
            }
            let mut args = CloneArgs {
                flags: sys::CLONE_PARENT | sys::CLONE_INTO_CGROUP,
                cgroup: cgfd as u64,
                ..Default::default()
            };
            // SAFETY: as above.
            match unsafe { sys::clone3(&mut args) } {
                Ok(0) => sys::exit_now(child()),
                Ok(pid) => {
                    let _ = sys::write_all_raw(pid_wfd, &pid.to_ne_bytes());
                    sys::exit_now(0)
                }
                Err(e) => {
                    let _ = sys::write_all_raw(pid_wfd, &(-e).to_ne_bytes());
                    sys::exit_now(1)
                }
            }
        }
        drop(reg.register(helper));
        drop(pid_w);
        match read_status(&pid_r) {
            Some(pid) if pid > 0 => Ok(Forked {
                pid,
                exit: reg.register(pid),
            }),
            Some(neg) => Err(err(-neg, "entering the container").field("container")),
            None => Err(err(libc::ECHILD, "entering the container: helper died")),
        }
    }

    fn session_keyring_name(&self) -> Option<&CString> {
        Some(&self.keyring_name)
    }

    fn mount(&self, spec: &MountSpec, reaper: &Reaper) -> Result<()> {
        let dirs = if spec.mkdir {
            child::path_prefixes(&spec.target)
        } else {
            Vec::new()
        };
        let target = cstr(&spec.target);
        let forked = if needs_member(&spec.fstype) {
            let mount = child::MemberMount::new(spec);
            self.fork_into(reaper, &mut || mount.run())?
        } else {
            let mfd = detached_mount(spec, &|_| Ok(()))?;
            let raw = mfd.as_raw_fd();
            let forked = self.fork_into(reaper, &mut || {
                if let Err(e) = child::mkdir_all(&dirs) {
                    return e;
                }
                match sys::move_mount_fd(raw, &target) {
                    Ok(()) => 0,
                    Err(e) => e,
                }
            })?;
            drop(mfd);
            forked
        };
        match Self::wait_exit_code(forked)? {
            0 => Ok(()),
            e => Err(err(e, format!("mounting on {}", spec.target)).field("target")),
        }
    }

    fn socket(&self, domain: i32, ty: i32) -> Result<OwnedFd> {
        let pidfd = self.pidfd.try_clone().map_err(|e| io_err(e, "dup pidfd"))?;
        let join = self.ns & sys::CLONE_NEWNET != 0;
        std::thread::spawn(move || -> Result<OwnedFd> {
            if join {
                sys::setns(pidfd.as_raw_fd(), sys::CLONE_NEWNET)
                    .map_err(|e| err(e, "entering the network namespace"))?;
            }
            // SAFETY: plain socket(2).
            let fd =
                unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
            if fd < 0 {
                return Err(err(sys::last_errno(), "socket"));
            }
            // SAFETY: a new descriptor we own.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .join()
        .map_err(|_| err(libc::EIO, "socket thread panicked"))?
    }

    fn kill(&self, signal: i32) -> Result<()> {
        if signal == libc::SIGKILL {
            return std::fs::write(self.cgroup.join("cgroup.kill"), "1")
                .map_err(|e| io_err(e, "cgroup.kill"));
        }
        let procs = self.procs();
        if procs.is_empty() {
            return Err(err(libc::ESRCH, "the container has no processes"));
        }
        for pid in procs {
            // SAFETY: kill(2) with integer arguments.
            unsafe { libc::kill(pid, signal) };
        }
        Ok(())
    }

    fn freeze(&self) -> Result<()> {
        std::fs::write(self.cgroup.join("cgroup.freeze"), "1")
            .map_err(|e| io_err(e, "cgroup.freeze"))?;
        // The freezer is asynchronous: wait until cgroup.events says frozen.
        for _ in 0..2000 {
            let events = std::fs::read_to_string(self.cgroup.join("cgroup.events"))
                .map_err(|e| io_err(e, "cgroup.events"))?;
            if events.lines().any(|l| l == "frozen 1") {
                self.frozen.store(true, Ordering::Release);
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Err(err(libc::ETIMEDOUT, "the container did not freeze"))
    }

    fn thaw(&self) -> Result<()> {
        std::fs::write(self.cgroup.join("cgroup.freeze"), "0")
            .map_err(|e| io_err(e, "cgroup.freeze"))?;
        self.frozen.store(false, Ordering::Release);
        Ok(())
    }

    fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire)
    }

    fn keyring(&self) -> Result<i32> {
        Ok(self.keyring)
    }

    fn cgroup_dir(&self) -> Option<std::path::PathBuf> {
        Some(self.cgroup.clone())
    }

    fn cleanup(&self) {
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if self.keyring > 0 {
            let _ = sys::keyctl(
                crate::keyring::KEYCTL_INVALIDATE,
                self.keyring as libc::c_ulong,
                0,
                0,
                0,
            );
        }
        log::debug!("container {} cleaned up", self.name);
    }
}
