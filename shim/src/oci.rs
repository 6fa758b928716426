//! The OCI runtime bundle as the shim reads it: `config.json` parsed into the fields capsule
//! honours, after a check that refuses every field it does not honour by its JSON path
//! (`linux.seccomp`, `process.selinuxLabel`, ...) instead of dropping it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// Largest `config.json` read.
const MAX_SPEC: u64 = 4 << 20;

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid OCI runtime spec")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("OCI spec field {field} is not supported by capsule ({why})")]
    Unsupported { field: String, why: &'static str },
    #[error("OCI spec field {field}: {why}")]
    Invalid { field: String, why: String },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub process: Option<Process>,
    #[serde(default)]
    pub root: Option<Root>,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub linux: Option<Linux>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    #[serde(default)]
    pub terminal: bool,
    #[serde(default)]
    pub console_size: Option<ConsoleSize>,
    #[serde(default)]
    pub user: User,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: String,
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    #[serde(default)]
    pub no_new_privileges: bool,
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct ConsoleSize {
    pub height: u32,
    pub width: u32,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub bounding: Vec<String>,
    #[serde(default)]
    pub effective: Vec<String>,
    #[serde(default)]
    pub inheritable: Vec<String>,
    #[serde(default)]
    pub permitted: Vec<String>,
    #[serde(default)]
    pub ambient: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Root {
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Mount {
    pub destination: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub options: Vec<String>,
}

impl Mount {
    /// A bind mount of a host file or directory (type "bind", or "bind"/"rbind" in the
    /// options, the way runc decides).
    pub fn is_bind(&self) -> bool {
        self.kind == "bind" || self.options.iter().any(|o| o == "bind" || o == "rbind")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    #[serde(default)]
    pub resources: Option<Resources>,
    #[serde(default)]
    pub masked_paths: Vec<String>,
    #[serde(default)]
    pub readonly_paths: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub path: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Resources {
    #[serde(default)]
    pub devices: Vec<DeviceCgroup>,
    #[serde(default)]
    pub memory: Option<Memory>,
    #[serde(default)]
    pub cpu: Option<Cpu>,
    #[serde(default)]
    pub pids: Option<Pids>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct DeviceCgroup {
    #[serde(default)]
    pub allow: bool,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub major: Option<i64>,
    #[serde(default)]
    pub minor: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Memory {
    #[serde(default)]
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Cpu {
    #[serde(default)]
    pub shares: Option<u64>,
    #[serde(default)]
    pub quota: Option<i64>,
    #[serde(default)]
    pub period: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Pids {
    #[serde(default)]
    pub limit: i64,
}

impl Spec {
    /// Reads and checks `<bundle>/config.json`.
    pub fn load(bundle: &Path) -> Result<Spec, SpecError> {
        use std::io::Read;
        let path = bundle.join("config.json");
        let shown = path.display().to_string();
        let mut text = String::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_SPEC).read_to_string(&mut text))
            .map_err(|source| SpecError::Read {
                path: shown.clone(),
                source,
            })?;
        Self::parse(&text).map_err(|e| match e {
            SpecError::Parse { source, .. } => SpecError::Parse {
                path: shown,
                source,
            },
            other => other,
        })
    }

    /// Parses and checks a spec's JSON text.
    pub fn parse(text: &str) -> Result<Spec, SpecError> {
        let parse = |source| SpecError::Parse {
            path: "config.json".into(),
            source,
        };
        let value: Value = serde_json::from_str(text).map_err(parse)?;
        check_supported(&value)?;
        let spec: Spec = serde_json::from_value(value).map_err(parse)?;
        spec.check_values()?;
        Ok(spec)
    }

    /// Parses and checks an exec's process (the JSON of an OCI `process`).
    pub fn parse_process(json: &[u8]) -> Result<Process, SpecError> {
        let parse = |source| SpecError::Parse {
            path: "the exec's process".into(),
            source,
        };
        let value: Value = serde_json::from_slice(json).map_err(parse)?;
        check_process(&value)?;
        serde_json::from_value(value).map_err(parse)
    }

    /// A spec holding only `linux.resources` (the JSON of a task update), checked.
    pub fn with_resources(json: &[u8]) -> Result<Spec, SpecError> {
        let parse = |source| SpecError::Parse {
            path: "the update's resources".into(),
            source,
        };
        let value: Value = serde_json::from_slice(json).map_err(parse)?;
        check_resources(&value)?;
        let resources: Resources = serde_json::from_value(value).map_err(parse)?;
        Ok(Spec {
            linux: Some(Linux {
                resources: Some(resources),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn check_values(&self) -> Result<(), SpecError> {
        let linux = self.linux.clone().unwrap_or_default();
        for (i, ns) in linux.namespaces.iter().enumerate() {
            match ns.kind.as_str() {
                "pid" | "network" | "ipc" | "uts" | "mount" | "cgroup" => {}
                "user" => {
                    return Err(SpecError::Unsupported {
                        field: format!("linux.namespaces[{i}] (user)"),
                        why: "the container's root is the VM's; user namespaces are not mapped",
                    })
                }
                other => {
                    return Err(SpecError::Invalid {
                        field: format!("linux.namespaces[{i}].type"),
                        why: format!("unknown namespace type {other:?}"),
                    })
                }
            }
        }
        if !linux.namespaces.iter().any(|n| n.kind == "mount") {
            return Err(SpecError::Unsupported {
                field: "linux.namespaces (no mount namespace)".into(),
                why: "a container always has its own root inside the VM",
            });
        }
        for (i, m) in self.mounts.iter().enumerate() {
            if !m.destination.starts_with('/') {
                return Err(SpecError::Invalid {
                    field: format!("mounts[{i}].destination"),
                    why: format!("{:?} is not an absolute path", m.destination),
                });
            }
            if m.is_bind() && !m.source.starts_with('/') {
                return Err(SpecError::Invalid {
                    field: format!("mounts[{i}].source"),
                    why: format!("bind source {:?} is not an absolute host path", m.source),
                });
            }
        }
        Ok(())
    }

    /// The root directory the spec names (relative paths are inside the bundle).
    pub fn root_dir(&self, bundle: &Path) -> std::path::PathBuf {
        let path = self.root.as_ref().map_or("rootfs", |r| r.path.as_str());
        bundle.join(if path.is_empty() { "rootfs" } else { path })
    }

    pub fn process(&self) -> Process {
        self.process.clone().unwrap_or_default()
    }

    pub fn linux(&self) -> Linux {
        self.linux.clone().unwrap_or_default()
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }

    /// The namespace of `kind` the spec asks for: `None` if absent (shared with the host in
    /// runc's terms), `Some("")` for a new one, `Some(path)` to join one.
    pub fn namespace(&self, kind: &str) -> Option<String> {
        self.linux
            .as_ref()?
            .namespaces
            .iter()
            .find(|n| n.kind == kind)
            .map(|n| n.path.clone())
    }
}

/// Whether a JSON value carries anything (null, false, 0, "", [] and {} do not).
fn is_set(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => o.values().any(is_set),
    }
}

/// The fields of an object capsule reads; every other set field is refused.
fn check_object(v: &Value, path: &str, known: &[&str], why: &'static str) -> Result<(), SpecError> {
    let Some(obj) = v.as_object() else {
        return Ok(());
    };
    for (k, val) in obj {
        if !known.contains(&k.as_str()) && is_set(val) {
            let field = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            return Err(SpecError::Unsupported { field, why });
        }
    }
    Ok(())
}

fn check_supported(spec: &Value) -> Result<(), SpecError> {
    const NOT_YET: &str = "not implemented in the guest";
    check_object(
        spec,
        "",
        &[
            "ociVersion",
            "process",
            "root",
            "hostname",
            "mounts",
            "annotations",
            "linux",
        ],
        NOT_YET,
    )?;
    check_process(&spec["process"])?;
    check_object(&spec["root"], "root", &["path", "readonly"], NOT_YET)?;
    if let Some(mounts) = spec["mounts"].as_array() {
        for (i, m) in mounts.iter().enumerate() {
            check_object(
                m,
                &format!("mounts[{i}]"),
                &["destination", "type", "source", "options"],
                "id-mapped mounts are not implemented",
            )?;
        }
    }
    let linux = &spec["linux"];
    check_object(
        linux,
        "linux",
        &[
            "namespaces",
            "resources",
            "cgroupsPath",
            "maskedPaths",
            "readonlyPaths",
        ],
        NOT_YET,
    )?;
    check_resources(&linux["resources"])
}

fn check_process(process: &Value) -> Result<(), SpecError> {
    const NOT_YET: &str = "not implemented in the guest";
    check_object(
        process,
        "process",
        &[
            "terminal",
            "consoleSize",
            "user",
            "args",
            "env",
            "cwd",
            "capabilities",
            "rlimits",
            "noNewPrivileges",
            "oomScoreAdj",
        ],
        "no such security module or setting in the guest",
    )?;
    check_object(
        &process["user"],
        "process.user",
        &["uid", "gid", "additionalGids"],
        NOT_YET,
    )
}

fn check_resources(resources: &Value) -> Result<(), SpecError> {
    const NOT_YET: &str = "not implemented in the guest";
    check_object(
        resources,
        "linux.resources",
        &["devices", "memory", "cpu", "pids"],
        NOT_YET,
    )?;
    check_object(
        &resources["memory"],
        "linux.resources.memory",
        &["limit"],
        NOT_YET,
    )?;
    check_object(
        &resources["cpu"],
        "linux.resources.cpu",
        &["shares", "quota", "period"],
        NOT_YET,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of `ctr run`'s default spec (containerd 1.6), trimmed.
    const CTR_DEFAULT: &str = r#"{
      "ociVersion": "1.0.2-dev",
      "process": {
        "user": {"uid": 0, "gid": 0}, "args": ["uname", "-r"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "cwd": "/",
        "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"],
                         "permitted": ["CAP_CHOWN"]},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": true
      },
      "root": {"path": "rootfs"},
      "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
      ],
      "linux": {
        "resources": {"devices": [{"allow": false, "access": "rwm"}]},
        "cgroupsPath": "/default/id",
        "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                       {"type": "mount"}, {"type": "network"}],
        "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"],
        "seccomp": null
      }
    }"#;

    #[test]
    fn ctr_default_spec_is_accepted() {
        let spec = Spec::parse(CTR_DEFAULT).unwrap();
        assert_eq!(spec.process().args, ["uname", "-r"]);
        assert_eq!(spec.process().rlimits[0].kind, "RLIMIT_NOFILE");
        assert_eq!(spec.namespace("network").as_deref(), Some(""));
        assert_eq!(spec.namespace("user"), None);
        assert_eq!(spec.linux().masked_paths, ["/proc/kcore"]);
    }

    fn refused(patch: impl FnOnce(&mut Value)) -> String {
        let mut v: Value = serde_json::from_str(CTR_DEFAULT).unwrap();
        patch(&mut v);
        match Spec::parse(&v.to_string()) {
            Err(e @ (SpecError::Unsupported { .. } | SpecError::Invalid { .. })) => e.to_string(),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn unsupported_fields_are_named() {
        let e = refused(|v| v["linux"]["seccomp"] = serde_json::json!({"defaultAction": "x"}));
        assert!(e.contains("linux.seccomp"), "{e}");
        let e = refused(|v| v["process"]["selinuxLabel"] = "system_u".into());
        assert!(e.contains("process.selinuxLabel"), "{e}");
        let e = refused(|v| v["hooks"] = serde_json::json!({"prestart": [{"path": "/x"}]}));
        assert!(e.contains("hooks"), "{e}");
        let e = refused(|v| v["linux"]["sysctl"] = serde_json::json!({"net.x": "1"}));
        assert!(e.contains("linux.sysctl"), "{e}");
        let e = refused(|v| v["linux"]["namespaces"][0]["type"] = "user".into());
        assert!(e.contains("linux.namespaces[0] (user)"), "{e}");
        let e = refused(|v| v["mounts"][0]["destination"] = "proc".into());
        assert!(e.contains("mounts[0].destination"), "{e}");
        let e = refused(|v| v["linux"]["resources"]["blockIO"] = serde_json::json!({"weight": 5}));
        assert!(e.contains("linux.resources.blockIO"), "{e}");
    }

    #[test]
    fn empty_values_count_as_absent() {
        let spec = Spec::parse(
            r#"{"process": {"args": ["sh"], "apparmorProfile": ""},
                "linux": {"namespaces": [{"type": "mount"}], "sysctl": {}, "seccomp": null}}"#,
        )
        .unwrap();
        assert_eq!(spec.process().args, ["sh"]);
    }

    #[test]
    fn binds_are_recognised_by_type_or_option() {
        let m = |kind: &str, opt: &str| Mount {
            destination: "/x".into(),
            kind: kind.into(),
            source: "/h".into(),
            options: vec![opt.into()],
        };
        assert!(m("bind", "ro").is_bind());
        assert!(m("none", "rbind").is_bind());
        assert!(!m("tmpfs", "nosuid").is_bind());
    }
}
