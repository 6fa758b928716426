/*
 * triple-fault: loads an empty IDT (limit 0) and raises an exception. Delivering it faults
 * (#GP), delivering that faults again (#DF), and the third fault shuts the CPU down.
 */
#include "runtime.h"

struct __attribute__((packed)) idt_desc {
    u16 limit;
    u64 base;
};

void guest_main(void)
{
    static const struct idt_desc empty = { 0, 0 };
    info("triple-fault", "loading an empty IDT and executing ud2");
    __asm__ volatile("lidt %0" ::"m"(empty));
    __asm__ volatile("ud2");
    /* Unreachable unless the VMM ignored the shutdown. */
    report_fail("triple-fault", "still running after the triple fault");
    debug_exit(DEBUG_EXIT_FAIL);
    halt_forever();
}
