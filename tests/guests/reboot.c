/*
 * reboot: requests a reboot through the i8042 controller (0xfe to port 0x64), and nothing else.
 * QEMU (with -no-reboot) and capsule both end the VM on it. If the VM is still running
 * afterwards, the request was ignored: report it and leave through QEMU's debug-exit port.
 */
#include "runtime.h"

void guest_main(void)
{
    info("reboot", "requesting reset via i8042");
    i8042_reset();
    /* A reset request may take effect asynchronously; give it a moment (no I/O meanwhile). */
    for (unsigned i = 0; i < 1000000; i++)
        __asm__ volatile("pause");
    report_fail("reboot", "still running after the i8042 reset request");
    debug_exit(DEBUG_EXIT_FAIL);
    halt_forever();
}
