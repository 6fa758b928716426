//! Writing an OCI image archive (`oci-archive`: a tar of an image layout) from a directory
//! tree, one uncompressed layer, named by `io.containerd.image.name` so that
//! `ctr images import` registers it under that reference. Entries are written in sorted order
//! with the tree's own metadata: an equal tree gives an identical archive.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::digest::hex;

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Why an archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("image reference {0:?} is not NAME[:TAG] of lower-case letters, digits and ._/-")]
    Reference(String),
}

/// What the image runs by default.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
}

/// Checks `NAME[:TAG]` loosely the way registries do, and returns the tag (default `latest`).
fn tag_of(reference: &str) -> Result<&str, ArchiveError> {
    let bad = || ArchiveError::Reference(reference.to_string());
    let (name, tag) = match reference.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, t),
        _ => (reference, "latest"),
    };
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._/:-".contains(&b));
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if name_ok && tag_ok {
        Ok(tag)
    } else {
        Err(bad())
    }
}

/// Every path below `root`, sorted, relative to it.
fn walk(root: &Path) -> Result<Vec<PathBuf>, ArchiveError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| ArchiveError::Read(dir.clone(), e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| ArchiveError::Read(dir.clone(), e))?;
        names.sort();
        for name in names.into_iter().rev() {
            let child = rel.join(name);
            let meta = std::fs::symlink_metadata(root.join(&child))
                .map_err(|e| ArchiveError::Read(root.join(&child), e))?;
            if meta.is_dir() {
                stack.push(child.clone());
            }
            out.push(child);
        }
    }
    out.sort();
    Ok(out)
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the layer tar of `root` to `file`; returns its sha256 hex and size.
fn write_layer(root: &Path, file: File, shown: &Path) -> Result<(String, u64), ArchiveError> {
    let werr = |e| ArchiveError::Write(shown.to_path_buf(), e);
    let hashing = Hashing {
        inner: BufWriter::new(file),
        hash: Sha256::new(),
        size: 0,
    };
    let mut tar = tar::Builder::new(hashing);
    tar.follow_symlinks(false);
    for rel in walk(root)? {
        tar.append_path_with_name(root.join(&rel), &rel)
            .map_err(|e| ArchiveError::Read(root.join(&rel), e))?;
    }
    let mut hashing = tar.into_inner().map_err(werr)?;
    hashing.flush().map_err(werr)?;
    Ok((hex(&hashing.hash.finalize()), hashing.size))
}

/// Appends a blob (held in memory) under `blobs/sha256/`.
fn append_blob<W: Write>(tar: &mut tar::Builder<W>, data: &[u8]) -> std::io::Result<(String, u64)> {
    let digest = hex(&Sha256::digest(data));
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, format!("blobs/sha256/{digest}"), data)?;
    Ok((digest, data.len() as u64))
}

/// Writes an oci-archive of the tree at `root` to `out`, named `reference`; returns the
/// manifest's digest (`sha256:...`).
pub fn write(
    root: &Path,
    reference: &str,
    config: &ImageConfig,
    out: &Path,
) -> Result<String, ArchiveError> {
    let tag = tag_of(reference)?;
    let werr = |e| ArchiveError::Write(out.to_path_buf(), e);
    let mut layer = tempfile::tempfile().map_err(werr)?;
    let (layer_hex, layer_size) = write_layer(root, layer.try_clone().map_err(werr)?, out)?;
    let config_json = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": config.env, "Cmd": config.cmd },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_hex}")] },
    }))
    .map_err(|e| werr(e.into()))?;
    let file = File::create(out).map_err(werr)?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    let (config_hex, config_size) = append_blob(&mut tar, &config_json).map_err(werr)?;
    layer.seek(SeekFrom::Start(0)).map_err(werr)?;
    let mut header = tar::Header::new_ustar();
    header.set_size(layer_size);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(
        &mut header,
        format!("blobs/sha256/{layer_hex}"),
        (&mut layer).take(layer_size),
    )
    .map_err(werr)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": { "mediaType": MT_CONFIG, "digest": format!("sha256:{config_hex}"), "size": config_size },
        "layers": [{ "mediaType": MT_LAYER, "digest": format!("sha256:{layer_hex}"), "size": layer_size }],
    }))
    .map_err(|e| werr(e.into()))?;
    let (manifest_hex, manifest_size) = append_blob(&mut tar, &manifest).map_err(werr)?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": format!("sha256:{manifest_hex}"),
            "size": manifest_size,
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))
    .map_err(|e| werr(e.into()))?;
    for (name, data) in [
        ("oci-layout", &br#"{"imageLayoutVersion":"1.0.0"}"#[..]),
        ("index.json", &index[..]),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, data).map_err(werr)?;
    }
    tar.into_inner().and_then(|mut w| w.flush()).map_err(werr)?;
    Ok(format!("sha256:{manifest_hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(tag_of("localhost/busybox:1.36").unwrap(), "1.36");
        assert_eq!(tag_of("capsule.local/pause").unwrap(), "latest");
        assert_eq!(tag_of("registry:5000/x").unwrap(), "latest");
        for bad in ["", "Upper/x", "x:", "x:a/b c"] {
            assert!(tag_of(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn archive_reads_back_as_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/hello"), b"#!/bin/sh\necho hi\n").unwrap();
        std::os::unix::fs::symlink("hello", root.join("bin/hi")).unwrap();
        let out = dir.path().join("image.tar");
        let config = ImageConfig {
            cmd: vec!["/bin/hello".into()],
            env: vec!["PATH=/bin".into()],
        };
        let digest = write(&root, "localhost/test:1", &config, &out).unwrap();
        assert!(digest.starts_with("sha256:"));
        // The reader (digests and diff_ids checked) accepts it and applies its layer.
        let image = crate::oci::Image::open(&out).unwrap();
        assert_eq!(image.layers.len(), 1);
        // The same tree gives the same archive.
        let again = dir.path().join("again.tar");
        assert_eq!(
            write(&root, "localhost/test:1", &config, &again).unwrap(),
            digest
        );
    }
}
