//! Tier T1: the CPU features a Linux guest's timers and clocks look for, as a guest sees them.
//!
//! The `cpu_features` test guest executes CPUID and prints the leaves; each check compares one
//! feature with what this host's KVM says it supports (KVM_GET_SUPPORTED_CPUID, KVM_CHECK_EXTENSION,
//! KVM_GET_TSC_KHZ), queried here independently of the VMM. Nothing is hard-coded to a host:
//! a feature KVM lacks must be absent in the guest, a feature it offers must be present.

use std::collections::HashMap;

use capsule_tests::capsule::CapsuleRun;
use capsule_tests::guests::ScratchDir;
use capsule_tests::tier::run_backend_tests;
use capsule_tests::tiny_guest_tests_on_kvm;
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm};

const GUEST: &str = env!("CAPSULE_GUEST_CPU_FEATURES");

const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
const TIMING_LEAF: u32 = 0x4000_0010;

/// CPUID leaves (subleaf 0) as EAX, EBX, ECX, EDX.
type Leaves = HashMap<u32, [u32; 4]>;

/// What the guest saw, from its `capsule-guest: cpuid <leaf> <eax> <ebx> <ecx> <edx>` lines.
fn guest_leaves() -> Result<Leaves, String> {
    let dir = ScratchDir::new("t1-cpu-features")?;
    let out = CapsuleRun::new(GUEST)
        .console(dir.join("console.txt"))
        .run()?;
    out.expect_no_panic()?;
    out.expect_code(0)?;
    let mut leaves = Leaves::new();
    for line in out.console.lines() {
        let Some(rest) = line.trim_end().split("capsule-guest: cpuid ").nth(1) else {
            continue;
        };
        let words: Vec<u32> = rest
            .split_whitespace()
            .map(|w| u32::from_str_radix(w, 16))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("bad cpuid line {line:?}: {e}\n{}", out.describe()))?;
        if let [leaf, a, b, c, d] = words[..] {
            leaves.insert(leaf, [a, b, c, d]);
        } else {
            return Err(format!("bad cpuid line {line:?}\n{}", out.describe()));
        }
    }
    if !out.console.contains("ok cpuid-reported") {
        return Err(format!("the guest did not finish\n{}", out.describe()));
    }
    Ok(leaves)
}

/// What KVM supports here, and whether it emulates the TSC-deadline timer.
struct Host {
    supported: Leaves,
    tsc_deadline: bool,
    tsc_khz: Option<u32>,
}

fn host() -> Result<Host, String> {
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
    let supported = cpuid
        .as_slice()
        .iter()
        .filter(|e| e.index == 0)
        .map(|e| (e.function, [e.eax, e.ebx, e.ecx, e.edx]))
        .collect();
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    Ok(Host {
        supported,
        tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
        tsc_khz: vcpu.get_tsc_khz().ok().filter(|k| *k > 0),
    })
}

fn bit(leaves: &Leaves, leaf: u32, reg: usize, bit: u32) -> bool {
    leaves.get(&leaf).is_some_and(|r| r[reg] & (1 << bit) != 0)
}

const EAX: usize = 0;
const ECX: usize = 2;
const EDX: usize = 3;

/// Fails unless the guest has `name` exactly when `expected` says so.
fn same(name: &str, guest: bool, expected: bool, why: &str) -> Result<(), String> {
    if guest == expected {
        Ok(())
    } else {
        Err(format!(
            "{name}: the guest {} it, but {why} says {}",
            if guest { "has" } else { "lacks" },
            if expected {
                "it is supported"
            } else {
                "it is not"
            }
        ))
    }
}

fn tsc_deadline_timer() -> Result<(), String> {
    let (host, guest) = (host()?, guest_leaves()?);
    same(
        "TSC-deadline timer (CPUID.1:ECX[24])",
        bit(&guest, 1, ECX, 24),
        host.tsc_deadline,
        "KVM_CAP_TSC_DEADLINE_TIMER",
    )?;
    same(
        "hypervisor bit (CPUID.1:ECX[31])",
        bit(&guest, 1, ECX, 31),
        true,
        "capsule",
    )
}

fn x2apic_and_arat() -> Result<(), String> {
    let (host, guest) = (host()?, guest_leaves()?);
    same(
        "x2APIC (CPUID.1:ECX[21])",
        bit(&guest, 1, ECX, 21),
        bit(&host.supported, 1, ECX, 21),
        "KVM_GET_SUPPORTED_CPUID",
    )?;
    same(
        "always-running APIC timer (CPUID.6:EAX[2])",
        bit(&guest, 6, EAX, 2),
        bit(&host.supported, 6, EAX, 2),
        "KVM_GET_SUPPORTED_CPUID",
    )
}

fn kvm_paravirt_leaves() -> Result<(), String> {
    let (host, guest) = (host()?, guest_leaves()?);
    let signature = |leaves: &Leaves| {
        leaves
            .get(&0x4000_0000)
            .is_some_and(|r| r[1..] == KVM_SIGNATURE)
    };
    same(
        "KVM signature (CPUID.0x40000000)",
        signature(&guest),
        signature(&host.supported),
        "KVM_GET_SUPPORTED_CPUID",
    )?;
    if !signature(&host.supported) {
        return Ok(());
    }
    // kvm-clock, PV EOI, PV unhalt, steal time, ...: every paravirtual feature KVM offers.
    let features = |leaves: &Leaves| leaves.get(&0x4000_0001).map_or(0, |r| r[EAX]);
    let (offered, seen) = (features(&host.supported), features(&guest));
    if offered & !seen != 0 {
        return Err(format!(
            "KVM offers paravirtual features {offered:#x}, the guest sees {seen:#x}: missing {:#x}",
            offered & !seen
        ));
    }
    Ok(())
}

fn invariant_tsc_and_frequency() -> Result<(), String> {
    let (host, guest) = (host()?, guest_leaves()?);
    let invariant = bit(&host.supported, 0x8000_0007, EDX, 8);
    same(
        "invariant TSC (CPUID.0x80000007:EDX[8])",
        bit(&guest, 0x8000_0007, EDX, 8),
        invariant,
        "KVM_GET_SUPPORTED_CPUID",
    )?;
    let kvm_range = host
        .supported
        .get(&0x4000_0000)
        .is_some_and(|r| r[1..] == KVM_SIGNATURE);
    match (invariant && kvm_range, host.tsc_khz) {
        (true, Some(khz)) => {
            let top = guest.get(&0x4000_0000).map_or(0, |r| r[EAX]);
            let timing = guest.get(&TIMING_LEAF).map(|r| r[EAX]);
            if top < TIMING_LEAF || timing != Some(khz) {
                return Err(format!(
                    "the TSC is invariant at {khz} kHz (KVM_GET_TSC_KHZ), but the guest's \
                     hypervisor range ends at {top:#x} and its timing leaf says {timing:?}"
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn main() {
    run_backend_tests(tiny_guest_tests_on_kvm![
        "cpu_features_tsc_deadline_timer" => tsc_deadline_timer,
        "cpu_features_x2apic_and_arat" => x2apic_and_arat,
        "cpu_features_kvm_paravirt_leaves" => kvm_paravirt_leaves,
        "cpu_features_invariant_tsc_and_frequency" => invariant_tsc_and_frequency,
    ]);
}
