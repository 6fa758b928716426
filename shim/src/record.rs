//! What the shim leaves in each bundle (`capsule-shim.json`) so that `delete`, which
//! containerd runs when a shim died, finds the VM, the container and the host mounts to clean.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE: &str = "capsule-shim.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The VM the container runs in.
    pub vm: String,
    /// The container object's name in the VM.
    pub container: String,
    /// The container's directory in the pod directory.
    pub files: String,
    /// The pod directory (the VM's share).
    pub pod_dir: PathBuf,
    /// Whether this container's task made the VM (its deletion removes the VM).
    pub owns_vm: bool,
}

impl Record {
    pub fn write(&self, bundle: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(bundle.join(FILE), text)
    }

    pub fn read(bundle: &Path) -> Option<Record> {
        let text = std::fs::read(bundle.join(FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("capsule-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let r = Record {
            vm: "default.x".into(),
            container: "x".into(),
            files: "x".into(),
            pod_dir: "/run/x/pod".into(),
            owns_vm: true,
        };
        r.write(&dir).unwrap();
        assert_eq!(Record::read(&dir), Some(r));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
