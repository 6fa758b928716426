//! The VMM's confinement, the way Firecracker tests its filters: with the filters on (the
//! default) every other test suite passes, which shows that each allowed call works; here, every
//! thread of a running VMM is under a seccomp filter with no_new_privs, and for each kind of VMM
//! thread a forbidden call, and an allowed call with a mutated argument (a KVM ioctl with
//! another number, a socket of another family), stops the VMM with SIGSYS and the VM's status
//! names the system call.

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
        },
    ]);
}
