//! The system calls of a jail: the PID namespace (in the supervisor's machine thread), the
//! mount, IPC and UTS namespaces, the root and pivot_root (in the VMM process, as root), and
//! the privilege drop once the VM is built.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{inside, Bind, Jail, JailError};

/// Descriptors and file size the VMM may use once jailed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimits {
    pub open_files: u64,
    pub file_size: u64,
}

/// Open files: up to 1023 vsock connections of five descriptors each (a socket and two pipes
/// of the bulk path), with room for the devices.
const OPEN_FILES: u64 = 8192;
/// The least file size limit: what the console log may grow to.
const CONSOLE_LOG_MAX: u64 = 1 << 30;

impl Rlimits {
    /// The limits for a VM whose largest disk has `largest_disk` bytes: the guest may write
    /// anywhere in a disk, the console log grows up to [`CONSOLE_LOG_MAX`].
    pub fn for_disks(largest_disk: u64) -> Self {
        Rlimits {
            open_files: OPEN_FILES,
            file_size: largest_disk.max(CONSOLE_LOG_MAX),
        }
    }
}

fn cstr(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| JailError::Setup {
        what: format!("use the path {}", path.display()),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

fn check(ret: libc::c_int, what: impl FnOnce() -> String) -> Result<(), JailError> {
    if ret != 0 {
        return Err(JailError::Setup {
            what: what(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), JailError> {
    let source = source.map(cstr).transpose()?;
    let c_target = cstr(target)?;
    let fstype = fstype.map(|s| CString::new(s).expect("a file system name has no NUL"));
    let data = data.map(|s| CString::new(s).expect("mount options have no NUL"));
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    let ret = unsafe {
        libc::mount(
            ptr(&source),
            c_target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    check(ret, || format!("mount {}", target.display()))
}

/// Gives the calling thread a new PID namespace for the children it starts next: the VMM it
/// forks is PID 1 there and sees no other process. Only this thread is affected.
pub fn unshare_pid_namespace() -> Result<(), JailError> {
    // SAFETY: unshare changes only the namespace this thread's future children get.
    let ret = unsafe { libc::unshare(libc::CLONE_NEWPID) };
    check(ret, || "unshare the PID namespace".into())
}

/// A device node for the jail: the host's node, when it exists.
fn device(path: &str, needed: bool) -> Option<(&str, libc::dev_t)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(path).ok().filter(|_| needed)?;
    meta.file_type()
        .is_char_device()
        .then(|| (path, meta.rdev()))
}

/// Enters the jail: new mount, IPC and UTS namespaces, a tmpfs root on `jail.root` with the
/// `binds` and the device nodes, `pivot_root` into it, and the root made read-only. The
/// calling process must be single-threaded and root; it stays root.
pub fn enter(jail: &Jail, binds: &[Bind], tun: bool) -> Result<(), JailError> {
    let devices: Vec<_> = inside::DEVICES
        .iter()
        .filter_map(|d| device(d, tun || !d.ends_with("/tun")))
        .collect();
    // SAFETY: unshare on a single-threaded process; it only gives it new namespaces.
    let ret = unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS) };
    check(ret, || "unshare the mount, IPC and UTS namespaces".into())?;
    // Nothing mounted from here on reaches the host's mount namespace.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    let root = &jail.root;
    mount(
        Some(Path::new("capsule-jail")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("size=64k,nr_inodes=64,mode=755"),
    )?;
    let at = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    for bind in binds {
        let target = at(&bind.inside);
        let made = if bind.dir {
            std::fs::create_dir(&target)
        } else {
            std::fs::File::create(&target).map(drop)
        };
        made.map_err(JailError::setup(format!("create {}", target.display())))?;
        mount(Some(&bind.host), &target, None, libc::MS_BIND, None)?;
        let ro = if bind.read_only { libc::MS_RDONLY } else { 0 };
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
        mount(None, &target, None, flags | libc::MS_NOEXEC | ro, None)?;
    }
    std::fs::create_dir_all(root.join("dev/net"))
        .map_err(JailError::setup("create /dev in the jail"))?;
    for (path, rdev) in devices {
        let node = at(Path::new(path));
        let c_node = cstr(&node)?;
        // SAFETY: mknod and chown on a path we built; the results are checked.
        let ret = unsafe { libc::mknod(c_node.as_ptr(), libc::S_IFCHR | 0o600, rdev) };
        check(ret, || format!("create the device node {path}"))?;
        // SAFETY: as above.
        let ret = unsafe { libc::chown(c_node.as_ptr(), jail.uid, jail.uid) };
        check(ret, || {
            format!("give the device node {path} to uid {}", jail.uid)
        })?;
    }
    let hostname = b"capsule-vmm";
    // SAFETY: sethostname with a buffer and its length; only this UTS namespace changes.
    let ret = unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) };
    check(ret, || "set the jail's host name".into())?;
    pivot_into(root)?;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        None,
    )
}

/// Makes `root` the process's root, with the old root stacked under it and then detached.
fn pivot_into(root: &Path) -> Result<(), JailError> {
    std::env::set_current_dir(root).map_err(JailError::setup("enter the jail's root"))?;
    let dot = c".";
    // SAFETY: pivot_root(".", ".") with static strings: the old root is mounted over the new
    // one, which this process's cwd names; it is detached right after.
    let ret =
        unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } as libc::c_int;
    check(ret, || "pivot_root into the jail".into())?;
    // SAFETY: umount2 of the old root stacked on "."; MNT_DETACH lets open files keep it.
    let ret = unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) };
    check(ret, || "detach the host's root".into())?;
    std::env::set_current_dir("/").map_err(JailError::setup("enter the jail's root"))
}

