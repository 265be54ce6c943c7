/* SPDX-License-Identifier: MIT */
/* Dirty tracking with the soft-dirty bit: bit 55 of /proc/self/pagemap
 * entries, cleared for the whole process by writing "4" to
 * /proc/self/clear_refs.
 *
 * Because the clear is process-wide, pm_dirty_sync() gathers the bits of
 * every soft-dirty tracker open in this process into its pending bitmap and
 * then clears them all, with writers quiesced by the caller; harvests then
 * take-and-clear from the pending bitmap (atomically, thread-safe), and
 * writes after the sync show up at the next sync.
 *
 * Limits of the method (why uffd-wp is preferred): the clear walks the page
 * tables of the whole process; a write to any soft-dirty-tracked region
 * that races with a sync may be lost, so writers of all of them must be
 * quiesced; and a shmem page whose page-table entry is dropped by the kernel
 * (swap-out, MADV_DONTNEED/PAGEOUT) loses its soft-dirty bit. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dirty/dirty_impl.h"

#define PM_PAGEMAP_SOFT_DIRTY ((uint64_t)1 << 55)

/* Pagemap entries read per pread() (8 bytes each: 512 KiB of entries). */
#define PAGEMAP_BATCH 65536

/* All open soft-dirty trackers of the process, and the lock that also
 * serializes syncs (gather-then-clear must not interleave). */
static pthread_mutex_t sd_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pm_dirty_tracker *sd_list;

/* Reads the soft-dirty bits of pages [first, first + n) into words of 64
 * (fn is called per 64-page word index w with the bits of that word);
 * first is a multiple of 64. */
static int read_soft_dirty(struct pm_dirty_tracker *t,
			   void (*fn)(void *ctx, uint64_t w, uint64_t bits), void *ctx,
			   struct pm_err *err)
{
	uint64_t *buf;
	uint64_t first = 0, n = t->npages;
	uint64_t pfn0 = (uintptr_t)t->base / PM_DIRTY_PAGE_SIZE;
	int r = 0;

	buf = malloc(PAGEMAP_BATCH * sizeof(uint64_t));
	if (!buf)
		return pm_err_set(err, ENOMEM, "soft-dirty: out of memory for a pagemap buffer");
	while (n) {
		uint64_t k = n < PAGEMAP_BATCH ? n : PAGEMAP_BATCH;
		size_t want = k * sizeof(uint64_t), got = 0;

		while (got < want) {
			ssize_t rd = pread(t->pagemap_fd, (char *)buf + got, want - got,
					   (off_t)((pfn0 + first) * sizeof(uint64_t) + got));
			if (rd < 0 && errno == EINTR)
				continue;
			if (rd < 0) {
				r = pm_err_set(err, errno, "soft-dirty: reading /proc/self/pagemap failed: %s",
					       strerror(errno));
				goto out;
			}
			if (rd == 0) {
				r = pm_err_set(err, EIO, "soft-dirty: short read from /proc/self/pagemap");
				goto out;
			}
			got += (size_t)rd;
		}
		for (uint64_t i = 0; i < k; i += 64) {
			uint64_t bits = 0, m = k - i < 64 ? k - i : 64;

			for (uint64_t j = 0; j < m; j++)
				bits |= ((buf[i + j] & PM_PAGEMAP_SOFT_DIRTY) ? (uint64_t)1 : 0) << j;
			fn(ctx, (first + i) / 64, bits);
		}
		first += k;
		n -= k;
	}
out:
	free(buf);
	return r;
}

static int clear_refs(struct pm_err *err)
{
	int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
	ssize_t w;

	if (fd < 0)
		return pm_err_set(err, errno == ENOENT ? EOPNOTSUPP : errno,
				  "soft-dirty: cannot open /proc/self/clear_refs: %s", strerror(errno));
	do {
		w = write(fd, "4", 1);
	} while (w < 0 && errno == EINTR);
	if (w != 1) {
		int e = w < 0 ? errno : EIO;

		close(fd);
		return pm_err_set(err, e == EINVAL ? EOPNOTSUPP : e,
				  "soft-dirty: clearing soft-dirty bits (/proc/self/clear_refs) failed: %s",
				  strerror(e));
	}
	close(fd);
	return 0;
}

/* Does the kernel keep soft-dirty bits (CONFIG_MEM_SOFT_DIRTY)?  A fresh,
 * written page of a new mapping is always soft-dirty when it does. */
