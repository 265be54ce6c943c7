/* SPDX-License-Identifier: MIT */
/* Source side of a migration: the lifecycle.  pm_migrate_outgoing() runs
 * the phases in order -- connect, pre-copy rounds, switchover, completion --
 * each a function below that returns 0 or -errno; conclude() is the one
 * place that decides what a failure means, by the phase it happened in.
 * The producer (the migration thread) walks guest memory in chunks, one
 * pass per round, and hands them to the workers of send.c, one per
 * channel.  Rounds overlap: the producer starts the next pass while workers
 * still send the last one, unless barrier mode asks for a QEMU-style drain
 * at every round end (rounds.c has the pre-copy rounds).  docs/engine.md
 * draws the states. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <pmigrate/guestmem.h>
#include "engine/net.h"
#include "engine/digest.h"
#include "engine/report.h"
#include "engine/source.h"
#include "engine/tls.h"

static const char *const phase_names[] = {
	[SRC_SETUP] = "connecting", [SRC_CONNECT] = "connecting", [SRC_PRECOPY] = "precopy",
	[SRC_SWITCHOVER] = "switchover", [SRC_COMPLETING] = "completing",
	[SRC_COMPLETED] = "completing", [SRC_FAILED] = "completing", [SRC_UNKNOWN] = "completing",
};

void src_enter(struct src_ctx *c, enum src_phase ph)
{
	c->phase = ph;
	atomic_store(&c->phase_name, phase_names[ph]);
}

uint64_t src_total_bytes(struct src_ctx *c)
{
	uint64_t b = 0;

	for (unsigned r = 0; r <= PM_MAX_ROUNDS; r++)
		b += atomic_load(&c->acc[r].bytes);
	return b;
}

/* ------------------------------------------------------------ progress */

/* Cheap counters only, so workers can afford it after every chunk. */
void src_sample(struct src_ctx *c, bool force)
{
	double t = pm_now_ms() - c->t0 - atomic_load(&c->excluded_us) / 1e3;
	struct pm_sample s = { .t_ms = t };
	unsigned r;

	if (!pm_timeline_due(&c->tl, t, force))
		return;
	r = atomic_load(&c->cur_round);
	s.round = r;
	s.phase = atomic_load(&c->sample_phase);
	s.throttle_pct = atomic_load(&c->throttle);
	if (r <= PM_MAX_ROUNDS) {
		uint64_t sent = atomic_load(&c->acc[r].pages) + atomic_load(&c->acc[r].zero);
		uint64_t d = atomic_load(&c->dirty_at_start);
		s.dirty_left = d > sent ? d - sent : 0;
	}
	if (c->be->ops->write_stats) {
		double asked;
		c->be->ops->write_stats(c->be->vm, &s.guest_pages_written, &asked);
	}
	for (unsigned i = 0; i < c->nch && i < PM_SAMPLE_CHANNELS; i++)
		s.channel_bytes[i] = atomic_load(&c->w[i].wire_bytes);
	pm_timeline_add(&c->tl, &s);
}

/* Excludes the verification dumps' time from the timeline, as from the
 * report's times. */
static void exclude_dumps(struct src_ctx *c)
{
	atomic_store(&c->excluded_us, (uint64_t)(c->dump_ms * 1e3));
}

/* Where the migration is; channel rates since *tlast (updated). */
static void snapshot(struct src_ctx *c, struct pm_progress *pr, uint64_t *last, double *tlast)
{
	double now = pm_now_ms();

	memset(pr, 0, sizeof(*pr));
	pr->phase = atomic_load(&c->phase_name);
	pr->round = atomic_load(&c->cur_round);
	pr->dirty_pages = atomic_load(&c->dirty_at_start);
	pr->elapsed_ms = now - c->t0;
	pr->throttle_pct = atomic_load(&c->throttle);
	for (unsigned r = 0; r <= PM_MAX_ROUNDS; r++) {
		pr->pages_sent += atomic_load(&c->acc[r].pages);
		pr->zero_pages += atomic_load(&c->acc[r].zero);
		pr->bytes_sent += atomic_load(&c->acc[r].bytes);
	}
	if (!atomic_load(&c->channels_ready))
		return;
	pr->nchannels = c->nch;
	pr->channels_lost = c->nch - atomic_load(&c->alive);
	pthread_mutex_lock(&c->lost_lock);
	pr->losses = c->nevents;
	pthread_mutex_unlock(&c->lost_lock);
	for (unsigned i = 0; i < c->nch; i++) {
		uint64_t b = atomic_load(&c->w[i].wire_bytes);
		pr->channel_mbps[i] = now > *tlast ? (b - last[i]) / 1e3 / (now - *tlast) : 0;
		last[i] = b;
	}
	*tlast = now;
}

static void *progress_main(void *arg)
{
	struct src_ctx *c = arg;
	unsigned iv = c->p->progress_interval_ms ? c->p->progress_interval_ms : 250;
	uint64_t last[PM_MAX_CHANNELS] = { 0 };
	double tlast = pm_now_ms();

	pthread_mutex_lock(&c->prog_lock);
	for (;;) {
		struct timespec dl;
		pm_deadline_after_ms(&dl, iv);
		/* A condition variable, so the end of a migration never waits
		 * for the rest of an interval. */
		while (!c->prog_stop && pthread_cond_timedwait(&c->prog_cond, &c->prog_lock, &dl) != ETIMEDOUT)
			;
		if (c->prog_stop)
			break;
		pthread_mutex_unlock(&c->prog_lock);
		struct pm_progress pr;
		snapshot(c, &pr, last, &tlast);
		c->p->progress(c->p->progress_opaque, &pr);
		pthread_mutex_lock(&c->prog_lock);
	}
	pthread_mutex_unlock(&c->prog_lock);
	return NULL;
}

/* ------------------------------------------------- replies of the peer */

/* An ERROR body as "destination refused: ..." in err: proof that the
 * destination does not run the VM. */
int src_refused(struct src_ctx *c, const uint8_t *body, uint32_t len, struct pm_err *err)
{
	char msg[PM_ERROR_MSG_CAP];
	uint32_t code = pm_decode_error(body, len, msg, sizeof(msg));

	atomic_store(&c->refused, true);
	return pm_err_set(err, code && code < 4096 && code != EINPROGRESS ? (int)code : EPROTO,
			  "destination refused: %s", msg);
}

