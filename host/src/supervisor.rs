//! One supervisor process per microVM: runs the machine, serves upcalls, and keeps the VM's
//! `status.json` true — starting, running once the agent answers, then stopped or dead with the
//! reason. [`crate::vm::create`] starts it detached (`<program> __supervise DIR`, which calls
//! [`run_process`]), so no central daemon exists.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use log::{info, warn};

use capsule_vmm::exit::{error_chain, ExitReason};

use crate::jail;
use crate::machine::{self, MachineConfig, MachineEnd, MachineError, MachineKind, Nic};
use crate::spec::VmSpec;
use crate::state::{process_start_time, Phase, StateDir, StateError, Status};
use crate::upcall::{self, UpcallRoutes};
use crate::virtiofsd::{self, Virtiofsd};

/// Errors that keep the supervisor from running the VM at all.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Upcalls(#[from] upcall::UpcallRouterError),
    #[error("cannot start the machine thread")]
    Thread(#[source] std::io::Error),
    #[error("invalid state directory {0}")]
    InvalidDir(std::path::PathBuf),
    #[error(transparent)]
    Jail(#[from] crate::jail::JailError),
    #[error("cannot connect the VM to network {network}")]
    Network {
        network: String,
        #[source]
        source: crate::network::NetworkError,
    },
}

/// The hidden subcommand a front end's program must answer with [`run_process`]:
/// `<program> __supervise DIR`.
pub const SUPERVISE_COMMAND: &str = "__supervise";

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
        reason: Some(format!("booting on {}", spec.machine)),
        pid: Some(pid),
        pid_start_time: process_start_time(pid),
    };
    state.write_status(&status)?;
    info!(
        "VM {}: backend {} ({})",
        spec.name, spec.machine, spec.machine_reason
    );

    let jail = match spec.jail {
        Some(range) => {
            let own_root = spec.machine == MachineKind::Kvm;
            match jail::prepare(&spec.name, state.dir(), range, own_root) {
                Ok(jail) => Some(jail),
                Err(e) => {
                    status.phase = Phase::Dead;
                    status.reason = Some(format!("cannot set up the jail: {}", error_chain(&e)));
                    state.write_status(&status)?;
                    return Err(e.into());
                }
            }
        }
        None => None,
    };
    // The VM's sockets: where its machine can reach them.
    let sockets = jail
        .as_ref()
        .map_or(state.dir().to_path_buf(), |j| j.sockets.clone());

    // One virtiofsd per share, started from this thread so that they die with it
    // (PR_SET_PDEATHSIG), and stopped when this function returns (Drop). First, so that a
    // share that cannot be served leaves no other socket behind.
    let mut daemons = match start_virtiofsds(&spec, &sockets) {
        Ok(daemons) => daemons,
        Err(e) => {
            warn!("VM {}: {e}", spec.name);
            status.phase = Phase::Dead;
            status.reason = Some(format!("a share could not be served: {}", error_chain(&e)));
            state.write_status(&status)?;
            return Ok(Phase::Dead);
        }
    };

    let vsock_uds = sockets.join("vsock.sock");
    let _ = std::fs::remove_file(&vsock_uds);
    link_vsock(state, &vsock_uds)?;
    upcall::start(
        &vsock_uds,
        UpcallRoutes {
            vm: spec.name.clone(),
            helpers: spec.upcalls.clone(),
            timeout: Duration::from_secs(spec.upcall_timeout_secs),
        },
    )?;
    if let (Some(jail), true) = (&jail, sockets != state.dir()) {
        let upcalls =
            capsule_protocol::hybrid::forward_path(&vsock_uds, capsule_protocol::UPCALL_PORT);
        jail::give_socket(&upcalls, jail.uid)?;
    }

    let networks = crate::network::store();
    let mut nics = Vec::new();
    if let Some(att) = &spec.network {
        if let Err(source) = crate::network::activate(&networks, att) {
            let e = SupervisorError::Network {
                network: att.network.clone(),
                source,
            };
            status.phase = Phase::Dead;
            status.reason = Some(error_chain(&e));
            state.write_status(&status)?;
            return Err(e);
        }
        nics.push(Nic {
            tap: att.tap.clone(),
            mac: att.mac,
        });
    }
    let config = MachineConfig {
        kernel: spec.kernel.clone(),
        initrd: spec.initrd.clone(),
        cmdline_extra: spec.cmdline_extra.clone(),
        vcpus: spec.cpus,
        memory_mib: spec.memory_mib,
        vsock_uds: vsock_uds.clone(),
        guest_cid: spec.guest_cid,
        disks: spec.disks.clone(),
        nics,
        netns: spec.network.as_ref().and_then(|n| n.netns.clone()),
        shares: daemons
            .iter()
            .map(|d| machine::FsDevice {
                tag: d.share().tag.clone(),
                socket: d.socket().to_path_buf(),
            })
            .collect(),
        console: state.console_path(),
        run_dir: state.dir().to_path_buf(),
        seccomp: spec.seccomp,
        jail: jail.clone(),
    };
    let (done_tx, done_rx) = mpsc::channel::<Result<MachineEnd, MachineError>>();
    let kind = spec.machine;
    std::thread::Builder::new()
        .name("capsule-machine".into())
        .spawn(move || {
            let _ = done_tx.send(machine::run(kind, &config));
        })
        .map_err(SupervisorError::Thread)?;

    let started = Instant::now();
    let mut agent_ready = false;
    let mut share_lost = None;
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
        if share_lost.is_none() && !state.dir().join(STOP_REQUESTED).exists() {
            if let Some(why) = virtiofsd_ended(&mut daemons) {
                warn!("VM {}: {why}", spec.name);
                status.reason = Some(why.clone());
                state.write_status(&status)?;
                share_lost = Some(why);
            }
        }
        if !agent_ready && agent_answers(&vsock_uds) {
            agent_ready = true;
            status.phase = Phase::Running;
            status.reason = share_lost.clone().or(Some(format!(
                "agent answered {:.1} s after start",
                started.elapsed().as_secs_f64()
            )));
            state.write_status(&status)?;
            info!(
                "VM {}: {}",
                spec.name,
                status.reason.as_deref().unwrap_or("")
            );
        }
    };

    if let Some(att) = &spec.network {
        if let Err(e) = crate::network::deactivate(&networks, att) {
            warn!("VM {}: cannot take its network side down: {e}", spec.name);
        }
    }
    let stop_requested = state.dir().join(STOP_REQUESTED).exists();
    // The machine is gone: its daemons go too (kill + wait), before the status says so.
    drop(daemons);
    let (phase, mut reason) = final_phase(end, agent_ready, stop_requested);
    if let (Some(why), false) = (share_lost, stop_requested) {
        reason = format!("{reason}; earlier: {why}");
    }
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
        capsule_protocol::hybrid::forward_path(&vsock_uds, capsule_protocol::UPCALL_PORT),
    ] {
        let _ = std::fs::remove_file(path);
    }
    if let Some(jail) = &jail {
        if vsock_uds != state.vsock_path() {
            let _ = std::fs::remove_file(state.vsock_path());
        }
        jail::clean_up(jail, state.dir());
    }
    Ok(phase)
}

