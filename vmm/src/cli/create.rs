//! `capsule create`: boot a microVM and create a container object in it.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use protocol::methods::{AddKey, CreateContainer, Mount};
use protocol::pb;
use vmm::machine::{select_backend, BackendChoice, Disk};
use vmm::state::{default_root, Phase, StateDir};
use vmm::supervisor::VmSpec;

use super::common::{self, KeySpec, VolumeSpec, DEFAULT_FLAGS};
use super::defaults;

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  capsule create demo\n  capsule create web --rootfs root.ext4 \
    --volume data.ext4:/data --memory 512\n  capsule create db --key user:db-password=./secret \
    --upcall dns_resolver=/usr/local/bin/my-resolver"
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

    /// Mount the --rootfs image read-write (default: read-only).
    #[arg(long, requires = "rootfs")]
    rootfs_rw: bool,

    /// Another image mounted in the container: IMAGE:/path[:ro]. Repeatable.
    #[arg(long = "volume", value_name = "IMAGE:/PATH[:ro]")]
    volumes: Vec<String>,

    /// container_create() flags: comma-separated names (fs, empty-fs, cgroup, uts, ipc, user,
    /// pid, net, kill-on-close, cloexec) or a number.
    #[arg(long, default_value = DEFAULT_FLAGS)]
    flags: String,

    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,

    /// Guest memory in MiB.
    #[arg(long, value_name = "MiB", default_value_t = 256)]
    memory: u64,

    /// Which machine runs the VM; auto uses capsule's KVM VMM on hardware virtualization and
    /// QEMU's software CPU elsewhere.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,

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

    /// Extra guest kernel parameters.
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,

    /// Seconds to wait for the guest agent.
    #[arg(long, value_name = "SECS", default_value_t = 180)]
    timeout: u64,
}

/// Everything `create` checks before booting anything.
struct Plan {
    flags: u32,
    keys: Vec<KeySpec>,
    volumes: Vec<VolumeSpec>,
    rootfs_type: Option<&'static str>,
    volume_types: Vec<&'static str>,
    upcalls: BTreeMap<String, PathBuf>,
}

fn plan(args: &CreateArgs) -> Result<Plan> {
    vmm::state::validate_name(&args.name)?;
    let flags = common::parse_flags(&args.flags)?;
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
    let rootfs_type = args
        .rootfs
        .as_deref()
        .map(common::detect_fstype)
        .transpose()?;
    let volume_types = volumes
        .iter()
        .map(|v| common::detect_fstype(&v.image))
        .collect::<Result<Vec<_>>>()?;
    let mut upcalls = BTreeMap::new();
    upcalls.insert("dns_resolver".to_string(), dns_helper_wrapper()?);
    for spec in &args.upcalls {
        let Some((key_type, prog)) = spec.split_once('=') else {
            bail!("invalid --upcall {spec:?}: expected TYPE=PROGRAM");
        };
        if key_type.is_empty() {
            bail!("invalid --upcall {spec:?}: empty key type");
        }
        if prog == "none" {
            upcalls.remove(key_type);
            continue;
        }
        let prog = PathBuf::from(prog);
        if !prog.is_file() {
            bail!(
                "upcall helper {} for key type {key_type} does not exist",
                prog.display()
            );
        }
        upcalls.insert(key_type.to_string(), prog);
    }
    for path in [args.kernel.as_ref(), args.initrd.as_ref()]
        .into_iter()
        .flatten()
    {
        if !path.is_file() {
            bail!("{} does not exist or is not a file", path.display());
        }
    }
    Ok(Plan {
        flags,
        keys,
        volumes,
        rootfs_type,
        volume_types,
        upcalls,
    })
}

/// The shipped DNS-resolver helper as a program path the upcall router can run: a small script
/// next to the state root that calls `capsule helper dns-resolver`.
fn dns_helper_wrapper() -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().context("cannot find the capsule binary")?;
    let root = default_root();
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let path = root.join(".dns-resolver-helper");
    let script = format!("#!/bin/sh\nexec '{}' helper dns-resolver\n", exe.display());
    if std::fs::read_to_string(&path).ok().as_deref() != Some(script.as_str()) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &script)
            .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)))
            .and_then(|_| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(path)
}

pub fn run(args: CreateArgs) -> ExitCode {
    match create(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(&e),
    }
}

