//! capsule's virtual machine monitor: boots a Linux guest in a KVM microVM.
//!
//! See `ARCHITECTURE.md` at the repository root for a map of the modules.

pub mod arch;
pub mod builder;
pub mod devices;
pub mod exit;
pub mod host;
pub mod loader;
pub mod memory;
pub mod vstate;
