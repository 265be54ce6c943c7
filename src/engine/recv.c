/* SPDX-License-Identifier: MIT */
/* The destination's receivers: one thread per channel reads frames,
 * validates every field against the destination's own layout before
 * writing a byte, and applies page runs straight into guest memory.  Each
 * page carries the round in which the source harvested it; a run is applied
 * only where it is newer than what the page holds, the check and the write
 * done under a write range lock on the run's pages -- but the lock is never
 * held across a wait for the network: raw pages are received in
 * non-blocking pieces, each decided page by page under the lock. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pmigrate/guestmem.h>
#include <pmigrate/rangelock.h>
#include "engine/codec.h"
#include "engine/dest.h"
#include "engine/digest.h"

#define RX_BUF (64u << 10)

int rx_send(struct receiver *x, uint32_t type, const void *body, uint32_t len, struct pm_err *err)
{
	/* Its receiver may be reading (and setting the connection's read
	 * deadlines) meanwhile: a deadline of our own. */
	pthread_mutex_lock(&x->send_lock);
	int r = pm_send_frame_until(&x->conn, type, body, len, pm_now_ms() + x->c->timeout_ms, err);
	pthread_mutex_unlock(&x->send_lock);
	return r;
}

/* Copies what the receive buffer holds into iov; returns the count. */
static size_t from_buffer(struct receiver *x, struct iovec *iov, int n)
{
	size_t done = 0;

	for (int i = 0; i < n && x->roff < x->rlen; i++) {
		size_t k = x->rlen - x->roff;
		if (k > iov[i].iov_len)
			k = iov[i].iov_len;
		memcpy(iov[i].iov_base, x->rbuf + x->roff, k);
		x->roff += k;
		done += k;
		if (k < iov[i].iov_len)
			break;
	}
	return done;
}

/* Reads exactly into iov, holding no lock: first what is buffered, then
 * large remainders straight into place, small ones through one recv that
 * may also buffer the frames behind -- so a stream of one-page runs does
 * not cost three syscalls a page. */
static int rx_readv(struct receiver *x, struct iovec *iov, int n, const char *what)
{
	for (;;) {
		size_t k = from_buffer(x, iov, n);
		while (n > 0 && k >= iov->iov_len) {
			k -= iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (uint8_t *)iov->iov_base + k;
			iov->iov_len -= k;
		}
		size_t left = 0;
		for (int i = 0; i < n; i++)
			left += iov[i].iov_len;
		if (!left)
			return 0;
		if (left >= RX_BUF / 4) {
			int r = pm_recv_all(&x->conn, iov, n, &x->err, what);
			x->io_failed = r != 0;
			return r;
		}
		x->roff = x->rlen = 0;
		while (x->rlen < left) {
			ssize_t r = pm_recv_some(&x->conn, x->rbuf + x->rlen, RX_BUF - x->rlen, &x->err, what);
			if (r < 0) {
				x->io_failed = true;
				return r;
			}
			x->rlen += r;
		}
	}
}

int rx_read(struct receiver *x, void *buf, size_t len, const char *what)
{
	struct iovec iov = { buf, len };

	return rx_readv(x, &iov, 1, what);
}

static bool has_data(const struct dst_ctx *c, uint64_t g)
{
	return __atomic_load_n(&c->has_data[g / 64], __ATOMIC_RELAXED) >> (g % 64) & 1;
}

/* Concurrent runs may share a word at their edges. */
void rx_set_data(struct dst_ctx *c, uint64_t g, bool on)
{
	uint64_t m = 1ull << (g % 64);

	if (on)
		__atomic_fetch_or(&c->has_data[g / 64], m, __ATOMIC_RELAXED);
	else
		__atomic_fetch_and(&c->has_data[g / 64], ~m, __ATOMIC_RELAXED);
}

/* A zero or unpopulated run, under the run's range lock: pages where the
 * run is newer must read as zero.  Those that hold data give their memory
 * back; untouched ones stay untouched (a region without a pm_guestmem
 * falls back to zeroing pages that are not zero already). */