/* Channel w for the migration thread (its io lock): false if it is lost. */
bool src_take(struct worker *w)
{
	pthread_mutex_lock(&w->io);
	if (!chan_gone(w))
		return true;
	pthread_mutex_unlock(&w->io);
	return false;
}

void src_give(struct worker *w)
{
	pthread_mutex_unlock(&w->io);
}

/* Stops the workers: every wait on a channel ends (the wake pipe) and they
 * are joined, so from here on only this thread touches the channels. */
static void stop_workers(struct src_ctx *c)
{
	atomic_store(&c->failed, true);
	if (write(c->wake[1], "w", 1) < 0) {
		/* full: woken already */
	}
	if (c->q.slots)
		pm_queue_close(&c->q);
	for (unsigned i = 0; i < c->nch; i++)
		if (c->w[i].started) {
			pthread_join(c->w[i].thread, NULL);
			c->w[i].started = false;
		}
}

/* A worker failed: its error -- or the destination's reason, if it said
 * why before it hung up (a send then fails with a reset), which is the
 * real one. */
int src_worker_error(struct src_ctx *c, struct pm_err *err)
{
	double deadline = pm_now_ms() + 100;
	struct pm_err why = { 0 };

	stop_workers(c);
	while (!why.code) {
		struct pollfd pfd[PM_MAX_CHANNELS];
		unsigned n = 0;
		for (unsigned i = 0; i < c->nch && !why.code; i++) {
			struct worker *w = &c->w[i];
			struct pm_frame_hdr h;
			int t = 0;
			if (w->dead || w->conn.fd < 0)
				continue;
			while (!why.code && (t = chan_take(w, &h)) > 0) {
				if (h.type == PM_FR_ERROR)
					src_refused(c, w->reply + PM_FRAME_HDR_LEN, h.len, &why);
				chan_drop(w, &h);
			}
			if (t < 0)
				w->dead = true;
			else
				pfd[n++] = (struct pollfd){ .fd = w->conn.fd, .events = POLLIN };
		}
		double left = deadline - pm_now_ms();
		if (why.code || !n || left <= 0 || poll(pfd, n, (int)left + 1) <= 0)
			break;
	}
	pthread_mutex_lock(&c->err_lock);
	if (why.code)
		c->err = why;
	int r = pm_err_set(err, c->err.code ? c->err.code : EIO, "%s",
			   c->err.code ? c->err.msg : "migration failed");
	pthread_mutex_unlock(&c->err_lock);
	return r;
}

/* What every live channel has for us (ACK, LOST, ERROR), without waiting:
 * so losses are known before deciding anything. */
static void collect_replies(struct src_ctx *c)
{
	for (unsigned i = 0; i < c->nch; i++)
		if (src_take(&c->w[i])) {
			chan_poll(&c->w[i]);
			src_give(&c->w[i]);
		}
}

/* Channels given up so far (the END's mask). */
static uint64_t lost_mask(struct src_ctx *c)
{
	uint64_t m = 0;

	for (unsigned i = 0; i < c->nch; i++)
		if (atomic_load(&c->w[i].lost) || atomic_load(&c->w[i].lost_req))
			m |= 1ull << i;
	return m;
}

/* --------------------------------------------------------------- setup */

static int setup(struct src_ctx *c, struct pm_err *err)
{
	const struct pm_migrate_params *p = c->p;
	struct pm_backend *be = c->be;

	c->chunk_pages = p->chunk_pages ? p->chunk_pages : PM_MAX_CHUNK_PAGES;
	c->timeout_ms = p->timeout_ms ? p->timeout_ms : 30000;
	c->nch = p->serial ? 1 : p->channels ? p->channels : p->nto;
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
	int r = pm_tls_new(&c->tls, &p->tls, false, err);
	if (r)
		return r;
	/* Every address is checked before the first connection; guest
	 * memory goes in clear only over loopback, or when told. */
	for (unsigned i = 0; i < p->nto + p->nbind; i++) {
		struct sockaddr_storage ss;
		socklen_t sl;
		const char *a = i < p->nto ? p->to[i] : p->bind[i - p->nto];
		r = pm_parse_addr(a, &ss, &sl, i >= p->nto, err);
		if (r)
			return r;
		if (i < p->nto && !c->tls && !p->insecure && !pm_addr_is_loopback((struct sockaddr *)&ss))
			return pm_err_set(err, EACCES, "refusing to send guest memory to %s without TLS: give "
					  "--tls-creds DIR or --tls-psk FILE (or --insecure on a network you trust)", a);
	}
	for (unsigned i = 0; i < be->nregions; i++) {
		c->region_base[i] = c->vm_pages;
		c->vm_pages += be->regions[i].npages;
		c->nchunks += (be->regions[i].npages + c->chunk_pages - 1) / c->chunk_pages;
	}
	c->mem_chunks = c->nchunks;
	r = src_disks_setup(c, err);
	if (r)
		return r;
	/* Disks share the chunk table (and so the queue and rounds); with
	 * shared storage nothing of them is sent. */
	for (unsigned i = 0; i < c->ndisks && !p->shared_storage; i++)
		c->nchunks += c->disk[i].nchunks;
	c->chunks = calloc(c->nchunks, sizeof(*c->chunks));
	c->chunk_lock = calloc(c->nchunks, sizeof(*c->chunk_lock));
	c->chunk_round = calloc(c->nchunks, sizeof(*c->chunk_round));
	c->chunk_dirty = malloc((c->nchunks + 63) / 64 * sizeof(uint64_t));
	c->summary = malloc((c->nchunks + 63) / 64 * sizeof(uint64_t));
	c->w = calloc(c->nch, sizeof(*c->w));
	if (!c->chunks || !c->chunk_lock || !c->chunk_round || !c->chunk_dirty || !c->summary || !c->w)
		return pm_err_set(err, ENOMEM, "out of memory");
	memset(c->chunk_dirty, 0xff, (c->nchunks + 63) / 64 * sizeof(uint64_t));
	for (unsigned i = 0; i < c->nch; i++)
		pm_conn_init(&c->w[i].conn, -1);
	c->failover = !p->no_failover;
	c->resend = calloc(c->nchunks, sizeof(*c->resend));
	if (!c->resend)
		return pm_err_set(err, ENOMEM, "out of memory");
	atomic_store(&c->alive, c->nch);
	atomic_store(&c->state_channel, -1);
	atomic_store(&c->reconnect_open, true);
	uint32_t k = 0;
	for (unsigned i = 0; i < be->nregions; i++)
		for (uint64_t f = 0; f < be->regions[i].npages; f += c->chunk_pages) {
			if (f == 0)
				c->region_chunk0[i] = k;
			uint64_t n = be->regions[i].npages - f;
			c->chunks[k] = (struct chunk_ref){ .region = i, .first = f,
				.npages = n < c->chunk_pages ? n : c->chunk_pages };
			pthread_mutex_init(&c->chunk_lock[k++], NULL);
		}
	for (unsigned i = 0; i < c->ndisks && !p->shared_storage; i++)
		for (uint64_t f = 0; f < c->disk[i].nblocks; f += c->disk[i].chunk_blocks) {
			uint64_t n = c->disk[i].nblocks - f;
			c->chunks[k] = (struct chunk_ref){ .region = i, .first = f, .disk = true,
				.npages = n < c->disk[i].chunk_blocks ? n : c->disk[i].chunk_blocks };
			pthread_mutex_init(&c->chunk_lock[k++], NULL);
		}
	for (unsigned i = 0; i < c->nch; i++) {
		struct worker *w = &c->w[i];
		r = src_worker_init(w, c, i, err);
		if (r)
			return r;
		snprintf(w->to, sizeof(w->to), "%s", p->to[i % p->nto]);
		snprintf(w->bind, sizeof(w->bind), "%s", p->nbind ? p->bind[i % p->nbind] : "");
		snprintf(w->peer, sizeof(w->peer), "%s (channel %u)", w->to, i);
		snprintf(w->what, sizeof(w->what), "channel %u (%.100s): sending pages", i, w->to);
	}
	if (pm_queue_init(&c->q, 4 * c->nch))
		return pm_err_set(err, ENOMEM, "out of memory");
	atomic_store(&c->channels_ready, true);       /* for snapshot() in other threads */
	if (p->progress) {
		pthread_condattr_t ca;
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_mutex_init(&c->prog_lock, NULL);
		pthread_cond_init(&c->prog_cond, &ca);
		pthread_condattr_destroy(&ca);
		c->prog_init = true;
		c->prog_started = !pthread_create(&c->prog_thread, NULL, progress_main, c);
	}
	return 0;
}

