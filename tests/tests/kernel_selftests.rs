//! Tier T2: the patched guest kernel's selftests under QEMU's software CPU.
//!
//! Builds the kernel with `guest-kernel-config/build.sh` (a cache hit when nothing changed),
//! compiles the container-object selftests (`guest-kernel-config/selftests/`) and the kernel's
//! own pidfd and mount API selftests statically, packs them with busybox and an init script
//! into an initramfs made by the `images` crate, boots it on QEMU microvm and checks the TAP
//! output of every program on the serial console: a `not ok`, a missing plan, a count that
//! does not match the plan, a program that did not finish or a timeout fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use capsule_tests::qemu::tap::check;
use capsule_tests::qemu::QemuMicrovm;
use capsule_tests::tier::{run_tier_tests, Tier, TierTest};
use images::{DeviceKind, Initramfs};

/// The container-object selftests and checks of the guest's config, in run order (sources in
/// guest-kernel-config/selftests).
const CONTAINER_TESTS: &[&str] = &[
    "container_create_test",
    "container_proc_test",
    "container_fork_test",
    "container_socket_test",
    "container_fs_test",
    "container_keyring_test",
    "container_control_test",
    "container_setns_test",
    "container_reboot_test",
    "container_cgroup_test",
    "container_root_test",
    "container_overlay_test",
    "container_devlist_test",
    "container_upcall_test",
    "container_lsm_test",
    "container_policy_test",
    "keys_test",
    "boot_param_test",
    "devices_test",
];

/// The kernel's own selftests for the subsystems the series touches: (source below
/// kselftest/, extra compiler flags).
const KERNEL_TESTS: &[(&str, &[&str])] = &[
    ("pidfd/pidfd_test.c", &["-pthread"]),
    ("pidfd/pidfd_open_test.c", &["-pthread"]),
    ("pidfd/pidfd_poll_test.c", &["-pthread"]),
    ("pidfd/pidfd_wait.c", &["-pthread"]),
    ("pidfd/pidfd_fdinfo_test.c", &["-pthread"]),
    ("pidfd/pidfd_getfd_test.c", &["-pthread"]),
    ("pidfd/pidfd_setns_test.c", &["-pthread"]),
    ("mount_setattr/mount_setattr_test.c", &["-pthread"]),
    ("move_mount_set_group/move_mount_set_group_test.c", &[]),
    ("filesystems/statmount/statmount_test.c", &[]),
];

/// Helper programs installed in the guest's /sbin (sources in selftests/helpers).
const HELPERS: &[&str] = &["request-key", "core-helper"];

/// Whole-guest limit; each program also has its own limit inside the guest.
const GUEST_TIMEOUT: Duration = Duration::from_secs(1800);
const PROGRAM_TIMEOUT_S: u32 = 600;

const BASE_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 oops=panic loglevel=4";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scratch(name: &str) -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Runs build.sh; returns the directory holding vmlinux, include/ and kselftest/.
fn kernel() -> Result<PathBuf, String> {
    let script = repo().join("guest-kernel-config/build.sh");
    let out = Command::new(&script)
        .arg("--print-path")
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !dir.join("vmlinux").is_file() {
        return Err(format!(
            "build.sh printed {}, which has no vmlinux",
            dir.display()
        ));
    }
    Ok(dir)
}

