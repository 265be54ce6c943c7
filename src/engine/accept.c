/* SPDX-License-Identifier: MIT */
/* The destination's accept phase: from the listening sockets to one
 * session's channels, every one authenticated.
 *
 * Connections are handled concurrently by one poll loop, each on its own
 * deadline: a slow or dripping client holds only its own slot (and the
 * oldest slot goes when all are taken).  A connection first completes its
 * TLS handshake (nothing it sends is parsed before), then says HELLO.  The
 * first valid HELLO binds the session: its id, parameters and the peer's
 * authenticated identity.  A connection that fails the handshake, speaks
 * something else, or names another session or identity is closed and
 * logged, and the destination keeps waiting for the real source.  Only a
 * bound session that does not complete in time ends the wait. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "engine/dest.h"
#include "engine/tls.h"

#define MAX_PENDING 128

enum stage { P_FREE, P_SNIFF, P_HANDSHAKE, P_HELLO };

struct pending {
	enum stage stage;
	struct pm_conn conn;
	char from[80];
	double started, deadline;
	short events;
	uint8_t buf[PM_FRAME_HDR_LEN + PM_HELLO_LEN];
	size_t got;
};

struct binding {
	bool bound;
	uint8_t session[16];
	char peer[300];
	double deadline;
	unsigned have;
	struct pm_conn conns[PM_MAX_CHANNELS];
};

void dst_log(struct pm_incoming *in, const char *fmt, ...)
{
	char msg[700];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (in->log)
		in->log(in->log_opaque, msg);
	else
		fprintf(stderr, "pmigrate: %s\n", msg);
}

/* Closes a connection that will not join, says why in the log and, where
 * the stream allows, to the peer. */
static void reject(struct pm_incoming *in, struct dst_ctx *c, struct pending *p, bool tell,
		   const char *fmt, ...)
{
	char why[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	dst_log(in, "rejected a connection from %s: %s", p->from, why);
	if (tell)
		pm_send_error_frame(&p->conn, EACCES, why);
	pm_conn_close(&p->conn);
	p->stage = P_FREE;
	c->rejected++;
}

/* The stream of a plain connection that is not TLS, told in plain text. */
static void tell_plain(struct pending *p, const char *why)
{
	struct pm_tls_conn *t = p->conn.tls;

	p->conn.tls = NULL;
	pm_send_error_frame(&p->conn, EACCES, why);
	p->conn.tls = t;
}

static struct pending *new_pending(struct pm_incoming *in, struct dst_ctx *c, struct pending *pend)
{
	struct pending *oldest = NULL;

	for (unsigned i = 0; i < MAX_PENDING; i++) {
		if (pend[i].stage == P_FREE)
			return &pend[i];
		if (!oldest || pend[i].started < oldest->started)
			oldest = &pend[i];
	}
	reject(in, c, oldest, false, "%u connections in their handshake: the oldest makes room",
	       MAX_PENDING);
	return oldest;
}

/* A new connection (accepted, or adopted: fd < 0 accepts from lfd). */
static void take(struct pm_incoming *in, struct dst_ctx *c, int lfd, int fd, struct pending *pend)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	struct pending *p;

	if (fd < 0)
		fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC | SOCK_NONBLOCK);
	else if (getpeername(fd, (struct sockaddr *)&ss, &sl))
		ss.ss_family = AF_UNSPEC;
	if (fd < 0)
		return;
	p = new_pending(in, c, pend);
	memset(p, 0, sizeof(*p));
	if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6)
		pm_format_addr((struct sockaddr *)&ss, p->from, sizeof(p->from));
	else
		snprintf(p->from, sizeof(p->from), "an adopted socket");
	if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6)
		pm_tcp_tune(fd, in->timeout_ms);
	pm_conn_init(&p->conn, fd);
	p->started = pm_now_ms();
	/* One budget for the handshake and the HELLO, whatever the peer does. */
	p->deadline = p->started + in->timeout_ms;
	pm_conn_set_deadline(&p->conn, p->deadline);
	p->stage = in->tls ? P_SNIFF : P_HELLO;
	p->events = POLLIN;
}

/* TLS destination: a first byte that is not a TLS handshake record is
 * answered in plain text, so a plain source says why it failed. */
