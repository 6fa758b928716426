//! A deterministic initramfs: a set of entries (files, directories, symlinks, device nodes)
//! written as one newc archive, sorted by path, with fixed timestamps and owners, so equal input
//! gives byte-equal output. Every entry has its own inode number: no hard links.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::cpio::{self, CpioError, Header};

/// Errors of building an initramfs; each names the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// An archive path that is empty, has `.`/`..` components or is not UTF-8.
    #[error("bad archive path {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    /// Two entries for one path (a directory may be given twice).
    #[error("{0}: added twice")]
    Duplicate(String),
    /// An entry would have to live below a non-directory.
    #[error("{path}: parent {parent} is not a directory")]
    ParentNotDir { path: String, parent: String },
    /// A host file or directory could not be read.
    #[error("reading {}", path.display())]
    Host {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A host file of a type the builder does not copy (socket).
    #[error("{}: unsupported file type (only files, directories, symlinks, devices, fifos)", .0.display())]
    UnsupportedType(PathBuf),
    /// A permission mode with bits outside 0o7777.
    #[error("{path}: mode {mode:o} has bits outside 0o7777")]
    BadMode { path: String, mode: u32 },
    /// The output file could not be written.
    #[error("writing {}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The archive writer failed.
    #[error(transparent)]
    Cpio(#[from] CpioError),
}

/// Owner and timestamp given to every entry (default: root, mtime 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Defaults {
    pub mtime: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Character or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
}

#[derive(Debug, Clone)]
enum Source {
    Bytes(Vec<u8>),
    Host(PathBuf),
}

#[derive(Debug, Clone)]
enum Node {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        source: Source,
    },
    Symlink {
        target: String,
    },
    Device {
        kind: DeviceKind,
        major: u32,
        minor: u32,
        mode: u32,
    },
    Fifo {
        mode: u32,
    },
}

/// An initramfs being assembled. Paths are archive paths (`bin/sh`, a leading `/` is ignored).
#[derive(Debug, Clone, Default)]
pub struct Initramfs {
    defaults: Defaults,
    entries: BTreeMap<String, Node>,
}

/// Turns `/a/b` or `a//b/` into `a/b`; rejects empty, `.` and `..` components.
pub fn normalize(path: &str) -> Result<String, InitramfsError> {
    let bad = |reason| InitramfsError::BadPath {
        path: path.to_string(),
        reason,
    };
    if path.contains('\0') {
        return Err(bad("contains NUL"));
    }
    let mut parts = Vec::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(bad("'.' and '..' components are not allowed"));
        }
        parts.push(part);
    }
    if parts.is_empty() {
        return Err(bad("names the root, which always exists"));
    }
    Ok(parts.join("/"))
}

fn check_mode(path: &str, mode: u32) -> Result<u32, InitramfsError> {
    if mode & !0o7777 != 0 {
        return Err(InitramfsError::BadMode {
            path: path.to_string(),
            mode,
        });
    }
    Ok(mode)
}

fn host_err(path: &Path) -> impl FnOnce(io::Error) -> InitramfsError + '_ {
    move |source| InitramfsError::Host {
        path: path.to_path_buf(),
        source,
    }
}

