//! A private containerd for the shim tests: Debian's `containerd`, started with its own root,
//! state and socket in a scratch directory (no systemd), capsule's shim on its `PATH`, the
//! VMs' state in the test's own capsule state directory. Dropping it kills what is left of its
//! tasks and shims, stops containerd and removes the VMs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::capsule::capsule_binary;
use crate::cli::{CapsuleCli, Outcome};
use crate::guests::ScratchDir;
use crate::tier::{find_in_path, Backend};

/// The runtime name the shim answers to.
pub const RUNTIME: &str = "io.containerd.capsule.v2";
/// The image the tests import: Debian's static busybox, built by `capsule image build`.
pub const TEST_IMAGE: &str = "localhost/capsule-test:1";

/// Why the containerd tests cannot run here, or `None`.
pub fn unavailable_reason() -> Option<String> {
    for tool in ["containerd", "ctr"] {
        if find_in_path(tool).is_none() {
            return Some(format!(
                "{tool} is not installed (scripts/install-deps.sh installs Debian's containerd)"
            ));
        }
    }
    None
}

/// The shim binary, built next to `capsule` (see [`capsule_binary`]).
pub fn shim_binary() -> Result<PathBuf, String> {
    let shim = capsule_binary()?.with_file_name("containerd-shim-capsule-v2");
    if shim.is_file() {
        Ok(shim)
    } else {
        Err(format!("{} is missing", shim.display()))
    }
}

pub struct Containerd {
    /// Owns the capsule state directory (and removes the VMs in it when dropped).
    pub cli: CapsuleCli,
    dir: ScratchDir,
    child: Option<Child>,
    socket: PathBuf,
}

/// Extra configuration for the CRI plugin (`None`: the plugin is disabled).
pub struct CriConfig {
    /// The pod sandbox ("pause") image.
    pub sandbox_image: String,
    /// The CNI configuration and plugin directories.
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
}

