//! Per-VM state directories: how the CLI finds a microVM without a central daemon.
//!
//! `<root>/<name>/` holds `config.json` (what `create` asked for), `status.json` (what the
//! supervisor says: starting, running, stopped or dead, with a reason), the hybrid-vsock
//! socket `vsock.sock`, the guest console `console.log` and the supervisor's own log. The
//! root is `$CAPSULE_STATE_DIR`, else `$XDG_RUNTIME_DIR/capsule`, else `/run/capsule`.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of state-directory operations; each names the VM or file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("invalid VM name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("no VM named {0:?} (see `capsule ls`)")]
    NotFound(String),
    #[error("a VM named {0:?} already exists (remove it with `capsule rm {0}`)")]
    AlreadyExists(String),
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Longest VM name; it also names the guest's container object.
pub use capsule_protocol::container::MAX_NAME_LEN;

/// Checks a VM name by the container name rule
/// ([`capsule_protocol::container::name_problem`]): 1 to 63 characters of `[A-Za-z0-9_.-]`,
/// starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), StateError> {
    match capsule_protocol::container::name_problem(name) {
        None => Ok(()),
        Some(reason) => Err(StateError::InvalidName {
            name: name.to_string(),
            reason,
        }),
    }
}

/// The directory that holds every VM's state directory.
pub fn default_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAPSULE_STATE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("capsule");
    }
    PathBuf::from("/run/capsule")
}

/// Lifecycle state of a VM, as its supervisor records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The supervisor is booting the VM and waiting for the agent.
    Starting,
    /// The agent answers.
    Running,
    /// The VM ended the way it was asked to (`capsule stop`, or the guest shut down).
    Stopped,
    /// The VM ended abnormally (kernel panic, triple fault, VMM killed, boot failure).
    Dead,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopped => "stopped",
            Phase::Dead => "dead",
        }
    }
}

/// The contents of `status.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub phase: Phase,
    /// Why the VM is in this phase (one line), when there is something to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The supervisor process, and its start time (clock ticks since boot) so a recycled pid is
    /// not mistaken for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start_time: Option<u64>,
}

/// One VM's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    name: String,
    dir: PathBuf,
}

impl StateDir {
    /// The state directory of `name` under `root` (it need not exist).
    pub fn new(root: &Path, name: &str) -> Result<Self, StateError> {
        validate_name(name)?;
        Ok(Self {
            name: name.to_string(),
            dir: root.join(name),
        })
    }

