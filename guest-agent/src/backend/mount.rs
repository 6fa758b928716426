//! Mount requests: option parsing, and preparing a detached mount (fsopen/fsconfig/fsmount or
//! open_tree) in the agent's own context, where the source path is resolved.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

use super::{BackendError, MountSpec, Result};
use crate::sys;

/// File systems whose superblock takes a namespace from the mounting *process* (PID, network,
/// IPC, cgroup): they are mounted by a child that runs inside the container.
pub fn needs_member(fstype: &str) -> bool {
    matches!(fstype, "proc" | "sysfs" | "mqueue" | "cgroup2")
}

/// Mount options split into generic mount attributes and file-system parameters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Options {
    /// MOUNT_ATTR_* bits.
    pub attrs: u32,
    /// MS_* bits for mount(2).
    pub ms_flags: libc::c_ulong,
    /// Recursive bind (rbind).
    pub recursive: bool,
    /// key=value / key parameters for the file system.
    pub params: Vec<(String, Option<String>)>,
}

impl Options {
    /// The file-system parameters as a mount(2) data string.
    pub fn data(&self) -> String {
        self.params
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k.clone(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Parses "ro,nosuid,size=10m".
pub fn parse_options(opts: &str) -> Options {
    let mut o = Options::default();
    for opt in opts.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match opt {
            "ro" => {
                o.attrs |= sys::MOUNT_ATTR_RDONLY;
                o.ms_flags |= libc::MS_RDONLY;
            }
            "rw" => {}
            "nosuid" => {
                o.attrs |= sys::MOUNT_ATTR_NOSUID;
                o.ms_flags |= libc::MS_NOSUID;
            }
            "nodev" => {
                o.attrs |= sys::MOUNT_ATTR_NODEV;
                o.ms_flags |= libc::MS_NODEV;
            }
            "noexec" => {
                o.attrs |= sys::MOUNT_ATTR_NOEXEC;
                o.ms_flags |= libc::MS_NOEXEC;
            }
            "noatime" => {
                o.attrs |= sys::MOUNT_ATTR_NOATIME;
                o.ms_flags |= libc::MS_NOATIME;
            }
            "relatime" => {
                o.attrs |= sys::MOUNT_ATTR_RELATIME;
                o.ms_flags |= libc::MS_RELATIME;
            }
            "strictatime" => {
                o.attrs |= sys::MOUNT_ATTR_STRICTATIME;
                o.ms_flags |= libc::MS_STRICTATIME;
            }
            "nodiratime" => {
                o.attrs |= sys::MOUNT_ATTR_NODIRATIME;
                o.ms_flags |= libc::MS_NODIRATIME;
            }
            // The defaults of a new mount; every container mount is private already.
            "suid" | "dev" | "exec" | "atime" | "diratime" | "private" | "rprivate" => {}
            "rbind" => o.recursive = true,
            "bind" => {}
            other => match other.split_once('=') {
                Some((k, v)) => o.params.push((k.to_string(), Some(v.to_string()))),
                None => o.params.push((other.to_string(), None)),
            },
        }
    }
    o
}

/// Builds a detached mount for `spec` in the agent's context: open_tree for "bind", the mount
/// API for everything else. `extra` lets the kernel backend add FSCONFIG_SET_CONTAINER.
pub fn detached_mount(spec: &MountSpec, extra: &dyn Fn(&OwnedFd) -> Result<()>) -> Result<OwnedFd> {
    if !spec.subdir.is_empty() {
        return subdir_of(spec);
    }
    let opts = parse_options(&spec.options);
    let src = CString::new(spec.source.as_str())
        .map_err(|_| BackendError::new(libc::EINVAL, "source").field("source"))?;
    if spec.fstype == "bind" {
        let fd = sys::open_tree_clone(&src, opts.recursive).map_err(|e| {
            BackendError::new(e, format!("bind source {}", spec.source)).field("source")
        })?;
        if opts.attrs != 0 {
            set_attrs(&fd, opts.attrs)?;
        }
        return Ok(fd);
    }
    let fstype = CString::new(spec.fstype.as_str())
        .map_err(|_| BackendError::new(libc::EINVAL, "fstype").field("fstype"))?;
    let fs = sys::fsopen(&fstype).map_err(|e| {
        BackendError::new(e, format!("file system type {:?}", spec.fstype)).field("fstype")
    })?;
    extra(&fs)?;
    if opts.attrs & sys::MOUNT_ATTR_RDONLY != 0 {
        // A read-only mount of a read-write superblock still opens the device for writing, which
        // a write-protected disk refuses (EACCES): the superblock itself must be read-only.
        sys::fsconfig_set(fs.as_raw_fd(), c"ro", None)
            .map_err(|e| BackendError::new(e, "read-only superblock").field("options"))?;
    }
    if !spec.source.is_empty() && spec.source != "none" {
        sys::fsconfig_set(fs.as_raw_fd(), c"source", Some(&src))
            .map_err(|e| BackendError::new(e, format!("source {}", spec.source)).field("source"))?;
    }
    for (k, v) in &opts.params {
        let key = CString::new(k.as_str()).unwrap_or_default();
        let val = v
            .as_ref()
            .map(|v| CString::new(v.as_str()).unwrap_or_default());
        sys::fsconfig_set(fs.as_raw_fd(), &key, val.as_deref())
            .map_err(|e| BackendError::new(e, format!("mount option {k}")).field("options"))?;
    }
    sys::fsconfig_create(fs.as_raw_fd()).map_err(|e| {
        // A missing device shows up here (the source is only opened on create).
        BackendError::new(e, format!("mounting {} ({})", spec.source, spec.fstype)).field("source")
    })?;
    let mnt = sys::fsmount(fs.as_raw_fd(), opts.attrs)
        .map_err(|e| BackendError::new(e, format!("fsmount {}", spec.fstype)).field("options"))?;
    Ok(mnt)
}

/// Where the agent keeps a file system whose parts are containers' mounts (`subdir`).
const SHARED_MOUNTS: &str = "/run/capsule-shares";

/// A detached copy of `spec.subdir` of the file system `spec` names. The file system (a pod's
/// virtio-fs share) is mounted once in the agent's own namespace, at
/// `/run/capsule-shares/<source>`, and each part is cloned from there: Linux 6.12 cannot clone
/// part of a detached mount, and one superblock serves every container of the pod.
fn subdir_of(spec: &MountSpec) -> Result<OwnedFd> {
    static MOUNTED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let fail = |e: i32, what: String| BackendError::new(e, what).field("subdir");
    let base = format!("{SHARED_MOUNTS}/{}", spec.source);
    {
        let mut mounted = MOUNTED.lock().unwrap_or_else(|p| p.into_inner());
        if !mounted.contains(&spec.source) {
            let whole = MountSpec {
                subdir: String::new(),
                options: String::new(),
                ..spec.clone()
            };
            let mnt = detached_mount(&whole, &|_| Ok(()))?;
            std::fs::create_dir_all(&base).map_err(|e| {
                fail(
                    e.raw_os_error().unwrap_or(libc::EIO),
                    format!("creating {base}"),
                )
            })?;
            let base_c = CString::new(base.as_str()).unwrap_or_default();
            sys::move_mount_fd(mnt.as_raw_fd(), &base_c)
                .map_err(|e| fail(e, format!("mounting {} on {base}", spec.source)))?;
            mounted.push(spec.source.clone());
        }
    }
    let path = CString::new(format!("{base}/{}", spec.subdir))
        .map_err(|_| fail(libc::EINVAL, "subdir".into()))?;
    let fd = sys::open_tree_clone(&path, true)
        .map_err(|e| fail(e, format!("directory {} of {}", spec.subdir, spec.source)))?;
    let attrs = parse_options(&spec.options).attrs;
    if attrs != 0 {
        set_attrs(&fd, attrs)?;
    }
    Ok(fd)
}

fn set_attrs(fd: &OwnedFd, attrs: u32) -> Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: u64::from(attrs),
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr with a valid struct of the size passed and an empty path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as u32 | sys::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(BackendError::new(sys::last_errno(), "mount_setattr").field("options"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_attrs_and_params() {
        let o = parse_options("ro, nosuid,size=10m,mode=755,noatime,rbind,dax");
        assert_eq!(
            o.attrs,
            sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOATIME
        );
        assert!(o.recursive);
        assert_eq!(o.data(), "size=10m,mode=755,dax");
        assert_eq!(o.ms_flags & libc::MS_RDONLY, libc::MS_RDONLY);
    }

    #[test]
    fn oci_default_mount_options() {
        let o = parse_options("nosuid,strictatime,mode=755,size=65536k");
        assert_eq!(
            o.attrs,
            sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_STRICTATIME
        );
        assert_eq!(o.ms_flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(o.data(), "mode=755,size=65536k");
        let o = parse_options("nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5");
        assert_eq!(o.data(), "newinstance,ptmxmode=0666,mode=0620,gid=5");
        let o = parse_options("nosuid,noexec,nodev,relatime,ro");
        assert_eq!(
            o.ms_flags,
            libc::MS_NOSUID
                | libc::MS_NOEXEC
                | libc::MS_NODEV
                | libc::MS_RELATIME
                | libc::MS_RDONLY
        );
        assert!(o.data().is_empty());
        let o = parse_options("rbind,rprivate,rw,suid,dev,exec,nodiratime");
        assert!(o.recursive);
        assert_eq!(o.attrs, sys::MOUNT_ATTR_NODIRATIME);
        assert!(o.data().is_empty());
    }
}
