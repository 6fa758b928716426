//! PID 1 duties in the guest: the early mounts, child subreaping, standard descriptors, and
//! powering the VM off (sync + reboot(RB_AUTOBOOT): capsule's VMM and QEMU -no-reboot end the VM
//! on reboot; the guest kernel runs with `reboot=k`).

use std::ffi::CStr;

use crate::sys;

struct Early {
    source: &'static CStr,
    target: &'static CStr,
    fstype: &'static CStr,
    flags: libc::c_ulong,
    data: &'static CStr,
}

const EARLY: &[Early] = &[
    Early {
        source: c"proc",
        target: c"/proc",
        fstype: c"proc",
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: c"",
    },
    Early {
        source: c"sysfs",
        target: c"/sys",
        fstype: c"sysfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: c"",
    },
    Early {
        source: c"devtmpfs",
        target: c"/dev",
        fstype: c"devtmpfs",
        flags: libc::MS_NOSUID,
        data: c"mode=0755",
    },
    Early {
        source: c"devpts",
        target: c"/dev/pts",
        fstype: c"devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: c"mode=0620,ptmxmode=0666",
    },
    Early {
        source: c"shm",
        target: c"/dev/shm",
        fstype: c"tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: c"mode=1777",
    },
    Early {
        source: c"run",
        target: c"/run",
        fstype: c"tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: c"mode=0755",
    },
    Early {
        source: c"cgroup2",
        target: c"/sys/fs/cgroup",
        fstype: c"cgroup2",
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: c"",
    },
];

/// Mounts the early file systems; an already mounted one (EBUSY) is fine.
pub fn mount_early() -> Vec<String> {
    let mut problems = Vec::new();
    for m in EARLY {
        // SAFETY: mkdir/mount with static NUL-terminated strings.
        unsafe { libc::mkdir(m.target.as_ptr(), 0o755) };
        // SAFETY: as above.
        let r = unsafe {
            libc::mount(
                m.source.as_ptr(),
                m.target.as_ptr(),
                m.fstype.as_ptr(),
                m.flags,
                m.data.as_ptr().cast(),
            )
        };
        if r < 0 {
            let e = sys::last_errno();
            if e != libc::EBUSY {
                problems.push(format!(
                    "mount {}: {}",
                    m.target.to_string_lossy(),
                    std::io::Error::from_raw_os_error(e)
                ));
            }
        }
    }
    // /dev/ptmx for openpty.
    // SAFETY: symlink with static strings (EEXIST is fine).
    unsafe { libc::symlink(c"pts/ptmx".as_ptr(), c"/dev/ptmx".as_ptr()) };
    problems
}

/// Makes sure descriptors 0, 1 and 2 are open (on the console or /dev/null).
pub fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: fcntl(F_GETFD) only queries.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        // SAFETY: open of static paths; the lowest free descriptor is the one missing.
        unsafe {
            if libc::open(c"/dev/console".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) < 0 {
                libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            }
        }
    }
}

/// Makes orphans of our descendants our children, so the reaper sees them.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Syncs and reboots (which ends the microVM). Never returns.
pub fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    sys::exit_now(1)
}
