// SPDX-License-Identifier: GPL-2.0
/*
 * CONTAINER_IOC_SET_DEVICES: once a container has a device list, its
 * members can open only the devices on it (EPERM for others, through any
 * node); other processes are not affected.  Every refusal with its errno.
 */
#include "ct.h"
#include <sys/sysmacros.h>

/* Opens path in a member of fd; returns 0 if it opened, else its errno. */
static int open_in(int fd, const char *path)
{
	pid_t pid = fork_into_container(fd);
	int st;

	if (pid == 0) {
		int f = open(path, O_RDONLY | O_CLOEXEC);

		_exit(f >= 0 ? 0 : errno);
	}
	st = ct_wait(pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int set_as_nobody(void *arg)
{
	struct container_dev d = { 'c', 1, 3, 0 };

	ct_become_nobody();
	return container_set_devices(*(int *)arg, &d, 1) == -1 && errno == EPERM ? 0 : 1;
}

int main(void)
{
	struct container_dev null_only[] = { { 'c', 1, 3, 0 } };
	struct container_dev mem_any[] = { { 'c', 1, CONTAINER_DEV_ANY, 0 } };
	struct container_dev bad = { 'x', 1, 3, 0 }, big[CONTAINER_DEVICES_MAX + 1];
	struct container_devices req = {};
	int a, b, f;

	ct_plan(19);
	memset(big, 0, sizeof(big));

	a = container_create("devlist-a", CONTAINER_FD_CLOEXEC);
	b = container_create("devlist-b", CONTAINER_FD_CLOEXEC);
	ct_ok(a >= 0 && b >= 0 && ct_sleeper(a) > 0 && ct_sleeper(b) > 0, "two running containers");
	ct_ok(open_in(a, "/dev/zero") == 0, "without a list a member opens /dev/zero");

	ct_ok(container_set_devices(a, null_only, 1) == 0, "a's list: only c 1:3 (/dev/null)");
	ct_ok(open_in(a, "/dev/null") == 0, "a member of a opens /dev/null");
	ct_ok(open_in(a, "/dev/zero") == EPERM, "and gets EPERM for /dev/zero (c 1:5)");
	ct_ok(mknod("/tmp/devlist-zero", S_IFCHR | 0666, makedev(1, 5)) == 0,
	      "another node for c 1:5, outside /dev");
	ct_ok(open_in(a, "/tmp/devlist-zero") == EPERM, "is refused too: the number counts, not the node");
	ct_ok(open_in(a, "/tmp") == 0, "files that are no devices are not affected");
	ct_ok(open_in(b, "/dev/zero") == 0, "a member of b still opens /dev/zero");
	f = open("/dev/zero", O_RDONLY | O_CLOEXEC);
	ct_ok(f >= 0, "so does the caller outside");
	close(f);

	ct_ok(container_set_devices(a, mem_any, 1) == 0 && open_in(a, "/dev/zero") == 0,
	      "c 1:* allows every minor of major 1");
	ct_ok(container_set_devices(a, NULL, 0) == 0 && open_in(a, "/dev/tty") != EPERM,
	      "an empty list removes it");

	/* Refusals. */
	CT_ERR(container_set_devices(a, &bad, 1), EINVAL, "a type other than 'c' or 'b': EINVAL");
	bad.type = 'c';
	bad.reserved = 1;
	CT_ERR(container_set_devices(a, &bad, 1), EINVAL, "a non-zero reserved field: EINVAL");
	CT_ERR(container_set_devices(a, big, CONTAINER_DEVICES_MAX + 1), E2BIG, "more than CONTAINER_DEVICES_MAX: E2BIG");
	req.flags = 1;
	CT_ERR(ioctl(a, CONTAINER_IOC_SET_DEVICES, &req), EINVAL, "non-zero flags: EINVAL");
	CT_ERR(container_set_devices(a, (void *)8, 1), EFAULT, "a bad list pointer: EFAULT");
	ct_ok(ct_in_child(set_as_nobody, &a) == 0, "a caller who does not own it: EPERM");
	ct_ok(!strcmp(ct_state("devlist-a"), "running"), "/proc/containers shows it running");

	unlink("/tmp/devlist-zero");
	container_kill(a, SIGKILL);
	container_kill(b, SIGKILL);
	while (wait(NULL) > 0)
		;
	close(a);
	close(b);
	return ct_exit();
}
