//! Machine backends behind one interface: capsule's own KVM VMM, or QEMU (software CPU or KVM)
//! with capsule's vhost-user vsock backend. Both present the guest the same devices that matter
//! (serial console, virtio-vsock, virtio-blk) and the host the same hybrid-vsock socket.

pub mod kvm;
pub mod qemu;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::console::PanicWatch;
use crate::exit::ExitReason;
use crate::host::KvmFlavor;

/// Errors while starting a machine.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    Build(#[from] crate::builder::BuildError),
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

/// What to run, independent of the backend.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Kernel parameters beyond each backend's own defaults.
    pub cmdline_extra: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The hybrid-vsock socket host programs connect to.
    pub vsock_uds: PathBuf,
    pub guest_cid: u32,
    /// Block devices, in the order the guest sees them (vda, vdb, ...).
    pub disks: Vec<Disk>,
    /// Where the guest console goes.
    pub console: PathBuf,
    /// Scratch directory for backend sockets.
    pub run_dir: PathBuf,
}

/// Which machine runs a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// capsule's VMM on /dev/kvm.
    Kvm,
    /// QEMU microvm with its software CPU (TCG).
    QemuTcg,
    /// QEMU microvm on /dev/kvm.
    QemuKvm,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Kvm => "kvm",
            Backend::QemuTcg => "qemu-tcg",
            Backend::QemuKvm => "qemu-kvm",
        })
    }
}

/// The user's choice on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
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
pub fn select_backend(choice: BackendChoice) -> (Backend, String) {
    select_backend_for(choice, KvmFlavor::detect(), Path::new("/dev/kvm").exists())
}

fn select_backend_for(
    choice: BackendChoice,
    flavor: KvmFlavor,
    dev_kvm: bool,
) -> (Backend, String) {
    match choice {
        BackendChoice::Kvm => (Backend::Kvm, "capsule KVM VMM, as requested".into()),
        BackendChoice::QemuTcg => (
            Backend::QemuTcg,
            "QEMU microvm with its software CPU, as requested".into(),
        ),
        BackendChoice::QemuKvm => (Backend::QemuKvm, "QEMU microvm on KVM, as requested".into()),
        BackendChoice::Auto if !dev_kvm => (
            Backend::QemuTcg,
            "QEMU with its software CPU: this host has no /dev/kvm".into(),
        ),
        BackendChoice::Auto => match flavor {
            KvmFlavor::Pvm => (
                Backend::QemuTcg,
                "QEMU with its software CPU: /dev/kvm here is kvm-pvm (no VMX/SVM), which runs a \
                 Linux guest under instruction emulation, far slower than QEMU's TCG"
                    .into(),
            ),
            KvmFlavor::Hardware | KvmFlavor::Unknown => (
                Backend::Kvm,
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

/// How a machine run ended, with the console's panic line if the guest kernel panicked.
pub struct MachineEnd {
    pub reason: ExitReason,
    pub panic: Option<String>,
}

/// Runs `config` on `backend` until the guest ends.
pub fn run(backend: Backend, config: &MachineConfig) -> Result<MachineEnd, MachineError> {
    let (reason, watch): (ExitReason, PanicWatch) = match backend {
        Backend::Kvm => kvm::run(config)?,
        Backend::QemuTcg => qemu::run(config, qemu::Accel::Tcg)?,
        Backend::QemuKvm => qemu::run(config, qemu::Accel::Kvm)?,
    };
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
        let pick = |flavor, dev| select_backend_for(BackendChoice::Auto, flavor, dev);
        assert_eq!(pick(KvmFlavor::Hardware, true).0, Backend::Kvm);
        let (backend, why) = pick(KvmFlavor::Pvm, true);
        assert_eq!(backend, Backend::QemuTcg);
        assert!(why.contains("kvm-pvm"));
        let (backend, why) = pick(KvmFlavor::Hardware, false);
        assert_eq!(backend, Backend::QemuTcg);
        assert!(why.contains("no /dev/kvm"));
    }

    #[test]
    fn explicit_choices_are_kept() {
        for (choice, backend) in [
            (BackendChoice::Kvm, Backend::Kvm),
            (BackendChoice::QemuTcg, Backend::QemuTcg),
            (BackendChoice::QemuKvm, Backend::QemuKvm),
        ] {
            assert_eq!(select_backend_for(choice, KvmFlavor::Pvm, true).0, backend);
        }
    }
}
