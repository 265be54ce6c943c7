/* SPDX-License-Identifier: MIT */
/* TLS 1.3 credentials, handshake and peer identity.  X.509 uses QEMU's
 * credential layout and mutual authentication: the source checks the
 * destination's certificate against its address (or a given name), the
 * destination accepts only clients its CA signed (and, with an authz
 * file, only listed names).  PSK uses QEMU's "identity:hexkey" file as
 * TLS 1.3 external pre-shared keys, with (EC)DHE for forward secrecy.
 * Nothing a peer sends is parsed by pmigrate before the handshake ends. */
#include <errno.h>
#include <fnmatch.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include "engine/protocol.h"
#include "engine/tls.h"

#define MAX_PSK 64
#define MAX_AUTHZ 256

struct psk {
	char id[256];
	uint8_t key[64];
	size_t klen;
};

struct pm_tls {
	SSL_CTX *ctx;
	enum pm_tls_mode mode;
	bool server, no_ktls;
	char hostname[256];
	struct psk *psk;
	unsigned npsk;
	char **authz;
	unsigned nauthz;
	char authz_file[256];
};

/* TLS 1.3 suites, fastest first where AES has hardware support. */
static const char suites[] = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

const char *pm_tls_mode_name(enum pm_tls_mode m)
{
	return m == PM_TLS_X509 ? "x509" : m == PM_TLS_PSK ? "psk" : "none";
}

enum pm_tls_mode pm_tls_mode_of(const struct pm_tls *t)
{
	return t ? t->mode : PM_TLS_NONE;
}

static struct pm_tls_conn *conn_of(const SSL *ssl)
{
	return SSL_get_app_data(ssl);
}

/* ------------------------------------------------------------ PSK */

static int hexval(int c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 :
	       c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static int load_psk(struct pm_tls *t, const char *path, struct pm_err *err)
{
	FILE *f = fopen(path, "re");
	char line[1024];
	unsigned ln = 0;
	int r = 0;

	if (!f)
		return pm_err_set(err, errno, "TLS PSK file %s: %s", path, strerror(errno));
	t->psk = calloc(MAX_PSK, sizeof(*t->psk));
	if (!t->psk) {
		fclose(f);
		return pm_err_set(err, ENOMEM, "out of memory");
	}
	while (!r && fgets(line, sizeof(line), f)) {
		char *colon = strchr(line, ':'), *hex, *end;
		size_t hl;

		ln++;
		line[strcspn(line, "\r\n")] = '\0';
		if (!line[0] || line[0] == '#')
			continue;
		if (!colon || colon == line || colon - line > 255) {
			r = pm_err_set(err, EINVAL, "TLS PSK file %s, line %u: expected identity:hexkey", path, ln);
			break;
		}
		if (t->npsk == MAX_PSK) {
			r = pm_err_set(err, E2BIG, "TLS PSK file %s: more than %u keys", path, MAX_PSK);
			break;
		}
		struct psk *k = &t->psk[t->npsk];
		memcpy(k->id, line, colon - line);
		hex = colon + 1;
		end = hex + strlen(hex);
		hl = end - hex;
		if (hl % 2 || hl / 2 > sizeof(k->key) || hl / 2 < 16) {
			r = pm_err_set(err, EINVAL, "TLS PSK file %s, line %u: the key must be 16 to 64 bytes "
				       "in hex (32 to 128 digits)", path, ln);
			break;
		}
		for (size_t i = 0; i < hl / 2; i++) {
			int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
			if (hi < 0 || lo < 0) {
				r = pm_err_set(err, EINVAL, "TLS PSK file %s, line %u: the key is not hex", path, ln);
				break;
			}
			k->key[i] = hi << 4 | lo;
		}
		k->klen = hl / 2;
		if (!r)
			t->npsk++;
	}
	OPENSSL_cleanse(line, sizeof(line));
	fclose(f);
	if (!r && !t->npsk)
		r = pm_err_set(err, EINVAL, "TLS PSK file %s holds no key", path);
	return r;
}

/* An external PSK as OpenSSL wants it: a session with the key as its
 * master secret and a SHA-256 suite. */
static SSL_SESSION *psk_session(SSL *ssl, const struct psk *k)
{
	static const unsigned char aes128gcm[] = { 0x13, 0x01 };
	const SSL_CIPHER *ciph = SSL_CIPHER_find(ssl, aes128gcm);
	SSL_SESSION *s = SSL_SESSION_new();

	if (!s || !ciph || !SSL_SESSION_set1_master_key(s, k->key, k->klen) ||
	    !SSL_SESSION_set_cipher(s, ciph) || !SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION)) {
		SSL_SESSION_free(s);
		return NULL;
	}
	return s;
}

