/* SPDX-License-Identifier: MIT */
/* The one interface between the migration engine and a VM.  The engine
 * knows nothing else about a VM: its memory regions, a dirty tracker,
 * pause/resume, and an opaque device-state blob. */
#ifndef PMIGRATE_BACKEND_H
#define PMIGRATE_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include <pmigrate/error.h>

struct pm_rangelock;
struct pm_guestmem;

#define PM_PAGE_SIZE 4096u
#define PM_PAGE_SHIFT 12

struct pm_region {
	uint32_t id;        /* as sent on the wire; index into the array */
	uint64_t gpa;       /* guest-physical start (informational for synthetic VMs) */
	uint64_t npages;
	uint8_t *host;      /* mapped once for the whole migration */
	/* Optional: the guest memory behind host (host == mem->base +
	 * mem_offset).  With it the source never reads a page that was never
	 * populated (it sends it as an "unpopulated" record) and the
	 * destination allocates only the pages that arrive with data. */
	const struct pm_guestmem *mem;
	uint64_t mem_offset;
};

/* A disk the VM writes through its own I/O path: a raw image behind an fd.
 * The engine moves it block by block beside memory, over the same
 * channels and in the same rounds (docs/storage.md). */
struct pm_blockdev_ops {
	/* Begin tracking writes, every block initially dirty. */
	int (*dirty_start)(void *dev, struct pm_err *err);
	/* Blocks dirty now (estimate allowed). */
	int (*dirty_count)(void *dev, uint64_t *blocks, struct pm_err *err);
	/* Get-and-clear of blocks [first, first+n), just before the engine
	 * reads them; called concurrently on disjoint ranges.  The VM marks a
	 * block only after its write reached fd, so a cleared block read now
	 * holds every write that was marked before. */
	int (*dirty_harvest)(void *dev, uint64_t first, uint64_t n, uint64_t *bitmap,
			     struct pm_err *err);
	void (*dirty_stop)(void *dev);
	/* Everything the VM wrote is on stable storage (fdatasync); called
	 * with the VM paused when the storage is shared. */
	int (*flush)(void *dev, struct pm_err *err);
};

struct pm_blockdev {
	uint32_t id;            /* as sent on the wire; index into the array */
	const char *name;       /* for messages and reports (the image's path) */
	uint64_t size;          /* bytes, a multiple of 512 */
	uint32_t block_size;    /* unit of tracking and transfer: a power of two, 4 KiB..1 MiB */
	/* The image: the source reads it (SEEK_DATA/SEEK_HOLE, sendfile,
	 * pread) and never writes; the destination writes it (pwrite at each
	 * block's offset, holes punched, fsync before DONE). */
	int fd;
	const struct pm_blockdev_ops *ops;
	void *dev;
};

struct pm_backend_ops {
	/* Begin tracking writes, all pages initially dirty. */
	int (*dirty_start)(void *vm, struct pm_err *err);
	/* Start of a pass over memory (KVM_GET_DIRTY_LOG, soft-dirty gather). */
	int (*dirty_sync)(void *vm, struct pm_err *err);
	/* Pages dirty now, summed over regions (estimate allowed). */
	int (*dirty_count)(void *vm, uint64_t *pages, struct pm_err *err);
	/* Optional, after dirty_sync: the dirty pages of one region and the
	 * chunks that hold them -- bit k of chunk_mask (overwritten) for pages
	 * [k * chunk_pages, (k + 1) * chunk_pages), chunk_pages a multiple of
	 * 64.  Clears nothing.  With it a round visits only those chunks, so
	 * an idle VM's final round costs almost nothing. */
	int (*dirty_summary)(void *vm, uint32_t region, uint32_t chunk_pages, uint64_t *pages,
			     uint64_t *chunk_mask, struct pm_err *err);
	/* Get-and-clear dirty bits of [first, first+n) in a region, just before
	 * the engine reads those pages.  Called concurrently on disjoint ranges. */
	int (*dirty_harvest)(void *vm, uint32_t region, uint64_t first, uint64_t n,
			     uint64_t *bitmap, struct pm_err *err);
	void (*dirty_stop)(void *vm);

	int (*pause)(void *vm, struct pm_err *err);
	int (*resume)(void *vm, struct pm_err *err);
	/* Slow the guest down by percent (0 = full speed); NULL if unsupported. */
	int (*throttle)(void *vm, unsigned percent);

	/* Device state: *buf is malloc'ed, caller frees. */
	int (*save_state)(void *vm, void **buf, size_t *len, struct pm_err *err);
	int (*load_state)(void *vm, const void *buf, size_t len, struct pm_err *err);

	/* Optional: name of the dirty-tracking method in use, for reports. */
	const char *(*dirty_method)(void *vm);
	/* Optional: pages the guest has written so far (a counter that only
	 * grows) and the write rate it was asked for in bytes/s (0: none), so
	 * reports show the dirty rate achieved beside the one asked. */
	void (*write_stats)(void *vm, uint64_t *pages_written, double *asked_bytes_per_s);
};

struct pm_backend {
	const char *kind;               /* "synthetic", "kvm" */
	const struct pm_backend_ops *ops;
	void *vm;
	unsigned nregions;
	struct pm_region *regions;
	/* Optional: a range lock over the VM's pages (region i's page p is
	 * number base_i + p, regions numbered back to back) that the VM takes
	 * for writing around layout changes (discard, hot-add, DMA).  Workers
	 * hold it for reading over a chunk from harvest to send, so a chunk is
	 * never read half before and half after such a change. */
	struct pm_rangelock *layout_lock;
	/* Disks beside memory (none: 0).  Their blocks share the workers,
	 * channels, rounds and convergence decision with the pages. */
	unsigned ndisks;
	struct pm_blockdev *disks;
};

#endif
