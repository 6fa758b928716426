//! Container roots from images, end to end, on every backend this machine offers. An OCI image layout holding Debian's static
//! busybox is built with standard tools (tar, gzip, sha256sum), turned into ext4 and erofs images
//! by `capsule image build --from-oci`, and booted as container roots:
//! the image's files are there, a read-only root refuses writes with EROFS, and a file written to
//! a `--rootfs-rw` root survives `stop` and a new `create`.

use std::path::{Path, PathBuf};
use std::process::Command;

use capsule_tests::cli::CapsuleCli;
use capsule_tests::tier::{run_backend_tests, Backend, BackendTest};

const OS_RELEASE: &str = "PRETTY_NAME=\"capsule rootfs test image\"\nID=capsule-test\n";

fn sh(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes `data` as a content-addressed blob of `layout`; returns (digest, size).
fn blob(layout: &Path, data: &[u8]) -> Result<(String, usize), String> {
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let tmp = dir.join("incoming");
    std::fs::write(&tmp, data).map_err(|e| e.to_string())?;
    let sum = sh(Command::new("sha256sum").arg(&tmp))?;
    let hex = sum
        .split_whitespace()
        .next()
        .ok_or("no sha256sum output")?
        .to_string();
    std::fs::rename(&tmp, dir.join(&hex)).map_err(|e| e.to_string())?;
    Ok((format!("sha256:{hex}"), data.len()))
}

/// An OCI image layout with one gzip layer: Debian's static busybox, its applets, os-release.
fn busybox_layout(dir: &Path) -> Result<PathBuf, String> {
    let tree = dir.join("tree");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
        std::fs::create_dir_all(tree.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox"))
        .map_err(|e| format!("/bin/busybox (package busybox-static): {e}"))?;
    for applet in ["sh", "cat", "echo", "touch", "ls", "rm", "grep", "mount"] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet))
            .map_err(|e| e.to_string())?;
    }
    std::fs::write(tree.join("etc/os-release"), OS_RELEASE).map_err(|e| e.to_string())?;
    let tar = dir.join("layer.tar.gz");
    sh(Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .args(["--owner=0", "--group=0", "-czf"])
        .arg(&tar)
        .arg("."))?;
    let layout = dir.join("oci");
    let layer = std::fs::read(&tar).map_err(|e| e.to_string())?;
    let (layer_digest, layer_size) = blob(&layout, &layer)?;
    let diff = sh(Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc '{}' | sha256sum", tar.display())))?;
    let diff_id = format!(
        "sha256:{}",
        diff.split_whitespace().next().unwrap_or_default()
    );
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
    );
    let (config_digest, config_size) = blob(&layout, config.as_bytes())?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_digest}","size":{layer_size}}}]}}"#
    );
    let (manifest_digest, manifest_size) = blob(&layout, manifest.as_bytes())?;
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{manifest_size}}}]}}"#
    );
    std::fs::write(layout.join("index.json"), index).map_err(|e| e.to_string())?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(|e| e.to_string())?;
    Ok(layout)
}

fn build_image(cli: &CapsuleCli, layout: &Path, out: &Path, format: &str) -> Result<(), String> {
    let (layout, out) = (layout.display().to_string(), out.display().to_string());
    let built = cli.run(&[
        "image",
        "build",
        "--from-oci",
        &layout,
        "-o",
        &out,
        "--format",
        format,
    ])?;
    built.expect_code(0)?;
    if !Path::new(&format!("{out}.sha256")).is_file() {
        return Err(format!("no checksum manifest beside {out}"));
    }
    Ok(())
}

fn os_release_is_the_images(cli: &CapsuleCli, name: &str) -> Result<(), String> {
    cli.run(&["exec", name, "--", "cat", "/etc/os-release"])?
        .expect_code(0)?
        .expect_stdout(OS_RELEASE)?;
    Ok(())
}

fn ext4_root_read_only_and_read_write(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("rootfs-ext4")?;
    let layout = busybox_layout(cli.state_dir())?;
    let image = cli.state_dir().join("root.ext4");
    build_image(&cli, &layout, &image, "ext4")?;
    let image_arg = image.display().to_string();

    // Read-only (the default): the image's files, and writes refused.
    cli.create(backend, "ro", &["--rootfs", &image_arg])?;
    os_release_is_the_images(&cli, "ro")?;
    cli.run(&["exec", "ro", "--", "touch", "/new-file"])?
        .expect_code(1)?
        .expect_stderr_has(&["Read-only file system"])?;
    cli.run(&["rm", "--force", "ro"])?.expect_code(0)?;

    // Read-write: a file written survives stop and a new create.
    cli.create(backend, "rw", &["--rootfs", &image_arg, "--rootfs-rw"])?;
    cli.run(&["exec", "rw", "--", "sh", "-c", "echo kept > /root/note"])?
        .expect_code(0)?;
    cli.run(&["stop", "rw"])?.expect_code(0)?;
    cli.run(&["rm", "rw"])?.expect_code(0)?;
    cli.create(backend, "rw", &["--rootfs", &image_arg, "--rootfs-rw"])?;
    cli.run(&["exec", "rw", "--", "cat", "/root/note"])?
        .expect_code(0)?
        .expect_stdout("kept\n")?;
    os_release_is_the_images(&cli, "rw")?;
    Ok(())
}

fn erofs_root(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("rootfs-erofs")?;
    let layout = busybox_layout(cli.state_dir())?;
    let image = cli.state_dir().join("root.erofs");
    build_image(&cli, &layout, &image, "erofs")?;
    cli.create(backend, "web", &["--rootfs", &image.display().to_string()])?;
    os_release_is_the_images(&cli, "web")?;
    cli.run(&["exec", "web", "--", "touch", "/x"])?
        .expect_code(1)?
        .expect_stderr_has(&["Read-only file system"])?;
    Ok(())
}

fn volume_mounted_in_the_container(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("rootfs-volume")?;
    let data = cli.state_dir().join("data");
    std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    std::fs::write(data.join("hello.txt"), "from a volume\n").map_err(|e| e.to_string())?;
    let image = cli.state_dir().join("data.ext4");
    let (d, i) = (data.display().to_string(), image.display().to_string());
    cli.run(&["image", "build", "--from-dir", &d, "-o", &i])?
        .expect_code(0)?;
    let volume = format!("{i}:/data:ro");
    cli.create(backend, "vm", &["--volume", &volume])?;
    cli.run(&["exec", "vm", "--", "cat", "/data/hello.txt"])?
        .expect_code(0)?
        .expect_stdout("from a volume\n")?;
    Ok(())
}

fn main() {
    let t = BackendTest::linux;
    run_backend_tests(vec![
        t(
            "oci_busybox_ext4_root_read_only_then_read_write_persists",
            ext4_root_read_only_and_read_write,
        ),
        t("oci_busybox_erofs_root", erofs_root),
        t(
            "ext4_volume_mounted_in_the_container",
            volume_mounted_in_the_container,
        ),
    ]);
}
