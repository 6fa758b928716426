//! Per-vCPU CPUID, derived from what KVM supports: APIC ids and a flat topology of N cores,
//! one thread each, in one package.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const HYPERVISOR_BIT: u32 = 1 << 31; // leaf 1 ECX
const HTT_BIT: u32 = 1 << 28; // leaf 1 EDX
const CLFLUSH_LINE_QWORDS: u32 = 8; // 64-byte cache lines
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Number of APIC-id bits needed to number `count` cores.
fn core_id_bits(count: u32) -> u32 {
    u32::BITS - count.saturating_sub(1).leading_zeros()
}

/// Builds the CPUID of vCPU `apic_id` out of `count` from KVM's supported CPUID.
pub fn vcpu_cpuid(supported: &CpuId, apic_id: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    let apic_id = u32::from(apic_id);
    let count = u32::from(count.max(1));
    for entry in cpuid.as_mut_slice() {
        adjust_entry(entry, apic_id, count);
    }
    cpuid
}

fn adjust_entry(entry: &mut kvm_cpuid_entry2, apic_id: u32, count: u32) {
    match entry.function {
        0x1 => {
            entry.ebx = (apic_id << 24) | ((count & 0xff) << 16) | (CLFLUSH_LINE_QWORDS << 8);
            entry.ecx |= HYPERVISOR_BIT;
            if count > 1 {
                entry.edx |= HTT_BIT;
            } else {
                entry.edx &= !HTT_BIT;
            }
        }
        0x4 => {
            // Deterministic cache parameters: L1/L2 private to a core, L3 shared by all.
            let level = (entry.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count - 1 } else { 0 };
            entry.eax &= 0x3fff;
            entry.eax |= ((count - 1) & 0x3f) << 26 | (sharing & 0xfff) << 14;
        }
        0xa => {
            // No virtual PMU: guests must not program counters the host does not expose.
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        0xb | 0x1f => {
            entry.edx = apic_id;
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = (LEVEL_TYPE_SMT << 8) | entry.index;
                }
                1 => {
                    entry.eax = core_id_bits(count);
                    entry.ebx = count;
                    entry.ecx = (LEVEL_TYPE_CORE << 8) | entry.index;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
        }
        0x8000_0008 => {
            // AMD: number of cores minus one, and the APIC-id width used for them.
            entry.ecx = (entry.ecx & !0xf0ff) | (core_id_bits(count) << 12) | ((count - 1) & 0xff);
        }
        0x8000_001e => {
            // AMD extended APIC id, compute-unit (core) id, node id.
            entry.eax = apic_id;
            entry.ebx = apic_id & 0xff;
            entry.ecx = 0;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0,
            edx: 0,
            ..Default::default()
        }
    }

    fn cpuid_of(entries: &[kvm_cpuid_entry2]) -> CpuId {
        CpuId::from_entries(entries).unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn leaf1_carries_apic_id_and_count() {
        let base = cpuid_of(&[entry(1, 0)]);
        let c = vcpu_cpuid(&base, 3, 4);
        let e = find(&c, 1, 0);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_ne!(e.ecx & HYPERVISOR_BIT, 0);
        assert_ne!(e.edx & HTT_BIT, 0);
        let single = find(&vcpu_cpuid(&base, 0, 1), 1, 0);
        assert_eq!(single.edx & HTT_BIT, 0);
    }

    #[test]
    fn extended_topology_describes_n_cores() {
        let base = cpuid_of(&[entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)]);
        let c = vcpu_cpuid(&base, 2, 3);
        let smt = find(&c, 0xb, 0);
        let core = find(&c, 0xb, 1);
        let end = find(&c, 0xb, 2);
        assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8, smt.edx), (0, 1, 1, 2));
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (2, 3, 2, 2));
        assert_eq!((end.ebx, end.ecx >> 8), (0, 0));
    }

    #[test]
    fn core_bits() {
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(2), 1);
        assert_eq!(core_id_bits(3), 2);
        assert_eq!(core_id_bits(4), 2);
        assert_eq!(core_id_bits(5), 3);
        assert_eq!(core_id_bits(254), 8);
    }
}
