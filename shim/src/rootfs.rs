//! The host side of a pod's files: one directory per pod (the VM's one virtio-fs share), made
//! a shared mount so that what is mounted below it after virtiofsd started still reaches the
//! guest; each container's root (containerd's snapshot mounts) and its host bind mounts are
//! mounted below it, and unmounted again when the container goes. Nothing is ever deleted
//! recursively: only the mount points this module made, once nothing is mounted on them.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;

/// Why a host mount failed; each names its path.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot create {0}")]
    Create(PathBuf, #[source] std::io::Error),
    #[error("cannot mount {what} on {target}")]
    Mount {
        what: String,
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mount containerd's root file system ({kind}) on {target}: {message}")]
    Snapshot {
        kind: String,
        target: PathBuf,
        message: String,
    },
    #[error("cannot unmount {0}")]
    Unmount(PathBuf, #[source] std::io::Error),
    #[error("bind source {0} does not exist")]
    MissingSource(PathBuf),
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

fn mount(
    source: &Path,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    what: &str,
) -> Result<(), MountError> {
    mount_data(source, target, fstype, flags, "").map_err(|source| MountError::Mount {
        what: what.to_string(),
        target: target.to_path_buf(),
        source,
    })
}

/// The mount(2) flags among containerd's mount options, and the rest as file system data.
fn mount_options(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags = 0;
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => flags &= !libc::MS_RDONLY,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "noatime" => flags |= libc::MS_NOATIME,
            "relatime" => flags |= libc::MS_RELATIME,
            "bind" => flags |= libc::MS_BIND,
            "rbind" => flags |= libc::MS_BIND | libc::MS_REC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// mount(2) with file system data (overlay's lowerdir=..., upperdir=..., workdir=...).
fn mount_data(
    source: &Path,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: &str,
) -> std::io::Result<()> {
    const PAGE: usize = 4096;
    if data.len() >= PAGE {
        return Err(std::io::Error::other(format!(
            "mount options of {} bytes exceed the kernel's page",
            data.len()
        )));
    }
    let (src, dst) = (cpath(source), cpath(target));
    let fstype = fstype.map(|t| CString::new(t).unwrap_or_default());
    let data = CString::new(data).unwrap_or_default();
    // SAFETY: NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
            flags,
            data.as_ptr().cast(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A recursive read-only bind of `source` on `target`, read-only from the moment it is
/// attached (open_tree, mount_setattr, move_mount).
fn bind_read_only(source: &Path, target: &Path) -> std::io::Result<()> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    const MOUNT_ATTR_RDONLY: u64 = 1;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let (src, dst) = (cpath(source), cpath(target));
    let check = |r: libc::c_long| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    // SAFETY: open_tree with a NUL-terminated path; the result is a new fd we own.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
        )
    })?;
    // SAFETY: fd is the open_tree result, owned from here on.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr on our fd with an empty path and a live, correctly sized struct.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    // SAFETY: move_mount of our detached mount onto a NUL-terminated target path.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// The mount points at or below `dir`, deepest first, from /proc/self/mountinfo.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts everything at or below `dir` (lazily, so a straggling reader cannot block it).
pub fn unmount_below(dir: &Path) -> Result<(), MountError> {
    for m in mounts_below(dir) {
        let c = cpath(&m);
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
                return Err(MountError::Unmount(m, e));
            }
        }
    }
    Ok(())
}

/// A pod's directory: the VM's root share.
#[derive(Debug, Clone)]
pub struct PodDir {
    path: PathBuf,
}

impl PodDir {
    /// Creates `path` as a mount of its own with shared propagation.
    pub fn create(path: &Path) -> Result<PodDir, MountError> {
        std::fs::create_dir_all(path).map_err(|e| MountError::Create(path.to_path_buf(), e))?;
        if !mounts_below(path).iter().any(|m| m == path) {
            mount(path, path, None, libc::MS_BIND, "the pod directory")?;
        }
        let none = Path::new("none");
        mount(none, path, None, libc::MS_PRIVATE, "private propagation")?;
        mount(none, path, None, libc::MS_SHARED, "shared propagation")?;
        Ok(PodDir {
            path: path.to_path_buf(),
        })
    }

    pub fn open(path: &Path) -> PodDir {
        PodDir {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts and removes the pod directory with every container's mount points; fails,
    /// keeping it, if anything else is left in it.
    pub fn remove(&self) -> Result<(), MountError> {
        unmount_below(&self.path)?;
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                ContainerFiles::new(self, &name).remove()?;
            }
        }
        match std::fs::remove_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(MountError::Unmount(self.path.clone(), e)),
        }
    }
}

/// One container's files below the pod directory: `<id>/rootfs` and `<id>/mounts/<n>`.
#[derive(Debug, Clone)]
pub struct ContainerFiles {
    dir: PathBuf,
    rel: PathBuf,
}

