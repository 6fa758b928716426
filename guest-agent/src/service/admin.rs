//! The container-object operations of the kernel's container fd ioctls (issue 16):
//! SetNamespaces, RebootContainer, SetCgroup, SetRoot, SetPolicy, SetDevices. Each validates
//! its request, finds the container, and hands the backend a checked value; the backend turns
//! the kernel's errno into a message that names the input.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use capsule_protocol::container::{namespace_clone_flag, namespace_name};
use capsule_protocol::validate;
use capsule_protocol::{pb, RpcError};

use super::{Agent, ContainerEntry};
use crate::backend::{Device, NsShare};
use crate::lock::lock;

/// The backend form of a checked device list.
pub(super) fn devices(rules: &[pb::DeviceRule]) -> Vec<Device> {
    rules
        .iter()
        .map(|r| Device {
            kind: if r.kind == pb::DeviceKind::DeviceBlock as i32 {
                b'b'
            } else {
                b'c'
            },
            major: r.major,
            minor: (!r.any_minor).then_some(r.minor),
        })
        .collect()
}

/// Where the cgroups of SetCgroup live: `<cgroup2 mount>/<the agent's cgroup>/capsule`.
fn cgroup_root() -> Result<std::path::PathBuf, RpcError> {
    crate::backend::mainline::default_cgroup_parent().ok_or_else(|| {
        RpcError::from_errno(
            libc::ENOENT,
            "no cgroup v2 hierarchy is mounted in the guest",
        )
        .with_field("path")
    })
}

