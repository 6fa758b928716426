//! The VMM's confinement, the way Firecracker tests its filters: with the filters on (the
//! default) every other test suite passes, which shows that each allowed call works; here, every
//! thread of a running VMM is under a seccomp filter with no_new_privs, and for each kind of VMM
//! thread a forbidden call, and an allowed call with a mutated argument (a KVM ioctl with
//! another number, a socket of another family), stops the VMM with SIGSYS and the VM's status
//! names the system call. The jail: the VMM runs as the VM's own uid without capabilities,
//! capsule's VMM in its own namespaces and a root holding only its own files, in the VM's
//! cgroup with its limits, which hold a guest that fills all its memory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use capsule_tests::cli::CapsuleCli;
use capsule_tests::tier::{run_backend_tests, Backend, BackendTest, GuestKind};

/// The process that runs the guest: capsule's VMM (`capsule __vmm`) or QEMU, a child of the
/// VM's supervisor.
fn vmm_pid(supervisor: u32) -> Result<u32, String> {
    let children = std::fs::read_dir("/proc")
        .map_err(|e| format!("/proc: {e}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // Field 4 of /proc/PID/stat, after the parenthesised command name, is the parent.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(supervisor)
        });
    children
        .into_iter()
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("__vmm") || cmdline.contains("qemu-system")
        })
        .ok_or_else(|| format!("no VMM process under supervisor {supervisor}"))
}

/// (thread name, Seccomp, NoNewPrivs) of every thread of `pid`.
fn threads(pid: u32) -> Result<Vec<(String, String, String)>, String> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push((field("Name:"), field("Seccomp:"), field("NoNewPrivs:")));
    }
    Ok(out)
}

fn every_thread_is_filtered(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("seccomp-threads")?;
    cli.create(backend, "vm", &["--net", "none"])?;
    let (_, _, supervisor) = cli.status("vm")?;
    let pid = vmm_pid(supervisor.ok_or("no supervisor pid")?)?;
    let list = threads(pid)?;
    let unfiltered: Vec<_> = list
        .iter()
        .filter(|(_, seccomp, nnp)| seccomp != "2" || nnp != "1")
        .collect();
    if list.is_empty() || !unfiltered.is_empty() {
        return Err(format!(
            "threads of the VMM ({pid}) without a filter or no_new_privs: {unfiltered:?} (all: {list:?})"
        ));
    }
    // The filters let a working VM do its work.
    cli.run(&["exec", "vm", "--", "echo", "filtered"])?
        .expect_code(0)?
        .expect_stdout("filtered\n")?;
    Ok(())
}

/// Each probe (thread kind, call) and the system call number the status must name.
const PROBES: &[(&str, &str, i64)] = &[
    ("vcpu", "execve", libc::SYS_execve),
    ("vcpu", "socket-inet", libc::SYS_socket),
    ("vcpu", "kvm-ioctl", libc::SYS_ioctl),
    ("event-loop", "open", libc::SYS_open),
    ("event-loop", "execve", libc::SYS_execve),
    ("event-loop", "socket-inet", libc::SYS_socket),
    ("event-loop", "kvm-ioctl", libc::SYS_ioctl),
];

fn forbidden_calls_stop_the_vmm(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("seccomp-probes")?;
    for (i, (thread, call, nr)) in PROBES.iter().enumerate() {
        let name = format!("probe{i}");
        let args = [
            "create",
            &name,
            "--backend",
            backend.cli_name(),
            "--net",
            "none",
            "--timeout",
            "120",
        ];
        let mut cmd = cli.command(&args);
        cmd.env("CAPSULE_TEST_SECCOMP_PROBE", format!("{thread}:{call}"));
        let out = cli.run_command(cmd, &args, None)?;
        out.expect_code(1)?;
        let (phase, reason, _) = cli.status(&name)?;
        let expected = format!("seccomp violation: system call {nr}");
        if phase != "dead" || !reason.contains(&expected) {
            return Err(format!(
                "{thread}:{call}: status {phase} ({reason}), expected dead with {expected:?}\n{}",
                out.describe()
            ));
        }
    }
    Ok(())
}

/// The value of `field` (`Uid:`, `CapEff:`, ...) in /proc/PID/status.
fn status_field(pid: u32, field: &str) -> Result<String, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| format!("{path} has no {field}"))
}

/// Every path under `root`, relative to it.
fn tree(root: &Path) -> Result<BTreeSet<String>, String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            let rel = path.strip_prefix(root).map_err(|e| e.to_string())?;
            out.insert(rel.display().to_string());
            if path.is_dir() && !path.is_symlink() {
                todo.push(path);
            }
        }
    }
    Ok(out)
}

