//! Tier T1: the vsock device on the capsule VMM with the `vsock_echo` test guest (a polled
//! virtio-vsock driver). A host client connects through the hybrid Unix socket with
//! `CONNECT <port>`, sends 64 KiB of random bytes and checks the echo; the guest's own
//! connection to (CID 2, port P) must reach a host listener at `<uds>_P`.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use capsule_tests::capsule::{capsule_binary, run_with_timeout, ProcessOutcome};
use capsule_tests::guests::{GuestReport, ScratchDir};
use capsule_tests::tier::{run_tier_tests, Tier, TierTest};

const GUEST_PORT: u32 = 1234;
const CONNECT_PORT: u32 = 5000;
const PAYLOAD: usize = 64 * 1024;
/// Only stops a hung VMM; the guest finishes in seconds.
const TIMEOUT: Duration = Duration::from_secs(120);

fn vsock_echo_guest() -> &'static Path {
    Path::new(env!("CAPSULE_GUEST_VSOCK_ECHO"))
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn random_bytes(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Accepts the guest's connection on `listener` and reads it to the end.
fn guest_line(listener: &UnixListener) -> Result<String, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut stream = None;
    wait_for("the guest's connection", TIMEOUT, || {
        match listener.accept() {
            Ok((s, _)) => {
                stream = Some(s);
                true
            }
            Err(_) => false,
        }
    })?;
    let mut s = stream.ok_or("no stream")?;
    s.set_nonblocking(false).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("reading the guest's line: {e}"))?;
    Ok(text)
}

/// Connects through the hybrid socket: `CONNECT <port>` → `OK <host port>`; echoes `payload`.
fn echo_through(uds: &Path, port: u32, payload: &[u8]) -> Result<(), String> {
    let mut s = UnixStream::connect(uds).map_err(|e| format!("connect {}: {e}", uds.display()))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    writeln!(s, "CONNECT {port}").map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        match s.read(&mut b) {
            Ok(1) => line.push(b[0]),
            Ok(_) => return Err("hybrid socket closed before OK (no listener?)".into()),
            Err(e) => return Err(format!("reading OK: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let host_port: u32 = line
        .strip_prefix("OK ")
        .and_then(|p| p.trim_end().parse().ok())
        .ok_or_else(|| format!("bad handshake answer {line:?}"))?;
    if !((1 << 30)..(1 << 31)).contains(&host_port) {
        return Err(format!("host port {host_port} outside [2^30, 2^31)"));
    }
    let mut writer = s.try_clone().map_err(|e| e.to_string())?;
    let data = payload.to_vec();
    let sender = std::thread::spawn(move || writer.write_all(&data));
    let mut echo = vec![0u8; payload.len()];
    let mut got = 0;
    while got < echo.len() {
        match s.read(&mut echo[got..]) {
            Ok(0) => return Err(format!("connection closed after {got} echoed bytes")),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the echo after {got} bytes: {e}")),
        }
    }
    sender
        .join()
        .map_err(|_| "sender panicked")?
        .map_err(|e| format!("sending: {e}"))?;
    if echo != payload {
        let at = echo.iter().zip(payload).position(|(a, b)| a != b);
        return Err(format!(
            "echo differs from what was sent, first at byte {at:?}"
        ));
    }
    Ok(())
}

/// Checks the guest's report and how the VMM ended.
fn check_guest(console: &str, process: &ProcessOutcome) -> Result<(), String> {
    let report = GuestReport::parse(console);
    report
        .expect_all_ok(&["vsock-device", "vsock-connect", "vsock-echo"])
        .map_err(|e| format!("{e}\nconsole:\n{console}\nstderr:\n{}", process.stderr))?;
    if process.timed_out || !process.status.success() {
        return Err(format!(
            "capsule ended with {:?} (timed out: {})\nstderr:\n{}",
            process.status, process.timed_out, process.stderr
        ));
    }
    Ok(())
}

fn echo_on_capsule() -> Result<(), String> {
    let dir = ScratchDir::new("t1-vsock")?;
    let uds: PathBuf = dir.join("v.sock");
    let console = dir.join("console.txt");
    let listener = UnixListener::bind(dir.join(format!("v.sock_{CONNECT_PORT}").as_str()))
        .map_err(|e| format!("host listener: {e}"))?;
    let mut cmd = Command::new(capsule_binary()?);
    cmd.arg("run")
        .arg("--kernel")
        .arg(vsock_echo_guest())
        .arg("--console")
        .arg(&console)
        .arg("--vsock-uds")
        .arg(&uds)
        .arg("--vsock-cid")
        .arg("3")
        .arg("--cmdline")
        .arg(format!(
            "capsule.vsock_port={GUEST_PORT} capsule.vsock_connect={CONNECT_PORT} \
             capsule.vsock_conns=1"
        ));
    let vmm = std::thread::spawn(move || run_with_timeout(&mut cmd, TIMEOUT));

    let host_side = (|| {
        wait_for("the hybrid socket", TIMEOUT, || uds.exists())?;
        let line = guest_line(&listener)?;
        if line != "hello from vsock guest 3\n" {
            return Err(format!("guest-initiated connection sent {line:?}"));
        }
        echo_through(&uds, GUEST_PORT, &random_bytes(PAYLOAD, 0x1234_5678))
    })();
    let process = vmm.join().map_err(|_| "VMM thread panicked")??;
    let console = std::fs::read_to_string(&console).unwrap_or_default();
    host_side.map_err(|e| format!("{e}\nconsole:\n{console}\nstderr:\n{}", process.stderr))?;
    check_guest(&console, &process)
}

fn main() {
    run_tier_tests(vec![TierTest {
        name: "vsock_echo_64k_and_guest_initiated_connection",
        tier: Tier::T1,
        run: echo_on_capsule,
    }]);
}
