/*
 * Test-only shim: lets a PVH-only VMM (QEMU microvm) exercise the guests' 64-bit Linux boot
 * protocol path. Linked into the "*-linux64-shim" builds only.
 *
 * Entered from guest_start() on the PVH path, it translates hvm_start_info into a boot_params
 * zero page (e820 table, command line, ramdisk) and re-enters the image at entry64 with
 * %rsi = &zero_page, exactly as a VMM using the 64-bit boot protocol would. entry64 then reloads
 * the GDT and page tables, clears .bss and decodes boot_params as usual.
 *
 * It copies values only; it never judges them, so bootcheck still checks QEMU's boot state.
 */
#include "runtime.h"

extern char entry64[];

/* In .data, not .bss: entry64 clears .bss before the zero page is read. */
static u8 zero_page[4096] __attribute__((aligned(4096), section(".data")));

struct __attribute__((packed)) bp_e820 {
    u64 addr;
    u64 size;
    u32 type;
};

noreturn void linux64_shim(void);
noreturn void linux64_shim(void)
{
    u8 *bp = zero_page;
    memset(bp, 0, sizeof(zero_page));
#define BP(type, off) (*(type *)(bp + (off)))
    BP(u16, 0x1fe) = 0xaa55;     /* boot_flag */
    BP(u32, 0x202) = 0x53726448; /* "HdrS" */
    BP(u16, 0x206) = 0x020f;     /* protocol version 2.15 */
    BP(u32, 0x228) = (u32)boot.cmdline_addr;
    BP(u32, 0x0c8) = (u32)(boot.cmdline_addr >> 32);
    if (boot.initrd_announced) {
        BP(u32, 0x218) = (u32)boot.initrd_addr;
        BP(u32, 0x0c0) = (u32)(boot.initrd_addr >> 32);
        BP(u32, 0x21c) = (u32)boot.initrd_size;
        BP(u32, 0x0c4) = (u32)(boot.initrd_size >> 32);
    }
    u32 n = boot.memmap_count < 128 ? boot.memmap_count : 128;
    struct bp_e820 *e = (struct bp_e820 *)(bp + 0x2d0);
    for (u32 i = 0; i < n; i++) {
        e[i].addr = boot.memmap[i].addr;
        e[i].size = boot.memmap[i].size;
        e[i].type = boot.memmap[i].type;
    }
    BP(u8, 0x1e8) = (u8)n;
#undef BP
    info("linux64-shim", "re-entering at entry64 with boot_params at %p built from PVH start_info",
         (void *)bp);
    __asm__ volatile("jmp *%0" ::"r"(entry64), "S"(bp));
    __builtin_unreachable();
}
