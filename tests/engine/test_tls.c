/* SPDX-License-Identifier: MIT */
/* TLS on the channels (src/engine/tls.c, tls_io.c), below whole
 * migrations (those are in test_migrate.c):
 *  - the kTLS keys: what pm_tls_traffic_keys() derives from a traffic
 *    secret decrypts OpenSSL's first record and makes one OpenSSL accepts,
 *    for each TLS 1.3 suite -- the kernel would get exactly these;
 *  - the record path: frames of every size, sent as many small pieces and
 *    received through every receive call, arrive byte for byte;
 *  - session binding at the destination: another authenticated client, or
 *    the same one naming another session, is refused and the destination
 *    keeps waiting; so is a client the authz list does not name;
 *  - credentials that are missing, malformed or mixed are refused up front. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>
#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <pmigrate/migrate.h>
#include "engine/net.h"
#include "engine/protocol.h"
#include "engine/tls.h"
#include "fakevm.h"
#include "harness.h"

static char dir[64], x509[96], other[112], psk[96], psk_bad[96];

static int make_creds(void **state)
{
	char cmd[600];
	FILE *f;

	snprintf(dir, sizeof(dir), "/tmp/pm-test-tlsu.XXXXXX");
	if (!getenv("PM_MKCREDS") || !mkdtemp(dir))
		return -1;
	snprintf(x509, sizeof(x509), "%s/x509", dir);
	snprintf(other, sizeof(other), "%s/x509/other", dir);
	snprintf(psk, sizeof(psk), "%s/keys.psk", dir);
	snprintf(psk_bad, sizeof(psk_bad), "%s/bad.psk", dir);
	snprintf(cmd, sizeof(cmd), "'%s' x509 '%s' && '%s' psk '%s'", getenv("PM_MKCREDS"), x509,
		 getenv("PM_MKCREDS"), psk);
	if (system(cmd))
		return -1;
	f = fopen(psk_bad, "w");
	fputs("pmigrate:00112233\n", f);        /* too short a key */
	fclose(f);
	return 0;
}

static int remove_creds(void **state)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) ? -1 : 0;
}

/* ------------------------------------------------------------ kTLS keys */

struct keylog {
	uint8_t secret[2][48];
	size_t len[2];
};

static void keylog_cb(const SSL *ssl, const char *line)
{
	struct keylog *k = SSL_get_app_data(ssl);
	int which = !strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24) ? 0 :
		    !strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24) ? 1 : -1;
	const char *hex = which < 0 ? NULL : strchr(line + 24, ' ');

	if (!hex)
		return;
	for (hex++; hex[0] && hex[1] && k->len[which] < 48; hex += 2) {
		unsigned v;
		sscanf(hex, "%2x", &v);
		k->secret[which][k->len[which]++] = v;
	}
}

/* The AEAD of a suite, as kTLS runs it: nonce = iv ^ seq (RFC 8446, 5.3). */
static int seal_or_open(uint16_t suite, const uint8_t *key, const uint8_t iv[12], uint64_t seq,
			bool seal, const uint8_t *hdr, const uint8_t *in, size_t len, uint8_t *out,
			uint8_t tag[16])
{
	const EVP_CIPHER *c = suite == 0x1301 ? EVP_aes_128_gcm() : suite == 0x1302 ? EVP_aes_256_gcm() :
			      EVP_chacha20_poly1305();
	EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
	uint8_t nonce[12];
	int n, ok;

	memcpy(nonce, iv, 12);
	for (int i = 0; i < 8; i++)
		nonce[11 - i] ^= seq >> (8 * i);
	ok = EVP_CipherInit_ex(x, c, NULL, key, nonce, seal) &&
	     EVP_CipherUpdate(x, NULL, &n, hdr, 5) &&
	     (seal || EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_TAG, 16, tag)) &&
	     EVP_CipherUpdate(x, out, &n, in, len) && EVP_CipherFinal_ex(x, out + n, &n) &&
	     (!seal || EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, 16, tag));
	EVP_CIPHER_CTX_free(x);
	return ok ? 0 : -1;
}

