//! `capsule create`: boot a microVM and create a container object in it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use capsule_host::network::{self, publish::Publish};
use capsule_host::vm::{self, CreateRequest};
use clap::Args;

use super::common::{self, DEFAULT_FLAGS};
use super::MachineArg;

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  capsule create demo\n  capsule create web --rootfs root.ext4 \
    --volume data.ext4:/data --memory 512\n  capsule create site --share ./site:/srv:ro\n  \
    capsule create tree --rootfs-dir ./rootfs\n  capsule create db --key user:db-password=./secret \
    --upcall dns_resolver=/usr/local/bin/my-resolver\n  capsule create web --publish 8080:80\n  \
    capsule create isolated --net none\n  capsule create sandbox --devices \
    'c 1:3,c 1:5,c 1:8,c 1:9,c 5:0,c 136:*'\n\nFurther containers in the VM: `capsule container add`."
)]
pub struct CreateArgs {
    /// Name of the VM and of its container (1-63 of [A-Za-z0-9_.-]).
    name: String,

    /// Guest kernel (default: the one scripts/build-guest.sh built).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,

    /// Guest initramfs holding the agent as /init (default: the one scripts/build-guest.sh built).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,

    /// Root filesystem image (ext4 or erofs) for the container; without it the container's root
    /// is the initramfs.
    #[arg(long, value_name = "IMAGE")]
    rootfs: Option<PathBuf>,

    /// A host directory as the container's root, served over virtio-fs by virtiofsd
    /// (scripts/install-virtiofsd.sh installs it).
    #[arg(long, value_name = "DIR", conflicts_with = "rootfs")]
    rootfs_dir: Option<PathBuf>,

    /// Mount the --rootfs image or --rootfs-dir directory read-write (default: read-only).
    #[arg(long)]
    rootfs_rw: bool,

    /// Another image mounted in the container: IMAGE:/path[:ro]. Repeatable.
    #[arg(long = "volume", value_name = "IMAGE:/PATH[:ro]")]
    volumes: Vec<String>,

    /// A host directory mounted in the container over virtio-fs: HOST_DIR:/path[:ro].
    /// Repeatable; one virtiofsd serves each.
    #[arg(long = "share", value_name = "HOST_DIR:/PATH[:ro]")]
    shares: Vec<String>,

    /// container_create() flags: comma-separated names (fs, empty-fs, cgroup, uts, ipc, user,
    /// pid, net, kill-on-close, cloexec) or a number.
    #[arg(long, default_value = DEFAULT_FLAGS)]
    flags: String,

    #[arg(long, value_name = "RULES", help = common::DEVICES_HELP)]
    devices: Option<String>,

    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,

    /// Guest memory in MiB.
    #[arg(long, value_name = "MiB", default_value_t = 256)]
    memory: u64,

    /// Which machine runs the VM; auto uses capsule's KVM VMM on hardware virtualization and
    /// QEMU's software CPU elsewhere.
    #[arg(long, value_enum, default_value_t = MachineArg::Auto)]
    backend: MachineArg,

    /// Host program answering a key type's upcalls: TYPE=PROGRAM, or TYPE=none. dns_resolver
    /// defaults to capsule's own resolver helper (`capsule helper dns-resolver`).
    #[arg(long = "upcall", value_name = "TYPE=PROG")]
    upcalls: Vec<String>,

    /// Seconds an upcall helper may run before its key is negated.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    upcall_timeout: u64,

    /// Add a key to the container's keyring before anything runs in it: TYPE:DESC=FILE.
    #[arg(long = "key", value_name = "TYPE:DESC=FILE")]
    keys: Vec<String>,

    /// Host network to join (`capsule network ls`), or `none` for only lo in the container.
    /// The network `default` (bridge capsule0, 10.88.0.0/16, NAT to the outside) is made on
    /// first use.
    #[arg(long, value_name = "NAME|none", default_value = capsule_host::network::DEFAULT_NETWORK)]
    net: String,

    /// Join the network namespace at PATH instead (one CNI made for a pod, or `ip netns add`):
    /// the container takes the address and MAC of the interface of its default route, joined
    /// to the VM's NIC by tc redirects.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["net", "ip", "publish"])]
    netns: Option<PathBuf>,

    /// The container's IPv4 address on its network (default: the lowest free one).
    #[arg(long, value_name = "ADDR")]
    ip: Option<String>,

    /// Forward a host port to the container: HOST_PORT:CONTAINER_PORT[/tcp|/udp], on every
    /// host address including 127.0.0.1. Repeatable.
    #[arg(short = 'p', long = "publish", value_name = "HOST:CONTAINER[/PROTO]")]
    publish: Vec<String>,

    /// Extra guest kernel parameters.
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,

    /// Run the VMM without its seccomp filters (QEMU: without -sandbox). For debugging only:
    /// a guest that escapes device emulation then has every system call.
    #[arg(long)]
    no_seccomp: bool,

