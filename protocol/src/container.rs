//! Container objects on the wire: the `flags` of `CreateContainer` are the RFC's
//! `container_create()` flags (`include/uapi/linux/container.h` of the guest kernel patch), and
//! [`FLAG_NAMES`] are the names front ends give them (`capsule create --flags fs,pid`);
//! [`NAMESPACE_NAMES`] names the namespace types one container takes from another
//! (`--share-ns net=pod`), and [`parse_device_rules`] reads the device-list syntax
//! (`c 1:3,c 136:*`) of `CONTAINER_IOC_SET_DEVICES`.

use crate::pb::{DeviceKind, DeviceRule, NamespaceShare, NamespaceType};

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

/// Namespace types a container can take from another (`--share-ns net=OTHER`), with the
/// `CLONE_NEW*` bit of each (the `nstype` of `CONTAINER_IOC_SETNS`). User and time namespaces
/// are not here: the kernel cannot replace them.
pub const NAMESPACE_NAMES: &[(&str, NamespaceType, u32)] = &[
    ("net", NamespaceType::NsNet, 0x4000_0000),
    ("ipc", NamespaceType::NsIpc, 0x0800_0000),
    ("uts", NamespaceType::NsUts, 0x0400_0000),
    ("cgroup", NamespaceType::NsCgroup, 0x0200_0000),
    ("pid", NamespaceType::NsPid, 0x2000_0000),
    ("mnt", NamespaceType::NsMnt, 0x0002_0000),
];

/// The name of a namespace type ("net"), or "unspecified".
pub fn namespace_name(ns: NamespaceType) -> &'static str {
    NAMESPACE_NAMES
        .iter()
        .find(|(_, t, _)| *t == ns)
        .map_or("unspecified", |(n, _, _)| n)
}

/// The `CLONE_NEW*` bit of a namespace type (0 for [`NamespaceType::NsUnspecified`]).
pub fn namespace_clone_flag(ns: NamespaceType) -> u32 {
    NAMESPACE_NAMES
        .iter()
        .find(|(_, t, _)| *t == ns)
        .map_or(0, |(_, _, f)| *f)
}

/// Parses `TYPE=CONTAINER[,TYPE=CONTAINER...]` (`net=pod,ipc=pod,uts=pod`) into shares; the
/// error says which entry is wrong and why.
pub fn parse_share_ns(spec: &str) -> Result<Vec<NamespaceShare>, String> {
    let mut out: Vec<NamespaceShare> = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((ty, from)) = entry.split_once('=') else {
            return Err(format!("{entry:?}: expected TYPE=CONTAINER"));
        };
        let Some((_, ns, _)) = NAMESPACE_NAMES.iter().find(|(n, _, _)| *n == ty) else {
            let known: Vec<_> = NAMESPACE_NAMES.iter().map(|(n, _, _)| *n).collect();
            return Err(format!(
                "{entry:?}: unknown namespace type {ty:?} (known: {}; user and time namespaces \
                 cannot be shared)",
                known.join(", ")
            ));
        };
        if let Some(reason) = name_problem(from) {
            return Err(format!(
                "{entry:?}: invalid container name {from:?}: {reason}"
            ));
        }
        if out.iter().any(|s| s.ns == *ns as i32) {
            return Err(format!("{entry:?}: the {ty} namespace is named twice"));
        }
        out.push(NamespaceShare {
            ns: *ns as i32,
            from_container: from.to_string(),
        });
    }
    Ok(out)
}

/// Largest major device number (12 bits, as the kernel's `MAJOR()`).
pub const MAX_DEVICE_MAJOR: u32 = 4095;
/// Largest minor device number (20 bits).
pub const MAX_DEVICE_MINOR: u32 = (1 << 20) - 1;
/// Most entries of a device list (CONTAINER_DEVICES_MAX).
pub const MAX_DEVICES: usize = 256;

/// Parses a device list: comma-separated `TYPE MAJOR:MINOR` rules, TYPE `c` (character) or `b`
/// (block), MINOR a number or `*` for every minor: `c 1:3,c 136:*,b 254:0`. The empty string is
/// the empty list (no restriction). The error names the rule and what is wrong with it.
pub fn parse_device_rules(spec: &str) -> Result<Vec<DeviceRule>, String> {
    let mut out = Vec::new();
    for rule in spec.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        out.push(parse_device_rule(rule).map_err(|why| format!("device rule {rule:?}: {why}"))?);
    }
    if out.len() > MAX_DEVICES {
        return Err(format!(
            "{} device rules, more than the limit of {MAX_DEVICES}",
            out.len()
        ));
    }
    Ok(out)
}

