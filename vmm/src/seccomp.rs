//! seccomp filters for the VMM's threads: one allow-list per kind of thread, installed by the
//! thread itself before it runs guest-driven code (a vCPU before its first KVM_RUN, the event
//! loop before it serves the first device event). Arguments are checked where a call could
//! otherwise reach the host: the ioctl numbers (KVM's, TUN's), `fcntl` commands, `mmap`
//! without PROT_EXEC, `socket` only for Unix sockets. Any other call traps: the SIGSYS handler
//! writes `seccomp violation: system call N` to the report descriptor and ends the process
//! with status [`VIOLATION_EXIT_CODE`].
//!
//! Everything a thread may do once filtered is listed here; the filters were checked by
//! running every test suite with them on (docs/security.md).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The kinds of thread of a VMM process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU: KVM_RUN and the device register accesses it dispatches.
    Vcpu,
    /// The event loop: device queues, the vsock and TAP back ends, the VM's lifecycle.
    EventLoop,
}

impl ThreadKind {
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::EventLoop => "event-loop",
        }
    }
}

/// Errors while building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {0} seccomp filter")]
    Build(&'static str, #[source] seccompiler::Error),
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] std::io::Error),
    #[error("cannot install the {0} seccomp filter")]
    Install(&'static str, #[source] seccompiler::Error),
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

/// Exit status of a VMM process stopped by its filter.
pub const VIOLATION_EXIT_CODE: i32 = 159; // 128 + SIGSYS

/// Where the SIGSYS handler reports (stderr unless [`report_violations_to`] says otherwise).
static REPORT_FD: AtomicI32 = AtomicI32::new(2);

// ioctl numbers the filters allow, by the kernel's _IO/_IOR/_IOW encoding.
const fn ioc(dir: u64, ty: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (ty << 8) | nr
}
const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const KVMIO: u64 = 0xAE;
pub const KVM_RUN: u64 = ioc(IOC_NONE, KVMIO, 0x80, 0);
pub const KVM_GET_REGS: u64 = ioc(IOC_READ, KVMIO, 0x81, 144);
pub const KVM_GET_SREGS: u64 = ioc(IOC_READ, KVMIO, 0x83, 312);
/// Reading the failing instruction after KVM_EXIT_INTERNAL_ERROR.
pub const KVM_TRANSLATE: u64 = ioc(IOC_READ | IOC_WRITE, KVMIO, 0x85, 24);
/// Not allowed anywhere once filtered; the tests use it as "a KVM ioctl with another number".
pub const KVM_CREATE_VM: u64 = ioc(IOC_NONE, KVMIO, 0x01, 0);
const TUNSETOFFLOAD: u64 = ioc(IOC_WRITE, b'T' as u64, 208, 4);
const FIONBIO: u64 = 0x5421;
const FIONREAD: u64 = 0x541B;

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).expect("a valid condition")
}

/// A rule per allowed value of argument `arg`.
fn one_of(arg: u8, values: &[u64]) -> Vec<SeccompRule> {
    values
        .iter()
        .map(|v| SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, *v)]).expect("a valid rule"))
        .collect()
}

/// System calls every thread needs: memory, locks, time, signals, its own end, logging.
fn common() -> Vec<(i64, Vec<SeccompRule>)> {
    let no_exec = vec![SeccompRule::new(vec![cond(
        2,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )])
    .expect("a valid rule")];
    vec![
        (libc::SYS_brk, vec![]),
        (libc::SYS_mmap, no_exec.clone()),
        (libc::SYS_mprotect, no_exec),
        (libc::SYS_munmap, vec![]),
        (libc::SYS_mremap, vec![]),
        (libc::SYS_madvise, vec![]),
        (libc::SYS_futex, vec![]),
        (libc::SYS_clock_gettime, vec![]),
        (libc::SYS_clock_nanosleep, vec![]),
        (libc::SYS_nanosleep, vec![]),
        (libc::SYS_sched_yield, vec![]),
        (libc::SYS_getrandom, vec![]),
        (libc::SYS_rt_sigreturn, vec![]),
        (libc::SYS_rt_sigprocmask, vec![]),
        (libc::SYS_sigaltstack, vec![]),
        (libc::SYS_gettid, vec![]),
        (libc::SYS_getpid, vec![]),
        (libc::SYS_exit, vec![]),
        (libc::SYS_exit_group, vec![]),
        (libc::SYS_write, vec![]),
        (libc::SYS_writev, vec![]),
        (libc::SYS_read, vec![]),
        (libc::SYS_close, vec![]),
        (
            libc::SYS_fcntl,
            one_of(
                1,
                &[
                    libc::F_GETFL as u64,
                    libc::F_SETFL as u64,
                    libc::F_GETFD as u64,
                    libc::F_SETFD as u64,
                    libc::F_DUPFD_CLOEXEC as u64,
                    // The vsock bulk path sizes its pipes.
                    libc::F_SETPIPE_SZ as u64,
                    libc::F_GETPIPE_SZ as u64,
                ],
            ),
        ),
    ]
}

