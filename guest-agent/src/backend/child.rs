//! Code that runs in a freshly forked child of the agent. The agent is multi-threaded, so
//! between fork and exec a child may only make system calls on memory prepared before the
//! fork: no allocation, no locks, no logging. Everything here follows that rule.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, RawFd};

use super::privileges::Privileges;
use crate::sys;

/// Stages of an exec child, reported with the errno when one fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Stage {
    Terminal = 1,
    Stdio = 2,
    Keyring = 3,
    Groups = 4,
    Gid = 5,
    Uid = 6,
    Cwd = 7,
    Exec = 8,
    Enter = 9,
    Rlimit = 10,
    Bounding = 11,
    Capset = 12,
    Ambient = 13,
    NoNewPrivs = 14,
}

impl Stage {
    pub fn from_u32(v: u32) -> Option<Stage> {
        use Stage::*;
        Some(match v {
            1 => Terminal,
            2 => Stdio,
            3 => Keyring,
            4 => Groups,
            5 => Gid,
            6 => Uid,
            7 => Cwd,
            8 => Exec,
            9 => Enter,
            10 => Rlimit,
            11 => Bounding,
            12 => Capset,
            13 => Ambient,
            14 => NoNewPrivs,
            _ => return None,
        })
    }

    /// The request field a failure at this stage is about; `index` is the entry of a list
    /// (rlimits, ambient capabilities).
    pub fn field(self, index: u32) -> String {
        match self {
            Stage::Rlimit => format!("rlimits[{index}]"),
            Stage::Ambient => format!("capabilities.ambient[{index}]"),
            other => other.fixed_field().to_string(),
        }
    }

    /// What the child was doing, for the message.
    pub fn doing(self) -> &'static str {
        match self {
            Stage::Exec => "executing the program",
            Stage::Cwd => "changing to the working directory",
            Stage::Uid | Stage::Gid | Stage::Groups => "switching user",
            Stage::Rlimit => "setting the resource limit",
            Stage::Bounding => "limiting the capability bounding set",
            Stage::Capset => "setting the capability sets",
            Stage::Ambient => "raising the ambient capability",
            Stage::NoNewPrivs => "setting no_new_privs",
            Stage::Terminal | Stage::Stdio | Stage::Keyring | Stage::Enter => {
                "setting up the process"
            }
        }
    }

    fn fixed_field(self) -> &'static str {
        match self {
            Stage::Terminal => "tty",
            Stage::Stdio => "stdio",
            Stage::Keyring => "container",
            Stage::Groups => "additional_gids",
            Stage::Gid => "gid",
            Stage::Uid => "uid",
            Stage::Cwd => "cwd",
            Stage::Exec => "argv[0]",
            Stage::Enter => "container",
            Stage::Rlimit => "rlimits",
            Stage::Bounding => "capabilities.bounding",
            Stage::Capset => "capabilities",
            Stage::Ambient => "capabilities.ambient",
            Stage::NoNewPrivs => "no_new_privileges",
        }
    }
}

/// Everything an exec child needs, prepared before the fork.
pub struct PreparedExec {
    /// Paths to try in order (one for an argv[0] with a '/', the PATH lookup otherwise).
    pub candidates: Vec<CString>,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    env_ptrs: Vec<*const libc::c_char>,
    pub cwd: CString,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
    /// stdin, stdout, stderr (all the terminal's slave for a tty).
    pub stdio: [RawFd; 3],
    pub tty: bool,
    pub keyring: Option<CString>,
    pub privileges: Privileges,
    /// Write end of a CLOEXEC pipe: a [`FAILURE_LEN`]-byte record (stage, errno, index) is
    /// written on failure.
    pub err_fd: RawFd,
}

impl PreparedExec {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        candidates: Vec<CString>,
        argv: Vec<CString>,
        env: Vec<CString>,
        cwd: CString,
        uid: u32,
        gid: u32,
        groups: Vec<libc::gid_t>,
        stdio: [RawFd; 3],
        tty: bool,
        keyring: Option<CString>,
        err_fd: RawFd,
    ) -> Self {
        let mut argv_ptrs: Vec<_> = argv.iter().map(|s| s.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<_> = env.iter().map(|s| s.as_ptr()).collect();
        env_ptrs.push(std::ptr::null());
        PreparedExec {
            candidates,
            argv,
            env,
            argv_ptrs,
            env_ptrs,
            cwd,
            uid,
            gid,
            groups,
            stdio,
            tty,
            keyring,
            privileges: Privileges::default(),
            err_fd,
        }
    }

    /// Sets the rlimits, capabilities and no_new_privs the child applies.
    pub fn with_privileges(mut self, privileges: Privileges) -> Self {
        self.privileges = privileges;
        self
    }
}

