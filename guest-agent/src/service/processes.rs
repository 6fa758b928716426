//! Processes: Exec, WaitProcess, SignalProcess, ResizeTty, CloseStdin, ListProcesses, and the
//! exec table. A process is forked into its container at Exec; its streamed stdio waits in
//! [`crate::attach`] until the host attaches it.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use capsule_protocol::validate::{
    self, absolute_path, string_list, MAX_ARGS, MAX_ARG_LEN, MAX_ENV, MAX_GROUPS,
};
use capsule_protocol::{pb, Code, RpcError, DEFAULT_PATH};
use tokio::sync::watch;

use super::{check_signal, Agent};
use crate::attach::Stdio;
use crate::backend::child::{self, cstr, decode_failure, PreparedExec};
use crate::backend::privileges::{Capabilities, Privileges};
use crate::lock::lock;
use crate::reaper::ExitStatus;
use crate::{sys, tty};

/// Most exec entries kept (finished ones are dropped oldest first beyond this).
pub const MAX_EXECS: usize = 4096;

/// One process started by Exec.
pub struct ExecEntry {
    pub id: u64,
    pub container: String,
    pub pid: libc::pid_t,
    pub argv: Vec<String>,
    pub exit: watch::Receiver<Option<ExitStatus>>,
    /// Its streamed stdio (shared with the attachments table).
    pub stdio: Arc<Stdio>,
    /// A copy of the terminal master for TIOCSWINSZ.
    pub tty_ctl: Option<OwnedFd>,
}

impl Agent {
    fn exec_entry(&self, container: &str, id: u64) -> Result<Arc<ExecEntry>, RpcError> {
        validate::container_name("container", container)?;
        match lock(&self.execs).get(&id) {
            Some(e) if e.container == container => Ok(e.clone()),
            _ => Err(RpcError::from_errno(
                libc::ESRCH,
                format!("no process {id} in container {container:?}"),
            )
            .with_field("exec_id")),
        }
    }

