/* SPDX-License-Identifier: MIT */
/* Dirty-page tracking of process memory: argument checks, method choice
 * (AUTO, PMIGRATE_DIRTY), dispatch to uffd_wp.c / soft_dirty.c. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dirty/dirty_impl.h"

const char *pm_dirty_method_name(enum pm_dirty_method m)
{
	switch (m) {
	case PM_DIRTY_AUTO:
		return "auto";
	case PM_DIRTY_UFFD_WP:
		return "uffd-wp";
	case PM_DIRTY_SOFT_DIRTY:
		return "soft-dirty";
	case PM_DIRTY_SELF:
		return "self";
	}
	return "unknown";
}

int pm_dirty_method_parse(const char *s, enum pm_dirty_method *out)
{
	static const enum pm_dirty_method all[] = {
		PM_DIRTY_AUTO, PM_DIRTY_UFFD_WP, PM_DIRTY_SOFT_DIRTY, PM_DIRTY_SELF,
	};

	if (!s || !out)
		return -EINVAL;
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		if (!strcmp(s, pm_dirty_method_name(all[i]))) {
			*out = all[i];
			return 0;
		}
	}
	return -EINVAL;
}

enum pm_dirty_method pm_dirty_method_of(const struct pm_dirty_tracker *t)
{
	return t->method;
}

const char *pm_dirty_fallback_reason(const struct pm_dirty_tracker *t)
{
	return t->fallback_reason[0] ? t->fallback_reason : NULL;
}

bool pm_dirty_sync_needs_quiesce(const struct pm_dirty_tracker *t)
{
	return t->method == PM_DIRTY_SOFT_DIRTY;
}

/* Errors that mean "this kernel (or this memory) cannot do uffd-wp", after
 * which AUTO falls back to soft-dirty.  Anything else is a real error. */
static bool uffd_unsupported(int r)
{
	return r == -EOPNOTSUPP || r == -ENOSYS || r == -EPERM || r == -ENOTTY ||
	       r == -EACCES;
}

static int open_method(struct pm_dirty_tracker *t, enum pm_dirty_method m,
		       struct pm_err *err)
{
	t->method = m;
	if (m == PM_DIRTY_UFFD_WP)
		return pm_dirty_uffd_open(t, err);
	return pm_dirty_sd_open(t, err);
}

int pm_dirty_open(struct pm_dirty_tracker **out, void *base, uint64_t npages,
		  enum pm_dirty_method method, struct pm_err *err)
{
	struct pm_dirty_tracker *t;
	const char *env = NULL;
	long psz = sysconf(_SC_PAGESIZE);
	int r;

	if (!out)
		return pm_err_set(err, EINVAL, "dirty tracker: no place to return the tracker (out is NULL)");
	*out = NULL;
	if (psz != (long)PM_DIRTY_PAGE_SIZE)
		return pm_err_set(err, EOPNOTSUPP,
				  "dirty tracker: system page size is %ld, only 4096 is supported", psz);
	if (!base)
		return pm_err_set(err, EINVAL, "dirty tracker: base address is NULL");
	if ((uintptr_t)base % PM_DIRTY_PAGE_SIZE)
		return pm_err_set(err, EINVAL,
				  "dirty tracker: base address %p is not aligned to the 4096-byte page size",
				  base);
	if (npages == 0)
		return pm_err_set(err, EINVAL, "dirty tracker: cannot track an empty range (npages is 0)");
	if (npages > (UINTPTR_MAX >> PM_DIRTY_PAGE_SHIFT) ||
	    npages * PM_DIRTY_PAGE_SIZE - 1 > UINTPTR_MAX - (uintptr_t)base)
		return pm_err_set(err, EINVAL,
				  "dirty tracker: range at %p of %llu pages wraps around the address space",
				  base, (unsigned long long)npages);
	if (method == PM_DIRTY_SELF)
		return pm_err_set(err, EINVAL, "dirty tracker: method self tracks the writers' own log: "
				  "use pm_dirty_open_self()");
	if (method != PM_DIRTY_AUTO && method != PM_DIRTY_UFFD_WP &&
	    method != PM_DIRTY_SOFT_DIRTY)
		return pm_err_set(err, EINVAL, "dirty tracker: unknown method %d", (int)method);

	if (method == PM_DIRTY_AUTO) {
		env = getenv("PMIGRATE_DIRTY");
		if (env && *env) {
			if (pm_dirty_method_parse(env, &method) < 0 || method == PM_DIRTY_SELF)
				return pm_err_set(err, EINVAL,
						  "dirty tracker: PMIGRATE_DIRTY=\"%s\" is not one of auto, uffd-wp, soft-dirty",
						  env);
		}
	}

	/* Catch an unmapped hole now rather than as an obscure failure later. */
	if (msync(base, npages * PM_DIRTY_PAGE_SIZE, MS_ASYNC) < 0 && errno == ENOMEM)
		return pm_err_set(err, EINVAL,
				  "dirty tracker: range at %p of %llu pages is not entirely mapped",
				  base, (unsigned long long)npages);

