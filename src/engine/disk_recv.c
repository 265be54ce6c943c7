/* SPDX-License-Identifier: MIT */
/* The destination's side of disks: every receiver writes the blocks it
 * receives into the image itself, with pwrite() at their offset -- no
 * single writer -- under the same per-unit round rule as pages: a block
 * is written only where the run is newer than the copy the block holds,
 * checked and written under a write range lock over the run's units, and
 * the lock is never held across a wait for the network (a run's payload
 * is received first).  Zero and unallocated runs become holes (punched
 * only where the image holds data), never written zeros.  Writeback
 * starts as blocks land, so the fsync before DONE has little left. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pmigrate/disk.h>
#include <pmigrate/rangelock.h>
#include "engine/codec.h"
#include "engine/dest.h"

static bool has_data(struct dst_ctx *c, unsigned d, uint64_t b)
{
	return atomic_load_explicit(&c->disk_data[d][b / 64], memory_order_relaxed) >> (b % 64) & 1;
}

static void set_data(struct dst_ctx *c, unsigned d, uint64_t b, bool on)
{
	uint64_t bit = 1ull << (b % 64);

	if (on)
		atomic_fetch_or_explicit(&c->disk_data[d][b / 64], bit, memory_order_relaxed);
	else
		atomic_fetch_and_explicit(&c->disk_data[d][b / 64], ~bit, memory_order_relaxed);
}

int dst_disks_init(struct dst_ctx *c, struct pm_err *err)
{
	c->ndisks = c->be->ndisks;
	c->total_units = c->total_pages;
	for (unsigned d = 0; d < c->ndisks; d++) {
		const struct pm_blockdev *bd = &c->be->disks[d];
		uint64_t n = pm_disk_nblocks(bd->size, bd->block_size), off = 0;

		if (c->shared_storage)
			continue;
		c->disk_base[d] = c->total_units;
		c->total_units += n;
		c->disk_data[d] = calloc((n + 63) / 64, sizeof(uint64_t));
		if (!c->disk_data[d])
			return pm_err_set(err, ENOMEM, "out of memory");
		/* What the image holds now: only there must a hole be punched. */
		while (off < bd->size) {
			uint64_t data, hole;
			int r = pm_disk_next_data(bd->fd, off, bd->size, &data, &hole, err);
			if (r)
				return r;
			if (data >= bd->size)
				break;
			for (uint64_t b = data / bd->block_size; b * bd->block_size < hole; b++)
				set_data(c, d, b, true);
			off = hole;
		}
	}
	return 0;
}

void dst_disks_free(struct dst_ctx *c)
{
	for (unsigned d = 0; d < PM_MAX_DISKS; d++)
		free(c->disk_data[d]);
	free(c->zeros);
}

static int write_all(int fd, const uint8_t *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pwrite(fd, buf + done, len - done, (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		done += n;
	}
	return 0;
}

/* A hole over [off, off + len); zeros where the file system cannot punch. */
static int make_hole(struct dst_ctx *c, int fd, uint64_t off, uint64_t len)
{
	if (!fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len))
		return 0;
	if (errno != EOPNOTSUPP)
		return -errno;
	pthread_mutex_lock(&c->mu);
	if (!c->zeros)
		c->zeros = calloc(1, PM_MAX_BLOCK_SIZE);
	pthread_mutex_unlock(&c->mu);
	if (!c->zeros)
		return -ENOMEM;
	for (uint64_t o = 0; o < len; o += PM_MAX_BLOCK_SIZE) {
		int r = write_all(fd, c->zeros, len - o < PM_MAX_BLOCK_SIZE ? len - o : PM_MAX_BLOCK_SIZE, off + o);
		if (r)
			return r;
	}
	return 0;
}

static bool zero_span(const uint8_t *p, size_t len)
{
	if (len == PM_PAGE_SIZE)
		return pm_page_is_zero(p);
	for (size_t i = 0; i < len; i++)
		if (p[i])
			return false;
	return true;
}

/* Blocks [b, b + n) from buf (len bytes): the pages that hold data are
 * written, zero pages are left as holes (punched where the block held
 * data here) -- so a block the source had partly allocated is partly
 * allocated here too, not filled with zeros. */
static int write_data(struct dst_ctx *c, unsigned d, const struct pm_blockdev *bd, uint64_t b, uint32_t n,
		      const uint8_t *buf, size_t len)
{
	uint32_t bs = bd->block_size;
	uint64_t base = b * bs;
	size_t o = 0;
	int r = 0;

	for (uint32_t i = 0; i < n && !r; i++) {
		size_t end = (size_t)(i + 1) * bs < len ? (size_t)(i + 1) * bs : len;
		bool had = has_data(c, d, b + i), any = false;

		for (o = (size_t)i * bs; o < end && !r;) {
			size_t k = end - o < PM_PAGE_SIZE ? end - o : PM_PAGE_SIZE;
			bool z = zero_span(buf + o, k);
			size_t e = o + k;
			/* A span of pages of the same kind. */
			while (e < end) {
				size_t k2 = end - e < PM_PAGE_SIZE ? end - e : PM_PAGE_SIZE;
				if (zero_span(buf + e, k2) != z)
					break;
				e += k2;
			}
			if (!z)
				r = write_all(bd->fd, buf + o, e - o, base + o);
			else if (had)
				r = make_hole(c, bd->fd, base + o, e - o);
			any |= !z;
			o = e;
		}
		if (!r)
			set_data(c, d, b + i, any);
	}
	return r;
}

