//! One supervisor process per microVM: runs the machine, serves upcalls, and keeps the VM's
//! `status.json` true — starting, running once the agent answers, then stopped or dead with the
//! reason. The CLI starts it detached (`capsule __supervise`), so no central daemon exists.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use log::{info, warn};
use serde::{Deserialize, Serialize};

use crate::exit::ExitReason;
use crate::machine::{self, Backend, Disk, MachineConfig, MachineEnd, MachineError};
use crate::state::{process_start_time, Phase, StateDir, StateError, Status};
use crate::upcall::{self, UpcallRoutes};

/// What `capsule create` asked for: the VM's `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: String,
    pub backend: Backend,
    /// Why this backend (shown by `capsule ls -l` and in the supervisor log).
    pub backend_reason: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub cmdline_extra: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub guest_cid: u32,
    /// Upcall helper program per key type.
    #[serde(default)]
    pub upcalls: BTreeMap<String, PathBuf>,
    pub upcall_timeout_secs: u64,
}

/// Errors that keep the supervisor from running the VM at all.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Upcalls(#[from] upcall::UpcallRouterError),
    #[error("cannot start the machine thread")]
    Thread(#[source] std::io::Error),
}

/// Name of the marker file `capsule stop` leaves, so an ending requested by the user is
/// recorded as stopped rather than as an unexpected end.
pub const STOP_REQUESTED: &str = "stop-requested";

/// How often the agent is probed until it answers.
const HEALTH_POLL: Duration = Duration::from_millis(200);