/* ------------------------------------------------------- phase: connect */

/* Every channel, then the layout, which the destination checks against its
 * own before any page; then dirty tracking and the workers start. */
static int phase_connect(struct src_ctx *c, struct pm_err *err)
{
	struct pm_layout l;
	uint8_t lb[PM_LAYOUT_FIXED_LEN + PM_MAX_REGIONS * PM_LAYOUT_REGION_LEN];
	int r;

	src_enter(c, SRC_CONNECT);
	if (getrandom(c->session, sizeof(c->session), 0) != sizeof(c->session))
		return pm_err_set(err, errno, "getrandom: %s", strerror(errno));
	for (unsigned i = 0; i < c->nch; i++) {
		r = chan_connect(&c->w[i], &c->w[i].conn, 0, c->timeout_ms, err);
		if (r)
			return r;
	}
	pm_layout_of(c->be, &l);
	pm_encode_layout(lb, &l);
	r = pm_send_frame(&c->w[0].conn, PM_FR_LAYOUT, lb, pm_layout_len(&l), err);
	if (!r)
		r = chan_recv_reply(&c->w[0], &c->w[0].conn, PM_FR_LAYOUT_ACK, NULL, 0, NULL, err);
	if (r)
		return r;
	c->rep->setup_ms = pm_now_ms() - c->t0;
	r = c->be->ops->dirty_start(c->be->vm, err);
	if (r)
		return r;
	c->tracking = true;
	for (unsigned i = 0; i < c->ndisks && !c->p->shared_storage; i++) {
		const struct pm_blockdev *bd = c->disk[i].bd;
		r = bd->ops->dirty_start(bd->dev, err);
		if (r)
			return r;
		c->disks_tracked = i + 1;
	}
	c->t_track = pm_now_ms();
	if (c->be->ops->write_stats)
		c->be->ops->write_stats(c->be->vm, &c->written0, &c->write_asked);
	if (!c->p->serial)
		for (unsigned i = 0; i < c->nch; i++) {
			if (pthread_create(&c->w[i].thread, NULL, src_worker_main, &c->w[i]))
				return pm_err_set(err, EAGAIN, "cannot start worker thread");
			c->w[i].started = true;
		}
	return 0;
}

/* ---------------------------------------------------- phase: switchover */

/* The final pass, with the VM paused -- and, if a channel was lost during
 * it, one more pass (one round higher) for the chunks whose last copy it
 * had, until nothing is left to send again. */
static int final_passes(struct src_ctx *c, struct pm_err *err)
{
	if (src_run_pass(c, c->round) || src_wait_idle(c))
		return src_worker_error(c, err);
	for (;;) {
		collect_replies(c);
		if (atomic_load(&c->failed))
			return src_worker_error(c, err);
		if (!atomic_load(&c->resend_pending))
			return 0;
		if (c->round >= PM_MAX_ROUNDS)
			return pm_err_set(err, EIO, "round %u: no round left to send lost chunks again", c->round);
		c->round++;
		atomic_store(&c->cur_round, c->round);
		if (src_run_pass(c, c->round) || src_wait_idle(c))
			return src_worker_error(c, err);
	}
}

/* Shared storage: with the VM paused, what it wrote reaches the storage
 * the destination reads. */
