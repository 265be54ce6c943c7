/* SPDX-License-Identifier: MIT */
/* Destination side of a migration: the lifecycle.  pm_incoming_run() waits
 * for the source's channels, checks its layout, lets one receiver per
 * channel (recv.c) apply what arrives, and resumes the VM only when every
 * channel ended with counts matching what was applied, every page of guest
 * memory arrived at least once, and the device state loaded.  Any failure
 * before the resume sends an ERROR with the reason on every channel -- the
 * source then knows for sure that this side never ran the VM -- and the VM
 * stays unstarted. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <pmigrate/guestmem.h>
#include "engine/dest.h"
#include "engine/digest.h"
#include "engine/report.h"
#include "engine/tls.h"

void dst_notify(struct dst_ctx *c)
{
	if (write(c->notify[1], "n", 1) < 0) {
		/* full: a wakeup is pending anyway */
	}
}

void dst_fail(struct dst_ctx *c, const struct pm_err *e)
{
	bool first;

	pthread_mutex_lock(&c->mu);
	first = !c->failed;
	if (first) {
		c->err = *e;
		c->failed = true;
	}
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->mu);
	if (!first)
		return;
	/* Tell the source why (it then knows we never ran the VM), then wake
	 * every receiver.  A receiver busy sending is not waited for. */
	for (unsigned i = 0; c->rx && i < c->nch; i++) {
		struct receiver *x = &c->rx[i];
		if (!pthread_mutex_trylock(&x->send_lock)) {
			pm_send_error_frame(&x->conn, e->code, e->msg);
			pthread_mutex_unlock(&x->send_lock);
		}
		pm_conn_shutdown(&x->conn);
	}
	if (c->stop[1] >= 0 && write(c->stop[1], "f", 1) < 0) {
		/* full: woken already */
	}
	dst_notify(c);
}

int pm_incoming_listen(struct pm_incoming **out, const struct pm_incoming_params *p,
		       struct pm_err *err)
{
	struct pm_incoming *in;

	if (p->nlisten > MAX_LISTEN)
		return pm_err_set(err, EINVAL, "%u listening addresses (0..%u allowed)", p->nlisten, MAX_LISTEN);
	in = calloc(1, sizeof(*in));
	if (!in)
		return pm_err_set(err, ENOMEM, "out of memory");
	in->cancel[0] = in->cancel[1] = -1;
	if (pipe2(in->cancel, O_CLOEXEC | O_NONBLOCK)) {
		int e = errno;
		free(in);
		return pm_err_set(err, e, "pipe: %s", strerror(e));
	}
	in->timeout_ms = p->timeout_ms ? p->timeout_ms : 30000;
	in->dump_on_resume = p->dump_on_resume;
	in->log = p->log;
	in->log_opaque = p->log_opaque;
	int r = pm_tls_new(&in->tls, &p->tls, true, err);
	if (r) {
		pm_incoming_close(in);
		return r;
	}
	/* Secure unless told otherwise: without TLS, anyone who reaches the
	 * port can install a VM of their own here. */
	for (unsigned i = 0; i < p->nlisten && !in->tls; i++) {
		struct sockaddr_storage ss;
		socklen_t sl;
		r = pm_parse_addr(p->listen[i], &ss, &sl, 0, err);
		if (!r && !pm_addr_is_loopback((struct sockaddr *)&ss) && !p->insecure)
			r = pm_err_set(err, EACCES, "refusing to listen on %s without TLS: anyone who can reach "
				       "it could replace this VM; give --tls-creds DIR or --tls-psk FILE "
				       "(or --insecure on a network you trust)", p->listen[i]);
		if (!r && !pm_addr_is_loopback((struct sockaddr *)&ss))
			dst_log(in, "warning: listening on %s without TLS (--insecure): anyone who can reach "
				"this port can replace the VM and read its memory", p->listen[i]);
		if (r) {
			pm_incoming_close(in);
			return r;
		}
	}
	for (unsigned i = 0; i < p->nlisten; i++) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		bool used = false;
		int fd = pm_tcp_listen_ex(p->listen[i], p->mptcp, &used, err);
		in->mptcp = in->mptcp || used;

