/* SPDX-License-Identifier: MIT */
/* A destination on loopback for the engine tests: pm_incoming_run() in a
 * thread of its own, listening on nlisten ports of 127.0.0.1. */
#ifndef TESTS_ENGINE_HARNESS_H
#define TESTS_ENGINE_HARNESS_H

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pmigrate/migrate.h>
#include "fakevm.h"

struct dest_run {
	struct pm_incoming *in;
	struct fakevm *vm;
	struct pm_report *rep;
	struct pm_err err;
	int rc;
	pthread_t th;
	char addr[4][80];
	const char *to[4];
	unsigned nlisten;
};

static inline void *dest_main(void *arg)
{
	struct dest_run *d = arg;

	d->rc = pm_incoming_run(d->in, &d->vm->be, d->rep, &d->err);
	return NULL;
}

/* Listens on nlisten loopback ports and runs the destination in a thread;
 * timeout_ms is its --timeout, tls its TLS credentials (NULL: none). */
static inline void dest_start_with(struct dest_run *d, struct fakevm *vm, unsigned nlisten,
				   const char *dump, unsigned timeout_ms, const struct pm_tls_params *tls)
{
	const char *listen[4] = { "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0" };
	struct pm_incoming_params ip = { .listen = listen, .nlisten = nlisten, .timeout_ms = timeout_ms,
					 .dump_on_resume = dump };
	struct pm_err e = { 0 };

	if (tls)
		ip.tls = *tls;
	memset(d, 0, sizeof(*d));
	d->vm = vm;
	d->nlisten = nlisten;
	d->rep = calloc(1, sizeof(*d->rep));
	if (pm_incoming_listen(&d->in, &ip, &e))
		fail_msg("listen: %s", e.msg);
	for (unsigned i = 0; i < nlisten; i++) {
		const char *a = pm_incoming_address(d->in, i);
		assert_non_null(a);
		assert_non_null(strstr(a, "127.0.0.1:"));
		assert_string_not_equal(a, "127.0.0.1:0");
		snprintf(d->addr[i], sizeof(d->addr[i]), "%s", a);
		d->to[i] = d->addr[i];
	}
	assert_null(pm_incoming_address(d->in, nlisten));
	assert_int_equal(pthread_create(&d->th, NULL, dest_main, d), 0);
}

static inline void dest_start_timeout(struct dest_run *d, struct fakevm *vm, unsigned nlisten,
				      const char *dump, unsigned timeout_ms)
{
	dest_start_with(d, vm, nlisten, dump, timeout_ms, NULL);
}

static inline void dest_start(struct dest_run *d, struct fakevm *vm, unsigned nlisten, const char *dump)
{
	dest_start_timeout(d, vm, nlisten, dump, 15000);
}

static inline void dest_join(struct dest_run *d)
{
	pthread_join(d->th, NULL);
	pm_incoming_close(d->in);
}

/* Whether this kernel can make TLS 1.3 AES-GCM records (kTLS): the "tls"
 * ULP on a connected TCP socket takes a transmit key. */
#include <linux/tls.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include "engine/net.h"
static inline bool ktls_usable(void)
{
	struct pm_err e = { 0 };
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	struct tls12_crypto_info_aes_gcm_128 ci = { .info = { .version = TLS_1_3_VERSION,
							      .cipher_type = TLS_CIPHER_AES_GCM_128 } };
	char addr[80];
	int l = pm_tcp_listen("127.0.0.1:0", &e), c, a;
	bool ok;

	getsockname(l, (struct sockaddr *)&ss, &sl);
	pm_format_addr((struct sockaddr *)&ss, addr, sizeof(addr));
	c = pm_tcp_connect(addr, NULL, 5000, &e);
	a = accept(l, NULL, NULL);
	ok = !setsockopt(c, IPPROTO_TCP, 31 /* TCP_ULP */, "tls", 4) &&
	     !setsockopt(c, 282 /* SOL_TLS */, TLS_TX, &ci, sizeof(ci));
	close(a);
	close(c);
	close(l);
	return ok;
}

/* TLS credentials made once per test program (tests/tls/mkcreds.sh, named
 * by PM_MKCREDS) on first use; tls_creds_remove() at the end. */
static char tls_creds_dir[64], tls_psk_file[80];

static inline const char *tls_creds(void)
{
	char cmd[512];

	if (tls_creds_dir[0])
		return tls_creds_dir;
	snprintf(tls_creds_dir, sizeof(tls_creds_dir), "/tmp/pm-test-tls.XXXXXX");
	if (!getenv("PM_MKCREDS") || !mkdtemp(tls_creds_dir))
		fail_msg("PM_MKCREDS (tests/tls/mkcreds.sh) is not set");
	snprintf(tls_psk_file, sizeof(tls_psk_file), "%s/keys.psk", tls_creds_dir);
	snprintf(cmd, sizeof(cmd), "'%s' x509 '%s/x509' && '%s' psk '%s'", getenv("PM_MKCREDS"),
		 tls_creds_dir, getenv("PM_MKCREDS"), tls_psk_file);
	if (system(cmd))
		fail_msg("cannot make TLS credentials: %s", cmd);
	return tls_creds_dir;
}

static inline struct pm_tls_params tls_params(enum pm_tls_mode m)
{
	static char x509[96];
	struct pm_tls_params t = { 0 };

	if (m == PM_TLS_NONE)
		return t;
	snprintf(x509, sizeof(x509), "%s/x509", tls_creds());
	if (m == PM_TLS_X509)
		t.creds_dir = x509;
	else
		t.psk_file = tls_psk_file;
	return t;
}

/* Removes the credentials if they were made; nonzero if that failed. */
static inline int tls_creds_remove(void)
{
	char cmd[128];

	if (!tls_creds_dir[0])
		return 0;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tls_creds_dir);
	return system(cmd);
}

#endif