// SAFETY: the raw pointers point into the heap buffers of CStrings owned by the same struct,
// which do not move when the struct moves, and are only read.
unsafe impl Send for PreparedExec {}

/// Length of the failure record an exec child writes.
pub const FAILURE_LEN: usize = 12;

fn fail(err_fd: RawFd, stage: Stage, errno: i32) -> i32 {
    fail_at(err_fd, stage, 0, errno)
}

fn fail_at(err_fd: RawFd, stage: Stage, index: u32, errno: i32) -> i32 {
    let mut b = [0u8; FAILURE_LEN];
    b[..4].copy_from_slice(&(stage as u32).to_ne_bytes());
    b[4..8].copy_from_slice(&errno.to_ne_bytes());
    b[8..].copy_from_slice(&index.to_ne_bytes());
    let _ = sys::write_all_raw(err_fd, &b);
    127
}

/// A failure of an exec child, as [`fail_at`] wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub stage: Option<Stage>,
    pub errno: i32,
    /// The list entry (rlimit, ambient capability) or the capability number (bounding set).
    pub index: u32,
}

/// Decodes what [`fail_at`] wrote.
pub fn decode_failure(b: &[u8; FAILURE_LEN]) -> Failure {
    let word = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
    Failure {
        stage: Stage::from_u32(u32::from_ne_bytes(word(0))),
        errno: i32::from_ne_bytes(word(4)),
        index: u32::from_ne_bytes(word(8)),
    }
}

/// Resets the signal mask and the dispositions the agent changed (SIGPIPE is ignored by Rust
/// programs; handled signals are reset by exec anyway).
fn reset_signals() {
    // SAFETY: sigset operations on a local set and sigprocmask/signal are async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Runs in the child: sets up and execs; returns the exit code only on failure.
pub fn exec_child(p: &PreparedExec) -> i32 {
    reset_signals();
    if p.tty {
        // SAFETY: setsid and ioctl(TIOCSCTTY) on an fd we hold.
        let r = unsafe {
            if libc::setsid() < 0 {
                -1
            } else {
                libc::ioctl(p.stdio[0], libc::TIOCSCTTY, 0)
            }
        };
        if r < 0 {
            return fail(p.err_fd, Stage::Terminal, sys::last_errno());
        }
    }
    for (target, &fd) in p.stdio.iter().enumerate() {
        // SAFETY: dup2 of descriptors we hold; it clears CLOEXEC on the target.
        if unsafe { libc::dup2(fd, target as i32) } < 0 {
            return fail(p.err_fd, Stage::Stdio, sys::last_errno());
        }
    }
    if let Some(name) = &p.keyring {
        if let Err(e) = sys::keyctl(
            sys::KEYCTL_JOIN_SESSION_KEYRING,
            name.as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        ) {
            return fail(p.err_fd, Stage::Keyring, e);
        }
    }
    // runc's order: rlimits while still privileged, the bounding set before the uid change.
    let privs = &p.privileges;
    if let Err((i, e)) = privs.set_rlimits() {
        return fail_at(p.err_fd, Stage::Rlimit, i, e);
    }
    if let Err((cap, e)) = privs.limit_bounding_set() {
        return fail_at(p.err_fd, Stage::Bounding, cap, e);
    }
    // Raw system calls, not glibc's wrappers: after a raw clone3 glibc still believes the
    // agent's other threads exist and its set*id wrappers would wait for them forever.
    // SAFETY: setgroups with a pointer/length pair of a live Vec.
    if unsafe { libc::syscall(libc::SYS_setgroups, p.groups.len(), p.groups.as_ptr()) } < 0 {
        return fail(p.err_fd, Stage::Groups, sys::last_errno());
    }
    // SAFETY: plain syscalls with integer arguments.
    if unsafe { libc::syscall(libc::SYS_setresgid, p.gid, p.gid, p.gid) } < 0 {
        return fail(p.err_fd, Stage::Gid, sys::last_errno());
    }
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_setresuid, p.uid, p.uid, p.uid) } < 0 {
        return fail(p.err_fd, Stage::Uid, sys::last_errno());
    }
    // SAFETY: a NUL-terminated path prepared before the fork.
    if unsafe { libc::chdir(p.cwd.as_ptr()) } < 0 {
        return fail(p.err_fd, Stage::Cwd, sys::last_errno());
    }
    if let Err(e) = privs.set_capabilities() {
        return fail(p.err_fd, Stage::Capset, e);
    }
    if let Err((i, e)) = privs.raise_ambient() {
        return fail_at(p.err_fd, Stage::Ambient, i, e);
    }
    if let Err(e) = privs.set_no_new_privs() {
        return fail(p.err_fd, Stage::NoNewPrivs, e);
    }
    // As execvp: EACCES from any candidate wins over a later ENOENT.
    let mut err = libc::ENOENT;
    let mut saw_eacces = false;
    for path in &p.candidates {
        // SAFETY: NULL-terminated pointer arrays into CStrings that outlive the call.
        unsafe { libc::execve(path.as_ptr(), p.argv_ptrs.as_ptr(), p.env_ptrs.as_ptr()) };
        err = sys::last_errno();
        if err == libc::EACCES {
            saw_eacces = true;
        }
        if !matches!(err, libc::ENOENT | libc::EACCES | libc::ENOTDIR) {
            break;
        }
    }
    if saw_eacces && matches!(err, libc::ENOENT | libc::ENOTDIR) {
        err = libc::EACCES;
    }
    fail(p.err_fd, Stage::Exec, err)
}

