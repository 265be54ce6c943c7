/* SPDX-License-Identifier: MIT */
/* The source's send path for disks.  A disk is cut into chunks of blocks
 * that sit in the same chunk table, queue and rounds as memory's, so the
 * same workers and channels carry both and the same per-chunk round rule
 * orders a disk chunk's harvests.  A worker harvests a disk chunk's dirty
 * blocks just before reading them, asks the file system which of them are
 * allocated (SEEK_DATA/SEEK_HOLE), checks allocated ones for zeros through
 * a read-only mapping of the image, and sends runs of blocks: unallocated
 * and zero runs as compact records, data runs with sendfile() straight
 * from the page cache (or read and compressed with --compress, or read
 * and sent where sendfile cannot serve the channel).  The image is only
 * read: a failed migration leaves it as the VM left it. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <pmigrate/disk.h>
#include "engine/codec.h"
#include "engine/source.h"

enum block_kind { BLK_UNALLOCATED, BLK_ZERO, BLK_DATA };

static bool force_copy(void)
{
	/* For the benchmark that measures what sendfile saves. */
	const char *e = getenv("PMIGRATE_DISK_SENDFILE");
	return e && !strcmp(e, "0");
}

int src_disks_setup(struct src_ctx *c, struct pm_err *err)
{
	struct pm_backend *be = c->be;

	c->ndisks = be->ndisks;
	if (c->ndisks > PM_MAX_DISKS)
		return pm_err_set(err, EINVAL, "VM has %u disks (at most %u)", c->ndisks, PM_MAX_DISKS);
	c->disk_copy = force_copy();
	for (unsigned i = 0; i < c->ndisks; i++) {
		const struct pm_blockdev *bd = &be->disks[i];
		struct src_disk *d = &c->disk[i];
		uint32_t bs = bd->block_size;

		if (bs < PM_MIN_BLOCK_SIZE || bs > PM_MAX_BLOCK_SIZE || (bs & (bs - 1)) || !bd->size ||
		    bd->size % 512 || bd->fd < 0 || !bd->ops || !bd->ops->dirty_start ||
		    !bd->ops->dirty_harvest || !bd->ops->dirty_count || !bd->ops->dirty_stop)
			return pm_err_set(err, EINVAL, "disk %u (%s): not a usable block device (block size %u, "
					  "%llu bytes)", i, bd->name ? bd->name : "?", bs,
					  (unsigned long long)bd->size);
		d->bd = bd;
		d->nblocks = pm_disk_nblocks(bd->size, bs);
		d->chunk_blocks = pm_disk_chunk_blocks(bs, c->chunk_pages);
		d->nchunks = (d->nblocks + d->chunk_blocks - 1) / d->chunk_blocks;
		if (c->p->shared_storage)
			continue;
		/* Mapped once, read-only, only to tell zero blocks; the data
		 * itself goes by sendfile. */
		d->map = mmap(NULL, bd->size, PROT_READ, MAP_SHARED, bd->fd, 0);
		if (d->map == MAP_FAILED)
			d->map = NULL;
	}
	return 0;
}

void src_disks_free(struct src_ctx *c)
{
	for (unsigned i = 0; i < c->ndisks; i++)
		if (c->disk[i].map) {
			munmap((void *)c->disk[i].map, c->disk[i].bd->size);
			c->disk[i].map = NULL;
		}
}

uint64_t src_disks_bytes(const struct src_ctx *c)
{
	uint64_t b = 0;

	for (unsigned i = 0; i < c->ndisks; i++)
		b += c->disk[i].bd->size;
	return b;
}

/* Which blocks of [first, first + n) hold allocated data (bit i). */
static int allocated(const struct src_disk *d, uint64_t first, uint32_t n, uint64_t *bm, struct pm_err *err)
{
	uint32_t bs = d->bd->block_size;
	uint64_t off = first * bs, end = (first + n) * bs;

	memset(bm, 0, (n + 63) / 64 * 8);
	if (end > d->bd->size)
		end = d->bd->size;
	while (off < end) {
		uint64_t data, hole;
		int r = pm_disk_next_data(d->bd->fd, off, d->bd->size, &data, &hole, err);
		if (r)
			return r;
		if (data >= end)
			break;
		if (hole > end)
			hole = end;
		for (uint64_t b = data / bs; b * bs < hole; b++)
			bm[(b - first) / 64] |= 1ull << ((b - first) % 64);
		off = hole;
	}
	return 0;
}

