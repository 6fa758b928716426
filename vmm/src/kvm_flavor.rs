//! What kind of KVM this host has, and the guest command-line profile that goes with it.

use std::path::Path;

/// Where `/dev/kvm` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmFlavor {
    /// VMX or SVM hardware virtualization (kvm_intel / kvm_amd).
    Hardware,
    /// kvm-pvm: a software hypervisor for hosts without VMX/SVM. Much guest supervisor code is
    /// emulated, and the emulator rejects some instructions (see `GuestProfile::NestedPvm`).
    Pvm,
    /// Neither module is visible (e.g. /sys not mounted); treated like hardware.
    Unknown,
}

impl KvmFlavor {
    /// Detects the flavor from the loaded kernel modules under `sys_module`
    /// (normally `/sys/module`).
    pub fn detect_in(sys_module: &Path) -> Self {
        if sys_module.join("kvm_pvm").exists() {
            KvmFlavor::Pvm
        } else if sys_module.join("kvm_intel").exists() || sys_module.join("kvm_amd").exists() {
            KvmFlavor::Hardware
        } else {
            KvmFlavor::Unknown
        }
    }

    pub fn detect() -> Self {
        Self::detect_in(Path::new("/sys/module"))
    }
}

/// A set of guest kernel parameters needed on a kind of host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestProfile {
    /// No host-specific parameters.
    None,
    /// kvm-pvm hosts: keep the guest away from instructions kvm-pvm's emulator rejects
    /// (XRSTOR, POPCNT, CLAC/STAC) and skip the INT3 self-test of the alternatives code.
    NestedPvm,
}

impl GuestProfile {
    /// The profile for `flavor`: nested-pvm on kvm-pvm, never on hardware KVM.
    pub fn for_flavor(flavor: KvmFlavor) -> Self {
        match flavor {
            KvmFlavor::Pvm => GuestProfile::NestedPvm,
            KvmFlavor::Hardware | KvmFlavor::Unknown => GuestProfile::None,
        }
    }

    /// Kernel command-line parameters of this profile.
    pub fn cmdline(self) -> &'static str {
        match self {
            GuestProfile::None => "",
            // `capsule.skip_int3_selftest` is understood by capsule's guest kernel patch and
            // ignored (passed to init as an environment string) by other kernels.
            GuestProfile::NestedPvm => {
                "noxsave clearcpuid=popcnt,smap,smep capsule.skip_int3_selftest=1"
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GuestProfile::None => "none",
            GuestProfile::NestedPvm => "nested-pvm",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavor_follows_loaded_modules() {
        let dir = std::env::temp_dir().join(format!("capsule-host-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(KvmFlavor::detect_in(&dir), KvmFlavor::Unknown);
        std::fs::create_dir_all(dir.join("kvm_intel")).unwrap();
        assert_eq!(KvmFlavor::detect_in(&dir), KvmFlavor::Hardware);
        std::fs::create_dir_all(dir.join("kvm_pvm")).unwrap();
        assert_eq!(KvmFlavor::detect_in(&dir), KvmFlavor::Pvm);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nested_profile_only_on_pvm() {
        assert_eq!(
            GuestProfile::for_flavor(KvmFlavor::Pvm),
            GuestProfile::NestedPvm
        );
        assert_eq!(
            GuestProfile::for_flavor(KvmFlavor::Hardware),
            GuestProfile::None
        );
        assert!(GuestProfile::NestedPvm.cmdline().contains("noxsave"));
        assert!(GuestProfile::None.cmdline().is_empty());
    }
}
