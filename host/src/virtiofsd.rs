//! virtiofsd, the file server of a share: where it is installed ([`find`]), how it is run
//! ([`args`]), and one running daemon per share ([`Virtiofsd`]), started by the VM's supervisor
//! before the machine and stopped with it.
//!
//! Each daemon serves one host directory on one vhost-user socket in the VM's state directory,
//! with its own sandbox on (`--sandbox namespace`: new mount, PID and network namespaces,
//! the shared directory as its root, seccomp), and gets SIGKILL when the supervisor dies.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::share::Share;

/// The virtiofsd version `scripts/install-virtiofsd.sh` installs.
pub const VERSION: &str = include_str!("../../scripts/virtiofsd.version").trim_ascii();

/// Environment variable naming a virtiofsd binary to use instead of the installed one.
pub const ENV: &str = "CAPSULE_VIRTIOFSD";

/// How long a daemon may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of a share's daemon.
#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    #[error("cannot start virtiofsd {program} for share {host_dir}")]
    Spawn {
        program: PathBuf,
        host_dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("virtiofsd for share {host_dir} exited before it served {socket} ({status})")]
    Exited {
        host_dir: PathBuf,
        socket: PathBuf,
        status: ExitStatus,
    },
    #[error("virtiofsd for share {host_dir} did not create {socket} within {secs} s")]
    Timeout {
        host_dir: PathBuf,
        socket: PathBuf,
        secs: u64,
    },
}

/// Where the install script puts virtiofsd: `<cache>/virtiofsd/<VERSION>/bin/virtiofsd`.
pub fn cache_path() -> PathBuf {
    crate::paths::cache_root()
        .join("virtiofsd")
        .join(VERSION)
        .join("bin/virtiofsd")
}

/// The virtiofsd to run: `$CAPSULE_VIRTIOFSD` (as given, even when missing, so that a wrong
/// setting is reported rather than passed over), else the installed one ([`cache_path`]),
/// else `virtiofsd` in `PATH`; `None` when none is found.
pub fn find() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(ENV) {
        return Some(PathBuf::from(path));
    }
    let cached = cache_path();
    if cached.is_file() {
        return Some(cached);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("virtiofsd"))
        .find(|p| p.is_file())
}

/// The places [`find`] looks, for the error that says it found nothing.
pub fn search_description() -> String {
    format!("${ENV}, {}, PATH", cache_path().display())
}

/// virtiofsd's command line for `share` on `socket`.
///
/// Cache mode `auto` (virtiofsd's default): the guest caches attributes and names for one
/// second and revalidates file contents on open, so a file changed on the host is seen by the
/// next open in the container. No writeback cache: the container's writes reach the host file
/// when the write returns.
pub fn args(share: &Share, socket: &Path) -> Vec<String> {
    let mut args = vec![
        format!("--socket-path={}", socket.display()),
        format!("--shared-dir={}", share.host_dir.display()),
        "--sandbox=namespace".to_string(),
        "--cache=auto".to_string(),
        "--log-level=warn".to_string(),
    ];
    if share.read_only {
        // The guest mounts it read-only too; this makes the server refuse writes as well.
        args.push("--readonly".to_string());
    }
    args
}

/// One running virtiofsd. Dropping it kills the daemon and waits for it.
pub struct Virtiofsd {
    child: Child,
    share: Share,
    socket: PathBuf,
}

impl Virtiofsd {
    /// Starts `program` for `share` on `socket` and waits until the socket exists. The daemon's
    /// messages go to this process's stderr (the supervisor log).
    pub fn start(program: &Path, share: &Share, socket: &Path) -> Result<Self, VirtiofsdError> {
        let _ = std::fs::remove_file(socket);
        let mut cmd = Command::new(program);
        cmd.args(args(share, socket))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe: the daemon gets SIGKILL when
        // the thread that started it (the supervisor's main thread) dies, even by SIGKILL.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| VirtiofsdError::Spawn {
            program: program.to_path_buf(),
            host_dir: share.host_dir.clone(),
            source,
        })?;
        let mut daemon = Virtiofsd {
            child,
            share: share.clone(),
            socket: socket.to_path_buf(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !socket.exists() {
            if let Some(status) = daemon.exited() {
                return Err(VirtiofsdError::Exited {
                    host_dir: share.host_dir.clone(),
                    socket: socket.to_path_buf(),
                    status,
                });
            }
            if Instant::now() > deadline {
                return Err(VirtiofsdError::Timeout {
                    host_dir: share.host_dir.clone(),
                    socket: socket.to_path_buf(),
                    secs: START_TIMEOUT.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(daemon)
    }

    pub fn share(&self) -> &Share {
        &self.share
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's exit status once it has ended (reaped), `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(read_only: bool) -> Share {
        Share {
            host_dir: "/srv/site".into(),
            target: "/srv".into(),
            read_only,
            tag: "capsule-fs0".into(),
        }
    }

    #[test]
    fn command_line_has_sandbox_socket_and_directory() {
        let args = args(&share(false), Path::new("/run/capsule/web/fs0.sock")).join(" ");
        assert!(args.contains("--socket-path=/run/capsule/web/fs0.sock"));
        assert!(args.contains("--shared-dir=/srv/site"));
        assert!(args.contains("--sandbox=namespace"));
        assert!(!args.contains("--readonly"));
        let ro = args_of(true);
        assert!(ro.contains(&"--readonly".to_string()));
    }

    fn args_of(read_only: bool) -> Vec<String> {
        args(&share(read_only), Path::new("/s.sock"))
    }

    #[test]
    fn version_is_the_install_scripts() {
        assert!(!VERSION.is_empty() && !VERSION.contains(char::is_whitespace));
        assert!(cache_path().ends_with(format!("virtiofsd/{VERSION}/bin/virtiofsd")));
    }

    #[test]
    fn a_daemon_that_exits_at_once_is_an_error() {
        let dir = std::env::temp_dir().join(format!("capsule-vfsd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("fs0.sock");
        // `false` ignores the arguments and exits 1 without creating the socket.
        let err = Virtiofsd::start(Path::new("/bin/false"), &share(false), &socket)
            .err()
            .expect("a daemon that exits is refused");
        let text = err.to_string();
        assert!(text.contains("exited before it served"), "{text}");
        assert!(text.contains("/srv/site"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
