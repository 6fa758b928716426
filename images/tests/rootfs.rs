//! T0 tests of the root filesystem builder on small synthetic OCI images made here.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use capsule_images::oci::digest::Digest;
use capsule_images::oci::OciError;
use capsule_images::rootfs::mkfs::find_tool;
use capsule_images::rootfs::staging::StagingError;
use capsule_images::rootfs::{Format, Progress, RootfsBuilder, RootfsError, Source};

// ---------------------------------------------------------------------------------------------
// Building test images

/// One tar entry of a test layer.
enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    Char(&'a str, u32, u32),
    Fifo(&'a str),
    /// A regular file whose name is written into the header as is (for hostile names).
    RawName(&'a [u8], &'a [u8]),
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::HardLink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Char(p, major, minor) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o666);
                h.set_size(0);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::Fifo(p) => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::RawName(name, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                let bytes = h.as_mut_bytes();
                bytes[..100].fill(0);
                bytes[..name.len()].copy_from_slice(name);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

#[derive(Clone, Copy)]
enum Comp {
    None,
    Gzip,
    /// Hand-made zstd: two frames of raw blocks (exercises the multi-frame path).
    ZstdRaw,
    /// The zstd command-line tool, when installed (real entropy-coded blocks).
    ZstdTool,
}

fn zstd_raw_frame(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd];
    out.push(0x00); // frame header descriptor: no content size, no checksum, no dictionary
    out.push(10 << 3); // window descriptor: 2^(10+10) = 1 MiB
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(64 * 1024).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        let last = u32::from(i + 1 == chunks.len());
        // Bit 0: last block; bits 1-2: block type 0 (raw); bits 3-23: size.
        let header = last | ((chunk.len() as u32) << 3);
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(chunk);
    }
    out
}

fn compress(data: &[u8], comp: Comp) -> Vec<u8> {
    match comp {
        Comp::None => data.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Comp::ZstdRaw => {
            let half = data.len() / 2;
            let mut out = zstd_raw_frame(&data[..half]);
            out.extend(zstd_raw_frame(&data[half..]));
            out
        }
        Comp::ZstdTool => {
            let mut child = Command::new("zstd")
                .args(["-q", "-c", "-3"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(data).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success());
            out.stdout
        }
    }
}

fn sha(data: &[u8]) -> String {
    Digest::sha256_of(data).to_string()
}

fn hex_of(digest: &str) -> &str {
    digest.split_once(':').unwrap().1
}

/// Writes an OCI image layout with these layers to `dir`; returns the layer blob digests.
fn oci_layout(dir: &Path, layers: &[(Vec<u8>, Comp)]) -> Vec<String> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut digests = Vec::new();
    for (tar, comp) in layers {
        let blob = compress(tar, *comp);
        let digest = sha(&blob);
        fs::write(blobs.join(hex_of(&digest)), &blob).unwrap();
        let media = match comp {
            Comp::None => "application/vnd.oci.image.layer.v1.tar",
            Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Comp::ZstdRaw | Comp::ZstdTool => "application/vnd.oci.image.layer.v1.tar+zstd",
        };
        descs.push(format!(
            r#"{{"mediaType":"{media}","digest":"{digest}","size":{}}}"#,
            blob.len()
        ));
        diff_ids.push(format!("\"{}\"", sha(tar)));
        digests.push(digest);
    }
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let config_digest = sha(config.as_bytes());
    fs::write(blobs.join(hex_of(&config_digest)), &config).unwrap();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        descs.join(",")
    );
    let manifest_digest = sha(manifest.as_bytes());
    fs::write(blobs.join(hex_of(&manifest_digest)), &manifest).unwrap();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{},"platform":{{"architecture":"{arch}","os":"linux"}}}}]}}"#,
            manifest.len()
        ),
    )
    .unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    digests
}

