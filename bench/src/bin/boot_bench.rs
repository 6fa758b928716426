//! Boots the same tiny guest on capsule and on QEMU microvm, alternating, and reports per VMM:
//! wall time from process start to the guest's first serial byte, the VMM process's CPU time
//! up to the point the guest is idle, and its memory overhead (RSS minus the guest RAM the run
//! touched), as medians, with capsule/QEMU ratios.
//!
//! The guest (`tests/guests/idle.c`) prints one line and halts. Once that line has arrived and
//! the VM has settled, the harness reads `/proc/<pid>/task/*/schedstat` (nanoseconds on CPU,
//! all threads, including KVM work done in the kernel for the VMM) and `/proc/<pid>/smaps`
//! (RSS per mapping; guest RAM is the anonymous mapping of the guest memory size), then kills
//! the VMM.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use capsule_tests::guests::Guest;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Boot-time, CPU and memory comparison of capsule and QEMU microvm")]
struct Args {
    /// Boots per VMM (alternating capsule, QEMU).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Guest memory in MiB for both VMMs.
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// The capsule binary (default: the release build next to this harness).
    #[arg(long)]
    capsule: Option<PathBuf>,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Accelerator for QEMU (kvm for a like-for-like comparison).
    #[arg(long, default_value = "kvm")]
    qemu_accel: String,
}

/// One boot's measurements.
#[derive(Debug, Clone, Copy)]
struct Sample {
    first_byte: Duration,
    /// capsule only: VMM CPU time just before the first KVM_RUN, as capsule logs it.
    cpu_to_guest: Option<Duration>,
    cpu: Duration,
    rss_kib: u64,
    guest_rss_kib: u64,
}

impl Sample {
    fn overhead_kib(&self) -> u64 {
        self.rss_kib.saturating_sub(self.guest_rss_kib)
    }
}

const READY_LINE: &[u8] = b"capsule-guest: idle halting";
const SETTLE: Duration = Duration::from_millis(100);
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> Result<()> {
    let args = Args::parse();
    let capsule = match &args.capsule {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("harness has no directory")?
            .join("capsule"),
    };
    if !capsule.is_file() {
        bail!(
            "capsule binary {} not found: build it with `cargo build --release -p capsule-cli`",
            capsule.display()
        );
    }
    let guest = Guest::Idle.pvh();
    let mut results: Vec<(&str, Vec<Sample>)> = vec![("capsule", Vec::new()), ("qemu", Vec::new())];
    for run in 0..args.runs {
        for (name, samples) in results.iter_mut() {
            let cmd = match *name {
                "capsule" => capsule_command(&capsule, guest, args.memory),
                _ => qemu_command(&args.qemu, &args.qemu_accel, guest, args.memory),
            };
            let sample =
                measure(cmd, args.memory).with_context(|| format!("{name}, run {}", run + 1))?;
            samples.push(sample);
        }
        eprint!("\rruns: {}/{}", run + 1, args.runs);
    }
    eprintln!();
    report(&results);
    Ok(())
}

fn capsule_command(capsule: &Path, guest: &Path, memory: u64) -> Command {
    let mut cmd = Command::new(capsule);
    cmd.env("CAPSULE_LOG", "info");
    cmd.arg("run")
        .arg("--kernel")
        .arg(guest)
        .arg("--memory")
        .arg(memory.to_string());
    cmd
}

fn qemu_command(qemu: &Path, accel: &str, guest: &Path, memory: u64) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-M",
        "microvm,x-option-roms=off,rtc=off,acpi=off",
        "-accel",
        accel,
        "-m",
        &memory.to_string(),
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-kernel",
    ])
    .arg(guest);
    cmd
}

