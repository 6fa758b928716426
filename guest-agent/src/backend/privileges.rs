//! What an exec child applies to itself beyond its credentials: resource limits, capability
//! sets, no_new_privs (OCI `process.rlimits`, `process.capabilities`, `noNewPrivileges`).
//! Prepared from a checked request before the fork; each step runs in the child and allocates
//! nothing. [`super::child::exec_child`] calls the steps in runc's order.

use capsule_protocol::process::{CapSets, CAP_LAST_CAP};
use capsule_protocol::validate::Rlimit;

use crate::sys::{self, Errno};

/// The capability sets of a process, and its ambient capabilities in request order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub sets: CapSets,
    /// Capability numbers, in the order of `capabilities.ambient`.
    pub ambient: Vec<u32>,
}

/// A process's privileges, prepared before the fork.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Privileges {
    /// (resource, soft, hard), in request order.
    pub rlimits: Vec<Rlimit>,
    /// `None`: the process keeps what a uid change leaves it.
    pub capabilities: Option<Capabilities>,
    pub no_new_privs: bool,
}

impl Privileges {
    /// Sets each resource limit; on failure, its index and the errno.
    pub fn set_rlimits(&self) -> Result<(), (u32, Errno)> {
        for (i, &(resource, soft, hard)) in self.rlimits.iter().enumerate() {
            sys::set_rlimit(resource, soft, hard).map_err(|e| (i as u32, e))?;
        }
        Ok(())
    }

    /// Drops from the bounding set every capability not in `bounding`, and keeps the
    /// permitted set across the coming uid change; on failure, the capability and the errno.
    pub fn limit_bounding_set(&self) -> Result<(), (u32, Errno)> {
        let Some(caps) = &self.capabilities else {
            return Ok(());
        };
        for cap in 0..=CAP_LAST_CAP {
            if caps.sets.bounding & 1 << cap == 0 {
                sys::capbset_drop(cap).map_err(|e| (cap, e))?;
            }
        }
        // Past the last capability: the failure is not about one.
        sys::set_keepcaps(true).map_err(|e| (CAP_LAST_CAP + 1, e))
    }

    /// Sets effective, permitted and inheritable (after the uid change).
    pub fn set_capabilities(&self) -> Result<(), Errno> {
        let Some(caps) = &self.capabilities else {
            return Ok(());
        };
        sys::set_keepcaps(false)?;
        let s = &caps.sets;
        sys::capset(s.effective, s.permitted, s.inheritable)
    }

    /// Raises each ambient capability; on failure, its index in the request and the errno.
    pub fn raise_ambient(&self) -> Result<(), (u32, Errno)> {
        let Some(caps) = &self.capabilities else {
            return Ok(());
        };
        for (i, &cap) in caps.ambient.iter().enumerate() {
            sys::ambient_raise(cap).map_err(|e| (i as u32, e))?;
        }
        Ok(())
    }

    /// PR_SET_NO_NEW_PRIVS when asked.
    pub fn set_no_new_privs(&self) -> Result<(), Errno> {
        if self.no_new_privs {
            sys::set_no_new_privs()?;
        }
        Ok(())
    }
}
