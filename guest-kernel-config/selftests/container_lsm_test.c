// SPDX-License-Identifier: GPL-2.0
/*
 * The container LSM hooks, through the container_test LSM: a blob per
 * container filled at alloc and checked at free, and alloc refusing.
 */
#include "ct.h"

#define DIR "/sys/kernel/security/container_test/"

static long counter(const char *name)
{
	char buf[32];

	if (ct_read_file(name, buf, sizeof(buf)) <= 0)
		return -1;
	return strtol(buf, NULL, 10);
}

int main(void)
{
	long alloc0, freed0, alloc1;
	int fd;

	ct_plan(8);

	alloc0 = counter(DIR "allocated");
	freed0 = counter(DIR "freed");
	ct_ok(alloc0 >= 0 && freed0 >= 0, "container_test LSM counters are readable");
	fd = container_create("ct-lsm", CONTAINER_FD_CLOEXEC);
	ct_ok(fd >= 0 && counter(DIR "allocated") == alloc0 + 1, "container_alloc ran once for a new container");
	close(fd);
	ct_ok(CT_EVENTUALLY(counter(DIR "freed") == freed0 + 1, 2000),
	      "container_free ran once when it went away, with its blob intact");
	ct_ok(counter(DIR "bad_blobs") == 0, "no container_free found a foreign blob");

	ct_ok(ct_write_file(DIR "deny_prefix", "lsm-deny") == 0, "the LSM is told to refuse lsm-deny*");
	alloc1 = counter(DIR "allocated");
	CT_ERR(container_create("lsm-deny-1", 0), EPERM, "container_alloc refusing makes creation fail with its error");
	ct_ok(counter(DIR "allocated") == alloc1 && ct_id("lsm-deny-1") == 0, "the refused container does not exist");
	fd = container_create("lsm-ok", CONTAINER_FD_CLOEXEC);
	ct_ok(fd >= 0, "other names are still allowed");
	close(fd);
	ct_write_file(DIR "deny_prefix", "\n");
	return ct_exit();
}
