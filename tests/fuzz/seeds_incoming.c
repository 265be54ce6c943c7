/* SPDX-License-Identifier: MIT */
/* Seeds for fuzz/fuzz_incoming.c: whole migrations as a source would send
 * them, made with the wire encoders (src/engine/protocol.c) and pmvm's
 * state encoder -- one channel, and two channels in barrier mode with the
 * frames interleaved.  Both must complete: every page arrives, the state
 * loads, the VM resumes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "engine/protocol.h"
#include "pmvm/state.h"
#include "seed_vmstate.h"
#include "../../fuzz/fuzz_targets.h"
#include "seeds.h"

struct buf {
	uint8_t *p;
	size_t len, cap;
};

static void put(struct buf *b, const void *d, size_t n)
{
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2 + 256;
		if (!(b->p = realloc(b->p, b->cap)))
			abort();
	}
	memcpy(b->p + b->len, d, n);
	b->len += n;
}

/* One frame on channel ch of the input, as chunks of at most 65535 bytes. */
static void frame(struct buf *in, unsigned ch, uint32_t type, const void *body, uint32_t len)
{
	struct buf f = { 0 };
	uint8_t h[PM_FRAME_HDR_LEN];

	pm_encode_hdr(h, type, len);
	put(&f, h, sizeof(h));
	if (len)
		put(&f, body, len);
	for (size_t off = 0; off < f.len;) {
		size_t n = f.len - off > 65535 ? 65535 : f.len - off;
		uint8_t c[3] = { ch, n & 0xff, n >> 8 };
		put(in, c, 3);
		put(in, f.p + off, n);
		off += n;
	}
	free(f.p);
}

static void hello(struct buf *in, unsigned ch, unsigned nch, uint32_t features)
{
	struct pm_hello h = { .magic = PM_PROTO_MAGIC, .version = PM_PROTO_VERSION, .channel = ch,
			      .nchannels = nch, .features = features, .chunk_pages = 64, .page_size = PM_PAGE_SIZE };
	uint8_t b[PM_HELLO_LEN];

	memset(h.session, 0x5e, 16);
	pm_encode_hello(b, &h);
	frame(in, ch, PM_FR_HELLO, b, sizeof(b));
}

static void layout_of(struct buf *in, unsigned ndisks)
{
	struct pm_layout l = { .nregions = 2, .ndisks = ndisks };
	uint8_t *b;

	l.region[0].id = 0, l.region[0].gpa = 0, l.region[0].npages = FUZZ_IN_REGION0_PAGES;
	l.region[1].id = 1, l.region[1].gpa = FUZZ_IN_REGION1_GPA, l.region[1].npages = FUZZ_IN_REGION1_PAGES;
	if (ndisks) {
		l.disk[0].id = 0, l.disk[0].block_size = FUZZ_IN_DISK_BLOCK, l.disk[0].size = FUZZ_IN_DISK_BYTES;
		memset(l.disk[0].identity, 0xd1, sizeof(l.disk[0].identity));
	}
	b = calloc(1, pm_layout_len(&l));
	pm_encode_layout(b, &l);
	frame(in, 0, PM_FR_LAYOUT, b, pm_layout_len(&l));
	free(b);
}

static void layout(struct buf *in)
{
	layout_of(in, 0);
}

/* The bytes of block k of the disk as round r sends them. */
static uint8_t block_byte(uint64_t k, uint32_t r, uint64_t i)
{
	return (uint8_t)(k * 31 + r * 17 + i % 251 + 1);
}

