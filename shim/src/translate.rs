//! From a checked OCI spec to what capsule's host library takes: the container's flags and
//! shared namespaces, its mounts inside the guest (file systems, and host bind mounts that
//! travel through the pod's virtio-fs share), how its root is finished, its device list and
//! cgroup limits, and its processes.

use capsule_host::exec::ExecSpec;
use capsule_protocol::container::flags;
use capsule_protocol::pb;

use crate::oci::{self, SpecError};

/// A mount of the container, in the spec's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestMount {
    /// A file system made in the guest (proc, tmpfs, devpts, mqueue, sysfs, cgroup2).
    Fs {
        fstype: String,
        source: String,
        options: String,
        target: String,
    },
    /// A host file or directory, bound below the pod directory as bind number `index`.
    HostBind {
        index: usize,
        source: String,
        target: String,
        read_only: bool,
    },
}

/// File systems the guest makes itself.
const GUEST_FS: &[&str] = &[
    "proc", "tmpfs", "devpts", "mqueue", "sysfs", "cgroup", "cgroup2",
];

/// Mount options that only say what kind of mount it is, or concern propagation on the host.
const HOST_ONLY_OPTIONS: &[&str] = &[
    "bind", "rbind", "private", "rprivate", "slave", "rslave", "shared", "rshared", "rw",
];

/// The container's mounts inside the guest.
pub fn mounts(spec: &oci::Spec) -> Result<Vec<GuestMount>, SpecError> {
    let mut out = Vec::new();
    let mut binds = 0;
    for (i, m) in spec.mounts.iter().enumerate() {
        let options: Vec<&str> = m
            .options
            .iter()
            .map(String::as_str)
            .filter(|o| !HOST_ONLY_OPTIONS.contains(o))
            .collect();
        if m.is_bind() {
            if m.destination == "/dev/shm" {
                // The pod's shared memory stays in guest memory: a tmpfs per container.
                out.push(GuestMount::Fs {
                    fstype: "tmpfs".into(),
                    source: "shm".into(),
                    options: "nosuid,noexec,nodev,mode=1777,size=65536k".into(),
                    target: m.destination.clone(),
                });
                continue;
            }
            out.push(GuestMount::HostBind {
                index: binds,
                source: m.source.clone(),
                target: m.destination.clone(),
                read_only: options.contains(&"ro"),
            });
            binds += 1;
            continue;
        }
        if !GUEST_FS.contains(&m.kind.as_str()) {
            return Err(SpecError::Unsupported {
                field: format!("mounts[{i}].type ({:?} on {})", m.kind, m.destination),
                why: "only bind mounts and proc, tmpfs, devpts, mqueue, sysfs and cgroup are",
            });
        }
        out.push(GuestMount::Fs {
            fstype: m.kind.clone(),
            source: m.source.clone(),
            options: options.join(","),
            target: m.destination.clone(),
        });
    }
    Ok(out)
}

/// container_create() flags: a new mount namespace always, the others as the spec asks.
pub fn container_flags(spec: &oci::Spec) -> u32 {
    let mut f = flags::NEW_FS_NS;
    for (kind, flag) in [
        ("pid", flags::NEW_PID_NS),
        ("ipc", flags::NEW_IPC_NS),
        ("uts", flags::NEW_UTS_NS),
        ("network", flags::NEW_NET_NS),
        ("cgroup", flags::NEW_CGROUP_NS),
    ] {
        if spec.namespace(kind).is_some() {
            f |= flag;
        }
    }
    f
}

/// The namespaces a pod member takes from its sandbox's container: those the spec names by
/// path (CRI names the sandbox's).
pub fn shared_namespaces(spec: &oci::Spec, sandbox: &str) -> Vec<pb::NamespaceShare> {
    [
        ("network", pb::NamespaceType::NsNet),
        ("ipc", pb::NamespaceType::NsIpc),
        ("uts", pb::NamespaceType::NsUts),
        ("pid", pb::NamespaceType::NsPid),
    ]
    .into_iter()
    .filter(|(kind, _)| spec.namespace(kind).is_some_and(|p| !p.is_empty()))
    .map(|(_, ns)| pb::NamespaceShare {
        ns: ns as i32,
        from_container: sandbox.to_string(),
    })
    .collect()
}

/// How the root is finished once the mounts are in.
pub fn finish_root(spec: &oci::Spec, container: &str) -> pb::FinishRootRequest {
    let linux = spec.linux();
    pb::FinishRootRequest {
        container: container.to_string(),
        default_devices: spec
            .mounts
            .iter()
            .any(|m| m.destination == "/dev" && m.kind == "tmpfs"),
        masked_paths: linux.masked_paths,
        readonly_paths: linux.readonly_paths,
        readonly_root: spec.root.as_ref().is_some_and(|r| r.readonly),
    }
}

