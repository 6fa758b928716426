//! T0: the real agent binary on the host, in fresh mount and PID namespaces (`unshare`), served
//! on a Unix socket with the hybrid-vsock handshake, driven through the protocol crate's client.
//! The host kernel has no container syscalls, so this exercises the mainline backend.
//!
//! Needs root, util-linux `unshare`, a cgroup v2 hierarchy and /usr/bin/python3 (for the socket
//! servers); without them every test is reported as ignored, with the reason.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use capsule_protocol::methods as m;
use capsule_protocol::{pb, Client, Code, HybridVsock, StreamKind};

const PYTHON: &str = "/usr/bin/python3";
const FLAGS: u32 = 0x001 | 0x008 | 0x010 | 0x040 | 0x080; // NEW_FS, UTS, IPC, PID, NET

fn cgroup2_mount() -> Option<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mi.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2")
            .then(|| PathBuf::from(pre.split_whitespace().nth(4).unwrap_or("")))
    })
}

fn unavailable() -> Option<String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: creating namespaces and cgroups needs root".into());
    }
    let ok = Command::new("unshare")
        .args(["--mount", "--pid", "--fork", "true"])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return Some("`unshare --mount --pid --fork` does not work here".into());
    }
    match cgroup2_mount() {
        Some(m) if m.join("cgroup.procs").exists() => {}
        _ => return Some("no cgroup v2 hierarchy mounted".into()),
    }
    if !Path::new(PYTHON).exists() {
        return Some(format!(
            "{PYTHON} is missing (socket servers of the bridge tests)"
        ));
    }
    None
}

/// One agent in its own namespaces, with a cgroup parent and a socket directory of its own.
struct Agent {
    child: Child,
    dir: PathBuf,
    cgroup: PathBuf,
    client: Option<Client>,
}

static N: AtomicU32 = AtomicU32::new(0);

