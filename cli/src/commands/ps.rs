//! `capsule ps`: processes in a VM's container.

use std::process::ExitCode;

use capsule_protocol::methods::ListProcesses;
use capsule_protocol::pb;
use clap::Args;

#[derive(Args, Debug)]
pub struct PsArgs {
    /// The VM.
    name: String,
    /// The container (default: the VM's own).
    #[arg(short, long)]
    container: Option<String>,
    /// Also list commands that have exited.
    #[arg(short, long)]
    all: bool,
}

pub fn run(args: PsArgs) -> ExitCode {
    let result = super::common::agent(&args.name).and_then(|(_, client)| {
        let list = client.call::<ListProcesses>(&pb::ContainerRef {
            container: super::common::container_or_vm(&args.name, &args.container).to_string(),
        })?;
        println!("{:>7} {:>8} {:<8} COMMAND", "PID", "EXEC", "STATE");
        for p in list
            .processes
            .into_iter()
            .filter(|p| args.all || p.state != "exited")
        {
            let exec = if p.exec_id == 0 {
                "-".to_string()
            } else {
                p.exec_id.to_string()
            };
            println!("{:>7} {exec:>8} {:<8} {}", p.pid, p.state, p.argv.join(" "));
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(&e),
    }
}
