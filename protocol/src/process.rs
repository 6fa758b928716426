//! The names of a process's attributes in `ExecRequest`, as OCI writes them: resource limits
//! (`RLIMIT_NOFILE`, ...) and capabilities (`CAP_CHOWN`, ...), and their Linux numbers. Both
//! sides read names through here: front ends to check a bundle, the agent to apply it.

/// The Linux resource limits by OCI name, with their `RLIMIT_*` resource number (x86_64).
pub const RLIMITS: &[(&str, u32)] = &[
    ("RLIMIT_CPU", 0),
    ("RLIMIT_FSIZE", 1),
    ("RLIMIT_DATA", 2),
    ("RLIMIT_STACK", 3),
    ("RLIMIT_CORE", 4),
    ("RLIMIT_RSS", 5),
    ("RLIMIT_NPROC", 6),
    ("RLIMIT_NOFILE", 7),
    ("RLIMIT_MEMLOCK", 8),
    ("RLIMIT_AS", 9),
    ("RLIMIT_LOCKS", 10),
    ("RLIMIT_SIGPENDING", 11),
    ("RLIMIT_MSGQUEUE", 12),
    ("RLIMIT_NICE", 13),
    ("RLIMIT_RTPRIO", 14),
    ("RLIMIT_RTTIME", 15),
];

/// The capabilities of Linux 6.12 by OCI name; the index is the capability number.
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The highest capability number ([`CAPABILITIES`] has one more entry).
pub const CAP_LAST_CAP: u32 = CAPABILITIES.len() as u32 - 1;

/// The resource number of an OCI rlimit name.
pub fn rlimit_resource(name: &str) -> Option<u32> {
    RLIMITS.iter().find(|(n, _)| *n == name).map(|&(_, r)| r)
}

/// The number of an OCI capability name.
pub fn capability_number(name: &str) -> Option<u32> {
    CAPABILITIES
        .iter()
        .position(|n| *n == name)
        .map(|i| i as u32)
}

/// The bit mask of a list of capability names (bit N = capability N), or the index and name
/// of the first unknown one.
pub fn capability_mask<S: AsRef<str>>(names: &[S]) -> Result<u64, (usize, String)> {
    names.iter().enumerate().try_fold(0u64, |mask, (i, n)| {
        capability_number(n.as_ref())
            .map(|c| mask | 1 << c)
            .ok_or_else(|| (i, n.as_ref().to_string()))
    })
}

/// The five capability sets of a process as masks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub inheritable: u64,
    pub permitted: u64,
    pub ambient: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimit_names_and_numbers_match_libc() {
        assert_eq!(RLIMITS.len(), 16);
        for (i, (name, nr)) in RLIMITS.iter().enumerate() {
            assert_eq!(*nr as usize, i, "{name}");
        }
        assert_eq!(rlimit_resource("RLIMIT_NOFILE"), Some(libc::RLIMIT_NOFILE));
        assert_eq!(rlimit_resource("RLIMIT_NPROC"), Some(libc::RLIMIT_NPROC));
        assert_eq!(rlimit_resource("RLIMIT_RTTIME"), Some(libc::RLIMIT_RTTIME));
        assert_eq!(rlimit_resource("RLIMIT_AS"), Some(libc::RLIMIT_AS));
        assert_eq!(rlimit_resource("RLIMIT_NLIMITS"), None);
        assert_eq!(rlimit_resource("rlimit_nofile"), None);
        assert_eq!(rlimit_resource("NOFILE"), None);
    }

    #[test]
    fn capability_names_and_numbers() {
        assert_eq!(capability_number("CAP_CHOWN"), Some(0));
        assert_eq!(capability_number("CAP_NET_BIND_SERVICE"), Some(10));
        assert_eq!(capability_number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(capability_number("CAP_AUDIT_READ"), Some(37));
        assert_eq!(capability_number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(CAP_LAST_CAP, 40);
        assert_eq!(capability_number("CAP_BOGUS"), None);
        assert_eq!(capability_number("cap_chown"), None);
        assert_eq!(capability_number("CHOWN"), None);
    }

    #[test]
    fn masks_name_the_first_unknown_entry() {
        assert_eq!(capability_mask::<&str>(&[]), Ok(0));
        assert_eq!(
            capability_mask(&["CAP_CHOWN", "CAP_KILL", "CAP_CHOWN"]),
            Ok(1 | 1 << 5)
        );
        assert_eq!(capability_mask(&CAPABILITIES), Ok((1u64 << 41) - 1));
        assert_eq!(
            capability_mask(&["CAP_KILL", "CAP_NOPE", "CAP_WHAT"]),
            Err((1, "CAP_NOPE".to_string()))
        );
    }
}
