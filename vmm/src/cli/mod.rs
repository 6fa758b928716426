//! One module per `capsule` subcommand.

pub mod image;
pub mod run;
pub mod vsock_backend;

use std::process::ExitCode;

use vmm::exit::code;

/// Prints an error with its chain of causes and returns the VMM-error exit code.
pub fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("capsule: error: {err:#}");
    ExitCode::from(code::VMM_ERROR)
}
