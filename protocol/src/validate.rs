//! Checks every side applies to what it receives: names, paths, strings, counts. Each error
//! names the field it is about.

use crate::pb;
use crate::status::RpcError;

pub use crate::container::MAX_NAME_LEN;
/// Longest path accepted anywhere in the API.
pub const MAX_PATH_LEN: usize = 4096;
/// Most argv entries of an exec.
pub const MAX_ARGS: usize = 4096;
/// Most env entries of an exec.
pub const MAX_ENV: usize = 4096;
/// Longest single argv or env string (the kernel's MAX_ARG_STRLEN).
pub const MAX_ARG_LEN: usize = 128 * 1024;
/// Most supplementary groups of an exec.
pub const MAX_GROUPS: usize = 64;
/// Longest mount option string (one page, as the kernel takes it).
pub const MAX_OPTIONS_LEN: usize = 4095;
/// Longest key type or description.
pub const MAX_KEY_DESC_LEN: usize = 4095;
/// Largest key payload (the kernel's limit for add_key(2) payloads is 1 MiB).
pub const MAX_KEY_PAYLOAD: usize = 1024 * 1024 - 1;

/// A container name, by the rule of [`crate::container::name_problem`].
pub fn container_name(field: &str, name: &str) -> Result<(), RpcError> {
    match crate::container::name_problem(name) {
        None => Ok(()),
        Some(reason) => Err(RpcError::invalid(
            field,
            format!("invalid container name {name:?}: {reason}"),
        )),
    }
}

/// A string without NUL bytes and at most `max` bytes long.
pub fn plain_string(field: &str, s: &str, max: usize) -> Result<(), RpcError> {
    if s.len() > max {
        return Err(RpcError::invalid(
            field,
            format!("{} bytes, more than the limit of {max}", s.len()),
        ));
    }
    if s.contains('\0') {
        return Err(RpcError::invalid(field, "contains a NUL byte"));
    }
    Ok(())
}

/// Longest virtio-fs tag: the device's config space holds 36 bytes.
pub const MAX_VIRTIOFS_TAG_LEN: usize = 36;

/// A virtio-fs tag (the mount source of a `virtiofs` mount): 1 to [`MAX_VIRTIOFS_TAG_LEN`]
/// bytes of printable ASCII.
pub fn virtiofs_tag(field: &str, tag: &str) -> Result<(), RpcError> {
    if tag.is_empty()
        || tag.len() > MAX_VIRTIOFS_TAG_LEN
        || !tag.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(RpcError::invalid(
            field,
            format!("virtio-fs tag {tag:?}: 1 to {MAX_VIRTIOFS_TAG_LEN} bytes of printable ASCII"),
        ));
    }
    Ok(())
}

/// An absolute path without NUL bytes, `..` components or excess length.
pub fn absolute_path(field: &str, p: &str) -> Result<(), RpcError> {
    plain_string(field, p, MAX_PATH_LEN)?;
    if !p.starts_with('/') {
        return Err(RpcError::invalid(
            field,
            format!("path {p:?} is not absolute"),
        ));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(RpcError::invalid(
            field,
            format!("path {p:?} contains a '..' component"),
        ));
    }
    Ok(())
}

/// A relative path inside a file system: no leading `/`, and no empty, `.` or `..`
/// components.
pub fn relative_path(field: &str, p: &str) -> Result<(), RpcError> {
    plain_string(field, p, MAX_PATH_LEN)?;
    if p.is_empty() || p.starts_with('/') {
        return Err(RpcError::invalid(
            field,
            format!("path {p:?} is not a relative path"),
        ));
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(RpcError::invalid(
            field,
            format!("path {p:?} has an empty, '.' or '..' component"),
        ));
    }
    Ok(())
}

/// A list of at most `max` strings, each checked by [`plain_string`] with `max_len`.
pub fn string_list(
    field: &str,
    list: &[String],
    max: usize,
    max_len: usize,
) -> Result<(), RpcError> {
    if list.len() > max {
        return Err(RpcError::invalid(
            field,
            format!("{} entries, more than the limit of {max}", list.len()),
        ));
    }
    for (i, s) in list.iter().enumerate() {
        plain_string(&format!("{field}[{i}]"), s, max_len)?;
    }
    Ok(())
}