/// The device nodes runc lets every container open.
const DEFAULT_DEVICES: &[(u32, Option<u32>)] = &[
    (1, Some(3)), // null
    (1, Some(5)), // zero
    (1, Some(7)), // full
    (1, Some(8)), // random
    (1, Some(9)), // urandom
    (5, Some(0)), // tty
    (5, Some(1)), // console
    (5, Some(2)), // ptmx
    (136, None),  // pts/*
];

/// The container's device list from `linux.resources.devices`: runc's defaults and the
/// rules' allowed devices after a leading deny-all; no list (every device) when a rule allows
/// all devices.
pub fn devices(spec: &oci::Spec) -> Result<Vec<pb::DeviceRule>, SpecError> {
    let rules = spec
        .linux()
        .resources
        .map(|r| r.devices)
        .unwrap_or_default();
    let Some((first, rest)) = rules.split_first() else {
        return Ok(Vec::new());
    };
    let all = |r: &oci::DeviceCgroup| {
        matches!(r.kind.as_deref(), None | Some("a")) && r.major.is_none() && r.minor.is_none()
    };
    if first.allow || !all(first) {
        return Err(SpecError::Unsupported {
            field: "linux.resources.devices[0]".into(),
            why: "a device list starts by denying every device",
        });
    }
    let rule = |kind: pb::DeviceKind, major: u32, minor: Option<u32>| pb::DeviceRule {
        kind: kind as i32,
        major,
        minor: minor.unwrap_or(0),
        any_minor: minor.is_none(),
    };
    let mut out: Vec<pb::DeviceRule> = DEFAULT_DEVICES
        .iter()
        .map(|(major, minor)| rule(pb::DeviceKind::DeviceChar, *major, *minor))
        .collect();
    for (i, r) in rest.iter().enumerate() {
        let field = format!("linux.resources.devices[{}]", i + 1);
        if !r.allow {
            return Err(SpecError::Unsupported {
                field,
                why: "a deny rule after allow rules (a device list only allows)",
            });
        }
        if all(r) {
            return Ok(Vec::new());
        }
        let kind = match r.kind.as_deref() {
            Some("c") => pb::DeviceKind::DeviceChar,
            Some("b") => pb::DeviceKind::DeviceBlock,
            other => {
                return Err(SpecError::Invalid {
                    field: format!("{field}.type"),
                    why: format!("{other:?}: a device rule of type c or b needs a major number"),
                })
            }
        };
        let number = |v: Option<i64>, name: &str| -> Result<Option<u32>, SpecError> {
            match v {
                None | Some(-1) => Ok(None),
                Some(n) => u32::try_from(n).map(Some).map_err(|_| SpecError::Invalid {
                    field: format!("{field}.{name}"),
                    why: format!("{n} is not a device number"),
                }),
            }
        };
        let Some(major) = number(r.major, "major")? else {
            return Ok(Vec::new());
        };
        out.push(rule(kind, major, number(r.minor, "minor")?));
    }
    Ok(out)
}

/// `linux.resources` limits as cgroup writes in the guest (`None`: nothing to set).
pub fn resources(spec: &oci::Spec, container: &str) -> Option<pb::SetResourcesRequest> {
    let r = spec.linux().resources?;
    let mut req = pb::SetResourcesRequest {
        container: container.to_string(),
        ..Default::default()
    };
    if let Some(limit) = r.memory.and_then(|m| m.limit).filter(|l| *l > 0) {
        req.memory_max = limit.max(1 << 20);
    }
    if let Some(cpu) = r.cpu {
        if let Some(quota) = cpu.quota.filter(|q| *q > 0) {
            req.cpu_quota_usec = quota.max(1000);
            req.cpu_period_usec = cpu.period.unwrap_or(100_000).clamp(1000, 1_000_000);
        }
        if let Some(shares) = cpu.shares.filter(|s| *s > 0) {
            req.cpu_weight = shares_to_weight(shares);
        }
    }
    if let Some(p) = r.pids.filter(|p| p.limit > 0) {
        req.pids_max = p.limit;
    }
    let nothing = pb::SetResourcesRequest {
        container: container.to_string(),
        ..Default::default()
    };
    (req != nothing).then_some(req)
}

