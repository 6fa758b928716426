//! The request-key helper (`/sbin/request-key`, or `capsule-agent request-key ...`): the kernel
//! runs it as `request-key <op> <key> <uid> <gid> <thread-kr> <process-kr> <session-kr>` to
//! construct a key. It assumes authority over the key, reads its type, description and
//! callout info, forwards them to the host (vsock CID 2, port 1026), and instantiates the key
//! with the answer, or negates it on an error, a refusal or a timeout.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use capsule_protocol::pb;

use crate::keyring;
use crate::sys;

/// How long a negative key stays (seconds) when the host gives none.
pub const NEGATIVE_TIMEOUT_SECS: u32 = 30;
/// How long to wait for the host's answer, unless CAPSULE_UPCALL_TIMEOUT says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the upcall failed (the key is negated in every case).
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("usage: request-key <op> <key> <uid> <gid> <thread-kr> <process-kr> <session-kr>")]
    Usage,
    #[error("{what}: {}", std::io::Error::from_raw_os_error(*errno))]
    Key { what: &'static str, errno: i32 },
    #[error("connecting to the host")]
    Connect(#[source] std::io::Error),
    #[error("upcall")]
    Upcall(#[source] capsule_protocol::ClientError),
}

/// Operations on keys, behind a trait so the helper's logic is testable without a kernel upcall.
pub trait KeyOps {
    fn assume_authority(&self, key: i32) -> Result<(), i32>;
    fn describe(&self, key: i32) -> Result<keyring::KeyDescription, i32>;
    fn callout_info(&self) -> Vec<u8>;
    fn container_name(&self, session_keyring: i32) -> String;
    fn instantiate(&self, key: i32, payload: &[u8], expiry_secs: u32) -> Result<(), i32>;
    fn negate(&self, key: i32, timeout_secs: u32) -> Result<(), i32>;
}

/// The real key operations.
pub struct KernelKeys;

impl KeyOps for KernelKeys {
    fn assume_authority(&self, key: i32) -> Result<(), i32> {
        sys::keyctl(sys::KEYCTL_ASSUME_AUTHORITY, key as libc::c_ulong, 0, 0, 0).map(|_| ())
    }

    fn describe(&self, key: i32) -> Result<keyring::KeyDescription, i32> {
        keyring::describe(key)
    }

    fn callout_info(&self) -> Vec<u8> {
        sys::key_read(sys::KEY_SPEC_REQKEY_AUTH_KEY).unwrap_or_default()
    }

    fn container_name(&self, session_keyring: i32) -> String {
        // The container keyring holds the name (kernel: searched for members; mainline: the
        // session keyring of members). With authority assumed, the requestor's keyrings are
        // searched too.
        // SAFETY: request_key with valid strings and no callout (no recursion into upcalls).
        let serial = unsafe {
            libc::syscall(
                libc::SYS_request_key,
                c"user".as_ptr(),
                keyring::NAME_KEY.as_ptr(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        };
        if serial > 0 {
            if let Ok(name) = sys::key_read(serial as i32) {
                return String::from_utf8_lossy(&name).into_owned();
            }
        }
        // Mainline: the session keyring is named capsule:<agent pid>:<name>.
        keyring::describe(session_keyring)
            .ok()
            .and_then(|d| {
                d.description
                    .strip_prefix("capsule:")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, n)| n.to_string())
            })
            .unwrap_or_default()
    }

    fn instantiate(&self, key: i32, payload: &[u8], expiry_secs: u32) -> Result<(), i32> {
        sys::keyctl(
            sys::KEYCTL_INSTANTIATE,
            key as libc::c_ulong,
            payload.as_ptr() as libc::c_ulong,
            payload.len() as libc::c_ulong,
            0,
        )?;
        if expiry_secs > 0 {
            sys::keyctl(
                sys::KEYCTL_SET_TIMEOUT,
                key as libc::c_ulong,
                expiry_secs.into(),
                0,
                0,
            )?;
        }
        Ok(())
    }

    fn negate(&self, key: i32, timeout_secs: u32) -> Result<(), i32> {
        sys::keyctl(
            sys::KEYCTL_NEGATE,
            key as libc::c_ulong,
            timeout_secs.into(),
            0,
            0,
        )
        .map(|_| ())
    }
}

/// Where the host listens for upcalls.
pub enum Host {
    Vsock,
    /// A Unix socket path (tests: the host side of `serve --unix PATH` is `PATH_1026`).
    Unix(std::path::PathBuf),
}

fn connect(host: &Host) -> std::io::Result<UnixStream> {
    match host {
        Host::Unix(p) => UnixStream::connect(p),
        Host::Vsock => {
            // SAFETY: socket(2) with integer arguments.
            let fd =
                unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a new descriptor we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_vm is plain old data.
            let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
            addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
            addr.svm_cid = capsule_protocol::HOST_CID;
            addr.svm_port = capsule_protocol::UPCALL_PORT;
            use std::os::fd::AsRawFd;
            // SAFETY: connect with a valid sockaddr_vm.
            let r = unsafe {
                libc::connect(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_vm).cast(),
                    std::mem::size_of::<libc::sockaddr_vm>() as u32,
                )
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A vsock stream socket takes read/write/shutdown like any stream socket.
            Ok(UnixStream::from(fd))
        }
    }
}

/// Builds the upcall request for `key`.
pub fn build_request(
    ops: &dyn KeyOps,
    args: &[String],
) -> Result<(i32, pb::UpcallRequest), HelperError> {
    if args.len() < 7 {
        return Err(HelperError::Usage);
    }
    let num = |s: &String| s.parse::<i64>().map_err(|_| HelperError::Usage);
    let key = num(&args[1])? as i32;
    ops.assume_authority(key)
        .map_err(|errno| HelperError::Key {
            what: "assuming authority over the key",
            errno,
        })?;
    let d = ops.describe(key).map_err(|errno| HelperError::Key {
        what: "describing the key",
        errno,
    })?;
    let request = pb::UpcallRequest {
        container: ops.container_name(num(&args[6])? as i32),
        operation: args[0].clone(),
        key_type: d.key_type,
        description: d.description,
        callout_info: ops.callout_info(),
        key_serial: key,
        uid: num(&args[2])? as u32,
        gid: num(&args[3])? as u32,
    };
    Ok((key, request))
}

/// Sends the upcall and instantiates or negates the key; returns the exit code.
pub fn run(
    ops: &dyn KeyOps,
    args: &[String],
    host: &Host,
    timeout: Duration,
) -> Result<(), HelperError> {
    let (key, request) = build_request(ops, args)?;
    let answer = (|| {
        let mut conn = connect(host).map_err(HelperError::Connect)?;
        conn.set_read_timeout(Some(timeout))
            .map_err(HelperError::Connect)?;
        conn.set_write_timeout(Some(timeout))
            .map_err(HelperError::Connect)?;
        capsule_protocol::upcall::call(&mut conn, &request).map_err(HelperError::Upcall)
    })();
    match answer {
        Ok(resp) if !resp.negate => ops
            .instantiate(key, &resp.payload, resp.expiry_secs)
            .map_err(|errno| HelperError::Key {
                what: "instantiating the key",
                errno,
            }),
        Ok(resp) => {
            let t = if resp.negate_timeout_secs == 0 {
                NEGATIVE_TIMEOUT_SECS
            } else {
                resp.negate_timeout_secs
            };
            ops.negate(key, t).map_err(|errno| HelperError::Key {
                what: "negating the key",
                errno,
            })
        }
        Err(e) => {
            let _ = ops.negate(key, NEGATIVE_TIMEOUT_SECS);
            Err(e)
        }
    }
}

/// Entry point of the helper mode; `args` excludes the program name.
pub fn main(args: &[String]) -> i32 {
    let mut args = args.to_vec();
    let mut host = Host::Vsock;
    if let Some(i) = args.iter().position(|a| a == "--unix") {
        if let Some(p) = args.get(i + 1).cloned() {
            host = Host::Unix(p.into());
            args.drain(i..=i + 1);
        }
    }
    let timeout = std::env::var("CAPSULE_UPCALL_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    match run(&KernelKeys, &args, &host, timeout) {
        Ok(()) => 0,
        Err(e) => {
            let mut msg = format!("request-key: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            let _ = writeln!(std::io::stderr(), "{msg}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::io::Read;

    #[derive(Default)]
    struct Fake {
        calls: RefCell<Vec<String>>,
        deny_authority: bool,
    }

    impl KeyOps for Fake {
        fn assume_authority(&self, key: i32) -> Result<(), i32> {
            self.calls.borrow_mut().push(format!("assume {key}"));
            if self.deny_authority {
                Err(libc::EPERM)
            } else {
                Ok(())
            }
        }
        fn describe(&self, _: i32) -> Result<keyring::KeyDescription, i32> {
            Ok(keyring::parse_description("dns_resolver;0;0;3f010000;example.org").unwrap())
        }
        fn callout_info(&self) -> Vec<u8> {
            b"ipv4".to_vec()
        }
        fn container_name(&self, _: i32) -> String {
            "web".into()
        }
        fn instantiate(&self, key: i32, payload: &[u8], expiry: u32) -> Result<(), i32> {
            self.calls.borrow_mut().push(format!(
                "instantiate {key} {} {expiry}",
                String::from_utf8_lossy(payload)
            ));
            Ok(())
        }
        fn negate(&self, key: i32, t: u32) -> Result<(), i32> {
            self.calls.borrow_mut().push(format!("negate {key} {t}"));
            Ok(())
        }
    }

    fn args() -> Vec<String> {
        ["create", "77", "0", "0", "0", "0", "-3"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn host(
        answer: Option<Result<pb::UpcallResponse, capsule_protocol::RpcError>>,
    ) -> (
        tempdir::Dir,
        std::thread::JoinHandle<Option<pb::UpcallRequest>>,
    ) {
        let dir = tempdir::Dir::new();
        let l = std::os::unix::net::UnixListener::bind(dir.path().join("up")).unwrap();
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let call = capsule_protocol::upcall::read_call(&mut c).ok()?;
            match answer {
                Some(a) => call.answer(&mut c, a).unwrap(),
                None => {
                    // Never answer: wait for the helper to give up.
                    let mut b = [0u8; 1];
                    let _ = c.read(&mut b);
                }
            }
            Some(call.request)
        });
        (dir, t)
    }

    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "capsule-rk-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn answer_instantiates_the_key() {
        let (dir, t) = host(Some(Ok(pb::UpcallResponse {
            payload: b"1.2.3.4".to_vec(),
            expiry_secs: 60,
            ..Default::default()
        })));
        let f = Fake::default();
        run(
            &f,
            &args(),
            &Host::Unix(dir.path().join("up")),
            Duration::from_secs(5),
        )
        .unwrap();
        let req = t.join().unwrap().unwrap();
        assert_eq!(
            (
                req.container.as_str(),
                req.key_type.as_str(),
                req.description.as_str()
            ),
            ("web", "dns_resolver", "example.org")
        );
        assert_eq!(req.callout_info, b"ipv4");
        assert_eq!(
            *f.calls.borrow(),
            ["assume 77", "instantiate 77 1.2.3.4 60"]
        );
    }

    #[test]
    fn host_error_or_silence_negates_the_key() {
        let (dir, t) = host(Some(Err(capsule_protocol::RpcError::new(
            capsule_protocol::Code::NotFound,
            "no helper",
        ))));
        let f = Fake::default();
        assert!(run(
            &f,
            &args(),
            &Host::Unix(dir.path().join("up")),
            Duration::from_secs(5)
        )
        .is_err());
        t.join().unwrap();
        assert_eq!(
            f.calls.borrow()[1],
            format!("negate 77 {NEGATIVE_TIMEOUT_SECS}")
        );

        let (dir, t) = host(None);
        let f = Fake::default();
        let err = run(
            &f,
            &args(),
            &Host::Unix(dir.path().join("up")),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(matches!(err, HelperError::Upcall(_)), "{err}");
        assert_eq!(
            f.calls.borrow()[1],
            format!("negate 77 {NEGATIVE_TIMEOUT_SECS}")
        );
        drop(dir);
        let _ = t.join();
    }

    #[test]
    fn nobody_listening_negates_and_missing_authority_fails_early() {
        let dir = tempdir::Dir::new();
        let f = Fake::default();
        assert!(matches!(
            run(
                &f,
                &args(),
                &Host::Unix(dir.path().join("none")),
                Duration::from_secs(1)
            ),
            Err(HelperError::Connect(_))
        ));
        assert_eq!(
            f.calls.borrow()[1],
            format!("negate 77 {NEGATIVE_TIMEOUT_SECS}")
        );
        let f = Fake {
            deny_authority: true,
            ..Default::default()
        };
        assert!(matches!(
            run(
                &f,
                &args(),
                &Host::Unix(dir.path().join("none")),
                Duration::from_secs(1)
            ),
            Err(HelperError::Key {
                errno: libc::EPERM,
                ..
            })
        ));
        assert!(matches!(
            build_request(&f, &args()[..3]),
            Err(HelperError::Usage)
        ));
    }
}
