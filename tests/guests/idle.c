/*
 * idle: prints one line and halts with interrupts off, keeping the VM alive but idle. The boot
 * benchmark samples the VMM's CPU time and memory once this line has arrived.
 */
#include "runtime.h"

void guest_main(void)
{
    info("idle", "halting");
    halt_forever();
}