		if (fd < 0) {
			pm_incoming_close(in);
			return fd;
		}
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
		in->lfd[in->n++] = fd;
		getsockname(fd, (struct sockaddr *)&ss, &sl);
		pm_format_addr((struct sockaddr *)&ss, in->addr[i], sizeof(in->addr[i]));
	}
	*out = in;
	return 0;
}

const char *pm_incoming_address(const struct pm_incoming *in, unsigned i)
{
	return i < in->n ? in->addr[i] : NULL;
}

int pm_incoming_adopt(struct pm_incoming *in, int fd, struct pm_err *err)
{
	if (in->nadopted == MAX_ADOPTED) {
		close(fd);
		return pm_err_set(err, E2BIG, "more than %u adopted connections", MAX_ADOPTED);
	}
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	in->adopted[in->nadopted++] = fd;
	return 0;
}

void pm_incoming_cancel(struct pm_incoming *in)
{
	if (in && write(in->cancel[1], "c", 1) < 0) {
		/* already full: already cancelled */
	}
}

static bool cancelled(const struct pm_incoming *in)
{
	struct pollfd p = { .fd = in->cancel[0], .events = POLLIN };

	return poll(&p, 1, 0) > 0;
}

bool dst_cancelled(const struct dst_ctx *c)
{
	return cancelled(c->in);
}

void pm_incoming_close(struct pm_incoming *in)
{
	if (!in)
		return;
	close(in->cancel[0]);
	close(in->cancel[1]);
	for (unsigned i = 0; i < in->n; i++)
		close(in->lfd[i]);
	for (unsigned i = 0; i < in->nadopted; i++)
		close(in->adopted[i]);
	pm_tls_free(in->tls);
	free(in);
}

static int check_layout(struct dst_ctx *c, struct pm_err *err)
{
	uint8_t hb[PM_FRAME_HDR_LEN];
	uint8_t body[PM_LAYOUT_FIXED_LEN + PM_MAX_REGIONS * PM_LAYOUT_REGION_LEN];
	struct pm_frame_hdr h;
	struct pm_layout src;
	struct pm_conn *conn = &c->rx[0].conn;
	int r;

	r = pm_recv_buf(conn, hb, sizeof(hb), err, "waiting for LAYOUT");
	if (r)
		return r;
	pm_decode_hdr(hb, &h);
	if (h.type != PM_FR_LAYOUT)
		return pm_err_set(err, EPROTO, "expected LAYOUT on channel 0, got %s", pm_frame_name(h.type));
	r = pm_check_hdr(&h, c->chunk_pages, err);
	if (!r)
		r = pm_recv_buf(conn, body, h.len, err, "receiving LAYOUT");
	if (!r)
		r = pm_decode_layout(body, h.len, &src, err);
	if (!r && src.ndisks && !(c->features & PM_FEAT_DISKS))
		r = pm_err_set(err, EPROTO, "LAYOUT lists disks but the source did not announce DISKS");
	if (!r)
		r = pm_layout_check(&src, &c->layout, err);
	/* Writing into the source's own image would corrupt it while the
	 * source VM still runs on it. */
	for (unsigned d = 0; !r && d < src.ndisks && !c->shared_storage; d++) {
		static const uint8_t none[16];
		if (memcmp(src.disk[d].identity, none, 16) &&
		    !memcmp(src.disk[d].identity, c->layout.disk[d].identity, 16))
			r = pm_err_set(err, EINVAL, "disk %u: the destination's image %s is the source's own file; "
				       "give the destination its own image, or migrate with --shared-storage", d,
				       c->be->disks[d].name ? c->be->disks[d].name : "");
	}
	if (!r)
		r = pm_send_frame(conn, PM_FR_LAYOUT_ACK, NULL, 0, err);
	return r;
}


/* Failover: a lost channel dials again.  A valid HELLO (this session, a
 * newer generation of a channel) replaces that channel's connection and
 * receiver; anything else is answered with an ERROR and closed -- a stray
 * connection does not end the migration. */
