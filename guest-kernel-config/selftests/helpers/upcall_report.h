/* SPDX-License-Identifier: GPL-2.0 */
/* What an upcall helper reports about the context it was started in. */
#ifndef UPCALL_REPORT_H
#define UPCALL_REPORT_H

#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* "host=<hostname>;root=<host|container>;pid=<pid>;cg=<cgroup>": the root
 * is the test system's if /tests (where the selftests live) is visible; the
 * cgroup is the first line of /proc/self/cgroup, "?" without a /proc. */
static inline int upcall_report(char *buf, size_t size)
{
	char host[65] = "", cg[128] = "?";
	FILE *f = fopen("/proc/self/cgroup", "r");

	if (f) {
		if (fgets(cg, sizeof(cg), f))
			cg[strcspn(cg, "\n")] = 0;
		fclose(f);
	}
	gethostname(host, sizeof(host) - 1);
	return snprintf(buf, size, "host=%s;root=%s;pid=%d;cg=%s", host,
			access("/tests", F_OK) == 0 ? "host" : "container",
			(int)getpid(), cg);
}

#endif
