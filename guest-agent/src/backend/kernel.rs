//! Container objects of capsule's patched guest kernel (guest-kernel-config/include/uapi/linux/
//! container.h): container_create, fork_into_container, container_socket, container_kill,
//! container_freeze, container_thaw, container_keyring, the FSCONFIG_SET_CONTAINER and
//! MOVE_MOUNT_T_CONTAINER_ROOT mount-API extensions, container fds as `*at()` dirfds, and
//! /proc/containers.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::child::{cstr, holder_main, HolderSetup};
use super::container_fd::{self, ioc};
use super::mount::{detached_mount, needs_member};
use super::{
    flags, read_status, Backend, BackendError, Container, ContainerRow, CreateSpec, Device, Forked,
    MountSpec, NsShare, Result, RootSpec,
};
use crate::reaper::{ExitStatus, Reaper};
use crate::sys;

/// System call numbers (x86_64) of the uapi header.
pub mod nr {
    pub const CONTAINER_CREATE: libc::c_long = 1000;
    pub const FORK_INTO_CONTAINER: libc::c_long = 1001;
    pub const CONTAINER_SOCKET: libc::c_long = 1002;
    pub const CONTAINER_KILL: libc::c_long = 1003;
    pub const CONTAINER_FREEZE: libc::c_long = 1004;
    pub const CONTAINER_THAW: libc::c_long = 1005;
    pub const CONTAINER_KEYRING: libc::c_long = 1006;
}

/// The container-fd argument that means the caller's own container (kill, freeze, thaw).
pub const CONTAINER_FD_CURRENT: i32 = -10000;

/// fsconfig command that binds a superblock to a container's namespaces.
pub const FSCONFIG_SET_CONTAINER: u32 = 64;
/// move_mount flag: mount as the container's root.
pub const MOVE_MOUNT_T_CONTAINER_ROOT: u32 = 0x0001_0000;
/// Longest container name the kernel takes.
pub const CONTAINER_NAME_MAX: usize = 63;

fn raw(
    nr: libc::c_long,
    a: libc::c_long,
    b: libc::c_long,
    c: libc::c_long,
    d: libc::c_long,
) -> std::result::Result<libc::c_long, i32> {
    // SAFETY: the container system calls take integers and (for create) a string pointer the
    // caller keeps alive.
    let r = unsafe { libc::syscall(nr, a, b, c, d) };
    if r < 0 {
        Err(sys::last_errno())
    } else {
        Ok(r)
    }
}

/// Whether the running kernel has the container system calls (anything but ENOSYS from a
/// container_create() with invalid flags means yes).
pub fn available() -> bool {
    !matches!(raw(nr::CONTAINER_CREATE, 0, -1, 0, 0), Err(libc::ENOSYS))
}

fn err(errno: i32, what: impl Into<String>) -> BackendError {
    BackendError::new(errno, what)
}

/// Parses /proc/containers ("NAME ID USE FLAGS UID GID STATE" after a header line).
pub fn parse_proc_containers(text: &str) -> Vec<ContainerRow> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 7 {
                return None;
            }
            Some(ContainerRow {
                current: f[0] == "<current>",
                name: f[0].to_string(),
                id: f[1].parse().ok()?,
                use_count: f[2].parse().ok()?,
                flags: u32::from_str_radix(f[3], 16).ok()?,
                uid: f[4].parse().ok()?,
                gid: f[5].parse().ok()?,
                state: f[6].to_string(),
            })
        })
        .collect()
}

#[derive(Default)]
pub struct KernelBackend;

impl KernelBackend {
    pub fn new() -> Self {
        KernelBackend
    }
}

