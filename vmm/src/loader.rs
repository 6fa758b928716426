//! Loads the guest kernel (ELF vmlinux or bzImage) and initrd into guest memory.
//!
//! The image is inspected first, so that a file that is not a kernel, or one that does not fit
//! in guest memory, is reported as such with its path, before linux-loader copies anything.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::boot::InitrdPlacement;
use crate::arch::layout::{CMDLINE_MAX_SIZE, HIMEM_START, MMIO_GAP_START};
use crate::memory::GuestMemoryMmap;

/// Errors while loading the kernel or initrd. Each names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("cannot open {what} {path}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {0} is neither an ELF vmlinux nor a bzImage")]
    UnknownFormat(PathBuf),
    #[error("kernel {path} is not a loadable x86_64 image: {reason}")]
    BadImage { path: PathBuf, reason: String },
    #[error(
        "kernel {path} needs guest memory up to {end:#x} ({end_mib} MiB), more than the \
         {mem_mib} MiB of guest memory"
    )]
    KernelTooLarge {
        path: PathBuf,
        end: u64,
        end_mib: u64,
        mem_mib: u64,
    },
    #[error(
        "initrd {path} ({size} bytes) does not fit in guest memory next to the kernel: \
         {available} bytes free between the kernel end and the top of low memory; raise --memory"
    )]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        available: u64,
    },
    #[error("cannot load kernel {path}")]
    Load {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("cannot copy initrd {path} into guest memory")]
    CopyInitrd {
        path: PathBuf,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Kernel image formats capsule boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// How the loaded kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEntry {
    /// 32-bit PVH entry point from the ELF note.
    Pvh(u64),
    /// 64-bit entry point of the Linux boot protocol.
    Linux64(u64),
}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub format: KernelFormat,
    pub entry: KernelEntry,
    /// First byte after everything the kernel occupies.
    pub end: u64,
    /// The bzImage setup header (for the zero page), `None` for ELF.
    pub setup_header: Option<setup_header>,
    /// Longest command line the kernel accepts, including the NUL.
    pub cmdline_max: usize,
    /// Highest address the initrd may end at.
    pub initrd_addr_max: u64,
}

