/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Shared helpers of the container-object selftests: TAP output, system call
 * wrappers and small process utilities.  Every test prints its plan first,
 * so a crash part-way shows up as a count mismatch.
 */
#ifndef CT_H
#define CT_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/container.h>
#include <linux/keyctl.h>

static int ct_n, ct_failed;

static inline void ct_plan(int n)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("TAP version 13\n1..%d\n", n);
}

/* Reports one case; `what` says what was checked, errno is shown on failure. */
static inline int ct_ok(int cond, const char *fmt, ...)
{
	int saved = errno;
	va_list ap;

	printf("%s %d - ", cond ? "ok" : "not ok", ++ct_n);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	if (!cond) {
		printf(" # errno %d (%s)", saved, strerror(saved));
		ct_failed++;
	}
	printf("\n");
	errno = saved;
	return cond;
}

/* A call expected to fail with `err`. */
#define CT_ERR(call, err, ...) \
	ct_ok((call) == -1 && errno == (err), __VA_ARGS__)

static inline int ct_exit(void)
{
	return ct_failed ? 1 : 0;
}

static inline int container_create(const char *name, unsigned int flags)
{
	return syscall(__NR_container_create, name, flags);
}

static inline pid_t fork_into_container(int fd)
{
	return syscall(__NR_fork_into_container, fd);
}

static inline int container_socket(int fd, int domain, int type, int proto)
{
	return syscall(__NR_container_socket, fd, domain, type, proto);
}

static inline int container_kill(int fd, int sig)
{
	return syscall(__NR_container_kill, fd, sig);
}

static inline int container_freeze(int fd, unsigned int flags)
{
	return syscall(__NR_container_freeze, fd, flags);
}

static inline int container_thaw(int fd)
{
	return syscall(__NR_container_thaw, fd);
}

static inline int container_keyring(int fd)
{
	return syscall(__NR_container_keyring, fd);
}

/* CONTAINER_IOC_SETNS */
static inline int container_setns(int fd, int nsfd, int nstype)
{
	struct container_ns cns = { .fd = nsfd, .nstype = (unsigned int)nstype };

	return ioctl(fd, CONTAINER_IOC_SETNS, &cns);
}

/* CONTAINER_IOC_REBOOT: the new init's pid, 0 in the new init. */
static inline pid_t container_reboot(int fd, unsigned long arg)
{
	return ioctl(fd, CONTAINER_IOC_REBOOT, arg);
}

/* CONTAINER_IOC_SET_CGROUP */
static inline int container_set_cgroup(int fd, int cgroup_fd)
{
	return ioctl(fd, CONTAINER_IOC_SET_CGROUP, cgroup_fd);
}

/* CONTAINER_IOC_SET_POLICY for the LSM named lsm. */
static inline int container_set_policy(int fd, const char *lsm, const void *policy,
				       unsigned int len)
{
	struct container_policy req = {
		.lsm = (uintptr_t)lsm, .policy = (uintptr_t)policy, .len = len,
	};

	return ioctl(fd, CONTAINER_IOC_SET_POLICY, &req);
}

/* CONTAINER_IOC_SET_DEVICES */
static inline int container_set_devices(int fd, const struct container_dev *devs,
					unsigned int count)
{
	struct container_devices req = { .devs = (uintptr_t)devs, .count = count };

	return ioctl(fd, CONTAINER_IOC_SET_DEVICES, &req);
}

/* CONTAINER_IOC_SET_ROOT */
static inline int container_set_root(int fd, int dirfd)
{
	return ioctl(fd, CONTAINER_IOC_SET_ROOT, dirfd);
}

static inline long ct_add_key(const char *type, const char *desc,
			      const void *payload, size_t len, int ring)
{
	return syscall(__NR_add_key, type, desc, payload, len, ring);
}

static inline long ct_request_key(const char *type, const char *desc,
				  const char *info, int dest)
{
	return syscall(__NR_request_key, type, desc, info, dest);
}

static inline long ct_keyctl(int op, unsigned long a, unsigned long b,
			     unsigned long c, unsigned long d)
{
	return syscall(__NR_keyctl, op, a, b, c, d);
}

/* Reads a key's payload into buf (NUL-terminated); returns its length. */
static inline long ct_read_key(long id, char *buf, size_t size)
{
	long n = ct_keyctl(KEYCTL_READ, id, (unsigned long)buf, size - 1, 0);

	if (n >= 0)
		buf[n < (long)size - 1 ? n : (long)size - 1] = 0;
	return n;
}

/* Waits for pid; returns its wait status, or -1. */
/* Forks a member into the container that only waits for a signal; returns its pid. */
static inline pid_t ct_sleeper(int fd)
{
	pid_t pid = fork_into_container(fd);

	if (pid == 0) {
		for (;;)
			pause();
	}
	return pid;
}

static inline int ct_wait(pid_t pid)
{
	int status;

	if (waitpid(pid, &status, 0) != pid)
		return -1;
	return status;
}

