//! Drives the `capsule` container commands as a user would, each test with its own state
//! directory (so tests run in parallel and leave nothing behind) and the default guest built by
//! `scripts/build-guest.sh`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::capsule::capsule_binary;
use crate::guests::ScratchDir;
use crate::tier::Backend;

/// Longest a single command may take (a create boots a VM under QEMU's software CPU).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

pub use capsule_host::paths::guest_dir;

/// The result of one command.
#[derive(Debug)]
pub struct Outcome {
    pub args: Vec<String>,
    /// Exit code, `None` when killed by a signal or the timeout.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn describe(&self) -> String {
        format!(
            "capsule {}\nexit: {:?}\nstdout:\n{}\nstderr:\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }

    /// Fails unless the command exited with `code`.
    pub fn expect_code(&self, code: i32) -> Result<&Self, String> {
        if self.code != Some(code) {
            return Err(format!("expected exit {code}\n{}", self.describe()));
        }
        if self.stderr.contains("panicked") {
            return Err(format!("capsule panicked\n{}", self.describe()));
        }
        Ok(self)
    }

    /// Fails unless stdout equals `text` exactly.
    pub fn expect_stdout(&self, text: &str) -> Result<&Self, String> {
        if self.stdout != text {
            return Err(format!("expected stdout {text:?}\n{}", self.describe()));
        }
        Ok(self)
    }

    /// Fails unless stdout contains `text`.
    pub fn expect_stdout_has(&self, text: &str) -> Result<&Self, String> {
        if !self.stdout.contains(text) {
            return Err(format!("expected {text:?} on stdout\n{}", self.describe()));
        }
        Ok(self)
    }

    /// Fails unless stderr contains every one of `parts`.
    pub fn expect_stderr_has(&self, parts: &[&str]) -> Result<&Self, String> {
        for p in parts {
            if !self.stderr.contains(p) {
                return Err(format!("expected {p:?} on stderr\n{}", self.describe()));
            }
        }
        Ok(self)
    }
}

/// A `capsule` user with a private state directory. Dropping it removes every VM it made.
pub struct CapsuleCli {
    state: ScratchDir,
    bin: PathBuf,
}

impl CapsuleCli {
    /// Fails (does not skip) when the default guest is missing: the test suite builds it.
    pub fn new(tag: &str) -> Result<Self, String> {
        let guest = guest_dir();
        for file in ["vmlinux", "initramfs.cpio"] {
            if !guest.join(file).is_file() {
                return Err(format!(
                    "{} is missing: build the default guest with scripts/build-guest.sh",
                    guest.join(file).display()
                ));
            }
        }
        Ok(Self {
            state: ScratchDir::new(tag)?,
            bin: capsule_binary()?.to_path_buf(),
        })
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// A `capsule` command with this user's environment, for callers that manage the process.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_via(&[], args)
    }

    /// A `capsule` command run by `wrapper` (a program and its arguments, which end with
    /// capsule's path and `args`), with this user's environment.
    pub fn command_via(&self, wrapper: &[&str], args: &[&str]) -> Command {
        let mut cmd = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut cmd = Command::new(program);
                cmd.args(wrapper_args).arg(&self.bin);
                cmd
            }
            None => Command::new(&self.bin),
        };
        cmd.args(args)
            .env("CAPSULE_STATE_DIR", self.state.path())
            .env("CAPSULE_GUEST_DIR", guest_dir());
        cmd
    }

    /// `capsule create NAME --backend BACKEND EXTRA...`; fails unless it exits 0 and prints the
    /// VM's name.
    pub fn create(&self, backend: Backend, name: &str, extra: &[&str]) -> Result<Outcome, String> {
        let mut args = vec!["create", name, "--backend", backend.cli_name()];
        args.extend_from_slice(extra);
        let out = self.run(&args)?;
        out.expect_code(0)?;
        if out.stdout.trim() != name {
            return Err(format!(
                "create did not print the VM name\n{}",
                out.describe()
            ));
        }
        Ok(out)
    }

    pub fn run(&self, args: &[&str]) -> Result<Outcome, String> {
        self.run_with_input(args, None)
    }

    /// Runs a command, feeding `input` on stdin (else stdin is empty), killed after
    /// [`COMMAND_TIMEOUT`].
    pub fn run_with_input(&self, args: &[&str], input: Option<&[u8]>) -> Result<Outcome, String> {
        self.run_command(self.command(args), args, input)
    }

    /// Runs `cmd` (made by [`Self::command`] or [`Self::command_via`] from `args`) like
    /// [`Self::run_with_input`].
    pub fn run_command(
        &self,
        mut cmd: Command,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<Outcome, String> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start capsule: {e}"))?;
        let mut stdin = child.stdin.take().expect("piped");
        let input = input.map(<[u8]>::to_vec).unwrap_or_default();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let read = |r: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_string(&mut s);
                }
                s
            })
        };
        let out = read(child.stdout.take().map(|s| Box::new(s) as _));
        let err = read(child.stderr.take().map(|s| Box::new(s) as _));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let code = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status.code(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let _ = writer.join();
        Ok(Outcome {
            args: args.iter().map(|s| s.to_string()).collect(),
            code,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
    }

    /// The VM's recorded status: (phase, reason, supervisor pid).
    pub fn status(&self, name: &str) -> Result<(String, String, Option<u32>), String> {
        let path = self.state.path().join(name).join("status.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok((
            v["phase"].as_str().unwrap_or_default().to_string(),
            v["reason"].as_str().unwrap_or_default().to_string(),
            v["pid"].as_u64().map(|p| p as u32),
        ))
    }
}

impl Drop for CapsuleCli {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.state.path()) else {
            return;
        };
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            if let Some(name) = entry.file_name().to_str() {
                let _ = self
                    .command(&["rm", "--force", name])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}
