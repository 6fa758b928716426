//! The KVM machine: capsule's own VMM, in a process of its own. The supervisor starts
//! `<program> __vmm CONFIG` ([`VMM_COMMAND`], answered by [`run_vmm_process`]), which builds
//! and runs the VM under its seccomp filters and reports how it ended on its stdout; the
//! supervisor, which runs host programs (upcall helpers) and talks to the host's network, stays
//! outside those filters. With a jail ([`crate::jail`]) the VMM process is started in a PID
//! namespace of its own and in the VM's cgroup, enters its jail before it builds the VM and
//! drops root after.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use capsule_vmm::builder::{MicroVm, VmConfig};
use capsule_vmm::devices::virtio::block::BlockConfig;
use capsule_vmm::devices::virtio::fs::FsConfig;
use capsule_vmm::devices::virtio::net::NetConfig;
use capsule_vmm::exit::{error_chain, ExitReason};
use capsule_vmm::kvm_flavor::{GuestProfile, KvmFlavor};

use super::{Machine, MachineConfig, MachineError};
use crate::console::PanicWatch;
use crate::jail::{self, Rlimits};

/// The hidden subcommand a front end's program answers with [`run_vmm_process`].
pub const VMM_COMMAND: &str = "__vmm";

/// What the VMM process prints when a seccomp filter stopped it (see
/// `capsule_vmm::seccomp`); the system call number follows.
pub const SECCOMP_VIOLATION: &str = "seccomp violation: system call";

/// What the VMM process may hold beyond guest memory in its cgroup: measured at 1.7 MiB for a
/// 128 MiB guest that filled its memory (docs/security.md), with room for the page tables of
/// larger guests, vsock pipe buffers and the page cache of its disks, which the cgroup counts.
pub const OVERHEAD_MIB: u64 = 64;

/// capsule's VMM, run in a child process.
pub struct KvmMachine;

impl Machine for KvmMachine {
    fn run(&self, config: &MachineConfig) -> Result<(ExitReason, PanicWatch), MachineError> {
        run_child(config)
    }
}

/// How the VMM process ended, as it reports it on its stdout (one JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "end")]
enum Report {
    Reboot,
    PowerOff,
    TripleFault {
        vcpu: u8,
    },
    GuestCrash {
        vcpu: u8,
    },
    KvmInternalError {
        vcpu: u8,
        suberror: u32,
        rip: Option<u64>,
        insn: Vec<u8>,
    },
    VmmError {
        message: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Ended {
    #[serde(flatten)]
    report: Report,
    panic: Option<String>,
}

impl From<&ExitReason> for Report {
    fn from(r: &ExitReason) -> Self {
        match r.clone() {
            ExitReason::Reboot => Report::Reboot,
            ExitReason::PowerOff => Report::PowerOff,
            ExitReason::TripleFault { vcpu } => Report::TripleFault { vcpu },
            ExitReason::GuestCrash { vcpu } => Report::GuestCrash { vcpu },
            ExitReason::KvmInternalError {
                vcpu,
                suberror,
                rip,
                insn,
            } => Report::KvmInternalError {
                vcpu,
                suberror,
                rip,
                insn,
            },
            ExitReason::VmmError(message) => Report::VmmError { message },
        }
    }
}

impl From<Report> for ExitReason {
    fn from(r: Report) -> Self {
        match r {
            Report::Reboot => ExitReason::Reboot,
            Report::PowerOff => ExitReason::PowerOff,
            Report::TripleFault { vcpu } => ExitReason::TripleFault { vcpu },
            Report::GuestCrash { vcpu } => ExitReason::GuestCrash { vcpu },
            Report::KvmInternalError {
                vcpu,
                suberror,
                rip,
                insn,
            } => ExitReason::KvmInternalError {
                vcpu,
                suberror,
                rip,
                insn,
            },
            Report::VmmError { message } => ExitReason::VmmError(message),
        }
    }
}

/// Why the VMM process ended, from its status and what it printed.
fn reason_of(status: std::process::ExitStatus, out: &str) -> (ExitReason, Option<String>) {
    let line = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    if let Some(rest) = line.strip_prefix(SECCOMP_VIOLATION) {
        return (
            ExitReason::VmmError(format!(
                "the VMM was stopped by its seccomp filter: {SECCOMP_VIOLATION}{rest}"
            )),
            None,
        );
    }
    if let Ok(ended) = serde_json::from_str::<Ended>(line) {
        return (ended.report.into(), ended.panic);
    }
    let how = match (status.code(), status.signal()) {
        (_, Some(sig)) if sig == libc::SIGSYS => {
            "was killed by SIGSYS (a seccomp violation)".to_string()
        }
        (_, Some(sig)) => format!("was killed by signal {sig}"),
        (Some(code), _) => format!("exited with status {code} without a report"),
        _ => "ended without a report".to_string(),
    };
    (ExitReason::VmmError(format!("the VMM process {how}")), None)
}

/// Starts the VMM process for `config` and waits for it.
fn run_child(config: &MachineConfig) -> Result<(ExitReason, PanicWatch), MachineError> {
    let spawn = |source| MachineError::Spawn {
        what: "the VMM process",
        source,
    };
    let program = std::env::current_exe().map_err(spawn)?;
    let path = config.run_dir.join("vmm.json");
    let json = serde_json::to_vec(config).expect("a machine config serializes");
    std::fs::write(&path, json).map_err(spawn)?;
    let cgroup = super::cgroup_for(config, OVERHEAD_MIB)?;
    if config.jail.is_some() {
        jail::unshare_pid_namespace()?;
    }
    let enter_cgroup = cgroup.as_ref().map(|c| c.enter_fd());
    let mut cmd = Command::new(program);
    cmd.arg(VMM_COMMAND)
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: prctl(PR_SET_PDEATHSIG) and the write of `cgroup::enter` are async-signal-safe:
    // the VMM gets SIGKILL when the thread that started it (and so the supervisor) dies, even
    // by SIGKILL, and is in its cgroup before it executes.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(fd) = enter_cgroup {
                crate::cgroup::enter(fd)?;
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(spawn);
    let result = child.and_then(|mut child| {
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        Ok((child.wait().map_err(spawn)?, out))
    });
    super::remove_cgroup(cgroup);
    let (status, out) = result?;
    let (reason, panic) = reason_of(status, &out);
    Ok((reason, PanicWatch::reported(panic)))
}

/// The VMM process (`<program> __vmm CONFIG`): runs the VM of the machine configuration in the
/// JSON file `config` and prints how it ended. Returns the process's exit code.
pub fn run_vmm_process(config: &Path) -> u8 {
    let config: MachineConfig = match std::fs::read(config)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            report(&Ended {
                report: Report::VmmError {
                    message: format!("cannot read the machine configuration: {e}"),
                },
                panic: None,
            });
            return capsule_vmm::exit::code::VMM_ERROR;
        }
    };
    // A violation is reported on stdout, the supervisor's pipe, like every other end.
    capsule_vmm::seccomp::report_violations_to(1);
    let (reason, panic) = match run(&config) {
        Ok((reason, watch)) => (reason, watch.panic_line()),
        Err(e) => (ExitReason::VmmError(error_chain(&e)), None),
    };
    report(&Ended {
        report: Report::from(&reason),
        panic,
    });
    reason.exit_code()
}

