// SPDX-License-Identifier: MIT
/* virtio-blk over virtio-mmio (virtio 1.1, section 5.2), backed by a raw
 * image; see virtio_blk.h. */
#include "virtio_blk.h"

#include <stdio.h>
#include <string.h>

/* A request as the driver framed it: header, data segments, status byte
 * (the last byte of the last descriptor). */
struct req {
	uint32_t type;
	uint64_t sector;
	unsigned nseg;
	struct seg { uint8_t *host; uint64_t gpa; uint32_t len; bool write; } seg[VIRTIO_MAX_CHAIN];
	uint64_t bytes;
	uint8_t *status;
	uint64_t status_gpa;
};

static bool frame(const struct virtio_chain *c, struct req *rq)
{
	const struct virtio_buf *last = &c->d[c->n - 1];

	/* The header alone in the first descriptor (as every driver frames
	 * it), the status byte writable at the very end. */
	if (c->n < 2 || c->d[0].write || c->d[0].len < 16 || !last->write)
		return false;
	memcpy(&rq->type, c->d[0].host, 4);
	memcpy(&rq->sector, c->d[0].host + 8, 8);
	rq->status = last->host + last->len - 1;
	rq->status_gpa = last->gpa + last->len - 1;
	rq->nseg = 0;
	rq->bytes = 0;
	for (unsigned i = 1; i < c->n; i++) {
		uint32_t len = c->d[i].len - (i == c->n - 1);
		if (!len)
			continue;
		rq->seg[rq->nseg++] = (struct seg){ c->d[i].host, c->d[i].gpa, len, c->d[i].write };
		rq->bytes += len;
	}
	return true;
}

static bool all_segs(const struct req *rq, bool write)
{
	for (unsigned i = 0; i < rq->nseg; i++)
		if (rq->seg[i].write != write)
			return false;
	return true;
}

/* Serves one request; returns the bytes written into guest buffers. */
static uint32_t serve(struct pmvm_virtio_blk *b, struct req *rq)
{
	struct virtio_env *env = &b->t.env;
	uint64_t off = rq->sector * 512, written = 0;
	uint8_t st = VIRTIO_BLK_S_OK;
	struct pm_err e = { 0 };

	switch (rq->type) {
	case VIRTIO_BLK_T_IN:
	case VIRTIO_BLK_T_OUT: {
		bool in = rq->type == VIRTIO_BLK_T_IN;
		if (!all_segs(rq, in) || rq->bytes % 512 || rq->sector > b->sectors ||
		    rq->bytes / 512 > b->sectors - rq->sector) {
			st = VIRTIO_BLK_S_IOERR;
			break;
		}
		for (unsigned i = 0; i < rq->nseg && st == VIRTIO_BLK_S_OK; i++) {
			struct seg *s = &rq->seg[i];
			if (in) {
				if (pm_disk_read(b->disk, s->host, s->len, off, &e)) {
					st = VIRTIO_BLK_S_IOERR;
					break;
				}
				/* Into guest memory behind KVM's back: tell migration. */
				if (env->dirty)
					env->dirty(env->opaque, s->gpa, s->len);
				written += s->len;
			} else if (pm_disk_write(b->disk, s->host, s->len, off, &e)) {
				st = VIRTIO_BLK_S_IOERR;
			}
			off += s->len;
		}
		if (in) {
			b->reads++;
			b->bytes_read += written;
		} else {
			b->writes++;
			b->bytes_written += rq->bytes;
		}
		break;
	}
	case VIRTIO_BLK_T_FLUSH:
		b->flushes++;
		if (pm_disk_flush(b->disk, &e))
			st = VIRTIO_BLK_S_IOERR;
		break;
	case VIRTIO_BLK_T_GET_ID: {
		uint64_t left = VIRTIO_BLK_ID_BYTES;
		if (!all_segs(rq, true)) {
			st = VIRTIO_BLK_S_IOERR;
			break;
		}
		for (unsigned i = 0; i < rq->nseg && left; i++) {
			uint32_t k = rq->seg[i].len < left ? rq->seg[i].len : (uint32_t)left;
			memcpy(rq->seg[i].host, b->serial + (VIRTIO_BLK_ID_BYTES - left), k);
			if (env->dirty)
				env->dirty(env->opaque, rq->seg[i].gpa, k);
			left -= k;
			written += k;
		}
		break;
	}
	default:
		st = VIRTIO_BLK_S_UNSUPP;
	}
	if (st == VIRTIO_BLK_S_IOERR)
		b->errors++;
	*rq->status = st;
	if (env->dirty)
		env->dirty(env->opaque, rq->status_gpa, 1);
	return (uint32_t)written + 1;
}

static void blk_notify(void *dev, struct virtio_mmio *t, unsigned q)
{
	struct pmvm_virtio_blk *b = dev;
	struct virtio_chain c;
	struct req rq;
	bool any = false;
	int r;

	while ((r = virtio_queue_pop(t, q, &c)) > 0) {
		if (!frame(&c, &rq)) {
			virtio_mmio_fail(t, "block request without a header or a status byte");
			break;
		}
		virtio_queue_push(t, q, c.head, serve(b, &rq));
		any = true;
	}
	if (any)
		virtio_queue_signal(t, q);
}

static void blk_config_read(void *dev, uint32_t off, void *out, uint32_t len)
{
	struct pmvm_virtio_blk *b = dev;
	uint8_t cfg[VIRTIO_BLK_CONFIG_LEN] = { 0 };

	memcpy(cfg, &b->sectors, 8);            /* capacity; the rest is unused */
	memcpy(out, cfg + off, len);
}

static const struct virtio_device_ops blk_ops = {
	.notify = blk_notify,
	.config_read = blk_config_read,
};

void pmvm_virtio_blk_init(struct pmvm_virtio_blk *b, struct pm_disk *disk, const struct virtio_env *env)
{
	memset(b, 0, sizeof(*b));
	b->disk = disk;
	b->sectors = pm_disk_size(disk) / 512;
	snprintf(b->serial, sizeof(b->serial), "pmvm-disk0");
	virtio_mmio_init(&b->t, VIRTIO_ID_BLOCK, 1, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_CONFIG_LEN,
			 &blk_ops, b, env);
}

void pmvm_virtio_blk_destroy(struct pmvm_virtio_blk *b)
{
	virtio_mmio_destroy(&b->t);
}
