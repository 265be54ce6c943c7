/* SPDX-License-Identifier: MIT */
/* Dirty tracking with userfaultfd write-protect in asynchronous mode plus
 * the PAGEMAP_SCAN ioctl (Linux 6.7+).
 *
 * At open the range is registered for write-protect faults on a userfaultfd
 * created with UFFD_FEATURE_WP_ASYNC, and write-protected as a whole.  In
 * async mode the kernel resolves a write fault on a protected page by itself
 * (no thread reads the userfaultfd) and simply drops the protection, so
 * "not write-protected" means "written since last protected".
 * UFFD_FEATURE_WP_UNPOPULATED makes the protection stick to anonymous pages
 * that are not populated yet (pte markers), and UFFD_FEATURE_WP_HUGETLBFS_SHMEM
 * allows memfd/shmem memory.  A harvest is one PAGEMAP_SCAN walk with
 * PM_SCAN_WP_MATCHING over the range: the kernel reports the pages that are
 * PAGE_IS_WRITTEN and re-protects exactly those, page by page under the page
 * table lock, so a write is either reported by this walk or faults again and
 * is reported by a later one.  Walks over disjoint ranges may run in parallel
 * (they only take mmap_lock for reading).
 *
 * "Initially all dirty" is the tracker's pending bitmap (all ones at open),
 * cleared atomically by harvests. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/fs.h>
#include <linux/userfaultfd.h>

#include "dirty/dirty_impl.h"
#include "mem/pagemap.h"

/* ---- UAPI that Debian 12's kernel headers (6.1) predate ---- */

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)  /* Linux 5.19 */
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)      /* Linux 6.4 */
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)            /* Linux 6.7 */
#endif

#define UFFD_NEEDED_FEATURES \
	(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM)

/* Regions per PAGEMAP_SCAN call; a 2 MiB chunk has at most 256 runs. */
#define SCAN_VEC_LEN 256

/* A new userfaultfd: the syscall in user-mode-only flavour first (allowed
 * without privilege; async write-protect never delivers a fault to user
 * space, so kernel-mode writes are tracked as well), then /dev/userfaultfd. */
static int uffd_create(struct pm_err *err)
{
	int fd = -1, e = ENOSYS;

#ifdef SYS_userfaultfd
	fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd < 0 && errno == EINVAL)
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd >= 0)
		return fd;
	e = errno;
#endif
	{
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);

		if (dev >= 0) {
			fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
			if (fd < 0)
				e = errno;
			close(dev);
			if (fd >= 0)
				return fd;
		}
	}
	if (e == ENOSYS)
		return pm_err_set(err, EOPNOTSUPP,
				  "uffd-wp: this kernel has no userfaultfd (CONFIG_USERFAULTFD off)");
	if (e == EPERM || e == EACCES)
		return pm_err_set(err, EPERM,
				  "uffd-wp: not allowed to create a userfaultfd (vm.unprivileged_userfaultfd=0 and no access to /dev/userfaultfd)");
	return pm_err_set(err, e, "uffd-wp: cannot create a userfaultfd: %s", strerror(e));
}

static int uffd_ioctl_retry(int fd, unsigned long req, void *arg)
{
	int r;

	do {
		r = ioctl(fd, req, arg);
	} while (r < 0 && (errno == EINTR || errno == EAGAIN));
	return r;
}

