//! `capsule container add|ls`: further container objects in a running VM (a pod: one VM, its
//! containers sharing the first one's namespaces).

use std::process::ExitCode;

use anyhow::Result;
use capsule_host::containers::ContainerSpec;
use clap::{Args, Subcommand};

use super::common::{self, DEFAULT_FLAGS};

#[derive(Args, Debug)]
pub struct ContainerArgs {
    #[command(subcommand)]
    command: ContainerCommand,
}

#[derive(Subcommand, Debug)]
enum ContainerCommand {
    /// Create a further container in a running VM and start its init.
    #[command(
        after_help = "Examples:\n  capsule create pod\n  capsule container add pod web \
        --share-ns net=pod,ipc=pod,uts=pod\n  capsule exec pod -c web -- hostname\n\n\
        The VM's first container has the VM's name. pid and mnt namespaces can be shared only \
        here (before the init starts); net, ipc, uts and cgroup also later with `capsule \
        share-ns`."
    )]
    Add(AddArgs),
    /// List the container objects of a VM (the guest's /proc/containers).
    Ls {
        /// The VM.
        vm: String,
    },
}

#[derive(Args, Debug)]
struct AddArgs {
    /// The VM.
    vm: String,
    /// Name of the new container (1-63 of [A-Za-z0-9_.-]), unique in the VM.
    name: String,
    /// container_create() flags: comma-separated names (fs, empty-fs, cgroup, uts, ipc, user,
    /// pid, net, kill-on-close, cloexec) or a number.
    #[arg(long, default_value = DEFAULT_FLAGS)]
    flags: String,
    /// A directory of the guest as the container's root (bind-mounted; needs the fs flag).
    /// Default: the guest's root.
    #[arg(long, value_name = "GUEST_DIR")]
    root_dir: Option<String>,
    /// Hostname in the container's own UTS namespace (default: its name).
    #[arg(long)]
    hostname: Option<String>,
    /// Namespaces to take from other containers of the VM before the init starts:
    /// TYPE=CONTAINER[,TYPE=CONTAINER...], TYPE one of net, ipc, uts, cgroup, pid, mnt.
    #[arg(long, value_name = "TYPE=CONTAINER,...")]
    share_ns: Option<String>,
    #[arg(long, value_name = "RULES", help = common::DEVICES_HELP)]
    devices: Option<String>,
}

pub fn run(args: ContainerArgs) -> ExitCode {
    let result = match args.command {
        ContainerCommand::Add(add) => self::add(add),
        ContainerCommand::Ls { vm } => super::ls::list_containers(&vm),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(&e),
    }
}

fn add(args: AddArgs) -> Result<()> {
    let spec = ContainerSpec {
        flags: common::parse_flags(&args.flags)?,
        share_ns: match &args.share_ns {
            Some(s) => common::parse_share_ns(s)?,
            None => Vec::new(),
        },
        devices: match &args.devices {
            Some(s) => common::parse_devices("--devices", s)?,
            None => Vec::new(),
        },
        root_dir: args.root_dir,
        root_in_share: None,
        read_only_root: false,
        hostname: args.hostname.unwrap_or_default(),
        name: args.name,
    };
    let vm = common::open_vm(&args.vm)?;
    vm.add_container(&spec)?;
    println!("{}", spec.name);
    Ok(())
}
