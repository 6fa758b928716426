//! Thin wrappers over the Linux system calls the agent needs: clone3, pidfds, setns, the mount
//! API, keyctl, capabilities and resource limits, paths resolved inside a root, and the
//! socket, terminal and descriptor calls of the service, the bridges and the stream port. Raw
//! system calls live here (and in the fork child, `backend::child`), so the layers above are
//! free of `unsafe`. Functions return the raw errno (or an `io::Error`) on failure; the ones
//! marked *fork-safe* do not allocate and may run between fork and exec.

use std::ffi::CStr;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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
pub const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
pub const MOUNT_ATTR_STRICTATIME: u32 = 0x20;
pub const MOUNT_ATTR_NODIRATIME: u32 = 0x80;
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

/// open_tree(2) with OPEN_TREE_CLONE (a detached copy of the tree at `path`). Fork-safe.
pub fn open_tree_clone(path: &CStr, recursive: bool) -> Result<OwnedFd, Errno> {
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as u32 | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: valid NUL-terminated path.
    let r = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    // SAFETY: a new fd on success.
    check(r).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether `fd` (a detached mount, a file) is a directory; errors count as one, so that the
/// caller falls back to a directory target.
pub fn is_directory(fd: &OwnedFd) -> bool {
    // SAFETY: fstat on a valid fd into a zeroed stat buffer.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd.as_raw_fd(), &mut st) < 0 || st.st_mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// umount2(2) with MNT_DETACH.
pub fn umount_detach(target: &CStr) -> Result<(), Errno> {
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    check(r as libc::c_long).map(drop)
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

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    // SAFETY: uname(2) fills the zeroed struct we own; `release` is NUL-terminated by the
    // kernel (and by the zeroing when the call fails).
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        libc::uname(&mut u);
        CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// The agent's own (uid, gid).
pub fn credentials() -> (u32, u32) {
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// `/dev/null`, read-write, close-on-exec.
pub fn open_dev_null() -> Result<OwnedFd, Errno> {
    // SAFETY: open(2) of a static NUL-terminated path.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    check(fd as libc::c_long)?;
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// kill(2).
pub fn kill(pid: libc::pid_t, signal: i32) -> Result<(), Errno> {
    // SAFETY: kill(2) touches no memory of ours.
    check(unsafe { libc::kill(pid, signal) } as libc::c_long).map(drop)
}

/// Sets IFF_UP on the interface `name` through `sock` (a socket of its network namespace).
pub fn interface_up(sock: &OwnedFd, name: &str) -> Result<(), Errno> {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: 0,
        pad: [0; 22],
    };
    let n = name.len().min(15);
    req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: SIOCGIFFLAGS with a properly sized ifreq we own.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } as libc::c_long)?;
    req.flags |= libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS with the same ifreq.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } as libc::c_long)
        .map(drop)
}

/// openpty(3): (master, slave), both close-on-exec.
pub fn openpty() -> Result<(OwnedFd, OwnedFd), Errno> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty with valid out-pointers and null name/termios/winsize.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    check(r as libc::c_long)?;
    // SAFETY: openpty returned two descriptors we now own.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
        // SAFETY: fcntl on descriptors we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((master, slave))
}

/// openat(2) of `path` relative to `dir` (close-on-exec).
pub fn openat(dir: &OwnedFd, path: &CStr, flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: a valid fd and NUL-terminated path.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), path.as_ptr(), flags | libc::O_CLOEXEC) };
    check(fd as libc::c_long)?;
    // SAFETY: a new fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The slave of the pseudo-terminal master `master` (unlocked, TIOCGPTPEER: no path lookup,
/// so it works for a devpts instance the agent has not mounted).
pub fn pty_peer(master: &OwnedFd) -> Result<OwnedFd, Errno> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK with a pointer to a live int, TIOCGPTPEER with flags, on our fd.
    unsafe {
        check(libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) as libc::c_long)?;
        let fd = libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        check(fd as libc::c_long)?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// TIOCSWINSZ on a terminal.
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> Result<(), Errno> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize.
    check(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } as libc::c_long).map(drop)
}

/// Sets O_NONBLOCK on a descriptor the caller holds.
pub fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor the caller holds.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// Clears O_NONBLOCK on a descriptor the caller holds.
pub fn set_blocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor the caller holds.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
}