static void sniff(struct pm_incoming *in, struct dst_ctx *c, struct pending *p)
{
	uint8_t b;
	ssize_t n = recv(p->conn.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
	struct pm_err e = { 0 };

	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	if (n <= 0) {
		reject(in, c, p, false, "closed before its TLS handshake");
		return;
	}
	if (b != 0x16) {
		const char *why = b == PM_FR_HELLO ?
			"a plain pmigrate source: this destination requires TLS (give the source the same "
			"--tls-creds or --tls-psk)" : "not a TLS client: this destination requires TLS";
		tell_plain(p, why);
		reject(in, c, p, false, "%s", why);
		return;
	}
	if (pm_tls_start(in->tls, &p->conn, NULL, &e)) {
		reject(in, c, p, false, "%s", e.msg);
		return;
	}
	p->stage = P_HANDSHAKE;
}

static void handshake(struct pm_incoming *in, struct dst_ctx *c, struct pending *p)
{
	struct pm_err e = { 0 };
	int r = pm_tls_handshake_step(&p->conn, &p->events, &e);

	if (r == -EAGAIN)
		return;
	if (r) {
		/* A peer refused after a finished handshake (--tls-authz) is told. */
		reject(in, c, p, p->conn.tls->established, "%s", e.msg);
		return;
	}
	p->stage = P_HELLO;
	p->events = POLLIN;
}

/* A complete HELLO from p: join the session, or bind it if it is the
 * first.  Returns true when every channel has joined. */
static bool join(struct pm_incoming *in, struct dst_ctx *c, struct binding *b, struct pending *p)
{
	struct pm_frame_hdr h;
	struct pm_hello hello;
	struct pm_err e = { 0 };
	const char *peer = pm_tls_peer(&p->conn);

	pm_decode_hdr(p->buf, &h);
	if (pm_decode_hello(p->buf + PM_FRAME_HDR_LEN, PM_HELLO_LEN, &hello, &e)) {
		reject(in, c, p, true, "%s", e.msg);
		return false;
	}
	if (hello.generation) {
		reject(in, c, p, true, "channel %u reconnects (generation %u) to a migration that has not "
		       "started", hello.channel, hello.generation);
		return false;
	}
	if (b->bound && strcmp(peer, b->peer)) {
		reject(in, c, p, true, "authenticated as '%s', but this migration belongs to '%s'", peer, b->peer);
		return false;
	}
	if (b->bound && (memcmp(b->session, hello.session, 16) || hello.nchannels != c->nch ||
			 hello.features != c->features || hello.chunk_pages != c->chunk_pages)) {
		reject(in, c, p, true, "channel %u names another migration session than the one "
		       "already connecting", hello.channel);
		return false;
	}
	if (b->bound && b->conns[hello.channel].fd >= 0) {
		reject(in, c, p, true, "channel %u connected twice", hello.channel);
		return false;
	}
	if (pm_send_frame(&p->conn, PM_FR_HELLO_ACK, p->buf + PM_FRAME_HDR_LEN, PM_HELLO_LEN, &e)) {
		reject(in, c, p, false, "%s", e.msg);
		return false;
	}
	if (!b->bound) {
		b->bound = true;
		memcpy(b->session, hello.session, 16);
		memcpy(c->session, hello.session, 16);
		c->failover = hello.features & PM_FEAT_FAILOVER;
		snprintf(b->peer, sizeof(b->peer), "%s", peer);
		c->nch = hello.nchannels;
		c->features = hello.features;
		c->chunk_pages = hello.chunk_pages;
		b->deadline = pm_now_ms() + in->timeout_ms;
	}
	/* Past the accept phase the receivers set their own deadlines. */
	pm_conn_set_deadline(&p->conn, 0);
	pm_conn_set_timeout(&p->conn, in->timeout_ms);
	b->conns[hello.channel] = p->conn;
	p->stage = P_FREE;
	return ++b->have == c->nch;
}

/* Reads the HELLO without waiting; true when the session is complete. */
static bool hello(struct pm_incoming *in, struct dst_ctx *c, struct binding *b, struct pending *p)
{
	while (p->got < sizeof(p->buf)) {
		struct iovec iov = { p->buf + p->got, sizeof(p->buf) - p->got };
		struct pm_err e = { 0 };
		ssize_t n = pm_recv_nowait(&p->conn, &iov, 1, &e, "receiving HELLO");

		if (n < 0) {
			reject(in, c, p, false, "%s", e.msg);
			return false;
		}
		if (!n)
			return false;
		size_t before = p->got;
		p->got += n;
		/* Judge the header as soon as it is there: a peer speaking
		 * something else may never send 48 bytes. */
		if (before < PM_FRAME_HDR_LEN && p->got >= PM_FRAME_HDR_LEN) {
			struct pm_frame_hdr h;
			pm_decode_hdr(p->buf, &h);
			if (!p->conn.tls && p->buf[0] == 0x16 && p->buf[1] == 0x03) {
				const char *why = "a TLS client: this destination listens without TLS (start "
						  "it with --tls-creds or --tls-psk)";
				reject(in, c, p, true, "%s", why);
				return false;
			}
			if (h.type != PM_FR_HELLO) {
				reject(in, c, p, true, "first frame is %s (type %u), not HELLO — not a pmigrate source",
				       pm_frame_name(h.type), h.type);
				return false;
			}
			if (pm_check_hdr(&h, PM_MAX_CHUNK_PAGES, &e)) {
				reject(in, c, p, true, "%s", e.msg);
				return false;
			}
		}
	}
	return join(in, c, b, p);
}

static void expire(struct pm_incoming *in, struct dst_ctx *c, struct pending *p)
{
	unsigned ms = in->timeout_ms;

	if (p->stage == P_HELLO && p->got)
		reject(in, c, p, true, "sent %zu of the %zu bytes of HELLO within %u ms", p->got,
		       sizeof(p->buf), ms);
	else if (p->stage == P_HELLO)
		reject(in, c, p, true, "no HELLO within %u ms", ms);
	else
		reject(in, c, p, false, "no TLS handshake within %u ms", ms);
}

int dst_accept(struct pm_incoming *in, struct dst_ctx *c, struct pm_err *err)
{
	struct pending *pend = calloc(MAX_PENDING, sizeof(*pend));
	struct pollfd *pfd = calloc(in->n + 1 + MAX_PENDING, sizeof(*pfd));
	struct pending *idx[MAX_PENDING];
	struct binding b = { 0 };
	bool complete = false;
	int r = 0;

	for (unsigned i = 0; i < PM_MAX_CHANNELS; i++)
		pm_conn_init(&b.conns[i], -1);
	if (!pend || !pfd) {
		r = pm_err_set(err, ENOMEM, "out of memory");
		goto out;
	}
	for (unsigned i = 0; i < in->nadopted; i++)
		take(in, c, -1, in->adopted[i], pend);
	in->nadopted = 0;
	while (!complete) {
		double now = pm_now_ms(), next = b.bound ? b.deadline : 0;
		unsigned n = 0, np = 0;

		if (b.bound && now >= b.deadline) {
			r = pm_err_set(err, ETIMEDOUT, "only %u of %u channels connected within %u ms",
				       b.have, c->nch, in->timeout_ms);
			break;
		}
		for (unsigned i = 0; i < in->n; i++)
			pfd[n++] = (struct pollfd){ .fd = in->lfd[i], .events = POLLIN };
		pfd[n++] = (struct pollfd){ .fd = in->cancel[0], .events = POLLIN };
		for (unsigned i = 0; i < MAX_PENDING; i++) {
			struct pending *p = &pend[i];
			if (p->stage == P_FREE)
				continue;
			if (now >= p->deadline) {
				expire(in, c, p);
				continue;
			}
			if (!next || p->deadline < next)
				next = p->deadline;
			idx[np++] = p;
			/* Bytes OpenSSL already holds need no poll. */
			pfd[n++] = (struct pollfd){ .fd = p->conn.fd,
				.events = p->conn.tls && p->stage == P_HELLO && pm_tls_pending(&p->conn) ? 0 : p->events };
		}
		int wait = next ? (int)(next - now) + 1 : -1;
		for (unsigned i = 0; i < np; i++)
			if (!pfd[in->n + 1 + i].events)
				wait = 0;
		if (poll(pfd, n, wait) < 0 && errno != EINTR) {
			r = pm_err_set(err, errno, "poll: %s", strerror(errno));
			break;
		}
		if (pfd[in->n].revents & POLLIN) {
			r = pm_err_set(err, ECANCELED, "cancelled while waiting for the source");
			break;
		}
		for (unsigned i = 0; i < np && !complete; i++) {
			struct pending *p = idx[i];
			if (p->stage == P_FREE || (pfd[in->n + 1 + i].events && !pfd[in->n + 1 + i].revents))
				continue;
			if (p->stage == P_SNIFF)
				sniff(in, c, p);
			if (p->stage == P_HANDSHAKE)
				handshake(in, c, p);
			if (p->stage == P_HELLO)
				complete = hello(in, c, &b, p);
		}
		for (unsigned i = 0; i < in->n && !complete; i++)
			if (pfd[i].revents & POLLIN)
				take(in, c, in->lfd[i], -1, pend);
	}
out:
	for (unsigned i = 0; pend && i < MAX_PENDING; i++)
		if (pend[i].stage != P_FREE)
			reject(in, c, &pend[i], true, "the migration has %s", complete ? "all its channels" : "ended");
	if (!r && complete) {
		c->rx = calloc(c->nch, sizeof(*c->rx));
		if (!c->rx)
			r = pm_err_set(err, ENOMEM, "out of memory");
		for (unsigned k = 0; c->rx && k < c->nch; k++) {
			c->rx[k].conn = b.conns[k];
			pm_conn_init(&b.conns[k], -1);
			pthread_mutex_init(&c->rx[k].send_lock, NULL);
		}
		snprintf(c->peer, sizeof(c->peer), "%s", b.peer);
	}
	for (unsigned i = 0; i < PM_MAX_CHANNELS; i++)
		if (b.conns[i].fd >= 0) {
			pm_send_error_frame(&b.conns[i], err->code, err->msg);
			pm_conn_close(&b.conns[i]);
		}
	free(pend);
	free(pfd);
	return r ? r : complete ? 0 : -EIO;
}
