//! Reading OCI images: an image layout directory (`oci-layout`, `index.json`, `blobs/`), an
//! archive of one (`oci-archive`, `docker save` from Docker 25 on), or a classic `docker save`
//! archive (`manifest.json` with `<id>/layer.tar`).
//!
//! The index, manifest and config are read with size limits and their digests checked. Layers
//! are applied in order ([`layer`]): the compressed blob's digest and size are checked against
//! the manifest, and the uncompressed stream against the config's `diff_ids`. A mismatch is an
//! error naming the layer. Everything in an image is treated as hostile input.

pub mod archive;
pub mod digest;
pub mod layer;
pub mod store;

use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use self::digest::{Digest, DigestParseError, HashingReader};
use self::store::Store;
use crate::rootfs::staging::{StageCounts, Staging, StagingError};

/// Largest index, manifest or config accepted.
const MAX_JSON: u64 = 8 << 20;
/// Nested indexes followed at most.
const MAX_INDEX_DEPTH: usize = 4;

const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Why an image could not be read or applied.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a readable tar archive")]
    BadArchive {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is compressed; decompress it first (docker save and oci-archive write plain tar)"
    )]
    CompressedArchive { path: String },
    #[error("{image} is neither an OCI image layout (index.json) nor a docker save archive (manifest.json)")]
    NotAnImage { image: String },
    #[error("{name} is missing from {image}")]
    Missing { name: String, image: String },
    #[error("{what} in {image} is not valid JSON of the expected shape")]
    BadJson {
        what: String,
        image: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} is larger than {MAX_JSON} bytes")]
    TooLarge { what: String },
    #[error(transparent)]
    BadDigest(#[from] DigestParseError),
    #[error("{what} ({expected}) does not match its content: {actual} ({size} bytes)")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
        size: u64,
    },
    #[error("{what} has {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{image}: {why}")]
    NoManifest { image: String, why: String },
    #[error("the config lists {diff_ids} layer digests (diff_ids) for {layers} layers")]
    DiffIdCount { diff_ids: usize, layers: usize },
    #[error("layer {index} ({name}) cannot be decompressed")]
    Decompress {
        index: usize,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("layer {index} ({name}) is not a valid tar stream")]
    LayerTar {
        index: usize,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("layer {index} ({name})")]
    Extract {
        index: usize,
        name: String,
        #[source]
        source: StagingError,
    },
}

/// One layer to apply.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The layer's file in the image (`blobs/sha256/…` or `<id>/layer.tar`).
    pub path: String,
    /// Digest of the blob as stored (compressed), when the image records it.
    pub digest: Option<Digest>,
    /// Size of the blob as stored, when the image records it.
    pub size: Option<u64>,
    /// Digest of the uncompressed tar stream, from the config's `rootfs.diff_ids`.
    pub diff_id: Option<Digest>,
}

impl Layer {
    /// How the layer is named in messages: its digest, or its path.
    pub fn name(&self) -> String {
        match &self.digest {
            Some(d) => d.to_string(),
            None => self.path.clone(),
        }
    }
}

/// An image whose manifest and config have been read and checked.
pub struct Image {
    store: Store,
    pub layers: Vec<Layer>,
    /// Digest of the manifest, when the image has one (OCI layouts).
    pub manifest_digest: Option<Digest>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
struct ImageConfig {
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
}

/// The OCI name of the host architecture.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl Image {
    /// Opens an image layout directory or archive and reads its manifest and config.
    pub fn open(path: &Path) -> Result<Self, OciError> {
        let store = Store::open(path)?;
        if store.exists("index.json") {
            Self::open_oci(store)
        } else if store.exists("manifest.json") {
            Self::open_docker(store)
        } else {
            Err(OciError::NotAnImage {
                image: store.describe(),
            })
        }
    }

