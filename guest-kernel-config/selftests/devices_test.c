// SPDX-License-Identifier: GPL-2.0
/*
 * The microVM devices the config promises, as QEMU microvm passes them:
 * virtio-mmio devices from the command line (virtio_mmio.device=), a
 * virtio-blk disk whose first sector holds a known marker, and virtio-rng.
 */
#include "ct.h"
#include <dirent.h>

#define MARKER "CAPSULE-VIRTIO-BLK-TEST"

int main(void)
{
	char buf[512], cmdline[4096];
	struct dirent *d;
	int n = 0, fd;
	DIR *dir;

	ct_plan(5);
	ct_read_file("/proc/cmdline", cmdline, sizeof(cmdline));
	ct_ok(strstr(cmdline, "virtio_mmio.device=") != NULL, "devices are given on the command line");
	dir = opendir("/sys/bus/virtio/devices");
	while (dir && (d = readdir(dir)))
		n += d->d_name[0] != '.';
	if (dir)
		closedir(dir);
	ct_ok(n >= 2, "virtio-mmio probed %d devices", n);
	ct_ok(ct_read_file("/sys/block/vda/size", buf, sizeof(buf)) > 0 && atol(buf) == 2048,
	      "virtio-blk disk vda has 2048 sectors");
	fd = open("/dev/vda", O_RDONLY | O_CLOEXEC);
	memset(buf, 0, sizeof(buf));
	ct_ok(fd >= 0 && read(fd, buf, sizeof(buf)) == sizeof(buf) && !strcmp(buf, MARKER),
	      "its first sector holds the marker");
	close(fd);
	ct_ok(ct_read_file("/sys/class/misc/hw_random/rng_current", buf, sizeof(buf)) > 0 &&
	      !strncmp(buf, "virtio_rng", 10), "virtio-rng is the current hardware RNG");
	return ct_exit();
}
