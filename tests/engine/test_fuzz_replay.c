/* SPDX-License-Identifier: MIT */
/* Runs the libFuzzer target's entry (fuzz/fuzz_frames.c) over a corpus of
 * crafted and seeded random inputs, so the normal suite (under ASan/UBSan in
 * CI) exercises the destination's frame decoding without clang:
 *   - a valid stream using every frame type, checked for what it applied;
 *   - every truncation of it, single-byte flips at every offset;
 *   - deterministic random mutations of it, and random byte strings.
 * With --write-corpus DIR it writes seed inputs for the real fuzzer. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "engine/codec.h"
#include "engine/protocol.h"
#include "../../fuzz/fuzz_frames.h"

struct buf {
	uint8_t *p;
	size_t len, cap;
};

static void put(struct buf *b, const void *d, size_t n)
{
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2;
		b->p = realloc(b->p, b->cap);
		if (!b->p)
			abort();
	}
	memcpy(b->p + b->len, d, n);
	b->len += n;
}

static void frame(struct buf *b, uint32_t type, const void *body, uint32_t len)
{
	uint8_t h[PM_FRAME_HDR_LEN];

	pm_encode_hdr(h, type, len);
	put(b, h, sizeof(h));
	if (len)
		put(b, body, len);
}

/* A PAGES or BLOCKS frame (the same fixed part). */
static void pages_of(struct buf *b, uint32_t type, struct pm_pages pg, const void *payload)
{
	uint8_t fixed[PM_PAGES_FIXED_LEN];

	pm_encode_pages(fixed, &pg);
	uint8_t h[PM_FRAME_HDR_LEN];
	pm_encode_hdr(h, type, PM_PAGES_FIXED_LEN + pg.payload_len);
	put(b, h, sizeof(h));
	put(b, fixed, sizeof(fixed));
	if (pg.payload_len)
		put(b, payload, pg.payload_len);
}

static void pages(struct buf *b, struct pm_pages pg, const void *payload)
{
	pages_of(b, PM_FR_PAGES, pg, payload);
}

static void pattern(uint8_t *p, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)((i / 16 + seed) % 13);
}

/* HELLO and LAYOUT: what every accepted stream begins with. */
static void stream_head(struct buf *b)
{
	struct pm_hello h = { .magic = PM_PROTO_MAGIC, .version = PM_PROTO_VERSION, .channel = 0,
			      .nchannels = 1, .features = PM_FEAT_LZ4 | PM_FEAT_ZSTD | PM_FEAT_BARRIER | PM_FEAT_DISKS,
			      .chunk_pages = 64, .page_size = PM_PAGE_SIZE };
	uint8_t hb[PM_HELLO_LEN], lb[PM_LAYOUT_FIXED_LEN + 2 * PM_LAYOUT_REGION_LEN + PM_LAYOUT_DISK_LEN];
	struct pm_layout l = { .nregions = 2, .ndisks = 1 };

	memset(h.session, 0x42, sizeof(h.session));
	pm_encode_hello(hb, &h);
	frame(b, PM_FR_HELLO, hb, sizeof(hb));
	l.region[0] = (typeof(l.region[0])){ .id = 0, .gpa = 0, .npages = FUZZ_REGION0_PAGES };
	l.region[1] = (typeof(l.region[1])){ .id = 1, .gpa = FUZZ_REGION1_GPA, .npages = FUZZ_REGION1_PAGES };
	l.disk[0] = (typeof(l.disk[0])){ .id = 0, .block_size = FUZZ_DISK_BLOCK, .size = FUZZ_DISK_BYTES };
	pm_encode_layout(lb, &l);
	frame(b, PM_FR_LAYOUT, lb, sizeof(lb));
}

/* HELLO, LAYOUT, raw/zero/lz4/zstd runs, a stale run, blocks (raw with a
 * short last block, unallocated, a stale copy), ROUND_END, STATE, END,
 * ERROR, DONE: 15 frames. */
static struct buf valid_stream(void)
{
	struct buf b = { 0 };
	static uint8_t raw[4 * PM_PAGE_SIZE], comp[8 * PM_PAGE_SIZE];
	struct pm_codec *lz, *zs;

	stream_head(&b);

