//! The container commands end to end, as a user runs them, with the real patched guest kernel
//! and guest agent: the whole chain and each fault a user can meet, each written once and run on
//! every backend this machine offers (QEMU's software CPU, tier T2; capsule's own KVM VMM, tier
//! T3, on hardware KVM or inside the L1 machine).
//!
//! The default guest must have been built (`scripts/build-guest.sh`, which the test suite runs
//! first); a missing guest is a failure, not a skip.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use capsule_tests::cli::{CapsuleCli, Outcome};
use capsule_tests::tier::{run_backend_tests, Backend, BackendTest};

fn exec(cli: &CapsuleCli, args: &[&str]) -> Result<Outcome, String> {
    let mut all = vec!["exec"];
    all.extend_from_slice(args);
    cli.run(&all)
}

/// Kills a background capsule process on drop.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// create → exec with stdio and exit codes → env/cwd/user → freeze/thaw → port-forward to a
/// server in the container → key added before start read inside → DNS upcall answered by the
/// host helper → `ls` of the VM's containers → stop.
fn chain(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("chain")?;
    let secret = cli.state_dir().join("secret");
    std::fs::write(&secret, b"open sesame").map_err(|e| e.to_string())?;
    let key = format!("user:greeting={}", secret.display());
    cli.create(backend, "web", &["--key", &key])?;

    // stdin, stdout, stderr and the exit code, each on its own stream.
    let out = cli.run_with_input(
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "cat; echo to-stderr >&2; exit 7",
        ],
        Some(b"from stdin\n"),
    )?;
    out.expect_code(7)?.expect_stdout("from stdin\n")?;
    if out.stderr.trim() != "to-stderr" {
        return Err(format!("stderr not separate\n{}", out.describe()));
    }
    exec(&cli, &["web", "--", "uname", "-n"])?
        .expect_code(0)?
        .expect_stdout("web\n")?;
    // A process killed by a signal: 128 + the signal number.
    exec(&cli, &["web", "--", "sh", "-c", "kill -TERM $$"])?.expect_code(128 + 15)?;

    // Environment, working directory and user.
    exec(
        &cli,
        &[
            "-e",
            "GREETING=hi",
            "-w",
            "/tmp",
            "-u",
            "1000:1001",
            "web",
            "--",
            "sh",
            "-c",
            "echo $GREETING $(pwd) $(id -u):$(id -g)",
        ],
    )?
    .expect_code(0)?
    .expect_stdout("hi /tmp 1000:1001\n")?;

    // Freeze: a new command joins the frozen container and cannot finish until thawed.
    cli.run(&["freeze", "web"])?.expect_code(0)?;
    let mut blocked = Background(
        cli.command(&["exec", "web", "--", "echo", "thawed"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    std::thread::sleep(Duration::from_secs(3));
    if let Ok(Some(status)) = blocked.0.try_wait() {
        return Err(format!("exec in a frozen container finished: {status}"));
    }
    cli.run(&["thaw", "web"])?.expect_code(0)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = blocked.0.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            return Err("exec did not finish after thaw".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut thawed = String::new();
    if let Some(mut o) = blocked.0.stdout.take() {
        let _ = o.read_to_string(&mut thawed);
    }
    if !status.success() || thawed != "thawed\n" {
        return Err(format!("exec after thaw: {status}, {thawed:?}"));
    }

    // A server inside the container's own network namespace, reached through port-forward.
    exec(
        &cli,
        &[
            "web",
            "--",
            "sh",
            "-c",
            "mkdir -p /srv && echo 'served from the container' > /srv/index.html && \
           httpd -p 127.0.0.1:8080 -h /srv",
        ],
    )?
    .expect_code(0)?;
    let port = free_port()?;
    let mapping = format!("{port}:8080");
    let _forward = Background(
        cli.command(&["port-forward", "web", &mapping])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    let body = http_get(port)?;
    if !body.contains("served from the container") {
        return Err(format!("port-forward answer: {body:?}"));
    }

    // The key added before anything ran, found by request_key() inside the container.
    exec(
        &cli,
        &[
            "web",
            "--",
            "sh",
            "-c",
            "keyctl print $(keyctl request user greeting)",
        ],
    )?
    .expect_code(0)?
    .expect_stdout("open sesame\n")?;

    // A dns_resolver upcall in the container, answered by the host's resolver through
    // `capsule helper dns-resolver`.
    let dns = exec(
        &cli,
        &[
            "web",
            "--",
            "sh",
            "-c",
            "keyctl print $(keyctl request2 dns_resolver localhost '')",
        ],
    )?;
    dns.expect_code(0)?;
    if !dns.stdout.contains("127.0.0.1") {
        return Err(format!("DNS upcall answer\n{}", dns.describe()));
    }

    // The VM's container objects, as its /proc/containers shows them.
    let ls = cli.run(&["ls", "web"])?;
    ls.expect_code(0)?;
    let rows: Vec<&str> = ls.stdout.lines().skip(1).collect();
    if !rows.iter().any(|r| r.starts_with("<current>"))
        || !rows.iter().any(|r| r.starts_with("web "))
    {
        return Err(format!("ls web lacks <current> or web\n{}", ls.describe()));
    }
    let vms = cli.run(&["ls"])?;
    if !vms
        .stdout
        .lines()
        .any(|l| l.starts_with("web ") && l.contains("running"))
    {
        return Err(format!("ls does not show web running\n{}", vms.describe()));
    }

    cli.run(&["stop", "web"])?.expect_code(0)?;
    let (phase, reason, _) = cli.status("web")?;
    if phase != "stopped" {
        return Err(format!("after stop: {phase} ({reason})"));
    }
    exec(&cli, &["web", "--", "true"])?
        .expect_code(1)?
        .expect_stderr_has(&["web is stopped"])?;
    cli.run(&["rm", "web"])?.expect_code(0)?;
    Ok(())
}

/// 4 MiB through `cat` in the guest: host → guest on the stdin stream and guest → host on
/// stdout, both far past the 1 MiB after which a vsock connection takes the bulk path (host
/// data spliced into a pipe and batched into the guest's 4 KiB rx buffers; the guest's large
/// tx packets spliced and held until the host has read them). The bytes must come back intact.
fn bulk_stdio(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("bulk")?;
    cli.create(backend, "bulk", &[])?;
    // ASCII, so that the harness can hold stdout as text; a pattern that never repeats in
    // step with any power-of-two buffer size.
    let mut input = Vec::with_capacity(4 << 20);
    let mut x: u32 = 12345;
    while input.len() < 4 << 20 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        input.push(b'a' + (x >> 16) as u8 % 26);
        if input.len() % 61 == 0 {
            input.push(b'\n');
        }
    }
    let t = Instant::now();
    let out = cli.run_with_input(&["exec", "bulk", "--", "cat"], Some(&input))?;
    out.expect_code(0)?;
    if out.stdout.as_bytes() != input.as_slice() {
        let same = out
            .stdout
            .bytes()
            .zip(&input)
            .take_while(|(a, b)| a == *b)
            .count();
        return Err(format!(
            "stdout differs: {} bytes back of {}, first difference at {same}",
            out.stdout.len(),
            input.len()
        ));
    }
    eprintln!(
        "    4 MiB each way through cat in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    cli.run(&["rm", "--force", "bulk"])?.expect_code(0)?;
    Ok(())
}

/// Input piped into `capsule exec` reaches the process where /dev/stdin does not exist (a
/// minimal /dev, as in an initramfs): capsule decides from fd 0 itself, not from that link.
fn stdin_without_dev_stdin(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("nostdin")?;
    cli.create(backend, "vm", &[])?;
    let args = ["exec", "vm", "--", "cat"];
    // A private mount namespace whose /dev holds only null.
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs tmpfs /dev && mknod -m 666 /dev/null c 1 3 && \
         test ! -e /dev/stdin && exec \"$@\"",
        "sh",
    ];
    let out = cli.run_command(cli.command_via(&wrapper, &args), &args, Some(b"piped in\n"))?;
    out.expect_code(0)?.expect_stdout("piped in\n")?;
    Ok(())
}

fn http_get(port: u16) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(60)))
                    .map_err(|e| e.to_string())?;
                s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
                    .map_err(|e| e.to_string())?;
                let mut body = String::new();
                s.read_to_string(&mut body).map_err(|e| e.to_string())?;
                return Ok(body);
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("port-forward never listened: {e}")),
        }
    }
}

