//! Initial vCPU state: segments, control registers, page tables, MSRs and registers for the
//! two boot protocols capsule supports.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{
    BOOT_STACK_TOP, GDT_ADDR, IDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR, ZERO_PAGE_ADDR,
};
use crate::memory::GuestMemoryMmap;

/// Errors while writing boot state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A boot structure does not fit in guest memory.
    #[error("cannot write the {0} to guest memory")]
    Write(&'static str, #[source] vm_memory::GuestMemoryError),
    /// KVM refused the MSR list.
    #[error("cannot build the boot MSR list")]
    Msrs,
}

/// The CPU mode a vCPU starts in, by boot protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    /// Linux 64-bit boot protocol: long mode, identity-mapped paging, %rsi = zero page.
    Linux64 { entry: u64 },
    /// PVH: 32-bit protected mode, paging off, %ebx = hvm_start_info.
    Pvh { entry: u64, start_info: u64 },
}

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

// Access/flag bits of the GDT descriptors (byte 5 and the flags nibble of byte 6).
const CODE64: u16 = 0xa09b; // present, ring 0, code, execute/read, accessed; L, G
const CODE32: u16 = 0xc09b; // same with D/B (32-bit) instead of L
const DATA: u16 = 0xc093; // present, ring 0, data, read/write, accessed; D/B, G
const TSS: u16 = 0x808b; // present, busy 32-bit TSS; G

/// Encodes one segment descriptor.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The KVM view of descriptor `entry` loaded through selector `index * 8`.
fn segment(entry: u64, index: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let limit_raw = ((entry >> 32) & 0x000f_0000) | (entry & 0xffff);
    let granular = bit(55) == 1;
    kvm_segment {
        base: ((entry >> 32) & 0xff00_0000) | ((entry >> 16) & 0x00ff_ffff),
        limit: if granular {
            ((limit_raw << 12) | 0xfff) as u32
        } else {
            limit_raw as u32
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    what: &'static str,
    val: T,
    addr: u64,
) -> Result<(), RegsError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|e| RegsError::Write(what, e))
}

/// Writes the GDT and an empty IDT, and fills `sregs` for `mode`. The memory writes are shared
/// by all vCPUs; each vCPU gets its own `sregs`.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    mode: BootMode,
    sregs: &mut kvm_sregs,
) -> Result<(), RegsError> {
    let code = match mode {
        BootMode::Linux64 { .. } => CODE64,
        BootMode::Pvh { .. } => CODE32,
    };
    let gdt = [
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(DATA, 0, 0xfffff),
        gdt_entry(TSS, 0, 0xfffff),
    ];
    for (i, entry) in gdt.iter().enumerate() {
        write(mem, "GDT", *entry, GDT_ADDR + 8 * i as u64)?;
    }
    write(mem, "IDT", 0u64, IDT_ADDR)?;

    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = segment(gdt[1], 1);
    let data = segment(gdt[2], 2);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(gdt[3], 3);

    match mode {
        BootMode::Linux64 { .. } => {
            setup_page_tables(mem)?;
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootMode::Pvh { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(())
}

/// Identity-maps the first GiB with 2 MiB pages, as the 64-bit boot protocol requires.
fn setup_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    write(mem, "PML4", PDPT_ADDR | PRESENT_RW, PML4_ADDR)?;
    write(mem, "PDPT", PD_ADDR | PRESENT_RW, PDPT_ADDR)?;
    for i in 0..512u64 {
        write(
            mem,
            "page directory",
            (i << 21) | PRESENT_RW | HUGE,
            PD_ADDR + i * 8,
        )?;
    }
    Ok(())
}

/// General-purpose registers at the kernel entry point.
pub fn boot_regs(mode: BootMode) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2, // bit 1 is reserved and always set
        ..Default::default()
    };
    match mode {
        BootMode::Linux64 { entry } => {
            regs.rip = entry;
            regs.rsp = BOOT_STACK_TOP;
            regs.rbp = BOOT_STACK_TOP;
            regs.rsi = ZERO_PAGE_ADDR;
        }
        BootMode::Pvh { entry, start_info } => {
            regs.rip = entry;
            regs.rbx = start_info;
        }
    }
    regs
}

