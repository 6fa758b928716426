//! `capsule __supervise DIR`: the per-VM supervisor process `create` starts (not for users).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use vmm::state::{Phase, StateDir};
use vmm::supervisor::{supervise, STOP_REQUESTED};

#[derive(Args, Debug)]
pub struct SuperviseArgs {
    /// The VM's state directory.
    dir: PathBuf,
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

pub fn run(args: SuperviseArgs) -> ExitCode {
    let Some(name) = args
        .dir
        .file_name()
        .and_then(|n| n.to_str())
        .map(String::from)
    else {
        eprintln!(
            "capsule: error: invalid state directory {}",
            args.dir.display()
        );
        return ExitCode::FAILURE;
    };
    let Some(root) = args.dir.parent().map(PathBuf::from) else {
        eprintln!(
            "capsule: error: invalid state directory {}",
            args.dir.display()
        );
        return ExitCode::FAILURE;
    };
    let state = match StateDir::open(&root, &name) {
        Ok(s) => s,
        Err(e) => return super::fail(&e.into()),
    };
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
        // QEMU, if any, dies with us (PR_SET_PDEATHSIG); capsule's own VMM is this process.
        std::process::exit(0);
    });
    match supervise(&state) {
        Ok(Phase::Stopped) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(vmm::exit::code::GUEST_FAULT),
        Err(e) => super::fail(&e.into()),
    }
}

fn record_termination(state: &StateDir, sig: libc::c_int) {
    let Ok(mut status) = state.read_json::<vmm::state::Status>(&state.status_path()) else {
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
