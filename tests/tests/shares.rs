//! Host directories in containers (`--share HOST_DIR:/path[:ro]`, `--rootfs-dir DIR`), end to
//! end on every backend this machine offers: each share is a virtio-fs device served by its own
//! virtiofsd, mounted by the agent with the container mount API. Files cross both ways with
//! their ownership, modes and contents (a 64 MiB checksum); a read-only share refuses writes
//! with EROFS; a symlink that points out of a share does not reach the host's files; a host
//! tree boots as a container's root; stopping the VM leaves no virtiofsd; a virtiofsd that dies
//! shows in the VM's status; bad shares are refused before anything starts.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use capsule_tests::cli::CapsuleCli;
use capsule_tests::guests::ScratchDir;
use capsule_tests::tier::{run_backend_tests, Backend, BackendTest};

fn io<T>(what: &str, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn arg(p: &Path) -> String {
    p.display().to_string()
}

/// `sha256sum FILE` on the host.
fn host_sha256(file: &Path) -> Result<String, String> {
    let out = io("sha256sum", Command::new("sha256sum").arg(file).output())?;
    if !out.status.success() {
        return Err(format!("sha256sum {}: {}", file.display(), out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// `len` bytes that do not compress (xorshift64), so no layer can shortcut them.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The pids of the virtiofsd processes serving sockets in `state_dir` (found by command line).
fn virtiofsds_of(state_dir: &Path) -> Vec<u32> {
    let needle = format!("--socket-path={}/", state_dir.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_virtiofsd = args.first()?.ends_with("virtiofsd");
            (is_virtiofsd && args.iter().any(|a| a.starts_with(&needle))).then_some(pid)
        })
        .collect()
}

/// Waits (bounded) until no virtiofsd serves `state_dir`.
fn expect_no_virtiofsd(state_dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = virtiofsds_of(state_dir);
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "virtiofsd still running after the VM ended: {left:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The host side of the share test: a read-only site, a read-write data directory with a file
/// of known owner and mode, a 64 MiB file, and symlinks that point out of the share.
struct Dirs {
    _scratch: ScratchDir,
    site: PathBuf,
    data: PathBuf,
    secret: PathBuf,
}

const SECRET: &str = "host secret outside every share\n";
const BIG_LEN: usize = 64 << 20;

fn host_dirs() -> Result<Dirs, String> {
    let scratch = ScratchDir::new("shares-host")?;
    let site = scratch.join("site");
    let data = scratch.join("data");
    let outside = scratch.join("outside");
    for d in [&site, &data, &outside] {
        io("mkdir", std::fs::create_dir_all(d))?;
    }
    io(
        "index.html",
        std::fs::write(site.join("index.html"), "<h1>from the host</h1>\n"),
    )?;
    let secret = outside.join("secret.txt");
    io("secret", std::fs::write(&secret, SECRET))?;
    let owned = data.join("owned");
    io("owned", std::fs::write(&owned, "owned\n"))?;
    io(
        "chown",
        std::os::unix::fs::chown(&owned, Some(1234), Some(5678)),
    )?;
    io(
        "chmod",
        std::fs::set_permissions(&owned, std::fs::Permissions::from_mode(0o640)),
    )?;
    io(
        "big",
        std::fs::write(data.join("big"), pseudo_random(BIG_LEN)),
    )?;
    // One absolute and one relative link, both to the host file outside the share.
    io(
        "symlink",
        std::os::unix::fs::symlink(&secret, data.join("escape-absolute")),
    )?;
    io(
        "symlink",
        std::os::unix::fs::symlink("../outside/secret.txt", data.join("escape-relative")),
    )?;
    Ok(Dirs {
        _scratch: scratch,
        site,
        data,
        secret,
    })
}

fn files_cross_both_ways(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("shares")?;
    let dirs = host_dirs()?;
    let site = format!("{}:/srv:ro", arg(&dirs.site));
    let data = format!("{}:/data", arg(&dirs.data));
    cli.create(backend, "web", &["--share", &site, "--share", &data])?;
    let vm_dir = cli.state_dir().join("web");
    if virtiofsds_of(&vm_dir).is_empty() {
        return Err("no virtiofsd serves the VM's shares".into());
    }
    let exec = |cmd: &str| cli.run(&["exec", "web", "--", "sh", "-c", cmd]);

    // Host → container, and the read-only share refuses writes with EROFS.
    cli.run(&["exec", "web", "--", "cat", "/srv/index.html"])?
        .expect_code(0)?
        .expect_stdout("<h1>from the host</h1>\n")?;
    cli.run(&["exec", "web", "--", "touch", "/srv/new-file"])?
        .expect_code(1)?
        .expect_stderr_has(&["Read-only file system"])?;
    if dirs.site.join("new-file").exists() {
        return Err("a write to the read-only share reached the host".into());
    }

    // Container → host, with the owner and mode the container gave it.
    exec("echo from the container > /data/out.txt && chown 4321:8765 /data/out.txt && chmod 604 /data/out.txt")?
        .expect_code(0)?;
    let out = dirs.data.join("out.txt");
    let text = io("out.txt", std::fs::read_to_string(&out))?;
    if text != "from the container\n" {
        return Err(format!("the host reads {text:?} from out.txt"));
    }
    let meta = io("out.txt", std::fs::metadata(&out))?;
    let got = (meta.uid(), meta.gid(), meta.mode() & 0o7777);
    if got != (4321, 8765, 0o604) {
        return Err(format!(
            "out.txt on the host: uid {} gid {} mode {:o}",
            got.0, got.1, got.2
        ));
    }
    // The host's owner and mode, as the container sees them.
    cli.run(&["exec", "web", "--", "stat", "-c", "%u:%g %a", "/data/owned"])?
        .expect_code(0)?
        .expect_stdout("1234:5678 640\n")?;

    // 64 MiB both ways: read in the container, copied by the container, checked on the host.
    let want = host_sha256(&dirs.data.join("big"))?;
    cli.run(&["exec", "web", "--", "sha256sum", "/data/big"])?
        .expect_code(0)?
        .expect_stdout(&format!("{want}  /data/big\n"))?;
    exec("cp /data/big /data/big.copy")?.expect_code(0)?;
    let copied = host_sha256(&dirs.data.join("big.copy"))?;
    if copied != want {
        return Err(format!(
            "the container's copy has sha256 {copied}, not {want}"
        ));
    }

    // Links that point out of the share resolve inside the guest, not on the host.
    cli.run(&["exec", "web", "--", "readlink", "/data/escape-absolute"])?
        .expect_code(0)?
        .expect_stdout(&format!("{}\n", arg(&dirs.secret)))?;
    for link in ["/data/escape-absolute", "/data/escape-relative"] {
        let read = cli.run(&["exec", "web", "--", "cat", link])?;
        if read.stdout.contains(SECRET.trim()) || read.code == Some(0) {
            return Err(format!(
                "{link} reached the host's file outside the share\n{}",
                read.describe()
            ));
        }
    }

    // Stopping the VM stops its daemons.
    cli.run(&["stop", "web"])?.expect_code(0)?;
    expect_no_virtiofsd(&vm_dir)
}

/// A host tree with Debian's static busybox as the container's root.
fn host_tree(dir: &Path) -> Result<(), String> {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
        io(d, std::fs::create_dir_all(dir.join(d)))?;
    }
    io(
        "/bin/busybox (package busybox-static)",
        std::fs::copy("/bin/busybox", dir.join("bin/busybox")),
    )?;
    for applet in ["sh", "cat", "touch", "ls"] {
        io(
            applet,
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)),
        )?;
    }
    io(
        "os-release",
        std::fs::write(dir.join("etc/os-release"), "ID=capsule-host-tree\n"),
    )?;
    io(
        "hello",
        std::fs::write(
            dir.join("bin/hello"),
            "#!/bin/sh\necho hello from the host tree\n",
        ),
    )?;
    io(
        "chmod",
        std::fs::set_permissions(
            dir.join("bin/hello"),
            std::fs::Permissions::from_mode(0o755),
        ),
    )
}

fn rootfs_dir_boots_a_host_tree(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("shares-root")?;
    let scratch = ScratchDir::new("shares-tree")?;
    let tree = scratch.join("tree");
    host_tree(&tree)?;
    cli.create(backend, "tree", &["--rootfs-dir", &arg(&tree)])?;
    cli.run(&["exec", "tree", "--", "/bin/hello"])?
        .expect_code(0)?
        .expect_stdout("hello from the host tree\n")?;
    cli.run(&["exec", "tree", "--", "cat", "/etc/os-release"])?
        .expect_code(0)?
        .expect_stdout("ID=capsule-host-tree\n")?;
    // Read-only unless --rootfs-rw.
    cli.run(&["exec", "tree", "--", "touch", "/new-file"])?
        .expect_code(1)?
        .expect_stderr_has(&["Read-only file system"])?;
    let vm_dir = cli.state_dir().join("tree");
    cli.run(&["rm", "--force", "tree"])?.expect_code(0)?;
    expect_no_virtiofsd(&vm_dir)
}

fn virtiofsd_exit_shows_in_status(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("shares-dies")?;
    let scratch = ScratchDir::new("shares-dies-host")?;
    let share = format!("{}:/data", arg(scratch.path()));
    cli.create(backend, "vm", &["--share", &share])?;
    let vm_dir = cli.state_dir().join("vm");
    let pids = virtiofsds_of(&vm_dir);
    if pids.is_empty() {
        return Err("no virtiofsd serves the VM's share".into());
    }
    for pid in pids {
        // SAFETY: kill() has no memory-safety preconditions; pid is a virtiofsd of this test.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, reason, _) = cli.status("vm")?;
        if reason.contains("virtiofsd of share") && reason.contains(":/data exited") {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the status does not say virtiofsd died: {reason:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ls = cli.run(&["ls"])?;
    ls.expect_code(0)?;
    if !ls.stdout.contains("virtiofsd of share") {
        return Err(format!(
            "capsule ls does not show the lost share\n{}",
            ls.describe()
        ));
    }
    Ok(())
}

fn bad_shares_refused_before_boot(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("shares-bad")?;
    let scratch = ScratchDir::new("shares-bad-host")?;
    let dir = arg(scratch.path());
    let file = scratch.join("file");
    io("file", std::fs::write(&file, "x"))?;
    let missing = scratch.join("missing");
    let create = |extra: &[&str]| {
        let mut args = vec!["create", "vm", "--backend", backend.cli_name()];
        args.extend_from_slice(extra);
        cli.run(&args)
    };
    create(&["--share", &format!("{}:/srv", arg(&missing))])?
        .expect_code(1)?
        .expect_stderr_has(&[&format!(
            "share {}: the host directory does not exist",
            arg(&missing)
        )])?;
    create(&["--share", &format!("{}:/srv", arg(&file))])?
        .expect_code(1)?
        .expect_stderr_has(&["not a directory"])?;
    create(&["--share", &format!("{dir}:srv")])?
        .expect_code(1)?
        .expect_stderr_has(&["target \"srv\" is not an absolute path"])?;
    create(&[
        "--share",
        &format!("{dir}:/srv"),
        "--share",
        &format!("{dir}:/srv:ro"),
    ])?
    .expect_code(1)?
    .expect_stderr_has(&["target \"/srv\" is already the target of another share"])?;
    create(&["--share", &format!("{dir}:/")])?
        .expect_code(1)?
        .expect_stderr_has(&["is the container's root: use --rootfs-dir"])?;
    create(&["--rootfs-dir", &arg(&missing)])?
        .expect_code(1)?
        .expect_stderr_has(&["does not exist"])?;

    // virtiofsd not installed: nothing in $CAPSULE_VIRTIOFSD, the cache or PATH.
    let empty_cache = scratch.join("cache");
    io("cache", std::fs::create_dir_all(&empty_cache))?;
    let share = format!("{dir}:/srv");
    let args = [
        "create",
        "vm",
        "--backend",
        backend.cli_name(),
        "--share",
        &share,
    ];
    let mut cmd = cli.command(&args);
    cmd.env_remove("CAPSULE_VIRTIOFSD")
        .env("CAPSULE_CACHE", &empty_cache)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    cli.run_command(cmd, &args, None)?
        .expect_code(1)?
        .expect_stderr_has(&["virtiofsd is not installed", "scripts/install-virtiofsd.sh"])?;
    let mut cmd = cli.command(&args);
    cmd.env("CAPSULE_VIRTIOFSD", &missing);
    cli.run_command(cmd, &args, None)?
        .expect_code(1)?
        .expect_stderr_has(&[&format!("virtiofsd {} does not exist", arg(&missing))])?;

    if std::fs::read_dir(cli.state_dir())
        .map_err(|e| e.to_string())?
        .flatten()
        .any(|e| e.path().is_dir())
    {
        return Err("a refused create left a state directory".into());
    }

    // A virtiofsd that exits before it serves: the VM does not start, and says why.
    let mut cmd = cli.command(&args);
    cmd.env("CAPSULE_VIRTIOFSD", "/bin/false");
    cli.run_command(cmd, &args, None)?
        .expect_code(1)?
        .expect_stderr_has(&["a share could not be served", "exited before it served"])?;
    Ok(())
}

fn main() {
    let t = BackendTest::linux;
    run_backend_tests(vec![
        t(
            "share_files_modes_64mib_symlinks_readonly_and_stop",
            files_cross_both_ways,
        ),
        t("rootfs_dir_boots_a_host_tree", rootfs_dir_boots_a_host_tree),
        t(
            "fault_virtiofsd_exit_shows_in_status",
            virtiofsd_exit_shows_in_status,
        ),
        t(
            "fault_bad_shares_refused_before_boot",
            bad_shares_refused_before_boot,
        ),
    ]);
}