	pattern(raw, 2 * PM_PAGE_SIZE, 1);
	for (size_t i = 0; i < 2 * PM_PAGE_SIZE; i += 7)
		raw[i] ^= (uint8_t)(i * 13);
	pages(&b, (struct pm_pages){ .region = 0, .first = 0, .npages = 2, .round = 1,
				     .encoding = PM_ENC_RAW, .payload_len = 2 * PM_PAGE_SIZE }, raw);
	pages(&b, (struct pm_pages){ .region = 0, .first = 2, .npages = 3, .round = 1,
				     .encoding = PM_ENC_ZERO }, NULL);
	assert_int_equal(pm_codec_new(&lz, PM_COMPRESS_LZ4, 0), 0);
	assert_int_equal(pm_codec_new(&zs, PM_COMPRESS_ZSTD, 0), 0);
	pattern(raw, 4 * PM_PAGE_SIZE, 2);
	size_t n = pm_codec_compress(lz, raw, 4 * PM_PAGE_SIZE, comp, sizeof(comp));
	assert_true(n > 0);
	pages(&b, (struct pm_pages){ .region = 1, .first = 0, .npages = 4, .round = 1,
				     .encoding = PM_ENC_LZ4, .payload_len = n }, comp);
	pattern(raw, 4 * PM_PAGE_SIZE, 3);
	n = pm_codec_compress(zs, raw, 4 * PM_PAGE_SIZE, comp, sizeof(comp));
	assert_true(n > 0);
	pages(&b, (struct pm_pages){ .region = 1, .first = 12, .npages = 4, .round = 2,
				     .encoding = PM_ENC_ZSTD, .payload_len = n }, comp);
	/* Same round again for page 0: stale, not applied. */
	memset(raw, 0xee, PM_PAGE_SIZE);
	pages(&b, (struct pm_pages){ .region = 0, .first = 0, .npages = 1, .round = 1,
				     .encoding = PM_ENC_RAW, .payload_len = PM_PAGE_SIZE }, raw);
	/* Blocks 19 and the 512-byte block 20; the rest unallocated; then
	 * an older copy of block 19 (stale). */
	pattern(raw, FUZZ_DISK_BLOCK + 512, 4);
	pages_of(&b, PM_FR_BLOCKS, (struct pm_pages){ .region = 0, .first = 19, .npages = 2, .round = 2,
				     .encoding = PM_ENC_RAW, .payload_len = FUZZ_DISK_BLOCK + 512 }, raw);
	pages_of(&b, PM_FR_BLOCKS, (struct pm_pages){ .region = 0, .first = 0, .npages = 19, .round = 1,
				     .encoding = PM_ENC_UNALLOCATED }, NULL);
	memset(raw, 0xee, FUZZ_DISK_BLOCK);
	pages_of(&b, PM_FR_BLOCKS, (struct pm_pages){ .region = 0, .first = 19, .npages = 1, .round = 1,
				     .encoding = PM_ENC_RAW, .payload_len = FUZZ_DISK_BLOCK }, raw);
	uint8_t rb[PM_ROUND_LEN] = { 0 };
	pm_put32(rb, 1);
	frame(&b, PM_FR_ROUND_END, rb, sizeof(rb));
	uint8_t state[100];
	memset(state, 0x5a, sizeof(state));
	frame(&b, PM_FR_STATE, state, sizeof(state));
	struct pm_end end = { .final_round = 2, .frames = 8, .pages = 36, .payload_bytes = 3 * PM_PAGE_SIZE };
	uint8_t eb[PM_END_FAILOVER_LEN];
	frame(&b, PM_FR_END, eb, pm_encode_end(eb, &end, false));
	uint8_t err[PM_ERROR_FIXED_LEN + 20];
	pm_put32(err, EPROTO);
	pm_put32(err + 4, 400);          /* longer than the frame: clipped */
	memcpy(err + 8, "something went wrong", 20);
	frame(&b, PM_FR_ERROR, err, sizeof(err));
	uint8_t done[PM_DONE_LEN] = { 1 };
	frame(&b, PM_FR_DONE, done, sizeof(done));
	pm_codec_free(lz);
	pm_codec_free(zs);
	return b;
}

