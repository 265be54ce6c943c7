/* SPDX-License-Identifier: MIT */
/* A VM's disk as a VMM's block layer keeps it: a raw image file, written
 * only through pm_disk_write() (or discard), which marks every block it
 * wrote in a dirty bitmap -- after the write reached the file, so a harvest
 * that clears a block's bit and then reads the block sees the write.
 * Marking is always on (it costs an atomic OR per block written); the
 * engine tracks the bitmap through the struct pm_blockdev this module
 * fills in (pm_disk_blockdev()).
 *
 * Images are regular files, sparse where never written: the engine finds
 * unallocated ranges with SEEK_DATA/SEEK_HOLE and sends them as compact
 * records, and a destination punches holes for them. */
#ifndef PMIGRATE_DISK_H
#define PMIGRATE_DISK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pmigrate/backend.h>
#include <pmigrate/error.h>

#define PM_DISK_DEFAULT_BLOCK (64u << 10)
#define PM_DISK_MIN_BLOCK     4096u
#define PM_DISK_MAX_BLOCK     (1u << 20)

struct pm_disk_params {
	const char *path;
	uint64_t size;          /* bytes (multiple of 512); 0: the file's own size */
	uint32_t block_size;    /* dirty-tracking unit, a power of two 4 KiB..1 MiB; 0: 64 KiB */
	bool create;            /* create the file (sparse, mode 0600) if it does not exist */
	/* Write this many bytes of data first, in 1 MiB extents spread evenly
	 * over the disk (every 16th block of them zeroes: allocated but zero,
	 * as a guest's zeroed blocks are); 0: none. */
	uint64_t populate;
	uint64_t seed;          /* of the populated data */
};

struct pm_disk;

/* Opens (or creates) the image.  A missing file without create, a file
 * that is not a regular file, a size that disagrees with an existing
 * non-empty file, a bad block size: a clear error, nothing changed. */
int pm_disk_open(struct pm_disk **out, const struct pm_disk_params *p, struct pm_err *err);
void pm_disk_close(struct pm_disk *d);

/* The VM's write path: writes len bytes at off (inside the disk), then
 * marks the blocks it touched dirty.  Any thread. */
int pm_disk_write(struct pm_disk *d, const void *buf, size_t len, uint64_t off, struct pm_err *err);
int pm_disk_read(struct pm_disk *d, void *buf, size_t len, uint64_t off, struct pm_err *err);
/* Deallocates [off, off + len) (a punched hole: it reads as zeros), then
 * marks it dirty; off and len multiples of 512. */
int pm_disk_discard(struct pm_disk *d, uint64_t off, uint64_t len, struct pm_err *err);
/* Everything written so far is on stable storage (fdatasync). */
int pm_disk_flush(struct pm_disk *d, struct pm_err *err);

/* The block device the engine sees: id, the image's fd, size, block size,
 * and dirty tracking over this disk's bitmap.  Valid while d is open. */
void pm_disk_blockdev(struct pm_disk *d, uint32_t id, struct pm_blockdev *out);

const char *pm_disk_path(const struct pm_disk *d);
int pm_disk_fd(const struct pm_disk *d);
uint64_t pm_disk_size(const struct pm_disk *d);
uint32_t pm_disk_block_size(const struct pm_disk *d);
/* Bytes the file occupies on its file system (st_blocks x 512). */
uint64_t pm_disk_allocated(const struct pm_disk *d);
/* Bytes written through pm_disk_write() since open (a counter that only grows). */
uint64_t pm_disk_bytes_written(const struct pm_disk *d);

/* Data ranges of an open image fd: the first byte at or after off that is
 * in allocated data (*data), and the end of that data (*hole); both size
 * when nothing is allocated from off on.  A file system without
 * SEEK_DATA reports everything as data. */
int pm_disk_next_data(int fd, uint64_t off, uint64_t size, uint64_t *data, uint64_t *hole,
		      struct pm_err *err);

/* Which file on which host booted when: a hash of the host's boot id and
 * the file's device and inode (zeros when fd cannot be examined).  Two
 * equal identities are the same file, so a destination can refuse to
 * write into the source's own image. */
void pm_disk_identity(int fd, uint8_t out[16]);

#endif
