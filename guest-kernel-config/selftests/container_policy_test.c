// SPDX-License-Identifier: GPL-2.0
/*
 * CONTAINER_IOC_SET_POLICY: a per-container policy handed to an LSM from
 * outside.  The container_test LSM's policy lists operations the members of
 * that container may not do; members of other containers and processes
 * outside are unaffected.  Every refusal with its errno.
 */
#include "ct.h"
#include <sys/sysmacros.h>

#define LSM "container_test"

/* Forks a member that tries mkdir and mknod in /tmp; returns its exit code. */
static int try_in(int fd, const char *tag)
{
	pid_t pid = fork_into_container(fd);
	char path[64];
	int r = 0;

	if (pid == 0) {
		snprintf(path, sizeof(path), "/tmp/policy-%s-dir", tag);
		if (mkdir(path, 0755) < 0)
			r |= errno == EACCES ? 1 : 4;
		snprintf(path, sizeof(path), "/tmp/policy-%s-fifo", tag);
		if (mknod(path, S_IFIFO | 0600, 0) < 0)
			r |= errno == EACCES ? 2 : 8;
		_exit(r);
	}
	return WEXITSTATUS(ct_wait(pid));
}

/* An init that stays, so that members come and go. */
static int set_as_nobody(void *arg)
{
	ct_become_nobody();
	return container_set_policy(*(int *)arg, LSM, "mkdir", 5) == -1 && errno == EPERM ? 0 : 1;
}

int main(void)
{
	char big[CONTAINER_POLICY_MAX + 1], longname[40];
	struct container_policy req = {};
	int a, b;

	ct_plan(18);
	memset(big, 'x', sizeof(big));
	memset(longname, 'l', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = 0;

	a = container_create("policy-a", CONTAINER_FD_CLOEXEC);
	b = container_create("policy-b", CONTAINER_FD_CLOEXEC);
	ct_ok(a >= 0 && b >= 0 && ct_sleeper(a) > 0 && ct_sleeper(b) > 0,
	      "two running containers sharing the caller's /tmp");
	ct_ok(try_in(a, "a0") == 0, "without a policy, a member of a may mkdir and mknod");

	ct_ok(container_set_policy(a, LSM, "mkdir", 5) == 0, "policy \"mkdir\" set on a from outside");
	ct_ok(try_in(a, "a1") == 1, "a member of a now gets EACCES from mkdir, not from mknod");
	ct_ok(try_in(b, "b1") == 0, "a member of b is not affected");
	ct_ok(mkdir("/tmp/policy-outside", 0755) == 0, "nor is the caller outside");
	ct_ok(mkdirat(a, "tmp/policy-by-owner", 0755) == 0, "nor the owner working in a through its fd");

	ct_ok(container_set_policy(a, LSM, "mkdir,mknod\n", 12) == 0, "policy \"mkdir,mknod\" replaces it");
	ct_ok(try_in(a, "a2") == 3, "both are refused in a");
	ct_ok(container_set_policy(a, LSM, "", 0) == 0 && try_in(a, "a3") == 0,
	      "an empty policy allows everything again");

	/* Refusals. */
	CT_ERR(container_set_policy(a, LSM, "rmdir", 5), EINVAL, "a word the LSM does not know: EINVAL");
	CT_ERR(container_set_policy(a, "selinux", "x", 1), EOPNOTSUPP, "an LSM that takes no container policy: EOPNOTSUPP");
	CT_ERR(container_set_policy(a, longname, "x", 1), ENAMETOOLONG, "an LSM name too long: ENAMETOOLONG");
	CT_ERR(container_set_policy(a, LSM, big, sizeof(big)), E2BIG, "a policy over CONTAINER_POLICY_MAX: E2BIG");
	req.lsm = (uintptr_t)LSM;
	req.flags = 1;
	CT_ERR(ioctl(a, CONTAINER_IOC_SET_POLICY, &req), EINVAL, "non-zero flags: EINVAL");
	req.flags = 0;
	req.policy = 8;
	req.len = 4;
	CT_ERR(ioctl(a, CONTAINER_IOC_SET_POLICY, &req), EFAULT, "a bad policy pointer: EFAULT");
	CT_ERR(ioctl(a, CONTAINER_IOC_SET_POLICY, (void *)8), EFAULT, "a bad request pointer: EFAULT");
	ct_ok(ct_in_child(set_as_nobody, &a) == 0, "a caller who does not own it: EPERM");

	container_kill(a, SIGKILL);
	container_kill(b, SIGKILL);
	while (wait(NULL) > 0)
		;
	close(a);
	close(b);
	return ct_exit();
}
