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

/* KVM's dirty bits are cleared (the pages write-protected again) a block at
 * a time, on the first harvest of the block after a sync, as QEMU clears
 * 1 GiB at a time: every clear makes KVM flush the TLBs of all vCPUs, and
 * where vCPU exits are dear (nested KVM) a clear per 2 MiB chunk stalled the
 * guest for seconds.  A page written between its block's clear and its own
 * harvest is read with the newer content and reported again by the next
 * sync: sent twice, never lost. */
#define PMVM_CLEAR_BLOCK_PAGES (1ull << 18)   /* 1 GiB */

/* Blocks [*b0, *b1) that pages [first, first + n) fall in. */
void pmvm_dirty_blocks(uint64_t first, uint64_t n, uint64_t *b0, uint64_t *b1);

/* bitmap |= in, nwords words (a sync adds what KVM reports to what is still
 * waiting to be harvested, which KVM may have cleared already). */
void pmvm_dirty_or(uint64_t *bitmap, const uint64_t *in, uint64_t nwords);

#endif