/// A socket in the agent's own namespaces (close-on-exec).
pub fn socket(domain: i32, ty: i32, protocol: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: socket(2) with plain integer arguments.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) };
    check(fd as libc::c_long)?;
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One read(2) into `buf`.
pub fn read(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One write(2) from `buf`.
pub fn write(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Registers an owned descriptor with tokio's reactor.
pub fn async_fd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd always returns the descriptor it owns, open until dropped.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(std::io::Error::from)
}

/// An encoded socket address.
pub struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    /// An AF_INET or AF_INET6 address.
    pub fn inet(a: &SocketAddr) -> SockAddr {
        // SAFETY: sockaddr_storage is plain old data; zero is a valid value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match a {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin)
                };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.ip().octets(),
                    },
                    sin6_scope_id: v6.scope_id(),
                };
                // SAFETY: as above, for sockaddr_in6.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6)
                };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        SockAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    /// An AF_UNIX address; `path` must be shorter than `sun_path` (checked by the caller).
    pub fn unix(path: &str) -> SockAddr {
        // SAFETY: sockaddr_storage and sockaddr_un are plain old data.
        let (mut storage, mut sun): (libc::sockaddr_storage, libc::sockaddr_un) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in sun.sun_path.iter_mut().zip(path.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: sockaddr_storage is larger than sockaddr_un and suitably aligned.
        unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sun) };
        let len = std::mem::size_of::<libc::sa_family_t>() + path.len().min(107) + 1;
        SockAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }
}

/// connect(2); a non-blocking socket answers EINPROGRESS (see [`socket_error`]).
pub fn connect(fd: &OwnedFd, a: &SockAddr) -> std::io::Result<()> {
    // SAFETY: connect with a valid sockaddr of `len` bytes.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&a.storage as *const libc::sockaddr_storage).cast(),
            a.len,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The pending error of a socket (SO_ERROR), 0 for none.
pub fn socket_error(fd: &OwnedFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_ERROR into a local int of the length passed.
    unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut l,
        )
    };
    err
}

/// SO_REUSEADDR, bind(2) and listen(2).
pub fn bind_listen(fd: &OwnedFd, a: &SockAddr, backlog: i32) -> std::io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: SO_REUSEADDR with a local int.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // SAFETY: bind with a valid sockaddr of `len` bytes.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&a.storage as *const libc::sockaddr_storage).cast(),
            a.len,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: listen(2) on our socket.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

// Process attributes of an exec child: resource limits, capabilities, no_new_privs. All
// fork-safe.

/// prctl(2) with integer arguments.
fn prctl(op: i32, a: libc::c_ulong, b: libc::c_ulong) -> Result<(), Errno> {
    // SAFETY: the prctl operations used here take integers only.
    let r = unsafe { libc::prctl(op, a, b, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    check(r as libc::c_long).map(drop)
}

/// prlimit(2) of the calling process. Fork-safe.
pub fn set_rlimit(resource: u32, soft: u64, hard: u64) -> Result<(), Errno> {
    let limit = libc::rlimit64 {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: a valid rlimit64 to read and a null old-limit pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0,
            resource,
            &limit as *const libc::rlimit64,
            std::ptr::null_mut::<libc::rlimit64>(),
        )
    };
    check(r).map(drop)
}

/// PR_CAPBSET_DROP of capability `cap`. Fork-safe.
pub fn capbset_drop(cap: u32) -> Result<(), Errno> {
    prctl(libc::PR_CAPBSET_DROP, cap.into(), 0)
}

/// PR_SET_KEEPCAPS: keep the permitted set across a change from uid 0. Fork-safe.
pub fn set_keepcaps(keep: bool) -> Result<(), Errno> {
    prctl(libc::PR_SET_KEEPCAPS, keep.into(), 0)
}

/// capset(2) of the calling thread's three sets (64-bit masks, version 3). Fork-safe.
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> Result<(), Errno> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let half = |shift: u32| Data {
        effective: (effective >> shift) as u32,
        permitted: (permitted >> shift) as u32,
        inheritable: (inheritable >> shift) as u32,
    };
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [half(0), half(32)];
    // SAFETY: a version-3 header and the two data structs version 3 reads.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
    check(r).map(drop)
}

/// PR_CAP_AMBIENT_RAISE of capability `cap`. Fork-safe.
pub fn ambient_raise(cap: u32) -> Result<(), Errno> {
    // SAFETY: integer arguments only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
            cap as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check(r as libc::c_long).map(drop)
}

/// PR_SET_NO_NEW_PRIVS. Fork-safe.
pub fn set_no_new_privs() -> Result<(), Errno> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0)
}

// Paths inside a container root and the mounts over them (FinishRoot). All fork-safe.

