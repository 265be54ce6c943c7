/* SPDX-License-Identifier: MIT */
/* The kernel's page-table views of process memory, for the dirty trackers
 * and the populated scan: /proc/self/pagemap entries, and the PAGEMAP_SCAN
 * ioctl (Linux 6.7), whose UAPI Debian 12's headers (6.1) predate. */
#ifndef PM_MEM_PAGEMAP_H
#define PM_MEM_PAGEMAP_H

#include <linux/fs.h>
#include <linux/types.h>

/* /proc/self/pagemap: one u64 per page. */
#define PM_PAGEMAP_PRESENT     (1ull << 63)
#define PM_PAGEMAP_SWAP        (1ull << 62)
#define PM_PAGEMAP_SOFT_DIRTY  (1ull << 55)
/* A swap entry's type (bits 0-4).  Type 31 is a PTE marker (userfaultfd's
 * write-protect on a page that was never populated, a guard region): no
 * data.  Real swap and migration entries have lower types. */
#define PM_PAGEMAP_SWAP_TYPE(e) ((unsigned)((e) & 0x1f))
#define PM_PAGEMAP_MARKER_TYPE 31u

#ifndef PAGEMAP_SCAN                                /* Linux 6.7 */
/* Page categories, in pm_scan_arg masks and page_region.categories. */
#define PAGE_IS_WPALLOWED  (1 << 0)
#define PAGE_IS_WRITTEN    (1 << 1)
#define PAGE_IS_FILE       (1 << 2)
#define PAGE_IS_PRESENT    (1 << 3)
#define PAGE_IS_SWAPPED    (1 << 4)
#define PAGE_IS_PFNZERO    (1 << 5)
#define PAGE_IS_HUGE       (1 << 6)
#define PAGE_IS_SOFT_DIRTY (1 << 7)

/* One output run: [start, end) with the categories in return_mask. */
struct page_region {
	__u64 start;
	__u64 end;
	__u64 categories;
};

/* Operation flags. */
#define PM_SCAN_WP_MATCHING   (1 << 0)  /* write-protect the reported pages */
#define PM_SCAN_CHECK_WPASYNC (1 << 1)  /* fail (EPERM) on pages without async uffd-wp */

struct pm_scan_arg {
	__u64 size;              /* sizeof(struct pm_scan_arg) */
	__u64 flags;
	__u64 start;             /* page-aligned start address */
	__u64 end;               /* end address (exclusive) */
	__u64 walk_end;          /* out: where the walk stopped */
	__u64 vec;               /* struct page_region array */
	__u64 vec_len;
	__u64 max_pages;         /* 0: no limit */
	__u64 category_inverted;
	__u64 category_mask;     /* all of these must match */
	__u64 category_anyof_mask;
	__u64 return_mask;       /* categories reported in vec */
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif

#endif
