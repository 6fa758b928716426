/* Shared runtime for capsule's test guests; see runtime.h. */
#include "runtime.h"

/* ---- memory and strings ---- */

void *memset(void *dst, int c, size_t n)
{
    void *d = dst;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    void *d = dst;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    u8 *d = dst;
    const u8 *s = src;
    if (d <= s || d >= s + n)
        return memcpy(dst, src, n);
    while (n--)
        d[n] = s[n];
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *x = a, *y = b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i])
            return x[i] < y[i] ? -1 : 1;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

size_t strnlen(const char *s, size_t max)
{
    size_t n = 0;
    while (n < max && s[n])
        n++;
    return n;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (a[i] != b[i])
            return (u8)a[i] < (u8)b[i] ? -1 : 1;
        if (!a[i])
            return 0;
    }
    return 0;
}

u32 fnv1a32(const void *data, size_t len)
{
    const u8 *p = data;
    u32 h = 0x811c9dc5u;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x01000193u;
    }
    return h;
}

int phys_range_mapped(u64 addr, u64 size)
{
    return addr < MAPPED_LIMIT && size <= MAPPED_LIMIT - addr;
}

/* ---- serial ---- */

#define UART_THR 0
#define UART_IER 1
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define UART_LSR_THRE 0x20

void serial_init(void)
{
    outb(COM1 + UART_IER, 0x00); /* no interrupts: we poll */
    outb(COM1 + UART_LCR, 0x03); /* 8N1, DLAB off */
    outb(COM1 + UART_MCR, 0x03); /* DTR, RTS */
}

void serial_putc(char c)
{
    /* Bounded wait: a VMM that never reports THRE must not hang the guest silently. */
    for (unsigned i = 0; i < 100000; i++)
        if (inb(COM1 + UART_LSR) & UART_LSR_THRE)
            break;
    outb(COM1 + UART_THR, (u8)c);
}

void serial_write(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\n')
            serial_putc('\r');
        serial_putc(s[i]);
    }
}

/* ---- formatted output ----
 * One formatter, writing through a sink: the serial port (print) or a buffer (snprint).
 */

struct sink {
    void (*write)(struct sink *sk, const char *s, size_t n);
    char *buf; /* snprint only */
    size_t size, used;
};

static void sink_fill(struct sink *sk, char c, unsigned count)
{
    for (; count; count--)
        sk->write(sk, &c, 1);
}

static void put_padded(struct sink *sk, const char *s, size_t n, unsigned width, char pad)
{
    if (width > n)
        sink_fill(sk, pad, width - (unsigned)n);
    sk->write(sk, s, n);
}

static void put_number(struct sink *sk, u64 v, unsigned base, int upper, int negative,
                       unsigned width, char pad)
{
    char buf[24];
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    size_t i = sizeof(buf);
    do {
        buf[--i] = digits[v % base];
        v /= base;
    } while (v);
    if (negative) {
        if (pad == '0') {
            sk->write(sk, "-", 1);
            width = width ? width - 1 : 0;
        } else {
            buf[--i] = '-';
        }
    }
    put_padded(sk, buf + i, sizeof(buf) - i, width, pad);
}

static void vformat(struct sink *sk, const char *fmt, va_list ap)
{
    for (const char *p = fmt; *p; p++) {
        if (*p != '%') {
            const char *start = p;
            while (p[1] && p[1] != '%')
                p++;
            sk->write(sk, start, (size_t)(p - start + 1));
            continue;
        }
        p++;
        char pad = ' ';
        unsigned width = 0;
        int precision = -1;
        if (*p == '0') {
            pad = '0';
            p++;
        }
        while (*p >= '0' && *p <= '9')
            width = width * 10 + (unsigned)(*p++ - '0');
        if (*p == '.' && p[1] == '*') {
            precision = va_arg(ap, int);
            p += 2;
        }
        int lng = 0;
        while (*p == 'l' || *p == 'z') {
            lng = 1;
            p++;
        }
        switch (*p) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            size_t n = precision >= 0 ? strnlen(s, (size_t)precision) : strlen(s);
            put_padded(sk, s, n, width, ' ');
            break;
        }
        case 'c': {
            char c = (char)va_arg(ap, int);
            sk->write(sk, &c, 1);
            break;
        }
        case 'd':
        case 'i': {
            long long v = lng ? va_arg(ap, long long) : va_arg(ap, int);
            put_number(sk, v < 0 ? -(u64)v : (u64)v, 10, 0, v < 0, width, pad);
            break;
        }
        case 'u':
            put_number(sk, lng ? va_arg(ap, u64) : va_arg(ap, unsigned), 10, 0, 0, width, pad);
            break;
        case 'x':
        case 'X':
            put_number(sk, lng ? va_arg(ap, u64) : va_arg(ap, unsigned), 16, *p == 'X', 0,
                       width, pad);
            break;
        case 'p':
            sk->write(sk, "0x", 2);
            put_number(sk, (u64)(uintptr_t)va_arg(ap, void *), 16, 0, 0, width, pad);
            break;
        case '%':
            sk->write(sk, "%", 1);
            break;
        case '\0':
            return;
        default:
            sk->write(sk, p - 1, 2);
        }
    }
}

static void serial_sink_write(struct sink *sk, const char *s, size_t n)
{
    (void)sk;
    serial_write(s, n);
}

