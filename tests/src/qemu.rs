//! A QEMU `microvm` launcher for integration tests (tier T2).
//!
//! ```no_run
//! use capsule_tests::qemu::QemuMicrovm;
//! use std::time::Duration;
//!
//! let run = QemuMicrovm::new("vmlinux")
//!     .initrd("initramfs.cpio")
//!     .cmdline("console=ttyS0 reboot=t panic=-1")
//!     .memory_mib(512)
//!     .timeout(Duration::from_secs(300))
//!     .run()
//!     .unwrap();
//! assert!(run.serial.contains("### ALL DONE"));
//! ```
//!
//! The guest runs under QEMU's software CPU (TCG) with no default devices, its first serial
//! port (ttyS0) written to a file, and `-no-reboot`: a guest that reboots (init calling
//! `reboot -f` with `reboot=t` on its command line, or a panic with `panic=-1`) makes QEMU exit
//! by itself. A guest that does not end within the timeout is killed, as is QEMU when the
//! [`QemuMicrovm::run`] call unwinds. Extra devices (virtio-mmio vsock through a vhost-user
//! backend, block devices) are added with [`QemuMicrovm::extra_args`]; the default machine is
//! `microvm,acpi=off`, so that QEMU passes virtio-mmio devices on the kernel command line.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The QEMU binary the launcher runs.
pub const QEMU: &str = "qemu-system-x86_64";

