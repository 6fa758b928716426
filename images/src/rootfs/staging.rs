//! The staging tree: a directory under a temporary directory into which a root filesystem is
//! assembled (from a host directory or from image layers) before `mkfs` turns it into an image.
//!
//! Every path handed to [`Staging`] is relative to the staging root and comes from untrusted
//! input. Paths with `..` or a leading `/` are refused. Parent directories are resolved inside
//! the root as the guest would see them: a symlink among the parents is followed (an absolute
//! target counts from the staging root, as after chroot), but a target that climbs above the
//! root is refused, so nothing is ever created outside the staging directory. The final path
//! component is never followed: whatever is there is replaced.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Most symlinks followed while resolving one path (Linux's own limit).
const MAX_SYMLINKS: u32 = 40;
/// Progress is reported every this many bytes (and at the end of each stage).
const PROGRESS_BYTES: u64 = 64 << 20;
/// ... or every this many entries.
const PROGRESS_ENTRIES: u64 = 10_000;
/// Size of the buffer file contents are copied through.
const COPY_BUF: usize = 256 * 1024;

/// Ownership, permissions and modification time of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits, including setuid, setgid and sticky (the file type is not included).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
}

/// A device node's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Char,
    Block,
    Fifo,
}

/// What went wrong while assembling the staging tree.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// A path that would leave the root: `..` or absolute.
    #[error("path {path:?} leaves the root filesystem ({why})")]
    Traversal { path: String, why: &'static str },
    /// A symlink among a path's parents points above the root.
    #[error(
        "path {path:?} goes through symlink {link:?}, which points outside the root filesystem"
    )]
    SymlinkEscape { path: String, link: String },
    /// Too many symlinks while resolving a path.
    #[error("path {path:?}: too many levels of symbolic links")]
    SymlinkLoop { path: String },
    /// A parent of a path is a file, not a directory.
    #[error("path {path:?}: {parent:?} is not a directory")]
    NotADirectory { path: String, parent: String },
    /// A device node without `allow_devices`.
    #[error(
        "{path:?} is a device node; device nodes are refused unless allowed (--allow-devices)"
    )]
    DeviceRefused { path: String },
    /// A hard link whose target is missing or a directory.
    #[error("hard link {path:?} -> {target:?}: {why}")]
    BadHardLink {
        path: String,
        target: String,
        why: &'static str,
    },
    /// A name the file system cannot hold.
    #[error("path {path:?} contains a NUL byte")]
    BadName { path: String },
    /// The disk holding the staging directory is full.
    #[error("out of space while staging {path:?} under {root}")]
    OutOfSpace { path: String, root: String },
    /// Any other I/O failure, with the operation and path it concerns.
    #[error("cannot {op} {path:?}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Progress of staging: entries and bytes written so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageCounts {
    pub entries: u64,
    pub bytes: u64,
}

/// What the finished tree holds, for sizing the image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeSummary {
    /// Every inode-bearing entry (hard links counted once), the root included.
    pub inodes: u64,
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    /// Bytes of regular-file data.
    pub bytes: u64,
    /// 4 KiB blocks the data, directories and long symlinks need.
    pub blocks: u64,
    /// The newest modification time after clamping.
    pub max_mtime: i64,
}

/// The tree under construction.
pub struct Staging {
    root: PathBuf,
    allow_devices: bool,
    /// Apply the entries' owners (only root can).
    chown: bool,
    /// Owner, mode and time of every directory, applied by [`Staging::finish`] because adding
    /// entries changes a directory's mtime and a read-only mode would stop later writes.
    dirs: BTreeMap<PathBuf, Meta>,
    /// Paths created by the current layer (whiteouts hide only lower layers).
    layer: HashSet<PathBuf>,
    counts: StageCounts,
    reported: StageCounts,
    /// Owners that could not be applied because we are not root.
    dropped_owners: u64,
    /// Copy buffer, reused across files.
    buf: Vec<u8>,
}