/// Kills the VMM when the measurement is done or fails.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn measure(mut cmd: Command, memory_mib: u64) -> Result<Sample> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = Reaper(cmd.spawn().context("cannot start the VMM")?);
    let pid = child.0.id();
    let mut out = child.0.stdout.take().context("no stdout")?;
    let mut err = child.0.stderr.take().context("no stderr")?;
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the console on its own thread, timestamping the first byte and the ready line.
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        let mut first = None;
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Err(String::from_utf8_lossy(&seen).into_owned()));
                    return;
                }
                Ok(n) => {
                    first.get_or_insert_with(|| start.elapsed());
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(READY_LINE.len()).any(|w| w == READY_LINE) {
                        let _ = tx.send(Ok(first.unwrap_or_default()));
                        return;
                    }
                }
            }
        }
    });
    let first_byte = match rx.recv_timeout(BOOT_TIMEOUT) {
        Ok(Ok(first)) => first,
        Ok(Err(console)) => bail!("the VMM ended before the guest was ready; console: {console:?}"),
        Err(_) => bail!("the guest was not ready within {BOOT_TIMEOUT:?}"),
    };
    std::thread::sleep(SETTLE);
    let cpu = process_cpu(pid)?;
    let (rss_kib, guest_rss_kib) = rss(pid, memory_mib << 10)?;
    drop(child);
    let stderr = stderr.join().unwrap_or_default();
    Ok(Sample {
        first_byte,
        cpu_to_guest: parse_cpu_to_guest(&stderr),
        cpu,
        rss_kib,
        guest_rss_kib,
    })
}

/// Time on CPU of every thread of `pid`, from schedstat (nanoseconds).
fn process_cpu(pid: u32) -> Result<Duration> {
    let mut total = 0u64;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = fs::read_to_string(task?.path().join("schedstat"))?;
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .context("unreadable schedstat")?;
    }
    Ok(Duration::from_nanos(total))
}

/// Total RSS of `pid`, and the RSS of its guest RAM mapping (the mapping whose size is the
/// guest memory size, give or take alignment padding), both in KiB.
fn rss(pid: u32, guest_kib: u64) -> Result<(u64, u64)> {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let (mut total, mut guest) = (0u64, 0u64);
    let mut size = 0u64;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("Size:") => size = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            Some("Rss:") => {
                let kib: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                total += kib;
                if size >= guest_kib && size <= guest_kib + 4096 {
                    guest = guest.max(kib);
                }
            }
            _ => {}
        }
    }
    Ok((total, guest))
}

/// Parses capsule's "vCPU 0 enters the guest after N ms of VMM CPU time" log line.
fn parse_cpu_to_guest(stderr: &str) -> Option<Duration> {
    let line = stderr
        .lines()
        .find(|l| l.contains("enters the guest after"))?;
    let ms: f64 = line
        .split("after ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(Duration::from_secs_f64(ms / 1e3))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn report(results: &[(&str, Vec<Sample>)]) {
    type Metric = (&'static str, &'static str, fn(&Sample) -> f64);
    let metrics: [Metric; 4] = [
        ("first serial byte (wall)", "ms", |s| {
            s.first_byte.as_secs_f64() * 1e3
        }),
        ("VMM CPU until guest idle", "ms", |s| {
            s.cpu.as_secs_f64() * 1e3
        }),
        ("VMM RSS overhead (RSS - guest RAM)", "MiB", |s| {
            s.overhead_kib() as f64 / 1024.0
        }),
        ("guest RAM touched", "MiB", |s| {
            s.guest_rss_kib as f64 / 1024.0
        }),
    ];
    println!(
        "| metric (median of {} runs) | capsule | QEMU microvm | capsule/QEMU |",
        results[0].1.len()
    );
    println!("|---|---|---|---|");
    let to_guest: Vec<f64> = results[0]
        .1
        .iter()
        .filter_map(|s| s.cpu_to_guest)
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    if !to_guest.is_empty() {
        println!(
            "| VMM CPU to first guest instruction (capsule's own clock, just before the first KVM_RUN) | {:.2} ms | n/a (no hook) | - |",
            median(to_guest)
        );
    }
    for (name, unit, f) in metrics {
        let medians: Vec<f64> = results
            .iter()
            .map(|(_, samples)| median(samples.iter().map(f).collect()))
            .collect();
        println!(
            "| {name} | {:.2} {unit} | {:.2} {unit} | {:.2} |",
            medians[0],
            medians[1],
            medians[0] / medians[1]
        );
    }
}
