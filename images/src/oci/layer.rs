//! Applying one layer: decompress (gzip, zstd or none, by magic number), hash, and replay the
//! tar entries into the staging tree with OCI whiteout semantics.

use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;

use flate2::bufread::MultiGzDecoder;
use ruzstd::frame_decoder::FrameDecoder;
use ruzstd::streaming_decoder::StreamingDecoder;

use super::digest::{Algorithm, HashingReader};
use super::store::Store;
use super::{Layer, OciError};
use crate::rootfs::staging::{
    components, whiteout, Meta, NodeKind, StageCounts, Staging, StagingError, Whiteout,
};

/// Latest modification time kept from a layer (the end of year 9999); later ones are clamped.
const MAX_MTIME: i64 = 253_402_300_799;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Recognizes the compression by the stream's first bytes.
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A decompressing reader that can hand back its input, so the rest of the blob can be hashed.
enum Decoder<R: BufRead> {
    Plain(R),
    Gzip(MultiGzDecoder<R>),
    /// The current frame's decoder, or the input once the last frame has ended.
    Zstd {
        frame: Option<Box<StreamingDecoder<R, FrameDecoder>>>,
        done: Option<R>,
    },
}

fn zstd_err(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<R: BufRead> Decoder<R> {
    fn new(compression: Compression, input: R) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Decoder::Plain(input),
            Compression::Gzip => Decoder::Gzip(MultiGzDecoder::new(input)),
            Compression::Zstd => Decoder::Zstd {
                frame: Some(Box::new(StreamingDecoder::new(input).map_err(zstd_err)?)),
                done: None,
            },
        })
    }

    fn into_inner(self) -> Option<R> {
        match self {
            Decoder::Plain(r) => Some(r),
            Decoder::Gzip(d) => Some(d.into_inner()),
            Decoder::Zstd { frame, done } => frame.map(|f| f.into_inner()).or(done),
        }
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd { frame, done } => loop {
                let Some(dec) = frame.as_mut() else {
                    return Ok(0);
                };
                let n = dec.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                // End of a frame: another may follow (multi-threaded zstd writes several).
                let Some(dec) = frame.take() else {
                    return Ok(0);
                };
                let (mut input, frame_decoder) = dec.into_parts();
                if input.fill_buf()?.is_empty() {
                    *done = Some(input);
                    return Ok(0);
                }
                *frame = Some(Box::new(
                    StreamingDecoder::new_with_decoder(input, frame_decoder).map_err(zstd_err)?,
                ));
            },
        }
    }
}

/// Applies layer number `index` (1-based) of an image to `staging`.
pub(crate) fn apply(
    store: &Store,
    layer: &Layer,
    index: usize,
    staging: &mut Staging,
    on_progress: &mut dyn FnMut(StageCounts),
) -> Result<(), OciError> {
    let name = layer.name();
    let (reader, stored) = store.open_file(&layer.path)?;
    if let Some(size) = layer.size {
        if size != stored {
            return Err(OciError::SizeMismatch {
                what: format!("layer {index} ({name})"),
                expected: size,
                actual: stored,
            });
        }
    }
    let blob_algo = layer
        .digest
        .as_ref()
        .map_or(Algorithm::Sha256, |d| d.algorithm);
    let mut blob = BufReader::with_capacity(
        256 * 1024,
        HashingReader::new(reader, blob_algo, layer.size),
    );
    let head = blob.fill_buf().map_err(|source| OciError::Read {
        path: format!("layer {index} ({name})"),
        source,
    })?;
    let compression = Compression::sniff(head);
    let decoder = Decoder::new(compression, blob).map_err(|source| OciError::Decompress {
        index,
        name: name.clone(),
        source,
    })?;
    let diff_algo = layer
        .diff_id
        .as_ref()
        .map_or(Algorithm::Sha256, |d| d.algorithm);
    let mut diff = HashingReader::new(decoder, diff_algo, None);

    staging.begin_layer();
    let outcome = replay(&mut diff, index, &name, staging, on_progress).and_then(|()| {
        diff.drain().map_err(|source| OciError::Decompress {
            index,
            name: name.clone(),
            source,
        })
    });

    // Hash whatever is left of the blob, so a corrupted layer is reported as such even when
    // the corruption also broke decompression or the tar stream.
    let (diff_digest, _, decoder) = diff.finish();
    let blob_digest = decoder.into_inner().and_then(|mut rest| {
        io::copy(&mut rest, &mut io::sink()).ok()?;
        Some(rest.into_inner().finish())
    });
    if let (Some(expected), Some((actual, size, _))) = (&layer.digest, blob_digest) {
        if actual != *expected {
            return Err(OciError::DigestMismatch {
                what: format!("layer {index} ({})", layer.path),
                expected: expected.to_string(),
                actual: actual.to_string(),
                size,
            });
        }
    }
    outcome?;
    if let Some(expected) = &layer.diff_id {
        if diff_digest != *expected {
            return Err(OciError::DigestMismatch {
                what: format!("layer {index} ({name}) uncompressed content (diff_id)"),
                expected: expected.to_string(),
                actual: diff_digest.to_string(),
                size: 0,
            });
        }
    }
    staging.maybe_report(true, on_progress);
    Ok(())
}

