//! A VM's configuration (`config.json`) and the one place it is checked: [`VmSpec::check`]
//! refuses bad settings for every machine and every front end before anything starts, so a
//! refused create leaves nothing behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use capsule_vmm::loader::LoaderError;
use capsule_vmm::memory::MemoryError;
use serde::{Deserialize, Serialize};

use crate::machine::{Disk, MachineKind};
use crate::share::{Share, ShareError};
use crate::state::{validate_name, StateError};

/// Most vCPUs of a VM on any machine (what an MP table can describe).
pub const MAX_CPUS: u32 = capsule_vmm::arch::mptable::MAX_CPUS as u32;
/// Lowest guest vsock context id (0-2 are reserved: hypervisor, local, host).
pub const MIN_GUEST_CID: u32 = 3;

/// What `capsule create` asked for: the VM's `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: String,
    #[serde(rename = "backend")]
    pub machine: MachineKind,
    /// Why this machine (shown by `capsule ls -l` and in the supervisor log).
    #[serde(rename = "backend_reason")]
    pub machine_reason: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub cmdline_extra: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub guest_cid: u32,
    /// Upcall helper program per key type.
    #[serde(default)]
    pub upcalls: BTreeMap<String, PathBuf>,
    pub upcall_timeout_secs: u64,
    /// Host directories in the container (`--share`, `--rootfs-dir` as the one with target
    /// `/`), each served by its own virtiofsd.
    #[serde(default)]
    pub shares: Vec<Share>,
    /// The virtiofsd that serves them ([`crate::virtiofsd::find`]); `None` when not found.
    #[serde(default)]
    pub virtiofsd: Option<PathBuf>,
    /// The VM's place on a host network (`None`: `--net none`, only lo in the guest).
    #[serde(default)]
    pub network: Option<crate::network::Attachment>,
    /// Confine the VMM (seccomp filters; QEMU's sandbox). Off only with `--no-seccomp`.
    #[serde(default = "confined")]
    pub seccomp: bool,
    /// Jail the machine process (its own uid from this range, namespaces, cgroup). `None` only
    /// with `--no-jail`.
    #[serde(default = "jailed")]
    pub jail: Option<crate::jail::UidRange>,
}

fn jailed() -> Option<crate::jail::UidRange> {
    Some(crate::jail::uids::DEFAULT)
}

fn confined() -> bool {
    true
}

/// Why a VM configuration was refused; each error names the setting or file.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    Name(#[from] StateError),
    #[error("invalid cpus {0}: a VM has 1 to {MAX_CPUS} vCPUs")]
    Cpus(u32),
    #[error("invalid memory {mib} MiB")]
    Memory {
        mib: u64,
        #[source]
        source: MemoryError,
    },
    #[error("invalid guest CID {0}: it must be at least {MIN_GUEST_CID}")]
    GuestCid(u32),
    #[error("{0} does not exist or is not a file")]
    MissingFile(PathBuf),
    /// The kernel or initrd is not loadable, or does not fit the VM's memory.
    #[error(transparent)]
    Guest(#[from] LoaderError),
    #[error("invalid upcall key type {0:?}: it is empty")]
    UpcallKeyType(String),
    #[error("upcall helper {path} for key type {key_type} does not exist")]
    MissingHelper { key_type: String, path: PathBuf },
    #[error("cannot open image {path}")]
    Image {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {0} is neither ext4 nor erofs (build one with `capsule image build`)")]
    UnknownFsType(PathBuf),
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error(
        "virtiofsd is not installed (looked at {0}): install it with scripts/install-virtiofsd.sh"
    )]
    VirtiofsdMissing(String),
    #[error("virtiofsd {0} does not exist or is not a file (check ${env})", env = crate::virtiofsd::ENV)]
    VirtiofsdNotAFile(PathBuf),
}