static void keys_for_suite(const char *name, uint16_t id)
{
	SSL_CTX *sc = SSL_CTX_new(TLS_server_method()), *cc = SSL_CTX_new(TLS_client_method());
	struct keylog kc = { 0 }, ks = { 0 };
	char cert[160], key[160];
	BIO *b1, *b2;

	snprintf(cert, sizeof(cert), "%s/server-cert.pem", x509);
	snprintf(key, sizeof(key), "%s/server-key.pem", x509);
	assert_int_equal(SSL_CTX_use_certificate_file(sc, cert, SSL_FILETYPE_PEM), 1);
	assert_int_equal(SSL_CTX_use_PrivateKey_file(sc, key, SSL_FILETYPE_PEM), 1);
	for (SSL_CTX *x = sc; x; x = x == sc ? cc : NULL) {
		SSL_CTX_set_min_proto_version(x, TLS1_3_VERSION);
		assert_int_equal(SSL_CTX_set_ciphersuites(x, name), 1);
		SSL_CTX_set_keylog_callback(x, keylog_cb);
	}
	SSL_CTX_set_num_tickets(sc, 0);         /* as the engine: seq 0 is the first data record */
	SSL *s = SSL_new(sc), *c = SSL_new(cc);
	SSL_set_app_data(s, &ks);
	SSL_set_app_data(c, &kc);
	assert_int_equal(BIO_new_bio_pair(&b1, 1 << 16, &b2, 1 << 16), 1);
	SSL_set_bio(s, b1, b1);
	SSL_set_bio(c, b2, b2);
	SSL_set_accept_state(s);
	SSL_set_connect_state(c);
	for (int i = 0; i < 20 && !(SSL_is_init_finished(s) && SSL_is_init_finished(c)); i++) {
		SSL_do_handshake(c);
		SSL_do_handshake(s);
	}
	assert_true(SSL_is_init_finished(s) && SSL_is_init_finished(c));
	assert_int_equal(SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(c)), id);

	size_t klen = id == 0x1301 ? 16 : 32;
	const char *md = id == 0x1302 ? "SHA384" : "SHA256";
	uint8_t ck[32], civ[12], sk[32], siv[12];
	assert_int_equal(pm_tls_traffic_keys(md, kc.secret[0], kc.len[0], ck, klen, civ), 0);
	assert_int_equal(pm_tls_traffic_keys(md, ks.secret[1], ks.len[1], sk, klen, siv), 0);

	/* The client's first record, opened with our client keys at seq 0. */
	static const char msg[] = "pmigrate HELLO";
	uint8_t rec[256], pt[256], tag[16];
	size_t w;
	assert_int_equal(SSL_write_ex(c, msg, sizeof(msg), &w), 1);
	int n = BIO_read(SSL_get_rbio(s), rec, sizeof(rec));   /* b1: what the client wrote */
	assert_int_equal(n, 5 + sizeof(msg) + 1 + 16);
	assert_int_equal(rec[0], 23);
	memcpy(tag, rec + n - 16, 16);
	assert_int_equal(seal_or_open(id, ck, civ, 0, false, rec, rec + 5, n - 5 - 16, pt, tag), 0);
	assert_memory_equal(pt, msg, sizeof(msg));
	assert_int_equal(pt[sizeof(msg)], 23);  /* inner content type: application data */

	/* A record sealed with our server keys at seq 0 is the client's. */
	static const char reply[] = "HELLO_ACK from the kernel";
	uint8_t inner[64], out[128];
	memcpy(inner, reply, sizeof(reply));
	inner[sizeof(reply)] = 23;
	size_t plen = sizeof(reply) + 1;
	out[0] = 23, out[1] = 3, out[2] = 3, out[3] = (plen + 16) >> 8, out[4] = (plen + 16) & 0xff;
	assert_int_equal(seal_or_open(id, sk, siv, 0, true, out, inner, plen, out + 5, tag), 0);
	memcpy(out + 5 + plen, tag, 16);
	assert_int_equal(BIO_write(SSL_get_wbio(s), out, 5 + plen + 16), (int)(5 + plen + 16));
	char got[64] = "";
	size_t r = 0;
	assert_int_equal(SSL_read_ex(c, got, sizeof(got), &r), 1);
	assert_int_equal(r, sizeof(reply));
	assert_string_equal(got, reply);
	SSL_free(s);
	SSL_free(c);
	SSL_CTX_free(sc);
	SSL_CTX_free(cc);
}

static void test_ktls_keys(void **state)
{
	keys_for_suite("TLS_AES_128_GCM_SHA256", 0x1301);
	keys_for_suite("TLS_AES_256_GCM_SHA384", 0x1302);
	keys_for_suite("TLS_CHACHA20_POLY1305_SHA256", 0x1303);
}

