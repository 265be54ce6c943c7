/* SPDX-License-Identifier: MIT */
/* libFuzzer target: the destination's frame decoding on arbitrary bytes.
 *
 * The input is what a source would send on a channel.  The target walks it
 * frame by frame the way src/engine/dest.c does: header, pm_check_hdr()
 * with the negotiated chunk size, then per type pm_decode_hello(),
 * pm_decode_layout() + pm_layout_check(), pm_decode_pages() against the
 * destination's own layout (and the round limit), pm_decode_end(), the
 * ERROR message clipping.  Page runs that pass validation are applied to a
 * small guest memory whose regions are separate heap blocks of their exact
 * size, with the per-page round rule, decompressing lz4/zstd runs into a
 * buffer of exactly the run's size -- so a validation gap shows up as an
 * out-of-bounds access under AddressSanitizer.
 *
 * Built by fuzz/meson.build with clang (-Dfuzz=true); the same entry point
 * runs in the normal test suite through tests/engine/test_fuzz_replay.c. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pmigrate/migrate.h>
#include "engine/codec.h"
#include "engine/protocol.h"
#include "fuzz_frames.h"

/* The destination's guest: two regions, the second one small and high. */
static const uint64_t fz_npages[FUZZ_NREGIONS] = { FUZZ_REGION0_PAGES, FUZZ_REGION1_PAGES };
static const uint64_t fz_gpa[FUZZ_NREGIONS] = { 0, FUZZ_REGION1_GPA };

struct fuzz_frames_result fuzz_frames_last;
static uint8_t *fz_mem[FUZZ_NREGIONS];
static uint32_t fz_round[FUZZ_REGION0_PAGES + FUZZ_REGION1_PAGES];
static struct pm_codec *fz_codec;
static uint8_t *fz_disk;                /* exactly FUZZ_DISK_BYTES */
static uint32_t fz_block_round[FUZZ_DISK_BLOCKS];

uint8_t *fuzz_frames_disk(void)
{
	return fz_disk;
}

uint8_t *fuzz_frames_memory(unsigned region)
{
	return region < FUZZ_NREGIONS ? fz_mem[region] : NULL;
}

static void fz_init(void)
{
	if (fz_codec)
		return;
	for (unsigned i = 0; i < FUZZ_NREGIONS; i++) {
		fz_mem[i] = malloc(fz_npages[i] * PM_PAGE_SIZE);
		if (!fz_mem[i])
			abort();
	}
	fz_disk = malloc(FUZZ_DISK_BYTES);
	if (!fz_disk || pm_codec_new(&fz_codec, PM_COMPRESS_ZSTD, 0))
		abort();
}

static void fz_layout(struct pm_layout *l)
{
	memset(l, 0, sizeof(*l));
	l->nregions = FUZZ_NREGIONS;
	for (unsigned i = 0; i < FUZZ_NREGIONS; i++) {
		l->region[i].id = i;
		l->region[i].gpa = fz_gpa[i];
		l->region[i].npages = fz_npages[i];
	}
	l->ndisks = 1;
	l->disk[0].block_size = FUZZ_DISK_BLOCK;
	l->disk[0].size = FUZZ_DISK_BYTES;
}

/* Applies a validated BLOCKS run like disk_recv.c: the round rule per
 * block, bytes clipped at the disk's size, zero/unallocated as zeros. */
static int fz_apply_blocks(const struct pm_pages *pg, const uint8_t *payload)
{
	size_t raw = pm_disk_run_bytes(FUZZ_DISK_BYTES, FUZZ_DISK_BLOCK, pg->first, pg->npages);
	uint8_t *run = NULL;
	const uint8_t *src = payload;

	if (pg->encoding == PM_ENC_LZ4 || pg->encoding == PM_ENC_ZSTD) {
		run = malloc(raw ? raw : 1);
		if (!run)
			abort();
		if (pm_codec_decompress(fz_codec, pg->encoding, payload, pg->payload_len, run, raw)) {
			free(run);
			return -1;
		}
		src = run;
	}
	for (uint32_t k = 0; k < pg->npages; k++) {
		uint64_t b = pg->first + k;
		size_t len = pm_disk_run_bytes(FUZZ_DISK_BYTES, FUZZ_DISK_BLOCK, b, 1);
		if (fz_block_round[b] >= pg->round) {
			fuzz_frames_last.stale_blocks++;
			continue;
		}
		if (pg->encoding == PM_ENC_ZERO || pg->encoding == PM_ENC_UNALLOCATED)
			memset(fz_disk + b * FUZZ_DISK_BLOCK, 0, len);
		else
			memcpy(fz_disk + b * FUZZ_DISK_BLOCK, src + (size_t)k * FUZZ_DISK_BLOCK, len);
		fz_block_round[b] = pg->round;
		fuzz_frames_last.blocks_applied++;
	}
	free(run);
	return 0;
}

/* Applies a validated run like dest.c's apply_pages(); payload has exactly
 * payload_len bytes. */