/// No VM is booted: the backend only names the test.
fn unknown_vm_name(_backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("t2-unknown")?;
    exec(&cli, &["nosuch", "--", "true"])?
        .expect_code(1)?
        .expect_stderr_has(&["no VM named \"nosuch\""])?;
    cli.run(&["stop", "nosuch"])?.expect_code(1)?;
    Ok(())
}

fn name_already_in_use(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("t2-dup")?;
    cli.create(backend, "dup", &[])?;
    cli.run(&["create", "dup", "--backend", backend.cli_name()])?
        .expect_code(1)?
        .expect_stderr_has(&["\"dup\" already exists"])?;
    // The first VM is untouched.
    exec(&cli, &["dup", "--", "true"])?.expect_code(0)?;
    Ok(())
}

fn exec_missing_binary(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("t2-enoent")?;
    cli.create(backend, "vm", &[])?;
    exec(&cli, &["vm", "--", "/no/such/program"])?
        .expect_code(127)?
        .expect_stderr_has(&["ENOENT", "/no/such/program"])?;
    Ok(())
}

fn mount_missing_source(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("t2-mount")?;
    cli.create(backend, "vm", &[])?;
    cli.run(&[
        "mount", "vm", "--type", "ext4", "--source", "/dev/vdz", "/data",
    ])?
    .expect_code(1)?
    .expect_stderr_has(&["/dev/vdz", "ENOENT"])?;
    // A good mount still works afterwards.
    cli.run(&["mount", "vm", "--type", "tmpfs", "/scratch"])?
        .expect_code(0)?;
    exec(
        &cli,
        &[
            "vm",
            "--",
            "sh",
            "-c",
            "grep -c ' /scratch tmpfs' /proc/mounts",
        ],
    )?
    .expect_code(0)?
    .expect_stdout("1\n")?;
    Ok(())
}

