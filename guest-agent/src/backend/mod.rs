//! Container backends: the container-object system calls of capsule's patched kernel
//! ([`kernel`]), or the same operations built from mainline primitives ([`mainline`]): clone3
//! with new namespaces into a cgroup, pidfds, setns, the mount API, cgroup v2 kill and freeze,
//! keyrings. The agent's container logic only sees the [`Backend`] and [`Container`] traits,
//! so it is unit-tested with a test double.
//!
//! Code that runs in a forked child of the (multi-threaded) agent lives in [`child`]: it only
//! makes system calls on memory prepared before the fork.

pub mod child;
pub mod container_fd;
pub mod finish_root;
pub mod kernel;
pub mod mainline;
pub mod mount;
pub mod privileges;

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::reaper::{ExitStatus, Reaper};
use crate::sys::Errno;

/// CONTAINER_* flags of the RFC, from the wire format's one home.
pub use capsule_protocol::container::flags;

/// A backend error: the errno and what was being done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {}", std::io::Error::from_raw_os_error(*errno))]
pub struct BackendError {
    pub errno: Errno,
    pub what: String,
    /// The request field the failure is about, if any.
    pub field: &'static str,
}

impl BackendError {
    pub fn new(errno: Errno, what: impl Into<String>) -> Self {
        BackendError {
            errno,
            what: what.into(),
            field: "",
        }
    }

    pub fn field(mut self, field: &'static str) -> Self {
        self.field = field;
        self
    }
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// Where a container's root comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSpec {
    /// The guest's own root.
    Shared,
    /// A block device (guest path) with a file system type and options.
    Block {
        source: String,
        fstype: String,
        options: String,
        /// A directory of that file system (relative to its root) to use instead of its root.
        subdir: String,
    },
    /// A directory of the guest, bind-mounted.
    Directory(String),
    /// Nothing yet (CONTAINER_NEW_EMPTY_FS_NS).
    None,
}

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSpec {
    pub name: String,
    pub flags: u32,
    pub root: RootSpec,
    pub hostname: String,
    /// Namespaces taken from other containers before the init starts.
    pub shares: Vec<NsShare>,
}

/// A namespace one container takes from another (CONTAINER_IOC_SETNS).
#[derive(Debug, Clone)]
pub struct NsShare {
    /// The `CLONE_NEW*` bit.
    pub nstype: u32,
    /// "net", "ipc", ... for messages.
    pub ns_name: &'static str,
    /// The other container's name, for messages.
    pub from: String,
    /// An fd naming the other container ([`Container::ns_fd`]).
    pub fd: Arc<OwnedFd>,
}

impl PartialEq for NsShare {
    fn eq(&self, other: &Self) -> bool {
        self.nstype == other.nstype && self.from == other.from
    }
}
impl Eq for NsShare {}

/// One entry of a device list (struct container_dev).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    /// b'c' or b'b'.
    pub kind: u8,
    pub major: u32,
    /// `None`: every minor.
    pub minor: Option<u32>,
}

/// A mount request, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub fstype: String,
    pub source: String,
    pub options: String,
    pub target: String,
    pub mkdir: bool,
    /// Mount this directory of the file system (relative to its root), not its root.
    pub subdir: String,
}

/// A row of the container listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRow {
    pub name: String,
    pub id: u64,
    pub use_count: u32,
    pub flags: u32,
    pub uid: u32,
    pub gid: u32,
    pub current: bool,
    pub state: String,
}

/// A child forked into a container: its pid and how to learn its end.
pub struct Forked {
    pub pid: libc::pid_t,
    pub exit: oneshot::Receiver<ExitStatus>,
}

/// Creates containers.
pub trait Backend: Send + Sync {
    /// "kernel" or "mainline".
    fn name(&self) -> &'static str;
    /// Creates a container, mounts its root and starts its init.
    fn create(&self, spec: &CreateSpec, reaper: &Reaper) -> Result<Box<dyn Container>>;
    /// The kernel's listing (/proc/containers), or `None` when the agent's table is the truth.
    fn list(&self) -> Option<Result<Vec<ContainerRow>>>;
}

