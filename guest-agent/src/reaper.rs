//! Reaps every child of the agent (`waitpid(-1, WNOHANG | __WALL)` on SIGCHLD) and hands the
//! exit status of registered pids to whoever waits for them.
//!
//! A fork and the registration of its pid happen under [`Reaper::lock`], which the reap loop
//! also takes: a child that exits at once cannot be reaped before someone waits for it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled { signal: i32, core_dumped: bool },
}

impl ExitStatus {
    /// Decodes a wait(2) status word.
    pub fn from_wait_status(status: i32) -> ExitStatus {
        if libc::WIFSIGNALED(status) {
            ExitStatus::Signaled {
                signal: libc::WTERMSIG(status),
                core_dumped: libc::WCOREDUMP(status),
            }
        } else {
            ExitStatus::Exited(libc::WEXITSTATUS(status))
        }
    }
}

#[derive(Default)]
pub struct Registry {
    waiters: HashMap<libc::pid_t, oneshot::Sender<ExitStatus>>,
}

impl Registry {
    /// Registers `pid`; its status arrives on the returned receiver.
    pub fn register(&mut self, pid: libc::pid_t) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(pid, tx);
        rx
    }
}

/// The agent's reaper.
#[derive(Default)]
pub struct Reaper {
    registry: Mutex<Registry>,
}

impl Reaper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds off reaping while a child is forked and registered.
    pub fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reaps every child that has exited; returns how many.
    pub fn reap(&self) -> usize {
        let mut reg = self.lock();
        let mut n = 0;
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid pointer to a local status word.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL) };
            if pid <= 0 {
                break;
            }
            n += 1;
            let exit = ExitStatus::from_wait_status(status);
            match reg.waiters.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => log::debug!("reaped unregistered pid {pid}: {exit:?}"),
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_words_decode() {
        assert_eq!(ExitStatus::from_wait_status(3 << 8), ExitStatus::Exited(3));
        assert_eq!(
            ExitStatus::from_wait_status(9),
            ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            }
        );
        assert_eq!(
            ExitStatus::from_wait_status(0x80 | 11),
            ExitStatus::Signaled {
                signal: 11,
                core_dumped: true
            }
        );
    }
}
