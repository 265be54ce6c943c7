/* SPDX-License-Identifier: MIT */
/* Source side of a migration: the producer (this thread) walks guest memory
 * in chunks, one pass per round, and hands chunks to N workers; each worker
 * owns one TCP channel, harvests its chunk's dirty bits just before reading
 * it, skips zero pages, optionally compresses, and sends the chunk's frames
 * with one sendmsg straight from guest memory.  Rounds overlap: the producer
 * starts the next pass while workers still send the last one, unless
 * barrier mode asks for a QEMU-style drain at every round end. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>
#include <pmigrate/rangelock.h>
#include "engine/codec.h"
#include "engine/net.h"
#include "engine/protocol.h"
#include "engine/queue.h"

struct chunk_ref {
	uint32_t region;
	uint32_t npages;
	uint64_t first;
};

struct worker {
	struct src_ctx *c;
	struct pm_conn conn;
	pthread_t thread;
	bool started;
	struct pm_codec *codec;
	uint8_t *cbuf;                  /* compressed payloads of one chunk */
	uint8_t *snap;                  /* stable copy of the run being compressed */
	size_t cbuf_cap;
	uint8_t (*hdrs)[PM_FRAME_HDR_LEN + PM_PAGES_FIXED_LEN];
	struct iovec *iov;
	struct pm_end sent;             /* what END will count */
	char what[160];                 /* "channel 2 (10.0.0.2:7000): sending pages" */
	_Atomic uint64_t wire_bytes;
	struct pm_err err;
};

struct round_acc {
	_Atomic uint64_t pages, zero, bytes;
};

struct src_ctx {
	struct pm_backend *be;
	const struct pm_migrate_params *p;
	unsigned nch, chunk_pages, timeout_ms;
	uint32_t nchunks;
	struct chunk_ref *chunks;
	pthread_mutex_t *chunk_lock;
	uint32_t *chunk_round;          /* last round each chunk was harvested in */
	uint64_t region_base[PM_MAX_REGIONS]; /* global page number of each region */
	struct pm_queue q;
	struct worker *w;
	atomic_bool failed;
	pthread_mutex_t err_lock;
	struct pm_err err;
	struct round_acc acc[PM_MAX_ROUNDS + 2];
	uint64_t vm_pages;
	atomic_uint cur_round;
	atomic_ullong dirty_at_start;
	atomic_uint throttle;
	const char *_Atomic phase;
	double t0;
	/* progress thread */
	pthread_t prog_thread;
	bool prog_started;
	atomic_bool prog_stop;
};

static void fail(struct src_ctx *c, const struct pm_err *e)
{
	pthread_mutex_lock(&c->err_lock);
	if (!c->err.code)
		c->err = *e;
	pthread_mutex_unlock(&c->err_lock);
	atomic_store(&c->failed, true);
}

static int flush(struct worker *w, int *niov)
{
	int r = 0;

	if (*niov)
		r = pm_send_all(&w->conn, w->iov, *niov, &w->err, w->what);
	*niov = 0;
	return r;
}