impl Containerd {
    /// Starts containerd; its shims run VMs on `backend`.
    pub fn start(backend: Backend, cri: Option<&CriConfig>) -> Result<Containerd, String> {
        let cli = CapsuleCli::new("containerd")?;
        let dir = ScratchDir::new("ctrd")?;
        let shim_dir = shim_binary()?
            .parent()
            .map(Path::to_path_buf)
            .ok_or("the shim has no directory")?;
        let socket = dir.join("containerd.sock");
        let mut config = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\n[grpc]\n  address = \"{}\"\n",
            dir.join("root").display(),
            dir.join("state").display(),
            socket.display()
        );
        match cri {
            None => config.insert_str(
                config.find("[grpc]").unwrap_or(0),
                "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
            ),
            Some(c) => config += &format!(
                "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{}\"\n  \
                 disable_apparmor = true\n  restrict_oom_score_adj = true\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  conf_dir = \"{}\"\n  bin_dir = \"{}\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  \
                 runtime_type = \"io.containerd.runc.v2\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.capsule]\n  \
                 runtime_type = \"{RUNTIME}\"\n",
                c.sandbox_image,
                c.cni_conf_dir.display(),
                c.cni_bin_dir.display()
            ),
        }
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config).map_err(|e| format!("writing config: {e}"))?;
        let log = std::fs::File::create(dir.join("containerd.log"))
            .map_err(|e| format!("containerd.log: {e}"))?;
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .env("PATH", path)
            .env("CAPSULE_BACKEND", backend.cli_name())
            .env("CAPSULE_STATE_DIR", cli.state_dir())
            .env("CAPSULE_POD_DIR", dir.join("pods"))
            .env("CAPSULE_GUEST_DIR", crate::cli::guest_dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start containerd: {e}"))?;
        let me = Containerd {
            cli,
            dir,
            child: Some(child),
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !me.socket.exists() {
            if Instant::now() > deadline {
                return Err(format!("containerd did not start\n{}", me.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The directory of the pods' shares.
    pub fn pods_dir(&self) -> PathBuf {
        self.dir.join("pods")
    }

    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's log, for failure reports.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// A `ctr` command against this containerd.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.socket).args(args);
        cmd
    }

    /// Runs `ctr ARGS` with empty stdin.
    pub fn ctr(&self, args: &[&str]) -> Result<Outcome, String> {
        let mut all = vec!["ctr"];
        all.extend_from_slice(args);
        self.cli.run_command(self.ctr_command(args), &all, None)
    }

    /// Builds the test image with `capsule image build --format oci-archive` from Debian's
    /// static busybox and imports it.
    pub fn import_test_image(&self) -> Result<(), String> {
        self.import_image("default", TEST_IMAGE, &["/bin/sh"])
    }

    /// Builds a busybox image named `reference` with default command `cmd` and imports it
    /// into containerd's `namespace`.
    pub fn import_image(
        &self,
        namespace: &str,
        reference: &str,
        cmd: &[&str],
    ) -> Result<(), String> {
        let tree = self
            .dir
            .join(&format!("tree-{}", reference.replace(['/', ':'], "-")));
        build_busybox_tree(&tree)?;
        let archive = tree.with_extension("tar");
        let (t, a) = (tree.display().to_string(), archive.display().to_string());
        let mut args = vec![
            "image",
            "build",
            "--from-dir",
            &t,
            "--format",
            "oci-archive",
            "--ref",
            reference,
            "-o",
            &a,
        ];
        let cmd: Vec<String> = cmd.iter().map(|arg| format!("--cmd={arg}")).collect();
        args.extend(cmd.iter().map(String::as_str));
        self.cli.run(&args)?.expect_code(0)?;
        self.ctr(&["--namespace", namespace, "images", "import", &a])?
            .expect_code(0)?;
        Ok(())
    }

    /// What the shims left on the host: VMs in the state directory, mounts below the pods
    /// directory, processes of this containerd's VMs. Empty when clean.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.cli.state_dir()) {
            // Dot files are capsule's own (the helper links), not VMs.
            for e in entries.flatten() {
                if !e.file_name().to_string_lossy().starts_with('.') {
                    out.push(format!("VM state {}", e.path().display()));
                }
            }
        }
        let pods = self.pods_dir();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in info.lines() {
            if let Some(point) = line.split(' ').nth(4) {
                if Path::new(point).starts_with(&pods) {
                    out.push(format!("mount {point}"));
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&pods) {
            for e in entries.flatten() {
                out.push(format!("pod directory {}", e.path().display()));
            }
        }
        let state = self.cli.state_dir().display().to_string();
        for pid in crate::capsule::processes_mentioning(&state) {
            out.push(format!("process {pid}"));
        }
        out
    }

    /// Fails with the list when anything is left behind.
    pub fn expect_clean(&self) -> Result<(), String> {
        // A VM's supervisor and its daemons may take a moment after the shim returned.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("left behind: {left:?}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The pid of the shim serving task `id`.
    pub fn shim_pid(&self, id: &str) -> Option<u32> {
        let socket = self.socket.display().to_string();
        crate::capsule::processes_mentioning(&socket)
            .into_iter()
            .find(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                args.first()
                    .is_some_and(|a| a.ends_with(b"containerd-shim-capsule-v2"))
                    && args
                        .windows(2)
                        .any(|w| w[0] == b"-id" && w[1] == id.as_bytes())
            })
    }
}

/// A root tree with Debian's static busybox and the applets the tests use.
pub fn build_busybox_tree(root: &Path) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", root.display());
    std::fs::create_dir_all(root.join("bin")).map_err(err)?;
    for dir in ["etc", "tmp", "root"] {
        std::fs::create_dir_all(root.join(dir)).map_err(err)?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).map_err(err)?;
    for applet in [
        "sh", "uname", "true", "false", "sleep", "cat", "echo", "ls", "id", "ps", "nc", "wget",
        "httpd", "hostname", "mount", "grep", "tty", "head", "ip", "ifconfig", "touch",
    ] {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).map_err(err)?;
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .map_err(err)?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").map_err(err)?;
    Ok(())
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Kill the tasks of every namespace (and with them the shims' VMs), then containerd.
        let namespaces = self
            .ctr(&["namespaces", "ls", "-q"])
            .map(|o| o.stdout)
            .unwrap_or_default();
        for ns in namespaces.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let list = |what: &str| {
                self.ctr(&["--namespace", ns, what, "ls", "-q"])
                    .map(|o| o.stdout)
                    .unwrap_or_default()
            };
            for id in list("tasks")
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
            {
                let _ = self.ctr(&["--namespace", ns, "tasks", "kill", "-s", "KILL", id]);
                std::thread::sleep(Duration::from_millis(300));
                let _ = self.ctr(&["--namespace", ns, "tasks", "rm", "-f", id]);
            }
            for id in list("containers")
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
            {
                let _ = self.ctr(&["--namespace", ns, "containers", "rm", id]);
            }
        }
        let socket = self.socket.display().to_string();
        for pid in crate::capsule::processes_mentioning(&socket) {
            // SAFETY: kill(2) with a pid and a signal number.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) with a pid and a signal number.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // containerd's own snapshot mounts, and anything a shim left below the scratch dir.
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| Path::new(p).starts_with(self.dir.path()))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}
