//! `capsule kill`, `capsule freeze`, `capsule thaw`, `capsule reboot`: act on every process
//! of a container (the VM's own, or the one `-c NAME` names).

use std::process::ExitCode;

use anyhow::{bail, Result};
use capsule_protocol::methods::{FreezeContainer, KillContainer, ThawContainer};
use capsule_protocol::pb;
use clap::Args;

#[derive(Args, Debug)]
pub struct KillArgs {
    /// The VM.
    name: String,
    /// The container (default: the VM's own).
    #[arg(short, long)]
    container: Option<String>,
    /// Signal to send: a number or a name (KILL, TERM, INT, HUP, USR1, USR2, STOP, CONT).
    #[arg(short, long, default_value = "KILL")]
    signal: String,
}

#[derive(Args, Debug)]
pub struct NameArgs {
    /// The VM.
    name: String,
    /// The container (default: the VM's own).
    #[arg(short, long)]
    container: Option<String>,
}

impl NameArgs {
    fn container(&self) -> String {
        super::common::container_or_vm(&self.name, &self.container).to_string()
    }
}

fn parse_signal(spec: &str) -> Result<i32> {
    if let Ok(n) = spec.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        bail!("invalid --signal {spec}: signal numbers are 1 to 64");
    }
    let upper = spec.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    Ok(match name {
        "KILL" => libc::SIGKILL,
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "QUIT" => libc::SIGQUIT,
        _ => bail!("invalid --signal {spec}: unknown signal name"),
    })
}

fn finish(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(&e),
    }
}

pub fn kill(args: KillArgs) -> ExitCode {
    finish(parse_signal(&args.signal).and_then(|signal| {
        let (_, client) = super::common::agent(&args.name)?;
        client.call::<KillContainer>(&pb::KillContainerRequest {
            container: super::common::container_or_vm(&args.name, &args.container).to_string(),
            signal,
        })?;
        Ok(())
    }))
}

pub fn freeze(args: NameArgs) -> ExitCode {
    finish(super::common::agent(&args.name).and_then(|(_, client)| {
        client.call::<FreezeContainer>(&pb::ContainerRef {
            container: args.container(),
        })?;
        Ok(())
    }))
}

pub fn thaw(args: NameArgs) -> ExitCode {
    finish(super::common::agent(&args.name).and_then(|(_, client)| {
        client.call::<ThawContainer>(&pb::ContainerRef {
            container: args.container(),
        })?;
        Ok(())
    }))
}

/// `capsule reboot VM [-c NAME]`: kills every member and starts a fresh init with the same
/// namespaces, root, cgroup and keyring.
pub fn reboot(args: NameArgs) -> ExitCode {
    finish(super::common::open_vm(&args.name).and_then(|vm| {
        vm.reboot_container(&args.container())?;
        Ok(())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("BOGUS").is_err());
    }
}