static int clear_run(struct receiver *x, const struct pm_pages *pg, uint64_t g)
{
	struct dst_ctx *c = x->c;
	const struct pm_region *rg = &c->be->regions[pg->region];
	uint32_t d0 = 0, nd = 0;

	for (uint32_t k = 0; k <= pg->npages; k++) {
		bool newer = k < pg->npages && c->page_round[g + k] < pg->round;
		bool clear = false;

		if (k < pg->npages && !newer)
			x->stale++;
		if (newer && rg->mem) {
			clear = has_data(c, g + k);
			if (clear)
				rx_set_data(c, g + k, false);
		} else if (newer) {
			clear = c->page_round[g + k] ||
				!pm_page_is_zero(rg->host + (pg->first + k) * PM_PAGE_SIZE);
		}
		if (newer)
			c->page_round[g + k] = pg->round;
		if (clear) {
			if (!nd)
				d0 = k;
			nd++;
			continue;
		}
		if (nd && rg->mem) {
			int r = pm_guestmem_discard(rg->mem, rg->mem_offset / PM_PAGE_SIZE + pg->first + d0,
						    nd, &x->err);
			if (r)
				return r;
		} else if (nd) {
			memset(rg->host + (pg->first + d0) * PM_PAGE_SIZE, 0, (size_t)nd * PM_PAGE_SIZE);
		}
		nd = 0;
	}
	return 0;
}

/* Raw pages, straight from the socket into guest memory.  Each piece is
 * one non-blocking receive under the range lock: per page, if this run's
 * round is newer than the page's, the bytes land in the page and the page
 * is claimed for the round; if older, in a scratch page.  (page, round)
 * names one frame only, so a page claimed by this very round is this
 * frame's, and a page cut between two pieces continues where it was.
 * Waiting for the next piece happens with the lock released. */
static int recv_raw(struct receiver *x, const struct pm_pages *pg, uint8_t *host, uint64_t g)
{
	struct dst_ctx *c = x->c;
	size_t total = (size_t)pg->npages * PM_PAGE_SIZE, off = 0;
	int r = 0;

	while (off < total) {
		if (x->roff == x->rlen) {
			r = pm_conn_wait_readable(&x->conn, &x->err, "receiving pages");
			if (r)
				break;
		}
		uint32_t k0 = off / PM_PAGE_SIZE;
		struct pm_range lr;
		int niov = 0;
		ssize_t n;

		pm_range_wrlock(&c->lock, &lr, g + k0, g + pg->npages);
		for (uint32_t k = k0; k < pg->npages; k++) {
			size_t in = k == k0 ? off % PM_PAGE_SIZE : 0;
			bool mine = c->page_round[g + k] <= pg->round;
			uint8_t *to = mine ? host + (size_t)k * PM_PAGE_SIZE + in : x->scratch + in;
			struct iovec *prev = niov ? &x->iov[niov - 1] : NULL;

			if (prev && mine && (uint8_t *)prev->iov_base + prev->iov_len == to)
				prev->iov_len += PM_PAGE_SIZE - in;
			else
				x->iov[niov++] = (struct iovec){ to, PM_PAGE_SIZE - in };
		}
		if (x->roff < x->rlen)
			n = from_buffer(x, x->iov, niov);
		else
			n = pm_recv_nowait(&x->conn, x->iov, niov, &x->err, "receiving pages");
		if (n > 0) {
			size_t end = off + n;
			bool track = c->be->regions[pg->region].mem;
			for (uint32_t k = k0; (size_t)k * PM_PAGE_SIZE < end; k++) {
				uint32_t *pr = &c->page_round[g + k];
				if (*pr < pg->round)
					*pr = pg->round;
				else if (*pr > pg->round && (size_t)k * PM_PAGE_SIZE >= off)
					x->stale++;
				if (track && *pr == pg->round)
					rx_set_data(c, g + k, true);
			}
			off = end;
		}
		pm_range_unlock(&c->lock, &lr);
		if (n < 0) {
			r = n;
			break;
		}
	}
	if (r)
		x->io_failed = true;
	if (r && off % PM_PAGE_SIZE) {
		/* A page cut in the middle holds no copy of anything now. */
		uint64_t p = g + off / PM_PAGE_SIZE;
		struct pm_range lr;
		pm_range_wrlock(&c->lock, &lr, p, p + 1);
		if (c->page_round[p] == pg->round)
			c->page_round[p] = 0;
		pm_range_unlock(&c->lock, &lr);
	}
	return r;
}

