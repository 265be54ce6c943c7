/* SPDX-License-Identifier: MIT */
/* Dirty-page tracking of ordinary process memory (the synthetic VM).
 *
 * Two methods, chosen at run time:
 *  - uffd-wp: userfaultfd write-protect in async mode plus the PAGEMAP_SCAN
 *    ioctl, which returns the written pages of a range and re-protects them
 *    in one call (Linux 6.7+).  Exact and per range.
 *  - soft-dirty: /proc/self/clear_refs + /proc/self/pagemap.  clear_refs is
 *    process-wide, so this method gathers and clears all bits in
 *    pm_dirty_sync(), which the caller must run with writers quiesced.
 *
 * Tracking starts "all dirty": the first harvest of every page reports it.
 * Page size is 4096.  Thread-safe for concurrent pm_dirty_harvest() calls on
 * disjoint ranges. */
#ifndef PMIGRATE_DIRTY_H
#define PMIGRATE_DIRTY_H

#include <stdbool.h>
#include <stdint.h>
#include <pmigrate/error.h>

enum pm_dirty_method {
	PM_DIRTY_AUTO = 0,
	PM_DIRTY_UFFD_WP,
	PM_DIRTY_SOFT_DIRTY,
};

struct pm_dirty_tracker;

/* Start tracking writes to [base, base + npages * 4096); base page-aligned.
 * AUTO picks uffd-wp when the kernel supports it, else soft-dirty. */
int pm_dirty_open(struct pm_dirty_tracker **out, void *base, uint64_t npages,
		  enum pm_dirty_method method, struct pm_err *err);
void pm_dirty_close(struct pm_dirty_tracker *t);

enum pm_dirty_method pm_dirty_method_of(const struct pm_dirty_tracker *t);
const char *pm_dirty_method_name(enum pm_dirty_method m); /* "uffd-wp", "soft-dirty", "auto" */
/* Parses "auto", "uffd-wp", "soft-dirty"; returns -EINVAL otherwise. */
int pm_dirty_method_parse(const char *s, enum pm_dirty_method *out);
/* True when the method needs writers quiesced around pm_dirty_sync(). */
bool pm_dirty_sync_needs_quiesce(const struct pm_dirty_tracker *t);

/* Start of a pass: soft-dirty gathers and clears every bit here (writers
 * must be quiesced); uffd-wp does nothing. */
int pm_dirty_sync(struct pm_dirty_tracker *t, struct pm_err *err);

/* Number of pages dirty now, without clearing anything (after a sync for
 * soft-dirty). */
int pm_dirty_count(struct pm_dirty_tracker *t, uint64_t *count, struct pm_err *err);

/* Get-and-clear for pages [first, first + n): sets bit i of bitmap (64-bit
 * words, LSB first) when page first+i was written since its last harvest.
 * A write racing with the call is either reported now or by a later call,
 * never lost. */
int pm_dirty_harvest(struct pm_dirty_tracker *t, uint64_t first, uint64_t n,
		     uint64_t *bitmap, struct pm_err *err);

#endif