/// One live container.
pub trait Container: Send + Sync {
    fn id(&self) -> u64;
    fn init_pid(&self) -> libc::pid_t;
    /// Takes the receiver of the init's exit status (once).
    fn take_init_exit(&mut self) -> Option<oneshot::Receiver<ExitStatus>>;
    /// Forks a child inside the container that runs `child` and exits with its result. `child`
    /// runs in a forked copy of a multi-threaded process: only system calls on prepared memory.
    fn fork_into(&self, reaper: &Reaper, child: &mut dyn FnMut() -> i32) -> Result<Forked>;
    /// Name of the keyring that processes started in the container join as their session
    /// keyring (mainline), or `None` when the kernel gives them the container keyring itself.
    fn session_keyring_name(&self) -> Option<&CString>;
    /// Mounts into the container.
    fn mount(&self, spec: &MountSpec, reaper: &Reaper) -> Result<()>;
    /// A socket in the container's network namespace (SOCK_CLOEXEC | SOCK_NONBLOCK).
    fn socket(&self, domain: i32, ty: i32) -> Result<OwnedFd>;
    fn kill(&self, signal: i32) -> Result<()>;
    fn freeze(&self) -> Result<()>;
    fn thaw(&self) -> Result<()>;
    fn is_frozen(&self) -> bool;
    /// The serial of the container's keyring.
    fn keyring(&self) -> Result<i32>;
    /// The master of the container's own devpts instance (`/dev/pts/ptmx` inside its root),
    /// when it has one: a terminal there is one its processes' `/dev/pts` knows.
    fn open_ptmx(&self) -> Option<OwnedFd> {
        None
    }
    /// Pids of every process of the container (as the agent sees them).
    fn procs(&self) -> Vec<libc::pid_t> {
        let Some(dir) = self.cgroup_dir() else {
            return Vec::new();
        };
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
    /// The cgroup v2 directory the container's members are in.
    fn cgroup_dir(&self) -> Option<std::path::PathBuf>;
    /// Releases what the container held once it is dead (cgroup directory, keyring).
    fn cleanup(&self);

    // The container fd ioctls of the kernel series (issue 16). A backend that cannot do one
    // answers EOPNOTSUPP with the operation's name (see [`unsupported`]).

    /// A new fd naming this container, for another container's [`Container::set_namespace`].
    fn ns_fd(&self) -> Result<OwnedFd> {
        Err(unsupported("sharing a container's namespaces"))
    }
    /// Takes one namespace of another container for processes started from now on.
    fn set_namespace(&self, share: &NsShare) -> Result<()> {
        let _ = share;
        Err(unsupported("setting a container's namespaces"))
    }
    /// Kills every member and starts a fresh init (same namespaces, root, cgroup, keyring).
    fn reboot(&self, reaper: &Reaper) -> Result<Forked> {
        let _ = reaper;
        Err(unsupported("rebooting a container"))
    }
    /// Moves every member, and later ones, to the (empty) cgroup v2 directory `dir`.
    fn set_cgroup(&self, dir: &Path) -> Result<()> {
        let _ = dir;
        Err(unsupported("moving a container to another cgroup"))
    }
    /// Makes `path` (absolute, inside the container) the root of processes started from now on.
    fn set_root(&self, path: &str) -> Result<()> {
        let _ = path;
        Err(unsupported("setting a container's root"))
    }
    /// Hands the LSM named `lsm` a policy for this container.
    fn set_policy(&self, lsm: &str, policy: &[u8]) -> Result<()> {
        let _ = (lsm, policy);
        Err(unsupported("setting a container's security policy"))
    }
    /// Replaces the list of devices members may open (empty: no list).
    fn set_devices(&self, devices: &[Device]) -> Result<()> {
        let _ = devices;
        Err(unsupported("setting a container's device list"))
    }
}

/// The error of an operation only the container-object kernel offers.
pub fn unsupported(op: &str) -> BackendError {
    BackendError::new(
        libc::EOPNOTSUPP,
        format!("{op} needs the container-object guest kernel; the mainline backend cannot do it"),
    )
}

/// Chooses the backend: the kernel's container syscalls when present, else mainline.
pub fn detect(cgroup_parent: Option<std::path::PathBuf>) -> Box<dyn Backend> {
    if kernel::available() {
        log::info!("container syscalls present: kernel backend");
        return Box::new(kernel::KernelBackend::new());
    }
    log::info!("no container syscalls (ENOSYS): mainline backend");
    Box::new(mainline::MainlineBackend::new(cgroup_parent))
}

/// Reads `errno` as i32 from the status pipe of a child, 0 meaning success.
pub(crate) fn read_status(fd: &OwnedFd) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 4];
    match crate::sys::read_full_raw(fd.as_raw_fd(), &mut b) {
        Ok(4) => Some(i32::from_ne_bytes(b)),
        _ => None,
    }
}

/// The uapi header copy of the patch series, for tests that hold constants against it.
#[cfg(test)]
pub(crate) mod uapi_header {
    /// The header's text, or `None` (with a note) when it is not in this tree.
    pub fn text() -> Option<String> {
        let header = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../guest-kernel-config/include/uapi/linux/container.h"
        );
        let text = std::fs::read_to_string(header).ok();
        if text.is_none() {
            eprintln!("{header} not present: skipping the comparison");
        }
        text
    }

    /// The value of `#define NAME VALUE` (decimal or 0x hex) in `text`.
    pub fn define(text: &str, name: &str) -> Option<i64> {
        text.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == "#define" && it.next()? == name).then_some(())?;
            let v = it.next()?;
            v.strip_prefix("0x")
                .map_or_else(|| v.parse().ok(), |h| i64::from_str_radix(h, 16).ok())
        })
    }
}
