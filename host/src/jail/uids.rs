//! One uid per VM, from a range (`$CAPSULE_UID_RANGE`, default [`DEFAULT`]). A claimed uid is
//! a file `<registry>/<uid>` naming the VM's state directory, and the state directory's `uid`
//! file names it back; the registry is `$CAPSULE_UID_DIR`, else `/run/capsule-uids`, shared by
//! every capsule process of the host and changed under one `flock`. A claim whose state
//! directory is gone (or names another uid) is stale and is taken again. The first uid tried
//! is a hash of the state directory, so a VM keeps its uid across restarts of the same range.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::JailError;

/// The environment variable that sets the range, `FIRST-LAST`.
pub const RANGE_ENV: &str = "CAPSULE_UID_RANGE";
/// The environment variable that names the registry directory.
pub const REGISTRY_ENV: &str = "CAPSULE_UID_DIR";
/// The default range: 65536 uids far above any ordinary user's.
pub const DEFAULT: UidRange = UidRange {
    first: 900_000,
    last: 965_535,
};

/// The state directory's record of its VM's uid.
pub const STATE_FILE: &str = "uid";

/// A range of uids, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UidRange {
    pub first: u32,
    pub last: u32,
}

impl UidRange {
    /// Parses `FIRST-LAST`; uid 0 is never in a range.
    pub fn parse(text: &str) -> Result<Self, JailError> {
        let bad = || JailError::Range(text.to_string());
        let (a, b) = text.split_once('-').ok_or_else(bad)?;
        let first: u32 = a.trim().parse().map_err(|_| bad())?;
        let last: u32 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last || last == u32::MAX {
            return Err(bad());
        }
        Ok(UidRange { first, last })
    }

    /// `$CAPSULE_UID_RANGE`, else [`DEFAULT`].
    pub fn from_env() -> Result<Self, JailError> {
        match std::env::var(RANGE_ENV) {
            Ok(text) => Self::parse(&text),
            Err(_) => Ok(DEFAULT),
        }
    }

    fn len(&self) -> u64 {
        u64::from(self.last - self.first) + 1
    }

    fn contains(&self, uid: u32) -> bool {
        (self.first..=self.last).contains(&uid)
    }
}

/// The registry directory.
pub fn registry() -> PathBuf {
    std::env::var_os(REGISTRY_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/capsule-uids"))
}

/// A stable hash of `path` (FNV-1a).
pub fn hash(path: &Path) -> u64 {
    path.as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
}

fn read_uid(state_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(state_dir.join(STATE_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Held while the registry is read and changed.
struct Lock {
    _file: File,
}

fn lock(dir: &Path) -> Result<Lock, JailError> {
    let err = |e| JailError::Registry(dir.to_path_buf(), e);
    std::fs::create_dir_all(dir).map_err(err)?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(err)?;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(Lock { _file: file });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(err(e));
        }
    }
}

/// Whether `<dir>/<uid>` is free for `state_dir`: unclaimed, stale, or already its own.
fn free_for(dir: &Path, uid: u32, state_dir: &Path) -> bool {
    match std::fs::read_to_string(dir.join(uid.to_string())) {
        Err(_) => true,
        Ok(owner) => {
            let owner = Path::new(owner.trim_end());
            owner == state_dir || read_uid(owner) != Some(uid)
        }
    }
}

/// The uid of the VM whose state directory is `state_dir`: the one it holds if it is still in
/// `range` and still its own, else a free one, claimed.
pub fn claim(range: UidRange, state_dir: &Path) -> Result<u32, JailError> {
    claim_in(&registry(), range, state_dir)
}

fn claim_in(dir: &Path, range: UidRange, state_dir: &Path) -> Result<u32, JailError> {
    let _lock = lock(dir)?;
    let held = read_uid(state_dir).filter(|uid| range.contains(*uid));
    let start = hash(state_dir) % range.len();
    let uid = held
        .into_iter()
        .chain((0..range.len()).map(|k| range.first + ((start + k) % range.len()) as u32))
        .find(|uid| free_for(dir, *uid, state_dir))
        .ok_or(JailError::NoFreeUid {
            first: range.first,
            last: range.last,
            dir: dir.to_path_buf(),
        })?;
    let entry = dir.join(uid.to_string());
    std::fs::write(&entry, state_dir.as_os_str().as_encoded_bytes())
        .map_err(|e| JailError::Registry(entry, e))?;
    let own = state_dir.join(STATE_FILE);
    std::fs::write(&own, uid.to_string()).map_err(|e| JailError::Registry(own, e))?;
    Ok(uid)
}

/// Gives back the uid of the VM whose state directory is `state_dir` (at `capsule rm`).
pub fn release(state_dir: &Path) -> Result<(), JailError> {
    release_in(&registry(), state_dir)
}

fn release_in(dir: &Path, state_dir: &Path) -> Result<(), JailError> {
    let Some(uid) = read_uid(state_dir) else {
        return Ok(());
    };
    let _lock = lock(dir)?;
    let entry = dir.join(uid.to_string());
    match std::fs::read_to_string(&entry) {
        Ok(owner) if Path::new(owner.trim_end()) == state_dir => {
            std::fs::remove_file(&entry).map_err(|e| JailError::Registry(entry, e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("capsule-uids-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
        fn vm(&self, name: &str) -> PathBuf {
            let dir = self.0.join("state").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            dir
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn ranges_parse_and_exclude_root() {
        assert_eq!(
            UidRange::parse("900000-965535").unwrap(),
            UidRange {
                first: 900_000,
                last: 965_535
            }
        );
        for bad in ["0-10", "10-5", "x-5", "100", "5-4294967295"] {
            assert!(UidRange::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn two_vms_never_share_a_uid_and_a_vm_keeps_its_own() {
        let s = Scratch::new("share");
        let reg = s.0.join("registry");
        let range = UidRange {
            first: 1000,
            last: 1001,
        };
        let (a, b, c) = (s.vm("a"), s.vm("b"), s.vm("c"));
        let ua = claim_in(&reg, range, &a).unwrap();
        let ub = claim_in(&reg, range, &b).unwrap();
        assert_ne!(ua, ub);
        assert_eq!(claim_in(&reg, range, &a).unwrap(), ua);
        let err = claim_in(&reg, range, &c).unwrap_err().to_string();
        assert!(err.contains("no free uid in 1000-1001"), "{err}");
        // A VM removed without `capsule rm` leaves a stale claim, taken again.
        std::fs::remove_dir_all(&b).unwrap();
        assert_eq!(claim_in(&reg, range, &c).unwrap(), ub);
        release_in(&reg, &a).unwrap();
        assert!(!reg.join(ua.to_string()).exists());
    }
}
