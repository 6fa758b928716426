//! The guest physical address map of an x86_64 capsule microVM.
//!
//! ```text
//! 0x0000_0500  GDT                       0x0000_7000  zero page (boot_params)
//! 0x0000_0520  IDT (empty)               0x0000_9000  PML4, then PDPT and PD (64-bit boot)
//! 0x0000_6000  PVH start_info + memmap   0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA: MP table            0x0010_0000  kernel (its ELF/bzImage load address)
//!        ...   initrd at the top of low RAM, page aligned
//! 0xc000_0000  MMIO gap: virtio-mmio devices from 0xd000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM above 4 GiB
//! ```

/// Start of the 32-bit MMIO hole; RAM stops here and resumes at [`MMIO_GAP_END`].
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 1 << 32;

/// First virtio-mmio device window; each device takes one 4 KiB window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// First GSI for virtio-mmio devices (ISA IRQs below are the legacy devices').
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last GSI the IOAPIC provides.
pub const IRQ_MAX: u32 = 23;

pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Linux on x86 accepts at most 2048 bytes of command line, including the NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Extended BIOS data area: the MP table lives here; base memory ends here.
pub const EBDA_START: u64 = 0x9_fc00;
/// Where high memory (and the kernel) starts.
pub const HIMEM_START: u64 = 0x10_0000;
/// Identity mapping the 64-bit boot page tables set up (1 GiB with 2 MiB pages).
pub const BOOT_IDENTITY_MAP_SIZE: u64 = 1 << 30;