/// Packs a directory into a plain tar file (as `oci-archive` and `docker save` do).
fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn stage(source: Source, allow_devices: bool) -> Result<(tempfile::TempDir, PathBuf), RootfsError> {
    let t = tmp();
    let root = t.path().join("root");
    fs::create_dir(&root).unwrap();
    RootfsBuilder::new(source, Format::Ext4)
        .allow_devices(allow_devices)
        .stage(&root, &mut |_| {})?;
    Ok((t, root))
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skips (returns true) with a message when a tool is missing.
fn missing(tool: &str) -> bool {
    if find_tool(tool).is_none() {
        eprintln!("skipped: {tool} is not installed (scripts/install-deps.sh installs it)");
        return true;
    }
    false
}

fn base_layer() -> Vec<u8> {
    tar_of(&[
        E::Dir("etc", 0o755),
        E::File("etc/os-release", b"ID=v1\n", 0o644),
        E::File("etc/keep", b"k1", 0o644),
        E::File("etc/gone", b"g", 0o644),
        E::Dir("opt", 0o755),
        E::File("opt/a", b"a", 0o644),
        E::Dir("opt/sub", 0o700),
        E::File("opt/sub/b", b"b", 0o644),
        E::Dir("var/log", 0o755),
        E::File("var/log/x", b"x", 0o644),
        E::File("bin/sh", b"#!shell", 0o4755),
        E::HardLink("bin/link", "bin/sh"),
        E::Dir("usr/lib", 0o755),
        E::File("usr/lib/lib.so", b"lib", 0o644),
        E::Symlink("lib", "usr/lib"),
        E::Symlink("etc/passwd-link", "/etc/passwd"),
    ])
}

// ---------------------------------------------------------------------------------------------
// Layer semantics

#[test]
fn layers_apply_in_order_with_whiteouts_and_opaque_dirs() {
    let t = tmp();
    let layer2 = tar_of(&[
        E::File("etc/.wh.gone", b"", 0o644),
        E::File("opt/new", b"n", 0o644),
        E::File("opt/.wh..wh..opq", b"", 0o644),
        E::File("etc/os-release", b"ID=v2\n", 0o644),
        E::File("lib/extra.so", b"extra", 0o644),
        E::File("var/.wh.log", b"", 0o644),
        E::File("etc/.wh.never-existed", b"", 0o644),
    ]);
    let layer3 = tar_of(&[
        E::File("etc/keep", b"k3", 0o600),
        E::File("etc/.wh.keep", b"", 0o644),
    ]);
    oci_layout(
        t.path(),
        &[
            (base_layer(), Comp::Gzip),
            (layer2, Comp::ZstdRaw),
            (layer3, Comp::None),
        ],
    );
    let (_t2, root) = stage(Source::Oci(t.path().into()), false).unwrap();

    assert_eq!(read(&root.join("etc/os-release")), "ID=v2\n");
    assert!(
        !root.join("etc/gone").exists(),
        "whiteout removes a lower file"
    );
    assert!(!root.join("opt/a").exists(), "opaque dir hides lower files");
    assert!(
        !root.join("opt/sub").exists(),
        "opaque dir hides lower dirs"
    );
    assert_eq!(
        read(&root.join("opt/new")),
        "n",
        "opaque keeps its own layer's files"
    );
    assert!(
        !root.join("var/log").exists(),
        "whiteout removes a lower directory"
    );
    assert!(root.join("var").is_dir());
    assert_eq!(
        read(&root.join("etc/keep")),
        "k3",
        "a whiteout does not hide its own layer's file"
    );
    assert_eq!(
        fs::metadata(root.join("etc/keep")).unwrap().mode() & 0o7777,
        0o600
    );
    // Writing through the usr-merge symlink lands in usr/lib and keeps the symlink.
    assert_eq!(
        fs::read_link(root.join("lib")).unwrap(),
        Path::new("usr/lib")
    );
    assert_eq!(read(&root.join("usr/lib/extra.so")), "extra");
    // Hard links share an inode; setuid survives.
    let sh = fs::metadata(root.join("bin/sh")).unwrap();
    let link = fs::metadata(root.join("bin/link")).unwrap();
    assert_eq!(sh.ino(), link.ino());
    assert_eq!(sh.nlink(), 2);
    assert_eq!(sh.mode() & 0o7777, 0o4755);
    // Times come from the layers.
    assert_eq!(sh.mtime(), 1_700_000_000);
    // No whiteout marker is left in the tree.
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            assert!(
                !e.file_name().to_string_lossy().starts_with(".wh."),
                "{:?} left behind",
                e.path()
            );
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
}

#[test]
fn zstd_from_the_zstd_tool_and_gzip_layers_decompress() {
    if find_tool("zstd").is_none() {
        eprintln!("skipped: the zstd tool is not installed (scripts/install-deps.sh installs it)");
        return;
    }
    let t = tmp();
    let big: Vec<u8> = (0..300_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    let l1 = tar_of(&[E::File("data/big", &big, 0o644)]);
    let l2 = tar_of(&[E::File("data/small", b"s", 0o644)]);
    oci_layout(t.path(), &[(l1, Comp::ZstdTool), (l2, Comp::Gzip)]);
    let (_t2, root) = stage(Source::Oci(t.path().into()), false).unwrap();
    assert_eq!(fs::read(root.join("data/big")).unwrap(), big);
    assert_eq!(read(&root.join("data/small")), "s");
}

#[test]
fn symlinks_pointing_outside_are_kept_but_never_followed() {
    let t = tmp();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let layer = tar_of(&[
        // Leaves pointing anywhere are just stored.
        E::Symlink("abs", "/"),
        E::Symlink("rel", "../../../../../../../../../"),
        E::File("abs/through-abs", b"inside", 0o644),
    ]);
    oci_layout(&t.path().join("img"), &[(layer, Comp::Gzip)]);
    let (_t2, root) = stage(Source::Oci(t.path().join("img")), false).unwrap();
    assert_eq!(
        fs::read_link(root.join("rel")).unwrap(),
        Path::new("../../../../../../../../../")
    );
    assert_eq!(fs::read_link(root.join("abs")).unwrap(), Path::new("/"));
    // An absolute symlink parent resolves inside the root, as after chroot.
    assert_eq!(read(&root.join("through-abs")), "inside");
    assert!(!Path::new("/through-abs").exists());

    // A later entry through a symlink that climbs above the root is refused.
    let t = tmp();
    let escape = tar_of(&[
        E::Symlink("up", "../outside"),
        E::File("up/pwned", b"x", 0o644),
    ]);
    oci_layout(&t.path().join("img"), &[(escape, Comp::None)]);
    let err = stage(Source::Oci(t.path().join("img")), false).unwrap_err();
    assert!(
        matches!(
            &err,
            RootfsError::Oci(OciError::Extract {
                index: 1,
                source: StagingError::SymlinkEscape { .. },
                ..
            })
        ),
        "{err:?}"
    );
    let msg = format!("{:#}", anyhow_chain(&err));
    assert!(msg.contains("layer 1") && msg.contains("up/pwned"), "{msg}");
    assert!(!t.path().join("outside/pwned").exists());

    // The same through a symlinked parent created by an earlier layer.
    let t = tmp();
    let l1 = tar_of(&[E::Dir("d", 0o755), E::Symlink("d/link", "../../..")]);
    let l2 = tar_of(&[E::File("d/link/tmp/pwned", b"x", 0o644)]);
    oci_layout(&t.path().join("img"), &[(l1, Comp::Gzip), (l2, Comp::Gzip)]);
    let err = stage(Source::Oci(t.path().join("img")), false).unwrap_err();
    assert!(
        matches!(
            &err,
            RootfsError::Oci(OciError::Extract {
                index: 2,
                source: StagingError::SymlinkEscape { .. },
                ..
            })
        ),
        "{err:?}"
    );
}

fn anyhow_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

#[test]
fn dotdot_and_absolute_entries_are_refused() {
    for (name, why) in [
        (&b"../escape"[..], "contains '..'"),
        (&b"a/../../escape"[..], "contains '..'"),
        (&b"/etc/abs"[..], "absolute path"),
    ] {
        let t = tmp();
        let layer = tar_of(&[E::File("ok", b"ok", 0o644), E::RawName(name, b"evil")]);
        oci_layout(&t.path().join("img"), &[(layer, Comp::Gzip)]);
        let err = stage(Source::Oci(t.path().join("img")), false).unwrap_err();
        let msg = anyhow_chain(&err);
        assert!(
            matches!(
                &err,
                RootfsError::Oci(OciError::Extract {
                    source: StagingError::Traversal { .. },
                    ..
                })
            ),
            "{name:?}: {msg}"
        );
        assert!(msg.contains(why) && msg.contains("layer 1"), "{msg}");
        assert!(!t.path().join("escape").exists());
    }
    // A hard link may not point out either.
    let t = tmp();
    let layer = tar_of(&[E::HardLink("hl", "../../etc/passwd")]);
    oci_layout(&t.path().join("img"), &[(layer, Comp::None)]);
    let err = stage(Source::Oci(t.path().join("img")), false).unwrap_err();
    assert!(anyhow_chain(&err).contains("contains '..'"), "{err:?}");
    // And a whiteout may not name `..`.
    let t = tmp();
    let layer = tar_of(&[E::Dir("d", 0o755), E::File("d/.wh..", b"", 0o644)]);
    oci_layout(&t.path().join("img"), &[(layer, Comp::None)]);
    let err = stage(Source::Oci(t.path().join("img")), false).unwrap_err();
    assert!(anyhow_chain(&err).contains("whiteout"), "{err:?}");
}

#[test]
fn corrupted_layer_is_reported_by_name() {
    let t = tmp();
    let l1 = tar_of(&[E::File("one", b"1", 0o644)]);
    let l2 = tar_of(&[E::File("two", &[7u8; 10_000], 0o644)]);
    let digests = oci_layout(t.path(), &[(l1, Comp::Gzip), (l2, Comp::Gzip)]);
    let blob = t.path().join("blobs/sha256").join(hex_of(&digests[1]));
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&blob, &bytes).unwrap();
    let err = stage(Source::Oci(t.path().into()), false).unwrap_err();
    let msg = anyhow_chain(&err);
    assert!(
        matches!(&err, RootfsError::Oci(OciError::DigestMismatch { .. })),
        "{msg}"
    );
    assert!(
        msg.contains("layer 2") && msg.contains(&digests[1]),
        "{msg}"
    );

    // A blob that is intact but not what the manifest names: same error.
    let t = tmp();
    let l1 = tar_of(&[E::File("one", b"1", 0o644)]);
    let digests = oci_layout(t.path(), &[(l1, Comp::None)]);
    let blob = t.path().join("blobs/sha256").join(hex_of(&digests[0]));
    let mut bytes = fs::read(&blob).unwrap();
    // Same size, different content: tar stays valid (flip a byte of file data).
    let pos = bytes.windows(1).position(|w| w == b"1").unwrap();
    bytes[pos] = b'2';
    fs::write(&blob, &bytes).unwrap();
    let msg = anyhow_chain(&stage(Source::Oci(t.path().into()), false).unwrap_err());
    assert!(
        msg.contains("layer 1") && msg.contains("does not match"),
        "{msg}"
    );

    // A tampered manifest is caught through the index's digest.
    let t = tmp();
    oci_layout(
        t.path(),
        &[(tar_of(&[E::File("x", b"x", 0o644)]), Comp::None)],
    );
    let index = read(&t.path().join("index.json"));
    let start = index.find("sha256:").unwrap() + 7;
    let manifest = t
        .path()
        .join("blobs/sha256")
        .join(&index[start..start + 64]);
    let text = read(&manifest).replace("schemaVersion\":2", "schemaVersion\":3");
    fs::write(&manifest, text).unwrap();
    let msg = anyhow_chain(&stage(Source::Oci(t.path().into()), false).unwrap_err());
    assert!(
        msg.contains("manifest") && msg.contains("does not match"),
        "{msg}"
    );
}

#[test]
fn device_nodes_need_the_flag() {
    let t = tmp();
    let layer = tar_of(&[
        E::Dir("dev", 0o755),
        E::Char("dev/null", 1, 3),
        E::Fifo("dev/fifo"),
    ]);
    oci_layout(t.path(), &[(layer, Comp::Gzip)]);
    let err = stage(Source::Oci(t.path().into()), false).unwrap_err();
    assert!(
        matches!(
            &err,
            RootfsError::Oci(OciError::Extract {
                source: StagingError::DeviceRefused { .. },
                ..
            })
        ),
        "{err:?}"
    );
    assert!(anyhow_chain(&err).contains("--allow-devices"));
    if !is_root() {
        eprintln!("skipped: creating device nodes with --allow-devices needs root");
        return;
    }
    let (_t2, root) = stage(Source::Oci(t.path().into()), true).unwrap();
    let m = fs::symlink_metadata(root.join("dev/null")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!((libc::major(m.rdev()), libc::minor(m.rdev())), (1, 3));
    assert!(fs::symlink_metadata(root.join("dev/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn archives_docker_save_and_oci_archive() {
    // oci-archive: the layout as a tar file.
    let t = tmp();
    oci_layout(&t.path().join("layout"), &[(base_layer(), Comp::Gzip)]);
    tar_dir(&t.path().join("layout"), &t.path().join("image.tar"));
    let (_a, root) = stage(Source::Oci(t.path().join("image.tar")), false).unwrap();
    assert_eq!(read(&root.join("etc/os-release")), "ID=v1\n");

    // Classic docker save: manifest.json, <config hex>.json, <id>/layer.tar, and a second
    // image layer that is a symlink to the first (docker links duplicate layers).
    let d = t.path().join("docker");
    fs::create_dir_all(d.join("aaa")).unwrap();
    fs::create_dir_all(d.join("bbb")).unwrap();
    let l1 = base_layer();
    let l2 = tar_of(&[E::File("etc/os-release", b"ID=docker\n", 0o644)]);
    fs::write(d.join("aaa/layer.tar"), &l1).unwrap();
    fs::write(d.join("bbb/layer.tar"), &l2).unwrap();
    fs::create_dir_all(d.join("ccc")).unwrap();
    std::os::unix::fs::symlink("../aaa/layer.tar", d.join("ccc/layer.tar")).unwrap();
    let config = format!(
        r#"{{"rootfs":{{"type":"layers","diff_ids":["{}","{}","{}"]}}}}"#,
        sha(&l1),
        sha(&l2),
        sha(&l1)
    );
    let config_name = format!("{}.json", hex_of(&sha(config.as_bytes())));
    fs::write(d.join(&config_name), &config).unwrap();
    fs::write(
        d.join("manifest.json"),
        format!(
            r#"[{{"Config":"{config_name}","RepoTags":["test:1"],"Layers":["aaa/layer.tar","bbb/layer.tar","ccc/layer.tar"]}}]"#
        ),
    )
    .unwrap();
    tar_dir(&d, &t.path().join("docker.tar"));
    let (_b, root) = stage(Source::Oci(t.path().join("docker.tar")), false).unwrap();
    // The third layer (the first again) restores ID=v1.
    assert_eq!(read(&root.join("etc/os-release")), "ID=v1\n");
    assert_eq!(read(&root.join("usr/lib/lib.so")), "lib");

    // A wrong diff_id in a docker save archive names the layer.
    let bad = config.replace(&hex_of(&sha(&l2))[..8], "00000000");
    let bad_name = format!("{}.json", hex_of(&sha(bad.as_bytes())));
    fs::write(d.join(&bad_name), &bad).unwrap();
    let manifest = read(&d.join("manifest.json")).replace(&config_name, &bad_name);
    fs::write(d.join("manifest.json"), manifest).unwrap();
    tar_dir(&d, &t.path().join("docker-bad.tar"));
    let msg =
        anyhow_chain(&stage(Source::Oci(t.path().join("docker-bad.tar")), false).unwrap_err());
    assert!(msg.contains("layer 2") && msg.contains("diff_id"), "{msg}");

    // Compressed archives and non-images are refused with a clear message.
    let gz = t.path().join("image.tar.gz");
    fs::write(
        &gz,
        compress(&fs::read(t.path().join("image.tar")).unwrap(), Comp::Gzip),
    )
    .unwrap();
    let msg = anyhow_chain(&stage(Source::Oci(gz), false).unwrap_err());
    assert!(msg.contains("compressed"), "{msg}");
    let msg = anyhow_chain(&stage(Source::Oci(t.path().join("layout/blobs")), false).unwrap_err());
    assert!(msg.contains("neither an OCI image layout"), "{msg}");
}

#[test]
fn unreadable_input_is_reported() {
    let t = tmp();
    let missing_path = t.path().join("nope");
    let msg = anyhow_chain(&stage(Source::Oci(missing_path.clone()), false).unwrap_err());
    assert!(msg.contains("cannot read") && msg.contains("nope"), "{msg}");
    let msg = anyhow_chain(&stage(Source::Dir(missing_path), false).unwrap_err());
    assert!(msg.contains("cannot read") && msg.contains("nope"), "{msg}");
    // A layout whose layer blob is missing.
    let digests = oci_layout(&t.path().join("img"), &[(base_layer(), Comp::Gzip)]);
    fs::remove_file(t.path().join("img/blobs/sha256").join(hex_of(&digests[0]))).unwrap();
    let msg = anyhow_chain(&stage(Source::Oci(t.path().join("img")), false).unwrap_err());
    assert!(
        msg.contains("missing") && msg.contains(hex_of(&digests[0])),
        "{msg}"
    );
}

#[test]
fn progress_reports_every_layer_and_the_bytes() {
    let t = tmp();
    let l1 = tar_of(&[E::File("a", &[1u8; 5000], 0o644)]);
    let l2 = tar_of(&[E::File("b", &[2u8; 7000], 0o644)]);
    oci_layout(t.path(), &[(l1, Comp::Gzip), (l2, Comp::ZstdRaw)]);
    let out = tmp();
    let root = out.path().join("root");
    fs::create_dir(&root).unwrap();
    let mut layers = Vec::new();
    let mut last_bytes = 0;
    RootfsBuilder::new(Source::Oci(t.path().into()), Format::Ext4)
        .stage(&root, &mut |p| match p {
            Progress::Layer { index, count, .. } => layers.push((index, count)),
            Progress::Staged(c) => last_bytes = c.bytes,
            _ => {}
        })
        .unwrap();
    assert_eq!(layers, vec![(1, 2), (2, 2)]);
    assert_eq!(last_bytes, 12_000);
}

// ---------------------------------------------------------------------------------------------
// Images

fn debugfs_cat(image: &Path, path: &str) -> String {
    let out = Command::new(find_tool("debugfs").unwrap())
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn debugfs_stat(image: &Path, path: &str) -> String {
    let out = Command::new(find_tool("debugfs").unwrap())
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ext4_from_oci_is_deterministic_and_has_a_manifest() {
    if missing("mkfs.ext4") || missing("debugfs") {
        return;
    }
    let t = tmp();
    oci_layout(
        &t.path().join("img"),
        &[
            (base_layer(), Comp::Gzip),
            (
                tar_of(&[E::File("etc/os-release", b"ID=capsule\n", 0o644)]),
                Comp::ZstdRaw,
            ),
        ],
    );
    let build = |name: &str| {
        let out = t.path().join(name);
        RootfsBuilder::new(Source::Oci(t.path().join("img")), Format::Ext4)
            .build(&out, &mut |_| {})
            .unwrap()
    };
    let a = build("a.ext4");
    // Let the clock move so host timestamps (ctime of staged files) differ between builds.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = build("b.ext4");
    assert_eq!(a.sha256, b.sha256);
    assert!(fs::read(&a.output).unwrap() == fs::read(&b.output).unwrap());
    assert_eq!(
        a.epoch, 1_700_000_000,
        "epoch defaults to the newest time in the tree"
    );
    let manifest = read(&a.manifest);
    assert_eq!(manifest, format!("{}  a.ext4\n", a.sha256));
    assert_eq!(a.size, fs::metadata(&a.output).unwrap().len());
    assert_eq!(debugfs_cat(&a.output, "/etc/os-release"), "ID=capsule\n");
    assert_eq!(debugfs_cat(&a.output, "/usr/lib/lib.so"), "lib");
    let stat = debugfs_stat(&a.output, "/bin/sh");
    assert!(
        stat.contains("Mode:  04755") && stat.contains("Links: 2"),
        "{stat}"
    );
    // Run e2fsck on the result: the image must be clean.
    if let Some(fsck) = find_tool("e2fsck") {
        let out = Command::new(fsck)
            .args(["-fn"])
            .arg(&a.output)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn ext4_from_a_directory_with_epoch_and_size() {
    if missing("mkfs.ext4") || missing("debugfs") {
        return;
    }
    let t = tmp();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/hostname"), "capsule\n").unwrap();
    fs::write(src.join("big"), vec![3u8; 3 << 20]).unwrap();
    std::os::unix::fs::symlink("etc/hostname", src.join("hn")).unwrap();
    fs::hard_link(src.join("big"), src.join("big2")).unwrap();
    fs::set_permissions(src.join("etc"), fs::Permissions::from_mode(0o555)).unwrap();
    let epoch = 1_600_000_000;
    let build = |name: &str, size: Option<u64>| {
        let mut b = RootfsBuilder::new(Source::Dir(src.clone()), Format::Ext4).epoch(Some(epoch));
        if let Some(s) = size {
            b = b.size(s);
        }
        b.build(&t.path().join(name), &mut |_| {})
    };
    let a = build("a.ext4", Some(32 << 20)).unwrap();
    assert_eq!(a.size, 32 << 20);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = build("b.ext4", Some(32 << 20)).unwrap();
    assert_eq!(a.sha256, b.sha256);
    assert_eq!(debugfs_cat(&a.output, "/etc/hostname"), "capsule\n");
    let stat = debugfs_stat(&a.output, "/big2");
    assert!(stat.contains("Links: 2"), "{stat}");
    // Times newer than the epoch were clamped to it.
    let stat = debugfs_stat(&a.output, "/etc/hostname");
    assert!(stat.contains(&format!("mtime: {:#010x}", epoch)), "{stat}");
    let stat = debugfs_stat(&a.output, "/etc");
    assert!(stat.contains("Mode:  0555"), "{stat}");

    // Too small: a clear out-of-space error, and no image left behind.
    let err = build("small.ext4", Some(2 << 20)).unwrap_err();
    assert!(matches!(err, RootfsError::OutOfSpace { .. }), "{err:?}");
    assert!(err.to_string().contains("--size"), "{err}");
    assert!(!t.path().join("small.ext4").exists());
    assert!(fs::read_dir(t.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("partial")));

    // Automatic size fits the tree.
    let auto = build("auto.ext4", None).unwrap();
    assert!(auto.size > 3 << 20);
    assert_eq!(
        debugfs_cat(&auto.output, "/hn").len(),
        0,
        "a symlink is not a file"
    );
}

#[test]
fn erofs_is_deterministic() {
    if missing("mkfs.erofs") {
        return;
    }
    let t = tmp();
    oci_layout(&t.path().join("img"), &[(base_layer(), Comp::Gzip)]);
    let build = |name: &str| {
        RootfsBuilder::new(Source::Oci(t.path().join("img")), Format::Erofs)
            .build(&t.path().join(name), &mut |_| {})
            .unwrap()
    };
    let a = build("a.erofs");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = build("b.erofs");
    assert_eq!(a.sha256, b.sha256);
    assert_eq!(
        &fs::read(&a.output).unwrap()[1024..1028],
        &[0xe2, 0xe1, 0xf5, 0xe0]
    );
    if let Some(fsck) = find_tool("fsck.erofs") {
        let dest = t.path().join("extract");
        let out = Command::new(fsck)
            .arg(format!("--extract={}", dest.display()))
            .arg(&a.output)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(read(&dest.join("etc/os-release")), "ID=v1\n");
    }
    // --size is a limit for erofs.
    let big = tar_of(&[E::File("big", &[9u8; 100_000], 0o644)]);
    oci_layout(&t.path().join("big"), &[(big, Comp::Gzip)]);
    let err = RootfsBuilder::new(Source::Oci(t.path().join("big")), Format::Erofs)
        .size(64 * 1024)
        .build(&t.path().join("c.erofs"), &mut |_| {})
        .unwrap_err();
    assert!(
        matches!(err, RootfsError::TooLargeForSize { .. }),
        "{err:?}"
    );
}
