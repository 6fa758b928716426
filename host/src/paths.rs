//! Where capsule keeps its caches on the host.

use std::path::PathBuf;

/// A default guest file that is not there.
#[derive(Debug, thiserror::Error)]
#[error(
    "no default guest {what} at {}: build it with scripts/build-guest.sh, or pass {flag}",
    path.display()
)]
pub struct MissingGuest {
    pub what: &'static str,
    pub path: PathBuf,
    /// The option that names another file instead.
    pub flag: &'static str,
}

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

fn default_file(
    name: &str,
    what: &'static str,
    flag: &'static str,
) -> Result<PathBuf, MissingGuest> {
    let path = guest_dir().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(MissingGuest { what, path, flag })
    }
}

/// The guest kernel built from guest-kernel-config/ (ELF vmlinux).
pub fn default_kernel() -> Result<PathBuf, MissingGuest> {
    default_file("vmlinux", "kernel", "--kernel")
}

/// The initramfs with the guest agent as /init and busybox.
pub fn default_initramfs() -> Result<PathBuf, MissingGuest> {
    default_file("initramfs.cpio", "initramfs", "--initrd")
}
