//! Thin wrappers over the Linux system calls the agent needs and libc does not wrap: clone3,
//! pidfds, setns, the mount API, keyctl. Every function returns the raw errno on failure and
//! does not allocate, so the ones marked *fork-safe* may be called between fork and exec.

use std::ffi::CStr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// An errno value.
pub type Errno = i32;

pub const CLONE_PIDFD: u64 = 0x1000;
pub const CLONE_PARENT: u64 = 0x8000;
pub const CLONE_NEWNS: u64 = 0x0002_0000;
pub const CLONE_NEWCGROUP: u64 = 0x0200_0000;
pub const CLONE_NEWUTS: u64 = 0x0400_0000;
pub const CLONE_NEWIPC: u64 = 0x0800_0000;
pub const CLONE_NEWUSER: u64 = 0x1000_0000;
pub const CLONE_NEWPID: u64 = 0x2000_0000;
pub const CLONE_NEWNET: u64 = 0x4000_0000;
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

pub const FSCONFIG_SET_FLAG: u32 = 0;
pub const FSCONFIG_SET_STRING: u32 = 1;
pub const FSCONFIG_CMD_CREATE: u32 = 6;
pub const FSOPEN_CLOEXEC: u32 = 1;
pub const FSMOUNT_CLOEXEC: u32 = 1;
pub const MOUNT_ATTR_RDONLY: u32 = 0x1;
pub const MOUNT_ATTR_NOSUID: u32 = 0x2;
pub const MOUNT_ATTR_NODEV: u32 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u32 = 0x8;
pub const MOUNT_ATTR_RELATIME: u32 = 0x0;
pub const MOUNT_ATTR_NOATIME: u32 = 0x10;
pub const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
pub const OPEN_TREE_CLONE: u32 = 1;
pub const AT_RECURSIVE: u32 = 0x8000;

pub const KEY_SPEC_SESSION_KEYRING: i32 = -3;
pub const KEY_SPEC_REQKEY_AUTH_KEY: i32 = -7;
pub const KEYCTL_JOIN_SESSION_KEYRING: i32 = 1;
pub const KEYCTL_SETPERM: i32 = 5;
pub const KEYCTL_DESCRIBE: i32 = 6;
pub const KEYCTL_LINK: i32 = 8;
pub const KEYCTL_READ: i32 = 11;
pub const KEYCTL_INSTANTIATE: i32 = 12;
pub const KEYCTL_NEGATE: i32 = 13;
pub const KEYCTL_SET_TIMEOUT: i32 = 15;
pub const KEYCTL_ASSUME_AUTHORITY: i32 = 16;

/// `struct clone_args` of clone3(2) (version 2, with `cgroup`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

fn errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn check(r: libc::c_long) -> Result<libc::c_long, Errno> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// clone3(2) without CLONE_VM: returns 0 in the child, the child's pid in the parent.
/// Fork-safe.
///
/// # Safety
/// In a multi-threaded process the child may only run async-signal-safe code until it execs
/// or exits: no allocation, no locks.
pub unsafe fn clone3(args: &mut CloneArgs) -> Result<libc::pid_t, Errno> {
    // SAFETY: `args` is a valid clone_args of the size passed; without CLONE_VM the child gets
    // a copy of the address space, so no stack is shared. The caller upholds the child rules.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    check(r).map(|p| p as libc::pid_t)
}

/// pidfd_open(2).
pub fn pidfd_open(pid: libc::pid_t) -> Result<OwnedFd, Errno> {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: on success the kernel returned a new file descriptor we now own.
    check(r).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// pidfd_send_signal(2). Fork-safe.
pub fn pidfd_send_signal(pidfd: RawFd, sig: i32) -> Result<(), Errno> {
    // SAFETY: plain syscall; a null siginfo means "as kill(2)".
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check(r).map(|_| ())
}

/// setns(2) on a namespace fd or a pidfd. Fork-safe.
pub fn setns(fd: RawFd, flags: u64) -> Result<(), Errno> {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::setns(fd, flags as libc::c_int) };
    check(r as libc::c_long).map(|_| ())
}

/// fsopen(2).
pub fn fsopen(fstype: &CStr) -> Result<OwnedFd, Errno> {
    // SAFETY: `fstype` is a valid NUL-terminated string.
    let r = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) };
    // SAFETY: a new fd on success.
    check(r).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// fsconfig(2) with a string value (`value: None` sets a flag).
