// SPDX-License-Identifier: GPL-2.0
/*
 * no_int3_selftest: with the parameter the INT3 self-test of the
 * alternatives code is skipped (and says so), without it the test runs.
 */
#include "ct.h"
#include <sys/klog.h>

int main(void)
{
	static char log[1 << 20];
	char cmdline[4096];
	int n, skipped, param;

	ct_plan(2);
	n = klogctl(3, log, sizeof(log) - 1);
	log[n > 0 ? n : 0] = 0;
	ct_read_file("/proc/cmdline", cmdline, sizeof(cmdline));
	param = strstr(cmdline, "no_int3_selftest") != NULL;
	skipped = strstr(log, "INT3 self-test skipped") != NULL;
	ct_ok(n > 0, "the kernel log is readable");
	ct_ok(param == skipped, "no_int3_selftest %s, and the self-test was %s",
	      param ? "given" : "not given", skipped ? "skipped" : "run");
	return ct_exit();
}
