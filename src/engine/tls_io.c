/* SPDX-License-Identifier: MIT */
/* The TLS record layer of a channel.
 *
 * Kernel TLS: once the handshake is over, each direction whose keys the
 * kernel takes (TCP_ULP "tls", TLS_TX / TLS_RX) is a plain socket again:
 * sendmsg() straight from guest memory, recvmsg() straight into it, and
 * the kernel encrypts.  OpenSSL 3.0 cannot hand TLS 1.3 receive keys to
 * the kernel, so we derive both directions' keys ourselves from the
 * traffic secrets (RFC 8446, 7.3).  No tickets and no key update are ever
 * sent, so the record sequence numbers start at 0 and stay ours.
 *
 * Userspace (OpenSSL's records, where the kernel has no TLS): full 16 KiB
 * records, small frame headers gathered with their payload instead of a
 * record of their own, encrypted records collected in a 256 KiB buffer and
 * sent with one syscall, and reads of up to 256 KiB of records at once. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include "engine/tls.h"

#define WBUF (256u << 10)

#ifndef TCP_ULP
#define TCP_ULP 31
#endif
#ifndef SOL_TLS
#define SOL_TLS 282
#endif

void pm_tls_describe(char *buf, size_t len, int io_errno)
{
	unsigned long e = ERR_peek_last_error();

	if (e) {
		const char *r = ERR_reason_error_string(e);
		if (r)
			snprintf(buf, len, "%s", r);
		else
			ERR_error_string_n(e, buf, len);
	} else if (io_errno) {
		snprintf(buf, len, "%s", strerror(io_errno));
	} else {
		snprintf(buf, len, "unknown TLS error");
	}
}

/* ------------------------------------------------------------ the BIO */

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

/* Sends what wbuf holds, as far as the socket takes it. */
static int wbuf_send(struct pm_tls_conn *t)
{
	while (t->woff < t->wlen) {
		ssize_t n = send(t->fd, t->wbuf + t->woff, t->wlen - t->woff, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			t->io_errno = errno;
			return -errno;
		}
		t->woff += n;
	}
	t->woff = t->wlen = 0;
	return 0;
}

static int bio_write(BIO *b, const char *data, int len)
{
	struct pm_tls_conn *t = BIO_get_data(b);

	BIO_clear_retry_flags(b);
	if (!t->wbuf && !(t->wbuf = malloc(WBUF))) {
		t->io_errno = ENOMEM;
		return -1;
	}
	t->wcap = WBUF;
	if (t->wlen + len > t->wcap) {
		int r = wbuf_send(t);
		if (r && r != -EAGAIN && r != -EWOULDBLOCK)
			return -1;
		if (t->woff) {
			memmove(t->wbuf, t->wbuf + t->woff, t->wlen - t->woff);
			t->wlen -= t->woff;
			t->woff = 0;
		}
		if (t->wlen + len > t->wcap) {
			BIO_set_retry_write(b);
			return -1;
		}
	}
	memcpy(t->wbuf + t->wlen, data, len);
	t->wlen += len;
	return len;
}

static int bio_read(BIO *b, char *buf, int len)
{
	struct pm_tls_conn *t = BIO_get_data(b);

	BIO_clear_retry_flags(b);
	for (;;) {
		ssize_t n = recv(t->fd, buf, len, MSG_DONTWAIT);
		if (n >= 0)
			return n;
		if (errno == EINTR)
			continue;
		t->io_errno = errno;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			BIO_set_retry_read(b);
		return -1;
	}
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	struct pm_tls_conn *t = BIO_get_data(b);

	switch (cmd) {
	case BIO_CTRL_FLUSH:
		BIO_clear_retry_flags(b);
		if (!wbuf_send(t))
			return 1;
		if (t->io_errno == EAGAIN || t->io_errno == EWOULDBLOCK)
			BIO_set_retry_write(b);
		return 0;
	case BIO_CTRL_WPENDING:
		return t->wlen - t->woff;
	case BIO_CTRL_PENDING:
		return 0;
	case BIO_CTRL_DUP:
		return 1;
	default:
		return 0;
	}
}

