//! The jail of a VM's machine process, set up by its supervisor and the process itself.
//!
//! capsule's VMM (`capsule __vmm`) starts as root in a PID namespace of its own (the
//! supervisor's machine thread unshares it before it forks), then [`enter`]s its jail: new
//! mount, IPC and UTS namespaces, a tmpfs root on `<state>/jail` holding only the kernel, the
//! initrd and the disks (bind mounts, read-only where the disk is), the VM's sockets directory
//! as `/run`, and device nodes owned by the VM's uid; `pivot_root` into it, then the root is
//! made read-only. The VMM builds the VM there (opening everything it needs), and only then
//! [`drop_privileges`]: rlimits, every capability out of the bounding set, the VM's own uid and
//! gid, no supplementary groups, no capabilities, no_new_privs; its threads then install their
//! seccomp filters. QEMU gets the same uid through `-runas`. Both run in the VM's cgroup
//! ([`crate::cgroup`]).
//!
//! uids come from a configurable range ([`uids`]), one per VM, recorded in the VM's state
//! directory and in a host-wide registry, so that two VMs never share one.

mod enter;
pub mod uids;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::machine::MachineConfig;

pub use enter::{drop_privileges, enter, unshare_pid_namespace, Rlimits};
pub use uids::UidRange;

/// Errors of setting up a jail; each names the step, file or setting.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("invalid uid range {0:?}: expected FIRST-LAST with 0 < FIRST <= LAST")]
    Range(String),
    #[error("no free uid in {first}-{last}: every one is held by a VM (registry {dir})")]
    NoFreeUid { first: u32, last: u32, dir: PathBuf },
    #[error("cannot use the uid registry {0}")]
    Registry(PathBuf, #[source] std::io::Error),
    #[error("cannot {what} for the jail")]
    Setup {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("{path} is outside the VM's sockets directory {sockets}")]
    SocketOutside { path: PathBuf, sockets: PathBuf },
}

impl JailError {
    fn setup(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
        let what = what.into();
        move |source| JailError::Setup { what, source }
    }
}

/// A VM's jail, as its supervisor hands it to the machine (part of [`MachineConfig`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jail {
    /// The VM's own uid and gid (one number).
    pub uid: u32,
    /// The directory capsule's VMM mounts its root on (`<state>/jail`; empty on the host).
    pub root: PathBuf,
    /// The host directory of the VM's sockets (`<state>/run`), `/run` inside the jail.
    pub sockets: PathBuf,
    /// The VM's cgroup under [`crate::cgroup::PARENT`]; `None` where this host's cgroup2 has
    /// no memory and cpu controllers.
    pub cgroup: Option<String>,
}

/// Where things are inside the jail.
pub mod inside {
    pub const KERNEL: &str = "/kernel";
    pub const INITRD: &str = "/initrd";
    pub const SOCKETS: &str = "/run";
    /// The device nodes the VMM may need: KVM, TUN (only with a NIC), urandom.
    pub const DEVICES: [&str; 3] = ["/dev/kvm", "/dev/net/tun", "/dev/urandom"];

    pub fn disk(index: usize) -> String {
        format!("/disk{index}")
    }
}

/// A host file bound into the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub host: PathBuf,
    /// Absolute path inside the jail.
    pub inside: PathBuf,
    pub read_only: bool,
    /// A directory (the sockets) rather than a file.
    pub dir: bool,
}

/// The names of the directories [`prepare`] makes in a state directory.
pub const ROOT_DIR: &str = "jail";
pub const SOCKETS_DIR: &str = "run";

/// The jail of VM `name` whose state directory is `state_dir`: a uid claimed from `range`, its
/// cgroup where this host offers one (else a warning in the supervisor log), and, for
/// capsule's VMM (`own_root`), the directories of its root and its sockets. QEMU keeps its
/// sockets in the state directory.
pub fn prepare(
    name: &str,
    state_dir: &Path,
    range: UidRange,
    own_root: bool,
) -> Result<Jail, JailError> {
    let uid = uids::claim(range, state_dir)?;
    let cgroup = match crate::cgroup::mount() {
        Ok(_) => Some(cgroup_name(name, state_dir)),
        Err(e) => {
            log::warn!("VM {name}: runs without a cgroup of its own: {e}");
            None
        }
    };
    let root = state_dir.join(ROOT_DIR);
    let sockets = if own_root {
        let sockets = state_dir.join(SOCKETS_DIR);
        for dir in [&root, &sockets] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(dir)
                .and_then(|_| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)))
                .map_err(JailError::setup(format!("create {}", dir.display())))?;
        }
        sockets
    } else {
        state_dir.to_path_buf()
    };
    Ok(Jail {
        uid,
        root,
        sockets,
        cgroup,
    })
}

/// The cgroup of VM `name`: its name and a hash of its state directory, since VMs of other
/// state roots may have the same name.
pub fn cgroup_name(name: &str, state_dir: &Path) -> String {
    format!("{name}-{:08x}", uids::hash(state_dir) as u32)
}

/// Lets the VM's uid connect to the host socket at `path` (a host program's listener for
/// guest connections, `<vsock.sock>_<port>`).
pub fn give_socket(path: &Path, uid: u32) -> Result<(), JailError> {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).map_err(JailError::setup(format!(
        "give {} to uid {uid}",
        path.display()
    )))
}