static int flush_disks(struct src_ctx *c, struct pm_err *err)
{
	double t = pm_now_ms();

	for (unsigned i = 0; i < c->ndisks; i++) {
		const struct pm_blockdev *bd = c->disk[i].bd;
		int r = bd->ops->flush ? bd->ops->flush(bd->dev, err) :
			fdatasync(bd->fd) ? pm_err_set(err, errno, "disk %s: fdatasync: %s", bd->name,
						       strerror(errno)) : 0;
		if (r)
			return r;
	}
	c->rep->disk_flush_ms = pm_now_ms() - t;
	return 0;
}

/* Lets what is in flight finish while the VM still runs (the pause should
 * only cover what is dirty now, not a full pipeline), pauses, harvests
 * every chunk once more and sends the rest. */
static int phase_switchover(struct src_ctx *c, struct pm_err *err)
{
	struct pm_backend *be = c->be;
	int r;

	if (src_wait_idle(c))
		return src_worker_error(c, err);
	/* From here on a lost channel stays lost: no channel may join while a
	 * barrier or the final passes are under way. */
	pthread_mutex_lock(&c->lost_lock);
	atomic_store(&c->reconnect_open, false);
	pthread_mutex_unlock(&c->lost_lock);
	/* Barrier-free, the last round's tail is still in socket buffers and
	 * the network's queues: drain it end to end now, while the VM runs,
	 * or it lands inside the downtime (tens of ms on a shaped link). */
	if (!c->p->barrier && src_round_barrier(c, c->round - 1))
		return src_worker_error(c, err);
	c->round_ms[c->round - 1] += pm_now_ms() - c->t_round;
	c->t_round = pm_now_ms();

	src_enter(c, SRC_SWITCHOVER);
	atomic_store(&c->cur_round, c->round);
	if (be->ops->write_stats)
		be->ops->write_stats(be->vm, &c->written1, &c->write_asked);
	/* Before the pause, so that reading /proc costs no downtime. */
	pm_guest_mem_usage(be, &c->rep->mem);
	struct pm_downtime_breakdown *bd = &c->rep->downtime_breakdown;
	c->t_pause = pm_now_ms();
	r = be->ops->pause(be->vm, err);
	if (r)
		return r;
	c->paused = true;
	bd->pause_ms = pm_now_ms() - c->t_pause;
	c->round_start[c->round] = c->t_pause - c->t0;
	atomic_store(&c->sample_phase, PM_PH_PAUSED);
	atomic_store(&c->dirty_at_start, 0);
	src_sample(c, true);
	if (c->p->dump_at_pause) {
		double t = pm_now_ms();
		r = pm_dump_memory(be, c->p->dump_at_pause, err);
		c->dump_ms += pm_now_ms() - t;
		exclude_dumps(c);
		if (r)
			return r;
	}
	double t = pm_now_ms();
	r = be->ops->dirty_sync(be->vm, err);
	if (!r)
		r = src_count_dirty(c, &c->dirty_at[c->round], err);
	if (!r)
		r = src_disks_dirty(c, c->round, err);
	if (!r && c->p->shared_storage)
		r = flush_disks(c, err);
	if (r)
		return r;
	atomic_store(&c->dirty_at_start, c->dirty_at[c->round]);
	bd->final_sync_ms = pm_now_ms() - t;
	t = pm_now_ms();
	r = final_passes(c, err);
	if (r)
		return r;
	bd->final_send_ms = pm_now_ms() - t;
	c->round_ms[c->round] = pm_now_ms() - c->t_round - c->dump_ms;
	atomic_store(&c->sample_phase, PM_PH_COMPLETING);
	src_sample(c, true);
	return 0;
}

/* ---------------------------------------------------- phase: completion */

/* Which pages of a chunk hold data: never read the others. */
static int populated_of(void *opaque, uint32_t region, uint64_t first, uint64_t n, uint64_t *bits,
			struct pm_err *err)
{
	const struct pm_region *rg = &((const struct pm_backend *)opaque)->regions[region];

	if (!rg->mem) {
		memset(bits, 0xff, (n + 63) / 64 * 8);
		return 0;
	}
	return pm_guestmem_populated(rg->mem, rg->mem_offset / PM_PAGE_SIZE + first, n, bits, err);
}

/* --verify: a digest of every chunk as it is now (paused, all sent), sent
 * after the state on the state's channel; the destination compares before
 * it resumes.  A verification aid: its time is left out of the downtime. */
static int make_digests(struct src_ctx *c, uint8_t **out, size_t *len, struct pm_err *err)
{
	struct pm_digest_job j = { .be = c->be, .chunk_pages = c->chunk_pages,
				   .data = populated_of, .opaque = c->be };
	uint64_t n;

	j.disks = !c->p->shared_storage;
	n = pm_digest_nchunks(c->be, c->chunk_pages, j.disks);
	double t = pm_now_ms();
	uint8_t *b;
	int r;

	if (n > PM_MAX_VERIFY_CHUNKS)
		return pm_err_set(err, EFBIG, "--verify: %llu chunks exceed the protocol's %u",
				  (unsigned long long)n, PM_MAX_VERIFY_CHUNKS);
	b = calloc(1, PM_VERIFY_FIXED_LEN + n * PM_DIGEST_LEN);
	if (!b)
		return pm_err_set(err, ENOMEM, "out of memory for %llu digests", (unsigned long long)n);
	pm_put32(b, (uint32_t)n);
	r = pm_digest_compute(&j, c->nch, b + PM_VERIFY_FIXED_LEN, err);
	c->verify_src_ms = pm_now_ms() - t;
	c->rep->verify_ms += c->verify_src_ms;
	c->dump_ms += c->verify_src_ms;
	exclude_dumps(c);
	if (r) {
		free(b);
		return r;
	}
	*out = b;
	*len = PM_VERIFY_FIXED_LEN + n * PM_DIGEST_LEN;
	return 0;
}

/* DONE: the destination runs the VM.  What it says of its share of the
 * pause completes the downtime breakdown. */
