//! `capsule`: runs each container in its own KVM microVM.

mod cli;
mod logger;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "capsule",
    version,
    about = "Run containers in KVM microVMs",
    long_about = "capsule runs every container in its own KVM microVM: one VMM process per VM, \
                  a Linux guest kernel with container objects, reached over virtio-vsock.\n\n\
                  Logging: set CAPSULE_LOG to error, warn (default), info, debug or trace."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a microVM and create a container object in it.
    Create(cli::create::CreateArgs),
    /// Run a command in a VM's container.
    Exec(cli::exec::ExecArgs),
    /// List VMs, or the container objects inside one.
    Ls(cli::ls::LsArgs),
    /// List the processes of a VM's container.
    Ps(cli::ps::PsArgs),
    /// Mount a file system into a VM's container.
    Mount(cli::mount::MountArgs),
    /// Forward a host TCP port to a port inside a VM's container.
    PortForward(cli::port_forward::PortForwardArgs),
    /// Add or list keys in a container's keyring.
    Key(cli::key::KeyArgs),
    /// Send a signal to every process of a VM's container.
    Kill(cli::control::KillArgs),
    /// Freeze every process of a VM's container.
    Freeze(cli::control::NameArgs),
    /// Thaw a frozen container.
    Thaw(cli::control::NameArgs),
    /// Shut a VM down.
    Stop(cli::stop::StopArgs),
    /// Remove stopped VMs.
    Rm(cli::rm::RmArgs),
    /// Print a VM's guest console.
    Logs(cli::logs::LogsArgs),
    /// Build root filesystem images.
    Image(cli::image::ImageArgs),
    /// Boot a kernel in a microVM in the foreground and run it until the guest ends.
    Run(cli::run::RunArgs),
    /// Upcall helper programs shipped with capsule.
    Helper(cli::helper::HelperArgs),
    /// The per-VM supervisor that `create` starts (internal).
    #[command(name = "__supervise", hide = true)]
    Supervise(cli::supervise::SuperviseArgs),
    /// Serve the vsock device to QEMU as a vhost-user-vsock backend.
    VsockBackend(cli::vsock_backend::VsockBackendArgs),
}

fn main() -> ExitCode {
    logger::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Create(args) => cli::create::run(args),
        Command::Exec(args) => cli::exec::run(args),
        Command::Ls(args) => cli::ls::run(args),
        Command::Ps(args) => cli::ps::run(args),
        Command::Mount(args) => cli::mount::run(args),
        Command::PortForward(args) => cli::port_forward::run(args),
        Command::Key(args) => cli::key::run(args),
        Command::Kill(args) => cli::control::kill(args),
        Command::Freeze(args) => cli::control::freeze(args),
        Command::Thaw(args) => cli::control::thaw(args),
        Command::Stop(args) => cli::stop::run(args),
        Command::Rm(args) => cli::rm::run(args),
        Command::Logs(args) => cli::logs::run(args),
        Command::Helper(args) => cli::helper::run(args),
        Command::Image(args) => cli::image::run(args),
        Command::Supervise(args) => cli::supervise::run(args),
        Command::Run(args) => cli::run::run(args),
        Command::VsockBackend(args) => {
            cli::vsock_backend::run(args).unwrap_or_else(|e| cli::fail(&e))
        }
    }
}