fn rules(kind: ThreadKind) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = common().into_iter().collect();
    let extra: Vec<(i64, Vec<SeccompRule>)> = match kind {
        ThreadKind::Vcpu => vec![
            (
                libc::SYS_ioctl,
                one_of(
                    1,
                    &[
                        KVM_RUN,
                        KVM_GET_REGS,
                        KVM_GET_SREGS,
                        KVM_TRANSLATE,
                        TUNSETOFFLOAD,
                    ],
                ),
            ),
            // Kicking other vCPUs out of KVM_RUN when the VM ends.
            (libc::SYS_tgkill, vec![]),
            // A driver's device reset (written from a vCPU) drops the device's host
            // connections, and a vhost-user device talks to its back end on activation.
            (libc::SYS_epoll_ctl, vec![]),
            (libc::SYS_shutdown, vec![]),
            (libc::SYS_sendmsg, vec![]),
            (libc::SYS_recvmsg, vec![]),
        ],
        ThreadKind::EventLoop => vec![
            (libc::SYS_epoll_wait, vec![]),
            (libc::SYS_epoll_pwait, vec![]),
            (libc::SYS_epoll_ctl, vec![]),
            (libc::SYS_eventfd2, vec![]),
            // The vsock device's connection timers.
            (libc::SYS_timerfd_create, vec![]),
            (libc::SYS_timerfd_settime, vec![]),
            (libc::SYS_timerfd_gettime, vec![]),
            (libc::SYS_readv, vec![]),
            (libc::SYS_pread64, vec![]),
            (libc::SYS_pwrite64, vec![]),
            (libc::SYS_preadv, vec![]),
            (libc::SYS_pwritev, vec![]),
            (libc::SYS_fsync, vec![]),
            (libc::SYS_fdatasync, vec![]),
            (libc::SYS_lseek, vec![]),
            // The vsock bulk path: guest pages into a pipe, the pipe into the host socket.
            (libc::SYS_splice, vec![]),
            (libc::SYS_vmsplice, vec![]),
            (libc::SYS_pipe, vec![]),
            (libc::SYS_pipe2, vec![]),
            // virtio-blk discard and write-zeroes.
            (libc::SYS_fallocate, vec![]),
            (libc::SYS_accept4, vec![]),
            (libc::SYS_connect, vec![]),
            (libc::SYS_recvfrom, vec![]),
            (libc::SYS_recvmsg, vec![]),
            (libc::SYS_sendto, vec![]),
            (libc::SYS_sendmsg, vec![]),
            (libc::SYS_shutdown, vec![]),
            (libc::SYS_getsockopt, vec![]),
            (libc::SYS_setsockopt, vec![]),
            // New connections to host Unix sockets (`<uds>_<port>`) only.
            (libc::SYS_socket, one_of(0, &[libc::AF_UNIX as u64])),
            (
                libc::SYS_ioctl,
                one_of(1, &[FIONBIO, FIONREAD, TUNSETOFFLOAD]),
            ),
            // Kicking vCPUs out of KVM_RUN when the VM ends.
            (libc::SYS_tgkill, vec![]),
        ],
    };
    for (nr, r) in extra {
        map.insert(nr, r);
    }
    map
}

/// The compiled filter of `kind`: the allowed calls pass, anything else traps.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let f = SeccompFilter::new(
        rules(kind),
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(kind.name(), e.into()))?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Build(kind.name(), e.into()))
}

/// Sets no_new_privs and installs `kind`'s filter on the calling thread.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let prog = filter(kind)?;
    // SAFETY: prctl with integer arguments; it only affects this process's future execs.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SeccompError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Install(kind.name(), e))?;
    probe(kind);
    Ok(())
}

/// Makes the SIGSYS handler report on `fd` instead of stderr.
pub fn report_violations_to(fd: i32) {
    REPORT_FD.store(fd, Ordering::Relaxed);
}