    /// Creates the directory; fails if a VM of that name exists.
    pub fn create(root: &Path, name: &str) -> Result<Self, StateError> {
        let state = Self::new(root, name)?;
        fs::create_dir_all(root).map_err(io_err(root))?;
        match fs::create_dir(&state.dir) {
            Ok(()) => Ok(state),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(StateError::AlreadyExists(name.to_string()))
            }
            Err(e) => Err(io_err(&state.dir)(e)),
        }
    }

    /// Opens an existing VM's state directory.
    pub fn open(root: &Path, name: &str) -> Result<Self, StateError> {
        let state = Self::new(root, name)?;
        if state.dir.is_dir() {
            Ok(state)
        } else {
            Err(StateError::NotFound(name.to_string()))
        }
    }

    /// Every VM under `root`, sorted by name. Entries that are not valid VM names are skipped.
    pub fn list(root: &Path) -> Result<Vec<Self>, StateError> {
        let entries = match fs::read_dir(root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(root)(e)),
        };
        let mut vms: Vec<Self> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|name| Self::new(root, &name).ok())
            .collect();
        vms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(vms)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    pub fn status_path(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    /// The hybrid-vsock Unix socket (Firecracker's `uds_path`).
    pub fn vsock_path(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }

    pub fn console_path(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    pub fn supervisor_log_path(&self) -> PathBuf {
        self.dir.join("supervisor.log")
    }

    /// Writes `value` as JSON to `path` atomically (write to a temporary file, then rename), so
    /// a reader never sees half a file and a crash never leaves one.
    pub fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), StateError> {
        let tmp = path.with_extension("json.tmp");
        let mut text = serde_json::to_vec_pretty(value).map_err(|source| StateError::Corrupt {
            path: path.to_path_buf(),
            source,
        })?;
        text.push(b'\n');
        let mut file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(&text)
            .and_then(|_| file.sync_all())
            .map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    }

    pub fn read_json<T: for<'de> Deserialize<'de>>(&self, path: &Path) -> Result<T, StateError> {
        let text = fs::read(path).map_err(io_err(path))?;
        serde_json::from_slice(&text).map_err(|source| StateError::Corrupt {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn write_status(&self, status: &Status) -> Result<(), StateError> {
        self.write_json(&self.status_path(), status)
    }

    /// The recorded status, corrected for a supervisor that died without saying so: a VM whose
    /// supervisor process is gone is dead, whatever its last status said.
    pub fn status(&self) -> Result<Status, StateError> {
        let mut status: Status = self.read_json(&self.status_path())?;
        if matches!(status.phase, Phase::Starting | Phase::Running) {
            if let Some(pid) = status.pid {
                if !process_alive(pid, status.pid_start_time) {
                    status.phase = Phase::Dead;
                    status.reason = Some(format!(
                        "its VMM process (pid {pid}) is gone without recording why (killed?)"
                    ));
                }
            }
        }
        Ok(status)
    }

    /// Deletes the state directory.
    pub fn remove(self) -> Result<(), StateError> {
        fs::remove_dir_all(&self.dir).map_err(io_err(&self.dir))
    }
}

/// Start time of process `pid` in clock ticks since boot (field 22 of /proc/pid/stat).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: fields after it are
    // counted from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is alive and (when known) is the same process that started at `start_time`.
/// Zombies count as gone.
pub fn process_alive(pid: u32, start_time: Option<u64>) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let zombie = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|state| state == "Z" || state == "X");
    if zombie {
        return false;
    }
    match start_time {
        Some(expected) => process_start_time(pid) == Some(expected),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("capsule-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn names_are_validated() {
        for ok in ["web", "a", "db-1", "x.y_z", &"n".repeat(63)] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "-x",
            ".hidden",
            "a/b",
            "sp ace",
            "é",
            &"n".repeat(64),
            "..",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn create_open_list_remove() {
        let root = root("lifecycle");
        let web = StateDir::create(&root, "web").unwrap();
        StateDir::create(&root, "api").unwrap();
        assert!(matches!(
            StateDir::create(&root, "web"),
            Err(StateError::AlreadyExists(_))
        ));
        assert!(matches!(
            StateDir::open(&root, "nope"),
            Err(StateError::NotFound(_))
        ));
        let names: Vec<_> = StateDir::list(&root)
            .unwrap()
            .into_iter()
            .map(|s| s.name().to_string())
            .collect();
        assert_eq!(names, ["api", "web"]);
        web.remove().unwrap();
        assert!(matches!(
            StateDir::open(&root, "web"),
            Err(StateError::NotFound(_))
        ));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn status_of_a_vanished_supervisor_is_dead() {
        let root = root("status");
        let vm = StateDir::create(&root, "vm").unwrap();
        let me = std::process::id();
        let running = Status {
            phase: Phase::Running,
            reason: None,
            pid: Some(me),
            pid_start_time: process_start_time(me),
        };
        vm.write_status(&running).unwrap();
        assert_eq!(vm.status().unwrap(), running);

        // A pid that cannot exist (above pid_max) stands for a killed supervisor.
        let gone = Status {
            pid: Some(u32::MAX - 1),
            ..running.clone()
        };
        vm.write_status(&gone).unwrap();
        let status = vm.status().unwrap();
        assert_eq!(status.phase, Phase::Dead);
        assert!(status.reason.unwrap().contains("gone"));

        // Our own pid with a different start time is a recycled pid, not our supervisor.
        let recycled = Status {
            pid_start_time: process_start_time(me).map(|t| t + 1),
            ..running
        };
        vm.write_status(&recycled).unwrap();
        assert_eq!(vm.status().unwrap().phase, Phase::Dead);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn corrupt_status_names_the_file() {
        let root = root("corrupt");
        let vm = StateDir::create(&root, "vm").unwrap();
        fs::write(vm.status_path(), b"{not json").unwrap();
        let err = vm.status().unwrap_err();
        assert!(err.to_string().contains("status.json"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }
}
