//! `capsule stop`: shut a VM down through its agent, or end its VMM when it does not answer.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

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
    let result = super::common::open_vm(&args.name)
        .and_then(|vm| Ok(vm.stop(args.grace, Duration::from_secs(args.timeout), true)?));
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
