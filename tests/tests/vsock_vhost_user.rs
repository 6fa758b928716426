//! Tier T2 smoke test: the `vsock_echo` test guest on QEMU's microvm (software CPU) with
//! capsule's vsock device served by `capsule vsock-backend` over vhost-user. The host side is
//! the same hybrid Unix socket as with `capsule run`: `CONNECT <port>`, a 64 KiB echo, and the
//! guest's own connection to (CID 2, port P) reaching a listener at `<uds>_P`.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use capsule_tests::capsule::{capsule_binary, run_with_timeout};
use capsule_tests::guests::{GuestReport, ScratchDir, QEMU_EXIT_PASS};
use capsule_tests::tier::{run_tier_tests, Tier, TierTest};
use capsule_tests::vsock_echo::{echo_through, guest_line, random_bytes, wait_for};

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
    wait_for("the vhost-user socket", TIMEOUT, || vhost.exists())?;

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
        let line = guest_line(&listener, TIMEOUT)?;
        if line != format!("hello from vsock guest {GUEST_CID}\n") {
            return Err(format!("guest-initiated connection sent {line:?}"));
        }
        echo_through(
            &uds,
            GUEST_PORT,
            &random_bytes(PAYLOAD, 0x9e37_79b9),
            TIMEOUT,
        )
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
