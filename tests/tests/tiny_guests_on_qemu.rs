//! Tier T2: the test guests on QEMU's microvm machine under TCG, to prove them independent of
//! capsule. QEMU boots them through their PVH note (its microvm machine has no 64-bit Linux boot
//! protocol path for ELF images); the 64-bit entry is exercised through the linux64 shim build.
//!
//! QEMU's boot state differs from capsule's (qboot firmware, its own e820 map and MP table,
//! virtio-mmio windows at 0xfeb00000+), so the expectations here are QEMU's.
//!
//! The launcher below is private to this file for now; it should move to `tests/src/qemu.rs`
//! once that module exists.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use capsule_tests::capsule::{run_with_timeout, ProcessOutcome};
use capsule_tests::guests::{
    bootcheck_linux64_shim, write_test_initrd, BootExpect, BootPath, Guest, GuestReport,
    ScratchDir, HELLO_LINE, QEMU_EXIT_FAIL, QEMU_EXIT_PASS,
};
use capsule_tests::tier::{run_tier_tests, Tier, TierTest};

/// Guests run in well under a second here; the limit only stops a hung QEMU.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A QEMU microvm run of one guest.
struct QemuRun {
    machine: &'static str,
    extra: Vec<&'static str>,
    cpus: u32,
    mem_mib: u64,
    initrd: Option<std::path::PathBuf>,
    append: String,
}

struct QemuOutcome {
    process: ProcessOutcome,
    serial: String,
    /// QEMU's `-d cpu_reset` log (records "Triple fault").
    log: String,
    report: GuestReport,
    command: String,
}

impl QemuRun {
    fn new(append: impl Into<String>) -> Self {
        QemuRun {
            machine: "microvm",
            extra: Vec::new(),
            cpus: 2,
            mem_mib: 128,
            initrd: None,
            append: append.into(),
        }
    }

    fn run(&self, kernel: &Path) -> Result<QemuOutcome, String> {
        let dir = ScratchDir::new("qemu")?;
        let serial = dir.join("serial.txt");
        let log = dir.join("qemu.log");
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.arg("-M")
            .arg(self.machine)
            .args([
                "-accel",
                "tcg",
                "-nodefaults",
                "-no-user-config",
                "-nographic",
            ])
            .arg("-no-reboot")
            .args([
                "-m",
                &self.mem_mib.to_string(),
                "-smp",
                &self.cpus.to_string(),
            ])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .args(["-d", "cpu_reset", "-D"])
            .arg(&log)
            .args(&self.extra)
            .arg("-kernel")
            .arg(kernel)
            .args(["-append", &self.append]);
        if let Some(initrd) = &self.initrd {
            cmd.arg("-initrd").arg(initrd);
        }
        let command = format!("{cmd:?}");
        let start = Instant::now();
        let process = run_with_timeout(&mut cmd, TIMEOUT)?;
        eprintln!(
            "{}: QEMU ran for {} ms",
            kernel.file_name().unwrap_or_default().to_string_lossy(),
            start.elapsed().as_millis()
        );
        let serial = std::fs::read_to_string(&serial).unwrap_or_default();
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        Ok(QemuOutcome {
            report: GuestReport::parse(&serial),
            process,
            serial,
            log,
            command,
        })
    }
}

impl QemuOutcome {
    fn describe(&self) -> String {
        format!(
            "{}\nQEMU: {}{}\n--- stderr ---\n{}\n--- serial ---\n{}",
            self.command,
            self.process.status,
            if self.process.timed_out {
                " (killed after the timeout)"
            } else {
                ""
            },
            self.process.stderr,
            self.serial
        )
    }

    fn expect_exit(&self, code: i32) -> Result<(), String> {
        if !self.process.timed_out && self.process.status.code() == Some(code) {
            Ok(())
        } else {
            Err(format!("expected QEMU exit {code}\n{}", self.describe()))
        }
    }

    fn check(&self, result: Result<(), String>) -> Result<(), String> {
        result.map_err(|e| format!("{e}\n{}", self.describe()))
    }
}

fn hello() -> Result<(), String> {
    let out = QemuRun::new("console=ttyS0").run(Guest::Hello.pvh())?;
    out.expect_exit(QEMU_EXIT_PASS)?;
    out.check(out.report.expect_all_ok(&[]))?;
    if !out.serial.lines().any(|l| l.trim_end() == HELLO_LINE) {
        return Err(format!("no hello line\n{}", out.describe()));
    }
    let boot_path = out.report.info("boot-path").next();
    match boot_path {
        Some("pvh") => Ok(()),
        other => Err(format!(
            "boot-path {other:?}, expected pvh\n{}",
            out.describe()
        )),
    }
}

