/* SPDX-License-Identifier: GPL-2.0 */
/* What an upcall helper reports about the context it was started in. */
#ifndef UPCALL_REPORT_H
#define UPCALL_REPORT_H

#include <stdio.h>
#include <unistd.h>

/* "host=<hostname>;root=<host|container>;pid=<pid>": the root is the
 * test system's if /tests (where the selftests live) is visible. */
static inline int upcall_report(char *buf, size_t size)
{
	char host[65] = "";

	gethostname(host, sizeof(host) - 1);
	return snprintf(buf, size, "host=%s;root=%s;pid=%d", host,
			access("/tests", F_OK) == 0 ? "host" : "container",
			(int)getpid());
}

#endif
