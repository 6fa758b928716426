// SPDX-License-Identifier: GPL-2.0
/*
 * RFC item (13): an overlay mounted into a container (with
 * FSCONFIG_SET_CONTAINER) names its lower directories in the creator's
 * mount namespace, even ones the container cannot see.  fsconfig() resolves
 * layer paths with the caller's root and mounts; FSCONFIG_SET_CONTAINER
 * only changes the superblock's user and network namespaces.
 */
#include "ct.h"

static int mount_tmpfs(const char *path)
{
	mkdir(path, 0755);
	return mount("tmpfs", path, "tmpfs", 0, NULL);
}

/* An overlay with the given layers, for container cfd; returns its mount fd. */
static int overlay(int cfd, const char *lower, const char *upper, const char *work)
{
	int fsfd = fsopen("overlay", FSOPEN_CLOEXEC), mfd;

	if (fsfd < 0)
		return -1;
	if (fsconfig(fsfd, FSCONFIG_SET_CONTAINER, NULL, NULL, cfd) < 0 ||
	    fsconfig(fsfd, FSCONFIG_SET_STRING, "lowerdir", lower, 0) < 0 ||
	    fsconfig(fsfd, FSCONFIG_SET_STRING, "upperdir", upper, 0) < 0 ||
	    fsconfig(fsfd, FSCONFIG_SET_STRING, "workdir", work, 0) < 0 ||
	    fsconfig(fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
		int saved = errno;

		close(fsfd);
		errno = saved;
		return -1;
	}
	mfd = fsmount(fsfd, FSMOUNT_CLOEXEC, 0);
	close(fsfd);
	return mfd;
}

static int member_checks(void)
{
	char buf[64];

	if (ct_read_file("/tmp/ovl-target/from-lower", buf, sizeof(buf)) <= 0 ||
	    strcmp(buf, "lower\n"))
		return 1;
	/* The lower layer's mount is not in the container's namespace. */
	if (access("/tmp/ovl-outside/lower/from-lower", F_OK) == 0)
		return 2;
	/* Writes go to the upper layer. */
	if (ct_write_file("/tmp/ovl-target/from-lower", "changed\n") < 0 &&
	    errno != EBADF)
		return 3;
	return 0;
}

int main(void)
{
	int cfd, mfd, st, fd;
	char buf[64];
	pid_t pid;

	ct_plan(9);

	cfd = container_create("ct-overlay", CONTAINER_NEW_FS_NS | CONTAINER_FD_CLOEXEC);
	ct_ok(cfd >= 0 && mkdirat(cfd, "tmp/ovl-target", 0755) == 0,
	      "a container with its own mount namespace and a mount point");

	/* Mounted after the container was made: the container cannot see it. */
	ct_ok(mount_tmpfs("/tmp/ovl-outside") == 0 &&
	      mkdir("/tmp/ovl-outside/lower", 0755) == 0 &&
	      mkdir("/tmp/ovl-outside/upper", 0755) == 0 &&
	      mkdir("/tmp/ovl-outside/work", 0755) == 0,
	      "layers on a tmpfs mounted in the creator's namespace only");
	fd = open("/tmp/ovl-outside/lower/from-lower", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	ct_ok(fd >= 0 && write(fd, "lower\n", 6) == 6, "a file in the lower layer");
	close(fd);

	mfd = overlay(cfd, "/tmp/ovl-outside/lower", "/tmp/ovl-outside/upper", "/tmp/ovl-outside/work");
	ct_ok(mfd >= 0, "an overlay for the container with lowers outside it");
	ct_ok(move_mount(mfd, "", cfd, "tmp/ovl-target", MOVE_MOUNT_F_EMPTY_PATH) == 0,
	      "mounted into the container");
	close(mfd);

	pid = fork_into_container(cfd);
	if (pid == 0)
		_exit(member_checks());
	st = ct_wait(pid);
	ct_ok(ct_exited(st, 0), "a member reads the lower file through it, and cannot see the layers' mount (%d)",
	      WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	ct_ok(ct_read_file("/tmp/ovl-outside/upper/from-lower", buf, sizeof(buf)) > 0 &&
	      !strcmp(buf, "changed\n"), "its write landed in the upper layer outside");
	ct_ok(ct_read_file("/tmp/ovl-outside/lower/from-lower", buf, sizeof(buf)) > 0 &&
	      !strcmp(buf, "lower\n"), "the lower layer is unchanged");

	/* Paths are the creator's: one that exists only inside the container does not resolve. */
	ct_ok(mkdirat(cfd, "tmp/ovl-target/inside-only", 0755) == 0 &&
	      overlay(cfd, "/tmp/ovl-target/inside-only", "/tmp/ovl-outside/upper",
		      "/tmp/ovl-outside/work") == -1 && errno == ENOENT,
	      "a lower path that exists only in the container's namespace: ENOENT");

	umount2("/tmp/ovl-outside", MNT_DETACH);
	close(cfd);
	return ct_exit();
}
