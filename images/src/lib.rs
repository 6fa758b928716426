//! Image builders for capsule guests.
//!
//! [`initramfs`] assembles a deterministic newc initramfs (the format the kernel unpacks into its
//! rootfs) from files, directories, symlinks and device nodes, optionally with a static binary as
//! `/init`; [`cpio`] is the archive format underneath.

pub mod cpio;
pub mod initramfs;
pub mod oci;
pub mod rootfs;

pub use initramfs::{Defaults, DeviceKind, Initramfs, InitramfsError};
