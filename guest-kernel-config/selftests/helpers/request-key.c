// SPDX-License-Identifier: GPL-2.0
/*
 * A minimal /sbin/request-key for the selftests: takes authority over the
 * key being constructed and instantiates it with a report of the context
 * it runs in.  Called as:
 *   request-key <op> <key> <uid> <gid> <thread-kr> <process-kr> <session-kr>
 */
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <linux/keyctl.h>
#include "upcall_report.h"

int main(int argc, char **argv)
{
	char payload[256];
	long key;
	int len;

	if (argc < 3 || strcmp(argv[1], "create"))
		return 1;
	key = strtol(argv[2], NULL, 10);
	if (syscall(__NR_keyctl, KEYCTL_ASSUME_AUTHORITY, key) < 0)
		return 2;
	len = upcall_report(payload, sizeof(payload));
	if (syscall(__NR_keyctl, KEYCTL_INSTANTIATE, key, payload, len, 0) < 0)
		return 3;
	return 0;
}
