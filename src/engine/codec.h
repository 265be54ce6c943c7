/* SPDX-License-Identifier: MIT */
/* Page-run compression (lz4, zstd) for PAGES frames. */
#ifndef PM_ENGINE_CODEC_H
#define PM_ENGINE_CODEC_H

#include <stddef.h>
#include <pmigrate/migrate.h>

struct pm_codec;

int pm_codec_new(struct pm_codec **out, enum pm_compress c, int level);
void pm_codec_free(struct pm_codec *c);
/* Worst-case output size for len input bytes. */
size_t pm_codec_bound(enum pm_compress c, size_t len);
/* Returns compressed size, or 0 if it would not be smaller than len. */
size_t pm_codec_compress(struct pm_codec *c, const void *src, size_t len, void *dst, size_t cap);
/* Decompresses exactly want bytes; returns 0 or -EPROTO on malformed input. */
int pm_codec_decompress(struct pm_codec *c, int encoding, const void *src, size_t len,
			void *dst, size_t want);
/* Which wire encoding a compressor produces (PM_ENC_*). */
int pm_codec_encoding(enum pm_compress c);

#endif