/* ------------------------------------------------------------ records */

struct pair {
	struct pm_tls *st, *ct;
	struct pm_conn s, c;
};

struct hs_arg {
	struct pm_conn *conn;
	struct pm_err err;
	int r;
};

static void *server_hs(void *a)
{
	struct hs_arg *h = a;

	h->r = pm_tls_handshake(h->conn, &h->err);
	return NULL;
}

/* A TLS connection over loopback TCP between our own server and client. */
static int tls_pair(struct pair *p, const struct pm_tls_params *sp, const struct pm_tls_params *cp,
		    struct pm_err *cerr, struct pm_err *serr)
{
	struct pm_err e = { 0 };
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char addr[80];
	int l = pm_tcp_listen("127.0.0.1:0", &e);
	pthread_t th;

	memset(p, 0, sizeof(*p));
	assert_true(l >= 0);
	getsockname(l, (struct sockaddr *)&ss, &sl);
	pm_format_addr((struct sockaddr *)&ss, addr, sizeof(addr));
	if (pm_tls_new(&p->st, sp, true, &e) || pm_tls_new(&p->ct, cp, false, &e))
		fail_msg("credentials: %s", e.msg);
	int fd = pm_tcp_connect(addr, NULL, 5000, &e);
	assert_true(fd >= 0);
	pm_conn_init(&p->c, fd);
	pm_conn_init(&p->s, accept(l, NULL, NULL));
	close(l);
	pm_conn_set_timeout(&p->c, 10000);
	pm_conn_set_timeout(&p->s, 10000);
	assert_int_equal(pm_tls_start(p->st, &p->s, NULL, &e), 0);
	assert_int_equal(pm_tls_start(p->ct, &p->c, "127.0.0.1", &e), 0);
	struct hs_arg h = { .conn = &p->s };
	pthread_create(&th, NULL, server_hs, &h);
	int r = pm_tls_handshake(&p->c, cerr);
	pthread_join(th, NULL);
	*serr = h.err;
	return r ? r : h.r;
}

static void pair_free(struct pair *p)
{
	pm_conn_close(&p->s);
	pm_conn_close(&p->c);
	pm_tls_free(p->st);
	pm_tls_free(p->ct);
}

struct sender {
	struct pm_conn *conn;
	const uint8_t *data;
	size_t len;
	int r;
};

/* Sends data as frames of growing sizes, each as many small pieces. */
static void *send_main(void *a)
{
	struct sender *s = a;
	struct iovec iov[64];
	struct pm_err e = { 0 };
	size_t off = 0, frame = 1;

	while (off < s->len && !s->r) {
		size_t f = frame < s->len - off ? frame : s->len - off, o = 0;
		int n = 0;
		while (o < f && n < 64) {
			size_t k = n == 63 ? f - o : (o * 7 + 13) % 5000 + 1;
			if (k > f - o)
				k = f - o;
			iov[n++] = (struct iovec){ (void *)(s->data + off + o), k };
			o += k;
		}
		s->r = pm_send_all(s->conn, iov, n, &e, "sending");
		off += f;
		frame = frame * 3 + 1;
		if (frame > (4u << 20))
			frame = 1;
	}
	return NULL;
}

