// SPDX-License-Identifier: GPL-2.0
/*
 * Mounting into a container (FSCONFIG_SET_CONTAINER, MOVE_MOUNT_T_CONTAINER_ROOT,
 * move_mount below the root) and container fds as dirfd of the *at() calls.
 */
#include "ct.h"
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <linux/magic.h>


/* Inside the container: checks of what the member sees, as exit bits. */
static int member_checks(void)
{
	char buf[64];
	struct statfs sf;
	int fails = 0;

	if (ct_read_file("/dir/file", buf, sizeof(buf)) != 5 || strcmp(buf, "hello"))
		fails |= 1;
	if (access("/tests", F_OK) == 0)
		fails |= 2;
	if (statfs("/sub", &sf) || sf.f_type != TMPFS_MAGIC || access("/sub/hidden", F_OK) == 0)
		fails |= 4;
	return fails;
}

static int mount_count(void)
{
	static char buf[65536];
	int n = 0;

	if (ct_read_file("/proc/self/mountinfo", buf, sizeof(buf)) < 0)
		return -1;
	for (char *p = buf; (p = strchr(p, '\n')); p++)
		n++;
	return n;
}

static int new_tmpfs(int cfd)
{
	int fsfd = fsopen("tmpfs", FSOPEN_CLOEXEC), mfd;

	if (fsfd < 0)
		return -1;
	if (cfd >= 0 && fsconfig(fsfd, FSCONFIG_SET_CONTAINER, NULL, NULL, cfd) < 0)
		return -1;
	if (fsconfig(fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
		return -1;
	mfd = fsmount(fsfd, FSMOUNT_CLOEXEC, 0);
	close(fsfd);
	return mfd;
}

int main(void)
{
	int fd, empty, shared, userns, f, mfd, fsfd, status, before;
	char buf[64];
	struct stat st;
	pid_t pid;

	ct_plan(29);

	fd = container_create("ct-fs", CONTAINER_NEW_FS_NS | CONTAINER_FD_CLOEXEC);
	before = mount_count();
	ct_ok(ct_mount_tmpfs_root(fd) == 0, "tmpfs mounted as the root (fsopen, SET_CONTAINER, fsmount, T_CONTAINER_ROOT)");
	ct_ok(mount_count() == before, "the caller's mount table is unchanged");

	ct_ok(mkdirat(fd, "dir", 0755) == 0, "mkdirat(container fd, \"dir\")");
	f = openat(fd, "dir/file", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	ct_ok(f >= 0 && write(f, "hello", 5) == 5, "openat(container fd, \"dir/file\", O_CREAT)");
	close(f);
	ct_ok(mknodat(fd, "null", S_IFCHR | 0666, makedev(1, 3)) == 0 &&
	      fstatat(fd, "null", &st, 0) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3),
	      "mknodat(container fd, \"null\", c 1 3)");
	ct_ok(access("/dir/file", F_OK) < 0 && access("/null", F_OK) < 0, "nothing appeared in the caller's root");
	CT_ERR(openat(fd, "/dir/file", O_RDONLY), EINVAL, "openat with an absolute path gives EINVAL");
	CT_ERR(mkdirat(fd, "/x", 0755), EINVAL, "mkdirat with an absolute path gives EINVAL");
	f = openat(fd, "../../dir/file", O_RDONLY | O_CLOEXEC);
	ct_ok(f >= 0, "'..' stops at the container root");
	close(f);
	CT_ERR(openat(fd, "../../tests", O_RDONLY), ENOENT, "'..' cannot reach the caller's files");
	ct_ok(symlinkat("/dir", fd, "abs") == 0 && (f = openat(fd, "abs/file", O_RDONLY | O_CLOEXEC)) >= 0 &&
	      read(f, buf, 5) == 5, "an absolute symlink resolves inside the container");
	close(f);

	/* A second tmpfs below the root, with a file underneath it to be hidden. */
	ct_ok(mkdirat(fd, "sub", 0755) == 0 && (f = openat(fd, "sub/hidden", O_CREAT | O_WRONLY | O_CLOEXEC, 0600)) >= 0,
	      "prepared a mountpoint below the root");
	close(f);
	mfd = new_tmpfs(fd);
	ct_ok(mfd >= 0 && move_mount(mfd, "", fd, "sub", MOVE_MOUNT_F_EMPTY_PATH) == 0,
	      "move_mount to a path below the container root");
	close(mfd);
	ct_ok(mount_count() == before, "the caller's mount table is still unchanged");

	pid = fork_into_container(fd);
	if (pid == 0)
		_exit(member_checks());
	status = ct_wait(pid);
	ct_ok(WIFEXITED(status) && !(WEXITSTATUS(status) & 1), "a member reads /dir/file written from outside");
	ct_ok(WIFEXITED(status) && !(WEXITSTATUS(status) & 2), "a member does not see the caller's root");
	ct_ok(WIFEXITED(status) && !(WEXITSTATUS(status) & 4), "a member sees the tmpfs mounted on /sub");
	close(fd);

	/* An empty mount namespace gets its root from T_CONTAINER_ROOT. */
	empty = container_create("ct-emptyfs", CONTAINER_NEW_EMPTY_FS_NS | CONTAINER_FD_CLOEXEC);
	CT_ERR(openat(empty, "x", O_RDONLY), ENOENT, "before a root is mounted, lookups give ENOENT");
	ct_ok(ct_mount_tmpfs_root(empty) == 0, "tmpfs mounted as the root of an empty namespace");
	ct_ok(mkdirat(empty, "proc", 0555) == 0, "mkdirat in the new root");
	pid = fork_into_container(empty);
	if (pid == 0) {
		if (mount("proc", "/proc", "proc", 0, NULL))
			_exit(10);
		_exit(mount_count());
	}
	status = ct_wait(pid);
	ct_ok(ct_exited(status, 2), "the member's namespace has only its root and /proc (status %x)", status);
	close(empty);

	shared = container_create("ct-sharedfs", CONTAINER_FD_CLOEXEC);
	mfd = new_tmpfs(-1);
	CT_ERR(move_mount(mfd, "", shared, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_CONTAINER_ROOT),
	       EINVAL, "T_CONTAINER_ROOT into the caller's own namespace gives EINVAL");
	fd = container_create("ct-pathfs", CONTAINER_NEW_FS_NS | CONTAINER_FD_CLOEXEC);
	CT_ERR(move_mount(mfd, "", fd, "tmp", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_CONTAINER_ROOT),
	       EINVAL, "T_CONTAINER_ROOT with a non-empty target path gives EINVAL");
	close(fd);
	f = open("/", O_RDONLY | O_CLOEXEC);
	CT_ERR(move_mount(mfd, "", f, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_CONTAINER_ROOT),
	       EINVAL, "T_CONTAINER_ROOT with a non-container fd gives EINVAL");
	close(f);
	close(mfd);

	/*
	 * FSCONFIG_SET_CONTAINER gives the superblock the container's user
	 * namespace: there, with no uid map yet, the caller's uid 0 has no
	 * mapping, so it cannot create files; on a plain tmpfs it can.
	 */
	userns = container_create("ct-userns-fs", CONTAINER_NEW_USER_NS | CONTAINER_FD_CLOEXEC);
	mfd = new_tmpfs(userns);
	ct_ok(mfd >= 0, "tmpfs prepared with FSCONFIG_SET_CONTAINER for a NEW_USER_NS container");
	CT_ERR(mkdirat(mfd, "x", 0755), EOVERFLOW,
	       "its superblock is in the container's user namespace (unmapped uid gives EOVERFLOW)");
	close(mfd);
	mfd = new_tmpfs(-1);
	ct_ok(mfd >= 0 && mkdirat(mfd, "x", 0755) == 0, "a tmpfs without it is in the caller's namespace");
	close(mfd);
	close(userns);

	fsfd = fsopen("tmpfs", FSOPEN_CLOEXEC);
	fsconfig(fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0);
	CT_ERR(fsconfig(fsfd, FSCONFIG_SET_CONTAINER, NULL, NULL, shared), EBUSY,
	       "FSCONFIG_SET_CONTAINER after CMD_CREATE gives EBUSY");
	close(fsfd);
	fsfd = fsopen("tmpfs", FSOPEN_CLOEXEC);
	CT_ERR(fsconfig(fsfd, FSCONFIG_SET_CONTAINER, NULL, NULL, 0), EINVAL,
	       "FSCONFIG_SET_CONTAINER with a non-container fd gives EINVAL");
	close(fsfd);
	close(shared);
	return ct_exit();
}
