/*
 * Boot information from either entry path, normalised into `struct boot_info`:
 *  - PVH: struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h).
 *  - 64-bit Linux boot protocol: struct boot_params, the "zero page"
 *    (Documentation/arch/x86/boot.rst, zero-page.rst).
 * Only structural decoding happens here; judging the values is the bootcheck guest's job.
 * Every pointer handed over by the VMM is checked against the mapped range before use.
 */
#include "runtime.h"

struct boot_info boot;

#define HVM_START_MAGIC 0x336ec578u

struct hvm_start_info {
    u32 magic;
    u32 version;
    u32 flags;
    u32 nr_modules;
    u64 modlist_paddr;
    u64 cmdline_paddr;
    u64 rsdp_paddr;
    /* version >= 1 */
    u64 memmap_paddr;
    u32 memmap_entries;
    u32 reserved;
};

struct hvm_modlist_entry {
    u64 paddr;
    u64 size;
    u64 cmdline_paddr;
    u64 reserved;
};

struct hvm_memmap_table_entry {
    u64 addr;
    u64 size;
    u32 type;
    u32 reserved;
};

/* boot_params offsets */
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE  0x0c4
#define BP_EXT_CMD_LINE_PTR  0x0c8
#define BP_E820_ENTRIES      0x1e8
#define BP_BOOT_FLAG         0x1fe
#define BP_HEADER            0x202
#define BP_RAMDISK_IMAGE     0x218
#define BP_RAMDISK_SIZE      0x21c
#define BP_CMD_LINE_PTR      0x228
#define BP_E820_TABLE        0x2d0
#define BP_E820_MAX          128
#define BP_SIZE              4096

struct __attribute__((packed)) boot_e820_entry {
    u64 addr;
    u64 size;
    u32 type;
};

const char *boot_path_name(enum boot_path p)
{
    switch (p) {
    case BOOT_PVH: return "pvh";
    case BOOT_LINUX64: return "linux64";
    }
    return "unknown";
}

const char *mem_type_name(u32 type)
{
    switch (type) {
    case MEM_RAM: return "ram";
    case MEM_RESERVED: return "reserved";
    case MEM_ACPI: return "acpi";
    case MEM_NVS: return "nvs";
    case MEM_UNUSABLE: return "unusable";
    }
    return "other";
}

static void set_cmdline(u64 addr)
{
    boot.cmdline_addr = addr;
    if (!addr)
        return;
    if (!phys_range_mapped(addr, CMDLINE_MAX)) {
        boot.problem = "command line address outside the mapped 4 GiB";
        return;
    }
    const char *s = phys_ptr(addr);
    size_t n = strnlen(s, CMDLINE_MAX);
    if (n == CMDLINE_MAX) {
        boot.problem = "command line not NUL-terminated within 4 KiB";
        return;
    }
    boot.cmdline = s;
    boot.cmdline_len = n;
}

static void init_pvh(u64 raw)
{
    if (!phys_range_mapped(raw, sizeof(struct hvm_start_info))) {
        boot.problem = "hvm_start_info outside the mapped 4 GiB";
        return;
    }
    const struct hvm_start_info *si = phys_ptr(raw);
    if (si->magic != HVM_START_MAGIC) {
        boot.problem = "hvm_start_info magic is not 0x336ec578";
        return;
    }
    set_cmdline(si->cmdline_paddr);

    boot.nr_modules = si->nr_modules;
    if (si->nr_modules) {
        boot.initrd_announced = 1;
        if (!phys_range_mapped(si->modlist_paddr, sizeof(struct hvm_modlist_entry))) {
            boot.problem = "module list outside the mapped 4 GiB";
        } else {
            const struct hvm_modlist_entry *m = phys_ptr(si->modlist_paddr);
            boot.initrd_addr = m->paddr;
            boot.initrd_size = m->size;
        }
    }

    if (si->version < 1) {
        boot.problem = "hvm_start_info version 0 has no memory map";
        return;
    }
    boot.memmap_count = si->memmap_entries;
    u32 n = si->memmap_entries < BOOT_MAX_MEMMAP ? si->memmap_entries : BOOT_MAX_MEMMAP;
    if (!phys_range_mapped(si->memmap_paddr, (u64)n * sizeof(struct hvm_memmap_table_entry))) {
        boot.problem = "memory map outside the mapped 4 GiB";
        boot.memmap_count = 0;
        return;
    }
    const struct hvm_memmap_table_entry *e = phys_ptr(si->memmap_paddr);
    for (u32 i = 0; i < n; i++) {
        boot.memmap[i].addr = e[i].addr;
        boot.memmap[i].size = e[i].size;
        boot.memmap[i].type = e[i].type;
    }
}

static void init_linux64(u64 raw)
{
    if (!phys_range_mapped(raw, BP_SIZE)) {
        boot.problem = "boot_params outside the mapped 4 GiB";
        return;
    }
    const u8 *bp = phys_ptr(raw);
#define BP(type, off) (*(const type *)(bp + (off)))
    if (BP(u16, BP_BOOT_FLAG) != 0xaa55 || BP(u32, BP_HEADER) != 0x53726448 /* "HdrS" */)
        boot.problem = "boot_params setup header lacks boot_flag 0xaa55 / \"HdrS\"";

    set_cmdline(BP(u32, BP_CMD_LINE_PTR) | (u64)BP(u32, BP_EXT_CMD_LINE_PTR) << 32);

    boot.initrd_addr = BP(u32, BP_RAMDISK_IMAGE) | (u64)BP(u32, BP_EXT_RAMDISK_IMAGE) << 32;
    boot.initrd_size = BP(u32, BP_RAMDISK_SIZE) | (u64)BP(u32, BP_EXT_RAMDISK_SIZE) << 32;
    boot.initrd_announced = boot.initrd_addr || boot.initrd_size;

    u8 n = BP(u8, BP_E820_ENTRIES);
    boot.memmap_count = n;
    if (n > BP_E820_MAX)
        n = BP_E820_MAX;
    const struct boot_e820_entry *e = (const void *)(bp + BP_E820_TABLE);
    for (u32 i = 0; i < n; i++) {
        boot.memmap[i].addr = e[i].addr;
        boot.memmap[i].size = e[i].size;
        boot.memmap[i].type = e[i].type;
    }
#undef BP
}

void boot_info_init(enum boot_path path, u64 raw);
void boot_info_init(enum boot_path path, u64 raw)
{
    boot.path = path;
    boot.raw = raw;
    if (path == BOOT_PVH)
        init_pvh(raw);
    else
        init_linux64(raw);
}
