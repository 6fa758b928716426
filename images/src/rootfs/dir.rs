//! Copying a host directory tree into the staging tree, in sorted order, keeping hard links,
//! symlinks (never followed), owners (when root), modes and modification times.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::staging::{Meta, NodeKind, StageCounts, Staging, StagingError};

/// Why a host directory could not be copied.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("cannot read {path}")]
    Unreadable {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not a directory")]
    NotADirectory(String),
    #[error(transparent)]
    Staging(#[from] StagingError),
}

/// Copies the tree at `src` into `staging`.
pub fn copy_tree(
    src: &Path,
    staging: &mut Staging,
    on_progress: &mut dyn FnMut(StageCounts),
) -> Result<(), DirError> {
    let meta = fs::metadata(src).map_err(|source| DirError::Unreadable {
        path: src.display().to_string(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(DirError::NotADirectory(src.display().to_string()));
    }
    staging.root_dir(meta_of(&meta));
    let mut links = HashMap::new();
    copy_dir(src, Path::new(""), staging, &mut links, on_progress)?;
    staging.maybe_report(true, on_progress);
    Ok(())
}

fn meta_of(m: &fs::Metadata) -> Meta {
    Meta {
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: m.mtime(),
    }
}

fn copy_dir(
    src: &Path,
    rel: &Path,
    staging: &mut Staging,
    links: &mut HashMap<(u64, u64), PathBuf>,
    on_progress: &mut dyn FnMut(StageCounts),
) -> Result<(), DirError> {
    let dir = src.join(rel);
    let unreadable = |path: &Path, source| DirError::Unreadable {
        path: path.display().to_string(),
        source,
    };
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(|e| unreadable(&dir, e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| unreadable(&dir, e))?;
    names.sort();
    for name in names {
        let rel_child = rel.join(&name);
        let host = src.join(&rel_child);
        let m = fs::symlink_metadata(&host).map_err(|e| unreadable(&host, e))?;
        let meta = meta_of(&m);
        let ft = m.file_type();
        if !ft.is_dir() && m.nlink() > 1 {
            if let Some(first) = links.get(&(m.dev(), m.ino())) {
                staging.hard_link(&rel_child, first)?;
                continue;
            }
            links.insert((m.dev(), m.ino()), rel_child.clone());
        }
        if ft.is_dir() {
            staging.dir(&rel_child, meta)?;
            copy_dir(src, &rel_child, staging, links, on_progress)?;
        } else if ft.is_file() {
            let mut f = fs::File::open(&host).map_err(|e| unreadable(&host, e))?;
            staging
                .file(&rel_child, meta, &mut f)
                .map_err(|e| match e {
                    StagingError::Io {
                        op: "read the content of",
                        source,
                        ..
                    } => unreadable(&host, source),
                    other => other.into(),
                })?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&host).map_err(|e| unreadable(&host, e))?;
            staging.symlink(&rel_child, &target, meta)?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                NodeKind::Char
            } else {
                NodeKind::Block
            };
            let rdev = m.rdev();
            staging.node(&rel_child, kind, libc::major(rdev), libc::minor(rdev), meta)?;
        } else if ft.is_fifo() {
            staging.node(&rel_child, NodeKind::Fifo, 0, 0, meta)?;
        } else {
            log::warn!("{}: socket skipped", host.display());
        }
        staging.maybe_report(false, on_progress);
    }
    Ok(())
}
