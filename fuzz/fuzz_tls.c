/* SPDX-License-Identifier: MIT */
/* libFuzzer target: a TLS destination's accept path, the real code.
 *
 * The input, after its first byte, is what a client sends on a connection
 * that a waiting destination (pm_incoming_run() with TLS, the connection
 * handed in with pm_incoming_adopt()) accepts: the first-byte check (plain
 * pmigrate source? TLS?), the TLS 1.3 handshake as the server -- pre-shared
 * keys (first byte even) or X.509 with client certificates (odd) -- and the
 * refusal, logged with its reason.  Without the key or a certificate the
 * CA signed nothing gets further, and the destination must say why and keep
 * waiting (this target then cancels it).
 *
 * Credentials are made at the first input in a temporary directory: a PSK
 * file with FUZZ_TLS_PSK_ID / FUZZ_TLS_PSK_HEX and an EC CA with a server
 * certificate for 127.0.0.1. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <pmigrate/migrate.h>
#include "fuzz_targets.h"

struct fuzz_tls_result fuzz_tls_last;
static char dir[64];

static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *ikey, bool ca)
{
	X509 *c = X509_new();
	X509V3_CTX v3;
	X509_EXTENSION *ext;

	X509_set_version(c, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(c), ca ? 1 : 2);
	X509_gmtime_adj(X509_getm_notBefore(c), -3600);
	X509_gmtime_adj(X509_getm_notAfter(c), 7 * 86400);
	X509_set_pubkey(c, key);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(c), "CN", MBSTRING_ASC, (const unsigned char *)cn,
				   -1, -1, 0);
	X509_set_issuer_name(c, issuer ? X509_get_subject_name(issuer) : X509_get_subject_name(c));
	X509V3_set_ctx(&v3, issuer ? issuer : c, c, NULL, NULL, 0);
	const char *exts[][2] = { { "basicConstraints", ca ? "critical,CA:TRUE" : "CA:FALSE" },
				  { "subjectAltName", ca ? NULL : "IP:127.0.0.1" } };
	for (unsigned i = 0; i < 2; i++)
		if (exts[i][1] && (ext = X509V3_EXT_conf(NULL, &v3, exts[i][0], exts[i][1]))) {
			X509_add_ext(c, ext, -1);
			X509_EXTENSION_free(ext);
		}
	if (!X509_sign(c, ikey ? ikey : key, EVP_sha256()))
		abort();
	return c;
}

static void write_pem(const char *name, X509 *cert, EVP_PKEY *key)
{
	char path[128];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if (!(f = fopen(path, "w")) || (cert ? !PEM_write_X509(f, cert) :
					!PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL)))
		abort();
	fclose(f);
}

/* The credentials go when the process does. */
static void remove_dir(void)
{
	static const char *const files[] = { "keys.psk", "ca-cert.pem", "server-cert.pem", "server-key.pem" };
	char path[128];

	for (unsigned i = 0; i < 4; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
		unlink(path);
	}
	rmdir(dir);
}

const char *fuzz_tls_dir(void)
{
	char path[128];
	FILE *f;

	if (dir[0])
		return dir;
	snprintf(dir, sizeof(dir), "/tmp/pm-fuzz-tls.XXXXXX");
	if (!mkdtemp(dir))
		abort();
	atexit(remove_dir);
	snprintf(path, sizeof(path), "%s/keys.psk", dir);
	if (!(f = fopen(path, "w")))
		abort();
	fprintf(f, "%s:%s\n", FUZZ_TLS_PSK_ID, FUZZ_TLS_PSK_HEX);
	fclose(f);
	EVP_PKEY *cak = EVP_EC_gen("P-256"), *sk = EVP_EC_gen("P-256");
	X509 *ca = make_cert(cak, "pmigrate fuzz CA", NULL, NULL, true);
	X509 *srv = make_cert(sk, "pmigrate fuzz destination", ca, cak, false);
	write_pem("ca-cert.pem", ca, NULL);
	write_pem("server-cert.pem", srv, NULL);
	write_pem("server-key.pem", NULL, sk);
	X509_free(ca);
	X509_free(srv);
	EVP_PKEY_free(cak);
	EVP_PKEY_free(sk);
	return dir;
}