impl VmSpec {
    /// Checks every setting before anything starts: the name, vCPUs, memory, the guest CID,
    /// that the kernel, initrd, disks and upcall helpers exist, the shares (host directories,
    /// targets, and that virtiofsd is there to serve them), and that the kernel and initrd
    /// load into the VM's memory (with the VMM's own loader, whatever the machine).
    pub fn check(&self) -> Result<(), SpecError> {
        validate_name(&self.name)?;
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(SpecError::Cpus(self.cpus));
        }
        if self.guest_cid < MIN_GUEST_CID {
            return Err(SpecError::GuestCid(self.guest_cid));
        }
        let files = std::iter::once(&self.kernel)
            .chain(&self.initrd)
            .chain(self.disks.iter().map(|d| &d.path));
        for path in files {
            if !path.is_file() {
                return Err(SpecError::MissingFile(path.clone()));
            }
        }
        for (key_type, path) in &self.upcalls {
            if key_type.is_empty() {
                return Err(SpecError::UpcallKeyType(key_type.clone()));
            }
            if !path.is_file() {
                return Err(SpecError::MissingHelper {
                    key_type: key_type.clone(),
                    path: path.clone(),
                });
            }
        }
        crate::share::check(&self.shares)?;
        if !self.shares.is_empty() {
            match &self.virtiofsd {
                None => {
                    return Err(SpecError::VirtiofsdMissing(
                        crate::virtiofsd::search_description(),
                    ))
                }
                Some(p) if !p.is_file() => return Err(SpecError::VirtiofsdNotAFile(p.clone())),
                Some(_) => {}
            }
        }
        let memory = |source| SpecError::Memory {
            mib: self.memory_mib,
            source,
        };
        // Loading the guest into memory of the VM's size is the fit check; the mapping is
        // anonymous and only the pages the images touch are ever allocated.
        let mem = capsule_vmm::memory::create_guest_memory(self.memory_mib).map_err(memory)?;
        let kernel = capsule_vmm::loader::load_kernel(&mem, &self.kernel)?;
        if let Some(initrd) = &self.initrd {
            capsule_vmm::loader::load_initrd(&mem, &kernel, initrd)?;
        }
        Ok(())
    }
}