/// `open("/", O_PATH | O_DIRECTORY)`: the caller's root. Fork-safe.
pub fn open_root() -> Result<OwnedFd, Errno> {
    // SAFETY: a static NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c"/".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    check(fd as libc::c_long)?;
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// openat2(2) of `path` with O_PATH, resolved as if `root` were the root directory
/// (RESOLVE_IN_ROOT, no magic links): `..` and symlinks cannot leave it. Fork-safe.
pub fn open_in_root(root: RawFd, path: &CStr) -> Result<OwnedFd, Errno> {
    // SAFETY: open_how is plain old data.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a NUL-terminated path and an open_how of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    // SAFETY: a new descriptor we own on success.
    check(r).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// fstat(2): (st_mode, st_rdev, st_dev). Fork-safe.
pub fn fstat(fd: RawFd) -> Result<(u32, u64, u64), Errno> {
    // SAFETY: stat is plain old data, filled by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a stat we own.
    check(unsafe { libc::fstat(fd, &mut st) } as libc::c_long)?;
    Ok((st.st_mode, st.st_rdev, st.st_dev))
}

/// stat(2) `st_dev`: the device of the file system holding `path`.
pub fn stat_dev(path: &CStr) -> Result<u64, Errno> {
    // SAFETY: stat is plain old data, filled by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a stat we own.
    check(unsafe { libc::stat(path.as_ptr(), &mut st) } as libc::c_long)?;
    Ok(st.st_dev)
}

/// The file system magic of the file behind `fd` (fstatfs(2) `f_type`). Fork-safe.
pub fn fs_magic(fd: RawFd) -> Result<i64, Errno> {
    // SAFETY: statfs is plain old data, filled by the kernel.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a statfs we own.
    check(unsafe { libc::fstatfs(fd, &mut st) } as libc::c_long)?;
    Ok(st.f_type as i64)
}

/// A character device node `name` in `dir` with exactly `mode` (umask does not apply), owned
/// by 0:0. Fork-safe.
pub fn make_char_device(
    dir: RawFd,
    name: &CStr,
    mode: u32,
    major: u32,
    minor: u32,
) -> Result<(), Errno> {
    let dev = libc::makedev(major, minor);
    // SAFETY: a NUL-terminated name relative to a directory fd.
    check(unsafe { libc::mknodat(dir, name.as_ptr(), libc::S_IFCHR | mode, dev) } as libc::c_long)?;
    // SAFETY: as above; the node was just created.
    check(unsafe { libc::fchmodat(dir, name.as_ptr(), mode, 0) } as libc::c_long)?;
    // SAFETY: as above; AT_SYMLINK_NOFOLLOW.
    check(
        unsafe { libc::fchownat(dir, name.as_ptr(), 0, 0, libc::AT_SYMLINK_NOFOLLOW) }
            as libc::c_long,
    )
    .map(drop)
}

/// symlinkat(2): `dir/name` → `target`. Fork-safe.
pub fn symlink_at(target: &CStr, dir: RawFd, name: &CStr) -> Result<(), Errno> {
    // SAFETY: NUL-terminated strings and a directory fd.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) } as libc::c_long).map(drop)
}

/// Whether `dir/name` is a directory (not following a final symlink). Fork-safe.
pub fn is_dir_at(dir: RawFd, name: &CStr) -> bool {
    // SAFETY: stat is plain old data, filled by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated name, a directory fd and a stat we own.
    let r = unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// open_tree(2) with OPEN_TREE_CLONE of the object `fd` names (AT_EMPTY_PATH). Fork-safe.
pub fn clone_tree(fd: RawFd, recursive: bool) -> Result<OwnedFd, Errno> {
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as u32
        | libc::AT_EMPTY_PATH as u32
        | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: an empty path with AT_EMPTY_PATH.
    let r = unsafe { libc::syscall(libc::SYS_open_tree, fd, c"".as_ptr(), flags) };
    // SAFETY: a new fd on success.
    check(r).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// move_mount(2) of the detached mount `mnt` onto the object `target` names. Fork-safe.
pub fn move_mount_onto(mnt: RawFd, target: RawFd) -> Result<(), Errno> {
    // SAFETY: empty paths with the EMPTY_PATH flags on both sides.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt,
            c"".as_ptr(),
            target,
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    check(r).map(drop)
}

/// mount_setattr(2) setting `attrs` on the mount `fd` names (and, with `recursive`, every
/// mount below it). Fork-safe.
pub fn mount_setattr(fd: RawFd, attrs: u32, recursive: bool) -> Result<(), Errno> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: attrs.into(),
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = libc::AT_EMPTY_PATH as u32 | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: a valid mount_attr of the size passed and an empty path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(r).map(drop)
}
