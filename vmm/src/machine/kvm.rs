//! The KVM backend: capsule's own VMM, in this process.

use super::{MachineConfig, MachineError};
use crate::builder::{MicroVm, VmConfig};
use crate::console::PanicWatch;
use crate::devices::virtio::block::BlockConfig;
use crate::exit::ExitReason;
use crate::host::{GuestProfile, KvmFlavor};

/// Builds the VM for `config` and runs it until the guest ends.
pub fn run(config: &MachineConfig) -> Result<(ExitReason, PanicWatch), MachineError> {
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
        vsock: Some(vsock::VsockConfig::new(
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
        profile: GuestProfile::for_flavor(KvmFlavor::detect()),
    })?;
    Ok((vm.run(), watch))
}