static void reconnect(struct dst_ctx *c, int lfd)
{
	struct pm_err e = { 0 };
	uint8_t hb[PM_FRAME_HDR_LEN], body[PM_HELLO_LEN];
	struct pm_frame_hdr h;
	struct pm_hello hello;
	struct pm_conn conn;
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	int r;

	if (fd < 0)
		return;
	pm_tcp_tune(fd, c->timeout_ms);
	pm_conn_init(&conn, fd);
	/* This thread waits for nothing else meanwhile: keep it short. */
	unsigned t = c->timeout_ms < 3000 ? c->timeout_ms : 3000;
	pm_conn_set_timeout(&conn, t);
	pm_conn_set_wake(&conn, c->stop[0]);
	r = 0;
	if (c->in->tls) {
		/* The same authentication as the first time, and the same peer. */
		pm_conn_set_deadline(&conn, pm_now_ms() + t);
		r = pm_tls_start(c->in->tls, &conn, NULL, &e);
		if (!r)
			r = pm_tls_handshake(&conn, &e);
		pm_conn_set_deadline(&conn, 0);
		if (!r && strcmp(pm_tls_peer(&conn), c->peer))
			r = pm_err_set(&e, EACCES, "a reconnect authenticated as '%s', but this migration belongs "
				       "to '%s'", pm_tls_peer(&conn), c->peer);
	}
	if (!r)
		r = pm_recv_buf(&conn, hb, sizeof(hb), &e, "waiting for HELLO");
	if (!r) {
		pm_decode_hdr(hb, &h);
		r = h.type == PM_FR_HELLO ? pm_check_hdr(&h, PM_MAX_CHUNK_PAGES, &e) :
			pm_err_set(&e, EPROTO, "expected HELLO, got %s", pm_frame_name(h.type));
	}
	if (!r)
		r = pm_recv_buf(&conn, body, sizeof(body), &e, "receiving HELLO");
	if (!r)
		r = pm_decode_hello(body, sizeof(body), &hello, &e);
	if (!r && (memcmp(hello.session, c->session, 16) || hello.nchannels != c->nch ||
		   hello.features != c->features || hello.chunk_pages != c->chunk_pages))
		r = pm_err_set(&e, EPROTO, "channel %u belongs to another migration session", hello.channel);
	struct receiver *x = r ? NULL : &c->rx[hello.channel];
	if (!r && (c->features & PM_FEAT_BARRIER))
		r = pm_err_set(&e, EPROTO, "no reconnect in barrier mode");
	if (!r && hello.generation <= x->generation)
		r = pm_err_set(&e, EPROTO, "channel %u generation %u is not newer than %u", hello.channel,
			       hello.generation, x->generation);
	pthread_mutex_lock(&c->mu);
	if (!r && (c->stopping || c->failed))
		r = pm_err_set(&e, EPROTO, "channel %u reconnects too late", hello.channel);
	if (!r)
		x->replaced = true;
	pthread_mutex_unlock(&c->mu);
	if (r) {
		dst_log(c->in, "rejected a connection during the migration: %s", e.msg);
		c->rejected++;
		pm_send_error_frame(&conn, e.code, e.msg);
		pm_conn_close(&conn);
		return;
	}
	/* The old connection's receiver ends quietly (a page it cut in the
	 * middle is marked as holding nothing); the new one starts afresh. */
	pm_conn_shutdown(&x->conn);
	if (x->started)
		pthread_join(x->thread, NULL);
	x->started = false;
	pm_conn_close(&x->conn);
	x->conn = conn;
	pm_conn_set_timeout(&x->conn, c->timeout_ms);
	x->generation = hello.generation;
	x->got = (struct pm_end){ 0 };
	x->end = (struct pm_end){ 0 };
	x->acked_frames = x->acked_bytes = 0;
	x->ack_dead = false;
	x->roff = x->rlen = 0;
	x->err = (struct pm_err){ 0 };
	pthread_mutex_lock(&c->mu);
	x->replaced = false;
	x->state = RX_RUNNING;
	c->running++;
	c->last_change = pm_now_ms();
	for (unsigned i = c->nlost < PM_MAX_LOST ? c->nlost : PM_MAX_LOST; i-- > 0;)
		if (c->lost[i].channel == x->idx) {
			c->lost[i].reconnected_ms = pm_now_ms() - c->t0;
			break;
		}
	pthread_mutex_unlock(&c->mu);
	if (pm_send_frame(&x->conn, PM_FR_HELLO_ACK, body, sizeof(body), &e) ||
	    pthread_create(&x->thread, NULL, rx_main, x)) {
		pthread_mutex_lock(&c->mu);
		x->state = RX_LOST;
		c->running--;
		pthread_mutex_unlock(&c->mu);
		return;
	}
	x->started = true;
}