    fn open_oci(store: Store) -> Result<Self, OciError> {
        let raw = read_limited(&store, "index.json", "index.json")?;
        let index: Index = parse_json(&raw, "index.json", &store)?;
        let mut candidates = index.manifests;
        let mut depth = 0;
        let (manifest_digest, manifest) = loop {
            let desc = pick_manifest(&store, candidates)?;
            let digest: Digest = desc.digest.parse()?;
            let what = format!("manifest {digest}");
            let raw = read_blob(&store, &digest, Some(desc.size), &what)?;
            let manifest: Manifest = parse_json(&raw, &what, &store)?;
            let nested = manifest.manifests.is_some()
                || manifest.media_type == MT_OCI_INDEX
                || manifest.media_type == MT_DOCKER_LIST
                || desc.media_type == MT_OCI_INDEX
                || desc.media_type == MT_DOCKER_LIST;
            if !nested {
                break (digest, manifest);
            }
            depth += 1;
            if depth > MAX_INDEX_DEPTH {
                return Err(OciError::NoManifest {
                    image: store.describe(),
                    why: "image indexes nested too deeply".into(),
                });
            }
            candidates = manifest.manifests.unwrap_or_default();
        };
        let config = manifest.config.ok_or_else(|| OciError::NoManifest {
            image: store.describe(),
            why: format!("manifest {manifest_digest} has no config"),
        })?;
        let config_digest: Digest = config.digest.parse()?;
        let what = format!("config {config_digest}");
        let raw = read_blob(&store, &config_digest, Some(config.size), &what)?;
        let config: ImageConfig = parse_json(&raw, &what, &store)?;
        let diff_ids = diff_ids(config)?;
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for desc in &manifest.layers {
            let digest: Digest = desc.digest.parse()?;
            layers.push(Layer {
                path: digest.blob_path(),
                digest: Some(digest),
                size: Some(desc.size),
                diff_id: None,
            });
        }
        attach_diff_ids(&mut layers, diff_ids)?;
        Ok(Self {
            store,
            layers,
            manifest_digest: Some(manifest_digest),
        })
    }

    fn open_docker(store: Store) -> Result<Self, OciError> {
        let raw = read_limited(&store, "manifest.json", "manifest.json")?;
        let entries: Vec<DockerManifestEntry> = parse_json(&raw, "manifest.json", &store)?;
        let entry = match entries.len() {
            1 => entries.into_iter().next().expect("one entry"),
            n => {
                let tags: Vec<String> = entries
                    .iter()
                    .flat_map(|e| e.repo_tags.clone().unwrap_or_default())
                    .collect();
                return Err(OciError::NoManifest {
                    image: store.describe(),
                    why: format!(
                        "manifest.json lists {n} images ({}); save one image per archive",
                        tags.join(", ")
                    ),
                });
            }
        };
        // Classic archives name the config `<hex>.json`; newer ones use `blobs/sha256/<hex>`.
        let config_digest = digest_from_path(&entry.config);
        let raw = match &config_digest {
            Some(d) => read_blob_at(&store, &entry.config, d, None, "config")?,
            None => read_limited(&store, &entry.config, "config")?,
        };
        let config: ImageConfig = parse_json(&raw, "config", &store)?;
        let diff_ids = diff_ids(config)?;
        let mut layers: Vec<Layer> = entry
            .layers
            .iter()
            .map(|path| Layer {
                path: path.clone(),
                digest: digest_from_path(path),
                size: None,
                diff_id: None,
            })
            .collect();
        attach_diff_ids(&mut layers, diff_ids)?;
        Ok(Self {
            store,
            layers,
            manifest_digest: None,
        })
    }

    /// Applies layer `index` (0-based; layers must be applied in order) to `staging`.
    pub fn apply_layer(
        &self,
        index: usize,
        staging: &mut Staging,
        on_progress: &mut dyn FnMut(StageCounts),
    ) -> Result<(), OciError> {
        layer::apply(
            &self.store,
            &self.layers[index],
            index + 1,
            staging,
            on_progress,
        )
    }
}