fn replay<R: Read>(
    input: R,
    index: usize,
    name: &str,
    staging: &mut Staging,
    on_progress: &mut dyn FnMut(StageCounts),
) -> Result<(), OciError> {
    let tar_err = |source| OciError::LayerTar {
        index,
        name: name.to_string(),
        source,
    };
    let extract_err = |source| OciError::Extract {
        index,
        name: name.to_string(),
        source,
    };
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        apply_entry(&mut entry, staging).map_err(|e| match e {
            EntryError::Tar(e) => tar_err(e),
            EntryError::Staging(e) => extract_err(e),
        })?;
        staging.maybe_report(false, on_progress);
    }
    Ok(())
}

enum EntryError {
    Tar(io::Error),
    Staging(StagingError),
}

impl From<StagingError> for EntryError {
    fn from(e: StagingError) -> Self {
        EntryError::Staging(e)
    }
}

fn apply_entry<R: Read>(
    entry: &mut tar::Entry<R>,
    staging: &mut Staging,
) -> Result<(), EntryError> {
    let path: PathBuf = entry.path().map_err(EntryError::Tar)?.into_owned();
    let header = entry.header();
    let kind = header.entry_type();
    let meta = Meta {
        mode: header.mode().map_err(EntryError::Tar)? & 0o7777,
        uid: u32::try_from(header.uid().map_err(EntryError::Tar)?).unwrap_or(u32::MAX),
        gid: u32::try_from(header.gid().map_err(EntryError::Tar)?).unwrap_or(u32::MAX),
        mtime: i64::try_from(header.mtime().map_err(EntryError::Tar)?)
            .unwrap_or(MAX_MTIME)
            .min(MAX_MTIME),
    };
    let comps = components(&path)?;
    let Some(file_name) = comps.last() else {
        if kind == tar::EntryType::Directory {
            staging.root_dir(meta);
        }
        return Ok(());
    };
    let parent: PathBuf = comps[..comps.len() - 1].iter().collect();
    match whiteout(file_name) {
        Whiteout::Opaque => return Ok(staging.opaque(&parent)?),
        Whiteout::Remove(target) => return Ok(staging.whiteout(&parent.join(target))?),
        Whiteout::Invalid => {
            return Err(StagingError::Traversal {
                path: path.display().to_string(),
                why: "a whiteout that names no file",
            }
            .into())
        }
        Whiteout::None => {}
    }
    let link_target = |entry: &tar::Entry<R>| -> Result<PathBuf, EntryError> {
        match entry.link_name().map_err(EntryError::Tar)? {
            Some(t) => Ok(t.into_owned()),
            None => Err(EntryError::Tar(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("link {} has no target", path.display()),
            ))),
        }
    };
    match kind {
        tar::EntryType::Directory => staging.dir(&path, meta)?,
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            staging.file(&path, meta, entry)?
        }
        tar::EntryType::Symlink => {
            let target = link_target(entry)?;
            staging.symlink(&path, &target, meta)?
        }
        tar::EntryType::Link => {
            let target = link_target(entry)?;
            staging.hard_link(&path, &target)?
        }
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            let node = match kind {
                tar::EntryType::Char => NodeKind::Char,
                tar::EntryType::Block => NodeKind::Block,
                _ => NodeKind::Fifo,
            };
            let major = entry.header().device_major().ok().flatten().unwrap_or(0);
            let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
            staging.node(&path, node, major, minor, meta)?
        }
        tar::EntryType::XGlobalHeader
        | tar::EntryType::XHeader
        | tar::EntryType::GNULongName
        | tar::EntryType::GNULongLink => {}
        other => log::warn!("{}: tar entry type {other:?} skipped", path.display()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_compression() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/"), Compression::None);
        assert_eq!(Compression::sniff(&[]), Compression::None);
    }
}