/// File system type of a raw image, from its superblock magic.
pub fn detect_fstype(image: &Path) -> Result<&'static str, SpecError> {
    use std::io::Read;
    let io = |source| SpecError::Image {
        path: image.to_path_buf(),
        source,
    };
    let mut head = vec![0u8; 2048];
    let mut f = std::fs::File::open(image).map_err(io)?;
    let n = f.read(&mut head).map_err(io)?;
    head.truncate(n);
    let magic16 = |at: usize| {
        head.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let magic32 = |at: usize| {
        head.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if magic16(1080) == Some(0xef53) {
        return Ok("ext4");
    }
    if magic32(1024) == Some(0xe0f5_e1e2) {
        return Ok("erofs");
    }
    Err(SpecError::UnknownFsType(image.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_json() {
        let spec = VmSpec {
            name: "web".into(),
            machine: MachineKind::QemuTcg,
            machine_reason: "test".into(),
            kernel: "/k".into(),
            initrd: None,
            disks: vec![Disk {
                path: "/d".into(),
                read_only: true,
            }],
            cmdline_extra: String::new(),
            cpus: 1,
            memory_mib: 256,
            guest_cid: 3,
            upcalls: [("dns_resolver".to_string(), PathBuf::from("/bin/h"))].into(),
            upcall_timeout_secs: 10,
            network: None,
            seccomp: true,
            jail: jailed(),
            shares: Vec::new(),
            virtiofsd: None,
        };
        let text = serde_json::to_string(&spec).unwrap();
        assert!(text.contains("\"backend\":\"qemu-tcg\""));
        assert_eq!(serde_json::from_str::<VmSpec>(&text).unwrap(), spec);
    }

    /// A spec whose kernel and initrd exist (as non-kernel files: checks that come before
    /// loading never read them).
    fn spec(tag: &str) -> (VmSpec, PathBuf) {
        let dir = std::env::temp_dir().join(format!("capsule-spec-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = dir.join("vmlinux");
        std::fs::write(&kernel, b"not a kernel").unwrap();
        let spec = VmSpec {
            name: "web".into(),
            machine: MachineKind::QemuTcg,
            machine_reason: "test".into(),
            kernel,
            initrd: None,
            disks: Vec::new(),
            cmdline_extra: String::new(),
            cpus: 1,
            memory_mib: 256,
            guest_cid: 3,
            upcalls: BTreeMap::new(),
            upcall_timeout_secs: 10,
            network: None,
            seccomp: true,
            jail: jailed(),
            shares: Vec::new(),
            virtiofsd: None,
        };
        (spec, dir)
    }

    #[test]
    fn bad_settings_are_refused_naming_the_setting() {
        let (good, dir) = spec("bad");
        let cases: Vec<(VmSpec, &str)> = vec![
            (
                VmSpec {
                    memory_mib: 0,
                    ..good.clone()
                },
                "invalid memory 0 MiB",
            ),
            (
                VmSpec {
                    cpus: 999,
                    ..good.clone()
                },
                "invalid cpus 999",
            ),
            (
                VmSpec {
                    cpus: 0,
                    ..good.clone()
                },
                "invalid cpus 0",
            ),
            (
                VmSpec {
                    guest_cid: 2,
                    ..good.clone()
                },
                "invalid guest CID 2",
            ),
            (
                VmSpec {
                    name: "-x".into(),
                    ..good.clone()
                },
                "invalid VM name \"-x\"",
            ),
            (
                VmSpec {
                    kernel: dir.join("missing"),
                    ..good.clone()
                },
                "missing does not exist",
            ),
            (
                VmSpec {
                    memory_mib: u64::MAX,
                    ..good.clone()
                },
                "invalid memory 18446744073709551615 MiB",
            ),
            (
                VmSpec {
                    upcalls: [("user".to_string(), dir.join("nohelper"))].into(),
                    ..good.clone()
                },
                "upcall helper",
            ),
            // Everything else is fine: the kernel is looked at, and it is not one.
            (good.clone(), "is neither an ELF vmlinux nor a bzImage"),
        ];
        for (spec, want) in cases {
            let err = spec.check().unwrap_err();
            let text = err.to_string();
            assert!(text.contains(want), "{text:?} lacks {want:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shares_are_checked_and_need_virtiofsd() {
        let (good, dir) = spec("shares");
        let share = crate::share::Share {
            host_dir: dir.clone(),
            target: "/srv".into(),
            read_only: true,
            tag: crate::share::tag(0, false),
        };
        let with = |shares: Vec<crate::share::Share>, virtiofsd: Option<PathBuf>| VmSpec {
            shares,
            virtiofsd,
            ..good.clone()
        };
        let text = with(vec![share.clone()], None)
            .check()
            .unwrap_err()
            .to_string();
        assert!(text.contains("virtiofsd is not installed"), "{text}");
        assert!(text.contains("scripts/install-virtiofsd.sh"), "{text}");
        let text = with(vec![share.clone()], Some(dir.join("no-virtiofsd")))
            .check()
            .unwrap_err()
            .to_string();
        assert!(text.contains("no-virtiofsd does not exist"), "{text}");
        let twice = vec![
            share.clone(),
            crate::share::Share {
                tag: "t1".into(),
                ..share.clone()
            },
        ];
        let text = with(twice, Some(good.kernel.clone()))
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("already the target of another share"),
            "{text}"
        );
        // Shares that pass: the kernel is looked at next.
        let text = with(vec![share], Some(good.kernel.clone()))
            .check()
            .unwrap_err()
            .to_string();
        assert!(text.contains("is neither an ELF vmlinux"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn images_of_unknown_type_are_named() {
        let (good, dir) = spec("fstype");
        let err = detect_fstype(&good.kernel).unwrap_err();
        assert!(err.to_string().contains("vmlinux"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
