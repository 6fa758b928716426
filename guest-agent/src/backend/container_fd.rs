//! The container fd ioctls of the kernel series (`CONTAINER_IOC_*`, issue 16): request
//! numbers and argument structs ([`ioc`], as `include/uapi/linux/container.h` defines them), and
//! one function per operation that issues it and turns the kernel's errno into a message that
//! names the input. [`super::kernel`] calls them; CONTAINER_IOC_REBOOT forks, so it stays there.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::child::cstr;
use super::{BackendError, Device, NsShare, Result};
use crate::sys;

fn err(errno: i32, what: impl Into<String>) -> BackendError {
    BackendError::new(errno, what)
}

/// ioctl requests on a container fd (`CONTAINER_IOC_*`, magic 0xC7) and their arguments.
pub mod ioc {
    const MAGIC: u64 = 0xC7;
    const WRITE: u64 = 1;

    const fn io(nr: u64) -> u64 {
        (MAGIC << 8) | nr
    }
    const fn iow(nr: u64, size: usize) -> u64 {
        (WRITE << 30) | ((size as u64) << 16) | (MAGIC << 8) | nr
    }

    /// struct container_ns.
    #[repr(C)]
    pub struct ContainerNs {
        pub fd: i32,
        pub nstype: u32,
    }
    /// struct container_policy.
    #[repr(C)]
    pub struct ContainerPolicy {
        pub lsm: u64,
        pub policy: u64,
        pub len: u32,
        pub flags: u32,
    }
    /// struct container_dev.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct ContainerDev {
        pub kind: u32,
        pub major: u32,
        pub minor: u32,
        pub reserved: u32,
    }
    /// struct container_devices.
    #[repr(C)]
    pub struct ContainerDevices {
        pub devs: u64,
        pub count: u32,
        pub flags: u32,
    }
    /// CONTAINER_DEV_ANY: every minor.
    pub const DEV_ANY: u32 = 0xffff_ffff;

    pub const SETNS: u64 = iow(1, std::mem::size_of::<ContainerNs>());
    pub const REBOOT: u64 = io(2);
    pub const SET_CGROUP: u64 = io(3);
    pub const SET_ROOT: u64 = io(4);
    pub const SET_POLICY: u64 = iow(5, std::mem::size_of::<ContainerPolicy>());
    pub const SET_DEVICES: u64 = iow(6, std::mem::size_of::<ContainerDevices>());
}

fn ioctl(fd: BorrowedFd<'_>, request: u64, arg: libc::c_ulong) -> std::result::Result<(), i32> {
    // SAFETY: an ioctl on the container fd we own; `arg` is an fd, or a pointer to a
    // repr(C) argument struct the caller keeps alive for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::c_ulong, arg) };
    if r < 0 {
        Err(sys::last_errno())
    } else {
        Ok(())
    }
}

/// The error of a failed CONTAINER_IOC_REBOOT of container `name`.
pub fn reboot_error(name: &str, errno: i32) -> BackendError {
    let c = name;
    let what = match errno {
        libc::EINTR => {
            format!("rebooting container {c:?}: interrupted while waiting for its members to die")
        }
        libc::EDEADLK => format!("rebooting container {c:?}: the caller is one of its members"),
        _ => format!("rebooting container {c:?} (CONTAINER_IOC_REBOOT)"),
    };
    err(errno, what)
}

/// CONTAINER_IOC_SETNS: container `name` (`fd`) takes one namespace of another.
pub fn set_namespace(fd: BorrowedFd<'_>, name: &str, share: &NsShare) -> Result<()> {
    let arg = ioc::ContainerNs {
        fd: share.fd.as_raw_fd(),
        nstype: share.nstype,
    };
    ioctl(
        fd,
        ioc::SETNS,
        &arg as *const ioc::ContainerNs as libc::c_ulong,
    )
    .map_err(|errno| {
        let (c, ns, from) = (name, share.ns_name, &share.from);
        let what = match errno {
            libc::EBUSY => format!(
                "the {ns} namespace of container {c:?} cannot be changed any more: a \
                     process has been forked into it (pid and mnt namespaces can only be \
                     taken before the container's init starts)"
            ),
            libc::ENOENT => format!("container {from:?} has no {ns} namespace yet"),
            libc::EINVAL => format!(
                "container {c:?} cannot take the {ns} namespace of {from:?} (a pid \
                     namespace must be at or below the agent's)"
            ),
            _ => format!("container {c:?} taking the {ns} namespace of {from:?}"),
        };
        err(errno, what)
    })
}