fn invalid_flags(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("t2-flags")?;
    for (flags, message) in [
        ("pid,bogus", "unknown flag \"bogus\""),
        ("fs,empty-fs", "exclude each other"),
        ("0x1000", "unknown bits"),
    ] {
        cli.run(&[
            "create",
            "vm",
            "--backend",
            backend.cli_name(),
            "--flags",
            flags,
        ])?
        .expect_code(1)?
        .expect_stderr_has(&[message])?;
    }
    // Nothing was booted or left behind.
    if std::fs::read_dir(cli.state_dir())
        .map_err(|e| e.to_string())?
        .flatten()
        .any(|e| e.path().is_dir())
    {
        return Err("a refused create left a state directory".into());
    }
    Ok(())
}

fn oversized_rpc(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("t2-oversized")?;
    cli.create(backend, "vm", &[])?;
    let big = cli.state_dir().join("big");
    std::fs::write(&big, vec![b'x'; 5 << 20]).map_err(|e| e.to_string())?;
    let spec = format!("user:big={}", big.display());
    let out = cli.run(&["key", "add", "vm", &spec])?;
    out.expect_code(1)?;
    if !(out.stderr.contains("exceeds") || out.stderr.contains("ResourceExhausted")) {
        return Err(format!(
            "oversized request not reported as such\n{}",
            out.describe()
        ));
    }
    // The agent is still there.
    exec(&cli, &["vm", "--", "echo", "still here"])?
        .expect_code(0)?
        .expect_stdout("still here\n")?;
    Ok(())
}

/// Children of `pid` (from /proc).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The processes that run the guest: QEMU under the supervisor, or the supervisor itself (the
/// KVM backend runs capsule's VMM in the supervisor).
fn guest_processes(backend: Backend, supervisor: u32) -> Result<Vec<u32>, String> {
    // capsule's VMM (`capsule __vmm`) or QEMU: a child of the supervisor.
    let machine = children(supervisor);
    if machine.is_empty() {
        return Err(format!(
            "no {} process under the supervisor",
            backend.cli_name()
        ));
    }
    Ok(machine)
}

fn agent_not_answering(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("t2-timeout")?;
    cli.create(backend, "vm", &[])?;

    // A call the agent cannot finish in time: starting a process in a frozen container.
    cli.run(&["freeze", "vm"])?.expect_code(0)?;
    let out = cli
        .command(&["exec", "vm", "--", "true"])
        .env("CAPSULE_AGENT_TIMEOUT", "3")
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Either side may say it first: the host's timer, or the agent, which honours the call's
    // deadline too.
    let timed_out = stderr.contains("no answer from the agent within 3s")
        || stderr.contains("DeadlineExceeded: Exec did not finish within 3s");
    if out.status.code() != Some(1) || !timed_out {
        return Err(format!(
            "exec into a frozen container: {:?}, {stderr}",
            out.status
        ));
    }
    cli.run(&["thaw", "vm"])?.expect_code(0)?;

    // A guest that does not run at all (the process running it stopped): the connection is
    // refused quickly instead of hanging.
    let (_, _, supervisor) = cli.status("vm")?;
    let machine = guest_processes(backend, supervisor.ok_or("no supervisor pid")?)?;
    for pid in &machine {
        // SAFETY: kill() with a pid just read from /proc; no memory is involved.
        unsafe { libc::kill(*pid as i32, libc::SIGSTOP) };
    }
    let out = cli
        .command(&["exec", "vm", "--", "true"])
        .env("CAPSULE_AGENT_TIMEOUT", "3")
        .output()
        .map_err(|e| e.to_string());
    for pid in &machine {
        // SAFETY: as above.
        unsafe { libc::kill(*pid as i32, libc::SIGCONT) };
    }
    let out = out?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(1) || !stderr.contains("cannot reach the agent of VM vm") {
        return Err(format!(
            "exec to a paused guest: {:?}, {stderr}",
            out.status
        ));
    }

    // The guest continues where it stopped.
    exec(&cli, &["vm", "--", "echo", "back"])?
        .expect_code(0)?
        .expect_stdout("back\n")?;
    Ok(())
}

