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
        name: String,
        /// TYPE:DESCRIPTION=FILE, e.g. user:db-password=./secret
        #[arg(value_name = "TYPE:DESC=FILE")]
        key: String,
    },
    /// List the keys in the container's keyring.
    Ls { name: String },
}

pub fn run(args: KeyArgs) -> ExitCode {
    match key(args.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(&e),
    }
}

fn key(command: KeyCommand) -> Result<()> {
    match command {
        KeyCommand::Add { name, key } => {
            let spec = super::common::parse_key(&key)?;
            let (_, client) = super::common::agent(&name)?;
            let added = client
                .call::<AddKey>(&pb::AddKeyRequest {
                    container: name.clone(),
                    key_type: spec.key_type.clone(),
                    description: spec.description.clone(),
                    payload: spec.payload,
                })
                .with_context(|| {
                    format!("cannot add key {}:{}", spec.key_type, spec.description)
                })?;
            println!("{}", added.serial);
        }
        KeyCommand::Ls { name } => {
            let (_, client) = super::common::agent(&name)?;
            let keys = client.call::<ListKeys>(&pb::ContainerRef { container: name })?;
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