/// Runs the VM of `state` to its end, keeping its status current. Returns the final phase.
pub fn supervise(state: &StateDir) -> Result<Phase, SupervisorError> {
    let spec: VmSpec = state.read_json(&state.config_path())?;
    let pid = std::process::id();
    let mut status = Status {
        phase: Phase::Starting,
        reason: Some(format!("booting on {}", spec.backend)),
        pid: Some(pid),
        pid_start_time: process_start_time(pid),
    };
    state.write_status(&status)?;
    info!(
        "VM {}: backend {} ({})",
        spec.name, spec.backend, spec.backend_reason
    );

    let vsock_uds = state.vsock_path();
    let _ = std::fs::remove_file(&vsock_uds);
    upcall::start(
        &vsock_uds,
        UpcallRoutes {
            vm: spec.name.clone(),
            helpers: spec.upcalls.clone(),
            timeout: Duration::from_secs(spec.upcall_timeout_secs),
        },
    )?;

    let config = MachineConfig {
        kernel: spec.kernel.clone(),
        initrd: spec.initrd.clone(),
        cmdline_extra: spec.cmdline_extra.clone(),
        vcpus: spec.cpus,
        memory_mib: spec.memory_mib,
        vsock_uds: vsock_uds.clone(),
        guest_cid: spec.guest_cid,
        disks: spec.disks.clone(),
        console: state.console_path(),
        run_dir: state.dir().to_path_buf(),
    };
    let (done_tx, done_rx) = mpsc::channel::<Result<MachineEnd, MachineError>>();
    let backend = spec.backend;
    std::thread::Builder::new()
        .name("capsule-machine".into())
        .spawn(move || {
            let _ = done_tx.send(machine::run(backend, &config));
        })
        .map_err(SupervisorError::Thread)?;

    let started = Instant::now();
    let mut agent_ready = false;
    let end = loop {
        match done_rx.recv_timeout(HEALTH_POLL) {
            Ok(end) => break end,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Ok(MachineEnd {
                    reason: ExitReason::VmmError(
                        "the machine thread ended without a result".into(),
                    ),
                    panic: None,
                })
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if !agent_ready && agent_answers(&vsock_uds) {
            agent_ready = true;
            status.phase = Phase::Running;
            status.reason = Some(format!(
                "agent answered {:.1} s after start",
                started.elapsed().as_secs_f64()
            ));
            state.write_status(&status)?;
            info!(
                "VM {}: {}",
                spec.name,
                status.reason.as_deref().unwrap_or("")
            );
        }
    };

    let stop_requested = state.dir().join(STOP_REQUESTED).exists();
    let (phase, reason) = final_phase(end, agent_ready, stop_requested);
    status.phase = phase;
    status.reason = Some(reason);
    state.write_status(&status)?;
    info!(
        "VM {}: {} ({})",
        spec.name,
        phase.name(),
        status.reason.as_deref().unwrap_or("")
    );
    for path in [
        vsock_uds.clone(),
        protocol::hybrid::forward_path(&vsock_uds, protocol::UPCALL_PORT),
    ] {
        let _ = std::fs::remove_file(path);
    }
    Ok(phase)
}

fn agent_answers(vsock_uds: &std::path::Path) -> bool {
    if !vsock_uds.exists() {
        return false;
    }
    let connector =
        protocol::HybridVsock::new(vsock_uds).with_handshake_timeout(Duration::from_secs(1));
    match protocol::Client::connect(connector) {
        Ok(client) => client.with_timeout(Duration::from_secs(2)).health().is_ok(),
        Err(_) => false,
    }
}

/// How the VM's end is recorded: stopped when it ended cleanly, dead (with why) otherwise.
fn final_phase(
    end: Result<MachineEnd, MachineError>,
    agent_ready: bool,
    stop_requested: bool,
) -> (Phase, String) {
    let end = match end {
        Ok(end) => end,
        Err(e) => {
            warn!("the machine could not start: {e:#}");
            return (
                Phase::Dead,
                format!("the machine could not start: {}", error_chain(&e)),
            );
        }
    };
    if let Some(panic) = end.panic {
        return (Phase::Dead, format!("guest kernel panic: {panic}"));
    }
    let clean = matches!(end.reason, ExitReason::Reboot | ExitReason::PowerOff);
    match (clean, stop_requested, agent_ready) {
        (true, true, _) => (Phase::Stopped, "stopped by `capsule stop`".into()),
        (true, false, true) => (Phase::Stopped, "the guest shut down".into()),
        (true, false, false) => (
            Phase::Dead,
            "the guest ended before its agent answered (see `capsule logs`)".into(),
        ),
        (false, _, _) => (Phase::Dead, end.reason.to_string()),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(reason: ExitReason, panic: Option<&str>) -> Result<MachineEnd, MachineError> {
        Ok(MachineEnd {
            reason,
            panic: panic.map(String::from),
        })
    }

    #[test]
    fn ends_are_classified() {
        assert_eq!(
            final_phase(end(ExitReason::Reboot, None), true, true).0,
            Phase::Stopped
        );
        assert_eq!(
            final_phase(end(ExitReason::Reboot, None), true, false),
            (Phase::Stopped, "the guest shut down".into())
        );
        let (phase, why) = final_phase(
            end(ExitReason::Reboot, Some("Kernel panic - not syncing: boom")),
            true,
            false,
        );
        assert_eq!(phase, Phase::Dead);
        assert_eq!(why, "guest kernel panic: Kernel panic - not syncing: boom");
        let (phase, why) = final_phase(end(ExitReason::Reboot, None), false, false);
        assert_eq!(phase, Phase::Dead);
        assert!(why.contains("before its agent answered"));
        let (phase, why) = final_phase(end(ExitReason::TripleFault { vcpu: 0 }, None), true, true);
        assert_eq!(phase, Phase::Dead);
        assert!(why.contains("triple fault"));
        let (phase, why) = final_phase(
            Err(MachineError::QemuMissing("qemu-system-x86_64")),
            false,
            false,
        );
        assert_eq!(phase, Phase::Dead);
        assert!(why.contains("qemu-system-x86_64 not found"));
    }

    #[test]
    fn spec_round_trips_through_json() {
        let spec = VmSpec {
            name: "web".into(),
            backend: Backend::QemuTcg,
            backend_reason: "test".into(),
            kernel: "/k".into(),
            initrd: None,
            disks: vec![Disk {
                path: "/d".into(),
                read_only: true,
            }],
            cmdline_extra: String::new(),
            cpus: 1,
            memory_mib: 256,
            guest_cid: 3,
            upcalls: [("dns_resolver".to_string(), PathBuf::from("/bin/h"))].into(),
            upcall_timeout_secs: 10,
        };
        let text = serde_json::to_string(&spec).unwrap();
        assert!(text.contains("\"backend\":\"qemu-tcg\""));
        assert_eq!(serde_json::from_str::<VmSpec>(&text).unwrap(), spec);
    }
}