static int apply_pages(struct receiver *x, const struct pm_pages *pg)
{
	struct dst_ctx *c = x->c;
	uint8_t *host = c->be->regions[pg->region].host + pg->first * PM_PAGE_SIZE;
	uint64_t g = c->region_base[pg->region] + pg->first;
	struct pm_range lr;
	int r;

	switch (pg->encoding) {
	case PM_ENC_RAW:
		r = recv_raw(x, pg, host, g);
		if (r)
			return r;
		break;
	case PM_ENC_ZERO:
	case PM_ENC_UNPOPULATED:
		pm_range_wrlock(&c->lock, &lr, g, g + pg->npages);
		r = clear_run(x, pg, g);
		pm_range_unlock(&c->lock, &lr);
		if (r)
			return r;
		break;
	default:
		if (!x->codec)
			return pm_err_set(&x->err, EPROTO, "compressed PAGES frame but compression was not negotiated");
		r = rx_read(x, x->cbuf, pg->payload_len, "receiving pages");
		if (r)
			return r;
		if (pm_codec_decompress(x->codec, pg->encoding, x->cbuf, pg->payload_len, x->run,
					(size_t)pg->npages * PM_PAGE_SIZE))
			return pm_err_set(&x->err, EPROTO, "corrupt compressed run at region %u page %llu",
					  pg->region, (unsigned long long)pg->first);
		pm_range_wrlock(&c->lock, &lr, g, g + pg->npages);
		for (uint32_t k = 0; k < pg->npages; k++) {
			if (c->page_round[g + k] >= pg->round) {
				x->stale++;
				continue;
			}
			memcpy(host + (size_t)k * PM_PAGE_SIZE, x->run + (size_t)k * PM_PAGE_SIZE, PM_PAGE_SIZE);
			c->page_round[g + k] = pg->round;
			if (c->be->regions[pg->region].mem)
				rx_set_data(c, g + k, true);
		}
		pm_range_unlock(&c->lock, &lr);
	}
	if (pg->encoding == PM_ENC_ZERO)
		x->zero += pg->npages;
	else if (pg->encoding == PM_ENC_UNPOPULATED)
		x->unpop += pg->npages;
	else
		x->data += pg->npages;
	return 0;
}

/* Barrier mode: waits until every channel still receiving has read its
 * ROUND_END, so that everything sent before them is applied.  A channel that
 * ended or failed no longer counts; the wait has a deadline. */
static int barrier_wait(struct receiver *x, uint32_t round)
{
	struct dst_ctx *c = x->c;
	struct timespec dl;
	int r = 0;

	/* With failover a silent channel is given up after its own timeout,
	 * and then no longer counts: outlast that. */
	unsigned limit = c->failover ? 2 * c->timeout_ms : c->timeout_ms;
	pm_deadline_after_ms(&dl, limit);
	pthread_mutex_lock(&c->mu);
	unsigned gen = c->barrier_gen;
	c->barrier_count++;
	for (;;) {
		if (c->failed) {
			r = pm_err_set(&x->err, ECANCELED, "migration failed on another channel");
			break;
		}
		if (gen != c->barrier_gen)
			break;
		if (c->barrier_count >= c->running) {
			c->barrier_count = 0;
			c->barrier_gen++;
			pthread_cond_broadcast(&c->cond);
			break;
		}
		if (pthread_cond_timedwait(&c->cond, &c->mu, &dl) == ETIMEDOUT) {
			r = pm_err_set(&x->err, ETIMEDOUT, "channel %u: round %u barrier: the other channels' "
				       "ROUND_END did not come within %u ms", x->idx, round, limit);
			break;
		}
	}
	if (r && gen == c->barrier_gen)
		c->barrier_count--;
	pthread_mutex_unlock(&c->mu);
	return r;
}

