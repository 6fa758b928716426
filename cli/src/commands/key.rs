//! `capsule key`: add keys to a container's keyring, list them.

use std::process::ExitCode;

use anyhow::{Context, Result};
use capsule_protocol::methods::{AddKey, ListKeys};
use capsule_protocol::pb;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Add a key to the container's keyring (request_key() in the container finds it).
    Add {
        /// The VM.
        name: String,
        /// The container (default: the VM's own).
        #[arg(short, long)]
        container: Option<String>,
        /// TYPE:DESCRIPTION=FILE, e.g. user:db-password=./secret
        #[arg(value_name = "TYPE:DESC=FILE")]
        key: String,
    },
    /// List the keys in the container's keyring.
    Ls {
        /// The VM.
        name: String,
        /// The container (default: the VM's own).
        #[arg(short, long)]
        container: Option<String>,
    },
}

pub fn run(args: KeyArgs) -> ExitCode {
    match key(args.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(&e),
    }
}

fn key(command: KeyCommand) -> Result<()> {
    match command {
        KeyCommand::Add {
            name,
            container,
            key,
        } => {
            let spec = super::common::parse_key(&key)?;
            let (_, client) = super::common::agent(&name)?;
            let added = client
                .call::<AddKey>(&pb::AddKeyRequest {
                    container: super::common::container_or_vm(&name, &container).to_string(),
                    key_type: spec.key_type.clone(),
                    description: spec.description.clone(),
                    payload: spec.payload,
                })
                .with_context(|| {
                    format!("cannot add key {}:{}", spec.key_type, spec.description)
                })?;
            println!("{}", added.serial);
        }
        KeyCommand::Ls { name, container } => {
            let (_, client) = super::common::agent(&name)?;
            let keys = client.call::<ListKeys>(&pb::ContainerRef {
                container: super::common::container_or_vm(&name, &container).to_string(),
            })?;
            println!(
                "{:>10} {:<14} {:>9} {:>8}  DESCRIPTION",
                "SERIAL", "TYPE", "OWNER", "PERM"
            );
            for k in keys.keys {
                println!(
                    "{:>10} {:<14} {:>9} {:>8}  {}",
                    k.serial,
                    k.key_type,
                    format!("{}:{}", k.uid, k.gid),
                    format!("{:08x}", k.perm),
                    k.description
                );
            }
        }
    }
    Ok(())
}
