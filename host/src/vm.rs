//! The VM lifecycle every front end uses: [`create`] (check, start the supervisor, wait for the
//! agent, set the container up), [`Vm::open`], [`Vm::agent`], [`Vm::stop`], [`Vm::remove`] and
//! [`list`]. A front end parses its input, calls these, and prints.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use capsule_protocol::methods::{AddKey, ConfigureNetwork, CreateContainer, Mount, Shutdown};
use capsule_protocol::{pb, Client, ClientError, HybridVsock};

use crate::machine::{select_machine, Disk, MachineChoice, MachineKind};
use crate::paths::{default_initramfs, default_kernel, MissingGuest};
use crate::share::{self, Share};
use crate::spec::{detect_fstype, SpecError, VmSpec};
use crate::state::{default_root, process_alive, Phase, StateDir, StateError, Status};
use crate::supervisor::{STOP_REQUESTED, SUPERVISE_COMMAND};

/// The key type of DNS lookups from the guest kernel, answered by default by the shipped
/// helper (`<program> helper dns-resolver`).
pub const DNS_RESOLVER: &str = "dns_resolver";

/// The guest CID every capsule VM gets (each VM has its own vsock device).
pub const GUEST_CID: u32 = 3;

/// A key added to the container's keyring before anything runs in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub key_type: String,
    pub description: String,
    pub payload: Vec<u8>,
}

/// Another image mounted in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub image: PathBuf,
    /// Absolute path inside the container.
    pub target: String,
    pub read_only: bool,
}

/// A host directory mounted in the container (`--share HOST_DIR:/path[:ro]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDir {
    pub host_dir: PathBuf,
    /// Absolute path inside the container.
    pub target: String,
    pub read_only: bool,
}

/// What a front end asks [`create`] for.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// Name of the VM and of its container.
    pub name: String,
    /// Guest kernel; `None` for the default one ([`crate::paths::default_kernel`]).
    pub kernel: Option<PathBuf>,
    /// Guest initramfs; `None` for the default one.
    pub initrd: Option<PathBuf>,
    /// Root filesystem image of the container; `None` keeps the initramfs as its root.
    pub rootfs: Option<PathBuf>,
    /// A host directory as the container's root (served over virtio-fs); excludes `rootfs`.
    pub rootfs_dir: Option<PathBuf>,
    /// With `rootfs_dir`: the directory below it (relative) that is the container's root.
    /// The VM's later containers can take other directories of the same share
    /// ([`crate::containers::ContainerSpec::root_in_share`]): a pod's containers.
    pub rootfs_subdir: Option<String>,
    /// Mount the root (`rootfs` or `rootfs_dir`) read-write.
    pub rootfs_writable: bool,
    /// Hostname of the container (`None`: the VM's name).
    pub hostname: Option<String>,
    pub volumes: Vec<Volume>,
    /// Host directories mounted in the container.
    pub shares: Vec<SharedDir>,
    /// container_create() flags ([`capsule_protocol::container::flags`]).
    pub flags: u32,
    /// The devices the container's members may open (empty: no list).
    pub devices: Vec<pb::DeviceRule>,
    pub keys: Vec<Key>,
    pub cpus: u32,
    pub memory_mib: u64,
    pub machine: MachineChoice,
    /// Upcall helper per key type on top of the default (`dns_resolver` answered by
    /// `<program> helper dns-resolver`); `None` removes a key type's helper.
    pub upcalls: BTreeMap<String, Option<PathBuf>>,
    pub upcall_timeout: Duration,
    /// Confine the VMM (`--no-seccomp` turns it off, for debugging).
    pub seccomp: bool,
    /// Jail the machine process (`--no-jail` turns it off, for debugging).
    pub jail: bool,
    /// The host network or namespace to join (`None`: `--net none`).
    pub network: Option<crate::network::Join>,
    /// Extra guest kernel parameters.
    pub cmdline: String,
    /// How long to wait for the guest agent.
    pub boot_timeout: Duration,
    /// How long one agent call may take.
    pub agent_timeout: Duration,
    /// The program the supervisor runs as (`<program> __supervise DIR`) and that ships the
    /// default upcall helpers (`<program> helper dns-resolver`).
    pub program: PathBuf,
}