/* The record path, with OpenSSL's records (no_ktls) or the kernel's. */
static void record_path(bool no_ktls)
{
	struct pm_tls_params sp = { .creds_dir = x509, .no_ktls = no_ktls }, cp = { .creds_dir = x509, .no_ktls = no_ktls };
	struct pm_err ce = { 0 }, se = { 0 }, e = { 0 };
	struct pair p;
	size_t len = 24u << 20;
	uint8_t *data = malloc(len), *got = malloc(len);
	pthread_t th;

	for (size_t i = 0; i < len; i++)
		data[i] = (uint8_t)(i * 2654435761u >> 13);
	if (tls_pair(&p, &sp, &cp, &ce, &se))
		fail_msg("handshake: %s / %s", ce.msg, se.msg);
	assert_string_equal(pm_tls_peer(&p.s), "CN=pmigrate-source,O=pmigrate tests");
	assert_string_equal(pm_tls_peer(&p.c), "CN=pmigrate-destination,O=pmigrate tests");
	/* Where the kernel has TLS, it makes every record of both ends. */
	bool kernel = !no_ktls && ktls_usable();
	if (!no_ktls && getenv("PM_EXPECT_KTLS"))
		assert_true(kernel);    /* in the nested L1, whose kernel has TLS */
	for (int tx = 0; tx < 2; tx++) {
		assert_int_equal(pm_tls_kernel(&p.c, tx), kernel);
		assert_int_equal(pm_tls_kernel(&p.s, tx), kernel);
	}
	if (!no_ktls)
		print_message("# kernel TLS here: %s\n", kernel ? "yes (records by the kernel)" : "no");
	struct sender s = { .conn = &p.c, .data = data, .len = len };
	pthread_create(&th, NULL, send_main, &s);
	/* Receive through every call the receivers use, in odd sizes. */
	size_t off = 0;
	unsigned k = 0;
	while (off < len) {
		size_t want = (k * 5471 % 70000) + 1;
		if (want > len - off)
			want = len - off;
		int r = 0;
		if (k % 3 == 0) {
			r = pm_recv_buf(&p.s, got + off, want, &e, "recv_buf");
			off += r ? 0 : want;
		} else if (k % 3 == 1) {
			ssize_t n = pm_recv_some(&p.s, got + off, want, &e, "recv_some");
			r = n < 0 ? (int)n : 0;
			off += n > 0 ? (size_t)n : 0;
		} else {
			struct iovec iov[3] = { { got + off, want / 3 }, { got + off + want / 3, want / 3 },
						{ got + off + 2 * (want / 3), want - 2 * (want / 3) } };
			r = pm_conn_wait_readable(&p.s, &e, "wait");
			ssize_t n = r ? 0 : pm_recv_nowait(&p.s, iov, 3, &e, "recv_nowait");
			r = n < 0 ? (int)n : r;
			off += n > 0 ? (size_t)n : 0;
		}
		if (r)
			fail_msg("receive at %zu: %s", off, e.msg);
		k++;
	}
	pthread_join(th, NULL);
	assert_int_equal(s.r, 0);
	assert_memory_equal(got, data, len);
	/* An ERROR frame over TLS arrives as one. */
	pm_send_error_frame(&p.s, EPROTO, "bad \x1b thing");
	uint8_t hb[PM_FRAME_HDR_LEN], body[64];
	struct pm_frame_hdr h;
	assert_int_equal(pm_recv_buf(&p.c, hb, sizeof(hb), &e, "error header"), 0);
	pm_decode_hdr(hb, &h);
	assert_int_equal(h.type, PM_FR_ERROR);
	assert_int_equal(pm_recv_buf(&p.c, body, h.len, &e, "error body"), 0);
	char msg[PM_ERROR_MSG_CAP];
	assert_int_equal(pm_decode_error(body, h.len, msg, sizeof(msg)), EPROTO);
	assert_string_equal(msg, "bad \\x1b thing");
	/* A peer that goes away is a clean error, not a hang. */
	pm_conn_close(&p.c);
	assert_true(pm_recv_buf(&p.s, body, 1, &e, "after close") < 0);
	pair_free(&p);
	free(data);
	free(got);
}

static void test_record_path_userspace(void **state) { record_path(true); }
static void test_record_path(void **state) { record_path(false); }

/* Handshakes that must fail, and the words they fail with, on both ends. */
static void expect_fail(const struct pm_tls_params *sp, const struct pm_tls_params *cp, const char *cwant,
			const char *swant)
{
	struct pm_err ce = { 0 }, se = { 0 };
	struct pair p;
	int r = tls_pair(&p, sp, cp, &ce, &se);

	if (!r) {
		/* TLS 1.3: the client finishes before the server checks it. */
		uint8_t b;
		r = pm_recv_buf(&p.c, &b, 1, &ce, "reading");
	}
	assert_true(r < 0);
	if (cwant && !strstr(ce.msg, cwant))
		fail_msg("client said '%s', expected '%s'", ce.msg, cwant);
	if (swant && !strstr(se.msg, swant))
		fail_msg("server said '%s', expected '%s'", se.msg, swant);
	pair_free(&p);
}

