//! Tier T1: the capsule VMM on real KVM (here kvm-pvm) with the tiny test guests.
//!
//! Contract under test: `capsule run --kernel PATH [--initrd PATH] [--cmdline STR] [--cpus N]
//! [--memory MiB] [--console PATH]`; `--cmdline` is appended to capsule's defaults; exit codes
//! 0 guest power-off/reboot, 1 VMM error/bad input, 2 usage error, 3 triple fault/shutdown,
//! 4 KVM internal error; console output to the --console file.
//!
//! Every run is killed after [`DEFAULT_TIMEOUT`]; no test asserts on wall-clock time.

use std::path::Path;

use capsule_tests::capsule::{run_capsule, CapsuleOutcome, CapsuleRun, DEFAULT_TIMEOUT};
use capsule_tests::guests::{
    write_test_initrd, BootExpect, BootPath, Guest, GuestReport, ScratchDir, HELLO_LINE,
};
use capsule_tests::tier::run_backend_tests;
use capsule_tests::tiny_guest_tests_on_kvm;

/// capsule attaches one virtio-rng device (id 4) at this address and announces it.
const VIRTIO_RNG_ADDR: &str = "0xd0000000";
const VIRTIO_RNG_ID: u32 = 4;

/// Runs a guest with its console in a scratch file; returns the outcome and the parsed report.
fn boot(dir: &ScratchDir, run: CapsuleRun) -> Result<(CapsuleOutcome, GuestReport), String> {
    let out = run.console(dir.join("console.txt")).run()?;
    let report = GuestReport::parse(&out.console);
    Ok((out, report))
}

fn with_outcome<T>(out: &CapsuleOutcome, r: Result<T, String>) -> Result<T, String> {
    r.map_err(|e| format!("{e}\n{}", out.describe()))
}

fn hello_line_on_console() -> Result<(), String> {
    let dir = ScratchDir::new("t1-hello")?;
    let (out, report) = boot(&dir, CapsuleRun::new(Guest::Hello.pvh()))?;
    out.expect_no_panic()?;
    out.expect_code(0)?;
    if !out.console.lines().any(|l| l.trim_end() == HELLO_LINE) {
        return Err(format!("no hello line on the console\n{}", out.describe()));
    }
    with_outcome(&out, report.expect_all_ok(&[]))
}

fn bootcheck(kernel: &Path, boot_path: BootPath) -> Result<(), String> {
    let dir = ScratchDir::new("t1-bootcheck")?;
    // An odd size, so that a VMM rounding the ramdisk size up would be caught.
    let initrd = write_test_initrd(&dir.join("initrd.img"), 12345)?;
    let expect = BootExpect {
        boot_path,
        cpus: 2,
        mem_mib: 128,
        initrd: Some(initrd.clone()),
    };
    let run = CapsuleRun::new(kernel)
        .cpus(expect.cpus)
        .memory_mib(expect.mem_mib)
        .initrd(&initrd.path)
        .cmdline(expect.cmdline());
    let (out, report) = boot(&dir, run)?;
    out.expect_no_panic()?;
    out.expect_code(0)?;
    with_outcome(&out, expect.verify(&report))
}

fn bootcheck_pvh() -> Result<(), String> {
    bootcheck(Guest::BootCheck.pvh(), BootPath::Pvh)
}

fn bootcheck_linux64() -> Result<(), String> {
    bootcheck(Guest::BootCheck.no_note(), BootPath::Linux64)
}

fn virtio_probe() -> Result<(), String> {
    let dir = ScratchDir::new("t1-virtio")?;
    let run = CapsuleRun::new(Guest::VirtioProbe.pvh())
        .cmdline(format!("capsule.expect_virtio={VIRTIO_RNG_ID}"));
    let (out, report) = boot(&dir, run)?;
    out.expect_no_panic()?;
    out.expect_code(0)?;
    with_outcome(
        &out,
        report.expect_all_ok(&["virtio-mmio-0", "virtio-devices"]),
    )?;
    let expected = format!("{VIRTIO_RNG_ADDR} ");
    let want = format!("magic 0x74726976 version 2 device {VIRTIO_RNG_ID} ");
    if !report
        .info("virtio-mmio")
        .any(|l| l.starts_with(&expected) && l.contains(&want))
    {
        return Err(format!(
            "no virtio-rng (device {VIRTIO_RNG_ID}) at {VIRTIO_RNG_ADDR}\n{}",
            out.describe()
        ));
    }
    Ok(())
}

fn reboot_exits_0() -> Result<(), String> {
    let dir = ScratchDir::new("t1-reboot")?;
    let (out, report) = boot(&dir, CapsuleRun::new(Guest::Reboot.pvh()))?;
    out.expect_no_panic()?;
    out.expect_code(0)?;
    out.expect_stderr_mentions(&["reboot"])?;
    if report.info("reboot").next().is_none() || !report.failed().is_empty() {
        return Err(format!(
            "the guest did not request the reboot cleanly\n{}",
            out.describe()
        ));
    }
    Ok(())
}

fn triple_fault_exits_3() -> Result<(), String> {
    let dir = ScratchDir::new("t1-triple")?;
    let (out, report) = boot(&dir, CapsuleRun::new(Guest::TripleFault.pvh()))?;
    out.expect_no_panic()?;
    out.expect_code(3)?;
    out.expect_stderr_mentions(&["triple fault", "shutdown"])?;
    if report.info("triple-fault").next().is_none() || !report.failed().is_empty() {
        return Err(format!(
            "the guest did not reach its triple fault\n{}",
            out.describe()
        ));
    }
    Ok(())
}

