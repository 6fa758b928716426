//! Containers: CreateContainer, ListContainers, Mount, KillContainer, FreezeContainer,
//! ThawContainer, and the container table's entries (a container dies with its init; a
//! reboot, in [`super::admin`], gives it a new one).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use capsule_protocol::validate::{
    self, absolute_path, plain_string, MAX_OPTIONS_LEN, MAX_PATH_LEN,
};
use capsule_protocol::{pb, Code, RpcError};

use super::{check_signal, Agent};
use crate::backend::{flags, BackendError, Container, CreateSpec, MountSpec, RootSpec};
use crate::lock::lock;
use crate::reaper::ExitStatus;
use crate::sys;

/// Most live containers.
pub const MAX_CONTAINERS: usize = 256;

/// One live container.
pub struct ContainerEntry {
    pub name: String,
    pub flags: u32,
    pub ops: Box<dyn Container>,
    pub has_root: AtomicBool,
    pub dead: AtomicBool,
    /// Counts reboots: each init watches for its own generation.
    pub init_generation: AtomicU64,
    pub owner: (u32, u32),
    pub listeners: Mutex<HashMap<u64, tokio::task::JoinHandle<()>>>,
}

impl ContainerEntry {
    /// Fails unless the container has its root file system (a ROOT_NONE container gets it
    /// from a later Mount on "/").
    pub(super) fn require_root(&self) -> Result<(), RpcError> {
        if self.has_root.load(Ordering::Acquire) {
            return Ok(());
        }
        Err(RpcError::new(
            Code::FailedPrecondition,
            format!(
                "container {:?} has no root file system yet: mount one at /",
                self.name
            ),
        )
        .with_field("container"))
    }
}

impl Agent {
    pub(super) async fn create_container(
        self: &Arc<Self>,
        r: pb::CreateContainerRequest,
    ) -> Result<pb::CreateContainerResponse, RpcError> {
        let mut spec = validate_create(&r)?;
        spec.shares = self.resolve_shares("share_ns", &r.share_ns)?;
        let devices = super::admin::devices(&r.devices);
        {
            let table = lock(&self.containers);
            if table
                .get(&spec.name)
                .is_some_and(|c| !c.dead.load(Ordering::Acquire))
            {
                return Err(RpcError::from_errno(
                    libc::EEXIST,
                    format!("a container named {:?} exists", spec.name),
                )
                .with_field("name"));
            }
            if table.len() >= MAX_CONTAINERS {
                return Err(RpcError::new(
                    Code::ResourceExhausted,
                    format!("at most {MAX_CONTAINERS} containers"),
                ));
            }
        }
        let this = self.clone();
        let spec2 = spec.clone();
        let mut ops = Self::blocking(move || {
            let ops = this.backend.create(&spec2, &this.reaper)?;
            if !devices.is_empty() {
                if let Err(e) = ops.set_devices(&devices) {
                    let _ = ops.kill(libc::SIGKILL);
                    ops.cleanup();
                    return Err(RpcError::from(e).with_field("devices"));
                }
            }
            Ok(ops)
        })
        .await?;
        if spec.flags & flags::NEW_NET_NS != 0 {
            // A new network namespace starts with lo down; containers expect it up.
            if let Err(e) = ops
                .socket(libc::AF_INET, libc::SOCK_DGRAM)
                .and_then(|s| loopback_up(&s))
            {
                log::warn!("container {}: bringing lo up: {e}", spec.name);
            }
        }
        let init_exit = ops.take_init_exit();
        let entry = Arc::new(ContainerEntry {
            name: spec.name.clone(),
            flags: spec.flags,
            has_root: AtomicBool::new(spec.root != RootSpec::None),
            dead: AtomicBool::new(false),
            init_generation: AtomicU64::new(0),
            owner: sys::credentials(),
            listeners: Mutex::new(HashMap::new()),
            ops,
        });
        let resp = pb::CreateContainerResponse {
            id: entry.ops.id(),
            init_pid: entry.ops.init_pid(),
        };
        {
            let mut table = lock(&self.containers);
            if table
                .get(&spec.name)
                .is_some_and(|c| !c.dead.load(Ordering::Acquire))
            {
                return Err(
                    RpcError::from_errno(libc::EEXIST, "created concurrently").with_field("name")
                );
            }
            table.insert(spec.name.clone(), entry.clone());
        }
        if let Some(rx) = init_exit {
            self.watch_init(entry, rx, 0);
        }
        Ok(resp)
    }