	t = calloc(1, sizeof(*t));
	if (!t)
		return pm_err_set(err, ENOMEM, "dirty tracker: out of memory");
	t->base = base;
	t->npages = npages;
	t->nwords = pm_bm_words(npages);
	t->pagemap_fd = -1;
	t->uffd = -1;
	t->pending = calloc(t->nwords, sizeof(*t->pending));
	if (!t->pending) {
		free(t);
		return pm_err_set(err, ENOMEM,
				  "dirty tracker: out of memory for a %llu-page bitmap",
				  (unsigned long long)npages);
	}
	/* "Initially all dirty": every page is pending until first harvested. */
	for (uint64_t w = 0; w < t->nwords; w++)
		atomic_init(&t->pending[w], ~(uint64_t)0);
	if (npages % 64)
		atomic_init(&t->pending[t->nwords - 1], ((uint64_t)1 << (npages % 64)) - 1);

	t->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (t->pagemap_fd < 0) {
		r = pm_err_set(err, errno == ENOENT ? EOPNOTSUPP : errno,
			       "dirty tracker: cannot open /proc/self/pagemap: %s (is /proc mounted?)",
			       strerror(errno));
		goto fail;
	}

	if (method == PM_DIRTY_AUTO) {
		struct pm_err e2 = { 0 };

		r = open_method(t, PM_DIRTY_UFFD_WP, &e2);
		if (r < 0 && uffd_unsupported(r)) {
			snprintf(t->fallback_reason, sizeof(t->fallback_reason), "%s", e2.msg);
			r = open_method(t, PM_DIRTY_SOFT_DIRTY, err);
			if (r < 0)
				pm_err_reset(err, -r, "dirty tracker: uffd-wp unavailable (%s), and soft-dirty failed too: %s",
					     e2.msg, err ? err->msg : "");
		} else if (r < 0) {
			pm_err_set(err, -r, "%s", e2.msg);
		}
	} else {
		r = open_method(t, method, err);
	}
	if (r < 0)
		goto fail;
	*out = t;
	return 0;

fail:
	if (t->pagemap_fd >= 0)
		close(t->pagemap_fd);
	free(t->pending);
	free(t);
	return r;
}

void pm_dirty_close(struct pm_dirty_tracker *t)
{
	if (!t)
		return;
	if (t->method == PM_DIRTY_UFFD_WP)
		pm_dirty_uffd_close(t);
	else if (t->method == PM_DIRTY_SELF)
		pm_dirty_self_close(t);
	else
		pm_dirty_sd_close(t);
	if (t->pagemap_fd >= 0)
		close(t->pagemap_fd);
	free(t->pending);
	free(t);
}

int pm_dirty_sync(struct pm_dirty_tracker *t, struct pm_err *err)
{
	if (!t)
		return pm_err_set(err, EINVAL, "dirty tracker: sync on a NULL tracker");
	if (t->method == PM_DIRTY_SOFT_DIRTY)
		return pm_dirty_sd_sync(t, err);
	return 0;
}

int pm_dirty_count(struct pm_dirty_tracker *t, uint64_t *count, struct pm_err *err)
{
	if (!t || !count)
		return pm_err_set(err, EINVAL, "dirty tracker: count needs a tracker and a result pointer");
	if (t->method == PM_DIRTY_UFFD_WP)
		return pm_dirty_uffd_count(t, count, err);
	if (t->method == PM_DIRTY_SELF)
		return pm_dirty_self_count(t, count, err);
	return pm_dirty_sd_count(t, count, err);
}

int pm_dirty_summary(struct pm_dirty_tracker *t, uint64_t chunk_pages, uint64_t *count,
		     uint64_t *chunk_mask, struct pm_err *err)
{
	if (!t || !count || !chunk_mask)
		return pm_err_set(err, EINVAL, "dirty tracker: summary needs a tracker, a count and a mask");
	if (chunk_pages == 0 || chunk_pages % 64)
		return pm_err_set(err, EINVAL, "dirty tracker: summary chunks of %llu pages (a multiple of 64 needed)",
				  (unsigned long long)chunk_pages);
	memset(chunk_mask, 0, pm_bm_words((t->npages + chunk_pages - 1) / chunk_pages) * sizeof(uint64_t));
	*count = 0;
	if (t->method == PM_DIRTY_UFFD_WP)
		return pm_dirty_uffd_summary(t, chunk_pages, count, chunk_mask, err);
	if (t->method == PM_DIRTY_SELF)
		return pm_dirty_self_summary(t, chunk_pages, count, chunk_mask, err);
	return pm_dirty_sd_summary(t, chunk_pages, count, chunk_mask, err);
}

int pm_dirty_harvest(struct pm_dirty_tracker *t, uint64_t first, uint64_t n,
		     uint64_t *bitmap, struct pm_err *err)
{
	if (!t)
		return pm_err_set(err, EINVAL, "dirty tracker: harvest on a NULL tracker");
	if (first > t->npages || n > t->npages - first)
		return pm_err_set(err, EINVAL,
				  "dirty tracker: harvest of pages [%llu, %llu) is outside the tracked %llu pages",
				  (unsigned long long)first, (unsigned long long)first + n,
				  (unsigned long long)t->npages);
	if (n == 0)
		return 0;
	if (!bitmap)
		return pm_err_set(err, EINVAL, "dirty tracker: harvest needs a bitmap (it is NULL)");
	memset(bitmap, 0, pm_bm_words(n) * sizeof(uint64_t));
	if (t->method == PM_DIRTY_UFFD_WP)
		return pm_dirty_uffd_harvest(t, first, n, bitmap, err);
	if (t->method == PM_DIRTY_SELF)
		return pm_dirty_self_harvest(t, first, n, bitmap, err);
	return pm_dirty_sd_harvest(t, first, n, bitmap, err);
}