/* The guest nothing can reach: one page, every operation refused. */
static int no(void *o, struct pm_err *err) { return pm_err_set(err, EPERM, "no session may get here"); }
static int no_count(void *o, uint64_t *n, struct pm_err *err) { return no(o, err); }
static int no_harvest(void *o, uint32_t r, uint64_t f, uint64_t n, uint64_t *bm, struct pm_err *err)
{
	return no(o, err);
}
static void no_stop(void *o) { }
static int no_save(void *o, void **b, size_t *l, struct pm_err *err) { return no(o, err); }
static int no_load(void *o, const void *b, size_t l, struct pm_err *err) { abort(); }
static int no_resume(void *o, struct pm_err *err) { abort(); }
static const struct pm_backend_ops no_ops = {
	.dirty_start = no, .dirty_sync = no, .dirty_count = no_count, .dirty_harvest = no_harvest,
	.dirty_stop = no_stop, .pause = no, .resume = no_resume, .save_state = no_save, .load_state = no_load,
};
static uint8_t page[4096];
static struct pm_region region = { .id = 0, .gpa = 0, .npages = 1, .host = page };
static struct pm_backend backend = { .kind = "fuzz", .ops = &no_ops, .nregions = 1, .regions = &region };

struct run {
	struct pm_incoming *in;
	int fd;
	const uint8_t *data;
	size_t size;
};

/* The destination keeps waiting after a refused connection: that was the
 * only one, so end it. */
static void on_log(void *opaque, const char *msg)
{
	struct run *r = opaque;

	if (strstr(msg, "rejected a connection")) {
		fuzz_tls_last.rejected++;
		snprintf(fuzz_tls_last.reason, sizeof(fuzz_tls_last.reason), "%s", msg);
		pm_incoming_cancel(r->in);
	}
}

/* The client: sends the input, then reads what comes back until the end. */
static void *client_main(void *arg)
{
	struct run *r = arg;
	size_t off = 0;
	uint8_t buf[4096];

	while (off < r->size) {
		struct pollfd p = { .fd = r->fd, .events = POLLOUT | POLLIN };
		if (poll(&p, 1, 1000) <= 0)
			break;
		if (p.revents & POLLIN && recv(r->fd, buf, sizeof(buf), MSG_DONTWAIT) == 0)
			break;
		ssize_t n = send(r->fd, r->data + off, r->size - off, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			break;
		if (n > 0)
			off += n;
	}
	shutdown(r->fd, SHUT_WR);
	while (recv(r->fd, buf, sizeof(buf), 0) > 0)
		;
	return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char path[128];
	struct run r = { .data = data + 1, .size = size ? size - 1 : 0 };
	struct pm_incoming_params ip = { .nlisten = 0, .timeout_ms = 300, .log = on_log, .log_opaque = &r };
	struct pm_report *rep = calloc(1, sizeof(*rep));
	struct pm_err err = { 0 };
	int sv[2];
	pthread_t th;

	if (!size || !rep) {
		free(rep);
		return 0;
	}
	fuzz_tls_dir();
	if (data[0] & 1) {
		ip.tls.creds_dir = dir;
	} else {
		snprintf(path, sizeof(path), "%s/keys.psk", dir);
		ip.tls.psk_file = path;
	}
	memset(&fuzz_tls_last, 0, sizeof(fuzz_tls_last));
	if (pm_incoming_listen(&r.in, &ip, &err) || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		abort();
	r.fd = sv[0];
	if (pm_incoming_adopt(r.in, sv[1], &err) || pthread_create(&th, NULL, client_main, &r))
		abort();
	/* Without the key or a signed certificate nothing can join. */
	if (pm_incoming_run(r.in, &backend, rep, &err) != -ECANCELED || fuzz_tls_last.rejected != 1)
		abort();
	shutdown(sv[0], SHUT_RDWR);
	pthread_join(th, NULL);
	close(sv[0]);
	pm_incoming_close(r.in);
	free(rep);
	return 0;
}
