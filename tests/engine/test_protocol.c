/* SPDX-License-Identifier: MIT */
/* Wire protocol v1 codec: round trips of every frame, header limits per
 * type, and every validation rule of HELLO, LAYOUT, PAGES and END
 * (docs/protocol.md is the contract these tests check). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "engine/protocol.h"

/* Checks that rc is an error and that the message mentions needle. */
#define assert_rejected(rc, err, needle)                                          \
	do {                                                                      \
		int rc_ = (rc);                                                   \
		if (rc_ >= 0 || !strstr((err).msg, (needle)))                     \
			fail_msg("expected rejection mentioning '%s', got rc %d: '%s'", \
				 (needle), rc_, (err).msg);                       \
		assert_int_equal((err).code, -rc_);                               \
	} while (0)

/* ------------------------------------------------------------- helpers */

static struct pm_hello good_hello(void)
{
	struct pm_hello h = {
		.magic = PM_PROTO_MAGIC, .version = PM_PROTO_VERSION,
		.channel = 2, .nchannels = 4, .features = PM_FEAT_BARRIER | PM_FEAT_LZ4,
		.chunk_pages = 512, .page_size = PM_PAGE_SIZE,
	};
	for (int i = 0; i < 16; i++)
		h.session[i] = (uint8_t)(0xa0 + i);
	return h;
}

static struct pm_layout two_regions(void)
{
	struct pm_layout l = { .nregions = 2 };

	l.region[0].id = 0;
	l.region[0].gpa = 0;
	l.region[0].npages = 1000;
	l.region[1].id = 1;
	l.region[1].gpa = 0x100000000ull;
	l.region[1].npages = 300;
	return l;
}

static int decode_hello_of(const struct pm_hello *h, struct pm_hello *out, struct pm_err *e)
{
	uint8_t b[PM_HELLO_LEN];

	pm_encode_hello(b, h);
	return pm_decode_hello(b, sizeof(b), out, e);
}

/* Decodes a PAGES header (p) against layout l with the given body length. */
static int decode_pages_of(const struct pm_pages *p, uint32_t body_len, const struct pm_layout *l,
			   unsigned chunk, struct pm_pages *out, struct pm_err *e)
{
	uint8_t b[PM_PAGES_FIXED_LEN];

	pm_encode_pages(b, p);
	return pm_decode_pages(b, body_len, l, chunk, out, e);
}

/* --------------------------------------------------------------- header */

static void test_le_helpers(void **state)
{
	uint8_t b[8];

	pm_put64(b, 0x0102030405060708ull);
	assert_int_equal(b[0], 0x08);
	assert_int_equal(b[7], 0x01);
	assert_true(pm_get64(b) == 0x0102030405060708ull);
	pm_put32(b, 0xdeadbeef);
	assert_int_equal(b[0], 0xef);
	assert_int_equal(pm_get32(b), 0xdeadbeef);
	pm_put16(b, 0xabcd);
	assert_int_equal(b[0], 0xcd);
	assert_int_equal(pm_get16(b), 0xabcd);
}

static void test_hdr_roundtrip(void **state)
{
	uint8_t b[PM_FRAME_HDR_LEN];
	struct pm_frame_hdr h;

	pm_encode_hdr(b, PM_FR_PAGES, 0x12345678);
	assert_int_equal(pm_get32(b), PM_FR_PAGES);
	assert_int_equal(pm_get32(b + 4), 0x12345678);
	pm_decode_hdr(b, &h);
	assert_int_equal(h.type, PM_FR_PAGES);
	assert_int_equal(h.len, 0x12345678);
}

static void test_frame_names(void **state)
{
	assert_string_equal(pm_frame_name(PM_FR_HELLO), "HELLO");
	assert_string_equal(pm_frame_name(PM_FR_HELLO_ACK), "HELLO_ACK");
	assert_string_equal(pm_frame_name(PM_FR_LAYOUT), "LAYOUT");
	assert_string_equal(pm_frame_name(PM_FR_LAYOUT_ACK), "LAYOUT_ACK");
	assert_string_equal(pm_frame_name(PM_FR_PAGES), "PAGES");
	assert_string_equal(pm_frame_name(PM_FR_ROUND_END), "ROUND_END");
	assert_string_equal(pm_frame_name(PM_FR_ROUND_ACK), "ROUND_ACK");
	assert_string_equal(pm_frame_name(PM_FR_STATE), "STATE");
	assert_string_equal(pm_frame_name(PM_FR_END), "END");
	assert_string_equal(pm_frame_name(PM_FR_DONE), "DONE");
	assert_string_equal(pm_frame_name(PM_FR_ERROR), "ERROR");
	assert_string_equal(pm_frame_name(PM_FR_ACK), "ACK");
	assert_string_equal(pm_frame_name(PM_FR_LOST), "LOST");
	assert_string_equal(pm_frame_name(PM_FR_PING), "PING");
	assert_string_equal(pm_frame_name(PM_FR_BLOCKS), "BLOCKS");
	assert_string_equal(pm_frame_name(0), "unknown");
	assert_string_equal(pm_frame_name(PM_FR_VERIFY), "VERIFY");
	assert_string_equal(pm_frame_name(16), "unknown");
	assert_string_equal(pm_frame_name(0xffffffffu), "unknown");
}

/* DONE carries the destination's share of the pause; reserved bytes must
 * be zero and the length exact. */
static void test_done_roundtrip(void **state)
{
	struct pm_done d = { .dump_us = 1, .drain_us = 2, .load_us = 3, .resume_us = 4,
			     .data_pages = 5, .verify_us = 6 }, o;
	struct pm_err e = { 0 };
	uint8_t b[PM_DONE_LEN];

	pm_encode_done(b, &d);
	assert_int_equal(pm_decode_done(b, sizeof(b), &o, &e), 0);
	assert_memory_equal(&d, &o, sizeof(d));
	assert_int_equal(pm_decode_done(b, sizeof(b) - 1, &o, &e), -EPROTO);
	b[60] = 1;
	pm_err_clear(&e);
	assert_int_equal(pm_decode_done(b, sizeof(b), &o, &e), -EPROTO);
	assert_non_null(strstr(e.msg, "reserved"));
}

static int check(uint32_t type, uint32_t len, unsigned chunk, struct pm_err *e)
{
	struct pm_frame_hdr h = { .type = type, .len = len };

	pm_err_clear(e);
	return pm_check_hdr(&h, chunk, e);
}