/// CONTAINER_IOC_SET_CGROUP: moves container `name` to the cgroup v2 directory `dir`.
pub fn set_cgroup(fd: BorrowedFd<'_>, name: &str, dir: &Path) -> Result<()> {
    let path = cstr(&dir.to_string_lossy());
    // SAFETY: open(2) of a NUL-terminated path.
    let raw = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(err(sys::last_errno(), format!("opening {}", dir.display())));
    }
    // SAFETY: a new descriptor we own.
    let dfd = unsafe { OwnedFd::from_raw_fd(raw) };
    ioctl(fd, ioc::SET_CGROUP, dfd.as_raw_fd() as libc::c_ulong).map_err(|errno| {
        let (c, d) = (name, dir.display());
        let what = match errno {
            libc::EBUSY => format!(
                "cgroup {d} cannot take container {c:?}: it has processes or \
                     controllers enabled for its children, or the container has nested \
                     containers"
            ),
            libc::EINVAL => format!("cgroup {d} is inside container {c:?}'s own cgroup"),
            libc::EOPNOTSUPP => format!("cgroup {d} is a threaded cgroup"),
            libc::EBADF => format!("{d} is not a cgroup v2 directory"),
            _ => format!("moving container {c:?} to cgroup {d}"),
        };
        err(errno, what)
    })?;
    Ok(())
}

