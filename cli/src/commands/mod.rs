//! One module per `capsule` subcommand: each parses its arguments, calls `capsule-host` (or,
//! for `run` and `vsock-backend`, the hypervisor and vsock libraries), and prints.

pub mod common;
pub mod configure;
pub mod container;
pub mod control;
pub mod create;
pub mod exec;
pub mod helper;
pub mod image;
pub mod key;
pub mod logs;
pub mod ls;
pub mod mount;
pub mod network;
pub mod port_forward;
pub mod ps;
pub mod rm;
pub mod run;
pub mod stop;
pub mod tty;
pub mod vsock_backend;

use std::process::ExitCode;

use capsule_host::exit::code;
use capsule_host::machine::MachineChoice;

/// Prints an error with its chain of causes and returns the VMM-error exit code.
pub fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("capsule: error: {err:#}");
    ExitCode::from(code::VMM_ERROR)
}

/// `--backend`: which machine runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MachineArg {
    /// capsule's KVM VMM on hardware virtualization, QEMU's software CPU elsewhere.
    Auto,
    /// capsule's KVM VMM.
    Kvm,
    /// QEMU microvm, software CPU.
    QemuTcg,
    /// QEMU microvm on KVM.
    QemuKvm,
}

impl From<MachineArg> for MachineChoice {
    fn from(arg: MachineArg) -> Self {
        match arg {
            MachineArg::Auto => MachineChoice::Auto,
            MachineArg::Kvm => MachineChoice::Kvm,
            MachineArg::QemuTcg => MachineChoice::QemuTcg,
            MachineArg::QemuKvm => MachineChoice::QemuKvm,
        }
    }
}

/// `capsule __supervise DIR`: the per-VM supervisor process `create` starts (not for users).
#[derive(clap::Args, Debug)]
pub struct SuperviseArgs {
    /// The VM's state directory.
    dir: std::path::PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct VmmArgs {
    /// The machine configuration the supervisor wrote.
    config: std::path::PathBuf,
}

/// Runs one VM's VMM process; its exit code is the VM's end (`capsule run`'s codes).
pub fn vmm(args: VmmArgs) -> ExitCode {
    ExitCode::from(capsule_host::machine::kvm::run_vmm_process(&args.config))
}

/// Runs the supervisor of one VM; exits 0 when the VM stopped, 3 when it died.
pub fn supervise(args: SuperviseArgs) -> ExitCode {
    match capsule_host::supervisor::run_process(&args.dir) {
        Ok(capsule_host::state::Phase::Stopped) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(code::GUEST_FAULT),
        Err(e) => fail(&e.into()),
    }
}