impl Staging {
    /// Starts a tree in `root`, which must be an existing, empty directory.
    pub fn new(root: &Path, allow_devices: bool) -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let chown = unsafe { libc::geteuid() } == 0;
        // The root gets root:root 0755 and time 0 unless the source says otherwise.
        let mut dirs = BTreeMap::new();
        dirs.insert(
            root.to_path_buf(),
            Meta {
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: 0,
            },
        );
        Self {
            root: root.to_path_buf(),
            allow_devices,
            chown,
            dirs,
            layer: HashSet::new(),
            counts: StageCounts::default(),
            reported: StageCounts::default(),
            dropped_owners: 0,
            buf: Vec::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn counts(&self) -> StageCounts {
        self.counts
    }

    /// Whether owners are applied (the builder runs as root).
    pub fn preserves_owners(&self) -> bool {
        self.chown
    }

    /// How many entries had an owner other than the builder's that could not be applied.
    pub fn dropped_owners(&self) -> u64 {
        self.dropped_owners
    }

    /// Starts a new layer: whiteouts and opaque markers from now on hide only what earlier
    /// layers created.
    pub fn begin_layer(&mut self) {
        self.layer.clear();
    }

    /// Calls `report` when enough work was done since the last report (or `force`).
    pub fn maybe_report(&mut self, force: bool, report: &mut dyn FnMut(StageCounts)) {
        let c = self.counts;
        if force
            || c.bytes - self.reported.bytes >= PROGRESS_BYTES
            || c.entries - self.reported.entries >= PROGRESS_ENTRIES
        {
            self.reported = c;
            report(c);
        }
    }

    /// Sets the owner, mode and time of the root directory itself.
    pub fn root_dir(&mut self, meta: Meta) {
        self.dirs.insert(self.root.clone(), meta);
    }

    /// Creates (or updates) a directory.
    pub fn dir(&mut self, path: &Path, meta: Meta) -> Result<(), StagingError> {
        let Some((parent, name)) = self.prepare(path)? else {
            self.root_dir(meta);
            return Ok(());
        };
        let dest = parent.join(&name);
        match fs::symlink_metadata(&dest) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                self.remove(&dest, path)?;
                self.mkdir(&dest, path)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.mkdir(&dest, path)?,
            Err(e) => return Err(io_err("inspect", path, e)),
        }
        self.dirs.insert(dest.clone(), meta);
        self.created(dest);
        Ok(())
    }

