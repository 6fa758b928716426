// SPDX-License-Identifier: GPL-2.0
/*
 * A container's members act on their own container (CONTAINER_FD_CURRENT),
 * and reboot: CONTAINER_IOC_REBOOT from outside, reboot(2) from inside;
 * what is kept, what is new, and every refusal with its errno.
 */
#include "ct.h"
#include <sys/reboot.h>

static void forever(void)
{
	for (;;)
		pause();
}

static pid_t sleeper(int fd)
{
	pid_t pid = fork_into_container(fd);

	if (pid == 0)
		forever();
	return pid;
}

/* The last NSpid field of /proc/<pid>/status: the pid as its namespace sees it. */
static long inner_pid(pid_t pid)
{
	char path[64], buf[4096], *p, *last;

	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	if (ct_read_file(path, buf, sizeof(buf)) < 0)
		return -1;
	p = strstr(buf, "NSpid:");
	if (!p)
		return -1;
	p[strcspn(p, "\n")] = 0;
	last = strrchr(p, '\t');
	return last ? strtol(last + 1, NULL, 10) : -1;
}

/* Forks a member that runs fn() and exits with its result. */
static pid_t member(int fd, int (*fn)(void))
{
	pid_t pid = fork_into_container(fd);

	if (pid == 0)
		_exit(fn());
	return pid;
}

static int kill_own(void)
{
	container_kill(CONTAINER_FD_CURRENT, SIGKILL);
	return 3;	/* Not reached. */
}

static int freeze_own(void)
{
	/* Returns once thawed: the freeze takes effect on the way back. */
	return container_freeze(CONTAINER_FD_CURRENT, 0) == 0 ? 7 : 1;
}

static int bad_freeze_flags(void)
{
	return container_freeze(CONTAINER_FD_CURRENT, 0x80) == -1 && errno == EINVAL ? 0 : 1;
}

static int own_as_nobody(void)
{
	ct_become_nobody();
	if (container_kill(CONTAINER_FD_CURRENT, 0) == 0 || errno != EPERM)
		return 1;
	if (container_freeze(CONTAINER_FD_CURRENT, 0) == 0 || errno != EPERM)
		return 2;
	return 0;
}

static int own_signal0(void)
{
	return container_kill(CONTAINER_FD_CURRENT, 0) == 0 &&
	       container_thaw(CONTAINER_FD_CURRENT) == 0 ? 0 : 1;
}

static unsigned long host_pidns;

/* reboot(2) from a member, only ever inside the container's pid namespace. */
static int reboot_own(void)
{
	if (ct_ns_ino(0, "pid") == host_pidns)
		return 99;
	reboot(RB_AUTOBOOT);
	return 5;	/* Not reached: the caller exits. */
}

static int poweroff_own(void)
{
	if (ct_ns_ino(0, "pid") == host_pidns)
		return 99;
	reboot(RB_POWER_OFF);
	return 5;
}

static int g_fd;

static int reboot_via_fd(void)
{
	return container_reboot(g_fd, 0) == -1 && errno == EDEADLK ? 0 : 1;
}

static int reboot_as_nobody(void *arg)
{
	ct_become_nobody();
	return container_reboot(*(int *)arg, 0) == -1 && errno == EPERM ? 0 : 1;
}

