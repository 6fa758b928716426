//! The KVM machine: capsule's own VMM, in this process.

use capsule_vmm::builder::{MicroVm, VmConfig};
use capsule_vmm::devices::virtio::block::BlockConfig;
use capsule_vmm::devices::virtio::fs::FsConfig;
use capsule_vmm::exit::ExitReason;
use capsule_vmm::kvm_flavor::{GuestProfile, KvmFlavor};

use super::{Machine, MachineConfig, MachineError};
use crate::console::PanicWatch;

/// capsule's VMM, run on a thread of the calling process.
pub struct KvmMachine;

impl Machine for KvmMachine {
    fn run(&self, config: &MachineConfig) -> Result<(ExitReason, PanicWatch), MachineError> {
        run(config)
    }
}

/// Builds the VM for `config` and runs it until the guest ends.
fn run(config: &MachineConfig) -> Result<(ExitReason, PanicWatch), MachineError> {
    let console = super::open_console(&config.console)?;
    let watch = console.watch();
    let vm = MicroVm::build(VmConfig {
        kernel: config.kernel.clone(),
        initrd: config.initrd.clone(),
        cmdline_extra: Some(config.cmdline_extra.clone()).filter(|s| !s.is_empty()),
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
        console: Box::new(console),
        console_input: None,
        rng: true,
        vsock: Some(capsule_vsock::VsockConfig::new(
            u64::from(config.guest_cid),
            &config.vsock_uds,
        )),
        disks: config
            .disks
            .iter()
            .map(|d| BlockConfig {
                path: d.path.clone(),
                read_only: d.read_only,
                direct: false,
                id: None,
            })
            .collect(),
        fs: config
            .shares
            .iter()
            .map(|s| FsConfig {
                tag: s.tag.clone(),
                socket: s.socket.clone(),
            })
            .collect(),
        profile: GuestProfile::for_flavor(KvmFlavor::detect()),
    })?;
    Ok((vm.run(), watch))
}