static bool block_is_zero(const struct src_disk *d, uint64_t b)
{
	uint32_t bs = d->bd->block_size;
	uint64_t len = pm_disk_run_bytes(d->bd->size, bs, b, 1);
	const uint8_t *p = d->map + b * bs;

	if (!d->map)
		return false;
	for (uint64_t o = 0; o + PM_PAGE_SIZE <= len; o += PM_PAGE_SIZE)
		if (!pm_page_is_zero(p + o))
			return false;
	for (uint64_t o = len / PM_PAGE_SIZE * PM_PAGE_SIZE; o < len; o++)
		if (p[o])
			return false;
	return true;
}

static enum block_kind kind_of(const struct src_disk *d, const uint64_t *alloc, uint64_t first, uint32_t i)
{
	if (!(alloc[i / 64] >> (i % 64) & 1))
		return BLK_UNALLOCATED;
	return block_is_zero(d, first + i) ? BLK_ZERO : BLK_DATA;
}

static int read_blocks(const struct src_disk *d, uint8_t *buf, uint64_t off, size_t len, struct pm_err *err)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(d->bd->fd, buf + done, len - done, (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return pm_err_set(err, n < 0 ? errno : EIO, "disk %s: reading %zu bytes at %llu: %s",
					  d->bd->name, len - done, (unsigned long long)(off + done),
					  n < 0 ? strerror(errno) : "the image ended early");
		done += n;
	}
	return 0;
}

/* Before frames of the chunk go out, the chunk is in the channel's log
 * (failover: sent again if the channel is lost before the destination
 * acknowledged them); w->sent counts them already. */
static int sending(struct worker *w)
{
	int r = chan_log(w, w->cur_chunk);

	if (r)
		w->io_failed = true;
	return r;
}

static void sent(struct worker *w, int r)
{
	if (r)
		w->io_failed = true;
	else
		w->last_send = pm_now_ms();
}

/* Header-only frames of a chunk wait here and leave with the next payload. */
struct pending {
	uint8_t *buf;
	size_t len;
};

static void put_header(struct pending *pd, const struct pm_pages *pg)
{
	pm_encode_hdr(pd->buf + pd->len, PM_FR_BLOCKS, PM_BLOCKS_FIXED_LEN + pg->payload_len);
	pm_encode_pages(pd->buf + pd->len + PM_FRAME_HDR_LEN, pg);
	pd->len += PM_FRAME_HDR_LEN + PM_BLOCKS_FIXED_LEN;
}

