/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <lz4.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>
#include "engine/codec.h"
#include "engine/protocol.h"

struct pm_codec {
	enum pm_compress kind;
	int level;
	ZSTD_CCtx *zc;
	ZSTD_DCtx *zd;
};

int pm_codec_new(struct pm_codec **out, enum pm_compress c, int level)
{
	struct pm_codec *k = calloc(1, sizeof(*k));

	if (!k)
		return -ENOMEM;
	k->kind = c;
	k->level = level;
	k->zc = ZSTD_createCCtx();
	k->zd = ZSTD_createDCtx();
	if (!k->zc || !k->zd) {
		pm_codec_free(k);
		return -ENOMEM;
	}
	*out = k;
	return 0;
}

void pm_codec_free(struct pm_codec *c)
{
	if (!c)
		return;
	ZSTD_freeCCtx(c->zc);
	ZSTD_freeDCtx(c->zd);
	free(c);
}

size_t pm_codec_bound(enum pm_compress c, size_t len)
{
	switch (c) {
	case PM_COMPRESS_LZ4: return LZ4_compressBound(len);
	case PM_COMPRESS_ZSTD: return ZSTD_compressBound(len);
	default: return len;
	}
}

int pm_codec_encoding(enum pm_compress c)
{
	return c == PM_COMPRESS_LZ4 ? PM_ENC_LZ4 : c == PM_COMPRESS_ZSTD ? PM_ENC_ZSTD : PM_ENC_RAW;
}

size_t pm_codec_compress(struct pm_codec *c, const void *src, size_t len, void *dst, size_t cap)
{
	size_t n = 0;

	if (c->kind == PM_COMPRESS_LZ4) {
		int r = LZ4_compress_fast(src, dst, len, cap, c->level > 0 ? c->level : 1);
		n = r > 0 ? (size_t)r : 0;
	} else if (c->kind == PM_COMPRESS_ZSTD) {
		size_t r = ZSTD_compressCCtx(c->zc, dst, cap, src, len, c->level ? c->level : 1);
		n = ZSTD_isError(r) ? 0 : r;
	}
	return n < len ? n : 0;
}

int pm_codec_decompress(struct pm_codec *c, int encoding, const void *src, size_t len,
			void *dst, size_t want)
{
	if (encoding == PM_ENC_LZ4) {
		int r = LZ4_decompress_safe(src, dst, len, want);
		return r == (int)want ? 0 : -EPROTO;
	}
	if (encoding == PM_ENC_ZSTD) {
		size_t r = ZSTD_decompressDCtx(c->zd, dst, want, src, len);
		return !ZSTD_isError(r) && r == want ? 0 : -EPROTO;
	}
	return -EPROTO;
}