    /// When the container's init dies, the container is dead: its members are killed, its
    /// resources released, its name freed. `generation` is the init's: the end of an init a
    /// reboot replaced is not the container's.
    pub(super) fn watch_init(
        self: &Arc<Self>,
        entry: Arc<ContainerEntry>,
        rx: tokio::sync::oneshot::Receiver<ExitStatus>,
        generation: u64,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let status = rx.await;
            if entry.init_generation.load(Ordering::Acquire) != generation {
                log::info!("container {} old init ended: {status:?}", entry.name);
                return;
            }
            log::info!("container {} init ended: {status:?}", entry.name);
            if this.restart_if_rebooting(&entry).await {
                return;
            }
            this.bury(entry).await;
        });
    }

    pub(super) async fn list_containers(
        self: &Arc<Self>,
        _: pb::ListContainersRequest,
    ) -> Result<pb::ListContainersResponse, RpcError> {
        let states: HashMap<String, String> = lock(&self.containers)
            .values()
            .map(|c| {
                let st = if c.dead.load(Ordering::Acquire) {
                    "dead"
                } else if c.ops.is_frozen() {
                    "frozen"
                } else {
                    "running"
                };
                (c.name.clone(), st.to_string())
            })
            .collect();
        if let Some(rows) = self.backend.list() {
            let rows = rows?;
            return Ok(pb::ListContainersResponse {
                containers: rows
                    .into_iter()
                    .map(|r| pb::ContainerInfo {
                        state: r.state,
                        name: r.name,
                        id: r.id,
                        use_count: r.use_count,
                        flags: r.flags,
                        owner_uid: r.uid,
                        owner_gid: r.gid,
                        current: r.current,
                    })
                    .collect(),
            });
        }
        let mut out = vec![pb::ContainerInfo {
            name: "<current>".into(),
            id: 1,
            use_count: 1,
            flags: 0,
            owner_uid: 0,
            owner_gid: 0,
            current: true,
            state: "running".into(),
        }];
        let table: Vec<Arc<ContainerEntry>> = lock(&self.containers).values().cloned().collect();
        let mut rows: Vec<pb::ContainerInfo> = table
            .iter()
            .map(|c| pb::ContainerInfo {
                name: c.name.clone(),
                id: c.ops.id(),
                use_count: c.ops.procs().len() as u32 + 1,
                flags: c.flags,
                owner_uid: c.owner.0,
                owner_gid: c.owner.1,
                current: false,
                state: states.get(&c.name).cloned().unwrap_or_default(),
            })
            .collect();
        rows.sort_by_key(|r| r.id);
        out.extend(rows);
        Ok(pb::ListContainersResponse { containers: out })
    }

    pub(super) async fn mount(
        self: &Arc<Self>,
        r: pb::MountRequest,
    ) -> Result<pb::Empty, RpcError> {
        let c = self.container("container", &r.container)?;
        if r.fstype.is_empty() {
            return Err(RpcError::invalid("fstype", "empty file system type"));
        }
        plain_string("fstype", &r.fstype, 64)?;
        plain_string("source", &r.source, MAX_PATH_LEN)?;
        if r.fstype == "bind" {
            absolute_path("source", &r.source)?;
        }
        if r.fstype == VIRTIOFS {
            validate::virtiofs_tag("source", &r.source)?;
        }
        plain_string("options", &r.options, MAX_OPTIONS_LEN)?;
        absolute_path("target", &r.target)?;
        if !r.subdir.is_empty() {
            if r.fstype == "bind" {
                return Err(RpcError::invalid(
                    "subdir",
                    "a bind mount names its source; subdir is for file systems",
                ));
            }
            validate::relative_path("subdir", &r.subdir)?;
        }
        let spec = MountSpec {
            fstype: guest_fstype(r.fstype),
            source: r.source,
            options: r.options,
            target: r.target,
            mkdir: r.mkdir,
            subdir: r.subdir,
        };
        let this = self.clone();
        let c2 = c.clone();
        let is_root = spec.target.trim_end_matches('/').is_empty();
        Self::blocking(move || {
            c2.ops.mount(&spec, &this.reaper)?;
            if is_root && c2.flags & flags::NEW_PID_NS != 0 && !c2.has_root.load(Ordering::Acquire)
            {
                crate::backend::mainline::mount_proc(c2.ops.as_ref(), &this.reaper)?;
            }
            Ok(())
        })
        .await?;
        if is_root {
            c.has_root.store(true, Ordering::Release);
        }
        Ok(pb::Empty {})
    }

    pub(super) async fn kill_container(
        self: &Arc<Self>,
        r: pb::KillContainerRequest,
    ) -> Result<pb::Empty, RpcError> {
        let c = self.container("container", &r.container)?;
        let sig = if r.signal == 0 {
            libc::SIGKILL
        } else {
            r.signal
        };
        check_signal("signal", sig)?;
        Self::blocking(move || Ok(c.ops.kill(sig)?)).await?;
        Ok(pb::Empty {})
    }

    pub(super) async fn freeze_container(
        self: &Arc<Self>,
        r: pb::ContainerRef,
    ) -> Result<pb::Empty, RpcError> {
        let c = self.container("container", &r.container)?;
        Self::blocking(move || Ok(c.ops.freeze()?)).await?;
        Ok(pb::Empty {})
    }

    pub(super) async fn thaw_container(
        self: &Arc<Self>,
        r: pb::ContainerRef,
    ) -> Result<pb::Empty, RpcError> {
        let c = self.container("container", &r.container)?;
        Self::blocking(move || Ok(c.ops.thaw()?)).await?;
        Ok(pb::Empty {})
    }
}

