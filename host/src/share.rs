//! Host directories in a VM's container (`capsule create --share HOST_DIR:/path[:ro]`, and
//! `--rootfs-dir DIR` as the container's root): what a share is, the tags the guest knows
//! them by, and the checks [`crate::spec::VmSpec::check`] runs on them. Each share is served
//! to the guest by its own virtiofsd ([`crate::virtiofsd`]) as a virtio-fs device; the agent
//! mounts it into the container with the container mount API.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Longest virtio-fs tag (the device's config space holds 36 bytes).
pub use capsule_protocol::validate::MAX_VIRTIOFS_TAG_LEN as MAX_TAG_LEN;

/// The target of the share that is the container's root (`--rootfs-dir`).
pub const ROOT_TARGET: &str = "/";

/// One host directory shared into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The host directory (absolute once the spec is prepared).
    pub host_dir: PathBuf,
    /// Absolute path inside the container; [`ROOT_TARGET`] for the container's root.
    pub target: String,
    pub read_only: bool,
    /// The virtio-fs tag the guest mounts it by ([`tag`]).
    pub tag: String,
}

impl Share {
    /// Whether this share is the container's root.
    pub fn is_root(&self) -> bool {
        self.target == ROOT_TARGET
    }
}

/// The virtio-fs tag of the `index`-th share (the root share has its own).
pub fn tag(index: usize, is_root: bool) -> String {
    if is_root {
        "capsule-root".to_string()
    } else {
        format!("capsule-fs{index}")
    }
}

/// Why a share was refused; each error names the share.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("share {host_dir}: the host directory does not exist")]
    Missing { host_dir: PathBuf },
    #[error("share {host_dir}: not a directory")]
    NotADirectory { host_dir: PathBuf },
    #[error("share {host_dir}: target {target:?} is not an absolute path inside the container")]
    TargetNotAbsolute { host_dir: PathBuf, target: String },
    #[error("share {host_dir}: target {target:?} is already the target of another share")]
    DuplicateTarget { host_dir: PathBuf, target: String },
    #[error("share {host_dir}: target \"/\" is the container's root: use --rootfs-dir for that")]
    RootTarget { host_dir: PathBuf },
    #[error("share {host_dir}: tag {tag:?} is empty, longer than {MAX_TAG_LEN} bytes, or not plain ASCII")]
    Tag { host_dir: PathBuf, tag: String },
}

/// Checks every share: the host directory exists and is one, the target is absolute (and
/// normalised: no `.`/`..` components, no trailing slash), no two shares have one target, and
/// the tags fit the device.
pub fn check(shares: &[Share]) -> Result<(), ShareError> {
    let mut targets = BTreeSet::new();
    let mut tags = BTreeSet::new();
    for share in shares {
        let host_dir = || share.host_dir.clone();
        match std::fs::metadata(&share.host_dir) {
            Err(_) => {
                return Err(ShareError::Missing {
                    host_dir: host_dir(),
                })
            }
            Ok(m) if !m.is_dir() => {
                return Err(ShareError::NotADirectory {
                    host_dir: host_dir(),
                })
            }
            Ok(_) => {}
        }
        if !target_is_absolute(&share.target) {
            return Err(ShareError::TargetNotAbsolute {
                host_dir: host_dir(),
                target: share.target.clone(),
            });
        }
        if !targets.insert(share.target.as_str()) {
            return Err(ShareError::DuplicateTarget {
                host_dir: host_dir(),
                target: share.target.clone(),
            });
        }
        let tag_ok = capsule_protocol::validate::virtiofs_tag("tag", &share.tag).is_ok();
        if !tag_ok || !tags.insert(share.tag.as_str()) {
            return Err(ShareError::Tag {
                host_dir: host_dir(),
                tag: share.tag.clone(),
            });
        }
    }
    Ok(())
}

/// `/` or `/a/b`: absolute, without empty, `.` or `..` components (so that two spellings of
/// one directory cannot pass as two targets).
fn target_is_absolute(target: &str) -> bool {
    if target == ROOT_TARGET {
        return true;
    }
    let Some(rest) = target.strip_prefix('/') else {
        return false;
    };
    rest.split('/')
        .all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(host_dir: &str, target: &str, index: usize) -> Share {
        Share {
            host_dir: host_dir.into(),
            target: target.into(),
            read_only: false,
            tag: tag(index, target == ROOT_TARGET),
        }
    }

    #[test]
    fn good_shares_pass() {
        let tmp = std::env::temp_dir().display().to_string();
        check(&[
            share(&tmp, "/srv", 0),
            share(&tmp, "/", 1),
            share(&tmp, "/a/b", 2),
        ])
        .unwrap();
    }

    #[test]
    fn bad_shares_are_named() {
        let tmp = std::env::temp_dir().display().to_string();
        let cases: Vec<(Vec<Share>, &str)> = vec![
            (
                vec![share("/nonexistent/capsule-dir", "/srv", 0)],
                "share /nonexistent/capsule-dir: the host directory does not exist",
            ),
            (vec![share("/etc/hostname", "/srv", 0)], "not a directory"),
            (
                vec![share(&tmp, "srv", 0)],
                "target \"srv\" is not an absolute path",
            ),
            (vec![share(&tmp, "/srv/", 0)], "not an absolute path"),
            (vec![share(&tmp, "/srv/../etc", 0)], "not an absolute path"),
            (
                vec![share(&tmp, "/srv", 0), share(&tmp, "/srv", 1)],
                "target \"/srv\" is already the target of another share",
            ),
        ];
        for (shares, want) in cases {
            let text = check(&shares).unwrap_err().to_string();
            assert!(text.contains(want), "{text:?} lacks {want:?}");
        }
        let mut long = share(&tmp, "/srv", 0);
        long.tag = "x".repeat(MAX_TAG_LEN + 1);
        assert!(check(&[long]).unwrap_err().to_string().contains("tag"));
    }

    #[test]
    fn tags_fit_the_device() {
        assert!(tag(usize::MAX, false).len() <= MAX_TAG_LEN);
        assert_eq!(tag(0, true), "capsule-root");
        assert_eq!(tag(3, false), "capsule-fs3");
    }
}
