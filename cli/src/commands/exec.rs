//! `capsule exec`: run a command in a VM's container with stdin, stdout and stderr (or a
//! terminal) streamed over vsock; the command's exit status becomes ours.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use capsule_host::exec::{ExecError, ExecSpec, Process, Streams};
use clap::Args;

use super::common;
use super::tty::{terminal_size, RawMode, WinchWatcher};

/// PATH a command gets unless `-e PATH=...` says otherwise.
use capsule_protocol::DEFAULT_PATH;

#[derive(Args, Debug)]
#[command(
    after_help = "The exit status is the command's: its exit code, or 128+N when signal N \
    killed it; 127 when the command does not exist, 126 when it cannot be executed, 1 for \
    capsule's own errors.\n\nExample: capsule exec -e GREETING=hi -w /tmp web -- sh -c 'echo $GREETING'"
)]
pub struct ExecArgs {
    /// Run the command on a terminal (for interactive programs).
    #[arg(short, long)]
    tty: bool,
    /// Keep stdin attached, as docker's and ctr's -i (so `-it` works the same). capsule
    /// forwards stdin anyway unless it is /dev/null.
    #[arg(short, long)]
    interactive: bool,
    /// Set an environment variable: KEY=VALUE, or KEY to pass this shell's value. Repeatable.
    #[arg(short, long = "env", value_name = "KEY[=VALUE]")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short, long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// User (and group) to run as: UID[:GID], numeric.
    #[arg(short, long = "user", value_name = "UID[:GID]")]
    user: Option<String>,
    /// The container to run in (default: the VM's own, named like the VM).
    #[arg(short, long)]
    container: Option<String>,
    /// The VM.
    name: String,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub fn run(args: ExecArgs) -> ExitCode {
    match exec(&args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Like a shell: 127 when the program is not there, 126 when it cannot be run;
            // only for errors about the program itself, not e.g. a missing container.
            let program_errno = e
                .downcast_ref::<ExecError>()
                .map_or(0, ExecError::program_errno);
            let code = match program_errno {
                libc::ENOENT => 127,
                libc::EACCES | libc::ENOEXEC => 126,
                _ => 1,
            };
            super::fail(&e);
            ExitCode::from(code)
        }
    }
}

fn parse_user(spec: &str) -> Result<(u32, u32)> {
    let (uid, gid) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let uid: u32 = uid
        .parse()
        .with_context(|| format!("invalid --user {spec:?}: UID must be a number"))?;
    let gid = match gid {
        Some(g) => g
            .parse()
            .with_context(|| format!("invalid --user {spec:?}: GID must be a number"))?,
        None => uid,
    };
    Ok((uid, gid))
}

fn environment(args: &ExecArgs) -> Result<Vec<String>> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), "/root".into()),
    ];
    if args.tty {
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        env.push(("TERM".into(), term));
    }
    for spec in &args.env {
        let (key, value) = match spec.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (spec.clone(), std::env::var(spec).unwrap_or_default()),
        };
        if key.is_empty() {
            bail!("invalid --env {spec:?}: empty name");
        }
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

fn exec(args: &ExecArgs) -> Result<u8> {
    let (uid, gid) = args
        .user
        .as_deref()
        .map(parse_user)
        .transpose()?
        .unwrap_or((0, 0));
    let env = environment(args)?;
    let (_, client) = common::agent(&args.name)?;
    let spec = ExecSpec {
        argv: args.command.clone(),
        env,
        cwd: args.workdir.clone().unwrap_or_default(),
        uid,
        gid,
        tty: args.tty.then(terminal_size),
        // Nothing to forward from /dev/null: the process gets its own, and one stream fewer
        // is set up.
        stdin: !stdin_is_null(),
        ..ExecSpec::default()
    };
    let container = common::container_or_vm(&args.name, &args.container);
    let process = Process::start(Arc::new(client), container, spec)?;
    let code = match process.attach()? {
        Streams::Tty(tty) => run_tty(&process, tty)?,
        Streams::Pipes {
            stdin,
            stdout,
            stderr,
        } => run_pipes(&process, stdin, stdout, stderr)?,
    };
    Ok(code)
}

/// Whether standard input is /dev/null (or closed). Decided from fd 0 itself: `/dev/stdin` is a
/// link that minimal systems (an initramfs, a container's /dev) often lack.
fn stdin_is_null() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Ok(fd) = std::io::stdin().as_fd().try_clone_to_owned() else {
        return true;
    };
    let (Ok(stdin), Ok(null)) = (
        std::fs::File::from(fd).metadata(),
        std::fs::metadata("/dev/null"),
    ) else {
        return true;
    };
    stdin.rdev() == null.rdev() && stdin.dev() == null.dev() && stdin.ino() == null.ino()
}

/// Copies `from` into `to` until EOF; returns when the source is done.
fn pump(
    mut from: impl Read + Send + 'static,
    mut to: impl Write + Send + 'static,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).and_then(|_| to.flush()).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

fn run_pipes(
    process: &Process,
    stdin: Option<UnixStream>,
    stdout: UnixStream,
    stderr: UnixStream,
) -> Result<u8> {
    let out = pump(stdout, std::io::stdout());
    let err = pump(stderr, std::io::stderr());
    // Host stdin is forwarded until it ends; then the stream is half-closed, which reaches the
    // process as EOF after the last byte (a CloseStdin call could overtake data still in
    // flight on the stream). This thread is not joined: a command may finish while we still
    // wait for input.
    std::thread::spawn(move || {
        let Some(mut input) = stdin else {
            return;
        };
        let mut host = std::io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match host.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if input.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = input.shutdown(std::net::Shutdown::Write);
    });
    // Commands run as long as they like: no RPC timeout on the wait.
    let status = process.wait()?;
    // The process is gone: its output streams end once the agent has sent what is left.
    let _ = out.join();
    let _ = err.join();
    Ok(status.shell_code())
}

fn run_tty(process: &Process, tty: UnixStream) -> Result<u8> {
    let _raw = RawMode::enter();
    let out = pump(tty.try_clone()?, std::io::stdout());
    let _input = pump(std::io::stdin(), tty);
    let resizer = process.clone();
    let _winch = WinchWatcher::start(move |size| {
        let _ = resizer.resize(size);
    });
    let status = process.wait()?;
    let _ = out.join();
    Ok(status.shell_code())
}