/* A frame with content on an ended channel (failover: the source sends a
 * lost channel's work again and ENDs again): it is receiving once more.
 * True if the migration is complete already: nothing more is applied. */
static bool reopen(struct receiver *x)
{
	struct dst_ctx *c = x->c;
	bool stop;

	pthread_mutex_lock(&c->mu);
	stop = c->stopping;
	if (!stop && x->state == RX_ENDED) {
		x->state = RX_RUNNING;
		c->running++;
		c->last_change = pm_now_ms();
	}
	pthread_mutex_unlock(&c->mu);
	return stop;
}

/* Failover: every 32 frames or 4 MiB, what this channel applied, so the
 * source can forget those chunks. */
static int maybe_ack(struct receiver *x)
{
	uint8_t b[PM_ACK_LEN];

	if (!x->c->failover || x->ack_dead || (x->got.frames - x->acked_frames < 32 &&
					       x->got.payload_bytes - x->acked_bytes < (4u << 20)))
		return 0;
	x->acked_frames = x->got.frames;
	x->acked_bytes = x->got.payload_bytes;
	pm_put64(b, x->got.frames);
	struct pm_err e = { 0 };
	/* A failed ACK is not this receiver's error: what the source sent
	 * before it hung up (an ERROR that says why) is still to be read. */
	if (rx_send(x, PM_FR_ACK, b, sizeof(b), &e))
		x->ack_dead = true;
	return 0;
}

/* PAGES or BLOCKS: the same path for memory and disk units, after the
 * caller's check that the frame is allowed on this channel. */
static int rx_units(struct receiver *x, const struct pm_frame_hdr *h, bool blocks)
{
	struct dst_ctx *c = x->c;
	uint8_t fb[PM_PAGES_FIXED_LEN > PM_BLOCKS_FIXED_LEN ? PM_PAGES_FIXED_LEN : PM_BLOCKS_FIXED_LEN];
	const char *name = blocks ? "BLOCKS" : "PAGES";
	struct pm_pages pg;
	int r;

	r = rx_read(x, fb, blocks ? PM_BLOCKS_FIXED_LEN : PM_PAGES_FIXED_LEN,
		    blocks ? "receiving blocks" : "receiving pages");
	if (r)
		return r;
	r = blocks ? pm_decode_blocks(fb, h->len, &c->layout, c->chunk_pages, &pg, &x->err)
		   : pm_decode_pages(fb, h->len, &c->layout, c->chunk_pages, &pg, &x->err);
	if (r)
		return r;
	if (pg.round > PM_MAX_ROUNDS)
		return pm_err_set(&x->err, EPROTO, "%s frame has round %u (at most %u)", name,
				  pg.round, PM_MAX_ROUNDS);
	if (reopen(x))
		return pm_err_set(&x->err, ECANCELED, "stopped");
	r = blocks ? rx_apply_blocks(x, &pg) : apply_pages(x, &pg);
	if (r)
		return r;
	x->got.frames++;
	x->got.pages += pg.npages;
	x->got.payload_bytes += pg.payload_len;
	if (pg.round > x->max_round)
		x->max_round = pg.round;
	return maybe_ack(x);
}

