//! `capsule-mkinitramfs`: writes a deterministic newc initramfs.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use capsule_images::{Defaults, DeviceKind, Initramfs};
use clap::Parser;

/// Builds a deterministic initramfs (uncompressed newc cpio, the format the Linux kernel unpacks
/// as its rootfs).
///
/// Entries are written sorted by path with fixed owner and mtime (root and 0 unless changed), so
/// the same input always gives byte-identical output. Missing parent directories are created with
/// mode 0755. Archive paths may start with '/'; '.' and '..' components are rejected.
#[derive(Debug, Parser)]
#[command(name = "capsule-mkinitramfs", version, verbatim_doc_comment)]
struct Args {
    /// Output file.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,

    /// Static executable to embed as /init (mode 0755).
    #[arg(long, value_name = "BIN")]
    init: Option<PathBuf>,

    /// Copy host directory SRC recursively to archive path DST (files keep their permission
    /// bits; symlinks, device nodes and fifos are copied as such).
    #[arg(long = "add-dir", value_name = "SRC:DST")]
    add_dir: Vec<String>,

    /// Copy host file SRC to archive path DST, keeping its permission bits.
    #[arg(long = "add-file", value_name = "SRC:DST")]
    add_file: Vec<String>,

    /// Create an empty directory (mode 0755).
    #[arg(long = "dir", value_name = "PATH")]
    dirs: Vec<String>,

    /// Create symlink LINK pointing at TARGET.
    #[arg(long, value_name = "TARGET:LINK")]
    symlink: Vec<String>,

    /// Create a device node: TYPE is c (character) or b (block), MODE is octal, e.g.
    /// c:5:1:600:/dev/console.
    #[arg(long, value_name = "TYPE:MAJ:MIN:MODE:PATH")]
    mknod: Vec<String>,

    /// mtime of every entry (seconds since the epoch).
    #[arg(long, default_value_t = 0)]
    mtime: u32,

    /// Owner uid of every entry.
    #[arg(long, default_value_t = 0)]
    uid: u32,

    /// Owner gid of every entry.
    #[arg(long, default_value_t = 0)]
    gid: u32,
}

fn pair(spec: &str, what: &str) -> Result<(String, String)> {
    match spec.split_once(':') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
        _ => bail!("{what} {spec:?}: expected two non-empty parts separated by ':'"),
    }
}

fn mknod(fs: &mut Initramfs, spec: &str) -> Result<()> {
    let parts: Vec<&str> = spec.splitn(5, ':').collect();
    let [kind, major, minor, mode, path] = parts[..] else {
        bail!("--mknod {spec:?}: expected TYPE:MAJ:MIN:MODE:PATH");
    };
    let kind = match kind {
        "c" => DeviceKind::Char,
        "b" => DeviceKind::Block,
        other => bail!("--mknod {spec:?}: type {other:?} is neither c nor b"),
    };
    let major = major
        .parse()
        .with_context(|| format!("--mknod {spec:?}: major"))?;
    let minor = minor
        .parse()
        .with_context(|| format!("--mknod {spec:?}: minor"))?;
    let mode = u32::from_str_radix(mode, 8).with_context(|| format!("--mknod {spec:?}: mode"))?;
    fs.mknod(path, kind, major, minor, mode)?;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut fs = Initramfs::with_defaults(Defaults {
        mtime: args.mtime,
        uid: args.uid,
        gid: args.gid,
    });
    for dir in &args.dirs {
        fs.dir(dir, 0o755)?;
    }
    for spec in &args.add_dir {
        let (src, dst) = pair(spec, "--add-dir")?;
        fs.add_host_dir(src.as_ref(), &dst)?;
    }
    for spec in &args.add_file {
        let (src, dst) = pair(spec, "--add-file")?;
        fs.file_from_host(src.as_ref(), &dst, None)?;
    }
    for spec in &args.symlink {
        let (target, link) = pair(spec, "--symlink")?;
        fs.symlink(&target, &link)?;
    }
    for spec in &args.mknod {
        mknod(&mut fs, spec)?;
    }
    if let Some(init) = &args.init {
        fs.init(init)?;
    }
    fs.write_file(&args.output)
        .with_context(|| format!("building {}", args.output.display()))?;
    Ok(())
}