static void test_handshake_failures(void **state)
{
	char bad_ca[140];
	struct pm_tls_params x = { .creds_dir = x509 }, o = { .creds_dir = other }, k = { .psk_file = psk };

	snprintf(bad_ca, sizeof(bad_ca), "%s/x509b", dir);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "'%s' x509 '%s'", getenv("PM_MKCREDS"), bad_ca);
	assert_int_equal(system(cmd), 0);
	struct pm_tls_params b = { .creds_dir = bad_ca };

	expect_fail(&x, &b, "the destination's certificate is not trusted", "does not trust our certificate");
	expect_fail(&b, &x, "the destination's certificate is not trusted", NULL);
	expect_fail(&x, &k, "uses X.509 credentials, not a pre-shared key", NULL);
	expect_fail(&k, &x, "does it use X.509 credentials too", "same kind of credentials");
	struct pm_tls_params h = { .creds_dir = x509, .hostname = "elsewhere.example" };
	expect_fail(&x, &h, "does not name 'elsewhere.example'", NULL);
	/* Another key for the same identity, and an unknown identity. */
	char k2[120];
	snprintf(k2, sizeof(k2), "%s/k2.psk", dir);
	snprintf(cmd, sizeof(cmd), "'%s' psk '%s' && '%s' psk '%s.id' stranger", getenv("PM_MKCREDS"), k2,
		 getenv("PM_MKCREDS"), k2);
	assert_int_equal(system(cmd), 0);
	struct pm_tls_params kk = { .psk_file = k2 };
	expect_fail(&k, &kk, "refused our pre-shared key", "pre-shared key differs");
	char k3[130];
	snprintf(k3, sizeof(k3), "%s.id", k2);
	struct pm_tls_params ki = { .psk_file = k3 };
	expect_fail(&k, &ki, "refused our pre-shared key", "unknown PSK identity 'stranger'");
	/* An authz list that does not name the client: refused after the
	 * handshake, with the client's name. */
	char az[120];
	snprintf(az, sizeof(az), "%s/authz", dir);
	FILE *f = fopen(az, "w");
	fputs("# allowed sources\nCN=pmigrate-source,O=pmigrate tests\n", f);
	fclose(f);
	struct pm_tls_params xa = { .creds_dir = x509, .authz_file = az };
	expect_fail(&xa, &o, NULL, "the source's certificate (CN=other-source,O=pmigrate tests) is not in");
	/* ... and one that does, with a glob. */
	f = fopen(az, "w");
	fputs("CN=*-source,O=pmigrate tests\n", f);
	fclose(f);
	struct pm_err ce = { 0 }, se = { 0 };
	struct pair p;
	if (tls_pair(&p, &xa, &o, &ce, &se))
		fail_msg("authz glob: %s / %s", ce.msg, se.msg);
	assert_string_equal(pm_tls_peer(&p.s), "CN=other-source,O=pmigrate tests");
	pair_free(&p);
}

static void test_bad_credentials(void **state)
{
	struct pm_tls *t = NULL;
	struct pm_err e = { 0 };
	char d[120];
	static const struct {
		struct pm_tls_params p;
		bool server;
		const char *want;
	} cases[] = {
		{ { .creds_dir = "/nonexistent" }, true, "cannot read /nonexistent/ca-cert.pem" },
		{ { .psk_file = "/nonexistent.psk" }, false, "TLS PSK file /nonexistent.psk" },
		{ { .creds_dir = "/tmp", .psk_file = "/tmp/x" }, true, "not both" },
		{ { .authz_file = "/tmp/x" }, true, "need --tls-creds" },
		{ { .psk_file = "/tmp/x", .hostname = "h" }, false, "not to PSK" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		pm_err_clear(&e);
		assert_true(pm_tls_new(&t, &cases[i].p, cases[i].server, &e) < 0);
		assert_null(t);
		if (!strstr(e.msg, cases[i].want))
			fail_msg("case %zu: '%s', expected '%s'", i, e.msg, cases[i].want);
	}
	struct pm_tls_params k = { .psk_file = psk_bad };
	pm_err_clear(&e);
	assert_true(pm_tls_new(&t, &k, true, &e) < 0);
	assert_non_null(strstr(e.msg, "16 to 64 bytes"));
	/* A source with only server credentials has no client certificate. */
	snprintf(d, sizeof(d), "%s/serveronly", dir);
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "mkdir -p '%s' && cp '%s'/ca-cert.pem '%s'/server-*.pem '%s'/", d, x509, x509, d);
	assert_int_equal(system(cmd), 0);
	struct pm_tls_params so = { .creds_dir = d };
	pm_err_clear(&e);
	assert_true(pm_tls_new(&t, &so, false, &e) < 0);
	assert_non_null(strstr(e.msg, "client-cert.pem"));
	pm_err_clear(&e);
	assert_int_equal(pm_tls_new(&t, &so, true, &e), 0);
	pm_tls_free(t);
	/* A certificate with another's key. */
	snprintf(cmd, sizeof(cmd), "cp '%s'/client-key.pem '%s'/server-key.pem", x509, d);
	assert_int_equal(system(cmd), 0);
	pm_err_clear(&e);
	assert_true(pm_tls_new(&t, &so, true, &e) < 0);
	assert_non_null(strstr(e.msg, "does not belong to"));
}

