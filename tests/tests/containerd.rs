//! capsule as containerd's runtime (`io.containerd.capsule.v2`), driven with `ctr` the way a
//! user would: Debian's containerd with its own root, state and socket, an image built by
//! `capsule image build --format oci-archive` and imported with `ctr images import`, and after
//! every test nothing of the shims' left on the host (VMs, their processes, mounts).

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use capsule_tests::containerd::{self, Containerd, RUNTIME, TEST_IMAGE};
use capsule_tests::tier::{run_backend_tests, Backend, BackendTest};

fn started(backend: Backend) -> Result<Containerd, String> {
    if let Some(reason) = containerd::unavailable_reason() {
        return Err(reason);
    }
    let c = Containerd::start(backend, None)?;
    c.import_test_image()?;
    Ok(c)
}

/// The release of the default guest kernel, from its version banner.
fn guest_release() -> Result<String, String> {
    let vmlinux = capsule_tests::cli::guest_dir().join("vmlinux");
    let bytes = std::fs::read(&vmlinux).map_err(|e| format!("{}: {e}", vmlinux.display()))?;
    let banner = b"Linux version ";
    bytes
        .windows(banner.len())
        .position(|w| w == banner)
        .and_then(|at| {
            let rest = &bytes[at + banner.len()..];
            let end = rest.iter().position(|b| *b == b' ')?;
            String::from_utf8(rest[..end].to_vec()).ok()
        })
        .ok_or_else(|| format!("no version banner in {}", vmlinux.display()))
}

/// The STATUS column of task `id` in `ctr task ls` (`None`: no such task).
fn task_status(c: &Containerd, id: &str) -> Result<Option<String>, String> {
    let out = c.ctr(&["task", "ls"])?;
    out.expect_code(0)?;
    Ok(out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&id))
        .and_then(|f| f.last().map(|s| s.to_string())))
}

fn wait_status(c: &Containerd, id: &str, want: Option<&str>) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = task_status(c, id)?;
        if now.as_deref() == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("task {id} is {now:?}, not {want:?}\n{}", c.log()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `ctr run -d IMAGE id sleep 600`, until the task runs.
fn run_detached(c: &Containerd, id: &str) -> Result<(), String> {
    c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        TEST_IMAGE,
        id,
        "sleep",
        "600",
    ])?
    .expect_code(0)?;
    wait_status(c, id, Some("RUNNING"))
}

/// `ctr run --rm IMAGE id uname -r` prints the guest kernel's release; exit codes pass through;
/// nothing is left once the task is gone.
fn ctr_run_prints_the_guest_kernel(backend: Backend) -> Result<(), String> {
    let c = started(backend)?;
    let release = guest_release()?;
    c.ctr(&[
        "run",
        "--runtime",
        RUNTIME,
        "--rm",
        TEST_IMAGE,
        "uname",
        "uname",
        "-r",
    ])?
    .expect_code(0)?
    .expect_stdout(&format!("{release}\n"))?;
    c.ctr(&[
        "run",
        "--runtime",
        RUNTIME,
        "--rm",
        TEST_IMAGE,
        "exit7",
        "sh",
        "-c",
        "exit 7",
    ])?
    .expect_code(7)?;
    c.expect_clean()
}

/// A detached task: exec (output and exit code), ps, pause/resume, metrics, kill -s TERM, and
/// delete, after which nothing is left.
fn task_lifecycle(backend: Backend) -> Result<(), String> {
    let c = started(backend)?;
    let id = "life";
    run_detached(&c, id)?;
    c.ctr(&["task", "exec", "--exec-id", "e1", id, "echo", "from exec"])?
        .expect_code(0)?
        .expect_stdout("from exec\n")?;
    c.ctr(&["task", "exec", "--exec-id", "e2", id, "sh", "-c", "exit 3"])?
        .expect_code(3)?;
    let ps = c.ctr(&["task", "ps", id])?;
    ps.expect_code(0)?;
    if ps
        .stdout
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count()
        == 0
    {
        return Err(format!("ctr task ps lists no process\n{}", ps.describe()));
    }
    c.ctr(&["task", "pause", id])?.expect_code(0)?;
    wait_status(&c, id, Some("PAUSED"))?;
    c.ctr(&["task", "resume", id])?.expect_code(0)?;
    wait_status(&c, id, Some("RUNNING"))?;
    let metrics = c.ctr(&["task", "metrics", id])?;
    metrics.expect_code(0)?;
    // ctr prints the cgroup v2 memory usage of the container (not 0: sleep runs in it).
    let usage = metrics
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"memory.usage"))
        .and_then(|f| f.last()?.parse::<u64>().ok());
    if usage.unwrap_or(0) == 0 {
        return Err(format!(
            "no memory usage in the metrics\n{}",
            metrics.describe()
        ));
    }
    c.ctr(&["task", "kill", "-s", "TERM", id])?.expect_code(0)?;
    wait_status(&c, id, Some("STOPPED"))?;
    c.ctr(&["task", "rm", id])?.expect_code(0)?;
    c.ctr(&["containers", "rm", id])?.expect_code(0)?;
    c.expect_clean()
}