static void buf_sink_write(struct sink *sk, const char *s, size_t n)
{
    for (size_t i = 0; i < n && sk->used + 1 < sk->size; i++)
        sk->buf[sk->used++] = s[i];
}

void vprint(const char *fmt, va_list ap)
{
    struct sink sk = { .write = serial_sink_write };
    vformat(&sk, fmt, ap);
}

size_t snprint(char *buf, size_t size, const char *fmt, ...)
{
    struct sink sk = { .write = buf_sink_write, .buf = buf, .size = size };
    va_list ap;
    va_start(ap, fmt);
    vformat(&sk, fmt, ap);
    va_end(ap);
    if (size)
        buf[sk.used] = '\0';
    return sk.used;
}

void print(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprint(fmt, ap);
    va_end(ap);
}

/* ---- reports ---- */

static unsigned failure_count;

unsigned failures(void) { return failure_count; }

static void vreport(int ok, const char *check, const char *fmt, va_list ap)
{
    if (!ok)
        failure_count++;
    print(REPORT_PREFIX "%s %s", ok ? "ok" : "not ok", check);
    if (fmt && *fmt) {
        serial_write(": ", 2);
        vprint(fmt, ap);
    }
    serial_write("\n", 1);
}

void report_ok(const char *check, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(1, check, fmt, ap);
    va_end(ap);
}

void report_fail(const char *check, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(0, check, fmt, ap);
    va_end(ap);
}

int report(int ok, const char *check, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(ok, check, fmt, ap);
    va_end(ap);
    return ok;
}

void info(const char *key, const char *fmt, ...)
{
    va_list ap;
    print(REPORT_PREFIX "%s ", key);
    va_start(ap, fmt);
    vprint(fmt, ap);
    va_end(ap);
    serial_write("\n", 1);
}

/* ---- ending ---- */

void debug_exit(u32 code) { outl(DEBUG_EXIT_PORT, code); }

void i8042_reset(void) { outb(0x64, 0xfe); }

noreturn void halt_forever(void)
{
    for (;;)
        __asm__ volatile("cli; hlt");
}

noreturn void guest_done(void)
{
    print(REPORT_PREFIX "done\n");
    debug_exit(failure_count ? DEBUG_EXIT_FAIL : DEBUG_EXIT_PASS);
    i8042_reset();
    halt_forever();
}

/* ---- command line ---- */

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n'; }

int cmdline_next(const char **pos, const char *key, const char **val, size_t *len)
{
    if (!boot.cmdline)
        return 0;
    const char *p = *pos ? *pos : boot.cmdline;
    size_t klen = strlen(key);
    while (*p) {
        while (is_space(*p))
            p++;
        const char *tok = p;
        while (*p && !is_space(*p))
            p++;
        size_t tlen = (size_t)(p - tok);
        if (tlen >= klen && !memcmp(tok, key, klen) && (tlen == klen || tok[klen] == '=')) {
            *pos = p;
            if (val)
                *val = tlen == klen ? tok + tlen : tok + klen + 1;
            if (len)
                *len = tlen == klen ? 0 : tlen - klen - 1;
            return 1;
        }
    }
    *pos = p;
    return 0;
}

int cmdline_get(const char *key, const char **val, size_t *len)
{
    const char *pos = NULL;
    return cmdline_next(&pos, key, val, len);
}

int cmdline_has(const char *key) { return cmdline_get(key, NULL, NULL); }

int parse_u64(const char *s, size_t len, u64 *out)
{
    u64 v = 0;
    unsigned base = 10;
    if (len > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
        len -= 2;
    }
    if (!len)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (base == 16 && c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else if (base == 16 && c >= 'A' && c <= 'F')
            d = (unsigned)(c - 'A' + 10);
        else
            return 0;
        if (v > (~0ull - d) / base)
            return 0; /* overflow */
        v = v * base + d;
    }
    *out = v;
    return 1;
}

int parse_size(const char *s, size_t len, u64 *out)
{
    unsigned shift = 0;
    if (len) {
        switch (s[len - 1]) {
        case 'k': case 'K': shift = 10; break;
        case 'm': case 'M': shift = 20; break;
        case 'g': case 'G': shift = 30; break;
        }
        /* "0x...b" style hex digits are never suffixes; K/M/G are not hex digits anyway. */
        if (shift)
            len--;
    }
    u64 v;
    if (!parse_u64(s, len, &v) || (shift && v > (~0ull >> shift)))
        return 0;
    *out = v << shift;
    return 1;
}

int cmdline_u64(const char *key, u64 *out)
{
    const char *v;
    size_t n;
    return cmdline_get(key, &v, &n) && parse_u64(v, n, out);
}

/* ---- entry from start.S ---- */

void boot_info_init(enum boot_path path, u64 raw); /* boot.c */
/* Defined only in the test-only "linux64 shim" builds (linux64_shim.c). */
extern noreturn void linux64_shim(void) __attribute__((weak));

noreturn void guest_start(u32 path, u64 raw);
noreturn void guest_start(u32 path, u64 raw)
{
    serial_init();
    boot_info_init((enum boot_path)path, raw);
    if (path == BOOT_PVH && linux64_shim)
        linux64_shim();
    guest_main();
    guest_done();
}
