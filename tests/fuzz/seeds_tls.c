/* SPDX-License-Identifier: MIT */
/* Seeds for fuzz/fuzz_tls.c: real TLS 1.3 ClientHellos (OpenSSL, as a
 * pmigrate source would send them) with the target's pre-shared key and
 * for X.509, a plain pmigrate HELLO, and HTTP.  Each is refused, with the
 * reason the destination gives such a client. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <openssl/ssl.h>
#include "engine/protocol.h"
#include "../../fuzz/fuzz_targets.h"
#include "seeds.h"

static int use_psk(SSL *ssl, const EVP_MD *md, const unsigned char **id, size_t *idlen, SSL_SESSION **sess)
{
	static const unsigned char suite[] = { 0x13, 0x01 };
	unsigned char key[32];
	SSL_SESSION *s = SSL_SESSION_new();

	for (int i = 0; i < 32; i++)
		key[i] = i;     /* FUZZ_TLS_PSK_HEX */
	SSL_SESSION_set1_master_key(s, key, sizeof(key));
	SSL_SESSION_set_cipher(s, SSL_CIPHER_find(ssl, suite));
	SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION);
	*sess = s;
	*id = (const unsigned char *)FUZZ_TLS_PSK_ID;
	*idlen = strlen(FUZZ_TLS_PSK_ID);
	return 1;
}

/* What a client's first flight looks like. */
static struct seed client_hello(const char *name, bool psk)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	SSL *ssl;
	BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
	uint8_t *d = malloc(4096);
	int n;

	SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	if (psk)
		SSL_CTX_set_psk_use_session_callback(ctx, use_psk);
	ssl = SSL_new(ctx);
	SSL_set_bio(ssl, rb, wb);
	SSL_set_connect_state(ssl);
	SSL_do_handshake(ssl);
	d[0] = psk ? 0 : 1;
	n = BIO_read(wb, d + 1, 4095);
	assert_true(n > 100);
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	return (struct seed){ name, d, n + 1 };
}

static struct seed bytes(const char *name, uint8_t mode, const void *b, size_t len)
{
	uint8_t *d = malloc(len + 1);

	d[0] = mode;
	memcpy(d + 1, b, len);
	return (struct seed){ name, d, len + 1 };
}

size_t fuzz_make_seeds(struct seed *s, size_t max)
{
	uint8_t h[PM_FRAME_HDR_LEN + PM_HELLO_LEN];
	struct pm_hello hello = { .magic = PM_PROTO_MAGIC, .version = PM_PROTO_VERSION, .nchannels = 1,
				  .chunk_pages = 512, .page_size = PM_PAGE_SIZE };
	size_t n = 0;

	pm_encode_hdr(h, PM_FR_HELLO, PM_HELLO_LEN);
	pm_encode_hello(h + PM_FRAME_HDR_LEN, &hello);
	s[n++] = client_hello("clienthello-psk", true);
	s[n++] = client_hello("clienthello-x509", false);
	s[n++] = bytes("plain-hello", 0, h, sizeof(h));
	s[n++] = bytes("http", 1, "GET / HTTP/1.0\r\n\r\n", 18);
	return n < max ? n : max;
}

void fuzz_check_seed(const struct seed *s)
{
	static const struct {
		const char *name, *why;
	} want[] = {
		{ "clienthello-psk", "TLS handshake" },
		{ "clienthello-x509", "TLS handshake" },
		{ "plain-hello", "a plain pmigrate source: this destination requires TLS" },
		{ "http", "not a TLS client" },
	};

	assert_int_equal(fuzz_tls_last.rejected, 1);
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		if (!strcmp(want[i].name, s->name) && !strstr(fuzz_tls_last.reason, want[i].why))
			fail_msg("seed %s: refused with '%s', expected '%s'", s->name, fuzz_tls_last.reason, want[i].why);
}
