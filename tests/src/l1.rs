//! The L1 test machine: Debian's kernel under QEMU's software CPU with emulated AMD SVM, in
//! which /dev/kvm is hardware-style KVM (kvm_amd with nested paging). On machines without
//! hardware KVM, a test of capsule's KVM backend runs in there: one L1 boot per test, the test
//! binary itself run inside with `--exact`, its result brought back (docs/testing.md).
//!
//! The L1 sees the host's root read-only over 9p, with fresh /proc, /sys, /dev and tmpfs on
//! /tmp, /run and /var/tmp (`tests/l1/init`); so the test binary, `capsule`, the default guest
//! and the host's tools are there at the same paths, and nothing the test writes reaches the
//! host. `scripts/build-l1.sh` prepares the kernel and the initramfs, cached by package version.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::capsule::capsule_binary;
use crate::guests::ScratchDir;
use crate::tier::{find_in_path, no_hardware_kvm_reason, GuestKind};

/// QEMU's software CPU runs one vCPU reliably only: with more, QEMU 7.2's TCG hangs now and then.
const L1_CPUS: &str = "1";
const L1_MEMORY_MIB: &str = "2048";
/// `qemu64` plus SVM and nested paging: `-cpu max` makes the inner guest warn about XSAVE.
const L1_CPU_MODEL: &str = "qemu64,+svm,+npt";
/// The L1 prints a heartbeat every 10 s; this long without any line means it stopped.
const SILENCE_LIMIT: Duration = Duration::from_secs(90);
/// Console lines kept for a failure report.
const TAIL_LINES: usize = 60;
/// Environment passed into the L1 (the rest of the host's environment is not).
const PASSED_ENV: &[&str] = &[
    "RUST_BACKTRACE",
    "RUST_LOG",
    "CAPSULE_AGENT_TIMEOUT",
    "TERM",
];

/// Longest one test may take in L1, boot included.
fn deadline(guest: GuestKind) -> Duration {
    match guest {
        GuestKind::Tiny => Duration::from_secs(300),
        GuestKind::Linux => Duration::from_secs(1200),
    }
}

/// Why the L1 route is not taken here, or `None` when it is.
pub fn unavailable_reason() -> Option<String> {
    if no_hardware_kvm_reason().is_none() {
        return Some("this machine has hardware KVM: the ::kvm test runs directly".into());
    }
    if find_in_path("qemu-system-x86_64").is_none() {
        return Some(
            "qemu-system-x86_64 is not installed (scripts/install-deps.sh installs it), so there \
             is no L1 machine"
                .into(),
        );
    }
    None
}

/// The prepared L1 kernel, initramfs and modules (`scripts/build-l1.sh`).
struct Kit {
    dir: PathBuf,
}

fn kit() -> Result<&'static Kit, String> {
    static KIT: OnceLock<Result<Kit, String>> = OnceLock::new();
    KIT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-l1.sh");
        let out = Command::new(&script)
            .arg("--print-dir")
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!("{} failed: {}", script.display(), out.status));
        }
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        for file in ["vmlinux", "initramfs.cpio", "modroot"] {
            if !dir.join(file).exists() {
                return Err(format!("{} lacks {file}", dir.display()));
            }
        }
        Ok(Kit { dir })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Modules of the L1 kernel that VM networks use: TAPs, bridges, veths, nftables NAT and fib,
/// tc redirects (`--netns`); and overlayfs, containerd's snapshots for the shim tests.
const L1_NETWORK_MODULES: &str = "tun bridge veth nf_tables nf_nat nft_nat nft_chain_nat nft_masq \
     nft_fib_ipv4 sch_ingress cls_u32 act_mirred overlay";