impl ContainerFiles {
    pub fn new(pod: &PodDir, container: &str) -> ContainerFiles {
        let rel = PathBuf::from(container);
        ContainerFiles {
            dir: pod.path().join(&rel),
            rel,
        }
    }

    /// The root, relative to the pod directory.
    pub fn rootfs_rel(&self) -> String {
        self.rel.join("rootfs").to_string_lossy().into_owned()
    }

    /// The `n`-th bind mount, relative to the pod directory.
    pub fn bind_rel(&self, n: usize) -> String {
        self.rel
            .join("mounts")
            .join(n.to_string())
            .to_string_lossy()
            .into_owned()
    }

    /// Mounts containerd's snapshot (`mounts`, in order) as the root; with none, binds
    /// `prepared` (the spec's root, which containerd mounted already).
    pub fn mount_rootfs(&self, mounts: &[Mount], prepared: &Path) -> Result<(), MountError> {
        let target = self.dir.join("rootfs");
        std::fs::create_dir_all(&target).map_err(|e| MountError::Create(target.clone(), e))?;
        if mounts.is_empty() {
            return mount(
                prepared,
                &target,
                None,
                libc::MS_BIND | libc::MS_REC,
                "the bundle's rootfs",
            );
        }
        for m in mounts {
            let (flags, data) = mount_options(&m.options);
            let bind = m.type_ == "bind" || flags & libc::MS_BIND != 0;
            let fstype = (!bind).then_some(m.type_.as_str());
            mount_data(
                Path::new(&m.source),
                &target,
                fstype,
                flags | if bind { libc::MS_BIND } else { 0 },
                &data,
            )
            .map_err(|e| MountError::Snapshot {
                kind: m.type_.clone(),
                target: target.clone(),
                message: e.to_string(),
            })?;
            if bind && flags & libc::MS_RDONLY != 0 {
                let remount = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
                mount(
                    Path::new("none"),
                    &target,
                    None,
                    remount,
                    "read-only snapshot",
                )?;
            }
        }
        Ok(())
    }

    /// Binds the host's `source` (a file or a directory) as the `n`-th mount; read-only binds
    /// are read-only on the host, so the guest cannot write through them.
    pub fn bind(&self, n: usize, source: &Path, read_only: bool) -> Result<(), MountError> {
        let meta = std::fs::metadata(source)
            .map_err(|_| MountError::MissingSource(source.to_path_buf()))?;
        let target = self.dir.join("mounts").join(n.to_string());
        let parent = target.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent).map_err(|e| MountError::Create(parent.into(), e))?;
        let made = if meta.is_dir() {
            std::fs::create_dir_all(&target)
        } else {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&target)
                .map(drop)
        };
        made.map_err(|e| MountError::Create(target.clone(), e))?;
        let what = source.display().to_string();
        if !read_only {
            return mount(source, &target, None, libc::MS_BIND | libc::MS_REC, &what);
        }
        // Made read-only before it is attached: the copy that propagates to virtiofsd's
        // namespace must be read-only too (a later remount would not reach it).
        bind_read_only(source, &target).map_err(|e| MountError::Mount {
            what,
            target: target.clone(),
            source: e,
        })
    }

    /// Unmounts the container's root and binds and removes their mount points.
    pub fn remove(&self) -> Result<(), MountError> {
        unmount_below(&self.dir)?;
        let mounts = self.dir.join("mounts");
        if let Ok(entries) = std::fs::read_dir(&mounts) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = std::fs::remove_dir(&p).or_else(|_| remove_empty_file(&p));
            }
        }
        for p in [mounts, self.dir.join("rootfs"), self.dir.clone()] {
            match std::fs::remove_dir(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(MountError::Unmount(p, e)),
            }
        }
        Ok(())
    }
}

/// Removes `p` only if it is an empty regular file (a file bind's mount point).
fn remove_empty_file(p: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(p)?;
    if meta.is_file() && meta.len() == 0 {
        std::fs::remove_file(p)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/run/a\040b"), "/run/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    #[test]
    fn snapshot_options() {
        let opts = |o: &[&str]| mount_options(&o.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let (flags, data) = opts(&["index=off", "lowerdir=/a:/b", "upperdir=/u", "workdir=/w"]);
        assert_eq!(
            (flags, data.as_str()),
            (0, "index=off,lowerdir=/a:/b,upperdir=/u,workdir=/w")
        );
        assert_eq!(
            opts(&["rbind", "ro"]).0,
            libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY
        );
    }

    #[test]
    fn relative_names() {
        let pod = PodDir::open(Path::new("/run/pod"));
        let files = ContainerFiles::new(&pod, "web");
        assert_eq!(files.rootfs_rel(), "web/rootfs");
        assert_eq!(files.bind_rel(2), "web/mounts/2");
    }
}