static void test_check_hdr_exact(void **state)
{
	struct pm_err e = { 0 };
	static const struct { uint32_t type, len; } exact[] = {
		{ PM_FR_HELLO, PM_HELLO_LEN }, { PM_FR_HELLO_ACK, PM_HELLO_LEN },
		{ PM_FR_LAYOUT_ACK, 0 }, { PM_FR_DONE, PM_DONE_LEN },
		{ PM_FR_ROUND_END, PM_ROUND_LEN }, { PM_FR_ROUND_ACK, PM_ROUND_LEN },
		{ PM_FR_END, PM_END_LEN },
	};

	for (size_t i = 0; i < sizeof(exact) / sizeof(exact[0]); i++) {
		assert_int_equal(check(exact[i].type, exact[i].len, 512, &e), 0);
		assert_rejected(check(exact[i].type, exact[i].len + 1, 512, &e), e, "expected");
		assert_rejected(check(exact[i].type, 0xffffffffu, 512, &e), e, pm_frame_name(exact[i].type));
		if (exact[i].len)
			assert_rejected(check(exact[i].type, exact[i].len - 1, 512, &e), e, "has length");
	}
	assert_int_equal(e.code, EPROTO);
}

static void test_check_hdr_ranges(void **state)
{
	struct pm_err e = { 0 };

	/* LAYOUT: 8 .. 8 + 64 * 24 + 16 * 40 (regions, disks). */
	assert_rejected(check(PM_FR_LAYOUT, 7, 512, &e), e, "out of range");
	assert_int_equal(check(PM_FR_LAYOUT, 8, 512, &e), 0);
	assert_int_equal(check(PM_FR_LAYOUT, 8 + 64 * 24 + 16 * 40, 512, &e), 0);
	assert_rejected(check(PM_FR_LAYOUT, 8 + 64 * 24 + 16 * 40 + 1, 512, &e), e, "LAYOUT");
	/* BLOCKS: 32 .. 32 + the larger of a chunk and the largest block (1 MiB). */
	assert_rejected(check(PM_FR_BLOCKS, 31, 512, &e), e, "BLOCKS");
	assert_int_equal(check(PM_FR_BLOCKS, 32, 512, &e), 0);
	assert_int_equal(check(PM_FR_BLOCKS, 32 + 512 * 4096, 512, &e), 0);
	assert_rejected(check(PM_FR_BLOCKS, 32 + 512 * 4096 + 1, 512, &e), e, "out of range");
	assert_int_equal(check(PM_FR_BLOCKS, 32 + (1 << 20), 64, &e), 0);
	assert_rejected(check(PM_FR_BLOCKS, 32 + (1 << 20) + 1, 64, &e), e, "out of range");
	/* PAGES: 32 .. 32 + chunk * 4096, chunk from the HELLO. */
	assert_rejected(check(PM_FR_PAGES, 31, 512, &e), e, "PAGES");
	assert_int_equal(check(PM_FR_PAGES, 32, 512, &e), 0);
	assert_int_equal(check(PM_FR_PAGES, 32 + 512 * 4096, 512, &e), 0);
	assert_rejected(check(PM_FR_PAGES, 32 + 512 * 4096 + 1, 512, &e), e, "out of range");
	assert_int_equal(check(PM_FR_PAGES, 32 + 64 * 4096, 64, &e), 0);
	assert_rejected(check(PM_FR_PAGES, 32 + 64 * 4096 + 1, 64, &e), e, "out of range");
	assert_rejected(check(PM_FR_PAGES, 33, 0, &e), e, "out of range");
	assert_rejected(check(PM_FR_PAGES, 0xffffffffu, 512, &e), e, "out of range");
	/* STATE: 0 .. 64 MiB. */
	assert_int_equal(check(PM_FR_STATE, 0, 512, &e), 0);
	assert_int_equal(check(PM_FR_STATE, PM_MAX_STATE_LEN, 512, &e), 0);
	assert_rejected(check(PM_FR_STATE, PM_MAX_STATE_LEN + 1, 512, &e), e, "STATE");
	/* ERROR: 8 .. 8 + 400. */
	assert_rejected(check(PM_FR_ERROR, 7, 512, &e), e, "ERROR");
	assert_int_equal(check(PM_FR_ERROR, 8, 512, &e), 0);
	assert_int_equal(check(PM_FR_ERROR, 8 + PM_MAX_ERROR_LEN, 512, &e), 0);
	assert_rejected(check(PM_FR_ERROR, 8 + PM_MAX_ERROR_LEN + 1, 512, &e), e, "ERROR");
}

static void test_check_hdr_unknown(void **state)
{
	struct pm_err e = { 0 };
	uint32_t bad[] = { 0, 16, 17, 255, 0x47494d50u, 0xffffffffu };

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_rejected(check(bad[i], 0, 512, &e), e, "unknown frame type");
		assert_int_equal(e.code, EPROTO);
	}
}

/* ---------------------------------------------------------------- HELLO */

static void test_hello_roundtrip(void **state)
{
	struct pm_hello h = good_hello(), d;
	struct pm_err e = { 0 };
	uint8_t b[PM_HELLO_LEN];

	pm_encode_hello(b, &h);
	/* Wire layout: offsets per docs/protocol.md. */
	assert_int_equal(pm_get32(b), PM_PROTO_MAGIC);
	assert_memory_equal(b, "PMIG", 4);
	assert_int_equal(pm_get16(b + 4), 1);
	assert_int_equal(pm_get16(b + 6), 2);
	assert_int_equal(pm_get16(b + 8), 4);
	assert_int_equal(pm_get16(b + 10), 0);
	assert_int_equal(pm_get32(b + 12), PM_FEAT_BARRIER | PM_FEAT_LZ4);
	assert_memory_equal(b + 16, h.session, 16);
	assert_int_equal(pm_get32(b + 32), 512);
	assert_int_equal(pm_get32(b + 36), 4096);
	assert_int_equal(pm_decode_hello(b, sizeof(b), &d, &e), 0);
	assert_int_equal(d.magic, h.magic);
	assert_int_equal(d.version, h.version);
	assert_int_equal(d.channel, h.channel);
	assert_int_equal(d.nchannels, h.nchannels);
	assert_int_equal(d.generation, 0);
	assert_int_equal(d.features, h.features);
	assert_memory_equal(d.session, h.session, 16);
	assert_int_equal(d.chunk_pages, h.chunk_pages);
	assert_int_equal(d.page_size, h.page_size);

	/* Edges that are accepted. */
	h.channel = 63;
	h.nchannels = 64;
	h.chunk_pages = 1;
	h.features = PM_FEAT_KNOWN;
	assert_int_equal(decode_hello_of(&h, &d, &e), 0);
	h.channel = 0;
	h.nchannels = 1;
	h.features = 0;
	assert_int_equal(decode_hello_of(&h, &d, &e), 0);
}

