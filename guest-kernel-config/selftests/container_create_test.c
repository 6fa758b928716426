// SPDX-License-Identifier: GPL-2.0
/* container_create(): flags, names, the fd, ownership, the cgroup. */
#include "ct.h"
#include <linux/capability.h>

static const struct {
	unsigned int flag;
	const char *name;
} flags[] = {
	{ CONTAINER_NEW_FS_NS, "NEW_FS_NS" },
	{ CONTAINER_NEW_EMPTY_FS_NS, "NEW_EMPTY_FS_NS" },
	{ CONTAINER_NEW_CGROUP_NS, "NEW_CGROUP_NS" },
	{ CONTAINER_NEW_UTS_NS, "NEW_UTS_NS" },
	{ CONTAINER_NEW_IPC_NS, "NEW_IPC_NS" },
	{ CONTAINER_NEW_USER_NS, "NEW_USER_NS" },
	{ CONTAINER_NEW_PID_NS, "NEW_PID_NS" },
	{ CONTAINER_NEW_NET_NS, "NEW_NET_NS" },
	{ CONTAINER_KILL_ON_CLOSE, "KILL_ON_CLOSE" },
	{ CONTAINER_FD_CLOEXEC, "FD_CLOEXEC" },
};
#define NFLAGS (int)(sizeof(flags) / sizeof(flags[0]))

static int create_unprivileged(void *arg)
{
	/* Drop CAP_SYS_ADMIN only, staying root otherwise. */
	if (prctl(PR_CAPBSET_DROP, CAP_SYS_ADMIN) < 0)
		return 90;
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];

	if (syscall(SYS_capget, &h, d) < 0)
		return 91;
	d[CAP_SYS_ADMIN / 32].effective &= ~(1u << (CAP_SYS_ADMIN % 32));
	d[CAP_SYS_ADMIN / 32].permitted &= ~(1u << (CAP_SYS_ADMIN % 32));
	if (syscall(SYS_capset, &h, d) < 0)
		return 92;
	if (container_create("ct-noadmin", 0) >= 0)
		return 1;
	return errno == EPERM ? 0 : 2;
}

static char *cgroup_dir(char *buf, size_t size)
{
	char line[256];
	ssize_t n = ct_read_file("/proc/self/cgroup", line, sizeof(line));

	/* "0::/path" on a cgroup v2 only system */
	if (n < 4 || strncmp(line, "0::", 3))
		return NULL;
	line[strcspn(line, "\n")] = 0;
	snprintf(buf, size, "/sys/fs/cgroup%s", strcmp(line + 3, "/") ? line + 3 : "");
	return buf;
}

int main(void)
{
	char name[80], path[512], link[256], cg[300];
	unsigned long long id;
	struct stat st;
	int fd, i;

	ct_plan(NFLAGS + 19);

	for (i = 0; i < NFLAGS; i++) {
		fd = container_create(flags[i].name, flags[i].flag);
		ct_ok(fd >= 0, "create with CONTAINER_%s", flags[i].name);
		close(fd);
	}
	fd = container_create("ct-all", CONTAINER__FLAG_MASK & ~CONTAINER_NEW_EMPTY_FS_NS);
	ct_ok(fd >= 0, "create with every flag but NEW_EMPTY_FS_NS");
	close(fd);

	CT_ERR(container_create("ct-bad", 0x400), EINVAL, "unknown flag 0x400 gives EINVAL");
	CT_ERR(container_create("ct-bad", 0x80000000u), EINVAL, "unknown flag 0x80000000 gives EINVAL");
	CT_ERR(container_create("ct-bad", CONTAINER_NEW_FS_NS | CONTAINER_NEW_EMPTY_FS_NS),
	       EINVAL, "NEW_FS_NS|NEW_EMPTY_FS_NS gives EINVAL");
	CT_ERR(container_create("a/b", 0), EINVAL, "'/' in the name gives EINVAL");
	CT_ERR(container_create("", 0), EINVAL, "empty name gives EINVAL");
	CT_ERR(container_create(NULL, 0), EFAULT, "NULL name gives EFAULT");

	memset(name, 'x', CONTAINER_NAME_MAX);
	name[CONTAINER_NAME_MAX] = 0;
	fd = container_create(name, 0);
	ct_ok(fd >= 0, "name of CONTAINER_NAME_MAX (%d) characters is accepted", CONTAINER_NAME_MAX);
	close(fd);
	name[CONTAINER_NAME_MAX] = 'x';
	name[CONTAINER_NAME_MAX + 1] = 0;
	CT_ERR(container_create(name, 0), ENAMETOOLONG, "longer name gives ENAMETOOLONG");

	fd = container_create("ct-cloexec", CONTAINER_FD_CLOEXEC);
	ct_ok(fd >= 0 && (fcntl(fd, F_GETFD) & FD_CLOEXEC), "FD_CLOEXEC sets close-on-exec");
	close(fd);
	fd = container_create("ct-plain", 0);
	ct_ok(fd >= 0 && !(fcntl(fd, F_GETFD) & FD_CLOEXEC), "without FD_CLOEXEC the fd is inherited by exec");

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	memset(link, 0, sizeof(link));
	ct_ok(readlink(path, link, sizeof(link) - 1) > 0 &&
	      !strcmp(link, "anon_inode:[container]"), "the fd is an anon inode [container] (%s)", link);
	ct_ok(read(fd, name, 1) < 0, "the fd cannot be read");

	id = ct_id("ct-plain");
	ct_ok(id > 1, "the container is listed with an id (%llu)", id);
	ct_ok(cgroup_dir(cg, sizeof(cg)) != NULL, "the caller is in a cgroup v2 hierarchy (%s)", cg);
	snprintf(path, sizeof(path), "%s/container-%llu", cg, id);
	ct_ok(stat(path, &st) == 0 && S_ISDIR(st.st_mode), "its cgroup %s exists", path);
	close(fd);
	ct_ok(CT_EVENTUALLY(stat(path, &st) < 0 && errno == ENOENT, 2000),
	      "its cgroup is removed when the last reference goes");
	ct_ok(CT_EVENTUALLY(ct_id("ct-plain") == 0, 2000), "it leaves /proc/containers");

	ct_ok(ct_in_child(create_unprivileged, NULL) == 0, "without CAP_SYS_ADMIN creation gives EPERM");
	return ct_exit();
}
