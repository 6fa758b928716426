//! Guest RAM: mmap regions laid out around the 32-bit MMIO gap, anonymous by default, or
//! backed by one memfd when another process must map it too (vhost-user devices).

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress};

use crate::arch::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Guest memory without dirty-page tracking.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Zero bytes of memory were requested.
    #[error("guest memory size must be greater than zero")]
    Zero,
    /// The size does not fit the guest physical address space.
    #[error("guest memory size of {0} MiB is too large")]
    TooLarge(u64),
    /// The memfd that backs shared memory could not be created or sized.
    #[error("cannot create a memfd of {mib} MiB for shared guest memory")]
    Memfd {
        mib: u64,
        #[source]
        source: std::io::Error,
    },
    /// Mapping the memory failed.
    #[error("cannot map {mib} MiB of guest memory")]
    Mmap {
        mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The RAM ranges for `size` bytes: up to the MMIO gap below 4 GiB, the rest above it.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    let low = size.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if size > low {
        ranges.push((GuestAddress(MMIO_GAP_END), (size - low) as usize));
    }
    ranges
}

/// The size in bytes of `mib` MiB of guest RAM, if that is a valid size.
fn ram_size(mib: u64) -> Result<u64, MemoryError> {
    if mib == 0 {
        return Err(MemoryError::Zero);
    }
    // Stay well inside a 46-bit physical address space.
    mib.checked_mul(1 << 20)
        .filter(|s| *s < (1u64 << 45))
        .ok_or(MemoryError::TooLarge(mib))
}

/// Maps `mib` MiB of anonymous guest RAM (private to this process).
pub fn create_guest_memory(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let size = ram_size(mib)?;
    GuestMemoryMmap::from_ranges(&ram_ranges(size))
        .map_err(|source| MemoryError::Mmap { mib, source })
}

/// Maps `mib` MiB of guest RAM backed by one memfd, mapped shared, so that a vhost-user
/// backend can map the same pages from the regions' file offsets. Pages are allocated on
/// first touch, as with anonymous memory.
pub fn create_shared_guest_memory(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let size = ram_size(mib)?;
    let memfd_err = |source| MemoryError::Memfd { mib, source };
    // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"capsule-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(memfd_err(std::io::Error::last_os_error()));
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(memfd_err)?;
    let mut offset = 0u64;
    let mut ranges = Vec::new();
    for (addr, len) in ram_ranges(size) {
        let file = file.try_clone().map_err(memfd_err)?;
        ranges.push((addr, len, Some(FileOffset::new(file, offset))));
        offset += len as u64;
    }
    GuestMemoryMmap::from_ranges_with_files(&ranges)
        .map_err(|source| MemoryError::Mmap { mib, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn small_memory_is_one_low_region() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(ranges[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(ranges[1].0, GuestAddress(MMIO_GAP_END));
        let total: usize = ranges.iter().map(|r| r.1).sum();
        assert_eq!(total, 4 << 30);
    }

    #[test]
    fn shared_memory_is_one_memfd_at_consecutive_offsets() {
        use vm_memory::Bytes;
        let mem = create_shared_guest_memory(4).unwrap();
        let regions: Vec<_> = mem.iter().collect();
        assert_eq!(regions.len(), 1);
        let fo = regions[0].file_offset().expect("file-backed");
        assert_eq!(fo.start(), 0);
        assert_eq!(fo.file().metadata().unwrap().len(), 4 << 20);
        // What the guest writes is in the file, where another process would map it.
        mem.write_obj(0x1234_5678u32, GuestAddress(0x2000)).unwrap();
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(fo.file(), &mut buf, 0x2000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0x1234_5678);
        assert!(matches!(
            create_shared_guest_memory(0),
            Err(MemoryError::Zero)
        ));
    }

    #[test]
    fn creates_mapped_memory_and_rejects_bad_sizes() {
        let mem = create_guest_memory(2).unwrap();
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 2 << 20);
        assert!(matches!(create_guest_memory(0), Err(MemoryError::Zero)));
        assert!(matches!(
            create_guest_memory(u64::MAX),
            Err(MemoryError::TooLarge(_))
        ));
    }
}