/// What a container's init (the holder) does before it settles.
pub struct HolderSetup {
    /// Read one byte from this fd before starting (lets the agent write id maps first).
    pub go_fd: RawFd,
    /// Write the errno (i32, 0 = ready) here once set up.
    pub ready_fd: RawFd,
    pub hostname: Option<CString>,
    /// Make every mount private (a mount namespace copied by clone3).
    pub make_private: bool,
}

/// The container's init: sets the hostname, then reaps orphans until SIGTERM/SIGINT (or
/// SIGKILL). With a new PID namespace it is pid 1 there and every member dies with it.
pub fn holder_main(s: &HolderSetup) -> i32 {
    // SAFETY: signal mask manipulation on local sets; all calls are async-signal-safe.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        libc::sigfillset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    let mut b = [0u8; 1];
    let _ = sys::read_full_raw(s.go_fd, &mut b);
    let mut status = 0i32;
    if s.make_private {
        // SAFETY: mount(2) with static NUL-terminated strings.
        let r = unsafe {
            libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        };
        if r < 0 {
            status = sys::last_errno();
        }
    }
    if let (0, Some(h)) = (status, &s.hostname) {
        // SAFETY: a NUL-terminated buffer and its length.
        if unsafe { libc::sethostname(h.as_ptr(), h.as_bytes().len()) } < 0 {
            status = sys::last_errno();
        }
    }
    let _ = sys::write_all_raw(s.ready_fd, &status.to_ne_bytes());
    // SAFETY: closing our copies of the pipe ends.
    unsafe {
        libc::close(s.ready_fd);
        libc::close(s.go_fd);
    }
    if status != 0 {
        return 1;
    }
    loop {
        let mut info: libc::siginfo_t =
            // SAFETY: siginfo_t is plain old data.
            unsafe { std::mem::zeroed() };
        // SAFETY: waits for any (blocked) signal with valid pointers.
        let sig = unsafe { libc::sigwaitinfo(&set, &mut info) };
        if sig == libc::SIGTERM || sig == libc::SIGINT {
            return 0;
        }
        loop {
            let mut st = 0;
            // SAFETY: waitpid with a valid status pointer.
            let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG | libc::__WALL) };
            if r <= 0 {
                break;
            }
        }
    }
}

/// A mount(2) of a file system whose superblock takes its namespaces from the mounting process
/// (proc, sysfs, ...): everything is prepared before the fork, and [`MemberMount::run`] runs in
/// the child that has joined the container.
pub struct MemberMount {
    dirs: Vec<CString>,
    source: CString,
    target: CString,
    fstype: CString,
    data: CString,
    flags: libc::c_ulong,
    /// The same flags as MOUNT_ATTR_* bits.
    attrs: u32,
}

