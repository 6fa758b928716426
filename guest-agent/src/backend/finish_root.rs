//! FinishRoot: the last steps of an OCI root, run by a child forked into the container (so in
//! its mount namespace, with its root as `/`): the default devices in a tmpfs `/dev`, read-only
//! paths, masked paths, a read-only root — runc's order. Every path is opened with
//! RESOLVE_IN_ROOT from the container's root, so neither `..` nor a symlink leads out of it.
//! The plan is built before the fork; [`FinishRoot::run`] allocates nothing.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::child::cstr;
use super::{BackendError, Container};
use crate::reaper::{ExitStatus, Reaper};
use crate::sys::{self, Errno};

/// What FinishRoot does, prepared from a checked request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinishRoot {
    pub default_devices: bool,
    /// The device number of the guest's own `/dev` (its devtmpfs, a tmpfs too): a container
    /// `/dev` on it is the guest's, not one of the container's own.
    pub guest_dev: Option<u64>,
    pub readonly_paths: Vec<CString>,
    pub masked_paths: Vec<CString>,
    pub readonly_root: bool,
}

/// The step a failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    /// Opening `/dev`.
    Dev = 1,
    /// `/dev` is not a tmpfs of the container's own.
    DevNotTmpfs = 2,
    /// Creating the device or link [`DEVICES`]/[`LINKS`] entry `index`.
    Device = 3,
    /// Read-only path `index`.
    Readonly = 4,
    /// Masked path `index`.
    Masked = 5,
    /// Masked path `index` is a file and `/dev/null` is missing or not the null device.
    DevNull = 6,
    RootReadonly = 7,
}

impl Step {
    pub fn from_u32(v: u32) -> Option<Step> {
        use Step::*;
        Some(match v {
            1 => Dev,
            2 => DevNotTmpfs,
            3 => Device,
            4 => Readonly,
            5 => Masked,
            6 => DevNull,
            7 => RootReadonly,
            _ => return None,
        })
    }

    /// The request field a failure of this step is about.
    pub fn field(self, index: u32) -> String {
        match self {
            Step::Dev | Step::DevNotTmpfs | Step::Device => "default_devices".into(),
            Step::Readonly => format!("readonly_paths[{index}]"),
            Step::Masked | Step::DevNull => format!("masked_paths[{index}]"),
            Step::RootReadonly => "readonly_root".into(),
        }
    }
}

/// A failed step: which, the list entry it was at, the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub step: Step,
    pub index: u32,
    pub errno: Errno,
}

/// Length of the failure record the child writes.
pub const FAILURE_LEN: usize = 12;

impl Failure {
    pub fn encode(&self) -> [u8; FAILURE_LEN] {
        let mut b = [0u8; FAILURE_LEN];
        b[..4].copy_from_slice(&(self.step as u32).to_ne_bytes());
        b[4..8].copy_from_slice(&self.index.to_ne_bytes());
        b[8..].copy_from_slice(&self.errno.to_ne_bytes());
        b
    }

    pub fn decode(b: &[u8; FAILURE_LEN]) -> Option<Failure> {
        let word = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
        Some(Failure {
            step: Step::from_u32(u32::from_ne_bytes(word(0)))?,
            index: u32::from_ne_bytes(word(4)),
            errno: i32::from_ne_bytes(word(8)),
        })
    }
}

/// The OCI default character devices: name, major, minor (mode 0666).
pub const DEVICES: [(&CStr, u32, u32); 6] = [
    (c"null", 1, 3),
    (c"zero", 1, 5),
    (c"full", 1, 7),
    (c"random", 1, 8),
    (c"urandom", 1, 9),
    (c"tty", 5, 0),
];

/// The OCI default links in `/dev`: name, target.
pub const LINKS: [(&CStr, &CStr); 4] = [
    (c"fd", c"/proc/self/fd"),
    (c"stdin", c"/proc/self/fd/0"),
    (c"stdout", c"/proc/self/fd/1"),
    (c"stderr", c"/proc/self/fd/2"),
];

/// The tmpfs magic number (`statfs.f_type`).
const TMPFS_MAGIC: i64 = 0x0102_1994;

impl FinishRoot {
    pub fn new(
        default_devices: bool,
        readonly_paths: &[String],
        masked_paths: &[String],
        readonly_root: bool,
    ) -> Self {
        FinishRoot {
            default_devices,
            guest_dev: sys::stat_dev(c"/dev").ok(),
            readonly_paths: readonly_paths.iter().map(|p| cstr(p)).collect(),
            masked_paths: masked_paths.iter().map(|p| cstr(p)).collect(),
            readonly_root,
        }
    }