static void bio_init_method(void)
{
	bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "pmigrate socket");
	if (bio_method) {
		BIO_meth_set_write(bio_method, bio_write);
		BIO_meth_set_read(bio_method, bio_read);
		BIO_meth_set_ctrl(bio_method, bio_ctrl);
	}
}

BIO *pm_tls_bio_new(struct pm_tls_conn *t)
{
	BIO *b;

	pthread_once(&bio_once, bio_init_method);
	if (!bio_method || !(b = BIO_new(bio_method)))
		return NULL;
	BIO_set_data(b, t);
	BIO_set_init(b, 1);
	return b;
}

/* ------------------------------------------------------------ kTLS */

int pm_tls_traffic_keys(const char *digest, const uint8_t *secret, size_t slen, uint8_t *key,
			size_t klen, uint8_t iv[12])
{
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	EVP_KDF_CTX *kc = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY, ok = kc != NULL;

	/* HKDF-Expand-Label(secret, label, "", len): the HkdfLabel struct. */
	for (int i = 0; i < 2 && ok; i++) {
		const char *label = i ? "tls13 iv" : "tls13 key";
		size_t out = i ? 12 : klen, ll = strlen(label), n = 0;
		uint8_t info[32];
		info[n++] = out >> 8;
		info[n++] = out & 0xff;
		info[n++] = ll;
		memcpy(info + n, label, ll);
		n += ll;
		info[n++] = 0;
		OSSL_PARAM ps[] = {
			OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)digest, 0),
			OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, slen),
			OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, n),
			OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
			OSSL_PARAM_construct_end(),
		};
		ok = EVP_KDF_derive(kc, i ? iv : key, out, ps) > 0;
	}
	EVP_KDF_CTX_free(kc);
	EVP_KDF_free(kdf);
	return ok ? 0 : -EINVAL;
}

union crypto_info {
	struct tls_crypto_info info;
	struct tls12_crypto_info_aes_gcm_128 gcm128;
	struct tls12_crypto_info_aes_gcm_256 gcm256;
	struct tls12_crypto_info_chacha20_poly1305 chacha;
};

/* Hands one direction's keys to the kernel; true on success. */
static bool kernel_keys(struct pm_tls_conn *t, bool tx)
{
	const SSL_CIPHER *ciph = SSL_get_current_cipher(t->ssl);
	unsigned which = tx == t->server;       /* our secret when sending: [server] */
	uint16_t id = ciph ? SSL_CIPHER_get_protocol_id(ciph) : 0;
	union crypto_info ci;
	uint8_t key[32], iv[12];
	size_t klen = id == 0x1301 ? 16 : 32, size;
	bool ok;

	if (!t->secret_len[which] || (id != 0x1301 && id != 0x1302 && id != 0x1303))
		return false;
	if (pm_tls_traffic_keys(id == 0x1302 ? "SHA384" : "SHA256", t->secret[which], t->secret_len[which],
				key, klen, iv))
		return false;
	memset(&ci, 0, sizeof(ci));
	ci.info.version = TLS_1_3_VERSION;
	if (id == 0x1301) {
		ci.info.cipher_type = TLS_CIPHER_AES_GCM_128;
		memcpy(ci.gcm128.key, key, 16);
		memcpy(ci.gcm128.salt, iv, 4);
		memcpy(ci.gcm128.iv, iv + 4, 8);
		size = sizeof(ci.gcm128);
	} else if (id == 0x1302) {
		ci.info.cipher_type = TLS_CIPHER_AES_GCM_256;
		memcpy(ci.gcm256.key, key, 32);
		memcpy(ci.gcm256.salt, iv, 4);
		memcpy(ci.gcm256.iv, iv + 4, 8);
		size = sizeof(ci.gcm256);
	} else {
		ci.info.cipher_type = TLS_CIPHER_CHACHA20_POLY1305;
		memcpy(ci.chacha.key, key, 32);
		memcpy(ci.chacha.iv, iv, 12);
		size = sizeof(ci.chacha);
	}
	/* rec_seq stays 0: no application record was sent or read yet. */
	ok = !setsockopt(t->fd, SOL_TLS, tx ? TLS_TX : TLS_RX, &ci, size);
	OPENSSL_cleanse(&ci, sizeof(ci));
	OPENSSL_cleanse(key, sizeof(key));
	OPENSSL_cleanse(iv, sizeof(iv));
	return ok;
}

