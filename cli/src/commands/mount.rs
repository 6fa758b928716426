//! `capsule mount`: mount a file system into a VM's container.

use std::process::ExitCode;

use anyhow::Context;
use capsule_protocol::methods::Mount;
use capsule_protocol::pb;
use clap::Args;

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  capsule mount web --type tmpfs /scratch\n  capsule mount web \
    --type ext4 --source /dev/vdb -o ro /data\n  capsule mount web --type bind --source /opt /opt"
)]
pub struct MountArgs {
    /// The VM.
    name: String,
    /// The container (default: the VM's own).
    #[arg(short, long)]
    container: Option<String>,
    /// File system type ("tmpfs", "ext4", "erofs", "proc", "bind", ...).
    #[arg(short = 't', long = "type")]
    fstype: String,
    /// Device, directory (for bind) or "none".
    #[arg(long, default_value = "none")]
    source: String,
    /// Comma-separated mount options (ro, nosuid, nodev, noexec, ... and file system options).
    #[arg(short, long, default_value = "")]
    options: String,
    /// Do not create the target directory if it is missing.
    #[arg(long)]
    no_mkdir: bool,
    /// Absolute path inside the container ("/" mounts the container's root).
    target: String,
}

pub fn run(args: MountArgs) -> ExitCode {
    let result = super::common::agent(&args.name).and_then(|(_, client)| {
        client
            .call::<Mount>(&pb::MountRequest {
                container: super::common::container_or_vm(&args.name, &args.container).to_string(),
                fstype: args.fstype.clone(),
                source: args.source.clone(),
                options: args.options.clone(),
                target: args.target.clone(),
                mkdir: !args.no_mkdir,
                subdir: String::new(),
            })
            .with_context(|| {
                format!(
                    "cannot mount {} ({}) at {}",
                    args.source, args.fstype, args.target
                )
            })?;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(&e),
    }
}
