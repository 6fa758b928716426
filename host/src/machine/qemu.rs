//! The QEMU machine: QEMU's microvm machine with capsule's vsock device served over vhost-user,
//! so host programs use the same hybrid-vsock socket as with capsule's own VMM, and each share
//! as a `vhost-user-fs-device` on its virtiofsd.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use log::{info, warn};

use capsule_vmm::exit::ExitReason;

use super::{Machine, MachineConfig, MachineError};
use crate::console::PanicWatch;

const QEMU: &str = "qemu-system-x86_64";

/// What QEMU may hold beyond guest memory in its cgroup: its translated code (bounded by
/// [`TB_SIZE_MIB`]) and the rest; measured at 95 MiB beyond a 256 MiB guest that filled its
/// memory, 40 MiB of it file pages of its binary and libraries (docs/security.md).
pub const OVERHEAD_MIB: u64 = 256;

/// QEMU's software CPU translation cache, in MiB (QEMU's default is 1 GiB, which a cgroup
/// would have to allow for).
pub const TB_SIZE_MIB: u64 = 128;

/// Kernel parameters for a guest on QEMU microvm: reboot by triple fault, which QEMU run with
/// `-no-reboot` turns into its own exit. QEMU appends the virtio-mmio devices itself.
/// `no_timer_check`: under the software CPU on a busy host the kernel's IO-APIC timer check
/// can miss its ticks and panic ("IO-APIC + timer doesn't work!"); it was seen in a test run.
pub const QEMU_CMDLINE: &str = "console=ttyS0 reboot=t panic=1 pci=off no_timer_check";

/// QEMU's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

/// The full QEMU command line for `config`.
pub fn qemu_args(config: &MachineConfig, accel: Accel, vhost_socket: &Path) -> Vec<String> {
    let mem = format!("{}M", config.memory_mib);
    let mut args: Vec<String> = [
        "-M",
        "microvm,acpi=off,memory-backend=mem,x-option-roms=off,rtc=off",
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        "-m",
        &mem,
        "-smp",
        &config.vcpus.to_string(),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        // microvm's virtio-mmio transports are legacy (version 1) unless told otherwise.
        "-global",
        "virtio-mmio.force-legacy=false",
        "-serial",
        "stdio",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if config.seccomp {
        // QEMU's own seccomp filter: no obsolete calls, no fork/exec, no scheduler or resource
        // changes, and no set*id calls unless QEMU must make them itself for -runas: it
        // installs the filter before it drops to the VM's uid, and a process without
        // capabilities cannot gain any through them.
        let privileges = if config.jail.is_some() {
            "allow"
        } else {
            "deny"
        };
        args.push("-sandbox".into());
        args.push(format!(
            "on,obsolete=deny,elevateprivileges={privileges},spawn=deny,resourcecontrol=deny"
        ));
    }
    if let Some(jail) = &config.jail {
        // QEMU opens everything (kernel, disks, TAP, sockets) as root, then becomes the VM's
        // uid and gid, without supplementary groups or capabilities, before the guest runs.
        args.push("-runas".into());
        args.push(format!("{0}:{0}", jail.uid));
    }
    match accel {
        Accel::Tcg => args.extend([
            "-accel".into(),
            format!("tcg,tb-size={TB_SIZE_MIB}"),
            "-cpu".into(),
            "max".into(),
        ]),
        Accel::Kvm => args.extend(["-accel", "kvm", "-cpu", "host"].map(String::from)),
    }
    args.push("-kernel".into());
    args.push(config.kernel.display().to_string());
    if let Some(initrd) = &config.initrd {
        args.push("-initrd".into());
        args.push(initrd.display().to_string());
    }
    let cmdline = [QEMU_CMDLINE, config.cmdline_extra.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    args.push("-append".into());
    args.push(cmdline);
    args.push("-chardev".into());
    args.push(format!("socket,id=vsock,path={}", vhost_socket.display()));
    // The guest CID comes from the backend (vhost-user config space), not from QEMU.
    args.push("-device".into());
    args.push("vhost-user-vsock-device,chardev=vsock".into());
    for (i, disk) in config.disks.iter().enumerate() {
        args.push("-drive".into());
        args.push(format!(
            "id=disk{i},file={},format=raw,if=none,readonly={}",
            disk.path.display(),
            if disk.read_only { "on" } else { "off" }
        ));
        args.push("-device".into());
        args.push(format!("virtio-blk-device,drive=disk{i}"));
    }
    for (i, nic) in config.nics.iter().enumerate() {
        // The host library made the TAP; QEMU only opens it (with a vnet header).
        args.push("-netdev".into());
        args.push(format!(
            "tap,id=net{i},ifname={},script=no,downscript=no,vhost=off",
            nic.tap
        ));
        args.push("-device".into());
        args.push(format!(
            "virtio-net-device,netdev=net{i},mac={}",
            crate::network::ipam::format_mac(&nic.mac)
        ));
    }
    // virtio-fs over vhost-user: the daemon maps guest memory, which is why the memory backend
    // above is a shared memfd.
    for (i, fs) in config.shares.iter().enumerate() {
        args.push("-chardev".into());
        args.push(format!("socket,id=fs{i},path={}", fs.socket.display()));
        args.push("-device".into());
        args.push(format!("vhost-user-fs-device,chardev=fs{i},tag={}", fs.tag));
    }
    args
}

fn find_qemu() -> Result<std::path::PathBuf, MachineError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(QEMU))
        .find(|p| p.is_file())
        .ok_or(MachineError::QemuMissing(QEMU))
}

