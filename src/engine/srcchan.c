/* SPDX-License-Identifier: MIT */
/* The source's channels: who may do I/O on one (its io lock), what the
 * destination sends back (ACK, LOST, ERROR, ...), and failover.  Every chunk
 * that goes out on a channel stays in the channel's log until the
 * destination acknowledges the frames it was carried in; when a channel is
 * lost -- a send fails or stalls past its deadline, the destination reports
 * it lost, it closes -- the chunks of its log are marked to be sent again,
 * whole, by whichever channel harvests them next.  That copy carries a
 * higher round than anything the lost channel had in flight, so the
 * destination keeps it whatever arrives late (docs/protocol.md, the per-page
 * round rule).  A lost channel's worker dials the destination again while
 * the migration is still in pre-copy; back, it takes chunks again. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "engine/net.h"
#include "engine/source.h"
#include "engine/tls.h"

#define LOG_CAP0 256

int chan_init(struct worker *w, struct pm_err *err)
{
	pthread_mutex_init(&w->io, NULL);
	w->event = -1;
	w->log_cap = LOG_CAP0;
	w->log = calloc(w->log_cap, sizeof(*w->log));
	if (!w->log)
		return pm_err_set(err, ENOMEM, "out of memory");
	return 0;
}

void chan_free(struct worker *w)
{
	pthread_mutex_destroy(&w->io);
	free(w->log);
	w->log = NULL;
}

void chan_mark_resend(struct src_ctx *c, uint32_t chunk)
{
	if (!atomic_exchange(&c->resend[chunk], 1))
		atomic_fetch_add(&c->resend_pending, 1);
}

void chan_lost(struct worker *w, const struct pm_err *why)
{
	struct src_ctx *c = w->c;
	struct pm_err e = *why;

	if (atomic_load(&w->lost))
		return;
	if (!c->failover) {
		src_fail(c, why);
		return;
	}
	if (!strstr(e.msg, "channel"))
		pm_err_reset(&e, why->code, "channel %u: %s", w->idx, why->msg);
	atomic_store(&w->lost, true);
	for (unsigned i = 0; i < w->log_len; i++)
		chan_mark_resend(c, w->log[(w->log_head + i) % w->log_cap].chunk);
	w->log_len = 0;
	w->reply_len = 0;
	/* The destination sees the channel end, if the link still carries it. */
	pm_conn_shutdown(&w->conn);
	pthread_mutex_lock(&c->lost_lock);
	atomic_store(&w->lost_req, false);
	if (c->nevents < PM_MAX_LOST) {
		struct pm_lost_channel *ev = &c->events[c->nevents];
		*ev = (struct pm_lost_channel){ .channel = w->idx, .at_ms = pm_now_ms() - c->t0 };
		snprintf(ev->phase, sizeof(ev->phase), "%s", atomic_load(&c->phase_name));
		snprintf(ev->reason, sizeof(ev->reason), "%.239s", e.msg);
		w->event = c->nevents;
	} else {
		w->event = -1;
	}
	c->nevents++;
	pthread_mutex_unlock(&c->lost_lock);
	if (atomic_load(&c->state_channel) == (int)w->idx)
		atomic_store(&c->state_channel, -1);
	if (atomic_fetch_sub(&c->alive, 1) == 1) {
		struct pm_err last = { 0 };
		pm_err_set(&last, e.code ? e.code : EIO, "every channel is lost (the last: %s)", e.msg);
		src_fail(c, &last);
	}
}

void chan_request_lost(struct worker *w, const struct pm_err *why)
{
	struct src_ctx *c = w->c;
	bool first = false;

	pthread_mutex_lock(&c->lost_lock);
	if (!atomic_load(&w->lost) && !atomic_load(&w->lost_req)) {
		w->lost_why = *why;
		atomic_store(&w->lost_req, true);
		first = true;
	}
	pthread_mutex_unlock(&c->lost_lock);
	/* Wakes whoever waits on it; the owner then gives it up. */
	if (first)
		pm_conn_shutdown(&w->conn);
}

bool chan_gone(struct worker *w)
{
	struct pm_err why;

	if (atomic_load(&w->lost))
		return true;
	if (!atomic_load(&w->lost_req))
		return false;
	pthread_mutex_lock(&w->c->lost_lock);
	why = w->lost_why;
	pthread_mutex_unlock(&w->c->lost_lock);
	chan_lost(w, &why);
	return true;
}

/* ------------------------------------------------------------- replies */

/* A whole frame at the start of w->reply: 1; 0 when more must come; -1
 * dead (dead_why says why). */