static void test_hello_encode_zeroes_reserved(void **state)
{
	struct pm_hello h = good_hello(), d;
	struct pm_err e = { 0 };
	uint8_t b[PM_HELLO_LEN];

	h.generation = 0x5555;
	pm_encode_hello(b, &h);
	assert_int_equal(pm_get16(b + 10), 0);
	assert_int_equal(pm_decode_hello(b, sizeof(b), &d, &e), 0);
	/* With FAILOVER the field is the channel's generation (reconnects). */
	h.features |= PM_FEAT_FAILOVER;
	h.generation = 3;
	pm_encode_hello(b, &h);
	assert_int_equal(pm_get16(b + 10), 3);
	assert_int_equal(pm_decode_hello(b, sizeof(b), &d, &e), 0);
	assert_int_equal(d.generation, 3);
	/* Without it a non-zero field is refused. */
	pm_put32(b + 12, h.features & ~PM_FEAT_FAILOVER);
	assert_rejected(pm_decode_hello(b, sizeof(b), &d, &e), e, "HELLO reserved field is not zero");
}

static void test_hello_rejects(void **state)
{
	struct pm_hello h, d;
	struct pm_err e = { 0 };
	uint8_t b[PM_HELLO_LEN];

#define REJECT(mutate, needle)                                \
	do {                                                  \
		h = good_hello();                             \
		mutate;                                       \
		pm_err_clear(&e);                             \
		assert_rejected(decode_hello_of(&h, &d, &e), e, needle); \
	} while (0)

	REJECT(h.magic = 0x50494d47u, "bad magic");
	REJECT(h.magic = 0, "not a pmigrate stream");
	REJECT(h.version = 0, "protocol version 0 is not supported");
	REJECT(h.version = 2, "protocol version 2");
	assert_int_equal(e.code, EPROTONOSUPPORT);
	REJECT((h.channel = 4, h.nchannels = 4), "channel index 4 is not below the channel count 4");
	REJECT((h.channel = 0xffff), "channel index");
	REJECT((h.channel = 0, h.nchannels = 0), "0 channels");
	REJECT((h.channel = 0, h.nchannels = 65), "65 channels");
	REJECT((h.channel = 0, h.nchannels = 0xffff), "channels (1..64 allowed)");
	REJECT(h.features = 1u << 5, "unknown feature flags 0x20");
	REJECT(h.features = 0x80000000u | PM_FEAT_ZSTD, "unknown feature flags 0x80000000");
	REJECT(h.page_size = 8192, "page size 8192");
	REJECT(h.page_size = 0, "page size 0");
	REJECT(h.chunk_pages = 0, "chunk of 0 pages");
	REJECT(h.chunk_pages = 513, "chunk of 513 pages");
	REJECT(h.chunk_pages = 0xffffffffu, "out of range");
#undef REJECT

	/* Reserved is zeroed by the encoder: poke it on the wire. */
	h = good_hello();
	pm_encode_hello(b, &h);
	pm_put16(b + 10, 1);
	pm_err_clear(&e);
	assert_rejected(pm_decode_hello(b, sizeof(b), &d, &e), e, "reserved");

	/* Wrong body length. */
	pm_encode_hello(b, &h);
	pm_err_clear(&e);
	assert_rejected(pm_decode_hello(b, sizeof(b) - 1, &d, &e), e, "HELLO has length 39");
	pm_err_clear(&e);
	assert_rejected(pm_decode_hello(b, 0, &d, &e), e, "expected 40");
}

/* --------------------------------------------------------------- LAYOUT */

static void test_layout_roundtrip(void **state)
{
	struct pm_layout l = two_regions(), d;
	struct pm_err e = { 0 };
	uint8_t b[PM_LAYOUT_FIXED_LEN + PM_MAX_REGIONS * PM_LAYOUT_REGION_LEN];

	assert_int_equal(pm_layout_len(&l), 8 + 2 * 24);
	memset(b, 0xee, sizeof(b));
	pm_encode_layout(b, &l);
	assert_int_equal(pm_get32(b), 2);
	assert_int_equal(pm_get32(b + 4), 0);
	assert_int_equal(pm_get32(b + 8 + 24), 1);
	assert_int_equal(pm_get32(b + 8 + 24 + 4), 0);
	assert_true(pm_get64(b + 8 + 24 + 8) == 0x100000000ull);
	assert_true(pm_get64(b + 8 + 24 + 16) == 300);
	assert_int_equal(pm_decode_layout(b, pm_layout_len(&l), &d, &e), 0);
	assert_int_equal(d.nregions, 2);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(d.region[i].id, i);
		assert_true(d.region[i].gpa == l.region[i].gpa);
		assert_true(d.region[i].npages == l.region[i].npages);
	}

	/* The maximum: 64 regions. */
	memset(&l, 0, sizeof(l));
	l.nregions = PM_MAX_REGIONS;
	for (unsigned i = 0; i < PM_MAX_REGIONS; i++) {
		l.region[i].id = i;
		l.region[i].gpa = (uint64_t)i << 32;
		l.region[i].npages = i + 1;
	}
	pm_encode_layout(b, &l);
	assert_int_equal(pm_layout_len(&l), sizeof(b));
	assert_int_equal(pm_decode_layout(b, sizeof(b), &d, &e), 0);
	assert_int_equal(d.nregions, 64);
	assert_true(d.region[63].npages == 64);
	assert_true(d.region[63].gpa == 63ull << 32);
	/* 2^36 pages is the largest region accepted. */
	l.nregions = 1;
	l.region[0].npages = 1ull << 36;
	pm_encode_layout(b, &l);
	assert_int_equal(pm_decode_layout(b, pm_layout_len(&l), &d, &e), 0);
}