impl Initramfs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `defaults` for every entry's owner and mtime instead of root and 0.
    pub fn with_defaults(defaults: Defaults) -> Self {
        Initramfs {
            defaults,
            entries: BTreeMap::new(),
        }
    }

    fn insert(&mut self, path: &str, node: Node) -> Result<(), InitramfsError> {
        let path = normalize(path)?;
        if let Some(old) = self.entries.get(&path) {
            if !(matches!(old, Node::Dir { .. }) && matches!(node, Node::Dir { .. })) {
                return Err(InitramfsError::Duplicate(path));
            }
        }
        self.entries.insert(path, node);
        Ok(())
    }

    /// Adds a directory (adding one twice updates its mode).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self, InitramfsError> {
        let mode = check_mode(path, mode)?;
        self.insert(path, Node::Dir { mode })?;
        Ok(self)
    }

    /// Adds a regular file with the given contents.
    pub fn file_bytes(
        &mut self,
        path: &str,
        data: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Result<&mut Self, InitramfsError> {
        let mode = check_mode(path, mode)?;
        let source = Source::Bytes(data.into());
        self.insert(path, Node::File { mode, source })?;
        Ok(self)
    }

    /// Adds a regular file copied from the host when the archive is written; `mode` defaults to
    /// the host file's permission bits.
    pub fn file_from_host(
        &mut self,
        host: &Path,
        path: &str,
        mode: Option<u32>,
    ) -> Result<&mut Self, InitramfsError> {
        let meta = std::fs::metadata(host).map_err(host_err(host))?;
        if !meta.is_file() {
            return Err(InitramfsError::UnsupportedType(host.to_path_buf()));
        }
        let mode = check_mode(path, mode.unwrap_or(meta.permissions().mode() & 0o7777))?;
        let source = Source::Host(host.to_path_buf());
        self.insert(path, Node::File { mode, source })?;
        Ok(self)
    }

    /// Embeds `binary` (a static executable) as `/init`, mode 0755.
    pub fn init(&mut self, binary: &Path) -> Result<&mut Self, InitramfsError> {
        self.file_from_host(binary, "init", Some(0o755))
    }

    /// Adds a symbolic link `link` pointing at `target` (stored as given).
    pub fn symlink(&mut self, target: &str, link: &str) -> Result<&mut Self, InitramfsError> {
        if target.is_empty() || target.contains('\0') {
            return Err(InitramfsError::BadPath {
                path: target.to_string(),
                reason: "symlink target is empty or contains NUL",
            });
        }
        let target = target.to_string();
        self.insert(link, Node::Symlink { target })?;
        Ok(self)
    }

    /// Adds a character or block device node.
    pub fn mknod(
        &mut self,
        path: &str,
        kind: DeviceKind,
        major: u32,
        minor: u32,
        mode: u32,
    ) -> Result<&mut Self, InitramfsError> {
        let mode = check_mode(path, mode)?;
        self.insert(
            path,
            Node::Device {
                kind,
                major,
                minor,
                mode,
            },
        )?;
        Ok(self)
    }

    /// Copies the host directory `src` recursively to `dst` (which is created too). Files keep
    /// their permission bits; owners and times come from the defaults.
    pub fn add_host_dir(&mut self, src: &Path, dst: &str) -> Result<&mut Self, InitramfsError> {
        let meta = std::fs::metadata(src).map_err(host_err(src))?;
        if !meta.is_dir() {
            return Err(InitramfsError::UnsupportedType(src.to_path_buf()));
        }
        let dst = normalize(dst)?;
        self.dir(&dst, meta.permissions().mode() & 0o7777)?;
        self.add_host_children(src, &dst)?;
        Ok(self)
    }

    fn add_host_children(&mut self, src: &Path, dst: &str) -> Result<(), InitramfsError> {
        let mut children = std::fs::read_dir(src)
            .map_err(host_err(src))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(host_err(src))?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let host = child.path();
            let name = child.file_name();
            let name =
                std::str::from_utf8(name.as_bytes()).map_err(|_| InitramfsError::BadPath {
                    path: host.display().to_string(),
                    reason: "not UTF-8",
                })?;
            let path = format!("{dst}/{name}");
            let meta = std::fs::symlink_metadata(&host).map_err(host_err(&host))?;
            let mode = meta.permissions().mode() & 0o7777;
            let ft = meta.file_type();
            if ft.is_dir() {
                self.dir(&path, mode)?;
                self.add_host_children(&host, &path)?;
            } else if ft.is_file() {
                self.file_from_host(&host, &path, Some(mode))?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&host).map_err(host_err(&host))?;
                let target = target.to_str().ok_or_else(|| InitramfsError::BadPath {
                    path: host.display().to_string(),
                    reason: "symlink target is not UTF-8",
                })?;
                self.symlink(target, &path)?;
            } else if ft.is_char_device() || ft.is_block_device() {
                let kind = if ft.is_char_device() {
                    DeviceKind::Char
                } else {
                    DeviceKind::Block
                };
                let rdev = meta.rdev();
                let (major, minor) = (libc_major(rdev), libc_minor(rdev));
                self.mknod(&path, kind, major, minor, mode)?;
            } else if ft.is_fifo() {
                self.insert(&path, Node::Fifo { mode })?;
            } else {
                return Err(InitramfsError::UnsupportedType(host));
            }
        }
        Ok(())
    }

    /// Every path that will be written, in archive order (implicit parents included).
    pub fn paths(&self) -> Result<Vec<String>, InitramfsError> {
        Ok(self.resolved()?.into_keys().collect())
    }

    /// The entries plus the parent directories nobody added explicitly (mode 0755).
    fn resolved(&self) -> Result<BTreeMap<String, Node>, InitramfsError> {
        let mut all = self.entries.clone();
        for path in self.entries.keys() {
            let mut parent = path.as_str();
            while let Some((p, _)) = parent.rsplit_once('/') {
                parent = p;
                match all.get(parent) {
                    Some(Node::Dir { .. }) => {}
                    Some(_) => {
                        return Err(InitramfsError::ParentNotDir {
                            path: path.clone(),
                            parent: parent.to_string(),
                        })
                    }
                    None => {
                        all.insert(parent.to_string(), Node::Dir { mode: 0o755 });
                    }
                }
            }
        }
        Ok(all)
    }

    /// Writes the archive to `out` and returns it. Entries are sorted by path (parents come
    /// before their children), inode numbers count up from 1 in that order.
    pub fn write_to<W: Write>(&self, out: W) -> Result<W, InitramfsError> {
        let d = self.defaults;
        let mut writer = cpio::Writer::new(out);
        for (ino, (path, node)) in (1u32..).zip(self.resolved()?) {
            let mut header = Header {
                ino,
                mode: 0,
                uid: d.uid,
                gid: d.gid,
                nlink: 1,
                mtime: d.mtime,
                filesize: 0,
                rdev_major: 0,
                rdev_minor: 0,
            };
            let mut data: Box<dyn Read> = Box::new(io::empty());
            match &node {
                Node::Dir { mode } => {
                    header.mode = cpio::S_IFDIR | mode;
                    header.nlink = 2;
                }
                Node::File { mode, source } => {
                    header.mode = cpio::S_IFREG | mode;
                    match source {
                        Source::Bytes(bytes) => {
                            header.filesize = cpio::field(&path, "filesize", bytes.len() as u64)?;
                            data = Box::new(io::Cursor::new(bytes.as_slice()));
                        }
                        Source::Host(host) => {
                            let file = File::open(host).map_err(host_err(host))?;
                            let len = file.metadata().map_err(host_err(host))?.len();
                            header.filesize = cpio::field(&path, "filesize", len)?;
                            data = Box::new(file);
                        }
                    }
                }
                Node::Symlink { target } => {
                    header.mode = cpio::S_IFLNK | 0o777;
                    header.filesize = cpio::field(&path, "filesize", target.len() as u64)?;
                    data = Box::new(io::Cursor::new(target.as_bytes()));
                }
                Node::Device {
                    kind,
                    major,
                    minor,
                    mode,
                } => {
                    let ty = match kind {
                        DeviceKind::Char => cpio::S_IFCHR,
                        DeviceKind::Block => cpio::S_IFBLK,
                    };
                    header.mode = ty | mode;
                    header.rdev_major = *major;
                    header.rdev_minor = *minor;
                }
                Node::Fifo { mode } => header.mode = cpio::S_IFIFO | mode,
            }
            writer.entry(&path, &header, &mut data)?;
        }
        Ok(writer.finish()?)
    }

    /// Writes the archive to the file `path` (created or truncated).
    pub fn write_file(&self, path: &Path) -> Result<(), InitramfsError> {
        let out_err = |source| InitramfsError::Output {
            path: path.to_path_buf(),
            source,
        };
        let file = File::create(path).map_err(out_err)?;
        let mut out = self.write_to(BufWriter::new(file))?;
        out.flush().map_err(out_err)
    }
}

