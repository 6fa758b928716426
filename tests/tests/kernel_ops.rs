//! The container fd operations of the guest kernel (issue 16) end to end through the CLI,
//! with the real patched kernel and agent, on every backend this machine offers: further
//! containers in one VM sharing namespaces (a pod), reboot, cgroup moves, a new root, a
//! per-container LSM policy and device lists, each with the errors a user meets, and
//! `/proc/containers` (`capsule ls VM`) read back after each operation.
//!
//! From inside, `reboot -f` in a container restarts it (the kernel leaves it "rebooting", the
//! agent starts a fresh init), and the shipped `/bin/container` (`CONTAINER_FD_CURRENT`) lets a
//! member freeze or kill its own container.

use capsule_tests::cli::{CapsuleCli, Outcome};
use capsule_tests::tier::{run_backend_tests, Backend, BackendTest};

fn run(cli: &CapsuleCli, args: &[&str]) -> Result<Outcome, String> {
    cli.run(args)
}

/// Runs `capsule exec VM [-c C] -- sh -c SCRIPT` and returns its stdout; fails unless it
/// exits 0.
fn sh(cli: &CapsuleCli, vm: &str, container: Option<&str>, script: &str) -> Result<String, String> {
    let mut args = vec!["exec", vm];
    if let Some(c) = container {
        args.extend(["-c", c]);
    }
    args.extend(["--", "sh", "-c", script]);
    let out = cli.run(&args)?;
    out.expect_code(0)?;
    Ok(out.stdout)
}

/// The state column of container `name` in `capsule ls VM` (the guest's /proc/containers).
fn state(cli: &CapsuleCli, vm: &str, name: &str) -> Result<Option<String>, String> {
    let out = run(cli, &["container", "ls", vm])?;
    out.expect_code(0)?;
    Ok(out
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| f.last().map(|s| s.to_string())))
}

fn expect_state(cli: &CapsuleCli, vm: &str, name: &str, want: &str) -> Result<(), String> {
    match state(cli, vm, name)? {
        Some(s) if s == want => Ok(()),
        other => Err(format!(
            "/proc/containers shows {name} as {other:?}, not {want}\n{}",
            run(cli, &["ls", vm])?.describe()
        )),
    }
}

/// Fails unless the command exits 1 with every one of `parts` on stderr.
fn refused(cli: &CapsuleCli, args: &[&str], parts: &[&str]) -> Result<(), String> {
    run(cli, args)?.expect_code(1)?.expect_stderr_has(parts)?;
    Ok(())
}

