//! Root filesystem images for containers, from a host directory or an OCI image.
//!
//! The source is assembled in a staging directory under a temporary directory ([`staging`]),
//! with every path checked to stay inside it; modification times are clamped to an epoch
//! (`SOURCE_DATE_EPOCH`, or the newest time in the tree); then `mkfs.ext4 -d` or `mkfs.erofs`
//! writes the image with a fixed UUID, hash seed and timestamps, so equal input gives an
//! identical image. The image's sha256 is written beside it as `<image>.sha256`, in the format
//! `sha256sum -c` reads.

pub mod dir;
pub mod mkfs;
pub mod staging;

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use self::dir::DirError;
use self::staging::{StageCounts, Staging, StagingError, TreeSummary};
use crate::oci::digest::hex;
use crate::oci::{Image, Layer, OciError};

const MIB: u64 = 1 << 20;
/// Attempts at an automatically sized ext4 image before giving up.
const AUTO_SIZE_ATTEMPTS: u32 = 4;

/// The file system of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Read-write ext4 (mkfs.ext4 from e2fsprogs).
    Ext4,
    /// Read-only, compact erofs (mkfs.erofs from erofs-utils).
    Erofs,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Ext4 => "ext4",
            Format::Erofs => "erofs",
        })
    }
}

/// Where the root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A directory on the host.
    Dir(PathBuf),
    /// An OCI image layout directory, or a `docker save` / `oci-archive` tar file.
    Oci(PathBuf),
}

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    Dir(#[from] DirError),
    #[error(transparent)]
    Staging(#[from] StagingError),
    #[error("cannot create a staging directory in {dir}")]
    TempDir {
        dir: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{tool} is not installed (Debian package {package}; scripts/install-deps.sh installs it)"
    )]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("cannot run {tool}")]
    ToolFailedToStart {
        tool: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{tool} failed: {}", stderr.trim())]
    ToolFailed { tool: &'static str, stderr: String },
    #[error("the tree does not fit in a {} image ({detail}); give a larger --size", show_size(*size))]
    OutOfSpace { size: u64, detail: String },
    #[error("the erofs image is {actual} bytes, more than --size {limit}")]
    TooLargeForSize { actual: u64, limit: u64 },
    #[error("cannot write {path}")]
    Output {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid size {0:?}: use bytes or a number with K, M, G or T (powers of 1024)")]
    BadSize(String),
}

fn show_size(bytes: u64) -> String {
    if bytes == 0 {
        "requested".into()
    } else {
        format!("{} MiB", bytes.div_ceil(MIB))
    }
}

/// What a build is doing, for progress display.
#[derive(Debug)]
pub enum Progress<'a> {
    /// Starting layer `index` of `count`.
    Layer {
        index: usize,
        count: usize,
        layer: &'a Layer,
    },
    /// Entries and bytes staged so far (reported every 64 MiB or 10 000 entries).
    Staged(StageCounts),
    /// The tree is staged; `mkfs` starts writing an image of about `size` bytes.
    Mkfs {
        format: Format,
        size: u64,
        summary: &'a TreeSummary,
    },
    /// An automatically sized image was too small and is retried larger.
    Retry { size: u64 },
}

/// The finished image.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub output: PathBuf,
    /// Lower-case hex sha256 of the image file.
    pub sha256: String,
    /// The `<image>.sha256` file.
    pub manifest: PathBuf,
    /// Size of the image file.
    pub size: u64,
    pub summary: TreeSummary,
    /// The epoch all times were clamped to.
    pub epoch: i64,
}

/// Builds a root filesystem image.
#[derive(Debug, Clone)]
pub struct RootfsBuilder {
    source: Source,
    format: Format,
    size: Option<u64>,
    allow_devices: bool,
    epoch: Option<i64>,
    temp_dir: Option<PathBuf>,
}

impl RootfsBuilder {
    pub fn new(source: Source, format: Format) -> Self {
        Self {
            source,
            format,
            size: None,
            allow_devices: false,
            epoch: None,
            temp_dir: None,
        }
    }

    /// Image size in bytes instead of the computed one (ext4); the most an erofs image may use.
    pub fn size(mut self, bytes: u64) -> Self {
        self.size = Some(bytes);
        self
    }

    /// Accept device nodes in the source (refused by default).
    pub fn allow_devices(mut self, allow: bool) -> Self {
        self.allow_devices = allow;
        self
    }

    /// Clamp every time to this epoch and stamp the file system with it (e.g. from
    /// `SOURCE_DATE_EPOCH`). Without it, the newest modification time in the tree is used.
    pub fn epoch(mut self, epoch: Option<i64>) -> Self {
        self.epoch = epoch;
        self
    }

