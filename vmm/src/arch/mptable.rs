//! The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI learns its CPUs,
//! its IOAPIC and how ISA interrupts are wired.

use vm_memory::{Bytes, GuestAddress};

use super::layout::{EBDA_START, HIMEM_START, IOAPIC_ADDR, IRQ_MAX, LAPIC_ADDR};
use crate::memory::GuestMemoryMmap;

/// Most vCPUs an MP table can describe: APIC ids are 8 bits and the IOAPIC takes the id after
/// the last CPU.
pub const MAX_CPUS: u8 = 254;

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{0} vCPUs do not fit in an MP table (1 to {MAX_CPUS})")]
    CpuCount(u8),
    #[error("the MP table ({0} bytes) does not fit below 1 MiB")]
    TooLarge(usize),
    #[error("cannot write the MP table to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

const SPEC_REV_1_4: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;
/// CPU signature (family 6) and feature flags (FPU, APIC) reported per processor entry.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the configuration table (header and entries) for `cpus` processors.
fn config_table(cpus: u8) -> Vec<u8> {
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..cpus {
        entries.extend_from_slice(&[
            ENTRY_PROCESSOR,
            cpu,
            APIC_VERSION,
            CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 },
        ]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        // ISA IRQ n is wired to IOAPIC pin n, with the bus's default polarity and trigger.
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0, ISA_BUS_ID, irq]);
        entries.extend_from_slice(&[ioapic_id, irq]);
        count += 1;
    }
    // Virtual-wire mode: the PIC through LINT0 of the BSP, NMI to LINT1 of every CPU.
    entries.extend_from_slice(&[
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        0,
        ISA_BUS_ID,
        0,
        0,
        0,
    ]);
    entries.extend_from_slice(&[
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        0,
        ISA_BUS_ID,
        0,
        0xff,
        1,
    ]);
    count += 2;

    let length = 44 + entries.len();
    let mut table = Vec::with_capacity(length);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(length as u16).to_le_bytes());
    table.extend_from_slice(&[SPEC_REV_1_4, 0]); // revision, checksum (filled below)
    table.extend_from_slice(b"CAPSULE ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// The 16-byte floating pointer structure that points at the configuration table.
fn floating_pointer(table_addr: u32) -> [u8; 16] {
    let mut fp = [0u8; 16];
    fp[0..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&table_addr.to_le_bytes());
    fp[8] = 1; // length in 16-byte units
    fp[9] = SPEC_REV_1_4;
    fp[10] = checksum(&fp);
    fp
}

/// Writes the floating pointer at the start of the EBDA and the configuration table after it.
pub fn write_mptable(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MptableError::CpuCount(cpus));
    }
    let table_addr = EBDA_START + 16;
    let table = config_table(cpus);
    if table_addr + table.len() as u64 > HIMEM_START {
        return Err(MptableError::TooLarge(table.len()));
    }
    mem.write_slice(
        &floating_pointer(table_addr as u32),
        GuestAddress(EBDA_START),
    )
    .map_err(MptableError::Write)?;
    mem.write_slice(&table, GuestAddress(table_addr))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    /// Parses the table the way a guest does, returning the enabled processors' APIC ids.
    fn parse(mem: &GuestMemoryMmap) -> Vec<u8> {
        let mut fp = [0u8; 16];
        mem.read_slice(&mut fp, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&fp[0..4], b"_MP_");
        assert_eq!(fp.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        let addr = u32::from_le_bytes(fp[4..8].try_into().unwrap()) as u64;
        let mut header = [0u8; 44];
        mem.read_slice(&mut header, GuestAddress(addr)).unwrap();
        assert_eq!(&header[0..4], b"PCMP");
        let len = u16::from_le_bytes([header[4], header[5]]) as usize;
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(addr)).unwrap();
        assert_eq!(table.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        let count = u16::from_le_bytes([table[34], table[35]]);
        let mut at = 44;
        let mut cpus = Vec::new();
        for _ in 0..count {
            match table[at] {
                ENTRY_PROCESSOR => {
                    if table[at + 3] & CPU_ENABLED != 0 {
                        cpus.push(table[at + 1]);
                    }
                    at += 20;
                }
                _ => at += 8,
            }
        }
        assert_eq!(at, len, "entry sizes add up to the table length");
        cpus
    }

    #[test]
    fn describes_every_cpu() {
        for n in [1u8, 2, 7, MAX_CPUS] {
            let m = mem();
            write_mptable(&m, n).unwrap();
            assert_eq!(parse(&m), (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        assert!(matches!(
            write_mptable(&mem(), 0),
            Err(MptableError::CpuCount(0))
        ));
        assert!(matches!(
            write_mptable(&mem(), 255),
            Err(MptableError::CpuCount(255))
        ));
    }

    #[test]
    fn fails_cleanly_without_memory() {
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            write_mptable(&small, 1),
            Err(MptableError::Write(_))
        ));
    }
}
