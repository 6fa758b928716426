// SPDX-License-Identifier: GPL-2.0
/* /proc/containers: format, <current>, visibility of the subtree only. */
#include "ct.h"

struct row {
	char name[80];
	unsigned long long id;
	unsigned int use, flags, uid, gid;
	char state[16];
};

static int parse_row(const char *name, struct row *r)
{
	char line[256];

	if (!ct_proc_row(name, line, sizeof(line)))
		return -1;
	return sscanf(line, "%79s %llu %u %x %u %u %15s", r->name, &r->id,
		      &r->use, &r->flags, &r->uid, &r->gid, r->state) == 7 ? 0 : -1;
}

int main(void)
{
	char all[4096], hdr[7][16];
	int fd, sib, outer, status;
	struct row r, cur;
	pid_t pid, init;

	ct_plan(15);

	ct_ok(ct_read_file("/proc/containers", all, sizeof(all)) > 0, "/proc/containers is readable");
	ct_ok(sscanf(all, "%15s %15s %15s %15s %15s %15s %15s", hdr[0], hdr[1], hdr[2], hdr[3],
		     hdr[4], hdr[5], hdr[6]) == 7 && !strcmp(hdr[0], "NAME") && !strcmp(hdr[1], "ID") &&
	      !strcmp(hdr[2], "USE") && !strcmp(hdr[3], "FLAGS") && !strcmp(hdr[4], "UID") &&
	      !strcmp(hdr[5], "GID") && !strcmp(hdr[6], "STATE"),
	      "header is NAME ID USE FLAGS UID GID STATE");
	ct_ok(parse_row("<current>", &cur) == 0 && cur.id == 1 && !strcmp(cur.state, "running"),
	      "the caller's own container is <current>, id 1, running");

	fd = container_create("ct-flags", CONTAINER_NEW_UTS_NS | CONTAINER_KILL_ON_CLOSE);
	ct_ok(parse_row("ct-flags", &r) == 0 && r.flags == 0x108 && r.uid == getuid() &&
	      r.gid == getgid() && r.use == 1 && !strcmp(r.state, "created"),
	      "a new container: flags 00108, owner, one use, created");
	init = fork_into_container(fd);
	if (init == 0) {
		pause();
		_exit(0);
	}
	ct_ok(init > 0 && parse_row("ct-flags", &r) == 0 && !strcmp(r.state, "running") && r.use >= 2,
	      "after fork_into_container: running, init counted in use (%u)", r.use);
	kill(init, SIGKILL);
	ct_wait(init);
	ct_ok(parse_row("ct-flags", &r) == 0 && !strcmp(r.state, "dead"), "after init died: dead");
	close(fd);
	ct_ok(CT_EVENTUALLY(ct_id("ct-flags") == 0, 2000), "gone once closed and reaped");

	sib = container_create("ct-sibling", 0);
	outer = container_create("ct-outer", 0);
	ct_ok(sib >= 0 && outer >= 0 && ct_id("ct-sibling") && ct_id("ct-outer"),
	      "the caller sees the containers it created");
	pid = fork_into_container(outer);
	if (pid == 0) {
		if (container_create("ct-inner", 0) < 0)
			_exit(1);
		pause();
		_exit(0);
	}
	/* Wait until the member has created ct-inner. */
	ct_ok(CT_EVENTUALLY(ct_id("ct-inner") != 0, 5000), "the caller sees a container created inside its child");
	kill(pid, SIGUSR1);
	status = ct_wait(pid);
	ct_ok(WIFSIGNALED(status), "member ran (killed by SIGUSR1 as planned)");
	ct_ok(CT_EVENTUALLY(ct_id("ct-inner") == 0, 2000), "ct-inner goes with its creator");

	/* Run the member checks again, collecting its exit code. */
	unsigned long long want = ct_id("ct-outer");

	pid = fork_into_container(outer);
	if (pid == 0) {
		int fails = 0;
		unsigned long long outer_id = 0;
		struct row me;

		if (parse_row("<current>", &me) == 0)
			outer_id = me.id;
		if (ct_id("ct-sibling") || ct_id(".init"))
			fails |= 2;
		int in = container_create("ct-inner2", 0);
		if (in < 0 || !ct_id("ct-inner2"))
			fails |= 4;
		char buf[4096];
		int lines = 0;

		ct_read_file("/proc/containers", buf, sizeof(buf));
		for (char *q = buf; (q = strchr(q, '\n')); q++)
			lines++;
		if (lines != 3)
			fails |= 16;
		_exit(outer_id == want ? fails : fails | 1);
	}
	status = ct_wait(pid);
	ct_ok(WIFEXITED(status) && !(WEXITSTATUS(status) & 1),
	      "inside: <current> is its own container (status %x)", status);
	ct_ok(WIFEXITED(status) && !(WEXITSTATUS(status) & 2),
	      "inside: siblings and ancestors are not visible");
	ct_ok(WIFEXITED(status) && !(WEXITSTATUS(status) & 4), "inside: a container created there is visible");
	ct_ok(WIFEXITED(status) && !(WEXITSTATUS(status) & 16),
	      "inside: exactly header, <current> and its child are listed");
	close(sib);
	close(outer);
	return ct_exit();
}
