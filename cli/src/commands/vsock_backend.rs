//! `capsule vsock-backend`: serve capsule's vsock device to QEMU as a vhost-user-vsock backend.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use capsule_vsock::{VsockConfig, DEFAULT_MAX_CONNECTIONS};
use clap::Args;

#[derive(Args, Debug)]
#[command(
    about = "Serve capsule's virtio-vsock device as a vhost-user backend (for QEMU)",
    long_about = "Serve capsule's virtio-vsock device as a vhost-user-vsock backend, so that \
    QEMU runs a capsule guest with the same host-side protocol as `capsule run`:\n\n  \
    qemu-system-x86_64 -M microvm,acpi=off,memory-backend=mem \\\n    \
    -object memory-backend-memfd,id=mem,size=256M,share=on \\\n    \
    -chardev socket,id=vu,path=SOCKET -device vhost-user-vsock-device,chardev=vu ...\n\n\
    Host programs reach the guest through --uds exactly as with Firecracker's hybrid vsock: \
    connect, send `CONNECT <port>\\n`, read `OK <host port>\\n`. Guest connections to host \
    port P are forwarded to a listener at `<uds>_P`."
)]
pub struct VsockBackendArgs {
    /// The vhost-user socket QEMU connects to (created; an existing file is replaced).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,

    /// The hybrid vsock Unix socket for host programs (must not exist).
    #[arg(long, value_name = "PATH")]
    uds: PathBuf,

    /// The guest's context id (at least 3).
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(3..=u64::from(u32::MAX)))]
    guest_cid: u64,

    /// Most simultaneous connections.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS as u16,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_connections: u16,
}

pub fn run(args: VsockBackendArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = VsockConfig::new(args.guest_cid, &args.uds);
    cfg.max_connections = usize::from(args.max_connections);
    capsule_vsock::vhost_user::serve(cfg, &args.socket).with_context(|| {
        format!(
            "vhost-user-vsock backend on {} (host sockets at {})",
            args.socket.display(),
            args.uds.display()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}