static int probe_soft_dirty(int pagemap_fd, struct pm_err *err)
{
	uint64_t ent = 0;
	volatile char *p = mmap(NULL, PM_DIRTY_PAGE_SIZE, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ssize_t rd;

	if (p == MAP_FAILED)
		return pm_err_set(err, errno, "soft-dirty: probe mmap failed: %s", strerror(errno));
	p[0] = 1;
	rd = pread(pagemap_fd, &ent, sizeof(ent),
		   (off_t)((uintptr_t)p / PM_DIRTY_PAGE_SIZE * sizeof(uint64_t)));
	munmap((void *)p, PM_DIRTY_PAGE_SIZE);
	if (rd != (ssize_t)sizeof(ent))
		return pm_err_set(err, rd < 0 ? errno : EIO,
				  "soft-dirty: cannot read /proc/self/pagemap: %s",
				  rd < 0 ? strerror(errno) : "short read");
	if (!(ent & PM_PAGEMAP_SOFT_DIRTY))
		return pm_err_set(err, EOPNOTSUPP,
				  "soft-dirty: kernel does not track soft-dirty bits (CONFIG_MEM_SOFT_DIRTY off)");
	return 0;
}

int pm_dirty_sd_open(struct pm_dirty_tracker *t, struct pm_err *err)
{
	int r, fd;

	r = probe_soft_dirty(t->pagemap_fd, err);
	if (r < 0)
		return r;
	fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return pm_err_set(err, errno == ENOENT ? EOPNOTSUPP : errno,
				  "soft-dirty: cannot open /proc/self/clear_refs: %s", strerror(errno));
	close(fd);
	/* Nothing to clear: every page is pending ("initially all dirty") and
	 * the first sync clears the bits. */
	pthread_mutex_lock(&sd_lock);
	t->sd_next = sd_list;
	sd_list = t;
	pthread_mutex_unlock(&sd_lock);
	return 0;
}

void pm_dirty_sd_close(struct pm_dirty_tracker *t)
{
	pthread_mutex_lock(&sd_lock);
	for (struct pm_dirty_tracker **pp = &sd_list; *pp; pp = &(*pp)->sd_next) {
		if (*pp == t) {
			*pp = t->sd_next;
			break;
		}
	}
	pthread_mutex_unlock(&sd_lock);
}

static void gather_word(void *ctx, uint64_t w, uint64_t bits)
{
	struct pm_dirty_tracker *t = ctx;

	if (bits)
		atomic_fetch_or_explicit(&t->pending[w], bits, memory_order_acq_rel);
}

int pm_dirty_sd_sync(struct pm_dirty_tracker *t, struct pm_err *err)
{
	int r = 0;

	pthread_mutex_lock(&sd_lock);
	/* Every tracker's bits must be saved before the process-wide clear. */
	for (struct pm_dirty_tracker *s = sd_list; s; s = s->sd_next) {
		r = read_soft_dirty(s, gather_word, s, err);
		if (r < 0)
			goto out;
	}
	r = clear_refs(err);
out:
	pthread_mutex_unlock(&sd_lock);
	(void)t;
	return r;
}

struct sd_count_ctx {
	struct pm_dirty_tracker *t;
	uint64_t count;
};

static void count_word(void *ctx, uint64_t w, uint64_t bits)
{
	struct sd_count_ctx *c = ctx;

	c->count += (uint64_t)__builtin_popcountll(
		bits | atomic_load_explicit(&c->t->pending[w], memory_order_relaxed));
}

int pm_dirty_sd_count(struct pm_dirty_tracker *t, uint64_t *count, struct pm_err *err)
{
	/* Pending pages plus pages written since the last sync. */
	struct sd_count_ctx c = { t, 0 };
	int r = read_soft_dirty(t, count_word, &c, err);

	if (r < 0)
		return r;
	*count = c.count;
	return 0;
}

struct sd_summary_ctx {
	struct pm_dirty_tracker *t;
	uint64_t chunk_pages, count, *mask;
};

static void summary_word(void *ctx, uint64_t w, uint64_t bits)
{
	struct sd_summary_ctx *c = ctx;

	pm_bm_summarize_word(w, bits | atomic_load_explicit(&c->t->pending[w], memory_order_relaxed),
			     c->chunk_pages, &c->count, c->mask);
}

int pm_dirty_sd_summary(struct pm_dirty_tracker *t, uint64_t chunk_pages, uint64_t *count,
			uint64_t *chunk_mask, struct pm_err *err)
{
	struct sd_summary_ctx c = { t, chunk_pages, 0, chunk_mask };
	int r = read_soft_dirty(t, summary_word, &c, err);

	if (r < 0)
		return r;
	*count = c.count;
	return 0;
}

int pm_dirty_sd_harvest(struct pm_dirty_tracker *t, uint64_t first, uint64_t n,
			uint64_t *bitmap, struct pm_err *err)
{
	(void)err;
	pm_bm_take_range(t->pending, first, n, bitmap);
	return 0;
}
