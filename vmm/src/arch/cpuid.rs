//! Per-vCPU CPUID, derived from what KVM supports: APIC ids and a flat topology of N cores,
//! one thread each, in one package; and the features a Linux guest's timers and clocks look
//! for (TSC-deadline LAPIC timer, the KVM paravirtual leaves, invariant TSC and its frequency).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const HYPERVISOR_BIT: u32 = 1 << 31; // leaf 1 ECX
const TSC_DEADLINE_BIT: u32 = 1 << 24; // leaf 1 ECX
const X2APIC_BIT: u32 = 1 << 21; // leaf 1 ECX
const HTT_BIT: u32 = 1 << 28; // leaf 1 EDX
const ARAT_BIT: u32 = 1 << 2; // leaf 6 EAX: the APIC timer keeps running in deep C-states
const INVARIANT_TSC_BIT: u32 = 1 << 8; // leaf 0x8000_0007 EDX
const CLFLUSH_LINE_QWORDS: u32 = 8; // 64-byte cache lines
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// KVM's hypervisor leaves: signature (and highest hypervisor leaf), paravirtual features.
pub const KVM_SIGNATURE_LEAF: u32 = 0x4000_0000;
pub const KVM_FEATURES_LEAF: u32 = 0x4000_0001;
/// The hypervisor timing leaf (as QEMU and VMware define it): EAX = TSC kHz, EBX = LAPIC bus
/// kHz.
pub const TIMING_LEAF: u32 = 0x4000_0010;
/// "KVMKVMKVM\0\0\0" in EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
/// KVM's in-kernel LAPIC counts at 1 GHz (its bus cycle is 1 ns).
const KVM_APIC_BUS_KHZ: u32 = 1_000_000;

/// Bits of leaf 0x4000_0001 EAX (Documentation/virt/kvm/x86/cpuid.rst).
const KVM_FEATURE_NAMES: &[(u32, &str)] = &[
    (0, "clocksource"),
    (1, "nop-io-delay"),
    (2, "mmu-op"),
    (3, "clocksource2"),
    (4, "async-pf"),
    (5, "steal-time"),
    (6, "pv-eoi"),
    (7, "pv-unhalt"),
    (9, "pv-tlb-flush"),
    (10, "async-pf-vmexit"),
    (11, "pv-send-ipi"),
    (12, "poll-control"),
    (13, "pv-sched-yield"),
    (14, "async-pf-int"),
    (15, "msi-ext-dest-id"),
    (16, "hc-map-gpa-range"),
    (17, "migration-control"),
    (24, "clocksource-stable"),
];

/// What KVM offers the guest's timers beyond KVM_GET_SUPPORTED_CPUID: features it emulates
/// but does not list there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimerCaps {
    /// KVM_CAP_TSC_DEADLINE_TIMER: the in-kernel LAPIC emulates TSC-deadline mode (only
    /// meaningful with the in-kernel IRQ chip, which capsule always creates).
    pub tsc_deadline: bool,
    /// The vCPU's TSC frequency in kHz (KVM_GET_TSC_KHZ), when KVM reports it.
    pub tsc_khz: Option<u32>,
}

/// Errors while building a vCPU's CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("the CPUID table has no room for leaf {0:#x}")]
    Full(u32),
}

/// Number of APIC-id bits needed to number `count` cores.
fn core_id_bits(count: u32) -> u32 {
    u32::BITS - count.saturating_sub(1).leading_zeros()
}

fn find(cpuid: &CpuId, function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == function && e.index == index)
}

/// Whether `cpuid` has KVM's hypervisor signature at 0x4000_0000.
fn has_kvm_signature(cpuid: &CpuId) -> bool {
    find(cpuid, KVM_SIGNATURE_LEAF, 0).is_some_and(|e| [e.ebx, e.ecx, e.edx] == KVM_SIGNATURE)
}