static void done_received(struct src_ctx *c, const struct pm_done *d)
{
	struct pm_downtime_breakdown *bd = &c->rep->downtime_breakdown;
	double excluded = (d->dump_us + d->verify_us) / 1e3;

	c->dump_ms += excluded;
	exclude_dumps(c);
	c->rep->verify_ms += d->verify_us / 1e3;
	c->rep->verified = c->p->verify;
	bd->dst_drain_ms = d->drain_us / 1e3;
	bd->dst_sync_ms = d->sync_us / 1e3;
	bd->dst_load_ms = d->load_us / 1e3;
	bd->dst_resume_ms = d->resume_us / 1e3;
	bd->network_ms = pm_now_ms() - c->t_end_sent - excluded - bd->dst_drain_ms - bd->dst_sync_ms -
			 bd->dst_load_ms - bd->dst_resume_ms;
	if (bd->network_ms < 0)
		bd->network_ms = 0;
	c->rep->dst_data_pages = d->data_pages;
}

/* After the final state went out: DONE on any channel means the destination
 * runs the VM; an ERROR means it did not and never will (it tells before it
 * resumes, never after); a LOST (the destination lost a channel before its
 * END) means: send that channel's work again and END again (1); anything
 * else -- silence for twice the timeout, every channel closed -- leaves the
 * outcome unknown (PM_UNKNOWN). */
static int wait_outcome(struct src_ctx *c, struct pm_err *err)
{
	/* The destination may itself wait up to its timeout for a missing
	 * frame before it answers (with an ERROR or a LOST): outlast that. */
	unsigned budget = 2 * c->timeout_ms;
	double deadline = pm_now_ms() + budget;
	uint64_t lost0 = lost_mask(c);
	char why[300] = "";

	for (;;) {
		struct pollfd pfd[PM_MAX_CHANNELS];
		unsigned who[PM_MAX_CHANNELS], n = 0;

		for (unsigned i = 0; i < c->nch; i++)
			if (!c->w[i].dead && !atomic_load(&c->w[i].lost)) {
				pfd[n] = (struct pollfd){ .fd = c->w[i].conn.fd, .events = POLLIN };
				who[n++] = i;
			}
		double left = deadline - pm_now_ms();
		if (!n || left <= 0) {
			if (!n)
				snprintf(why, sizeof(why), "every channel closed without DONE");
			else
				snprintf(why, sizeof(why), "no DONE within %u ms", budget);
			for (unsigned i = 0; i < c->nch; i++)
				if (c->w[i].dead) {
					size_t l = strlen(why);
					snprintf(why + l, sizeof(why) - l, "; %.200s", c->w[i].dead_why.msg);
					break;
				}
			return pm_err_set(err, EINPROGRESS,
					  "outcome unknown: the final state went to the destination, then %s; "
					  "the destination may be running the VM, so it stays paused here -- "
					  "check the destination, then send 'cont' to resume it here or 'quit' to drop it",
					  why);
		}
		if (poll(pfd, n, (int)left + 1) < 0 && errno != EINTR)
			return pm_err_set(err, errno, "poll: %s", strerror(errno));
		for (unsigned k = 0; k < n; k++) {
			struct worker *w = &c->w[who[k]];
			struct pm_frame_hdr h;
			int t;

			if (!pfd[k].revents || !src_take(w))
				continue;
			while ((t = chan_take(w, &h)) > 0) {
				const uint8_t *body = w->reply + PM_FRAME_HDR_LEN;
				struct pm_done d;
				if (h.type == PM_FR_DONE && !pm_decode_done(body, h.len, &d, &w->dead_why)) {
					done_received(c, &d);
					src_give(w);
					src_enter(c, SRC_COMPLETED);
					atomic_store(&c->sample_phase, PM_PH_DONE);
					src_sample(c, true);
					return 0;
				}
				if (h.type == PM_FR_ERROR) {
					int r = src_refused(c, body, h.len, err);
					src_give(w);
					return r;
				}
				pm_err_set(&w->dead_why, EPROTO, "%s: unexpected %s from the destination",
					   w->peer, pm_frame_name(h.type));
				t = -1;
				break;
			}
			if (t < 0)
				w->dead = true;
			src_give(w);
		}
		/* The destination lost a channel that had not ended: its work
		 * goes again on the others, and END again. */
		if (c->failover && lost_mask(c) != lost0)
			return 1;
	}
}

/* The last END of the first whole set is the point of no return: with it
 * the destination has everything it needs to run the VM.  A cancel that
 * came first wins. */
static bool gate_commit(struct src_ctx *c)
{
	int open = GATE_OPEN;

	if (c->committed)
		return true;
	return atomic_compare_exchange_strong(&c->gate, &open, GATE_COMMITTED);
}

/* The device state (where it has not arrived whole yet) and an END on every
 * live channel, carrying the mask of the lost ones.  1: a channel was lost
 * on the way -- send its work again and try again. */
static int send_final(struct src_ctx *c, const void *state, size_t state_len, struct pm_err *err)
{
	uint64_t mask = lost_mask(c);
	unsigned live[PM_MAX_CHANNELS], n = 0;

	for (unsigned i = 0; i < c->nch; i++)
		if (!(mask >> i & 1))
			live[n++] = i;
	if (atomic_load(&c->state_channel) < 0) {
		for (unsigned k = 0; k < n; k++) {
			struct worker *w = &c->w[live[k]];
			struct pm_err e = { 0 };
			if (!src_take(w))
				return 1;
			int r = pm_send_frame(&w->conn, PM_FR_STATE, state, state_len, &e);
			if (!r && c->digests)
				r = pm_send_frame(&w->conn, PM_FR_VERIFY, c->digests, c->digests_len, &e);
			if (r)
				chan_lost(w, &e);
			else
				atomic_store(&c->state_channel, (int)w->idx);
			src_give(w);
			if (atomic_load(&c->failed))
				return src_worker_error(c, err);
			if (r)
				return 1;
			break;
		}
	}
	for (unsigned k = 0; k < n; k++) {
		struct worker *w = &c->w[live[k]];
		struct pm_err e = { 0 };
		uint8_t eb[PM_END_FAILOVER_LEN];
		if (!src_take(w))
			return 1;
		w->sent.final_round = c->round;
		w->sent.lost = mask;
		uint32_t len = pm_encode_end(eb, &w->sent, c->failover);
		if (k == n - 1 && !gate_commit(c)) {
			src_give(w);
			return pm_err_set(err, ECANCELED, "migration cancelled");
		}
		/* An END that does not go out whole leaves the destination
		 * without it: it cannot resume with this set. */
		int r = pm_send_frame(&w->conn, PM_FR_END, eb, len, &e);
		if (r)
			chan_lost(w, &e);
		src_give(w);
		if (atomic_load(&c->failed))
			return src_worker_error(c, err);
		if (r)
			return 1;
	}
	c->committed = true;
	return 0;
}