static int emit(struct worker *w, struct src_disk *d, struct pending *pd, uint32_t disk, uint64_t first,
		uint32_t n, enum block_kind kind, uint32_t round)
{
	struct src_ctx *c = w->c;
	uint32_t bs = d->bd->block_size;
	size_t raw = pm_disk_run_bytes(d->bd->size, bs, first, n);
	struct pm_pages pg = { .region = disk, .npages = n, .first = first, .round = round };
	int r = 0;

	/* Counted before it goes: the channel's log records up to which frame
	 * a chunk was sent. */
	w->sent.frames++;
	w->sent.pages += n;
	if (kind == BLK_UNALLOCATED) {
		pg.encoding = PM_ENC_UNALLOCATED;
		put_header(pd, &pg);
	} else if (kind == BLK_ZERO) {
		pg.encoding = PM_ENC_ZERO;
		put_header(pd, &pg);
	} else if (c->p->compress != PM_COMPRESS_NONE || c->disk_copy || !pm_conn_can_sendfile(&w->conn)) {
		/* Through user space: compressed, or where sendfile cannot go. */
		void *payload = w->snap;
		r = read_blocks(d, w->snap, first * bs, raw, &w->err);
		if (r)
			return r;
		pg.encoding = PM_ENC_RAW;
		pg.payload_len = raw;
		if (c->p->compress != PM_COMPRESS_NONE) {
			size_t clen = pm_codec_compress(w->codec, w->snap, raw, w->cbuf, w->cbuf_cap);
			if (clen && clen < raw) {
				pg.encoding = pm_codec_encoding(c->p->compress);
				pg.payload_len = clen;
				payload = w->cbuf;
			}
		}
		put_header(pd, &pg);
		w->sent.payload_bytes += pg.payload_len;
		struct iovec iov[2] = { { pd->buf, pd->len }, { payload, pg.payload_len } };
		r = sending(w);
		if (!r)
			r = pm_send_all(&w->conn, iov, 2, &w->err, w->what);
		sent(w, r);
		pd->len = 0;
	} else {
		pg.encoding = PM_ENC_RAW;
		pg.payload_len = raw;
		put_header(pd, &pg);
		w->sent.payload_bytes += pg.payload_len;
		r = sending(w);
		if (!r)
			r = pm_send_file(&w->conn, pd->buf, pd->len, d->bd->fd, first * bs, raw, &w->err, w->what);
		sent(w, r);
		pd->len = 0;
	}
	if (r)
		return r;

	uint64_t bytes = PM_FRAME_HDR_LEN + PM_BLOCKS_FIXED_LEN + pg.payload_len;
	struct round_acc *a = &c->acc[round < PM_MAX_ROUNDS ? round : PM_MAX_ROUNDS];
	atomic_fetch_add(kind == BLK_DATA ? &a->dblocks : kind == BLK_ZERO ? &a->dzero : &a->dunalloc, n);
	atomic_fetch_add(&a->dbytes, bytes);
	atomic_fetch_add(&a->bytes, bytes);
	atomic_fetch_add(kind == BLK_DATA ? &d->blocks : kind == BLK_ZERO ? &d->zero : &d->unalloc, n);
	atomic_fetch_add(&d->bytes, bytes);
	atomic_fetch_add(&w->wire_bytes, bytes);
	return 0;
}

int src_send_disk_chunk(struct worker *w, struct pm_task t)
{
	struct src_ctx *c = w->c;
	const struct chunk_ref *ch = &c->chunks[t.chunk];
	struct src_disk *d = &c->disk[ch->region];
	uint64_t bm[PM_MAX_CHUNK_PAGES / 64] = { 0 }, alloc[PM_MAX_CHUNK_PAGES / 64];
	struct pending pd = { w->dhead, 0 };
	bool any = false;
	int r;

	/* The same rule as memory's chunks: harvests in round order. */
	pthread_mutex_lock(&c->chunk_lock[t.chunk]);
	if (c->chunk_round[t.chunk] >= t.round) {
		pthread_mutex_unlock(&c->chunk_lock[t.chunk]);
		return 0;
	}
	r = d->bd->ops->dirty_harvest(d->bd->dev, ch->first, ch->npages, bm, &w->err);
	c->chunk_round[t.chunk] = t.round;
	/* Its last copy went on a lost channel: all of it again, in this
	 * (higher) round -- as for a memory chunk. */
	bool resend = c->resend && atomic_exchange(&c->resend[t.chunk], 0);
	pthread_mutex_unlock(&c->chunk_lock[t.chunk]);
	if (resend)
		atomic_fetch_sub(&c->resend_pending, 1);
	if (r)
		return r;
	if (t.round == 1 || resend)
		memset(bm, 0xff, sizeof(bm));
	w->cur_chunk = t.chunk;
	for (uint32_t k = 0; k < (ch->npages + 63) / 64; k++)
		any |= bm[k] != 0;
	if (!any)
		return 0;
	/* After the harvest: a block allocated from here on is dirty again. */
	r = allocated(d, ch->first, ch->npages, alloc, &w->err);
	if (r)
		return r;

	uint32_t i = 0;
	while (i < ch->npages) {
		if (!(bm[i / 64] >> (i % 64) & 1)) {
			i++;
			continue;
		}
		enum block_kind kind = kind_of(d, alloc, ch->first, i);
		uint32_t j = i + 1;
		while (j < ch->npages && (bm[j / 64] >> (j % 64) & 1) && kind_of(d, alloc, ch->first, j) == kind)
			j++;
		r = emit(w, d, &pd, ch->region, ch->first + i, j - i, kind, t.round);
		if (r)
			return r;
		i = j;
	}
	if (pd.len) {
		r = sending(w);
		if (!r)
			r = pm_send_buf(&w->conn, pd.buf, pd.len, &w->err, w->what);
		sent(w, r);
	}
	return r;
}
