//! What an OCI bundle asks of a process and its root, end to end with the real patched guest
//! kernel and agent, through the host library (the API a containerd shim uses) and the CLI, on
//! every backend this machine offers: rlimits, capability sets and no_new_privs of an `Exec`
//! read back from `/proc/self/limits` and `/proc/self/status`; an OCI bundle's default mounts
//! with `Mount`; `FinishRoot` with its default devices, masked and read-only paths and a
//! read-only root; and the refusals, each naming its field.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use capsule_host::containers::ContainerSpec;
use capsule_host::exec::{ExecSpec, Process, Streams};
use capsule_host::vm::Vm;
use capsule_protocol::container::flags;
use capsule_protocol::{pb, Code};
use capsule_tests::cli::CapsuleCli;
use capsule_tests::tier::{run_backend_tests, Backend, BackendTest};

/// The VM `name` of `cli`, through the host library.
fn open(cli: &CapsuleCli, name: &str) -> Result<Vm, String> {
    Vm::open_in(cli.state_dir(), name, Duration::from_secs(60)).map_err(|e| format!("{e:#}"))
}

/// The output and exit code of a process.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `spec` in `container` and collects its output.
fn run(vm: &Vm, container: &str, spec: ExecSpec) -> Result<Ran, String> {
    let client = Arc::new(vm.agent().map_err(|e| e.to_string())?);
    let process = Process::start(client, container, spec).map_err(|e| chain(&e))?;
    let Streams::Pipes { stdout, stderr, .. } = process.attach().map_err(|e| chain(&e))? else {
        return Err("pipes asked, a terminal came".into());
    };
    let read = |mut s: std::os::unix::net::UnixStream| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            text
        })
    };
    let (out, err) = (read(stdout), read(stderr));
    let status = process.wait().map_err(|e| chain(&e))?;
    Ok(Ran {
        code: status.shell_code().into(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// `sh -c script` as root in `container`; fails unless it exits 0.
fn sh(vm: &Vm, container: &str, script: &str) -> Result<String, String> {
    let ran = run(vm, container, command(&["sh", "-c", script]))?;
    if ran.code != 0 {
        return Err(format!(
            "`{script}` in {container} exited {}\nstdout:\n{}\nstderr:\n{}",
            ran.code, ran.stdout, ran.stderr
        ));
    }
    Ok(ran.stdout)
}

fn command(argv: &[&str]) -> ExecSpec {
    ExecSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
        ..ExecSpec::default()
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The value of `Key:` in /proc/self/status text.
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// Fails unless the agent refused `spec` with `code` and `field`, and the message has `part`.
fn expect_refused(
    vm: &Vm,
    container: &str,
    spec: ExecSpec,
    code: Code,
    field: &str,
    part: &str,
) -> Result<(), String> {
    let client = Arc::new(vm.agent().map_err(|e| e.to_string())?);
    let err = match Process::start(client, container, spec) {
        Ok(_) => return Err(format!("an exec that should fail on {field} started")),
        Err(capsule_host::exec::ExecError::Start { source, .. }) => source,
        Err(e) => return Err(format!("unexpected error {}", chain(&e))),
    };
    match err.rpc() {
        Some(r) if r.code == code && r.field == field && r.message.contains(part) => Ok(()),
        _ => Err(format!(
            "expected {code:?} on field {field:?} mentioning {part:?}, got {err:?}"
        )),
    }
}

/// Rlimits in /proc/self/limits; a uid-1000 process with a few capabilities (bounding,
/// inheritable, permitted, effective, ambient) and no_new_privs in /proc/self/status; without
/// capabilities the uid change leaves none; an unknown capability or rlimit name is refused
/// with its field; a limit the kernel refuses in the child comes back as the RPC error.
fn process_attributes(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("oci-proc")?;
    cli.create(backend, "proc", &[])?;
    let vm = open(&cli, "proc")?;

    let mut limits = command(&["cat", "/proc/self/limits"]);
    limits.rlimits = vec![
        pb::Rlimit {
            r#type: "RLIMIT_NOFILE".into(),
            soft: 123,
            hard: 456,
        },
        pb::Rlimit {
            r#type: "RLIMIT_CORE".into(),
            soft: 0,
            hard: 0,
        },
        pb::Rlimit {
            r#type: "RLIMIT_NPROC".into(),
            soft: 77,
            hard: u64::MAX,
        },
    ];
    let out = run(&vm, "proc", limits)?.stdout;
    for (row, soft, hard) in [
        ("Max open files", "123", "456"),
        ("Max core file size", "0", "0"),
        ("Max processes", "77", "unlimited"),
    ] {
        let fields: Option<Vec<&str>> = out
            .lines()
            .find_map(|l| l.strip_prefix(row))
            .map(|rest| rest.split_whitespace().collect());
        if fields.as_deref().map(|f| &f[..2]) != Some(&[soft, hard][..]) {
            return Err(format!("{row}: want {soft} {hard}\n{out}"));
        }
    }

    // CAP_CHOWN (0), CAP_KILL (5), CAP_NET_BIND_SERVICE (10).
    let mut caps = command(&["cat", "/proc/self/status"]);
    caps.uid = 1000;
    caps.gid = 1000;
    caps.capabilities = Some(pb::Capabilities {
        bounding: names(&["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]),
        effective: names(&["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]),
        inheritable: names(&["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]),
        permitted: names(&["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]),
        ambient: names(&["CAP_NET_BIND_SERVICE", "CAP_CHOWN"]),
    });
    caps.no_new_privileges = true;
    let status = run(&vm, "proc", caps.clone())?.stdout;
    for (key, want) in [
        ("CapBnd", "0000000000000421"),
        ("CapInh", "0000000000000401"),
        ("CapPrm", "0000000000000401"),
        ("CapEff", "0000000000000401"),
        ("CapAmb", "0000000000000401"),
        ("NoNewPrivs", "1"),
    ] {
        if status_field(&status, key) != Some(want) {
            return Err(format!("{key}: want {want}\n{status}"));
        }
    }
    if !status_field(&status, "Uid").is_some_and(|u| u.starts_with("1000")) {
        return Err(format!("not uid 1000\n{status}"));
    }
    // Without ambient capabilities, exec leaves a non-root process no permitted ones.
    let mut no_ambient = caps.clone();
    if let Some(c) = &mut no_ambient.capabilities {
        c.ambient.clear();
    }
    no_ambient.no_new_privileges = false;
    let status = run(&vm, "proc", no_ambient)?.stdout;
    for (key, want) in [
        ("CapInh", "0000000000000401"),
        ("CapPrm", "0000000000000000"),
        ("CapAmb", "0000000000000000"),
        ("NoNewPrivs", "0"),
    ] {
        if status_field(&status, key) != Some(want) {
            return Err(format!("without ambient, {key}: want {want}\n{status}"));
        }
    }
    // No capabilities asked: today's behaviour, the full bounding set and none left after
    // the change to uid 1000.
    let mut plain = command(&["cat", "/proc/self/status"]);
    plain.uid = 1000;
    let status = run(&vm, "proc", plain)?.stdout;
    for (key, want) in [
        ("CapBnd", "000001ffffffffff"),
        ("CapEff", "0000000000000000"),
    ] {
        if status_field(&status, key) != Some(want) {
            return Err(format!(
                "without capabilities, {key}: want {want}\n{status}"
            ));
        }
    }

    let mut bad = caps.clone();
    if let Some(c) = &mut bad.capabilities {
        c.effective = names(&["CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_NOPE"]);
    }
    expect_refused(
        &vm,
        "proc",
        bad,
        Code::InvalidArgument,
        "capabilities.effective[3]",
        "\"CAP_NOPE\"",
    )?;
    let mut bad = command(&["true"]);
    bad.rlimits = vec![pb::Rlimit {
        r#type: "RLIMIT_OPENFILES".into(),
        soft: 1,
        hard: 1,
    }];
    expect_refused(
        &vm,
        "proc",
        bad,
        Code::InvalidArgument,
        "rlimits[0].type",
        "RLIMIT_OPENFILES",
    )?;
    // The kernel caps RLIMIT_NOFILE at fs.nr_open (2^20): setrlimit fails in the child.
    let mut too_many = command(&["true"]);
    too_many.rlimits = vec![
        pb::Rlimit {
            r#type: "RLIMIT_CORE".into(),
            soft: 0,
            hard: 0,
        },
        pb::Rlimit {
            r#type: "RLIMIT_NOFILE".into(),
            soft: 1 << 30,
            hard: 1 << 30,
        },
    ];
    expect_refused(
        &vm,
        "proc",
        too_many,
        Code::PermissionDenied,
        "rlimits[1]",
        "setting the resource limit",
    )?;
    Ok(())
}

/// Mounts `fstype` at `target` in `container` with `capsule mount` (mkdir on).
fn mount(
    cli: &CapsuleCli,
    container: &str,
    fstype: &str,
    options: &str,
    target: &str,
) -> Result<(), String> {
    cli.run(&[
        "mount", "oci", "-c", container, "-t", fstype, "--source", fstype, "-o", options, target,
    ])?
    .expect_code(0)?;
    Ok(())
}

/// The mounts an OCI bundle's default spec asks for, with its options, each with `Mount`
/// (mkdir on) in a container with its own mount and PID namespace; then FinishRoot: the
/// default devices in the tmpfs /dev, a masked file (/proc/keys) and directory, a read-only
/// path and a read-only root, each checked from inside; the refusals name their field.
fn finish_root(backend: Backend) -> Result<(), String> {
    let cli = CapsuleCli::new("oci-root")?;
    cli.create(backend, "oci", &[])?;
    let vm = open(&cli, "oci")?;
    vm.add_container(&ContainerSpec {
        name: "bundle".into(),
        flags: flags::NEW_FS_NS | flags::NEW_PID_NS | flags::NEW_IPC_NS | flags::NEW_UTS_NS,
        ..ContainerSpec::default()
    })
    .map_err(|e| chain(&e))?;
    for (fstype, options, target) in [
        ("proc", "nosuid,noexec,nodev", "/proc"),
        ("tmpfs", "nosuid,strictatime,mode=755,size=65536k", "/dev"),
        (
            "devpts",
            "nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5",
            "/dev/pts",
        ),
        (
            "tmpfs",
            "nosuid,noexec,nodev,mode=1777,size=65536k",
            "/dev/shm",
        ),
        ("mqueue", "nosuid,noexec,nodev", "/dev/mqueue"),
        ("sysfs", "nosuid,noexec,nodev,ro", "/sys"),
        (
            "cgroup",
            "nosuid,noexec,nodev,relatime,ro",
            "/sys/fs/cgroup",
        ),
        ("tmpfs", "size=1m", "/scratch"),
    ] {
        mount(&cli, "bundle", fstype, options, target)?;
    }
    let mounts = sh(&vm, "bundle", "cat /proc/self/mounts")?;
    for (fstype, target, opts) in [
        ("proc", "/proc", &["rw", "nosuid", "nodev", "noexec"][..]),
        ("tmpfs", "/dev", &["rw", "nosuid", "mode=755"][..]),
        (
            "devpts",
            "/dev/pts",
            &["nosuid", "noexec", "gid=5", "mode=620", "ptmxmode=666"][..],
        ),
        (
            "tmpfs",
            "/dev/shm",
            &["nosuid", "nodev", "noexec", "size=65536k"][..],
        ),
        ("mqueue", "/dev/mqueue", &["nosuid", "nodev", "noexec"][..]),
        ("sysfs", "/sys", &["ro", "nosuid", "nodev", "noexec"][..]),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            &["ro", "nosuid", "nodev", "noexec"][..],
        ),
    ] {
        let found = mounts.lines().rev().find(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == target && f[2] == fstype
        });
        let Some(line) = found else {
            return Err(format!("no {fstype} on {target}\n{mounts}"));
        };
        let have: Vec<&str> = line
            .split_whitespace()
            .nth(3)
            .unwrap_or("")
            .split(',')
            .collect();
        if let Some(missing) = opts.iter().find(|o| !have.contains(o)) {
            return Err(format!("{fstype} on {target} lacks {missing}: {line}"));
        }
    }
    sh(
        &vm,
        "bundle",
        "mkdir -p /scratch/secret /scratch/ro /scratch/rw && echo hidden > /scratch/secret/f \
         && echo kept > /scratch/ro/f",
    )?;
    let finish = |req: pb::FinishRootRequest| vm.finish_root(req);
    // Refusals first, each naming its field; nothing is changed by them.
    let refused = |req: pb::FinishRootRequest, code: Code, field: &str| -> Result<(), String> {
        match finish(req) {
            Ok(()) => Err(format!(
                "FinishRoot accepted what it should refuse on {field}"
            )),
            Err(e) => match e.rpc() {
                Some(r) if r.code == code && r.field == field => Ok(()),
                _ => Err(format!("expected {code:?} on {field:?}: {}", chain(&e))),
            },
        }
    };
    refused(
        pb::FinishRootRequest {
            container: "bundle".into(),
            masked_paths: names(&["/proc/kcore", "proc/keys"]),
            ..Default::default()
        },
        Code::InvalidArgument,
        "masked_paths[1]",
    )?;
    refused(
        pb::FinishRootRequest {
            container: "bundle".into(),
            readonly_paths: names(&["/scratch/../../etc"]),
            ..Default::default()
        },
        Code::InvalidArgument,
        "readonly_paths[0]",
    )?;
    // The VM's own container has the guest's devtmpfs on /dev, no tmpfs of its own.
    refused(
        pb::FinishRootRequest {
            container: "oci".into(),
            default_devices: true,
            ..Default::default()
        },
        Code::FailedPrecondition,
        "default_devices",
    )?;

    finish(pb::FinishRootRequest {
        container: "bundle".into(),
        default_devices: true,
        masked_paths: names(&["/proc/kcore", "/proc/keys", "/scratch/secret", "/no/such"]),
        readonly_paths: names(&["/proc/sys", "/scratch/ro", "/no/such/either"]),
        readonly_root: true,
    })
    .map_err(|e| chain(&e))?;

    let devices = sh(
        &vm,
        "bundle",
        "for d in null zero full random urandom tty; do stat -c '%n %F %t:%T %a' /dev/$d; done; \
         for l in fd stdin stdout stderr ptmx; do echo \"$l -> $(readlink /dev/$l)\"; done; \
         echo gone > /dev/null && head -c 5 /dev/zero | wc -c",
    )?;
    let want = "/dev/null character special file 1:3 666\n\
                /dev/zero character special file 1:5 666\n\
                /dev/full character special file 1:7 666\n\
                /dev/random character special file 1:8 666\n\
                /dev/urandom character special file 1:9 666\n\
                /dev/tty character special file 5:0 666\n\
                fd -> /proc/self/fd\nstdin -> /proc/self/fd/0\nstdout -> /proc/self/fd/1\n\
                stderr -> /proc/self/fd/2\nptmx -> pts/ptmx\n5\n";
    if devices.replace(' ', "").trim() != want.replace(' ', "").trim() {
        return Err(format!("default devices: want\n{want}\ngot\n{devices}"));
    }

    // Masked: /proc/keys reads empty (the null device), the directory is empty and read-only;
    // /proc/kcore is not in this guest kernel (no CONFIG_PROC_KCORE), so it was skipped.
    let masked = sh(
        &vm,
        "bundle",
        "stat -c '%t:%T' /proc/keys; wc -c < /proc/keys; ls -A /scratch/secret | wc -l; \
         test -e /proc/kcore && echo kcore; touch /scratch/secret/x 2>&1 || true",
    )?;
    let lines: Vec<&str> = masked.lines().map(str::trim).collect();
    if lines.len() != 4
        || lines[..3] != ["1:3", "0", "0"]
        || !lines[3].contains("Read-only file system")
    {
        return Err(format!("masked paths:\n{masked}"));
    }
    // Read-only paths refuse writes, their neighbours do not; so does the root.
    let ro = sh(
        &vm,
        "bundle",
        "cat /scratch/ro/f; { echo x > /scratch/ro/f; } 2>&1; echo ok > /scratch/rw/f && \
         cat /scratch/rw/f; { echo 1 > /proc/sys/kernel/domainname; } 2>&1; \
         touch /new-file 2>&1; echo x > /dev/shm/x && echo shm-writable",
    )?;
    let lines: Vec<&str> = ro.lines().collect();
    let erofs = |l: &str| l.contains("Read-only file system");
    if lines.len() != 6
        || lines[0] != "kept"
        || !erofs(lines[1])
        || lines[2] != "ok"
        || !erofs(lines[3])
        || !erofs(lines[4])
        || lines[5] != "shm-writable"
    {
        return Err(format!("read-only paths and root:\n{ro}"));
    }
    // The guest itself (and the VM's own container) is untouched by the read-only root.
    sh(&vm, "oci", "touch /still-writable && rm /still-writable")?;
    Ok(())
}

fn main() {
    let t = BackendTest::linux;
    run_backend_tests(vec![
        t(
            "exec_applies_rlimits_capabilities_no_new_privs",
            process_attributes,
        ),
        t("finish_root_devices_masks_read_only", finish_root),
    ]);
}
