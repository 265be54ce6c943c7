/* SPDX-License-Identifier: MIT */
/* The source's send path: a worker owns one channel, takes (chunk, round)
 * tasks from the queue, harvests the chunk's dirty bits just before reading
 * it, cuts the dirty pages into runs of zero or non-zero pages, optionally
 * compresses, and sends the chunk's frames with one sendmsg straight from
 * guest memory. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <pmigrate/guestmem.h>
#include <pmigrate/rangelock.h>
#include "engine/codec.h"
#include "engine/net.h"
#include "engine/source.h"

void src_fail(struct src_ctx *c, const struct pm_err *e)
{
	pthread_mutex_lock(&c->err_lock);
	if (!c->err.code)
		c->err = *e;
	pthread_mutex_unlock(&c->err_lock);
	atomic_store(&c->failed, true);
	/* No more tasks: a producer blocked on a full queue (its workers
	 * gone with their channels) wakes up. */
	if (c->q.slots)
		pm_queue_close(&c->q);
}

/* Sends what is gathered.  The chunk is in the channel's log first: if the
 * channel is lost before the destination acknowledges it, it goes again. */
static int flush(struct worker *w, int *niov)
{
	int r = 0;

	if (*niov) {
		r = chan_log(w, w->cur_chunk);
		if (!r)
			r = pm_send_all(&w->conn, w->iov, *niov, &w->err, w->what);
		if (r)
			w->io_failed = true;
		else
			w->last_send = pm_now_ms();
	}
	*niov = 0;
	return r;
}

/* What a dirty page is sent as. */
enum page_kind { PAGE_UNPOPULATED, PAGE_ZERO, PAGE_DATA };

/* Emits one PAGES frame for pages [first, first+n) of the chunk's region. */
static int emit_run(struct worker *w, const struct chunk_ref *ch, uint64_t first, uint32_t n,
		    enum page_kind kind, uint32_t round, int *niov, unsigned *nhdr, size_t *cused)
{
	struct src_ctx *c = w->c;
	const struct pm_region *rg = &c->be->regions[ch->region];
	uint8_t *src = rg->host + first * PM_PAGE_SIZE;
	size_t raw = (size_t)n * PM_PAGE_SIZE;
	struct pm_pages pg = { .region = ch->region, .npages = n, .first = first, .round = round };
	uint8_t *h = w->hdrs[*nhdr];
	void *payload = src;
	int r;

	if (kind == PAGE_UNPOPULATED) {
		pg.encoding = PM_ENC_UNPOPULATED;
	} else if (kind == PAGE_ZERO) {
		pg.encoding = PM_ENC_ZERO;
	} else if (c->p->compress != PM_COMPRESS_NONE) {
		size_t bound = pm_codec_bound(c->p->compress, raw);
		if (*cused + bound > w->cbuf_cap) {
			r = flush(w, niov);
			if (r)
				return r;
			*cused = 0;
			*nhdr = 0;
			h = w->hdrs[0];
		}
		/* Compress a private copy: a compressor reading live memory can
		 * encode a stable page as a match against a page being written,
		 * and the stable page would never be sent again. */
		memcpy(w->snap, src, raw);
		size_t clen = pm_codec_compress(w->codec, w->snap, raw, w->cbuf + *cused, bound);
		if (clen) {
			pg.encoding = pm_codec_encoding(c->p->compress);
			pg.payload_len = clen;
			payload = w->cbuf + *cused;
			*cused += clen;
		} else {
			pg.encoding = PM_ENC_RAW;
			pg.payload_len = raw;
		}
	} else {
		pg.encoding = PM_ENC_RAW;
		pg.payload_len = raw;
	}
	pm_encode_hdr(h, PM_FR_PAGES, PM_PAGES_FIXED_LEN + pg.payload_len);
	pm_encode_pages(h + PM_FRAME_HDR_LEN, &pg);
	w->iov[(*niov)++] = (struct iovec){ h, PM_FRAME_HDR_LEN + PM_PAGES_FIXED_LEN };
	if (pg.payload_len)
		w->iov[(*niov)++] = (struct iovec){ payload, pg.payload_len };
	(*nhdr)++;

