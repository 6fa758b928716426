//! The host side of the `vsock_echo` test guest, shared by its tests on every VMM: the guest's
//! own connection to a host listener, and an echo through the hybrid-vsock socket.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn random_bytes(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Polls `f` until it is true, or fails after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
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
pub fn guest_line(listener: &UnixListener, timeout: Duration) -> Result<String, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut stream = None;
    wait_for("the guest's connection", timeout, || {
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
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("reading the guest's line: {e}"))?;
    Ok(text)
}

/// Connects through the hybrid socket (`CONNECT <port>` → `OK <host port>`, the host port in
/// [2^30, 2^31)) and checks that `payload` comes back unchanged.
pub fn echo_through(
    uds: &Path,
    port: u32,
    payload: &[u8],
    timeout: Duration,
) -> Result<(), String> {
    let mut s = UnixStream::connect(uds).map_err(|e| format!("connect {}: {e}", uds.display()))?;
    s.set_read_timeout(Some(timeout))
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