void pm_tls_records_setup(struct pm_tls_conn *t)
{
	static const char ulp[] = "tls";

	/* Nothing of the application may sit in OpenSSL's buffers. */
	if (t->try_kernel && !SSL_has_pending(t->ssl) && t->wlen == t->woff &&
	    !setsockopt(t->fd, IPPROTO_TCP, TCP_ULP, ulp, sizeof(ulp))) {
		t->ktls_tx = kernel_keys(t, true);
		t->ktls_rx = kernel_keys(t, false);
		if (t->ktls_rx) {
			int one = 1;    /* TLS 1.3 without padding: decrypt in place */
			setsockopt(t->fd, SOL_TLS, TLS_RX_EXPECT_NO_PAD, &one, sizeof(one));
		}
	}
	OPENSSL_cleanse(t->secret, sizeof(t->secret));
	t->secret_len[0] = t->secret_len[1] = 0;
	/* OpenSSL reads as many records as fit its buffer from now on. */
	if (!t->ktls_rx)
		SSL_set_read_ahead(t->ssl, 1);
}

/* ------------------------------------------------------------ I/O */

static ssize_t ssl_fail(struct pm_tls_conn *t, int ret, short *events, struct pm_err *err,
			const char *what)
{
	int e = SSL_get_error(t->ssl, ret);
	char msg[200];

	switch (e) {
	case SSL_ERROR_WANT_READ:
		*events = POLLIN;
		return -EAGAIN;
	case SSL_ERROR_WANT_WRITE:
		*events = POLLOUT;
		return -EAGAIN;
	case SSL_ERROR_ZERO_RETURN:
		return pm_err_set(err, ECONNRESET, "%s: connection closed by peer", what);
	case SSL_ERROR_SYSCALL:
		if (!ERR_peek_last_error()) {
			if (!t->io_errno || t->io_errno == ECONNRESET)
				return pm_err_set(err, ECONNRESET, "%s: connection closed by peer", what);
			return pm_err_set(err, t->io_errno, "%s: %s", what, strerror(t->io_errno));
		}
		/* fall through */
	default:
		pm_tls_describe(msg, sizeof(msg), t->io_errno);
		/* The destination checks our certificate after we finished. */
		char alert[300];
		pm_tls_alert_text(t, ERR_peek_last_error(), alert, sizeof(alert));
		ERR_clear_error();
		return pm_err_set(err, alert[0] ? EACCES : EPROTO, "%s: TLS: %s", what, alert[0] ? alert : msg);
	}
}

ssize_t pm_tls_send(struct pm_conn *c, const struct iovec *iov, int cnt, short *events,
		    struct pm_err *err, const char *what)
{
	struct pm_tls_conn *t = c->tls;
	const void *buf = iov[0].iov_base;
	size_t len = iov[0].iov_len, done = 0;
	int r;

	if (t->ktls_tx) {
		struct msghdr m = { .msg_iov = (struct iovec *)iov, .msg_iovlen = cnt };
		ssize_t n = sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n >= 0)
			return n;
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
			*events = POLLOUT;
			return -EAGAIN;
		}
		return pm_err_set(err, errno, "%s: %s", what, strerror(errno));
	}
	pthread_mutex_lock(&t->mu);
	/* A short piece (a frame header) starts a record that the following
	 * pieces fill: the same bytes each time this is retried. */
	if (len < sizeof(t->stage)) {
		size_t n = 0;
		for (int i = 0; i < cnt && n < sizeof(t->stage); i++) {
			size_t k = iov[i].iov_len;
			if (k > sizeof(t->stage) - n)
				k = sizeof(t->stage) - n;
			memcpy(t->stage + n, iov[i].iov_base, k);
			n += k;
		}
		buf = t->stage;
		len = n;
	}
	ERR_clear_error();
	t->io_errno = 0;
	r = SSL_write_ex(t->ssl, buf, len, &done);
	ssize_t res = r ? (ssize_t)done : ssl_fail(t, 0, events, err, what);
	pthread_mutex_unlock(&t->mu);
	return res;
}