static int handle_frame(struct receiver *x, const struct pm_frame_hdr *h)
{
	struct dst_ctx *c = x->c;
	uint8_t fb[PM_ERROR_FIXED_LEN + PM_MAX_ERROR_LEN + 1];
	int r;

	switch (h->type) {
	case PM_FR_PAGES:
		return rx_units(x, h, false);
	case PM_FR_PING:
		if (!c->failover)
			return pm_err_set(&x->err, EPROTO, "PING on channel %u without failover", x->idx);
		return 0;
	case PM_FR_BLOCKS:
		if (!(c->features & PM_FEAT_DISKS) || c->shared_storage)
			return pm_err_set(&x->err, EPROTO, "BLOCKS frame on channel %u %s", x->idx,
					  c->shared_storage ? "with shared storage" : "without disks negotiated");
		return rx_units(x, h, true);
	case PM_FR_ROUND_END:
		if (!(c->features & (PM_FEAT_BARRIER | PM_FEAT_DRAIN)))
			return pm_err_set(&x->err, EPROTO, "ROUND_END on channel %u without barrier or drain mode", x->idx);
		r = rx_read(x, fb, PM_ROUND_LEN, "receiving round end");
		if (r)
			return r;
		if (pm_get32(fb) == 0 || pm_get32(fb) > PM_MAX_ROUNDS || pm_get32(fb + 4))
			return pm_err_set(&x->err, EPROTO, "ROUND_END on channel %u names round %u "
					  "(or has non-zero reserved bytes)", x->idx, pm_get32(fb));
		/* Everything of this round on every channel is applied past here. */
		pm_conn_set_deadline(&x->conn, 0);
		r = barrier_wait(x, pm_get32(fb));
		if (r)
			return r;
		return rx_send(x, PM_FR_ROUND_ACK, fb, PM_ROUND_LEN, &x->err);
	case PM_FR_STATE: {
		bool dup;
		pthread_mutex_lock(&c->mu);
		dup = c->have_state;
		pthread_mutex_unlock(&c->mu);
		/* With failover the state may come on any channel, and again if
		 * the one that carried it was lost; the same VM, paused. */
		if (!c->failover && (x->idx != 0 || dup))
			return pm_err_set(&x->err, EPROTO, "unexpected STATE frame on channel %u", x->idx);
		if (reopen(x))
			return pm_err_set(&x->err, ECANCELED, "stopped");
		void *st = malloc(h->len ? h->len : 1);
		if (!st)
			return pm_err_set(&x->err, ENOMEM, "out of memory for %u bytes of device state", h->len);
		r = rx_read(x, st, h->len, "receiving device state");
		if (r) {
			free(st);
			return r;
		}
		/* Only a whole state counts. */
		pthread_mutex_lock(&c->mu);
		free(c->state);
		c->state = st;
		c->state_len = h->len;
		c->have_state = true;
		pthread_mutex_unlock(&c->mu);
		return 0;
	}
	case PM_FR_VERIFY: {
		uint64_t n = (h->len - PM_VERIFY_FIXED_LEN) / PM_DIGEST_LEN;
		uint8_t *v;
		bool dup;

		pthread_mutex_lock(&c->mu);
		dup = c->verify != NULL;
		pthread_mutex_unlock(&c->mu);
		/* With failover it follows the state, wherever that goes. */
		if (!c->failover && (x->idx != 0 || dup))
			return pm_err_set(&x->err, EPROTO, "unexpected VERIFY frame on channel %u", x->idx);
		v = malloc(h->len);
		if (!v)
			return pm_err_set(&x->err, ENOMEM, "out of memory for %llu digests", (unsigned long long)n);
		r = rx_read(x, v, h->len, "receiving digests");
		if (!r && (pm_get32(v) != n || pm_get32(v + 4)))
			r = pm_err_set(&x->err, EPROTO, "VERIFY names %u chunks in a frame of %llu "
				       "(or has non-zero reserved bytes)", pm_get32(v), (unsigned long long)n);
		if (!r && n != pm_digest_nchunks(c->be, c->chunk_pages, !c->shared_storage))
			r = pm_err_set(&x->err, EPROTO, "VERIFY has %llu digests, this VM has %llu chunks",
				       (unsigned long long)n,
				       (unsigned long long)pm_digest_nchunks(c->be, c->chunk_pages, !c->shared_storage));
		if (r) {
			free(v);
			return r;
		}
		pthread_mutex_lock(&c->mu);
		free(c->verify);
		c->verify = v;
		c->verify_chunks = n;
		pthread_mutex_unlock(&c->mu);
		return 0;
	}
	case PM_FR_END:
		if (h->len != (c->failover ? PM_END_FAILOVER_LEN : PM_END_LEN))
			return pm_err_set(&x->err, EPROTO, "END of %u bytes on channel %u (%s failover)", h->len,
					  x->idx, c->failover ? "with" : "without");
		r = rx_read(x, fb, h->len, "receiving END");
		if (!r)
			r = pm_decode_end(fb, h->len, &x->end, &x->err);
		if (r)
			return r;
		if (x->end.lost >> x->idx & 1)
			return pm_err_set(&x->err, EPROTO, "END on channel %u says channel %u is lost",
					  x->idx, x->idx);
		if (x->end.frames != x->got.frames || x->end.pages != x->got.pages ||
		    x->end.payload_bytes != x->got.payload_bytes)
			return pm_err_set(&x->err, EPROTO,
					  "channel %u: source counted %llu frames / %llu pages / %llu bytes, "
					  "%llu / %llu / %llu arrived", x->idx,
					  (unsigned long long)x->end.frames, (unsigned long long)x->end.pages,
					  (unsigned long long)x->end.payload_bytes, (unsigned long long)x->got.frames,
					  (unsigned long long)x->got.pages, (unsigned long long)x->got.payload_bytes);
		if (x->max_round > x->end.final_round)
			return pm_err_set(&x->err, EPROTO, "channel %u: page of round %u after final round %u",
					  x->idx, x->max_round, x->end.final_round);
		double none = 0;
		atomic_compare_exchange_strong(&c->t_first_end, &none, pm_now_ms());
		pthread_mutex_lock(&c->mu);
		if (x->state == RX_RUNNING) {
			x->state = RX_ENDED;
			c->running--;
		}
		c->lost_union |= x->end.lost;
		if (x->end.final_round > c->final_round)
			c->final_round = x->end.final_round;
		c->last_change = pm_now_ms();
		pthread_cond_broadcast(&c->cond);
		pthread_mutex_unlock(&c->mu);
		dst_notify(c);
		return 0;
	case PM_FR_ERROR: {
		char msg[PM_ERROR_MSG_CAP];
		r = rx_read(x, fb, h->len, "receiving error");
		if (r)
			return r;
		/* The source's own errno says why (ECANCELED: cancelled by request). */
		uint32_t code = pm_decode_error(fb, h->len, msg, sizeof(msg));
		return pm_err_set(&x->err, code && code < 4096 ? (int)code : ECANCELED, "source aborted: %s", msg);
	}
	default:
		return pm_err_set(&x->err, EPROTO, "unexpected %s frame on channel %u during migration",
				  pm_frame_name(h->type), x->idx);
	}
}

