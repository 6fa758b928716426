/*
 * virtio-mmio probe: for each `virtio_mmio.device=<size>@<addr>:<irq>[:<id>]` entry on the
 * command line (the format of Linux's virtio_mmio driver), reads MagicValue, Version, DeviceID
 * and VendorID, and checks the transport: magic "virt" (0x74726976) and version 2 (not legacy).
 * Transports with DeviceID 0 are placeholders without a device and are not counted.
 * The device ids found must equal `capsule.expect_virtio=<id>[,<id>...]` (in any order).
 */
#include "runtime.h"

#define VIRTIO_MMIO_MAGIC_VALUE 0x000
#define VIRTIO_MMIO_VERSION     0x004
#define VIRTIO_MMIO_DEVICE_ID   0x008
#define VIRTIO_MMIO_VENDOR_ID   0x00c
#define VIRTIO_MAGIC            0x74726976u /* "virt" */

#define MAX_DEVICES 32

static void sort_ids(u32 *ids, unsigned n)
{
    for (unsigned i = 1; i < n; i++)
        for (unsigned j = i; j > 0 && ids[j - 1] > ids[j]; j--) {
            u32 t = ids[j];
            ids[j] = ids[j - 1];
            ids[j - 1] = t;
        }
}

/* Parses "<size>@<addr>:<irq>[:<id>]". */
static int parse_device(const char *s, size_t n, u64 *size, u64 *addr, u64 *irq)
{
    size_t at = 0, colon;
    while (at < n && s[at] != '@')
        at++;
    colon = at;
    while (colon < n && s[colon] != ':')
        colon++;
    size_t irq_end = colon + 1;
    while (irq_end < n && s[irq_end] != ':')
        irq_end++;
    return at < n && colon < n && parse_size(s, at, size) &&
           parse_size(s + at + 1, colon - at - 1, addr) &&
           parse_u64(s + colon + 1, irq_end - colon - 1, irq);
}

void guest_main(void)
{
    u32 found[MAX_DEVICES], want[MAX_DEVICES];
    unsigned nfound = 0, nwant = 0, entries = 0;

    const char *pos = NULL, *v;
    size_t len;
    while (cmdline_next(&pos, "virtio_mmio.device", &v, &len)) {
        char check[24];
        snprint(check, sizeof(check), "virtio-mmio-%u", entries++);
        u64 size, addr, irq;
        if (!parse_device(v, len, &size, &addr, &irq)) {
            report_fail(check, "cannot parse virtio_mmio.device=%.*s", (int)len, v);
            continue;
        }
        if (size < 0x100 || !phys_range_mapped(addr, size)) {
            report_fail(check, "window 0x%lx+0x%lx is too small or outside the mapped 4 GiB",
                        addr, size);
            continue;
        }
        u32 magic = mmio_read32(addr + VIRTIO_MMIO_MAGIC_VALUE);
        u32 version = mmio_read32(addr + VIRTIO_MMIO_VERSION);
        u32 device = mmio_read32(addr + VIRTIO_MMIO_DEVICE_ID);
        u32 vendor = mmio_read32(addr + VIRTIO_MMIO_VENDOR_ID);
        info("virtio-mmio", "0x%lx size 0x%lx irq %lu: magic 0x%08x version %u device %u "
                            "vendor 0x%08x",
             addr, size, irq, magic, version, device, vendor);
        if (magic != VIRTIO_MAGIC || version != 2) {
            report_fail(check, "magic 0x%08x version %u at 0x%lx (expected 0x%08x, version 2)",
                        magic, version, addr, VIRTIO_MAGIC);
            continue;
        }
        report_ok(check, "device %u at 0x%lx", device, addr);
        if (device != 0 && nfound < MAX_DEVICES)
            found[nfound++] = device;
    }
    if (!entries)
        report_fail("virtio-devices", "no virtio_mmio.device= entries on the command line");

    if (!cmdline_get("capsule.expect_virtio", &v, &len)) {
        report_fail("virtio-devices", "capsule.expect_virtio missing from the command line");
        return;
    }
    for (size_t i = 0; i < len && nwant < MAX_DEVICES;) {
        size_t j = i;
        while (j < len && v[j] != ',')
            j++;
        u64 id;
        if (!parse_u64(v + i, j - i, &id)) {
            report_fail("virtio-devices", "capsule.expect_virtio=%.*s is malformed", (int)len, v);
            return;
        }
        want[nwant++] = (u32)id;
        i = j + 1;
    }
    sort_ids(found, nfound);
    sort_ids(want, nwant);
    char list[MAX_DEVICES * 11 + 1] = "";
    size_t used = 0;
    for (unsigned i = 0; i < nfound; i++)
        used += snprint(list + used, sizeof(list) - used, "%s%u", i ? "," : "", found[i]);
    int ok = nfound == nwant && !memcmp(found, want, nfound * sizeof(u32));
    report(ok, "virtio-devices", "device ids found [%s], expected [%.*s]", list, (int)len, v);
}
