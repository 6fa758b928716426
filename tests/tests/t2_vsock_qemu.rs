//! Tier T2 smoke test: the `vsock_echo` test guest on QEMU's microvm (software CPU) with
//! capsule's vsock device served by `capsule vsock-backend` over vhost-user. The host side is
//! the same hybrid Unix socket as with `capsule run`: `CONNECT <port>`, a 64 KiB echo, and the
//! guest's own connection to (CID 2, port P) reaching a listener at `<uds>_P`.
//!
//! The QEMU launcher is private to this file: `tests/src/qemu.rs` does not exist yet.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capsule_tests::capsule::{capsule_binary, run_with_timeout};
use capsule_tests::guests::{GuestReport, ScratchDir, QEMU_EXIT_PASS};
use capsule_tests::tier::{run_tier_tests, Tier, TierTest};

const GUEST_CID: u32 = 5;
const GUEST_PORT: u32 = 1234;
const CONNECT_PORT: u32 = 5001;
const PAYLOAD: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(120);

/// Kills the backend (our own child) when the test ends, however it ends.
struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

fn wait_for(what: &str, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn guest_line(listener: &UnixListener) -> Result<String, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut stream = None;
    wait_for("the guest's connection", || match listener.accept() {
        Ok((s, _)) => {
            stream = Some(s);
            true
        }
        Err(_) => false,
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
    if !line.starts_with("OK ") {
        return Err(format!("bad handshake answer {line:?}"));
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
        return Err("echo differs from what was sent".into());
    }
    Ok(())
}

fn echo_on_qemu() -> Result<(), String> {
    let dir = ScratchDir::new("t2-vsock")?;
    let vhost = dir.join("vhost.sock");
    let uds = dir.join("v.sock");
    let serial = dir.join("serial.txt");
    let listener = UnixListener::bind(dir.join(format!("v.sock_{CONNECT_PORT}").as_str()))
        .map_err(|e| format!("host listener: {e}"))?;
    let backend = Command::new(capsule_binary()?)
        .args(["vsock-backend", "--guest-cid", &GUEST_CID.to_string()])
        .arg("--socket")
        .arg(&vhost)
        .arg("--uds")
        .arg(&uds)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start capsule vsock-backend: {e}"))?;
    let mut backend = Backend(backend);
    wait_for("the vhost-user socket", || vhost.exists())?;

    let guest = Path::new(env!("CAPSULE_GUEST_VSOCK_ECHO"));
    let mut qemu = Command::new("qemu-system-x86_64");
    // microvm's virtio-mmio transports are legacy (version 1) unless told otherwise; capsule's
    // transport and the test guest are virtio 1.x (version 2).
    qemu.args(["-M", "microvm,acpi=off,memory-backend=mem"])
        .args(["-global", "virtio-mmio.force-legacy=false"])
        .args(["-accel", "tcg", "-cpu", "max"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args(["-m", "256M"])
        .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
        .arg("-chardev")
        .arg(format!("socket,id=vu,path={}", vhost.display()))
        .args(["-device", "vhost-user-vsock-device,chardev=vu"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-kernel")
        .arg(guest)
        .arg("-append")
        .arg(format!(
            "capsule.vsock_port={GUEST_PORT} capsule.vsock_connect={CONNECT_PORT} \
             capsule.vsock_conns=1"
        ));
    let command = format!("{qemu:?}");
    let vm = std::thread::spawn(move || run_with_timeout(&mut qemu, TIMEOUT));

    let host_side = (|| {
        let line = guest_line(&listener)?;
        if line != format!("hello from vsock guest {GUEST_CID}\n") {
            return Err(format!("guest-initiated connection sent {line:?}"));
        }
        echo_through(&uds, GUEST_PORT, &random_bytes(PAYLOAD, 0x9e37_79b9))
    })();
    let process = vm.join().map_err(|_| "QEMU thread panicked")??;
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    let backend_alive = matches!(backend.0.try_wait(), Ok(None));
    let describe = || {
        format!(
            "{command}\nQEMU: {} (timed out: {})\nstderr:\n{}\nserial:\n{console}",
            process.status, process.timed_out, process.stderr
        )
    };
    host_side.map_err(|e| format!("{e}\n{}", describe()))?;
    GuestReport::parse(&console)
        .expect_all_ok(&["vsock-device", "vsock-connect", "vsock-echo"])
        .map_err(|e| format!("{e}\n{}", describe()))?;
    if process.timed_out || process.status.code() != Some(QEMU_EXIT_PASS) {
        return Err(format!(
            "expected QEMU exit {QEMU_EXIT_PASS}\n{}",
            describe()
        ));
    }
    if !backend_alive {
        return Err("capsule vsock-backend exited while QEMU ran".into());
    }
    Ok(())
}

fn main() {
    run_tier_tests(vec![TierTest {
        name: "vsock_echo_on_qemu_with_vhost_user_backend",
        tier: Tier::T2,
        run: echo_on_qemu,
    }]);
}