    /// Creates a regular file with the content of `data`.
    pub fn file(
        &mut self,
        path: &Path,
        meta: Meta,
        data: &mut dyn Read,
    ) -> Result<(), StagingError> {
        let (parent, name) = self.prepare_leaf(path)?;
        let dest = parent.join(&name);
        self.clear(&dest, path)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&dest)
            .map_err(|e| self.write_err("create", path, e))?;
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(COPY_BUF, 0);
        let result = self.copy_into(&mut file, data, &mut buf, path);
        self.buf = buf;
        result?;
        self.apply_owner_fd(&file, path, meta)?;
        file.set_permissions(fs::Permissions::from_mode(meta.mode & 0o7777))
            .map_err(|e| io_err("set the mode of", path, e))?;
        set_mtime(&dest, meta.mtime).map_err(|e| io_err("set the time of", path, e))?;
        self.created(dest);
        Ok(())
    }

    fn copy_into(
        &mut self,
        file: &mut File,
        data: &mut dyn Read,
        buf: &mut [u8],
        path: &Path,
    ) -> Result<(), StagingError> {
        loop {
            let n = match data.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("read the content of", path, e)),
            };
            file.write_all(&buf[..n])
                .map_err(|e| self.write_err("write", path, e))?;
            self.counts.bytes += n as u64;
        }
        Ok(())
    }

    /// Copies a host file into the tree (a fast path for directory sources).
    pub fn copy_file(&mut self, path: &Path, meta: Meta, src: &Path) -> Result<(), StagingError> {
        let mut f = File::open(src).map_err(|e| io_err("read", src, e))?;
        self.file(path, meta, &mut f)
    }

    /// Creates a symbolic link. The target is stored as given; it is never followed here.
    pub fn symlink(&mut self, path: &Path, target: &Path, meta: Meta) -> Result<(), StagingError> {
        let (parent, name) = self.prepare_leaf(path)?;
        let dest = parent.join(&name);
        self.clear(&dest, path)?;
        std::os::unix::fs::symlink(target, &dest)
            .map_err(|e| self.write_err("create symlink", path, e))?;
        self.apply_owner_path(&dest, path, meta)?;
        set_mtime(&dest, meta.mtime).map_err(|e| io_err("set the time of", path, e))?;
        self.created(dest);
        Ok(())
    }

    /// Creates a hard link to `target`, an entry already in the tree.
    pub fn hard_link(&mut self, path: &Path, target: &Path) -> Result<(), StagingError> {
        let bad = |why| StagingError::BadHardLink {
            path: show(path),
            target: show(target),
            why,
        };
        let (tparent, tname) = self.prepare_leaf(target).map_err(|e| match e {
            StagingError::NotADirectory { .. } => bad("target does not exist"),
            other => other,
        })?;
        let source = tparent.join(&tname);
        match fs::symlink_metadata(&source) {
            Ok(m) if m.is_dir() => return Err(bad("target is a directory")),
            Ok(_) => {}
            Err(_) => return Err(bad("target does not exist")),
        }
        let (parent, name) = self.prepare_leaf(path)?;
        let dest = parent.join(&name);
        if dest == source {
            return Ok(());
        }
        self.clear(&dest, path)?;
        fs::hard_link(&source, &dest).map_err(|e| self.write_err("create hard link", path, e))?;
        self.created(dest);
        Ok(())
    }

    /// Creates a device node or FIFO. Device nodes need `allow_devices` (and root).
    pub fn node(
        &mut self,
        path: &Path,
        kind: NodeKind,
        major: u32,
        minor: u32,
        meta: Meta,
    ) -> Result<(), StagingError> {
        if kind != NodeKind::Fifo && !self.allow_devices {
            return Err(StagingError::DeviceRefused { path: show(path) });
        }
        let (parent, name) = self.prepare_leaf(path)?;
        let dest = parent.join(&name);
        self.clear(&dest, path)?;
        let ftype = match kind {
            NodeKind::Char => libc::S_IFCHR,
            NodeKind::Block => libc::S_IFBLK,
            NodeKind::Fifo => libc::S_IFIFO,
        };
        let c = cstring(&dest, path)?;
        let dev = libc::makedev(major, minor);
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call; mknod only reads it.
        let ret = unsafe { libc::mknod(c.as_ptr(), ftype | (meta.mode & 0o7777), dev) };
        if ret != 0 {
            return Err(self.write_err("create node", path, io::Error::last_os_error()));
        }
        self.apply_owner_path(&dest, path, meta)?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(meta.mode & 0o7777))
            .map_err(|e| io_err("set the mode of", path, e))?;
        set_mtime(&dest, meta.mtime).map_err(|e| io_err("set the time of", path, e))?;
        self.created(dest);
        Ok(())
    }

    /// A whiteout (`.wh.NAME`): removes `path` if an earlier layer created it.
    pub fn whiteout(&mut self, path: &Path) -> Result<(), StagingError> {
        let (parent, name) = self.prepare_leaf(path)?;
        let dest = parent.join(&name);
        if self.layer.contains(&dest) {
            return Ok(());
        }
        match fs::symlink_metadata(&dest) {
            Ok(_) => self.remove(&dest, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("inspect", path, e)),
        }
    }

    /// An opaque marker (`.wh..wh..opq`): hides everything earlier layers put in `dir`.
    pub fn opaque(&mut self, dir: &Path) -> Result<(), StagingError> {
        let resolved = match self.prepare(dir)? {
            None => self.root.clone(),
            Some((parent, name)) => parent.join(name),
        };
        match fs::symlink_metadata(&resolved) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StagingError::NotADirectory {
                    path: show(dir),
                    parent: show(dir),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.mkdir(&resolved, dir)?;
                self.created(resolved);
                return Ok(());
            }
            Err(e) => return Err(io_err("inspect", dir, e)),
        }
        self.clear_lower(&resolved, dir)
    }

    fn clear_lower(&mut self, dir: &Path, shown: &Path) -> Result<(), StagingError> {
        let entries = fs::read_dir(dir).map_err(|e| io_err("list", shown, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err("list", shown, e))?;
            let child = entry.path();
            if self.layer.contains(&child) {
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if is_dir {
                    self.clear_lower(&child, shown)?;
                }
            } else {
                self.remove(&child, shown)?;
            }
        }
        Ok(())
    }

    /// Applies directory metadata, clamps every modification time to `epoch` (when given)
    /// and summarizes the tree.
    pub fn finish(&mut self, epoch: Option<i64>) -> Result<TreeSummary, StagingError> {
        // Children sort after their parents, so walking backwards finishes children first.
        let dirs = std::mem::take(&mut self.dirs);
        for (dir, meta) in dirs.iter().rev() {
            let shown = dir.strip_prefix(&self.root).unwrap_or(dir).to_path_buf();
            if !dir.is_dir() {
                continue; // removed by a later whiteout
            }
            self.apply_owner_path(dir, &shown, *meta)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(meta.mode & 0o7777))
                .map_err(|e| io_err("set the mode of", &shown, e))?;
            set_mtime(dir, meta.mtime).map_err(|e| io_err("set the time of", &shown, e))?;
        }
        let mut summary = TreeSummary::default();
        let mut seen = HashSet::new();
        let root = self.root.clone();
        summarize(&root, &root, epoch, &mut summary, &mut seen)?;
        Ok(summary)
    }

    /// Splits `path` into its resolved parent directory (created as needed) and final name;
    /// `None` for the root itself.
    fn prepare(&mut self, path: &Path) -> Result<Option<(PathBuf, OsString)>, StagingError> {
        let mut comps = components(path)?;
        let Some(name) = comps.pop() else {
            return Ok(None);
        };
        let parent = self.resolve_dir(path, comps)?;
        Ok(Some((parent, name)))
    }

    fn prepare_leaf(&mut self, path: &Path) -> Result<(PathBuf, OsString), StagingError> {
        self.prepare(path)?.ok_or_else(|| StagingError::Traversal {
            path: show(path),
            why: "names the root directory itself",
        })
    }

    /// Resolves `comps` to a directory inside the root, following symlinks within the root and
    /// creating missing directories.
    fn resolve_dir(&mut self, path: &Path, comps: Vec<OsString>) -> Result<PathBuf, StagingError> {
        let mut stack: Vec<OsString> = Vec::new();
        let mut queue: std::collections::VecDeque<OsString> = comps.into();
        let mut links = 0u32;
        while let Some(c) = queue.pop_front() {
            if c.is_empty() || c == "." {
                continue;
            }
            if c == ".." {
                // Only symlink targets can bring `..` here.
                if stack.pop().is_none() {
                    return Err(StagingError::SymlinkEscape {
                        path: show(path),
                        link: "..".into(),
                    });
                }
                continue;
            }
            let cur = join_all(&self.root, &stack).join(&c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => stack.push(c),
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(StagingError::SymlinkLoop { path: show(path) });
                    }
                    let target =
                        fs::read_link(&cur).map_err(|e| io_err("read symlink", path, e))?;
                    let link_shown = join_all(Path::new(""), &stack).join(&c);
                    if target.is_absolute() {
                        stack.clear();
                    }
                    let mut expanded = Vec::new();
                    for comp in target.components() {
                        match comp {
                            Component::Normal(n) => expanded.push(n.to_os_string()),
                            Component::ParentDir => expanded.push(OsString::from("..")),
                            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
                        }
                    }
                    // Check the climb now, to name the offending link in the error.
                    let mut depth = stack.len() as i64;
                    for comp in &expanded {
                        depth += if comp == ".." { -1 } else { 1 };
                        if depth < 0 {
                            return Err(StagingError::SymlinkEscape {
                                path: show(path),
                                link: format!("{} -> {}", link_shown.display(), target.display()),
                            });
                        }
                    }
                    for comp in expanded.into_iter().rev() {
                        queue.push_front(comp);
                    }
                }
                Ok(_) => {
                    return Err(StagingError::NotADirectory {
                        path: show(path),
                        parent: show(&join_all(Path::new(""), &stack).join(&c)),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.mkdir(&cur, path)?;
                    self.dirs.insert(
                        cur.clone(),
                        Meta {
                            mode: 0o755,
                            uid: 0,
                            gid: 0,
                            mtime: 0,
                        },
                    );
                    self.created(cur);
                    stack.push(c);
                }
                Err(e) => return Err(io_err("inspect", path, e)),
            }
        }
        Ok(join_all(&self.root, &stack))
    }

    fn mkdir(&mut self, dest: &Path, shown: &Path) -> Result<(), StagingError> {
        fs::create_dir(dest).map_err(|e| self.write_err("create directory", shown, e))
    }

    /// Removes whatever is at `dest` so a new entry can take its place.
    fn clear(&mut self, dest: &Path, shown: &Path) -> Result<(), StagingError> {
        match fs::symlink_metadata(dest) {
            Ok(_) => self.remove(dest, shown),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("inspect", shown, e)),
        }
    }

    fn remove(&mut self, dest: &Path, shown: &Path) -> Result<(), StagingError> {
        let meta = fs::symlink_metadata(dest).map_err(|e| io_err("inspect", shown, e))?;
        if meta.is_dir() {
            // A directory left read-only by its metadata can still be removed: modes are only
            // applied in `finish`.
            fs::remove_dir_all(dest).map_err(|e| io_err("remove", shown, e))?;
            let gone: Vec<PathBuf> = self
                .dirs
                .range(dest.to_path_buf()..)
                .take_while(|(p, _)| p.starts_with(dest))
                .map(|(p, _)| p.clone())
                .collect();
            for p in gone {
                self.dirs.remove(&p);
            }
        } else {
            fs::remove_file(dest).map_err(|e| io_err("remove", shown, e))?;
        }
        Ok(())
    }

    fn created(&mut self, dest: PathBuf) {
        self.counts.entries += 1;
        self.layer.insert(dest);
    }

    fn apply_owner_fd(
        &mut self,
        file: &File,
        shown: &Path,
        meta: Meta,
    ) -> Result<(), StagingError> {
        if self.chown {
            std::os::unix::fs::fchown(file, Some(meta.uid), Some(meta.gid))
                .map_err(|e| io_err("set the owner of", shown, e))?;
        } else if meta.uid != 0 || meta.gid != 0 {
            self.dropped_owners += 1;
        }
        Ok(())
    }

    fn apply_owner_path(
        &mut self,
        dest: &Path,
        shown: &Path,
        meta: Meta,
    ) -> Result<(), StagingError> {
        if self.chown {
            std::os::unix::fs::lchown(dest, Some(meta.uid), Some(meta.gid))
                .map_err(|e| io_err("set the owner of", shown, e))?;
        } else if meta.uid != 0 || meta.gid != 0 {
            self.dropped_owners += 1;
        }
        Ok(())
    }

    fn write_err(&self, op: &'static str, shown: &Path, e: io::Error) -> StagingError {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            StagingError::OutOfSpace {
                path: show(shown),
                root: self.root.display().to_string(),
            }
        } else {
            io_err(op, shown, e)
        }
    }
}