int pm_tls_flush(struct pm_conn *c, short *events, struct pm_err *err, const char *what)
{
	struct pm_tls_conn *t = c->tls;
	int r = 0;

	if (t->ktls_tx)
		return 0;
	pthread_mutex_lock(&t->mu);
	if (wbuf_send(t)) {
		if (t->io_errno == EAGAIN || t->io_errno == EWOULDBLOCK) {
			*events = POLLOUT;
			r = -EAGAIN;
		} else {
			r = pm_err_set(err, t->io_errno, "%s: %s", what, strerror(t->io_errno));
		}
	}
	pthread_mutex_unlock(&t->mu);
	return r;
}

/* kTLS receive: a record that is not data (an alert) ends the channel. */
static ssize_t kernel_recv(struct pm_conn *c, struct iovec *iov, int cnt, short *events,
			   struct pm_err *err, const char *what)
{
	char cbuf[CMSG_SPACE(sizeof(unsigned char))];
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = cnt, .msg_control = cbuf,
			    .msg_controllen = sizeof(cbuf) };
	ssize_t n;

	do
		n = recvmsg(c->fd, &m, MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
		*events = POLLIN;
		return -EAGAIN;
	}
	if (n < 0)
		return pm_err_set(err, errno, "%s: %s", what, strerror(errno));
	if (n == 0)
		return pm_err_set(err, ECONNRESET, "%s: connection closed by peer", what);
	struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
	if (cm && cm->cmsg_level == SOL_TLS && cm->cmsg_type == TLS_GET_RECORD_TYPE &&
	    *CMSG_DATA(cm) != 23 /* application data */) {
		const uint8_t *a = iov[0].iov_base;
		if (*CMSG_DATA(cm) == 21 && n >= 2 && a[1] == 0)
			return pm_err_set(err, ECONNRESET, "%s: connection closed by peer", what);
		return pm_err_set(err, EPROTO, "%s: TLS: the peer sent a %s (type %u)", what,
				  *CMSG_DATA(cm) == 21 ? "TLS alert" : "record that is not data",
				  *CMSG_DATA(cm));
	}
	return n;
}

ssize_t pm_tls_recv(struct pm_conn *c, struct iovec *iov, int cnt, short *events,
		    struct pm_err *err, const char *what)
{
	struct pm_tls_conn *t = c->tls;
	ssize_t total = 0;

	if (t->ktls_rx)
		return kernel_recv(c, iov, cnt, events, err, what);
	pthread_mutex_lock(&t->mu);
	/* Fill the pieces in order, as far as what is there goes. */
	for (int i = 0; i < cnt; i++) {
		size_t off = 0;
		while (off < iov[i].iov_len) {
			size_t got = 0;
			ERR_clear_error();
			t->io_errno = 0;
			if (!SSL_read_ex(t->ssl, (uint8_t *)iov[i].iov_base + off, iov[i].iov_len - off, &got)) {
				/* What was read is returned; the error comes again next time. */
				if (!total)
					total = ssl_fail(t, 0, events, err, what);
				goto out;
			}
			off += got;
			total += got;
		}
	}
out:
	pthread_mutex_unlock(&t->mu);
	return total;
}

bool pm_tls_pending(const struct pm_conn *c)
{
	struct pm_tls_conn *t = c->tls;
	bool r;

	if (t->ktls_rx)
		return false;
	pthread_mutex_lock(&t->mu);
	r = SSL_has_pending(t->ssl);
	pthread_mutex_unlock(&t->mu);
	return r;
}