fn create(args: CreateArgs) -> Result<()> {
    let plan = plan(&args)?;
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => defaults::kernel()?,
    };
    let initrd = match &args.initrd {
        Some(i) => i.clone(),
        None => defaults::initramfs()?,
    };
    let (backend, why) = select_backend(args.backend);
    eprintln!("capsule: backend {backend}: {why}");

    let mut disks = Vec::new();
    if let Some(rootfs) = &args.rootfs {
        disks.push(Disk {
            path: absolute(rootfs)?,
            read_only: !args.rootfs_rw,
        });
    }
    for v in &plan.volumes {
        disks.push(Disk {
            path: absolute(&v.image)?,
            read_only: v.read_only,
        });
    }

    let vm = StateDir::create(&default_root(), &args.name)?;
    let spec = VmSpec {
        name: args.name.clone(),
        backend,
        backend_reason: why,
        kernel: absolute(&kernel)?,
        initrd: Some(absolute(&initrd)?),
        disks,
        cmdline_extra: args.cmdline.clone().unwrap_or_default(),
        cpus: args.cpus,
        memory_mib: args.memory,
        guest_cid: 3,
        upcalls: plan.upcalls.clone(),
        upcall_timeout_secs: args.upcall_timeout,
    };
    vm.write_json(&vm.config_path(), &spec)?;
    spawn_supervisor(&vm)?;
    if let Err(e) = wait_until_running(&vm, Duration::from_secs(args.timeout)) {
        return Err(e.context(format!(
            "VM {} did not start; `capsule logs {}` shows its console, `capsule rm {}` removes it",
            args.name, args.name, args.name
        )));
    }
    if let Err(e) = setup_container(&vm, &args, &plan) {
        // The VM is useless without its container: do not leave it holding the name.
        super::stop::stop_vm(&vm, Duration::from_secs(10), true).ok();
        let _ = vm.remove();
        return Err(e);
    }
    println!("{}", args.name);
    Ok(())
}

fn absolute(path: &std::path::Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("invalid path {}", path.display()))
}

/// Starts `capsule __supervise DIR` in its own session, detached from this terminal.
fn spawn_supervisor(vm: &StateDir) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the capsule binary")?;
    let log_path = vm.supervisor_log_path();
    let log =
        File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("__supervise")
        .arg(vm.dir())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if std::env::var_os("CAPSULE_LOG").is_none() {
        cmd.env("CAPSULE_LOG", "info");
    }
    // SAFETY: setsid() is async-signal-safe and only detaches the child from our session, so
    // the VM survives the terminal that created it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().context("cannot start the VM supervisor")?;
    Ok(())
}

fn wait_until_running(vm: &StateDir, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let mut last_note = Instant::now();
    loop {
        if let Ok(status) = vm.status() {
            match status.phase {
                Phase::Running => return Ok(()),
                Phase::Dead | Phase::Stopped => bail!(
                    "the VM is {}: {}",
                    status.phase.name(),
                    status.reason.unwrap_or_default()
                ),
                Phase::Starting => {}
            }
        }
        if start.elapsed() > timeout {
            super::stop::stop_vm(vm, Duration::from_secs(5), true).ok();
            bail!(
                "the guest agent did not answer within {} s",
                timeout.as_secs()
            );
        }
        if last_note.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "capsule: still booting {} ({} s)",
                vm.name(),
                start.elapsed().as_secs()
            );
            last_note = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn setup_container(vm: &StateDir, args: &CreateArgs, plan: &Plan) -> Result<()> {
    let client = common::connect(&vm.vsock_path())?;
    let (root, root_source, root_fstype, root_options) = match plan.rootfs_type {
        Some(fstype) => (
            pb::RootKind::RootBlock,
            "/dev/vda".to_string(),
            fstype.to_string(),
            if args.rootfs_rw { "rw" } else { "ro" }.to_string(),
        ),
        None => (
            pb::RootKind::RootInitramfs,
            String::new(),
            String::new(),
            String::new(),
        ),
    };
    client
        .call::<CreateContainer>(&pb::CreateContainerRequest {
            name: args.name.clone(),
            flags: plan.flags,
            root: root as i32,
            root_source,
            root_fstype,
            root_options,
            hostname: String::new(),
        })
        .with_context(|| format!("cannot create container {}", args.name))?;
    for key in &plan.keys {
        client
            .call::<AddKey>(&pb::AddKeyRequest {
                container: args.name.clone(),
                key_type: key.key_type.clone(),
                description: key.description.clone(),
                payload: key.payload.clone(),
            })
            .with_context(|| format!("cannot add key {}:{}", key.key_type, key.description))?;
    }
    let first_volume_disk = usize::from(plan.rootfs_type.is_some());
    for (i, (volume, fstype)) in plan.volumes.iter().zip(&plan.volume_types).enumerate() {
        let device = format!("/dev/vd{}", (b'a' + (first_volume_disk + i) as u8) as char);
        client
            .call::<Mount>(&pb::MountRequest {
                container: args.name.clone(),
                fstype: fstype.to_string(),
                source: device,
                options: if volume.read_only { "ro" } else { "rw" }.to_string(),
                target: volume.target.clone(),
                mkdir: true,
            })
            .with_context(|| {
                format!(
                    "cannot mount {} at {}",
                    volume.image.display(),
                    volume.target
                )
            })?;
    }
    Ok(())
}
