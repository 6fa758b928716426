//! One vCPU: its boot state and the thread that runs it, dispatching port and MMIO exits to
//! the buses and reporting the exit that ends the VM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use kvm_bindings::{
    CpuId, KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use log::{debug, info, warn};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::vm::Vm;
use crate::arch::regs::{self, BootMode};
use crate::devices::bus::Bus;
use crate::exit::ExitReason;
use crate::memory::GuestMemoryMmap;

/// Errors while creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    #[error("cannot set {what} of vCPU {index}")]
    Configure {
        index: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM accepted only {set} of {wanted} boot MSRs on vCPU {index}")]
    Msrs {
        index: u8,
        set: usize,
        wanted: usize,
    },
    #[error("cannot write boot state of vCPU {0}")]
    BootState(u8, #[source] regs::RegsError),
}

/// How the VM ended, shared by all vCPU threads and the device thread: the first reason
/// reported wins, and reporting wakes the VMM's event loop through `evt`.
pub struct ExitState {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
    stopping: AtomicBool,
}

impl ExitState {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            stopping: AtomicBool::new(false),
        })
    }

    /// Records `reason` unless another one was recorded first.
    pub fn report(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
            if let Err(e) = self.evt.write(1) {
                warn!("cannot wake the VMM to report the VM's end: {e}");
            }
        }
    }

    pub fn take(&self) -> Option<ExitReason> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Tells vCPU threads to leave their run loops at the next exit.
    pub fn request_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn stop_requested(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// A configured vCPU, ready to run on its own thread.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

// LAPIC local vector table registers and delivery modes (Intel SDM 10.5.1).
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

impl Vcpu {
    pub fn new(vm: &Vm, index: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Create(index, e))?;
        Ok(Self { index, fd })
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    /// The vCPU's TSC frequency in kHz, when KVM knows it.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.fd.get_tsc_khz().ok().filter(|khz| *khz > 0)
    }

    fn configure_err(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        let index = self.index;
        move |source| VcpuError::Configure {
            index,
            what,
            source,
        }
    }

    /// Sets CPUID, MSRs and LAPIC wiring; the boot CPU also gets the entry state for `mode`.
    /// The other vCPUs wait for the guest's INIT/SIPI, as on real hardware.
    pub fn configure(
        &self,
        mem: &GuestMemoryMmap,
        mode: BootMode,
        cpuid: &CpuId,
    ) -> Result<(), VcpuError> {
        self.fd
            .set_cpuid2(cpuid)
            .map_err(self.configure_err("CPUID"))?;
        let msrs = regs::boot_msrs().map_err(|e| VcpuError::BootState(self.index, e))?;
        let set = self
            .fd
            .set_msrs(&msrs)
            .map_err(self.configure_err("MSRs"))?;
        if set != msrs.as_slice().len() {
            return Err(VcpuError::Msrs {
                index: self.index,
                set,
                wanted: msrs.as_slice().len(),
            });
        }
        self.set_lint()?;
        if self.index == 0 {
            let mut sregs = self.fd.get_sregs().map_err(self.configure_err("sregs"))?;
            regs::setup_sregs(mem, mode, &mut sregs)
                .map_err(|e| VcpuError::BootState(self.index, e))?;
            self.fd
                .set_sregs(&sregs)
                .map_err(self.configure_err("sregs"))?;
            self.fd
                .set_regs(&regs::boot_regs(mode))
                .map_err(self.configure_err("registers"))?;
            self.fd
                .set_fpu(&regs::boot_fpu())
                .map_err(self.configure_err("FPU"))?;
        }
        Ok(())
    }

    /// Routes the PIC through LINT0 (ExtINT) and NMIs through LINT1, the virtual-wire setup the
    /// MP table announces.
    fn set_lint(&self) -> Result<(), VcpuError> {
        let mut lapic = self.fd.get_lapic().map_err(self.configure_err("LAPIC"))?;
        for (reg, mode) in [
            (APIC_LVT_LINT0, APIC_MODE_EXTINT),
            (APIC_LVT_LINT1, APIC_MODE_NMI),
        ] {
            let bytes = &mut lapic.regs[reg..reg + 4];
            let mut value = u32::from_le_bytes([
                bytes[0] as u8,
                bytes[1] as u8,
                bytes[2] as u8,
                bytes[3] as u8,
            ]);
            value = (value & !0x700) | (mode << 8);
            for (dst, src) in bytes.iter_mut().zip(value.to_le_bytes()) {
                *dst = src as _;
            }
        }
        self.fd
            .set_lapic(&lapic)
            .map_err(self.configure_err("LAPIC"))
    }

    /// Runs the vCPU until the VM ends or a stop is requested; reports why it ended.
    pub fn run(mut self, io_bus: &Bus, mmio_bus: &Bus, mem: &GuestMemoryMmap, exit: &ExitState) {
        if self.index == 0 {
            if let Some(cpu) = process_cpu_time() {
                // The wall-clock stamp lets a harness that noted when it spawned the VMM
                // compute the time to the first guest instruction.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                info!(
                    "vCPU 0 enters the guest after {:.3} ms of VMM CPU time, at {}.{:06} s since the epoch",
                    cpu.as_secs_f64() * 1e3,
                    now.as_secs(),
                    now.subsec_micros()
                );
            }
        }
        while !exit.stop_requested() {
            let reason = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !io_bus.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                    continue;
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    if !io_bus.write(u64::from(port), data) {
                        debug!("vCPU {}: write to unhandled port {port:#x}", self.index);
                    }
                    continue;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !mmio_bus.read(addr, data) {
                        data.fill(0xff);
                    }
                    continue;
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if !mmio_bus.write(addr, data) {
                        debug!("vCPU {}: write to unhandled MMIO {addr:#x}", self.index);
                    }
                    continue;
                }
                Ok(VcpuExit::Hlt) => continue,
                Ok(VcpuExit::Shutdown) => ExitReason::TripleFault { vcpu: self.index },
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => ExitReason::Reboot,
                    KVM_SYSTEM_EVENT_CRASH => ExitReason::GuestCrash { vcpu: self.index },
                    other => ExitReason::VmmError(format!(
                        "vCPU {}: unknown KVM system event {other}",
                        self.index
                    )),
                },
                Ok(VcpuExit::InternalError) => self.internal_error(mem),
                Ok(VcpuExit::FailEntry(reason, cpu)) => ExitReason::VmmError(format!(
                    "vCPU {}: KVM could not enter the guest (hardware reason {reason:#x}, host CPU {cpu})",
                    self.index
                )),
                Ok(other) => ExitReason::VmmError(format!(
                    "vCPU {}: unexpected KVM exit {other:?}",
                    self.index
                )),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => ExitReason::VmmError(format!("vCPU {}: KVM_RUN failed: {e}", self.index)),
            };
            exit.report(reason);
            return;
        }
    }

    /// Describes a KVM_EXIT_INTERNAL_ERROR: suberror, RIP and the bytes of the instruction the
    /// emulator gave up on (from KVM when it provides them, else read from guest memory).
    fn internal_error(&mut self, mem: &GuestMemoryMmap) -> ExitReason {
        let run = self.fd.get_kvm_run();
        // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, for which `internal` is the union
        // member KVM filled in; it is plain data, valid for any bit pattern.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let ndata = (internal.ndata as usize).min(internal.data.len());
        let mut insn = Vec::new();
        if internal.suberror == KVM_INTERNAL_ERROR_EMULATION
            && ndata >= 3
            && internal.data[0] & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)
                != 0
        {
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&internal.data[1].to_le_bytes());
            raw[8..].copy_from_slice(&internal.data[2].to_le_bytes());
            let len = usize::from(raw[0]).min(15);
            insn.extend_from_slice(&raw[1..1 + len]);
        }
        let regs = self.fd.get_regs().ok();
        let rip = regs.map(|r| r.rip);
        if insn.is_empty() {
            if let (Some(rip), Ok(sregs)) = (rip, self.fd.get_sregs()) {
                let linear = sregs.cs.base.wrapping_add(rip);
                let phys = match self.fd.translate_gva(linear) {
                    Ok(t) if t.valid != 0 => Some(t.physical_address),
                    // Paging off: linear addresses are physical.
                    _ if sregs.cr0 & (1 << 31) == 0 => Some(linear),
                    _ => None,
                };
                if let Some(phys) = phys {
                    let mut bytes = [0u8; 15];
                    if mem.read_slice(&mut bytes, GuestAddress(phys)).is_ok() {
                        insn.extend_from_slice(&bytes);
                    }
                }
            }
        }
        ExitReason::KvmInternalError {
            vcpu: self.index,
            suberror: internal.suberror,
            rip,
            insn,
        }
    }
}

/// CPU time the whole VMM process has used so far (all threads, user and system).
pub fn process_cpu_time() -> Option<std::time::Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}