int pm_dirty_uffd_open(struct pm_dirty_tracker *t, struct pm_err *err)
{
	struct uffdio_api api;
	struct uffdio_register reg;
	struct uffdio_writeprotect wp;
	struct page_region probe_vec[1];
	struct pm_scan_arg scan;
	uint64_t len = t->npages * PM_DIRTY_PAGE_SIZE;
	int fd, r;

	/* Ask which features the kernel has (UFFDIO_API can be issued only
	 * once per descriptor, so this takes a throw-away one). */
	fd = uffd_create(err);
	if (fd < 0)
		return fd;
	memset(&api, 0, sizeof(api));
	api.api = UFFD_API;
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		r = errno;
		close(fd);
		return pm_err_set(err, r == EINVAL ? EOPNOTSUPP : r,
				  "uffd-wp: UFFDIO_API handshake failed: %s", strerror(r));
	}
	close(fd);
	if ((api.features & UFFD_NEEDED_FEATURES) != UFFD_NEEDED_FEATURES) {
		uint64_t miss = UFFD_NEEDED_FEATURES & ~api.features;

		return pm_err_set(err, EOPNOTSUPP,
				  "uffd-wp: kernel lacks userfaultfd feature(s)%s%s%s (need Linux 6.7+; kernel offers 0x%llx)",
				  miss & UFFD_FEATURE_WP_ASYNC ? " WP_ASYNC" : "",
				  miss & UFFD_FEATURE_WP_UNPOPULATED ? " WP_UNPOPULATED" : "",
				  miss & UFFD_FEATURE_WP_HUGETLBFS_SHMEM ? " WP_HUGETLBFS_SHMEM" : "",
				  (unsigned long long)api.features);
	}

	fd = uffd_create(err);
	if (fd < 0)
		return fd;
	memset(&api, 0, sizeof(api));
	api.api = UFFD_API;
	api.features = UFFD_NEEDED_FEATURES;
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		r = errno;
		close(fd);
		return pm_err_set(err, r == EINVAL ? EOPNOTSUPP : r,
				  "uffd-wp: enabling async write-protect (features 0x%llx) failed: %s",
				  (unsigned long long)UFFD_NEEDED_FEATURES, strerror(r));
	}

	memset(&reg, 0, sizeof(reg));
	reg.range.start = (uintptr_t)t->base;
	reg.range.len = len;
	reg.mode = UFFDIO_REGISTER_MODE_WP;
	if (uffd_ioctl_retry(fd, UFFDIO_REGISTER, &reg) < 0) {
		r = errno;
		close(fd);
		if (r == EBUSY)
			return pm_err_set(err, EBUSY,
					  "uffd-wp: memory at %p (%llu pages) is already registered with another userfaultfd (a second tracker on it?)",
					  (void *)t->base, (unsigned long long)t->npages);
		if (r == EINVAL)
			return pm_err_set(err, EOPNOTSUPP,
					  "uffd-wp: cannot register memory at %p (%llu pages) for write-protect: it must be anonymous, memfd/shmem or hugetlbfs memory",
					  (void *)t->base, (unsigned long long)t->npages);
		return pm_err_set(err, r, "uffd-wp: UFFDIO_REGISTER of %p (%llu pages) failed: %s",
				  (void *)t->base, (unsigned long long)t->npages, strerror(r));
	}
	if (!(reg.ioctls & ((uint64_t)1 << _UFFDIO_WRITEPROTECT))) {
		close(fd);
		return pm_err_set(err, EOPNOTSUPP,
				  "uffd-wp: kernel cannot write-protect this kind of memory at %p",
				  (void *)t->base);
	}

	/* Does this kernel have PAGEMAP_SCAN?  A read-only scan of one page. */
	memset(&scan, 0, sizeof(scan));
	scan.size = sizeof(scan);
	scan.flags = PM_SCAN_CHECK_WPASYNC;
	scan.start = (uintptr_t)t->base;
	scan.end = scan.start + PM_DIRTY_PAGE_SIZE;
	scan.vec = (uintptr_t)probe_vec;
	scan.vec_len = 1;
	scan.category_mask = PAGE_IS_WRITTEN;
	scan.return_mask = PAGE_IS_WRITTEN;
	if (uffd_ioctl_retry(t->pagemap_fd, PAGEMAP_SCAN, &scan) < 0) {
		r = errno;
		close(fd);
		if (r == ENOTTY || r == EINVAL)
			return pm_err_set(err, EOPNOTSUPP,
					  "uffd-wp: kernel lacks the PAGEMAP_SCAN ioctl (Linux 6.7+): %s",
					  strerror(r));
		return pm_err_set(err, r, "uffd-wp: PAGEMAP_SCAN probe failed: %s", strerror(r));
	}

	/* Protect everything; from now on a write drops the protection. */
	memset(&wp, 0, sizeof(wp));
	wp.range.start = (uintptr_t)t->base;
	wp.range.len = len;
	wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
	if (uffd_ioctl_retry(fd, UFFDIO_WRITEPROTECT, &wp) < 0) {
		r = errno;
		close(fd);
		return pm_err_set(err, r, "uffd-wp: write-protecting %p (%llu pages) failed: %s",
				  (void *)t->base, (unsigned long long)t->npages, strerror(r));
	}
	t->uffd = fd;
	return 0;
}

void pm_dirty_uffd_close(struct pm_dirty_tracker *t)
{
	struct uffdio_range range;

	if (t->uffd < 0)
		return;
	/* Unregistering drops the protection; it fails harmlessly when the
	 * memory is already unmapped.  Closing the descriptor would do the
	 * same, but only once every reference to it is gone. */
	range.start = (uintptr_t)t->base;
	range.len = t->npages * PM_DIRTY_PAGE_SIZE;
	(void)uffd_ioctl_retry(t->uffd, UFFDIO_UNREGISTER, &range);
	close(t->uffd);
	t->uffd = -1;
}

/* Walks [first, first + n) with PAGEMAP_SCAN and calls back with every run
 * of written pages (page indices relative to the tracker). */
