// SPDX-License-Identifier: GPL-2.0
/*
 * CONTAINER_IOC_SET_CGROUP: every member and later children move to another
 * cgroup v2 directory, kill and freeze follow; every refusal with its errno.
 */
#include "ct.h"

#define CG "/sys/fs/cgroup"

static int in_cgroup(pid_t pid, const char *want)
{
	char path[64], buf[256];

	snprintf(path, sizeof(path), "/proc/%d/cgroup", pid ? pid : getpid());
	if (ct_read_file(path, buf, sizeof(buf)) < 0)
		return 0;
	buf[strcspn(buf, "\n")] = 0;
	return !strcmp(buf, want);
}

/* A member's own child, forked with plain fork(), lands in the new cgroup. */
static int grandchild_check(void)
{
	pid_t pid = fork();

	if (pid == 0)
		_exit(in_cgroup(0, "0::/ct-dst") ? 0 : 1);
	return ct_exited(ct_wait(pid), 0) ? 0 : 1;
}

static int set_as_nobody(void *arg)
{
	int *fds = arg;

	ct_become_nobody();
	return container_set_cgroup(fds[0], fds[1]) == -1 && errno == EPERM ? 0 : 1;
}

static int open_dir(const char *path)
{
	mkdir(path, 0755);
	return open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

int main(void)
{
	int fd, dst, dst2, busy, sub, ctl, tmp, fds[2], st;
	char old[128], procs[256], events[256], text[32];
	pid_t init, m, other;

	ct_plan(23);

	fd = container_create("ct-cg", CONTAINER_FD_CLOEXEC);
	init = ct_sleeper(fd);
	m = ct_sleeper(fd);
	snprintf(old, sizeof(old), "0::/container-%llu", ct_id("ct-cg"));
	ct_ok(in_cgroup(init, old) && in_cgroup(m, old), "members start in the container's own cgroup (%s)", old);

	dst = open_dir(CG "/ct-dst");
	ct_ok(dst >= 0, "an empty cgroup directory opened");
	ct_ok(container_set_cgroup(fd, dst) == 0, "container_set_cgroup() moves the container");
	ct_ok(in_cgroup(init, "0::/ct-dst") && in_cgroup(m, "0::/ct-dst"), "init and the member are in it");
	snprintf(procs, sizeof(procs), CG "/container-%llu/cgroup.procs", ct_id("ct-cg"));
	ct_ok(ct_read_file(procs, events, sizeof(events)) == 0, "the old cgroup has no processes left");
	other = ct_sleeper(fd);
	ct_ok(other > 0 && in_cgroup(other, "0::/ct-dst"), "a process forked in later starts there");
	st = ct_wait_timeout(({ pid_t p = fork_into_container(fd); if (p == 0) _exit(grandchild_check()); p; }), 10000);
	ct_ok(ct_exited(st, 0), "children of members start there too");
	ct_ok(container_set_cgroup(fd, dst) == 0, "moving to the cgroup it is in is a no-op");

	ct_ok(container_freeze(fd, 0) == 0 &&
	      ct_read_file(CG "/ct-dst/cgroup.events", events, sizeof(events)) > 0 &&
	      strstr(events, "frozen 1"), "container_freeze() freezes the new cgroup");
	ct_ok(!strcmp(ct_state("ct-cg"), "frozen"), "/proc/containers shows it frozen");
	ct_ok(container_thaw(fd) == 0 && !strcmp(ct_state("ct-cg"), "running"), "and thaws it");

	/* Refusals. */
	CT_ERR(ioctl(fd, _IO(CONTAINER_IOC_MAGIC, 99), 0), ENOTTY, "an unknown ioctl on a container fd: ENOTTY");
	CT_ERR(container_set_cgroup(fd, 9999), EBADF, "a closed cgroup fd: EBADF");
	tmp = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	CT_ERR(container_set_cgroup(fd, tmp), EBADF, "a directory that is no cgroup: EBADF");
	CT_ERR(container_set_cgroup(tmp, dst), ENOTTY, "a target that is no container: ENOTTY");
	fds[0] = fd;
	fds[1] = dst;
	ct_ok(ct_in_child(set_as_nobody, fds) == 0, "a caller who does not own it: EPERM");

	busy = open_dir(CG "/ct-busy");
	other = fork();
	if (other == 0) {
		for (;;)
			pause();
	}
	snprintf(text, sizeof(text), "%d", other);
	ct_ok(ct_write_file(CG "/ct-busy/cgroup.procs", text) == 0, "a stranger put into another cgroup");
	CT_ERR(container_set_cgroup(fd, busy), EBUSY, "a destination with processes: EBUSY");
	kill(other, SIGKILL);
	ct_wait(other);

	sub = open_dir(CG "/ct-dst/sub");
	CT_ERR(container_set_cgroup(fd, sub), EINVAL, "a destination below the container's cgroup: EINVAL");
	dst2 = open_dir(CG "/ct-dst2");
	CT_ERR(container_set_cgroup(fd, dst2), EBUSY, "a container cgroup with a child cgroup: EBUSY");
	close(sub);
	rmdir(CG "/ct-dst/sub");

	ctl = open_dir(CG "/ct-ctl");
	mkdir(CG "/ct-ctl/leaf", 0755);
	/* memory, not pids: a cgroup with only threaded controllers may still take processes. */
	ct_write_file(CG "/cgroup.subtree_control", "+memory");
	ct_ok(ct_write_file(CG "/ct-ctl/cgroup.subtree_control", "+memory") == 0, "the memory controller enabled below another cgroup");
	CT_ERR(container_set_cgroup(fd, ctl), EBUSY, "a destination with controllers for its children: EBUSY");
	ct_write_file(CG "/ct-ctl/cgroup.subtree_control", "-memory");

	ct_ok(container_set_cgroup(fd, dst2) == 0 && in_cgroup(init, "0::/ct-dst2"),
	      "without the child cgroup it moves on again");

	container_kill(fd, SIGKILL);
	while (wait(&st) > 0)
		;
	close(fd);
	close(dst);
	close(dst2);
	close(busy);
	close(ctl);
	close(tmp);
	rmdir(CG "/ct-ctl/leaf");
	rmdir(CG "/ct-ctl");
	rmdir(CG "/ct-busy");
	ct_write_file(CG "/cgroup.subtree_control", "-memory");
	return ct_exit();
}
