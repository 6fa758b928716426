//! The KVM virtual machine: `/dev/kvm`, the VM fd, memory slots, in-kernel IRQ chip and PIT.

use std::io;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemoryMmap;

/// Errors while setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("/dev/kvm does not exist: this host has no KVM. Load kvm_intel or kvm_amd, or use a machine with (nested) hardware virtualization")]
    KvmMissing,
    #[error("permission denied opening /dev/kvm: run as root or add your user to the group owning /dev/kvm (`sudo usermod -aG kvm $USER`, then log in again)")]
    KvmPermission,
    #[error("cannot open /dev/kvm")]
    KvmOpen(#[source] io::Error),
    #[error("KVM API version {0} is not supported (need 12)")]
    KvmApiVersion(i32),
    #[error("KVM lacks a required capability: {0}")]
    MissingCapability(&'static str),
    #[error("cannot create the KVM VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("cannot set up the VM ({0})")]
    Setup(&'static str, #[source] kvm_ioctls::Error),
    #[error("cannot register guest memory with KVM")]
    MemorySlot(#[source] kvm_ioctls::Error),
    #[error("cannot read the CPUID KVM supports")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    #[error("cannot register interrupt {gsi} with KVM")]
    Irqfd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot register a queue notification address with KVM")]
    Ioeventfd(#[source] kvm_ioctls::Error),
}

/// Address of the 3-page TSS region KVM needs on Intel hosts, inside the MMIO gap.
const TSS_ADDRESS: usize = 0xfffb_d000;

/// A KVM VM with its memory and interrupt controller set up.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Opens `/dev/kvm` and creates a VM with an in-kernel IRQ chip and PIT.
    pub fn new() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(|e| match e.errno() {
            libc::ENOENT => VmError::KvmMissing,
            libc::EACCES | libc::EPERM => VmError::KvmPermission,
            _ => VmError::KvmOpen(io::Error::from_raw_os_error(e.errno())),
        })?;
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(VmError::KvmApiVersion(version));
        }
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCapability(name));
            }
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        fd.set_tss_address(TSS_ADDRESS)
            .map_err(|e| VmError::Setup("TSS address", e))?;
        fd.create_irq_chip()
            .map_err(|e| VmError::Setup("in-kernel IRQ chip", e))?;
        // The PIT drives no speaker; it is only a timer.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(|e| VmError::Setup("PIT", e))?;
        Ok(Self { kvm, fd })
    }

    /// Largest vCPU count KVM allows for one VM.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// Whether the in-kernel LAPIC emulates the TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER).
    pub fn has_tsc_deadline_timer(&self) -> bool {
        self.kvm.check_extension(Cap::TscDeadlineTimer)
    }

    /// CPUID leaves KVM can expose.
    pub fn supported_cpuid(&self) -> Result<CpuId, VmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VmError::SupportedCpuid)
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Size of the per-vCPU `kvm_run` mapping.
    pub fn vcpu_mmap_size(&self) -> Result<usize, VmError> {
        self.kvm
            .get_vcpu_mmap_size()
            .map_err(|e| VmError::Setup("vCPU mmap size", e))
    }

    /// Registers every region of `mem` as a KVM memory slot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region's host mapping belongs to `mem`, which the caller keeps
            // alive (it is owned by the running VMM) for as long as the VM exists; it is
            // registered exactly once, in a slot number no other region uses.
            unsafe { self.fd.set_user_memory_region(region) }.map_err(VmError::MemorySlot)?;
        }
        Ok(())
    }

    /// Makes a write to `evt` raise interrupt `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }

    /// Makes a 4-byte guest write of `datamatch` to MMIO address `addr` signal `evt` inside
    /// the kernel, without an exit to the VMM.
    pub fn register_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(VmError::Ioeventfd)
    }
}