impl Backend for KernelBackend {
    fn name(&self) -> &'static str {
        "kernel"
    }

    fn list(&self) -> Option<Result<Vec<ContainerRow>>> {
        Some(
            std::fs::read_to_string("/proc/containers")
                .map(|t| parse_proc_containers(&t))
                .map_err(|e| err(e.raw_os_error().unwrap_or(libc::EIO), "/proc/containers")),
        )
    }

    fn create(&self, spec: &CreateSpec, reaper: &Reaper) -> Result<Box<dyn Container>> {
        let name = cstr(&spec.name);
        let fd = raw(
            nr::CONTAINER_CREATE,
            name.as_ptr() as libc::c_long,
            libc::c_long::from(spec.flags | flags::FD_CLOEXEC),
            0,
            0,
        )
        .map_err(|e| err(e, "container_create").field("name"))?;
        // SAFETY: container_create returned a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let id = std::fs::read_to_string("/proc/containers")
            .ok()
            .and_then(|t| {
                parse_proc_containers(&t)
                    .into_iter()
                    .find(|r| r.name == spec.name)
                    .map(|r| r.id)
            })
            .unwrap_or(0);
        let keyring = raw(
            nr::CONTAINER_KEYRING,
            fd.as_raw_fd() as libc::c_long,
            0,
            0,
            0,
        )
        .map_err(|e| err(e, "container_keyring"))? as i32;
        sys::add_key(
            c"user",
            crate::keyring::NAME_KEY,
            spec.name.as_bytes(),
            keyring,
        )
        .map_err(|e| err(e, "adding the container name key"))?;
        let shares_uts = spec
            .shares
            .iter()
            .any(|s| s.nstype == sys::CLONE_NEWUTS as u32);
        let c = KernelContainer {
            name: spec.name.clone(),
            fd,
            id,
            flags: spec.flags,
            cgroup: Mutex::new(None),
            // A shared UTS namespace keeps the other container's hostname.
            hostname: (spec.flags & flags::NEW_UTS_NS != 0 && !shares_uts).then(|| {
                cstr(if spec.hostname.is_empty() {
                    &spec.name
                } else {
                    &spec.hostname
                })
            }),
            init: Mutex::new(None),
            keyring,
            frozen: AtomicBool::new(false),
        };
        for share in &spec.shares {
            c.set_namespace(share).map_err(|e| e.field("share_ns"))?;
        }
        match &spec.root {
            RootSpec::Shared => c.start_init(reaper)?,
            RootSpec::None => {}
            RootSpec::Block {
                source,
                fstype,
                options,
                subdir,
            } => c.mount(
                &MountSpec {
                    fstype: fstype.clone(),
                    source: source.clone(),
                    options: options.clone(),
                    target: "/".into(),
                    mkdir: false,
                    subdir: subdir.clone(),
                },
                reaper,
            )?,
            RootSpec::Directory(dir) => c.mount(
                &MountSpec {
                    fstype: "bind".into(),
                    source: dir.clone(),
                    options: "rbind".into(),
                    target: "/".into(),
                    mkdir: false,
                    subdir: String::new(),
                },
                reaper,
            )?,
        }
        Ok(Box::new(c))
    }
}

struct Init {
    pid: libc::pid_t,
    exit: Option<oneshot::Receiver<ExitStatus>>,
}

pub struct KernelContainer {
    name: String,
    fd: OwnedFd,
    id: u64,
    flags: u32,
    /// The cgroup given with CONTAINER_IOC_SET_CGROUP (`None`: the kernel's container-<id>).
    cgroup: Mutex<Option<std::path::PathBuf>>,
    hostname: Option<CString>,
    init: Mutex<Option<Init>>,
    keyring: i32,
    frozen: AtomicBool,
}

impl KernelContainer {
    /// Forks the container's init (the first process forked in), then mounts its /proc.
    fn start_init(&self, reaper: &Reaper) -> Result<()> {
        let forked = self.launch_init(reaper, false)?;
        *self.init.lock().unwrap_or_else(|p| p.into_inner()) = Some(Init {
            pid: forked.pid,
            exit: Some(forked.exit),
        });
        Ok(())
    }

