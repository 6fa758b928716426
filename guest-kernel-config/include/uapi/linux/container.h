/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * Container objects: one handle that owns namespaces, a root, a set of
 * processes with an init, the creator's credentials, a cgroup and a keyring,
 * and in whose context kernel upcalls run.
 */
#ifndef _UAPI_LINUX_CONTAINER_H
#define _UAPI_LINUX_CONTAINER_H

#include <linux/types.h>
#include <linux/ioctl.h>

/*
 * System call numbers (x86_64).  A block well above mainline's numbers, so
 * that new mainline system calls cannot collide with it.
 */
#define __NR_container_base		1000
#ifndef __NR_container_create
#define __NR_container_create		1000
#define __NR_fork_into_container	1001
#define __NR_container_socket		1002
#define __NR_container_kill		1003
#define __NR_container_freeze		1004
#define __NR_container_thaw		1005
#define __NR_container_keyring		1006
#endif

/* container_create() flags */
#define CONTAINER_NEW_FS_NS		0x00000001 /* Copy the caller's mount namespace */
#define CONTAINER_NEW_EMPTY_FS_NS	0x00000002 /* New mount namespace with nothing mounted */
#define CONTAINER_NEW_CGROUP_NS		0x00000004 /* New cgroup namespace */
#define CONTAINER_NEW_UTS_NS		0x00000008 /* New UTS namespace */
#define CONTAINER_NEW_IPC_NS		0x00000010 /* New IPC namespace */
#define CONTAINER_NEW_USER_NS		0x00000020 /* New user namespace */
#define CONTAINER_NEW_PID_NS		0x00000040 /* New PID namespace */
#define CONTAINER_NEW_NET_NS		0x00000080 /* New network namespace */
#define CONTAINER_KILL_ON_CLOSE		0x00000100 /* Kill all members when the fd is released */
#define CONTAINER_FD_CLOEXEC		0x00000200 /* Return the fd with O_CLOEXEC */
#define CONTAINER__FLAG_MASK		0x000003ff

/* Longest container name, excluding the terminating NUL. */
#define CONTAINER_NAME_MAX		63

/*
 * In place of a container fd: the caller's own container, for
 * container_kill(), container_freeze() and container_thaw() done by a
 * member.
 */
#define CONTAINER_FD_CURRENT		(-10000)

/* container_freeze() flags */
#define CONTAINER_FREEZE_NOWAIT		0x00000001 /* Do not wait for every member to stop */

/*
 * Mounting into a container with the mount API:
 *
 * fsconfig(fsfd, FSCONFIG_SET_CONTAINER, NULL, NULL, container_fd) makes the
 * filesystem context use the container's user and network namespaces.
 *
 * move_mount(mfd, "", container_fd, "", MOVE_MOUNT_F_EMPTY_PATH |
 *	      MOVE_MOUNT_T_CONTAINER_ROOT) mounts mfd as the container's root.
 */
#define FSCONFIG_SET_CONTAINER		64
#define MOVE_MOUNT_T_CONTAINER_ROOT	0x00010000

/*
 * ioctl()s on a container fd, for its owner.  Operations added after the
 * first system calls are ioctls, so that the system call table (and with
 * it every object that includes the generated unistd header) stays as it
 * is.
 */
#define CONTAINER_IOC_MAGIC		0xC7

/* CONTAINER_IOC_SETNS: give the container one namespace of another. */
struct container_ns {
	__s32	fd;		/* Another container, or a /proc/PID/ns/ file */
	__u32	nstype;		/* CLONE_NEW*; 0 allowed with a namespace file */
};
#define CONTAINER_IOC_SETNS		_IOW(CONTAINER_IOC_MAGIC, 1, struct container_ns)

/*
 * CONTAINER_IOC_REBOOT (argument 0): kill every member and fork a fresh
 * init; returns its pid, and 0 in the new init, like fork_into_container().
 */
#define CONTAINER_IOC_REBOOT		_IO(CONTAINER_IOC_MAGIC, 2)

/* CONTAINER_IOC_SET_CGROUP (argument: an fd of an empty cgroup v2 directory) */
#define CONTAINER_IOC_SET_CGROUP	_IO(CONTAINER_IOC_MAGIC, 3)

/* CONTAINER_IOC_SET_ROOT (argument: an fd of a directory in the container) */
#define CONTAINER_IOC_SET_ROOT		_IO(CONTAINER_IOC_MAGIC, 4)

/*
 * CONTAINER_IOC_SET_POLICY: hand a security policy for the container to
 * the LSM named lsm, in that LSM's format.
 */
struct container_policy {
	__aligned_u64	lsm;		/* const char *: the LSM's name */
	__aligned_u64	policy;		/* const void *: the policy */
	__u32		len;		/* its length, at most CONTAINER_POLICY_MAX */
	__u32		flags;		/* must be 0 */
};
#define CONTAINER_POLICY_MAX		4096
#define CONTAINER_IOC_SET_POLICY	_IOW(CONTAINER_IOC_MAGIC, 5, struct container_policy)

/*
 * CONTAINER_IOC_SET_DEVICES: the device numbers the container's members may
 * open; count 0 removes the list (everything allowed again).
 */
struct container_dev {
	__u32	type;		/* 'c' or 'b' */
	__u32	major;
	__u32	minor;		/* or CONTAINER_DEV_ANY */
	__u32	reserved;	/* must be 0 */
};
#define CONTAINER_DEV_ANY		0xffffffffU
struct container_devices {
	__aligned_u64	devs;		/* struct container_dev[count] */
	__u32		count;		/* at most CONTAINER_DEVICES_MAX */
	__u32		flags;		/* must be 0 */
};
#define CONTAINER_DEVICES_MAX		256
#define CONTAINER_IOC_SET_DEVICES	_IOW(CONTAINER_IOC_MAGIC, 6, struct container_devices)

#endif /* _UAPI_LINUX_CONTAINER_H */