/// FPU state after reset (x87 control word, SSE MXCSR).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// MSR indices (Intel SDM volume 4).
mod msr {
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// The MSRs a Linux guest expects at boot: syscall MSRs cleared, fast strings on, and MTRRs
/// enabled with write-back as the default memory type.
pub fn boot_msrs() -> Result<Msrs, RegsError> {
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const MTRR_ENABLE: u64 = 1 << 11;
    const MTRR_TYPE_WB: u64 = 6;
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    Msrs::from_entries(&[
        entry(msr::IA32_SYSENTER_CS, 0),
        entry(msr::IA32_SYSENTER_ESP, 0),
        entry(msr::IA32_SYSENTER_EIP, 0),
        entry(msr::STAR, 0),
        entry(msr::CSTAR, 0),
        entry(msr::KERNEL_GS_BASE, 0),
        entry(msr::SYSCALL_MASK, 0),
        entry(msr::LSTAR, 0),
        entry(msr::IA32_TSC, 0),
        entry(msr::IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(msr::MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WB),
    ])
    .map_err(|_| RegsError::Msrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn gdt_entries_encode_flat_segments() {
        assert_eq!(gdt_entry(CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(CODE32, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(TSS, 0, 0xfffff), 0x008f_8b00_0000_ffff);
        assert_eq!(gdt_entry(DATA, 0x1234_5678, 0xfffff) >> 56, 0x12);
    }

    #[test]
    fn segments_decode_what_was_encoded() {
        let cs = segment(gdt_entry(CODE64, 0, 0xfffff), 1);
        assert_eq!(
            (cs.selector, cs.type_, cs.l, cs.db, cs.g, cs.present),
            (8, 0xb, 1, 0, 1, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(gdt_entry(DATA, 0, 0xfffff), 2);
        assert_eq!(
            (ds.selector, ds.type_, ds.db, ds.s, ds.unusable),
            (16, 3, 1, 1, 0)
        );
        let tr = segment(gdt_entry(TSS, 0, 0xfffff), 3);
        assert_eq!((tr.type_, tr.s), (0xb, 0));
    }

    #[test]
    fn long_mode_state_and_identity_map() {
        let m = mem();
        let mut sregs = kvm_sregs::default();
        setup_sregs(&m, BootMode::Linux64 { entry: 0x100_0000 }, &mut sregs).unwrap();
        assert_eq!(sregs.cr3, PML4_ADDR);
        assert_ne!(sregs.cr0 & CR0_PG, 0);
        assert_ne!(sregs.efer & EFER_LMA, 0);
        assert_eq!(sregs.cs.l, 1);
        let pde: u64 = m.read_obj(GuestAddress(PD_ADDR + 8 * 3)).unwrap();
        assert_eq!(pde, (3 << 21) | 0x83);
        let pml4: u64 = m.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4, PDPT_ADDR | 3);
    }

    #[test]
    fn pvh_state_is_flat_protected_mode() {
        let m = mem();
        let mut sregs = kvm_sregs::default();
        let mode = BootMode::Pvh {
            entry: 0x100_0000,
            start_info: 0x6000,
        };
        setup_sregs(&m, mode, &mut sregs).unwrap();
        assert_eq!(sregs.cr0, CR0_PE | CR0_ET);
        assert_eq!((sregs.cs.l, sregs.cs.db), (0, 1));
        let regs = boot_regs(mode);
        assert_eq!((regs.rip, regs.rbx), (0x100_0000, 0x6000));
        let regs = boot_regs(BootMode::Linux64 { entry: 0x200 });
        assert_eq!(
            (regs.rip, regs.rsi, regs.rflags),
            (0x200, ZERO_PAGE_ADDR, 2)
        );
    }

    #[test]
    fn boot_msrs_enable_mtrr_write_back() {
        let msrs = boot_msrs().unwrap();
        let mtrr = msrs
            .as_slice()
            .iter()
            .find(|e| e.index == msr::MTRR_DEF_TYPE)
            .unwrap();
        assert_eq!(mtrr.data, 0x806);
    }
}
