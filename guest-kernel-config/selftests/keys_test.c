// SPDX-License-Identifier: GPL-2.0
/*
 * Keys regression tests (the kernel has no keys selftests of its own): the
 * series changes keyring searching and request-key upcalls, so check that
 * ordinary key management still works outside containers.
 */
#include "ct.h"

int main(void)
{
	char buf[128];
	long ring, key, found;

	ct_plan(10);

	ring = ct_keyctl(KEYCTL_JOIN_SESSION_KEYRING, (unsigned long)"keys-test", 0, 0, 0);
	ct_ok(ring > 0, "join a new session keyring");
	key = ct_add_key("user", "k1", "value1", 6, KEY_SPEC_SESSION_KEYRING);
	ct_ok(key > 0, "add_key user key into the session keyring");
	ct_ok(ct_read_key(key, buf, sizeof(buf)) == 6 && !strcmp(buf, "value1"), "keyctl read gives the payload");
	found = ct_request_key("user", "k1", NULL, 0);
	ct_ok(found == key, "request_key finds it without an upcall");
	ct_ok(ct_keyctl(KEYCTL_SEARCH, KEY_SPEC_SESSION_KEYRING, (unsigned long)"user", (unsigned long)"k1", 0) == key,
	      "keyctl search finds it");
	ct_ok(ct_add_key("user", "k1", "value2", 6, KEY_SPEC_SESSION_KEYRING) == key &&
	      ct_read_key(key, buf, sizeof(buf)) == 6 && !strcmp(buf, "value2"), "add_key again updates it");
	CT_ERR(ct_request_key("user", "k-missing", NULL, 0), ENOKEY, "a missing key without callout gives ENOKEY");
	found = ct_request_key("user", "k-upcall", "info", 0);
	ct_ok(found > 0 && ct_read_key(found, buf, sizeof(buf)) > 0 && strstr(buf, "root=host"),
	      "request_key with callout runs /sbin/request-key (%s)", found > 0 ? buf : "");
	ct_ok(ct_keyctl(KEYCTL_REVOKE, key, 0, 0, 0) == 0, "revoke the key");
	CT_ERR(ct_read_key(key, buf, sizeof(buf)), EKEYREVOKED, "a revoked key cannot be read");
	return ct_exit();
}
