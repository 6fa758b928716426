// SPDX-License-Identifier: GPL-2.0
/*
 * CONTAINER_IOC_SETNS: a container takes a namespace of another container or
 * of a namespace file, as the containers of a pod share network, IPC and
 * UTS; every refusal with its errno.
 */
#include "ct.h"

#define POD (CONTAINER_NEW_UTS_NS | CONTAINER_NEW_IPC_NS | \
	     CONTAINER_NEW_NET_NS | CONTAINER_NEW_PID_NS | \
	     CONTAINER_NEW_FS_NS | CONTAINER_FD_CLOEXEC)

static void stop(int fd)
{
	container_kill(fd, SIGKILL);
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

static int same(pid_t a, pid_t b, const char *ns)
{
	unsigned long x = ct_ns_ino(a, ns), y = ct_ns_ino(b, ns);

	return x && x == y;
}

static int setns_as_nobody(void *arg)
{
	int *fds = arg;

	ct_become_nobody();
	if (container_setns(fds[0], fds[1], CLONE_NEWNET) == 0 || errno != EPERM)
		return 1;
	return 0;
}

static int nsfd_of(pid_t pid, const char *ns)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/%d/ns/%s", pid, ns);
	return open(path, O_RDONLY | O_CLOEXEC);
}

int main(void)
{
	int a, b, c, d, e, f, g, nsfd, pfd[2], fds[2], status;
	pid_t ia, ib, ic, id, ie;
	char row[256];

	ct_plan(37);

	a = container_create("setns-a", POD);
	b = container_create("setns-b", POD);
	ct_ok(a >= 0 && b >= 0, "two pod containers created");

	/* The pod: b takes a's network, IPC and UTS namespaces. */
	ct_ok(container_setns(b, a, CLONE_NEWNET) == 0, "b takes a's network namespace");
	ct_ok(container_setns(b, a, CLONE_NEWIPC) == 0, "b takes a's IPC namespace");
	ct_ok(container_setns(b, a, CLONE_NEWUTS) == 0, "b takes a's UTS namespace");
	ia = ct_sleeper(a);
	ib = ct_sleeper(b);
	ct_ok(ia > 0 && ib > 0, "an init forked into each");
	ct_ok(same(ia, ib, "net") && !same(ia, 0, "net"), "their inits share one network namespace, not the caller's");
	ct_ok(same(ia, ib, "ipc") && !same(ia, 0, "ipc"), "their inits share one IPC namespace");
	ct_ok(same(ia, ib, "uts") && !same(ia, 0, "uts"), "their inits share one UTS namespace");
	ct_ok(!same(ia, ib, "pid") && !same(ia, ib, "mnt"), "pid and mount namespaces stay their own");

	/* Once a process is in, pid and mount namespaces cannot change. */
	CT_ERR(container_setns(b, a, CLONE_NEWPID), EBUSY, "pid namespace after init exists: EBUSY");
	CT_ERR(container_setns(b, a, CLONE_NEWNS), EBUSY, "mount namespace after init exists: EBUSY");
	ct_ok(container_setns(b, a, CLONE_NEWCGROUP) == 0, "a cgroup namespace can be taken after init");

	/* Argument errors. */
	CT_ERR(container_setns(b, a, 0), EINVAL, "a container source without a type: EINVAL");
	CT_ERR(container_setns(b, a, CLONE_NEWNET | CLONE_NEWUTS), EINVAL, "two types at once: EINVAL");
	CT_ERR(container_setns(b, a, CLONE_NEWUSER), EINVAL, "user namespace: EINVAL");
	CT_ERR(container_setns(b, a, CLONE_NEWTIME), EINVAL, "time namespace: EINVAL");
	CT_ERR(container_setns(b, a, CLONE_VM), EINVAL, "a flag that is not a namespace type: EINVAL");
	if (pipe2(pfd, O_CLOEXEC) < 0)
		pfd[0] = pfd[1] = -1;
	CT_ERR(container_setns(b, pfd[0], 0), EINVAL, "a source that is neither container nor namespace: EINVAL");
	CT_ERR(container_setns(pfd[0], a, CLONE_NEWNET), ENOTTY, "a target that is not a container: ENOTTY");
	CT_ERR(ioctl(b, CONTAINER_IOC_SETNS, (void *)8), EFAULT, "a bad argument pointer: EFAULT");
	CT_ERR(container_setns(b, 9999, CLONE_NEWNET), EBADF, "a closed source fd: EBADF");
	CT_ERR(container_setns(9999, a, CLONE_NEWNET), EBADF, "a closed target fd: EBADF");
	fds[0] = b;
	fds[1] = a;
	ct_ok(ct_in_child(setns_as_nobody, fds) == 0, "a caller who owns neither gets EPERM");

	/* A namespace file instead of a container. */
	c = container_create("setns-c", CONTAINER_NEW_NET_NS | CONTAINER_FD_CLOEXEC);
	nsfd = nsfd_of(ia, "net");
	CT_ERR(container_setns(c, nsfd, CLONE_NEWUTS), EINVAL, "a namespace file of another type: EINVAL");
	ct_ok(container_setns(c, nsfd, 0) == 0, "c takes a network namespace file (type 0)");
	ct_ok(container_setns(c, nsfd, CLONE_NEWNET) == 0, "and again with its type given");
	close(nsfd);
	nsfd = nsfd_of(ia, "user");
	CT_ERR(container_setns(c, nsfd, 0), EINVAL, "a user namespace file: EINVAL");
	close(nsfd);
	ic = ct_sleeper(c);
	ct_ok(ic > 0 && same(ic, ia, "net"), "c's init runs in that network namespace");
	ct_ok(ct_proc_row("setns-c", row, sizeof(row)) && !strcmp(ct_state("setns-c"), "running") &&
	      !strcmp(ct_state("setns-b"), "running"), "/proc/containers still lists them as running");

	/* Before init, the pid namespace can be shared. */
	d = container_create("setns-d", CONTAINER_NEW_PID_NS | CONTAINER_FD_CLOEXEC);
	ct_ok(container_setns(d, a, CLONE_NEWPID) == 0, "d takes a's pid namespace before its init");
	id = ct_sleeper(d);
	ct_ok(id > 0 && same(id, ia, "pid"), "d's init runs in a's pid namespace");
	nsfd = nsfd_of(id, "pid");
	e = container_create("setns-e", CONTAINER_NEW_PID_NS | CONTAINER_FD_CLOEXEC);
	ct_ok(container_setns(e, nsfd, CLONE_NEWPID) == 0, "a pid namespace file below the caller's is accepted");
	close(nsfd);
	close(e);

	/* Before init, the mount namespace (and root) can be shared. */
	e = container_create("setns-e2", CONTAINER_NEW_EMPTY_FS_NS | CONTAINER_FD_CLOEXEC);
	f = container_create("setns-f", CONTAINER_NEW_EMPTY_FS_NS | CONTAINER_FD_CLOEXEC);
	g = container_create("setns-g", CONTAINER_FD_CLOEXEC);
	CT_ERR(container_setns(g, f, CLONE_NEWNS), ENOENT, "the mount namespace of a container without a root: ENOENT");
	CT_ERR(fork_into_container(e), ENOENT, "e has no root yet");
	ct_ok(container_setns(e, a, CLONE_NEWNS) == 0, "e takes a's mount namespace");
	ie = ct_sleeper(e);
	ct_ok(ie > 0 && same(ie, ia, "mnt"), "e's init runs in a's mount namespace");
	CT_ERR(ct_mount_tmpfs_root(e), EINVAL, "mounting over a shared root: EINVAL");

	stop(a);
	stop(b);
	stop(c);
	stop(d);
	stop(e);
	while (wait(&status) > 0)
		;
	close(f);
	close(g);
	return ct_exit();
}