/// The normal components of an entry path; `..` and absolute paths are refused.
pub fn components(path: &Path) -> Result<Vec<OsString>, StagingError> {
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(StagingError::BadName { path: show(path) });
    }
    let mut out = Vec::new();
    for comp in path.components() {
        match comp {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(StagingError::Traversal {
                    path: show(path),
                    why: "contains '..'",
                })
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(StagingError::Traversal {
                    path: show(path),
                    why: "absolute path",
                })
            }
        }
    }
    Ok(out)
}

fn join_all(base: &Path, comps: &[OsString]) -> PathBuf {
    let mut p = base.to_path_buf();
    for c in comps {
        p.push(c);
    }
    p
}

fn show(path: &Path) -> String {
    path.display().to_string()
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> StagingError {
    StagingError::Io {
        op,
        path: show(path),
        source,
    }
}

fn cstring(dest: &Path, shown: &Path) -> Result<CString, StagingError> {
    CString::new(dest.as_os_str().as_bytes())
        .map_err(|_| StagingError::BadName { path: show(shown) })
}

/// Sets atime and mtime of `path` (not following a final symlink).
pub(crate) fn set_mtime(path: &Path, mtime: i64) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let t = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: `c` is a valid NUL-terminated path and `times` two valid timespecs; both outlive
    // the call, which only reads them.
    let ret = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Walks the tree: counts entries and blocks, and clamps times newer than `epoch`.
fn summarize(
    root: &Path,
    dir: &Path,
    epoch: Option<i64>,
    summary: &mut TreeSummary,
    seen: &mut HashSet<(u64, u64)>,
) -> Result<(), StagingError> {
    let shown = |p: &Path| p.strip_prefix(root).unwrap_or(p).to_path_buf();
    let meta = fs::symlink_metadata(dir).map_err(|e| io_err("inspect", &shown(dir), e))?;
    account(dir, &meta, epoch, summary, seen)
        .map_err(|e| io_err("set the time of", &shown(dir), e))?;
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| io_err("list", &shown(dir), e))?
        .collect::<Result<_, _>>()
        .map_err(|e| io_err("list", &shown(dir), e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let m = fs::symlink_metadata(&path).map_err(|e| io_err("inspect", &shown(&path), e))?;
        if m.is_dir() {
            summarize(root, &path, epoch, summary, seen)?;
        } else {
            account(&path, &m, epoch, summary, seen)
                .map_err(|e| io_err("set the time of", &shown(&path), e))?;
        }
    }
    // Listing the directory moved its access time; put both times back, so mkfs copies
    // values that depend only on the input.
    let mtime = epoch.map_or(meta.mtime(), |e| meta.mtime().min(e));
    set_mtime(dir, mtime).map_err(|e| io_err("set the time of", &shown(dir), e))?;
    Ok(())
}

fn account(
    path: &Path,
    m: &fs::Metadata,
    epoch: Option<i64>,
    summary: &mut TreeSummary,
    seen: &mut HashSet<(u64, u64)>,
) -> io::Result<()> {
    let mut mtime = m.mtime();
    if let Some(epoch) = epoch {
        if mtime > epoch {
            set_mtime(path, epoch)?;
            mtime = epoch;
        }
    }
    summary.max_mtime = summary.max_mtime.max(mtime);
    if !seen.insert((m.dev(), m.ino())) {
        return Ok(()); // another name of a hard-linked file
    }
    summary.inodes += 1;
    let ft = m.file_type();
    if ft.is_dir() {
        summary.dirs += 1;
        summary.blocks += 1;
    } else if ft.is_file() {
        summary.files += 1;
        summary.bytes += m.len();
        summary.blocks += m.len().div_ceil(4096);
    } else if ft.is_symlink() {
        summary.symlinks += 1;
        if m.len() > 59 {
            summary.blocks += 1;
        }
    }
    Ok(())
}

/// What a layer entry's file name means.
#[derive(Debug, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// An ordinary entry.
    None,
    /// `.wh..wh..opq`: the directory hides what lower layers put in it.
    Opaque,
    /// `.wh.NAME`: NAME from lower layers is deleted.
    Remove(&'a OsStr),
    /// `.wh.`, `.wh..` or `.wh...`: a whiteout that names no sibling.
    Invalid,
}

/// Classifies a layer entry's file name.
pub fn whiteout(name: &OsStr) -> Whiteout<'_> {
    let bytes = name.as_bytes();
    if bytes == b".wh..wh..opq" {
        return Whiteout::Opaque;
    }
    match bytes.strip_prefix(b".wh.") {
        None => Whiteout::None,
        Some(b"" | b"." | b"..") => Whiteout::Invalid,
        Some(rest) => Whiteout::Remove(OsStr::from_bytes(rest)),
    }
}