fn virtio_probe_finds_all_device_kinds() -> Result<(), String> {
    let dir = ScratchDir::new("t1-virtio-all")?;
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).map_err(|e| e.to_string())?;
    let uds = dir.join("vsock.sock");
    let mut disk_arg = disk.into_os_string();
    disk_arg.push(":ro");
    let run = CapsuleRun::new(Guest::VirtioProbe.pvh())
        .arg("--vsock-uds")
        .arg(&uds)
        .arg("--disk")
        .arg(disk_arg)
        .cmdline("capsule.expect_virtio=4,19,2");
    let (out, report) = boot(&dir, run)?;
    out.expect_no_panic()?;
    out.expect_code(0)?;
    report.expect_all_ok(&[
        "virtio-mmio-0",
        "virtio-mmio-1",
        "virtio-mmio-2",
        "virtio-devices",
    ])
}

fn exec_mmio_exits_4() -> Result<(), String> {
    let dir = ScratchDir::new("t1-exec-mmio")?;
    let (out, report) = boot(&dir, CapsuleRun::new(Guest::ExecMmio.pvh()))?;
    out.expect_no_panic()?;
    out.expect_code(4)?;
    out.expect_stderr_mentions(&[
        "internal error",
        "emulation failure",
        "suberror 1",
        "RIP 0xdff00000",
    ])?;
    if report.info("exec-mmio").next().is_none() || !report.failed().is_empty() {
        return Err(format!(
            "the guest did not reach its jump into MMIO space\n{}",
            out.describe()
        ));
    }
    Ok(())
}

/// A bad input: capsule exits with one of `codes`, names the input on stderr, and does not panic.
fn rejects(out: CapsuleOutcome, codes: &[i32], names: &[&str]) -> Result<(), String> {
    out.expect_no_panic()?;
    out.expect_code_in(codes)?;
    out.expect_stderr_mentions(names)
}

fn missing_kernel() -> Result<(), String> {
    let dir = ScratchDir::new("t1-missing")?;
    let kernel = dir.join("no-such-vmlinux");
    let path = kernel.display().to_string();
    rejects(CapsuleRun::new(&kernel).run()?, &[1], &[&path])
}

fn unreadable_kernel() -> Result<(), String> {
    // A directory cannot be read as a file, even by root (file modes would not stop root).
    let dir = ScratchDir::new("t1-unreadable")?;
    let kernel = dir.join("vmlinux-is-a-directory");
    std::fs::create_dir(&kernel).map_err(|e| e.to_string())?;
    let path = kernel.display().to_string();
    rejects(CapsuleRun::new(&kernel).run()?, &[1], &[&path])
}

fn kernel_neither_elf_nor_bzimage() -> Result<(), String> {
    let dir = ScratchDir::new("t1-notelf")?;
    let kernel = dir.join("not-a-kernel.txt");
    let text = "this is not a kernel image\n".repeat(2000);
    std::fs::write(&kernel, text).map_err(|e| e.to_string())?;
    let path = kernel.display().to_string();
    rejects(CapsuleRun::new(&kernel).run()?, &[1], &[&path])
}

fn initrd_larger_than_memory() -> Result<(), String> {
    let dir = ScratchDir::new("t1-bigrd")?;
    let big = write_test_initrd(&dir.join("big.img"), 3 << 20)?;
    let path = big.path.display().to_string();
    let out = CapsuleRun::new(Guest::Hello.pvh())
        .memory_mib(2)
        .initrd(&big.path)
        .run()?;
    rejects(out, &[1], &["initrd", &path])
}

/// `--memory 0`, `--cpus 0`: capsule may reject them in clap (usage error, 2) or after parsing
/// (bad input, 1); either way with an error naming the option.
fn memory_zero() -> Result<(), String> {
    let out = CapsuleRun::new(Guest::Hello.pvh()).memory_mib(0).run()?;
    rejects(out, &[1, 2], &["memory"])
}

fn cpus_zero() -> Result<(), String> {
    let out = CapsuleRun::new(Guest::Hello.pvh()).cpus(0).run()?;
    rejects(out, &[1, 2], &["cpus", "vcpu"])
}

fn cpus_more_than_kvm_allows() -> Result<(), String> {
    let out = CapsuleRun::new(Guest::Hello.pvh()).cpus(1000).run()?;
    rejects(out, &[1, 2], &["cpus", "vcpu"])
}

fn usage_error_without_kernel() -> Result<(), String> {
    let out = run_capsule(["run"], DEFAULT_TIMEOUT)?;
    rejects(out, &[2], &["--kernel"])
}

fn main() {
    run_backend_tests(tiny_guest_tests_on_kvm![
        "capsule_hello_line_on_console" => hello_line_on_console,
        "capsule_bootcheck_pvh" => bootcheck_pvh,
        "capsule_bootcheck_linux64_boot_protocol" => bootcheck_linux64,
        "capsule_virtio_probe_finds_rng" => virtio_probe,
        "capsule_kvm_internal_error_exits_4" => exec_mmio_exits_4,
        "capsule_virtio_probe_finds_rng_vsock_blk" => virtio_probe_finds_all_device_kinds,
        "capsule_reboot_exits_0" => reboot_exits_0,
        "capsule_triple_fault_exits_3" => triple_fault_exits_3,
        "capsule_rejects_missing_kernel" => missing_kernel,
        "capsule_rejects_unreadable_kernel" => unreadable_kernel,
        "capsule_rejects_kernel_neither_elf_nor_bzimage" => kernel_neither_elf_nor_bzimage,
        "capsule_rejects_initrd_larger_than_memory" => initrd_larger_than_memory,
        "capsule_rejects_memory_zero" => memory_zero,
        "capsule_rejects_cpus_zero" => cpus_zero,
        "capsule_rejects_cpus_more_than_kvm_allows" => cpus_more_than_kvm_allows,
        "capsule_usage_error_without_kernel" => usage_error_without_kernel,
    ]);
}
