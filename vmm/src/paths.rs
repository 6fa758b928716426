//! Where capsule keeps its caches on the host.

use std::path::PathBuf;

/// The cache root: `$CAPSULE_CACHE`, else `$XDG_CACHE_HOME/capsule`, else `~/.cache/capsule`
/// (the guest kernel build uses the same rule).
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAPSULE_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("capsule");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/capsule")
}

/// The default guest (vmlinux, initramfs.cpio) scripts/build-guest.sh installs:
/// `$CAPSULE_GUEST_DIR`, else `<cache root>/guest`.
pub fn guest_dir() -> PathBuf {
    match std::env::var_os("CAPSULE_GUEST_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => cache_root().join("guest"),
    }
}
