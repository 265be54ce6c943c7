/* SPDX-License-Identifier: MIT */
/* Dirty tracking by the writers themselves ("self"): whoever writes guest
 * memory records the page in a shared bitmap, as a VMM's device model or
 * KVM's dirty ring/PML do in hardware.  No fault per first write, so a
 * write-heavy guest keeps its speed while tracked.
 *
 * Ordering, the whole correctness argument: a writer stores its data, then
 * sets the page's bit with a release fetch-or; a harvest takes the bits with
 * an acquire-release fetch-and and only then reads the pages.  If the
 * harvest's fetch-and comes after the writer's fetch-or, it sees the bit
 * and (acquire) the data; if it comes before, the bit stays set and a later
 * harvest reports the page.  A write is never lost.
 *
 * The log lives as long as its writers (the VM); a tracker borrows it from
 * pm_dirty_open_self() to pm_dirty_close(), one tracker at a time. */
#include <errno.h>
#include <stdlib.h>

#include "dirty/dirty_impl.h"

struct pm_dirty_log {
	_Atomic uint64_t *bits;
	uint64_t npages, nwords;
	atomic_bool tracked;     /* a tracker has it */
};

int pm_dirty_log_create(struct pm_dirty_log **out, uint64_t npages, struct pm_err *err)
{
	struct pm_dirty_log *l;

	if (!out)
		return pm_err_set(err, EINVAL, "dirty log: no place to return the log (out is NULL)");
	*out = NULL;
	if (npages == 0 || npages > ((uint64_t)1 << 40))
		return pm_err_set(err, EINVAL, "dirty log: %llu pages is not a usable size",
				  (unsigned long long)npages);
	l = calloc(1, sizeof(*l));
	if (!l)
		return pm_err_set(err, ENOMEM, "dirty log: out of memory");
	l->npages = npages;
	l->nwords = pm_bm_words(npages);
	l->bits = calloc(l->nwords, sizeof(*l->bits));
	if (!l->bits) {
		free(l);
		return pm_err_set(err, ENOMEM, "dirty log: out of memory for a %llu-page bitmap",
				  (unsigned long long)npages);
	}
	atomic_init(&l->tracked, false);
	*out = l;
	return 0;
}

void pm_dirty_log_destroy(struct pm_dirty_log *l)
{
	if (!l)
		return;
	free(l->bits);
	free(l);
}

void pm_dirty_log_mark(struct pm_dirty_log *l, uint64_t page)
{
	/* The caller's stores to the page come first; release orders them
	 * before the bit (see the argument at the top). */
	if (page < l->npages)
		atomic_fetch_or_explicit(&l->bits[page / 64], (uint64_t)1 << (page % 64),
					 memory_order_release);
}

int pm_dirty_open_self(struct pm_dirty_tracker **out, struct pm_dirty_log *log,
		       struct pm_err *err)
{
	struct pm_dirty_tracker *t;

	if (!out)
		return pm_err_set(err, EINVAL, "dirty tracker: no place to return the tracker (out is NULL)");
	*out = NULL;
	if (!log)
		return pm_err_set(err, EINVAL, "dirty tracker: method self needs the writers' log (it is NULL)");
	if (atomic_exchange(&log->tracked, true))
		return pm_err_set(err, EBUSY, "dirty tracker: this dirty log already has a tracker");
	t = calloc(1, sizeof(*t));
	if (t)
		t->pending = calloc(log->nwords, sizeof(*t->pending));
	if (!t || !t->pending) {
		free(t);
		atomic_store(&log->tracked, false);
		return pm_err_set(err, ENOMEM, "dirty tracker: out of memory");
	}
	t->method = PM_DIRTY_SELF;
	t->npages = log->npages;
	t->nwords = log->nwords;
	t->pagemap_fd = -1;
	t->uffd = -1;
	t->log = log;
	/* "Initially all dirty" covers every earlier write, so the log's old
	 * bits can go: counts stay exact. */
	for (uint64_t w = 0; w < t->nwords; w++) {
		atomic_init(&t->pending[w], ~(uint64_t)0);
		atomic_store_explicit(&log->bits[w], 0, memory_order_relaxed);
	}
	if (t->npages % 64)
		atomic_init(&t->pending[t->nwords - 1], ((uint64_t)1 << (t->npages % 64)) - 1);
	*out = t;
	return 0;
}

void pm_dirty_self_close(struct pm_dirty_tracker *t)
{
	atomic_store(&t->log->tracked, false);
}

int pm_dirty_self_count(struct pm_dirty_tracker *t, uint64_t *count, struct pm_err *err)
{
	uint64_t c = 0;

	(void)err;
	for (uint64_t w = 0; w < t->nwords; w++)
		c += (uint64_t)__builtin_popcountll(
			atomic_load_explicit(&t->pending[w], memory_order_relaxed) |
			atomic_load_explicit(&t->log->bits[w], memory_order_relaxed));
	*count = c;
	return 0;
}

int pm_dirty_self_summary(struct pm_dirty_tracker *t, uint64_t chunk_pages, uint64_t *count,
			  uint64_t *chunk_mask, struct pm_err *err)
{
	(void)err;
	for (uint64_t w = 0; w < t->nwords; w++)
		pm_bm_summarize_word(w, atomic_load_explicit(&t->pending[w], memory_order_relaxed) |
					atomic_load_explicit(&t->log->bits[w], memory_order_relaxed),
				     chunk_pages, count, chunk_mask);
	return 0;
}

int pm_dirty_self_harvest(struct pm_dirty_tracker *t, uint64_t first, uint64_t n,
			  uint64_t *bitmap, struct pm_err *err)
{
	(void)err;
	pm_bm_take_range(t->pending, first, n, bitmap);
	pm_bm_take_range(t->log->bits, first, n, bitmap);
	return 0;
}
