/* SPDX-License-Identifier: MIT */
/* A virtio block device (virtio 1.x, device ID 2) over virtio-mmio, backed
 * by a raw image (pm_disk): reads go from the image straight into the
 * guest's buffers, writes from the guest's buffers through pm_disk_write(),
 * which marks the blocks dirty for migration; every byte the device writes
 * into guest memory (data, status, used ring) is reported through the
 * environment's dirty callback, since KVM's dirty log does not see it.
 * Requests are served in the vCPU thread that notified the queue, so a
 * paused VM has no request in flight.  Pure code (see virtio_mmio.h). */
#ifndef PMVM_VIRTIO_BLK_H
#define PMVM_VIRTIO_BLK_H

#include <stdint.h>
#include <pmigrate/disk.h>

#include "virtio_mmio.h"

#define VIRTIO_ID_BLOCK         2u
#define VIRTIO_BLK_F_FLUSH      (1ull << 9)
#define VIRTIO_BLK_T_IN         0u
#define VIRTIO_BLK_T_OUT        1u
#define VIRTIO_BLK_T_FLUSH      4u
#define VIRTIO_BLK_T_GET_ID     8u
#define VIRTIO_BLK_S_OK         0u
#define VIRTIO_BLK_S_IOERR      1u
#define VIRTIO_BLK_S_UNSUPP     2u
#define VIRTIO_BLK_ID_BYTES     20u
#define VIRTIO_BLK_CONFIG_LEN   64u

struct pmvm_virtio_blk {
	struct virtio_mmio t;
	struct pm_disk *disk;
	uint64_t sectors;               /* capacity, 512-byte sectors */
	char serial[VIRTIO_BLK_ID_BYTES];
	/* Counters, under t.lock. */
	uint64_t reads, writes, flushes, errors;
	uint64_t bytes_read, bytes_written;
};

void pmvm_virtio_blk_init(struct pmvm_virtio_blk *b, struct pm_disk *disk, const struct virtio_env *env);
void pmvm_virtio_blk_destroy(struct pmvm_virtio_blk *b);

#endif