	uint64_t bytes = PM_FRAME_HDR_LEN + PM_PAGES_FIXED_LEN + pg.payload_len;
	struct round_acc *a = &c->acc[round < PM_MAX_ROUNDS ? round : PM_MAX_ROUNDS];
	atomic_fetch_add(kind == PAGE_DATA ? &a->pages : kind == PAGE_ZERO ? &a->zero : &a->unpop, n);
	atomic_fetch_add(&a->bytes, bytes);
	atomic_fetch_add(&w->wire_bytes, bytes);
	w->sent.frames++;
	w->sent.pages += n;
	w->sent.payload_bytes += pg.payload_len;
	return 0;
}

/* A page never populated is not read: reading a memfd hole allocates it. */
static enum page_kind page_kind(const uint8_t *base, uint64_t first, const uint64_t *pop, uint32_t i)
{
	if (!(pop[i / 64] >> (i % 64) & 1))
		return PAGE_UNPOPULATED;
	return pm_page_is_zero(base + (first + i) * PM_PAGE_SIZE) ? PAGE_ZERO : PAGE_DATA;
}

/* Harvests one chunk and sends its dirty pages. */
static int send_chunk(struct worker *w, struct pm_task t)
{
	struct src_ctx *c = w->c;
	const struct chunk_ref *ch = &c->chunks[t.chunk];
	uint64_t bm[PM_MAX_CHUNK_PAGES / 64] = { 0 }, pop[PM_MAX_CHUNK_PAGES / 64];
	const struct pm_region *rg = &c->be->regions[ch->region];
	const uint8_t *base = rg->host;
	int niov = 0, r = 0;
	unsigned nhdr = 0;
	size_t cused = 0;

	/* Harvest and record the round under the chunk's lock, so a chunk's
	 * harvests happen in round order even when two rounds' tasks for it
	 * are in flight: the receiver's per-page round check relies on it. */
	pthread_mutex_lock(&c->chunk_lock[t.chunk]);
	if (c->chunk_round[t.chunk] >= t.round) {
		pthread_mutex_unlock(&c->chunk_lock[t.chunk]);
		return 0;
	}
	r = c->be->ops->dirty_harvest(c->be->vm, ch->region, ch->first, ch->npages, bm, &w->err);
	c->chunk_round[t.chunk] = t.round;
	/* Its last copy went on a lost channel: all of it again, in this
	 * (higher) round. */
	bool resend = c->resend && atomic_exchange(&c->resend[t.chunk], 0);
	pthread_mutex_unlock(&c->chunk_lock[t.chunk]);
	if (resend) {
		atomic_fetch_sub(&c->resend_pending, 1);
		atomic_fetch_add(&c->resent_pages, ch->npages);
	}
	if (r)
		return r;
	if (t.round == 1 || resend)
		memset(bm, 0xff, sizeof(bm));
	/* After the harvest: a page populated from here on is dirty again. */
	if (rg->mem) {
		r = pm_guestmem_populated(rg->mem, rg->mem_offset / PM_PAGE_SIZE + ch->first,
					  ch->npages, pop, &w->err);
		if (r)
			return r;
	} else {
		memset(pop, 0xff, sizeof(pop));
	}
	w->cur_chunk = t.chunk;

	uint32_t i = 0;
	while (i < ch->npages) {
		if (!(bm[i / 64] >> (i % 64) & 1)) {
			i++;
			continue;
		}
		enum page_kind kind = page_kind(base, ch->first, pop, i);
		uint32_t j = i + 1;
		while (j < ch->npages && (bm[j / 64] >> (j % 64) & 1) &&
		       page_kind(base, ch->first, pop, j) == kind)
			j++;
		r = emit_run(w, ch, ch->first + i, j - i, kind, t.round, &niov, &nhdr, &cused);
		if (r)
			return r;
		i = j;
	}
	return flush(w, &niov);
}

static int process_chunk(struct worker *w, struct pm_task t);

/* A chunk is harvested and sent under a read lock of the VM's layout lock
 * (if it has one), so a discard or hot-add never lands in the middle. */
int src_process_chunk(struct worker *w, struct pm_task t)
{
	double t0 = pm_now_ms();
	int r = process_chunk(w, t);

	/* How long the channel was busy: the link's speed is bytes over busy
	 * time, not over a round's wall time (an idle sender says nothing). */
	atomic_fetch_add(&w->busy_us, (uint64_t)((pm_now_ms() - t0) * 1e3));
	return r;
}