    /// Starts an init running [`holder_main`]: with fork_into_container(), or with
    /// CONTAINER_IOC_REBOOT (which first kills every member); then mounts /proc of a new pid
    /// namespace.
    fn launch_init(&self, reaper: &Reaper, reboot: bool) -> Result<Forked> {
        let (go_r, go_w) = sys::pipe().map_err(|e| err(e, "pipe"))?;
        let (ready_r, ready_w) = sys::pipe().map_err(|e| err(e, "pipe"))?;
        let setup = HolderSetup {
            go_fd: go_r.as_raw_fd(),
            ready_fd: ready_w.as_raw_fd(),
            hostname: self.hostname.clone(),
            make_private: false,
        };
        let forked = if reboot {
            let mut reg = reaper.lock();
            // SAFETY: CONTAINER_IOC_REBOOT takes no argument and returns like fork(): the child
            // only runs holder_main, which makes system calls on `setup`.
            let pid = unsafe { libc::ioctl(self.fd.as_raw_fd(), ioc::REBOOT as libc::c_ulong, 0) };
            if pid < 0 {
                return Err(container_fd::reboot_error(&self.name, sys::last_errno()));
            }
            if pid == 0 {
                sys::exit_now(holder_main(&setup));
            }
            Forked {
                pid,
                exit: reg.register(pid),
            }
        } else {
            self.fork_into(reaper, &mut || holder_main(&setup))?
        };
        drop(go_r);
        drop(ready_w);
        sys::write_all_raw(go_w.as_raw_fd(), b"g").map_err(|e| err(e, "starting init"))?;
        match read_status(&ready_r) {
            Some(0) => {}
            Some(e) => return Err(err(e, "setting up the container init")),
            None => return Err(err(libc::ECHILD, "the container init died while starting")),
        }
        if self.flags & flags::NEW_PID_NS != 0 {
            super::mainline::mount_proc(self, reaper)?;
        }
        Ok(forked)
    }

