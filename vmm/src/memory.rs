//! Guest RAM: anonymous mmap regions laid out around the 32-bit MMIO gap.

use vm_memory::GuestAddress;

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

/// Maps `mib` MiB of guest RAM.
pub fn create_guest_memory(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if mib == 0 {
        return Err(MemoryError::Zero);
    }
    // Stay well inside a 46-bit physical address space.
    let size = mib
        .checked_mul(1 << 20)
        .filter(|s| *s < (1u64 << 45))
        .ok_or(MemoryError::TooLarge(mib))?;
    GuestMemoryMmap::from_ranges(&ram_ranges(size))
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
