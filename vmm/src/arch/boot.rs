//! Boot information handed to the guest: the e820 memory map, the Linux zero page
//! (`boot_params`) and the PVH `hvm_start_info`.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::layout::{CMDLINE_ADDR, EBDA_START, HIMEM_START, PVH_INFO_ADDR, ZERO_PAGE_ADDR};
use crate::memory::GuestMemoryMmap;

/// e820 entry types.
pub const E820_RAM: u32 = 1;

/// Errors while writing boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootInfoError {
    #[error("the e820 map has {0} entries, more than the zero page holds")]
    TooManyE820Entries(usize),
    #[error("cannot write the {0} to guest memory")]
    Write(&'static str, #[source] vm_memory::GuestMemoryError),
}

/// One range of the guest physical memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// Where the initrd was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

/// The memory map: base memory up to the EBDA, then every RAM region from 1 MiB on.
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    for region in mem.iter() {
        let start = region.start_addr().0.max(HIMEM_START);
        let end = region.start_addr().0 + region.len();
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// Writes the zero page for the Linux 64-bit boot protocol. `header` is the bzImage's setup
/// header, or `None` for an ELF vmlinux (then a minimal header is made up).
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    e820: &[E820Entry],
) -> Result<(), BootInfoError> {
    const BOOT_FLAG_MAGIC: u16 = 0xaa55;
    const HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
    const LOADER_UNDEFINED: u8 = 0xff;
    const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;

    let mut params = boot_params::default();
    if let Some(header) = header {
        params.hdr = header;
    } else {
        params.hdr.boot_flag = BOOT_FLAG_MAGIC;
        params.hdr.header = HDR_MAGIC;
        params.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    if e820.len() > params.e820_table.len() {
        return Err(BootInfoError::TooManyE820Entries(e820.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = e820.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
        .map_err(|e| BootInfoError::Write("zero page", e))
}

/// Writes `hvm_start_info`, its memory map and the initrd module entry for a PVH boot.
/// Returns the address of the start info (the value of %ebx at entry).
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    initrd: Option<InitrdPlacement>,
    e820: &[E820Entry],
) -> Result<u64, BootInfoError> {
    let info_size = std::mem::size_of::<hvm_start_info>() as u64;
    let modlist_addr = PVH_INFO_ADDR + info_size;
    let memmap_addr = modlist_addr + std::mem::size_of::<hvm_modlist_entry>() as u64;

    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: memmap_addr,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(modlist_addr))
            .map_err(|e| BootInfoError::Write("PVH module list", e))?;
        info.nr_modules = 1;
        info.modlist_paddr = modlist_addr;
    }
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    for (i, entry) in e820.iter().enumerate() {
        let raw = hvm_memmap_table_entry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind,
            reserved: 0,
        };
        mem.write_obj(raw, GuestAddress(memmap_addr + i as u64 * entry_size))
            .map_err(|e| BootInfoError::Write("PVH memory map", e))?;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_ADDR))
        .map_err(|e| BootInfoError::Write("PVH start info", e))?;
    Ok(PVH_INFO_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::MMIO_GAP_END;
    use crate::memory::create_guest_memory;

    #[test]
    fn e820_covers_base_and_high_memory() {
        let mem = create_guest_memory(128).unwrap();
        assert_eq!(
            e820_map(&mem),
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: HIMEM_START,
                    size: (128 << 20) - HIMEM_START,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn e820_splits_around_the_mmio_gap() {
        let mem = GuestMemoryMmap::from_ranges(&crate::memory::ram_ranges(0xc000_0000 + (1 << 20)))
            .unwrap();
        let map = e820_map(&mem);
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[2],
            E820Entry {
                addr: MMIO_GAP_END,
                size: 1 << 20,
                kind: E820_RAM
            }
        );
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_and_map() {
        let mem = create_guest_memory(16).unwrap();
        let e820 = e820_map(&mem);
        let initrd = InitrdPlacement {
            addr: 0xf0_0000,
            size: 0x1234,
        };
        write_zero_page(&mem, None, 42, Some(initrd), &e820).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!(
            ({ hdr.ramdisk_image }, { hdr.ramdisk_size }),
            (0xf0_0000, 0x1234)
        );
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!(params.e820_entries, 2);
        let second = params.e820_table[1];
        assert_eq!(
            ({ second.addr }, { second.size }),
            (HIMEM_START, (16 << 20) - HIMEM_START)
        );
    }

    #[test]
    fn pvh_start_info_points_at_map_and_module() {
        let mem = create_guest_memory(16).unwrap();
        let e820 = e820_map(&mem);
        let initrd = InitrdPlacement {
            addr: 0xf0_0000,
            size: 99,
        };
        let addr = write_pvh_start_info(&mem, Some(initrd), &e820).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(addr)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!((info.nr_modules, info.memmap_entries), (1, 2));
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0xf0_0000, 99));
        let last: hvm_memmap_table_entry =
            mem.read_obj(GuestAddress(info.memmap_paddr + 24)).unwrap();
        assert_eq!(last.addr, HIMEM_START);
        // The structures end before the zero page and page tables.
        assert!(info.memmap_paddr + 24 * 2 <= ZERO_PAGE_ADDR);
    }
}