fn the_vmm_runs_as_its_own_user(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("jail-user")?;
    cli.create(backend, "vm", &["--net", "none"])?;
    let (_, _, supervisor) = cli.status("vm")?;
    let pid = vmm_pid(supervisor.ok_or("no supervisor pid")?)?;
    let uid_file = cli.state_dir().join("vm/uid");
    let uid =
        std::fs::read_to_string(&uid_file).map_err(|e| format!("{}: {e}", uid_file.display()))?;
    let uid = uid.trim();
    let own = format!("{uid}\t{uid}\t{uid}\t{uid}");
    for field in ["Uid:", "Gid:"] {
        let value = status_field(pid, field)?;
        if value != own || uid == "0" {
            return Err(format!(
                "VMM {pid}: {field} {value:?}, expected {own:?} (not root)"
            ));
        }
    }
    let groups = status_field(pid, "Groups:")?;
    if !groups.split_whitespace().all(|g| g == uid) {
        return Err(format!("VMM {pid} keeps supplementary groups {groups:?}"));
    }
    let mut no_caps = vec!["CapPrm:", "CapEff:", "CapInh:", "CapAmb:"];
    if backend == Backend::Kvm {
        no_caps.push("CapBnd:");
    }
    for field in no_caps {
        let value = status_field(pid, field)?;
        if !value.trim_start_matches('0').is_empty() {
            return Err(format!("VMM {pid} has capabilities: {field} {value}"));
        }
    }
    if backend == Backend::Kvm {
        jailed_in_own_namespaces_and_root(pid)?;
    }
    cli.run(&["exec", "vm", "--", "echo", "jailed"])?
        .expect_code(0)?
        .expect_stdout("jailed\n")?;
    Ok(())
}

/// capsule's VMM: PID 1 of its own PID namespace, its own mount, IPC and UTS namespaces, a
/// read-only root with only its own files, the rlimits.
fn jailed_in_own_namespaces_and_root(pid: u32) -> Result<(), String> {
    let nspid = status_field(pid, "NSpid:")?;
    if !nspid.ends_with("\t1") {
        return Err(format!(
            "VMM {pid} is not PID 1 of its own namespace: NSpid {nspid:?}"
        ));
    }
    for ns in ["mnt", "pid", "ipc", "uts"] {
        let link = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/{ns}")).ok();
        if link(&pid.to_string()) == link("self") {
            return Err(format!("VMM {pid} shares the host's {ns} namespace"));
        }
    }
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let found = tree(&root)?;
    let expected: BTreeSet<String> = [
        "dev",
        "dev/kvm",
        "dev/net",
        "dev/urandom",
        "initrd",
        "kernel",
        "run",
        "run/vsock.sock",
        "run/vsock.sock_1026",
    ]
    .map(String::from)
    .into();
    if found != expected {
        return Err(format!(
            "the VMM's root holds {found:?}, expected only {expected:?}"
        ));
    }
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .map_err(|e| format!("mountinfo of {pid}: {e}"))?;
    let root_mount = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .ok_or("no / in the VMM's mountinfo")?;
    if !root_mount
        .split_whitespace()
        .nth(5)
        .is_some_and(|o| o.split(',').any(|o| o == "ro"))
    {
        return Err(format!("the VMM's root is writable: {root_mount}"));
    }
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .map_err(|e| format!("limits of {pid}: {e}"))?;
    for (name, value) in [("Max open files", "8192"), ("Max file size", "1073741824")] {
        let line = limits.lines().find(|l| l.starts_with(name)).unwrap_or("");
        if line.split_whitespace().filter(|w| *w == value).count() != 2 {
            return Err(format!("VMM {pid}: {name} is not {value}: {line:?}"));
        }
    }
    Ok(())
}

/// Where this host cannot give a VM a cgroup: a hierarchy without the memory and cpu
/// controllers in cgroup2.
fn no_cgroup(_: Backend) -> Option<String> {
    capsule_host::cgroup::mount()
        .err()
        .map(|e| format!("this host's VMs get no cgroup: {e}"))
}

/// A guest process that takes all the guest's memory: 8 x 32 MiB buffers filled by dd and
/// held (the write to a pipe nobody reads blocks), until the guest's OOM killer acts.
const MEMORY_HOG: &str = r#"pids=
for i in 1 2 3 4 5 6 7 8; do dd if=/dev/zero bs=32M count=1 2>/dev/null | sleep 600 & pids="$pids $!"; done
n=0; while [ $n -lt 300 ] && ! dmesg | grep -q "Killed process"; do sleep 1; n=$((n+1)); done
kill $pids; wait
echo "guest oom kills: $(dmesg | grep -c 'Killed process')""#;

