//! capsule's virtual machine monitor: boots a Linux guest in a KVM microVM.
//!
//! See `ARCHITECTURE.md` at the repository root for a map of the modules.

pub mod arch;
pub mod builder;
pub mod console;
pub mod devices;
pub mod exit;
pub mod host;
pub mod loader;
pub mod machine;
pub mod memory;
pub mod paths;
pub mod state;
pub mod supervisor;
pub mod upcall;
pub mod vstate;