static int take_raw(struct worker *w, struct pm_frame_hdr *h)
{
	for (;;) {
		if (w->reply_len >= PM_FRAME_HDR_LEN) {
			pm_decode_hdr(w->reply, h);
			if (pm_check_hdr(h, PM_MAX_CHUNK_PAGES, &w->dead_why) ||
			    h->len > sizeof(w->reply) - PM_FRAME_HDR_LEN) {
				pm_err_set(&w->dead_why, EPROTO, "%s: the destination sent %s (length %u)",
					   w->peer, pm_frame_name(h->type), h->len);
				return -1;
			}
			if (w->reply_len >= PM_FRAME_HDR_LEN + h->len)
				return 1;
		}
		struct iovec iov = { w->reply + w->reply_len, sizeof(w->reply) - w->reply_len };
		ssize_t n = pm_recv_nowait(&w->conn, &iov, 1, &w->dead_why, w->peer);
		if (n < 0)
			return -1;
		if (n == 0)
			return 0;
		w->reply_len += n;
	}
}

void chan_drop(struct worker *w, const struct pm_frame_hdr *h)
{
	size_t k = PM_FRAME_HDR_LEN + h->len;

	memmove(w->reply, w->reply + k, w->reply_len - k);
	w->reply_len -= k;
}

/* The destination applied n frames of this connection: their chunks are safe. */
static void acked(struct worker *w, uint64_t n)
{
	w->acked = n;
	while (w->log_len && w->log[w->log_head].seq <= n) {
		w->log_head = (w->log_head + 1) % w->log_cap;
		w->log_len--;
	}
}

/* The destination lost a channel (maybe this one). */
static void lost_notice(struct worker *w, const uint8_t *body, uint32_t len)
{
	struct src_ctx *c = w->c;
	struct pm_lost l;
	struct pm_err e = { 0 };

	if (pm_decode_lost(body, len, &l, &e) || l.channel >= c->nch)
		return;
	struct worker *v = &c->w[l.channel];
	/* A notice about an earlier connection of a reconnected channel is old news. */
	if (l.generation != v->generation)
		return;
	pm_err_set(&e, l.code && l.code < 4096 ? (int)l.code : EIO,
		   "channel %u: the destination lost it: %s", l.channel, l.msg);
	if (v == w)
		chan_lost(w, &e);
	else
		chan_request_lost(v, &e);
}

int chan_take(struct worker *w, struct pm_frame_hdr *h)
{
	for (;;) {
		int t = take_raw(w, h);
		if (t <= 0)
			return t;
		const uint8_t *body = w->reply + PM_FRAME_HDR_LEN;
		if (h->type == PM_FR_ACK) {
			acked(w, pm_get64(body));
		} else if (h->type == PM_FR_LOST) {
			uint32_t len = h->len;
			uint8_t copy[PM_LOST_FIXED_LEN + PM_MAX_ERROR_LEN];
			memcpy(copy, body, len);
			chan_drop(w, h);
			lost_notice(w, copy, len);
			if (atomic_load(&w->lost))
				return -1;
			continue;
		} else {
			return 1;
		}
		chan_drop(w, h);
	}
}

void chan_poll(struct worker *w)
{
	struct src_ctx *c = w->c;
	struct pm_frame_hdr h;
	int t;

	while ((t = chan_take(w, &h)) > 0) {
		struct pm_err e = { 0 };
		if (h.type == PM_FR_ERROR) {
			char msg[PM_ERROR_MSG_CAP];
			uint32_t code = pm_decode_error(w->reply + PM_FRAME_HDR_LEN, h.len, msg, sizeof(msg));
			pm_err_set(&e, code && code < 4096 && code != EINPROGRESS ? (int)code : EPROTO,
				   "destination refused: %s", msg);
		} else {
			pm_err_set(&e, EPROTO, "%s: unexpected %s from the destination", w->peer,
				   pm_frame_name(h.type));
		}
		chan_drop(w, &h);
		src_fail(c, &e);
		return;
	}
	if (t < 0 && !atomic_load(&c->failed))
		chan_lost(w, &w->dead_why);
}