static uint64_t rnd(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static void test_valid_stream(void **state)
{
	struct buf b = valid_stream();
	uint8_t expect[4 * PM_PAGE_SIZE];

	LLVMFuzzerTestOneInput(b.p, b.len);
	assert_int_equal(fuzz_frames_last.frames, 15);
	assert_true(fuzz_frames_last.layout_ok);
	assert_true(fuzz_frames_last.end_ok);
	assert_int_equal(fuzz_frames_last.state_len, 100);
	assert_int_equal(fuzz_frames_last.features, PM_FEAT_LZ4 | PM_FEAT_ZSTD | PM_FEAT_BARRIER | PM_FEAT_DISKS);
	assert_true(fuzz_frames_last.pages_applied == 13);
	assert_true(fuzz_frames_last.stale_pages == 1);
	assert_true(fuzz_frames_last.blocks_applied == 21);
	assert_true(fuzz_frames_last.stale_blocks == 1);
	/* What landed on the disk: blocks 19 and 20 (512 bytes), zeros before. */
	uint8_t *dk = fuzz_frames_disk();
	pattern(expect, FUZZ_DISK_BLOCK + 512, 4);
	assert_memory_equal(dk + 19 * FUZZ_DISK_BLOCK, expect, FUZZ_DISK_BLOCK + 512);
	for (size_t i = 0; i < 19 * FUZZ_DISK_BLOCK; i++)
		assert_int_equal(dk[i], 0);
	/* What landed in memory. */
	uint8_t *r0 = fuzz_frames_memory(0), *r1 = fuzz_frames_memory(1);
	pattern(expect, 2 * PM_PAGE_SIZE, 1);
	for (size_t i = 0; i < 2 * PM_PAGE_SIZE; i += 7)
		expect[i] ^= (uint8_t)(i * 13);
	assert_memory_equal(r0, expect, 2 * PM_PAGE_SIZE);
	for (size_t i = 2 * PM_PAGE_SIZE; i < 5 * PM_PAGE_SIZE; i++)
		assert_int_equal(r0[i], 0);
	pattern(expect, 4 * PM_PAGE_SIZE, 2);
	assert_memory_equal(r1, expect, 4 * PM_PAGE_SIZE);
	pattern(expect, 4 * PM_PAGE_SIZE, 3);
	assert_memory_equal(r1 + 12 * PM_PAGE_SIZE, expect, 4 * PM_PAGE_SIZE);
	assert_null(fuzz_frames_memory(2));
	free(b.p);
}

/* An UNPOPULATED run (memory the source never wrote) reads as zeros over
 * what an older round left; it has no payload to decompress (found by
 * fuzz_frames: the harness took it for a compressed run). */
static void test_unpopulated_run(void **state)
{
	struct buf b = { 0 };
	uint8_t raw[2 * PM_PAGE_SIZE];

	stream_head(&b);
	memset(raw, 0xab, sizeof(raw));
	pages(&b, (struct pm_pages){ .region = 0, .first = 30, .npages = 2, .round = 1,
				     .encoding = PM_ENC_RAW, .payload_len = sizeof(raw) }, raw);
	pages(&b, (struct pm_pages){ .region = 0, .first = 30, .npages = 2, .round = 2,
				     .encoding = PM_ENC_UNPOPULATED }, NULL);
	LLVMFuzzerTestOneInput(b.p, b.len);
	assert_int_equal(fuzz_frames_last.frames, 4);
	assert_true(fuzz_frames_last.pages_applied == 4);
	uint8_t *r0 = fuzz_frames_memory(0);
	for (size_t i = 30 * PM_PAGE_SIZE; i < 32 * PM_PAGE_SIZE; i++)
		assert_int_equal(r0[i], 0);
	free(b.p);
}

/* Only HELLO may come first. */
static void test_hello_first(void **state)
{
	struct buf b = valid_stream();

	/* Drop the HELLO: nothing is accepted. */
	LLVMFuzzerTestOneInput(b.p + PM_FRAME_HDR_LEN + PM_HELLO_LEN, b.len - PM_FRAME_HDR_LEN - PM_HELLO_LEN);
	assert_int_equal(fuzz_frames_last.frames, 0);
	assert_true(fuzz_frames_last.pages_applied == 0);
	free(b.p);
}

static void test_truncations(void **state)
{
	struct buf b = valid_stream();
	unsigned prev = 0;

	for (size_t len = 0; len <= b.len; len++) {
		uint8_t *copy = malloc(len ? len : 1);   /* exact size: ASan sees overreads */
		memcpy(copy, b.p, len);
		LLVMFuzzerTestOneInput(copy, len);
		assert_true(fuzz_frames_last.frames >= prev);
		assert_true(fuzz_frames_last.frames <= 15);
		prev = fuzz_frames_last.frames;
		free(copy);
	}
	assert_int_equal(prev, 15);
	free(b.p);
}

static void test_byte_flips(void **state)
{
	struct buf b = valid_stream();
	static const uint8_t masks[] = { 0x01, 0x80, 0xff, 0x10 };
	uint8_t *copy = malloc(b.len);

	for (size_t i = 0; i < b.len; i++)
		for (size_t m = 0; m < sizeof(masks); m++) {
			memcpy(copy, b.p, b.len);
			copy[i] ^= masks[m];
			LLVMFuzzerTestOneInput(copy, b.len);
			assert_true(fuzz_frames_last.frames <= 15);
		}
	free(copy);
	free(b.p);
}

static void test_mutations(void **state)
{
	struct buf b = valid_stream();
	uint64_t s = 0x243f6a8885a308d3ull;

	for (unsigned iter = 0; iter < 3000; iter++) {
		size_t len = b.len;
		uint8_t *copy = malloc(len + 64);
		memcpy(copy, b.p, len);
		unsigned nmut = 1 + rnd(&s) % 6;
		for (unsigned k = 0; k < nmut; k++) {
			size_t at = rnd(&s) % len;
			switch (rnd(&s) % 5) {
			case 0: copy[at] = (uint8_t)rnd(&s); break;
			case 1: /* interesting 32-bit values */
				if (at + 4 <= len) {
					static const uint32_t v[] = { 0, 1, 0x7fffffff, 0x80000000, 0xffffffff,
								      64, 65, 512, 513, 4096, 4095, 256, 257 };
					pm_put32(copy + at, v[rnd(&s) % (sizeof(v) / sizeof(v[0]))]);
				}
				break;
			case 2: len = at; break;                      /* truncate */
			case 3: if (at + 8 <= len) memset(copy + at, 0, 8); break;
			default: copy[at] ^= (uint8_t)(1u << (rnd(&s) % 8));
			}
			if (!len)
				break;
		}
		uint8_t *exact = malloc(len ? len : 1);
		memcpy(exact, copy, len);
		LLVMFuzzerTestOneInput(exact, len);
		free(exact);
		free(copy);
	}
	free(b.p);
}

static void test_random_bytes(void **state)
{
	uint64_t s = 0x13198a2e03707344ull;

	for (unsigned iter = 0; iter < 3000; iter++) {
		size_t len = rnd(&s) % 2048;
		uint8_t *p = malloc(len ? len : 1);
		for (size_t i = 0; i < len; i++)
			p[i] = (uint8_t)rnd(&s);
		/* Half of them start with a valid HELLO to get past the first check. */
		if (iter % 2 && len >= PM_FRAME_HDR_LEN + PM_HELLO_LEN) {
			struct buf v = valid_stream();
			memcpy(p, v.p, PM_FRAME_HDR_LEN + PM_HELLO_LEN);
			free(v.p);
		}
		LLVMFuzzerTestOneInput(p, len);
		free(p);
	}
}

static int write_corpus(const char *dir)
{
	struct buf b = valid_stream();
	char path[4096];
	size_t cut[] = { b.len, PM_FRAME_HDR_LEN + PM_HELLO_LEN,
			 2 * PM_FRAME_HDR_LEN + PM_HELLO_LEN + PM_LAYOUT_FIXED_LEN + 2 * PM_LAYOUT_REGION_LEN +
			 PM_LAYOUT_DISK_LEN };

	for (size_t i = 0; i < sizeof(cut) / sizeof(cut[0]); i++) {
		snprintf(path, sizeof(path), "%s/seed-%zu", dir, i);
		FILE *f = fopen(path, "wb");
		if (!f || fwrite(b.p, 1, cut[i], f) != cut[i] || fclose(f)) {
			perror(path);
			return 1;
		}
	}
	free(b.p);
	return 0;
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_stream),
		cmocka_unit_test(test_unpopulated_run),
		cmocka_unit_test(test_hello_first),
		cmocka_unit_test(test_truncations),
		cmocka_unit_test(test_byte_flips),
		cmocka_unit_test(test_mutations),
		cmocka_unit_test(test_random_bytes),
	};

	if (argc == 3 && !strcmp(argv[1], "--write-corpus"))
		return write_corpus(argv[2]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