/* Device state and END sets until the destination answers. */
static int phase_complete(struct src_ctx *c, struct pm_err *err)
{
	struct pm_backend *be = c->be;
	void *state = NULL;
	size_t state_len = 0;
	int r;

	src_enter(c, SRC_COMPLETING);
	struct pm_downtime_breakdown *bd = &c->rep->downtime_breakdown;
	double t = pm_now_ms();
	r = be->ops->save_state(be->vm, &state, &state_len, err);
	if (r)
		return r;
	if (state_len > PM_MAX_STATE_LEN) {
		free(state);
		return pm_err_set(err, EFBIG, "device state of %zu bytes exceeds the protocol limit", state_len);
	}
	if (c->p->verify) {
		r = make_digests(c, &c->digests, &c->digests_len, err);
		if (r) {
			free(state);
			return r;
		}
	}
	for (;;) {
		r = send_final(c, state, state_len, err);
		if (!r) {
			if (!bd->state_ms)
				bd->state_ms = pm_now_ms() - t - c->verify_src_ms;
			c->t_end_sent = pm_now_ms();
			r = wait_outcome(c, err);
		}
		if (r != 1)
			break;
		/* A channel was lost before its END arrived: its chunks go
		 * again, in a higher round, then a new END set. */
		collect_replies(c);
		if (c->round >= PM_MAX_ROUNDS) {
			r = pm_err_set(err, EIO, "no round left after lost channels");
			break;
		}
		c->round++;
		atomic_store(&c->cur_round, c->round);
		r = final_passes(c, err);
		if (r)
			break;
	}
	free(state);
	return r;
}

/* ------------------------------------------------------------- outcome */

static void fill_report(struct src_ctx *c)
{
	struct pm_report *rep = c->rep;
	unsigned nrounds = c->round;

	rep->channels = c->nch;
	rep->vm_pages = c->vm_pages;
	rep->nrounds = nrounds;
	for (unsigned r = 1; r <= nrounds && r <= PM_MAX_ROUNDS; r++) {
		struct pm_round_stat *s = &rep->rounds[r - 1];
		s->round = r;
		s->pages = atomic_load(&c->acc[r].pages);
		s->zero_pages = atomic_load(&c->acc[r].zero);
		s->unpopulated_pages = atomic_load(&c->acc[r].unpop);
		s->bytes = atomic_load(&c->acc[r].bytes);
		s->duration_ms = c->round_ms[r];
		s->start_ms = c->round_start[r];
		s->dirty_at_start = c->dirty_at[r];
		s->final = r == nrounds;
		rep->pages_sent += s->pages;
		rep->zero_pages += s->zero_pages;
		rep->unpopulated_pages += s->unpopulated_pages;
		rep->bytes_sent += s->bytes;
	}
	for (unsigned i = 0; i < c->nch; i++) {
		rep->channel_bytes[i] = atomic_load(&c->w[i].wire_bytes);
		rep->frames += c->w[i].sent.frames;
	}
	rep->throttle_pct = atomic_load(&c->throttle);
	rep->failover = c->failover;
	rep->mptcp = c->nch && atomic_load(&c->mptcp_channels) >= c->nch;
	rep->resent_pages = atomic_load(&c->resent_pages);
	pthread_mutex_lock(&c->lost_lock);
	rep->nlost = c->nevents;
	memcpy(rep->lost, c->events, sizeof(rep->lost));
	pthread_mutex_unlock(&c->lost_lock);
	for (unsigned r = 1; r <= nrounds && r <= PM_MAX_ROUNDS; r++) {
		struct pm_round_stat *s = &rep->rounds[r - 1];
		s->disk_blocks = atomic_load(&c->acc[r].dblocks) + atomic_load(&c->acc[r].dzero) +
				 atomic_load(&c->acc[r].dunalloc);
		s->disk_bytes = atomic_load(&c->acc[r].dbytes);
		for (unsigned i = 0; i < c->ndisks; i++)
			s->disk_dirty_at_start += c->disk[i].dirty_at[r];
	}
	rep->ndisks = c->ndisks < PM_REPORT_MAX_DISKS ? c->ndisks : PM_REPORT_MAX_DISKS;
	rep->shared_storage = c->ndisks && c->p->shared_storage;
	for (unsigned i = 0; i < rep->ndisks; i++) {
		const struct src_disk *d = &c->disk[i];
		struct pm_disk_report *dr = &rep->disks[i];
		snprintf(dr->name, sizeof(dr->name), "%s", d->bd->name ? d->bd->name : "");
		dr->size_bytes = d->bd->size;
		dr->block_bytes = d->bd->block_size;
		dr->blocks = atomic_load(&d->blocks);
		dr->zero_blocks = atomic_load(&d->zero);
		dr->unallocated_blocks = atomic_load(&d->unalloc);
		dr->bytes = atomic_load(&d->bytes);
		dr->busy_ms = atomic_load(&d->busy_us) / 1e3;
	}
	pm_timeline_report(&c->tl, rep);
	bool kernel = c->nch > 0;
	for (unsigned i = 0; i < c->nch; i++)
		kernel = kernel && pm_tls_kernel(&c->w[i].conn, true);
	snprintf(rep->tls, sizeof(rep->tls), "%s", pm_tls_mode_name(pm_tls_mode_of(c->tls)));
	snprintf(rep->tls_records, sizeof(rep->tls_records), "%s",
		 !c->tls ? "none" : kernel ? "ktls" : "userspace");
	if (c->paused) {
		rep->pause_at_ms = c->t_pause - c->t0;
		rep->write_rate_asked_mbps = c->write_asked / 1e6;
		if (c->t_pause > c->t_track)
			rep->write_rate_mbps = (c->written1 - c->written0) * (double)PM_PAGE_SIZE / 1e3 /
					       (c->t_pause - c->t_track);
	}
	rep->engine_bytes = (uint64_t)c->nchunks * (sizeof(*c->chunks) + sizeof(*c->chunk_lock) +
						    sizeof(*c->chunk_round)) + 2 * ((c->nchunks + 63) / 64 * 8);
}

