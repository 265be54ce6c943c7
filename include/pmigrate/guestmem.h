/* SPDX-License-Identifier: MIT */
/* Guest memory as a VMM maps it, and what the engine must know of it.
 *
 * Three kinds, mapped once for the VM's life:
 *  - anon:    private anonymous memory with MADV_HUGEPAGE (QEMU's default):
 *             2 MiB transparent huge pages where the host allows them;
 *  - memfd:   a shared memfd, for memory another process must see;
 *  - hugetlb: a memfd on hugetlbfs (MFD_HUGETLB), for hosts that reserve
 *             huge pages (vm.nr_hugepages).
 * Memory starts untouched: a page costs nothing until it is written.
 *
 * A region of a VM (struct pm_region) may point at its guest memory; the
 * engine then never reads a page that was never populated (reading a hole
 * of a memfd would allocate it) and sends it as a compact "unpopulated"
 * record, and a destination allocates only the pages that arrive with
 * data. */
#ifndef PMIGRATE_GUESTMEM_H
#define PMIGRATE_GUESTMEM_H

#include <stdint.h>
#include <pmigrate/error.h>

enum pm_mem_kind { PM_MEM_ANON = 0, PM_MEM_MEMFD, PM_MEM_HUGETLB };

struct pm_guestmem {
	enum pm_mem_kind kind;
	uint8_t *base;
	uint64_t bytes;
	int fd;                 /* memfd or hugetlb file; -1 for anon */
	uint64_t page_size;     /* backing page: 4096, or the hugetlb page size */
	int pagemap_fd;         /* /proc/self/pagemap, -1 if unreadable */
	int scan_ok;            /* PAGEMAP_SCAN works here (1), not (0), unknown (-1) */
};

const char *pm_mem_kind_name(enum pm_mem_kind k);   /* "anon", "memfd", "hugetlb" */
int pm_mem_kind_parse(const char *s, enum pm_mem_kind *out);

/* Maps bytes (a multiple of 4 KiB; of the huge page size for hugetlb) of
 * untouched memory.  Fails with a clear message when the host cannot
 * provide it (e.g. too few huge pages reserved). */
int pm_guestmem_create(struct pm_guestmem *m, enum pm_mem_kind kind, uint64_t bytes,
		       struct pm_err *err);
void pm_guestmem_destroy(struct pm_guestmem *m);

/* Which of pages [first, first + n) (4 KiB pages from base) hold data:
 * bit i of bitmap = page first + i was written (or is swapped out).  Never
 * touches the pages.  Unpopulated pages read as zero.  Safe to call from
 * several threads at once. */
int pm_guestmem_populated(const struct pm_guestmem *m, uint64_t first, uint64_t n,
			  uint64_t *bitmap, struct pm_err *err);
/* Gives pages back: they read as zero and hold no memory afterwards
 * (MADV_DONTNEED, or a punched hole for a memfd).  Hugetlb gives back
 * whole huge pages only and zeroes the rest. */
int pm_guestmem_discard(const struct pm_guestmem *m, uint64_t first, uint64_t n,
			struct pm_err *err);
/* Allocates pages for writing (MADV_POPULATE_WRITE), e.g. just before a
 * receive writes them, so the copy does not fault page by page. */
int pm_guestmem_populate(const struct pm_guestmem *m, uint64_t first, uint64_t n,
			 struct pm_err *err);

/* Allocates all of the memory now, with up to nthreads threads (0: one per
 * online CPU), as QEMU's prealloc=on does: for a destination that must not
 * pay for first touches while pages arrive (on a paravirtualized host a
 * first touch can cost far more than the copy).  The guest then counts as
 * fully populated.  Fails with a clear message if the host cannot back it. */
int pm_guestmem_prealloc(const struct pm_guestmem *m, unsigned nthreads, struct pm_err *err);
struct pm_guestmem_usage {
	uint64_t resident_bytes;    /* memory the guest really uses */
	uint64_t huge_bytes;        /* of which backed by huge pages */
};
/* From /proc/self/smaps, for the mapping. */
int pm_guestmem_usage(const struct pm_guestmem *m, struct pm_guestmem_usage *u,
		      struct pm_err *err);

#endif
