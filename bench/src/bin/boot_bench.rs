//! Boots the same guest on capsule and on QEMU microvm, alternating, and reports per VMM:
//! wall time from process start to the guest's first serial byte, the VMM process's CPU time
//! up to the point the guest is idle, and its memory overhead (RSS minus the guest RAM the run
//! touched), as medians, with capsule/QEMU ratios.
//!
//! The guest is the tiny `tests/guests/idle.c`, which prints one line and halts, or a real
//! kernel (`--kernel`, `--initrd`) whose init prints the `--ready` line (bench/l1.sh). Once that line has arrived and
//! the VM has settled, the harness reads `/proc/<pid>/task/*/schedstat` (nanoseconds on CPU,
//! all threads, including KVM work done in the kernel for the VMM) and `/proc/<pid>/smaps`
//! (RSS per mapping; guest RAM is the anonymous mapping of the guest memory size), then kills
//! the VMM.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use capsule_bench::{watch_for_marker, Reaper};
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
    /// Boot this kernel instead of the tiny idle guest (with `--ready`).
    #[arg(long, requires = "ready")]
    kernel: Option<PathBuf>,
    /// Initramfs for `--kernel`.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Extra kernel command line for `--kernel` (both VMMs get `console=ttyS0 reboot=t
    /// panic=1 pci=off` and this).
    #[arg(long, default_value = "quiet", requires = "kernel")]
    cmdline: String,
    /// The console line that ends a boot (default: the idle guest's).
    #[arg(long, requires = "kernel")]
    ready: Option<String>,
    /// Longest one boot may take, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// What to boot, the same on both VMMs.
struct BootSpec<'a> {
    kernel: &'a Path,
    initrd: Option<&'a Path>,
    /// The command line QEMU gets; capsule adds its own defaults to `cmdline`.
    cmdline: Option<&'a str>,
    ready: &'a [u8],
    memory: u64,
    timeout: Duration,
}

/// One boot's measurements.
#[derive(Debug, Clone, Copy)]
struct Sample {
    first_byte: Duration,
    /// Until the ready line (the tiny guest's only line, or the real kernel's init marker).
    ready: Duration,
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
/// What capsule's builder puts first on a Linux command line that QEMU microvm needs too.
const LINUX_CMDLINE: &str = "console=ttyS0 reboot=t panic=1 pci=off";

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
    let idle = Guest::Idle.pvh();
    let extra = args.kernel.as_ref().map(|_| args.cmdline.as_str());
    let spec = BootSpec {
        kernel: args.kernel.as_deref().unwrap_or(idle),
        initrd: args.initrd.as_deref(),
        cmdline: extra,
        ready: args.ready.as_deref().map_or(READY_LINE, str::as_bytes),
        memory: args.memory,
        timeout: Duration::from_secs(args.timeout),
    };
    let mut results: Vec<(&str, Vec<Sample>)> = vec![("capsule", Vec::new()), ("qemu", Vec::new())];
    for run in 0..args.runs {
        for (name, samples) in results.iter_mut() {
            let cmd = match *name {
                "capsule" => capsule_command(&capsule, &spec),
                _ => qemu_command(&args.qemu, &args.qemu_accel, &spec),
            };
            let sample = measure(cmd, &spec).with_context(|| format!("{name}, run {}", run + 1))?;
            samples.push(sample);
        }
        eprint!("\rruns: {}/{}", run + 1, args.runs);
    }
    eprintln!();
    report(&results);
    Ok(())
}

fn capsule_command(capsule: &Path, spec: &BootSpec) -> Command {
    let mut cmd = Command::new(capsule);
    cmd.env("CAPSULE_LOG", "info");
    cmd.arg("run")
        .arg("--kernel")
        .arg(spec.kernel)
        .arg("--memory")
        .arg(spec.memory.to_string());
    if let Some(initrd) = spec.initrd {
        cmd.arg("--initrd").arg(initrd);
    }
    if let Some(extra) = spec.cmdline {
        cmd.arg("--cmdline").arg(extra);
    }
    cmd
}

fn qemu_command(qemu: &Path, accel: &str, spec: &BootSpec) -> Command {
    let mut cmd = Command::new(qemu);
    if let Some(initrd) = spec.initrd {
        cmd.arg("-initrd").arg(initrd);
    }
    if let Some(extra) = spec.cmdline {
        cmd.arg("-append").arg(format!("{LINUX_CMDLINE} {extra}"));
    }
    cmd.args([
        "-M",
        "microvm,x-option-roms=off,rtc=off,acpi=off",
        "-accel",
        accel,
        "-m",
        &spec.memory.to_string(),
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
    .arg(spec.kernel);
    cmd
}

fn measure(mut cmd: Command, spec: &BootSpec) -> Result<Sample> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = Reaper(cmd.spawn().context("cannot start the VMM")?);
    let pid = child.0.id();
    let out = child.0.stdout.take().context("no stdout")?;
    let mut err = child.0.stderr.take().context("no stderr")?;
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let rx = watch_for_marker(out, spec.ready, move || start.elapsed());
    let (first_byte, ready_at) = match rx.recv_timeout(spec.timeout) {
        Ok(Ok(times)) => times,
        Ok(Err(console)) => bail!("the VMM ended before the guest was ready; console: {console:?}"),
        Err(_) => bail!("the guest was not ready within {:?}", spec.timeout),
    };
    std::thread::sleep(SETTLE);
    let cpu = process_cpu(pid)?;
    let (rss_kib, guest_rss_kib) = rss(pid, spec.memory << 10)?;
    drop(child);
    let stderr = stderr.join().unwrap_or_default();
    Ok(Sample {
        first_byte,
        ready: ready_at,
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
    let metrics: [Metric; 5] = [
        ("first serial byte (wall)", "ms", |s| {
            s.first_byte.as_secs_f64() * 1e3
        }),
        ("ready line (wall)", "ms", |s| s.ready.as_secs_f64() * 1e3),
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