static int scan_written(struct pm_dirty_tracker *t, uint64_t first, uint64_t n, bool clear,
			void (*fn)(void *ctx, uint64_t p0, uint64_t p1), void *ctx,
			struct pm_err *err)
{
	struct page_region vec[SCAN_VEC_LEN];
	struct pm_scan_arg a;
	uint64_t base = (uintptr_t)t->base;
	uint64_t end = base + (first + n) * PM_DIRTY_PAGE_SIZE;

	memset(&a, 0, sizeof(a));
	a.size = sizeof(a);
	a.flags = PM_SCAN_CHECK_WPASYNC | (clear ? PM_SCAN_WP_MATCHING : 0);
	a.start = base + first * PM_DIRTY_PAGE_SIZE;
	a.end = end;
	a.vec = (uintptr_t)vec;
	a.vec_len = SCAN_VEC_LEN;
	a.category_mask = PAGE_IS_WRITTEN;
	a.return_mask = PAGE_IS_WRITTEN;

	for (;;) {
		long r = ioctl(t->pagemap_fd, PAGEMAP_SCAN, &a);

		if (r < 0) {
			int e = errno;

			if (e == EINTR || e == EAGAIN)
				continue;
			if (e == EPERM)
				return pm_err_set(err, EPERM,
						  "uffd-wp: pages at 0x%llx..0x%llx are no longer write-protect tracked (memory unmapped or remapped after pm_dirty_open?)",
						  (unsigned long long)a.start, (unsigned long long)a.end);
			return pm_err_set(err, e, "uffd-wp: PAGEMAP_SCAN of 0x%llx..0x%llx failed: %s",
					  (unsigned long long)a.start, (unsigned long long)a.end,
					  strerror(e));
		}
		for (long i = 0; i < r; i++) {
			uint64_t s = vec[i].start < a.start ? a.start : vec[i].start;
			uint64_t e = vec[i].end > end ? end : vec[i].end;

			if (e > s)
				fn(ctx, (s - base) / PM_DIRTY_PAGE_SIZE,
				   (e - base + PM_DIRTY_PAGE_SIZE - 1) / PM_DIRTY_PAGE_SIZE);
		}
		if (a.walk_end >= end)
			return 0;
		if (a.walk_end <= a.start && r == 0)
			return pm_err_set(err, EIO,
					  "uffd-wp: PAGEMAP_SCAN made no progress at 0x%llx",
					  (unsigned long long)a.start);
		a.start = a.walk_end;
	}
}

struct harvest_ctx {
	uint64_t first;
	uint64_t *bitmap;
};

static void harvest_run(void *ctx, uint64_t p0, uint64_t p1)
{
	struct harvest_ctx *h = ctx;

	pm_bm_set_range(h->bitmap, p0 - h->first, p1 - p0);
}

int pm_dirty_uffd_harvest(struct pm_dirty_tracker *t, uint64_t first, uint64_t n,
			  uint64_t *bitmap, struct pm_err *err)
{
	struct harvest_ctx h = { first, bitmap };
	int r = scan_written(t, first, n, true, harvest_run, &h, err);

	if (r < 0)
		return r;
	pm_bm_take_range(t->pending, first, n, bitmap);
	return 0;
}

struct count_ctx {
	struct pm_dirty_tracker *t;
	uint64_t count;
	uint64_t chunk_pages;   /* summary: mark chunks in mask */
	uint64_t *mask;
};

static void count_run(void *ctx, uint64_t p0, uint64_t p1)
{
	struct count_ctx *c = ctx;

	/* Written pages that are not also pending (those are counted below). */
	c->count += (p1 - p0) - pm_bm_count_range(c->t->pending, p0, p1 - p0);
	if (c->mask)
		pm_bm_mark_chunks(c->mask, p0, p1, c->chunk_pages);
}

int pm_dirty_uffd_summary(struct pm_dirty_tracker *t, uint64_t chunk_pages, uint64_t *count,
			  uint64_t *chunk_mask, struct pm_err *err)
{
	struct count_ctx c = { t, 0, chunk_pages, chunk_mask };
	uint64_t pending = 0;
	int r = scan_written(t, 0, t->npages, false, count_run, &c, err);

	if (r < 0)
		return r;
	for (uint64_t w = 0; w < t->nwords; w++)
		pm_bm_summarize_word(w, atomic_load_explicit(&t->pending[w], memory_order_relaxed),
				     chunk_pages, &pending, chunk_mask);
	*count = c.count + pending;
	return 0;
}

int pm_dirty_uffd_count(struct pm_dirty_tracker *t, uint64_t *count, struct pm_err *err)
{
	struct count_ctx c = { t, 0 };
	int r = scan_written(t, 0, t->npages, false, count_run, &c, err);

	if (r < 0)
		return r;
	*count = c.count + pm_bm_count_range(t->pending, 0, t->npages);
	return 0;
}