/// Longest LSM name (the kernel's limit for CONTAINER_IOC_SET_POLICY).
pub const MAX_LSM_NAME_LEN: usize = 31;
/// Largest per-container security policy (CONTAINER_POLICY_MAX).
pub const MAX_POLICY_LEN: usize = 4096;
/// Deepest cgroup path below the agent's cgroup root.
pub const MAX_CGROUP_DEPTH: usize = 8;

/// Namespace shares: a known type each, at most one per type, a valid container name, and not
/// the container itself.
pub fn namespace_shares(
    field: &str,
    own: &str,
    shares: &[pb::NamespaceShare],
) -> Result<(), RpcError> {
    for (i, s) in shares.iter().enumerate() {
        let f = format!("{field}[{i}]");
        match pb::NamespaceType::try_from(s.ns) {
            Ok(t) if t != pb::NamespaceType::NsUnspecified => {}
            _ => {
                return Err(RpcError::invalid(
                    format!("{f}.ns"),
                    format!("{} is not a namespace type that can be shared", s.ns),
                ))
            }
        }
        if shares[..i].iter().any(|o| o.ns == s.ns) {
            return Err(RpcError::invalid(
                format!("{f}.ns"),
                format!(
                    "the {} namespace is named twice",
                    crate::container::namespace_name(
                        pb::NamespaceType::try_from(s.ns).unwrap_or_default()
                    )
                ),
            ));
        }
        container_name(&format!("{f}.from_container"), &s.from_container)?;
        if s.from_container == own {
            return Err(RpcError::invalid(
                format!("{f}.from_container"),
                format!("container {own:?} cannot take a namespace from itself"),
            ));
        }
    }
    Ok(())
}

/// A device list: at most [`crate::container::MAX_DEVICES`] rules with numbers in range.
pub fn device_rules(field: &str, rules: &[pb::DeviceRule]) -> Result<(), RpcError> {
    use crate::container::{MAX_DEVICES, MAX_DEVICE_MAJOR, MAX_DEVICE_MINOR};
    if rules.len() > MAX_DEVICES {
        return Err(RpcError::invalid(
            field,
            format!(
                "{} rules, more than the limit of {MAX_DEVICES}",
                rules.len()
            ),
        ));
    }
    for (i, r) in rules.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if pb::DeviceKind::try_from(r.kind).is_err() {
            return Err(RpcError::invalid(
                format!("{f}.kind"),
                format!("unknown device kind {}", r.kind),
            ));
        }
        if r.major > MAX_DEVICE_MAJOR {
            return Err(RpcError::invalid(
                format!("{f}.major"),
                format!("major {} is more than {MAX_DEVICE_MAJOR}", r.major),
            ));
        }
        if !r.any_minor && r.minor > MAX_DEVICE_MINOR {
            return Err(RpcError::invalid(
                format!("{f}.minor"),
                format!("minor {} is more than {MAX_DEVICE_MINOR}", r.minor),
            ));
        }
    }
    Ok(())
}

/// A cgroup path below the agent's cgroup root: relative, 1 to [`MAX_CGROUP_DEPTH`]
/// components, each following the container name rule (so no `..`, no hidden or control
/// file names).
pub fn cgroup_path(field: &str, path: &str) -> Result<(), RpcError> {
    plain_string(field, path, MAX_PATH_LEN)?;
    if path.starts_with('/') {
        return Err(RpcError::invalid(
            field,
            format!("cgroup path {path:?} must be relative to the agent's cgroup root"),
        ));
    }
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if parts.is_empty() || parts.len() > MAX_CGROUP_DEPTH {
        return Err(RpcError::invalid(
            field,
            format!("cgroup path {path:?} needs 1 to {MAX_CGROUP_DEPTH} components"),
        ));
    }
    for part in parts {
        if let Some(reason) = crate::container::name_problem(part) {
            return Err(RpcError::invalid(
                field,
                format!("cgroup path {path:?}: component {part:?}: {reason}"),
            ));
        }
        if is_control_file(part) {
            return Err(RpcError::invalid(
                field,
                format!("cgroup path {path:?}: component {part:?} is a cgroup control file name"),
            ));
        }
    }
    Ok(())
}

/// Whether `name` looks like a cgroup interface file (`memory.max`, `pids.current`, ...).
fn is_control_file(name: &str) -> bool {
    const CONTROLLERS: &[&str] = &[
        "cgroup", "cpu", "cpuset", "io", "memory", "pids", "rdma", "hugetlb", "misc", "irq",
    ];
    name.split_once('.')
        .is_some_and(|(c, _)| CONTROLLERS.contains(&c))
}