/* Failover: everything is here when every channel the source did not give
 * up has ended -- all with the same, latest END set -- and the state came.
 * Without failover: every channel ended. (Under c->mu.) */
static bool complete(struct dst_ctx *c)
{
	bool any = false;

	for (unsigned i = 0; i < c->nch; i++) {
		struct receiver *x = &c->rx[i];
		if (c->failover && (c->lost_union >> i & 1))
			continue;
		if (x->state != RX_ENDED || (c->failover && x->end.final_round != c->final_round))
			return false;
		any = true;
	}
	return any && (!c->failover || c->have_state);
}

/* Starts the receivers and waits until everything is here, or the
 * migration failed, or it is cancelled. */
static int receive(struct dst_ctx *c, struct pm_err *err)
{
	struct pm_incoming *in = c->in;

	for (unsigned i = 0; i < c->nch; i++) {
		int r = rx_init(&c->rx[i], c, i, err);
		if (r)
			return r;
		/* The end (or a cancel) ends every wait of the receivers at once. */
		pm_conn_set_wake(&c->rx[i].conn, c->stop[0]);
	}
	c->running = c->nch;
	c->last_change = pm_now_ms();
	for (unsigned i = 0; i < c->nch; i++) {
		if (pthread_create(&c->rx[i].thread, NULL, rx_main, &c->rx[i])) {
			struct pm_err e = { 0 };
			pm_err_set(&e, EAGAIN, "cannot start receiver thread");
			pthread_mutex_lock(&c->mu);
			c->running -= c->nch - i;
			pthread_mutex_unlock(&c->mu);
			dst_fail(c, &e);
			break;
		}
		c->rx[i].started = true;
	}
	for (;;) {
		struct pollfd p[2 + MAX_LISTEN];
		unsigned np = 2;
		int wait = -1;
		char b[64];
		bool done = false, dead = false;

		p[0] = (struct pollfd){ .fd = c->notify[0], .events = POLLIN };
		p[1] = (struct pollfd){ .fd = in->cancel[0], .events = POLLIN };
		if (c->failover)
			for (unsigned i = 0; i < in->n; i++)
				p[np++] = (struct pollfd){ .fd = in->lfd[i], .events = POLLIN };
		pthread_mutex_lock(&c->mu);
		if (!c->failed) {
			unsigned up = 0;
			for (unsigned i = 0; i < c->nch; i++)
				up += c->rx[i].state == RX_RUNNING || c->rx[i].state == RX_ENDED;
			done = complete(c);
			dead = !done && !up;
			if (done)
				c->stopping = true;
			/* Nothing running, not complete: the source must answer our
			 * LOST (send the work again, END again) in time. */
			if (!done && !dead && !c->running) {
				double left = c->last_change + 2.0 * c->timeout_ms - pm_now_ms();
				wait = left > 0 ? (int)left + 1 : 0;
			}
		}
		bool failed = c->failed;
		pthread_mutex_unlock(&c->mu);
		if (failed || done)
			break;
		if (dead) {
			struct pm_err e = { 0 };
			pthread_mutex_lock(&c->mu);
			unsigned k = c->nlost < PM_MAX_LOST ? c->nlost : PM_MAX_LOST;
			pm_err_set(&e, EPIPE, "every channel is lost (the last: channel %u: %s)",
				   k ? c->lost[k - 1].channel : 0, k ? c->lost[k - 1].reason : "?");
			pthread_mutex_unlock(&c->mu);
			dst_fail(c, &e);
			break;
		}
		if (wait == 0) {
			struct pm_err e = { 0 };
			pm_err_set(&e, ETIMEDOUT, "the source did not send the work of a lost channel again "
				   "within %u ms", 2 * c->timeout_ms);
			dst_fail(c, &e);
			break;
		}
		if (poll(p, np, wait) < 0 && errno != EINTR)
			break;
		if (p[1].revents & POLLIN) {
			struct pm_err e = { 0 };
			pm_err_set(&e, ECANCELED, "cancelled on the destination");
			dst_fail(c, &e);
		}
		for (unsigned i = 2; i < np; i++)
			if (p[i].revents & POLLIN)
				reconnect(c, p[i].fd);
		while (read(c->notify[0], b, sizeof(b)) > 0)
			;
	}
	/* Every receiver ends now: complete, or failed. */
	if (write(c->stop[1], "s", 1) < 0) {
		/* full: woken already */
	}
	for (unsigned i = 0; i < c->nch; i++)
		if (c->rx[i].started) {
			pthread_join(c->rx[i].thread, NULL);
			c->rx[i].started = false;
		}
	if (c->failed)
		return pm_err_set(err, c->err.code ? c->err.code : EIO, "%s", c->err.msg);
	return 0;
}