/* Closes the channels (telling the destination why, if it failed) and
 * joins the threads. */
static void teardown(struct src_ctx *c, const struct pm_err *why)
{
	/* Workers still dialling a lost channel give up at once. */
	pthread_mutex_lock(&c->lost_lock);
	atomic_store(&c->reconnect_open, false);
	pthread_mutex_unlock(&c->lost_lock);
	if (c->wake[1] >= 0 && write(c->wake[1], "t", 1) < 0) {
		/* full: woken already */
	}
	if (c->q.slots)
		pm_queue_close(&c->q);
	for (unsigned i = 0; c->w && i < c->nch; i++) {
		struct worker *w = &c->w[i];
		if (w->started) {
			pthread_join(w->thread, NULL);
			w->started = false;
		}
		if (why && why->code && !atomic_load(&w->lost))
			pm_send_error_frame(&w->conn, why->code, why->msg);
		pm_conn_shutdown(&w->conn);
		if (w->started)
			pthread_join(w->thread, NULL);
		pm_conn_close(&w->conn);
		src_worker_free(w);
	}
	if (c->prog_started) {
		pthread_mutex_lock(&c->prog_lock);
		c->prog_stop = true;
		pthread_cond_broadcast(&c->prog_cond);
		pthread_mutex_unlock(&c->prog_lock);
		pthread_join(c->prog_thread, NULL);
		c->prog_started = false;
	}
}

/* The one place that decides what the end of a migration means, by the
 * phase it ended in (r is 0 only after the destination said DONE):
 *   SETUP, CONNECT   nothing happened to the VM;
 *   PRECOPY          the VM never stopped: tracking stops, it runs on;
 *   SWITCHOVER,      the VM was paused: it is resumed here -- unless every
 *   COMPLETING       END went out and no explicit ERROR came back: then the
 *                    destination may run it, and it stays paused (UNKNOWN);
 *   COMPLETED        the destination runs the VM: it stays paused here.
 * A cancel that won the gate is reported as such.  Failures tell the
 * destination why before the channels close. */
static int conclude(struct src_ctx *c, int r, struct pm_err *err)
{
	struct pm_backend *be = c->be;
	struct pm_report *rep = c->rep;
	bool done = !r && c->phase == SRC_COMPLETED;
	/* Past the point of no return only the destination's ERROR says it
	 * does not run the VM. */
	bool unknown = !done && c->committed && !atomic_load(&c->refused);
	double t_end = pm_now_ms();

	if (!done && !r)
		r = pm_err_set(err, EIO, "migration failed");
	pthread_mutex_lock(&c->err_lock);
	bool cancelled = c->cancel_won;
	pthread_mutex_unlock(&c->err_lock);
	if (!done && !unknown && cancelled)
		r = pm_err_reset(err, ECANCELED, "migration cancelled%s",
				 c->paused ? "; the VM runs here again" : "; the VM keeps running here");
	atomic_store(&c->gate, GATE_ENDED);
	/* A migration that ends early may still have workers sending (a
	 * policy abort, an error): stop them first, so the report counts
	 * what they did and nothing is read while they write it. */
	if (!done && c->w)
		stop_workers(c);
	if (c->w)
		fill_report(c);
	/* Verification dumps are a test aid, not part of the migration. */
	rep->verify_dump_ms = c->dump_ms;
	rep->total_time_ms = t_end - c->t0 - c->dump_ms;
	rep->downtime_ms = done ? t_end - c->t_pause - c->dump_ms : 0;
	rep->throughput_mbps = rep->total_time_ms > 0 ? rep->bytes_sent / 1e3 / rep->total_time_ms : 0;
	if (c->tracking && be->ops->dirty_method)
		snprintf(rep->dirty_method, sizeof(rep->dirty_method), "%s", be->ops->dirty_method(be->vm));
	if (c->tracking)
		be->ops->dirty_stop(be->vm);
	c->tracking = false;
	for (unsigned i = 0; i < c->disks_tracked; i++)
		c->disk[i].bd->ops->dirty_stop(c->disk[i].bd->dev);
	c->disks_tracked = 0;
	if (atomic_load(&c->throttle) && be->ops->throttle)
		be->ops->throttle(be->vm, 0);
	teardown(c, done ? NULL : err);
	if (done)
		return 0;
	if (unknown) {
		if (r != PM_UNKNOWN)
			pm_err_reset(err, EINPROGRESS, "outcome unknown: the final state went to the destination, "
				     "then: %s; the destination may be running the VM, so it stays paused here -- "
				     "check the destination, then send 'cont' to resume it here or 'quit' to drop it",
				     err->msg);
		src_enter(c, SRC_UNKNOWN);
		rep->status = PM_UNKNOWN;
		snprintf(rep->error, sizeof(rep->error), "%s", err->msg);
		return PM_UNKNOWN;
	}
	if (c->paused) {
		struct pm_err e2 = { 0 };
		if (be->ops->resume(be->vm, &e2))
			pm_err_reset(err, e2.code, "%s; and resuming the source failed: %s", err->msg, e2.msg);
	}
	src_enter(c, SRC_FAILED);
	if (r == PM_UNKNOWN)
		r = -EIO;
	if (rep->verify && err->code == EBADMSG)
		snprintf(rep->verify_error, sizeof(rep->verify_error), "%.250s", err->msg);
	rep->status = r;
	snprintf(rep->error, sizeof(rep->error), "%s", err->msg);
	return r;
}

static struct src_ctx *ctx_new(struct pm_backend *be, const struct pm_migrate_params *p,
			       struct pm_report *rep)
{
	struct src_ctx *c = calloc(1, sizeof(*c));