/// Removes what [`prepare`] made once the machine has ended (the directories, when empty).
pub fn clean_up(jail: &Jail, state_dir: &Path) {
    for dir in [&jail.root, &jail.sockets] {
        if dir != state_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Gives back what VM `name` holds beyond its state directory (at `capsule rm`): its uid and
/// a cgroup left by a supervisor that was killed.
pub fn release(name: &str, state_dir: &Path) -> Result<(), JailError> {
    uids::release(state_dir)?;
    Ok(crate::cgroup::remove_stale(&cgroup_name(name, state_dir))?)
}

impl Jail {
    /// `path` (a socket in the sockets directory) as the VMM sees it.
    fn socket_inside(&self, path: &Path) -> Result<PathBuf, JailError> {
        path.strip_prefix(&self.sockets)
            .map(|rest| Path::new(inside::SOCKETS).join(rest))
            .map_err(|_| JailError::SocketOutside {
                path: path.to_path_buf(),
                sockets: self.sockets.clone(),
            })
    }

    /// `config` with the paths the VMM sees inside the jail, and the binds that put the files
    /// there. The console log is opened before the VMM enters the jail and is not among them.
    pub fn translate(
        &self,
        config: &MachineConfig,
    ) -> Result<(MachineConfig, Vec<Bind>), JailError> {
        let mut inner = config.clone();
        let mut binds = vec![Bind {
            host: config.kernel.clone(),
            inside: inside::KERNEL.into(),
            read_only: true,
            dir: false,
        }];
        inner.kernel = inside::KERNEL.into();
        if let Some(initrd) = &config.initrd {
            binds.push(Bind {
                host: initrd.clone(),
                inside: inside::INITRD.into(),
                read_only: true,
                dir: false,
            });
            inner.initrd = Some(inside::INITRD.into());
        }
        for (i, disk) in inner.disks.iter_mut().enumerate() {
            binds.push(Bind {
                host: disk.path.clone(),
                inside: inside::disk(i).into(),
                read_only: disk.read_only,
                dir: false,
            });
            disk.path = inside::disk(i).into();
        }
        binds.push(Bind {
            host: self.sockets.clone(),
            inside: inside::SOCKETS.into(),
            read_only: false,
            dir: true,
        });
        inner.vsock_uds = self.socket_inside(&config.vsock_uds)?;
        for share in &mut inner.shares {
            share.socket = self.socket_inside(&share.socket)?;
        }
        inner.run_dir = inside::SOCKETS.into();
        Ok((inner, binds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Disk, FsDevice};

    fn config() -> MachineConfig {
        MachineConfig {
            kernel: "/cache/vmlinux".into(),
            initrd: Some("/cache/initramfs.cpio".into()),
            cmdline_extra: String::new(),
            vcpus: 1,
            memory_mib: 128,
            vsock_uds: "/s/web/run/vsock.sock".into(),
            guest_cid: 3,
            disks: vec![
                Disk {
                    path: "/img/root.ext4".into(),
                    read_only: true,
                },
                Disk {
                    path: "/img/data.ext4".into(),
                    read_only: false,
                },
            ],
            nics: vec![],
            netns: None,
            shares: vec![FsDevice {
                tag: "capsule-fs0".into(),
                socket: "/s/web/run/fs0.sock".into(),
            }],
            console: "/s/web/console.log".into(),
            run_dir: "/s/web".into(),
            seccomp: true,
            jail: None,
        }
    }

    fn jail() -> Jail {
        Jail {
            uid: 900_123,
            root: "/s/web/jail".into(),
            sockets: "/s/web/run".into(),
            cgroup: None,
        }
    }

    #[test]
    fn paths_are_translated_into_the_jail() {
        let (inner, binds) = jail().translate(&config()).unwrap();
        assert_eq!(inner.kernel, Path::new("/kernel"));
        assert_eq!(inner.initrd.as_deref(), Some(Path::new("/initrd")));
        assert_eq!(inner.disks[0].path, Path::new("/disk0"));
        assert_eq!(inner.disks[1].path, Path::new("/disk1"));
        assert_eq!(inner.vsock_uds, Path::new("/run/vsock.sock"));
        assert_eq!(inner.shares[0].socket, Path::new("/run/fs0.sock"));
        assert_eq!(inner.console, Path::new("/s/web/console.log"));
        let ro: Vec<_> = binds
            .iter()
            .map(|b| (b.host.to_str().unwrap(), b.read_only))
            .collect();
        assert_eq!(
            ro,
            [
                ("/cache/vmlinux", true),
                ("/cache/initramfs.cpio", true),
                ("/img/root.ext4", true),
                ("/img/data.ext4", false),
                ("/s/web/run", false),
            ]
        );
    }

    #[test]
    fn a_socket_outside_the_sockets_directory_is_refused() {
        let mut config = config();
        config.vsock_uds = "/elsewhere/vsock.sock".into();
        let err = jail().translate(&config).unwrap_err().to_string();
        assert!(err.contains("/elsewhere/vsock.sock is outside"), "{err}");
    }
}