static int process_chunk(struct worker *w, struct pm_task t)
{
	struct src_ctx *c = w->c;
	struct pm_rangelock *ll = c->be->layout_lock;
	const struct chunk_ref *ch = &c->chunks[t.chunk];
	uint64_t g = c->region_base[ch->region] + ch->first;
	struct pm_range lr;
	int r;

	if (ch->disk) {
		double t0 = pm_now_ms();
		r = src_send_disk_chunk(w, t);
		atomic_fetch_add(&c->disk[ch->region].busy_us, (uint64_t)((pm_now_ms() - t0) * 1e3));
		return r;
	}

	if (ll)
		pm_range_rdlock(ll, &lr, g, g + ch->npages);
	r = send_chunk(w, t);
	if (ll)
		pm_range_unlock(ll, &lr);
	return r;
}

void src_run_task(struct worker *w, struct pm_task t)
{
	struct src_ctx *c = w->c;

	pthread_mutex_lock(&w->io);
	if (atomic_load(&c->failed)) {
		/* nothing: the migration ends */
	} else if (chan_gone(w)) {
		chan_mark_resend(c, t.chunk);
	} else {
		w->io_failed = false;
		if (src_process_chunk(w, t)) {
			if (w->io_failed) {
				chan_mark_resend(c, t.chunk);
				chan_lost(w, &w->err);
			} else {
				src_fail(c, &w->err);
			}
		} else {
			chan_poll(w);
		}
	}
	pthread_mutex_unlock(&w->io);
}

void *src_worker_main(void *arg)
{
	struct worker *w = arg;
	struct src_ctx *c = w->c;
	unsigned ping_ms = c->timeout_ms / 3 ? c->timeout_ms / 3 : 1;
	struct pm_task t;

	for (;;) {
		/* A lost channel dials again while it may; else its worker is
		 * done and the others carry on. */
		if (atomic_load(&w->lost) && !chan_reconnect(w))
			break;
		int g = pm_queue_pop_timed(&c->q, &t, ping_ms);
		if (g < 0)
			break;
		if (g == 0) {
			chan_ping(w);
			continue;
		}
		src_run_task(w, t);
		pm_queue_done(&c->q);
		src_sample(c, false);
	}
	return NULL;
}

int src_worker_init(struct worker *w, struct src_ctx *c, unsigned idx, struct pm_err *err)
{
	size_t run = (size_t)c->chunk_pages * PM_PAGE_SIZE;
	uint32_t dblocks = 0;

	/* A disk chunk's run may be larger (one block of up to 1 MiB). */
	for (unsigned i = 0; i < c->ndisks; i++) {
		size_t r = (size_t)c->disk[i].chunk_blocks * c->disk[i].bd->block_size;
		if (r > run)
			run = r;
		if (c->disk[i].chunk_blocks > dblocks)
			dblocks = c->disk[i].chunk_blocks;
	}

	w->c = c;
	w->idx = idx;
	pm_conn_init(&w->conn, -1);
	int r = chan_init(w, err);
	if (r)
		return r;
	w->hdrs = calloc(c->chunk_pages, sizeof(*w->hdrs));
	w->iov = calloc(2 * c->chunk_pages, sizeof(*w->iov));
	if (!w->hdrs || !w->iov)
		return pm_err_set(err, ENOMEM, "out of memory");
	if (c->ndisks) {
		w->dhead = malloc((size_t)(dblocks + 1) * (PM_FRAME_HDR_LEN + PM_BLOCKS_FIXED_LEN));
		if (!w->dhead)
			return pm_err_set(err, ENOMEM, "out of memory");
	}
	/* Disk data read through user space (compressed, or no sendfile). */
	if (c->ndisks && c->p->compress == PM_COMPRESS_NONE) {
		w->snap = malloc(run);
		if (!w->snap)
			return pm_err_set(err, ENOMEM, "out of memory");
	}
	if (c->p->compress != PM_COMPRESS_NONE) {
		w->cbuf_cap = pm_codec_bound(c->p->compress, run) * 2;
		w->cbuf = malloc(w->cbuf_cap);
		w->snap = malloc(run);
		if (!w->cbuf || !w->snap || pm_codec_new(&w->codec, c->p->compress, c->p->compress_level))
			return pm_err_set(err, ENOMEM, "out of memory");
	}
	return 0;
}

void src_worker_free(struct worker *w)
{
	if (w->log)
		chan_free(w);
	pm_codec_free(w->codec);
	free(w->cbuf);
	free(w->snap);
	free(w->hdrs);
	free(w->iov);
	free(w->dhead);
}