static void test_layout_rejects(void **state)
{
	struct pm_layout l = two_regions(), d;
	struct pm_err e = { 0 };
	uint8_t b[PM_LAYOUT_FIXED_LEN + (PM_MAX_REGIONS + 1) * PM_LAYOUT_REGION_LEN];
	size_t len = pm_layout_len(&l);

	pm_encode_layout(b, &l);
	/* Truncated. */
	assert_rejected(pm_decode_layout(b, 0, &d, &e), e, "truncated");
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, 7, &d, &e), e, "truncated (7 bytes)");
	/* Length that does not match the region count. */
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, len - 1, &d, &e), e,
			"LAYOUT of 2 regions and 0 disks has length 55, expected 56");
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, len + 24, &d, &e), e, "expected 56");
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, 8, &d, &e), e, "length 8");
	/* No region / too many. */
	pm_put32(b, 0);
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, 8, &d, &e), e, "0 regions (1..64 allowed)");
	pm_put32(b, 65);
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, 8 + 65 * 24, &d, &e), e, "65 regions");
	pm_put32(b, 0xffffffffu);
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, len, &d, &e), e, "regions");
	/* Ids out of order. */
	pm_encode_layout(b, &l);
	pm_put32(b + 8 + 24, 0);
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, len, &d, &e), e, "region 1 has id 0");
	pm_encode_layout(b, &l);
	pm_put32(b + 8, 1);
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, len, &d, &e), e, "ids must be 0..n-1 in order");
	/* Zero pages, too many pages. */
	l = two_regions();
	l.region[1].npages = 0;
	pm_encode_layout(b, &l);
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, len, &d, &e), e, "region 1 has 0 pages");
	l.region[1].npages = (1ull << 36) + 1;
	pm_encode_layout(b, &l);
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, len, &d, &e), e, "out of range");
	/* Unaligned guest address. */
	l = two_regions();
	l.region[0].gpa = 0x1001;
	pm_encode_layout(b, &l);
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, len, &d, &e), e, "0x1001 is not page aligned");
	l.region[0].gpa = 0x800;
	pm_encode_layout(b, &l);
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, len, &d, &e), e, "not page aligned");
}

/* The encoder writes zero in the reserved words; a peer that sets them
 * speaks something else than v1. */
static void test_layout_reserved(void **state)
{
	struct pm_layout l = two_regions(), d;
	struct pm_err e = { 0 };
	uint8_t b[PM_LAYOUT_FIXED_LEN + 2 * PM_LAYOUT_REGION_LEN];

	pm_encode_layout(b, &l);
	pm_put32(b + 8 + 24 + 4, 0x80);
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, sizeof(b), &d, &e), e, "reserved");
}

static void test_layout_check(void **state)
{
	struct pm_layout s = two_regions(), d = two_regions();
	struct pm_err e = { 0 };

	assert_int_equal(pm_layout_check(&s, &d, &e), 0);
	/* Smaller destination. */
	s.region[0].npages = 2048;
	d.region[0].npages = 1024;
	assert_rejected(pm_layout_check(&s, &d, &e), e, "smaller");
	assert_int_equal(e.code, EINVAL);
	assert_non_null(strstr(e.msg, "source has 8 MiB, destination has 4 MiB"));
	/* Larger destination: refused, but not called smaller. */
	pm_err_clear(&e);
	assert_rejected(pm_layout_check(&d, &s, &e), e, "memory region 0");
	assert_null(strstr(e.msg, "smaller"));
	/* Region count. */
	s = two_regions();
	d = two_regions();
	d.nregions = 1;
	pm_err_clear(&e);
	assert_rejected(pm_layout_check(&s, &d, &e), e, "source has 2 memory regions, destination has 1");
	/* Guest address. */
	d = two_regions();
	d.region[1].gpa = 0x200000000ull;
	pm_err_clear(&e);
	assert_rejected(pm_layout_check(&s, &d, &e), e, "memory region 1: source at 0x100000000, destination at 0x200000000");
}

static void test_layout_of_backend(void **state)
{
	struct pm_region rg[2] = {
		{ .id = 0, .gpa = 0, .npages = 16 },
		{ .id = 1, .gpa = 0x40000000, .npages = 8 },
	};
	struct pm_backend be = { .kind = "test", .nregions = 2, .regions = rg };
	struct pm_layout l;

	pm_layout_of(&be, &l);
	assert_int_equal(l.nregions, 2);
	assert_int_equal(l.region[1].id, 1);
	assert_true(l.region[1].gpa == 0x40000000);
	assert_true(l.region[1].npages == 8);
}

/* ---------------------------------------------------------------- disks */

static struct pm_layout with_disks(void)
{
	struct pm_layout l = two_regions();

	l.ndisks = 2;
	l.disk[0] = (typeof(l.disk[0])){ .id = 0, .block_size = 65536, .size = 4u << 20 };
	l.disk[1] = (typeof(l.disk[1])){ .id = 1, .block_size = 4096, .size = (1u << 20) + 512 };
	for (int i = 0; i < 16; i++)
		l.disk[1].identity[i] = (uint8_t)(i + 1);
	return l;
}