static int fz_apply(const struct pm_pages *pg, const uint8_t *payload)
{
	uint8_t *host = fz_mem[pg->region] + pg->first * PM_PAGE_SIZE;
	uint64_t g = (pg->region ? fz_npages[0] : 0) + pg->first;
	size_t raw = (size_t)pg->npages * PM_PAGE_SIZE;
	uint8_t *run = NULL;

	if (pg->encoding == PM_ENC_LZ4 || pg->encoding == PM_ENC_ZSTD) {
		run = malloc(raw);
		if (!run)
			abort();
		if (pm_codec_decompress(fz_codec, pg->encoding, payload, pg->payload_len, run, raw)) {
			free(run);
			return -1;
		}
	}
	for (uint32_t k = 0; k < pg->npages; k++) {
		uint8_t *dst = host + (size_t)k * PM_PAGE_SIZE;
		if (fz_round[g + k] >= pg->round) {
			fuzz_frames_last.stale_pages++;
			continue;
		}
		switch (pg->encoding) {
		case PM_ENC_RAW:
			memcpy(dst, payload + (size_t)k * PM_PAGE_SIZE, PM_PAGE_SIZE);
			break;
		case PM_ENC_ZERO:
		case PM_ENC_UNPOPULATED:        /* never written: reads as zeros (recv.c) */
			memset(dst, 0, PM_PAGE_SIZE);
			break;
		default:
			memcpy(dst, run + (size_t)k * PM_PAGE_SIZE, PM_PAGE_SIZE);
		}
		fz_round[g + k] = pg->round;
		fuzz_frames_last.pages_applied++;
	}
	free(run);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pm_layout mine, theirs;
	unsigned chunk_pages = PM_MAX_CHUNK_PAGES;
	bool have_hello = false;
	size_t pos = 0;

	fz_init();
	fz_layout(&mine);
	memset(fz_round, 0, sizeof(fz_round));
	memset(fz_block_round, 0, sizeof(fz_block_round));
	memset(&fuzz_frames_last, 0, sizeof(fuzz_frames_last));

	while (size - pos >= PM_FRAME_HDR_LEN) {
		struct pm_frame_hdr h;
		struct pm_err err = { 0 };
		const uint8_t *body = data + pos + PM_FRAME_HDR_LEN;
		size_t avail = size - pos - PM_FRAME_HDR_LEN;

		pm_decode_hdr(data + pos, &h);
		(void)pm_frame_name(h.type);
		/* The destination insists on HELLO first (accept_channels()). */
		if (!have_hello && h.type != PM_FR_HELLO)
			break;
		if (pm_check_hdr(&h, chunk_pages, &err))
			break;
		/* The fixed part a receiver reads before deciding anything. */
		size_t need = h.type == PM_FR_PAGES ? PM_PAGES_FIXED_LEN :
			      h.type == PM_FR_BLOCKS ? PM_BLOCKS_FIXED_LEN : h.len;
		if (avail < need)
			break;
		switch (h.type) {
		case PM_FR_HELLO:
		case PM_FR_HELLO_ACK: {
			struct pm_hello hello;
			if (pm_decode_hello(body, h.len, &hello, &err))
				goto out;
			if (!have_hello) {
				have_hello = true;
				chunk_pages = hello.chunk_pages;
				fuzz_frames_last.features = hello.features;
			}
			break;
		}
		case PM_FR_LAYOUT:
			if (pm_decode_layout(body, h.len, &theirs, &err) ||
			    pm_layout_check(&theirs, &mine, &err))
				goto out;
			fuzz_frames_last.layout_ok = true;
			break;
		case PM_FR_PAGES: {
			struct pm_pages pg;
			if (pm_decode_pages(body, h.len, &mine, chunk_pages, &pg, &err))
				goto out;
			if (pg.round > PM_MAX_ROUNDS)
				goto out;
			if (avail < h.len)
				goto out;
			if (fz_apply(&pg, body + PM_PAGES_FIXED_LEN))
				goto out;
			break;
		}
		case PM_FR_BLOCKS: {
			struct pm_pages pg;
			/* recv.c: only with DISKS negotiated and not shared. */
			if ((fuzz_frames_last.features & (PM_FEAT_DISKS | PM_FEAT_SHARED_STORAGE)) != PM_FEAT_DISKS)
				goto out;
			if (pm_decode_blocks(body, h.len, &mine, chunk_pages, &pg, &err))
				goto out;
			if (pg.round > PM_MAX_ROUNDS || avail < h.len)
				goto out;
			if (fz_apply_blocks(&pg, body + PM_BLOCKS_FIXED_LEN))
				goto out;
			break;
		}
		case PM_FR_ROUND_END:
		case PM_FR_ROUND_ACK:
			(void)pm_get32(body);
			break;
		case PM_FR_STATE:
			fuzz_frames_last.state_len = h.len;
			break;
		case PM_FR_END: {
			struct pm_end end;
			if (pm_decode_end(body, h.len, &end, &err))
				goto out;
			fuzz_frames_last.end_ok = true;
			break;
		}
		case PM_FR_DONE:
			(void)pm_get64(body);
			break;
		case PM_FR_ERROR: {
			char msg[PM_MAX_ERROR_LEN + 1];
			uint32_t ml = pm_get32(body + 4);
			if (ml > h.len - PM_ERROR_FIXED_LEN)
				ml = h.len - PM_ERROR_FIXED_LEN;
			memcpy(msg, body + PM_ERROR_FIXED_LEN, ml);
			msg[ml] = '\0';
			(void)pm_get32(body);
			break;
		}
		default:
			break;
		}
		fuzz_frames_last.frames++;
		pos += PM_FRAME_HDR_LEN + (size_t)h.len;
	}
out:
	return 0;
}