/* ------------------------------------------------------------ binding */

struct bdest {
	struct pm_incoming *in;
	struct fakevm *vm;
	struct pm_report rep;
	struct pm_err err;
	int rc;
	pthread_t th;
	char log[8][300];
	unsigned nlog;
	pthread_mutex_t mu;
};

static void dest_log(void *opaque, const char *msg)
{
	struct bdest *d = opaque;

	pthread_mutex_lock(&d->mu);
	if (d->nlog < 8)
		snprintf(d->log[d->nlog++], sizeof(d->log[0]), "%s", msg);
	pthread_mutex_unlock(&d->mu);
}

static void *bdest_main(void *a)
{
	struct bdest *d = a;

	d->rc = pm_incoming_run(d->in, &d->vm->be, &d->rep, &d->err);
	return NULL;
}

/* A client that authenticates as creds and says HELLO for session sid. */
static int hello_as(const char *addr, const char *creds, uint8_t sid, uint16_t ch, char *reply, size_t rlen)
{
	struct pm_tls_params tp = { .creds_dir = creds };
	struct pm_tls *t = NULL;
	struct pm_err e = { 0 };
	struct pm_conn c;
	struct pm_hello h = { .magic = PM_PROTO_MAGIC, .version = PM_PROTO_VERSION, .channel = ch,
			      .nchannels = 2, .chunk_pages = 512, .page_size = PM_PAGE_SIZE };
	uint8_t hb[PM_HELLO_LEN], fh[PM_FRAME_HDR_LEN], body[PM_ERROR_FIXED_LEN + PM_MAX_ERROR_LEN];
	struct pm_frame_hdr fr;
	int r;

	memset(h.session, sid, 16);
	assert_int_equal(pm_tls_new(&t, &tp, false, &e), 0);
	pm_conn_init(&c, pm_tcp_connect(addr, NULL, 5000, &e));
	pm_conn_set_timeout(&c, 10000);
	r = pm_tls_start(t, &c, "127.0.0.1", &e);
	if (!r)
		r = pm_tls_handshake(&c, &e);
	pm_encode_hello(hb, &h);
	if (!r)
		r = pm_send_frame(&c, PM_FR_HELLO, hb, sizeof(hb), &e);
	if (!r)
		r = pm_recv_buf(&c, fh, sizeof(fh), &e, "reply");
	pm_decode_hdr(fh, &fr);
	snprintf(reply, rlen, "%s", r ? e.msg : pm_frame_name(fr.type));
	if (!r && fr.type == PM_FR_ERROR && fr.len <= sizeof(body) && !pm_recv_buf(&c, body, fr.len, &e, "body")) {
		char m[PM_ERROR_MSG_CAP];
		pm_decode_error(body, fr.len, m, sizeof(m));
		snprintf(reply, rlen, "ERROR: %.500s", m);
	}
	pm_conn_close(&c);
	pm_tls_free(t);
	return r;
}

