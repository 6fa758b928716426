// SPDX-License-Identifier: GPL-2.0
/* fork_into_container(): init, namespaces, cgroup, death of init, poll, KILL_ON_CLOSE. */
#include "ct.h"

static const char *nss[] = { "uts", "ipc", "net", "pid", "cgroup", "mnt", "user" };
#define NNS 7

struct report {
	pid_t pid;
	uid_t uid;
	unsigned long ns[NNS];
	char cgroup[128];
};

/* Forks into fd; the child fills a report, sends it and then runs fn. */
static pid_t spawn(int fd, struct report *rep, void (*fn)(void))
{
	int p[2];
	pid_t pid;

	if (pipe(p) < 0)
		return -1;
	pid = fork_into_container(fd);
	if (pid == 0) {
		struct report r = { .pid = getpid(), .uid = getuid() };

		close(p[0]);
		for (int i = 0; i < NNS; i++)
			r.ns[i] = ct_ns_ino(0, nss[i]);
		ct_read_file("/proc/self/cgroup", r.cgroup, sizeof(r.cgroup));
		r.cgroup[strcspn(r.cgroup, "\n")] = 0;
		if (write(p[1], &r, sizeof(r)) != sizeof(r))
			_exit(98);
		close(p[1]);
		if (fn)
			fn();
		_exit(0);
	}
	close(p[1]);
	if (pid > 0 && read(p[0], rep, sizeof(*rep)) != sizeof(*rep))
		memset(rep, 0, sizeof(*rep));
	close(p[0]);
	return pid;
}

static void sleep_forever(void)
{
	for (;;)
		pause();
}

static int cfd_for_close;
static void close_and_sleep(void)
{
	close(cfd_for_close);
	sleep_forever();
}

static int fork_as_nobody(void *arg)
{
	ct_become_nobody();
	if (fork_into_container(*(int *)arg) >= 0)
		return 1;
	return errno == EPERM ? 0 : 2;
}