/// Builds the CPUID of vCPU `apic_id` out of `count` from KVM's supported CPUID.
pub fn vcpu_cpuid(
    supported: &CpuId,
    apic_id: u8,
    count: u8,
    caps: TimerCaps,
) -> Result<CpuId, CpuidError> {
    let mut cpuid = supported.clone();
    let apic_id = u32::from(apic_id);
    let count = u32::from(count.max(1));
    for entry in cpuid.as_mut_slice() {
        adjust_entry(entry, apic_id, count, caps);
    }
    // The TSC frequency is only worth announcing when the TSC is invariant: a guest may then
    // use it without calibrating against another clock.
    let invariant_tsc =
        find(&cpuid, 0x8000_0007, 0).is_some_and(|e| e.edx & INVARIANT_TSC_BIT != 0);
    if let (true, true, Some(khz)) = (invariant_tsc, has_kvm_signature(&cpuid), caps.tsc_khz) {
        if find(&cpuid, TIMING_LEAF, 0).is_none() {
            cpuid
                .push(kvm_cpuid_entry2 {
                    function: TIMING_LEAF,
                    eax: khz,
                    ebx: KVM_APIC_BUS_KHZ,
                    ..Default::default()
                })
                .map_err(|_| CpuidError::Full(TIMING_LEAF))?;
        }
        for entry in cpuid.as_mut_slice() {
            if entry.function == KVM_SIGNATURE_LEAF {
                entry.eax = entry.eax.max(TIMING_LEAF);
            }
        }
    }
    Ok(cpuid)
}

/// The timer and clock features `cpuid` gives a guest, in words, for the VMM's log (and for
/// tests that compare it with what the guest sees).
pub fn describe_timer_features(cpuid: &CpuId) -> String {
    let bit = |function, reg: fn(&kvm_cpuid_entry2) -> u32, mask| {
        find(cpuid, function, 0).is_some_and(|e| reg(e) & mask != 0)
    };
    let mut words = Vec::new();
    for (on, name) in [
        (bit(1, |e| e.ecx, TSC_DEADLINE_BIT), "tsc-deadline"),
        (bit(1, |e| e.ecx, X2APIC_BIT), "x2apic"),
        (bit(6, |e| e.eax, ARAT_BIT), "arat"),
        (
            bit(0x8000_0007, |e| e.edx, INVARIANT_TSC_BIT),
            "invariant-tsc",
        ),
    ] {
        if on {
            words.push(name.to_string());
        }
    }
    if has_kvm_signature(cpuid) {
        let features = find(cpuid, KVM_FEATURES_LEAF, 0).map_or(0, |e| e.eax);
        let names: Vec<&str> = KVM_FEATURE_NAMES
            .iter()
            .filter(|(b, _)| features & (1 << b) != 0)
            .map(|(_, n)| *n)
            .collect();
        words.push(format!("kvm-pv({features:#x}: {})", names.join(" ")));
    } else {
        words.push("no-kvm-pv".into());
    }
    if let Some(e) = find(cpuid, TIMING_LEAF, 0) {
        words.push(format!("tsc-khz={} apic-bus-khz={}", e.eax, e.ebx));
    }
    words.join(" ")
}

