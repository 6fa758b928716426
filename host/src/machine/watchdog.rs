//! A process that kills a machine process when the supervisor ends without waiting for it. A
//! machine process normally dies with its supervisor by PR_SET_PDEATHSIG, but a process that
//! changes its own uid loses that setting (QEMU's `-runas`), so a small forked process holds
//! a pidfd of it and the read end of a pipe that only the supervisor can write to: when that
//! pipe closes (the supervisor exited, or dropped the [`Watchdog`]) it sends SIGKILL through
//! the pidfd, which can never name another process, and exits.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The watching process; dropping it stops it (after the machine has ended) and reaps it.
pub struct Watchdog {
    pid: libc::pid_t,
    write: Option<OwnedFd>,
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by the kernel, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

impl Watchdog {
    /// Starts watching process `target`, a child of this process.
    pub fn start(target: u32) -> io::Result<Self> {
        // SAFETY: pidfd_open with a pid and no flags; the result is checked.
        let pidfd = owned(unsafe { libc::syscall(libc::SYS_pidfd_open, target, 0) })?;
        let mut fds = [-1; 2];
        // SAFETY: pipe2 writes two descriptors into the array; checked below.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let read = owned(fds[0].into())?;
        let write = owned(fds[1].into())?;
        let (pidfd_raw, read_raw, write_raw) =
            (pidfd.as_raw_fd(), read.as_raw_fd(), write.as_raw_fd());
        // SAFETY: fork; the child's side is below.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            // SAFETY: the child of a multi-threaded process makes only async-signal-safe calls
            // (close, read, the pidfd_send_signal system call, _exit) on descriptors it
            // inherited, and never returns.
            0 => unsafe {
                libc::close(write_raw);
                let mut byte = 0u8;
                while libc::read(read_raw, (&mut byte as *mut u8).cast(), 1) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd_raw,
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
                libc::_exit(0)
            },
            pid => Ok(Watchdog {
                pid,
                write: Some(write),
            }),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Closing the pipe ends the watcher; its SIGKILL reaches a machine that has ended.
        drop(self.write.take());
        let mut status = 0;
        // SAFETY: waitpid for our own child.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watched_process_is_killed_when_the_watchdog_goes() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let watchdog = Watchdog::start(child.id()).unwrap();
        drop(watchdog);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}