// glibc's encoding of dev_t (gnu_dev_major / gnu_dev_minor).
fn libc_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32
}

fn libc_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::parse;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("capsule-images-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn sample() -> Initramfs {
        let mut fs = Initramfs::new();
        fs.file_bytes("/etc/hostname", "capsule\n", 0o644).unwrap();
        fs.symlink("busybox", "bin/sh").unwrap();
        fs.mknod("dev/console", DeviceKind::Char, 5, 1, 0o600)
            .unwrap();
        fs.dir("proc", 0o555).unwrap();
        fs
    }

    #[test]
    fn equal_input_gives_equal_bytes() {
        let a = sample().write_to(Vec::new()).unwrap();
        let b = sample().write_to(Vec::new()).unwrap();
        assert_eq!(a, b);
        // Insertion order does not matter either.
        let mut c = Initramfs::new();
        c.dir("proc", 0o555).unwrap();
        c.mknod("dev/console", DeviceKind::Char, 5, 1, 0o600)
            .unwrap();
        c.symlink("busybox", "bin/sh").unwrap();
        c.file_bytes("etc/hostname", "capsule\n", 0o644).unwrap();
        assert_eq!(a, c.write_to(Vec::new()).unwrap());
    }

    #[test]
    fn round_trip_sorted_with_parents() {
        let bytes = sample().write_to(Vec::new()).unwrap();
        let entries = parse(&bytes).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "etc",
                "etc/hostname",
                "proc"
            ]
        );
        let by = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(by("bin").header.mode, cpio::S_IFDIR | 0o755);
        assert_eq!(by("bin/sh").header.mode, cpio::S_IFLNK | 0o777);
        assert_eq!(by("bin/sh").data, b"busybox");
        let console = &by("dev/console").header;
        assert_eq!(console.mode, cpio::S_IFCHR | 0o600);
        assert_eq!((console.rdev_major, console.rdev_minor), (5, 1));
        assert_eq!(by("etc/hostname").data, b"capsule\n");
        assert_eq!(by("proc").header.mode, cpio::S_IFDIR | 0o555);
        // Fixed owners and times, unique inode numbers.
        let mut inos: Vec<_> = entries.iter().map(|e| e.header.ino).collect();
        inos.dedup();
        assert_eq!(inos.len(), entries.len());
        assert!(entries
            .iter()
            .all(|e| e.header.mtime == 0 && e.header.uid == 0));
    }

    #[test]
    fn defaults_are_applied() {
        let mut fs = Initramfs::with_defaults(Defaults {
            mtime: 42,
            uid: 1000,
            gid: 100,
        });
        fs.file_bytes("f", "x", 0o600).unwrap();
        let entries = parse(&fs.write_to(Vec::new()).unwrap()).unwrap();
        assert_eq!(entries[0].header.mtime, 42);
        assert_eq!((entries[0].header.uid, entries[0].header.gid), (1000, 100));
    }

    #[test]
    fn host_tree_and_init() {
        let dir = scratch("tree");
        std::fs::create_dir_all(dir.join("src/sub")).unwrap();
        std::fs::write(dir.join("src/sub/a.txt"), "aaa").unwrap();
        std::fs::set_permissions(
            dir.join("src/sub/a.txt"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::symlink("sub/a.txt", dir.join("src/link")).unwrap();
        std::fs::write(dir.join("init-bin"), "#!/bin/sh\n").unwrap();

        let mut fs = Initramfs::new();
        fs.add_host_dir(&dir.join("src"), "/opt/x").unwrap();
        fs.init(&dir.join("init-bin")).unwrap();
        let out = dir.join("out.cpio");
        fs.write_file(&out).unwrap();
        let entries = parse(&std::fs::read(&out).unwrap()).unwrap();
        let by = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(by("init").header.mode, cpio::S_IFREG | 0o755);
        assert_eq!(by("init").data, b"#!/bin/sh\n");
        assert_eq!(by("opt/x/sub/a.txt").header.mode, cpio::S_IFREG | 0o640);
        assert_eq!(by("opt/x/sub/a.txt").data, b"aaa");
        assert_eq!(by("opt/x/link").data, b"sub/a.txt");
        assert!(entries.iter().any(|e| e.name == "opt"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_path() {
        let mut fs = Initramfs::new();
        let err = fs.file_bytes("a/../b", "", 0o644).unwrap_err();
        assert!(err.to_string().contains("a/../b"), "{err}");
        assert!(matches!(
            fs.dir("/", 0o755),
            Err(InitramfsError::BadPath { .. })
        ));
        fs.file_bytes("x", "", 0o644).unwrap();
        let err = fs.file_bytes("/x", "", 0o644).unwrap_err();
        assert_eq!(err.to_string(), "x: added twice");
        fs.file_bytes("x/y", "", 0o644).unwrap();
        let err = fs.write_to(Vec::new()).unwrap_err();
        assert!(matches!(err, InitramfsError::ParentNotDir { .. }), "{err}");
        let missing = Path::new("/nonexistent/capsule/file");
        let err = Initramfs::new().init(missing).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/capsule/file"),
            "{err}"
        );
        assert!(matches!(
            Initramfs::new().dir("d", 0o10777),
            Err(InitramfsError::BadMode { .. })
        ));
    }

    #[test]
    fn dev_t_decoding() {
        // makedev(5, 1) and makedev(259, 70000) in glibc's encoding.
        assert_eq!((libc_major(0x501), libc_minor(0x501)), (5, 1));
        let (major, minor): (u64, u64) = (259, 70000);
        let dev = ((major & 0xfff) << 8)
            | ((major & !0xfff) << 32)
            | (minor & 0xff)
            | ((minor & !0xff) << 12);
        assert_eq!((libc_major(dev), libc_minor(dev)), (259, 70000));
    }
}