/// The script the L1 runs: load KVM, then `command` (a shell command line) in the current
/// directory, with stdout and stderr on the console.
fn job_script(kit: &Kit, command: &str) -> Result<String, String> {
    let cwd = std::env::current_dir().map_err(|e| format!("current_dir: {e}"))?;
    // Built (when needed) here: the L1 has no cargo.
    let capsule = capsule_binary()?.display().to_string();
    let mut script = String::from(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n",
    );
    script += &format!("export CAPSULE_BIN={}\n", shell_quote(&capsule));
    for (key, value) in std::env::vars() {
        if PASSED_ENV.contains(&key.as_str())
            || (key.starts_with("CAPSULE_") && key != "CAPSULE_BIN")
        {
            script += &format!("export {key}={}\n", shell_quote(&value));
        }
    }
    let modroot = kit.dir.join("modroot").display().to_string();
    script += &format!(
        "modprobe -d {} -a kvm_amd || {{ echo '@@l1 setup failed: modprobe kvm_amd'; exit 99; }}\n",
        shell_quote(&modroot)
    );
    // What VM networks need on the host side (capsule create --net): TAPs, bridges, NAT.
    script += &format!(
        "for m in {L1_NETWORK_MODULES}; do modprobe -d {} $m || echo \"@@l1 note: no module $m\"; done\n",
        shell_quote(&modroot)
    );
    // The host's /var/lib is read-only in L1.
    script += "export CAPSULE_NETWORK_DIR=/run/capsule-networks\n"; // CNI's result cache (containerd's CRI writes it; scripts/install-deps.sh makes the directory).
    script += "if [ -d /var/lib/cni ]; then mount -t tmpfs tmpfs /var/lib/cni || true; fi\n";

    script += &format!("cd {}\n", shell_quote(&cwd.display().to_string()));
    script += &format!("exec 2>&1\n{command}\n");
    Ok(script)
}

/// Kills QEMU when the test ends, however it ends.
struct Machine(Child);

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How a command run in L1 ended.
pub struct L1Outcome {
    /// The command's exit status (`@@l1 exit N`), `None` when the machine never said.
    pub exit: Option<i32>,
    /// The last console lines, for a failure report.
    pub tail: String,
}

