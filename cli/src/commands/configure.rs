//! The container fd operations that change a running container: `capsule share-ns`,
//! `capsule cgroup`, `capsule set-root`, `capsule policy`, `capsule devices`. Each acts on
//! the VM's own container unless `-c NAME` names another.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::common;

#[derive(Args, Debug)]
#[command(
    after_help = "Example: capsule share-ns pod -c web net=pod,ipc=pod\n\nnet, ipc, uts \
    and cgroup can change at any time (processes started afterwards get them; running ones keep \
    theirs); pid and mnt only before the container's init starts, so they are refused here for \
    a running container: use `capsule container add --share-ns`."
)]
pub struct ShareNsArgs {
    /// The VM.
    vm: String,
    /// The container that takes the namespaces (default: the VM's own).
    #[arg(short, long)]
    container: Option<String>,
    /// TYPE=CONTAINER[,TYPE=CONTAINER...], TYPE one of net, ipc, uts, cgroup, pid, mnt.
    #[arg(value_name = "TYPE=CONTAINER,...")]
    shares: String,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Example: capsule cgroup pod -c web pods/web\n\nThe directory is \
    <cgroup2 mount>/capsule/PATH in the guest; the agent creates it. It must have no processes \
    and no controllers enabled for its children. Every member moves, later ones start there, \
    and kill/freeze/ps follow the container."
)]
pub struct CgroupArgs {
    /// The VM.
    vm: String,
    /// The container to move (default: the VM's own).
    #[arg(short, long)]
    container: Option<String>,
    /// cgroup v2 directory relative to the agent's cgroup root, e.g. pods/web.
    path: String,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Example: capsule set-root web /srv/v2\n\nProcesses started from now \
    on (and after a reboot) have the directory as their root; running ones keep theirs. The \
    directory must be in the container's own mount namespace."
)]
pub struct SetRootArgs {
    /// The VM.
    vm: String,
    /// The container (default: the VM's own).
    #[arg(short, long)]
    container: Option<String>,
    /// Absolute directory inside the container.
    path: String,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Example: capsule policy web --lsm container_test mkdir,mknod\n\nThe \
    guest kernel's container_test LSM takes a list of operations (mkdir, mknod) the \
    container's members may not do; an empty policy allows everything again."
)]
pub struct PolicyArgs {
    /// The VM.
    vm: String,
    /// The container (default: the VM's own).
    #[arg(short, long)]
    container: Option<String>,
    /// The guest LSM that takes the policy.
    #[arg(long)]
    lsm: String,
    /// The policy, in the LSM's own format (at most 4096 bytes).
    #[arg(conflicts_with = "file")]
    policy: Option<String>,
    /// Read the policy from this host file instead.
    #[arg(long, value_name = "PATH")]
    file: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
pub struct DevicesArgs {
    /// The VM.
    vm: String,
    /// The container (default: the VM's own).
    #[arg(short, long)]
    container: Option<String>,
    #[arg(value_name = "RULES", help = common::DEVICES_HELP)]
    rules: String,
}

fn finish(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(&e),
    }
}

pub fn share_ns(args: ShareNsArgs) -> ExitCode {
    finish((|| {
        let shares = common::parse_share_ns(&args.shares)?;
        if shares.is_empty() {
            bail!("invalid --share-ns: no TYPE=CONTAINER given");
        }
        let vm = common::open_vm(&args.vm)?;
        vm.share_namespaces(common::container_or_vm(&args.vm, &args.container), &shares)?;
        Ok(())
    })())
}

pub fn cgroup(args: CgroupArgs) -> ExitCode {
    finish((|| {
        let vm = common::open_vm(&args.vm)?;
        vm.set_cgroup(
            common::container_or_vm(&args.vm, &args.container),
            &args.path,
        )?;
        Ok(())
    })())
}

pub fn set_root(args: SetRootArgs) -> ExitCode {
    finish((|| {
        let vm = common::open_vm(&args.vm)?;
        vm.set_root(
            common::container_or_vm(&args.vm, &args.container),
            &args.path,
        )?;
        Ok(())
    })())
}

pub fn policy(args: PolicyArgs) -> ExitCode {
    finish((|| {
        let policy = match (&args.policy, &args.file) {
            (Some(p), None) => p.clone().into_bytes(),
            (None, Some(f)) => std::fs::read(f)
                .with_context(|| format!("cannot read the policy from {}", f.display()))?,
            _ => bail!("give the policy as an argument or with --file"),
        };
        let vm = common::open_vm(&args.vm)?;
        vm.set_policy(
            common::container_or_vm(&args.vm, &args.container),
            &args.lsm,
            &policy,
        )?;
        Ok(())
    })())
}

pub fn devices(args: DevicesArgs) -> ExitCode {
    finish((|| {
        let rules = common::parse_devices("device rules", &args.rules)?;
        let vm = common::open_vm(&args.vm)?;
        vm.set_devices(common::container_or_vm(&args.vm, &args.container), &rules)?;
        Ok(())
    })())
}