impl Agent {
    /// The other containers of checked shares, each as an fd the backend can name.
    pub(super) fn resolve_shares(
        &self,
        field: &str,
        shares: &[pb::NamespaceShare],
    ) -> Result<Vec<NsShare>, RpcError> {
        shares
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let ns = pb::NamespaceType::try_from(s.ns).unwrap_or_default();
                let from =
                    self.container(&format!("{field}[{i}].from_container"), &s.from_container)?;
                let fd = from.ops.ns_fd().map_err(|e| {
                    RpcError::from(e).with_field(format!("{field}[{i}].from_container"))
                })?;
                Ok(NsShare {
                    nstype: namespace_clone_flag(ns),
                    ns_name: namespace_name(ns),
                    from: s.from_container.clone(),
                    fd: Arc::new(fd),
                })
            })
            .collect()
    }

    pub(super) async fn set_namespaces(
        self: &Arc<Self>,
        r: pb::SetNamespacesRequest,
    ) -> Result<pb::Empty, RpcError> {
        let c = self.container("container", &r.container)?;
        if r.shares.is_empty() {
            return Err(RpcError::invalid("shares", "no namespace to take"));
        }
        validate::namespace_shares("shares", &r.container, &r.shares)?;
        let shares = self.resolve_shares("shares", &r.shares)?;
        Self::blocking(move || {
            for (i, share) in shares.iter().enumerate() {
                c.ops
                    .set_namespace(share)
                    .map_err(|e| RpcError::from(e).with_field(format!("shares[{i}]")))?;
            }
            Ok(())
        })
        .await?;
        Ok(pb::Empty {})
    }

    pub(super) async fn reboot_container(
        self: &Arc<Self>,
        r: pb::ContainerRef,
    ) -> Result<pb::RebootContainerResponse, RpcError> {
        let c = self.container("container", &r.container)?;
        // From here on the old init's end is not the container's.
        let generation = c.init_generation.fetch_add(1, Ordering::AcqRel) + 1;
        let this = self.clone();
        let c2 = c.clone();
        let rebooted = Self::blocking(move || Ok(c2.ops.reboot(&this.reaper)?)).await;
        match rebooted {
            Ok(forked) => {
                let init_pid = forked.pid;
                self.watch_init(c, forked.exit, generation);
                Ok(pb::RebootContainerResponse { init_pid })
            }
            // Refused before anything was killed: the old init still runs and is watched.
            Err(e)
                if matches!(
                    e.errno,
                    libc::EOPNOTSUPP | libc::EPERM | libc::EDEADLK | libc::ENOTTY
                ) =>
            {
                c.init_generation.store(generation - 1, Ordering::Release);
                Err(e.with_field("container"))
            }
            Err(e) => {
                // The members may be gone already and nothing watches an init any more: a
                // failed reboot leaves the container dead.
                self.bury(c).await;
                Err(e.with_field("container"))
            }
        }
    }

    /// When a member called reboot(2) in the container's pid namespace, the kernel killed
    /// every member and left the container "rebooting" (not "dead") in /proc/containers: the
    /// agent starts a fresh init as RebootContainer does. Returns whether it did.
    pub(super) async fn restart_if_rebooting(
        self: &Arc<Self>,
        entry: &Arc<ContainerEntry>,
    ) -> bool {
        let rebooting = self
            .backend
            .list()
            .and_then(|rows| rows.ok())
            .is_some_and(|rows| {
                rows.iter()
                    .any(|r| !r.current && r.name == entry.name && r.state == "rebooting")
            });
        if !rebooting {
            return false;
        }
        let generation = entry.init_generation.fetch_add(1, Ordering::AcqRel) + 1;
        let this = self.clone();
        let e2 = entry.clone();
        match Self::blocking(move || Ok(e2.ops.reboot(&this.reaper)?)).await {
            Ok(forked) => {
                log::info!(
                    "container {} rebooted from inside: init {}",
                    entry.name,
                    forked.pid
                );
                self.watch_init(entry.clone(), forked.exit, generation);
                true
            }
            Err(e) => {
                log::warn!("container {}: restarting after reboot(2): {e}", entry.name);
                false
            }
        }
    }

    /// Marks a container dead, kills what is left of it and frees its name.
    pub(super) async fn bury(self: &Arc<Self>, entry: Arc<ContainerEntry>) {
        entry.dead.store(true, Ordering::Release);
        for (_, h) in lock(&entry.listeners).drain() {
            h.abort();
        }
        let e2 = entry.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = e2.ops.kill(libc::SIGKILL);
            e2.ops.cleanup();
        })
        .await;
        let mut table = lock(&self.containers);
        if table
            .get(&entry.name)
            .is_some_and(|c| Arc::ptr_eq(c, &entry))
        {
            table.remove(&entry.name);
        }
    }

    pub(super) async fn set_cgroup(
        self: &Arc<Self>,
        r: pb::SetCgroupRequest,
    ) -> Result<pb::Empty, RpcError> {
        let c = self.container("container", &r.container)?;
        validate::cgroup_path("path", &r.path)?;
        let dir = cgroup_root()?.join(&r.path);
        Self::blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| {
                RpcError::from_errno(
                    e.raw_os_error().unwrap_or(libc::EIO),
                    format!("creating cgroup {}: {e}", dir.display()),
                )
                .with_field("path")
            })?;
            c.ops
                .set_cgroup(&dir)
                .map_err(|e| RpcError::from(e).with_field("path"))
        })
        .await?;
        Ok(pb::Empty {})
    }

    pub(super) async fn set_root(
        self: &Arc<Self>,
        r: pb::SetRootRequest,
    ) -> Result<pb::Empty, RpcError> {
        let c = self.container("container", &r.container)?;
        validate::absolute_path("path", &r.path)?;
        Self::blocking(move || {
            c.ops
                .set_root(&r.path)
                .map_err(|e| RpcError::from(e).with_field("path"))
        })
        .await?;
        Ok(pb::Empty {})
    }

    pub(super) async fn set_policy(
        self: &Arc<Self>,
        r: pb::SetPolicyRequest,
    ) -> Result<pb::Empty, RpcError> {
        let c = self.container("container", &r.container)?;
        validate::policy(&r.lsm, &r.policy)?;
        Self::blocking(move || {
            c.ops
                .set_policy(&r.lsm, &r.policy)
                .map_err(|e| RpcError::from(e).with_field("policy"))
        })
        .await?;
        Ok(pb::Empty {})
    }

    pub(super) async fn set_devices(
        self: &Arc<Self>,
        r: pb::SetDevicesRequest,
    ) -> Result<pb::Empty, RpcError> {
        let c = self.container("container", &r.container)?;
        validate::device_rules("devices", &r.devices)?;
        let devices = devices(&r.devices);
        Self::blocking(move || {
            c.ops
                .set_devices(&devices)
                .map_err(|e| RpcError::from(e).with_field("devices"))
        })
        .await?;
        Ok(pb::Empty {})
    }
}