int main(void)
{
	unsigned long uts, mnt, pidns;
	struct pollfd pfd;
	pid_t init, m, init2;
	int fd, st, pipefd[2];

	ct_plan(34);
	host_pidns = ct_ns_ino(0, "pid");

	/* Outside any container there is no own container. */
	CT_ERR(container_kill(CONTAINER_FD_CURRENT, 0), EINVAL, "container_kill(CURRENT) outside a container: EINVAL");
	CT_ERR(container_freeze(CONTAINER_FD_CURRENT, 0), EINVAL, "container_freeze(CURRENT) outside: EINVAL");
	CT_ERR(container_thaw(CONTAINER_FD_CURRENT), EINVAL, "container_thaw(CURRENT) outside: EINVAL");

	/* A member kills its own container. */
	fd = container_create("self-kill", CONTAINER_NEW_PID_NS | CONTAINER_FD_CLOEXEC);
	init = sleeper(fd);
	m = member(fd, kill_own);
	st = ct_wait_timeout(m, 10000);
	ct_ok(ct_killed_by(st, SIGKILL), "a member's container_kill(CURRENT, SIGKILL) kills itself");
	st = ct_wait_timeout(init, 10000);
	ct_ok(ct_killed_by(st, SIGKILL), "and the container's init");
	ct_ok(!strcmp(ct_state("self-kill"), "dead"), "/proc/containers shows it dead");
	close(fd);

	/* A member freezes its own container; the owner thaws it. */
	fd = container_create("self-freeze", CONTAINER_FD_CLOEXEC);
	init = sleeper(fd);
	m = member(fd, freeze_own);
	ct_ok(CT_EVENTUALLY(!strcmp(ct_state("self-freeze"), "frozen"), 10000),
	      "a member's container_freeze(CURRENT) freezes the container");
	ct_ok(waitpid(m, &st, WNOHANG) == 0, "the member is stopped too");
	ct_ok(container_thaw(fd) == 0, "the owner thaws it from outside");
	st = ct_wait_timeout(m, 10000);
	ct_ok(ct_exited(st, 7), "the member's freeze call then returned 0");
	st = ct_wait_timeout(member(fd, bad_freeze_flags), 10000);
	ct_ok(ct_exited(st, 0), "container_freeze(CURRENT) with unknown flags: EINVAL");
	st = ct_wait_timeout(member(fd, own_signal0), 10000);
	ct_ok(ct_exited(st, 0), "signal 0 and thaw on one's own running container succeed");
	st = ct_wait_timeout(member(fd, own_as_nobody), 10000);
	ct_ok(ct_exited(st, 0), "a member without capabilities gets EPERM for kill and freeze");
	container_kill(fd, SIGKILL);
	ct_wait_timeout(init, 10000);
	close(fd);

	/* Reboot from outside: namespaces and root kept, a fresh pid namespace and init. */
	fd = container_create("reboot", CONTAINER_NEW_PID_NS | CONTAINER_NEW_UTS_NS |
			      CONTAINER_NEW_FS_NS | CONTAINER_FD_CLOEXEC);
	init = sleeper(fd);
	m = sleeper(fd);
	uts = ct_ns_ino(init, "uts");
	mnt = ct_ns_ino(init, "mnt");
	pidns = ct_ns_ino(init, "pid");
	CT_ERR(container_reboot(fd, 1), EINVAL, "CONTAINER_IOC_REBOOT with a non-zero argument: EINVAL");
	CT_ERR(container_reboot(9999, 0), EBADF, "CONTAINER_IOC_REBOOT on a closed fd: EBADF");
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		pipefd[0] = -1;
	CT_ERR(container_reboot(pipefd[0], 0), ENOTTY, "CONTAINER_IOC_REBOOT on a non-container: ENOTTY");
	ct_ok(ct_in_child(reboot_as_nobody, &fd) == 0, "CONTAINER_IOC_REBOOT by a non-owner: EPERM");
	g_fd = fd;
	st = ct_wait_timeout(member(fd, reboot_via_fd), 10000);
	ct_ok(ct_exited(st, 0), "a member rebooting through the fd: EDEADLK");

	init2 = container_reboot(fd, 0);
	if (init2 == 0)
		forever();
	ct_ok(init2 > 0, "CONTAINER_IOC_REBOOT from outside returns the new init's pid");
	/* A pid namespace's init is reaped after every other member is. */
	ct_ok(ct_killed_by(ct_wait_timeout(m, 10000), SIGKILL), "the old member was killed");
	ct_ok(ct_killed_by(ct_wait_timeout(init, 10000), SIGKILL), "and the old init");
	ct_ok(inner_pid(init2) == 1, "the new init is pid 1 (of %ld)", inner_pid(init2));
	ct_ok(ct_ns_ino(init2, "pid") != pidns, "in a fresh pid namespace");
	ct_ok(ct_ns_ino(init2, "uts") == uts && ct_ns_ino(init2, "mnt") == mnt,
	      "with the same UTS and mount namespaces");
	ct_ok(!strcmp(ct_state("reboot"), "running"), "/proc/containers shows it running");

	/* Reboot from inside: everyone dies, the supervisor sees "rebooting". */
	m = sleeper(fd);
	st = ct_wait_timeout(member(fd, reboot_own), 10000);
	ct_ok(ct_exited(st, 0), "reboot(2) by a member inside the container: the caller exits");
	ct_ok(ct_killed_by(ct_wait_timeout(m, 10000), SIGKILL), "the other member was killed");
	st = ct_wait_timeout(init2, 10000);
	ct_ok(st != -1 && WIFSIGNALED(st), "and the init (status %#x)", st);
	pfd.fd = fd;
	pfd.events = POLLIN | POLLPRI;
	ct_ok(poll(&pfd, 1, 5000) == 1 && (pfd.revents & POLLPRI) && (pfd.revents & POLLHUP),
	      "poll() reports POLLHUP with POLLPRI (revents %#x)", pfd.revents);
	ct_ok(!strcmp(ct_state("reboot"), "rebooting"), "/proc/containers shows it rebooting (%s)", ct_state("reboot"));
	init2 = container_reboot(fd, 0);
	if (init2 == 0)
		forever();
	ct_ok(init2 > 0 && inner_pid(init2) == 1, "the supervisor starts the new init");
	pfd.revents = 0;
	ct_ok(poll(&pfd, 1, 0) == 0 && !strcmp(ct_state("reboot"), "running"),
	      "it is running again and poll() is quiet");
	container_kill(fd, SIGKILL);
	ct_wait_timeout(init2, 10000);
	close(fd);

	/* Power-off from inside leaves it plainly dead. */
	fd = container_create("poweroff", CONTAINER_NEW_PID_NS | CONTAINER_FD_CLOEXEC);
	init = sleeper(fd);
	st = ct_wait_timeout(member(fd, poweroff_own), 10000);
	ct_ok(ct_exited(st, 0) && ct_wait_timeout(init, 10000) != -1, "reboot(RB_POWER_OFF) inside ends the container");
	pfd.fd = fd;
	pfd.events = POLLIN | POLLPRI;
	pfd.revents = 0;
	ct_ok(poll(&pfd, 1, 5000) == 1 && !(pfd.revents & POLLPRI) && !strcmp(ct_state("poweroff"), "dead"),
	      "it is dead, not rebooting (revents %#x)", pfd.revents);
	close(fd);
	return ct_exit();
}