impl Agent {
    fn start() -> Result<Agent, String> {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let tag = format!("capsule-t0-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{e:?}"))?;
        let cgroup = cgroup2_mount().ok_or("no cgroup2")?.join(&tag);
        let sock = dir.join("agent.sock");
        let child = Command::new("unshare")
            .args([
                "--mount",
                "--pid",
                "--fork",
                "--propagation",
                "private",
                "--kill-child",
            ])
            .arg(env!("CARGO_BIN_EXE_capsule-agent"))
            .args(["serve", "--backend", "mainline", "--unix"])
            .arg(&sock)
            .arg("--cgroup-parent")
            .arg(&cgroup)
            .env(
                "CAPSULE_AGENT_LOG",
                std::env::var("CAPSULE_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .spawn()
            .map_err(|e| format!("starting the agent: {e}"))?;
        let mut agent = Agent {
            child,
            dir,
            cgroup,
            client: None,
        };
        for _ in 0..500 {
            if sock.exists() {
                if let Ok(c) = Client::connect(HybridVsock::new(&sock)) {
                    agent.client = Some(c.with_timeout(Duration::from_secs(30)));
                    return Ok(agent);
                }
            }
            if let Ok(Some(st)) = agent.child.try_wait() {
                return Err(format!("agent exited: {st}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err("agent socket never appeared".into())
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("connected")
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    fn create(&self, name: &str, flags: u32) -> Result<pb::CreateContainerResponse, String> {
        self.c()
            .call::<m::CreateContainer>(&pb::CreateContainerRequest {
                name: name.into(),
                flags,
                ..Default::default()
            })
            .map_err(|e| format!("create {name}: {e:?}"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.call::<m::Shutdown>(&pb::ShutdownRequest { grace_seconds: 0 });
        }
        for _ in 0..200 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(rd) = std::fs::read_dir(&self.cgroup) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Exec {
    id: u64,
    stdin: Option<UnixStream>,
    stdout: Option<UnixStream>,
    stderr: Option<UnixStream>,
}

fn exec(
    a: &Agent,
    container: &str,
    argv: &[&str],
    tweak: impl FnOnce(&mut pb::ExecRequest),
) -> Result<Exec, capsule_protocol::ClientError> {
    let mut req = pb::ExecRequest {
        container: container.into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()],
        stdin: pb::StdioMode::StdioStream as i32,
        stdout: pb::StdioMode::StdioStream as i32,
        stderr: pb::StdioMode::StdioStream as i32,
        ..Default::default()
    };
    tweak(&mut req);
    let r = a.c().call::<m::Exec>(&req)?;
    let att = |kind, mode| {
        (mode == pb::StdioMode::StdioStream as i32 && !req.tty)
            .then(|| a.c().attach(kind, r.exec_id).expect("attach"))
    };
    Ok(Exec {
        id: r.exec_id,
        stdin: att(StreamKind::Stdin, req.stdin),
        stdout: att(StreamKind::Stdout, req.stdout),
        stderr: att(StreamKind::Stderr, req.stderr),
    })
}

fn read_all(s: &mut Option<UnixStream>) -> String {
    let mut out = String::new();
    if let Some(s) = s {
        s.read_to_string(&mut out).expect("read stream");
    }
    out
}

fn close_stdin(e: &mut Exec) {
    if let Some(s) = e.stdin.take() {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
}

fn check(cond: bool, what: impl std::fmt::Display) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what.to_string())
    }
}

fn exec_with_stdio_and_exit_codes() -> Result<(), String> {
    let a = Agent::start()?;
    let info = a.create("web", FLAGS)?;
    check(info.init_pid > 0, "init pid")?;
    let mut e = exec(
        &a,
        "web",
        &["sh", "-c", "read x; echo out:$x; echo err:$x >&2; exit 3"],
        |_| {},
    )
    .map_err(|e| format!("{e:?}"))?;
    e.stdin
        .as_mut()
        .unwrap()
        .write_all(b"hello\n")
        .map_err(|e| format!("{e:?}"))?;
    close_stdin(&mut e);
    let out = read_all(&mut e.stdout);
    let err = read_all(&mut e.stderr);
    let w = a
        .c()
        .wait_process("web", e.id)
        .map_err(|e| format!("{e:?}"))?;
    check(out == "out:hello\n", format!("stdout {out:?}"))?;
    check(err == "err:hello\n", format!("stderr {err:?}"))?;
    check(w.exit_code == 3 && w.signal == 0, format!("wait {w:?}"))?;

    // New PID and UTS namespaces: the shell is a low pid, the hostname is the container's name.
    let mut e = exec(&a, "web", &["sh", "-c", "echo $$; uname -n"], |_| {})
        .map_err(|e| format!("{e:?}"))?;
    close_stdin(&mut e);
    let out = read_all(&mut e.stdout);
    let mut lines = out.lines();
    let pid: u32 = lines
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or(format!("pid line in {out:?}"))?;
    check(
        pid < 10,
        format!("pid {pid} inside the container's PID namespace"),
    )?;
    check(lines.next() == Some("web"), format!("hostname in {out:?}"))?;
    check(
        a.c()
            .wait_process("web", e.id)
            .map_err(|e| format!("{e:?}"))?
            .exit_code
            == 0,
        "exit 0",
    )?;

    // Stdout redirected to /dev/null still reports the exit code.
    let e = exec(&a, "web", &["false"], |r| {
        r.stdin = 0;
        r.stdout = 0;
        r.stderr = 0;
    })
    .map_err(|e| format!("{e:?}"))?;
    let w = a
        .c()
        .wait_process("web", e.id)
        .map_err(|e| format!("{e:?}"))?;
    check(w.exit_code == 1, format!("false: {w:?}"))
}

fn env_cwd_and_user() -> Result<(), String> {
    let a = Agent::start()?;
    a.create("u", FLAGS)?;
    let mut e = exec(
        &a,
        "u",
        &["sh", "-c", "echo $FOO; pwd; id -u; id -g; id -G"],
        |r| {
            r.env.push("FOO=bar baz".into());
            r.cwd = "/tmp".into();
            r.uid = 65534;
            r.gid = 65534;
            r.additional_gids = vec![65534, 100];
        },
    )
    .map_err(|e| format!("{e:?}"))?;
    close_stdin(&mut e);
    let out = read_all(&mut e.stdout);
    check(
        a.c()
            .wait_process("u", e.id)
            .map_err(|e| format!("{e:?}"))?
            .exit_code
            == 0,
        "exit",
    )?;
    let lines: Vec<&str> = out.lines().collect();
    check(lines.len() == 5, format!("output {out:?}"))?;
    check(
        lines[0] == "bar baz" && lines[1] == "/tmp" && lines[2] == "65534" && lines[3] == "65534",
        format!("output {out:?}"),
    )?;
    check(
        lines[4].split(' ').any(|g| g == "100"),
        format!("groups {out:?}"),
    )?;
    // A missing working directory is the cwd's fault, with the errno.
    let err = exec(&a, "u", &["true"], |r| r.cwd = "/nonexistent-dir".into())
        .err()
        .ok_or("exec in a missing cwd worked")?;
    let rpc = err.rpc().ok_or(format!("{err:?}"))?;
    check(
        rpc.errno == libc::ENOENT && rpc.field == "cwd",
        format!("{rpc:?}"),
    )
}

fn signal_and_wait() -> Result<(), String> {
    let a = Agent::start()?;
    a.create("s", FLAGS)?;
    let mut e = exec(&a, "s", &["sleep", "1000"], |_| {}).map_err(|e| format!("{e:?}"))?;
    close_stdin(&mut e);
    a.c()
        .call::<m::SignalProcess>(&pb::SignalProcessRequest {
            container: "s".into(),
            exec_id: e.id,
            signal: libc::SIGTERM,
        })
        .map_err(|e| format!("{e:?}"))?;
    let w = a
        .c()
        .wait_process("s", e.id)
        .map_err(|e| format!("{e:?}"))?;
    check(
        w.signal == libc::SIGTERM && w.exit_code == -1,
        format!("wait {w:?}"),
    )?;
    // The process is gone: signalling it again is ESRCH.
    let err = a
        .c()
        .call::<m::SignalProcess>(&pb::SignalProcessRequest {
            container: "s".into(),
            exec_id: e.id,
            signal: libc::SIGTERM,
        })
        .err()
        .ok_or("signal after exit worked")?;
    check(
        err.rpc().map(|r| r.errno) == Some(libc::ESRCH),
        format!("{err:?}"),
    )?;
    let err = a
        .c()
        .call::<m::SignalProcess>(&pb::SignalProcessRequest {
            container: "s".into(),
            exec_id: e.id,
            signal: 99,
        })
        .err()
        .ok_or("signal 99 accepted")?;
    check(
        err.rpc().map(|r| r.code) == Some(Code::InvalidArgument),
        format!("{err:?}"),
    )
}

fn freeze_and_thaw() -> Result<(), String> {
    let a = Agent::start()?;
    a.create("f", FLAGS)?;
    let mut e = exec(
        &a,
        "f",
        &["sh", "-c", "while read l; do echo got:$l; done"],
        |_| {},
    )
    .map_err(|e| format!("{e:?}"))?;
    let (stdin, stdout) = (e.stdin.as_mut().unwrap(), e.stdout.as_mut().unwrap());
    stdin.write_all(b"1\n").map_err(|e| format!("{e:?}"))?;
    let mut buf = [0u8; 64];
    let n = stdout.read(&mut buf).map_err(|e| format!("{e:?}"))?;
    check(&buf[..n] == b"got:1\n", "echo before freezing")?;
    let cref = pb::ContainerRef {
        container: "f".into(),
    };
    a.c()
        .call::<m::FreezeContainer>(&cref)
        .map_err(|e| format!("{e:?}"))?;
    let events =
        std::fs::read_to_string(a.cgroup.join("f/cgroup.events")).map_err(|e| format!("{e:?}"))?;
    check(
        events.lines().any(|l| l == "frozen 1"),
        format!("cgroup.events {events:?}"),
    )?;
    let list = a
        .c()
        .call::<m::ListContainers>(&pb::ListContainersRequest {})
        .map_err(|e| format!("{e:?}"))?;
    check(
        list.containers
            .iter()
            .any(|c| c.name == "f" && c.state == "frozen"),
        format!("{list:?}"),
    )?;
    // While frozen the shell cannot answer.
    stdin.write_all(b"2\n").map_err(|e| format!("{e:?}"))?;
    stdout
        .set_read_timeout(Some(Duration::from_millis(300)))
        .map_err(|e| format!("{e:?}"))?;
    check(stdout.read(&mut buf).is_err(), "a frozen process answered")?;
    a.c()
        .call::<m::ThawContainer>(&cref)
        .map_err(|e| format!("{e:?}"))?;
    stdout
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| format!("{e:?}"))?;
    let n = stdout.read(&mut buf).map_err(|e| format!("{e:?}"))?;
    check(
        &buf[..n] == b"got:2\n",
        format!("after thaw: {:?}", String::from_utf8_lossy(&buf[..n])),
    )?;
    close_stdin(&mut e);
    check(
        a.c()
            .wait_process("f", e.id)
            .map_err(|e| format!("{e:?}"))?
            .exit_code
            == 0,
        "exit",
    )
}

const ECHO_SERVER: &str = "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('127.0.0.1', 8080)); s.listen(1); print('ready', flush=True)\nc,_=s.accept(); d=c.recv(100); c.sendall(d.upper()); c.close()\n";

fn socket_bridges() -> Result<(), String> {
    let a = Agent::start()?;
    a.create("n", FLAGS)?;
    // Connect mode: host → a server inside the container's own network namespace.
    let mut srv =
        exec(&a, "n", &[PYTHON, "-c", ECHO_SERVER], |_| {}).map_err(|e| format!("{e:?}"))?;
    let mut buf = [0u8; 64];
    let n = srv
        .stdout
        .as_mut()
        .unwrap()
        .read(&mut buf)
        .map_err(|e| format!("{e:?}"))?;
    check(
        &buf[..n] == b"ready\n",
        format!("server: {:?}", String::from_utf8_lossy(&buf[..n])),
    )?;
    let b = a
        .c()
        .call::<m::ConnectSocket>(&pb::ConnectSocketRequest {
            container: "n".into(),
            family: 0,
            address: "127.0.0.1".into(),
            port: 8080,
        })
        .map_err(|e| format!("{e:?}"))?;
    let mut s = a
        .c()
        .attach(StreamKind::Socket, b.bridge_id)
        .map_err(|e| format!("{e:?}"))?;
    s.write_all(b"ping").map_err(|e| format!("{e:?}"))?;
    let mut got = String::new();
    s.read_to_string(&mut got).map_err(|e| format!("{e:?}"))?;
    check(got == "PING", format!("bridge answer {got:?}"))?;
    close_stdin(&mut srv);
    check(
        a.c()
            .wait_process("n", srv.id)
            .map_err(|e| format!("{e:?}"))?
            .exit_code
            == 0,
        "server exit",
    )?;
    // Nothing listens on 8080 in the container now; the host's port 8080 is not the container's.
    let err = a
        .c()
        .call::<m::ConnectSocket>(&pb::ConnectSocketRequest {
            container: "n".into(),
            family: 0,
            address: "127.0.0.1".into(),
            port: 8080,
        })
        .err()
        .ok_or("connect to a closed port worked")?;
    check(
        err.rpc().map(|r| r.errno) == Some(libc::ECONNREFUSED),
        format!("{err:?}"),
    )?;

    // Listen mode: the container connects to its own listener, the host gets the connection.
    let host_port = 40_000 + (std::process::id() % 20_000);
    let host_path = PathBuf::from(format!("{}_{host_port}", a.sock().display()));
    let host = UnixListener::bind(&host_path).map_err(|e| format!("{e:?}"))?;
    let l = a
        .c()
        .call::<m::ListenSocket>(&pb::ListenSocketRequest {
            container: "n".into(),
            family: 0,
            address: "127.0.0.1".into(),
            port: 0,
            host_port,
            backlog: 0,
        })
        .map_err(|e| format!("{e:?}"))?;
    check(l.bound_port > 0, "bound port")?;
    let client = format!("import socket\nc=socket.create_connection(('127.0.0.1', {}))\nc.sendall(b'hi')\nprint(c.recv(100).decode())\n", l.bound_port);
    let mut cl = exec(&a, "n", &[PYTHON, "-c", &client], |_| {}).map_err(|e| format!("{e:?}"))?;
    let (mut conn, _) = host.accept().map_err(|e| format!("{e:?}"))?;
    let h = capsule_protocol::stream::read_header(&mut conn).map_err(|e| format!("{e:?}"))?;
    check(
        h.kind == StreamKind::Accepted && h.id == l.listener_id,
        format!("header {h:?}"),
    )?;
    let mut two = [0u8; 2];
    conn.read_exact(&mut two).map_err(|e| format!("{e:?}"))?;
    check(&two == b"hi", "bytes from the container")?;
    conn.write_all(b"hello host")
        .map_err(|e| format!("{e:?}"))?;
    drop(conn);
    close_stdin(&mut cl);
    let out = read_all(&mut cl.stdout);
    check(out == "hello host\n", format!("client saw {out:?}"))?;
    a.c()
        .call::<m::CloseListener>(&pb::CloseListenerRequest {
            container: "n".into(),
            listener_id: l.listener_id,
        })
        .map_err(|e| format!("{e:?}"))?;
    Ok(())
}

fn keys_add_and_list() -> Result<(), String> {
    let a = Agent::start()?;
    a.create("k", FLAGS)?;
    let added = a
        .c()
        .call::<m::AddKey>(&pb::AddKeyRequest {
            container: "k".into(),
            key_type: "user".into(),
            description: "capsule-test:k1".into(),
            payload: b"s3cret".to_vec(),
        })
        .map_err(|e| format!("{e:?}"))?;
    let list = a
        .c()
        .call::<m::ListKeys>(&pb::ContainerRef {
            container: "k".into(),
        })
        .map_err(|e| format!("{e:?}"))?;
    check(
        list.keys.iter().any(|k| {
            k.serial == added.serial && k.key_type == "user" && k.description == "capsule-test:k1"
        }),
        format!("{list:?}"),
    )?;
    // Inside, the key is reachable (the container keyring is the process's session keyring).
    let mut e = exec(&a, "k", &["cat", "/proc/keys"], |_| {}).map_err(|e| format!("{e:?}"))?;
    close_stdin(&mut e);
    let out = read_all(&mut e.stdout);
    check(
        out.contains("capsule-test:k1"),
        format!("/proc/keys inside: {out}"),
    )?;
    // Bad key input is refused with the field named.
    let err = a
        .c()
        .call::<m::AddKey>(&pb::AddKeyRequest {
            container: "k".into(),
            key_type: ".internal".into(),
            description: "x".into(),
            payload: vec![],
        })
        .err()
        .ok_or("dot type accepted")?;
    check(
        err.rpc().map(|r| r.field.as_str()) == Some("key_type"),
        format!("{err:?}"),
    )
}

fn kill_container() -> Result<(), String> {
    let a = Agent::start()?;
    a.create("doomed", FLAGS)?;
    let mut e = exec(&a, "doomed", &["sleep", "1000"], |_| {}).map_err(|e| format!("{e:?}"))?;
    close_stdin(&mut e);
    a.c()
        .call::<m::KillContainer>(&pb::KillContainerRequest {
            container: "doomed".into(),
            signal: 0,
        })
        .map_err(|e| format!("{e:?}"))?;
    let w = a
        .c()
        .wait_process("doomed", e.id)
        .map_err(|e| format!("{e:?}"))?;
    check(w.signal == libc::SIGKILL, format!("{w:?}"))?;
    // The init died with the rest: the container goes away and its name is free again.
    let mut gone = false;
    for _ in 0..500 {
        let list = a
            .c()
            .call::<m::ListContainers>(&pb::ListContainersRequest {})
            .map_err(|e| format!("{e:?}"))?;
        if !list.containers.iter().any(|c| c.name == "doomed") {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    check(gone, "killed container still listed")?;
    a.create("doomed", FLAGS).map(|_| ())
}

fn bad_input_and_errors() -> Result<(), String> {
    let a = Agent::start()?;
    let c = a.c();
    check(
        c.health().map_err(|e| format!("{e:?}"))?.status == 1,
        "SERVING",
    )?;
    let v = c.version().map_err(|e| format!("{e:?}"))?;
    check(
        v.protocol_version == capsule_protocol::PROTOCOL_VERSION && v.backend == "mainline",
        format!("{v:?}"),
    )?;
    a.create("x", FLAGS)?;
    let list = c
        .call::<m::ListContainers>(&pb::ListContainersRequest {})
        .map_err(|e| format!("{e:?}"))?;
    check(
        list.containers
            .first()
            .is_some_and(|r| r.current && r.name == "<current>"),
        format!("{list:?}"),
    )?;
    check(
        list.containers
            .iter()
            .any(|r| r.name == "x" && r.flags == FLAGS && !r.current),
        format!("{list:?}"),
    )?;

    let code = |r: Result<pb::CreateContainerResponse, capsule_protocol::ClientError>| {
        r.err().and_then(|e| e.rpc().cloned())
    };
    let dup = code(c.call::<m::CreateContainer>(&pb::CreateContainerRequest {
        name: "x".into(),
        flags: FLAGS,
        ..Default::default()
    }));
    check(
        dup.as_ref()
            .is_some_and(|e| e.code == Code::AlreadyExists && e.field == "name"),
        format!("{dup:?}"),
    )?;
    let bad = code(c.call::<m::CreateContainer>(&pb::CreateContainerRequest {
        name: "a/b".into(),
        ..Default::default()
    }));
    check(
        bad.as_ref()
            .is_some_and(|e| e.code == Code::InvalidArgument && e.field == "name"),
        format!("{bad:?}"),
    )?;
    let flags = code(c.call::<m::CreateContainer>(&pb::CreateContainerRequest {
        name: "y".into(),
        flags: 0x400,
        ..Default::default()
    }));
    check(
        flags.as_ref().is_some_and(|e| e.field == "flags"),
        format!("{flags:?}"),
    )?;

    // Exec of a missing binary: ENOENT from inside, named as argv[0].
    let err = exec(&a, "x", &["/no/such/binary"], |_| {})
        .err()
        .ok_or("missing binary ran")?;
    let rpc = err.rpc().ok_or(format!("{err:?}"))?;
    check(
        rpc.code == Code::NotFound && rpc.errno == libc::ENOENT && rpc.field == "argv[0]",
        format!("{rpc:?}"),
    )?;
    let err = exec(&a, "nope", &["true"], |_| {})
        .err()
        .ok_or("unknown container worked")?;
    check(
        err.rpc()
            .is_some_and(|r| r.code == Code::NotFound && r.field == "container"),
        format!("{err:?}"),
    )?;
    // Mount of a missing source.
    let err = c
        .call::<m::Mount>(&pb::MountRequest {
            container: "x".into(),
            fstype: "bind".into(),
            source: "/no/such/dir".into(),
            target: "/mnt".into(),
            ..Default::default()
        })
        .err()
        .ok_or("bind of a missing source worked")?;
    check(
        err.rpc()
            .is_some_and(|r| r.errno == libc::ENOENT && r.field == "source"),
        format!("{err:?}"),
    )?;
    // A tmpfs mounted into the container is seen inside only.
    let mnt = format!("/tmp/capsule-t0-mnt-{}", std::process::id());
    c.call::<m::Mount>(&pb::MountRequest {
        container: "x".into(),
        fstype: "tmpfs".into(),
        source: "none".into(),
        options: "size=1m".into(),
        target: mnt.clone(),
        mkdir: true,
        subdir: String::new(),
    })
    .map_err(|e| format!("{e:?}"))?;
    let mut e = exec(
        &a,
        "x",
        &["sh", "-c", &format!("grep -c ' {mnt} ' /proc/self/mounts")],
        |_| {},
    )
    .map_err(|e| format!("{e:?}"))?;
    close_stdin(&mut e);
    let out = read_all(&mut e.stdout);
    check(out.trim() == "1", format!("mount inside: {out:?}"))?;
    let host_mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|e| format!("{e:?}"))?;
    check(
        !host_mounts.contains(&format!(" {mnt} ")),
        "the mount leaked to the host",
    )?;
    let _ = std::fs::remove_dir(&mnt);

    // Unknown method: UNIMPLEMENTED, and the connection goes on.
    let err = c
        .call_raw(
            "capsule.agent.v1.Agent",
            "Frobnicate",
            vec![],
            Some(Duration::from_secs(10)),
        )
        .err()
        .ok_or("unknown method worked")?;
    check(
        err.rpc().is_some_and(|r| r.code == Code::Unimplemented),
        format!("{err:?}"),
    )?;
    // Garbage payload: INVALID_ARGUMENT.
    let err = c
        .call_raw(
            "capsule.agent.v1.Agent",
            "Exec",
            vec![0xff, 0xff, 0xff],
            Some(Duration::from_secs(10)),
        )
        .err()
        .ok_or("garbage worked")?;
    check(
        err.rpc().is_some_and(|r| r.code == Code::InvalidArgument),
        format!("{err:?}"),
    )?;
    // Oversized request: refused by the agent (not just the client), connection still usable.
    let big = Client::connect(HybridVsock::new(a.sock()))
        .map_err(|e| format!("{e:?}"))?
        .with_max_message_size(8 << 20);
    let req = pb::ExecRequest {
        container: "x".into(),
        argv: vec!["x".repeat(5 << 20)],
        ..Default::default()
    };
    let err = big
        .call::<m::Exec>(&req)
        .err()
        .ok_or("oversized request accepted")?;
    check(
        err.rpc().is_some_and(|r| r.code == Code::ResourceExhausted),
        format!("{err:?}"),
    )?;
    check(
        big.health().is_ok(),
        "connection unusable after an oversized request",
    )?;
    Ok(())
}

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let reason = unavailable();
    if let Some(r) = &reason {
        if !args.list {
            eprintln!("SKIPPED t0_agent: {r}");
        }
    }
    type Test = fn() -> Result<(), String>;
    let tests: Vec<(&str, Test)> = vec![
        (
            "exec_with_stdio_and_exit_codes",
            exec_with_stdio_and_exit_codes,
        ),
        ("env_cwd_and_user", env_cwd_and_user),
        ("signal_and_wait", signal_and_wait),
        ("freeze_and_thaw", freeze_and_thaw),
        ("socket_bridges", socket_bridges),
        ("keys_add_and_list", keys_add_and_list),
        ("kill_container", kill_container),
        ("bad_input_and_errors", bad_input_and_errors),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            libtest_mimic::Trial::test(name, move || f().map_err(Into::into))
                .with_ignored_flag(reason.is_some())
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}