/// Sets IFF_UP on "lo" through a socket of the container's network namespace.
fn loopback_up(sock: &OwnedFd) -> crate::backend::Result<()> {
    sys::interface_up(sock, "lo").map_err(|e| BackendError::new(e, "setting lo up"))
}

/// The guest's file system type for a Mount's: OCI's "cgroup" is the v2 hierarchy here (the
/// guest has no v1 controllers).
fn guest_fstype(fstype: String) -> String {
    if fstype == "cgroup" {
        "cgroup2".into()
    } else {
        fstype
    }
}

/// The file system type of a virtio-fs device, mounted by its tag.
const VIRTIOFS: &str = "virtiofs";

/// Validates a CreateContainer request into a backend spec.
pub fn validate_create(r: &pb::CreateContainerRequest) -> Result<CreateSpec, RpcError> {
    validate::container_name("name", &r.name)?;
    let mut f = r.flags;
    if f & !flags::MASK != 0 {
        return Err(RpcError::invalid(
            "flags",
            format!("unknown flag bits {:#x}", f & !flags::MASK),
        ));
    }
    if f & flags::NEW_FS_NS != 0 && f & flags::NEW_EMPTY_FS_NS != 0 {
        return Err(RpcError::invalid(
            "flags",
            "NEW_FS_NS and NEW_EMPTY_FS_NS exclude each other",
        ));
    }
    let kind = pb::RootKind::try_from(r.root)
        .map_err(|_| RpcError::invalid("root", format!("unknown root kind {}", r.root)))?;
    let root = match kind {
        pb::RootKind::RootInitramfs => {
            if f & flags::NEW_EMPTY_FS_NS != 0 {
                return Err(RpcError::invalid("root", "NEW_EMPTY_FS_NS wants ROOT_NONE"));
            }
            RootSpec::Shared
        }
        pb::RootKind::RootBlock | pb::RootKind::RootDirectory => {
            if f & flags::NEW_FS_NS == 0 {
                return Err(RpcError::invalid(
                    "flags",
                    "a block-device or directory root needs CONTAINER_NEW_FS_NS",
                ));
            }
            absolute_path("root_source", &r.root_source)?;
            if kind == pb::RootKind::RootBlock {
                if r.root_fstype.is_empty() {
                    return Err(RpcError::invalid(
                        "root_fstype",
                        "a block-device root needs a file system type",
                    ));
                }
                plain_string("root_fstype", &r.root_fstype, 64)?;
                plain_string("root_options", &r.root_options, MAX_OPTIONS_LEN)?;
                RootSpec::Block {
                    source: r.root_source.clone(),
                    fstype: r.root_fstype.clone(),
                    options: r.root_options.clone(),
                    subdir: String::new(),
                }
            } else {
                RootSpec::Directory(r.root_source.clone())
            }
        }
        pb::RootKind::RootVirtiofs => {
            if f & flags::NEW_FS_NS == 0 {
                return Err(RpcError::invalid(
                    "flags",
                    "a virtio-fs root needs CONTAINER_NEW_FS_NS",
                ));
            }
            validate::virtiofs_tag("root_source", &r.root_source)?;
            plain_string("root_options", &r.root_options, MAX_OPTIONS_LEN)?;
            if !r.root_subdir.is_empty() {
                validate::relative_path("root_subdir", &r.root_subdir)?;
            }
            RootSpec::Block {
                source: r.root_source.clone(),
                fstype: VIRTIOFS.to_string(),
                options: r.root_options.clone(),
                subdir: r.root_subdir.clone(),
            }
        }
        pb::RootKind::RootNone => {
            if f & flags::NEW_FS_NS != 0 {
                return Err(RpcError::invalid(
                    "flags",
                    "ROOT_NONE wants NEW_EMPTY_FS_NS, not NEW_FS_NS",
                ));
            }
            f |= flags::NEW_EMPTY_FS_NS;
            RootSpec::None
        }
    };
    if !r.hostname.is_empty() {
        if f & flags::NEW_UTS_NS == 0 {
            return Err(RpcError::invalid(
                "hostname",
                "a hostname needs CONTAINER_NEW_UTS_NS",
            ));
        }
        plain_string("hostname", &r.hostname, 64)?;
        if r.share_ns
            .iter()
            .any(|s| s.ns == pb::NamespaceType::NsUts as i32)
        {
            return Err(RpcError::invalid(
                "hostname",
                "a hostname and a shared uts namespace exclude each other",
            ));
        }
    }
    validate::namespace_shares("share_ns", &r.name, &r.share_ns)?;
    validate::device_rules("devices", &r.devices)?;
    Ok(CreateSpec {
        name: r.name.clone(),
        flags: f,
        root,
        hostname: r.hostname.clone(),
        shares: Vec::new(),
    })
}