static int psk_use(SSL *ssl, const EVP_MD *md, const unsigned char **id, size_t *idlen,
		   SSL_SESSION **sess)
{
	struct pm_tls *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
	SSL_SESSION *s = psk_session(ssl, &t->psk[0]);

	*sess = NULL;
	*id = NULL;
	*idlen = 0;
	if (!s)
		return 0;
	/* After a HelloRetryRequest the hash is fixed: ours is SHA-256. */
	if (md && md != SSL_CIPHER_get_handshake_digest(SSL_SESSION_get0_cipher(s))) {
		SSL_SESSION_free(s);
		return 1;
	}
	*sess = s;
	*id = (const unsigned char *)t->psk[0].id;
	*idlen = strlen(t->psk[0].id);
	snprintf(conn_of(ssl)->peer, sizeof(conn_of(ssl)->peer), "psk:%s", t->psk[0].id);
	return 1;
}

static int psk_find(SSL *ssl, const unsigned char *id, size_t idlen, SSL_SESSION **sess)
{
	struct pm_tls *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
	struct pm_tls_conn *c = conn_of(ssl);

	*sess = NULL;
	for (unsigned i = 0; i < t->npsk; i++)
		if (strlen(t->psk[i].id) == idlen && !memcmp(t->psk[i].id, id, idlen)) {
			*sess = psk_session(ssl, &t->psk[i]);
			snprintf(c->peer, sizeof(c->peer), "psk:%s", t->psk[i].id);
			return *sess != NULL;
		}
	char esc[100];
	pm_escape_text(id, idlen > 24 ? 24 : idlen, esc, sizeof(esc));
	snprintf(c->psk_fail, sizeof(c->psk_fail), "unknown PSK identity '%s'", esc);
	return 1;       /* no key: the handshake fails (we have no certificate) */
}

/* ------------------------------------------------------------ X.509 */

static int load_authz(struct pm_tls *t, const char *path, struct pm_err *err)
{
	FILE *f = fopen(path, "re");
	char line[1024];

	if (!f)
		return pm_err_set(err, errno, "TLS authz file %s: %s", path, strerror(errno));
	snprintf(t->authz_file, sizeof(t->authz_file), "%s", path);
	t->authz = calloc(MAX_AUTHZ, sizeof(*t->authz));
	while (t->authz && fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\r\n")] = '\0';
		if (!line[0] || line[0] == '#')
			continue;
		if (t->nauthz == MAX_AUTHZ) {
			fclose(f);
			return pm_err_set(err, E2BIG, "TLS authz file %s: more than %u names", path, MAX_AUTHZ);
		}
		if (!(t->authz[t->nauthz++] = strdup(line)))
			break;
	}
	fclose(f);
	if (!t->authz || (t->nauthz && !t->authz[t->nauthz - 1]))
		return pm_err_set(err, ENOMEM, "out of memory");
	if (!t->nauthz)
		return pm_err_set(err, EINVAL, "TLS authz file %s lists no name: nobody could connect", path);
	return 0;
}

static void describe(char *buf, size_t len, const char *what, const char *path)
{
	char e[200];

	pm_tls_describe(e, sizeof(e), errno);
	snprintf(buf, len, "%.60s %.300s: %.150s", what, path, e);
}