fn set_rlimit(
    resource: libc::__rlimit_resource_t,
    value: u64,
    name: &str,
) -> Result<(), JailError> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit with a valid struct.
    let ret = unsafe { libc::setrlimit(resource, &limit) };
    check(ret, || format!("set {name} to {value}"))
}

/// Drops root for good, once the VM is built: `limits`, every capability out of the bounding
/// set, the jail's uid and gid with no supplementary groups, no capabilities left, no_new_privs,
/// and the parent-death signal again (a credential change clears it). The calling process must
/// be single-threaded.
pub fn drop_privileges(jail: &Jail, limits: Rlimits) -> Result<(), JailError> {
    set_rlimit(libc::RLIMIT_NOFILE, limits.open_files, "RLIMIT_NOFILE")?;
    set_rlimit(libc::RLIMIT_FSIZE, limits.file_size, "RLIMIT_FSIZE")?;
    // A write past the file size limit fails with EFBIG instead of killing the VMM.
    // SAFETY: SIG_IGN for SIGXFSZ; no handler runs.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    for cap in 0..64 {
        // SAFETY: prctl on this thread's bounding set; EINVAL past the last capability.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(JailError::Setup {
                what: format!("drop capability {cap} from the bounding set"),
                source: e,
            });
        }
    }
    let id = jail.uid;
    // SAFETY: setgroups with an empty list, then setresgid and setresuid to one id; glibc
    // applies them to every thread (there is one).
    unsafe {
        check(libc::setgroups(0, std::ptr::null()), || {
            "drop the supplementary groups".into()
        })?;
        check(libc::setresgid(id, id, id), || format!("set gid {id}"))?;
        check(libc::setresuid(id, id, id), || format!("set uid {id}"))?;
    }
    clear_capabilities()?;
    // SAFETY: prctl with constant arguments.
    let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(ret, || "set no_new_privs".into())?;
    // SAFETY: as above.
    let ret = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    check(ret, || "set the parent-death signal".into())?;
    if supervisor_gone() {
        return Err(JailError::Setup {
            what: "keep running: the supervisor is gone".into(),
            source: std::io::Error::from(std::io::ErrorKind::BrokenPipe),
        });
    }
    Ok(())
}

/// Whether the supervisor ended before the parent-death signal was set again: it reads the
/// VMM's stdout, a pipe that then has no reader.
fn supervisor_gone() -> bool {
    let mut fd = libc::pollfd {
        fd: 1,
        events: 0,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own, without waiting.
    unsafe { libc::poll(&mut fd, 1, 0) == 1 && fd.revents & libc::POLLERR != 0 }
}

/// Empties the permitted, effective and inheritable sets (setresuid to a non-zero uid has
/// emptied the first two; inheritable is kept by it) and the ambient set.
fn clear_capabilities() -> Result<(), JailError> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset with a version-3 header and its two data structs.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } as libc::c_int;
    check(ret, || "clear the capability sets".into())?;
    // SAFETY: prctl with constant arguments.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    check(ret, || "clear the ambient capabilities".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_size_limit_covers_every_disk_and_the_console() {
        assert_eq!(Rlimits::for_disks(0).file_size, CONSOLE_LOG_MAX);
        assert_eq!(Rlimits::for_disks(8 << 30).file_size, 8 << 30);
    }
}