fn parse_device_rule(rule: &str) -> Result<DeviceRule, String> {
    let mut words = rule.split_whitespace();
    let kind = match words.next() {
        Some("c") => DeviceKind::DeviceChar,
        Some("b") => DeviceKind::DeviceBlock,
        Some(other) => return Err(format!("type {other:?} is not c (character) or b (block)")),
        None => return Err("empty".into()),
    };
    let Some(numbers) = words.next() else {
        return Err("expected TYPE MAJOR:MINOR".into());
    };
    if let Some(extra) = words.next() {
        return Err(format!(
            "unexpected {extra:?}: the kernel's device list has no access modes (a listed \
             device opens for reading and writing, as its file permissions allow)"
        ));
    }
    let Some((major, minor)) = numbers.split_once(':') else {
        return Err(format!("{numbers:?} is not MAJOR:MINOR"));
    };
    let major: u32 = major
        .parse()
        .ok()
        .filter(|m| *m <= MAX_DEVICE_MAJOR)
        .ok_or_else(|| format!("major {major:?} is not a number from 0 to {MAX_DEVICE_MAJOR}"))?;
    let (minor, any_minor) = if minor == "*" {
        (0, true)
    } else {
        let m = minor
            .parse()
            .ok()
            .filter(|m| *m <= MAX_DEVICE_MINOR)
            .ok_or_else(|| {
                format!("minor {minor:?} is not * or a number from 0 to {MAX_DEVICE_MINOR}")
            })?;
        (m, false)
    };
    Ok(DeviceRule {
        kind: kind as i32,
        major,
        minor,
        any_minor,
    })
}

/// A rule in the syntax [`parse_device_rules`] reads.
pub fn format_device_rule(r: &DeviceRule) -> String {
    let kind = if r.kind == DeviceKind::DeviceBlock as i32 {
        'b'
    } else {
        'c'
    };
    if r.any_minor {
        format!("{kind} {}:*", r.major)
    } else {
        format!("{kind} {}:{}", r.major, r.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_ns_specs() {
        let s = parse_share_ns("net=pod, ipc=pod,uts=a.b").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].ns, NamespaceType::NsNet as i32);
        assert_eq!(s[2].from_container, "a.b");
        assert!(parse_share_ns("").unwrap().is_empty());
        for (bad, says) in [
            ("net", "TYPE=CONTAINER"),
            ("user=pod", "cannot be shared"),
            ("net=-x", "invalid container name"),
            ("net=a,net=b", "named twice"),
        ] {
            let e = parse_share_ns(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(namespace_clone_flag(NamespaceType::NsMnt), 0x20000);
        assert_eq!(namespace_name(NamespaceType::NsPid), "pid");
    }

    #[test]
    fn device_rules() {
        let r = parse_device_rules("c 1:3, c 136:*,b 254:0").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].major, r[0].minor, r[0].any_minor), (1, 3, false));
        assert!(r[1].any_minor);
        assert_eq!(r[2].kind, DeviceKind::DeviceBlock as i32);
        let text: Vec<_> = r.iter().map(format_device_rule).collect();
        assert_eq!(text.join(","), "c 1:3,c 136:*,b 254:0");
        assert!(parse_device_rules("").unwrap().is_empty());
        for (bad, says) in [
            ("x 1:3", "not c (character) or b (block)"),
            ("c 1", "not MAJOR:MINOR"),
            ("c", "expected TYPE MAJOR:MINOR"),
            ("c 4096:0", "major \"4096\""),
            ("c *:0", "major \"*\""),
            ("c 1:1048576", "minor \"1048576\""),
            ("c 1:3 rw", "no access modes"),
        ] {
            let e = parse_device_rules(bad).unwrap_err();
            assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
        }
        let many = vec!["c 1:3"; MAX_DEVICES + 1].join(",");
        assert!(parse_device_rules(&many).unwrap_err().contains("limit"));
    }

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