static int load_x509(struct pm_tls *t, const char *dir, struct pm_err *err)
{
	const char *side = t->server ? "server" : "client";
	char ca[512], cert[512], key[512], crl[512], msg[640];
	struct stat st;

	snprintf(ca, sizeof(ca), "%.400s/ca-cert.pem", dir);
	snprintf(cert, sizeof(cert), "%.400s/%s-cert.pem", dir, side);
	snprintf(key, sizeof(key), "%.400s/%s-key.pem", dir, side);
	snprintf(crl, sizeof(crl), "%.400s/ca-crl.pem", dir);
	const char *need[] = { ca, cert, key };
	for (unsigned i = 0; i < 3; i++)
		if (access(need[i], R_OK))
			return pm_err_set(err, errno, "TLS credentials: cannot read %s: %s", need[i], strerror(errno));
	ERR_clear_error();
	if (!SSL_CTX_load_verify_locations(t->ctx, ca, NULL)) {
		describe(msg, sizeof(msg), "TLS credentials: bad CA certificate", ca);
		return pm_err_set(err, EINVAL, "%s", msg);
	}
	if (SSL_CTX_use_certificate_chain_file(t->ctx, cert) != 1) {
		describe(msg, sizeof(msg), "TLS credentials: bad certificate", cert);
		return pm_err_set(err, EINVAL, "%s", msg);
	}
	if (SSL_CTX_use_PrivateKey_file(t->ctx, key, SSL_FILETYPE_PEM) != 1) {
		if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH)
			return pm_err_set(err, EINVAL, "TLS credentials: %s does not belong to %s", key, cert);
		describe(msg, sizeof(msg), "TLS credentials: bad private key", key);
		return pm_err_set(err, EINVAL, "%s", msg);
	}
	if (!SSL_CTX_check_private_key(t->ctx))
		return pm_err_set(err, EINVAL, "TLS credentials: %s does not belong to %s", key, cert);
	if (!stat(crl, &st)) {
		X509_STORE *store = SSL_CTX_get_cert_store(t->ctx);
		if (!X509_STORE_load_file(store, crl)) {
			describe(msg, sizeof(msg), "TLS credentials: bad revocation list", crl);
			return pm_err_set(err, EINVAL, "%s", msg);
		}
		X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
	}
	/* Both ends prove who they are. */
	SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	if (t->server) {
		STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
		if (names)
			SSL_CTX_set_client_CA_list(t->ctx, names);
	}
	return 0;
}

/* ------------------------------------------------------------ context */

static void keylog(const SSL *ssl, const char *line)
{
	struct pm_tls_conn *c = conn_of(ssl);
	int which = !strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24) ? 0 :
		    !strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24) ? 1 : -1;
	const char *hex;
	size_t n = 0;

	/* Kept only to hand the keys to the kernel, then wiped. */
	if (which < 0 || !c || !c->try_kernel || !(hex = strchr(line + 24, ' ')))
		return;
	for (hex++; hex[0] && hex[1] && n < sizeof(c->secret[0]); hex += 2) {
		int hi = hexval(hex[0]), lo = hexval(hex[1]);
		if (hi < 0 || lo < 0)
			return;
		c->secret[which][n++] = hi << 4 | lo;
	}
	c->secret_len[which] = n;
}