/// An LSM name for a policy and the policy's size.
pub fn policy(lsm: &str, policy: &[u8]) -> Result<(), RpcError> {
    if lsm.is_empty() {
        return Err(RpcError::invalid("lsm", "empty LSM name"));
    }
    plain_string("lsm", lsm, MAX_LSM_NAME_LEN)?;
    if policy.len() > MAX_POLICY_LEN {
        return Err(RpcError::invalid(
            "policy",
            format!(
                "{} bytes, more than the limit of {MAX_POLICY_LEN}",
                policy.len()
            ),
        ));
    }
    Ok(())
}

/// Most entries of each capability list and of the rlimit list (every name fits many times).
pub const MAX_PROCESS_ATTRS: usize = 256;
/// Most masked or read-only paths of a FinishRoot.
pub const MAX_ROOT_PATHS: usize = 256;

/// One resource limit, checked: (resource number, soft, hard).
pub type Rlimit = (u32, u64, u64);

/// An Exec's rlimits: known OCI names, each once, soft not above hard.
pub fn rlimits(field: &str, list: &[pb::Rlimit]) -> Result<Vec<Rlimit>, RpcError> {
    if list.len() > MAX_PROCESS_ATTRS {
        return Err(RpcError::invalid(
            field,
            format!(
                "{} entries, more than the limit of {MAX_PROCESS_ATTRS}",
                list.len()
            ),
        ));
    }
    let mut out: Vec<Rlimit> = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let Some(resource) = crate::process::rlimit_resource(&r.r#type) else {
            return Err(RpcError::invalid(
                format!("{f}.type"),
                format!(
                    "unknown rlimit {:?} (RLIMIT_NOFILE, RLIMIT_NPROC, ...)",
                    r.r#type
                ),
            ));
        };
        if out.iter().any(|&(res, _, _)| res == resource) {
            return Err(RpcError::invalid(
                format!("{f}.type"),
                format!("{} is named twice", r.r#type),
            ));
        }
        if r.soft > r.hard {
            return Err(RpcError::invalid(
                format!("{f}.soft"),
                format!(
                    "{}: soft limit {} above hard limit {}",
                    r.r#type, r.soft, r.hard
                ),
            ));
        }
        out.push((resource, r.soft, r.hard));
    }
    Ok(out)
}

/// An Exec's capability sets: known OCI names; effective within permitted, ambient within
/// permitted and inheritable (the kernel refuses anything else).
pub fn capabilities(
    field: &str,
    caps: &pb::Capabilities,
) -> Result<crate::process::CapSets, RpcError> {
    let mask = |set: &str, names: &[String]| -> Result<u64, RpcError> {
        let f = format!("{field}.{set}");
        if names.len() > MAX_PROCESS_ATTRS {
            return Err(RpcError::invalid(
                f,
                format!(
                    "{} entries, more than the limit of {MAX_PROCESS_ATTRS}",
                    names.len()
                ),
            ));
        }
        crate::process::capability_mask(names).map_err(|(i, name)| {
            RpcError::invalid(
                format!("{f}[{i}]"),
                format!("unknown capability {name:?} (CAP_CHOWN ... CAP_CHECKPOINT_RESTORE)"),
            )
        })
    };
    let sets = crate::process::CapSets {
        bounding: mask("bounding", &caps.bounding)?,
        effective: mask("effective", &caps.effective)?,
        inheritable: mask("inheritable", &caps.inheritable)?,
        permitted: mask("permitted", &caps.permitted)?,
        ambient: mask("ambient", &caps.ambient)?,
    };
    let outside = |set: &str, names: &[String], allowed: u64, why: &str| match names
        .iter()
        .position(|n| crate::process::capability_number(n).is_some_and(|c| allowed & 1 << c == 0))
    {
        Some(i) => Err(RpcError::invalid(
            format!("{field}.{set}[{i}]"),
            format!("{} is not {why}", names[i]),
        )),
        None => Ok(()),
    };
    outside("effective", &caps.effective, sets.permitted, "permitted")?;
    outside(
        "ambient",
        &caps.ambient,
        sets.permitted & sets.inheritable,
        "both permitted and inheritable",
    )?;
    Ok(sets)
}

