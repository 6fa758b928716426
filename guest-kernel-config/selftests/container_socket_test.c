// SPDX-License-Identifier: GPL-2.0
/* container_socket(): sockets in the container's network namespace. */
#include "ct.h"
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <linux/sockios.h>

static unsigned long sock_netns_ino(int sock)
{
	struct stat st;
	int ns = ioctl(sock, SIOCGSKNS);

	if (ns < 0)
		return 0;
	fstat(ns, &st);
	close(ns);
	return st.st_ino;
}

static socklen_t abstract_addr(struct sockaddr_un *a, const char *name)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	strcpy(a->sun_path + 1, name);
	return offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name);
}

int main(void)
{
	struct sockaddr_un addr;
	socklen_t len;
	int fd, plain, s, l, c, p[2], ready;
	unsigned long child_ns = 0;
	pid_t pid;
	char byte;

	ct_plan(10);

	fd = container_create("ct-net", CONTAINER_NEW_NET_NS | CONTAINER_FD_CLOEXEC);
	if (pipe(p) < 0)
		return 1;
	pid = fork_into_container(fd);
	if (pid == 0) {
		unsigned long ino = ct_ns_ino(0, "net");

		close(p[0]);
		len = abstract_addr(&addr, "capsule-ct");
		l = socket(AF_UNIX, SOCK_STREAM, 0);
		if (l < 0 || bind(l, (struct sockaddr *)&addr, len) || listen(l, 4))
			_exit(1);
		write(p[1], &ino, sizeof(ino));
		c = accept(l, NULL, NULL);
		write(c, "!", 1);
		pause();
		_exit(0);
	}
	close(p[1]);
	ready = read(p[0], &child_ns, sizeof(child_ns)) == sizeof(child_ns);
	ct_ok(ready && child_ns != ct_ns_ino(0, "net"), "the container has its own network namespace");

	s = container_socket(fd, AF_UNIX, SOCK_STREAM, 0);
	ct_ok(s >= 0, "container_socket(AF_UNIX) succeeds");
	ct_ok(sock_netns_ino(s) == child_ns, "the socket is in the container's network namespace");
	len = abstract_addr(&addr, "capsule-ct");
	ct_ok(connect(s, (struct sockaddr *)&addr, len) == 0 && read(s, &byte, 1) == 1 && byte == '!',
	      "it reaches an abstract socket bound inside the container");
	plain = socket(AF_UNIX, SOCK_STREAM, 0);
	CT_ERR(connect(plain, (struct sockaddr *)&addr, len), ECONNREFUSED,
	       "a socket of the caller's namespace does not");
	close(plain);
	close(s);

	s = container_socket(fd, AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	ct_ok(s >= 0 && (fcntl(s, F_GETFD) & FD_CLOEXEC) && (fcntl(s, F_GETFL) & O_NONBLOCK) &&
	      sock_netns_ino(s) == child_ns, "AF_INET with SOCK_CLOEXEC|SOCK_NONBLOCK, in the container");
	close(s);

	CT_ERR(container_socket(fd, 9999, SOCK_STREAM, 0), EAFNOSUPPORT, "an unknown family gives EAFNOSUPPORT");
	CT_ERR(container_socket(fd, AF_UNIX, SOCK_STREAM | 0x40000000, 0), EINVAL, "unknown type flags give EINVAL");
	CT_ERR(container_socket(0, AF_UNIX, SOCK_STREAM, 0), EINVAL, "a non-container fd gives EINVAL");
	kill(pid, SIGKILL);
	ct_wait(pid);
	close(fd);

	fd = container_create("ct-hostnet", CONTAINER_FD_CLOEXEC);
	s = container_socket(fd, AF_UNIX, SOCK_DGRAM, 0);
	ct_ok(s >= 0 && sock_netns_ino(s) == ct_ns_ino(0, "net"),
	      "without NEW_NET_NS the socket is in the shared namespace");
	close(s);
	close(fd);
	return ct_exit();
}
