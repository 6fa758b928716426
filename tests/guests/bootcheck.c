/*
 * bootcheck: checks the boot state the VMM handed over, on whichever path the guest came in.
 *
 * Expectations come from the kernel command line:
 *   capsule.expect_boot=pvh|linux64   boot path
 *   capsule.expect_cpus=N             enabled processor entries in the MP table
 *   capsule.expect_mem_mib=N          guest memory size (usable RAM must be within 1 MiB below it)
 *   capsule.initrd_size=N             initrd expected, with this size in bytes ...
 *   capsule.initrd_sum=0xHEX          ... and this FNV-1a 32-bit checksum (absent: no initrd)
 *   capsule.end                       sentinel, so a truncated command line is detected
 * Every e820 entry and the command line are printed as information lines.
 */
#include "runtime.h"

#define MIB (1ull << 20)

static int expect_u64(const char *check, const char *key, u64 *out)
{
    if (cmdline_u64(key, out))
        return 1;
    report_fail(check, "%s missing or not a number on the command line", key);
    return 0;
}

/* ---- boot path and boot info structure ---- */

static void check_boot_path(void)
{
    const char *name = boot_path_name(boot.path);
    info("boot-path", "%s (boot info at 0x%lx)", name, boot.raw);
    report(boot.problem == NULL, "boot-info", "%s", boot.problem ? boot.problem : "well-formed");

    const char *want;
    size_t n;
    if (!cmdline_get("capsule.expect_boot", &want, &n)) {
        report_fail("boot-path", "capsule.expect_boot missing from the command line");
        return;
    }
    int ok = n == strlen(name) && !memcmp(want, name, n);
    report(ok, "boot-path", "came in on %s, expected %.*s", name, (int)n, want);
}

/* ---- command line ---- */

static void check_cmdline(void)
{
    if (!boot.cmdline_addr) {
        report_fail("cmdline", "no command line handed over");
        return;
    }
    if (!boot.cmdline) {
        report_fail("cmdline", "command line at 0x%lx unusable: %s", boot.cmdline_addr,
                    boot.problem);
        return;
    }
    info("cmdline", "%s", boot.cmdline);
    for (size_t i = 0; i < boot.cmdline_len; i++) {
        char c = boot.cmdline[i];
        if (c < 0x20 || c > 0x7e) {
            report_fail("cmdline", "non-printable byte 0x%02x at offset %zu", (u8)c, i);
            return;
        }
    }
    report(cmdline_has("capsule.end"), "cmdline", "%zu bytes at 0x%lx%s", boot.cmdline_len,
           boot.cmdline_addr, cmdline_has("capsule.end") ? "" : ", sentinel capsule.end missing");
}

/* ---- e820 ---- */

static const struct mem_range *ram_entry_covering(u64 addr, u64 size)
{
    u32 n = boot.memmap_count < BOOT_MAX_MEMMAP ? boot.memmap_count : BOOT_MAX_MEMMAP;
    for (u32 i = 0; i < n; i++) {
        const struct mem_range *e = &boot.memmap[i];
        if (e->type == MEM_RAM && addr >= e->addr && size <= e->size &&
            addr - e->addr <= e->size - size)
            return e;
    }
    return NULL;
}

static void check_e820(void)
{
    u32 count = boot.memmap_count;
    if (count == 0 || count > BOOT_MAX_MEMMAP) {
        report_fail("e820-count", "%u entries (expected 1..%u)", count, BOOT_MAX_MEMMAP);
        return;
    }

    u64 ram_total = 0;
    int order_ok = 1, low_ram = 0;
    const struct mem_range *prev = NULL;
    unsigned empty = 0;
    for (u32 i = 0; i < count; i++) {
        const struct mem_range *e = &boot.memmap[i];
        if (e->size == 0) {
            /* Harmless, and dropped by Linux too (QEMU's qboot appends one). */
            info("e820", "0x%016lx (empty, type %u, ignored)", e->addr, e->type);
            empty++;
            continue;
        }
        u64 last = e->addr + e->size - 1;
        info("e820", "0x%016lx-0x%016lx %s (type %u)", e->addr, last, mem_type_name(e->type),
             e->type);
        if (last < e->addr) {
            report_fail("e820-order", "entry %u wraps around", i);
            order_ok = 0;
        } else if (prev && e->addr < prev->addr + prev->size) {
            report_fail("e820-order", "entry %u (0x%lx) is unsorted or overlaps the one before", i,
                        e->addr);
            order_ok = 0;
        }
        prev = e;
        if (e->type == MEM_RAM) {
            ram_total += e->size;
            if (e->addr == 0)
                low_ram = 1;
        }
    }
    report(count > empty, "e820-count", "%u entries, %u of them empty", count, empty);
    if (order_ok)
        report_ok("e820-order", "sorted, non-overlapping");
    report(low_ram, "e820-low-ram", "%s", low_ram ? "RAM at address 0" : "no RAM entry at address 0");

    u64 start = (u64)(uintptr_t)__image_start, end = (u64)(uintptr_t)__image_end;
    report(ram_entry_covering(start, end - start) != NULL, "e820-image",
           "guest image 0x%lx-0x%lx %s", start, end - 1,
           ram_entry_covering(start, end - start) ? "is in RAM" : "is not inside one RAM entry");

    u64 mib;
    if (expect_u64("e820-total", "capsule.expect_mem_mib", &mib)) {
        u64 want = mib * MIB;
        /* The legacy hole (640 KiB - 1 MiB) and the EBDA are not RAM; nothing else may go. */
        int ok = ram_total <= want && ram_total + MIB >= want;
        report(ok, "e820-total", "%lu KiB of RAM, expected %lu MiB minus at most 1 MiB",
               ram_total >> 10, mib);
    }
}