static void test_layout_disks(void **state)
{
	struct pm_layout l = with_disks(), d;
	struct pm_err e = { 0 };
	uint8_t b[PM_LAYOUT_FIXED_LEN + 2 * PM_LAYOUT_REGION_LEN + 2 * PM_LAYOUT_DISK_LEN];
	size_t len = pm_layout_len(&l);
	const uint8_t *d1 = b + 8 + 2 * 24 + 40;

	assert_int_equal(len, sizeof(b));
	pm_encode_layout(b, &l);
	assert_int_equal(pm_get32(b + 4), 2);                   /* ndisks */
	assert_int_equal(pm_get32(d1), 1);
	assert_int_equal(pm_get32(d1 + 4), 4096);
	assert_true(pm_get64(d1 + 8) == (1u << 20) + 512);
	assert_int_equal(d1[16], 1);
	assert_true(pm_get64(d1 + 32) == 0);
	assert_int_equal(pm_decode_layout(b, len, &d, &e), 0);
	assert_int_equal(d.ndisks, 2);
	assert_int_equal(d.disk[0].block_size, 65536);
	assert_true(d.disk[1].size == (1u << 20) + 512);
	assert_memory_equal(d.disk[1].identity, l.disk[1].identity, 16);

	/* Each rule of a disk entry. */
	l = with_disks();
	l.disk[1].id = 0;
	pm_encode_layout(b, &l);
	assert_rejected(pm_decode_layout(b, len, &d, &e), e, "disk 1 has id 0");
	l = with_disks();
	l.disk[0].block_size = 65536 + 4096;
	pm_encode_layout(b, &l);
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, len, &d, &e), e, "block size 69632");
	l.disk[0].block_size = 2048;
	pm_encode_layout(b, &l);
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, len, &d, &e), e, "block size 2048");
	l.disk[0].block_size = 2u << 20;
	pm_encode_layout(b, &l);
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, len, &d, &e), e, "a power of two, 4 KiB..1 MiB");
	l = with_disks();
	l.disk[0].size = 0;
	pm_encode_layout(b, &l);
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, len, &d, &e), e, "disk 0 has size 0");
	l.disk[0].size = 1000;
	pm_encode_layout(b, &l);
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, len, &d, &e), e, "multiple of 512");
	l.disk[0].size = (1ull << 50) + 512;
	pm_encode_layout(b, &l);
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, len, &d, &e), e, "up to 1 PiB");
	l = with_disks();
	pm_encode_layout(b, &l);
	pm_put32(b + 8 + 2 * 24 + 36, 1);
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, len, &d, &e), e, "disk 0 reserved");
	/* The count and the length must agree; at most 16 disks. */
	pm_encode_layout(b, &l);
	pm_put32(b + 4, 1);
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, len, &d, &e), e, "2 regions and 1 disks has length 136, expected 96");
	pm_put32(b + 4, 17);
	pm_err_clear(&e);
	assert_rejected(pm_decode_layout(b, len, &d, &e), e, "17 disks (at most 16)");

	/* Destination against source. */
	struct pm_layout s = with_disks(), t = with_disks();
	pm_err_clear(&e);
	assert_int_equal(pm_layout_check(&s, &t, &e), 0);
	t.ndisks = 1;
	assert_rejected(pm_layout_check(&s, &t, &e), e, "source has 2 disks, destination has 1");
	t = with_disks();
	t.disk[0].size = 2u << 20;
	pm_err_clear(&e);
	assert_rejected(pm_layout_check(&s, &t, &e), e,
			"disk 0: source has 4194304 bytes, destination has 2097152 (destination disk is smaller)");
	t = with_disks();
	t.disk[1].block_size = 8192;
	pm_err_clear(&e);
	assert_rejected(pm_layout_check(&s, &t, &e), e, "disk 1: source tracks 4096-byte blocks, destination 8192");
}

static int decode_blocks_of(const struct pm_pages *p, uint32_t body_len, const struct pm_layout *l,
			    unsigned chunk, struct pm_pages *out, struct pm_err *e)
{
	uint8_t b[PM_BLOCKS_FIXED_LEN];

	pm_encode_pages(b, p);
	pm_err_clear(e);
	return pm_decode_blocks(b, body_len, l, chunk, out, e);
}

static void test_blocks(void **state)
{
	struct pm_layout l = with_disks();
	struct pm_pages p, d;
	struct pm_err e = { 0 };

	/* Helpers: chunk blocks, block counts, run bytes with a short last block. */
	assert_int_equal(pm_disk_chunk_blocks(65536, 512), 32);
	assert_int_equal(pm_disk_chunk_blocks(4096, 512), 512);
	assert_int_equal(pm_disk_chunk_blocks(1 << 20, 64), 1);
	assert_true(pm_disk_nblocks((1u << 20) + 512, 4096) == 257);
	assert_true(pm_disk_run_bytes((1u << 20) + 512, 4096, 255, 2) == 4096 + 512);
	assert_true(pm_disk_run_bytes(4u << 20, 65536, 63, 1) == 65536);
	assert_true(pm_disk_run_bytes(4u << 20, 65536, 64, 1) == 0);

	/* A raw run of disk 0, then the short last block of disk 1. */
	p = (struct pm_pages){ .region = 0, .npages = 32, .first = 32, .round = 2, .encoding = PM_ENC_RAW,
			       .payload_len = 32 * 65536 };
	assert_int_equal(decode_blocks_of(&p, 32 + 32 * 65536, &l, 512, &d, &e), 0);
	assert_true(d.first == 32 && d.npages == 32 && d.round == 2 && d.region == 0);
	p = (struct pm_pages){ .region = 1, .npages = 2, .first = 255, .round = 1, .encoding = PM_ENC_RAW,
			       .payload_len = 4096 + 512 };
	assert_int_equal(decode_blocks_of(&p, 32 + 4096 + 512, &l, 512, &d, &e), 0);
	p.payload_len = 2 * 4096;
	assert_rejected(decode_blocks_of(&p, 32 + 2 * 4096, &l, 512, &d, &e), e,
			"raw BLOCKS frame of 2 blocks carries 8192 bytes, not 4608");
	/* Zero and unallocated runs carry nothing. */
	p = (struct pm_pages){ .region = 0, .npages = 5, .first = 0, .round = 1, .encoding = PM_ENC_UNALLOCATED };
	assert_int_equal(decode_blocks_of(&p, 32, &l, 512, &d, &e), 0);
	p.encoding = PM_ENC_ZERO;
	assert_int_equal(decode_blocks_of(&p, 32, &l, 512, &d, &e), 0);
	p.payload_len = 1;
	assert_rejected(decode_blocks_of(&p, 33, &l, 512, &d, &e), e, "zero BLOCKS frame carries 1 bytes");
	p.encoding = PM_ENC_UNALLOCATED;
	assert_rejected(decode_blocks_of(&p, 33, &l, 512, &d, &e), e, "unallocated BLOCKS frame carries");
	/* Compressed: 1 .. the raw size (larger goes raw). */
	p = (struct pm_pages){ .region = 0, .npages = 2, .first = 0, .round = 1, .encoding = PM_ENC_LZ4,
			       .payload_len = 1000 };
	assert_int_equal(decode_blocks_of(&p, 1032, &l, 512, &d, &e), 0);
	p.payload_len = 2 * 65536 + 1;
	assert_rejected(decode_blocks_of(&p, 32 + 2 * 65536 + 1, &l, 512, &d, &e), e, "larger goes raw");
	p.payload_len = 0;
	assert_rejected(decode_blocks_of(&p, 32, &l, 512, &d, &e), e, "compressed BLOCKS frame");
	/* Disk, count, range, round, length, encoding, reserved. */
	p = (struct pm_pages){ .region = 2, .npages = 1, .first = 0, .round = 1, .encoding = PM_ENC_ZERO };
	assert_rejected(decode_blocks_of(&p, 32, &l, 512, &d, &e), e, "names disk 2, the layout has 2");
	p.region = 0;
	p.npages = 33;
	assert_rejected(decode_blocks_of(&p, 32, &l, 512, &d, &e), e, "covers 33 blocks (1..32 allowed)");
	p.npages = 0;
	assert_rejected(decode_blocks_of(&p, 32, &l, 512, &d, &e), e, "covers 0 blocks");
	p.npages = 2;
	p.first = 63;
	assert_rejected(decode_blocks_of(&p, 32, &l, 512, &d, &e), e, "[63, +2) is outside disk 0 of 64 blocks");
	p.first = ~0ull;
	assert_rejected(decode_blocks_of(&p, 32, &l, 512, &d, &e), e, "outside disk 0");
	p.first = 0;
	p.round = 0;
	assert_rejected(decode_blocks_of(&p, 32, &l, 512, &d, &e), e, "round 0");
	p.round = 1;
	assert_rejected(decode_blocks_of(&p, 40, &l, 512, &d, &e), e, "does not match frame length 40");
	p.encoding = 9;
	assert_rejected(decode_blocks_of(&p, 32, &l, 512, &d, &e), e, "unknown encoding 9");
	uint8_t b[PM_BLOCKS_FIXED_LEN];
	p.encoding = PM_ENC_ZERO;
	pm_encode_pages(b, &p);
	pm_put16(b + 22, 1);
	pm_err_clear(&e);
	assert_rejected(pm_decode_blocks(b, 32, &l, 512, &d, &e), e, "reserved");
	/* A layout without disks takes no BLOCKS at all. */
	struct pm_layout nodisk = two_regions();
	assert_rejected(decode_blocks_of(&p, 32, &nodisk, 512, &d, &e), e, "the layout has 0");
}