    fn has_init(&self) -> bool {
        self.init
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

impl Container for KernelContainer {
    fn id(&self) -> u64 {
        self.id
    }

    fn init_pid(&self) -> libc::pid_t {
        self.init
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |i| i.pid)
    }

    fn take_init_exit(&mut self) -> Option<oneshot::Receiver<ExitStatus>> {
        self.init
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .and_then(|i| i.exit.take())
    }

    fn fork_into(&self, reaper: &Reaper, child: &mut dyn FnMut() -> i32) -> Result<Forked> {
        let mut reg = reaper.lock();
        let pid = raw(
            nr::FORK_INTO_CONTAINER,
            self.fd.as_raw_fd() as libc::c_long,
            0,
            0,
            0,
        )
        .map_err(|e| {
            let e = err(e, "fork_into_container").field("container");
            if e.errno == libc::ENOENT {
                BackendError {
                    what: "the container has no root file system yet".into(),
                    ..e
                }
            } else {
                e
            }
        })? as libc::pid_t;
        if pid == 0 {
            sys::exit_now(child());
        }
        Ok(Forked {
            pid,
            exit: reg.register(pid),
        })
    }

    fn session_keyring_name(&self) -> Option<&CString> {
        None
    }

    fn mount(&self, spec: &MountSpec, reaper: &Reaper) -> Result<()> {
        if needs_member(&spec.fstype) {
            let mount = super::child::MemberMount::new(spec);
            let forked = self.fork_into(reaper, &mut || mount.run())?;
            return match forked.exit.blocking_recv() {
                Ok(ExitStatus::Exited(0)) => Ok(()),
                Ok(ExitStatus::Exited(e)) => {
                    Err(err(e, format!("mounting on {}", spec.target)).field("target"))
                }
                _ => Err(err(libc::EINTR, "mount helper died")),
            };
        }
        let cfd = self.fd.as_raw_fd();
        let mfd = detached_mount(spec, &|fs| {
            // SAFETY: fsconfig with null key/value and the container fd as aux.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_fsconfig,
                    fs.as_raw_fd(),
                    FSCONFIG_SET_CONTAINER,
                    std::ptr::null::<libc::c_char>(),
                    std::ptr::null::<libc::c_void>(),
                    cfd,
                )
            };
            if r < 0 {
                return Err(err(sys::last_errno(), "FSCONFIG_SET_CONTAINER"));
            }
            Ok(())
        })?;
        let rel = spec.target.trim_start_matches('/');
        let (target, mflags) = if rel.is_empty() {
            (
                cstr(""),
                sys::MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_CONTAINER_ROOT,
            )
        } else {
            if spec.mkdir {
                // A mount of a file (a bind of one) goes on a file.
                let file_target = !sys::is_directory(&mfd);
                let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
                let mut cur = String::new();
                for (i, comp) in comps.iter().enumerate() {
                    if !cur.is_empty() {
                        cur.push('/');
                    }
                    cur.push_str(comp);
                    let c = cstr(&cur);
                    let r = if file_target && i + 1 == comps.len() {
                        let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC;
                        // SAFETY: openat with the container fd as dirfd and a relative path;
                        // the new fd is closed right away.
                        unsafe {
                            let fd = libc::openat(cfd, c.as_ptr(), flags, 0o644);
                            if fd >= 0 {
                                libc::close(fd);
                            }
                            fd
                        }
                    } else {
                        // SAFETY: mkdirat with the container fd as dirfd and a relative path.
                        unsafe { libc::mkdirat(cfd, c.as_ptr(), 0o755) }
                    };
                    if r < 0 {
                        let e = sys::last_errno();
                        if e != libc::EEXIST {
                            return Err(err(e, format!("creating {cur}")).field("target"));
                        }
                    }
                }
            }
            (cstr(rel), sys::MOVE_MOUNT_F_EMPTY_PATH)
        };
        // SAFETY: move_mount with valid fds and NUL-terminated strings.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mfd.as_raw_fd(),
                c"".as_ptr(),
                cfd,
                target.as_ptr(),
                mflags,
            )
        };
        if r < 0 {
            return Err(
                err(sys::last_errno(), format!("mounting on {}", spec.target)).field("target"),
            );
        }
        if rel.is_empty() && !self.has_init() {
            self.start_init(reaper)?;
        }
        Ok(())
    }

    fn socket(&self, domain: i32, ty: i32) -> Result<OwnedFd> {
        let fd = raw(
            nr::CONTAINER_SOCKET,
            self.fd.as_raw_fd() as libc::c_long,
            libc::c_long::from(domain),
            libc::c_long::from(ty | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK),
            0,
        )
        .map_err(|e| err(e, "container_socket"))?;
        // SAFETY: a new descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    fn kill(&self, signal: i32) -> Result<()> {
        raw(
            nr::CONTAINER_KILL,
            self.fd.as_raw_fd() as libc::c_long,
            libc::c_long::from(signal),
            0,
            0,
        )
        .map(|_| ())
        .map_err(|e| err(e, "container_kill").field("signal"))
    }

    fn freeze(&self) -> Result<()> {
        raw(
            nr::CONTAINER_FREEZE,
            self.fd.as_raw_fd() as libc::c_long,
            0,
            0,
            0,
        )
        .map_err(|e| err(e, "container_freeze"))?;
        self.frozen.store(true, Ordering::Release);
        Ok(())
    }

    fn thaw(&self) -> Result<()> {
        raw(
            nr::CONTAINER_THAW,
            self.fd.as_raw_fd() as libc::c_long,
            0,
            0,
            0,
        )
        .map_err(|e| err(e, "container_thaw"))?;
        self.frozen.store(false, Ordering::Release);
        Ok(())
    }

    fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire)
    }

    fn open_ptmx(&self) -> Option<OwnedFd> {
        sys::openat(&self.fd, c"dev/pts/ptmx", libc::O_RDWR | libc::O_NOCTTY).ok()
    }

    fn keyring(&self) -> Result<i32> {
        Ok(self.keyring)
    }

    fn cgroup_dir(&self) -> Option<std::path::PathBuf> {
        let moved = self
            .cgroup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // The kernel puts the container in container-<id> below the agent's cgroup.
        moved.or_else(|| {
            let parent = super::mainline::default_cgroup_parent()?;
            Some(parent.parent()?.join(format!("container-{}", self.id)))
        })
    }

    fn cleanup(&self) {
        // A cgroup the agent made for SetCgroup goes with the container (best effort: it may
        // still have processes on their way out, or be shared on purpose).
        let Some(dir) = self.cgroup.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        // Killed members leave the cgroup as they exit: give them a moment.
        for _ in 0..100 {
            match std::fs::remove_dir(&dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => {
                    log::info!(
                        "container {}: keeping cgroup {}: {e}",
                        self.name,
                        dir.display()
                    );
                    return;
                }
                Ok(()) => return,
            }
        }
        log::info!(
            "container {}: cgroup {} still busy",
            self.name,
            dir.display()
        );
    }

    fn ns_fd(&self) -> Result<OwnedFd> {
        self.fd.try_clone().map_err(|e| {
            err(
                e.raw_os_error().unwrap_or(libc::EMFILE),
                "duplicating a container fd",
            )
        })
    }

    fn set_namespace(&self, share: &NsShare) -> Result<()> {
        container_fd::set_namespace(self.fd.as_fd(), &self.name, share)
    }

    fn reboot(&self, reaper: &Reaper) -> Result<Forked> {
        let forked = self.launch_init(reaper, true)?;
        *self.init.lock().unwrap_or_else(|p| p.into_inner()) = Some(Init {
            pid: forked.pid,
            exit: None,
        });
        Ok(forked)
    }

    fn set_cgroup(&self, dir: &std::path::Path) -> Result<()> {
        container_fd::set_cgroup(self.fd.as_fd(), &self.name, dir)?;
        *self.cgroup.lock().unwrap_or_else(|p| p.into_inner()) = Some(dir.to_path_buf());
        Ok(())
    }

    fn set_root(&self, path: &str) -> Result<()> {
        container_fd::set_root(self.fd.as_fd(), &self.name, path)
    }

    fn set_policy(&self, lsm: &str, policy: &[u8]) -> Result<()> {
        container_fd::set_policy(self.fd.as_fd(), &self.name, lsm, policy)
    }

    fn set_devices(&self, devices: &[Device]) -> Result<()> {
        container_fd::set_devices(self.fd.as_fd(), &self.name, devices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_containers_parse() {
        let text = "NAME                           ID   USE FLAGS        UID        GID STATE\n\
                    <current>                       1     9 00000          0          0 running\n\
                    web                             2     3 000c9          0          0 frozen\n\
                    garbage line\n";
        let rows = parse_proc_containers(text);
        assert_eq!(rows.len(), 2);
        assert!(rows[0].current);
        assert_eq!(rows[1].name, "web");
        assert_eq!(rows[1].flags, 0xc9);
        assert_eq!(rows[1].state, "frozen");
    }

    #[test]
    fn numbers_match_the_uapi_header() {
        let Some(text) = super::super::uapi_header::text() else {
            return;
        };
        let define = |name: &str| super::super::uapi_header::define(&text, name);
        let checks: &[(&str, i64)] = &[
            ("__NR_container_create", nr::CONTAINER_CREATE),
            ("__NR_fork_into_container", nr::FORK_INTO_CONTAINER),
            ("__NR_container_socket", nr::CONTAINER_SOCKET),
            ("__NR_container_kill", nr::CONTAINER_KILL),
            ("__NR_container_freeze", nr::CONTAINER_FREEZE),
            ("__NR_container_thaw", nr::CONTAINER_THAW),
            ("__NR_container_keyring", nr::CONTAINER_KEYRING),
            ("CONTAINER_NEW_FS_NS", flags::NEW_FS_NS.into()),
            ("CONTAINER_NEW_EMPTY_FS_NS", flags::NEW_EMPTY_FS_NS.into()),
            ("CONTAINER_NEW_CGROUP_NS", flags::NEW_CGROUP_NS.into()),
            ("CONTAINER_NEW_UTS_NS", flags::NEW_UTS_NS.into()),
            ("CONTAINER_NEW_IPC_NS", flags::NEW_IPC_NS.into()),
            ("CONTAINER_NEW_USER_NS", flags::NEW_USER_NS.into()),
            ("CONTAINER_NEW_PID_NS", flags::NEW_PID_NS.into()),
            ("CONTAINER_NEW_NET_NS", flags::NEW_NET_NS.into()),
            ("CONTAINER_KILL_ON_CLOSE", flags::KILL_ON_CLOSE.into()),
            ("CONTAINER_FD_CLOEXEC", flags::FD_CLOEXEC.into()),
            ("CONTAINER__FLAG_MASK", flags::MASK.into()),
            ("CONTAINER_NAME_MAX", CONTAINER_NAME_MAX as i64),
            ("FSCONFIG_SET_CONTAINER", FSCONFIG_SET_CONTAINER.into()),
            (
                "MOVE_MOUNT_T_CONTAINER_ROOT",
                MOVE_MOUNT_T_CONTAINER_ROOT.into(),
            ),
        ];
        for (name, want) in checks {
            assert_eq!(define(name), Some(*want), "{name} in the uapi header");
        }
        assert_eq!(
            define("CONTAINER_FD_CURRENT"),
            None,
            "a negative define: checked below"
        );
        assert!(text.contains(&format!(
            "#define CONTAINER_FD_CURRENT\t\t({CONTAINER_FD_CURRENT})"
        )));
        assert_eq!(define("CONTAINER_DEV_ANY"), None);
        assert!(text.contains("CONTAINER_DEV_ANY\t\t0xffffffffU"));
    }
}
