//! Container objects on the wire: the `flags` of `CreateContainer` are the RFC's
//! `container_create()` flags (`include/uapi/linux/container.h` of the guest kernel patch), and
//! [`FLAG_NAMES`] are the names front ends give them (`capsule create --flags fs,pid`).

/// CONTAINER_* flags of the RFC (include/uapi/linux/container.h).
pub mod flags {
    pub const NEW_FS_NS: u32 = 0x001;
    pub const NEW_EMPTY_FS_NS: u32 = 0x002;
    pub const NEW_CGROUP_NS: u32 = 0x004;
    pub const NEW_UTS_NS: u32 = 0x008;
    pub const NEW_IPC_NS: u32 = 0x010;
    pub const NEW_USER_NS: u32 = 0x020;
    pub const NEW_PID_NS: u32 = 0x040;
    pub const NEW_NET_NS: u32 = 0x080;
    pub const KILL_ON_CLOSE: u32 = 0x100;
    pub const FD_CLOEXEC: u32 = 0x200;
    /// Every defined flag.
    pub const MASK: u32 = 0x3ff;
}

/// Names of the flags, in bit order.
pub const FLAG_NAMES: &[(&str, u32)] = &[
    ("fs", flags::NEW_FS_NS),
    ("empty-fs", flags::NEW_EMPTY_FS_NS),
    ("cgroup", flags::NEW_CGROUP_NS),
    ("uts", flags::NEW_UTS_NS),
    ("ipc", flags::NEW_IPC_NS),
    ("user", flags::NEW_USER_NS),
    ("pid", flags::NEW_PID_NS),
    ("net", flags::NEW_NET_NS),
    ("kill-on-close", flags::KILL_ON_CLOSE),
    ("cloexec", flags::FD_CLOEXEC),
];

/// The flags a container gets unless told otherwise: its own mounts, hostname, IPC, PIDs,
/// cgroup view and network.
pub const DEFAULT_FLAGS: &str = "fs,uts,ipc,pid,cgroup,net";

/// PATH a process gets when its environment has none (the agent's search path for `argv[0]`,
/// and the CLI's default `PATH=`).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Longest container name (the kernel's CONTAINER_NAME_MAX); a VM's name is also the name of
/// its container object, so the same rule names VMs.
pub const MAX_NAME_LEN: usize = 63;

/// Why a name is not a valid container (or VM) name: `None` when it is valid.
///
/// The rule: 1 to 63 bytes of `[A-Za-z0-9_.-]`, starting with a letter or digit (so a name is
/// never hidden, never an option, and always a plain directory name).
pub fn name_problem(name: &str) -> Option<&'static str> {
    let Some(first) = name.bytes().next() else {
        return Some("it is empty");
    };
    if name.len() > MAX_NAME_LEN {
        return Some("it is longer than 63 characters");
    }
    if !first.is_ascii_alphanumeric() {
        return Some("it must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Some("only letters, digits, '_', '.' and '-' are allowed");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_bits_agree() {
        let all = FLAG_NAMES.iter().fold(0, |acc, (_, b)| acc | b);
        assert_eq!(all, flags::MASK);
        for (i, (_, b)) in FLAG_NAMES.iter().enumerate() {
            assert_eq!(*b, 1 << i);
        }
    }

    #[test]
    fn name_rule() {
        assert_eq!(name_problem("web-1.a_b"), None);
        assert_eq!(name_problem("0"), None);
        for bad in [
            "",
            ".hidden",
            "-x",
            "_x",
            "a/b",
            "a b",
            "ü",
            &"x".repeat(64),
        ] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
    }
}