/// Why a create failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("cannot jail the VM (${env})", env = crate::jail::uids::RANGE_ENV)]
    Jail(#[from] crate::jail::JailError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    MissingGuest(#[from] MissingGuest),
    #[error("invalid path {0}")]
    Path(PathBuf, #[source] std::io::Error),
    #[error(
        "--rootfs {image} and --rootfs-dir {dir} exclude each other: a container has one root"
    )]
    TwoRoots { image: PathBuf, dir: PathBuf },
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("cannot start the VM supervisor")]
    Supervisor(#[source] std::io::Error),
    #[error(
        "VM {name} did not start; `capsule logs {name}` shows its console, `capsule rm {name}` \
         removes it"
    )]
    DidNotStart {
        name: String,
        #[source]
        source: StartError,
    },
    #[error(transparent)]
    Setup(Box<SetupError>),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
}

/// Why a started VM never had a running agent.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the VM is {phase}: {reason}")]
    Ended { phase: &'static str, reason: String },
    #[error("the guest agent did not answer within {0} s")]
    Timeout(u64),
}

/// Why the container of a running VM could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Connect(ClientError),
    #[error("cannot create container {name}")]
    Container {
        name: String,
        #[source]
        source: ClientError,
    },
    #[error("cannot add key {key_type}:{description}")]
    Key {
        key_type: String,
        description: String,
        #[source]
        source: ClientError,
    },
    #[error("cannot set up the container's network interface ({address} on {network})")]
    Network {
        network: String,
        address: std::net::Ipv4Addr,
        #[source]
        source: ClientError,
    },
    #[error("cannot mount {} at {target}", image.display())]
    Mount {
        image: PathBuf,
        target: String,
        #[source]
        source: ClientError,
    },
}

/// Why the agent of a VM cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("VM {name} is {phase}{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    NotRunning {
        name: String,
        phase: &'static str,
        reason: Option<String>,
    },
    #[error("cannot reach the agent of VM {name}")]
    Unreachable {
        name: String,
        #[source]
        source: ClientError,
    },
}

/// Why a stop failed.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("VM {name} did not stop within {secs} s")]
    Timeout { name: String, secs: u64 },
}