pub fn fsconfig_set(fd: RawFd, key: &CStr, value: Option<&CStr>) -> Result<(), Errno> {
    let (cmd, v) = match value {
        Some(v) => (FSCONFIG_SET_STRING, v.as_ptr()),
        None => (FSCONFIG_SET_FLAG, std::ptr::null()),
    };
    // SAFETY: valid NUL-terminated strings (or null for a flag), aux 0.
    let r = unsafe { libc::syscall(libc::SYS_fsconfig, fd, cmd, key.as_ptr(), v, 0) };
    check(r).map(|_| ())
}

/// fsconfig(FSCONFIG_CMD_CREATE).
pub fn fsconfig_create(fd: RawFd) -> Result<(), Errno> {
    // SAFETY: plain syscall, null key and value as the command requires.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fd,
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    check(r).map(|_| ())
}

/// fsmount(2).
pub fn fsmount(fd: RawFd, attrs: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_fsmount, fd, FSMOUNT_CLOEXEC, attrs) };
    // SAFETY: a new fd on success.
    check(r).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// open_tree(2) with OPEN_TREE_CLONE (a detached copy of the tree at `path`).
pub fn open_tree_clone(path: &CStr, recursive: bool) -> Result<OwnedFd, Errno> {
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as u32 | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: valid NUL-terminated path.
    let r = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    // SAFETY: a new fd on success.
    check(r).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// move_mount(2) of a detached mount fd onto `target`. Fork-safe.
pub fn move_mount_fd(mnt: RawFd, target: &CStr) -> Result<(), Errno> {
    // SAFETY: valid NUL-terminated strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(r).map(|_| ())
}

/// keyctl(2) with up to four integer arguments. Fork-safe.
pub fn keyctl(
    op: i32,
    a2: libc::c_ulong,
    a3: libc::c_ulong,
    a4: libc::c_ulong,
    a5: libc::c_ulong,
) -> Result<libc::c_long, Errno> {
    // SAFETY: the caller passes arguments valid for `op` (pointers point to live buffers).
    let r = unsafe { libc::syscall(libc::SYS_keyctl, op, a2, a3, a4, a5) };
    check(r)
}

/// add_key(2).
pub fn add_key(ktype: &CStr, desc: &CStr, payload: &[u8], keyring: i32) -> Result<i32, Errno> {
    // SAFETY: valid strings and a payload buffer of the length passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            ktype.as_ptr(),
            desc.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            keyring,
        )
    };
    check(r).map(|s| s as i32)
}

/// keyctl(KEYCTL_DESCRIBE) into a Vec ("type;uid;gid;perm;description").
pub fn key_describe(serial: i32) -> Result<String, Errno> {
    let bytes = key_read_op(KEYCTL_DESCRIBE, serial)?;
    let s = bytes.strip_suffix(&[0]).unwrap_or(&bytes);
    Ok(String::from_utf8_lossy(s).into_owned())
}

/// keyctl(KEYCTL_READ) into a Vec.
pub fn key_read(serial: i32) -> Result<Vec<u8>, Errno> {
    key_read_op(KEYCTL_READ, serial)
}

fn key_read_op(op: i32, serial: i32) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; 512];
    loop {
        let n = keyctl(
            op,
            serial as libc::c_ulong,
            buf.as_mut_ptr() as libc::c_ulong,
            buf.len() as libc::c_ulong,
            0,
        )? as usize;
        if n <= buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        if n > (1 << 21) {
            return Err(libc::E2BIG);
        }
        buf.resize(n, 0);
    }
}

/// pipe2(O_CLOEXEC): (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd), Errno> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for two descriptors.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    check(r as libc::c_long)?;
    // SAFETY: pipe2 returned two new descriptors we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// write(2) of a whole small buffer, retrying on EINTR. Fork-safe.
pub fn write_all_raw(fd: RawFd, buf: &[u8]) -> Result<(), Errno> {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: the pointer and length describe the live remainder of `buf`.
        let r = unsafe { libc::write(fd, buf[off..].as_ptr().cast(), buf.len() - off) };
        if r < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        off += r as usize;
    }
    Ok(())
}

/// read(2) until `buf` is full or EOF; returns the byte count.
pub fn read_full_raw(fd: RawFd, buf: &mut [u8]) -> Result<usize, Errno> {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: the pointer and length describe the live remainder of `buf`.
        let r = unsafe { libc::read(fd, buf[off..].as_mut_ptr().cast(), buf.len() - off) };
        if r < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            break;
        }
        off += r as usize;
    }
    Ok(off)
}

/// The calling thread's errno, for fork-side code.
pub fn last_errno() -> Errno {
    errno()
}

/// _exit(2). Fork-safe.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and runs no destructors or atexit handlers.
    unsafe { libc::_exit(code) }
}
