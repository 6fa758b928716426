//! Running the `capsule` binary (and other processes) from tests, with a hard timeout.
//!
//! ## Which binary
//! `env!("CARGO_BIN_EXE_capsule")` exists only for the VMM crate's own tests, so this crate finds
//! the binary itself ([`capsule_binary`]), once per test process:
//! 1. `$CAPSULE_BIN`, when set, is used as is (for prebuilt or installed binaries).
//! 2. Otherwise it runs `cargo build -p capsule-cli --bin capsule` with the profile and target
//!    directory the running test executable was built with (derived from its path,
//!    `<target-dir>/[<triple>/]<profile-dir>/deps/<test>`), and uses
//!    `<target-dir>/[<triple>/]<profile-dir>/capsule`. The build is a no-op when the binary is
//!    up to date, and guarantees the tests never run a stale VMM. Cargo is `$CARGO` (set by
//!    cargo and nextest for test processes) or `cargo` from `$PATH`.
//! 3. If cargo cannot be started at all (e.g. tests run from an archive), an existing binary
//!    next to the test executable's profile directory is used.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The time limit for one VMM run in the T1 tests. Test guests finish in seconds even under
/// kvm-pvm's emulation; the limit only stops a hung VMM.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Text every Rust panic message contains; a VMM must never print it.
pub const PANIC_MARKER: &str = "panicked";

/// Path of the `capsule` binary (see the module documentation for how it is found).
pub fn capsule_binary() -> Result<&'static Path, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(locate_capsule)
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(Clone::clone)
}

fn locate_capsule() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("CAPSULE_BIN") {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("CAPSULE_BIN={} is not a file", bin.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // <target-dir>/[<triple>/]<profile-dir>/deps/<test executable>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected test executable path {}", exe.display()))?;
    let profile_dir_name = profile_dir
        .file_name()
        .and_then(OsStr::to_str)
        .ok_or_else(|| format!("unexpected profile directory {}", profile_dir.display()))?;
    let profile = match profile_dir_name {
        "debug" => "dev",
        other => other,
    };
    let above = profile_dir
        .parent()
        .ok_or("profile directory has no parent")?;
    // Cargo marks the root of a target directory with CACHEDIR.TAG; one level higher means the
    // tests were built for an explicit --target triple.
    let (target_dir, triple) = if above.join("CACHEDIR.TAG").exists() {
        (above.to_owned(), None)
    } else {
        let root = above.parent().ok_or("cannot find the target directory")?;
        (root.to_owned(), above.file_name().map(OsStr::to_owned))
    };
    let binary = profile_dir.join("capsule");

    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("tests crate has no parent directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace)
        // The containerd shim is built with it, next to it (it runs `capsule` from there).
        .args([
            "build",
            "--quiet",
            "-p",
            "capsule-cli",
            "-p",
            "capsule-shim",
        ])
        .arg("--profile")
        .arg(profile)
        .arg("--target-dir")
        .arg(&target_dir);
    if let Some(triple) = &triple {
        cmd.arg("--target").arg(triple);
    }
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => {
            if binary.is_file() {
                Ok(binary)
            } else {
                Err(format!(
                    "cargo built capsule, but {} does not exist",
                    binary.display()
                ))
            }
        }
        Ok(out) => Err(format!(
            "building the capsule binary failed ({:?}, {}):\n{}",
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) if binary.is_file() => {
            eprintln!(
                "note: cannot run {} ({e}); using the existing {}",
                Path::new(&cargo).display(),
                binary.display()
            );
            Ok(binary)
        }
        Err(e) => Err(format!(
            "cannot run {} to build capsule ({e}); set CAPSULE_BIN to a capsule binary",
            Path::new(&cargo).display()
        )),
    }
}

/// How a process run by [`run_with_timeout`] ended.
#[derive(Debug)]
pub struct ProcessOutcome {
    pub status: ExitStatus,
    /// True when the process was killed because it exceeded the time limit.
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` (stdin null, stdout and stderr captured) and kills it (SIGKILL) if it has not
/// exited after `timeout`. Returns an error only when it cannot be started.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<ProcessOutcome, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child
                    .wait()
                    .map_err(|e| format!("waiting for the killed process: {e}"))?;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("waiting for {:?}: {e}", cmd.get_program()));
            }
        }
    };
    Ok(ProcessOutcome {
        status,
        timed_out,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// One `capsule run` invocation: `capsule run --kernel PATH [--initrd PATH] [--cmdline STR]
/// [--cpus N] [--memory MiB] [--console PATH]`.
#[derive(Debug, Clone)]
pub struct CapsuleRun {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub cpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// Console file; `None` leaves the console on capsule's stdout.
    pub console: Option<PathBuf>,
    /// Further arguments appended after the ones above (devices, profiles, ...).
    pub extra: Vec<OsString>,
    pub timeout: Duration,
}

impl CapsuleRun {
    /// A run of `kernel` with capsule's defaults and [`DEFAULT_TIMEOUT`].
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        CapsuleRun {
            kernel: kernel.into(),
            initrd: None,
            cmdline: None,
            cpus: None,
            memory_mib: None,
            console: None,
            extra: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Appends one more argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.extra.push(arg.into());
        self
    }

    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.initrd = Some(path.into());
        self
    }

    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.cmdline = Some(cmdline.into());
        self
    }

    pub fn cpus(mut self, n: u32) -> Self {
        self.cpus = Some(n);
        self
    }

    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = Some(mib);
        self
    }

    pub fn console(mut self, path: impl Into<PathBuf>) -> Self {
        self.console = Some(path.into());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The arguments after the binary name.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["run".into(), "--kernel".into(), (&self.kernel).into()];
        if let Some(p) = &self.initrd {
            args.extend(["--initrd".into(), p.into()]);
        }
        if let Some(c) = &self.cmdline {
            args.extend(["--cmdline".into(), c.into()]);
        }
        if let Some(n) = self.cpus {
            args.extend(["--cpus".into(), n.to_string().into()]);
        }
        if let Some(m) = self.memory_mib {
            args.extend(["--memory".into(), m.to_string().into()]);
        }
        if let Some(p) = &self.console {
            args.extend(["--console".into(), p.into()]);
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Runs capsule and collects its exit, stderr and console text.
    pub fn run(&self) -> Result<CapsuleOutcome, String> {
        if let Some(console) = &self.console {
            // A stale console file must not pass for this run's output.
            let _ = std::fs::remove_file(console);
        }
        let mut outcome = run_capsule(self.args(), self.timeout)?;
        if let Some(console) = &self.console {
            outcome.console = match std::fs::read(console) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) => {
                    outcome.console_error = Some(format!("{}: {e}", console.display()));
                    String::new()
                }
            };
        } else {
            outcome.console = outcome.process.stdout.clone();
        }
        Ok(outcome)
    }
}