	memset(rep, 0, sizeof(*rep));
	rep->role = "source";
	rep->barrier = p->barrier;
	rep->serial = p->serial;
	rep->compress = p->compress;
	rep->verify = p->verify;
	if (!c)
		return NULL;
	c->be = be;
	c->p = p;
	c->rep = rep;
	c->t0 = pm_now_ms();
	pthread_mutex_init(&c->err_lock, NULL);
	pthread_mutex_init(&c->lost_lock, NULL);
	pm_timeline_init(&c->tl, 20);
	src_enter(c, SRC_SETUP);
	/* Before any thread can cancel. */
	if (pipe2(c->wake, O_CLOEXEC | O_NONBLOCK)) {
		pthread_mutex_destroy(&c->err_lock);
		pthread_mutex_destroy(&c->lost_lock);
		pm_timeline_destroy(&c->tl);
		free(c);
		return NULL;
	}
	return c;
}

static void ctx_free(struct src_ctx *c)
{
	if (c->prog_init) {
		pthread_mutex_destroy(&c->prog_lock);
		pthread_cond_destroy(&c->prog_cond);
	}
	for (uint32_t i = 0; c->chunk_lock && i < c->nchunks; i++)
		pthread_mutex_destroy(&c->chunk_lock[i]);
	if (c->q.slots)
		pm_queue_destroy(&c->q);
	src_disks_free(c);
	free(c->chunks);
	free(c->chunk_lock);
	free(c->chunk_round);
	free(c->chunk_dirty);
	free(c->summary);
	free(c->resend);
	free(c->digests);
	free(c->w);
	pthread_mutex_destroy(&c->lost_lock);
	close(c->wake[0]);
	close(c->wake[1]);
	pm_tls_free(c->tls);
	pthread_mutex_destroy(&c->err_lock);
	pm_timeline_destroy(&c->tl);
	free(c);
}

static int run(struct src_ctx *c, struct pm_err *err)
{
	int r = setup(c, err);

	if (!r)
		r = phase_connect(c, err);
	if (!r)
		r = src_phase_precopy(c, err);
	if (!r)
		r = phase_switchover(c, err);
	if (!r)
		r = phase_complete(c, err);
	return conclude(c, r, err);
}

int pm_migrate_outgoing(struct pm_backend *be, const struct pm_migrate_params *p,
			struct pm_report *rep, struct pm_err *err)
{
	struct src_ctx *c = ctx_new(be, p, rep);
	int r;

	if (!c)
		return pm_err_set(err, ENOMEM, "out of memory");
	r = run(c, err);
	ctx_free(c);
	return r;
}

/* ------------------------------------------------------ migration handle */

struct pm_migration {
	struct src_ctx *c;
	pthread_t thread;
	bool joined;
	int done[2];                    /* written when the migration has ended */
	int rc;
	struct pm_err err;
	struct pm_report *rep;
	pthread_mutex_t lock;           /* progress snapshots */
	uint64_t last[PM_MAX_CHANNELS];
	double tlast;
};

static void *migration_main(void *arg)
{
	struct pm_migration *m = arg;

	m->rc = run(m->c, &m->err);
	if (write(m->done[1], "d", 1) < 0) {
		/* cannot happen: an empty pipe */
	}
	return NULL;
}

int pm_migration_start(struct pm_migration **out, struct pm_backend *be,
		       const struct pm_migrate_params *p, struct pm_err *err)
{
	struct pm_migration *m = calloc(1, sizeof(*m));

	if (!m || !(m->rep = calloc(1, sizeof(*m->rep)))) {
		free(m);
		return pm_err_set(err, ENOMEM, "out of memory");
	}
	m->done[0] = m->done[1] = -1;
	m->joined = true;               /* until the thread exists */
	pthread_mutex_init(&m->lock, NULL);
	m->c = ctx_new(be, p, m->rep);
	if (!m->c || pipe2(m->done, O_CLOEXEC | O_NONBLOCK)) {
		int e = m->c ? errno : ENOMEM;
		pm_migration_free(m);
		return pm_err_set(err, e, "cannot start a migration: %s", strerror(e));
	}
	m->tlast = m->c->t0;
	if (pthread_create(&m->thread, NULL, migration_main, m)) {
		pm_migration_free(m);
		return pm_err_set(err, EAGAIN, "cannot start the migration thread");
	}
	m->joined = false;
	*out = m;
	return 0;
}

void pm_migration_progress(struct pm_migration *m, struct pm_progress *out)
{
	pthread_mutex_lock(&m->lock);
	snapshot(m->c, out, m->last, &m->tlast);
	pthread_mutex_unlock(&m->lock);
}

int pm_migration_cancel(struct pm_migration *m)
{
	struct src_ctx *c = m->c;
	int g = GATE_OPEN;

	if (!atomic_compare_exchange_strong(&c->gate, &g, GATE_CANCELLED))
		return g == GATE_CANCELLED ? 0 : g == GATE_COMMITTED ? -EBUSY : -EALREADY;
	pthread_mutex_lock(&c->err_lock);
	if (!c->err.code) {
		pm_err_set(&c->err, ECANCELED, "migration cancelled");
		c->cancel_won = true;
	}
	pthread_mutex_unlock(&c->err_lock);
	atomic_store(&c->failed, true);
	if (atomic_load(&c->channels_ready))
		pm_queue_close(&c->q);
	/* Every wait on a channel ends now. */
	if (c->wake[1] >= 0 && write(c->wake[1], "c", 1) < 0) {
		/* full: already woken */
	}
	return 0;
}

int pm_migration_fd(const struct pm_migration *m)
{
	return m->done[0];
}

int pm_migration_wait(struct pm_migration *m, struct pm_report *rep, struct pm_err *err)
{
	if (!m->joined) {
		pthread_join(m->thread, NULL);
		m->joined = true;
	}
	if (rep)
		*rep = *m->rep;
	if (m->rc && err)
		*err = m->err;
	return m->rc;
}

void pm_migration_free(struct pm_migration *m)
{
	if (!m)
		return;
	if (!m->joined && m->c) {
		pm_migration_cancel(m);
		pm_migration_wait(m, NULL, NULL);
	}
	if (m->c)
		ctx_free(m->c);
	for (unsigned i = 0; i < 2; i++)
		if (m->done[i] >= 0)
			close(m->done[i]);
	pthread_mutex_destroy(&m->lock);
	free(m->rep);
	free(m);
}