/* A run of blocks of the disk; raw runs carry bytes that name block and round. */
static void blocks(struct buf *in, unsigned ch, struct pm_end *cnt, uint64_t first, uint32_t n,
		   uint32_t round, uint16_t enc)
{
	uint64_t bytes = pm_disk_run_bytes(FUZZ_IN_DISK_BYTES, FUZZ_IN_DISK_BLOCK, first, n);
	struct pm_pages pg = { .region = 0, .npages = n, .first = first, .round = round, .encoding = enc,
			       .payload_len = enc == PM_ENC_RAW ? (uint32_t)bytes : 0 };
	uint8_t *b = calloc(1, PM_BLOCKS_FIXED_LEN + pg.payload_len);

	pm_encode_pages(b, &pg);
	for (uint32_t i = 0; i < pg.payload_len; i++)
		b[PM_BLOCKS_FIXED_LEN + i] = block_byte(first + i / FUZZ_IN_DISK_BLOCK, round, i % FUZZ_IN_DISK_BLOCK);
	frame(in, ch, PM_FR_BLOCKS, b, PM_BLOCKS_FIXED_LEN + pg.payload_len);
	free(b);
	cnt->frames++;
	cnt->pages += n;
	cnt->payload_bytes += pg.payload_len;
}

/* A run of pages; raw runs carry bytes that name the page. */
static void pages(struct buf *in, unsigned ch, struct pm_end *cnt, uint32_t region, uint64_t first,
		  uint32_t n, uint32_t round, uint16_t enc)
{
	struct pm_pages pg = { .region = region, .npages = n, .first = first, .round = round, .encoding = enc,
			       .payload_len = enc == PM_ENC_RAW ? n * PM_PAGE_SIZE : 0 };
	uint8_t *b = calloc(1, PM_PAGES_FIXED_LEN + pg.payload_len);

	pm_encode_pages(b, &pg);
	for (uint32_t i = 0; i < pg.payload_len; i++)
		b[PM_PAGES_FIXED_LEN + i] = (uint8_t)(first + i / PM_PAGE_SIZE + region * 7 + i);
	frame(in, ch, PM_FR_PAGES, b, PM_PAGES_FIXED_LEN + pg.payload_len);
	free(b);
	cnt->frames++;
	cnt->pages += n;
	cnt->payload_bytes += pg.payload_len;
}

static void state(struct buf *in, unsigned nvcpus)
{
	struct pmvm_vm_state st = { 0 };
	struct pm_err e = { 0 };
	void *blob;
	size_t len;

	seed_vm_state(&st, nvcpus, (FUZZ_IN_REGION0_PAGES + FUZZ_IN_REGION1_PAGES) * PM_PAGE_SIZE);
	if (pmvm_state_encode(&st, &blob, &len, &e))
		fail_msg("state: %s", e.msg);
	frame(in, 0, PM_FR_STATE, blob, len);
	free(blob);
	pmvm_state_free(&st);
}

static void end(struct buf *in, unsigned ch, struct pm_end *cnt, uint32_t final)
{
	uint8_t b[PM_END_FAILOVER_LEN];

	cnt->final_round = final;
	frame(in, ch, PM_FR_END, b, pm_encode_end(b, cnt, false));
}

