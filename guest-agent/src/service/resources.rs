//! A container's cgroup from the host's side: ContainerStats reads its cgroup v2 counters
//! (containerd's task metrics) and SetResources writes its limits (containerd's task update,
//! the OCI bundle's `linux.resources`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use capsule_protocol::{pb, RpcError};

use super::{Agent, ContainerEntry};

/// `key value` lines of a cgroup file (cpu.stat, memory.stat, memory.events).
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A one-value cgroup file; "max" and unreadable files are 0.
fn single(text: &str) -> u64 {
    text.trim().parse().unwrap_or(0)
}

/// The counters of the cgroup at `dir`.
pub(crate) fn read_stats(dir: &Path) -> pb::ContainerStatsResponse {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let (cpu, memory, events) = (read("cpu.stat"), read("memory.stat"), read("memory.events"));
    pb::ContainerStatsResponse {
        cpu_usage_usec: keyed(&cpu, "usage_usec"),
        cpu_user_usec: keyed(&cpu, "user_usec"),
        cpu_system_usec: keyed(&cpu, "system_usec"),
        cpu_nr_periods: keyed(&cpu, "nr_periods"),
        cpu_nr_throttled: keyed(&cpu, "nr_throttled"),
        cpu_throttled_usec: keyed(&cpu, "throttled_usec"),
        memory_current: single(&read("memory.current")),
        memory_max: single(&read("memory.max")),
        memory_anon: keyed(&memory, "anon"),
        memory_file: keyed(&memory, "file"),
        pids_current: single(&read("pids.current")),
        pids_max: single(&read("pids.max")),
        memory_events_max: keyed(&events, "max"),
        memory_events_oom: keyed(&events, "oom"),
        memory_events_oom_kill: keyed(&events, "oom_kill"),
    }
}

/// The (file, value) writes of a checked request, in order.
pub(crate) fn limit_writes(
    r: &pb::SetResourcesRequest,
) -> Result<Vec<(&'static str, String)>, RpcError> {
    let mut out = Vec::new();
    match r.memory_max {
        0 => {}
        -1 => out.push(("memory.max", "max".to_string())),
        m if m >= 1 << 20 => out.push(("memory.max", m.to_string())),
        m => {
            return Err(RpcError::invalid(
                "memory_max",
                format!("{m}: at least 1 MiB, or -1 for no limit"),
            ))
        }
    }
    let period = match r.cpu_period_usec {
        0 => 100_000,
        p if (1000..=1_000_000).contains(&p) => p,
        p => {
            return Err(RpcError::invalid(
                "cpu_period_usec",
                format!("{p}: 1000 to 1000000 microseconds"),
            ))
        }
    };
    match r.cpu_quota_usec {
        0 => {}
        -1 => out.push(("cpu.max", format!("max {period}"))),
        q if (1000..=1_000_000_000_000).contains(&q) => {
            out.push(("cpu.max", format!("{q} {period}")))
        }
        q => {
            return Err(RpcError::invalid(
                "cpu_quota_usec",
                format!("{q}: 1000 to 10^12 microseconds, or -1 for no limit"),
            ))
        }
    }
    match r.cpu_weight {
        0 => {}
        w if w <= 10_000 => out.push(("cpu.weight", w.to_string())),
        w => return Err(RpcError::invalid("cpu_weight", format!("{w}: 1 to 10000"))),
    }
    match r.pids_max {
        0 => {}
        -1 => out.push(("pids.max", "max".to_string())),
        p if p > 0 => out.push(("pids.max", p.to_string())),
        p => {
            return Err(RpcError::invalid(
                "pids_max",
                format!("{p}: a positive count, or -1 for no limit"),
            ))
        }
    }
    Ok(out)
}

/// The controllers a container's cgroup gets: its counters (ContainerStats) and limits.
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

/// Enables [`CONTROLLERS`] for the children of the cgroup `dir`; one that cannot be enabled is
/// logged and left out (SetResources then names it).
pub fn enable_controllers(dir: &Path) {
    for c in CONTROLLERS {
        if let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")) {
            log::info!("cgroup {}: controller {c} not enabled: {e}", dir.display());
        }
    }
}

