//! capsule's hypervisor: boots a Linux guest in a KVM microVM. It knows nothing of the host's
//! state directories, supervisors or front ends (those are `capsule-host` and `capsule-cli`).
//!
//! See `ARCHITECTURE.md` at the repository root for a map of the modules.

pub mod arch;
pub mod builder;
pub mod devices;
pub mod exit;
pub mod kvm_flavor;
pub mod loader;
pub mod memory;
pub mod seccomp;
pub mod vstate;