fn report(ended: &Ended) {
    println!(
        "{}",
        serde_json::to_string(ended).expect("a report serializes")
    );
}

/// Builds the VM for `config` and runs it until the guest ends, in this process: in its jail,
/// when it has one, dropping root once the VM is built.
fn run(config: &MachineConfig) -> Result<(ExitReason, PanicWatch), MachineError> {
    let console = super::open_console(&config.console)?;
    let watch = console.watch();
    let profile = GuestProfile::for_flavor(KvmFlavor::detect());
    let jailed = match &config.jail {
        Some(jail) => {
            let (inner, binds) = jail.translate(config)?;
            let largest_disk = config
                .disks
                .iter()
                .filter_map(|d| std::fs::metadata(&d.path).ok())
                .map(|m| m.len())
                .max()
                .unwrap_or(0);
            jail::enter(jail, &binds, !config.nics.is_empty())?;
            Some((inner, jail, Rlimits::for_disks(largest_disk)))
        }
        None => None,
    };
    let config = jailed.as_ref().map_or(config, |(inner, _, _)| inner);
    let vm = MicroVm::build(VmConfig {
        kernel: config.kernel.clone(),
        initrd: config.initrd.clone(),
        cmdline_extra: Some(config.cmdline_extra.clone()).filter(|s| !s.is_empty()),
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
        console: Box::new(console),
        console_input: None,
        rng: true,
        vsock: Some(capsule_vsock::VsockConfig::new(
            u64::from(config.guest_cid),
            &config.vsock_uds,
        )),
        disks: config
            .disks
            .iter()
            .map(|d| BlockConfig {
                path: d.path.clone(),
                read_only: d.read_only,
                direct: false,
                id: None,
            })
            .collect(),
        nics: config
            .nics
            .iter()
            .map(|n| NetConfig {
                tap: n.tap.clone(),
                mac: n.mac,
            })
            .collect(),
        fs: config
            .shares
            .iter()
            .map(|s| FsConfig {
                tag: s.tag.clone(),
                socket: s.socket.clone(),
            })
            .collect(),
        profile,
        seccomp: config.seccomp,
    })?;
    if let Some((_, jail, limits)) = jailed {
        jail::drop_privileges(jail, limits)?;
    }
    Ok((vm.run(), watch))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> std::process::ExitStatus {
        std::process::ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn reports_round_trip() {
        let reason = ExitReason::KvmInternalError {
            vcpu: 1,
            suberror: 1,
            rip: Some(0x1000),
            insn: vec![0x0f, 0x0b],
        };
        let line = serde_json::to_string(&Ended {
            report: Report::from(&reason),
            panic: Some("Kernel panic - not syncing: x".into()),
        })
        .unwrap();
        let (back, panic) = reason_of(exited(4), &format!("noise\n{line}\n"));
        assert_eq!(back, reason);
        assert_eq!(panic.as_deref(), Some("Kernel panic - not syncing: x"));
    }

    #[test]
    fn seccomp_violations_and_silent_deaths_are_named() {
        let (r, _) = reason_of(
            std::process::ExitStatus::from_raw(libc::SIGSYS),
            "seccomp violation: system call 59\n",
        );
        assert_eq!(
            r.to_string(),
            "VMM error: the VMM was stopped by its seccomp filter: seccomp violation: system \
             call 59"
        );
        let (r, _) = reason_of(std::process::ExitStatus::from_raw(libc::SIGKILL), "");
        assert_eq!(
            r.to_string(),
            "VMM error: the VMM process was killed by signal 9"
        );
        let (r, _) = reason_of(exited(1), "");
        assert!(r
            .to_string()
            .contains("exited with status 1 without a report"));
    }
}
