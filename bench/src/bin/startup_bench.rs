//! Start-up benchmark: capsule's VMM against QEMU microvm, alternating, on the same kernel,
//! initrd and command line. Per VMM it reports the time from spawning the VMM to its first
//! KVM_RUN, to the guest's first serial byte and to a marker line (the guest's init, or the
//! tiny guest's ready line), as median, min and max over the runs; for capsule also the VMM
//! CPU time before the first KVM_RUN (its own log line).
//!
//! capsule logs a wall-clock stamp just before its first KVM_RUN. QEMU is timed in a second,
//! traced run per round (`-trace kvm_vcpu_ioctl -msg timestamp=on`, killed at the first
//! KVM_RUN), so that tracing every later exit does not slow the untraced boots.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use capsule_bench::{watch_for_marker, Reaper};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Time to first KVM_RUN, first serial byte and init: capsule vs QEMU microvm")]
struct Args {
    /// Rounds (one boot per VMM each, plus one traced QEMU start).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    #[arg(long)]
    capsule: PathBuf,
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// QEMU's -cpu model ("none": QEMU's default).
    #[arg(long, default_value = "host")]
    qemu_cpu: String,
    /// Guest kernel (default: the tiny idle test guest).
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Extra kernel parameters for both VMMs (QEMU also gets capsule's defaults).
    #[arg(long, default_value = "")]
    cmdline: String,
    /// The console line that marks the end of the boot (default: the tiny guest's ready line,
    /// or "capsule-agent:" -- the guest agent's first line -- when an initrd is given).
    #[arg(long)]
    marker: Option<String>,
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// Give up on a boot after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

#[derive(Default)]
struct Samples {
    first_run: Vec<f64>,
    first_byte: Vec<f64>,
    marker: Vec<f64>,
    cpu_to_run: Vec<f64>,
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Parses "<secs>.<micros>" into a duration since the epoch.
fn stamp(text: &str) -> Option<Duration> {
    let (s, us) = text.split_once('.')?;
    Some(Duration::new(s.parse().ok()?, 0) + Duration::from_micros(us.parse().ok()?))
}

/// One untraced boot: when it was spawned, first byte and marker in ms after that, and the
/// VMM's stderr.
fn boot(mut cmd: Command, marker: &str, timeout: Duration) -> Result<(Duration, f64, f64, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawned = now();
    let mut child = Reaper(cmd.spawn().context("cannot start the VMM")?);
    let out = child.0.stdout.take().context("no stdout")?;
    let err = child.0.stderr.take().context("no stderr")?;
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = String::new();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            lines.push_str(&line);
            lines.push('\n');
            let _ = err_tx.send(lines.clone());
        }
    });
    let rx = watch_for_marker(out, marker.as_bytes(), now);
    let (first, end) = match rx.recv_timeout(timeout) {
        Ok(Ok(t)) => t,
        Ok(Err(console)) => bail!("the VMM ended before the marker; console: {console:?}"),
        Err(_) => bail!("no marker within {timeout:?}"),
    };
    drop(child);
    let stderr = err_rx.try_iter().last().unwrap_or_default();
    let ms = |t: Duration| t.saturating_sub(spawned).as_secs_f64() * 1e3;
    Ok((spawned, ms(first), ms(end), stderr))
}

