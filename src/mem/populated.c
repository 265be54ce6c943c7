/* SPDX-License-Identifier: MIT */
/* Which guest pages hold data, found without touching any page.
 *
 *  - memfd: SEEK_DATA/SEEK_HOLE on the file.  The file, not this process's
 *    page tables, is the truth for shared memory: a swapped-out shmem page
 *    has no PTE but is still data.
 *  - anon and hugetlb: one PAGEMAP_SCAN walk over the range (Linux 6.7).
 *    Present pages hold data, except the shared zero page (a page that was
 *    only read).  "Swapped" covers real swap entries, which hold data, and
 *    PTE markers (userfaultfd write-protect on a never-populated page, as
 *    the uffd-wp dirty tracker leaves them), which do not; the two are told
 *    apart by the entry's swap type in /proc/self/pagemap.  Without
 *    PAGEMAP_SCAN, /proc/self/pagemap alone (a read page then counts as
 *    populated: safe, it only costs a zero check).
 * Where none of this can be read, every page counts as populated. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <pmigrate/guestmem.h>
#include "mem/pagemap.h"

#define PAGE 4096ull
#define VEC_LEN 128
#define PM_BATCH 512            /* pagemap entries read at a time */

static void set_bits(uint64_t *bm, uint64_t a, uint64_t b)
{
	for (uint64_t i = a; i < b;) {
		if (i % 64 == 0 && b - i >= 64) {
			bm[i / 64] = ~0ull;
			i += 64;
		} else {
			bm[i / 64] |= 1ull << (i % 64);
			i++;
		}
	}
}

static int by_seek(const struct pm_guestmem *m, uint64_t first, uint64_t n, uint64_t *bm,
		   struct pm_err *err)
{
	off_t pos = (off_t)(first * PAGE), end = (off_t)((first + n) * PAGE);

	while (pos < end) {
		off_t d = lseek(m->fd, pos, SEEK_DATA), h;

		if (d < 0) {
			if (errno == ENXIO)             /* only a hole from here on */
				return 0;
			return pm_err_set(err, errno, "SEEK_DATA on guest memory: %s", strerror(errno));
		}
		if (d >= end)
			return 0;
		h = lseek(m->fd, d, SEEK_HOLE);
		if (h < 0)
			return pm_err_set(err, errno, "SEEK_HOLE on guest memory: %s", strerror(errno));
		if (h > end)
			h = end;
		/* Data is reported in whole pages; round outward. */
		set_bits(bm, (uint64_t)d / PAGE - first, ((uint64_t)h + PAGE - 1) / PAGE - first);
		pos = h;
	}
	return 0;
}

/* Pages [a, b) (absolute) whose pagemap entries say "data": present, or a
 * swap entry that is not a PTE marker.  present_counts: a present page is
 * data (false when the caller already took present pages from
 * PAGEMAP_SCAN, which tells the zero page apart). */
static int by_pagemap(const struct pm_guestmem *m, uint64_t first, uint64_t a, uint64_t b,
		      bool present_counts, uint64_t *bm, struct pm_err *err)
{
	uint64_t e[PM_BATCH], vpage = (uintptr_t)m->base / PAGE;

	while (a < b) {
		uint64_t k = b - a < PM_BATCH ? b - a : PM_BATCH;
		ssize_t rd = pread(m->pagemap_fd, e, k * 8, (off_t)((vpage + a) * 8));

		if (rd < 0 && errno == EINTR)
			continue;
		if (rd <= 0 || rd % 8)
			return pm_err_set(err, rd < 0 ? errno : EIO, "reading /proc/self/pagemap: %s",
					  rd < 0 ? strerror(errno) : "short read");
		k = (uint64_t)rd / 8;
		for (uint64_t i = 0; i < k; i++) {
			bool data = (e[i] & PM_PAGEMAP_PRESENT) ? present_counts
				  : (e[i] & PM_PAGEMAP_SWAP) &&
				    PM_PAGEMAP_SWAP_TYPE(e[i]) != PM_PAGEMAP_MARKER_TYPE;

			if (data)
				bm[(a + i - first) / 64] |= 1ull << ((a + i - first) % 64);
		}
		a += k;
	}
	return 0;
}

/* -1: PAGEMAP_SCAN is not there (fall back), else 0 or -errno. */
static int by_scan(const struct pm_guestmem *m, uint64_t first, uint64_t n, uint64_t *bm,
		   struct pm_err *err)
{
	uintptr_t start = (uintptr_t)m->base + first * PAGE, end = start + n * PAGE;
	struct page_region v[VEC_LEN];

	while (start < end) {
		struct pm_scan_arg a = {
			.size = sizeof(a), .start = start, .end = end,
			.vec = (uintptr_t)v, .vec_len = VEC_LEN,
			.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
			.return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO,
		};
		long nr = ioctl(m->pagemap_fd, PAGEMAP_SCAN, &a);

		if (nr < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ENOTTY || errno == EINVAL || errno == EOPNOTSUPP)
				return -1;
			return pm_err_set(err, errno, "PAGEMAP_SCAN of guest memory: %s", strerror(errno));
		}
		for (long i = 0; i < nr; i++) {
			uint64_t pa = (v[i].start - (uintptr_t)m->base) / PAGE;
			uint64_t pb = (v[i].end - (uintptr_t)m->base) / PAGE;
			int r;

			if (v[i].categories & PAGE_IS_PRESENT) {
				if (!(v[i].categories & PAGE_IS_PFNZERO))
					set_bits(bm, pa - first, pb - first);
			} else {
				r = by_pagemap(m, first, pa, pb, false, bm, err);
				if (r)
					return r;
			}
		}
		/* walk_end: where the kernel stopped (end, or the vector was full). */
		if (a.walk_end <= start)
			break;
		start = a.walk_end;
	}
	return 0;
}

int pm_guestmem_populated(const struct pm_guestmem *m, uint64_t first, uint64_t n,
			  uint64_t *bitmap, struct pm_err *err)
{
	struct pm_guestmem *mm = (struct pm_guestmem *)m;
	int r;

	if (first > m->bytes / PAGE || n > m->bytes / PAGE - first)
		return pm_err_set(err, EINVAL, "pages [%llu, +%llu) lie outside guest memory",
				  (unsigned long long)first, (unsigned long long)n);
	memset(bitmap, 0, (n + 63) / 64 * 8);
	if (m->kind == PM_MEM_MEMFD)
		return by_seek(m, first, n, bitmap, err);
	if (m->pagemap_fd < 0) {
		set_bits(bitmap, 0, n);
		return 0;
	}
	if (__atomic_load_n(&m->scan_ok, __ATOMIC_RELAXED) != 0) {
		r = by_scan(m, first, n, bitmap, err);
		if (r != -1) {
			__atomic_store_n(&mm->scan_ok, 1, __ATOMIC_RELAXED);
			return r;
		}
		__atomic_store_n(&mm->scan_ok, 0, __ATOMIC_RELAXED);
		memset(bitmap, 0, (n + 63) / 64 * 8);
	}
	return by_pagemap(m, first, first, first + n, true, bitmap, err);
}
