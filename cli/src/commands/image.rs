//! `capsule image build`: a root filesystem image from a host directory or an OCI image.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use capsule_images::rootfs::{parse_size, Format, Progress, RootfsBuilder, Source};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};

#[derive(Args, Debug)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Build a root filesystem image (ext4 or erofs) and its .sha256 manifest.
    Build(BuildArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FormatArg {
    /// Read-write ext4 (mkfs.ext4 from e2fsprogs).
    Ext4,
    /// Read-only erofs (mkfs.erofs from erofs-utils).
    Erofs,
    /// An OCI image archive of one layer (for `ctr images import`, or any OCI tool); needs
    /// --ref.
    OciArchive,
}

#[derive(Args, Debug)]
#[command(
    group(ArgGroup::new("source").required(true).args(["from_dir", "from_oci"])),
    after_help = "The image is deterministic: equal input gives an identical image. Times are \
    clamped to SOURCE_DATE_EPOCH when it is set, else to the newest time in the input. \
    Progress goes to standard error; the last line on standard output is the image's sha256, \
    as also written to IMAGE.sha256."
)]
pub struct BuildArgs {
    /// Build from this host directory.
    #[arg(long, value_name = "DIR")]
    from_dir: Option<PathBuf>,

    /// Build from an OCI image layout directory, or a `docker save` / oci-archive tar file.
    #[arg(long, value_name = "PATH")]
    from_oci: Option<PathBuf>,

    /// The image file to write.
    #[arg(short = 'o', long = "output", value_name = "IMAGE")]
    output: PathBuf,

    /// File system of the image.
    #[arg(long, value_enum, default_value_t = FormatArg::Ext4)]
    format: FormatArg,

    /// Image size (e.g. 512M, 2G) instead of the computed one; for erofs, the most it may use.
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    size: Option<u64>,

    /// Accept device nodes in the input (refused by default).
    #[arg(long)]
    allow_devices: bool,

    /// With --format oci-archive: the image's name, NAME[:TAG] (e.g. localhost/busybox:1).
    #[arg(
        long = "ref",
        value_name = "NAME[:TAG]",
        required_if_eq("format", "oci-archive")
    )]
    reference: Option<String>,

    /// With --format oci-archive: the image's default command, one argument per --cmd.
    #[arg(long = "cmd", value_name = "ARG", default_values_t = ["/bin/sh".to_string()])]
    cmd: Vec<String>,
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

pub fn run(args: ImageArgs) -> ExitCode {
    match args.command {
        ImageCommand::Build(args) => match build(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => super::fail(&e),
        },
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `--format oci-archive`: stage the tree the way an image build does, then archive it.
fn build_archive(args: BuildArgs, source: Source, epoch: Option<i64>) -> anyhow::Result<()> {
    use capsule_images::oci::archive::{self, ImageConfig};
    let reference = args
        .reference
        .context("--format oci-archive needs --ref NAME[:TAG]")?;
    if args.size.is_some() {
        anyhow::bail!("--size is for file system images, not --format oci-archive");
    }
    let builder = RootfsBuilder::new(source, Format::Ext4)
        .allow_devices(args.allow_devices)
        .epoch(epoch);
    let staging = tempfile::tempdir().context("cannot make a staging directory")?;
    let (summary, _) = builder
        .stage(staging.path(), &mut |_| {})
        .with_context(|| format!("cannot stage {}", args.output.display()))?;
    let config = ImageConfig {
        cmd: args.cmd,
        env: vec![format!("PATH={}", capsule_protocol::DEFAULT_PATH)],
    };
    let digest = archive::write(staging.path(), &reference, &config, &args.output)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "capsule: {} written: image {reference}, {} files, {:.1} MiB of data",
        args.output.display(),
        summary.files,
        mib(summary.bytes)
    );
    println!("{digest}  {}", args.output.display());
    Ok(())
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let source = match (args.from_dir.clone(), args.from_oci.clone()) {
        (Some(dir), None) => Source::Dir(dir),
        (None, Some(oci)) => Source::Oci(oci),
        _ => anyhow::bail!("give exactly one of --from-dir and --from-oci"),
    };
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => Some(
            v.parse::<i64>()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
        ),
        _ => None,
    };
    let format = match args.format {
        FormatArg::Ext4 => Format::Ext4,
        FormatArg::Erofs => Format::Erofs,
        FormatArg::OciArchive => return build_archive(args, source, epoch),
    };
    let mut builder = RootfsBuilder::new(source, format)
        .allow_devices(args.allow_devices)
        .epoch(epoch);
    if let Some(size) = args.size {
        builder = builder.size(size);
    }

    let start = Instant::now();
    let report = builder
        .build(&args.output, &mut |p| match p {
            Progress::Layer {
                index,
                count,
                layer,
            } => {
                let size = layer
                    .size
                    .map(|s| format!(" ({:.1} MiB)", mib(s)))
                    .unwrap_or_default();
                eprintln!("capsule: layer {index}/{count} {}{size}", layer.name());
            }
            Progress::Staged(c) => eprintln!(
                "capsule: staged {} entries, {:.1} MiB ({:.1} s)",
                c.entries,
                mib(c.bytes),
                start.elapsed().as_secs_f64()
            ),
            Progress::Mkfs {
                format,
                size,
                summary,
            } => eprintln!(
                "capsule: writing {format} image of {:.0} MiB: {} files, {} directories, \
                 {} symlinks, {:.1} MiB of data",
                mib(size),
                summary.files,
                summary.dirs,
                summary.symlinks,
                mib(summary.bytes)
            ),
            Progress::Retry { size } => eprintln!(
                "capsule: the image was too small; retrying with {:.0} MiB",
                mib(size)
            ),
        })
        .with_context(|| format!("cannot build {}", args.output.display()))?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "capsule: {} written: {:.1} MiB image, {:.1} MiB of data in {:.2} s ({:.1} MiB/s); \
         times clamped to {}",
        report.output.display(),
        mib(report.size),
        mib(report.summary.bytes),
        secs,
        mib(report.summary.bytes) / secs.max(1e-9),
        report.epoch
    );
    println!("{}  {}", report.sha256, report.output.display());
    Ok(())
}