impl MemberMount {
    pub fn new(spec: &super::MountSpec) -> Self {
        let opts = super::mount::parse_options(&spec.options);
        Self {
            dirs: if spec.mkdir {
                path_prefixes(&spec.target)
            } else {
                Vec::new()
            },
            source: cstr(&spec.source),
            target: cstr(&spec.target),
            fstype: cstr(&spec.fstype),
            data: cstr(&opts.data()),
            flags: opts.ms_flags,
            attrs: opts.attrs,
        }
    }

    /// In the forked child: creates the target's directories if asked, then mounts. Returns 0 or
    /// the errno.
    pub fn run(&self) -> i32 {
        if let Err(e) = mkdir_all(&self.dirs) {
            return e;
        }
        match self.mount() {
            // The same superblock already mounted right there (sysfs of the container's network
            // namespace on /sys, cgroup2 of its cgroup root on /sys/fs/cgroup) is refused by
            // mount(2); a bind of it with the asked flags on top is what the mount would give.
            Err(libc::EBUSY) => self.bind_over_itself().err().unwrap_or(0),
            r => r.err().unwrap_or(0),
        }
    }

    fn mount(&self) -> Result<(), i32> {
        // SAFETY: NUL-terminated strings prepared before the fork.
        let r = unsafe {
            libc::mount(
                self.source.as_ptr(),
                self.target.as_ptr(),
                self.fstype.as_ptr(),
                self.flags,
                self.data.as_ptr().cast(),
            )
        };
        if r < 0 {
            Err(sys::last_errno())
        } else {
            Ok(())
        }
    }

    fn bind_over_itself(&self) -> Result<(), i32> {
        let tree = sys::open_tree_clone(&self.target, false)?;
        if self.attrs != 0 {
            sys::mount_setattr(tree.as_raw_fd(), self.attrs, false)?;
        }
        sys::move_mount_fd(tree.as_raw_fd(), &self.target)
    }
}

/// mkdir -p of `dirs` (each prefix of the target, prepared before the fork), ignoring EEXIST.
pub fn mkdir_all(dirs: &[CString]) -> Result<(), i32> {
    for d in dirs {
        // SAFETY: NUL-terminated path.
        if unsafe { libc::mkdir(d.as_ptr(), 0o755) } < 0 {
            let e = sys::last_errno();
            if e != libc::EEXIST {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The proper prefixes of an absolute path and the path itself: "/a/b" → ["/a", "/a/b"].
pub fn path_prefixes(path: &str) -> Vec<CString> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        cur.push('/');
        cur.push_str(comp);
        if let Ok(c) = CString::new(cur.clone()) {
            out.push(c);
        }
    }
    out
}

/// A C string from a checked Rust string (validation has excluded NUL bytes).
pub fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

/// `CStr` of a static literal, for readability at call sites.
pub fn lit(s: &'static CStr) -> &'static CStr {
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let p: Vec<_> = path_prefixes("/a//b/./c/")
            .into_iter()
            .map(|c| c.into_string().unwrap())
            .collect();
        assert_eq!(p, ["/a", "/a/b", "/a/b/c"]);
        assert!(path_prefixes("/").is_empty());
    }

    #[test]
    fn failure_round_trips() {
        let (r, w) = sys::pipe().unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(fail(w.as_raw_fd(), Stage::Cwd, libc::ENOENT), 127);
        assert_eq!(fail_at(w.as_raw_fd(), Stage::Ambient, 3, libc::EPERM), 127);
        let mut b = [0u8; FAILURE_LEN];
        sys::read_full_raw(r.as_raw_fd(), &mut b).unwrap();
        let f = decode_failure(&b);
        assert_eq!(
            (f.stage, f.errno, f.index),
            (Some(Stage::Cwd), libc::ENOENT, 0)
        );
        sys::read_full_raw(r.as_raw_fd(), &mut b).unwrap();
        let f = decode_failure(&b);
        assert_eq!((f.stage, f.errno), (Some(Stage::Ambient), libc::EPERM));
        assert_eq!(f.stage.unwrap().field(f.index), "capabilities.ambient[3]");
    }

    #[test]
    fn every_stage_round_trips_and_names_a_field() {
        for v in 1..=14 {
            let stage = Stage::from_u32(v).unwrap();
            assert_eq!(stage as u32, v);
            assert!(!stage.field(0).is_empty());
        }
        assert_eq!(Stage::from_u32(15), None);
        assert_eq!(Stage::Rlimit.field(2), "rlimits[2]");
        assert_eq!(Stage::Bounding.field(21), "capabilities.bounding");
        assert_eq!(Stage::Exec.field(0), "argv[0]");
    }
}