/* Emits one PAGES frame for pages [first, first+n) of the chunk's region. */
static int emit_run(struct worker *w, const struct chunk_ref *ch, uint64_t first, uint32_t n,
		    bool zero, uint32_t round, int *niov, unsigned *nhdr, size_t *cused)
{
	struct src_ctx *c = w->c;
	const struct pm_region *rg = &c->be->regions[ch->region];
	uint8_t *src = rg->host + first * PM_PAGE_SIZE;
	size_t raw = (size_t)n * PM_PAGE_SIZE;
	struct pm_pages pg = { .region = ch->region, .npages = n, .first = first, .round = round };
	uint8_t *h = w->hdrs[*nhdr];
	void *payload = src;
	int r;

	if (zero) {
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
	atomic_fetch_add(zero ? &a->zero : &a->pages, n);
	atomic_fetch_add(&a->bytes, bytes);
	atomic_fetch_add(&w->wire_bytes, bytes);
	w->sent.frames++;
	w->sent.pages += n;
	w->sent.payload_bytes += pg.payload_len;
	return 0;
}

/* Harvests one chunk and sends its dirty pages. */
static int send_chunk(struct worker *w, struct pm_task t)
{
	struct src_ctx *c = w->c;
	const struct chunk_ref *ch = &c->chunks[t.chunk];
	uint64_t bm[PM_MAX_CHUNK_PAGES / 64] = { 0 };
	const uint8_t *base = c->be->regions[ch->region].host;
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
	pthread_mutex_unlock(&c->chunk_lock[t.chunk]);
	if (r)
		return r;
	if (t.round == 1)
		memset(bm, 0xff, sizeof(bm));

	uint32_t i = 0;
	while (i < ch->npages) {
		if (!(bm[i / 64] >> (i % 64) & 1)) {
			i++;
			continue;
		}
		bool zero = pm_page_is_zero(base + (ch->first + i) * PM_PAGE_SIZE);
		uint32_t j = i + 1;
		while (j < ch->npages && (bm[j / 64] >> (j % 64) & 1) &&
		       pm_page_is_zero(base + (ch->first + j) * PM_PAGE_SIZE) == zero)
			j++;
		r = emit_run(w, ch, ch->first + i, j - i, zero, t.round, &niov, &nhdr, &cused);
		if (r)
			return r;
		i = j;
	}
	return flush(w, &niov);
}

/* A chunk is harvested and sent under a read lock of the VM's layout lock
 * (if it has one), so a discard or hot-add never lands in the middle. */
static int process_chunk(struct worker *w, struct pm_task t)
{
	struct src_ctx *c = w->c;
	struct pm_rangelock *ll = c->be->layout_lock;
	const struct chunk_ref *ch = &c->chunks[t.chunk];
	uint64_t g = c->region_base[ch->region] + ch->first;
	struct pm_range lr;
	int r;

	if (ll)
		pm_range_rdlock(ll, &lr, g, g + ch->npages);
	r = send_chunk(w, t);
	if (ll)
		pm_range_unlock(ll, &lr);
	return r;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct pm_task t;

	while (pm_queue_pop(&w->c->q, &t)) {
		if (!atomic_load(&w->c->failed) && process_chunk(w, t))
			fail(w->c, &w->err);
		pm_queue_done(&w->c->q);
	}
	return NULL;
}

static void *progress_main(void *arg)
{
	struct src_ctx *c = arg;
	unsigned iv = c->p->progress_interval_ms ? c->p->progress_interval_ms : 250;
	uint64_t last[PM_MAX_CHANNELS] = { 0 };
	double tlast = pm_now_ms();

	while (!atomic_load(&c->prog_stop)) {
		usleep(iv * 1000);
		struct pm_progress pr = { .phase = atomic_load(&c->phase) };
		double now = pm_now_ms();
		pr.round = atomic_load(&c->cur_round);
		pr.dirty_pages = atomic_load(&c->dirty_at_start);
		pr.elapsed_ms = now - c->t0;
		pr.nchannels = c->nch;
		pr.throttle_pct = atomic_load(&c->throttle);
		for (unsigned r = 0; r <= PM_MAX_ROUNDS; r++) {
			pr.pages_sent += atomic_load(&c->acc[r].pages);
			pr.zero_pages += atomic_load(&c->acc[r].zero);
			pr.bytes_sent += atomic_load(&c->acc[r].bytes);
		}
		for (unsigned i = 0; i < c->nch; i++) {
			uint64_t b = atomic_load(&c->w[i].wire_bytes);
			pr.channel_mbps[i] = (b - last[i]) / 1e3 / (now - tlast);
			last[i] = b;
		}
		tlast = now;
		c->p->progress(c->p->progress_opaque, &pr);
	}
	return NULL;
}

/* Reads the next frame header on a channel, turning an ERROR frame into err. */
static int recv_reply(struct pm_conn *conn, uint32_t want, uint8_t *body, uint32_t cap, uint32_t *len,
		      const char *peer, struct pm_err *err)
{
	uint8_t hb[PM_FRAME_HDR_LEN];
	struct pm_frame_hdr h;
	char what[96];
	int r;

	snprintf(what, sizeof(what), "waiting for %s from %s", pm_frame_name(want), peer);
	r = pm_recv_buf(conn, hb, sizeof(hb), err, what);
	if (r)
		return r;
	pm_decode_hdr(hb, &h);
	r = pm_check_hdr(&h, PM_MAX_CHUNK_PAGES, err);
	if (r)
		return r;
	if (h.type == PM_FR_ERROR) {
		uint8_t eb[PM_ERROR_FIXED_LEN + PM_MAX_ERROR_LEN + 1];
		r = pm_recv_buf(conn, eb, h.len, err, what);
		if (r)
			return r;
		uint32_t ml = pm_get32(eb + 4);
		if (ml > h.len - PM_ERROR_FIXED_LEN)
			ml = h.len - PM_ERROR_FIXED_LEN;
		eb[PM_ERROR_FIXED_LEN + ml] = '\0';
		uint32_t code = pm_get32(eb);
		return pm_err_set(err, code && code < 4096 ? (int)code : EPROTO,
				  "destination refused: %s", (char *)eb + PM_ERROR_FIXED_LEN);
	}
	if (h.type != want || h.len > cap)
		return pm_err_set(err, EPROTO, "%s sent %s (length %u) while we waited for %s",
				  peer, pm_frame_name(h.type), h.len, pm_frame_name(want));
	if (len)
		*len = h.len;
	return h.len ? pm_recv_buf(conn, body, h.len, err, what) : 0;
}

/* When a send fails, the destination has often told us why first. */
static void explain_send_failure(struct src_ctx *c)
{
	for (unsigned i = 0; i < c->nch; i++) {
		struct pm_err e = { 0 };

		if (c->w[i].conn.fd < 0)
			continue;
		pm_conn_set_recv_timeout(&c->w[i].conn, 200);
		if (recv_reply(&c->w[i].conn, PM_FR_DONE, NULL, 0, NULL, "destination", &e) &&
		    strstr(e.msg, "destination refused")) {
			pthread_mutex_lock(&c->err_lock);
			c->err = e;
			pthread_mutex_unlock(&c->err_lock);
			return;
		}
	}
}

static int connect_channels(struct src_ctx *c, const uint8_t session[16], struct pm_err *err)
{
	const struct pm_migrate_params *p = c->p;
	uint32_t feat = (p->barrier ? PM_FEAT_BARRIER : 0) |
			(p->compress == PM_COMPRESS_LZ4 ? PM_FEAT_LZ4 : 0) |
			(p->compress == PM_COMPRESS_ZSTD ? PM_FEAT_ZSTD : 0);

	for (unsigned i = 0; i < c->nch; i++) {
		const char *to = p->to[i % p->nto];
		const char *bind = p->nbind ? p->bind[i % p->nbind] : NULL;
		struct pm_hello h = { .magic = PM_PROTO_MAGIC, .version = PM_PROTO_VERSION,
				      .channel = i, .nchannels = c->nch, .features = feat,
				      .chunk_pages = c->chunk_pages, .page_size = PM_PAGE_SIZE };
		uint8_t hb[PM_HELLO_LEN];
		struct pm_hello ack;
		uint32_t len;
		char peer[300];
		int r;

		snprintf(peer, sizeof(peer), "%s (channel %u)", to, i);
		snprintf(c->w[i].what, sizeof(c->w[i].what), "channel %u (%.100s): sending pages", i, to);
		memcpy(h.session, session, 16);
		r = pm_tcp_connect(to, bind, c->timeout_ms, err);
		if (r < 0)
			return r;
		pm_conn_init(&c->w[i].conn, r);
		pm_encode_hello(hb, &h);
		r = pm_send_frame(&c->w[i].conn, PM_FR_HELLO, hb, sizeof(hb), err);
		if (!r)
			r = recv_reply(&c->w[i].conn, PM_FR_HELLO_ACK, hb, sizeof(hb), &len, peer, err);
		if (!r)
			r = pm_decode_hello(hb, len, &ack, err);
		if (!r && (ack.channel != i || memcmp(ack.session, session, 16)))
			r = pm_err_set(err, EPROTO, "%s acknowledged another channel or session", peer);
		if (r)
			return r;
	}
	/* The destination checks our layout against its own before any page. */
	struct pm_layout l;
	uint8_t lb[PM_LAYOUT_FIXED_LEN + PM_MAX_REGIONS * PM_LAYOUT_REGION_LEN];
	pm_layout_of(c->be, &l);
	pm_encode_layout(lb, &l);
	int r = pm_send_frame(&c->w[0].conn, PM_FR_LAYOUT, lb, pm_layout_len(&l), err);
	if (!r)
		r = recv_reply(&c->w[0].conn, PM_FR_LAYOUT_ACK, NULL, 0, NULL, "destination", err);
	return r;
}

/* Pushes one pass over all chunks (or runs it inline in serial mode). */
static int run_pass(struct src_ctx *c, uint32_t round)
{
	for (uint32_t i = 0; i < c->nchunks; i++) {
		struct pm_task t = { .chunk = i, .round = round };
		if (atomic_load(&c->failed))
			return -1;
		if (c->p->serial) {
			if (process_chunk(&c->w[0], t))
				fail(c, &c->w[0].err);
		} else if (!pm_queue_push(&c->q, t)) {
			return -1;
		}
	}
	return atomic_load(&c->failed) ? -1 : 0;
}

static int wait_idle(struct src_ctx *c)
{
	if (c->p->serial)
		return atomic_load(&c->failed) ? -1 : 0;
	while (!pm_queue_wait_idle(&c->q, 100))
		if (atomic_load(&c->failed))
			return -1;
	return atomic_load(&c->failed) ? -1 : 0;
}

/* Barrier mode: every channel marks the round end, the destination drains
 * all channels and acknowledges each. */
static int round_barrier(struct src_ctx *c, uint32_t round)
{
	uint8_t b[PM_ROUND_LEN] = { 0 };
	struct pm_err e = { 0 };
	int r = wait_idle(c);

	if (r)
		return r;
	pm_put32(b, round);
	for (unsigned i = 0; i < c->nch && !r; i++)
		r = pm_send_frame(&c->w[i].conn, PM_FR_ROUND_END, b, sizeof(b), &e);
	for (unsigned i = 0; i < c->nch && !r; i++) {
		uint8_t ab[PM_ROUND_LEN];
		uint32_t len;
		r = recv_reply(&c->w[i].conn, PM_FR_ROUND_ACK, ab, sizeof(ab), &len, "destination", &e);
		if (!r && pm_get32(ab) != round)
			r = pm_err_set(&e, EPROTO, "destination acknowledged round %u, expected %u",
				       pm_get32(ab), round);
	}
	if (r)
		fail(c, &e);
	return r;
}

static uint64_t total_bytes(struct src_ctx *c)
{
	uint64_t b = 0;

	for (unsigned r = 0; r <= PM_MAX_ROUNDS; r++)
		b += atomic_load(&c->acc[r].bytes);
	return b;
}

/* Decides at the start of a round whether to switch over now. */
static int decide(struct src_ctx *c, unsigned round, uint64_t dirty, double bw_bytes_per_ms,
		  uint64_t *prev_dirty, unsigned *no_progress, char *reason, size_t rlen,
		  struct pm_err *err)
{
	const struct pm_migrate_params *p = c->p;
	unsigned downtime = p->downtime_ms ? p->downtime_ms : 300;
	unsigned max_rounds = p->max_rounds ? p->max_rounds : 30;
	double factor = p->max_bytes_factor > 0 ? p->max_bytes_factor : 8.0;
	double expect_ms = bw_bytes_per_ms > 0 ? dirty * (double)PM_PAGE_SIZE / bw_bytes_per_ms : 1e18;
	const char *why = NULL;

	if (expect_ms <= downtime) {
		snprintf(reason, rlen, "converged");
		return 1;
	}
	if (dirty >= *prev_dirty && round > 2)
		(*no_progress)++;
	else
		*no_progress = 0;
	*prev_dirty = dirty;
	if (round > max_rounds)
		why = "max-rounds";
	else if (total_bytes(c) > factor * c->vm_pages * PM_PAGE_SIZE)
		why = "max-bytes";
	else if (*no_progress >= 2)
		why = "no-progress";
	if (!why)
		return 0;
	if (p->policy == PM_NC_ABORT)
		return pm_err_set(err, ETIMEDOUT,
				  "migration does not converge (%s: %llu pages dirty, about %.0f ms to send "
				  "at the measured rate, target %u ms); gave up, the VM keeps running here",
				  why, (unsigned long long)dirty, expect_ms, downtime);
	if (p->policy == PM_NC_THROTTLE && strcmp(why, "max-rounds") && c->be->ops->throttle) {
		unsigned t = atomic_load(&c->throttle);
		if (t < 99) {
			t = t ? (t + 20 > 99 ? 99 : t + 20) : 30;
			atomic_store(&c->throttle, t);
			c->be->ops->throttle(c->be->vm, t);
			*no_progress = 0;
			return 0;
		}
	}
	snprintf(reason, rlen, "%s", why);
	return 1;
}

static void fill_report(struct src_ctx *c, struct pm_report *rep, unsigned nrounds,
			const double *round_ms, const uint64_t *dirty_at)
{
	rep->channels = c->nch;
	rep->vm_pages = c->vm_pages;
	rep->nrounds = nrounds;
	for (unsigned r = 1; r <= nrounds && r <= PM_MAX_ROUNDS; r++) {
		struct pm_round_stat *s = &rep->rounds[r - 1];
		s->round = r;
		s->pages = atomic_load(&c->acc[r].pages);
		s->zero_pages = atomic_load(&c->acc[r].zero);
		s->bytes = atomic_load(&c->acc[r].bytes);
		s->duration_ms = round_ms[r];
		s->dirty_at_start = dirty_at[r];
		s->final = r == nrounds;
		rep->pages_sent += s->pages;
		rep->zero_pages += s->zero_pages;
		rep->bytes_sent += s->bytes;
	}
	for (unsigned i = 0; i < c->nch; i++) {
		rep->channel_bytes[i] = atomic_load(&c->w[i].wire_bytes);
		rep->frames += c->w[i].sent.frames;
	}
	rep->throttle_pct = atomic_load(&c->throttle);
}

static int setup(struct src_ctx *c, struct pm_backend *be, const struct pm_migrate_params *p,
		 struct pm_err *err)
{
	c->be = be;
	c->p = p;
	c->chunk_pages = p->chunk_pages ? p->chunk_pages : PM_MAX_CHUNK_PAGES;
	c->timeout_ms = p->timeout_ms ? p->timeout_ms : 30000;
	c->nch = p->serial ? 1 : p->channels ? p->channels : p->nto;
	pthread_mutex_init(&c->err_lock, NULL);
	if (!p->nto || !p->to)
		return pm_err_set(err, EINVAL, "no destination address given");
	if (c->nch == 0 || c->nch > PM_MAX_CHANNELS)
		return pm_err_set(err, EINVAL, "channel count %u is out of range (1..%u)", c->nch, PM_MAX_CHANNELS);
	if (c->chunk_pages > PM_MAX_CHUNK_PAGES || c->chunk_pages % 64)
		return pm_err_set(err, EINVAL, "chunk of %u pages: must be a multiple of 64 up to %u",
				  c->chunk_pages, PM_MAX_CHUNK_PAGES);
	if (!be->nregions || be->nregions > PM_MAX_REGIONS)
		return pm_err_set(err, EINVAL, "VM has %u memory regions (1..%u supported)",
				  be->nregions, PM_MAX_REGIONS);
	/* Every address is checked before the first connection. */
	for (unsigned i = 0; i < p->nto + p->nbind; i++) {
		struct sockaddr_storage ss;
		socklen_t sl;
		const char *a = i < p->nto ? p->to[i] : p->bind[i - p->nto];
		int r = pm_parse_addr(a, &ss, &sl, i >= p->nto, err);
		if (r)
			return r;
	}
	for (unsigned i = 0; i < be->nregions; i++) {
		c->region_base[i] = c->vm_pages;
		c->vm_pages += be->regions[i].npages;
		c->nchunks += (be->regions[i].npages + c->chunk_pages - 1) / c->chunk_pages;
	}
	c->chunks = calloc(c->nchunks, sizeof(*c->chunks));
	c->chunk_lock = calloc(c->nchunks, sizeof(*c->chunk_lock));
	c->chunk_round = calloc(c->nchunks, sizeof(*c->chunk_round));
	c->w = calloc(c->nch, sizeof(*c->w));
	if (!c->chunks || !c->chunk_lock || !c->chunk_round || !c->w)
		return pm_err_set(err, ENOMEM, "out of memory");
	uint32_t k = 0;
	for (unsigned i = 0; i < be->nregions; i++)
		for (uint64_t f = 0; f < be->regions[i].npages; f += c->chunk_pages) {
			uint64_t n = be->regions[i].npages - f;
			c->chunks[k] = (struct chunk_ref){ .region = i, .first = f,
				.npages = n < c->chunk_pages ? n : c->chunk_pages };
			pthread_mutex_init(&c->chunk_lock[k++], NULL);
		}
	size_t run = (size_t)c->chunk_pages * PM_PAGE_SIZE;
	for (unsigned i = 0; i < c->nch; i++) {
		struct worker *w = &c->w[i];
		w->c = c;
		pm_conn_init(&w->conn, -1);
		w->hdrs = calloc(c->chunk_pages, sizeof(*w->hdrs));
		w->iov = calloc(2 * c->chunk_pages, sizeof(*w->iov));
		if (!w->hdrs || !w->iov)
			return pm_err_set(err, ENOMEM, "out of memory");
		if (p->compress != PM_COMPRESS_NONE) {
			w->cbuf_cap = pm_codec_bound(p->compress, run) * 2;
			w->cbuf = malloc(w->cbuf_cap);
			w->snap = malloc(run);
			if (!w->cbuf || !w->snap || pm_codec_new(&w->codec, p->compress, p->compress_level))
				return pm_err_set(err, ENOMEM, "out of memory");
		}
	}
	if (pm_queue_init(&c->q, 4 * c->nch))
		return pm_err_set(err, ENOMEM, "out of memory");
	return 0;
}

static void teardown(struct src_ctx *c, const struct pm_err *why)
{
	pm_queue_close(&c->q);
	for (unsigned i = 0; c->w && i < c->nch; i++) {
		struct worker *w = &c->w[i];
		/* A failed migration tells the destination why before hanging up. */
		if (why && why->code)
			pm_send_error_frame(&w->conn, why->code, why->msg);
		pm_conn_shutdown(&w->conn);
		if (w->started)
			pthread_join(w->thread, NULL);
		pm_conn_close(&w->conn);
		pm_codec_free(w->codec);
		free(w->cbuf);
		free(w->snap);
		free(w->hdrs);
		free(w->iov);
	}
	if (c->prog_started) {
		atomic_store(&c->prog_stop, true);
		pthread_join(c->prog_thread, NULL);
	}
	for (uint32_t i = 0; c->chunk_lock && i < c->nchunks; i++)
		pthread_mutex_destroy(&c->chunk_lock[i]);
	if (c->q.slots)
		pm_queue_destroy(&c->q);
	free(c->chunks);
	free(c->chunk_lock);
	free(c->chunk_round);
	free(c->w);
	pthread_mutex_destroy(&c->err_lock);
}

int pm_migrate_outgoing(struct pm_backend *be, const struct pm_migrate_params *p,
			struct pm_report *rep, struct pm_err *err)
{
	struct src_ctx *c = calloc(1, sizeof(*c));
	double round_ms[PM_MAX_ROUNDS + 2] = { 0 };
	uint64_t dirty_at[PM_MAX_ROUNDS + 2] = { 0 };
	bool paused = false, tracking = false, done = false;
	unsigned round = 0, no_progress = 0;
	uint64_t prev_dirty = UINT64_MAX;
	uint8_t session[16];
	double t_pause = 0, t_end, dump_ms = 0;
	int r;

	memset(rep, 0, sizeof(*rep));
	rep->role = "source";
	rep->barrier = p->barrier;
	rep->serial = p->serial;
	rep->compress = p->compress;
	if (!c)
		return pm_err_set(err, ENOMEM, "out of memory");
	c->t0 = pm_now_ms();
	atomic_store(&c->phase, "connecting");
	r = setup(c, be, p, err);
	if (r)
		goto out;
	if (p->progress) {
		c->prog_started = !pthread_create(&c->prog_thread, NULL, progress_main, c);
	}
	if (getrandom(session, sizeof(session), 0) != sizeof(session)) {
		r = pm_err_set(err, errno, "getrandom: %s", strerror(errno));
		goto out;
	}
	r = connect_channels(c, session, err);
	if (r)
		goto out;
	rep->setup_ms = pm_now_ms() - c->t0;
	r = be->ops->dirty_start(be->vm, err);
	if (r)
		goto out;
	tracking = true;
	if (!p->serial)
		for (unsigned i = 0; i < c->nch; i++) {
			if (pthread_create(&c->w[i].thread, NULL, worker_main, &c->w[i])) {
				r = pm_err_set(err, EAGAIN, "cannot start worker thread");
				goto out;
			}
			c->w[i].started = true;
		}

	/* Pre-copy rounds. */
	atomic_store(&c->phase, "precopy");
	double t_round = pm_now_ms(), bw = 0;
	uint64_t bytes_at_round = 0;
	char reason[64] = "";
	for (round = 1;; round++) {
		uint64_t dirty = c->vm_pages;
		if (round > 1) {
			double now = pm_now_ms();
			uint64_t b = total_bytes(c);
			round_ms[round - 1] = now - t_round;
			if (now > t_round)
				bw = (b - bytes_at_round) / (now - t_round);
			t_round = now;
			bytes_at_round = b;
			r = be->ops->dirty_sync(be->vm, err);
			if (!r)
				r = be->ops->dirty_count(be->vm, &dirty, err);
			if (r)
				goto out;
			dirty_at[round] = dirty;
			atomic_store(&c->dirty_at_start, dirty);
			r = decide(c, round, dirty, bw, &prev_dirty, &no_progress, reason, sizeof(reason), err);
			if (r < 0)
				goto out;
			if (r > 0 || round >= PM_MAX_ROUNDS)
				break;
		} else {
			dirty_at[1] = dirty;
			atomic_store(&c->dirty_at_start, dirty);
		}
		atomic_store(&c->cur_round, round);
		if (run_pass(c, round) || (p->barrier && round_barrier(c, round)))
			goto failed;
	}
	if (!reason[0])
		snprintf(reason, sizeof(reason), "max-rounds");
	snprintf(rep->switchover_reason, sizeof(rep->switchover_reason), "%s", reason);

	/* Let what is in flight finish while the VM still runs: the pause
	 * should only cover what is dirty now, not a full pipeline. */
	if (wait_idle(c))
		goto failed;
	round_ms[round - 1] += pm_now_ms() - t_round;
	t_round = pm_now_ms();

	/* Switchover: pause, final harvest, send the rest and the device state. */
	atomic_store(&c->phase, "switchover");
	atomic_store(&c->cur_round, round);
	t_pause = pm_now_ms();
	r = be->ops->pause(be->vm, err);
	if (r)
		goto out;
	paused = true;
	if (p->dump_at_pause) {
		double t = pm_now_ms();
		r = pm_dump_memory(be, p->dump_at_pause, err);
		dump_ms += pm_now_ms() - t;
		if (r)
			goto out;
	}
	r = be->ops->dirty_sync(be->vm, err);
	if (!r)
		r = be->ops->dirty_count(be->vm, &dirty_at[round], err);
	if (r)
		goto out;
	if (run_pass(c, round) || wait_idle(c))
		goto failed;
	round_ms[round] = pm_now_ms() - t_round - dump_ms;

	atomic_store(&c->phase, "completing");
	void *state = NULL;
	size_t state_len = 0;
	r = be->ops->save_state(be->vm, &state, &state_len, err);
	if (r)
		goto out;
	if (state_len > PM_MAX_STATE_LEN) {
		free(state);
		r = pm_err_set(err, EFBIG, "device state of %zu bytes exceeds the protocol limit", state_len);
		goto out;
	}
	r = pm_send_frame(&c->w[0].conn, PM_FR_STATE, state, state_len, err);
	free(state);
	for (unsigned i = 0; i < c->nch && !r; i++) {
		uint8_t eb[PM_END_LEN];
		c->w[i].sent.final_round = round;
		pm_encode_end(eb, &c->w[i].sent);
		r = pm_send_frame(&c->w[i].conn, PM_FR_END, eb, sizeof(eb), err);
	}
	if (r)
		goto out;
	/* The destination resumes the VM, then says DONE: only now is the
	 * source's copy expendable. */
	for (unsigned i = 0; i < c->nch && !r; i++) {
		uint8_t db[PM_DONE_LEN];
		uint32_t dl;
		r = recv_reply(&c->w[i].conn, PM_FR_DONE, db, sizeof(db), &dl, "destination", err);
		if (!r && i == 0)
			dump_ms += pm_get64(db) / 1e3;
	}
	if (r)
		goto out;
	done = true;
	goto out;

failed:
	explain_send_failure(c);
	pthread_mutex_lock(&c->err_lock);
	r = pm_err_set(err, c->err.code ? c->err.code : EIO, "%s",
		       c->err.code ? c->err.msg : "migration failed");
	pthread_mutex_unlock(&c->err_lock);
out:
	t_end = pm_now_ms();
	if (c->w) {
		fill_report(c, rep, round, round_ms, dirty_at);
	}
	rep->total_time_ms = t_end - c->t0;
	/* Verification dumps are a test aid, not part of the migration. */
	rep->verify_dump_ms = dump_ms;
	rep->downtime_ms = paused ? t_end - t_pause - dump_ms : 0;
	rep->total_time_ms -= dump_ms;
	rep->throughput_mbps = rep->total_time_ms > 0 ? rep->bytes_sent / 1e3 / rep->total_time_ms : 0;
	if (tracking && be->ops->dirty_method)
		snprintf(rep->dirty_method, sizeof(rep->dirty_method), "%s", be->ops->dirty_method(be->vm));
	if (tracking)
		be->ops->dirty_stop(be->vm);
	if (c->throttle && be->ops->throttle)
		be->ops->throttle(be->vm, 0);
	if (!done && !r)
		r = pm_err_set(err, EIO, "migration failed");
	teardown(c, done ? NULL : err);
	if (!done) {
		if (paused) {
			struct pm_err e2 = { 0 };
			if (be->ops->resume(be->vm, &e2))
				pm_err_reset(err, e2.code, "%s; and resuming the source failed: %s",
					     err->msg, e2.msg);
		}
		rep->downtime_ms = 0;
		rep->status = r;
		snprintf(rep->error, sizeof(rep->error), "%s", err->msg);
	}
	free(c);
	return done ? 0 : r;
}
