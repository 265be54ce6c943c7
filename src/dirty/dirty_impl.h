/* SPDX-License-Identifier: MIT */
/* Internal to src/dirty: the tracker object shared by the three methods, and
 * small bitmap helpers.  Not a public header. */
#ifndef PMIGRATE_DIRTY_IMPL_H
#define PMIGRATE_DIRTY_IMPL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pmigrate/dirty.h>

#define PM_DIRTY_PAGE_SHIFT 12
#define PM_DIRTY_PAGE_SIZE  ((uint64_t)1 << PM_DIRTY_PAGE_SHIFT)

struct pm_dirty_tracker {
	enum pm_dirty_method method;
	uint8_t *base;
	uint64_t npages;
	int pagemap_fd;            /* /proc/self/pagemap, both methods */

	/* uffd-wp: pages not yet harvested since open ("initially all
	 * dirty").  soft-dirty: pages gathered by pm_dirty_sync() (plus the
	 * initial all-ones) and not yet harvested.  One bit per page, LSB
	 * first; updated with atomic fetch-and / fetch-or only. */
	_Atomic uint64_t *pending;
	uint64_t nwords;

	int uffd;                  /* uffd-wp only, else -1 */
	struct pm_dirty_log *log;  /* self only: the writers' log, borrowed */
	struct pm_dirty_tracker *sd_next; /* soft-dirty registry link */

	/* Why AUTO did not pick uffd-wp (empty when it did, or not AUTO). */
	char fallback_reason[sizeof(((struct pm_err *)0)->msg)];
};

/* Method back ends.  Arguments are validated by dirty.c. */
int pm_dirty_uffd_open(struct pm_dirty_tracker *t, struct pm_err *err);
void pm_dirty_uffd_close(struct pm_dirty_tracker *t);
int pm_dirty_uffd_count(struct pm_dirty_tracker *t, uint64_t *count, struct pm_err *err);
int pm_dirty_uffd_harvest(struct pm_dirty_tracker *t, uint64_t first, uint64_t n,
			  uint64_t *bitmap, struct pm_err *err);
int pm_dirty_uffd_summary(struct pm_dirty_tracker *t, uint64_t chunk_pages, uint64_t *count,
			  uint64_t *chunk_mask, struct pm_err *err);

int pm_dirty_sd_open(struct pm_dirty_tracker *t, struct pm_err *err);
void pm_dirty_sd_close(struct pm_dirty_tracker *t);
int pm_dirty_sd_sync(struct pm_dirty_tracker *t, struct pm_err *err);
int pm_dirty_sd_count(struct pm_dirty_tracker *t, uint64_t *count, struct pm_err *err);
int pm_dirty_sd_harvest(struct pm_dirty_tracker *t, uint64_t first, uint64_t n,
			uint64_t *bitmap, struct pm_err *err);
int pm_dirty_sd_summary(struct pm_dirty_tracker *t, uint64_t chunk_pages, uint64_t *count,
			uint64_t *chunk_mask, struct pm_err *err);

void pm_dirty_self_close(struct pm_dirty_tracker *t);
int pm_dirty_self_count(struct pm_dirty_tracker *t, uint64_t *count, struct pm_err *err);
int pm_dirty_self_harvest(struct pm_dirty_tracker *t, uint64_t first, uint64_t n,
			  uint64_t *bitmap, struct pm_err *err);
int pm_dirty_self_summary(struct pm_dirty_tracker *t, uint64_t chunk_pages, uint64_t *count,
			  uint64_t *chunk_mask, struct pm_err *err);

/* ---- bitmap helpers (64-bit words, LSB first) ---- */

/* Marks the chunks (of chunk_pages pages) that pages [p0, p1) fall in. */
static inline void pm_bm_mark_chunks(uint64_t *mask, uint64_t p0, uint64_t p1, uint64_t chunk_pages)
{
	for (uint64_t k = p0 / chunk_pages; k * chunk_pages < p1; k++)
		mask[k / 64] |= (uint64_t)1 << (k % 64);
}