/* ---------------------------------------------------------------- PAGES */

static struct pm_pages good_pages(void)
{
	return (struct pm_pages){ .region = 1, .npages = 4, .first = 10, .round = 3,
				  .encoding = PM_ENC_RAW, .payload_len = 4 * PM_PAGE_SIZE };
}

static void test_pages_roundtrip(void **state)
{
	struct pm_layout l = two_regions();
	struct pm_pages p = good_pages(), d;
	struct pm_err e = { 0 };
	uint8_t b[PM_PAGES_FIXED_LEN];

	memset(b, 0xee, sizeof(b));
	pm_encode_pages(b, &p);
	assert_int_equal(pm_get32(b), 1);
	assert_int_equal(pm_get32(b + 4), 4);
	assert_true(pm_get64(b + 8) == 10);
	assert_int_equal(pm_get32(b + 16), 3);
	assert_int_equal(pm_get16(b + 20), PM_ENC_RAW);
	assert_int_equal(pm_get16(b + 22), 0);
	assert_int_equal(pm_get32(b + 24), 4 * PM_PAGE_SIZE);
	assert_int_equal(pm_get32(b + 28), 0);
	assert_int_equal(pm_decode_pages(b, 32 + 4 * PM_PAGE_SIZE, &l, 512, &d, &e), 0);
	assert_int_equal(d.region, p.region);
	assert_int_equal(d.npages, p.npages);
	assert_true(d.first == p.first);
	assert_int_equal(d.round, p.round);
	assert_int_equal(d.encoding, p.encoding);
	assert_int_equal(d.payload_len, p.payload_len);

	/* Zero run, no payload. */
	p = (struct pm_pages){ .region = 0, .npages = 512, .first = 0, .round = 1, .encoding = PM_ENC_ZERO };
	assert_int_equal(decode_pages_of(&p, 32, &l, 512, &d, &e), 0);
	assert_int_equal(d.encoding, PM_ENC_ZERO);
	/* Unpopulated run, no payload. */
	p.encoding = PM_ENC_UNPOPULATED;
	assert_int_equal(decode_pages_of(&p, 32, &l, 512, &d, &e), 0);
	assert_int_equal(d.encoding, PM_ENC_UNPOPULATED);
	/* The very last page of a region. */
	p = (struct pm_pages){ .region = 1, .npages = 1, .first = 299, .round = 0xffffffffu,
			       .encoding = PM_ENC_RAW, .payload_len = PM_PAGE_SIZE };
	assert_int_equal(decode_pages_of(&p, 32 + PM_PAGE_SIZE, &l, 512, &d, &e), 0);
	/* Compressed: 1 .. raw + raw/64 + 1024 bytes. */
	for (unsigned enc = PM_ENC_LZ4; enc <= PM_ENC_ZSTD; enc++) {
		uint32_t raw = 8 * PM_PAGE_SIZE, hi = raw + raw / 64 + 1024;
		p = (struct pm_pages){ .region = 0, .npages = 8, .first = 992, .round = 2,
				       .encoding = enc, .payload_len = 1 };
		assert_int_equal(decode_pages_of(&p, 33, &l, 8, &d, &e), 0);
		p.payload_len = hi;
		assert_int_equal(decode_pages_of(&p, 32 + hi, &l, 8, &d, &e), 0);
		assert_int_equal(d.encoding, enc);
	}
}