fn read_cgroup(dir: &Path, file: &str) -> Result<String, String> {
    let path = dir.join(file);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn the_cgroup_holds_a_guest_that_fills_its_memory(backend: Backend) -> Result<(), String> {
    const GUEST_MIB: u64 = 128;
    let cli = CapsuleCli::new("jail-cgroup")?;
    cli.create(
        backend,
        "vm",
        &["--net", "none", "--memory", "128", "--cpus", "1"],
    )?;
    let (_, _, supervisor) = cli.status("vm")?;
    let pid = vmm_pid(supervisor.ok_or("no supervisor pid")?)?;
    let mount = capsule_host::cgroup::mount().map_err(|e| e.to_string())?;
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("cgroup of {pid}: {e}"))?;
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::/"))
        .ok_or_else(|| format!("VMM {pid} is in no cgroup2 group: {own:?}"))?;
    let group = mount.join(rel);
    if group.parent().and_then(Path::file_name) != Some(capsule_host::cgroup::PARENT.as_ref()) {
        return Err(format!(
            "VMM {pid} is in {}, not in a VM cgroup",
            group.display()
        ));
    }
    let overhead = match backend {
        Backend::Kvm => capsule_host::machine::kvm::OVERHEAD_MIB,
        Backend::Qemu => capsule_host::machine::qemu::OVERHEAD_MIB,
    };
    let max = ((GUEST_MIB + overhead) << 20).to_string();
    for (file, expected) in [("memory.max", max.as_str()), ("cpu.max", "100000 100000")] {
        let value = read_cgroup(&group, file)?;
        if value != expected {
            return Err(format!(
                "{}/{file} is {value:?}, expected {expected:?}",
                group.display()
            ));
        }
    }
    let hog = cli.run(&["exec", "vm", "--", "sh", "-c", MEMORY_HOG])?;
    hog.expect_code(0)?;
    if hog.stdout.contains("guest oom kills: 0") {
        return Err(format!(
            "the guest never ran out of memory:\n{}",
            hog.describe()
        ));
    }
    let events = read_cgroup(&group, "memory.events")?;
    let count = |name: &str| {
        events
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    };
    if count("oom ") != 0 || count("oom_kill ") != 0 {
        return Err(format!("the VM's cgroup ran out of memory:\n{events}"));
    }
    // The guest's memory is charged here: the limit holds the VMM, not some other group.
    let peak: u64 = read_cgroup(&group, "memory.peak")
        .or_else(|_| read_cgroup(&group, "memory.current"))?
        .parse()
        .map_err(|e| format!("memory.peak: {e}"))?;
    if peak < (GUEST_MIB << 20) * 9 / 10 {
        return Err(format!(
            "{} peaked at {peak} bytes after the guest filled its {GUEST_MIB} MiB",
            group.display()
        ));
    }
    cli.run(&["exec", "vm", "--", "echo", "alive"])?
        .expect_code(0)?
        .expect_stdout("alive\n")?;
    cli.run(&["rm", "--force", "vm"])?.expect_code(0)?;
    if group.exists() {
        return Err(format!("{} is left after rm", group.display()));
    }
    Ok(())
}

fn a_bad_uid_range_is_refused(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("jail-range")?;
    let args = [
        "create",
        "vm",
        "--backend",
        backend.cli_name(),
        "--net",
        "none",
    ];
    let mut cmd = cli.command(&args);
    cmd.env("CAPSULE_UID_RANGE", "0-100");
    let out = cli.run_command(cmd, &args, None)?;
    out.expect_code(1)?
        .expect_stderr_has(&["invalid uid range \"0-100\"", "CAPSULE_UID_RANGE"])?;
    if cli.state_dir().join("vm").exists() {
        return Err(format!(
            "a refused create left a state directory\n{}",
            out.describe()
        ));
    }
    Ok(())
}

fn main() {
    run_backend_tests(vec![
        BackendTest::linux(
            "every_vmm_thread_runs_under_seccomp_with_no_new_privs",
            every_thread_is_filtered,
        ),
        // capsule's own VMM: its threads' filters (QEMU's sandbox is QEMU's own).
        BackendTest {
            name: "forbidden_call_on_each_vmm_thread_stops_it_with_sigsys",
            guest: GuestKind::Linux,
            backends: &[Backend::Kvm],
            run: forbidden_calls_stop_the_vmm,
            unsupported: None,
        },
        BackendTest::linux(
            "the_vmm_runs_as_the_vms_own_user_without_capabilities_in_its_own_root",
            the_vmm_runs_as_its_own_user,
        ),
        BackendTest::linux(
            "the_vms_cgroup_has_its_limits_and_holds_a_guest_that_fills_its_memory",
            the_cgroup_holds_a_guest_that_fills_its_memory,
        )
        .unless(no_cgroup),
        // Refused before anything boots: one backend is enough.
        BackendTest {
            name: "a_bad_uid_range_is_refused_before_anything_starts",
            guest: GuestKind::Linux,
            backends: &[Backend::Qemu],
            run: a_bad_uid_range_is_refused,
            unsupported: None,
        },
    ]);
}
