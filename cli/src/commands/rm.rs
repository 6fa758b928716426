//! `capsule rm`: remove a VM's state directory.

use std::process::ExitCode;

use clap::Args;

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
        let result = super::common::open_vm(name).and_then(|vm| Ok(vm.remove(args.force)?));
        match result {
            Ok(()) => println!("{name}"),
            Err(e) => code = super::fail(&e),
        }
    }
    code
}