/// Enables `controller` for the children of `dir`'s parent, if it is not yet.
fn enable_controller(dir: &Path, controller: &str) -> Result<(), String> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    let control = parent.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&control).unwrap_or_default();
    if enabled.split_whitespace().any(|c| c == controller) {
        return Ok(());
    }
    std::fs::write(&control, format!("+{controller}")).map_err(|e| {
        format!(
            "enabling the {controller} controller in {}: {e}",
            control.display()
        )
    })
}

fn cgroup_of(c: &ContainerEntry) -> Result<PathBuf, RpcError> {
    c.ops.cgroup_dir().filter(|d| d.is_dir()).ok_or_else(|| {
        RpcError::from_errno(libc::ENOENT, "the container has no cgroup v2 directory")
            .with_field("container")
    })
}

impl Agent {
    pub(super) async fn container_stats(
        self: &Arc<Self>,
        r: pb::ContainerRef,
    ) -> Result<pb::ContainerStatsResponse, RpcError> {
        let c = self.container("container", &r.container)?;
        Self::blocking(move || Ok(read_stats(&cgroup_of(&c)?))).await
    }

    pub(super) async fn set_resources(
        self: &Arc<Self>,
        r: pb::SetResourcesRequest,
    ) -> Result<pb::Empty, RpcError> {
        let c = self.container("container", &r.container)?;
        let writes = limit_writes(&r)?;
        Self::blocking(move || {
            let dir = cgroup_of(&c)?;
            for (file, value) in writes {
                let controller = file.split('.').next().unwrap_or_default();

                let field = match file {
                    "memory.max" => "memory_max",
                    "cpu.max" => "cpu_quota_usec",
                    "cpu.weight" => "cpu_weight",
                    _ => "pids_max",
                };
                enable_controller(&dir, controller)
                    .map_err(|m| RpcError::from_errno(libc::EOPNOTSUPP, m).with_field(field))?;
                std::fs::write(dir.join(file), &value).map_err(|e| {
                    RpcError::from_errno(
                        e.raw_os_error().unwrap_or(libc::EIO),
                        format!("writing {value:?} to {file}: {e}"),
                    )
                    .with_field(field)
                })?;
            }
            Ok(())
        })
        .await?;
        Ok(pb::Empty {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_read_from_cgroup_files() {
        let dir = std::env::temp_dir().join(format!("capsule-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        )
        .unwrap();
        std::fs::write(dir.join("memory.current"), "4096\n").unwrap();
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        let s = read_stats(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            (s.cpu_usage_usec, s.cpu_user_usec, s.cpu_system_usec),
            (1500, 1000, 500)
        );
        assert_eq!(
            (s.memory_current, s.memory_max, s.pids_current),
            (4096, 0, 0)
        );
        assert_eq!((s.memory_events_max, s.memory_events_oom_kill), (3, 1));
    }

    #[test]
    fn limits_become_cgroup_writes() {
        let r = pb::SetResourcesRequest {
            memory_max: 64 << 20,
            cpu_quota_usec: 50_000,
            cpu_weight: 100,
            pids_max: -1,
            ..Default::default()
        };
        assert_eq!(
            limit_writes(&r).unwrap(),
            [
                ("memory.max", "67108864".to_string()),
                ("cpu.max", "50000 100000".to_string()),
                ("cpu.weight", "100".to_string()),
                ("pids.max", "max".to_string()),
            ]
        );
        assert!(limit_writes(&pb::SetResourcesRequest::default())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn bad_limits_name_their_field() {
        let bad = |r: pb::SetResourcesRequest| limit_writes(&r).unwrap_err().field;
        let r = pb::SetResourcesRequest::default;
        assert_eq!(
            bad(pb::SetResourcesRequest {
                memory_max: 5,
                ..r()
            }),
            "memory_max"
        );
        assert_eq!(
            bad(pb::SetResourcesRequest {
                cpu_quota_usec: 5,
                ..r()
            }),
            "cpu_quota_usec"
        );
        assert_eq!(
            bad(pb::SetResourcesRequest {
                cpu_period_usec: 5,
                ..r()
            }),
            "cpu_period_usec"
        );
        assert_eq!(
            bad(pb::SetResourcesRequest {
                cpu_weight: 20_000,
                ..r()
            }),
            "cpu_weight"
        );
        assert_eq!(
            bad(pb::SetResourcesRequest {
                pids_max: -5,
                ..r()
            }),
            "pids_max"
        );
    }
}
