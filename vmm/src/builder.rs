//! Assembles a microVM from a [`VmConfig`] and runs it until it ends.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::CpuId;
use log::{info, warn};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::boot::{self, InitrdPlacement};
use crate::arch::cpuid::{self, describe_timer_features, vcpu_cpuid, TimerCaps};
use crate::arch::layout::{CMDLINE_ADDR, IRQ_MAX, VIRTIO_IRQ_BASE, VIRTIO_MMIO_BASE};
use crate::arch::mptable::{self, MAX_CPUS};
use crate::arch::regs::BootMode;
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::i8042::{I8042, I8042_DATA_PORT, I8042_PORT_LEN};
use crate::devices::legacy::serial::{
    ConsoleInput, ConsoleSink, SerialConsole, COM1_IRQ, COM1_PORT, COM1_PORT_LEN,
};
use crate::devices::legacy::EventFdTrigger;
use crate::devices::virtio::block::{Block, BlockConfig, BlockError};
use crate::devices::virtio::fs::{Fs, FsConfig, FsError};
use crate::devices::virtio::mmio::{
    MmioError, MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET,
};
use crate::devices::virtio::net::{Net, NetConfig, NetError};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{IrqTrigger, VirtioDevice};
use crate::exit::{error_chain, ExitReason};
use crate::kvm_flavor::GuestProfile;
use crate::loader::{self, KernelEntry, KernelFormat, LoaderError};
use crate::memory::{self, GuestMemoryMmap, MemoryError};
use crate::seccomp::{self, ThreadKind};
use crate::vstate::vcpu::{process_cpu_time, ExitState, Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError};

/// Kernel parameters every capsule guest gets: console on the serial port, reboot through the
/// keyboard controller (which ends the VM), no PCI probing, no i8042 port probing.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// What to boot and with which resources.
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Appended to [`DEFAULT_CMDLINE`] and the profile's parameters.
    pub cmdline_extra: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub console: ConsoleSink,
    /// Host input for the serial console (typed into the guest), if any.
    pub console_input: Option<std::fs::File>,
    /// Attach a virtio-rng device.
    pub rng: bool,
    /// Attach a virtio-vsock device with this guest CID and hybrid Unix socket.
    pub vsock: Option<capsule_vsock::VsockConfig>,
    /// virtio-blk devices, in the order the guest sees them (vda, vdb, ...).
    pub disks: Vec<BlockConfig>,
    /// virtio-net devices on existing host TAPs, in the order the guest names them (eth0,
    /// eth1, ...).
    pub nics: Vec<NetConfig>,
    /// virtio-fs devices on vhost-user backends; with any, guest memory is a shared memfd.
    pub fs: Vec<FsConfig>,
    pub profile: GuestProfile,
    /// Run each thread under its seccomp filter (`crate::seccomp`); off only for debugging.
    pub seccomp: bool,
}