int pm_tls_new(struct pm_tls **out, const struct pm_tls_params *p, bool server, struct pm_err *err)
{
	struct pm_tls *t;
	int r = 0;

	*out = NULL;
	if (!p->creds_dir && !p->psk_file) {
		if (p->hostname || p->authz_file)
			return pm_err_set(err, EINVAL, "--tls-hostname and --tls-authz need --tls-creds");
		return 0;
	}
	if (p->creds_dir && p->psk_file)
		return pm_err_set(err, EINVAL, "TLS: give X.509 credentials or a PSK file, not both");
	if (p->psk_file && (p->hostname || p->authz_file))
		return pm_err_set(err, EINVAL, "--tls-hostname and --tls-authz apply to X.509 credentials, not to PSK");
	if (server && p->hostname)
		return pm_err_set(err, EINVAL, "--tls-hostname is for the source (it names the destination)");
	if (!server && p->authz_file)
		return pm_err_set(err, EINVAL, "--tls-authz is for the destination (it names allowed sources)");
	t = calloc(1, sizeof(*t));
	if (!t)
		return pm_err_set(err, ENOMEM, "out of memory");
	t->server = server;
	t->no_ktls = p->no_ktls;
	t->mode = p->creds_dir ? PM_TLS_X509 : PM_TLS_PSK;
	if (p->hostname)
		snprintf(t->hostname, sizeof(t->hostname), "%s", p->hostname);
	ERR_clear_error();
	t->ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
	if (!t->ctx) {
		free(t);
		return pm_err_set(err, ENOMEM, "TLS: cannot create a context");
	}
	SSL_CTX_set_app_data(t->ctx, t);
	SSL_CTX_set_min_proto_version(t->ctx, TLS1_3_VERSION);
	SSL_CTX_set_ciphersuites(t->ctx, suites);
	/* No tickets, no resumption: one full handshake per channel, and no
	 * post-handshake message that kTLS would have to carry. */
	SSL_CTX_set_options(t->ctx, SSL_OP_NO_TICKET);
	SSL_CTX_set_session_cache_mode(t->ctx, SSL_SESS_CACHE_OFF);
	if (server) {
		SSL_CTX_set_num_tickets(t->ctx, 0);
		SSL_CTX_set_session_id_context(t->ctx, (const unsigned char *)"pmigrate", 8);
	}
	SSL_CTX_set_mode(t->ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	if (!p->no_ktls)
		SSL_CTX_set_keylog_callback(t->ctx, keylog);
	if (t->mode == PM_TLS_X509) {
		r = load_x509(t, p->creds_dir, err);
		if (!r && p->authz_file)
			r = load_authz(t, p->authz_file, err);
	} else {
		r = load_psk(t, p->psk_file, err);
		if (server)
			SSL_CTX_set_psk_find_session_callback(t->ctx, psk_find);
		else
			SSL_CTX_set_psk_use_session_callback(t->ctx, psk_use);
		/* A PSK client trusts no certificate: a server that skipped the
		 * key and showed one instead fails. */
		if (!server)
			SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
	}
	if (r) {
		pm_tls_free(t);
		return r;
	}
	*out = t;
	return 0;
}

void pm_tls_free(struct pm_tls *t)
{
	if (!t)
		return;
	SSL_CTX_free(t->ctx);
	if (t->psk)
		OPENSSL_cleanse(t->psk, MAX_PSK * sizeof(*t->psk));
	free(t->psk);
	for (unsigned i = 0; i < t->nauthz; i++)
		free(t->authz[i]);
	free(t->authz);
	free(t);
}

/* ------------------------------------------------------------ sessions */

static bool is_ip(const char *h)
{
	uint8_t b[16];

	return inet_pton(AF_INET, h, b) == 1 || inet_pton(AF_INET6, h, b) == 1;
}

int pm_tls_start(struct pm_tls *t, struct pm_conn *c, const char *host, struct pm_err *err)
{
	struct pm_tls_conn *s = calloc(1, sizeof(*s));
	BIO *bio;

	if (!s)
		return pm_err_set(err, ENOMEM, "out of memory");
	pthread_mutex_init(&s->mu, NULL);
	s->fd = c->fd;
	s->server = t->server;
	s->mode = t->mode;
	s->try_kernel = !t->no_ktls;
	ERR_clear_error();
	s->ssl = SSL_new(t->ctx);
	bio = s->ssl ? pm_tls_bio_new(s) : NULL;
	if (!bio) {
		SSL_free(s->ssl);
		pthread_mutex_destroy(&s->mu);
		free(s);
		return pm_err_set(err, ENOMEM, "TLS: out of memory");
	}
	SSL_set_app_data(s->ssl, s);
	SSL_set_bio(s->ssl, bio, bio);
	/* Large records reads once the handshake is over (tls_io.c); the
	 * buffer is sized now, as OpenSSL allocates it only once. */
	SSL_set_default_read_buffer_len(s->ssl, 256 << 10);
	c->tls = s;
	if (t->server) {
		SSL_set_accept_state(s->ssl);
	} else {
		SSL_set_connect_state(s->ssl);
		if (t->mode == PM_TLS_X509) {
			const char *name = t->hostname[0] ? t->hostname : host;
			X509_VERIFY_PARAM *vp = SSL_get0_param(s->ssl);
			snprintf(s->host, sizeof(s->host), "%s", name);
			/* Certificates name hosts; an address must be in its IP SANs. */
			if (is_ip(name) ? !X509_VERIFY_PARAM_set1_ip_asc(vp, name) :
			    !SSL_set1_host(s->ssl, name) || !SSL_set_tlsext_host_name(s->ssl, name))
				return pm_err_set(err, EINVAL, "TLS: cannot check the destination's name '%s'", name);
		}
	}
	return 0;
}

static int check_peer(struct pm_tls_conn *s, struct pm_err *err)
{
	struct pm_tls *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(s->ssl));

	if (s->mode == PM_TLS_PSK) {
		/* The key, not some certificate, must have authenticated it. */
		if (!SSL_session_reused(s->ssl) || !s->peer[0])
			return pm_err_set(err, EACCES, "TLS: the peer did not use the pre-shared key");
		return 0;
	}
	X509 *cert = SSL_get0_peer_certificate(s->ssl);
	long v = SSL_get_verify_result(s->ssl);
	if (!cert || v != X509_V_OK)
		return pm_err_set(err, EACCES, "TLS: %s certificate: %s", s->server ? "the source's" :
				  "the destination's", cert ? X509_verify_cert_error_string(v) : "none");
	BIO *m = BIO_new(BIO_s_mem());
	char *dn = NULL;
	long n = 0;
	if (m && X509_NAME_print_ex(m, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) >= 0)
		n = BIO_get_mem_data(m, &dn);
	pm_escape_text(dn ? dn : "", n > 0 ? (size_t)n : 0, s->peer, sizeof(s->peer));
	BIO_free(m);
	if (!s->server || !t->nauthz)
		return 0;
	for (unsigned i = 0; i < t->nauthz; i++)
		if (!fnmatch(t->authz[i], s->peer, 0))
			return 0;
	return pm_err_set(err, EACCES, "TLS: the source's certificate (%s) is not in %s", s->peer,
			  t->authz_file);
}