/// cgroup v1 cpu.shares (2-262144) to cgroup v2 cpu.weight (1-10000), as runc converts.
fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// The vCPUs and memory of a pod's VM: `io.capsule.vm.cpus` / `io.capsule.vm.memory-mib`
/// annotations, else enough for the first container's limits, else capsule's defaults.
pub fn vm_size(spec: &oci::Spec) -> Result<(u32, u64), SpecError> {
    const DEFAULT_CPUS: u32 = 1;
    const DEFAULT_MEMORY_MIB: u64 = 256;
    /// What the guest kernel and agent need beside a container's own limit.
    const GUEST_OVERHEAD_MIB: u64 = 128;
    let annotated = |key: &str| -> Result<Option<u64>, SpecError> {
        spec.annotation(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| SpecError::Invalid {
                    field: format!("annotations[{key}]"),
                    why: format!("{v:?} is not a whole number"),
                })
            })
            .transpose()
    };
    let res = spec.linux().resources.unwrap_or_default();
    let cpus = match annotated(crate::ANNOTATION_CPUS)? {
        Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
        None => res
            .cpu
            .and_then(|c| Some((c.quota.filter(|q| *q > 0)?, c.period.unwrap_or(100_000))))
            .map(|(q, p)| (q as u64).div_ceil(p.max(1)) as u32)
            .unwrap_or(DEFAULT_CPUS)
            .max(1),
    };
    let memory = match annotated(crate::ANNOTATION_MEMORY)? {
        Some(n) => n,
        None => res
            .memory
            .and_then(|m| m.limit)
            .filter(|l| *l > 0)
            .map(|l| (l as u64).div_ceil(1 << 20) + GUEST_OVERHEAD_MIB)
            .unwrap_or(DEFAULT_MEMORY_MIB)
            .max(DEFAULT_MEMORY_MIB),
    };
    Ok((cpus, memory))
}