static void test_pages_rejects(void **state)
{
	struct pm_layout l = two_regions();
	struct pm_pages p, d;
	struct pm_err e = { 0 };
	uint8_t b[PM_PAGES_FIXED_LEN];
	uint32_t body;

#define REJECT(mutate, needle)                                                    \
	do {                                                                      \
		p = good_pages();                                                 \
		body = 0;                                                         \
		mutate;                                                           \
		if (!body)                                                        \
			body = PM_PAGES_FIXED_LEN + p.payload_len;                \
		pm_err_clear(&e);                                                 \
		assert_rejected(decode_pages_of(&p, body, &l, 512, &d, &e), e, needle); \
		assert_int_equal(e.code, EPROTO);                                 \
	} while (0)

	/* Region out of range. */
	REJECT(p.region = 2, "names region 2, the layout has 2");
	REJECT(p.region = 0xffffffffu, "names region");
	/* first / npages beyond the region. */
	REJECT(p.first = 300, "[300, +4) is outside region 1 of 300 pages");
	REJECT(p.first = 297, "[297, +4) is outside region 1");
	REJECT(p.first = UINT64_MAX, "outside region");
	REJECT(p.first = UINT64_MAX - 2, "outside region");
	REJECT((p.region = 0, p.first = 1000, p.npages = 1, p.payload_len = PM_PAGE_SIZE), "outside region 0 of 1000 pages");
	/* npages 0 or above the chunk. */
	REJECT((p.npages = 0, p.payload_len = 0), "covers 0 pages (1..512 allowed)");
	REJECT((p.npages = 513, p.region = 0, p.first = 0, p.payload_len = 513 * PM_PAGE_SIZE), "covers 513 pages");
	/* Round 0. */
	REJECT(p.round = 0, "round 0");
	/* Body length does not match the payload length. */
	REJECT(body = PM_PAGES_FIXED_LEN + p.payload_len - 1, "does not match frame length");
	REJECT(body = PM_PAGES_FIXED_LEN + p.payload_len + 1, "does not match");
	REJECT(body = PM_PAGES_FIXED_LEN, "payload length 16384 does not match frame length 32");
	REJECT(p.payload_len = 0xffffffffu, "does not match");
	/* Raw payload must be npages * 4096. */
	REJECT(p.payload_len = 3 * PM_PAGE_SIZE, "raw PAGES frame of 4 pages carries 12288 bytes");
	REJECT(p.payload_len = 5 * PM_PAGE_SIZE, "raw PAGES frame");
	REJECT(p.payload_len = 0, "raw PAGES frame of 4 pages carries 0 bytes");
	/* Zero run with payload. */
	REJECT((p.encoding = PM_ENC_ZERO, p.payload_len = 1), "zero PAGES frame carries 1 bytes");
	REJECT((p.encoding = PM_ENC_ZERO), "zero PAGES frame carries 16384 bytes");
	/* Unpopulated run with payload. */
	REJECT((p.encoding = PM_ENC_UNPOPULATED, p.payload_len = 1), "unpopulated PAGES frame carries 1 bytes");
	REJECT((p.encoding = PM_ENC_UNPOPULATED), "unpopulated PAGES frame carries 16384 bytes");
	/* Compressed payload bounds. */
	REJECT((p.encoding = PM_ENC_LZ4, p.payload_len = 0), "compressed PAGES frame of 4 pages has payload 0");
	REJECT((p.encoding = PM_ENC_ZSTD, p.payload_len = 0), "out of range");
	REJECT((p.encoding = PM_ENC_LZ4, p.payload_len = 4 * 4096 + 4 * 4096 / 64 + 1025), "has payload");
	REJECT((p.encoding = PM_ENC_ZSTD, p.payload_len = 4 * 4096 + 4 * 4096 / 64 + 1025), "has payload");
	/* Unknown encoding. */
	REJECT(p.encoding = 5, "unknown encoding 5");
	REJECT(p.encoding = 0xffff, "unknown encoding 65535");
#undef REJECT

	/* Non-zero reserved fields (the encoder writes zero: poke the wire). */
	p = good_pages();
	pm_encode_pages(b, &p);
	pm_put16(b + 22, 1);
	pm_err_clear(&e);
	assert_rejected(pm_decode_pages(b, 32 + p.payload_len, &l, 512, &d, &e), e, "non-zero reserved");
	pm_encode_pages(b, &p);
	pm_put32(b + 28, 0x100);
	pm_err_clear(&e);
	assert_rejected(pm_decode_pages(b, 32 + p.payload_len, &l, 512, &d, &e), e, "reserved");

	/* npages bounded by the negotiated chunk, not only by 512. */
	p = good_pages();
	pm_err_clear(&e);
	assert_int_equal(decode_pages_of(&p, 32 + p.payload_len, &l, 4, &d, &e), 0);
	assert_rejected(decode_pages_of(&p, 32 + p.payload_len, &l, 3, &d, &e), e, "covers 4 pages (1..3 allowed)");
}

/* ------------------------------------------------------------------ END */

static void test_end_roundtrip(void **state)
{
	struct pm_end en = { .final_round = 7, .frames = 0x1122334455ull, .pages = 1ull << 40,
			     .payload_bytes = UINT64_MAX }, d;
	struct pm_err e = { 0 };
	uint8_t b[PM_END_FAILOVER_LEN];

	memset(b, 0xee, sizeof(b));
	assert_int_equal(pm_encode_end(b, &en, false), PM_END_LEN);
	assert_int_equal(pm_get32(b), 7);
	assert_int_equal(pm_get32(b + 4), 0);
	assert_true(pm_get64(b + 8) == en.frames);
	assert_true(pm_get64(b + 16) == en.pages);
	assert_true(pm_get64(b + 24) == en.payload_bytes);
	assert_int_equal(pm_decode_end(b, PM_END_LEN, &d, &e), 0);
	assert_int_equal(d.final_round, 7);
	assert_true(d.frames == en.frames);
	assert_true(d.pages == en.pages);
	assert_true(d.payload_bytes == en.payload_bytes);
	assert_true(d.lost == 0);
	/* An empty channel (no frames) is fine. */
	en = (struct pm_end){ .final_round = 1 };
	pm_encode_end(b, &en, false);
	assert_int_equal(pm_decode_end(b, PM_END_LEN, &d, &e), 0);
	/* FAILOVER: the mask of channels given up follows. */
	en = (struct pm_end){ .final_round = 9, .frames = 3, .lost = 1ull << 63 | 4 };
	assert_int_equal(pm_encode_end(b, &en, true), PM_END_FAILOVER_LEN);
	assert_true(pm_get64(b + 32) == en.lost);
	assert_int_equal(pm_decode_end(b, PM_END_FAILOVER_LEN, &d, &e), 0);
	assert_true(d.lost == en.lost);
	assert_int_equal(d.final_round, 9);
}