/// Errors while building a microVM. Each names the input or the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("--cpus must be at least 1")]
    NoVcpus,
    #[error("--cpus {requested} is more than {max}, the most vCPUs {limit}")]
    TooManyVcpus {
        requested: u32,
        max: usize,
        limit: &'static str,
    },
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error("the kernel command line is {len} bytes, more than the kernel's limit of {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("cannot write boot information")]
    BootInfo(#[from] boot::BootInfoError),
    #[error("cannot write the MP table")]
    Mptable(#[from] mptable::MptableError),
    #[error("cannot write the kernel command line to guest memory")]
    Cmdline(#[source] vm_memory::GuestMemoryError),
    #[error("cannot place a device")]
    Bus(#[from] BusError),
    #[error("cannot create a virtio transport")]
    Mmio(#[from] MmioError),
    #[error("no interrupt line left for another virtio device")]
    OutOfIrqs,
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cannot build the vCPU's CPUID")]
    Cpuid(#[from] cpuid::CpuidError),
    #[error("cannot create {0}")]
    Resource(&'static str, #[source] std::io::Error),
    #[error("cannot set up the event loop")]
    EventManager(#[source] event_manager::Error),
    #[error("cannot create the vsock device")]
    Vsock(#[source] capsule_vsock::muxer::MuxerError),
    #[error("cannot attach a virtio-blk disk")]
    Disk(#[source] BlockError),
    #[error("cannot attach a virtio-net interface")]
    Nic(#[source] NetError),
    #[error("cannot attach a virtio-fs device")]
    Fs(#[source] FsError),
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Stack of the short-lived thread that creates the VM: a few ioctls, no deep calls.
const VM_SETUP_STACK: usize = 64 << 10;

/// Loads the kernel, then the initrd above it.
fn load_guest(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initrd: Option<&Path>,
) -> Result<(loader::LoadedKernel, Option<InitrdPlacement>), LoaderError> {
    let loaded = loader::load_kernel(mem, kernel)?;
    let initrd = initrd
        .map(|path| loader::load_initrd(mem, &loaded, path))
        .transpose()?;
    Ok((loaded, initrd))
}

/// A built microVM, ready to run.
pub struct MicroVm {
    // `vm` owns the KVM fd the vCPUs and memory slots belong to; it must outlive both.
    _vm: Vm,
    mem: GuestMemoryMmap,
    vcpus: Vec<Vcpu>,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    events: EventManager<Subscriber>,
    exit: Arc<ExitState>,
    summary: String,
    seccomp: bool,
}

/// Hands out virtio-mmio windows and interrupt lines, and collects their command-line entries.
struct VirtioSlots {
    next_addr: u64,
    next_irq: u32,
    cmdline: Vec<String>,
}

impl VirtioSlots {
    fn new() -> Self {
        Self {
            next_addr: VIRTIO_MMIO_BASE,
            next_irq: VIRTIO_IRQ_BASE,
            cmdline: Vec::new(),
        }
    }

    fn take(&mut self) -> Result<(u64, u32), BuildError> {
        if self.next_irq > IRQ_MAX {
            return Err(BuildError::OutOfIrqs);
        }
        let slot = (self.next_addr, self.next_irq);
        self.cmdline.push(format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            MMIO_WINDOW_SIZE >> 10,
            slot.0,
            slot.1
        ));
        self.next_addr += MMIO_WINDOW_SIZE;
        self.next_irq += 1;
        Ok(slot)
    }
}

/// Watches the VM-end event and the i8042 reset line on the event thread.
struct Lifecycle {
    exit: Arc<ExitState>,
    reset_evt: EventFd,
}

const LIFECYCLE_EXIT: u32 = 0;
const LIFECYCLE_RESET: u32 = 1;

impl MutEventSubscriber for Lifecycle {
    fn init(&mut self, ops: &mut EventOps) {
        for (fd, data) in [
            (self.exit.eventfd(), LIFECYCLE_EXIT),
            (&self.reset_evt, LIFECYCLE_RESET),
        ] {
            if let Err(e) = ops.add(Events::with_data(fd, data, EventSet::IN)) {
                // Without these the VM could never end: make it end now instead.
                self.exit.report(ExitReason::VmmError(format!(
                    "cannot watch VM lifecycle events: {e}"
                )));
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == LIFECYCLE_RESET {
            let _ = self.reset_evt.read();
            self.exit.report(ExitReason::Reboot);
        }
        self.exit.request_stop();
    }
}

fn eventfd(what: &'static str) -> Result<EventFd, BuildError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|e| BuildError::Resource(what, e))
}

/// CPU and wall time of each set-up step before the first KVM_RUN, logged once the VM is
/// built: the breakdown that says where a slow start went.
struct StartupClock {
    wall: Instant,
    last_wall: Duration,
    last_cpu: Duration,
    steps: Vec<String>,
}

impl StartupClock {
    fn start() -> Self {
        let cpu = process_cpu_time().unwrap_or_default();
        Self {
            wall: Instant::now(),
            last_wall: Duration::ZERO,
            last_cpu: cpu,
            // Everything the process did before building: exec, loading, argument parsing.
            steps: vec![format!("before-build {:.2}", cpu.as_secs_f64() * 1e3)],
        }
    }

    /// Ends step `name`: records the CPU and wall time since the previous step ended.
    fn step(&mut self, name: &str) {
        let wall = self.wall.elapsed();
        let cpu = process_cpu_time().unwrap_or_default();
        self.steps.push(format!(
            "{name} {:.2}/{:.2}",
            (cpu.saturating_sub(self.last_cpu)).as_secs_f64() * 1e3,
            (wall - self.last_wall).as_secs_f64() * 1e3
        ));
        (self.last_wall, self.last_cpu) = (wall, cpu);
    }

    /// One line: every step as `name cpu/wall` in milliseconds.
    fn summary(&self) -> String {
        format!(
            "set-up steps (CPU/wall ms): {}; built after {:.2} ms of CPU",
            self.steps.join(", "),
            self.last_cpu.as_secs_f64() * 1e3
        )
    }
}

impl MicroVm {
    /// Creates the VM, loads the guest and wires up devices, without running anything.
    pub fn build(config: VmConfig) -> Result<Self, BuildError> {
        if config.vcpus == 0 {
            return Err(BuildError::NoVcpus);
        }
        if config.memory_mib == 0 {
            return Err(MemoryError::Zero.into());
        }
        let mut clock = StartupClock::start();
        let vcpu_count = u8::try_from(config.vcpus)
            .ok()
            .filter(|n| *n <= MAX_CPUS)
            .ok_or(BuildError::TooManyVcpus {
                requested: config.vcpus,
                max: MAX_CPUS.into(),
                limit: "an MP table can describe",
            })?;
        // A vhost-user backend maps guest memory itself: only then is it a shared memfd
        // (anonymous memory otherwise, as before).
        let mem = if config.fs.is_empty() {
            memory::create_guest_memory(config.memory_mib)?
        } else {
            memory::create_shared_guest_memory(config.memory_mib)?
        };
        clock.step("memory");

        // Creating the VM mostly waits in the kernel (SRCU grace periods when the IRQ routing
        // and the memory slots are set, KVM's worker threads starting) rather than computing:
        // it runs on a second thread while this one fills guest memory with the kernel and
        // initrd, which need only the mapping.
        let create_vm = || -> Result<(Vm, CpuId), VmError> {
            let vm = Vm::new()?;
            vm.register_memory(&mem)?;
            let supported = vm.supported_cpuid()?;
            Ok((vm, supported))
        };
        let (created, loaded) = std::thread::scope(|scope| {
            let vm_thread = std::thread::Builder::new()
                .name("capsule-vm-setup".into())
                .stack_size(VM_SETUP_STACK)
                .spawn_scoped(scope, create_vm);
            let loaded = load_guest(&mem, &config.kernel, config.initrd.as_deref());
            let created = match vm_thread {
                Ok(handle) => handle.join().map_err(|_| {
                    BuildError::Resource(
                        "the VM (its set-up thread panicked)",
                        std::io::Error::other("panic"),
                    )
                }),
                // No second thread: the same work, one after the other.
                Err(_) => Ok(create_vm()),
            };
            (created, loaded)
        });
        // A host without usable KVM is the more fundamental problem: report it first.
        let (vm, supported) = created??;
        let (kernel, initrd) = loaded?;
        clock.step("kernel+initrd, VM alongside");
        if config.vcpus as usize > vm.max_vcpus() {
            return Err(BuildError::TooManyVcpus {
                requested: config.vcpus,
                max: vm.max_vcpus(),
                limit: "KVM allows on this host",
            });
        }

        let mut io_bus = Bus::new();
        let mut mmio_bus = Bus::new();
        let mut events = EventManager::<Subscriber>::new().map_err(BuildError::EventManager)?;
        let exit = Arc::new(ExitState::new().map_err(|e| BuildError::Resource("exit event", e))?);

        let serial_irq = eventfd("serial interrupt")?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)?;
        let (serial, input_rearm) =
            SerialConsole::new(EventFdTrigger::new(serial_irq), config.console)
                .map_err(|e| BuildError::Resource("serial console", e))?;
        let serial = Arc::new(Mutex::new(serial));
        io_bus.insert(COM1_PORT, COM1_PORT_LEN, serial.clone())?;
        if let Some(input) = config.console_input {
            events.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(
                serial,
                input,
                input_rearm,
            ))));
        }

        let reset_evt = eventfd("reset event")?;
        let i8042 = I8042::new(EventFdTrigger::new(
            reset_evt
                .try_clone()
                .map_err(|e| BuildError::Resource("reset event", e))?,
        ));
        io_bus.insert(I8042_DATA_PORT, I8042_PORT_LEN, Arc::new(Mutex::new(i8042)))?;
        events.add_subscriber(Arc::new(Mutex::new(Lifecycle {
            exit: exit.clone(),
            reset_evt,
        })));

        let mut slots = VirtioSlots::new();
        if config.rng {
            let rng = Arc::new(Mutex::new(
                Rng::new().map_err(|e| BuildError::Resource("virtio-rng", e))?,
            ));
            attach_virtio(&vm, &mem, &mut mmio_bus, &mut events, &mut slots, rng)?;
        }
        if let Some(cfg) = config.vsock {
            let vsock = Arc::new(Mutex::new(Vsock::new(cfg).map_err(BuildError::Vsock)?));
            attach_virtio(&vm, &mem, &mut mmio_bus, &mut events, &mut slots, vsock)?;
        }
        for disk in &config.disks {
            let block = Block::new(disk).map_err(BuildError::Disk)?;
            attach_virtio(
                &vm,
                &mem,
                &mut mmio_bus,
                &mut events,
                &mut slots,
                Arc::new(Mutex::new(block)),
            )?;
        }
        // Linux probes virtio-mmio devices in command-line order, so eth0 is the first nic.
        for nic in &config.nics {
            let net = Net::new(nic).map_err(BuildError::Nic)?;
            attach_virtio(
                &vm,
                &mem,
                &mut mmio_bus,
                &mut events,
                &mut slots,
                Arc::new(Mutex::new(net)),
            )?;
        }

        for fs in &config.fs {
            let fs = Fs::new(fs).map_err(BuildError::Fs)?;
            attach_virtio(
                &vm,
                &mem,
                &mut mmio_bus,
                &mut events,
                &mut slots,
                Arc::new(Mutex::new(fs)),
            )?;
        }

        clock.step("devices");

        let cmdline = [
            DEFAULT_CMDLINE,
            config.profile.cmdline(),
            &slots.cmdline.join(" "),
            config.cmdline_extra.as_deref().unwrap_or(""),
        ]
        .iter()
        .filter(|part| !part.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
        if cmdline.len() + 1 > kernel.cmdline_max {
            return Err(BuildError::CmdlineTooLong {
                len: cmdline.len() + 1,
                max: kernel.cmdline_max,
            });
        }
        loader::write_cmdline(&mem, CMDLINE_ADDR, &cmdline).map_err(BuildError::Cmdline)?;

        let e820 = boot::e820_map(&mem);
        let mode = match kernel.entry {
            KernelEntry::Pvh(entry) => BootMode::Pvh {
                entry,
                start_info: boot::write_pvh_start_info(&mem, initrd, &e820)?,
            },
            KernelEntry::Linux64(entry) => {
                boot::write_zero_page(&mem, kernel.setup_header, cmdline.len() + 1, initrd, &e820)?;
                BootMode::Linux64 { entry }
            }
        };
        mptable::write_mptable(&mem, vcpu_count)?;
        clock.step("boot-info");

        let tsc_deadline = vm.has_tsc_deadline_timer();
        let mut timer_features = String::new();
        let vcpus = (0..vcpu_count)
            .map(|index| {
                let vcpu = Vcpu::new(&vm, index)?;
                let caps = TimerCaps {
                    tsc_deadline,
                    tsc_khz: vcpu.tsc_khz(),
                };
                let cpuid = vcpu_cpuid(&supported, index, vcpu_count, caps)?;
                if index == 0 {
                    timer_features = describe_timer_features(&cpuid);
                }
                vcpu.configure(&mem, mode, &cpuid)?;
                Ok(vcpu)
            })
            .collect::<Result<Vec<_>, BuildError>>()?;
        clock.step("vcpus");
        info!("{}", clock.summary());
        info!("guest timer features: {timer_features}");

        let summary = format!(
            "{} kernel via {}, {} vCPU(s), {} MiB, guest profile {}",
            match kernel.format {
                KernelFormat::Elf => "ELF",
                KernelFormat::BzImage => "bzImage",
            },
            match mode {
                BootMode::Pvh { .. } => "PVH",
                BootMode::Linux64 { .. } => "the 64-bit boot protocol",
            },
            config.vcpus,
            config.memory_mib,
            config.profile.name(),
        );
        Ok(Self {
            _vm: vm,
            mem,
            vcpus,
            io_bus: Arc::new(io_bus),
            mmio_bus: Arc::new(mmio_bus),
            events,
            exit,
            summary,
            seccomp: config.seccomp,
        })
    }

    /// One line describing what was built.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// Runs the VM until it ends and returns why.
    pub fn run(mut self) -> ExitReason {
        if let Err(e) = register_signal_handler(SIGRTMIN(), kick_handler) {
            return ExitReason::VmmError(format!(
                "cannot install the vCPU kick signal handler: {e}"
            ));
        }
        if self.seccomp {
            if let Err(e) = seccomp::install_violation_handler() {
                return ExitReason::VmmError(format!("{e}"));
            }
        }
        let seccomp_on = self.seccomp;
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for vcpu in self.vcpus.drain(..) {
            let (io, mmio, mem, exit) = (
                self.io_bus.clone(),
                self.mmio_bus.clone(),
                self.mem.clone(),
                self.exit.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("capsule-vcpu{}", vcpu.index()))
                .spawn(move || {
                    if seccomp_on {
                        if let Err(e) = seccomp::install(ThreadKind::Vcpu) {
                            exit.report(ExitReason::VmmError(error_chain(&e)));
                            exit.request_stop();
                            return;
                        }
                    }
                    vcpu.run(&io, &mmio, &mem, &exit)
                });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    self.exit.report(ExitReason::VmmError(format!(
                        "cannot start a vCPU thread: {e}"
                    )));
                    self.exit.request_stop();
                }
            }
        }
        info!("VM running: {}", self.summary);
        if self.seccomp {
            if let Err(e) = seccomp::install(ThreadKind::EventLoop) {
                self.exit.report(ExitReason::VmmError(error_chain(&e)));
                self.exit.request_stop();
            }
        } else {
            warn!("seccomp filters are off (--no-seccomp): the VMM's threads may make any system call");
        }
        while !self.exit.stop_requested() {
            if let Err(e) = self.events.run() {
                self.exit
                    .report(ExitReason::VmmError(format!("event loop failed: {e}")));
                self.exit.request_stop();
            }
        }
        stop_vcpus(threads);
        self.exit
            .take()
            .unwrap_or_else(|| ExitReason::VmmError("the VM stopped without a reason".into()))
    }
}

/// Places a virtio device on the MMIO bus with its own interrupt line and queue notification
/// eventfds, and gives it to the event loop.
fn attach_virtio<D>(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    events: &mut EventManager<Subscriber>,
    slots: &mut VirtioSlots,
    device: Arc<Mutex<D>>,
) -> Result<(), BuildError>
where
    D: VirtioDevice + MutEventSubscriber + 'static,
{
    let (addr, irq_line) = slots.take()?;
    let irq = Arc::new(IrqTrigger::new().map_err(|e| BuildError::Resource("virtio interrupt", e))?);
    vm.register_irqfd(irq.eventfd(), irq_line)?;
    let transport = MmioTransport::new(mem.clone(), device.clone(), irq)?;
    for (index, evt) in transport.queue_evts().iter().enumerate() {
        vm.register_mmio_ioevent(evt, addr + QUEUE_NOTIFY_OFFSET, index as u32)?;
    }
    mmio_bus.insert(addr, MMIO_WINDOW_SIZE, Arc::new(Mutex::new(transport)))?;
    events.add_subscriber(device);
    Ok(())
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only interrupts KVM_RUN (which then returns EINTR); the vCPU loop checks the stop flag.
}

/// Kicks every vCPU out of KVM_RUN until its thread has ended. Kicks repeat because a signal
/// that lands just before a thread enters KVM_RUN is consumed without interrupting it.
fn stop_vcpus(threads: Vec<JoinHandle<()>>) {
    let deadline = Instant::now() + Duration::from_secs(2);
    for handle in threads {
        while !handle.is_finished() {
            if Instant::now() > deadline {
                warn!("a vCPU thread did not stop; leaving it behind");
                break;
            }
            let _ = handle.kill(SIGRTMIN());
            std::thread::sleep(Duration::from_millis(1));
        }
        if handle.is_finished() {
            let _ = handle.join();
        }
    }
}