/* Everything the source counted arrived; now what must be there to run:
 * the device state, and a copy of every page. */
static int check_complete(struct dst_ctx *c, struct pm_err *err)
{
	uint64_t missing = 0, first = 0;

	if (!c->have_state)
		return pm_err_set(err, EPROTO, "every channel ended but no device state arrived");
	for (unsigned d = c->ndisks; d-- > 0 && !c->shared_storage;) {
		const struct pm_blockdev *bd = &c->be->disks[d];
		uint64_t n = pm_disk_nblocks(bd->size, bd->block_size);
		for (uint64_t b = n; b-- > 0;)
			if (!c->page_round[c->disk_base[d] + b]) {
				missing++;
				first = b;
			}
		if (missing)
			return pm_err_set(err, EPROTO, "incomplete migration: %llu of %llu blocks of disk %u never "
					  "arrived (the first is block %llu); not resuming", (unsigned long long)missing,
					  (unsigned long long)n, d, (unsigned long long)first);
	}
	for (uint64_t g = c->total_pages; g-- > 0;)
		if (!c->page_round[g]) {
			missing++;
			first = g;
		}
	if (missing) {
		unsigned rg = 0;
		while (rg + 1 < c->be->nregions && first >= c->region_base[rg + 1])
			rg++;
		return pm_err_set(err, EPROTO, "incomplete migration: %llu of %llu pages never arrived "
				  "(the first is page %llu of region %u); not resuming",
				  (unsigned long long)missing, (unsigned long long)c->total_pages,
				  (unsigned long long)(first - c->region_base[rg]), rg);
	}
	if (cancelled(c->in))
		return pm_err_set(err, ECANCELED, "cancelled on the destination before resuming");
	return 0;
}

/* What the destination's memory holds before anything arrives (nothing,
 * for a fresh VM), without touching it. */
static int scan_populated(struct dst_ctx *c, struct pm_err *err)
{
	uint64_t bm[PM_MAX_CHUNK_PAGES / 64];

	for (unsigned i = 0; i < c->be->nregions; i++) {
		const struct pm_region *rg = &c->be->regions[i];

		for (uint64_t p = 0; rg->mem && p < rg->npages; p += PM_MAX_CHUNK_PAGES) {
			uint64_t n = rg->npages - p < PM_MAX_CHUNK_PAGES ? rg->npages - p : PM_MAX_CHUNK_PAGES;
			int r = pm_guestmem_populated(rg->mem, rg->mem_offset / PM_PAGE_SIZE + p, n, bm, err);

			if (r)
				return r;
			for (uint64_t k = 0; k < n; k++)
				if (bm[k / 64] >> (k % 64) & 1)
					rx_set_data(c, c->region_base[i] + p + k, true);
		}
	}
	return 0;
}

