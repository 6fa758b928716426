//! Where an image's files live: an image layout directory, or a tar archive of one (`docker
//! save`, `oci-archive`). Archives are indexed once and read in place; nothing is unpacked.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use super::OciError;

/// Most levels of symlinks followed inside an archive (`docker save` links duplicate layers).
const MAX_LINKS: usize = 8;

enum TarEntry {
    File { offset: u64, size: u64 },
    Symlink(String),
}

enum Kind {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        entries: HashMap<String, TarEntry>,
    },
}

/// The files of an image.
pub struct Store(Kind);

impl Store {
    /// Opens a layout directory or indexes an archive.
    pub fn open(path: &Path) -> Result<Self, OciError> {
        let meta = std::fs::metadata(path).map_err(|source| OciError::Read {
            path: path.display().to_string(),
            source,
        })?;
        if meta.is_dir() {
            return Ok(Store(Kind::Dir(path.to_path_buf())));
        }
        let read_err = |source| OciError::Read {
            path: path.display().to_string(),
            source,
        };
        let mut file = File::open(path).map_err(read_err)?;
        let mut magic = [0u8; 4];
        let n = file.read(&mut magic).map_err(read_err)?;
        if n >= 2 && magic[..2] == [0x1f, 0x8b] || n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
            return Err(OciError::CompressedArchive {
                path: path.display().to_string(),
            });
        }
        file.seek(SeekFrom::Start(0)).map_err(read_err)?;
        let mut archive = tar::Archive::new(BufReader::new(file));
        let bad = |source: io::Error| OciError::BadArchive {
            path: path.display().to_string(),
            source,
        };
        let mut entries = HashMap::new();
        for entry in archive.entries().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let name = match entry.path() {
                Ok(p) => normalize(&p),
                Err(_) => None,
            };
            let Some(name) = name else { continue };
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    entries.insert(
                        name,
                        TarEntry::File {
                            offset: entry.raw_file_position(),
                            size: entry.size(),
                        },
                    );
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let Ok(Some(target)) = entry.link_name() else {
                        continue;
                    };
                    let target = if entry.header().entry_type() == tar::EntryType::Link {
                        // Hard link targets are archive paths.
                        target.to_string_lossy().into_owned()
                    } else {
                        // Symlink targets are relative to the link's directory.
                        let dir = Path::new(&name).parent().unwrap_or(Path::new(""));
                        dir.join(&target).to_string_lossy().into_owned()
                    };
                    entries.insert(name, TarEntry::Symlink(target));
                }
                _ => {}
            }
        }
        Ok(Store(Kind::Tar {
            path: path.to_path_buf(),
            entries,
        }))
    }

    /// A short name for messages.
    pub fn describe(&self) -> String {
        match &self.0 {
            Kind::Dir(p) | Kind::Tar { path: p, .. } => p.display().to_string(),
        }
    }

    /// Whether the image has a file at `name` (a path relative to the layout root).
    pub fn exists(&self, name: &str) -> bool {
        match &self.0 {
            Kind::Dir(root) => match normalize(Path::new(name)) {
                Some(n) => root.join(n).is_file(),
                None => false,
            },
            Kind::Tar { .. } => self.tar_lookup(name).is_some(),
        }
    }

    /// Opens the file at `name` and returns it with its size.
    pub fn open_file(&self, name: &str) -> Result<(Box<dyn Read + '_>, u64), OciError> {
        let missing = || OciError::Missing {
            name: name.to_string(),
            image: self.describe(),
        };
        match &self.0 {
            Kind::Dir(root) => {
                let rel = normalize(Path::new(name)).ok_or_else(missing)?;
                let path = root.join(rel);
                let file = File::open(&path).map_err(|source| {
                    if source.kind() == io::ErrorKind::NotFound {
                        missing()
                    } else {
                        OciError::Read {
                            path: path.display().to_string(),
                            source,
                        }
                    }
                })?;
                let size = file
                    .metadata()
                    .map_err(|source| OciError::Read {
                        path: path.display().to_string(),
                        source,
                    })?
                    .len();
                Ok((Box::new(BufReader::with_capacity(256 * 1024, file)), size))
            }
            Kind::Tar { path, .. } => {
                let (offset, size) = self.tar_lookup(name).ok_or_else(missing)?;
                let read_err = |source| OciError::Read {
                    path: path.display().to_string(),
                    source,
                };
                let mut file = File::open(path).map_err(read_err)?;
                file.seek(SeekFrom::Start(offset)).map_err(read_err)?;
                let reader = BufReader::with_capacity(256 * 1024, file).take(size);
                Ok((Box::new(reader), size))
            }
        }
    }

    fn tar_lookup(&self, name: &str) -> Option<(u64, u64)> {
        let Kind::Tar { entries, .. } = &self.0 else {
            return None;
        };
        let mut name = normalize(Path::new(name))?;
        for _ in 0..MAX_LINKS {
            match entries.get(&name)? {
                TarEntry::File { offset, size } => return Some((*offset, *size)),
                TarEntry::Symlink(target) => name = normalize(Path::new(target))?,
            }
        }
        None
    }
}

/// A relative path inside the image, with `.` removed and `..` resolved; `None` when it is
/// absolute or climbs out.
fn normalize(path: &Path) -> Option<String> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for comp in path.components() {
        match comp {
            Component::Normal(n) => parts.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    if parts.is_empty() {
        return None;
    }
    let joined: PathBuf = parts.iter().collect();
    joined.to_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::normalize;
    use std::path::Path;

    #[test]
    fn normalizes_inside_the_image_only() {
        assert_eq!(normalize(Path::new("./a/./b")).as_deref(), Some("a/b"));
        assert_eq!(normalize(Path::new("a/../b")).as_deref(), Some("b"));
        assert_eq!(normalize(Path::new("../b")), None);
        assert_eq!(normalize(Path::new("/etc/passwd")), None);
        assert_eq!(normalize(Path::new(".")), None);
    }
}
