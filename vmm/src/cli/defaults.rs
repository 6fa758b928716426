//! Where the default guest kernel and initramfs live (installed by `scripts/build-guest.sh`).

use std::path::PathBuf;

use anyhow::{bail, Result};

/// `$CAPSULE_GUEST_DIR`, else `<cache>/guest` with `<cache>` = `$CAPSULE_CACHE`, else
/// `$XDG_CACHE_HOME/capsule`, else `~/.cache/capsule` (where scripts/build-guest.sh puts it).
pub fn guest_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAPSULE_GUEST_DIR") {
        return PathBuf::from(dir);
    }
    cache_root().join("guest")
}

fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAPSULE_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("capsule");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/capsule")
}

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