fn open(what: &'static str, path: &Path) -> Result<File, LoaderError> {
    File::open(path).map_err(|source| LoaderError::Open {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn read_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> LoaderError + 'a {
    move |source| LoaderError::Read {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// What the image needs, learned from its headers before loading.
struct ImageExtent {
    format: KernelFormat,
    /// End of the highest byte the kernel occupies (including bss / decompression space).
    end: u64,
}

fn inspect(file: &mut File, path: &Path) -> Result<ImageExtent, LoaderError> {
    let bad = |reason: &str| LoaderError::BadImage {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let len = file
        .seek(SeekFrom::End(0))
        .map_err(read_err("kernel", path))?;
    let mut head = vec![0u8; 0x280.min(len as usize)];
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(&mut head))
        .map_err(read_err("kernel", path))?;

    if head.starts_with(b"\x7fELF") {
        if head.len() < 64 {
            return Err(bad("truncated ELF header"));
        }
        if head[4] != 2 || head[5] != 1 || le_u16(&head, 18) != 62 {
            return Err(bad("not a little-endian 64-bit x86_64 ELF"));
        }
        let phoff = le_u64(&head, 32);
        let phentsize = u64::from(le_u16(&head, 54));
        let phnum = u64::from(le_u16(&head, 56));
        if phentsize < 56 || phnum == 0 || phnum > 64 {
            return Err(bad("implausible program header table"));
        }
        let table_len = phentsize * phnum;
        if phoff.checked_add(table_len).is_none_or(|end| end > len) {
            return Err(bad("program headers lie outside the file"));
        }
        let mut table = vec![0u8; table_len as usize];
        file.seek(SeekFrom::Start(phoff))
            .and_then(|_| file.read_exact(&mut table))
            .map_err(read_err("kernel", path))?;
        let mut end = 0u64;
        for ph in table.chunks_exact(phentsize as usize) {
            const PT_LOAD: u32 = 1;
            if le_u32(ph, 0) != PT_LOAD {
                continue;
            }
            let paddr = le_u64(ph, 24);
            let memsz = le_u64(ph, 40);
            let seg_end = paddr
                .checked_add(memsz)
                .ok_or_else(|| bad("segment wraps the address space"))?;
            if paddr < HIMEM_START {
                return Err(bad("a segment loads below 1 MiB"));
            }
            end = end.max(seg_end);
        }
        if end == 0 {
            return Err(bad("no loadable segment"));
        }
        return Ok(ImageExtent {
            format: KernelFormat::Elf,
            end,
        });
    }

    const BOOT_FLAG_OFFSET: usize = 0x1fe;
    const HEADER_OFFSET: usize = 0x202;
    if head.len() >= 0x268
        && le_u16(&head, BOOT_FLAG_OFFSET) == 0xaa55
        && &head[HEADER_OFFSET..HEADER_OFFSET + 4] == b"HdrS"
    {
        let version = le_u16(&head, 0x206);
        let loadflags = head[0x211];
        const LOADED_HIGH: u8 = 1;
        if version < 0x020c || loadflags & LOADED_HIGH == 0 {
            return Err(bad(
                "bzImage boot protocol older than 2.12, or not loaded high",
            ));
        }
        let code32_start = u64::from(le_u32(&head, 0x214));
        let init_size = u64::from(le_u32(&head, 0x260));
        let setup_sects = match head[0x1f1] {
            0 => 4,
            n => u64::from(n),
        };
        let payload = len.saturating_sub((setup_sects + 1) * 512);
        let load = code32_start.max(HIMEM_START);
        return Ok(ImageExtent {
            format: KernelFormat::BzImage,
            end: load + init_size.max(payload),
        });
    }
    Err(LoaderError::UnknownFormat(path.to_path_buf()))
}

/// End of RAM that is contiguous from address 0 (low memory, below the MMIO gap).
fn low_memory_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .find(|r| r.start_addr().0 == 0)
        .map_or(0, |r| r.len())
        .min(MMIO_GAP_START)
}

/// Loads the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoaderError> {
    let mut file = open("kernel", path)?;
    let extent = inspect(&mut file, path)?;
    let mem_end = low_memory_end(mem);
    if extent.end > mem_end {
        return Err(LoaderError::KernelTooLarge {
            path: path.to_path_buf(),
            end: extent.end,
            end_mib: extent.end.div_ceil(1 << 20),
            mem_mib: mem.iter().map(|r| r.len()).sum::<u64>() >> 20,
        });
    }
    let load_err = |source| LoaderError::Load {
        path: path.to_path_buf(),
        source,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    match extent.format {
        KernelFormat::Elf => {
            let result = Elf::load(mem, None, &mut file, himem).map_err(load_err)?;
            let entry = match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => KernelEntry::Pvh(addr.0),
                _ => KernelEntry::Linux64(result.kernel_load.0),
            };
            Ok(LoadedKernel {
                format: KernelFormat::Elf,
                entry,
                end: result.kernel_end.max(extent.end),
                setup_header: None,
                cmdline_max: CMDLINE_MAX_SIZE,
                initrd_addr_max: MMIO_GAP_START,
            })
        }
        KernelFormat::BzImage => {
            let result = BzImage::load(mem, None, &mut file, himem).map_err(load_err)?;
            let header = result.setup_header;
            // The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
            let entry = KernelEntry::Linux64(result.kernel_load.0 + 0x200);
            let (cmdline_max, initrd_addr_max) =
                header.map_or((CMDLINE_MAX_SIZE, MMIO_GAP_START), |h| {
                    (
                        (h.cmdline_size as usize + 1).min(CMDLINE_MAX_SIZE),
                        u64::from(h.initrd_addr_max) + 1,
                    )
                });
            Ok(LoadedKernel {
                format: KernelFormat::BzImage,
                entry,
                end: result.kernel_end.max(extent.end),
                setup_header: header,
                cmdline_max,
                initrd_addr_max,
            })
        }
    }
}

/// Copies the initrd at `path` to the top of low memory, page aligned, above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    path: &Path,
) -> Result<InitrdPlacement, LoaderError> {
    const PAGE: u64 = 4096;
    let mut file = open("initrd", path)?;
    let size = file
        .seek(SeekFrom::End(0))
        .and_then(|len| file.seek(SeekFrom::Start(0)).map(|_| len))
        .map_err(read_err("initrd", path))?;
    let top = low_memory_end(mem).min(kernel.initrd_addr_max);
    let floor = kernel.end.next_multiple_of(PAGE);
    let too_large = || LoaderError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        available: top.saturating_sub(floor),
    };
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !(PAGE - 1);
    if addr < floor {
        return Err(too_large());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| LoaderError::CopyInitrd {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(InitrdPlacement { addr, size })
}

/// Writes the NUL-terminated command line at `addr`.
pub fn write_cmdline(
    mem: &GuestMemoryMmap,
    addr: u64,
    cmdline: &str,
) -> Result<(), vm_memory::GuestMemoryError> {
    mem.write_slice(cmdline.as_bytes(), GuestAddress(addr))?;
    mem.write_obj(0u8, GuestAddress(addr + cmdline.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use std::io::Write;

    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, bytes: &[u8]) -> Self {
            let path =
                std::env::temp_dir().join(format!("capsule-loader-{}-{name}", std::process::id()));
            std::fs::File::create(&path)
                .and_then(|mut f| f.write_all(bytes))
                .unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

    /// A minimal x86_64 ELF: one PT_LOAD of `code` at `paddr` (memsz `memsz`), and optionally
    /// a PT_NOTE with the PVH entry.
    fn elf(paddr: u64, code: &[u8], memsz: u64, pvh_entry: Option<u32>) -> Vec<u8> {
        let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
        let phoff = 64u64;
        let data_off = phoff + 56 * u64::from(phnum);
        let mut note = Vec::new();
        if let Some(entry) = pvh_entry {
            note.extend_from_slice(&4u32.to_le_bytes()); // name size ("Xen\0")
            note.extend_from_slice(&4u32.to_le_bytes()); // desc size
            note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&entry.to_le_bytes());
        }
        let code_off = data_off + note.len() as u64;
        let mut out = vec![0u8; 64];
        out[0..4].copy_from_slice(b"\x7fELF");
        out[4] = 2; // 64-bit
        out[5] = 1; // little endian
        out[6] = 1; // version
        out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
        out[32..40].copy_from_slice(&phoff.to_le_bytes());
        out[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        out[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        out[56..58].copy_from_slice(&phnum.to_le_bytes());
        let mut ph = |kind: u32, off: u64, addr: u64, filesz: u64, memsz: u64| {
            let mut p = vec![0u8; 56];
            p[0..4].copy_from_slice(&kind.to_le_bytes());
            p[4..8].copy_from_slice(&5u32.to_le_bytes());
            p[8..16].copy_from_slice(&off.to_le_bytes());
            p[16..24].copy_from_slice(&addr.to_le_bytes());
            p[24..32].copy_from_slice(&addr.to_le_bytes());
            p[32..40].copy_from_slice(&filesz.to_le_bytes());
            p[40..48].copy_from_slice(&memsz.to_le_bytes());
            out.extend_from_slice(&p);
        };
        ph(1, code_off, paddr, code.len() as u64, memsz);
        if pvh_entry.is_some() {
            ph(4, data_off, 0, note.len() as u64, note.len() as u64);
        }
        out.extend_from_slice(&note);
        out.extend_from_slice(code);
        out
    }

    /// A minimal bzImage: boot sector + one setup sector with a 2.15 header, then `payload`.
    fn bzimage(payload: &[u8], init_size: u32) -> Vec<u8> {
        let mut out = vec![0u8; 2 * 512];
        out[0x1f1] = 1; // setup_sects
        out[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        out[0x202..0x206].copy_from_slice(b"HdrS");
        out[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        out[0x211] = 1; // LOADED_HIGH
        out[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        out[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
        out[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
        out[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn elf_with_pvh_note_enters_through_pvh() {
        let mem = create_guest_memory(16).unwrap();
        let f = TempFile::new(
            "pvh.elf",
            &elf(0x20_0000, b"\x90\x90\xf4", 0x1000, Some(0x20_0001)),
        );
        let k = load_kernel(&mem, &f.0).unwrap();
        assert_eq!(k.format, KernelFormat::Elf);
        assert_eq!(k.entry, KernelEntry::Pvh(0x20_0001));
        assert_eq!(k.end, 0x20_1000);
        let mut code = [0u8; 3];
        mem.read_slice(&mut code, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(&code, b"\x90\x90\xf4");
    }

    #[test]
    fn elf_without_note_uses_the_64bit_entry() {
        let mem = create_guest_memory(16).unwrap();
        let f = TempFile::new("plain.elf", &elf(0x20_0000, b"\xf4", 1, None));
        let k = load_kernel(&mem, &f.0).unwrap();
        assert_eq!(k.entry, KernelEntry::Linux64(0x20_0000));
        assert!(k.setup_header.is_none());
    }

    #[test]
    fn bzimage_enters_at_startup_64() {
        let mem = create_guest_memory(16).unwrap();
        let f = TempFile::new("bz", &bzimage(&[0xab; 4096], 0x10_0000));
        let k = load_kernel(&mem, &f.0).unwrap();
        assert_eq!(k.format, KernelFormat::BzImage);
        assert_eq!(k.entry, KernelEntry::Linux64(0x10_0200));
        assert_eq!(k.cmdline_max, 2048);
        assert_eq!(k.initrd_addr_max, 0x3800_0000);
        assert!(
            k.end >= 0x20_0000,
            "init_size counts toward the kernel's extent"
        );
        let mut byte = [0u8; 1];
        mem.read_slice(&mut byte, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(byte[0], 0xab);
    }

    #[test]
    fn rejects_files_that_are_not_kernels() {
        let mem = create_guest_memory(16).unwrap();
        let text = TempFile::new("text", b"#!/bin/sh\necho not a kernel\n");
        assert!(matches!(
            load_kernel(&mem, &text.0),
            Err(LoaderError::UnknownFormat(_))
        ));
        let empty = TempFile::new("empty", b"");
        assert!(matches!(
            load_kernel(&mem, &empty.0),
            Err(LoaderError::UnknownFormat(_))
        ));
        let mut bad_machine = elf(0x20_0000, b"\xf4", 1, None);
        bad_machine[18] = 40; // EM_ARM
        let f = TempFile::new("arm.elf", &bad_machine);
        assert!(matches!(
            load_kernel(&mem, &f.0),
            Err(LoaderError::BadImage { .. })
        ));
        let low = TempFile::new("low.elf", &elf(0x1000, b"\xf4", 1, None));
        assert!(matches!(
            load_kernel(&mem, &low.0),
            Err(LoaderError::BadImage { .. })
        ));
        let mut old = bzimage(&[0; 16], 0);
        old[0x206..0x208].copy_from_slice(&0x0200u16.to_le_bytes());
        let f = TempFile::new("old-bz", &old);
        assert!(matches!(
            load_kernel(&mem, &f.0),
            Err(LoaderError::BadImage { .. })
        ));
        let missing = std::env::temp_dir().join("capsule-loader-does-not-exist");
        assert!(matches!(
            load_kernel(&mem, &missing),
            Err(LoaderError::Open { .. })
        ));
    }

    #[test]
    fn truncated_program_headers_are_rejected_not_read_past() {
        let mem = create_guest_memory(16).unwrap();
        let mut image = elf(0x20_0000, b"\xf4", 1, None);
        image[56..58].copy_from_slice(&60u16.to_le_bytes()); // 60 headers promised
        let f = TempFile::new("trunc.elf", &image[..100]);
        assert!(matches!(
            load_kernel(&mem, &f.0),
            Err(LoaderError::BadImage { .. })
        ));
    }

    #[test]
    fn kernel_larger_than_memory_is_named() {
        let mem = create_guest_memory(4).unwrap();
        let f = TempFile::new("big.elf", &elf(0x20_0000, b"\xf4", 8 << 20, None));
        let err = load_kernel(&mem, &f.0).unwrap_err();
        assert!(
            matches!(err, LoaderError::KernelTooLarge { mem_mib: 4, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("big.elf"));
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_memory_above_the_kernel() {
        let mem = create_guest_memory(16).unwrap();
        let k = TempFile::new("k.elf", &elf(0x20_0000, b"\xf4", 0x1000, None));
        let kernel = load_kernel(&mem, &k.0).unwrap();
        let initrd = TempFile::new("initrd", &[7u8; 5000]);
        let placed = load_initrd(&mem, &kernel, &initrd.0).unwrap();
        assert_eq!(placed.size, 5000);
        assert_eq!(placed.addr % 4096, 0);
        assert!(placed.addr + placed.size <= 16 << 20);
        assert!(placed.addr >= kernel.end);
        let mut last = [0u8; 1];
        mem.read_slice(&mut last, GuestAddress(placed.addr + 4999))
            .unwrap();
        assert_eq!(last[0], 7);

        let huge = TempFile::new("huge", &vec![0u8; 15 << 20]);
        let err = load_initrd(&mem, &kernel, &huge.0).unwrap_err();
        assert!(matches!(err, LoaderError::InitrdTooLarge { .. }), "{err}");
    }

    #[test]
    fn cmdline_is_nul_terminated() {
        let mem = create_guest_memory(1).unwrap();
        write_cmdline(&mem, 0x2_0000, "console=ttyS0").unwrap();
        let mut buf = [0xffu8; 14];
        mem.read_slice(&mut buf, GuestAddress(0x2_0000)).unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
    }
}
