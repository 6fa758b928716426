/*
 * Shared freestanding runtime for capsule's test guests: port and MMIO access, 16550 serial
 * output, formatted printing, report lines, how a guest ends, boot information from either boot
 * path, and kernel command-line parsing. No libc; built with -ffreestanding -mgeneral-regs-only.
 *
 * A guest provides `void guest_main(void)`; the runtime calls it after the serial port and the
 * boot information are set up, then ends the VM with guest_done().
 */
#ifndef CAPSULE_GUEST_RUNTIME_H
#define CAPSULE_GUEST_RUNTIME_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

#define noreturn __attribute__((noreturn))
#define printf_like(f, a) __attribute__((format(printf, f, a)))

/* ---- port I/O and MMIO ---- */

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline u16 inw(u16 port)
{
    u16 v;
    __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline u32 inl(u16 port)
{
    u32 v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline u8 mmio_read8(u64 addr)
{
    u8 v;
    __asm__ volatile("movb %1, %0" : "=q"(v) : "m"(*(volatile u8 *)(uintptr_t)addr));
    return v;
}
static inline u16 mmio_read16(u64 addr)
{
    u16 v;
    __asm__ volatile("movw %1, %0" : "=r"(v) : "m"(*(volatile u16 *)(uintptr_t)addr));
    return v;
}
static inline u32 mmio_read32(u64 addr)
{
    u32 v;
    __asm__ volatile("movl %1, %0" : "=r"(v) : "m"(*(volatile u32 *)(uintptr_t)addr));
    return v;
}
static inline void mmio_write8(u64 addr, u8 v)
{
    __asm__ volatile("movb %1, %0" : "=m"(*(volatile u8 *)(uintptr_t)addr) : "q"(v) : "memory");
}
static inline void mmio_write16(u64 addr, u16 v)
{
    __asm__ volatile("movw %1, %0" : "=m"(*(volatile u16 *)(uintptr_t)addr) : "r"(v) : "memory");
}
static inline void mmio_write32(u64 addr, u32 v)
{
    __asm__ volatile("movl %1, %0" : "=m"(*(volatile u32 *)(uintptr_t)addr) : "r"(v) : "memory");
}

/* Compiler barrier, for ordering plain memory accesses around MMIO. */
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

/*
 * Physical memory the guest can touch: our page tables identity-map the first 4 GiB. Addresses
 * handed over by the VMM are checked against this before they are dereferenced, so a bad pointer
 * becomes a "not ok" report instead of a page fault.
 */
#define MAPPED_LIMIT 0x100000000ull
int phys_range_mapped(u64 addr, u64 size);
/* A pointer to physical address `addr`. Opaque to the compiler, so that small constant
 * addresses (e.g. the BIOS data area at 0x40e) are not taken for null-pointer arithmetic. */
static inline const void *phys_ptr(u64 addr)
{
    uintptr_t p = (uintptr_t)addr;
    __asm__("" : "+r"(p));
    return (const void *)p;
}

/* The guest image, from the linker script. */
extern char __image_start[], __image_end[];

/* ---- memory and strings (gcc may emit calls to the first four) ---- */

void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
size_t strnlen(const char *s, size_t max);
int strncmp(const char *a, const char *b, size_t n);

/* ---- serial console (16550 UART at 0x3f8, polled) ---- */

#define COM1 0x3f8
void serial_init(void);
void serial_putc(char c);
void serial_write(const char *s, size_t n);

/* ---- formatted output ----
 * Supports %s %.*s %c %d %i %u %x %X %p %% with optional 'l'/'ll'/'z' length, '0' flag and width.
 */
void vprint(const char *fmt, va_list ap);
void print(const char *fmt, ...) printf_like(1, 2);
/* Formats into buf (always NUL-terminated when size > 0, truncating); returns the length. */
size_t snprint(char *buf, size_t size, const char *fmt, ...) printf_like(3, 4);

/* ---- report lines (parsed by tests/src/guests.rs) ----
 *   capsule-guest: ok <check>[: <detail>]
 *   capsule-guest: not ok <check>: <detail>
 *   capsule-guest: <key> <text>          (information, e.g. "e820 ...", "cmdline ...")
 *   capsule-guest: done
 * Check names contain no spaces or colons.
 */
#define REPORT_PREFIX "capsule-guest: "
void report_ok(const char *check, const char *fmt, ...) printf_like(2, 3);
void report_fail(const char *check, const char *fmt, ...) printf_like(2, 3);
/* report_ok or report_fail by `ok`; returns `ok`. */
int report(int ok, const char *check, const char *fmt, ...) printf_like(3, 4);
void info(const char *key, const char *fmt, ...) printf_like(2, 3);
unsigned failures(void);

/* ---- ending the VM ----
 * guest_done() prints "done" and ends the VM: first QEMU's isa-debug-exit port (0xf4; QEMU exits
 * with status (code << 1) | 1), then an i8042 reset request (0xfe to port 0x64; capsule and
 * Firecracker-style VMMs end the VM), then cli/hlt forever.
 */
#define DEBUG_EXIT_PORT 0xf4
#define DEBUG_EXIT_PASS 0x10 /* QEMU exit status 33 */
#define DEBUG_EXIT_FAIL 0x11 /* QEMU exit status 35 */
noreturn void guest_done(void);
void debug_exit(u32 code);
void i8042_reset(void);
noreturn void halt_forever(void);

/* ---- boot information from either entry path ---- */

enum boot_path { BOOT_PVH = 1, BOOT_LINUX64 = 2 };

enum mem_type {
    MEM_RAM = 1,
    MEM_RESERVED = 2,
    MEM_ACPI = 3,
    MEM_NVS = 4,
    MEM_UNUSABLE = 5,
};

struct mem_range {
    u64 addr;
    u64 size;
    u32 type;
};

#define BOOT_MAX_MEMMAP 128

struct boot_info {
    enum boot_path path;
    u64 raw;              /* phys addr of hvm_start_info or boot_params */
    const char *problem;  /* structural problem with the boot info, or NULL */

    u64 cmdline_addr;     /* 0 when none was handed over */
    const char *cmdline;  /* NULL when none, or when not NUL-terminated within CMDLINE_MAX */
    size_t cmdline_len;

    u32 memmap_count;     /* entries announced by the VMM (may exceed BOOT_MAX_MEMMAP) */
    struct mem_range memmap[BOOT_MAX_MEMMAP];

    int initrd_announced; /* PVH: nr_modules > 0; Linux: ramdisk_image or ramdisk_size != 0 */
    u64 initrd_addr;
    u64 initrd_size;
    u32 nr_modules;       /* PVH only */
};

#define CMDLINE_MAX 4096
extern struct boot_info boot;
const char *boot_path_name(enum boot_path p);
const char *mem_type_name(u32 type);

/* ---- kernel command line ----
 * Tokens are separated by spaces; a token is "key" or "key=value" (no quoting).
 * cmdline_next() finds the next token with the given key, starting at *pos (a position inside
 * boot.cmdline; start with *pos = NULL), and advances *pos past it. Returns 1 when found.
 */
int cmdline_next(const char **pos, const char *key, const char **val, size_t *len);
int cmdline_get(const char *key, const char **val, size_t *len);
int cmdline_has(const char *key);
/* Parses an unsigned number (decimal, or hex with 0x) spanning exactly `len` chars. */
int parse_u64(const char *s, size_t len, u64 *out);
/* Like parse_u64 but accepts a K/M/G suffix (as Linux's memparse). */
int parse_size(const char *s, size_t len, u64 *out);
/* cmdline_get + parse_u64; returns 1 when present and valid. */
int cmdline_u64(const char *key, u64 *out);

/* FNV-1a, 32-bit: the initrd checksum the tests compute too. */
u32 fnv1a32(const void *data, size_t len);

/* Provided by each guest. */
void guest_main(void);

#endif
