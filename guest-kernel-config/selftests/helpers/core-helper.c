// SPDX-License-Identifier: GPL-2.0
/*
 * A core_pattern pipe helper for the selftests: a usermode helper started
 * by the kernel through call_usermodehelper() when a process dumps core.
 * It drains the core from stdin and writes a report of the context it runs
 * in to /core-report (in whatever root it was given).
 */
#include <fcntl.h>
#include "upcall_report.h"

int main(void)
{
	char buf[4096];
	int fd, len;

	while (read(0, buf, sizeof(buf)) > 0)
		;
	len = upcall_report(buf, sizeof(buf));
	fd = open("/core-report", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return 1;
	write(fd, buf, len);
	close(fd);
	return 0;
}
