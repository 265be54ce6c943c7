/* SPDX-License-Identifier: MIT */
/* Memory digests for --verify: an XXH3-128 per chunk of guest memory (over
 * the XXH3-64 of each of its pages),
 * computed by several threads, the same way on both sides, so that a
 * 16 GiB migration is checked without writing any dump.  A page that holds
 * no data is hashed as zeros without being read (reading a memfd hole
 * would allocate it). */
#ifndef PM_ENGINE_DIGEST_H
#define PM_ENGINE_DIGEST_H

#include <stdbool.h>
#include <stdint.h>
#include <pmigrate/backend.h>
#include <pmigrate/error.h>

#define PM_DIGEST_LEN 16u

struct pm_digest_job {
	const struct pm_backend *be;
	unsigned chunk_pages;
	/* Which pages of [first, first + n) of a region hold data (bit i for
	 * page first + i; the others are hashed as zeros).  NULL: all do. */
	int (*data)(void *opaque, uint32_t region, uint64_t first, uint64_t n, uint64_t *bits,
		    struct pm_err *err);
	void *opaque;
	/* The backend's disks too: their chunks (as the engine cuts them)
	 * follow memory's, each an XXH3-128 over its blocks' XXH3-64s; blocks
	 * wholly in a hole are not read. */
	bool disks;
};

/* Chunks of the backend's regions, numbered region by region, then (with
 * disks) of its disks, disk by disk. */
uint64_t pm_digest_nchunks(const struct pm_backend *be, unsigned chunk_pages, bool disks);
/* Digests of every chunk into out (nchunks * 16 bytes), on nthreads
 * threads (at least 1). */
int pm_digest_compute(const struct pm_digest_job *j, unsigned nthreads, uint8_t *out,
		      struct pm_err *err);
/* Region and first page of chunk k (a memory chunk). */
void pm_digest_chunk_at(const struct pm_backend *be, unsigned chunk_pages, uint64_t k,
			uint32_t *region, uint64_t *first, uint64_t *npages);
/* True when chunk k is a disk's: which one, its first block and blocks. */
bool pm_digest_disk_chunk_at(const struct pm_backend *be, unsigned chunk_pages, uint64_t k,
			     uint32_t *disk, uint64_t *first, uint64_t *nblocks);

#endif
