// SPDX-License-Identifier: GPL-2.0
/*
 * CONTAINER_IOC_SET_ROOT: a directory in the container's mount namespace
 * becomes the root of members forked afterwards and of lookups through the
 * container fd; every refusal with its errno.
 */
#include "ct.h"
#include <linux/capability.h>

static int has_marker(void)
{
	char cwd[64];

	if (access("/marker", F_OK) != 0)
		return 1;
	if (!getcwd(cwd, sizeof(cwd)) || strcmp(cwd, "/"))
		return 2;
	return 0;
}

static int lacks_marker(void)
{
	return access("/marker", F_OK) != 0 ? 0 : 1;
}

static pid_t run(int fd, int (*fn)(void))
{
	pid_t pid = fork_into_container(fd);

	if (pid == 0)
		_exit(fn());
	return pid;
}

static int drop_caps(unsigned long long caps)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];

	if (syscall(SYS_capget, &h, d))
		return -1;
	d[0].effective &= ~(unsigned int)caps;
	d[1].effective &= ~(unsigned int)(caps >> 32);
	return syscall(SYS_capset, &h, d);
}

struct args {
	int fd, dir;
};

static int set_without_chroot_cap(void *p)
{
	struct args *a = p;

	if (drop_caps(1ULL << CAP_SYS_CHROOT))
		return 9;
	return container_set_root(a->fd, a->dir) == -1 && errno == EPERM ? 0 : 1;
}

static int set_without_search(void *p)
{
	struct args *a = p;

	if (drop_caps((1ULL << CAP_DAC_OVERRIDE) | (1ULL << CAP_DAC_READ_SEARCH)))
		return 9;
	return container_set_root(a->fd, a->dir) == -1 && errno == EACCES ? 0 : 1;
}

static int set_as_nobody(void *p)
{
	struct args *a = p;

	ct_become_nobody();
	return container_set_root(a->fd, a->dir) == -1 && errno == EPERM ? 0 : 1;
}

int main(void)
{
	int fd, dir, file, host, empty, closed, mfd, st;
	struct args a;
	char row[256];
	pid_t init;

	ct_plan(17);

	fd = container_create("ct-root", CONTAINER_NEW_FS_NS | CONTAINER_FD_CLOEXEC);
	ct_ok(mkdirat(fd, "tmp/newroot", 0755) == 0, "a directory made inside the container");
	mfd = openat(fd, "tmp/newroot/marker", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	ct_ok(mfd >= 0, "with a marker file in it");
	close(mfd);
	init = fork_into_container(fd);
	if (init == 0) {
		for (;;)
			pause();
	}
	st = ct_wait_timeout(run(fd, lacks_marker), 10000);
	ct_ok(ct_exited(st, 0), "before: members do not see the marker at /");

	dir = openat(fd, "tmp/newroot", O_PATH | O_DIRECTORY | O_CLOEXEC);
	ct_ok(container_set_root(fd, dir) == 0, "CONTAINER_IOC_SET_ROOT after init started");
	st = ct_wait_timeout(run(fd, has_marker), 10000);
	ct_ok(ct_exited(st, 0), "a member forked afterwards has it as root and cwd (%d)", WEXITSTATUS(st));
	mfd = openat(fd, "marker", O_RDONLY | O_CLOEXEC);
	ct_ok(mfd >= 0, "the container fd as dirfd resolves from the new root");
	close(mfd);
	snprintf(row, sizeof(row), "/proc/%d/root/tmp/newroot/marker", init);
	ct_ok(access(row, F_OK) == 0, "the running init keeps its old root");
	ct_ok(!strcmp(ct_state("ct-root"), "running"), "/proc/containers shows it running");

	/* Refusals. */
	CT_ERR(container_set_root(fd, 9999), EBADF, "a closed dirfd: EBADF");
	file = openat(fd, "marker", O_RDONLY | O_CLOEXEC);
	CT_ERR(container_set_root(fd, file), ENOTDIR, "a file that is no directory: ENOTDIR");
	CT_ERR(container_set_root(file, dir), ENOTTY, "a target that is no container: ENOTTY");
	host = open("/tmp", O_PATH | O_DIRECTORY | O_CLOEXEC);
	CT_ERR(container_set_root(fd, host), EINVAL, "a directory of another mount namespace: EINVAL");
	empty = container_create("ct-root-empty", CONTAINER_NEW_EMPTY_FS_NS | CONTAINER_FD_CLOEXEC);
	CT_ERR(container_set_root(empty, host), ENOENT, "a container without a mount namespace yet: ENOENT");
	a.fd = fd;
	a.dir = dir;
	ct_ok(ct_in_child(set_as_nobody, &a) == 0, "a caller who does not own it: EPERM");
	ct_ok(ct_in_child(set_without_chroot_cap, &a) == 0, "an owner without CAP_SYS_CHROOT: EPERM");
	ct_ok(mkdirat(fd, "closed", 0700) == 0 && fchownat(fd, "closed", 1000, 1000, 0) == 0,
	      "a directory the caller may not search");
	closed = openat(fd, "closed", O_PATH | O_DIRECTORY | O_CLOEXEC);
	a.dir = closed;
	ct_ok(ct_in_child(set_without_search, &a) == 0, "an owner without search permission: EACCES");

	container_kill(fd, SIGKILL);
	while (wait(&st) > 0)
		;
	close(fd);
	close(empty);
	return ct_exit();
}
