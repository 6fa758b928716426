//! `capsule stop`: shut a VM down through its agent, or end its VMM when it does not answer.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use protocol::methods::Shutdown;
use protocol::pb;
use vmm::state::{process_alive, Phase, StateDir, Status};
use vmm::supervisor::STOP_REQUESTED;

#[derive(Args, Debug)]
pub struct StopArgs {
    name: String,
    /// Seconds processes get after SIGTERM before the guest is shut down.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    grace: u32,
    /// Seconds to wait for the VM to end before terminating its VMM.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
}

pub fn run(args: StopArgs) -> ExitCode {
    let result = super::common::open_vm(&args.name).and_then(|vm| {
        stop_vm_with_grace(&vm, args.grace, Duration::from_secs(args.timeout), true)
    });
    match result {
        Ok(status) => {
            println!(
                "{}: {}{}",
                args.name,
                status.phase.name(),
                status.reason.map(|r| format!(" ({r})")).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(&e),
    }
}

/// Stops `vm` with a short grace period; see [`stop_vm_with_grace`].
pub fn stop_vm(vm: &StateDir, timeout: Duration, force: bool) -> Result<Status> {
    stop_vm_with_grace(vm, 2, timeout, force)
}

/// Asks the agent to shut the guest down and waits for the VM to end; with `force`, terminates
/// the VMM (SIGTERM, then SIGKILL) when that does not happen within `timeout`.
pub fn stop_vm_with_grace(
    vm: &StateDir,
    grace: u32,
    timeout: Duration,
    force: bool,
) -> Result<Status> {
    let status = vm.status()?;
    if !matches!(status.phase, Phase::Starting | Phase::Running) {
        return Ok(status);
    }
    std::fs::write(vm.dir().join(STOP_REQUESTED), b"")?;
    if status.phase == Phase::Running {
        if let Ok(client) = super::common::connect(&vm.vsock_path()) {
            // The agent may be gone before it answers: the VM ending is the answer that counts.
            let _ = client.call::<Shutdown>(&pb::ShutdownRequest {
                grace_seconds: grace,
            });
        }
    }
    let deadline = Instant::now() + timeout + Duration::from_secs(u64::from(grace));
    while Instant::now() < deadline {
        let now = vm.status()?;
        if !matches!(now.phase, Phase::Starting | Phase::Running) {
            return Ok(now);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !force {
        anyhow::bail!(
            "VM {} did not stop within {} s",
            vm.name(),
            timeout.as_secs()
        );
    }
    if let Some(pid) = status.pid {
        for (signal, wait) in [(libc::SIGTERM, 5), (libc::SIGKILL, 5)] {
            if !process_alive(pid, status.pid_start_time) {
                break;
            }
            // SAFETY: kill() has no memory-safety preconditions; the pid was checked to be the
            // VM's supervisor (same start time) just before.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
            let until = Instant::now() + Duration::from_secs(wait);
            while process_alive(pid, status.pid_start_time) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let mut now = vm.status()?;
    let alive = status
        .pid
        .is_some_and(|pid| process_alive(pid, status.pid_start_time));
    if !alive && now.phase != Phase::Stopped {
        now.phase = Phase::Stopped;
        now.reason = Some("stopped by force: the guest did not shut down in time".into());
        vm.write_status(&now)?;
    }
    Ok(now)
}