int chan_log(struct worker *w, uint32_t chunk)
{
	struct src_ctx *c = w->c;

	if (!c->failover)
		return 0;
	if (w->log_len && w->log[(w->log_head + w->log_len - 1) % w->log_cap].chunk == chunk) {
		w->log[(w->log_head + w->log_len - 1) % w->log_cap].seq = w->sent.frames;
		return 0;
	}
	if (w->log_len == w->log_cap) {
		/* A destination this far behind that still acknowledges nothing
		 * is not one to leave the chunks with. */
		if (w->log_cap >= 4 * c->nchunks + LOG_CAP0)
			return pm_err_set(&w->err, ETIMEDOUT, "%s: the destination acknowledged nothing of "
					  "%u chunks", w->peer, w->log_len);
		struct sent_chunk *n = calloc(2 * w->log_cap, sizeof(*n));
		if (!n)
			return pm_err_set(&w->err, ENOMEM, "out of memory");
		for (unsigned i = 0; i < w->log_len; i++)
			n[i] = w->log[(w->log_head + i) % w->log_cap];
		free(w->log);
		w->log = n;
		w->log_head = 0;
		w->log_cap *= 2;
	}
	w->log[(w->log_head + w->log_len++) % w->log_cap] = (struct sent_chunk){ chunk, w->sent.frames };
	return 0;
}

void chan_ping(struct worker *w)
{
	struct src_ctx *c = w->c;
	struct pm_err e = { 0 };

	if (!c->failover || atomic_load(&w->lost))
		return;
	if (pthread_mutex_trylock(&w->io))
		return;         /* someone else is using it: it is not idle */
	if (pm_now_ms() - w->last_send >= c->timeout_ms / 3.0 && !chan_gone(w) && w->conn.fd >= 0) {
		if (pm_send_frame(&w->conn, PM_FR_PING, NULL, 0, &e))
			chan_lost(w, &e);
		w->last_send = pm_now_ms();
	}
	pthread_mutex_unlock(&w->io);
}

/* --------------------------------------------------------- (re)connect */

/* Reads the next frame on a fresh connection, which must be `want`; an
 * ERROR becomes "destination refused: ...". */
int chan_recv_reply(struct worker *w, struct pm_conn *conn, uint32_t want, uint8_t *body, uint32_t cap,
		    uint32_t *len, struct pm_err *err)
{
	uint8_t hb[PM_FRAME_HDR_LEN];
	struct pm_frame_hdr h;
	char what[96];
	int r;

	snprintf(what, sizeof(what), "waiting for %s from %.70s", pm_frame_name(want), w->peer);
	r = pm_recv_buf(conn, hb, sizeof(hb), err, what);
	if (r)
		return r;
	pm_decode_hdr(hb, &h);
	r = pm_check_hdr(&h, PM_MAX_CHUNK_PAGES, err);
	if (r)
		return r;
	if (h.type == PM_FR_ERROR) {
		uint8_t eb[PM_ERROR_FIXED_LEN + PM_MAX_ERROR_LEN];
		char msg[PM_ERROR_MSG_CAP];
		r = pm_recv_buf(conn, eb, h.len, err, what);
		if (r)
			return r;
		uint32_t code = pm_decode_error(eb, h.len, msg, sizeof(msg));
		return pm_err_set(err, code && code < 4096 ? (int)code : EPROTO, "destination refused: %s", msg);
	}
	if (h.type != want || h.len > cap)
		return pm_err_set(err, EPROTO, "%s sent %s (length %u) while we waited for %s",
				  w->peer, pm_frame_name(h.type), h.len, pm_frame_name(want));
	if (len)
		*len = h.len;
	return h.len ? pm_recv_buf(conn, body, h.len, err, what) : 0;
}

static uint32_t features(const struct src_ctx *c)
{
	const struct pm_migrate_params *p = c->p;

	return (p->barrier ? PM_FEAT_BARRIER : PM_FEAT_DRAIN) |
	       (p->compress == PM_COMPRESS_LZ4 ? PM_FEAT_LZ4 : 0) |
	       (p->compress == PM_COMPRESS_ZSTD ? PM_FEAT_ZSTD : 0) |
	       (c->failover ? PM_FEAT_FAILOVER : 0) |
	       (c->ndisks ? PM_FEAT_DISKS : 0) |
	       (c->ndisks && p->shared_storage ? PM_FEAT_SHARED_STORAGE : 0);
}

