//! Tier T1: the vsock device on the capsule VMM with the `vsock_echo` test guest (a polled
//! virtio-vsock driver). A host client connects through the hybrid Unix socket with
//! `CONNECT <port>`, sends 64 KiB of random bytes and checks the echo; the guest's own
//! connection to (CID 2, port P) must reach a host listener at `<uds>_P`.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use capsule_tests::capsule::{capsule_binary, run_with_timeout, ProcessOutcome};
use capsule_tests::guests::{GuestReport, ScratchDir};
use capsule_tests::tier::run_backend_tests;
use capsule_tests::tiny_guest_tests_on_kvm;
use capsule_tests::vsock_echo::{echo_through, guest_line, random_bytes, wait_for};

const GUEST_PORT: u32 = 1234;
const CONNECT_PORT: u32 = 5000;
const PAYLOAD: usize = 64 * 1024;
/// Only stops a hung VMM; the guest finishes in seconds.
const TIMEOUT: Duration = Duration::from_secs(120);

fn vsock_echo_guest() -> &'static Path {
    Path::new(env!("CAPSULE_GUEST_VSOCK_ECHO"))
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
        let line = guest_line(&listener, TIMEOUT)?;
        if line != "hello from vsock guest 3\n" {
            return Err(format!("guest-initiated connection sent {line:?}"));
        }
        echo_through(
            &uds,
            GUEST_PORT,
            &random_bytes(PAYLOAD, 0x1234_5678),
            TIMEOUT,
        )
    })();
    let process = vmm.join().map_err(|_| "VMM thread panicked")??;
    let console = std::fs::read_to_string(&console).unwrap_or_default();
    host_side.map_err(|e| format!("{e}\nconsole:\n{console}\nstderr:\n{}", process.stderr))?;
    check_guest(&console, &process)
}

fn main() {
    run_backend_tests(tiny_guest_tests_on_kvm![
        "vsock_echo_64k_and_guest_initiated_connection" => echo_on_capsule,
    ]);
}
