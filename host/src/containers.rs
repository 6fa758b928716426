//! The container objects of a running VM beyond the one [`crate::vm::create`] makes, and the
//! operations on a container's fd: [`Vm::add_container`] creates a further container in the
//! VM (a pod: one VM, its containers sharing the first one's net, ipc and uts namespaces),
//! [`Vm::containers`] lists them (`/proc/containers` of the guest), and
//! [`Vm::share_namespaces`], [`Vm::reboot_container`], [`Vm::set_cgroup`], [`Vm::set_root`],
//! [`Vm::set_policy`], [`Vm::set_devices`] are the kernel's `CONTAINER_IOC_*` operations;
//! [`Vm::finish_root`] is the last step of an OCI bundle's root (devices, masked and
//! read-only paths).
//!
//! A VM's first container has the VM's name; every call here names its container.

use capsule_protocol::methods::{
    CreateContainer, FinishRoot, ListContainers, RebootContainer, SetCgroup, SetDevices,
    SetNamespaces, SetPolicy, SetRoot,
};
use capsule_protocol::{pb, ClientError, Method};

use crate::vm::{AgentError, Vm};

/// A further container of a running VM.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    /// container_create() flags ([`capsule_protocol::container::flags`]).
    pub flags: u32,
    /// A directory of the guest bind-mounted as the container's root (needs `NEW_FS_NS`);
    /// `None` shares the guest's root (the initramfs). Images are attached to a VM when it
    /// is created (`--rootfs`, `--volume`); a directory of them can be a later root.
    pub root_dir: Option<String>,
    /// Hostname in a new UTS namespace; empty: the name.
    pub hostname: String,
    /// Namespaces taken from other containers of the VM before the init starts.
    pub share_ns: Vec<pb::NamespaceShare>,
    /// The devices the container's members may open; empty: no list.
    pub devices: Vec<pb::DeviceRule>,
}

/// Why an operation on a VM's container failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("cannot {op} container {container} of VM {vm}")]
    Call {
        op: &'static str,
        vm: String,
        container: String,
        #[source]
        source: Box<ClientError>,
    },
    #[error("cannot list the containers of VM {vm}")]
    List {
        vm: String,
        #[source]
        source: Box<ClientError>,
    },
}

impl ContainerError {
    /// The agent's answer behind the error, if it came from the agent.
    pub fn rpc(&self) -> Option<&capsule_protocol::RpcError> {
        match self {
            ContainerError::Call { source, .. } | ContainerError::List { source, .. } => {
                source.rpc()
            }
            ContainerError::Agent(_) => None,
        }
    }
}

impl Vm {
    fn container_call<M: Method>(
        &self,
        op: &'static str,
        container: &str,
        request: &M::Request,
    ) -> Result<M::Response, ContainerError> {
        let client = self.agent()?;
        client
            .call::<M>(request)
            .map_err(|source| ContainerError::Call {
                op,
                vm: self.name().to_string(),
                container: container.to_string(),
                source: Box::new(source),
            })
    }

    /// Creates a further container in the VM and starts its init.
    pub fn add_container(
        &self,
        spec: &ContainerSpec,
    ) -> Result<pb::CreateContainerResponse, ContainerError> {
        let (root, root_source) = match &spec.root_dir {
            Some(dir) => (pb::RootKind::RootDirectory, dir.clone()),
            None => (pb::RootKind::RootInitramfs, String::new()),
        };
        self.container_call::<CreateContainer>(
            "create",
            &spec.name,
            &pb::CreateContainerRequest {
                name: spec.name.clone(),
                flags: spec.flags,
                root: root as i32,
                root_source,
                root_fstype: String::new(),
                root_options: String::new(),
                hostname: spec.hostname.clone(),
                share_ns: spec.share_ns.clone(),
                devices: spec.devices.clone(),
            },
        )
    }

    /// The VM's containers as the guest kernel lists them (the agent's own first).
    pub fn containers(&self) -> Result<Vec<pb::ContainerInfo>, ContainerError> {
        let client = self.agent()?;
        Ok(client
            .call::<ListContainers>(&pb::ListContainersRequest {})
            .map_err(|source| ContainerError::List {
                vm: self.name().to_string(),
                source: Box::new(source),
            })?
            .containers)
    }

    /// Gives `container` namespaces of other containers of the VM, for processes started
    /// from now on (pid and mnt only before its init started: refused after).
    pub fn share_namespaces(
        &self,
        container: &str,
        shares: &[pb::NamespaceShare],
    ) -> Result<(), ContainerError> {
        self.container_call::<SetNamespaces>(
            "set the namespaces of",
            container,
            &pb::SetNamespacesRequest {
                container: container.to_string(),
                shares: shares.to_vec(),
            },
        )?;
        Ok(())
    }

    /// Kills every member of `container` and starts a fresh init with the same namespaces,
    /// root, cgroup and keyring; returns the new init's pid.
    pub fn reboot_container(&self, container: &str) -> Result<i32, ContainerError> {
        Ok(self
            .container_call::<RebootContainer>(
                "reboot",
                container,
                &pb::ContainerRef {
                    container: container.to_string(),
                },
            )?
            .init_pid)
    }

    /// Moves `container` (every member and later ones) to the cgroup v2 directory `path`,
    /// relative to the agent's cgroup root in the guest (created if missing).
    pub fn set_cgroup(&self, container: &str, path: &str) -> Result<(), ContainerError> {
        self.container_call::<SetCgroup>(
            "move",
            container,
            &pb::SetCgroupRequest {
                container: container.to_string(),
                path: path.to_string(),
            },
        )?;
        Ok(())
    }

    /// Makes the directory `path` (inside the container) the root of processes started in
    /// `container` from now on.
    pub fn set_root(&self, container: &str, path: &str) -> Result<(), ContainerError> {
        self.container_call::<SetRoot>(
            "set the root of",
            container,
            &pb::SetRootRequest {
                container: container.to_string(),
                path: path.to_string(),
            },
        )?;
        Ok(())
    }

    /// Hands the guest LSM `lsm` a policy for `container`, in that LSM's format.
    pub fn set_policy(
        &self,
        container: &str,
        lsm: &str,
        policy: &[u8],
    ) -> Result<(), ContainerError> {
        self.container_call::<SetPolicy>(
            "set the security policy of",
            container,
            &pb::SetPolicyRequest {
                container: container.to_string(),
                lsm: lsm.to_string(),
                policy: policy.to_vec(),
            },
        )?;
        Ok(())
    }

    /// Replaces the list of devices the members of `container` may open (empty: no list).
    pub fn set_devices(
        &self,
        container: &str,
        devices: &[pb::DeviceRule],
    ) -> Result<(), ContainerError> {
        self.container_call::<SetDevices>(
            "set the device list of",
            container,
            &pb::SetDevicesRequest {
                container: container.to_string(),
                devices: devices.to_vec(),
            },
        )?;
        Ok(())
    }

    /// Finishes the root of `req.container` after its mounts and before its first process:
    /// default devices in its tmpfs `/dev`, masked paths, read-only paths, a read-only root.
    pub fn finish_root(&self, req: pb::FinishRootRequest) -> Result<(), ContainerError> {
        let container = req.container.clone();
        self.container_call::<FinishRoot>("finish the root of", &container, &req)?;
        Ok(())
    }
}