    pub(super) async fn exec(
        self: &Arc<Self>,
        r: pb::ExecRequest,
    ) -> Result<pb::ExecResponse, RpcError> {
        let c = self.container("container", &r.container)?;
        c.require_root()?;
        let (candidates, argv, env, cwd) = validate_exec(&r)?;
        let privileges = validate_privileges(&r)?;
        let null =
            || sys::open_dev_null().map_err(|e| RpcError::from_errno(e, "opening /dev/null"));
        let pipe = || sys::pipe().map_err(|e| RpcError::from_errno(e, "pipe"));
        // (child side, agent side) per stream.
        let mut child_fds: Vec<OwnedFd> = Vec::new();
        let (mut stdin, mut stdout, mut stderr, mut tty, mut tty_ctl) =
            (None, None, None, None, None);
        let stdio: [i32; 3];
        if r.tty {
            let (master, slave) = tty::open_pty(c.ops.open_ptmx(), r.tty_size.as_ref())?;
            tty_ctl =
                Some(master.try_clone().map_err(|e| {
                    RpcError::from_errno(e.raw_os_error().unwrap_or(libc::EIO), "dup")
                })?);
            tty = Some(master);
            stdio = [slave.as_raw_fd(); 3];
            child_fds.push(slave);
        } else {
            let mut fds = [0; 3];
            for (i, mode) in [r.stdin, r.stdout, r.stderr].into_iter().enumerate() {
                if mode == pb::StdioMode::StdioStream as i32 {
                    let (rd, wr) = pipe()?;
                    let (child_end, agent_end) = if i == 0 { (rd, wr) } else { (wr, rd) };
                    fds[i] = child_end.as_raw_fd();
                    child_fds.push(child_end);
                    match i {
                        0 => stdin = Some(agent_end),
                        1 => stdout = Some(agent_end),
                        _ => stderr = Some(agent_end),
                    }
                } else if mode == pb::StdioMode::StdioNull as i32 {
                    let n = null()?;
                    fds[i] = n.as_raw_fd();
                    child_fds.push(n);
                } else {
                    return Err(RpcError::invalid(
                        ["stdin", "stdout", "stderr"][i],
                        format!("unknown stdio mode {mode}"),
                    ));
                }
            }
            stdio = fds;
        }
        let (err_r, err_w) = pipe()?;
        let groups: Vec<libc::gid_t> = r.additional_gids.clone();
        let keyring = c.ops.session_keyring_name().cloned();
        let prepared = PreparedExec::new(
            candidates,
            argv,
            env,
            cwd,
            r.uid,
            r.gid,
            groups,
            stdio,
            r.tty,
            keyring,
            err_w.as_raw_fd(),
        )
        .with_privileges(privileges);
        let this = self.clone();
        let c2 = c.clone();
        let (pid, exit) = Self::blocking(move || {
            let forked = c2
                .ops
                .fork_into(&this.reaper, &mut || child::exec_child(&prepared))?;
            drop(child_fds);
            drop(err_w);
            drop(prepared);
            let mut b = [0u8; child::FAILURE_LEN];
            let n = sys::read_full_raw(err_r.as_raw_fd(), &mut b)
                .map_err(|e| RpcError::from_errno(e, "reading the exec status"))?;
            if n == b.len() {
                return Err(exec_failure(&decode_failure(&b)));
            }
            Ok((forked.pid, forked.exit))
        })
        .await?;
        let id = self.id();
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            if let Ok(status) = exit.await {
                let _ = tx.send(Some(status));
            }
        });
        let stdio = Arc::new(Stdio::new(stdin, stdout, stderr, tty));
        let entry = Arc::new(ExecEntry {
            id,
            container: c.name.clone(),
            pid,
            argv: r.argv.clone(),
            exit: rx,
            stdio: stdio.clone(),
            tty_ctl,
        });
        {
            let mut execs = lock(&self.execs);
            if execs.len() >= MAX_EXECS {
                // Forget the oldest finished process.
                if let Some(old) = execs
                    .values()
                    .filter(|e| e.exit.borrow().is_some())
                    .map(|e| e.id)
                    .min()
                {
                    execs.remove(&old);
                    self.attachments.forget_stdio(old);
                }
            }
            execs.insert(id, entry);
            self.attachments.add_stdio(id, stdio);
        }
        Ok(pb::ExecResponse { exec_id: id, pid })
    }

    pub(super) async fn wait_process(
        self: &Arc<Self>,
        r: pb::WaitProcessRequest,
    ) -> Result<pb::WaitProcessResponse, RpcError> {
        let e = self.exec_entry(&r.container, r.exec_id)?;
        let mut rx = e.exit.clone();
        let status = rx
            .wait_for(|s| s.is_some())
            .await
            .map_err(|_| RpcError::new(Code::Internal, "exit status lost"))?
            .unwrap_or(ExitStatus::Exited(-1));
        Ok(match status {
            ExitStatus::Exited(code) => pb::WaitProcessResponse {
                exit_code: code,
                signal: 0,
                core_dumped: false,
            },
            ExitStatus::Signaled {
                signal,
                core_dumped,
            } => pb::WaitProcessResponse {
                exit_code: -1,
                signal,
                core_dumped,
            },
        })
    }

    pub(super) async fn signal_process(
        self: &Arc<Self>,
        r: pb::SignalProcessRequest,
    ) -> Result<pb::Empty, RpcError> {
        let e = self.exec_entry(&r.container, r.exec_id)?;
        check_signal("signal", r.signal)?;
        if e.exit.borrow().is_some() {
            return Err(RpcError::from_errno(
                libc::ESRCH,
                format!("process {} has exited", r.exec_id),
            )
            .with_field("exec_id"));
        }
        // The pid is ours and not yet reaped (checked above).
        sys::kill(e.pid, r.signal)
            .map_err(|errno| RpcError::from_errno(errno, "kill").with_field("signal"))?;
        Ok(pb::Empty {})
    }

    pub(super) async fn resize_tty(
        self: &Arc<Self>,
        r: pb::ResizeTtyRequest,
    ) -> Result<pb::Empty, RpcError> {
        let e = self.exec_entry(&r.container, r.exec_id)?;
        let Some(ctl) = &e.tty_ctl else {
            return Err(
                RpcError::from_errno(libc::ENOTTY, "the process has no terminal")
                    .with_field("exec_id"),
            );
        };
        let size = r.size.unwrap_or_default();
        tty::set_winsize(ctl.as_raw_fd(), &size)?;
        Ok(pb::Empty {})
    }

    pub(super) async fn close_stdin(
        self: &Arc<Self>,
        r: pb::CloseStdinRequest,
    ) -> Result<pb::Empty, RpcError> {
        let e = self.exec_entry(&r.container, r.exec_id)?;
        e.stdio.close_stdin();
        Ok(pb::Empty {})
    }

    pub(super) async fn list_processes(
        self: &Arc<Self>,
        r: pb::ContainerRef,
    ) -> Result<pb::ListProcessesResponse, RpcError> {
        let c = self.container("container", &r.container)?;
        let mut out: Vec<pb::ProcessInfo> = lock(&self.execs)
            .values()
            .filter(|e| e.container == c.name)
            .map(|e| pb::ProcessInfo {
                exec_id: e.id,
                pid: e.pid,
                argv: e.argv.clone(),
                state: if e.exit.borrow().is_some() {
                    "exited"
                } else {
                    "running"
                }
                .into(),
            })
            .collect();
        for pid in c.ops.procs() {
            if out.iter().any(|p| p.pid == pid) {
                continue;
            }
            let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    b.split(|&x| x == 0)
                        .filter(|s| !s.is_empty())
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect()
                })
                .unwrap_or_default();
            out.push(pb::ProcessInfo {
                exec_id: 0,
                pid,
                argv,
                state: "running".into(),
            });
        }
        out.sort_by_key(|p| p.pid);
        Ok(pb::ListProcessesResponse { processes: out })
    }
}

