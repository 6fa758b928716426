// SPDX-License-Identifier: GPL-2.0
/* container_kill(), container_freeze(), container_thaw() from outside. */
#include "ct.h"
#include <sys/mman.h>

static volatile unsigned long *counter;

static void spin(void)
{
	for (;;)
		(*counter)++;
}

static pid_t start(int fd, void (*fn)(void))
{
	pid_t pid = fork_into_container(fd);

	if (pid == 0) {
		fn();
		_exit(0);
	}
	return pid;
}

static void sleeper(void)
{
	for (;;)
		pause();
}

static int control_as_nobody(void *arg)
{
	int fd = *(int *)arg;

	ct_become_nobody();
	if (container_kill(fd, SIGKILL) == 0 || errno != EPERM)
		return 1;
	if (container_freeze(fd, 0) == 0 || errno != EPERM)
		return 2;
	if (container_thaw(fd) == 0 || errno != EPERM)
		return 3;
	return 0;
}

int main(void)
{
	unsigned long a, b;
	pid_t init, member;
	char path[128];
	char events[256];
	int fd;

	ct_plan(19);
	counter = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	fd = container_create("ct-kill", CONTAINER_FD_CLOEXEC);
	CT_ERR(container_kill(fd, SIGTERM), ESRCH, "container_kill() on a container without processes gives ESRCH");
	init = start(fd, sleeper);
	member = start(fd, sleeper);
	ct_ok(container_kill(fd, 0) == 0, "signal 0 checks that it has processes");
	CT_ERR(container_kill(fd, 65), EINVAL, "an invalid signal gives EINVAL");
	ct_ok(container_kill(fd, SIGTERM) == 0, "container_kill(SIGTERM)");
	ct_ok(ct_killed_by(ct_wait_timeout(init, 5000), SIGTERM) &&
	      ct_killed_by(ct_wait_timeout(member, 5000), SIGTERM), "every process got SIGTERM");
	close(fd);

	fd = container_create("ct-killpid", CONTAINER_NEW_PID_NS | CONTAINER_FD_CLOEXEC);
	init = start(fd, sleeper);
	member = start(fd, sleeper);
	/* The pid-1 init finishes exiting once the member is reaped: reap that first. */
	ct_ok(container_kill(fd, SIGKILL) == 0 && ct_killed_by(ct_wait_timeout(member, 5000), SIGKILL) &&
	      ct_killed_by(ct_wait_timeout(init, 5000), SIGKILL),
	      "container_kill(SIGKILL) kills everyone, the pid-1 init too");
	ct_ok(!strcmp(ct_state("ct-killpid"), "dead"), "the container is dead");
	close(fd);

	fd = container_create("ct-freeze", CONTAINER_FD_CLOEXEC);
	init = start(fd, spin);
	ct_ok(CT_EVENTUALLY(*counter > 0, 5000), "a member is running and counting");
	CT_ERR(container_freeze(fd, 2), EINVAL, "unknown freeze flags give EINVAL");
	ct_ok(container_freeze(fd, 0) == 0, "container_freeze() returns once frozen");
	a = *counter;
	usleep(300000);
	b = *counter;
	ct_ok(a == b, "the member does not run while frozen (%lu, %lu)", a, b);
	ct_ok(!strcmp(ct_state("ct-freeze"), "frozen"), "/proc/containers shows it frozen");
	snprintf(path, sizeof(path), "/sys/fs/cgroup/container-%llu/cgroup.events", ct_id("ct-freeze"));
	ct_ok(ct_read_file(path, events, sizeof(events)) > 0 && strstr(events, "frozen 1"),
	      "the container's cgroup reports frozen 1");
	ct_ok(container_thaw(fd) == 0, "container_thaw()");
	ct_ok(CT_EVENTUALLY(*counter != b, 5000), "the member runs again after thawing");
	ct_ok(!strcmp(ct_state("ct-freeze"), "running"), "/proc/containers shows it running");
	ct_ok(container_freeze(fd, CONTAINER_FREEZE_NOWAIT) == 0, "CONTAINER_FREEZE_NOWAIT");
	ct_ok(container_kill(fd, SIGKILL) == 0 && ct_killed_by(ct_wait_timeout(init, 5000), SIGKILL),
	      "SIGKILL kills a frozen container");
	ct_ok(ct_in_child(control_as_nobody, &fd) == 0, "another uid without CAP_SYS_ADMIN gets EPERM for all three");
	close(fd);
	return ct_exit();
}