/// A process of the spec (the task's, or an exec's `process` JSON).
pub fn exec_spec(p: &oci::Process, stdin: bool) -> Result<ExecSpec, SpecError> {
    if p.args.is_empty() || p.args[0].is_empty() {
        return Err(SpecError::Invalid {
            field: "process.args".into(),
            why: "no program to run".into(),
        });
    }
    Ok(ExecSpec {
        argv: p.args.clone(),
        env: p.env.clone(),
        cwd: p.cwd.clone(),
        uid: p.user.uid,
        gid: p.user.gid,
        additional_gids: p.user.additional_gids.clone(),
        tty: p.terminal.then(|| {
            p.console_size.map(|s| pb::TtySize {
                rows: s.height,
                cols: s.width,
            })
        }),
        stdin,
        rlimits: p
            .rlimits
            .iter()
            .map(|r| pb::Rlimit {
                r#type: r.kind.clone(),
                soft: r.soft,
                hard: r.hard,
            })
            .collect(),
        capabilities: p.capabilities.as_ref().map(|c| pb::Capabilities {
            bounding: c.bounding.clone(),
            effective: c.effective.clone(),
            inheritable: c.inheritable.clone(),
            permitted: c.permitted.clone(),
            ambient: c.ambient.clone(),
        }),
        no_new_privileges: p.no_new_privileges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> oci::Spec {
        oci::Spec::parse(json).unwrap()
    }

    const BASE: &str = r#""linux": {"namespaces": [{"type": "mount"}, {"type": "pid"},
        {"type": "network", "path": "/var/run/netns/cni-1"}]}"#;

    #[test]
    fn mounts_split_into_guest_file_systems_and_host_binds() {
        let s = spec(&format!(
            r#"{{"mounts": [
                {{"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid"]}},
                {{"destination": "/etc/hosts", "type": "bind", "source": "/var/x/hosts",
                  "options": ["rbind", "rprivate", "ro"]}},
                {{"destination": "/dev/shm", "type": "bind", "source": "/run/x/shm",
                  "options": ["rbind"]}},
                {{"destination": "/data", "type": "none", "source": "/srv", "options": ["rbind", "rw"]}}
            ], {BASE}}}"#
        ));
        let m = mounts(&s).unwrap();
        assert_eq!(
            m[0],
            GuestMount::Fs {
                fstype: "proc".into(),
                source: "proc".into(),
                options: "nosuid".into(),
                target: "/proc".into()
            }
        );
        assert_eq!(
            m[1],
            GuestMount::HostBind {
                index: 0,
                source: "/var/x/hosts".into(),
                target: "/etc/hosts".into(),
                read_only: true
            }
        );
        assert!(matches!(&m[2], GuestMount::Fs { fstype, .. } if fstype == "tmpfs"));
        assert!(matches!(
            &m[3],
            GuestMount::HostBind {
                index: 1,
                read_only: false,
                ..
            }
        ));
    }

    #[test]
    fn foreign_file_systems_are_refused_by_index() {
        let s = spec(&format!(
            r#"{{"mounts": [{{"destination": "/x", "type": "ext4", "source": "/dev/sda"}}], {BASE}}}"#
        ));
        let e = mounts(&s).unwrap_err().to_string();
        assert!(e.contains("mounts[0].type"), "{e}");
    }

    #[test]
    fn flags_and_shared_namespaces() {
        let s = spec(&format!("{{{BASE}}}"));
        assert_eq!(
            container_flags(&s),
            flags::NEW_FS_NS | flags::NEW_PID_NS | flags::NEW_NET_NS
        );
        let shared = shared_namespaces(&s, "sandbox");
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0].ns, pb::NamespaceType::NsNet as i32);
        assert_eq!(shared[0].from_container, "sandbox");
    }

    #[test]
    fn device_rules_become_a_device_list() {
        let with = |rules: &str| {
            spec(&format!(
                r#"{{"linux": {{"namespaces": [{{"type": "mount"}}],
                    "resources": {{"devices": {rules}}}}}}}"#
            ))
        };
        let defaults = devices(&with(r#"[{"allow": false, "access": "rwm"}]"#)).unwrap();
        assert_eq!(defaults.len(), DEFAULT_DEVICES.len());
        let more = devices(&with(
            r#"[{"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"}]"#,
        ))
        .unwrap();
        assert_eq!(more.last().map(|d| (d.major, d.minor)), Some((10, 200)));
        let all = devices(&with(
            r#"[{"allow": false, "access": "rwm"}, {"allow": true, "access": "rwm"}]"#,
        ))
        .unwrap();
        assert!(all.is_empty());
        let e = devices(&with(r#"[{"allow": true, "type": "c", "major": 1}]"#)).unwrap_err();
        assert!(e.to_string().contains("linux.resources.devices[0]"), "{e}");
    }

    #[test]
    fn limits_and_vm_size() {
        let s = spec(
            r#"{"linux": {"namespaces": [{"type": "mount"}], "resources": {
                "memory": {"limit": 104857600},
                "cpu": {"shares": 1024, "quota": 150000, "period": 100000},
                "pids": {"limit": 50}}}}"#,
        );
        let r = resources(&s, "c").unwrap();
        assert_eq!(r.memory_max, 100 << 20);
        assert_eq!((r.cpu_quota_usec, r.cpu_period_usec), (150_000, 100_000));
        assert_eq!(r.cpu_weight, 39);
        assert_eq!(r.pids_max, 50);
        assert_eq!(vm_size(&s).unwrap(), (2, 256));
        let big = spec(
            r#"{"linux": {"namespaces": [{"type": "mount"}],
                "resources": {"memory": {"limit": 536870912}}}}"#,
        );
        assert_eq!(vm_size(&big).unwrap(), (1, 512 + 128));
        let annotated = spec(
            r#"{"annotations": {"io.capsule.vm.cpus": "2", "io.capsule.vm.memory-mib": "x"},
                "linux": {"namespaces": [{"type": "mount"}]}}"#,
        );
        let e = vm_size(&annotated).unwrap_err().to_string();
        assert!(e.contains("io.capsule.vm.memory-mib"), "{e}");
        assert!(resources(
            &spec(r#"{"linux": {"namespaces": [{"type": "mount"}]}}"#),
            "c"
        )
        .is_none());
    }

    #[test]
    fn processes() {
        let s = spec(
            r#"{"process": {"terminal": true, "consoleSize": {"height": 24, "width": 80},
                "user": {"uid": 1000, "gid": 1000, "additionalGids": [5]},
                "args": ["sh"], "env": ["A=1"], "cwd": "/w", "noNewPrivileges": true,
                "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 20}]},
                "linux": {"namespaces": [{"type": "mount"}]}}"#,
        );
        let e = exec_spec(&s.process(), true).unwrap();
        assert_eq!(
            (e.uid, e.gid, e.additional_gids.clone()),
            (1000, 1000, vec![5])
        );
        assert_eq!(e.tty, Some(Some(pb::TtySize { rows: 24, cols: 80 })));
        assert!(e.no_new_privileges && e.stdin && e.capabilities.is_none());
        assert_eq!(e.rlimits[0].r#type, "RLIMIT_NOFILE");
        let empty = oci::Process::default();
        assert!(exec_spec(&empty, false)
            .unwrap_err()
            .to_string()
            .contains("process.args"));
    }
}
