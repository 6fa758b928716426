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
    /// Build root filesystem images.
    Image(cli::image::ImageArgs),
    /// Boot a kernel in a microVM and run it until the guest ends.
    Run(cli::run::RunArgs),
    /// Serve the vsock device to QEMU as a vhost-user-vsock backend.
    VsockBackend(cli::vsock_backend::VsockBackendArgs),
}

fn main() -> ExitCode {
    logger::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Image(args) => cli::image::run(args),
        Command::Run(args) => cli::run::run(args),
        Command::VsockBackend(args) => {
            cli::vsock_backend::run(args).unwrap_or_else(|e| cli::fail(&e))
        }
    }
}