/// CONTAINER_IOC_SET_ROOT: `path`, opened through the container fd, becomes the root of
/// processes started from now on.
pub fn set_root(fd: BorrowedFd<'_>, name: &str, path: &str) -> Result<()> {
    let rel = path.trim_start_matches('/');
    let rel = cstr(if rel.is_empty() { "." } else { rel });
    // SAFETY: openat with the container fd as dirfd (the path is relative to its root).
    let raw = unsafe {
        libc::openat(
            fd.as_raw_fd(),
            rel.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    let c = name;
    if raw < 0 {
        let errno = sys::last_errno();
        let what = match errno {
            libc::ENOENT => format!("{path} does not exist in container {c:?}"),
            libc::ENOTDIR => format!("{path} is not a directory in container {c:?}"),
            _ => format!("opening {path} in container {c:?}"),
        };
        return Err(err(errno, what));
    }
    // SAFETY: a new descriptor we own.
    let dfd = unsafe { OwnedFd::from_raw_fd(raw) };
    ioctl(fd, ioc::SET_ROOT, dfd.as_raw_fd() as libc::c_ulong).map_err(|errno| {
        let what = match errno {
            libc::EINVAL => {
                format!("{path} is not in the mount namespace of container {c:?}")
            }
            libc::ENOENT => format!("container {c:?} has no root yet"),
            libc::EACCES => format!("no search permission on {path}"),
            _ => format!("setting the root of container {c:?} to {path}"),
        };
        err(errno, what)
    })
}

/// CONTAINER_IOC_SET_POLICY: hands LSM `lsm` a policy for the container.
pub fn set_policy(fd: BorrowedFd<'_>, name: &str, lsm: &str, policy: &[u8]) -> Result<()> {
    let lsm_name = cstr(lsm);
    let arg = ioc::ContainerPolicy {
        lsm: lsm_name.as_ptr() as u64,
        policy: policy.as_ptr() as u64,
        len: policy.len() as u32,
        flags: 0,
    };
    ioctl(
        fd,
        ioc::SET_POLICY,
        &arg as *const ioc::ContainerPolicy as libc::c_ulong,
    )
    .map_err(|errno| {
        let c = name;
        let what = match errno {
            libc::EOPNOTSUPP => {
                format!("no LSM named {lsm:?} takes container policies in this guest kernel")
            }
            libc::EINVAL => format!("LSM {lsm:?} rejected the policy for container {c:?}"),
            libc::E2BIG => "the policy is larger than 4096 bytes".to_string(),
            _ => format!("setting the {lsm} policy of container {c:?}"),
        };
        err(errno, what)
    })
}

/// CONTAINER_IOC_SET_DEVICES: replaces the list of devices members may open.
pub fn set_devices(fd: BorrowedFd<'_>, name: &str, devices: &[Device]) -> Result<()> {
    let list: Vec<ioc::ContainerDev> = devices
        .iter()
        .map(|d| ioc::ContainerDev {
            kind: u32::from(d.kind),
            major: d.major,
            minor: d.minor.unwrap_or(ioc::DEV_ANY),
            reserved: 0,
        })
        .collect();
    let arg = ioc::ContainerDevices {
        devs: list.as_ptr() as u64,
        count: list.len() as u32,
        flags: 0,
    };
    ioctl(
        fd,
        ioc::SET_DEVICES,
        &arg as *const ioc::ContainerDevices as libc::c_ulong,
    )
    .map_err(|errno| {
        err(
            errno,
            format!("setting the device list of container {:?}", name),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctls_match_the_uapi_header() {
        let Some(text) = super::super::uapi_header::text() else {
            return;
        };
        let define = |name: &str| super::super::uapi_header::define(&text, name);
        assert_eq!(define("CONTAINER_IOC_MAGIC"), Some(0xC7));
        // Each ioctl's direction, number and argument struct as the header defines it.
        let ioctls: &[(&str, &str, u64)] = &[
            (
                "CONTAINER_IOC_SETNS",
                "_IOW(CONTAINER_IOC_MAGIC, 1, struct container_ns)",
                ioc::SETNS,
            ),
            (
                "CONTAINER_IOC_REBOOT",
                "_IO(CONTAINER_IOC_MAGIC, 2)",
                ioc::REBOOT,
            ),
            (
                "CONTAINER_IOC_SET_CGROUP",
                "_IO(CONTAINER_IOC_MAGIC, 3)",
                ioc::SET_CGROUP,
            ),
            (
                "CONTAINER_IOC_SET_ROOT",
                "_IO(CONTAINER_IOC_MAGIC, 4)",
                ioc::SET_ROOT,
            ),
            (
                "CONTAINER_IOC_SET_POLICY",
                "_IOW(CONTAINER_IOC_MAGIC, 5, struct container_policy)",
                ioc::SET_POLICY,
            ),
            (
                "CONTAINER_IOC_SET_DEVICES",
                "_IOW(CONTAINER_IOC_MAGIC, 6, struct container_devices)",
                ioc::SET_DEVICES,
            ),
        ];
        for (name, def, _) in ioctls {
            assert!(
                text.lines()
                    .any(|l| l.starts_with("#define") && l.contains(name) && l.contains(def)),
                "{name} is not {def} in the uapi header"
            );
        }
        // The values the kernel computes (asm-generic/ioctl.h) for those definitions.
        assert_eq!(ioc::SETNS, 0x4008_c701);
        assert_eq!(ioc::REBOOT, 0xc702);
        assert_eq!(ioc::SET_CGROUP, 0xc703);
        assert_eq!(ioc::SET_ROOT, 0xc704);
        assert_eq!(ioc::SET_POLICY, 0x4018_c705);
        assert_eq!(ioc::SET_DEVICES, 0x4010_c706);
        assert_eq!(std::mem::size_of::<ioc::ContainerDev>(), 16);
        assert_eq!(ioc::DEV_ANY, 0xffff_ffff);
    }
}
