/*
 * cpu_features: reports the CPUID leaves a Linux guest's timers and clocks depend on, as
 *   capsule-guest: cpuid <leaf> <eax> <ebx> <ecx> <edx>      (hex, subleaf 0)
 * for leaf 1 (TSC-deadline, x2APIC, hypervisor bits), leaf 6 (ARAT), the hypervisor range from
 * 0x40000000 up to the highest leaf it announces (KVM's signature and paravirtual features,
 * the timing leaf 0x40000010) and 0x80000007 (invariant TSC). The test compares them with
 * what KVM says it supports.
 */
#include "runtime.h"

static void cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

static void show(u32 leaf)
{
    u32 a, b, c, d;
    cpuid(leaf, &a, &b, &c, &d);
    info("cpuid", "%x %x %x %x %x", leaf, a, b, c, d);
}

void guest_main(void)
{
    u32 a, b, c, d;
    show(1);
    show(6);
    cpuid(0x40000000, &a, &b, &c, &d);
    show(0x40000000);
    /* Only a hypervisor range with a plausible top is walked. */
    if (a >= 0x40000001 && a <= 0x400000ff) {
        for (u32 leaf = 0x40000001; leaf <= a; leaf++)
            show(leaf);
    }
    cpuid(0x80000000, &a, &b, &c, &d);
    if (a >= 0x80000007)
        show(0x80000007);
    report_ok("cpuid-reported", "done");
}
