/* SPDX-License-Identifier: MIT */
/* Dirty-page tracking of ordinary process memory (the synthetic VM).
 *
 * Two methods that any process gets from the kernel, chosen at run time:
 *  - uffd-wp: userfaultfd write-protect in async mode plus the PAGEMAP_SCAN
 *    ioctl, which returns the written pages of a range and re-protects them
 *    in one call (Linux 6.7+).  Exact and per range.
 *  - soft-dirty: /proc/self/clear_refs + /proc/self/pagemap.  clear_refs is
 *    process-wide, so this method gathers and clears all bits in
 *    pm_dirty_sync(), which the caller must run with writers quiesced.
 *
 * A third, "self", is for writers that record their own writes (as a VMM's
 * device model or KVM's dirty ring do): they call pm_dirty_log_mark() after
 * each write into a struct pm_dirty_log, and pm_dirty_open_self() tracks it.
 * No fault per first write, so it costs what hardware logging costs.
 *
 * Tracking starts "all dirty": the first harvest of every page reports it.
 * Page size is 4096.  Thread-safe for concurrent pm_dirty_harvest() calls on
 * disjoint ranges.
 *
 * Environment: PMIGRATE_DIRTY=uffd-wp|soft-dirty|auto forces the method that
 * PM_DIRTY_AUTO picks (a forced method that fails is an error, no fallback).
 *
 * Memory: anonymous (private) or memfd/shmem (shared) mappings, fully mapped
 * for the tracker's lifetime.  uffd-wp registers the range with a
 * userfaultfd, so one range can have only one uffd-wp tracker at a time
 * (a second open fails with -EBUSY).  Errors of pm_dirty_open() for a
 * kernel that lacks a method are -EOPNOTSUPP. */
#ifndef PMIGRATE_DIRTY_H
#define PMIGRATE_DIRTY_H

#include <stdbool.h>
#include <stdint.h>
#include <pmigrate/error.h>

enum pm_dirty_method {
	PM_DIRTY_AUTO = 0,
	PM_DIRTY_UFFD_WP,
	PM_DIRTY_SOFT_DIRTY,
	PM_DIRTY_SELF,          /* writers log their writes: pm_dirty_open_self() */
};

struct pm_dirty_tracker;

/* Start tracking writes to [base, base + npages * 4096); base page-aligned.
 * AUTO picks uffd-wp when the kernel supports it, else soft-dirty (see
 * pm_dirty_method_of() and pm_dirty_fallback_reason() for what was used). */
int pm_dirty_open(struct pm_dirty_tracker **out, void *base, uint64_t npages,
		  enum pm_dirty_method method, struct pm_err *err);
void pm_dirty_close(struct pm_dirty_tracker *t);

/* Method self.  A log of npages pages, kept by the writers for the memory's
 * whole life (marking is always on, so no writer races with its creation
 * or destruction); destroy it only after every writer and tracker is gone. */
struct pm_dirty_log;
int pm_dirty_log_create(struct pm_dirty_log **out, uint64_t npages, struct pm_err *err);
void pm_dirty_log_destroy(struct pm_dirty_log *log);
/* Records a write to page: call AFTER the stores to that page (a harvest
 * that clears the bit then reads the page sees them).  Lock-free, any
 * thread; a page outside the log is ignored. */
void pm_dirty_log_mark(struct pm_dirty_log *log, uint64_t page);
/* A tracker over log (one at a time: a second one fails with -EBUSY);
 * pm_dirty_open() with PM_DIRTY_SELF fails with -EINVAL (it has no log). */
int pm_dirty_open_self(struct pm_dirty_tracker **out, struct pm_dirty_log *log,
		       struct pm_err *err);

enum pm_dirty_method pm_dirty_method_of(const struct pm_dirty_tracker *t);
const char *pm_dirty_method_name(enum pm_dirty_method m); /* "uffd-wp", "soft-dirty", "self", "auto" */
/* Parses "auto", "uffd-wp", "soft-dirty", "self"; returns -EINVAL otherwise. */
int pm_dirty_method_parse(const char *s, enum pm_dirty_method *out);
/* True when the method needs writers quiesced around pm_dirty_sync(). */
bool pm_dirty_sync_needs_quiesce(const struct pm_dirty_tracker *t);
/* Why AUTO fell back from uffd-wp to soft-dirty (a human-readable message),
 * or NULL when it did not fall back. */
const char *pm_dirty_fallback_reason(const struct pm_dirty_tracker *t);

/* Start of a pass: soft-dirty gathers and clears every bit here (writers
 * must be quiesced; the clear is process-wide, so this gathers for every
 * soft-dirty tracker of the process and all their writers must be
 * quiesced); uffd-wp does nothing. */
int pm_dirty_sync(struct pm_dirty_tracker *t, struct pm_err *err);

/* Number of pages dirty now, without clearing anything (after a sync for
 * soft-dirty). */
int pm_dirty_count(struct pm_dirty_tracker *t, uint64_t *count, struct pm_err *err);

/* pm_dirty_count, and which chunks hold dirty pages: bit k of chunk_mask
 * ((npages + chunk_pages - 1) / chunk_pages bits, overwritten) is set when
 * a page of [k * chunk_pages, (k + 1) * chunk_pages) is dirty now (after a
 * sync for soft-dirty).  chunk_pages is a multiple of 64.  Clears nothing:
 * a pass over memory can visit only those chunks. */
int pm_dirty_summary(struct pm_dirty_tracker *t, uint64_t chunk_pages, uint64_t *count,
		     uint64_t *chunk_mask, struct pm_err *err);

/* Get-and-clear for pages [first, first + n): sets bit i of bitmap (64-bit
 * words, LSB first) when page first+i was written since its last harvest.
 * A write racing with the call is either reported now or by a later call,
 * never lost.  bitmap holds (n + 63) / 64 words and is overwritten (bits of
 * clean pages are cleared).  Read the reported pages after the call returns.
 * For soft-dirty, writes are seen as of the last pm_dirty_sync().
 * first + n > npages fails with -EINVAL; n == 0 does nothing. */
int pm_dirty_harvest(struct pm_dirty_tracker *t, uint64_t first, uint64_t n,
		     uint64_t *bitmap, struct pm_err *err);

#endif