size_t fuzz_make_seeds(struct seed *s, size_t max)
{
	struct buf a = { 0 }, b = { 0 };
	struct pm_end c0 = { 0 }, c1 = { 0 };
	uint8_t r[PM_ROUND_LEN] = { 1 };

	/* One channel: zero pages everywhere, then raw pages of round 2. */
	put(&a, (uint8_t[]){ 0 }, 1);
	hello(&a, 0, 1, 0);
	layout(&a);
	pages(&a, 0, &c0, 0, 0, 64, 1, PM_ENC_ZERO);
	pages(&a, 0, &c0, 1, 0, 16, 1, PM_ENC_ZERO);
	pages(&a, 0, &c0, 0, 5, 3, 2, PM_ENC_RAW);
	pages(&a, 0, &c0, 1, 15, 1, 2, PM_ENC_RAW);
	state(&a, 1);
	end(&a, 0, &c0, 2);
	s[0] = (struct seed){ "one-channel", a.p, a.len };

	/* Two channels, barrier mode, frames interleaved. */
	memset(&c0, 0, sizeof(c0));
	put(&b, (uint8_t[]){ 1 }, 1);
	hello(&b, 1, 2, PM_FEAT_BARRIER);
	hello(&b, 0, 2, PM_FEAT_BARRIER);
	layout(&b);
	pages(&b, 1, &c1, 1, 0, 16, 1, PM_ENC_RAW);
	pages(&b, 0, &c0, 0, 0, 64, 1, PM_ENC_ZERO);
	frame(&b, 0, PM_FR_ROUND_END, r, sizeof(r));
	frame(&b, 1, PM_FR_ROUND_END, r, sizeof(r));
	pages(&b, 0, &c0, 1, 3, 2, 2, PM_ENC_RAW);
	pages(&b, 1, &c1, 0, 60, 4, 2, PM_ENC_RAW);
	state(&b, 2);
	end(&b, 1, &c1, 2);
	end(&b, 0, &c0, 2);
	s[1] = (struct seed){ "two-channels-barrier", b.p, b.len };

	/* A disk beside memory, two channels, no barrier: block 0 raw; block 1
	 * raw in round 1 then zero in round 2 (a hole); the partial block 2 in
	 * round 2 on channel 1, then its round 1 late on channel 0 (dropped by
	 * the round rule). */
	struct buf d = { 0 };
	memset(&c0, 0, sizeof(c0));
	memset(&c1, 0, sizeof(c1));
	put(&d, (uint8_t[]){ 1 | FUZZ_IN_DISK }, 1);
	hello(&d, 0, 2, PM_FEAT_DISKS);
	hello(&d, 1, 2, PM_FEAT_DISKS);
	layout_of(&d, 1);
	pages(&d, 0, &c0, 0, 0, 64, 1, PM_ENC_ZERO);
	blocks(&d, 1, &c1, 0, 2, 1, PM_ENC_RAW);
	pages(&d, 1, &c1, 1, 0, 16, 1, PM_ENC_RAW);
	blocks(&d, 1, &c1, 2, 1, 2, PM_ENC_RAW);
	blocks(&d, 0, &c0, 1, 1, 2, PM_ENC_ZERO);
	blocks(&d, 0, &c0, 2, 1, 1, PM_ENC_RAW);
	state(&d, 1);
	end(&d, 0, &c0, 2);
	end(&d, 1, &c1, 2);
	s[2] = (struct seed){ "disk-two-channels", d.p, d.len };
	return max < 3 ? max : 3;
}

void fuzz_check_seed(const struct seed *s)
{
	if (fuzz_incoming_last.rc || fuzz_incoming_last.resumes != 1 || fuzz_incoming_last.loads != 1)
		fail_msg("seed %s: rc %d (%s), %u loads, %u resumes (a valid migration must complete)", s->name,
			 fuzz_incoming_last.rc, fuzz_incoming_last.msg, fuzz_incoming_last.loads, fuzz_incoming_last.resumes);
	assert_true(fuzz_incoming_last.pages >= FUZZ_IN_REGION0_PAGES + FUZZ_IN_REGION1_PAGES);
	if (strncmp(s->name, "disk", 4))
		return;
	/* Block 0 of round 1, block 1 a hole, block 2 of round 2 (not the late round 1). */
	const uint8_t *img = fuzz_incoming_last.disk;
	for (uint64_t i = 0; i < FUZZ_IN_DISK_BYTES; i++) {
		uint64_t k = i / FUZZ_IN_DISK_BLOCK, o = i % FUZZ_IN_DISK_BLOCK;
		uint8_t want = k == 1 ? 0 : block_byte(k, k == 0 ? 1 : 2, o);
		if (img[i] != want)
			fail_msg("seed %s: disk byte %llu (block %llu) is %u, not %u", s->name,
				 (unsigned long long)i, (unsigned long long)k, img[i], want);
	}
	/* The hole stayed a hole: at most blocks 0 and 2 allocated. */
	if (fuzz_incoming_last.disk_allocated > FUZZ_IN_DISK_BLOCK + 12288)
		fail_msg("seed %s: %llu bytes allocated for %u of data", s->name,
			 (unsigned long long)fuzz_incoming_last.disk_allocated, FUZZ_IN_DISK_BLOCK + 8704);
}
