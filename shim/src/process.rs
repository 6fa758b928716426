//! One process of a task as containerd sees it (the task's init, or an exec): created, then
//! started in the guest, then exited with a status that Wait, State and Delete report.

use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use capsule_host::exec::{ExecSpec, Process};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;

use crate::stdio::{Fifos, StdinCloser};

/// How a process ended: containerd's exit status (the code, or 128 + the signal) and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

impl Exit {
    pub fn now(status: u32) -> Exit {
        Exit {
            status,
            at: SystemTime::now(),
        }
    }

    pub fn timestamp(&self) -> Timestamp {
        let d = self
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mut ts = Timestamp::new();
        ts.seconds = d.as_secs() as i64;
        ts.nanos = d.subsec_nanos() as i32;
        ts
    }
}

/// The exit of a process, set once; Wait blocks on it.
#[derive(Default)]
pub struct ExitCell {
    exit: Mutex<Option<Exit>>,
    set: Condvar,
}

impl ExitCell {
    /// Records the exit; a later one is ignored.
    pub fn set(&self, exit: Exit) -> bool {
        let mut e = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_some() {
            return false;
        }
        *e = Some(exit);
        self.set.notify_all();
        true
    }

    pub fn get(&self) -> Option<Exit> {
        *self.exit.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn wait(&self) -> Exit {
        let mut e = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(exit) = *e {
                return exit;
            }
            e = self.set.wait(e).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A process of a task.
pub struct TaskProcess {
    /// containerd's exec id; empty for the task's init.
    pub exec_id: String,
    pub spec: ExecSpec,
    pub fifos: Fifos,
    /// The process in the guest, once started.
    pub started: Option<Process>,
    pub stdin: StdinCloser,
    pub exit: Arc<ExitCell>,
}

impl TaskProcess {
    pub fn new(exec_id: &str, spec: ExecSpec, fifos: Fifos) -> TaskProcess {
        TaskProcess {
            exec_id: exec_id.to_string(),
            spec,
            fifos,
            started: None,
            stdin: StdinCloser::default(),
            exit: Arc::new(ExitCell::default()),
        }
    }

    /// The guest pid (0 before the start).
    pub fn pid(&self) -> u32 {
        self.started.as_ref().map_or(0, |p| p.pid().max(0) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_is_set_once_and_wakes_waiters() {
        let cell = Arc::new(ExitCell::default());
        let c2 = cell.clone();
        let waiter = std::thread::spawn(move || c2.wait().status);
        assert!(cell.set(Exit::now(3)));
        assert!(!cell.set(Exit::now(4)));
        assert_eq!(waiter.join().unwrap(), 3);
        assert_eq!(cell.get().map(|e| e.status), Some(3));
    }
}