/// Chooses the manifest for this host among an index's entries.
fn pick_manifest(store: &Store, manifests: Vec<Descriptor>) -> Result<Descriptor, OciError> {
    let total = manifests.len();
    let mut matching: Vec<Descriptor> = manifests
        .into_iter()
        .filter(|d| match &d.platform {
            None => true,
            Some(p) => p.os == "linux" && p.architecture == host_arch(),
        })
        .collect();
    matching.dedup_by(|a, b| a.digest == b.digest);
    match matching.len() {
        1 => Ok(matching.pop().expect("one manifest")),
        0 => Err(OciError::NoManifest {
            image: store.describe(),
            why: format!(
                "none of the index's {total} manifests is for linux/{}",
                host_arch()
            ),
        }),
        n => Err(OciError::NoManifest {
            image: store.describe(),
            why: format!(
                "the index lists {n} different images for this platform; save one image per layout"
            ),
        }),
    }
}

fn diff_ids(config: ImageConfig) -> Result<Vec<Digest>, OciError> {
    config
        .rootfs
        .map(|r| r.diff_ids)
        .unwrap_or_default()
        .iter()
        .map(|s| s.parse().map_err(OciError::from))
        .collect()
}

fn attach_diff_ids(layers: &mut [Layer], diff_ids: Vec<Digest>) -> Result<(), OciError> {
    if diff_ids.is_empty() {
        return Ok(());
    }
    if diff_ids.len() != layers.len() {
        return Err(OciError::DiffIdCount {
            diff_ids: diff_ids.len(),
            layers: layers.len(),
        });
    }
    for (layer, id) in layers.iter_mut().zip(diff_ids) {
        layer.diff_id = Some(id);
    }
    Ok(())
}

/// `blobs/<algo>/<hex>` names its digest; classic docker save names configs `<hex>.json`.
fn digest_from_path(path: &str) -> Option<Digest> {
    let trimmed = path.trim_start_matches("./");
    if let Some(rest) = trimmed.strip_prefix("blobs/") {
        let (algo, hex) = rest.split_once('/')?;
        return format!("{algo}:{hex}").parse().ok();
    }
    let hex = trimmed.strip_suffix(".json")?;
    format!("sha256:{hex}").parse().ok()
}

fn read_limited(store: &Store, name: &str, what: &str) -> Result<Vec<u8>, OciError> {
    let (mut reader, size) = store.open_file(name)?;
    if size > MAX_JSON {
        return Err(OciError::TooLarge { what: what.into() });
    }
    let mut buf = Vec::with_capacity(size as usize);
    reader
        .by_ref()
        .take(MAX_JSON + 1)
        .read_to_end(&mut buf)
        .map_err(|source| OciError::Read {
            path: format!("{} in {}", name, store.describe()),
            source,
        })?;
    if buf.len() as u64 > MAX_JSON {
        return Err(OciError::TooLarge { what: what.into() });
    }
    Ok(buf)
}

fn read_blob(
    store: &Store,
    digest: &Digest,
    size: Option<u64>,
    what: &str,
) -> Result<Vec<u8>, OciError> {
    read_blob_at(store, &digest.blob_path(), digest, size, what)
}

fn read_blob_at(
    store: &Store,
    name: &str,
    digest: &Digest,
    size: Option<u64>,
    what: &str,
) -> Result<Vec<u8>, OciError> {
    if let Some(size) = size {
        if size > MAX_JSON {
            return Err(OciError::TooLarge { what: what.into() });
        }
    }
    let raw = read_limited(store, name, what)?;
    let mut check = HashingReader::new(&raw[..], digest.algorithm, None);
    check.drain().map_err(|source| OciError::Read {
        path: name.into(),
        source,
    })?;
    let (actual, n, _) = check.finish();
    if actual != *digest {
        return Err(OciError::DigestMismatch {
            what: what.into(),
            expected: digest.to_string(),
            actual: actual.to_string(),
            size: n,
        });
    }
    if let Some(size) = size {
        if size != n {
            return Err(OciError::SizeMismatch {
                what: what.into(),
                expected: size,
                actual: n,
            });
        }
    }
    Ok(raw)
}

fn parse_json<'a, T: Deserialize<'a>>(
    raw: &'a [u8],
    what: &str,
    store: &Store,
) -> Result<T, OciError> {
    serde_json::from_slice(raw).map_err(|source| OciError::BadJson {
        what: what.into(),
        image: store.describe(),
        source,
    })
}
