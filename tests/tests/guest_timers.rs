//! What the real guest kernel finds on capsule's KVM VMM: the timers and clocks a Linux guest
//! expects (tier T3: hardware KVM, or the L1 machine): the TSC-deadline timer and no IO-APIC
//! timer check, kvm-clock, x2APIC, and invariant TSC where the machine has it. The guest's init dumps the kernel log, the
//! boot CPU's flags and the clock source, and reboots; the test reads them from the console.

use std::time::Duration;

use capsule_tests::capsule::CapsuleRun;
use capsule_tests::cli::guest_dir;
use capsule_tests::guests::ScratchDir;
use capsule_tests::tier::{run_backend_tests, Backend, BackendTest, GuestKind};

const INIT: &str = "#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
echo '@@dmesg'
/bin/busybox dmesg
echo '@@flags'
/bin/busybox grep -m1 '^flags' /proc/cpuinfo
echo '@@clocksource'
/bin/busybox cat /sys/devices/system/clocksource/clocksource0/current_clocksource
echo '@@end'
/bin/busybox reboot -f
";

/// The section of `console` after the line `@@name` and before the next `@@` line.
fn section<'a>(console: &'a str, name: &str) -> Vec<&'a str> {
    console
        .lines()
        .skip_while(|l| l.trim_end() != format!("@@{name}"))
        .skip(1)
        .take_while(|l| !l.starts_with("@@"))
        .collect()
}

/// The CPU flags of the machine the test runs on (L1's own, inside L1).
fn host_flags() -> Vec<String> {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().skip(2).map(String::from).collect())
        .unwrap_or_default()
}

fn timers_and_clocks(_backend: Backend) -> Result<(), String> {
    let dir = ScratchDir::new("timers")?;
    let init = dir.join("init");
    std::fs::write(&init, INIT).map_err(|e| e.to_string())?;
    let mut initramfs = images::initramfs::Initramfs::new();
    initramfs
        .init(&init)
        .and_then(|i| {
            i.file_from_host(
                std::path::Path::new("/bin/busybox"),
                "/bin/busybox",
                Some(0o755),
            )
        })
        .and_then(|i| i.dir("/proc", 0o755))
        .and_then(|i| i.dir("/sys", 0o755))
        .map_err(|e| e.to_string())?;
    let initrd = dir.join("initramfs.cpio");
    initramfs.write_file(&initrd).map_err(|e| e.to_string())?;

    let out = CapsuleRun::new(guest_dir().join("vmlinux"))
        .initrd(&initrd)
        .memory_mib(256)
        .cmdline("quiet")
        .console(dir.join("console.txt"))
        .timeout(Duration::from_secs(300))
        .run()?;
    out.expect_no_panic()?;
    let console = &out.console;
    if !console.contains("@@end") {
        return Err(format!(
            "the guest's init did not finish\n{}",
            out.describe()
        ));
    }
    let dmesg = section(console, "dmesg");
    let flags: Vec<&str> = section(console, "flags")
        .first()
        .map(|l| l.split_whitespace().skip(2).collect())
        .unwrap_or_default();
    let clocksource = section(console, "clocksource").join("");
    let mut missing = Vec::new();
    if !dmesg
        .iter()
        .any(|l| l.contains("TSC deadline timer available"))
    {
        missing.push("\"TSC deadline timer available\" in the kernel log".to_string());
    }
    for bad in [
        "..TIMER: vector=",
        "APIC timer disabled due to verification failure",
    ] {
        if let Some(l) = dmesg.iter().find(|l| l.contains(bad)) {
            missing.push(format!("a log without {bad:?}, but it has {l:?}"));
        }
    }
    for flag in ["tsc_deadline_timer", "x2apic", "hypervisor"] {
        if !flags.contains(&flag) {
            missing.push(format!("CPU flag {flag}"));
        }
    }
    // Invariant TSC only where this machine has it.
    let host = host_flags();
    for flag in ["constant_tsc", "nonstop_tsc"] {
        if host.iter().any(|f| f == flag) && !flags.contains(&flag) {
            missing.push(format!("CPU flag {flag} (this machine has it)"));
        }
    }
    if !dmesg.iter().any(|l| l.contains("kvm-clock: Using msrs")) {
        missing.push("kvm-clock in the kernel log".into());
    }
    if clocksource.trim() != "kvm-clock" && clocksource.trim() != "tsc" {
        missing.push(format!(
            "clock source kvm-clock or tsc, not {clocksource:?}"
        ));
    }
    if !missing.is_empty() {
        return Err(format!(
            "the guest lacks: {}\nflags: {}\n{}",
            missing.join("; "),
            flags.join(" "),
            out.describe()
        ));
    }
    Ok(())
}

fn main() {
    run_backend_tests(vec![BackendTest {
        name: "guest_kernel_finds_tsc_deadline_timer_kvm_clock_and_x2apic",
        guest: GuestKind::Linux,
        backends: &[Backend::Kvm],
        run: timers_and_clocks,
        unsupported: None,
    }]);
}
