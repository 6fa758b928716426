//! `capsule ls`: list VMs (from their state directories), or the container objects inside one.

use std::process::ExitCode;

use anyhow::Result;
use capsule_host::vm;
use capsule_protocol::methods::ListContainers;
use capsule_protocol::pb;
use clap::Args;

#[derive(Args, Debug)]
pub struct LsArgs {
    /// List the container objects inside this VM (as its /proc/containers shows them; the
    /// agent's own container is `<current>`).
    name: Option<String>,
}

pub fn run(args: LsArgs) -> ExitCode {
    let result = match &args.name {
        Some(name) => list_containers(name),
        None => list_vms(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(&e),
    }
}

fn list_vms() -> Result<()> {
    println!(
        "{:<20} {:<9} {:<9} {:>4} {:>7} {:<15}  REASON",
        "NAME", "STATUS", "BACKEND", "CPUS", "MEMORY", "ADDRESS"
    );
    for vm in vm::list()? {
        let (phase, reason) = match vm.status {
            Ok(s) => (s.phase.name().to_string(), s.reason.unwrap_or_default()),
            Err(e) => ("unknown".to_string(), e.to_string()),
        };
        let unknown = || ("?".into(), "?".into(), "?".into(), "?".into());
        let (backend, cpus, mem, address) = vm.spec.map_or_else(unknown, |s| {
            (
                s.machine.to_string(),
                s.cpus.to_string(),
                format!("{}M", s.memory_mib),
                s.network
                    .map_or_else(|| "-".to_string(), |n| n.address.to_string()),
            )
        });
        println!(
            "{:<20} {phase:<9} {backend:<9} {cpus:>4} {mem:>7} {address:<15}  {reason}",
            vm.name
        );
    }
    Ok(())
}

pub fn list_containers(name: &str) -> Result<()> {
    let (_, client) = super::common::agent(name)?;
    let list = client.call::<ListContainers>(&pb::ListContainersRequest {})?;
    println!(
        "{:<24} {:>6} {:>5} {:>7} {:>9} {:<8}",
        "NAME", "ID", "USE", "FLAGS", "OWNER", "STATE"
    );
    for c in list.containers {
        let shown = if c.current {
            "<current>".to_string()
        } else {
            c.name
        };
        println!(
            "{shown:<24} {:>6} {:>5} {:>7} {:>9} {:<8}",
            c.id,
            c.use_count,
            format!("{:#x}", c.flags),
            format!("{}:{}", c.owner_uid, c.owner_gid),
            c.state
        );
    }
    Ok(())
}
