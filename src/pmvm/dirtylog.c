// SPDX-License-Identifier: MIT
#include "dirtylog.h"

void pmvm_dirty_clear_range(uint64_t npages, uint64_t first, uint64_t n,
			    uint64_t *a0, uint64_t *a1)
{
	*a0 = first & ~63ull;
	*a1 = (first + n + 63) & ~63ull;
	if (*a1 > npages)
		*a1 = npages;
}

uint64_t pmvm_dirty_take(uint64_t *bitmap, uint64_t first, uint64_t n,
			 uint64_t a0, uint64_t a1, uint64_t *taken)
{
	uint64_t nwords = (a1 - a0 + 63) / 64, any = 0;

	for (uint64_t w = 0; w < nwords; w++) {
		uint64_t base = a0 + w * 64, mask = ~0ull;

		if (base < first)
			mask &= ~0ull << (first - base);
		if (base + 64 > first + n)
			mask &= (1ull << (first + n - base)) - 1;   /* 1..63 pages kept */
		/* Concurrent harvests of disjoint ranges may share a word at
		 * unaligned edges. */
		taken[w] = __atomic_fetch_and(&bitmap[a0 / 64 + w], ~mask, __ATOMIC_RELAXED) & mask;
		any |= taken[w];
	}
	return any;
}

void pmvm_dirty_shift(const uint64_t *taken, uint64_t a0, uint64_t a1, uint64_t first,
		      uint64_t n, uint64_t *out)
{
	uint64_t nwords = (a1 - a0 + 63) / 64, sh = first - a0;

	for (uint64_t i = 0; i < (n + 63) / 64; i++) {
		uint64_t lo = i < nwords ? taken[i] >> sh : 0;
		uint64_t hi = (sh && i + 1 < nwords) ? taken[i + 1] << (64 - sh) : 0;

		out[i] = lo | hi;
	}
	if (n % 64)
		out[(n - 1) / 64] &= (1ull << (n % 64)) - 1;
}

void pmvm_dirty_blocks(uint64_t first, uint64_t n, uint64_t *b0, uint64_t *b1)
{
	*b0 = first / PMVM_CLEAR_BLOCK_PAGES;
	*b1 = n ? (first + n - 1) / PMVM_CLEAR_BLOCK_PAGES + 1 : *b0;
}

void pmvm_dirty_or(uint64_t *bitmap, const uint64_t *in, uint64_t nwords)
{
	for (uint64_t w = 0; w < nwords; w++)
		bitmap[w] |= in[w];
}