    /// Run the VMM without its jail: as root, in the host's namespaces and root, without
    /// rlimits or a cgroup of its own (QEMU: without -runas). For debugging only.
    #[arg(long)]
    no_jail: bool,

    /// Seconds to wait for the guest agent.
    #[arg(long, value_name = "SECS", default_value_t = 180)]
    timeout: u64,
}

/// Turns the arguments into a request; the library checks it before booting anything.
fn request(args: CreateArgs) -> Result<CreateRequest> {
    let flags = common::parse_flags(&args.flags)?;
    let devices = match &args.devices {
        Some(spec) => common::parse_devices("--devices", spec)?,
        None => Vec::new(),
    };
    let keys = args
        .keys
        .iter()
        .map(|k| common::parse_key(k))
        .collect::<Result<Vec<_>>>()?;
    let volumes = args
        .volumes
        .iter()
        .map(|v| common::parse_volume(v))
        .collect::<Result<Vec<_>>>()?;
    if args.rootfs_rw && args.rootfs.is_none() && args.rootfs_dir.is_none() {
        bail!("--rootfs-rw needs --rootfs IMAGE or --rootfs-dir DIR");
    }
    let shares = args
        .shares
        .iter()
        .map(|v| common::parse_share(v))
        .collect::<Result<Vec<_>>>()?;
    let mut upcalls = BTreeMap::new();
    for spec in &args.upcalls {
        let Some((key_type, prog)) = spec.split_once('=') else {
            bail!("invalid --upcall {spec:?}: expected TYPE=PROGRAM");
        };
        if key_type.is_empty() {
            bail!("invalid --upcall {spec:?}: empty key type");
        }
        let helper = (prog != "none").then(|| PathBuf::from(prog));
        upcalls.insert(key_type.to_string(), helper);
    }
    let network = match &args.netns {
        Some(path) => Some(network::Join::Netns(path.clone())),
        None => network_request(&args.net, args.ip.as_deref(), &args.publish)?
            .map(network::Join::Network),
    };
    if args.no_seccomp {
        eprintln!("capsule: warning: --no-seccomp: the VMM runs without its seccomp filters");
    }
    if args.no_jail {
        eprintln!(
            "capsule: warning: --no-jail: the VMM runs as root in the host's namespaces, \
             without rlimits or a cgroup"
        );
    } else if let Err(e) = capsule_host::cgroup::mount() {
        eprintln!("capsule: warning: the VM gets no cgroup (no memory.max, cpu.max): {e}");
    }
    Ok(CreateRequest {
        seccomp: !args.no_seccomp,
        jail: !args.no_jail,
        network,
        name: args.name,
        kernel: args.kernel,
        initrd: args.initrd,
        rootfs: args.rootfs,
        rootfs_dir: args.rootfs_dir,
        rootfs_subdir: None,
        hostname: None,
        rootfs_writable: args.rootfs_rw,
        volumes,
        shares,
        flags,
        devices,
        keys,
        cpus: args.cpus,
        memory_mib: args.memory,
        machine: args.backend.into(),
        upcalls,
        upcall_timeout: Duration::from_secs(args.upcall_timeout),
        cmdline: args.cmdline.unwrap_or_default(),
        boot_timeout: Duration::from_secs(args.timeout),
        agent_timeout: common::agent_timeout(),
        program: std::env::current_exe().context("cannot find the capsule binary")?,
    })
}

/// `--net`, `--ip` and `--publish` as the library's request (`None` for `--net none`).
fn network_request(
    net: &str,
    ip: Option<&str>,
    publish: &[String],
) -> Result<Option<network::AttachRequest>> {
    let publish = publish
        .iter()
        .map(|p| p.parse::<Publish>())
        .collect::<Result<Vec<_>, _>>()?;
    if net == "none" {
        if ip.is_some() {
            return Err(network::NetworkError::AddressWithoutNetwork.into());
        }
        if !publish.is_empty() {
            return Err(network::NetworkError::PublishWithoutNetwork.into());
        }
        return Ok(None);
    }
    Ok(Some(network::AttachRequest {
        network: net.to_string(),
        address: ip.map(network::ipam::parse_address).transpose()?,
        publish,
    }))
}

pub fn run(args: CreateArgs) -> ExitCode {
    match create(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(&e),
    }
}

fn create(args: CreateArgs) -> Result<()> {
    let name = args.name.clone();
    let prepared = vm::prepare(request(args)?)?;
    let (machine, why) = prepared.machine();
    eprintln!("capsule: backend {machine}: {why}");
    let vm = prepared.start(|elapsed| {
        eprintln!("capsule: still booting {name} ({} s)", elapsed.as_secs());
    })?;
    if let Some(att) = vm.network() {
        eprintln!(
            "capsule: {} has {} on network {}",
            vm.name(),
            att.address,
            att.network
        );
    }
    println!("{}", vm.name());
    Ok(())
}