/* Pages that hold data here (UINT64_MAX when a region is not tracked). */
static uint64_t data_pages(const struct dst_ctx *c)
{
	uint64_t n = 0;

	for (unsigned i = 0; i < c->be->nregions; i++)
		if (!c->be->regions[i].mem)
			return UINT64_MAX;
	for (uint64_t w = 0; w < (c->total_pages + 63) / 64; w++)
		n += (uint64_t)__builtin_popcountll(c->has_data[w]);
	return n;
}

/* Pages that hold data here, for the digests: the others are zeros. */
static int data_of(void *opaque, uint32_t region, uint64_t first, uint64_t n, uint64_t *bits,
		   struct pm_err *err)
{
	const struct dst_ctx *c = opaque;
	uint64_t g = c->region_base[region] + first;

	(void)err;
	memset(bits, 0, (n + 63) / 64 * 8);
	for (uint64_t i = 0; i < n; i++)
		if (!c->be->regions[region].mem ||
		    (__atomic_load_n(&c->has_data[(g + i) / 64], __ATOMIC_RELAXED) >> ((g + i) % 64) & 1))
			bits[i / 64] |= 1ull << (i % 64);
	return 0;
}

/* --verify: memory here must equal the source's at its pause, chunk by
 * chunk, before anything runs.  A difference fails with EBADMSG and the
 * first range that differs. */
static int verify_memory(struct dst_ctx *c, struct pm_done *d, struct pm_err *err)
{
	struct pm_digest_job j = { .be = c->be, .chunk_pages = c->chunk_pages, .data = data_of, .opaque = c,
				   .disks = !c->shared_storage };
	double t = pm_now_ms();
	uint8_t *mine;
	uint64_t bad = 0, first_bad = 0;
	int r;

	if (!c->verify)
		return 0;
	mine = malloc(c->verify_chunks * PM_DIGEST_LEN);
	if (!mine)
		return pm_err_set(err, ENOMEM, "out of memory for digests");
	r = pm_digest_compute(&j, c->nch, mine, err);
	for (uint64_t k = c->verify_chunks; !r && k-- > 0;)
		if (memcmp(mine + k * PM_DIGEST_LEN, c->verify + PM_VERIFY_FIXED_LEN + k * PM_DIGEST_LEN,
			   PM_DIGEST_LEN)) {
			bad++;
			first_bad = k;
		}
	free(mine);
	d->verify_us = (uint64_t)((pm_now_ms() - t) * 1e3);
	if (r || !bad)
		return r;
	uint32_t region;
	uint64_t first, n;
	if (pm_digest_disk_chunk_at(c->be, c->chunk_pages, first_bad, &region, &first, &n))
		return pm_err_set(err, EBADMSG, "verification failed: disk %u differs from the source's at "
				  "blocks [%llu, %llu) (%llu of %llu chunks differ); not resuming", region,
				  (unsigned long long)first, (unsigned long long)(first + n), (unsigned long long)bad,
				  (unsigned long long)c->verify_chunks);
	pm_digest_chunk_at(c->be, c->chunk_pages, first_bad, &region, &first, &n);
	return pm_err_set(err, EBADMSG, "verification failed: memory differs from the source's at region %u "
			  "pages [%llu, %llu) (%llu of %llu chunks differ); not resuming", region,
			  (unsigned long long)first, (unsigned long long)(first + n), (unsigned long long)bad,
			  (unsigned long long)c->verify_chunks);
}

/* Loads the state and resumes: past this point the VM runs here.  DONE
 * says what that took (the source's downtime breakdown). */