/* Failover: tells the source, on every other channel still there, that
 * this side lost channel x. */
static void lost_notice(struct receiver *x)
{
	struct dst_ctx *c = x->c;
	uint8_t b[PM_LOST_FIXED_LEN + PM_MAX_ERROR_LEN];
	uint32_t n = pm_encode_lost(b, x->idx, x->generation, x->err.code, x->err.msg);

	for (unsigned i = 0; i < c->nch; i++) {
		struct receiver *y = &c->rx[i];
		struct pm_err e = { 0 };
		bool alive;
		pthread_mutex_lock(&c->mu);
		alive = y != x && (y->state == RX_RUNNING || y->state == RX_ENDED) && !c->stopping;
		pthread_mutex_unlock(&c->mu);
		if (alive)
			rx_send(y, PM_FR_LOST, b, n, &e);
	}
}

void *rx_main(void *arg)
{
	struct receiver *x = arg;
	struct dst_ctx *c = x->c;
	enum rx_state st;

	for (;;) {
		uint8_t hb[PM_FRAME_HDR_LEN];
		struct pm_frame_hdr h;

		pthread_mutex_lock(&c->mu);
		st = x->state;
		pthread_mutex_unlock(&c->mu);
		if (st == RX_ENDED && !c->failover)
			break;
		/* After END nothing is due: no deadline (the incoming thread
		 * has the overall one); before, the source's PINGs keep an
		 * idle channel inside it. */
		pm_conn_set_timeout(&x->conn, st == RX_ENDED ? 0 : c->timeout_ms);
		x->io_failed = false;
		if (rx_read(x, hb, sizeof(hb), "receiving a frame header"))
			break;
		pm_decode_hdr(hb, &h);
		pm_conn_set_timeout(&x->conn, c->timeout_ms);
		/* A frame's body must follow its header within the budget. */
		pm_conn_set_deadline(&x->conn, pm_now_ms() + c->timeout_ms);
		if (pm_check_hdr(&h, c->chunk_pages, &x->err) || handle_frame(x, &h))
			break;
		pm_conn_set_deadline(&x->conn, 0);
	}
	pthread_mutex_lock(&c->mu);
	bool quiet = c->stopping || x->replaced;
	bool was_active = x->state == RX_RUNNING;
	/* A connection that breaks before its END is lost (the source resends
	 * its work); after END it has delivered everything counted. */
	bool lose = !quiet && c->failover && x->io_failed && was_active;
	if (x->state == RX_ENDED && (!c->failover || x->io_failed)) {
		/* done: END arrived */
	} else if (quiet) {
		/* the end, or a reconnect takes its place */
		if (was_active)
			c->running--;
		x->state = RX_LOST;
	} else {
		if (was_active)
			c->running--;
		x->state = lose ? RX_LOST : RX_FAILED;
	}
	c->last_change = pm_now_ms();
	if (lose) {
		if (c->nlost < PM_MAX_LOST) {
			struct pm_lost_channel *l = &c->lost[c->nlost];
			*l = (struct pm_lost_channel){ .channel = x->idx, .at_ms = pm_now_ms() - c->t0 };
			snprintf(l->phase, sizeof(l->phase), "receiving");
			snprintf(l->reason, sizeof(l->reason), "%.239s", x->err.msg);
		}
		c->nlost++;
	}
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->mu);
	if (lose) {
		/* Its work comes again on the others. */
		lost_notice(x);
	} else if (!quiet && x->state != RX_ENDED) {
		struct pm_err e = { 0 };
		if (x->err.code == ECANCELED && dst_cancelled(c))
			pm_err_set(&e, ECANCELED, "cancelled on the destination");
		else
			pm_err_set(&e, x->err.code, "channel %u: %s", x->idx, x->err.msg);
		dst_fail(c, &e);
	}
	dst_notify(c);
	return NULL;
}

