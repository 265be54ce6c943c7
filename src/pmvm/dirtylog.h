/* SPDX-License-Identifier: MIT */
/* Bit work of the KVM dirty-log harvest, apart from the ioctls so that it
 * is unit-tested without /dev/kvm.  Bitmaps are 64-bit words, bit i of word
 * w is page 64 * w + i (KVM's layout on x86-64). */
#ifndef PMVM_DIRTYLOG_H
#define PMVM_DIRTYLOG_H

#include <stdint.h>

/* The range KVM_CLEAR_DIRTY_LOG accepts around [first, first + n) of a slot
 * of npages: a0 64-aligned, a1 64-aligned or the slot's end. */
void pmvm_dirty_clear_range(uint64_t npages, uint64_t first, uint64_t n,
			    uint64_t *a0, uint64_t *a1);

/* Atomically takes the set bits of pages [first, first + n) out of bitmap
 * into taken (words from a0; (a1 - a0 + 63) / 64 of them), leaving bits
 * outside the range alone.  Returns non-zero if any bit was taken. */
uint64_t pmvm_dirty_take(uint64_t *bitmap, uint64_t first, uint64_t n,
			 uint64_t a0, uint64_t a1, uint64_t *taken);

/* Writes the bits of taken (starting at page a0) for pages [first,
 * first + n) into out, bit i = page first + i; (n + 63) / 64 words. */
void pmvm_dirty_shift(const uint64_t *taken, uint64_t a0, uint64_t a1, uint64_t first,
		      uint64_t n, uint64_t *out);

#endif