fn cc(out: &Path, sources: &[PathBuf], flags: &[&str], includes: &[&Path]) -> Result<(), String> {
    let mut cmd = Command::new("cc");
    cmd.args(["-static", "-O2", "-Wall", "-o"]).arg(out);
    for dir in includes {
        cmd.arg("-isystem").arg(dir);
    }
    cmd.args(flags).args(sources);
    let result = cmd.output().map_err(|e| format!("running cc: {e}"))?;
    if !result.status.success() {
        return Err(format!(
            "compiling {} failed:\n{}",
            out.display(),
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    Ok(())
}

/// Compiles the given guest tests (from selftests/), kernel selftests and every helper into
/// `bin`; returns the run order of the tests.
fn compile(
    kernel: &Path,
    bin: &Path,
    guest_tests: &[&str],
    kernel_tests: &[(&str, &[&str])],
) -> Result<Vec<String>, String> {
    let selftests = repo().join("guest-kernel-config/selftests");
    let uapi = repo().join("guest-kernel-config/include/uapi");
    let kinclude = kernel.join("include");
    let mut order = Vec::new();
    for name in guest_tests {
        cc(
            &bin.join(name),
            &[selftests.join(format!("{name}.c"))],
            &[],
            &[&uapi, &kinclude],
        )?;
        order.push(name.to_string());
    }
    for (source, flags) in kernel_tests {
        let src = kernel.join("kselftest").join(source);
        let name = Path::new(source)
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| format!("bad source name {source}"))?;
        cc(&bin.join(name), &[src], flags, &[&kinclude])?;
        order.push(name.to_string());
    }
    for helper in HELPERS {
        cc(
            &bin.join(helper),
            &[selftests.join(format!("helpers/{helper}.c"))],
            &[],
            &[],
        )?;
    }
    Ok(order)
}

fn init_script(order: &[String]) -> String {
    let mut s = String::from(
        "#!/bin/sh\n\
         /bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mount -t tmpfs tmpfs /tmp\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         mount -t securityfs securityfs /sys/kernel/security\n\
         echo '### BOOTED'\n",
    );
    for name in order {
        s.push_str(&format!(
            "echo '### BEGIN {name}'\n\
             timeout {PROGRAM_TIMEOUT_S} /tests/{name} </dev/null\n\
             echo \"### END {name} rc=$?\"\n"
        ));
    }
    s.push_str("echo '### ALL DONE'\nsync\nreboot -f\n");
    s
}

/// Adds the dynamically linked host program `host` as `dest`, with the shared libraries that
/// `ldd` lists for it at their host paths (mount_setattr_test runs mkfs.ext4).
fn add_dynamic(fs: &mut Initramfs, host: &Path, dest: &str) -> Result<(), String> {
    let err = |e: images::InitramfsError| e.to_string();
    fs.file_from_host(host, dest, Some(0o755)).map_err(err)?;
    let out = Command::new("ldd")
        .arg(host)
        .output()
        .map_err(|e| format!("running ldd {}: {e}", host.display()))?;
    if !out.status.success() {
        return Err(format!("ldd {} failed", host.display()));
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(lib) = line.split_whitespace().find(|t| t.starts_with('/')) {
            if !fs.paths().map_err(err)?.iter().any(|p| p == &lib[1..]) {
                fs.file_from_host(Path::new(lib), lib, Some(0o755))
                    .map_err(err)?;
            }
        }
    }
    Ok(())
}

fn initramfs(bin: &Path, order: &[String], out: &Path) -> Result<(), String> {
    let busybox = Path::new("/bin/busybox");
    let mut fs = Initramfs::new();
    let err = |e: images::InitramfsError| e.to_string();
    fs.file_from_host(busybox, "bin/busybox", Some(0o755))
        .map_err(err)?;
    fs.symlink("busybox", "bin/sh").map_err(err)?;
    fs.file_bytes("init", init_script(order), 0o755)
        .map_err(err)?;
    for dir in ["proc", "sys", "dev", "tmp", "sbin", "mnt"] {
        fs.dir(dir, 0o755).map_err(err)?;
    }
    fs.mknod("dev/console", DeviceKind::Char, 5, 1, 0o600)
        .map_err(err)?;
    fs.mknod("dev/null", DeviceKind::Char, 1, 3, 0o666)
        .map_err(err)?;
    for name in order {
        fs.file_from_host(&bin.join(name), &format!("tests/{name}"), Some(0o755))
            .map_err(err)?;
    }
    for helper in HELPERS {
        fs.file_from_host(&bin.join(helper), &format!("sbin/{helper}"), Some(0o755))
            .map_err(err)?;
    }
    add_dynamic(&mut fs, Path::new("/sbin/mke2fs"), "sbin/mke2fs")?;
    fs.symlink("mke2fs", "sbin/mkfs.ext4").map_err(err)?;
    fs.write_file(out).map_err(err)
}

/// Marker in the first sector of the test disk (devices_test.c checks it).
const DISK_MARKER: &[u8] = b"CAPSULE-VIRTIO-BLK-TEST";

/// A 1 MiB raw disk image whose first sector starts with DISK_MARKER.
fn test_disk(path: &Path) -> Result<(), String> {
    let mut image = vec![0u8; 1 << 20];
    image[..DISK_MARKER.len()].copy_from_slice(DISK_MARKER);
    std::fs::write(path, image).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn boot(kernel: &Path, initrd: &Path, cmdline: &str, log: &Path) -> Result<String, String> {
    let disk = log.with_file_name("disk.img");
    test_disk(&disk)?;
    let run = QemuMicrovm::new(kernel.join("vmlinux"))
        .initrd(initrd)
        .cmdline(cmdline)
        .memory_mib(1024)
        .extra_args([
            "-drive".into(),
            format!("file={},if=none,format=raw,id=disk0", disk.display()),
        ])
        .extra_args([
            "-device",
            "virtio-blk-device,drive=disk0",
            "-device",
            "virtio-rng-device",
        ])
        .timeout(GUEST_TIMEOUT)
        .serial_log(log)
        .run()
        .map_err(|e| match e {
            capsule_tests::qemu::QemuError::Timeout { ref serial, .. } => {
                format!("{e}\n--- console tail ---\n{}", tail(serial))
            }
            other => other.to_string(),
        })?;
    eprintln!(
        "guest ran {:.1} s, QEMU {}, console in {}",
        run.elapsed.as_secs_f64(),
        run.status,
        log.display()
    );
    Ok(run.serial)
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn all_selftests() -> Result<(), String> {
    let kernel = kernel()?;
    let dir = scratch("t2-kernel-selftests")?;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    let order = compile(&kernel, &bin, CONTAINER_TESTS, KERNEL_TESTS)?;
    let initrd = dir.join("initramfs.cpio");
    initramfs(&bin, &order, &initrd)?;
    let serial = boot(&kernel, &initrd, BASE_CMDLINE, &dir.join("console.log"))?;
    let report = check(&serial, &order)
        .map_err(|e| format!("{e}\n--- console tail ---\n{}", tail(&serial)))?;
    eprintln!("{report}");
    Ok(())
}

/// Boots once more with no_int3_selftest and runs only boot_param_test.
fn int3_selftest_parameter() -> Result<(), String> {
    let kernel = kernel()?;
    let dir = scratch("t2-kernel-no-int3")?;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    let order = compile(&kernel, &bin, &["boot_param_test"], &[])?;
    let initrd = dir.join("initramfs.cpio");
    initramfs(&bin, &order, &initrd)?;
    let cmdline = format!("{BASE_CMDLINE} no_int3_selftest");
    let serial = boot(&kernel, &initrd, &cmdline, &dir.join("console.log"))?;
    if !serial.contains("ok 2 - no_int3_selftest given, and the self-test was skipped") {
        return Err(format!(
            "the self-test was not reported skipped\n{}",
            tail(&serial)
        ));
    }
    check(&serial, &order).map(drop)
}

fn main() {
    run_tier_tests(vec![
        TierTest {
            name: "kernel_selftests_under_qemu",
            tier: Tier::T2,
            run: all_selftests,
        },
        TierTest {
            name: "no_int3_selftest_boot_parameter",
            tier: Tier::T2,
            run: int3_selftest_parameter,
        },
    ]);
}