int rx_init(struct receiver *x, struct dst_ctx *c, unsigned idx, struct pm_err *err)
{
	size_t run = (size_t)c->chunk_pages * PM_PAGE_SIZE;
	/* A disk's run may be larger: one block of up to 1 MiB. */
	for (unsigned d = 0; d < c->layout.ndisks; d++) {
		size_t dr = (size_t)pm_disk_chunk_blocks(c->layout.disk[d].block_size, c->chunk_pages) *
			    c->layout.disk[d].block_size;
		if (dr > run)
			run = dr;
	}
	enum pm_compress comp = c->features & PM_FEAT_ZSTD ? PM_COMPRESS_ZSTD :
				c->features & PM_FEAT_LZ4 ? PM_COMPRESS_LZ4 : PM_COMPRESS_NONE;

	x->c = c;
	x->idx = idx;
	x->run = malloc(run);
	x->scratch = malloc(PM_PAGE_SIZE);
	x->iov = calloc(c->chunk_pages, sizeof(*x->iov));
	x->rbuf = malloc(RX_BUF);
	if (!x->run || !x->scratch || !x->iov || !x->rbuf)
		return pm_err_set(err, ENOMEM, "out of memory");
	if (comp != PM_COMPRESS_NONE) {
		/* Accept either codec's worst case. */
		x->cbuf_cap = run + run / 64 + 1024;
		x->cbuf = malloc(x->cbuf_cap);
		if (!x->cbuf || pm_codec_new(&x->codec, comp, 0))
			return pm_err_set(err, ENOMEM, "out of memory");
	}
	return 0;
}

void rx_free(struct receiver *x)
{
	pm_conn_close(&x->conn);
	pm_codec_free(x->codec);
	free(x->cbuf);
	free(x->run);
	free(x->scratch);
	free(x->iov);
	free(x->rbuf);
	pthread_mutex_destroy(&x->send_lock);
}