/* HELLO / HELLO_ACK on a fresh connection of channel w. */
static int hello(struct worker *w, struct pm_conn *conn, unsigned generation, struct pm_err *err)
{
	struct src_ctx *c = w->c;
	struct pm_hello h = { .magic = PM_PROTO_MAGIC, .version = PM_PROTO_VERSION,
			      .channel = w->idx, .nchannels = c->nch, .chunk_pages = c->chunk_pages,
			      .page_size = PM_PAGE_SIZE, .features = features(c),
			      .generation = generation };
	uint8_t hb[PM_HELLO_LEN];
	struct pm_hello ack;
	uint32_t len;
	int r;

	memcpy(h.session, c->session, 16);
	pm_encode_hello(hb, &h);
	r = pm_send_frame(conn, PM_FR_HELLO, hb, sizeof(hb), err);
	if (r && conn->tls) {
		/* A destination that checked our certificate after the
		 * handshake and refused it has said why: read that instead. */
		struct pm_err e2 = { 0 };
		pm_conn_set_timeout(conn, 500);
		if (chan_recv_reply(w, conn, PM_FR_HELLO_ACK, hb, sizeof(hb), &len, &e2) && e2.code == EACCES)
			pm_err_reset(err, e2.code, "%s", e2.msg);
		pm_conn_set_timeout(conn, c->timeout_ms);
	}
	if (!r)
		r = chan_recv_reply(w, conn, PM_FR_HELLO_ACK, hb, sizeof(hb), &len, err);
	if (!r)
		r = pm_decode_hello(hb, len, &ack, err);
	if (!r && (ack.channel != w->idx || memcmp(ack.session, c->session, 16) ||
		   ack.generation != generation))
		r = pm_err_set(err, EPROTO, "%s acknowledged another channel or session", w->peer);
	return r;
}

int chan_connect(struct worker *w, struct pm_conn *conn, unsigned generation, unsigned timeout_ms,
		 struct pm_err *err)
{
	struct src_ctx *c = w->c;
	struct pm_connect co = { .bind = w->bind[0] ? w->bind : NULL, .timeout_ms = timeout_ms,
				 .wake_fd = c->wake[0], .mptcp = c->p->mptcp };
	int fd = pm_tcp_connect_ex(w->to, &co, err);

	pm_conn_init(conn, -1);
	if (fd < 0)
		return fd;
	pm_tcp_tune(fd, c->timeout_ms);
	pm_conn_init(conn, fd);
	pm_conn_set_timeout(conn, c->timeout_ms);
	pm_conn_set_wake(conn, c->wake[0]);
	int r;
	if (c->tls) {
		char host[256];
		struct pm_err e = { 0 };
		pm_addr_host(w->to, host, sizeof(host));
		/* One deadline for the whole handshake. */
		pm_conn_set_deadline(conn, pm_now_ms() + timeout_ms);
		r = pm_tls_start(c->tls, conn, host, &e);
		if (!r)
			r = pm_tls_handshake(conn, &e);
		pm_conn_set_deadline(conn, 0);
		if (r)
			return pm_err_set(err, -r, "%s: %s", w->peer, e.msg);
	}
	r = hello(w, conn, generation, err);
	/* (After the handshake: MPTCP knows by then whether the peer has it.) */
	if (!r && co.mptcp_used && pm_fd_is_mptcp(fd))
		atomic_fetch_add(&c->mptcp_channels, 1);
	return r;
}

static bool may_reconnect(const struct src_ctx *c)
{
	return c->failover && !c->p->no_reconnect && !c->p->barrier && !c->p->serial &&
	       !atomic_load(&c->failed) && atomic_load(&c->reconnect_open);
}

bool chan_reconnect(struct worker *w)
{
	struct src_ctx *c = w->c;
	unsigned backoff = 50;

	while (may_reconnect(c)) {
		struct pollfd p = { .fd = c->wake[0], .events = POLLIN };
		struct pm_err e = { 0 };
		struct pm_conn nc;

		/* Wait, unless the migration ends first. */
		if (poll(&p, 1, backoff) != 0 || !may_reconnect(c))
			return false;
		backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
		/* A trial connection: the channel's state stays as it is until
		 * the destination has taken the new one. */
		unsigned t = c->timeout_ms < 3000 ? c->timeout_ms : 3000;
		if (chan_connect(w, &nc, w->generation + 1, t, &e)) {
			pm_conn_close(&nc);
			continue;
		}
		/* Lock order everywhere: io, then lost_lock. */
		pthread_mutex_lock(&w->io);
		pthread_mutex_lock(&c->lost_lock);
		bool open = may_reconnect(c);
		if (open) {
			pm_conn_close(&w->conn);
			w->conn = nc;
			w->generation++;
			w->sent = (struct pm_end){ 0 };
			w->acked = 0;
			w->log_len = 0;
			w->reply_len = 0;
			w->dead = false;
			w->last_send = pm_now_ms();
			atomic_store(&w->lost_req, false);
			atomic_store(&w->lost, false);
			atomic_fetch_add(&c->alive, 1);
			if (w->event >= 0)
				c->events[w->event].reconnected_ms = pm_now_ms() - c->t0;
		}
		pthread_mutex_unlock(&c->lost_lock);
		pthread_mutex_unlock(&w->io);
		if (!open) {
			/* Too late: the destination sees it close at once. */
			pm_conn_close(&nc);
			return false;
		}
		return true;
	}
	return false;
}
