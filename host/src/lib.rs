//! capsule's host library, shared by every front end (the `capsule` CLI now, a containerd shim
//! later): per-VM state directories ([`state`]) instead of a daemon, one supervisor process per
//! VM ([`supervisor`]), the machines that run a guest behind one trait ([`machine`]), the
//! upcall router ([`upcall`]), the console log ([`console`]), host directories shared into
//! the container ([`share`], served by [`virtiofsd`]), the machine process's jail ([`jail`]) and
//! cgroup ([`cgroup`]), the one check of a VM's
//! configuration ([`spec`]), and the VM lifecycle API the front ends call ([`vm`],
//! [`containers`] for further containers of a VM and the container fd operations, and
//! [`exec`] for processes in a VM's container).
//!
//! See `ARCHITECTURE.md` at the repository root for a map of the modules.

pub mod cgroup;
pub mod console;
pub mod containers;
pub mod exec;
pub mod jail;
pub mod machine;
pub mod network;
pub mod paths;
pub mod share;
pub mod spec;
pub mod state;
pub mod supervisor;
pub mod upcall;
pub mod virtiofsd;
pub mod vm;

/// Why a VM ended and the exit codes, from the hypervisor.
pub use capsule_vmm::exit;