/* An alert the peer sent, in words a user can act on ("" if it is not
 * one). */
void pm_tls_alert_text(const struct pm_tls_conn *s, unsigned long e, char *buf, size_t len)
{
	int reason = ERR_GET_REASON(e), code = reason - SSL_AD_REASON_OFFSET;
	bool cert = (code >= 42 && code <= 49) || code == 116;
	const char *desc;

	buf[0] = '\0';
	if (ERR_GET_LIB(e) != ERR_LIB_SSL || reason < SSL_AD_REASON_OFFSET || code > 255)
		return;
	desc = SSL_alert_desc_string_long(code);
	if (s->server)
		snprintf(buf, len, "the source %s (TLS alert: %s)", cert ? "does not trust our certificate" :
			 "ended the handshake", desc);
	else if (s->mode == PM_TLS_PSK)
		snprintf(buf, len, "the destination refused our pre-shared key (TLS alert: %s): does it hold "
			 "the same identity and key, and use PSK rather than X.509?", desc);
	else if (cert)
		snprintf(buf, len, "the destination refused our certificate (TLS alert: %s): is it signed by "
			 "the CA the destination trusts, and allowed by its --tls-authz?", desc);
	else
		snprintf(buf, len, "the destination ended the handshake (TLS alert: %s): does it use X.509 "
			 "credentials too?", desc);
}

