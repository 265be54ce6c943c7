/* SPDX-License-Identifier: MIT */
/* TLS 1.3 on the channels, with OpenSSL: credentials, the handshake and
 * the authenticated peer (tls.c), and the record layer (tls_io.c) -- the
 * kernel's (kTLS) where it has one, else OpenSSL's, tuned for bulk
 * transfer.  See docs/security.md. */
#ifndef PM_ENGINE_TLS_H
#define PM_ENGINE_TLS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <openssl/ssl.h>
#include <pmigrate/migrate.h>
#include "engine/net.h"

struct pm_tls;          /* one side's credentials: an SSL_CTX */

/* One channel's session, hung on a struct pm_conn. */
struct pm_tls_conn {
	SSL *ssl;
	/* Every SSL call and the write buffer: a receiver reads while another
	 * thread may send an ERROR.  Never held across a wait. */
	pthread_mutex_t mu;
	int fd;
	bool server, done, try_kernel;
	bool established;               /* the handshake finished (the peer may still be refused) */
	bool ktls_tx, ktls_rx;          /* the kernel makes the records */
	enum pm_tls_mode mode;
	char peer[300];                 /* who the peer proved to be */
	char host[256];                 /* source: the name checked */
	char psk_fail[160];             /* server: why no key matched */
	/* TLS 1.3 traffic secrets from OpenSSL's key log, for kTLS only:
	 * [0] client's, [1] server's; wiped once used. */
	uint8_t secret[2][64];
	unsigned secret_len[2];
	/* Userspace records: OpenSSL writes each record into wbuf (our BIO)
	 * and large writes send them, instead of a syscall per 16 KiB. */
	uint8_t *wbuf;
	size_t wcap, woff, wlen;
	int io_errno;                   /* errno of the BIO's last failed call */
	/* Small iovec pieces (frame headers) are gathered into one record. */
	uint8_t stage[16384];
};

/* Loads and checks the credentials p names for a destination (server) or
 * a source.  *out stays NULL when p asks for no TLS. */
int pm_tls_new(struct pm_tls **out, const struct pm_tls_params *p, bool server, struct pm_err *err);
void pm_tls_free(struct pm_tls *t);
enum pm_tls_mode pm_tls_mode_of(const struct pm_tls *t);

/* Starts a session on the connected c.  host (source only): the
 * destination's host, which its certificate must name unless the
 * parameters give a hostname. */
int pm_tls_start(struct pm_tls *t, struct pm_conn *c, const char *host, struct pm_err *err);
/* Advances the handshake without waiting: 0 when done (the record layer
 * is set up), -EAGAIN with *events to poll for, or -errno with err set. */
int pm_tls_handshake_step(struct pm_conn *c, short *events, struct pm_err *err);
/* The whole handshake, waiting within c's deadline. */
int pm_tls_handshake(struct pm_conn *c, struct pm_err *err);
/* Who the peer proved to be: "CN=...,O=..." or "psk:IDENTITY". */
const char *pm_tls_peer(const struct pm_conn *c);
/* True if the kernel makes the records of this direction (kTLS). */
bool pm_tls_kernel(const struct pm_conn *c, bool tx);

/* Record I/O, for net.c; none of them waits.  They return the bytes
 * moved, -EAGAIN with *events to poll for, or -errno with err set (recv:
 * -ECONNRESET when the peer closed). */
ssize_t pm_tls_send(struct pm_conn *c, const struct iovec *iov, int cnt, short *events,
		    struct pm_err *err, const char *what);
/* Sends what the userspace record layer holds: 0 when all is out. */
int pm_tls_flush(struct pm_conn *c, short *events, struct pm_err *err, const char *what);
ssize_t pm_tls_recv(struct pm_conn *c, struct iovec *iov, int cnt, short *events,
		    struct pm_err *err, const char *what);
/* Decrypted or buffered bytes are waiting: a read would not block. */
bool pm_tls_pending(const struct pm_conn *c);
void pm_tls_conn_free(struct pm_conn *c);

/* tls_io.c, for tls.c */
/* The socket BIO of a session (non-blocking, MSG_NOSIGNAL, buffered). */
BIO *pm_tls_bio_new(struct pm_tls_conn *t);
/* After the handshake: kTLS for each direction the kernel takes, else
 * OpenSSL's records with large reads. */
void pm_tls_records_setup(struct pm_tls_conn *t);
/* The key and IV (RFC 8446, 7.3) of a TLS 1.3 traffic secret, as kTLS
 * takes them; digest "SHA256" or "SHA384".  Exposed for tests. */
int pm_tls_traffic_keys(const char *digest, const uint8_t *secret, size_t slen, uint8_t *key,
			size_t klen, uint8_t iv[12]);
/* A TLS alert from the peer, explained ("" if e is not an alert). */
void pm_tls_alert_text(const struct pm_tls_conn *s, unsigned long e, char *buf, size_t len);
/* The OpenSSL error queue and errno as one message. */
void pm_tls_describe(char *buf, size_t len, int io_errno);

#endif
