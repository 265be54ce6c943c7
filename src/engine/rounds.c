/* SPDX-License-Identifier: MIT */
/* Source side: the pre-copy rounds while the VM runs.  Each round counts
 * what is dirty, decides whether to switch over (converged, or the
 * non-convergence policy: throttle, force, abort), and pushes one pass
 * over the dirty chunks to the workers; in barrier mode every round ends
 * with ROUND_END on each channel and waits for the destination's
 * ROUND_ACKs.  The lifecycle around it is source.c's. */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include "engine/net.h"
#include "engine/source.h"

#define BW_MIN_BYTES (256u << 10)      /* a round that says something about the link */

/* After a dirty_sync: how many pages are dirty and, where the backend can
 * say, which chunks hold them (the others are skipped this round). */
int src_count_dirty(struct src_ctx *c, uint64_t *dirty, struct pm_err *err)
{
	const struct pm_backend_ops *ops = c->be->ops;
	size_t words = (c->nchunks + 63) / 64 * sizeof(uint64_t);

	if (!ops->dirty_summary) {
		memset(c->chunk_dirty, 0xff, words);
		return ops->dirty_count(c->be->vm, dirty, err);
	}
	memset(c->chunk_dirty, 0, words);
	*dirty = 0;
	for (unsigned i = 0; i < c->be->nregions; i++) {
		uint64_t n = 0, nk = (c->be->regions[i].npages + c->chunk_pages - 1) / c->chunk_pages;
		int r = ops->dirty_summary(c->be->vm, i, c->chunk_pages, &n, c->summary, err);

		if (r)
			return r;
		*dirty += n;
		for (uint64_t k = 0; k < nk; k++)
			if (c->summary[k / 64] >> (k % 64) & 1) {
				uint64_t g = c->region_chunk0[i] + k;
				c->chunk_dirty[g / 64] |= 1ull << (g % 64);
			}
	}
	/* Disk chunks: every round visits them (a clean one's harvest is a
	 * few words of bitmap). */
	for (uint64_t g = c->mem_chunks; g < c->nchunks; g++)
		c->chunk_dirty[g / 64] |= 1ull << (g % 64);
	return 0;
}

/* Pushes one pass over the chunks of this round (or runs it inline in
 * serial mode). */
int src_run_pass(struct src_ctx *c, uint32_t round)
{
	for (uint32_t i = 0; i < c->nchunks; i++) {
		struct pm_task t = { .chunk = i, .round = round };
		if (atomic_load(&c->failed))
			return -1;
		if (!(c->chunk_dirty[i / 64] >> (i % 64) & 1))
			continue;
		if (c->p->serial) {
			src_run_task(&c->w[0], t);
			src_sample(c, false);
		} else if (!pm_queue_push(&c->q, t)) {
			return -1;
		}
	}
	return atomic_load(&c->failed) ? -1 : 0;
}

/* Waits until the workers have sent everything queued. */
int src_wait_idle(struct src_ctx *c)
{
	if (c->p->serial)
		return atomic_load(&c->failed) ? -1 : 0;
	while (!pm_queue_wait_idle(&c->q, 100))
		if (atomic_load(&c->failed))
			return -1;
	return atomic_load(&c->failed) ? -1 : 0;
}

/* Barrier (and drain): every live channel marks the round end, the
 * destination applies everything sent before on every channel and
 * acknowledges each.  A channel lost on the way no longer counts; the wait
 * has a deadline (twice the timeout: the destination may wait its timeout
 * for a silent channel before it gives that one up). */