/// The RPC error of a failure in the exec child: its errno, the field of its stage, and for
/// the bounding set the capability that could not be dropped.
fn exec_failure(f: &child::Failure) -> RpcError {
    let field = f
        .stage
        .map_or_else(|| "argv[0]".to_string(), |s| s.field(f.index));
    let what = f.stage.map_or("setting up the process", |s| s.doing());
    let cap = match f.stage {
        Some(child::Stage::Bounding) => capsule_protocol::process::CAPABILITIES
            .get(f.index as usize)
            .map(|name| format!(" (dropping {name})"))
            .unwrap_or_default(),
        _ => String::new(),
    };
    RpcError::from_errno(
        f.errno,
        format!(
            "{field}: {what}{cap}: {}",
            std::io::Error::from_raw_os_error(f.errno)
        ),
    )
    .with_field(field)
}

/// The rlimits, capabilities and no_new_privs of an Exec request, checked.
pub fn validate_privileges(r: &pb::ExecRequest) -> Result<Privileges, RpcError> {
    let capabilities = match &r.capabilities {
        None => None,
        Some(c) => Some(Capabilities {
            sets: validate::capabilities("capabilities", c)?,
            ambient: c
                .ambient
                .iter()
                .filter_map(|n| capsule_protocol::process::capability_number(n))
                .collect(),
        }),
    };
    Ok(Privileges {
        rlimits: validate::rlimits("rlimits", &r.rlimits)?,
        capabilities,
        no_new_privs: r.no_new_privileges,
    })
}

type ExecParts = (Vec<CString>, Vec<CString>, Vec<CString>, CString);

/// Validates an Exec request: (candidate paths, argv, env, cwd).
pub fn validate_exec(r: &pb::ExecRequest) -> Result<ExecParts, RpcError> {
    if r.argv.is_empty() || r.argv[0].is_empty() {
        return Err(RpcError::invalid("argv", "no program given"));
    }
    string_list("argv", &r.argv, MAX_ARGS, MAX_ARG_LEN)?;
    string_list("env", &r.env, MAX_ENV, MAX_ARG_LEN)?;
    for (i, e) in r.env.iter().enumerate() {
        if !e.contains('=') || e.starts_with('=') {
            return Err(RpcError::invalid(
                format!("env[{i}]"),
                format!("{e:?} is not KEY=VALUE"),
            ));
        }
    }
    let cwd = if r.cwd.is_empty() {
        "/"
    } else {
        r.cwd.as_str()
    };
    absolute_path("cwd", cwd)?;
    if r.additional_gids.len() > MAX_GROUPS {
        return Err(RpcError::invalid(
            "additional_gids",
            format!("more than {MAX_GROUPS}"),
        ));
    }
    let prog = &r.argv[0];
    let candidates = if prog.contains('/') {
        vec![cstr(prog)]
    } else {
        let path = r
            .env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        path.split(':')
            .map(|d| if d.is_empty() { "." } else { d })
            .map(|d| cstr(&format!("{}/{prog}", d.trim_end_matches('/'))))
            .collect()
    };
    Ok((
        candidates,
        r.argv.iter().map(|s| cstr(s)).collect(),
        r.env.iter().map(|s| cstr(s)).collect(),
        cstr(cwd),
    ))
}
