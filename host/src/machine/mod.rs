//! Machines behind one trait, [`Machine`]: capsule's own KVM VMM in this process ([`kvm`]), or
//! QEMU (software CPU or KVM) with capsule's vhost-user vsock backend ([`qemu`]). Both present
//! the guest the same devices that matter (serial console, virtio-vsock, virtio-blk) and the
//! host the same hybrid-vsock socket. [`MachineKind`] names one, [`MachineChoice`] is what a
//! front end asks for (`--backend auto`), [`select_machine`] resolves it and says why.

pub mod kvm;
pub mod qemu;
mod watchdog;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::console::PanicWatch;
use capsule_vmm::exit::ExitReason;
use capsule_vmm::kvm_flavor::KvmFlavor;

/// Errors while starting a machine.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    Build(#[from] capsule_vmm::builder::BuildError),
    #[error("{0} not found in PATH (scripts/install-deps.sh installs qemu-system-x86)")]
    QemuMissing(&'static str),
    #[error("cannot start {what}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the vhost-user vsock backend did not come up at {0}")]
    VhostUser(PathBuf),
    #[error("cannot enter the network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Jail(#[from] crate::jail::JailError),
    #[error("cannot set up the VM's cgroup")]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("cannot open the console log {path}")]
    Console {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A block device for the guest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
}

/// A network interface for the guest: a virtio-net device on an existing host TAP.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Nic {
    /// Name of the host TAP device (created by the host library before the machine starts).
    pub tap: String,
    /// The guest side's MAC address.
    pub mac: [u8; 6],
}

/// A virtio-fs device for the guest, served over vhost-user by a running virtiofsd.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FsDevice {
    /// The tag the guest mounts it by.
    pub tag: String,
    /// The daemon's vhost-user socket.
    pub socket: PathBuf,
}

/// What to run, independent of the machine.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MachineConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Kernel parameters beyond each machine's own defaults.
    pub cmdline_extra: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The hybrid-vsock socket host programs connect to.
    pub vsock_uds: PathBuf,
    pub guest_cid: u32,
    /// Block devices, in the order the guest sees them (vda, vdb, ...).
    pub disks: Vec<Disk>,
    /// Network interfaces, in the order the guest sees them (eth0, eth1, ...).
    pub nics: Vec<Nic>,
    /// The network namespace the machine runs in, where its TAPs are (`--netns`); `None`: the
    /// host's.
    pub netns: Option<PathBuf>,
    /// virtio-fs devices (host directories), each with its daemon already listening.
    pub shares: Vec<FsDevice>,
    /// Where the guest console goes.
    pub console: PathBuf,
    /// Scratch directory for the machine's own sockets.
    pub run_dir: PathBuf,
    /// Confine the VMM with its seccomp filters (capsule's VMM) or QEMU's sandbox.
    #[serde(default = "default_true")]
    pub seccomp: bool,
    /// The machine process's jail (uid, root, cgroup); `None` with `--no-jail`.
    #[serde(default)]
    pub jail: Option<crate::jail::Jail>,
}

fn default_true() -> bool {
    true
}

/// Which machine runs a guest (`backend` in a VM's `config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MachineKind {
    /// capsule's VMM on /dev/kvm.
    Kvm,
    /// QEMU microvm with its software CPU (TCG).
    QemuTcg,
    /// QEMU microvm on /dev/kvm.
    QemuKvm,
}

impl fmt::Display for MachineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MachineKind::Kvm => "kvm",
            MachineKind::QemuTcg => "qemu-tcg",
            MachineKind::QemuKvm => "qemu-kvm",
        })
    }
}

/// What a front end asks for (`--backend`); `Auto` is resolved by [`select_machine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineChoice {
    /// capsule's KVM VMM on hardware virtualization, QEMU's software CPU elsewhere.
    Auto,
    /// capsule's KVM VMM.
    Kvm,
    /// QEMU microvm, software CPU.
    QemuTcg,
    /// QEMU microvm on KVM.
    QemuKvm,
}

/// Resolves `choice` for this host, with a one-line explanation of why.
pub fn select_machine(choice: MachineChoice) -> (MachineKind, String) {
    select_machine_for(choice, KvmFlavor::detect(), Path::new("/dev/kvm").exists())
}

