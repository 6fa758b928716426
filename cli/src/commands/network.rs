//! `capsule network`: define, list and remove host networks for VMs.

use std::process::ExitCode;

use anyhow::Result;
use capsule_host::network::{self, ipam::Subnet};
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  capsule network create backend --subnet 10.90.0.0/24\n  \
    capsule create api --net backend --ip 10.90.0.10\n  capsule network ls\n  \
    capsule network rm backend"
)]
pub struct NetworkArgs {
    #[command(subcommand)]
    command: NetworkCommand,
}

#[derive(Subcommand, Debug)]
enum NetworkCommand {
    /// Define a network: a bridge with the subnet's first address as gateway, NAT to the
    /// outside. Its bridge and rules exist on the host only while one of its VMs runs.
    Create {
        /// Name (1-32 of a-z, 0-9 and -).
        name: String,
        /// IPv4 subnet, such as 10.90.0.0/24 (default: the first free /24 of 10.89.0.0/16).
        #[arg(long, value_name = "CIDR")]
        subnet: Option<String>,
    },
    /// List networks with their subnet, bridge and the VMs that have an address on them.
    Ls,
    /// Remove a network; refused while a VM (running or stopped) has an address on it.
    Rm {
        /// Networks to remove.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub fn run(args: NetworkArgs) -> ExitCode {
    match network(args.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(&e),
    }
}

fn network(command: NetworkCommand) -> Result<()> {
    let store = network::store();
    match command {
        NetworkCommand::Create { name, subnet } => {
            let subnet = subnet.map(|s| s.parse::<Subnet>()).transpose()?;
            let spec = network::create(&store, &name, subnet)?;
            eprintln!(
                "capsule: network {} is {} (gateway {}, bridge {})",
                spec.name,
                spec.subnet,
                spec.subnet.gateway(),
                spec.bridge
            );
            println!("{}", spec.name);
        }
        NetworkCommand::Ls => {
            println!(
                "{:<20} {:<18} {:<15} {:<10} {:<6}  VMS",
                "NAME", "SUBNET", "GATEWAY", "BRIDGE", "STATE"
            );
            for n in network::list(&store)? {
                let vms = n
                    .vms
                    .iter()
                    .map(|(vm, addr)| format!("{vm}={addr}"))
                    .collect::<Vec<_>>()
                    .join(",");
                println!(
                    "{:<20} {:<18} {:<15} {:<10} {:<6}  {}",
                    n.spec.name,
                    n.spec.subnet.to_string(),
                    n.spec.subnet.gateway().to_string(),
                    n.spec.bridge,
                    if n.active { "up" } else { "idle" },
                    if vms.is_empty() { "-" } else { &vms }
                );
            }
        }
        NetworkCommand::Rm { names } => {
            for name in names {
                network::remove(&store, &name)?;
                println!("{name}");
            }
        }
    }
    Ok(())
}