/// Makes `vsock.sock` of the state directory, where host programs connect, lead to the
/// machine's socket `vsock_uds` when that is elsewhere (in the jail's sockets directory).
fn link_vsock(state: &StateDir, vsock_uds: &Path) -> Result<(), SupervisorError> {
    let public = state.vsock_path();
    if vsock_uds == public {
        return Ok(());
    }
    let _ = std::fs::remove_file(&public);
    let target = vsock_uds.strip_prefix(state.dir()).unwrap_or(vsock_uds);
    std::os::unix::fs::symlink(target, &public).map_err(|source| {
        SupervisorError::State(StateError::Io {
            path: public.clone(),
            source,
        })
    })
}

/// Starts the virtiofsd of every share of `spec`, its socket `fsN.sock` in `sockets`.
fn start_virtiofsds(
    spec: &VmSpec,
    sockets: &Path,
) -> Result<Vec<Virtiofsd>, virtiofsd::VirtiofsdError> {
    let Some(program) = &spec.virtiofsd else {
        // VmSpec::check refuses shares without virtiofsd.
        return Ok(Vec::new());
    };
    spec.shares
        .iter()
        .enumerate()
        .map(|(i, share)| {
            let daemon = Virtiofsd::start(program, share, &sockets.join(format!("fs{i}.sock")))?;
            info!(
                "VM {}: virtiofsd {} serves {} as {} (tag {})",
                spec.name,
                daemon.pid(),
                share.host_dir.display(),
                share.target,
                share.tag
            );
            Ok(daemon)
        })
        .collect()
}

/// Why the VM lost a share, if a daemon has ended: the first one that has.
fn virtiofsd_ended(daemons: &mut [Virtiofsd]) -> Option<String> {
    daemons.iter_mut().find_map(|d| {
        let status = d.exited()?;
        let share = d.share();
        Some(format!(
            "virtiofsd of share {}:{} exited ({status}): its files no longer answer",
            share.host_dir.display(),
            share.target
        ))
    })
}

const HANDLED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in HANDLED {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// The supervisor process of the VM whose state directory is `dir`: runs the VM to its end
/// ([`supervise`]) and records a termination signal as the VM's end. Returns the final phase.
pub fn run_process(dir: &Path) -> Result<Phase, SupervisorError> {
    let invalid = || SupervisorError::InvalidDir(dir.to_path_buf());
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(invalid)?;
    let root = dir.parent().ok_or_else(invalid)?;
    let state = StateDir::open(root, name)?;
    // Termination signals are taken by one thread with sigwait(), so that every other thread
    // (started below, inheriting the mask) keeps running until the status is recorded.
    let set = signal_set();
    // SAFETY: `set` is a valid signal set; blocking signals in this thread has no other effect.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    let watched = state.clone();
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` and `sig` are valid for the call.
        unsafe { libc::sigwait(&set, &mut sig) };
        record_termination(&watched, sig);
        if let Ok(spec) = watched.read_json::<VmSpec>(&watched.config_path()) {
            if let Some(att) = &spec.network {
                let _ = crate::network::deactivate(&crate::network::store(), att);
            }
        }
        // QEMU and the virtiofsds, if any, die with us (PR_SET_PDEATHSIG); so does capsule's
        // VMM process.
        std::process::exit(0);
    });
    supervise(&state)
}

fn record_termination(state: &StateDir, sig: libc::c_int) {
    let Ok(mut status) = state.read_json::<Status>(&state.status_path()) else {
        return;
    };
    if matches!(status.phase, Phase::Stopped | Phase::Dead) {
        return;
    }
    if state.dir().join(STOP_REQUESTED).exists() {
        status.phase = Phase::Stopped;
        status.reason = Some("stopped by `capsule stop --force` (VMM terminated)".into());
    } else {
        status.phase = Phase::Dead;
        status.reason = Some(format!("the VMM was terminated by signal {sig}"));
    }
    let _ = state.write_status(&status);
}

fn agent_answers(vsock_uds: &Path) -> bool {
    if !vsock_uds.exists() {
        return false;
    }
    let connector = capsule_protocol::HybridVsock::new(vsock_uds)
        .with_handshake_timeout(Duration::from_secs(1));
    match capsule_protocol::Client::connect(connector) {
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
}