/// A pod: `container add` with `--share-ns net,ipc,uts` of the VM's container; the shared
/// namespaces are the same objects, the pid namespace is not; uts taken after the start with
/// `share-ns`; pid refused once the init runs; unknown containers and types refused.
fn pod(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("kops-pod")?;
    cli.create(backend, "pod", &[])?;
    run(
        &cli,
        &[
            "container",
            "add",
            "pod",
            "web",
            "--share-ns",
            "net=pod,ipc=pod,uts=pod",
        ],
    )?
    .expect_code(0)?
    .expect_stdout("web\n")?;
    expect_state(&cli, "pod", "pod", "running")?;
    expect_state(&cli, "pod", "web", "running")?;

    let ns = "for n in net ipc uts pid; do readlink /proc/self/ns/$n; done; hostname";
    let first = sh(&cli, "pod", None, ns)?;
    let second = sh(&cli, "pod", Some("web"), ns)?;
    let (a, b): (Vec<&str>, Vec<&str>) = (first.lines().collect(), second.lines().collect());
    if a.len() != 5 || b.len() != 5 || a[..3] != b[..3] || a[3] == b[3] || b[4] != "pod" {
        return Err(format!(
            "web should share pod's net, ipc, uts (hostname pod) and not its pid namespace\n\
             pod: {a:?}\nweb: {b:?}"
        ));
    }

    // net, ipc, uts, cgroup may change after the start: new processes get them.
    run(&cli, &["container", "add", "pod", "late"])?.expect_code(0)?;
    if sh(&cli, "pod", Some("late"), "hostname")? != "late\n" {
        return Err("late does not start with its own hostname".into());
    }
    run(&cli, &["share-ns", "pod", "-c", "late", "uts=pod"])?.expect_code(0)?;
    if sh(&cli, "pod", Some("late"), "hostname")? != "pod\n" {
        return Err("share-ns uts=pod did not reach a process started afterwards".into());
    }
    // pid and mnt cannot change once the init runs: the kernel's EBUSY, as a sentence.
    refused(
        &cli,
        &["share-ns", "pod", "-c", "late", "pid=pod"],
        &["cannot be changed any more", "pid namespace", "late"],
    )?;
    refused(
        &cli,
        &["container", "add", "pod", "x", "--share-ns", "net=nope"],
        &["no container named \"nope\""],
    )?;
    refused(
        &cli,
        &["container", "add", "pod", "x", "--share-ns", "time=pod"],
        &["invalid --share-ns", "unknown namespace type \"time\""],
    )?;
    refused(
        &cli,
        &["exec", "pod", "-c", "nope", "--", "true"],
        &["no container named \"nope\""],
    )?;
    refused(
        &cli,
        &["container", "add", "pod", "web"],
        &["a container named \"web\" exists"],
    )?;
    // A container of the pod dies alone: killing web leaves pod running.
    run(&cli, &["kill", "pod", "-c", "web"])?.expect_code(0)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while state(&cli, "pod", "web")?.is_some_and(|s| s != "dead") {
        if std::time::Instant::now() > deadline {
            return Err("web did not die after kill".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    expect_state(&cli, "pod", "pod", "running")?;
    sh(&cli, "pod", None, "true")?;
    Ok(())
}

/// `capsule reboot`: every member dies, a fresh init starts in the same container (same id,
/// hostname, keyring, a new pid namespace), and the container keeps working.
fn reboot(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("kops-reboot")?;
    cli.create(backend, "vm", &[])?;
    let id_before = container_id(&cli, "vm")?;
    sh(&cli, "vm", None, "sleep 600 </dev/null >/dev/null 2>&1 &")?;
    let ps = run(&cli, &["ps", "vm"])?;
    if !ps.expect_code(0)?.stdout.contains("sleep 600") {
        return Err(format!("the sleeper is not running\n{}", ps.describe()));
    }
    let pidns_before = sh(&cli, "vm", None, "readlink /proc/self/ns/pid")?;
    run(&cli, &["reboot", "vm"])?.expect_code(0)?;
    let ps = run(&cli, &["ps", "vm"])?;
    if ps.expect_code(0)?.stdout.contains("sleep 600") {
        return Err(format!(
            "the sleeper survived the reboot\n{}",
            ps.describe()
        ));
    }
    expect_state(&cli, "vm", "vm", "running")?;
    if container_id(&cli, "vm")? != id_before {
        return Err("the reboot made another container".into());
    }
    let after = sh(
        &cli,
        "vm",
        None,
        "readlink /proc/self/ns/pid; hostname; echo $$",
    )?;
    let lines: Vec<&str> = after.lines().collect();
    if lines.len() != 3 || lines[0] == pidns_before.trim() || lines[1] != "vm" {
        return Err(format!(
            "after the reboot: want a new pid namespace and hostname vm, got {lines:?} \
             (before: {pidns_before:?})"
        ));
    }
    // A second reboot works as well, and the container still runs commands.
    run(&cli, &["reboot", "vm"])?.expect_code(0)?;
    sh(&cli, "vm", None, "true")?;
    refused(
        &cli,
        &["reboot", "vm", "-c", "nope"],
        &["no container named \"nope\""],
    )?;
    Ok(())
}

fn container_id(cli: &CapsuleCli, name: &str) -> Result<String, String> {
    let out = run(cli, &["ls", name])?;
    out.expect_code(0)?;
    out.stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| f.get(1).map(|s| s.to_string()))
        .ok_or_else(|| format!("no row for {name}\n{}", out.describe()))
}

/// `capsule cgroup`: the container's processes, and later ones, are in the new directory;
/// ps, freeze and thaw follow it; a directory that has processes is refused.
fn cgroup(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("kops-cgroup")?;
    // Without a cgroup namespace the path shows as the guest sees it.
    cli.create(backend, "vm", &["--flags", "fs,uts,ipc,pid,net"])?;
    sh(&cli, "vm", None, "sleep 600 </dev/null >/dev/null 2>&1 &")?;
    run(&cli, &["cgroup", "vm", "pods/web"])?.expect_code(0)?;
    let own = sh(&cli, "vm", None, "cat /proc/self/cgroup")?;
    if own.trim() != "0::/capsule/pods/web" {
        return Err(format!(
            "a new process is in {own:?}, not /capsule/pods/web"
        ));
    }
    let ps = run(&cli, &["ps", "vm"])?;
    if !ps.expect_code(0)?.stdout.contains("sleep 600") {
        return Err(format!("ps lost the moved sleeper\n{}", ps.describe()));
    }
    run(&cli, &["freeze", "vm"])?.expect_code(0)?;
    expect_state(&cli, "vm", "vm", "frozen")?;
    run(&cli, &["thaw", "vm"])?.expect_code(0)?;
    expect_state(&cli, "vm", "vm", "running")?;

    run(
        &cli,
        &["container", "add", "vm", "other", "--flags", "fs,pid"],
    )?
    .expect_code(0)?;
    refused(
        &cli,
        &["cgroup", "vm", "-c", "other", "pods/web"],
        &["cannot take container \"other\"", "EBUSY"],
    )?;
    refused(&cli, &["cgroup", "vm", "../escape"], &["path", "\"..\""])?;
    expect_state(&cli, "vm", "other", "running")?;
    // The directory the agent made goes with the container that was moved there.
    run(&cli, &["cgroup", "vm", "-c", "other", "pods/other"])?.expect_code(0)?;
    sh(
        &cli,
        "vm",
        None,
        "test -d /sys/fs/cgroup/capsule/pods/other",
    )?;
    run(&cli, &["kill", "vm", "-c", "other"])?.expect_code(0)?;
    let gone = "for i in $(seq 50); do test -d /sys/fs/cgroup/capsule/pods/other || exit 0; \
                sleep 0.1; done; exit 1";
    if run(&cli, &["exec", "vm", "--", "sh", "-c", gone])?.code != Some(0) {
        return Err("the cgroup of a dead container was left behind".into());
    }
    Ok(())
}

/// `capsule set-root`: processes started afterwards see the new directory as `/`; a missing
/// directory is refused.
fn set_root(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("kops-root")?;
    cli.create(backend, "vm", &[])?;
    sh(
        &cli,
        "vm",
        None,
        "mkdir -p /srv/r/bin && cp /bin/busybox /srv/r/bin/ && ln -s busybox /srv/r/bin/sh && \
         ln -s busybox /srv/r/bin/cat && echo in-new-root > /srv/r/marker",
    )?;
    run(&cli, &["set-root", "vm", "/srv/r"])?.expect_code(0)?;
    run(&cli, &["exec", "vm", "--", "cat", "/marker"])?
        .expect_code(0)?
        .expect_stdout("in-new-root\n")?;
    if sh(&cli, "vm", None, "ls /")?
        .split_whitespace()
        .any(|e| e == "srv")
    {
        return Err("the old root is still what new processes see".into());
    }
    refused(
        &cli,
        &["set-root", "vm", "/nonexistent"],
        &["/nonexistent does not exist in container \"vm\""],
    )?;
    refused(&cli, &["set-root", "vm", "relative"], &["is not absolute"])?;
    expect_state(&cli, "vm", "vm", "running")?;
    Ok(())
}

/// `capsule policy --lsm container_test`: the policy of one container changes what its
/// members may do, not what another container's may; bad LSMs and policies are refused.
fn policy(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("kops-policy")?;
    cli.create(backend, "vm", &[])?;
    run(&cli, &["container", "add", "vm", "other"])?.expect_code(0)?;
    run(&cli, &["policy", "vm", "--lsm", "container_test", "mkdir"])?.expect_code(0)?;
    run(&cli, &["exec", "vm", "--", "mkdir", "/tmp/denied"])?
        .expect_code(1)?
        .expect_stderr_has(&["Permission denied"])?;
    sh(&cli, "vm", Some("other"), "mkdir /tmp/allowed")?;
    refused(
        &cli,
        &["policy", "vm", "--lsm", "nosuch", "mkdir"],
        &["no LSM named \"nosuch\""],
    )?;
    refused(
        &cli,
        &["policy", "vm", "--lsm", "container_test", "bogus"],
        &["LSM \"container_test\" rejected the policy for container \"vm\""],
    )?;
    // An empty policy allows everything again.
    run(&cli, &["policy", "vm", "--lsm", "container_test", ""])?.expect_code(0)?;
    sh(&cli, "vm", None, "mkdir /tmp/again")?;
    expect_state(&cli, "vm", "vm", "running")?;
    expect_state(&cli, "vm", "other", "running")?;
    Ok(())
}

/// `--devices` on create and `capsule devices`: members open listed devices only; a rule
/// that does not parse is refused before the VM boots.
fn devices(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("kops-devices")?;
    refused(
        &cli,
        &[
            "create",
            "bad",
            "--backend",
            backend.cli_name(),
            "--devices",
            "c 1:3 rw",
        ],
        &[
            "invalid --devices",
            "device rule \"c 1:3 rw\"",
            "no access modes",
        ],
    )?;
    if cli.state_dir().join("bad").exists() {
        return Err("a refused --devices left a state directory".into());
    }
    cli.create(backend, "vm", &["--devices", "c 1:3"])?;
    sh(&cli, "vm", None, "echo hi > /dev/null")?;
    run(&cli, &["exec", "vm", "--", "head", "-c", "1", "/dev/zero"])?
        .expect_code(1)?
        .expect_stderr_has(&["Operation not permitted"])?;
    run(&cli, &["devices", "vm", "c 1:3,c 1:*"])?.expect_code(0)?;
    let zero = sh(&cli, "vm", None, "head -c 1 /dev/zero | od -An -tx1")?;
    if zero.trim() != "00" {
        return Err(format!("/dev/zero read {zero:?} after it was listed"));
    }
    run(
        &cli,
        &["container", "add", "vm", "other", "--devices", "c 1:3"],
    )?
    .expect_code(0)?;
    run(
        &cli,
        &[
            "exec",
            "vm",
            "-c",
            "other",
            "--",
            "head",
            "-c",
            "1",
            "/dev/zero",
        ],
    )?
    .expect_code(1)?;
    refused(
        &cli,
        &["devices", "vm", "x 1:3"],
        &["not c (character) or b (block)"],
    )?;
    expect_state(&cli, "vm", "vm", "running")?;
    Ok(())
}

/// A member acts on its own container with the shipped `container` command: a freeze stops
/// the member too until the owner thaws it; a kill ends the container.
fn from_inside(backend: Backend) -> Result<(), String> {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let cli = CapsuleCli::new("ops-inside")?;
    cli.create(backend, "self", &["--net", "none"])?;
    let mut member = cli
        .command(&[
            "exec",
            "self",
            "--",
            "sh",
            "-c",
            "container freeze && echo thawed",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("capsule exec: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while state(&cli, "self", "self")?.as_deref() != Some("frozen") {
        if Instant::now() > deadline {
            let _ = member.kill();
            return Err("the container never showed frozen after `container freeze`".into());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    if member.try_wait().map_err(|e| e.to_string())?.is_some() {
        return Err("the freezing member went on running while its container was frozen".into());
    }
    run(&cli, &["thaw", "self"])?.expect_code(0)?;
    let out = member.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() || String::from_utf8_lossy(&out.stdout) != "thawed\n" {
        return Err(format!(
            "after thaw the member ended with {:?}, stdout {:?}, stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    expect_state(&cli, "self", "self", "running")?;
    // SIGKILL from inside: the member dies with the rest, the container ends.
    run(&cli, &["exec", "self", "--", "container", "kill"])?.expect_code(137)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while state(&cli, "self", "self")?.is_some() {
        if Instant::now() > deadline {
            return Err("the container is still listed after `container kill` from inside".into());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    refused(
        &cli,
        &["exec", "self", "--", "true"],
        &["no container named \"self\""],
    )
}

fn main() {
    let t = BackendTest::linux;
    run_backend_tests(vec![
        t("pod_containers_share_net_ipc_uts", pod),
        t("reboot_starts_a_fresh_init", reboot),
        t("cgroup_moves_a_container", cgroup),
        t("set_root_changes_the_root_of_new_processes", set_root),
        t("policy_limits_one_container", policy),
        t("devices_limit_what_members_open", devices),
        t(
            "a_member_freezes_and_kills_its_own_container_from_inside",
            from_inside,
        ),
    ]);
}