    /// Where the staging directory goes (default: the system temporary directory).
    pub fn temp_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.temp_dir = dir;
        self
    }

    /// Assembles the source into `dir` (an existing empty directory) without making an image.
    pub fn stage(
        &self,
        dir: &Path,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<(TreeSummary, Staging), RootfsError> {
        let mut staging = Staging::new(dir, self.allow_devices);
        match &self.source {
            Source::Dir(src) => {
                dir::copy_tree(src, &mut staging, &mut |c| progress(Progress::Staged(c)))?
            }
            Source::Oci(path) => {
                let image = Image::open(path)?;
                for (i, layer) in image.layers.iter().enumerate() {
                    progress(Progress::Layer {
                        index: i + 1,
                        count: image.layers.len(),
                        layer,
                    });
                    image.apply_layer(i, &mut staging, &mut |c| progress(Progress::Staged(c)))?;
                }
            }
        }
        let summary = staging.finish(self.epoch)?;
        Ok((summary, staging))
    }

    /// Builds the image at `out` and its `<out>.sha256` manifest.
    pub fn build(
        &self,
        out: &Path,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<BuildReport, RootfsError> {
        let temp_root = self.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
        let temp = tempfile::Builder::new()
            .prefix("capsule-rootfs-")
            .tempdir_in(&temp_root)
            .map_err(|source| RootfsError::TempDir {
                dir: temp_root.display().to_string(),
                source,
            })?;
        let stage_dir = temp.path().join("root");
        fs::create_dir(&stage_dir).map_err(|source| RootfsError::TempDir {
            dir: temp_root.display().to_string(),
            source,
        })?;
        let (summary, staging) = self.stage(&stage_dir, progress)?;
        let epoch = self.epoch.unwrap_or(summary.max_mtime).max(0);
        let squash_owner = !staging.preserves_owners();
        if squash_owner && staging.dropped_owners() > 0 {
            log::warn!(
                "not running as root: {} entries' owners could not be kept; every file in the \
                 image is owned by root",
                staging.dropped_owners()
            );
        }

        let partial = partial_path(out);
        let result = self.write_image(
            &stage_dir,
            &partial,
            &summary,
            epoch,
            squash_owner,
            progress,
        );
        if let Err(e) = result {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
        fs::rename(&partial, out).map_err(|source| RootfsError::Output {
            path: out.display().to_string(),
            source,
        })?;
        let (sha256, size) = sha256_file(out)?;
        let manifest = manifest_path(out);
        let file_name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        fs::write(&manifest, format!("{sha256}  {file_name}\n")).map_err(|source| {
            RootfsError::Output {
                path: manifest.display().to_string(),
                source,
            }
        })?;
        Ok(BuildReport {
            output: out.to_path_buf(),
            sha256,
            manifest,
            size,
            summary,
            epoch,
        })
    }

    fn write_image(
        &self,
        stage_dir: &Path,
        partial: &Path,
        summary: &TreeSummary,
        epoch: i64,
        squash_owner: bool,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<(), RootfsError> {
        match self.format {
            Format::Ext4 => {
                let (auto_size, inodes) = ext4_estimate(summary);
                let mut size = self.size.unwrap_or(auto_size);
                progress(Progress::Mkfs {
                    format: self.format,
                    size,
                    summary,
                });
                let mut attempt = 1;
                loop {
                    match mkfs::ext4(stage_dir, partial, size, inodes, epoch, squash_owner) {
                        Err(RootfsError::OutOfSpace { .. })
                            if self.size.is_none() && attempt < AUTO_SIZE_ATTEMPTS =>
                        {
                            attempt += 1;
                            size = round_mib(size + size / 2);
                            progress(Progress::Retry { size });
                        }
                        other => return other,
                    }
                }
            }
            Format::Erofs => {
                progress(Progress::Mkfs {
                    format: self.format,
                    size: summary.blocks * 4096,
                    summary,
                });
                mkfs::erofs(stage_dir, partial, epoch, squash_owner)?;
                if let Some(limit) = self.size {
                    let actual = fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
                    if actual > limit {
                        return Err(RootfsError::TooLargeForSize { actual, limit });
                    }
                }
                Ok(())
            }
        }
    }
}

/// Image size and inode count for an ext4 image holding `summary`, with headroom: 20 % more
/// room than the data, inode tables and journal need, plus 16 MiB, and a quarter more inodes.
pub fn ext4_estimate(summary: &TreeSummary) -> (u64, u64) {
    let inodes = (summary.inodes + summary.inodes / 4 + 64).max(1024);
    let data = summary.blocks * 4096;
    let tables = inodes * 256;
    let journal = match data {
        d if d < 128 * MIB => 4 * MIB,
        d if d < 1024 * MIB => 16 * MIB,
        d if d < 2048 * MIB => 32 * MIB,
        _ => 64 * MIB,
    };
    let raw = data + tables + journal;
    (round_mib(raw + raw / 5 + 16 * MIB), inodes)
}

fn round_mib(bytes: u64) -> u64 {
    bytes.div_ceil(MIB) * MIB
}

/// Parses `512M`, `2G`, `1048576`, `64MiB` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, RootfsError> {
    let bad = || RootfsError::BadSize(s.to_string());
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift)
        .filter(|v| *v > 0)
        .ok_or_else(bad)
}

/// `<image>.sha256`.
pub fn manifest_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_os_string();
    name.push(".sha256");
    PathBuf::from(name)
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_os_string();
    name.push(format!(".partial-{}", std::process::id()));
    PathBuf::from(name)
}

/// sha256 (hex) and size of a file.
pub fn sha256_file(path: &Path) -> Result<(String, u64), RootfsError> {
    let err = |source| RootfsError::Output {
        path: path.display().to_string(),
        source,
    };
    let mut f = File::open(path).map_err(err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex(&hasher.finalize()), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512M").unwrap(), 512 * MIB);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1k").unwrap(), 1024);
        for bad in ["", "M", "12Q", "-5M", "0", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn estimate_grows_with_the_tree() {
        let small = TreeSummary {
            inodes: 10,
            blocks: 10,
            ..TreeSummary::default()
        };
        let big = TreeSummary {
            inodes: 100_000,
            blocks: 50_000,
            ..TreeSummary::default()
        };
        let (s1, i1) = ext4_estimate(&small);
        let (s2, i2) = ext4_estimate(&big);
        assert!(s1 >= 16 * MIB && s1 % MIB == 0);
        assert!(s2 > 50_000 * 4096 + 100_000 * 256);
        assert!(i1 >= 1024 && i2 > 100_000);
    }

    #[test]
    fn manifest_sits_beside_the_image() {
        assert_eq!(
            manifest_path(Path::new("/x/root.ext4")),
            PathBuf::from("/x/root.ext4.sha256")
        );
    }
}