int rx_apply_blocks(struct receiver *x, const struct pm_pages *pg)
{
	struct dst_ctx *c = x->c;
	unsigned d = pg->region;
	const struct pm_blockdev *bd = &c->be->disks[d];
	uint32_t bs = bd->block_size;
	uint64_t g = c->disk_base[d] + pg->first;
	size_t raw = pm_disk_run_bytes(bd->size, bs, pg->first, pg->npages);
	bool data = pg->encoding != PM_ENC_ZERO && pg->encoding != PM_ENC_UNALLOCATED;
	uint64_t lo = UINT64_MAX, hi = 0;
	struct pm_range lr;
	int r = 0;

	/* The whole payload first, holding no lock. */
	if (pg->encoding == PM_ENC_RAW) {
		r = rx_read(x, x->run, raw, "receiving blocks");
	} else if (data) {
		if (!x->codec)
			return pm_err_set(&x->err, EPROTO, "compressed BLOCKS frame but compression was not negotiated");
		r = rx_read(x, x->cbuf, pg->payload_len, "receiving blocks");
		if (!r && pm_codec_decompress(x->codec, pg->encoding, x->cbuf, pg->payload_len, x->run, raw))
			return pm_err_set(&x->err, EPROTO, "corrupt compressed run at disk %u block %llu", d,
					  (unsigned long long)pg->first);
	}
	if (r)
		return r;

	pm_range_wrlock(&c->lock, &lr, g, g + pg->npages);
	for (uint32_t k = 0; k < pg->npages && !r; k++) {
		uint64_t b = pg->first + k, off = b * bs, len = pm_disk_run_bytes(bd->size, bs, b, 1);

		if (c->page_round[g + k] >= pg->round) {
			x->stale++;
			continue;
		}
		/* Consecutive blocks of the run go in one call. */
		uint32_t j = k + 1;
		while (j < pg->npages && c->page_round[g + j] < pg->round)
			j++;
		len = pm_disk_run_bytes(bd->size, bs, b, j - k);
		if (data) {
			r = write_data(c, d, bd, pg->first + k, j - k, x->run + (size_t)k * bs, len);
			if (off < lo)
				lo = off;
			if (off + len > hi)
				hi = off + len;
		} else {
			for (uint32_t i = k; !r && i < j; i++) {
				uint64_t bi = pg->first + i;
				if (!has_data(c, d, bi))
					continue;
				r = make_hole(c, bd->fd, bi * bs, pm_disk_run_bytes(bd->size, bs, bi, 1));
				set_data(c, d, bi, false);
			}
		}
		for (uint32_t i = k; !r && i < j; i++)
			c->page_round[g + i] = pg->round;
		k = j - 1;
	}
	pm_range_unlock(&c->lock, &lr);
	if (r)
		return pm_err_set(&x->err, -r, "disk %u (%s): %s blocks [%llu, +%u): %s", d,
				  bd->name ? bd->name : "?", data ? "writing" : "deallocating",
				  (unsigned long long)pg->first, pg->npages, strerror(-r));
	/* Start writeback now: the fsync before DONE then waits for little. */
	if (hi > lo)
		sync_file_range(bd->fd, (off_t)lo, (off_t)(hi - lo), SYNC_FILE_RANGE_WRITE);
	if (data) {
		x->dblocks += pg->npages;
		atomic_fetch_add(&c->disk_rx[d].blocks, pg->npages);
	} else {
		x->dzero += pg->npages;
		atomic_fetch_add(pg->encoding == PM_ENC_ZERO ? &c->disk_rx[d].zero : &c->disk_rx[d].unalloc,
				 pg->npages);
	}
	atomic_fetch_add(&c->disk_rx[d].bytes, PM_FRAME_HDR_LEN + PM_BLOCKS_FIXED_LEN + pg->payload_len);
	return 0;
}

/* Every image on stable storage before DONE (shared: drop what this host
 * cached of it, so the VM reads what the source wrote). */
int dst_disks_sync(struct dst_ctx *c, struct pm_err *err)
{
	double t = pm_now_ms();

	for (unsigned d = 0; d < c->ndisks; d++) {
		const struct pm_blockdev *bd = &c->be->disks[d];
		if (c->shared_storage) {
			posix_fadvise(bd->fd, 0, 0, POSIX_FADV_DONTNEED);
			continue;
		}
		if (fsync(bd->fd))
			return pm_err_set(err, errno, "disk %u (%s): fsync: %s", d, bd->name ? bd->name : "?",
					  strerror(errno));
	}
	c->disk_sync_ms = pm_now_ms() - t;
	return 0;
}
