//! `capsule run`: boot a kernel in a microVM in the foreground.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use capsule_vmm::builder::{MicroVm, VmConfig};
use capsule_vmm::devices::legacy::serial::ConsoleSink;
use capsule_vmm::devices::virtio::block::BlockConfig;
use capsule_vmm::devices::virtio::fs::FsConfig;
use capsule_vmm::kvm_flavor::{GuestProfile, KvmFlavor};
use clap::{Args, ValueEnum};

/// Guest kernel parameters for the kind of host (see `capsule run --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileChoice {
    /// nested-pvm on kvm-pvm hosts, none on hardware KVM.
    Auto,
    /// No host-specific parameters.
    None,
    /// Parameters for kvm-pvm hosts: noxsave clearcpuid=popcnt,smap,smep and the INT3
    /// self-test skip of capsule's guest kernel.
    NestedPvm,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: 0 when the guest powers off or reboots (a microVM does \
    not restart), 1 on a VMM error or bad input, 2 on a usage error, 3 when the guest \
    triple-faults or crashes, 4 when KVM cannot run the guest (internal error)."
)]
pub struct RunArgs {
    /// Guest kernel: an ELF vmlinux (booted via PVH when it has the PVH note) or a bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,

    /// Initial ramdisk loaded at the top of low guest memory.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,

    /// Extra kernel parameters, appended to capsule's defaults (console on ttyS0, reboot via
    /// the keyboard controller, no PCI, the virtio-mmio devices).
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,

    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u32,

    /// Guest memory in MiB.
    #[arg(long, value_name = "MiB", default_value_t = 128)]
    memory: u64,

    /// Write the guest's serial console to this file instead of standard output (without it,
    /// standard input is the console's input: type into the guest).
    #[arg(long, value_name = "PATH")]
    console: Option<PathBuf>,

    /// Do not attach the virtio-rng entropy device.
    #[arg(long)]
    no_rng: bool,

    /// Run without the VMM's seccomp filters (for debugging a filter; prints a warning).
    #[arg(long)]
    no_seccomp: bool,

    /// Attach a raw disk image as a virtio-blk device (vda, vdb, ... in order); append `:ro`
    /// for a read-only device.
    #[arg(long, value_name = "PATH[:ro]")]
    disk: Vec<String>,

    /// Attach a virtio-fs device served by a running vhost-user backend (virtiofsd) on SOCKET;
    /// the guest mounts it by TAG. Guest memory is then a shared memfd.
    #[arg(long = "virtiofs", value_name = "TAG=SOCKET")]
    virtiofs: Vec<String>,

    /// Host-specific guest kernel parameters.
    #[arg(long, value_enum, default_value_t = ProfileChoice::Auto)]
    guest_profile: ProfileChoice,

    /// Attach a virtio-vsock device whose host side is this Unix socket (Firecracker's hybrid
    /// vsock: connect, send `CONNECT <port>`; guest connections to port P go to `PATH_P`).
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,

    /// The guest's vsock context id (at least 3).
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(3..=u64::from(u32::MAX)))]
    vsock_cid: u64,
}

pub fn run(args: RunArgs) -> ExitCode {
    match build(args) {
        Ok(vm) => {
            let reason = vm.run();
            eprintln!("capsule: {reason}");
            ExitCode::from(reason.exit_code())
        }
        Err(e) => super::fail(&e),
    }
}

fn build(args: RunArgs) -> anyhow::Result<MicroVm> {
    // A console on the terminal is interactive: what is typed goes to the guest's serial port.
    let (console, console_input): (ConsoleSink, Option<File>) = match &args.console {
        Some(path) => (
            Box::new(
                File::create(path)
                    .with_context(|| format!("cannot create console file {}", path.display()))?,
            ),
            None,
        ),
        None => (Box::new(std::io::stdout()), interactive_stdin()?),
    };
    let profile = match args.guest_profile {
        ProfileChoice::Auto => GuestProfile::for_flavor(KvmFlavor::detect()),
        ProfileChoice::None => GuestProfile::None,
        ProfileChoice::NestedPvm => GuestProfile::NestedPvm,
    };
    let vm = MicroVm::build(VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline_extra: args.cmdline,
        vcpus: args.cpus,
        memory_mib: args.memory,
        console,
        console_input,
        rng: !args.no_rng,
        vsock: args
            .vsock_uds
            .map(|path| capsule_vsock::VsockConfig::new(args.vsock_cid, path)),
        disks: args.disk.iter().map(|spec| parse_disk(spec)).collect(),
        nics: Vec::new(),
        fs: args
            .virtiofs
            .iter()
            .map(|spec| parse_virtiofs(spec))
            .collect::<anyhow::Result<_>>()?,
        profile,
        seccomp: !args.no_seccomp,
    })?;
    log::info!("{}", vm.summary());
    Ok(vm)
}

/// Parses `TAG=SOCKET`.
fn parse_virtiofs(spec: &str) -> anyhow::Result<FsConfig> {
    match spec.split_once('=') {
        Some((tag, socket)) if !tag.is_empty() && !socket.is_empty() => Ok(FsConfig {
            tag: tag.to_string(),
            socket: PathBuf::from(socket),
        }),
        _ => anyhow::bail!("invalid --virtiofs {spec:?}: expected TAG=SOCKET"),
    }
}

/// Parses `PATH[:ro]`.
fn parse_disk(spec: &str) -> BlockConfig {
    let (path, read_only) = match spec.strip_suffix(":ro") {
        Some(path) => (path, true),
        None => (spec, false),
    };
    BlockConfig {
        path: PathBuf::from(path),
        read_only,
        direct: false,
        id: None,
    }
}

/// Standard input, when it is something a person or program can type into (a terminal, a pipe
/// or a socket); `None` for files and /dev/null, which have nothing to wait for.
fn interactive_stdin() -> anyhow::Result<Option<File>> {
    let stdin = std::io::stdin();
    let file_type = std::fs::File::from(stdin.as_fd().try_clone_to_owned()?)
        .metadata()?
        .file_type();
    use std::os::unix::fs::FileTypeExt;
    if std::io::IsTerminal::is_terminal(&stdin) || file_type.is_fifo() || file_type.is_socket() {
        Ok(Some(stdin.as_fd().try_clone_to_owned()?.into()))
    } else {
        Ok(None)
    }
}