/// capsule's "vCPU 0 enters the guest after <cpu> ms of VMM CPU time, at <stamp> s" line
/// (older builds log no stamp).
fn capsule_first_run(stderr: &str) -> Option<(f64, Option<Duration>)> {
    let line = stderr
        .lines()
        .find(|l| l.contains("enters the guest after"))?;
    let cpu = line
        .split("after ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let at = line
        .split(", at ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(stamp);
    Some((cpu, at))
}

/// A traced QEMU start, killed at its first KVM_RUN: ms from spawn to that ioctl.
fn qemu_first_run(mut cmd: Command, timeout: Duration) -> Result<f64> {
    cmd.args(["-trace", "kvm_vcpu_ioctl", "-msg", "timestamp=on"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let spawned = now();
    let mut child = Reaper(cmd.spawn().context("cannot start QEMU")?);
    let err = child.0.stderr.take().context("no stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // "<pid>@<secs>.<micros>:kvm_vcpu_ioctl cpu_index 0, type 0xae80, ..." (0xae80 = KVM_RUN)
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("type 0xae80") {
                let at = line
                    .split_once('@')
                    .and_then(|(_, rest)| rest.split_once(':'))
                    .and_then(|(t, _)| stamp(t));
                let _ = tx.send(at);
                return;
            }
        }
        let _ = tx.send(None);
    });
    let at = rx
        .recv_timeout(timeout)
        .ok()
        .flatten()
        .context("no KVM_RUN in QEMU's trace")?;
    drop(child);
    Ok(at.saturating_sub(spawned).as_secs_f64() * 1e3)
}

fn stats(values: &[f64]) -> String {
    if values.is_empty() {
        return "n/a".into();
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    format!("{median:.1} ({:.1}–{:.1})", v[0], v[n - 1])
}

fn main() -> Result<()> {
    let args = Args::parse();
    let kernel = args
        .kernel
        .clone()
        .unwrap_or_else(|| capsule_tests::guests::Guest::Idle.pvh().to_path_buf());
    let marker = args.marker.clone().unwrap_or_else(|| {
        if args.initrd.is_some() {
            "capsule-agent:".into()
        } else {
            "capsule-guest: idle halting".into()
        }
    });
    let timeout = Duration::from_secs(args.timeout);
    let cmdline = args.cmdline.trim().to_string();
    let capsule = || {
        let mut cmd = Command::new(&args.capsule);
        cmd.env("CAPSULE_LOG", "info")
            .arg("run")
            .arg("--kernel")
            .arg(&kernel)
            .args(["--memory", &args.memory.to_string(), "--no-rng"]);
        if let Some(initrd) = &args.initrd {
            cmd.arg("--initrd").arg(initrd);
        }
        if !cmdline.is_empty() {
            cmd.args(["--cmdline", &cmdline]);
        }
        cmd
    };
    let qemu = || {
        let mut cmd = Command::new(&args.qemu);
        cmd.args([
            "-M",
            "microvm,x-option-roms=off,rtc=off,acpi=off",
            "-accel",
            "kvm",
        ]);
        if args.qemu_cpu != "none" {
            cmd.args(["-cpu", &args.qemu_cpu]);
        }
        cmd.args(["-m", &args.memory.to_string(), "-smp", "1", "-nodefaults"])
            .args(["-no-user-config", "-display", "none", "-serial", "stdio"])
            .arg("-kernel")
            .arg(&kernel)
            .arg("-append")
            .arg(format!(
                "{} {cmdline}",
                capsule_vmm::builder::DEFAULT_CMDLINE
            ));
        if let Some(initrd) = &args.initrd {
            cmd.arg("-initrd").arg(initrd);
        }
        cmd
    };
    let (mut c, mut q) = (Samples::default(), Samples::default());
    for round in 0..args.runs {
        let (spawned, first, end, stderr) = boot(capsule(), &marker, timeout)
            .with_context(|| format!("capsule, round {}", round + 1))?;
        c.first_byte.push(first);
        c.marker.push(end);
        if let Some((cpu, at)) = capsule_first_run(&stderr) {
            c.cpu_to_run.push(cpu);
            if let Some(at) = at {
                c.first_run
                    .push(at.saturating_sub(spawned).as_secs_f64() * 1e3);
            }
        }
        let (_, first_q, end_q, _) =
            boot(qemu(), &marker, timeout).with_context(|| format!("QEMU, round {}", round + 1))?;
        q.first_byte.push(first_q);
        q.marker.push(end_q);
        q.first_run.push(qemu_first_run(qemu(), timeout)?);
        eprint!("\rrounds: {}/{}", round + 1, args.runs);
    }
    eprintln!();
    println!(
        "kernel {}, initrd {}, marker {marker:?}, {} MiB, {} rounds",
        kernel.display(),
        args.initrd
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string()),
        args.memory,
        args.runs
    );
    println!("| ms from spawn, median (min–max) | capsule | QEMU microvm |");
    println!("|---|---|---|");
    println!(
        "| first KVM_RUN | {} | {} |",
        stats(&c.first_run),
        stats(&q.first_run)
    );
    println!(
        "| first serial byte | {} | {} |",
        stats(&c.first_byte),
        stats(&q.first_byte)
    );
    println!(
        "| marker ({marker}) | {} | {} |",
        stats(&c.marker),
        stats(&q.marker)
    );
    println!(
        "| VMM CPU before the first KVM_RUN | {} | n/a |",
        stats(&c.cpu_to_run)
    );
    Ok(())
}
