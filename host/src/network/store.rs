//! Where networks and their leases live on disk, shared by every capsule process of the host:
//! `<dir>/<network>/network.json` and `<dir>/<network>/leases/<address>.json`, changed only
//! under one `flock` on `<dir>/.lock`. The directory is `$CAPSULE_NETWORK_DIR`, else
//! `/var/lib/capsule/networks`: it is persistent, so definitions and addresses survive a
//! reboot; leases of VMs whose state directory is gone are reclaimed.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ipam::Subnet;
use super::publish::Publish;

/// Errors of the network store; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use the network directory {0}")]
    Dir(PathBuf, #[source] std::io::Error),
    #[error("cannot lock {0}")]
    Lock(PathBuf, #[source] std::io::Error),
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0} is corrupt")]
    Corrupt(PathBuf, #[source] serde_json::Error),
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

/// A network's definition (`network.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    pub subnet: Subnet,
    pub bridge: String,
}

/// One VM's address on a network (`leases/<address>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub vm: String,
    /// The VM's state directory: the lease is stale once it is gone.
    pub state_dir: PathBuf,
    pub tap: String,
    #[serde(default)]
    pub publish: Vec<Publish>,
    /// Whether the VM's TAP and published ports are set up (the VM is running).
    #[serde(default)]
    pub active: bool,
}

/// The network directory.
pub struct Store {
    dir: PathBuf,
}

/// Held while the store is being read and changed.
pub struct Locked<'a> {
    store: &'a Store,
    _lock: File,
}

impl Store {
    /// `$CAPSULE_NETWORK_DIR`, else `/var/lib/capsule/networks`.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("CAPSULE_NETWORK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/capsule/networks"))
    }

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the store's lock (blocking until other capsule processes are done).
    pub fn lock(&self) -> Result<Locked<'_>, StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| StoreError::Dir(self.dir.clone(), e))?;
        let path = self.dir.join(".lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::Lock(path.clone(), e))?;
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(StoreError::Lock(path, e));
            }
        }
        Ok(Locked {
            store: self,
            _lock: file,
        })
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, StoreError> {
    let bytes = std::fs::read(path).map_err(|e| StoreError::Read(path.to_path_buf(), e))?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(path.to_path_buf(), e))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(value).expect("network state serializes");
    std::fs::write(&tmp, bytes).map_err(|e| StoreError::Write(tmp.clone(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| StoreError::Write(path.to_path_buf(), e))
}

impl Locked<'_> {
    fn network_dir(&self, name: &str) -> PathBuf {
        self.store.dir.join(name)
    }

    fn lease_path(&self, network: &str, addr: Ipv4Addr) -> PathBuf {
        self.network_dir(network)
            .join("leases")
            .join(format!("{addr}.json"))
    }

    /// Every network, by name.
    pub fn networks(&self) -> Result<Vec<NetworkSpec>, StoreError> {
        let dir = &self.store.dir;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| StoreError::Read(dir.clone(), e))? {
            let entry = entry.map_err(|e| StoreError::Read(dir.clone(), e))?;
            let path = entry.path().join("network.json");
            if path.is_file() {
                out.push(read_json(&path)?);
            }
        }
        out.sort_by(|a: &NetworkSpec, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn network(&self, name: &str) -> Result<Option<NetworkSpec>, StoreError> {
        let path = self.network_dir(name).join("network.json");
        if !path.is_file() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    pub fn write_network(&self, spec: &NetworkSpec) -> Result<(), StoreError> {
        let dir = self.network_dir(&spec.name);
        std::fs::create_dir_all(dir.join("leases")).map_err(|e| StoreError::Dir(dir.clone(), e))?;
        write_json(&dir.join("network.json"), spec)
    }

    pub fn remove_network(&self, name: &str) -> Result<(), StoreError> {
        let dir = self.network_dir(name);
        std::fs::remove_dir_all(&dir).map_err(|e| StoreError::Write(dir, e))
    }

    /// The leases of a network, by address.
    pub fn leases(&self, network: &str) -> Result<Vec<Lease>, StoreError> {
        let dir = self.network_dir(network).join("leases");
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(StoreError::Read(dir, e)),
        };
        for entry in entries {
            let path = entry.map_err(|e| StoreError::Read(dir.clone(), e))?.path();
            if path.extension().is_some_and(|x| x == "json") {
                out.push(read_json(&path)?);
            }
        }
        out.sort_by_key(|l: &Lease| l.address);
        Ok(out)
    }

    pub fn write_lease(&self, network: &str, lease: &Lease) -> Result<(), StoreError> {
        write_json(&self.lease_path(network, lease.address), lease)
    }

    pub fn remove_lease(&self, network: &str, addr: Ipv4Addr) -> Result<(), StoreError> {
        let path = self.lease_path(network, addr);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Write(path, e)),
            _ => Ok(()),
        }
    }
}