/// The masked and read-only paths of a FinishRoot: absolute, no `..`, bounded.
pub fn root_paths(field: &str, paths: &[String]) -> Result<(), RpcError> {
    if paths.len() > MAX_ROOT_PATHS {
        return Err(RpcError::invalid(
            field,
            format!(
                "{} entries, more than the limit of {MAX_ROOT_PATHS}",
                paths.len()
            ),
        ));
    }
    for (i, p) in paths.iter().enumerate() {
        absolute_path(&format!("{field}[{i}]"), p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn relative_paths() {
        assert!(super::relative_path("f", "pod/abc/rootfs").is_ok());
        for bad in ["", "/abs", "a/../b", "a//b", "./a", "a/"] {
            let e = super::relative_path("f", bad).unwrap_err();
            assert_eq!(e.field, "f", "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn rlimit_lists() {
        let r = |t: &str, soft, hard| pb::Rlimit {
            r#type: t.into(),
            soft,
            hard,
        };
        assert_eq!(
            rlimits(
                "rlimits",
                &[r("RLIMIT_NOFILE", 64, 128), r("RLIMIT_CORE", 0, u64::MAX)]
            ),
            Ok(vec![(7, 64, 128), (4, 0, u64::MAX)])
        );
        let e = rlimits(
            "rlimits",
            &[r("RLIMIT_CORE", 0, 0), r("RLIMIT_FILES", 1, 1)],
        )
        .unwrap_err();
        assert_eq!(e.field, "rlimits[1].type");
        assert!(e.message.contains("\"RLIMIT_FILES\""), "{e}");
        let e = rlimits("rlimits", &[r("RLIMIT_CORE", 0, 0), r("RLIMIT_CORE", 0, 0)]).unwrap_err();
        assert_eq!(e.field, "rlimits[1].type");
        let e = rlimits("rlimits", &[r("RLIMIT_NOFILE", 2, 1)]).unwrap_err();
        assert_eq!(e.field, "rlimits[0].soft");
        assert!(rlimits("rlimits", &vec![r("RLIMIT_CORE", 0, 0); 257]).is_err());
    }

    #[test]
    fn capability_sets() {
        let names = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let caps = pb::Capabilities {
            bounding: names(&["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]),
            effective: names(&["CAP_CHOWN"]),
            inheritable: names(&["CAP_NET_BIND_SERVICE"]),
            permitted: names(&["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]),
            ambient: names(&["CAP_NET_BIND_SERVICE"]),
        };
        let sets = capabilities("capabilities", &caps).unwrap();
        assert_eq!(sets.bounding, 0x421);
        assert_eq!((sets.effective, sets.inheritable), (0x1, 0x400));
        assert_eq!((sets.permitted, sets.ambient), (0x401, 0x400));

        let mut bad = caps.clone();
        bad.effective = names(&["CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_NOPE"]);
        let e = capabilities("capabilities", &bad).unwrap_err();
        assert_eq!(e.field, "capabilities.effective[3]");
        assert!(e.message.contains("\"CAP_NOPE\""), "{e}");
        let mut bad = caps.clone();
        bad.bounding = names(&["chown"]);
        assert_eq!(
            capabilities("capabilities", &bad).unwrap_err().field,
            "capabilities.bounding[0]"
        );
        let mut bad = caps.clone();
        bad.effective = names(&["CAP_KILL"]);
        assert_eq!(
            capabilities("capabilities", &bad).unwrap_err().field,
            "capabilities.effective[0]"
        );
        let mut bad = caps.clone();
        bad.ambient = names(&["CAP_NET_BIND_SERVICE", "CAP_CHOWN"]);
        assert_eq!(
            capabilities("capabilities", &bad).unwrap_err().field,
            "capabilities.ambient[1]"
        );
        assert_eq!(
            capabilities("capabilities", &pb::Capabilities::default()),
            Ok(crate::process::CapSets::default())
        );
    }

    #[test]
    fn finish_root_paths() {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(root_paths("masked_paths", &list(&["/proc/kcore", "/sys/firmware"])).is_ok());
        for (bad, i) in [
            (&["/ok", "rel"][..], 1),
            (&["/a/../../etc"][..], 0),
            (&["/x\0"][..], 0),
        ] {
            assert_eq!(
                root_paths("masked_paths", &list(bad)).unwrap_err().field,
                format!("masked_paths[{i}]")
            );
        }
        assert!(root_paths("readonly_paths", &vec!["/a".to_string(); 257]).is_err());
    }

    #[test]
    fn shares() {
        let share = |ns: pb::NamespaceType, from: &str| pb::NamespaceShare {
            ns: ns as i32,
            from_container: from.into(),
        };
        use pb::NamespaceType::*;
        assert!(namespace_shares("s", "b", &[share(NsNet, "a"), share(NsIpc, "a")]).is_ok());
        let e = namespace_shares("s", "b", &[share(NsNet, "a"), share(NsNet, "c")]).unwrap_err();
        assert_eq!(e.field, "s[1].ns");
        let e = namespace_shares("s", "b", &[share(NsUnspecified, "a")]).unwrap_err();
        assert_eq!(e.field, "s[0].ns");
        let e = namespace_shares(
            "s",
            "b",
            &[pb::NamespaceShare {
                ns: 99,
                from_container: "a".into(),
            }],
        )
        .unwrap_err();
        assert_eq!(e.field, "s[0].ns");
        let e = namespace_shares("s", "b", &[share(NsNet, "b")]).unwrap_err();
        assert!(e.message.contains("itself"), "{e}");
        let e = namespace_shares("s", "b", &[share(NsNet, "")]).unwrap_err();
        assert_eq!(e.field, "s[0].from_container");
    }

    #[test]
    fn devices() {
        let rule = |major, minor, any_minor| pb::DeviceRule {
            kind: 0,
            major,
            minor,
            any_minor,
        };
        assert!(device_rules("d", &[rule(1, 3, false), rule(4095, u32::MAX, true)]).is_ok());
        assert_eq!(
            device_rules("d", &[rule(4096, 0, false)])
                .unwrap_err()
                .field,
            "d[0].major"
        );
        assert_eq!(
            device_rules("d", &[rule(1, 0, false), rule(1, 1 << 20, false)])
                .unwrap_err()
                .field,
            "d[1].minor"
        );
        let bad_kind = pb::DeviceRule {
            kind: 7,
            ..rule(1, 1, false)
        };
        assert_eq!(
            device_rules("d", &[bad_kind]).unwrap_err().field,
            "d[0].kind"
        );
        assert!(device_rules("d", &vec![rule(1, 3, false); 257]).is_err());
    }

    #[test]
    fn cgroup_paths() {
        assert!(cgroup_path("path", "pods/web").is_ok());
        assert!(cgroup_path("path", "web").is_ok());
        for bad in [
            "",
            "/abs",
            "a/../b",
            "a/.x",
            "memory.max",
            "a/cgroup.procs",
            "a b",
            &"a/".repeat(9),
        ] {
            assert!(cgroup_path("path", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn policies() {
        assert!(policy("container_test", b"mkdir").is_ok());
        assert_eq!(policy("", b"").unwrap_err().field, "lsm");
        assert_eq!(policy(&"x".repeat(32), b"").unwrap_err().field, "lsm");
        assert_eq!(policy("l", &[0; 4097]).unwrap_err().field, "policy");
    }

    #[test]
    fn names() {
        assert!(container_name("name", "web-1.a_b").is_ok());
        for bad in ["", ".hidden", "-x", "a/b", "a b", "ü", &"x".repeat(64)] {
            let e = container_name("name", bad).unwrap_err();
            assert_eq!(e.field, "name", "{bad:?}");
        }
    }

    #[test]
    fn paths() {
        assert!(absolute_path("cwd", "/a/b").is_ok());
        assert!(absolute_path("cwd", "a/b").is_err());
        assert!(absolute_path("cwd", "/a/../b").is_err());
        assert!(absolute_path("cwd", "/a\0").is_err());
        assert!(absolute_path("cwd", &format!("/{}", "x".repeat(MAX_PATH_LEN))).is_err());
    }

    #[test]
    fn lists_name_the_bad_entry() {
        let list = vec!["ok".to_string(), "b\0d".to_string()];
        assert_eq!(
            string_list("env", &list, 8, 16).unwrap_err().field,
            "env[1]"
        );
        assert!(string_list("env", &list[..1], 8, 16).is_ok());
        assert!(string_list("env", &list[..1], 0, 16).is_err());
    }
}