static void test_failover_frames(void **state)
{
	struct pm_err e = { 0 };
	uint8_t b[PM_LOST_FIXED_LEN + PM_MAX_ERROR_LEN];
	struct pm_lost l;
	char longmsg[600];

	assert_int_equal(check(PM_FR_ACK, PM_ACK_LEN, 512, &e), 0);
	assert_rejected(check(PM_FR_ACK, PM_ACK_LEN + 1, 512, &e), e, "ACK frame has length 9, expected 8");
	assert_int_equal(check(PM_FR_PING, 0, 512, &e), 0);
	assert_rejected(check(PM_FR_PING, 1, 512, &e), e, "PING frame has length 1");
	assert_int_equal(check(PM_FR_END, PM_END_FAILOVER_LEN, 512, &e), 0);
	assert_int_equal(check(PM_FR_LOST, PM_LOST_FIXED_LEN, 512, &e), 0);
	assert_rejected(check(PM_FR_LOST, PM_LOST_FIXED_LEN - 1, 512, &e), e, "LOST frame length 11 is out of range");
	assert_rejected(check(PM_FR_LOST, PM_LOST_FIXED_LEN + PM_MAX_ERROR_LEN + 1, 512, &e), e, "out of range");
	uint32_t n = pm_encode_lost(b, 5, 2, ETIMEDOUT, "receiving a frame: timed out\x01");
	assert_int_equal(pm_decode_lost(b, n, &l, &e), 0);
	assert_int_equal(l.channel, 5);
	assert_int_equal(l.generation, 2);
	assert_int_equal(l.code, ETIMEDOUT);
	assert_string_equal(l.msg, "receiving a frame: timed out\\x01");
	/* A message length that disagrees with the frame is refused. */
	pm_err_clear(&e);
	assert_rejected(pm_decode_lost(b, n - 1, &l, &e), e, "does not match");
	memset(longmsg, 'x', sizeof(longmsg) - 1);
	longmsg[sizeof(longmsg) - 1] = '\0';
	n = pm_encode_lost(b, 0, 0, EIO, longmsg);
	assert_int_equal(n, PM_LOST_FIXED_LEN + PM_MAX_ERROR_LEN);
	assert_int_equal(pm_decode_lost(b, n, &l, &e), 0);
	assert_int_equal(strlen(l.msg), PM_MAX_ERROR_LEN);
}

static void test_end_rejects(void **state)
{
	struct pm_end en = { .final_round = 2, .frames = 1, .pages = 1, .payload_bytes = 4096 }, d;
	struct pm_err e = { 0 };
	uint8_t b[PM_END_FAILOVER_LEN + 1];

	pm_encode_end(b, &en, false);
	pm_put32(b + 4, 1);
	assert_rejected(pm_decode_end(b, PM_END_LEN, &d, &e), e, "END reserved field is not zero");
	en.final_round = 0;
	pm_encode_end(b, &en, false);
	pm_err_clear(&e);
	assert_rejected(pm_decode_end(b, PM_END_LEN, &d, &e), e, "final round 0");
	en.final_round = 2;
	pm_encode_end(b, &en, false);
	pm_err_clear(&e);
	assert_rejected(pm_decode_end(b, PM_END_LEN - 1, &d, &e), e, "END has length 31, expected 32");
	pm_err_clear(&e);
	assert_rejected(pm_decode_end(b, PM_END_LEN + 1, &d, &e), e, "expected 32 or 40");
}

/* pm_err_set keeps the first error. */
static void test_err_first_wins(void **state)
{
	struct pm_err e = { 0 };

	assert_int_equal(pm_err_set(&e, EPROTO, "first"), -EPROTO);
	assert_int_equal(pm_err_set(&e, EINVAL, "second"), -EPROTO);
	assert_string_equal(e.msg, "first");
	assert_int_equal(pm_err_reset(&e, -EINVAL, "third %d", 3), -EINVAL);
	assert_string_equal(e.msg, "third 3");
	assert_int_equal(e.code, EINVAL);
	assert_int_equal(pm_err_set(NULL, ENOMEM, "x"), -ENOMEM);
	pm_err_clear(&e);
	assert_int_equal(e.code, 0);
	assert_string_equal(e.msg, "");
}

/* Peer text (ERROR frames) is escaped before anyone prints it. */
static void test_error_text_escaped(void **state)
{
	uint8_t b[PM_ERROR_FIXED_LEN + PM_MAX_ERROR_LEN];
	const char evil[] = "\x1b[2J\x1b]0;owned\x07line\nnext\\ \xff ok";
	char msg[PM_ERROR_MSG_CAP];

	(void)state;
	pm_put32(b, 71);
	pm_put32(b + 4, sizeof(evil) - 1);
	memcpy(b + PM_ERROR_FIXED_LEN, evil, sizeof(evil) - 1);
	assert_int_equal(pm_decode_error(b, PM_ERROR_FIXED_LEN + sizeof(evil) - 1, msg, sizeof(msg)), 71);
	assert_string_equal(msg, "\\x1b[2J\\x1b]0;owned\\x07line\\x0anext\\\\ \\xff ok");
	/* A length beyond the body is cut to the body. */
	pm_put32(b + 4, 1000);
	pm_decode_error(b, PM_ERROR_FIXED_LEN + 4, msg, sizeof(msg));
	assert_string_equal(msg, "\\x1b[2J");
	/* The worst case fits PM_ERROR_MSG_CAP; a small buffer is cut cleanly. */
	memset(b + PM_ERROR_FIXED_LEN, 0x01, PM_MAX_ERROR_LEN);
	pm_put32(b + 4, PM_MAX_ERROR_LEN);
	pm_decode_error(b, sizeof(b), msg, sizeof(msg));
	assert_int_equal(strlen(msg), 4 * PM_MAX_ERROR_LEN);
	char small[7];
	pm_escape_text("\x01\x02", 2, small, sizeof(small));
	assert_string_equal(small, "\\x01");
	/* Embedded NULs do not end the text early. */
	pm_escape_text("a\0b", 3, small, sizeof(small));
	assert_string_equal(small, "a\\x00b");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_le_helpers),
		cmocka_unit_test(test_hdr_roundtrip),
		cmocka_unit_test(test_done_roundtrip),
		cmocka_unit_test(test_frame_names),
		cmocka_unit_test(test_check_hdr_exact),
		cmocka_unit_test(test_check_hdr_ranges),
		cmocka_unit_test(test_check_hdr_unknown),
		cmocka_unit_test(test_hello_roundtrip),
		cmocka_unit_test(test_hello_encode_zeroes_reserved),
		cmocka_unit_test(test_hello_rejects),
		cmocka_unit_test(test_layout_roundtrip),
		cmocka_unit_test(test_layout_rejects),
		cmocka_unit_test(test_layout_reserved),
		cmocka_unit_test(test_layout_check),
		cmocka_unit_test(test_layout_of_backend),
		cmocka_unit_test(test_layout_disks),
		cmocka_unit_test(test_blocks),
		cmocka_unit_test(test_pages_roundtrip),
		cmocka_unit_test(test_pages_rejects),
		cmocka_unit_test(test_end_roundtrip),
		cmocka_unit_test(test_end_rejects),
		cmocka_unit_test(test_failover_frames),
		cmocka_unit_test(test_err_first_wins),
		cmocka_unit_test(test_error_text_escaped),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
