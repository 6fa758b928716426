//! One module per `capsule` subcommand.

pub mod common;
pub mod control;
pub mod create;
pub mod defaults;
pub mod exec;
pub mod helper;
pub mod image;
pub mod key;
pub mod logs;
pub mod ls;
pub mod mount;
pub mod port_forward;
pub mod ps;
pub mod rm;
pub mod run;
pub mod stop;
pub mod supervise;
pub mod tty;
pub mod vsock_backend;

use std::process::ExitCode;

use vmm::exit::code;

/// Prints an error with its chain of causes and returns the VMM-error exit code.
pub fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("capsule: error: {err:#}");
    ExitCode::from(code::VMM_ERROR)
}