static void test_session_binding(void **state)
{
	const char *listen[] = { "127.0.0.1:0" };
	uint64_t np = 64, gpa = 0;
	struct bdest d = { .vm = fakevm_new("dst", 1, &np, &gpa) };
	struct pm_incoming_params ip = { .listen = listen, .nlisten = 1, .timeout_ms = 20000,
					 .tls = { .creds_dir = x509 }, .log = dest_log, .log_opaque = &d };
	struct pm_err e = { 0 };
	char reply[600], addr[80];

	pthread_mutex_init(&d.mu, NULL);
	assert_int_equal(pm_incoming_listen(&d.in, &ip, &e), 0);
	snprintf(addr, sizeof(addr), "%s", pm_incoming_address(d.in, 0));
	pthread_create(&d.th, NULL, bdest_main, &d);
	/* The source binds session 0xaa with channel 0 of 2 ... */
	assert_int_equal(hello_as(addr, x509, 0xaa, 0, reply, sizeof(reply)), 0);
	assert_string_equal(reply, "HELLO_ACK");
	/* ... another authenticated client cannot join it, even knowing its id, */
	hello_as(addr, other, 0xaa, 1, reply, sizeof(reply));
	if (!strstr(reply, "authenticated as 'CN=other-source,O=pmigrate tests', but this migration "
		    "belongs to 'CN=pmigrate-source,O=pmigrate tests'"))
		fail_msg("intruder got: %s", reply);
	/* ... the source's own identity cannot open another session, */
	hello_as(addr, x509, 0xbb, 1, reply, sizeof(reply));
	assert_non_null(strstr(reply, "names another migration session"));
	/* ... nor connect a channel twice. */
	hello_as(addr, x509, 0xaa, 0, reply, sizeof(reply));
	assert_non_null(strstr(reply, "channel 0 connected twice"));
	/* The destination still waits: cancel it. */
	usleep(100000);
	assert_int_equal(pthread_tryjoin_np(d.th, NULL), EBUSY);
	pm_incoming_cancel(d.in);
	pthread_join(d.th, NULL);
	assert_int_equal(d.rc, -ECANCELED);
	assert_int_equal(d.rep.rejected_connections, 3);
	assert_string_equal(d.rep.tls, "x509");
	assert_int_equal(d.vm->resumes, 0);
	assert_int_equal(d.nlog, 3);
	assert_non_null(strstr(d.log[0], "rejected a connection from 127.0.0.1:"));
	pm_incoming_close(d.in);
	fakevm_free(d.vm);
	pthread_mutex_destroy(&d.mu);
}

/* Plain TCP beyond loopback is refused unless asked for, then warned. */
static void test_insecure(void **state)
{
	const char *any[] = { "0.0.0.0:0" }, *to[] = { "192.0.2.1:7000" };
	struct pm_incoming *in = NULL;
	struct pm_incoming_params ip = { .listen = any, .nlisten = 1 };
	struct bdest d = { 0 };
	struct pm_err e = { 0 };

	pthread_mutex_init(&d.mu, NULL);
	assert_int_equal(pm_incoming_listen(&in, &ip, &e), -EACCES);
	assert_non_null(strstr(e.msg, "refusing to listen on 0.0.0.0:0 without TLS"));
	ip.insecure = true;
	ip.log = dest_log;
	ip.log_opaque = &d;
	pm_err_clear(&e);
	assert_int_equal(pm_incoming_listen(&in, &ip, &e), 0);
	assert_int_equal(d.nlog, 1);
	assert_non_null(strstr(d.log[0], "anyone who can reach this port can replace the VM"));
	pm_incoming_close(in);

	uint64_t np = 64, gpa = 0;
	struct fakevm *vm = fakevm_new("src", 1, &np, &gpa);
	struct pm_migrate_params p = { .to = to, .nto = 1, .timeout_ms = 300 };
	struct pm_report rep;
	pm_err_clear(&e);
	assert_int_equal(pm_migrate_outgoing(&vm->be, &p, &rep, &e), -EACCES);
	assert_non_null(strstr(e.msg, "refusing to send guest memory to 192.0.2.1:7000 without TLS"));
	assert_int_equal(vm->starts, 0);
	/* Loopback stays allowed in plain TCP. */
	bool lo[] = { true, true, true, false, false };
	const char *addrs[] = { "127.0.0.1:1", "127.1.2.3:1", "[::1]:1", "10.0.0.1:1", "[::]:1" };
	for (unsigned i = 0; i < 5; i++) {
		struct sockaddr_storage ss;
		socklen_t sl;
		assert_int_equal(pm_parse_addr(addrs[i], &ss, &sl, 0, &e), 0);
		assert_int_equal(pm_addr_is_loopback((struct sockaddr *)&ss), lo[i]);
	}
	fakevm_free(vm);
	pthread_mutex_destroy(&d.mu);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ktls_keys),
		cmocka_unit_test(test_record_path_userspace),
		cmocka_unit_test(test_record_path),
		cmocka_unit_test(test_handshake_failures),
		cmocka_unit_test(test_bad_credentials),
		cmocka_unit_test(test_session_binding),
		cmocka_unit_test(test_insecure),
	};
	return cmocka_run_group_tests(tests, make_creds, remove_creds);
}