fn adjust_entry(entry: &mut kvm_cpuid_entry2, apic_id: u32, count: u32, caps: TimerCaps) {
    match entry.function {
        0x1 => {
            entry.ebx = (apic_id << 24) | ((count & 0xff) << 16) | (CLFLUSH_LINE_QWORDS << 8);
            entry.ecx |= HYPERVISOR_BIT;
            // KVM emulates the TSC-deadline timer in its LAPIC but does not list it in the
            // supported CPUID: without it Linux falls back to a calibrated LAPIC timer and
            // checks the PIT through the IO-APIC.
            if caps.tsc_deadline {
                entry.ecx |= TSC_DEADLINE_BIT;
            }
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
        let c = vcpu_cpuid(&base, 3, 4, TimerCaps::default()).unwrap();
        let e = find(&c, 1, 0);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_ne!(e.ecx & HYPERVISOR_BIT, 0);
        assert_ne!(e.edx & HTT_BIT, 0);
        let single = find(
            &vcpu_cpuid(&base, 0, 1, TimerCaps::default()).unwrap(),
            1,
            0,
        );
        assert_eq!(single.edx & HTT_BIT, 0);
    }

    #[test]
    fn extended_topology_describes_n_cores() {
        let base = cpuid_of(&[entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)]);
        let c = vcpu_cpuid(&base, 2, 3, TimerCaps::default()).unwrap();
        let smt = find(&c, 0xb, 0);
        let core = find(&c, 0xb, 1);
        let end = find(&c, 0xb, 2);
        assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8, smt.edx), (0, 1, 1, 2));
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (2, 3, 2, 2));
        assert_eq!((end.ebx, end.ecx >> 8), (0, 0));
    }

    fn kvm_leaves(features: u32) -> Vec<kvm_cpuid_entry2> {
        vec![
            kvm_cpuid_entry2 {
                function: KVM_SIGNATURE_LEAF,
                eax: KVM_FEATURES_LEAF,
                ebx: KVM_SIGNATURE[0],
                ecx: KVM_SIGNATURE[1],
                edx: KVM_SIGNATURE[2],
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: KVM_FEATURES_LEAF,
                eax: features,
                ..Default::default()
            },
        ]
    }

    #[test]
    fn tsc_deadline_follows_the_kvm_capability() {
        let base = cpuid_of(&[entry(1, 0)]);
        let without = find(
            &vcpu_cpuid(&base, 0, 1, TimerCaps::default()).unwrap(),
            1,
            0,
        );
        assert_eq!(without.ecx & TSC_DEADLINE_BIT, 0);
        let caps = TimerCaps {
            tsc_deadline: true,
            tsc_khz: None,
        };
        let with = find(&vcpu_cpuid(&base, 0, 1, caps).unwrap(), 1, 0);
        assert_ne!(with.ecx & TSC_DEADLINE_BIT, 0);
    }

    #[test]
    fn kvm_leaves_are_passed_on_and_described() {
        let features = (1 << 3) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 24);
        let mut leaves = vec![
            kvm_cpuid_entry2 {
                function: 1,
                ecx: X2APIC_BIT,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 6,
                eax: ARAT_BIT,
                ..Default::default()
            },
        ];
        leaves.extend(kvm_leaves(features));
        let caps = TimerCaps {
            tsc_deadline: true,
            tsc_khz: Some(2_500_000),
        };
        let c = vcpu_cpuid(&cpuid_of(&leaves), 0, 1, caps).unwrap();
        assert_eq!(find(&c, KVM_FEATURES_LEAF, 0).eax, features);
        // No invariant TSC: no timing leaf, and the signature leaf is left alone.
        assert!(c.as_slice().iter().all(|e| e.function != TIMING_LEAF));
        assert_eq!(find(&c, KVM_SIGNATURE_LEAF, 0).eax, KVM_FEATURES_LEAF);
        assert_eq!(
            describe_timer_features(&c),
            "tsc-deadline x2apic arat kvm-pv(0x10000e8: clocksource2 steal-time pv-eoi \
             pv-unhalt clocksource-stable)"
        );
    }

    #[test]
    fn invariant_tsc_gets_the_timing_leaf() {
        let mut leaves = kvm_leaves(1 << 3);
        leaves.push(kvm_cpuid_entry2 {
            function: 0x8000_0007,
            edx: INVARIANT_TSC_BIT,
            ..Default::default()
        });
        let caps = TimerCaps {
            tsc_deadline: false,
            tsc_khz: Some(2_345_678),
        };
        let c = vcpu_cpuid(&cpuid_of(&leaves), 0, 1, caps).unwrap();
        let timing = find(&c, TIMING_LEAF, 0);
        assert_eq!((timing.eax, timing.ebx), (2_345_678, KVM_APIC_BUS_KHZ));
        assert_eq!(find(&c, KVM_SIGNATURE_LEAF, 0).eax, TIMING_LEAF);
        assert!(describe_timer_features(&c).ends_with("tsc-khz=2345678 apic-bus-khz=1000000"));
        // Without KVM's signature there is no hypervisor range to put it in.
        let bare = cpuid_of(&leaves[2..]);
        let c = vcpu_cpuid(&bare, 0, 1, caps).unwrap();
        assert!(c.as_slice().iter().all(|e| e.function != TIMING_LEAF));
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