/* ---- initrd ---- */

static int overlaps(u64 a, u64 asize, u64 b, u64 bsize)
{
    return a < b + bsize && b < a + asize;
}

static void check_initrd(void)
{
    u64 want_size, want_sum;
    int expected = cmdline_has("capsule.initrd_size");
    if (boot.path == BOOT_PVH)
        info("initrd", "%u modules; first at 0x%lx, %lu bytes", boot.nr_modules,
             boot.initrd_addr, boot.initrd_size);
    else
        info("initrd", "ramdisk_image 0x%lx, ramdisk_size %lu", boot.initrd_addr,
             boot.initrd_size);

    if (!expected) {
        report(!boot.initrd_announced, "initrd-present", "none expected, %s",
               boot.initrd_announced ? "but one is announced" : "none announced");
        return;
    }
    if (!report(boot.initrd_announced, "initrd-present", "%s",
                boot.initrd_announced ? "announced" : "expected an initrd, none announced"))
        return;
    if (!expect_u64("initrd-size", "capsule.initrd_size", &want_size))
        return;
    report(boot.initrd_size == want_size, "initrd-size", "%lu bytes, expected %lu",
           boot.initrd_size, want_size);

    u64 a = boot.initrd_addr, n = boot.initrd_size;
    u64 img = (u64)(uintptr_t)__image_start, img_size = (u64)(__image_end - __image_start);
    if (!ram_entry_covering(a, n)) {
        report_fail("initrd-location", "0x%lx+%lu is not inside one RAM entry", a, n);
        report_fail("initrd-checksum", "not computed: initrd location is invalid");
        return;
    }
    if (overlaps(a, n, img, img_size) || overlaps(a, n, boot.raw, 4096) ||
        (boot.cmdline && overlaps(a, n, boot.cmdline_addr, boot.cmdline_len + 1))) {
        report_fail("initrd-location",
                    "0x%lx+%lu overlaps the guest image, the boot info or the command line", a,
                    n);
    } else {
        report_ok("initrd-location", "0x%lx-0x%lx in RAM", a, a + n - 1);
    }

    if (!cmdline_u64("capsule.initrd_sum", &want_sum)) {
        report_fail("initrd-checksum", "capsule.initrd_sum missing or not a number");
        return;
    }
    u32 sum = fnv1a32(phys_ptr(a), (size_t)n);
    report(sum == want_sum, "initrd-checksum", "fnv1a32 %08x, expected %08lx", sum, want_sum);
}

/* ---- MP table (Intel MultiProcessor Specification 1.4, chapter 4) ---- */

#define MP_FPS_SIG 0x5f504d5fu /* "_MP_" */
#define MP_CFG_SIG 0x504d4350u /* "PCMP" */

static u8 byte_sum(u64 addr, u64 len)
{
    const u8 *p = phys_ptr(addr);
    u8 s = 0;
    for (u64 i = 0; i < len; i++)
        s = (u8)(s + p[i]);
    return s;
}

static u64 scan_fps(u64 start, u64 len)
{
    for (u64 a = start; a + 16 <= start + len; a += 16)
        if (*(const u32 *)phys_ptr(a) == MP_FPS_SIG && byte_sum(a, 16) == 0)
            return a;
    return 0;
}