static int resume_vm(struct dst_ctx *c, struct pm_done *d, struct pm_report *rep, struct pm_err *err)
{
	struct pm_backend *be = c->be;
	double t = pm_now_ms();
	int r;

	d->data_pages = data_pages(c);
	/* An acknowledged migration never loses a write: images first. */
	r = dst_disks_sync(c, err);
	d->sync_us = (uint64_t)((pm_now_ms() - t) * 1e3);
	t = pm_now_ms();
	if (!r)
		r = be->ops->load_state(be->vm, c->state, c->state_len, err);
	d->load_us = (uint64_t)((pm_now_ms() - t) * 1e3);
	t = pm_now_ms();
	if (!r && c->in->dump_on_resume)
		r = pm_dump_memory(be, c->in->dump_on_resume, err);
	d->dump_us = c->in->dump_on_resume ? (uint64_t)((pm_now_ms() - t) * 1e3) : 0;
	t = pm_now_ms();
	if (!r)
		r = be->ops->resume(be->vm, err);
	d->resume_us = (uint64_t)((pm_now_ms() - t) * 1e3);
	rep->downtime_breakdown.dst_drain_ms = d->drain_us / 1e3;
	rep->downtime_breakdown.dst_load_ms = d->load_us / 1e3;
	rep->downtime_breakdown.dst_sync_ms = d->sync_us / 1e3;
	rep->downtime_breakdown.dst_resume_ms = d->resume_us / 1e3;
	rep->verify_dump_ms = d->dump_us / 1e3;
	return r;
}

static void fill_report(struct dst_ctx *c, struct pm_report *rep)
{
	bool kernel = c->rx && c->nch;

	rep->vm_pages = c->total_pages;
	rep->rejected_connections = c->rejected;
	snprintf(rep->tls, sizeof(rep->tls), "%s", pm_tls_mode_name(pm_tls_mode_of(c->in->tls)));
	for (unsigned i = 0; c->rx && i < c->nch; i++)
		kernel = kernel && pm_tls_kernel(&c->rx[i].conn, false);
	snprintf(rep->tls_records, sizeof(rep->tls_records), "%s",
		 !c->in->tls ? "none" : kernel ? "ktls" : "userspace");
	rep->engine_bytes = c->total_pages * sizeof(*c->page_round) + (c->total_pages + 63) / 64 * 8;
	rep->failover = c->failover;
	rep->mptcp = c->in->mptcp && c->rx;
	for (unsigned i = 0; rep->mptcp && i < c->nch; i++)
		rep->mptcp = c->rx[i].conn.fd >= 0 && pm_fd_is_mptcp(c->rx[i].conn.fd);
	rep->nlost = c->nlost;
	memcpy(rep->lost, c->lost, sizeof(rep->lost));
	rep->ndisks = c->ndisks < PM_REPORT_MAX_DISKS ? c->ndisks : PM_REPORT_MAX_DISKS;
	rep->shared_storage = c->ndisks && c->shared_storage;
	rep->disk_sync_ms = c->disk_sync_ms;
	for (unsigned d = 0; d < rep->ndisks; d++) {
		const struct pm_blockdev *bd = &c->be->disks[d];
		struct pm_disk_report *dr = &rep->disks[d];
		snprintf(dr->name, sizeof(dr->name), "%s", bd->name ? bd->name : "");
		dr->size_bytes = bd->size;
		dr->block_bytes = bd->block_size;
		dr->blocks = atomic_load(&c->disk_rx[d].blocks);
		dr->zero_blocks = atomic_load(&c->disk_rx[d].zero);
		dr->unallocated_blocks = atomic_load(&c->disk_rx[d].unalloc);
		dr->bytes = atomic_load(&c->disk_rx[d].bytes);
	}
	for (unsigned i = 0; c->rx && i < c->nch; i++) {
		struct receiver *x = &c->rx[i];
		rep->pages_sent += x->data;
		rep->zero_pages += x->zero;
		rep->stale_pages += x->stale;
		rep->frames += x->got.frames;
		rep->bytes_sent += x->got.payload_bytes + x->got.frames * (PM_FRAME_HDR_LEN + PM_PAGES_FIXED_LEN);
		rep->channel_bytes[i] = x->got.payload_bytes;
		if (x->max_round > rep->nrounds)
			rep->nrounds = x->max_round;
	}
}

static void ctx_free(struct dst_ctx *c)
{
	for (unsigned i = 0; c->rx && i < c->nch; i++)
		rx_free(&c->rx[i]);
	free(c->rx);
	free(c->state);
	free(c->verify);
	free(c->page_round);
	free(c->has_data);
	dst_disks_free(c);
	pm_rangelock_destroy(&c->lock);
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->cond);
	for (unsigned i = 0; i < 2; i++) {
		if (c->notify[i] >= 0)
			close(c->notify[i]);
		if (c->stop[i] >= 0)
			close(c->stop[i]);
	}
	free(c);
}