/// Writes the decimal digits of `n` into `buf`; returns how many.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> usize {
    let mut tmp = [0u8; 20];
    let mut len = 0;
    loop {
        tmp[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = tmp[len - 1 - i];
    }
    len
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; for SIGSYS from
    // seccomp, `si_syscall` sits 8 bytes into the fields after the common header (the
    // `_sigsys` member of the kernel's union: call address, then syscall number).
    let nr = unsafe {
        let base = (info as *const u8).add(16);
        std::ptr::read_unaligned(base.add(8) as *const i32)
    };
    let mut msg = [0u8; 64];
    let prefix = b"seccomp violation: system call ";
    msg[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 20];
    let n = decimal(nr.max(0) as u64, &mut digits);
    msg[prefix.len()..prefix.len() + n].copy_from_slice(&digits[..n]);
    msg[prefix.len() + n] = b'\n';
    let len = prefix.len() + n + 1;
    let fd = REPORT_FD.load(Ordering::Relaxed);
    // SAFETY: write and _exit are async-signal-safe; the buffer is ours.
    unsafe {
        libc::write(fd, msg.as_ptr().cast(), len);
        if fd != 2 {
            libc::write(2, msg.as_ptr().cast(), len);
        }
        libc::_exit(VIOLATION_EXIT_CODE);
    }
}

/// Installs the SIGSYS handler that reports a violation and ends the process.
pub fn install_violation_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction with a valid handler and flags is a valid argument.
    let r = unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigsys as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(SeccompError::Handler(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The environment variable of the test-only probe: `KIND:CALL` makes a thread of that kind
/// make that forbidden call right after its filter is installed (`vcpu:execve`,
/// `event-loop:open`, `vcpu:socket-inet`, `event-loop:kvm-ioctl`, ...). The tests use it to
/// show that each filter stops what it must; it changes nothing a guest can reach.
pub const PROBE_ENV: &str = "CAPSULE_TEST_SECCOMP_PROBE";

fn probe(kind: ThreadKind) {
    let Ok(spec) = std::env::var(PROBE_ENV) else {
        return;
    };
    let Some((who, call)) = spec.split_once(':') else {
        return;
    };
    if who != kind.name() {
        return;
    }
    log::warn!("seccomp probe: the {who} thread makes the forbidden call {call}");
    // SAFETY: each call gets valid (if pointless) arguments; the filter stops it before the
    // kernel acts on any of them.
    unsafe {
        match call {
            "execve" => {
                let path = c"/bin/true";
                let argv = [path.as_ptr(), std::ptr::null()];
                libc::execve(path.as_ptr(), argv.as_ptr(), std::ptr::null());
            }
            "open" => {
                libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY);
            }
            "socket-inet" => {
                libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            }
            "kvm-ioctl" => {
                libc::ioctl(-1, KVM_CREATE_VM as _, 0);
            }
            other => log::warn!("seccomp probe: unknown call {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(KVM_RUN, 0xAE80);
        assert_eq!(KVM_GET_REGS, 0x8090_AE81);
        assert_eq!(KVM_GET_SREGS, 0x8138_AE83);
        assert_eq!(KVM_CREATE_VM, 0xAE01);
        assert_eq!(KVM_TRANSLATE, 0xC018_AE85);
        assert_eq!(TUNSETOFFLOAD, 0x4004_54d0);
    }

    #[test]
    fn both_filters_compile() {
        for kind in [ThreadKind::Vcpu, ThreadKind::EventLoop] {
            assert!(!filter(kind).unwrap().is_empty());
        }
    }

    #[test]
    fn decimal_digits() {
        let mut b = [0u8; 20];
        let n = decimal(59, &mut b);
        assert_eq!(&b[..n], b"59");
        let n = decimal(0, &mut b);
        assert_eq!(&b[..n], b"0");
    }

    /// A filtered thread that makes a forbidden call traps, in a child process so that the
    /// test process survives.
    #[test]
    fn a_forbidden_call_traps_with_its_number() {
        // Built before the fork: the child of a multi-threaded process must not allocate.
        let prog = filter(ThreadKind::Vcpu).unwrap();
        // SAFETY: fork in a test; the child only installs the filter, makes calls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: prctl with integer arguments, in the child.
            let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == 0;
            let ok = nnp
                && install_violation_handler().is_ok()
                && seccompiler::apply_filter(&prog).is_ok();
            if !ok {
                // SAFETY: ends the child.
                unsafe { libc::_exit(1) };
            }
            // SAFETY: a forbidden call (socket(AF_INET)) with plain arguments.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            // SAFETY: ends the child; reached only if the filter let the call through.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), VIOLATION_EXIT_CODE);
    }
}
