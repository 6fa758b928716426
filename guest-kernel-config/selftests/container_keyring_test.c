// SPDX-License-Identifier: GPL-2.0
/* container_keyring(): keys added from outside, before and after start, found inside. */
#include "ct.h"

static int keyring_as_nobody(void *arg)
{
	ct_become_nobody();
	if (container_keyring(*(int *)arg) >= 0)
		return 1;
	return errno == EPERM ? 0 : 2;
}

#define MSG 128

/* In the container: looks up desc without an upcall; sends payload or error. */
static void lookup(int out, const char *desc)
{
	char buf[MSG] = "";
	long id = ct_request_key("user", desc, NULL, 0);

	if (id < 0 || ct_read_key(id, buf, sizeof(buf)) < 0)
		snprintf(buf, sizeof(buf), "errno=%d", errno);
	write(out, buf, MSG);
}

/* Receives one MSG-byte answer (a pipe write of MSG bytes is atomic). */
static ssize_t answer(int in, char *buf)
{
	ssize_t n = read(in, buf, MSG);

	if (n != MSG)
		strcpy(buf, "(no answer)");
	return n;
}

int main(void)
{
	char desc[256], buf[MSG], want[64];
	int fd, other, ring, go[2], res[2], dirfd;
	pid_t init, stranger;
	long n;

	ct_plan(13);

	fd = container_create("ct-keys", CONTAINER_FD_CLOEXEC);
	ring = container_keyring(fd);
	ct_ok(ring > 0, "container_keyring() returns a serial (%d)", ring);
	snprintf(want, sizeof(want), ";.container-%llu", ct_id("ct-keys"));
	n = ct_keyctl(KEYCTL_DESCRIBE, ring, (unsigned long)desc, sizeof(desc), 0);
	ct_ok(n > 0 && !strncmp(desc, "keyring;", 8) && strstr(desc, want),
	      "it is a keyring named .container-<id> (%s)", n > 0 ? desc : "");
	ct_ok(ct_add_key("user", "before", "payload-before", 14, ring) > 0,
	      "add_key into it before the container starts");

	if (pipe(go) < 0 || pipe(res) < 0)
		return 1;
	init = fork_into_container(fd);
	if (init == 0) {
		close(go[1]);
		close(res[0]);
		read(go[0], buf, 1);
		lookup(res[1], "before");
		lookup(res[1], "after");
		lookup(res[1], "missing");
		_exit(0);
	}
	close(go[0]);
	close(res[1]);
	ct_ok(ct_add_key("user", "after", "payload-after", 13, ring) > 0,
	      "add_key into it after the container started");
	write(go[1], "x", 1);
	n = answer(res[0], buf);
	ct_ok(n > 0 && !strcmp(buf, "payload-before"), "inside, request_key finds the key added before start (%s)", buf);
	n = answer(res[0], buf);
	ct_ok(n > 0 && !strcmp(buf, "payload-after"), "inside, request_key finds the key added after start (%s)", buf);
	n = answer(res[0], buf);
	snprintf(want, sizeof(want), "errno=%d", ENOKEY);
	ct_ok(n > 0 && !strcmp(buf, want), "inside, a key that is not there gives ENOKEY (%s)", buf);
	ct_ok(ct_exited(ct_wait(init), 0), "the member finished");

	CT_ERR(ct_request_key("user", "before", NULL, 0), ENOKEY,
	       "outside the container, its keyring is not searched");

	other = container_create("ct-keys-other", CONTAINER_FD_CLOEXEC);
	close(res[0]);
	if (pipe(res) < 0)
		return 1;
	stranger = fork_into_container(other);
	if (stranger == 0) {
		close(res[0]);
		lookup(res[1], "before");
		_exit(0);
	}
	close(res[1]);
	n = answer(res[0], buf);
	snprintf(want, sizeof(want), "errno=%d", ENOKEY);
	ct_ok(n > 0 && !strcmp(buf, want), "another container does not see it (%s)", buf);
	ct_wait(stranger);

	dirfd = open("/", O_RDONLY | O_CLOEXEC);
	CT_ERR(container_keyring(dirfd), EINVAL, "a non-container fd gives EINVAL");
	CT_ERR(container_keyring(-1), EBADF, "a bad fd gives EBADF");
	ct_ok(ct_in_child(keyring_as_nobody, &fd) == 0, "another uid without CAP_SYS_ADMIN gets EPERM");
	close(dirfd);
	close(other);
	close(fd);
	return ct_exit();
}