/// Why a remove failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("VM {name} is {phase}: stop it first, or use rm --force")]
    Running { name: String, phase: &'static str },
    #[error(transparent)]
    Stop(#[from] StopError),
}

/// A create that passed every check and has started nothing yet.
#[derive(Debug)]
pub struct Prepared {
    spec: VmSpec,
    rootfs: Option<(&'static str, bool)>,
    volumes: Vec<(Volume, &'static str)>,
    rootfs_subdir: Option<String>,
    hostname: Option<String>,
    flags: u32,
    devices: Vec<pb::DeviceRule>,
    keys: Vec<Key>,
    network: Option<crate::network::Join>,
    boot_timeout: Duration,
    agent_timeout: Duration,
    program: PathBuf,
}

impl Prepared {
    /// The machine that will run the VM, and why it was chosen.
    pub fn machine(&self) -> (MachineKind, &str) {
        (self.spec.machine, &self.spec.machine_reason)
    }

    /// Creates the state directory, starts the supervisor, waits for the agent and creates
    /// the container; `booting` is called about every 10 s of waiting with the time so far.
    /// On failure after the boot nothing is left: the VM is stopped and its directory removed.
    pub fn start(mut self, mut booting: impl FnMut(Duration)) -> Result<Vm, CreateError> {
        let name = self.spec.name.clone();
        let state = StateDir::create(&default_root(), &name)?;
        if let Some(req) = &self.network {
            let networks = crate::network::store();
            match req.attach(&networks, &name, state.dir()) {
                Ok(att) => self.spec.network = Some(att),
                Err(e) => {
                    let _ = state.remove();
                    return Err(e.into());
                }
            }
        }
        if let Err(e) = state.write_json(&state.config_path(), &self.spec) {
            release_network(&self.spec);
            let _ = state.remove();
            return Err(e.into());
        }
        let vm = Vm {
            state,
            agent_timeout: self.agent_timeout,
        };
        spawn_supervisor(&vm.state, &self.program)?;
        if let Err(source) = vm.wait_until_running(self.boot_timeout, &mut booting) {
            return Err(CreateError::DidNotStart { name, source });
        }
        if let Err(e) = self.setup_container(&vm) {
            // The VM is useless without its container: do not leave it holding the name.
            vm.stop(2, Duration::from_secs(10), true).ok();
            release_network(&self.spec);
            let _ = vm.state.clone().remove();
            return Err(CreateError::Setup(e));
        }
        Ok(vm)
    }

    fn setup_container(&self, vm: &Vm) -> Result<(), Box<SetupError>> {
        let client = connect(&vm.state.vsock_path(), self.agent_timeout)
            .map_err(|e| Box::new(SetupError::Connect(e)))?;
        let name = &self.spec.name;
        let root_share = self.spec.shares.iter().find(|s| s.is_root());
        let (root, root_source, root_fstype, root_options) = match (root_share, self.rootfs) {
            (Some(share), _) => (
                pb::RootKind::RootVirtiofs,
                share.tag.clone(),
                String::new(),
                if share.read_only { "ro" } else { "rw" }.to_string(),
            ),
            (None, Some((fstype, writable))) => (
                pb::RootKind::RootBlock,
                "/dev/vda".to_string(),
                fstype.to_string(),
                if writable { "rw" } else { "ro" }.to_string(),
            ),
            (None, None) => (
                pb::RootKind::RootInitramfs,
                String::new(),
                String::new(),
                String::new(),
            ),
        };
        client
            .call::<CreateContainer>(&pb::CreateContainerRequest {
                name: name.clone(),
                flags: self.flags,
                root: root as i32,
                root_source,
                root_fstype,
                root_options,
                hostname: self.hostname.clone().unwrap_or_default(),
                share_ns: Vec::new(),
                devices: self.devices.clone(),
                root_subdir: self.rootfs_subdir.clone().unwrap_or_default(),
            })
            .map_err(|source| {
                Box::new(SetupError::Container {
                    name: name.clone(),
                    source,
                })
            })?;
        if let Some(att) = &self.spec.network {
            client
                .call::<ConfigureNetwork>(&network_request(name, att))
                .map_err(|source| {
                    Box::new(SetupError::Network {
                        network: att.network.clone(),
                        address: att.address,
                        source,
                    })
                })?;
        }
        for key in &self.keys {
            client
                .call::<AddKey>(&pb::AddKeyRequest {
                    container: name.clone(),
                    key_type: key.key_type.clone(),
                    description: key.description.clone(),
                    payload: key.payload.clone(),
                })
                .map_err(|source| {
                    Box::new(SetupError::Key {
                        key_type: key.key_type.clone(),
                        description: key.description.clone(),
                        source,
                    })
                })?;
        }
        let first_volume_disk = usize::from(self.rootfs.is_some());
        for (i, (volume, fstype)) in self.volumes.iter().enumerate() {
            let device = format!("/dev/vd{}", (b'a' + (first_volume_disk + i) as u8) as char);
            client
                .call::<Mount>(&pb::MountRequest {
                    container: name.clone(),
                    fstype: fstype.to_string(),
                    source: device,
                    options: if volume.read_only { "ro" } else { "rw" }.to_string(),
                    target: volume.target.clone(),
                    mkdir: true,
                    subdir: String::new(),
                })
                .map_err(|source| {
                    Box::new(SetupError::Mount {
                        image: volume.image.clone(),
                        target: volume.target.clone(),
                        source,
                    })
                })?;
        }
        for share in self.spec.shares.iter().filter(|s| !s.is_root()) {
            client
                .call::<Mount>(&pb::MountRequest {
                    container: name.clone(),
                    fstype: "virtiofs".to_string(),
                    source: share.tag.clone(),
                    options: if share.read_only { "ro" } else { "rw" }.to_string(),
                    target: share.target.clone(),
                    mkdir: true,
                    subdir: String::new(),
                })
                .map_err(|source| {
                    Box::new(SetupError::Mount {
                        image: share.host_dir.clone(),
                        target: share.target.clone(),
                        source,
                    })
                })?;
        }
        Ok(())
    }
}

/// Checks a create request completely, starting nothing: the VM's settings
/// ([`VmSpec::check`]), the images, the upcall helpers; resolves the default guest and the
/// machine. A refused request leaves no state directory.
pub fn prepare(req: CreateRequest) -> Result<Prepared, CreateError> {
    crate::state::validate_name(&req.name)?;
    let rootfs_type = req.rootfs.as_deref().map(detect_fstype).transpose()?;
    let volumes = req
        .volumes
        .iter()
        .map(|v| Ok((v.clone(), detect_fstype(&v.image)?)))
        .collect::<Result<Vec<_>, SpecError>>()?;
    // The helpers asked for; the shipped dns_resolver helper is added once all checks passed,
    // so a refused request writes nothing.
    let upcalls: BTreeMap<String, PathBuf> = req
        .upcalls
        .iter()
        .filter_map(|(key_type, helper)| Some((key_type.clone(), helper.clone()?)))
        .collect();
    for path in [req.kernel.as_ref(), req.initrd.as_ref()]
        .into_iter()
        .flatten()
    {
        if !path.is_file() {
            return Err(SpecError::MissingFile(path.clone()).into());
        }
    }
    let kernel = match &req.kernel {
        Some(k) => k.clone(),
        None => default_kernel()?,
    };
    let initrd = match &req.initrd {
        Some(i) => i.clone(),
        None => default_initramfs()?,
    };
    let mut disks = Vec::new();
    if let Some(rootfs) = &req.rootfs {
        disks.push(Disk {
            path: absolute(rootfs)?,
            read_only: !req.rootfs_writable,
        });
    }
    for (v, _) in &volumes {
        disks.push(Disk {
            path: absolute(&v.image)?,
            read_only: v.read_only,
        });
    }
    if let (Some(image), Some(dir)) = (&req.rootfs, &req.rootfs_dir) {
        return Err(CreateError::TwoRoots {
            image: image.clone(),
            dir: dir.clone(),
        });
    }
    let mut shares = Vec::new();
    if let Some(dir) = &req.rootfs_dir {
        shares.push(Share {
            host_dir: absolute(dir)?,
            target: share::ROOT_TARGET.to_string(),
            read_only: !req.rootfs_writable,
            tag: share::tag(0, true),
        });
    }
    for (i, s) in req.shares.iter().enumerate() {
        if s.target.trim_end_matches('/').is_empty() {
            let e = share::ShareError::RootTarget {
                host_dir: s.host_dir.clone(),
            };
            return Err(SpecError::from(e).into());
        }
        shares.push(Share {
            host_dir: absolute(&s.host_dir)?,
            target: s.target.clone(),
            read_only: s.read_only,
            tag: share::tag(i, false),
        });
    }
    let virtiofsd = if shares.is_empty() {
        None
    } else {
        crate::virtiofsd::find()
    };
    let (machine, machine_reason) = select_machine(req.machine);
    let mut spec = VmSpec {
        name: req.name,
        machine,
        machine_reason,
        kernel: absolute(&kernel)?,
        initrd: Some(absolute(&initrd)?),
        disks,
        cmdline_extra: req.cmdline,
        cpus: req.cpus,
        memory_mib: req.memory_mib,
        guest_cid: GUEST_CID,
        upcalls,
        upcall_timeout_secs: req.upcall_timeout.as_secs(),
        network: None,
        seccomp: req.seccomp,
        jail: if req.jail {
            Some(crate::jail::UidRange::from_env()?)
        } else {
            None
        },
        shares,
        virtiofsd,
    };
    spec.check()?;
    if let Some(net) = &req.network {
        net.check(&crate::network::store())?;
    }
    if !req.upcalls.contains_key(DNS_RESOLVER) {
        spec.upcalls
            .insert(DNS_RESOLVER.to_string(), dns_helper_wrapper(&req.program)?);
    }
    Ok(Prepared {
        spec,
        rootfs: rootfs_type.map(|t| (t, req.rootfs_writable)),
        volumes,
        rootfs_subdir: req.rootfs_subdir,
        hostname: req.hostname,
        flags: req.flags,
        devices: req.devices,
        keys: req.keys,
        network: req.network,
        boot_timeout: req.boot_timeout,
        agent_timeout: req.agent_timeout,
        program: req.program,
    })
}

/// Gives a VM's address back; a failure is logged (the lease is reclaimed later anyway, once
/// the VM's state directory is gone).
fn release_network(spec: &VmSpec) {
    if let Some(att) = &spec.network {
        if let Err(e) = crate::network::release(&crate::network::store(), att) {
            log::warn!("VM {}: cannot release {}: {e}", spec.name, att.address);
        }
    }
}

/// What the agent needs to set the container's interface up: the NIC by its MAC, the address,
/// the route through the gateway, the host's resolvers.
fn network_request(
    container: &str,
    att: &crate::network::Attachment,
) -> pb::ConfigureNetworkRequest {
    pb::ConfigureNetworkRequest {
        container: container.to_string(),
        interfaces: vec![pb::NetworkInterface {
            mac: crate::network::ipam::format_mac(&att.mac),
            name: "eth0".into(),
            address: att.address.to_string(),
            prefix_len: u32::from(att.subnet.prefix()),
            gateway: att.gateway.to_string(),
            mtu: att.mtu,
        }],
        nameservers: crate::network::host_nameservers(Path::new("/etc/resolv.conf"))
            .iter()
            .map(ToString::to_string)
            .collect(),
    }
}

/// [`prepare`] then [`Prepared::start`].
pub fn create(req: CreateRequest, booting: impl FnMut(Duration)) -> Result<Vm, CreateError> {
    prepare(req)?.start(booting)
}

fn absolute(path: &Path) -> Result<PathBuf, CreateError> {
    std::path::absolute(path).map_err(|e| CreateError::Path(path.to_path_buf(), e))
}

/// The shipped DNS-resolver helper as a program path the upcall router can run: a small script
/// next to the state root that calls `<program> helper dns-resolver`.
fn dns_helper_wrapper(program: &Path) -> Result<PathBuf, CreateError> {
    use std::os::unix::fs::PermissionsExt;
    let root = default_root();
    std::fs::create_dir_all(&root).map_err(|e| CreateError::Write(root.clone(), e))?;
    let path = root.join(".dns-resolver-helper");
    let script = format!(
        "#!/bin/sh\nexec '{}' helper dns-resolver\n",
        program.display()
    );
    if std::fs::read_to_string(&path).ok().as_deref() != Some(script.as_str()) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &script)
            .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)))
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| CreateError::Write(path.clone(), e))?;
    }
    Ok(path)
}