static u64 find_fps(void)
{
    u64 ebda = (u64)*(const u16 *)phys_ptr(0x40e) << 4;
    u64 base_kib = *(const u16 *)phys_ptr(0x413);
    u64 fps = 0;
    if (ebda >= 0x400 && ebda < 0xa0000)
        fps = scan_fps(ebda, 1024);
    if (!fps) {
        u64 top = base_kib >= 1 && base_kib <= 640 ? base_kib << 10 : 640 << 10;
        fps = scan_fps(top - 1024, 1024);
    }
    if (!fps)
        fps = scan_fps(0xf0000, 0x10000);
    return fps;
}

static void check_mptable(void)
{
    u64 want_cpus = 0;
    int have_want = expect_u64("mptable-cpus", "capsule.expect_cpus", &want_cpus);

    u64 fps = find_fps();
    if (!fps) {
        report_fail("mptable-found", "no \"_MP_\" floating pointer with a valid checksum in the "
                                     "EBDA, the last KiB of base memory or 0xf0000-0xfffff");
        return;
    }
    const u8 *f = phys_ptr(fps);
    u64 cfg = *(const u32 *)(f + 4);
    report_ok("mptable-found", "floating pointer at 0x%lx, spec rev 1.%u, config table at 0x%lx",
              fps, f[9], cfg);
    if (f[8] != 1 || f[11] != 0 || cfg == 0) {
        report_fail("mptable-table",
                    "floating pointer length %u, default configuration %u, table pointer 0x%lx",
                    f[8], f[11], cfg);
        return;
    }

    if (!phys_range_mapped(cfg, 0x2c) || *(const u32 *)phys_ptr(cfg) != MP_CFG_SIG) {
        report_fail("mptable-table", "no \"PCMP\" configuration table at 0x%lx", cfg);
        return;
    }
    const u8 *t = phys_ptr(cfg);
    u16 base_len = *(const u16 *)(t + 4), count = *(const u16 *)(t + 0x22);
    u16 ext_len = *(const u16 *)(t + 0x28);
    u32 lapic = *(const u32 *)(t + 0x24);
    if (base_len < 0x2c || !phys_range_mapped(cfg, (u64)base_len + ext_len)) {
        report_fail("mptable-table", "implausible base table length %u", base_len);
        return;
    }
    if (byte_sum(cfg, base_len) != 0) {
        report_fail("mptable-table", "base table checksum is wrong");
        return;
    }
    if (ext_len && (u8)(byte_sum(cfg + base_len, ext_len) + t[0x2a]) != 0) {
        report_fail("mptable-table", "extended table checksum is wrong");
        return;
    }

    /* Walk the entries by the table length, as Linux does: some firmware (QEMU's qboot)
     * leaves the header's entry count at 0. */
    unsigned entries = 0, cpus = 0, enabled = 0, bsps = 0, ioapics = 0, dup_ids = 0;
    u8 seen[256] = { 0 };
    for (u64 off = 0x2c; off < base_len; entries++) {
        u8 type = t[off];
        u64 size = type == 0 ? 20 : 8;
        if (type > 4 || off + size > base_len) {
            report_fail("mptable-table", "entry %u: type %u at offset %lu does not fit", entries,
                        type, off);
            return;
        }
        if (type == 0) {
            u8 id = t[off + 1], flags = t[off + 3];
            info("mptable-cpu", "local APIC id %u%s%s", id, flags & 1 ? " enabled" : " disabled",
                 flags & 2 ? " bsp" : "");
            cpus++;
            if (flags & 1) {
                enabled++;
                dup_ids += seen[id]++ != 0;
            }
            bsps += (flags & 3) == 3;
        } else if (type == 2) {
            info("mptable-ioapic", "id %u at 0x%x%s", t[off + 1], *(const u32 *)(t + off + 4),
                 t[off + 3] & 1 ? "" : " (disabled)");
            ioapics++;
        }
        off += size;
    }
    report_ok("mptable-table",
              "%u entries (header says %u), local APIC at 0x%x, %u processors, %u I/O APICs, "
              "checksums valid",
              entries, count, lapic, cpus, ioapics);

    if (have_want) {
        int ok = enabled == want_cpus && bsps == 1 && dup_ids == 0;
        report(ok, "mptable-cpus", "%u enabled processors (expected %lu), %u bsp, %u duplicate ids",
               enabled, want_cpus, bsps, dup_ids);
    }
}

void guest_main(void)
{
    check_boot_path();
    check_cmdline();
    check_e820();
    check_initrd();
    check_mptable();
}
