//! x86_64 specifics: the guest address map, boot structures, CPU setup.

pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