/// A newc archive holding nothing (just the trailer): the kernel finds no /init.
fn empty_initramfs() -> Vec<u8> {
    let name = b"TRAILER!!!\0";
    let mut out = format!(
        "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        0,
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        0,
        name.len(),
        0
    )
    .into_bytes();
    out.extend_from_slice(name);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    while out.len() % 512 != 0 {
        out.push(0);
    }
    out
}

fn guest_kernel_panic(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("t2-panic")?;
    let initrd = cli.state_dir().join("empty.cpio");
    std::fs::write(&initrd, empty_initramfs()).map_err(|e| e.to_string())?;
    let path = initrd.display().to_string();
    let out = cli.run(&[
        "create",
        "broken",
        "--backend",
        backend.cli_name(),
        "--initrd",
        &path,
        "--timeout",
        "120",
    ])?;
    out.expect_code(1)?.expect_stderr_has(&["kernel panic"])?;
    let (phase, reason, _) = cli.status("broken")?;
    if phase != "dead" || !reason.contains("Kernel panic - not syncing") {
        return Err(format!("status after a panic: {phase} ({reason})"));
    }
    let ls = cli.run(&["ls"])?;
    if !ls
        .stdout
        .lines()
        .any(|l| l.starts_with("broken ") && l.contains("dead") && l.contains("panic"))
    {
        return Err(format!("ls does not show the panic\n{}", ls.describe()));
    }
    let logs = cli.run(&["logs", "broken"])?;
    if !logs.stdout.contains("Kernel panic") {
        return Err(format!("logs lack the panic\n{}", logs.describe()));
    }
    cli.run(&["rm", "broken"])?.expect_code(0)?;
    Ok(())
}

fn vmm_killed(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("t2-sigkill")?;
    cli.create(backend, "vm", &[])?;
    let (_, _, supervisor) = cli.status("vm")?;
    let supervisor = supervisor.ok_or("no supervisor pid")?;
    let machine = children(supervisor);
    // SAFETY: kill() with the supervisor's pid; no memory is involved.
    unsafe { libc::kill(supervisor as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{supervisor}")).exists() && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let ls = cli.run(&["ls"])?;
    if !ls
        .stdout
        .lines()
        .any(|l| l.starts_with("vm ") && l.contains("dead") && l.contains("killed?"))
    {
        return Err(format!("ls does not show the VM dead\n{}", ls.describe()));
    }
    // No process of the VM (QEMU on the QEMU backend) outlives its supervisor.
    std::thread::sleep(Duration::from_millis(500));
    for pid in machine {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if !stat.is_empty() && !stat.contains(") Z") {
            return Err(format!("pid {pid} of the VM survived its supervisor"));
        }
    }
    cli.run(&["rm", "vm"])?.expect_code(0)?;
    if cli.state_dir().join("vm").exists() {
        return Err("rm left the state directory".into());
    }
    Ok(())
}

fn main() {
    let t = BackendTest::linux;
    run_backend_tests(vec![
        t(
            "container_chain_create_exec_freeze_forward_keys_dns_ls_stop",
            chain,
        ),
        t("bulk_stdio_4_mib_each_way_through_cat", bulk_stdio),
        t(
            "exec_pipes_stdin_where_dev_stdin_is_missing",
            stdin_without_dev_stdin,
        ),
        t("fault_unknown_vm_name", unknown_vm_name),
        t("fault_name_already_in_use", name_already_in_use),
        t("fault_exec_missing_binary_is_enoent", exec_missing_binary),
        t("fault_mount_missing_source", mount_missing_source),
        t("fault_invalid_flags_refused_before_boot", invalid_flags),
        t("fault_oversized_rpc", oversized_rpc),
        t("fault_agent_not_answering_times_out", agent_not_answering),
        t("fault_guest_kernel_panic_marks_vm_dead", guest_kernel_panic),
        t("fault_vmm_sigkill_shows_dead_and_rm_cleans", vmm_killed),
    ]);
}
