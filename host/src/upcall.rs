//! The host side of upcall forwarding: the guest's request-key helper connects to host vsock
//! port [`capsule_protocol::UPCALL_PORT`], which arrives at the Unix listener `<vsock uds>_<port>`; the
//! router runs the helper program configured for the key type (one set per guest), passes the
//! request as JSON on its stdin, and instantiates the key with the helper's stdout, or negates
//! it when there is no helper, or it fails, crashes or hangs.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsule_protocol::pb;
use capsule_protocol::upcall::{read_call, UpcallCall};
use capsule_protocol::RpcError;
use log::{info, warn};

/// Most upcalls handled at once; more wait in the listen backlog.
const MAX_CONCURRENT: usize = 16;
/// Largest key payload a helper may return.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// How long a negative key stays, so a failing lookup is not retried in a tight loop.
const NEGATE_TIMEOUT_SECS: u32 = 30;

/// Errors while starting the router.
#[derive(Debug, thiserror::Error)]
pub enum UpcallRouterError {
    #[error("cannot listen for upcalls on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where upcalls of a VM go.
#[derive(Debug, Clone)]
pub struct UpcallRoutes {
    /// VM name, passed to helpers.
    pub vm: String,
    /// Helper program per key type.
    pub helpers: BTreeMap<String, PathBuf>,
    /// Longest a helper may run.
    pub timeout: Duration,
}

/// The request as a helper reads it on stdin.
#[derive(Debug, serde::Serialize)]
struct HelperRequest<'a> {
    vm: &'a str,
    container: &'a str,
    operation: &'a str,
    key_type: &'a str,
    description: &'a str,
    /// Callout information, as text (lossy if it was not UTF-8).
    callout_info: String,
    uid: u32,
    gid: u32,
}

/// Binds the upcall listener for the VM whose hybrid-vsock socket is `vsock_uds` and serves it
/// on a background thread.
pub fn start(vsock_uds: &Path, routes: UpcallRoutes) -> Result<PathBuf, UpcallRouterError> {
    let path = capsule_protocol::hybrid::forward_path(vsock_uds, capsule_protocol::UPCALL_PORT);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|source| UpcallRouterError::Listen {
        path: path.clone(),
        source,
    })?;
    let routes = Arc::new(routes);
    std::thread::Builder::new()
        .name("capsule-upcalls".into())
        .spawn(move || serve(listener, routes))
        .map_err(|source| UpcallRouterError::Listen {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

fn serve(listener: UnixListener, routes: Arc<UpcallRoutes>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                warn!("upcall listener: {e}");
                continue;
            }
        };
        while active.load(Ordering::SeqCst) >= MAX_CONCURRENT {
            std::thread::sleep(Duration::from_millis(10));
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (routes, active) = (routes.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("capsule-upcall".into())
            .spawn(move || {
                handle(conn, &routes);
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            warn!("cannot start an upcall thread: {e}");
        }
    }
}

fn handle(mut conn: UnixStream, routes: &UpcallRoutes) {
    // The guest side must send its request promptly.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let call = match read_call(&mut conn) {
        Ok(call) => call,
        Err(e) => {
            warn!("bad upcall from the guest: {e}");
            return;
        }
    };
    let answer = match route(&call, routes) {
        Ok(payload) => pb::UpcallResponse {
            payload,
            ..Default::default()
        },
        Err(e) => {
            info!(
                "upcall {} {:?} from container {:?}: negative key ({e})",
                call.request.key_type, call.request.description, call.request.container
            );
            pb::UpcallResponse {
                negate: true,
                negate_timeout_secs: NEGATE_TIMEOUT_SECS,
                ..Default::default()
            }
        }
    };
    if let Err(e) = call.answer(&mut conn, Ok(answer)) {
        warn!("cannot answer an upcall: {e}");
    }
}

/// Runs the helper for the call's key type; its stdout is the key payload.
fn route(call: &UpcallCall, routes: &UpcallRoutes) -> Result<Vec<u8>, RpcError> {
    let r = &call.request;
    let helper = routes.helpers.get(&r.key_type).ok_or_else(|| {
        RpcError::new(
            capsule_protocol::Code::NotFound,
            format!("no helper configured for key type {:?}", r.key_type),
        )
    })?;
    let request = HelperRequest {
        vm: &routes.vm,
        container: &r.container,
        operation: &r.operation,
        key_type: &r.key_type,
        description: &r.description,
        callout_info: String::from_utf8_lossy(&r.callout_info).into_owned(),
        uid: r.uid,
        gid: r.gid,
    };
    let input = serde_json::to_vec(&request)
        .map_err(|e| RpcError::new(capsule_protocol::Code::Internal, e.to_string()))?;
    run_helper(helper, &input, routes.timeout)
}

/// Runs `helper` with `input` on stdin; returns its stdout if it exits 0 within `timeout`.
pub fn run_helper(helper: &Path, input: &[u8], timeout: Duration) -> Result<Vec<u8>, RpcError> {
    let failed = |what: String| RpcError::new(capsule_protocol::Code::Unavailable, what);
    let mut child = Command::new(helper)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| failed(format!("cannot run helper {}: {e}", helper.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that does not read its input must not block us: write from a thread.
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&mut stdout)
            .take(MAX_PAYLOAD as u64 + 1)
            .read_to_end(&mut out);
        out
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!(
                    "helper {} did not answer within {timeout:?} and was killed",
                    helper.display()
                )));
            }
            Err(e) => return Err(failed(format!("cannot wait for helper: {e}"))),
        }
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(failed(format!(
            "helper {} failed ({status})",
            helper.display()
        )));
    }
    if out.len() > MAX_PAYLOAD {
        return Err(failed(format!(
            "helper {} returned more than {MAX_PAYLOAD} bytes",
            helper.display()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(tag: &str, body: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("capsule-helper-{tag}-{}", std::process::id()));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn helper_output_becomes_the_payload() {
        let h = script("echo", "read line; echo \"$line\" | grep -q '\"description\":\"example.org\"' && printf 10.0.0.1");
        let input = br#"{"description":"example.org"}"#;
        assert_eq!(
            run_helper(&h, input, Duration::from_secs(5)).unwrap(),
            b"10.0.0.1"
        );
        std::fs::remove_file(h).unwrap();
    }

    #[test]
    fn failing_hanging_and_missing_helpers_are_errors() {
        let fail = script("fail", "exit 3");
        assert!(run_helper(&fail, b"{}", Duration::from_secs(5)).is_err());
        let hang = script("hang", "exec sleep 30");
        let err = run_helper(&hang, b"{}", Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("did not answer"), "{err}");
        let missing = Path::new("/nonexistent/helper");
        assert!(run_helper(missing, b"{}", Duration::from_secs(1)).is_err());
        std::fs::remove_file(fail).unwrap();
        std::fs::remove_file(hang).unwrap();
    }

    #[test]
    fn oversized_output_is_refused() {
        let big = script("big", "head -c 2000000 /dev/zero");
        assert!(run_helper(&big, b"{}", Duration::from_secs(10)).is_err());
        std::fs::remove_file(big).unwrap();
    }
}
