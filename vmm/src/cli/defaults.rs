//! Where the default guest kernel and initramfs live (installed by `scripts/build-guest.sh`).

use std::path::PathBuf;

use anyhow::{bail, Result};

pub use vmm::paths::guest_dir;

fn default_file(name: &str, what: &str, flag: &str) -> Result<PathBuf> {
    let path = guest_dir().join(name);
    if !path.is_file() {
        bail!(
            "no default guest {what} at {}: build it with scripts/build-guest.sh, or pass {flag}",
            path.display()
        );
    }
    Ok(path)
}

/// The guest kernel built from guest-kernel-config/ (ELF vmlinux).
pub fn kernel() -> Result<PathBuf> {
    default_file("vmlinux", "kernel", "--kernel")
}

/// The initramfs with the guest agent as /init and busybox.
pub fn initramfs() -> Result<PathBuf> {
    default_file("initramfs.cpio", "initramfs", "--initrd")
}