/// QEMU's microvm machine with the given CPU.
pub struct QemuMachine(pub Accel);

impl Machine for QemuMachine {
    fn run(&self, config: &MachineConfig) -> Result<(ExitReason, PanicWatch), MachineError> {
        run(config, self.0)
    }
}

/// Runs the guest under QEMU until QEMU exits.
fn run(config: &MachineConfig, accel: Accel) -> Result<(ExitReason, PanicWatch), MachineError> {
    let qemu = find_qemu()?;
    let vhost_socket = config.run_dir.join("vhost-vsock.sock");
    let _ = std::fs::remove_file(&vhost_socket);
    let mut vsock_cfg =
        capsule_vsock::VsockConfig::new(u64::from(config.guest_cid), &config.vsock_uds);
    vsock_cfg.max_connections = capsule_vsock::DEFAULT_MAX_CONNECTIONS;
    let socket = vhost_socket.clone();
    std::thread::Builder::new()
        .name("capsule-vhost-vsock".into())
        .spawn(move || {
            if let Err(e) = capsule_vsock::vhost_user::serve(vsock_cfg, &socket) {
                warn!("vhost-user vsock backend ended: {e}");
            }
        })
        .map_err(|source| MachineError::Spawn {
            what: "the vhost-user vsock backend",
            source,
        })?;
    wait_for_socket(&vhost_socket)?;

    let mut console = super::open_console(&config.console)?;
    let watch = console.watch();

    let args = qemu_args(config, accel, &vhost_socket);
    info!("starting {} {}", qemu.display(), args.join(" "));
    let cgroup = super::cgroup_for(config, OVERHEAD_MIB)?;
    let enter_cgroup = cgroup.as_ref().map(|c| c.enter_fd());
    let mut cmd = Command::new(&qemu);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl(PR_SET_PDEATHSIG) and the write of `cgroup::enter` are async-signal-safe:
    // QEMU gets SIGKILL when the thread that started it (and so the supervisor) dies, even by
    // SIGKILL, and is in the VM's cgroup before it executes.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(fd) = enter_cgroup {
                crate::cgroup::enter(fd)?;
            }
            Ok(())
        });
    }
    let result = cmd
        .spawn()
        .map_err(|source| MachineError::Spawn { what: QEMU, source })
        .and_then(|child| {
            // -runas clears QEMU's parent-death signal: a watchdog takes its place.
            let _watchdog = match &config.jail {
                Some(_) => Some(super::watchdog::Watchdog::start(child.id()).map_err(
                    |source| MachineError::Spawn {
                        what: "QEMU's watchdog",
                        source,
                    },
                )?),
                None => None,
            };
            wait_for_qemu(child, &mut console)
        });
    super::remove_cgroup(cgroup);
    let _ = std::fs::remove_file(&vhost_socket);
    Ok((result?, watch))
}

