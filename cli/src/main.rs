//! `capsule`: runs each container in its own KVM microVM.

mod commands;
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

// Parsed once per run: a large variant costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Boot a microVM and create a container object in it.
    Create(commands::create::CreateArgs),
    /// Run a command in a VM's container.
    Exec(commands::exec::ExecArgs),
    /// List VMs, or the container objects inside one.
    Ls(commands::ls::LsArgs),
    /// List the processes of a VM's container.
    Ps(commands::ps::PsArgs),
    /// Mount a file system into a VM's container.
    Mount(commands::mount::MountArgs),
    /// Define, list and remove host networks for VMs.
    Network(commands::network::NetworkArgs),
    /// Forward a host TCP port to a port inside a VM's container.
    PortForward(commands::port_forward::PortForwardArgs),
    /// Add or list keys in a container's keyring.
    Key(commands::key::KeyArgs),
    /// Send a signal to every process of a VM's container.
    Kill(commands::control::KillArgs),
    /// Freeze every process of a VM's container.
    Freeze(commands::control::NameArgs),
    /// Thaw a frozen container.
    Thaw(commands::control::NameArgs),
    /// Kill every process of a container and start a fresh init (same namespaces, root,
    /// cgroup, keyring).
    Reboot(commands::control::NameArgs),
    /// Add or list further container objects in a running VM (pods).
    Container(commands::container::ContainerArgs),
    /// Give a container namespaces of other containers of its VM.
    ShareNs(commands::configure::ShareNsArgs),
    /// Move a container to another cgroup v2 directory of the guest.
    Cgroup(commands::configure::CgroupArgs),
    /// Set the root directory of processes started in a container from now on.
    SetRoot(commands::configure::SetRootArgs),
    /// Hand a guest LSM a security policy for one container.
    Policy(commands::configure::PolicyArgs),
    /// Set the devices a container's members may open.
    Devices(commands::configure::DevicesArgs),
    /// Shut a VM down.
    Stop(commands::stop::StopArgs),
    /// Remove stopped VMs.
    Rm(commands::rm::RmArgs),
    /// Print a VM's guest console.
    Logs(commands::logs::LogsArgs),
    /// Build root filesystem images.
    Image(commands::image::ImageArgs),
    /// Boot a kernel in a microVM in the foreground and run it until the guest ends.
    Run(commands::run::RunArgs),
    /// Upcall helper programs shipped with capsule.
    Helper(commands::helper::HelperArgs),
    /// The per-VM supervisor that `create` starts (internal).
    #[command(name = capsule_host::supervisor::SUPERVISE_COMMAND, hide = true)]
    Supervise(commands::SuperviseArgs),
    /// capsule's VMM as its own process, started by a VM's supervisor (internal).
    #[command(name = capsule_host::machine::kvm::VMM_COMMAND, hide = true)]
    Vmm(commands::VmmArgs),
    /// Serve the vsock device to QEMU as a vhost-user-vsock backend.
    VsockBackend(commands::vsock_backend::VsockBackendArgs),
}

fn main() -> ExitCode {
    logger::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Create(args) => commands::create::run(args),
        Command::Exec(args) => commands::exec::run(args),
        Command::Ls(args) => commands::ls::run(args),
        Command::Ps(args) => commands::ps::run(args),
        Command::Mount(args) => commands::mount::run(args),
        Command::Network(args) => commands::network::run(args),
        Command::PortForward(args) => commands::port_forward::run(args),
        Command::Key(args) => commands::key::run(args),
        Command::Kill(args) => commands::control::kill(args),
        Command::Freeze(args) => commands::control::freeze(args),
        Command::Thaw(args) => commands::control::thaw(args),
        Command::Reboot(args) => commands::control::reboot(args),
        Command::Container(args) => commands::container::run(args),
        Command::ShareNs(args) => commands::configure::share_ns(args),
        Command::Cgroup(args) => commands::configure::cgroup(args),
        Command::SetRoot(args) => commands::configure::set_root(args),
        Command::Policy(args) => commands::configure::policy(args),
        Command::Devices(args) => commands::configure::devices(args),
        Command::Stop(args) => commands::stop::run(args),
        Command::Rm(args) => commands::rm::run(args),
        Command::Logs(args) => commands::logs::run(args),
        Command::Helper(args) => commands::helper::run(args),
        Command::Image(args) => commands::image::run(args),
        Command::Supervise(args) => commands::supervise(args),
        Command::Vmm(args) => commands::vmm(args),
        Command::Run(args) => commands::run::run(args),
        Command::VsockBackend(args) => {
            commands::vsock_backend::run(args).unwrap_or_else(|e| commands::fail(&e))
        }
    }
}
