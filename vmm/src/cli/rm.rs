//! `capsule rm`: remove a VM's state directory.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use vmm::state::Phase;

#[derive(Args, Debug)]
pub struct RmArgs {
    /// VMs to remove.
    #[arg(required = true)]
    names: Vec<String>,
    /// Stop running VMs first instead of refusing.
    #[arg(short, long)]
    force: bool,
}

pub fn run(args: RmArgs) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    for name in &args.names {
        let result = super::common::open_vm(name).and_then(|vm| {
            let status = vm.status()?;
            if matches!(status.phase, Phase::Starting | Phase::Running) {
                if !args.force {
                    bail!(
                        "VM {name} is {}: stop it first, or use rm --force",
                        status.phase.name()
                    );
                }
                super::stop::stop_vm(&vm, Duration::from_secs(10), true)?;
            }
            vm.remove()?;
            Ok(())
        });
        match result {
            Ok(()) => println!("{name}"),
            Err(e) => code = super::fail(&e),
        }
    }
    code
}
