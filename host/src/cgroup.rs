//! One cgroup v2 per VM: `<cgroup2 mount>/capsule/<name>` with `memory.max` (guest memory plus
//! the machine's own overhead, no swap) and `cpu.max` (one CPU per vCPU). The machine's process
//! (capsule's VMM or QEMU) enters it before it executes ([`Cgroup::enter_fd`], written to from
//! the child between fork and exec), so every page it touches is charged here; the group is
//! removed when the [`Cgroup`] is dropped, after the process has been reaped.
//!
//! The `memory` and `cpu` controllers must be available in the cgroup2 hierarchy: on a host
//! that binds them to cgroup v1 hierarchies they are not, and [`Cgroup::create`] says so
//! ([`CgroupError::Unavailable`]).

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The parent of every VM's cgroup, under the cgroup2 mount.
pub const PARENT: &str = "capsule";

/// The scheduler period of `cpu.max`, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The controllers a VM's cgroup needs.
const CONTROLLERS: [&str; 2] = ["memory", "cpu"];

/// How long removal waits for a group whose last process is still exiting.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of a VM's cgroup; each names the file or the missing piece.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 file system is mounted (see /proc/self/mountinfo)")]
    NotMounted,
    #[error(
        "the cgroup2 hierarchy at {mount} has no {controller} controller (it is bound to a \
         cgroup v1 hierarchy, or not delegated to this cgroup)"
    )]
    Unavailable {
        mount: PathBuf,
        controller: &'static str,
    },
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("cannot write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open {0}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("cannot create the cgroup {0}")]
    Create(PathBuf, #[source] std::io::Error),
    #[error("cannot remove the cgroup {0}")]
    Remove(PathBuf, #[source] std::io::Error),
}

/// The limits of one VM's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max` in bytes.
    pub memory_max: u64,
    /// CPUs' worth of run time per period (`cpu.max` is `cpus * period period`).
    pub cpus: u32,
}

impl Limits {
    /// The `cpu.max` line of these limits.
    pub fn cpu_max(&self) -> String {
        format!("{} {CPU_PERIOD_US}", u64::from(self.cpus) * CPU_PERIOD_US)
    }
}

/// The cgroup2 mount point, from `mountinfo` (field 5 is the mount point; the file system
/// type follows the ` - ` separator).
fn find_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// The cgroup2 mount of this host with the memory and cpu controllers available at its root.
pub fn mount() -> Result<PathBuf, CgroupError> {
    let info = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(info).map_err(|e| CgroupError::Read(info.into(), e))?;
    let mount = find_mount(&text).ok_or(CgroupError::NotMounted)?;
    let path = mount.join("cgroup.controllers");
    let available = std::fs::read_to_string(&path).map_err(|e| CgroupError::Read(path, e))?;
    for controller in CONTROLLERS {
        if !available.split_whitespace().any(|c| c == controller) {
            return Err(CgroupError::Unavailable { mount, controller });
        }
    }
    Ok(mount)
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// Enables the VM controllers for the children of `dir`, where they are not yet.
fn delegate(dir: &Path) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&path).map_err(|e| CgroupError::Read(path.clone(), e))?;
    let missing: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write(&path, &missing.join(" "))
}

/// One VM's cgroup; dropping it removes the group.
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
    procs: File,
}

impl Cgroup {
    /// Creates `capsule/<name>` with `limits` (a group of that name left by a supervisor that
    /// was killed is removed first).
    pub fn create(name: &str, limits: Limits) -> Result<Self, CgroupError> {
        let mount = mount()?;
        delegate(&mount)?;
        let parent = mount.join(PARENT);
        if !parent.is_dir() {
            std::fs::create_dir(&parent).map_err(|e| CgroupError::Create(parent.clone(), e))?;
        }
        delegate(&parent)?;
        let dir = parent.join(name);
        remove_stale(name)?;
        std::fs::create_dir(&dir).map_err(|e| CgroupError::Create(dir.clone(), e))?;
        let group = Self::open(dir)?;
        write(
            &group.dir.join("memory.max"),
            &limits.memory_max.to_string(),
        )?;
        // Without swap, memory.max bounds what the VM holds; hosts without swap lack the file.
        let swap = group.dir.join("memory.swap.max");
        if swap.exists() {
            write(&swap, "0")?;
        }
        write(&group.dir.join("cpu.max"), &limits.cpu_max())?;
        Ok(group)
    }

    fn open(dir: PathBuf) -> Result<Self, CgroupError> {
        let path = dir.join("cgroup.procs");
        let procs = File::options()
            .write(true)
            .open(&path)
            .map_err(|e| CgroupError::Open(path, e));
        match procs {
            Ok(procs) => Ok(Cgroup { dir, procs }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A descriptor of the group's `cgroup.procs`: writing `0` to it moves the writer into the
    /// group ([`enter`]).
    pub fn enter_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// Removes the group once its processes are gone.
    pub fn remove(self) -> Result<(), CgroupError> {
        drop(self.procs);
        remove_dir(self.dir)
    }
}

/// Removes the group `capsule/<name>` if it is there, killing what still runs in it: the
/// group of a VM whose supervisor was killed.
pub fn remove_stale(name: &str) -> Result<(), CgroupError> {
    let Ok(mount) = mount() else {
        return Ok(());
    };
    let dir = mount.join(PARENT).join(name);
    if !dir.is_dir() {
        return Ok(());
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    remove_dir(dir)
}

fn remove_dir(dir: PathBuf) -> Result<(), CgroupError> {
    let deadline = Instant::now() + REMOVE_TIMEOUT;
    loop {
        match std::fs::remove_dir(&dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // The last process may still be leaving.
            Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => return Err(CgroupError::Remove(dir, e)),
        }
    }
}

/// Moves the calling process into the group whose `cgroup.procs` is open as `fd`
/// ([`Cgroup::enter_fd`]). Async-signal-safe: for a child between fork and exec.
pub fn enter(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: write(2) of a two-byte static buffer to a descriptor the caller keeps open.
    if unsafe { libc::write(fd, b"0\n".as_ptr().cast(), 2) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let info = "22 1 0:20 / /sys/fs/cgroup ro,nosuid shared:7 - tmpfs tmpfs ro,mode=755\n\
                    35 22 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                    36 22 0:31 / /sys/fs/cgroup/unified rw shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(find_mount("35 22 0:30 / /x rw - cgroup cgroup rw\n"), None);
    }

    #[test]
    fn cpu_max_is_one_period_per_vcpu() {
        let limits = Limits {
            memory_max: 1 << 30,
            cpus: 2,
        };
        assert_eq!(limits.cpu_max(), "200000 100000");
    }
}