/* Why a handshake failed, in words a user can act on. */
static int handshake_error(struct pm_tls_conn *s, int ssl_err, struct pm_err *err)
{
	unsigned long e = ERR_peek_last_error();
	int reason = ERR_GET_REASON(e);
	long v = SSL_get_verify_result(s->ssl);
	char msg[256];
	const char *hint = "";

	pm_tls_describe(msg, sizeof(msg), s->io_errno);
	if (ssl_err == SSL_ERROR_SYSCALL && !e)
		return pm_err_set(err, ECONNRESET, "TLS handshake: connection closed by the peer%s",
				  s->server ? "" : " (is it a TLS destination?)");
	if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED && v != X509_V_OK && !s->server && s->mode == PM_TLS_PSK)
		return pm_err_set(err, EACCES, "TLS handshake: the destination showed a certificate: it uses "
				  "X.509 credentials, not a pre-shared key");
	if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED && v != X509_V_OK) {
		char name[300] = "";
		if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH)
			snprintf(name, sizeof(name), " (it does not name '%s'; see --tls-hostname)", s->host);
		return pm_err_set(err, EACCES, "TLS handshake: %s certificate is not trusted: %s%s",
				  s->server ? "the source's" : "the destination's", X509_verify_cert_error_string(v),
				  name);
	}
	if (s->psk_fail[0])
		return pm_err_set(err, EACCES, "TLS handshake: %s", s->psk_fail);
	char alert[300];
	pm_tls_alert_text(s, e, alert, sizeof(alert));
	if (alert[0])
		return pm_err_set(err, EACCES, "TLS handshake: %s", alert);
	if (reason == SSL_R_WRONG_VERSION_NUMBER || reason == SSL_R_PACKET_LENGTH_TOO_LONG ||
	    reason == SSL_R_UNEXPECTED_RECORD)
		hint = s->server ? " (not a TLS client)" : " (the destination does not speak TLS: was it "
			"started without --tls-creds or --tls-psk?)";
	else if (reason == SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM || reason == SSL_R_NO_SHARED_CIPHER ||
		 reason == SSL_R_MISSING_PSK_KEX_MODES_EXTENSION)
		hint = " (do both ends use the same kind of credentials, X.509 or PSK?)";
	else if (reason == SSL_R_BINDER_DOES_NOT_VERIFY)
		hint = " (the source's pre-shared key differs from ours)";
	return pm_err_set(err, EACCES, "TLS handshake: %s%s", msg, hint);
}

int pm_tls_handshake_step(struct pm_conn *c, short *events, struct pm_err *err)
{
	struct pm_tls_conn *s = c->tls;
	int r, e;

	pthread_mutex_lock(&s->mu);
	ERR_clear_error();
	s->io_errno = 0;
	r = SSL_do_handshake(s->ssl);
	e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(s->ssl, r);
	s->established = r == 1;
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
		*events = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
		pthread_mutex_unlock(&s->mu);
		return -EAGAIN;
	}
	if (e != SSL_ERROR_NONE) {
		r = handshake_error(s, e, err);
		ERR_clear_error();
		pthread_mutex_unlock(&s->mu);
		return r;
	}
	r = check_peer(s, err);
	if (!r) {
		s->done = true;
		pm_tls_records_setup(s);
	}
	pthread_mutex_unlock(&s->mu);
	return r;
}

int pm_tls_handshake(struct pm_conn *c, struct pm_err *err)
{
	double deadline = c->deadline ? c->deadline : c->timeout_ms ? pm_now_ms() + c->timeout_ms : 0;

	for (;;) {
		short ev = 0;
		int r = pm_tls_handshake_step(c, &ev, err);
		if (r != -EAGAIN)
			return r;
		r = pm_conn_wait(c, ev, deadline, err, "TLS handshake");
		if (r)
			return r;
	}
}

const char *pm_tls_peer(const struct pm_conn *c)
{
	return c->tls ? c->tls->peer : "";
}

bool pm_tls_kernel(const struct pm_conn *c, bool tx)
{
	return c->tls && (tx ? c->tls->ktls_tx : c->tls->ktls_rx);
}

void pm_tls_conn_free(struct pm_conn *c)
{
	struct pm_tls_conn *s = c->tls;

	if (!s)
		return;
	c->tls = NULL;
	SSL_free(s->ssl);       /* frees the BIO, not the fd */
	OPENSSL_cleanse(s->secret, sizeof(s->secret));
	free(s->wbuf);
	pthread_mutex_destroy(&s->mu);
	free(s);
}