fn select_machine_for(
    choice: MachineChoice,
    flavor: KvmFlavor,
    dev_kvm: bool,
) -> (MachineKind, String) {
    match choice {
        MachineChoice::Kvm => (MachineKind::Kvm, "capsule KVM VMM, as requested".into()),
        MachineChoice::QemuTcg => (
            MachineKind::QemuTcg,
            "QEMU microvm with its software CPU, as requested".into(),
        ),
        MachineChoice::QemuKvm => (
            MachineKind::QemuKvm,
            "QEMU microvm on KVM, as requested".into(),
        ),
        MachineChoice::Auto if !dev_kvm => (
            MachineKind::QemuTcg,
            "QEMU with its software CPU: this host has no /dev/kvm".into(),
        ),
        MachineChoice::Auto => match flavor {
            KvmFlavor::Pvm => (
                MachineKind::QemuTcg,
                "QEMU with its software CPU: /dev/kvm here is kvm-pvm (no VMX/SVM), which runs a \
                 Linux guest under instruction emulation, far slower than QEMU's TCG"
                    .into(),
            ),
            KvmFlavor::Hardware | KvmFlavor::Unknown => (
                MachineKind::Kvm,
                "capsule KVM VMM: the host has hardware virtualization".into(),
            ),
        },
    }
}

/// Opens the guest console log for appending (a VM that is created again keeps its history).
fn open_console(path: &Path) -> Result<crate::console::ConsoleLog, MachineError> {
    std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
        .map(crate::console::ConsoleLog::new)
        .map_err(|source| MachineError::Console {
            path: path.to_path_buf(),
            source,
        })
}

/// The VM's cgroup for a machine whose own memory beyond the guest's is at most
/// `overhead_mib`; `None` when the VM has no jail or this host no cgroup for it.
fn cgroup_for(
    config: &MachineConfig,
    overhead_mib: u64,
) -> Result<Option<crate::cgroup::Cgroup>, MachineError> {
    let Some(name) = config.jail.as_ref().and_then(|j| j.cgroup.as_deref()) else {
        return Ok(None);
    };
    let limits = crate::cgroup::Limits {
        memory_max: (config.memory_mib + overhead_mib) << 20,
        cpus: config.vcpus,
    };
    Ok(Some(crate::cgroup::Cgroup::create(name, limits)?))
}

/// Removes a machine's cgroup once its process has been reaped.
fn remove_cgroup(cgroup: Option<crate::cgroup::Cgroup>) {
    if let Some(group) = cgroup {
        let dir = group.dir().to_path_buf();
        if let Err(e) = group.remove() {
            log::warn!("cannot remove the cgroup {}: {e}", dir.display());
        }
    }
}

/// How a machine run ended, with the console's panic line if the guest kernel panicked.
pub struct MachineEnd {
    pub reason: ExitReason,
    pub panic: Option<String>,
}

/// A machine that runs a guest to its end.
pub trait Machine {
    /// Runs `config` until the guest ends; the console log's panic watch tells why it died.
    fn run(&self, config: &MachineConfig) -> Result<(ExitReason, PanicWatch), MachineError>;
}

impl MachineKind {
    /// The machine of this kind.
    pub fn machine(self) -> Box<dyn Machine> {
        match self {
            MachineKind::Kvm => Box::new(kvm::KvmMachine),
            MachineKind::QemuTcg => Box::new(qemu::QemuMachine(qemu::Accel::Tcg)),
            MachineKind::QemuKvm => Box::new(qemu::QemuMachine(qemu::Accel::Kvm)),
        }
    }
}

/// Moves the calling thread (and so what it starts: the VMM's threads, QEMU) into the network
/// namespace at `path`, where the VM's TAP is.
fn enter_netns(path: &Path) -> Result<(), MachineError> {
    use std::os::fd::AsRawFd;
    let err = |source| MachineError::Netns {
        path: path.to_path_buf(),
        source,
    };
    let ns = std::fs::File::open(path).map_err(err)?;
    // SAFETY: setns on a descriptor we hold; it changes only this thread's network namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `config` on a machine of `kind` until the guest ends, on the calling thread.
pub fn run(kind: MachineKind, config: &MachineConfig) -> Result<MachineEnd, MachineError> {
    if let Some(path) = &config.netns {
        enter_netns(path)?;
    }
    let (reason, watch) = kind.machine().run(config)?;
    Ok(MachineEnd {
        reason,
        panic: watch.panic_line(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_kvm_only_on_hardware_virtualization() {
        let pick = |flavor, dev| select_machine_for(MachineChoice::Auto, flavor, dev);
        assert_eq!(pick(KvmFlavor::Hardware, true).0, MachineKind::Kvm);
        let (kind, why) = pick(KvmFlavor::Pvm, true);
        assert_eq!(kind, MachineKind::QemuTcg);
        assert!(why.contains("kvm-pvm"));
        let (kind, why) = pick(KvmFlavor::Hardware, false);
        assert_eq!(kind, MachineKind::QemuTcg);
        assert!(why.contains("no /dev/kvm"));
    }

    #[test]
    fn explicit_choices_are_kept() {
        for (choice, kind) in [
            (MachineChoice::Kvm, MachineKind::Kvm),
            (MachineChoice::QemuTcg, MachineKind::QemuTcg),
            (MachineChoice::QemuKvm, MachineKind::QemuKvm),
        ] {
            assert_eq!(select_machine_for(choice, KvmFlavor::Pvm, true).0, kind);
        }
    }
}