/// Runs `command` (a shell command line, run by /bin/sh in the current directory with this
/// process's CAPSULE_* environment) inside a fresh L1 machine, handing each console line to
/// `on_line`. Fails when the machine cannot start, its set-up fails, it stops producing output
/// or it passes `deadline`.
pub fn run_in_l1(
    command: &str,
    deadline: Duration,
    mut on_line: impl FnMut(&str),
) -> Result<L1Outcome, String> {
    let kit = kit()?;
    let job = ScratchDir::new("l1-job")?;
    std::fs::write(job.join("job.sh"), job_script(kit, command)?)
        .map_err(|e| format!("writing the L1 job: {e}"))?;
    // microvm has no HPET or ACPI PM timer to calibrate the TSC against: give the kernel the
    // figures instead of letting it hang in the calibration and the IO-APIC timer check.
    let append = format!(
        "console=ttyS0 quiet panic=-1 pci=off tsc_early_khz=2000000 lpj=4000000 no_timer_check \
         capsule.job={}",
        job.path().display()
    );
    let fsdev = "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap";
    let mut machine = Machine(
        Command::new("qemu-system-x86_64")
            .args(["-M", "microvm,pit=on,pic=on,rtc=on", "-accel", "tcg"])
            .args(["-cpu", L1_CPU_MODEL, "-smp", L1_CPUS])
            .args(["-m", L1_MEMORY_MIB, "-nodefaults", "-no-user-config"])
            .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(kit.dir.join("vmlinux"))
            .arg("-initrd")
            .arg(kit.dir.join("initramfs.cpio"))
            .args(["-append", &append, "-fsdev", fsdev])
            .args([
                "-device",
                "virtio-9p-device,fsdev=hostroot,mount_tag=hostroot",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the L1 machine (qemu-system-x86_64): {e}"))?,
    );
    let (lines_tx, lines) = mpsc::channel::<String>();
    for stream in [
        machine
            .0
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        machine.0.stderr.take().map(|s| Box::new(s) as _),
    ]
    .into_iter()
    .flatten()
    {
        let tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(lines_tx);

    let started = Instant::now();
    let limit = deadline;
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    let mut exit = None;
    let mut setup_failure = None;
    let failure = loop {
        let left = limit.saturating_sub(started.elapsed());
        match lines.recv_timeout(SILENCE_LIMIT.min(left)) {
            Ok(line) => {
                if line == "@@l1 alive" {
                    continue;
                }
                on_line(&line);
                if let Some(what) = line.strip_prefix("@@l1 setup failed: ") {
                    setup_failure = Some(what.to_string());
                } else if let Some(code) = line.strip_prefix("@@l1 exit ") {
                    exit = code.trim().parse().ok();
                }
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            // Both console streams closed: QEMU is gone.
            Err(mpsc::RecvTimeoutError::Disconnected) => break None,
            Err(mpsc::RecvTimeoutError::Timeout) if started.elapsed() >= limit => {
                break Some(format!("the L1 machine did not finish within {limit:?}"));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Some(format!(
                    "the L1 machine stopped producing output for {SILENCE_LIMIT:?} (no heartbeat)"
                ));
            }
        }
    };
    if failure.is_some() {
        // A stopped or runaway machine does not exit by itself.
        let _ = machine.0.kill();
    }
    let status = machine.0.wait().ok();
    let tail = Vec::from(tail).join("\n");
    if let Some(failure) = failure {
        return Err(format!("{failure}\nconsole tail:\n{tail}"));
    }
    if let Some(what) = setup_failure {
        return Err(format!("L1 set-up failed: {what}\nconsole tail:\n{tail}"));
    }
    if exit.is_none() {
        return Err(format!(
            "the L1 machine ended ({status:?}) before its job did\nconsole tail:\n{tail}"
        ));
    }
    Ok(L1Outcome { exit, tail })
}

/// Runs the test named `test` of this binary inside a fresh L1 machine and returns its result.
pub fn run_test_inside(test: &str, guest: GuestKind) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let command = format!(
        "exec {} --exact {} --nocapture --test-threads 1 --color never",
        shell_quote(&exe.display().to_string()),
        shell_quote(test)
    );
    let mut counts = None;
    let outcome = run_in_l1(&command, deadline(guest), |line| {
        eprintln!("L1| {line}");
        counts = counts.or(libtest_counts(line));
    })?;
    let tail = outcome.tail;
    match (counts, outcome.exit) {
        (Some((1, 0, 0)), Some(0)) => Ok(()),
        (Some((0, 0, 1)), _) => Err(format!(
            "inside L1 the test was skipped, so L1 lacks what it needs:\n{tail}"
        )),
        (Some((passed, failed, ignored)), code) => Err(format!(
            "inside L1: {passed} passed, {failed} failed, {ignored} ignored (exit {code:?})\n\
             console tail:\n{tail}"
        )),
        (None, code) => Err(format!(
            "no test result for {test} from the L1 machine (job exit {code:?})\n\
             console tail:\n{tail}"
        )),
    }
}

/// (passed, failed, ignored) from libtest's closing line:
/// `test result: ok. 1 passed; 0 failed; 0 ignored; ...`.
fn libtest_counts(line: &str) -> Option<(u32, u32, u32)> {
    let rest = line.strip_prefix("test result: ")?;
    let (_, counts) = rest.split_once(". ")?;
    let count = |word: &str| {
        counts
            .split(';')
            .find_map(|part| part.trim().strip_suffix(word)?.trim().parse().ok())
    };
    Some((count(" passed")?, count(" failed")?, count(" ignored")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libtest_closing_line() {
        let line = "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 31 filtered out; \
                    finished in 1.56s";
        assert_eq!(libtest_counts(line), Some((1, 0, 0)));
        let line = "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured";
        assert_eq!(libtest_counts(line), Some((0, 1, 0)));
        assert_eq!(libtest_counts("test foo ... ok"), None);
        assert_eq!(libtest_counts("test result: garbage"), None);
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