/// Errors of running a QEMU guest.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// QEMU could not be started.
    #[error("starting {QEMU}")]
    Spawn(#[source] std::io::Error),
    /// Waiting for QEMU or reading its serial log failed.
    #[error("running {QEMU} (serial log {})", serial_log.display())]
    Io {
        serial_log: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The guest did not end in time; QEMU was killed.
    #[error("guest still running after {after:?}; killed (serial log {})", serial_log.display())]
    Timeout {
        after: Duration,
        serial_log: PathBuf,
        /// What the guest had printed by then.
        serial: String,
    },
}

/// The result of a guest that ended by itself.
#[derive(Debug)]
pub struct QemuRun {
    /// Everything the guest wrote to its serial console.
    pub serial: String,
    /// QEMU's exit status (0 after a guest reboot with `-no-reboot`).
    pub status: ExitStatus,
    /// Wall time from start to exit.
    pub elapsed: Duration,
    /// Where the serial output was written (a default scratch file is already removed).
    pub serial_log: PathBuf,
}

/// A QEMU microvm guest to run: built with the methods below, started with [`Self::run`].
#[derive(Debug, Clone)]
pub struct QemuMicrovm {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: String,
    memory_mib: u32,
    cpus: u32,
    machine: String,
    extra_args: Vec<OsString>,
    timeout: Duration,
    serial_log: Option<PathBuf>,
}

impl QemuMicrovm {
    /// A guest booting `kernel` (an ELF vmlinux with a PVH note, or a bzImage).
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        QemuMicrovm {
            kernel: kernel.into(),
            initrd: None,
            cmdline: "console=ttyS0 reboot=t panic=-1".into(),
            memory_mib: 256,
            cpus: 1,
            machine: "microvm,acpi=off".into(),
            extra_args: Vec::new(),
            timeout: Duration::from_secs(300),
            serial_log: None,
        }
    }

    /// The initial ramdisk (an uncompressed newc cpio works).
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.initrd = Some(path.into());
        self
    }

    /// The kernel command line (default `console=ttyS0 reboot=t panic=-1`).
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.cmdline = cmdline.into();
        self
    }

    /// Guest memory in MiB (default 256).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Number of vCPUs (default 1).
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// The `-M` value (default `microvm,acpi=off`; add `,memory-backend=mem` for vhost-user).
    pub fn machine(mut self, machine: impl Into<String>) -> Self {
        self.machine = machine.into();
        self
    }

    /// More QEMU arguments: devices, chardevs, memory backends.
    pub fn extra_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Hard limit on the guest's run time (default 300 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Where to write the serial console (default: a fresh file in the temp directory).
    pub fn serial_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.serial_log = Some(path.into());
        self
    }

    fn log_path(&self) -> PathBuf {
        self.serial_log.clone().unwrap_or_else(|| {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::env::temp_dir().join(format!("capsule-qemu-{}-{n}.log", std::process::id()))
        })
    }

    /// The QEMU command this guest runs, with its serial console going to `serial_log`.
    pub fn command(&self, serial_log: &Path) -> Command {
        let mut cmd = Command::new(QEMU);
        cmd.args(["-M", &self.machine])
            .args(["-accel", "tcg", "-cpu", "max"])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            .arg("-kernel")
            .arg(&self.kernel)
            .args(["-append", &self.cmdline]);
        if let Some(initrd) = &self.initrd {
            cmd.arg("-initrd").arg(initrd);
        }
        let mut serial = OsString::from("file:");
        serial.push(serial_log);
        cmd.arg("-serial").arg(serial);
        cmd.args(&self.extra_args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        cmd
    }

    /// Boots the guest and waits until QEMU exits or the timeout passes.
    pub fn run(&self) -> Result<QemuRun, QemuError> {
        let serial_log = self.log_path();
        let io_err = |source| QemuError::Io {
            serial_log: serial_log.clone(),
            source,
        };
        let start = Instant::now();
        let mut guard = KillOnDrop(Some(
            self.command(&serial_log)
                .spawn()
                .map_err(QemuError::Spawn)?,
        ));
        let status = loop {
            let child = guard.0.as_mut().expect("child present until taken");
            if let Some(status) = child.try_wait().map_err(io_err)? {
                guard.0 = None;
                break status;
            }
            if start.elapsed() >= self.timeout {
                drop(guard);
                return Err(QemuError::Timeout {
                    after: self.timeout,
                    serial: read_lossy(&serial_log).unwrap_or_default(),
                    serial_log,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let serial = read_lossy(&serial_log).map_err(io_err)?;
        if self.serial_log.is_none() {
            // Our own scratch file: its text is in `serial` now (a timeout keeps it, named).
            let _ = std::fs::remove_file(&serial_log);
        }
        Ok(QemuRun {
            serial,
            status,
            elapsed: start.elapsed(),
            serial_log,
        })
    }
}

fn read_lossy(path: &Path) -> std::io::Result<String> {
    Ok(String::from_utf8_lossy(&std::fs::read(path)?).into_owned())
}

/// Kills and reaps QEMU unless it has already exited.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// TAP output of programs run in a guest, read back from its serial console.
///
/// The guest's init prints `### BEGIN <name>` before a program and `### END <name> rc=<exit
/// code>` after it, and `### ALL DONE` at the end. Between the markers the program prints TAP:
/// a `1..N` plan and `ok`/`not ok` lines (`ok ... # SKIP` counts as skipped). Other lines
/// (diagnostics, kernel messages) are ignored.
pub mod tap {
    use std::collections::BTreeMap;

    /// The TAP verdict of one program.
    #[derive(Debug, Default, PartialEq, Eq)]
    pub struct Verdict {
        /// N of the `1..N` plan line.
        pub planned: Option<usize>,
        pub passed: usize,
        /// `ok` lines with `# SKIP`.
        pub skipped: usize,
        /// The `not ok` lines.
        pub failed: Vec<String>,
        /// The program's exit code, from its END marker.
        pub exit: Option<i32>,
    }

    impl Verdict {
        /// Why this program counts as failed (empty: it passed).
        pub fn problems(&self) -> Vec<String> {
            let mut p = self.failed.clone();
            match self.planned {
                None => p.push("no TAP plan line".into()),
                Some(n) if n != self.passed + self.skipped + self.failed.len() => p.push(format!(
                    "plan 1..{n} but {} results",
                    self.passed + self.skipped + self.failed.len()
                )),
                Some(_) => {}
            }
            match self.exit {
                None => p.push("did not finish".into()),
                // 4 is kselftest's "skipped" exit code.
                Some(0) | Some(4) => {}
                Some(rc) => p.push(format!("exit code {rc}")),
            }
            p
        }
    }

    /// Splits the console into the programs' TAP streams (between the markers).
    pub fn parse(serial: &str) -> BTreeMap<String, Verdict> {
        let mut verdicts = BTreeMap::new();
        let mut current: Option<String> = None;
        for line in serial.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(name) = line.strip_prefix("### BEGIN ") {
                current = Some(name.trim().to_string());
                verdicts.insert(name.trim().to_string(), Verdict::default());
                continue;
            }
            if let Some(rest) = line.strip_prefix("### END ") {
                if let Some((name, rc)) = rest.split_once(" rc=") {
                    if let Some(v) = verdicts.get_mut(name.trim()) {
                        v.exit = rc.trim().parse().ok();
                    }
                }
                current = None;
                continue;
            }
            let Some(v) = current.as_ref().and_then(|c| verdicts.get_mut(c)) else {
                continue;
            };
            if let Some(n) = line.strip_prefix("1..") {
                if let Ok(n) = n.split_whitespace().next().unwrap_or("").parse() {
                    v.planned = Some(n);
                }
            } else if let Some(rest) = line.strip_prefix("not ok ") {
                v.failed.push(format!("not ok {rest}"));
            } else if let Some(rest) = line.strip_prefix("ok ") {
                if rest.contains("# SKIP") {
                    v.skipped += 1;
                } else {
                    v.passed += 1;
                }
            }
        }
        verdicts
    }

    /// Checks that every program in `expected` ran and passed, and that `### ALL DONE` was
    /// printed; returns a one-line-per-program summary, or the summary and the problems.
    pub fn check(serial: &str, expected: &[String]) -> Result<String, String> {
        let verdicts = parse(serial);
        let mut report = String::new();
        let mut bad = Vec::new();
        for name in expected {
            match verdicts.get(name) {
                None => bad.push(format!("{name}: never started")),
                Some(v) => {
                    report.push_str(&format!(
                        "{name:32} {:>3} passed {:>3} skipped {:>3} failed\n",
                        v.passed,
                        v.skipped,
                        v.failed.len()
                    ));
                    bad.extend(v.problems().into_iter().map(|p| format!("{name}: {p}")));
                }
            }
        }
        if !serial.contains("### ALL DONE") {
            bad.push("the init script did not finish".into());
        }
        if bad.is_empty() {
            Ok(report)
        } else {
            Err(format!("{report}\n{}", bad.join("\n")))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const SAMPLE: &str = "noise\n### BEGIN a\nTAP version 13\n1..3\nok 1 - x\n\
                              [  1.0] kernel says hi\nok 2 # SKIP nope\nnot ok 3 - y\n### END a rc=1\n\
                              ### BEGIN b\n1..2\nok 1\n### END b rc=0\n### BEGIN c\n1..1\n";

        #[test]
        fn parse_counts_and_problems() {
            let v = parse(SAMPLE);
            assert_eq!(v["a"].planned, Some(3));
            assert_eq!((v["a"].passed, v["a"].skipped), (1, 1));
            assert_eq!(v["a"].failed, ["not ok 3 - y"]);
            assert_eq!(v["a"].problems(), ["not ok 3 - y", "exit code 1"]);
            assert_eq!(v["b"].problems(), ["plan 1..2 but 1 results"]);
            assert_eq!(
                v["c"].problems(),
                ["plan 1..1 but 0 results", "did not finish"]
            );
        }

        #[test]
        fn check_needs_every_program_and_the_end() {
            let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            let good = "### BEGIN a\n1..1\nok 1\n### END a rc=0\n### ALL DONE\n";
            assert!(check(good, &names(&["a"])).is_ok());
            assert!(check(good, &names(&["a", "b"])).is_err());
            assert!(check("### BEGIN a\n1..1\nok 1\n### END a rc=0\n", &names(&["a"])).is_err());
            assert!(check(
                "### BEGIN a\nok 1\n### END a rc=0\n### ALL DONE\n",
                &names(&["a"])
            )
            .is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_has_the_microvm_essentials() {
        let vm = QemuMicrovm::new("/k/vmlinux")
            .initrd("/k/initrd")
            .cmdline("console=ttyS0 quiet")
            .memory_mib(384)
            .cpus(2)
            .extra_args(["-device", "virtio-rng-device"]);
        let cmd = vm.command(Path::new("/tmp/serial.log"));
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let has = |pair: [&str; 2]| args.windows(2).any(|w| w[0] == pair[0] && w[1] == pair[1]);
        assert_eq!(cmd.get_program(), QEMU);
        assert!(has(["-M", "microvm,acpi=off"]));
        assert!(has(["-accel", "tcg"]));
        assert!(has(["-m", "384"]));
        assert!(has(["-smp", "2"]));
        assert!(has(["-kernel", "/k/vmlinux"]));
        assert!(has(["-initrd", "/k/initrd"]));
        assert!(has(["-append", "console=ttyS0 quiet"]));
        assert!(has(["-serial", "file:/tmp/serial.log"]));
        assert!(has(["-device", "virtio-rng-device"]));
        for flag in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing");
        }
    }

    #[test]
    fn a_missing_qemu_binary_or_kernel_is_an_error_not_a_hang() {
        // Whether or not QEMU is installed, a nonexistent kernel must end quickly with an
        // error (spawn failure, or QEMU exiting non-zero), never a timeout.
        let vm = QemuMicrovm::new("/nonexistent/capsule/vmlinux").timeout(Duration::from_secs(60));
        match vm.run() {
            Err(QemuError::Spawn(_)) => {}
            Ok(run) => assert!(!run.status.success()),
            Err(other) => panic!("unexpected: {other}"),
        }
    }
}