/// Starts `<program> __supervise DIR` in its own session, detached from this terminal.
fn spawn_supervisor(vm: &StateDir, program: &Path) -> Result<(), CreateError> {
    let log_path = vm.supervisor_log_path();
    let log = File::create(&log_path).map_err(|e| CreateError::Write(log_path.clone(), e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| CreateError::Write(log_path.clone(), e))?;
    let mut cmd = Command::new(program);
    cmd.arg(SUPERVISE_COMMAND)
        .arg(vm.dir())
        .stdin(Stdio::null())
        .stdout(log2)
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
    cmd.spawn().map_err(CreateError::Supervisor)?;
    Ok(())
}

/// Connects to the agent behind a hybrid-vsock socket; `timeout` bounds the handshake and
/// every call.
pub fn connect(vsock: &Path, timeout: Duration) -> Result<Client, ClientError> {
    let connector = HybridVsock::new(vsock).with_handshake_timeout(timeout);
    Ok(Client::connect(connector)?.with_timeout(timeout))
}

/// One VM, found by its state directory.
#[derive(Debug, Clone)]
pub struct Vm {
    state: StateDir,
    agent_timeout: Duration,
}

/// One line of [`list`].
#[derive(Debug)]
pub struct Listing {
    pub name: String,
    /// What the VM was created with (`None` when `config.json` is unreadable).
    pub spec: Option<VmSpec>,
    pub status: Result<Status, StateError>,
}

/// Every VM, sorted by name.
pub fn list() -> Result<Vec<Listing>, StateError> {
    Ok(StateDir::list(&default_root())?
        .into_iter()
        .map(|vm| Listing {
            name: vm.name().to_string(),
            spec: vm.read_json(&vm.config_path()).ok(),
            status: vm.status(),
        })
        .collect())
}

impl Vm {
    /// The VM named `name`; agent calls time out after `agent_timeout`.
    pub fn open(name: &str, agent_timeout: Duration) -> Result<Vm, StateError> {
        Vm::open_in(&default_root(), name, agent_timeout)
    }

    /// The VM named `name` under the state root `root` (what `$CAPSULE_STATE_DIR` names).
    pub fn open_in(root: &Path, name: &str, agent_timeout: Duration) -> Result<Vm, StateError> {
        Ok(Vm {
            state: StateDir::open(root, name)?,
            agent_timeout,
        })
    }

    pub fn name(&self) -> &str {
        self.state.name()
    }

    /// The VM's state directory (console log, sockets, status).
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    pub fn status(&self) -> Result<Status, StateError> {
        self.state.status()
    }

    /// The VM's place on a host network, if it has one.
    pub fn network(&self) -> Option<crate::network::Attachment> {
        self.state
            .read_json::<VmSpec>(&self.state.config_path())
            .ok()?
            .network
    }

    /// A client of the VM's agent; fails with the VM's state when it is not running.
    pub fn agent(&self) -> Result<Client, AgentError> {
        let status = self.state.status()?;
        let name = self.name().to_string();
        if status.phase != Phase::Running {
            return Err(AgentError::NotRunning {
                name,
                phase: status.phase.name(),
                reason: status.reason,
            });
        }
        connect(&self.state.vsock_path(), self.agent_timeout)
            .map_err(|source| AgentError::Unreachable { name, source })
    }

    fn wait_until_running(
        &self,
        timeout: Duration,
        booting: &mut dyn FnMut(Duration),
    ) -> Result<(), StartError> {
        let start = Instant::now();
        let mut last_note = Instant::now();
        loop {
            if let Ok(status) = self.state.status() {
                match status.phase {
                    Phase::Running => return Ok(()),
                    Phase::Dead | Phase::Stopped => {
                        return Err(StartError::Ended {
                            phase: status.phase.name(),
                            reason: status.reason.unwrap_or_default(),
                        })
                    }
                    Phase::Starting => {}
                }
            }
            if start.elapsed() > timeout {
                self.stop(2, Duration::from_secs(5), true).ok();
                return Err(StartError::Timeout(timeout.as_secs()));
            }
            if last_note.elapsed() > Duration::from_secs(10) {
                booting(start.elapsed());
                last_note = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks the agent to shut the guest down (processes get `grace` seconds after SIGTERM)
    /// and waits for the VM to end; with `force`, terminates the VMM (SIGTERM, then SIGKILL)
    /// when that does not happen within `timeout`.
    pub fn stop(&self, grace: u32, timeout: Duration, force: bool) -> Result<Status, StopError> {
        let vm = &self.state;
        let status = vm.status()?;
        if !matches!(status.phase, Phase::Starting | Phase::Running) {
            return Ok(status);
        }
        let marker = vm.dir().join(STOP_REQUESTED);
        std::fs::write(&marker, b"").map_err(|e| StopError::Write(marker, e))?;
        if status.phase == Phase::Running {
            if let Ok(client) = connect(&vm.vsock_path(), self.agent_timeout) {
                // The agent may be gone before it answers: the VM ending is what counts.
                let _ = client.call::<Shutdown>(&pb::ShutdownRequest {
                    grace_seconds: grace,
                });
            }
        }
        let deadline = Instant::now() + timeout + Duration::from_secs(u64::from(grace));
        while Instant::now() < deadline {
            let now = vm.status()?;
            if !matches!(now.phase, Phase::Starting | Phase::Running) {
                return Ok(now);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !force {
            return Err(StopError::Timeout {
                name: vm.name().to_string(),
                secs: timeout.as_secs(),
            });
        }
        if let Some(pid) = status.pid {
            for (signal, wait) in [(libc::SIGTERM, 5), (libc::SIGKILL, 5)] {
                if !process_alive(pid, status.pid_start_time) {
                    break;
                }
                // SAFETY: kill() has no memory-safety preconditions; the pid was checked to be
                // the VM's supervisor (same start time) just before.
                unsafe { libc::kill(pid as libc::pid_t, signal) };
                let until = Instant::now() + Duration::from_secs(wait);
                while process_alive(pid, status.pid_start_time) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let mut now = vm.status()?;
        let alive = status
            .pid
            .is_some_and(|pid| process_alive(pid, status.pid_start_time));
        if !alive && now.phase != Phase::Stopped {
            now.phase = Phase::Stopped;
            now.reason = Some("stopped by force: the guest did not shut down in time".into());
            vm.write_status(&now)?;
        }
        Ok(now)
    }

    /// Deletes the VM's state directory; a VM that still runs is refused unless `force`, which
    /// stops it first.
    pub fn remove(self, force: bool) -> Result<(), RemoveError> {
        let status = self.state.status()?;
        if matches!(status.phase, Phase::Starting | Phase::Running) {
            if !force {
                return Err(RemoveError::Running {
                    name: self.name().to_string(),
                    phase: status.phase.name(),
                });
            }
            self.stop(2, Duration::from_secs(10), true)?;
        }
        if let Ok(spec) = self.state.read_json::<VmSpec>(&self.state.config_path()) {
            release_network(&spec);
            if let Err(e) = crate::jail::release(&spec.name, self.state.dir()) {
                log::warn!("VM {}: {}", spec.name, capsule_vmm::exit::error_chain(&e));
            }
        }
        self.state.remove()?;
        Ok(())
    }
}