/// Boots bootcheck on QEMU with `expect`'s CPU count, memory and initrd, and verifies it.
fn bootcheck(kernel: &Path, expect: &BootExpect) -> Result<QemuOutcome, String> {
    let mut run = QemuRun::new(expect.cmdline());
    run.cpus = expect.cpus;
    run.mem_mib = expect.mem_mib;
    run.initrd = expect.initrd.as_ref().map(|i| i.path.clone());
    let out = run.run(kernel)?;
    out.expect_exit(QEMU_EXIT_PASS)?;
    out.check(expect.verify(&out.report))?;
    Ok(out)
}

fn bootcheck_pvh_with_initrd() -> Result<(), String> {
    let dir = ScratchDir::new("bootcheck")?;
    // An odd size, so that a VMM rounding the ramdisk size up would be caught.
    let initrd = write_test_initrd(&dir.join("initrd.img"), 12345)?;
    let expect = BootExpect {
        boot_path: BootPath::Pvh,
        cpus: 2,
        mem_mib: 128,
        initrd: Some(initrd),
    };
    bootcheck(Guest::BootCheck.pvh(), &expect).map(drop)
}

fn bootcheck_pvh_without_initrd() -> Result<(), String> {
    let expect = BootExpect {
        boot_path: BootPath::Pvh,
        cpus: 3,
        mem_mib: 96,
        initrd: None,
    };
    bootcheck(Guest::BootCheck.pvh(), &expect).map(drop)
}

fn bootcheck_linux64_entry_via_shim() -> Result<(), String> {
    let dir = ScratchDir::new("bootcheck-shim")?;
    let initrd = write_test_initrd(&dir.join("initrd.img"), 12345)?;
    let expect = BootExpect {
        boot_path: BootPath::Linux64,
        cpus: 2,
        mem_mib: 128,
        initrd: Some(initrd),
    };
    let out = bootcheck(bootcheck_linux64_shim(), &expect)?;
    if out.report.info("linux64-shim").next().is_none() {
        return Err(format!("the shim did not run\n{}", out.describe()));
    }
    Ok(())
}

/// The checks must be able to fail: wrong expectations give "not ok" for exactly those checks.
fn bootcheck_reports_wrong_expectations() -> Result<(), String> {
    let dir = ScratchDir::new("bootcheck-wrong")?;
    let mut initrd = write_test_initrd(&dir.join("initrd.img"), 4096)?;
    initrd.fnv1a32 ^= 1;
    let told = BootExpect {
        boot_path: BootPath::Linux64,
        cpus: 3,
        mem_mib: 256,
        initrd: Some(initrd.clone()),
    };
    let mut run = QemuRun::new(told.cmdline());
    run.initrd = Some(initrd.path.clone());
    let out = run.run(Guest::BootCheck.pvh())?;
    out.expect_exit(QEMU_EXIT_FAIL)?;
    let mut failed: Vec<&str> = out.report.failed().iter().map(|(c, _)| *c).collect();
    failed.sort_unstable();
    let expected = ["boot-path", "e820-total", "initrd-checksum", "mptable-cpus"];
    if failed != expected || !out.report.done() {
        return Err(format!(
            "failed checks {failed:?}, expected {expected:?}\n{}",
            out.describe()
        ));
    }
    Ok(())
}