/// Copies QEMU's serial output to the console log until QEMU exits, and tells why it did.
fn wait_for_qemu(
    mut child: std::process::Child,
    console: &mut crate::console::ConsoleLog,
) -> Result<ExitReason, MachineError> {
    let last_error = child.stderr.take().map(|err| {
        std::thread::spawn(move || {
            // QEMU's messages go on to the supervisor log; the last one explains a failure.
            let mut last = String::new();
            for line in std::io::BufRead::lines(std::io::BufReader::new(err)).map_while(Result::ok)
            {
                eprintln!("{line}");
                if !line.trim().is_empty() {
                    last = line;
                }
            }
            last
        })
    });
    if let Some(mut out) = child.stdout.take() {
        let mut buf = [0u8; 4096];
        loop {
            match out.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(e) = std::io::Write::write_all(console, &buf[..n]) {
                        warn!("cannot write the console log: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("cannot read QEMU's serial output: {e}");
                    break;
                }
            }
        }
    }
    let status = child
        .wait()
        .map_err(|source| MachineError::Spawn { what: QEMU, source })?;
    let last_error = last_error
        .and_then(|t| t.join().ok())
        .filter(|l| !l.is_empty())
        .map(|l| format!(": {l}"))
        .unwrap_or_default();
    let reason = match status.code() {
        // With -no-reboot, a guest reboot (or reset) ends QEMU with status 0.
        Some(0) => ExitReason::Reboot,
        Some(code) => ExitReason::VmmError(format!("{QEMU} exited with status {code}{last_error}")),
        None => ExitReason::VmmError(format!("{QEMU} was killed ({status}){last_error}")),
    };
    Ok(reason)
}

fn wait_for_socket(path: &Path) -> Result<(), MachineError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        if Instant::now() > deadline {
            return Err(MachineError::VhostUser(path.to_path_buf()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Disk;
    use std::path::PathBuf;

    #[test]
    fn command_line_has_shared_memory_vsock_and_disks() {
        let config = MachineConfig {
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initrd".into()),
            cmdline_extra: "quiet".into(),
            vcpus: 2,
            memory_mib: 256,
            vsock_uds: "/s/vsock.sock".into(),
            guest_cid: 3,
            disks: vec![Disk {
                path: PathBuf::from("/img/root.ext4"),
                read_only: true,
            }],
            nics: vec![crate::machine::Nic {
                tap: "capt0a580002".into(),
                mac: [0x0a, 0x58, 10, 88, 0, 2],
            }],
            netns: None,
            shares: vec![crate::machine::FsDevice {
                tag: "capsule-fs0".into(),
                socket: "/s/fs0.sock".into(),
            }],
            console: "/s/console.log".into(),
            run_dir: "/s".into(),
            seccomp: true,
            jail: None,
        };
        let args = qemu_args(&config, Accel::Tcg, Path::new("/s/vhost.sock")).join(" ");
        assert!(args.contains("memory-backend-memfd,id=mem,size=256M,share=on"));
        assert!(
            args.contains("acpi=off"),
            "QEMU only announces virtio-mmio devices without ACPI"
        );
        assert!(args.contains("-no-reboot"));
        assert!(args.contains(
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        ));
        assert!(args.contains("-accel tcg,tb-size=128 -cpu max"));
        assert!(
            args.contains("-append console=ttyS0 reboot=t panic=1 pci=off no_timer_check quiet")
        );
        assert!(args.contains("vhost-user-vsock-device,chardev=vsock"));
        assert!(args.contains("file=/img/root.ext4,format=raw,if=none,readonly=on"));
        assert!(args.contains("-smp 2"));
        assert!(args.contains(
            "-netdev tap,id=net0,ifname=capt0a580002,script=no,downscript=no,vhost=off \
             -device virtio-net-device,netdev=net0,mac=0a:58:0a:58:00:02"
        ));
        assert!(args.contains("-chardev socket,id=fs0,path=/s/fs0.sock"));
        assert!(args.contains("-device vhost-user-fs-device,chardev=fs0,tag=capsule-fs0"));
        assert!(!args.contains("-runas"));
    }

    #[test]
    fn a_jailed_qemu_drops_to_the_vms_uid() {
        let config = MachineConfig {
            kernel: "/k/vmlinux".into(),
            initrd: None,
            cmdline_extra: String::new(),
            vcpus: 1,
            memory_mib: 128,
            vsock_uds: "/s/vsock.sock".into(),
            guest_cid: 3,
            disks: vec![],
            nics: vec![],
            netns: None,
            shares: vec![],
            console: "/s/console.log".into(),
            run_dir: "/s".into(),
            seccomp: true,
            jail: Some(crate::jail::Jail {
                uid: 900_123,
                root: "/s/jail".into(),
                sockets: "/s".into(),
                cgroup: None,
            }),
        };
        let args = qemu_args(&config, Accel::Tcg, Path::new("/s/vhost.sock")).join(" ");
        assert!(args.contains("-runas 900123:900123"));
        // QEMU's filter is on before it drops privileges: it must allow the set*id calls.
        assert!(args.contains("-sandbox on,obsolete=deny,elevateprivileges=allow,spawn=deny"));
        assert!(args.contains("-accel tcg,tb-size=128"));
    }
}
