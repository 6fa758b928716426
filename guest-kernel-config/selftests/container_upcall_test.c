// SPDX-License-Identifier: GPL-2.0
/*
 * Upcalls run in the container that caused them: request-key (through
 * request_key()) and a generic call_usermodehelper() (a core_pattern pipe
 * helper started by a core dump).  The helpers (helpers/) report their
 * hostname, root, pid and cgroup; the same helper binaries sit in the test
 * system's /sbin and in the container's /sbin.  Upcalls are accounted to
 * the container's cgroup.
 */
#include "ct.h"
#include <sys/resource.h>

#define CT_HOST "capsule-ct"

/* Mounts a procfs at /proc below the container's root, for the helpers. */
static int mount_proc(int fd)
{
	int fsfd, mfd, ret;

	if (mkdirat(fd, "proc", 0555))
		return -1;
	fsfd = fsopen("proc", FSOPEN_CLOEXEC);
	if (fsfd < 0)
		return -1;
	if (fsconfig(fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
		close(fsfd);
		return -1;
	}
	mfd = fsmount(fsfd, FSMOUNT_CLOEXEC, 0);
	close(fsfd);
	if (mfd < 0)
		return -1;
	ret = move_mount(mfd, "", fd, "proc", MOVE_MOUNT_F_EMPTY_PATH);
	close(mfd);
	return ret;
}

static int setup(int fd)
{
	return ct_mount_tmpfs_root(fd) || mkdirat(fd, "sbin", 0755) ||
	       ct_copy_in("/sbin/request-key", fd, "sbin/request-key", 0755) ||
	       ct_copy_in("/sbin/core-helper", fd, "sbin/core-helper", 0755) ||
	       mount_proc(fd);
}

/* Requests a key whose construction needs /sbin/request-key; returns the payload. */
static int request(const char *desc, char *payload, size_t size)
{
	long id = ct_request_key("user", desc, "callout", 0);

	if (id < 0)
		return -1;
	return ct_read_key(id, payload, size) < 0 ? -1 : 0;
}

static int field(const char *payload, const char *key, char *out, size_t size)
{
	const char *p = strstr(payload, key);
	size_t n;

	if (!p)
		return -1;
	p += strlen(key);
	n = strcspn(p, ";");
	snprintf(out, size, "%.*s", (int)n, p);
	return 0;
}

int main(void)
{
	char payload[256], v[64], report[256];
	int fd, p[2], rkfd;
	pid_t init, crasher;
	long n;

	ct_plan(14);
	sethostname("capsule-host", 12);

	/* Outside any container: the classic behaviour. */
	ct_ok(request("upcall-host", payload, sizeof(payload)) == 0, "request_key upcall outside containers");
	ct_ok(field(payload, "root=", v, sizeof(v)) == 0 && !strcmp(v, "host") &&
	      field(payload, "host=", v, sizeof(v)) == 0 && !strcmp(v, "capsule-host"),
	      "it ran in the system's root and UTS namespace (%s)", payload);
	ct_ok(field(payload, "cg=", v, sizeof(v)) == 0 && !strcmp(v, "0::/"),
	      "and in the root cgroup (%s)", v);

	fd = container_create("ct-upcall", CONTAINER_NEW_FS_NS | CONTAINER_NEW_UTS_NS |
				 CONTAINER_NEW_PID_NS | CONTAINER_FD_CLOEXEC);
	ct_ok(fd >= 0 && setup(fd) == 0, "container with /sbin/request-key and /sbin/core-helper in its root");

	if (pipe(p) < 0)
		return 1;
	init = fork_into_container(fd);
	if (init == 0) {
		char got[256] = "";

		close(p[0]);
		sethostname(CT_HOST, strlen(CT_HOST));
		if (request("upcall-ct", got, sizeof(got)) < 0)
			snprintf(got, sizeof(got), "error %d", errno);
		write(p[1], got, strlen(got) + 1);
		pause();
		_exit(0);
	}
	close(p[1]);
	n = read(p[0], payload, sizeof(payload) - 1);
	payload[n > 0 ? n : 0] = 0;
	ct_ok(strncmp(payload, "host=", 5) == 0, "request_key upcall from inside a container (%s)", payload);
	ct_ok(field(payload, "root=", v, sizeof(v)) == 0 && !strcmp(v, "container"),
	      "the request-key helper ran in the container's root");
	ct_ok(field(payload, "host=", v, sizeof(v)) == 0 && !strcmp(v, CT_HOST),
	      "the request-key helper ran in the container's UTS namespace");
	ct_ok(field(payload, "pid=", v, sizeof(v)) == 0 && atoi(v) > 1 && atoi(v) < 100,
	      "the request-key helper ran in the container's pid namespace (pid %s)", v);
	snprintf(report, sizeof(report), "0::/container-%llu", ct_id("ct-upcall"));
	ct_ok(field(payload, "cg=", v, sizeof(v)) == 0 && !strcmp(v, report),
	      "the request-key helper was accounted to the container's cgroup (%s)", v);

	/* A core dump inside the container starts the pipe helper there. */
	ct_ok(ct_write_file("/proc/sys/kernel/core_pattern", "|/sbin/core-helper") == 0,
	      "core_pattern set to a pipe helper");
	crasher = fork_into_container(fd);
	if (crasher == 0) {
		struct rlimit rl = { RLIM_INFINITY, RLIM_INFINITY };

		setrlimit(RLIMIT_CORE, &rl);
		prctl(PR_SET_DUMPABLE, 1);
		abort();
	}
	ct_wait(crasher);
	ct_ok(CT_EVENTUALLY((rkfd = openat(fd, "core-report", O_RDONLY | O_CLOEXEC)) >= 0, 5000),
	      "the core helper wrote /core-report in the container's root");
	n = rkfd >= 0 ? read(rkfd, report, sizeof(report) - 1) : -1;
	report[n > 0 ? n : 0] = 0;
	close(rkfd);
	ct_ok(field(report, "host=", v, sizeof(v)) == 0 && !strcmp(v, CT_HOST) &&
	      field(report, "root=", v, sizeof(v)) == 0 && !strcmp(v, "container"),
	      "call_usermodehelper ran in the container's root and UTS namespace (%s)", report);
	ct_ok(access("/core-report", F_OK) < 0, "nothing was written to the system's root");

	/* The same dump outside the container runs the system's helper. */
	crasher = fork();
	if (crasher == 0) {
		prctl(PR_SET_DUMPABLE, 1);
		abort();
	}
	ct_wait(crasher);
	ct_ok(CT_EVENTUALLY(ct_read_file("/core-report", report, sizeof(report)) > 0, 5000) &&
	      strstr(report, "root=host"), "outside containers the helper runs in the system's root (%s)", report);
	unlink("/core-report");
	ct_write_file("/proc/sys/kernel/core_pattern", "core");

	kill(init, SIGKILL);
	ct_wait(init);
	close(fd);
	return ct_exit();
}