int main(void)
{
	unsigned int newns = CONTAINER_NEW_UTS_NS | CONTAINER_NEW_IPC_NS | CONTAINER_NEW_NET_NS |
			     CONTAINER_NEW_PID_NS | CONTAINER_NEW_CGROUP_NS | CONTAINER_NEW_FS_NS;
	struct report r1, r2;
	struct pollfd pfd;
	pid_t init, member;
	char want[64];
	int fd, dirfd, i, differ;

	ct_plan(25);

	CT_ERR(fork_into_container(-1), EBADF, "a bad fd gives EBADF");
	dirfd = open("/", O_RDONLY | O_CLOEXEC);
	CT_ERR(fork_into_container(dirfd), EINVAL, "a non-container fd gives EINVAL");
	close(dirfd);

	fd = container_create("ct-fork", newns | CONTAINER_FD_CLOEXEC);
	init = spawn(fd, &r1, sleep_forever);
	ct_ok(init > 1, "the parent gets the child's pid (%d)", init);
	ct_ok(r1.pid == 1, "the first child is pid 1 in a NEW_PID_NS container (%d)", r1.pid);
	member = spawn(fd, &r2, sleep_forever);
	ct_ok(member > 0 && r2.pid == 2, "the next child is pid 2 (%d)", r2.pid);
	differ = 1;
	for (i = 0; i < NNS - 1; i++)
		if (!r1.ns[i] || r1.ns[i] == ct_ns_ino(0, nss[i]))
			differ = 0;
	ct_ok(differ, "uts, ipc, net, pid, cgroup and mnt namespaces are the container's");
	ct_ok(r1.ns[NNS - 1] == ct_ns_ino(0, "user"), "the user namespace is shared without NEW_USER_NS");
	ct_ok(!memcmp(r1.ns, r2.ns, sizeof(r1.ns)), "members share the container's namespaces");
	ct_ok(!strcmp(r1.cgroup, "0::/"), "NEW_CGROUP_NS is rooted at the container's cgroup (%s)", r1.cgroup);
	ct_ok(r1.uid == getuid(), "the child has the owner's uid");

	pfd = (struct pollfd){ .fd = fd, .events = POLLIN };
	ct_ok(poll(&pfd, 1, 0) == 0, "poll() reports nothing while init lives");
	kill(init, SIGKILL);
	/*
	 * A pid namespace's init finishes exiting only once every other
	 * process of the namespace is reaped, and the member is our child:
	 * reap it first.
	 */
	ct_ok(ct_killed_by(ct_wait_timeout(member, 5000), SIGKILL),
	      "init's death killed the other member");
	ct_ok(ct_killed_by(ct_wait_timeout(init, 5000), SIGKILL), "init killed");
	ct_ok(poll(&pfd, 1, 5000) == 1 && (pfd.revents & (POLLIN | POLLHUP)) == (POLLIN | POLLHUP),
	      "poll() reports POLLIN|POLLHUP after init died (%x)", pfd.revents);
	CT_ERR(fork_into_container(fd), ECANCELED, "forking into a dead container gives ECANCELED");
	close(fd);

	/* Without a pid namespace, the cgroup still takes everyone down. */
	fd = container_create("ct-nopidns", CONTAINER_FD_CLOEXEC);
	init = spawn(fd, &r1, sleep_forever);
	member = spawn(fd, &r2, sleep_forever);
	ct_ok(init > 0 && member > 0 && r1.pid == init, "without NEW_PID_NS the init keeps its pid");
	snprintf(want, sizeof(want), "0::/container-%llu", ct_id("ct-nopidns"));
	ct_ok(!strcmp(r1.cgroup, want), "the child is in the container's cgroup (%s)", r1.cgroup);
	kill(init, SIGTERM);
	ct_ok(ct_killed_by(ct_wait(init), SIGTERM), "init ended by SIGTERM");
	ct_ok(ct_killed_by(ct_wait_timeout(member, 5000), SIGKILL), "the member was killed with SIGKILL");
	close(fd);

	/* KILL_ON_CLOSE: the last close kills everyone. */
	fd = container_create("ct-koc", CONTAINER_KILL_ON_CLOSE);
	cfd_for_close = fd;
	init = spawn(fd, &r1, close_and_sleep);
	ct_ok(init > 0 && ct_wait_timeout(init, 300) == -1, "KILL_ON_CLOSE: members live while the fd is open");
	close(fd);
	ct_ok(ct_killed_by(ct_wait_timeout(init, 5000), SIGKILL), "KILL_ON_CLOSE: closing the fd killed them");

	fd = container_create("ct-nokoc", 0);
	cfd_for_close = fd;
	init = spawn(fd, &r1, close_and_sleep);
	close(fd);
	ct_ok(init > 0 && ct_wait_timeout(init, 500) == -1, "without KILL_ON_CLOSE closing the fd kills nobody");
	kill(init, SIGKILL);
	ct_wait(init);

	fd = container_create("ct-empty", CONTAINER_NEW_EMPTY_FS_NS | CONTAINER_FD_CLOEXEC);
	CT_ERR(fork_into_container(fd), ENOENT, "NEW_EMPTY_FS_NS without a root gives ENOENT");
	close(fd);

	fd = container_create("ct-owner", CONTAINER_FD_CLOEXEC);
	ct_ok(ct_in_child(fork_as_nobody, &fd) == 0, "another uid without CAP_SYS_ADMIN gets EPERM");
	close(fd);

	fd = container_create("ct-userns", CONTAINER_NEW_USER_NS | CONTAINER_FD_CLOEXEC);
	init = spawn(fd, &r1, NULL);
	ct_ok(init > 0 && r1.ns[NNS - 1] && r1.ns[NNS - 1] != ct_ns_ino(0, "user"),
	      "NEW_USER_NS: the child is in a new user namespace");
	ct_wait(init);
	close(fd);
	return ct_exit();
}