    /// In the forked child: every step in order.
    pub fn run(&self) -> Result<(), Failure> {
        let fail = |step, index: usize| {
            move |errno| Failure {
                step,
                index: index as u32,
                errno,
            }
        };
        let root = sys::open_root().map_err(fail(Step::Dev, 0))?;
        let root = root.as_raw_fd();
        if self.default_devices {
            default_devices(root, self.guest_dev)?;
        }
        for (i, path) in self.readonly_paths.iter().enumerate() {
            let Some(fd) = open_existing(root, path).map_err(fail(Step::Readonly, i))? else {
                continue;
            };
            let fd = fd.as_raw_fd();
            let tree = sys::clone_tree(fd, true).map_err(fail(Step::Readonly, i))?;
            sys::mount_setattr(tree.as_raw_fd(), sys::MOUNT_ATTR_RDONLY, true)
                .and_then(|()| sys::move_mount_onto(tree.as_raw_fd(), fd))
                .map_err(fail(Step::Readonly, i))?;
        }
        for (i, path) in self.masked_paths.iter().enumerate() {
            let Some(fd) = open_existing(root, path).map_err(fail(Step::Masked, i))? else {
                continue;
            };
            let (mode, _, _) = sys::fstat(fd.as_raw_fd()).map_err(fail(Step::Masked, i))?;
            let cover = if mode & libc::S_IFMT == libc::S_IFDIR {
                empty_tmpfs().map_err(fail(Step::Masked, i))?
            } else {
                dev_null(root).map_err(fail(Step::DevNull, i))?
            };
            sys::move_mount_onto(cover.as_raw_fd(), fd.as_raw_fd())
                .map_err(fail(Step::Masked, i))?;
        }
        if self.readonly_root {
            sys::mount_setattr(root, sys::MOUNT_ATTR_RDONLY, false)
                .map_err(fail(Step::RootReadonly, 0))?;
        }
        Ok(())
    }
}

/// Why FinishRoot failed: a step in the child, or forking and following the child.
#[derive(Debug)]
pub enum FinishError {
    Step(Failure),
    Backend(BackendError),
}

impl FinishRoot {
    /// Forks a child into `c` that runs the plan, and waits for it.
    pub fn run_in(&self, c: &dyn Container, reaper: &Reaper) -> Result<(), FinishError> {
        let (err_r, err_w) =
            sys::pipe().map_err(|e| FinishError::Backend(BackendError::new(e, "pipe")))?;
        let w = err_w.as_raw_fd();
        let forked = c
            .fork_into(reaper, &mut || match self.run() {
                Ok(()) => 0,
                Err(f) => {
                    let _ = sys::write_all_raw(w, &f.encode());
                    1
                }
            })
            .map_err(FinishError::Backend)?;
        drop(err_w);
        match forked.exit.blocking_recv() {
            Ok(ExitStatus::Exited(0)) => return Ok(()),
            Ok(ExitStatus::Exited(1)) => {}
            other => {
                return Err(FinishError::Backend(BackendError::new(
                    libc::ECHILD,
                    format!("the child finishing the root ended: {other:?}"),
                )))
            }
        }
        // The child has exited, so its record is in the pipe; other children forked meanwhile
        // may still hold the write end, hence no blocking read.
        sys::set_nonblocking(err_r.as_raw_fd());
        let mut b = [0u8; FAILURE_LEN];
        match sys::read_full_raw(err_r.as_raw_fd(), &mut b) {
            Ok(FAILURE_LEN) => Failure::decode(&b).map(FinishError::Step),
            _ => None,
        }
        .map_or_else(
            || {
                Err(FinishError::Backend(BackendError::new(
                    libc::EIO,
                    "the child finishing the root failed without a report",
                )))
            },
            Err,
        )
    }
}