/// `ctr run -t` gives the process a terminal.
fn ctr_run_with_a_terminal(backend: Backend) -> Result<(), String> {
    let c = started(backend)?;
    // ctr wants a terminal of its own for -t: script(1) gives it one.
    let line = format!(
        "ctr --address {} run -t --rm --runtime {RUNTIME} {TEST_IMAGE} tty sh -c 'tty; exit 4'",
        c.socket().display()
    );
    let args = ["script", "-qec", &line, "/dev/null"];
    let mut cmd = std::process::Command::new("script");
    cmd.args(&args[1..]);
    let out = c.cli.run_command(cmd, &args, None)?;
    out.expect_code(4)?.expect_stdout_has("/dev/pts/")?;
    c.expect_clean()
}

/// A shim killed under a running task: containerd sees the task exit (137) and its `delete`
/// removes the VM.
fn killed_shim_is_a_task_exit(backend: Backend) -> Result<(), String> {
    let c = started(backend)?;
    let id = "orphan";
    run_detached(&c, id)?;
    let mut events = c
        .ctr_command(&["events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("ctr events: {e}"))?;
    std::thread::sleep(Duration::from_millis(500));
    let shim = c.shim_pid(id).ok_or("no shim process for the task")?;
    // SAFETY: kill(2) with a pid and a signal number.
    unsafe { libc::kill(shim as i32, libc::SIGKILL) };
    // containerd runs the shim's `delete` (which removes the VM) and then publishes the exit.
    let lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    if let Some(mut out) = events.stdout.take() {
        let lines = lines.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                lines
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&text);
            }
        });
    }
    let exit_line = |seen: &str| {
        seen.lines()
            .find(|l| l.contains("/tasks/exit") && l.contains(id))
            .map(str::to_string)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let exit = loop {
        let seen = lines.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(l) = exit_line(&seen) {
            break Some(l);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = events.kill();
    let _ = events.wait();
    let seen = lines.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match exit {
        Some(l) if l.contains("137") => {}
        other => {
            return Err(format!(
                "no /tasks/exit 137 for {id} after its shim died: {other:?}\nevents:\n{seen}\n{}",
                c.log()
            ))
        }
    }
    let _ = c.ctr(&["task", "rm", "-f", id]);
    c.ctr(&["containers", "rm", id])?.expect_code(0)?;
    c.expect_clean()
}

/// A bundle with a field the runtime does not honour is refused with the field's name, and
/// nothing is left.
fn unsupported_fields_are_refused_by_name(backend: Backend) -> Result<(), String> {
    let c = started(backend)?;
    c.ctr(&[
        "run",
        "--rm",
        "--seccomp",
        "--runtime",
        RUNTIME,
        TEST_IMAGE,
        "sc",
        "true",
    ])?
    .expect_code(1)?
    .expect_stderr_has(&["linux.seccomp", "not supported"])?;
    let _ = c.ctr(&["containers", "rm", "sc"]);
    c.expect_clean()
}

fn main() {
    run_backend_tests(vec![
        BackendTest::linux(
            "ctr_run_prints_the_guest_kernel",
            ctr_run_prints_the_guest_kernel,
        ),
        BackendTest::linux("task_lifecycle", task_lifecycle),
        BackendTest::linux("ctr_run_with_a_terminal", ctr_run_with_a_terminal),
        BackendTest::linux("killed_shim_is_a_task_exit", killed_shim_is_a_task_exit),
        BackendTest::linux(
            "unsupported_fields_are_refused_by_name",
            unsupported_fields_are_refused_by_name,
        ),
    ])
}