/// How a capsule run ended.
#[derive(Debug)]
pub struct CapsuleOutcome {
    pub args: Vec<OsString>,
    pub process: ProcessOutcome,
    /// The console file's text (or stdout when no console file was given).
    pub console: String,
    /// Why the console file could not be read, if it could not.
    pub console_error: Option<String>,
}

/// Runs `capsule <args>` with a hard timeout; the console is whatever the args say.
pub fn run_capsule<I, S>(args: I, timeout: Duration) -> Result<CapsuleOutcome, String>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let bin = capsule_binary()?;
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let process = run_with_timeout(Command::new(bin).args(&args), timeout)?;
    Ok(CapsuleOutcome {
        args,
        process,
        console: String::new(),
        console_error: None,
    })
}

impl CapsuleOutcome {
    /// The exit code, or `None` when killed by a signal (including the timeout).
    pub fn code(&self) -> Option<i32> {
        if self.process.timed_out {
            None
        } else {
            self.process.status.code()
        }
    }

    pub fn stderr(&self) -> &str {
        &self.process.stderr
    }

    /// A description of the run for test failure messages.
    pub fn describe(&self) -> String {
        let how = if self.process.timed_out {
            "killed after the timeout".to_owned()
        } else {
            self.process.status.to_string()
        };
        let mut s = format!("capsule {:?}: {how}", self.args);
        for (name, text) in [
            ("stderr", self.process.stderr.as_str()),
            ("stdout", self.process.stdout.as_str()),
            ("console", self.console.as_str()),
        ] {
            if !text.is_empty() {
                s.push_str(&format!(
                    "\n--- {name} (last 40 lines) ---\n{}",
                    tail(text, 40)
                ));
            }
        }
        if let Some(e) = &self.console_error {
            s.push_str(&format!("\n--- console file unreadable: {e}"));
        }
        s
    }

    /// Ok when capsule exited by itself with `code`.
    pub fn expect_code(&self, code: i32) -> Result<(), String> {
        self.expect_code_in(&[code])
    }

    /// Ok when capsule exited by itself with one of `codes`.
    pub fn expect_code_in(&self, codes: &[i32]) -> Result<(), String> {
        match self.code() {
            Some(c) if codes.contains(&c) => Ok(()),
            _ => Err(format!("expected exit code {codes:?}\n{}", self.describe())),
        }
    }

    /// Ok when neither stderr nor stdout contains [`PANIC_MARKER`].
    pub fn expect_no_panic(&self) -> Result<(), String> {
        if self.process.stderr.contains(PANIC_MARKER) || self.process.stdout.contains(PANIC_MARKER)
        {
            Err(format!("capsule panicked\n{}", self.describe()))
        } else {
            Ok(())
        }
    }

    /// Ok when stderr contains one of `needles` (ASCII case-insensitive).
    pub fn expect_stderr_mentions(&self, needles: &[&str]) -> Result<(), String> {
        let stderr = self.process.stderr.to_ascii_lowercase();
        if needles
            .iter()
            .any(|n| stderr.contains(&n.to_ascii_lowercase()))
        {
            Ok(())
        } else {
            Err(format!(
                "stderr mentions none of {needles:?}\n{}",
                self.describe()
            ))
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Pids of the processes (other than this one) whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            text.contains(needle)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_with_timeout_kills_a_hung_process() {
        let out = run_with_timeout(
            Command::new("sh").args(["-c", "echo started; exec sleep 30"]),
            Duration::from_millis(300),
        )
        .unwrap();
        assert!(out.timed_out);
        assert!(!out.status.success());
        assert_eq!(out.stdout, "started\n");
    }

    #[test]
    fn run_with_timeout_collects_exit_and_output() {
        let out = run_with_timeout(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(!out.timed_out);
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(
            (out.stdout.as_str(), out.stderr.as_str()),
            ("out\n", "err\n")
        );
    }

    #[test]
    fn capsule_run_args_follow_the_cli_contract() {
        let args = CapsuleRun::new("/k")
            .initrd("/i")
            .cmdline("a=b c")
            .cpus(2)
            .memory_mib(128)
            .console("/c")
            .args();
        let expected = [
            "run",
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--cmdline",
            "a=b c",
            "--cpus",
            "2",
            "--memory",
            "128",
            "--console",
            "/c",
        ];
        assert_eq!(args, expected.map(OsString::from));
    }
}