int pm_incoming_run(struct pm_incoming *in, struct pm_backend *be, struct pm_report *rep,
		    struct pm_err *err)
{
	struct dst_ctx *c = calloc(1, sizeof(*c));
	uint8_t done[PM_DONE_LEN];
	struct pm_done d = { 0 };
	pthread_condattr_t ca;
	double t0 = 0;
	int r = 0;

	memset(rep, 0, sizeof(*rep));
	rep->role = "destination";
	if (!c)
		return pm_err_set(err, ENOMEM, "out of memory");
	c->be = be;
	c->in = in;
	c->timeout_ms = in->timeout_ms;
	c->notify[0] = c->notify[1] = c->stop[0] = c->stop[1] = -1;
	pthread_mutex_init(&c->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->cond, &ca);
	pthread_condattr_destroy(&ca);
	pm_rangelock_init(&c->lock);
	pm_layout_of(be, &c->layout);
	for (unsigned i = 0; i < be->nregions; i++) {
		c->region_base[i] = c->total_pages;
		c->total_pages += be->regions[i].npages;
	}
	c->has_data = calloc((c->total_pages + 63) / 64, sizeof(*c->has_data));
	if (be->ndisks > PM_MAX_DISKS)
		r = pm_err_set(err, EINVAL, "VM has %u disks (at most %u)", be->ndisks, PM_MAX_DISKS);
	else if (!c->has_data)
		r = pm_err_set(err, ENOMEM, "out of memory");
	else if (pipe2(c->notify, O_CLOEXEC | O_NONBLOCK) || pipe2(c->stop, O_CLOEXEC | O_NONBLOCK))
		r = pm_err_set(err, errno, "pipe: %s", strerror(errno));
	if (!r)
		r = scan_populated(c, err);
	if (!r)
		r = dst_accept(in, c, err);
	if (!r) {
		/* Units: pages, then the disks' blocks unless they are shared. */
		c->shared_storage = c->features & PM_FEAT_SHARED_STORAGE;
		r = dst_disks_init(c, err);
		if (!r && !(c->page_round = calloc(c->total_units, sizeof(*c->page_round))))
			r = pm_err_set(err, ENOMEM, "out of memory");
	}
	if (!r) {
		t0 = c->t0 = pm_now_ms();
		rep->channels = c->nch;
		rep->barrier = c->features & PM_FEAT_BARRIER;
		r = check_layout(c, err);
	}
	if (!r)
		r = receive(c, err);
	if (!r)
		r = check_complete(c, err);
	/* All applied: the drain ends here, before any verification. */
	d.drain_us = atomic_load(&c->t_first_end) > 0 ? (uint64_t)((pm_now_ms() - atomic_load(&c->t_first_end)) * 1e3) : 0;
	if (!r)
		r = verify_memory(c, &d, err);
	if (!r)
		r = resume_vm(c, &d, rep, err);
	rep->verify = c->verify != NULL;
	rep->verified = rep->verify && !r;
	rep->verify_ms = d.verify_us / 1e3;
	pm_encode_done(done, &d);
	if (r) {
		/* Never resumed: the source learns it for sure. */
		dst_fail(c, err);
	} else {
		/* The VM runs here now; a lost DONE leaves the source paused
		 * in "unknown" until its management decides. */
		for (unsigned i = 0; i < c->nch; i++) {
			struct pm_err e = { 0 };
			rx_send(&c->rx[i], PM_FR_DONE, done, sizeof(done), &e);
		}
		/* The VM runs: now reading /proc costs no downtime. */
		pm_guest_mem_usage(be, &rep->mem);
	}
	rep->status = r;
	if (r)
		snprintf(rep->error, sizeof(rep->error), "%s", err->msg);
	rep->total_time_ms = t0 ? pm_now_ms() - t0 : 0;
	fill_report(c, rep);
	rep->throughput_mbps = rep->total_time_ms > 0 ? rep->bytes_sent / 1e3 / rep->total_time_ms : 0;
	ctx_free(c);
	return r;
}
