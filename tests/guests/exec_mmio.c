/*
 * exec-mmio: jumps to an address in the MMIO gap where no RAM and no device is. KVM cannot
 * fetch instructions from there, so it stops the vCPU with KVM_EXIT_INTERNAL_ERROR (emulation
 * failure) on hardware KVM and kvm-pvm alike: the VMM must report that and exit 4.
 */
#include "runtime.h"

/* In the MMIO gap, past capsule's virtio-mmio windows; identity-mapped by the guest's tables. */
#define UNBACKED_ADDR 0xdff00000UL

void guest_main(void)
{
    info("exec-mmio", "jumping to unbacked address 0x%lx", UNBACKED_ADDR);
    ((void (*)(void))UNBACKED_ADDR)();
    report_fail("exec-mmio", "returned from executing unbacked memory");
    debug_exit(DEBUG_EXIT_FAIL);
    halt_forever();
}