int src_round_barrier(struct src_ctx *c, uint32_t round)
{
	uint8_t b[PM_ROUND_LEN] = { 0 };
	uint64_t want = 0;
	double deadline;
	int r = src_wait_idle(c);

	if (r)
		return r;
	pm_put32(b, round);
	for (unsigned i = 0; i < c->nch; i++) {
		struct worker *w = &c->w[i];
		struct pm_err e = { 0 };
		if (!src_take(w))
			continue;
		if (pm_send_frame(&w->conn, PM_FR_ROUND_END, b, sizeof(b), &e))
			chan_lost(w, &e);
		else
			want |= 1ull << i;
		w->last_send = pm_now_ms();
		src_give(w);
	}
	deadline = pm_now_ms() + 2.0 * c->timeout_ms;
	while (want && !atomic_load(&c->failed)) {
		struct pollfd pfd[PM_MAX_CHANNELS];
		unsigned who[PM_MAX_CHANNELS], n = 0;
		for (unsigned i = 0; i < c->nch; i++)
			if (want >> i & 1) {
				if (atomic_load(&c->w[i].lost)) {
					want &= ~(1ull << i);
					continue;
				}
				pfd[n] = (struct pollfd){ .fd = c->w[i].conn.fd, .events = POLLIN };
				who[n++] = i;
			}
		double left = deadline - pm_now_ms();
		if (!n)
			break;
		if (left <= 0) {
			for (unsigned k = 0; k < n; k++) {
				struct worker *w = &c->w[who[k]];
				struct pm_err e = { 0 };
				pm_err_set(&e, ETIMEDOUT, "%s: no ROUND_ACK within %.0f ms", w->peer,
					   2.0 * c->timeout_ms);
				if (src_take(w)) {
					chan_lost(w, &e);
					src_give(w);
				}
			}
			break;
		}
		if (poll(pfd, n, (int)left + 1) < 0 && errno != EINTR)
			break;
		for (unsigned k = 0; k < n; k++) {
			struct worker *w = &c->w[who[k]];
			struct pm_frame_hdr h;
			struct pm_err e = { 0 };
			int t;
			if (!pfd[k].revents)
				continue;
			if (!src_take(w)) {
				want &= ~(1ull << who[k]);
				continue;
			}
			while ((t = chan_take(w, &h)) > 0) {
				const uint8_t *body = w->reply + PM_FRAME_HDR_LEN;
				if (h.type == PM_FR_ROUND_ACK && pm_get32(body) == round) {
					want &= ~(1ull << who[k]);
				} else {
					if (h.type == PM_FR_ERROR)
						src_refused(c, body, h.len, &e);
					else
						pm_err_set(&e, EPROTO, "%s sent %s (round %u) while we waited for "
							   "ROUND_ACK of round %u", w->peer, pm_frame_name(h.type),
							   h.len >= 4 ? pm_get32(body) : 0, round);
					src_fail(c, &e);
				}
				chan_drop(w, &h);
			}
			if (t < 0 && !atomic_load(&w->lost)) {
				chan_lost(w, &w->dead_why);
				want &= ~(1ull << who[k]);
			}
			src_give(w);
		}
	}
	return atomic_load(&c->failed) ? -1 : 0;
}

/* Dirty blocks of every disk at the start of round r; dirty_bytes becomes
 * their bytes (memory's are added by the caller). */
int src_disks_dirty(struct src_ctx *c, unsigned r, struct pm_err *err)
{
	c->dirty_bytes = 0;
	for (unsigned i = 0; i < c->ndisks && !c->p->shared_storage; i++) {
		struct src_disk *d = &c->disk[i];
		uint64_t n;
		int e = d->bd->ops->dirty_count(d->bd->dev, &n, err);
		if (e)
			return e;
		d->dirty_at[r] = n;
		c->dirty_bytes += n * d->bd->block_size;
	}
	return 0;
}

/* Decides at the start of a round whether to switch over now: 1 yes (reason
 * in the report), 0 no, or -errno when policy abort gives up.  dirty is in
 * bytes, memory's and the disks'. */