/* A word of 64 pages' dirty bits into count and mask (chunk_pages is a
 * multiple of 64, so a word lies in one chunk). */
static inline void pm_bm_summarize_word(uint64_t w, uint64_t bits, uint64_t chunk_pages,
					uint64_t *count, uint64_t *mask)
{
	if (bits) {
		uint64_t k = w * 64 / chunk_pages;

		*count += (uint64_t)__builtin_popcountll(bits);
		mask[k / 64] |= (uint64_t)1 << (k % 64);
	}
}

static inline uint64_t pm_bm_words(uint64_t nbits)
{
	return (nbits + 63) / 64;
}

/* Sets bits [start, start + len) of a plain bitmap. */
static inline void pm_bm_set_range(uint64_t *bm, uint64_t start, uint64_t len)
{
	while (len) {
		uint64_t w = start / 64, b = start % 64;
		uint64_t k = 64 - b < len ? 64 - b : len;
		uint64_t mask = (k == 64 ? ~(uint64_t)0 : (((uint64_t)1 << k) - 1)) << b;
		bm[w] |= mask;
		start += k;
		len -= k;
	}
}

/* Mask of bits [lo, hi) within one word, 0 <= lo < hi <= 64. */
static inline uint64_t pm_bm_word_mask(unsigned lo, unsigned hi)
{
	uint64_t upper = hi == 64 ? ~(uint64_t)0 : (((uint64_t)1 << hi) - 1);
	return upper & ~(((uint64_t)1 << lo) - 1);
}

/* Atomically takes (reads and clears) bits [first, first + n) of the shared
 * bitmap src and ORs them into out, where bit 0 of out is bit first of src.
 * Safe against concurrent take/or on other (or the same) bits. */
static inline void pm_bm_take_range(_Atomic uint64_t *src, uint64_t first, uint64_t n,
				    uint64_t *out)
{
	uint64_t end = first + n;
	uint64_t outwords = pm_bm_words(n);

	for (uint64_t w = first / 64; w * 64 < end; w++) {
		uint64_t wlo = w * 64;
		unsigned lo = wlo < first ? (unsigned)(first - wlo) : 0;
		unsigned hi = end - wlo >= 64 ? 64 : (unsigned)(end - wlo);
		uint64_t mask = pm_bm_word_mask(lo, hi);
		uint64_t bits;

		/* Skip the atomic write when nothing is set (the common case
		 * once everything has been harvested once). */
		if (!(atomic_load_explicit(&src[w], memory_order_relaxed) & mask))
			continue;
		bits = atomic_fetch_and_explicit(&src[w], ~mask, memory_order_acq_rel) & mask;
		if (!bits)
			continue;
		if (wlo < first) {
			/* First word: bit (first - wlo) goes to out bit 0. */
			out[0] |= bits >> lo;
		} else {
			uint64_t off = wlo - first, ow = off / 64;
			unsigned sh = (unsigned)(off % 64);
			out[ow] |= bits << sh;
			if (sh && ow + 1 < outwords)
				out[ow + 1] |= bits >> (64 - sh);
		}
	}
}

/* Number of set bits in [first, first + n) of a shared bitmap. */
static inline uint64_t pm_bm_count_range(_Atomic uint64_t *src, uint64_t first, uint64_t n)
{
	uint64_t end = first + n, c = 0;

	for (uint64_t w = first / 64; w * 64 < end; w++) {
		uint64_t wlo = w * 64;
		unsigned lo = wlo < first ? (unsigned)(first - wlo) : 0;
		unsigned hi = end - wlo >= 64 ? 64 : (unsigned)(end - wlo);
		c += (uint64_t)__builtin_popcountll(
			atomic_load_explicit(&src[w], memory_order_relaxed) &
			pm_bm_word_mask(lo, hi));
	}
	return c;
}

#endif
