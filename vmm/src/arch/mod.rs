//! x86_64 specifics: the guest address map, boot structures, CPU setup.

pub mod layout;