static int decide(struct src_ctx *c, uint64_t dirty, struct pm_err *err)
{
	const struct pm_migrate_params *p = c->p;
	unsigned downtime = p->downtime_ms ? p->downtime_ms : 300;
	unsigned max_rounds = p->max_rounds ? p->max_rounds : 30;
	double factor = p->max_bytes_factor > 0 ? p->max_bytes_factor : 8.0;
	/* Before any round measured the link (all sent so far was tiny),
	 * assume a slow one: 100 MB/s.  Dirty disk blocks weigh in by their
	 * bytes, as dirty pages do (dirty is in bytes). */
	double bw = c->bw > 0 ? c->bw : 100e3;
	double expect_ms = dirty / bw;
	uint64_t vm_bytes = c->vm_pages * PM_PAGE_SIZE + (p->shared_storage ? 0 : src_disks_bytes(c));
	char *reason = c->rep->switchover_reason;
	size_t rlen = sizeof(c->rep->switchover_reason);
	const char *why = NULL;

	if (expect_ms <= downtime) {
		snprintf(reason, rlen, "converged");
		return 1;
	}
	/* Progress is a new low (5% under the lowest so far): a count that
	 * only swings up and down around a level makes none, and must not
	 * keep the policy away round after round. */
	if (dirty < c->min_dirty - c->min_dirty / 20) {
		c->min_dirty = dirty;
		c->no_progress = 0;
	} else if (c->round > 2) {
		c->no_progress++;
	}
	if (c->round > max_rounds)
		why = "max-rounds";
	else if (src_total_bytes(c) > factor * vm_bytes)
		why = "max-bytes";
	else if (c->no_progress >= 2)
		why = "no-progress";
	if (!why)
		return 0;
	if (p->policy == PM_NC_ABORT)
		return pm_err_set(err, ETIMEDOUT,
				  "migration does not converge (%s: %.1f MB dirty, about %.0f ms to send "
				  "at the measured rate, target %u ms); gave up, the VM keeps running here",
				  why, dirty / 1e6, expect_ms, downtime);
	if (p->policy == PM_NC_THROTTLE && strcmp(why, "max-rounds") && c->be->ops->throttle) {
		unsigned t = atomic_load(&c->throttle);
		if (t < 99) {
			t = t ? (t + 20 > 99 ? 99 : t + 20) : 30;
			atomic_store(&c->throttle, t);
			c->be->ops->throttle(c->be->vm, t);
			c->no_progress = 0;
			return 0;
		}
	}
	snprintf(reason, rlen, "%s", why);
	return 1;
}

/* The start of a round after the first: measure the last one, count what
 * is dirty, decide.  Returns 1 when it is time to switch over. */
static int round_start(struct src_ctx *c, struct pm_err *err)
{
	double now = pm_now_ms();
	uint64_t b = src_total_bytes(c), dirty;
	int r;

	c->round_ms[c->round - 1] = now - c->t_round;
	/* Bandwidth: the round's bytes over the time the busiest channel was
	 * busy with them (the channels send in parallel).  A round's wall time
	 * would say the link is slow whenever the guest dirties little; a round
	 * that sent almost nothing keeps the last estimate. */
	uint64_t busy = 0;
	for (unsigned i = 0; i < c->nch; i++) {
		uint64_t u = atomic_load(&c->w[i].busy_us);
		if (u - c->w[i].busy_at_round > busy)
			busy = u - c->w[i].busy_at_round;
		c->w[i].busy_at_round = u;
	}
	if (busy && b - c->bytes_at_round >= BW_MIN_BYTES)
		c->bw = (b - c->bytes_at_round) / (busy / 1e3);
	c->t_round = now;
	c->bytes_at_round = b;
	r = c->be->ops->dirty_sync(c->be->vm, err);
	if (!r)
		r = src_count_dirty(c, &dirty, err);
	if (r)
		return r;
	c->dirty_at[c->round] = dirty;
	atomic_store(&c->dirty_at_start, dirty);
	r = src_disks_dirty(c, c->round, err);
	if (r)
		return r;
	c->dirty_bytes += dirty * PM_PAGE_SIZE;
	r = decide(c, c->dirty_bytes, err);
	if (r)
		return r;
	return c->round >= PM_MAX_ROUNDS;
}

/* Rounds while the VM runs, until decide() says switch over; c->round is
 * then the number of the final round, not yet sent. */
int src_phase_precopy(struct src_ctx *c, struct pm_err *err)
{
	int r;

	src_enter(c, SRC_PRECOPY);
	c->t_round = pm_now_ms();
	c->min_dirty = UINT64_MAX;
	for (c->round = 1;; c->round++) {
		if (c->round > 1) {
			r = round_start(c, err);
			if (r < 0)
				return r;
			if (r > 0)
				break;
		} else {
			c->dirty_at[1] = c->vm_pages;
			atomic_store(&c->dirty_at_start, c->vm_pages);
			for (unsigned i = 0; i < c->ndisks && !c->p->shared_storage; i++)
				c->disk[i].dirty_at[1] = c->disk[i].nblocks;
		}
		atomic_store(&c->cur_round, c->round);
		c->round_start[c->round] = pm_now_ms() - c->t0;
		src_sample(c, true);
		if (src_run_pass(c, c->round) || (c->p->barrier && src_round_barrier(c, c->round)))
			return src_worker_error(c, err);
	}
	if (!c->rep->switchover_reason[0])
		snprintf(c->rep->switchover_reason, sizeof(c->rep->switchover_reason), "max-rounds");
	return 0;
}