/// QEMU announces virtio-mmio devices on the command line only with acpi=off, and its transport
/// is legacy (version 1) unless force-legacy is off.
fn virtio_run(devices: &[&'static str], expect: &str) -> QemuRun {
    let mut run = QemuRun::new(format!("capsule.expect_virtio={expect}"));
    run.machine = "microvm,acpi=off";
    run.extra = vec!["-global", "virtio-mmio.force-legacy=false"];
    for d in devices {
        run.extra.extend(["-device", d]);
    }
    run
}

fn virtio_probe_one_device() -> Result<(), String> {
    let out = virtio_run(&["virtio-rng-device"], "4").run(Guest::VirtioProbe.pvh())?;
    out.expect_exit(QEMU_EXIT_PASS)?;
    out.check(
        out.report
            .expect_all_ok(&["virtio-mmio-0", "virtio-devices"]),
    )?;
    let line = out.report.info("virtio-mmio").next().unwrap_or_default();
    if !line.contains("magic 0x74726976 version 2 device 4 ") {
        return Err(format!(
            "unexpected probe line {line:?}\n{}",
            out.describe()
        ));
    }
    Ok(())
}

fn virtio_probe_two_devices() -> Result<(), String> {
    // virtio-balloon is device id 5; the guest compares the ids in any order.
    let out = virtio_run(&["virtio-rng-device", "virtio-balloon-device"], "5,4")
        .run(Guest::VirtioProbe.pvh())?;
    out.expect_exit(QEMU_EXIT_PASS)?;
    out.check(
        out.report
            .expect_all_ok(&["virtio-mmio-0", "virtio-mmio-1", "virtio-devices"]),
    )
}

fn virtio_probe_rejects_legacy_transport_and_wrong_ids() -> Result<(), String> {
    let mut run = virtio_run(&["virtio-rng-device"], "4");
    run.extra = vec!["-device", "virtio-rng-device"]; // QEMU's default: legacy virtio-mmio
    let out = run.run(Guest::VirtioProbe.pvh())?;
    out.expect_exit(QEMU_EXIT_FAIL)?;
    if !out.report.has_failure("virtio-mmio-0") || !out.report.has_failure("virtio-devices") {
        return Err(format!("legacy transport not reported\n{}", out.describe()));
    }
    let out = virtio_run(&["virtio-rng-device"], "4,4").run(Guest::VirtioProbe.pvh())?;
    out.expect_exit(QEMU_EXIT_FAIL)?;
    if out
        .report
        .failed()
        .iter()
        .map(|(c, _)| *c)
        .collect::<Vec<_>>()
        != ["virtio-devices"]
    {
        return Err(format!("wrong ids not reported\n{}", out.describe()));
    }
    Ok(())
}

/// With an i8042 on the machine, the reboot request resets the VM; -no-reboot makes QEMU exit 0.
fn reboot_via_i8042() -> Result<(), String> {
    let mut run = QemuRun::new("");
    run.extra = vec!["-device", "i8042"];
    let out = run.run(Guest::Reboot.pvh())?;
    out.expect_exit(0)?;
    if out.report.info("reboot").next().is_none()
        || !out.report.failed().is_empty()
        || out.log.contains("Triple fault")
    {
        return Err(format!("not a clean reboot\n{}", out.describe()));
    }
    Ok(())
}

/// microvm has no i8042 by default: the ignored request must be reported by the guest.
fn reboot_ignored_is_reported() -> Result<(), String> {
    let out = QemuRun::new("").run(Guest::Reboot.pvh())?;
    out.expect_exit(QEMU_EXIT_FAIL)?;
    if !out.report.has_failure("reboot") {
        return Err(format!("ignored reboot not reported\n{}", out.describe()));
    }
    Ok(())
}

fn triple_fault() -> Result<(), String> {
    let out = QemuRun::new("").run(Guest::TripleFault.pvh())?;
    out.expect_exit(0)?;
    if out.report.info("triple-fault").next().is_none()
        || out.report.done()
        || !out.report.failed().is_empty()
        || !out.log.contains("Triple fault")
    {
        return Err(format!(
            "expected a triple fault\n{}\n--- QEMU log ---\n{}",
            out.describe(),
            out.log.lines().take(20).collect::<Vec<_>>().join("\n")
        ));
    }
    Ok(())
}

fn main() {
    let t = |name: &'static str, run: fn() -> Result<(), String>| TierTest {
        name,
        tier: Tier::T2,
        run,
    };
    run_tier_tests(vec![
        t("qemu_hello", hello),
        t("qemu_bootcheck_pvh_with_initrd", bootcheck_pvh_with_initrd),
        t(
            "qemu_bootcheck_pvh_without_initrd",
            bootcheck_pvh_without_initrd,
        ),
        t(
            "qemu_bootcheck_linux64_entry_via_shim",
            bootcheck_linux64_entry_via_shim,
        ),
        t(
            "qemu_bootcheck_reports_wrong_expectations",
            bootcheck_reports_wrong_expectations,
        ),
        t("qemu_virtio_probe_one_device", virtio_probe_one_device),
        t("qemu_virtio_probe_two_devices", virtio_probe_two_devices),
        t(
            "qemu_virtio_probe_rejects_legacy_transport_and_wrong_ids",
            virtio_probe_rejects_legacy_transport_and_wrong_ids,
        ),
        t("qemu_reboot_via_i8042", reboot_via_i8042),
        t(
            "qemu_reboot_ignored_is_reported",
            reboot_ignored_is_reported,
        ),
        t("qemu_triple_fault", triple_fault),
    ]);
}