/* Waits up to ms milliseconds for pid to end; returns its status or -1. */
static inline int ct_wait_timeout(pid_t pid, int ms)
{
	int status;

	for (int i = 0; i < ms; i += 10) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid)
			return status;
		if (r < 0)
			return -1;
		usleep(10000);
	}
	return -1;
}

static inline int ct_killed_by(int status, int sig)
{
	return status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == sig;
}

static inline int ct_exited(int status, int code)
{
	return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == code;
}

/* Inode number of /proc/<pid>/ns/<ns> ("self" for pid 0). */
static inline unsigned long ct_ns_ino(pid_t pid, const char *ns)
{
	char path[64];
	struct stat st;

	if (pid)
		snprintf(path, sizeof(path), "/proc/%d/ns/%s", pid, ns);
	else
		snprintf(path, sizeof(path), "/proc/self/ns/%s", ns);
	if (stat(path, &st) < 0)
		return 0;
	return st.st_ino;
}

/* Reads a whole small file into buf; returns length or -1. */
static inline ssize_t ct_read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n, total = 0;

	if (fd < 0)
		return -1;
	while (total < (ssize_t)size - 1 &&
	       (n = read(fd, buf + total, size - 1 - total)) > 0)
		total += n;
	close(fd);
	buf[total] = 0;
	return total;
}

static inline int ct_write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = write(fd, text, strlen(text));
	close(fd);
	return n == (ssize_t)strlen(text) ? 0 : -1;
}

/* The /proc/containers row of the container named name, or NULL. */
static inline char *ct_proc_row(const char *name, char *buf, size_t size)
{
	static char all[16384];
	char *line, *save;

	if (ct_read_file("/proc/containers", all, sizeof(all)) < 0)
		return NULL;
	for (line = strtok_r(all, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char first[CONTAINER_NAME_MAX + 2];

		if (sscanf(line, "%64s", first) == 1 && !strcmp(first, name)) {
			snprintf(buf, size, "%s", line);
			return buf;
		}
	}
	return NULL;
}

/* The id of the container named name, from /proc/containers, or 0. */
static inline unsigned long long ct_id(const char *name)
{
	char row[256], nm[80];
	unsigned long long id;

	if (!ct_proc_row(name, row, sizeof(row)) ||
	    sscanf(row, "%79s %llu", nm, &id) != 2)
		return 0;
	return id;
}

/* The state column of the container named name. */
static inline const char *ct_state(const char *name)
{
	static char state[32];
	char row[256], *last;

	if (!ct_proc_row(name, row, sizeof(row)))
		return "absent";
	last = strrchr(row, ' ');
	snprintf(state, sizeof(state), "%s", last ? last + 1 : "?");
	return state;
}

/* Polls until cond() is true or ms milliseconds have passed. */
#define CT_EVENTUALLY(cond, ms) ({					\
	int __ok = 0;							\
	for (int __i = 0; __i <= (ms); __i += 10) {			\
		if (cond) { __ok = 1; break; }				\
		usleep(10000);						\
	}								\
	__ok; })

/* A child that drops every capability and becomes uid/gid 1000. */
static inline void ct_become_nobody(void)
{
	if (setgroups(0, NULL) || setresgid(1000, 1000, 1000) ||
	    setresuid(1000, 1000, 1000))
		_exit(99);
}

/* Runs fn(arg) in a forked child and returns its exit code (or 128+sig). */
static inline int ct_in_child(int (*fn)(void *), void *arg)
{
	pid_t pid = fork();
	int status;

	if (pid == 0)
		_exit(fn(arg));
	status = ct_wait(pid);
	if (status == -1)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Mounts a fresh tmpfs as the root of container cfd with the mount API. */
static inline int ct_mount_tmpfs_root(int cfd)
{
	int fsfd, mfd, ret;

	fsfd = fsopen("tmpfs", FSOPEN_CLOEXEC);
	if (fsfd < 0)
		return -1;
	if (fsconfig(fsfd, FSCONFIG_SET_CONTAINER, NULL, NULL, cfd) < 0 ||
	    fsconfig(fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
		close(fsfd);
		return -1;
	}
	mfd = fsmount(fsfd, FSMOUNT_CLOEXEC, 0);
	close(fsfd);
	if (mfd < 0)
		return -1;
	ret = move_mount(mfd, "", cfd, "",
			 MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_CONTAINER_ROOT);
	close(mfd);
	return ret;
}

/* Copies host file src to path below the root of container cfd. */
static inline int ct_copy_in(const char *src, int cfd, const char *path,
			     mode_t mode)
{
	char buf[65536];
	int in, out;
	ssize_t n;

	in = open(src, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return -1;
	out = openat(cfd, path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (out < 0) {
		close(in);
		return -1;
	}
	while ((n = read(in, buf, sizeof(buf))) > 0) {
		if (write(out, buf, n) != n) {
			n = -1;
			break;
		}
	}
	close(in);
	close(out);
	return n < 0 ? -1 : 0;
}

#endif /* CT_H */