/// `path` opened inside `root`, or `None` when it does not exist.
fn open_existing(root: RawFd, path: &CStr) -> Result<Option<OwnedFd>, Errno> {
    match sys::open_in_root(root, path) {
        Ok(fd) => Ok(Some(fd)),
        Err(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The default device nodes and links in the tmpfs at `/dev`; existing entries stay.
fn default_devices(root: RawFd, guest_dev: Option<u64>) -> Result<(), Failure> {
    let fail = |step, index: usize| {
        move |errno| Failure {
            step,
            index: index as u32,
            errno,
        }
    };
    let dev = sys::open_in_root(root, c"/dev").map_err(fail(Step::Dev, 0))?;
    let dev = dev.as_raw_fd();
    let (_, _, st_dev) = sys::fstat(dev).map_err(fail(Step::Dev, 0))?;
    if sys::fs_magic(dev).map_err(fail(Step::Dev, 0))? != TMPFS_MAGIC || Some(st_dev) == guest_dev {
        return Err(fail(Step::DevNotTmpfs, 0)(libc::ENOTDIR));
    }
    let exists_ok = |r: Result<(), Errno>| match r {
        Err(libc::EEXIST) => Ok(()),
        r => r,
    };
    for (i, &(name, major, minor)) in DEVICES.iter().enumerate() {
        exists_ok(sys::make_char_device(dev, name, 0o666, major, minor))
            .map_err(fail(Step::Device, i))?;
    }
    for (i, &(name, target)) in LINKS.iter().enumerate() {
        exists_ok(sys::symlink_at(target, dev, name))
            .map_err(fail(Step::Device, DEVICES.len() + i))?;
    }
    if sys::is_dir_at(dev, c"pts") {
        exists_ok(sys::symlink_at(c"pts/ptmx", dev, c"ptmx"))
            .map_err(fail(Step::Device, DEVICES.len() + LINKS.len()))?;
    }
    Ok(())
}

/// A detached, read-only, empty tmpfs.
fn empty_tmpfs() -> Result<OwnedFd, Errno> {
    let fs = sys::fsopen(c"tmpfs")?;
    sys::fsconfig_create(fs.as_raw_fd())?;
    sys::fsmount(fs.as_raw_fd(), sys::MOUNT_ATTR_RDONLY)
}

/// A detached bind of the container's `/dev/null`, which must be the null device (1:3).
fn dev_null(root: RawFd) -> Result<OwnedFd, Errno> {
    let null = sys::open_in_root(root, c"/dev/null")?;
    let (mode, rdev, _) = sys::fstat(null.as_raw_fd())?;
    if mode & libc::S_IFMT != libc::S_IFCHR || rdev != libc::makedev(1, 3) {
        return Err(libc::ENODEV);
    }
    sys::clone_tree(null.as_raw_fd(), false)
}

/// The name of the device or link that default-devices entry `index` creates.
pub fn device_name(index: u32) -> &'static str {
    let i = index as usize;
    let name = match (DEVICES.get(i), LINKS.get(i.wrapping_sub(DEVICES.len()))) {
        (Some((name, _, _)), _) => *name,
        (None, Some((name, _))) => *name,
        (None, None) => c"ptmx",
    };
    name.to_str().unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_round_trip() {
        for step in 1..=7 {
            let f = Failure {
                step: Step::from_u32(step).unwrap(),
                index: 9,
                errno: libc::EROFS,
            };
            assert_eq!(Failure::decode(&f.encode()), Some(f));
        }
        let mut bad = [0u8; FAILURE_LEN];
        bad[0] = 8;
        assert_eq!(Failure::decode(&bad), None);
    }

    #[test]
    fn steps_name_their_field() {
        assert_eq!(Step::Masked.field(3), "masked_paths[3]");
        assert_eq!(Step::DevNull.field(0), "masked_paths[0]");
        assert_eq!(Step::Readonly.field(1), "readonly_paths[1]");
        assert_eq!(Step::DevNotTmpfs.field(0), "default_devices");
        assert_eq!(Step::RootReadonly.field(0), "readonly_root");
    }

    #[test]
    fn device_entries_are_named() {
        assert_eq!(device_name(0), "null");
        assert_eq!(device_name(5), "tty");
        assert_eq!(device_name(6), "fd");
        assert_eq!(device_name(9), "stderr");
        assert_eq!(device_name(10), "ptmx");
    }

    /// A scratch directory as a container root: `etc/hostname` inside, and symlinks that try
    /// to leave it.
    fn scratch_root() -> (std::path::PathBuf, OwnedFd) {
        let dir = std::env::temp_dir().join(format!("capsule-finish-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/hostname"), "inside").unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", dir.join("up")).unwrap();
        let fd = std::fs::File::open(&dir).unwrap();
        (dir, fd.into())
    }

    #[test]
    fn paths_resolve_inside_the_root() {
        let (dir, root) = scratch_root();
        let root = root.as_raw_fd();
        let inode = |fd: OwnedFd| {
            use std::os::unix::fs::MetadataExt;
            let f = std::fs::File::from(fd);
            f.metadata().unwrap().ino()
        };
        let inside = std::fs::metadata(dir.join("etc/hostname")).unwrap();
        use std::os::unix::fs::MetadataExt;
        for path in [
            c"/etc/hostname",
            c"/abs/hostname",
            c"/up/hostname",
            c"/../etc/hostname",
        ] {
            let fd = open_existing(root, path).unwrap().expect("exists");
            assert_eq!(inode(fd), inside.ino(), "{path:?}");
        }
        // The host's /etc/passwd is not reachable through any of them.
        for path in [c"/abs/passwd", c"/up/passwd"] {
            assert!(matches!(open_existing(root, path), Ok(None)), "{path:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
        // Magic links (/proc/PID/root, which leads to another process's root) are refused.
        let real_root = sys::open_root().unwrap();
        assert_eq!(
            open_existing(real_root.as_raw_fd(), c"/proc/self/root/etc").err(),
            Some(libc::ELOOP)
        );
    }

    #[test]
    fn the_default_devices_are_the_oci_set() {
        let names: Vec<&str> = DEVICES.iter().map(|d| d.0.to_str().unwrap()).collect();
        assert_eq!(names, ["null", "zero", "full", "random", "urandom", "tty"]);
        assert!(DEVICES
            .iter()
            .all(|&(_, major, _)| major == 1 || major == 5));
    }
}
