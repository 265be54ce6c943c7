/* SPDX-License-Identifier: MIT */
/* Destination side: one receiver thread per channel reads frames, validates
 * every field against the destination's own layout before writing a byte,
 * and applies page runs straight into guest memory.  Each page carries the
 * round in which the source harvested it; a run is applied only where it is
 * newer than what the page holds, with the check and the copy done under a
 * write range lock on the run's pages.  So rounds need no barrier: an old
 * copy arriving late on a slow channel can never overwrite a newer one.
 * The VM is resumed only after every channel's END has arrived with counts
 * matching what was applied and the device state has been loaded. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <pmigrate/migrate.h>
#include <pmigrate/rangelock.h>
#include "engine/codec.h"
#include "engine/net.h"
#include "engine/protocol.h"

#define MAX_LISTEN 64

struct pm_incoming {
	int cancel[2];          /* pipe: a byte here cancels a run */
	unsigned n;
	int lfd[MAX_LISTEN];
	char addr[MAX_LISTEN][80];
	unsigned timeout_ms;
	const char *dump_on_resume;
};

struct dst_ctx;

struct receiver {
	struct dst_ctx *c;
	unsigned idx;
	struct pm_conn conn;
	pthread_t thread;
	bool started, ended;
	struct pm_end got;              /* what arrived, compared with END */
	struct pm_end end;
	struct pm_codec *codec;
	uint8_t *cbuf, *run;            /* compressed payload, decompressed run */
	size_t cbuf_cap;
	struct iovec *iov;
	uint64_t stale, zero, data, bytes;
	uint32_t max_round;
	uint8_t *rbuf;                  /* receive buffer for headers and small runs */
	size_t roff, rlen;
	struct pm_err err;
};

/* A barrier that gives up when the migration fails. */
struct drain {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned count, gen;
};

struct dst_ctx {
	struct pm_backend *be;
	struct pm_layout layout;
	uint64_t region_base[PM_MAX_REGIONS];
	uint64_t total_pages;
	uint32_t *page_round;           /* round of the copy each page holds; 0 = none */
	struct pm_rangelock lock;
	unsigned nch, chunk_pages;
	uint32_t features;
	struct receiver *rx;
	struct drain drain;
	atomic_uint finished;           /* receivers that have returned */
	atomic_bool failed;
	pthread_mutex_t err_lock;
	struct pm_err err;
	void *state;
	size_t state_len;
	bool have_state;
};

static void dst_fail(struct dst_ctx *c, const struct pm_err *e)
{
	bool first;

	pthread_mutex_lock(&c->err_lock);
	first = !c->err.code;
	if (first)
		c->err = *e;
	pthread_mutex_unlock(&c->err_lock);
	atomic_store(&c->failed, true);
	pthread_mutex_lock(&c->drain.lock);
	pthread_cond_broadcast(&c->drain.cond);
	pthread_mutex_unlock(&c->drain.lock);
	if (!first)
		return;
	/* Tell the source why, then wake every receiver. */
	for (unsigned i = 0; i < c->nch; i++)
		if (c->rx[i].conn.fd >= 0) {
			pm_send_error_frame(&c->rx[i].conn, e->code, e->msg);
			pm_conn_shutdown(&c->rx[i].conn);
		}
}

static int drain_wait(struct dst_ctx *c)
{
	struct drain *d = &c->drain;
	int r = 0;

	pthread_mutex_lock(&d->lock);
	unsigned gen = d->gen;
	if (++d->count == c->nch) {
		d->count = 0;
		d->gen++;
		pthread_cond_broadcast(&d->cond);
	} else {
		while (gen == d->gen && !atomic_load(&c->failed))
			pthread_cond_wait(&d->cond, &d->lock);
	}
	if (gen == d->gen)
		r = -ECANCELED;
	pthread_mutex_unlock(&d->lock);
	return r;
}


#define RX_BUF (64u << 10)

/* Reads exactly into iov: first what is buffered, then large remainders
 * straight into place (guest memory), small ones through one recv that may
 * also buffer the frames behind -- so a stream of one-page runs does not
 * cost three syscalls a page. */
static int rx_readv(struct receiver *x, struct iovec *iov, int n, const char *what)
{
	for (;;) {
		while (n > 0 && x->roff < x->rlen) {
			size_t k = x->rlen - x->roff;
			if (k > iov->iov_len)
				k = iov->iov_len;
			memcpy(iov->iov_base, x->rbuf + x->roff, k);
			x->roff += k;
			iov->iov_base = (uint8_t *)iov->iov_base + k;
			iov->iov_len -= k;
			if (!iov->iov_len) {
				iov++;
				n--;
			}
		}
		size_t left = 0;
		for (int i = 0; i < n; i++)
			left += iov[i].iov_len;
		if (!left)
			return 0;
		if (left >= RX_BUF / 4)
			return pm_recv_all(&x->conn, iov, n, &x->err, what);
		x->roff = x->rlen = 0;
		while (x->rlen < left) {
			ssize_t r = pm_recv_some(&x->conn, x->rbuf + x->rlen, RX_BUF - x->rlen, &x->err, what);
			if (r < 0)
				return r;
			x->rlen += r;
		}
	}
}

static int rx_read(struct receiver *x, void *buf, size_t len, const char *what)
{
	struct iovec iov = { buf, len };

	return rx_readv(x, &iov, 1, what);
}

static int apply_pages(struct receiver *x, const struct pm_pages *pg)
{
	struct dst_ctx *c = x->c;
	uint8_t *host = c->be->regions[pg->region].host + pg->first * PM_PAGE_SIZE;
	uint64_t g = c->region_base[pg->region] + pg->first;
	struct pm_range lr;
	int r = 0, niov = 0;

	if (pg->encoding == PM_ENC_LZ4 || pg->encoding == PM_ENC_ZSTD) {
		if (!x->codec)
			return pm_err_set(&x->err, EPROTO, "compressed PAGES frame but compression was not negotiated");
		r = rx_read(x, x->cbuf, pg->payload_len, "receiving pages");
		if (r)
			return r;
		if (pm_codec_decompress(x->codec, pg->encoding, x->cbuf, pg->payload_len, x->run,
					(size_t)pg->npages * PM_PAGE_SIZE))
			return pm_err_set(&x->err, EPROTO, "corrupt compressed run at region %u page %llu",
					  pg->region, (unsigned long long)pg->first);
	}

	pm_range_wrlock(&c->lock, &lr, g, g + pg->npages);
	for (uint32_t k = 0; k < pg->npages; k++) {
		uint8_t *dst = host + (size_t)k * PM_PAGE_SIZE;
		bool newer = c->page_round[g + k] < pg->round;

		if (!newer)
			x->stale++;
		switch (pg->encoding) {
		case PM_ENC_RAW: {
			void *to = newer ? dst : x->run;
			/* Coalesce neighbouring pages into one iovec. */
			if (niov && newer && x->iov[niov - 1].iov_base != x->run &&
			    (uint8_t *)x->iov[niov - 1].iov_base + x->iov[niov - 1].iov_len == dst)
				x->iov[niov - 1].iov_len += PM_PAGE_SIZE;
			else
				x->iov[niov++] = (struct iovec){ to, PM_PAGE_SIZE };
			break;
		}
		case PM_ENC_ZERO:
			if (newer && (c->page_round[g + k] || !pm_page_is_zero(dst)))
				memset(dst, 0, PM_PAGE_SIZE);
			break;
		default:
			if (newer)
				memcpy(dst, x->run + (size_t)k * PM_PAGE_SIZE, PM_PAGE_SIZE);
		}
		if (newer)
			c->page_round[g + k] = pg->round;
	}
	if (pg->encoding == PM_ENC_RAW)
		r = rx_readv(x, x->iov, niov, "receiving pages");
	pm_range_unlock(&c->lock, &lr);
	if (pg->encoding == PM_ENC_ZERO)
		x->zero += pg->npages;
	else
		x->data += pg->npages;
	return r;
}

static int handle_frame(struct receiver *x, const struct pm_frame_hdr *h)
{
	struct dst_ctx *c = x->c;
	uint8_t fb[PM_ERROR_FIXED_LEN + PM_MAX_ERROR_LEN + 1];
	int r;

	switch (h->type) {
	case PM_FR_PAGES: {
		struct pm_pages pg;
		r = rx_read(x, fb, PM_PAGES_FIXED_LEN, "receiving pages");
		if (r)
			return r;
		r = pm_decode_pages(fb, h->len, &c->layout, c->chunk_pages, &pg, &x->err);
		if (r)
			return r;
		if (pg.round > PM_MAX_ROUNDS)
			return pm_err_set(&x->err, EPROTO, "PAGES frame has round %u (at most %u)",
					  pg.round, PM_MAX_ROUNDS);
		r = apply_pages(x, &pg);
		if (r)
			return r;
		x->got.frames++;
		x->got.pages += pg.npages;
		x->got.payload_bytes += pg.payload_len;
		if (pg.round > x->max_round)
			x->max_round = pg.round;
		return 0;
	}
	case PM_FR_ROUND_END:
		if (!(c->features & PM_FEAT_BARRIER))
			return pm_err_set(&x->err, EPROTO, "ROUND_END on channel %u without barrier mode", x->idx);
		r = rx_read(x, fb, PM_ROUND_LEN, "receiving round end");
		if (r)
			return r;
		if (pm_get32(fb) == 0 || pm_get32(fb) > PM_MAX_ROUNDS || pm_get32(fb + 4))
			return pm_err_set(&x->err, EPROTO, "ROUND_END on channel %u names round %u "
					  "(or has non-zero reserved bytes)", x->idx, pm_get32(fb));
		/* Everything of this round on every channel is applied past here. */
		if (drain_wait(c))
			return pm_err_set(&x->err, ECANCELED, "migration failed on another channel");
		return pm_send_frame(&x->conn, PM_FR_ROUND_ACK, fb, PM_ROUND_LEN, &x->err);
	case PM_FR_STATE:
		if (x->idx != 0 || c->have_state)
			return pm_err_set(&x->err, EPROTO, "unexpected STATE frame on channel %u", x->idx);
		c->state = malloc(h->len ? h->len : 1);
		if (!c->state)
			return pm_err_set(&x->err, ENOMEM, "out of memory for %u bytes of device state", h->len);
		c->state_len = h->len;
		c->have_state = true;
		return rx_read(x, c->state, h->len, "receiving device state");
	case PM_FR_END:
		r = rx_read(x, fb, PM_END_LEN, "receiving END");
		if (!r)
			r = pm_decode_end(fb, PM_END_LEN, &x->end, &x->err);
		if (r)
			return r;
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
		x->ended = true;
		return 0;
	case PM_FR_ERROR: {
		r = rx_read(x, fb, h->len, "receiving error");
		if (r)
			return r;
		uint32_t ml = pm_get32(fb + 4);
		if (ml > h->len - PM_ERROR_FIXED_LEN)
			ml = h->len - PM_ERROR_FIXED_LEN;
		fb[PM_ERROR_FIXED_LEN + ml] = '\0';
		return pm_err_set(&x->err, ECANCELED, "source aborted: %s", (char *)fb + PM_ERROR_FIXED_LEN);
	}
	default:
		return pm_err_set(&x->err, EPROTO, "unexpected %s frame on channel %u during migration",
				  pm_frame_name(h->type), x->idx);
	}
}

static void *receiver_main(void *arg)
{
	struct receiver *x = arg;
	struct dst_ctx *c = x->c;

	while (!x->ended && !atomic_load(&c->failed)) {
		uint8_t hb[PM_FRAME_HDR_LEN];
		struct pm_frame_hdr h;
		char what[48];

		snprintf(what, sizeof(what), "receiving a frame header");
		if (rx_read(x, hb, sizeof(hb), what))
			break;
		pm_decode_hdr(hb, &h);
		if (pm_check_hdr(&h, c->chunk_pages, &x->err) || handle_frame(x, &h))
			break;
	}
	if (!x->ended && !atomic_load(&c->failed)) {
		struct pm_err e = { 0 };
		pm_err_set(&e, x->err.code, "channel %u: %s", x->idx, x->err.msg);
		dst_fail(c, &e);
	}
	atomic_fetch_add(&c->finished, 1);
	return NULL;
}

int pm_incoming_listen(struct pm_incoming **out, const struct pm_incoming_params *p,
		       struct pm_err *err)
{
	struct pm_incoming *in;

	if (!p->nlisten || p->nlisten > MAX_LISTEN)
		return pm_err_set(err, EINVAL, "%u listening addresses (1..%u allowed)", p->nlisten, MAX_LISTEN);
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
	for (unsigned i = 0; i < p->nlisten; i++) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd = pm_tcp_listen(p->listen[i], err);

		if (fd < 0) {
			pm_incoming_close(in);
			return fd;
		}
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

void pm_incoming_close(struct pm_incoming *in)
{
	if (!in)
		return;
	close(in->cancel[0]);
	close(in->cancel[1]);
	for (unsigned i = 0; i < in->n; i++)
		close(in->lfd[i]);
	free(in);
}

/* Accepts connections until every announced channel said a valid HELLO. */
static int accept_channels(struct pm_incoming *in, struct dst_ctx *c, struct pm_err *err)
{
	uint8_t session[16];
	unsigned have = 0;
	double deadline = 0;
	struct pm_conn conns[PM_MAX_CHANNELS];
	int r = 0;

	for (unsigned i = 0; i < PM_MAX_CHANNELS; i++)
		pm_conn_init(&conns[i], -1);
	for (;;) {
		struct pollfd pfd[MAX_LISTEN + 1];
		int wait = -1;

		for (unsigned i = 0; i < in->n; i++)
			pfd[i] = (struct pollfd){ .fd = in->lfd[i], .events = POLLIN };
		pfd[in->n] = (struct pollfd){ .fd = in->cancel[0], .events = POLLIN };
		if (deadline) {
			wait = deadline - pm_now_ms();
			if (wait <= 0) {
				r = pm_err_set(err, ETIMEDOUT, "only %u of %u channels connected within %u ms",
					       have, c->nch, in->timeout_ms);
				goto fail;
			}
		}
		r = poll(pfd, in->n + 1, wait);
		if (r < 0 && errno == EINTR)
			continue;
		if (pfd[in->n].revents & POLLIN) {
			r = pm_err_set(err, ECANCELED, "cancelled while waiting for the source");
			goto fail;
		}
		for (unsigned i = 0; i < in->n && r > 0; i++) {
			if (!(pfd[i].revents & POLLIN))
				continue;
			int fd = accept4(in->lfd[i], NULL, NULL, SOCK_CLOEXEC);
			struct pm_conn conn;
			uint8_t hb[PM_FRAME_HDR_LEN], body[PM_HELLO_LEN];
			struct pm_frame_hdr h;
			struct pm_hello hello;

			if (fd < 0)
				continue;
			pm_tcp_tune(fd, in->timeout_ms);
			pm_conn_init(&conn, fd);
			pm_conn_set_timeout(&conn, in->timeout_ms);
			if (!deadline)
				deadline = pm_now_ms() + in->timeout_ms;
			r = pm_recv_buf(&conn, hb, sizeof(hb), err, "waiting for HELLO");
			if (!r) {
				pm_decode_hdr(hb, &h);
				if (h.type != PM_FR_HELLO)
					r = pm_err_set(err, EPROTO, "first frame on a new connection is %s (type %u), not HELLO"
						       " — not a pmigrate source", pm_frame_name(h.type), h.type);
			}
			if (!r)
				r = pm_check_hdr(&h, PM_MAX_CHUNK_PAGES, err);
			if (!r)
				r = pm_recv_buf(&conn, body, sizeof(body), err, "receiving HELLO");
			if (!r)
				r = pm_decode_hello(body, sizeof(body), &hello, err);
			if (!r && have == 0) {
				memcpy(session, hello.session, 16);
				c->nch = hello.nchannels;
				c->features = hello.features;
				c->chunk_pages = hello.chunk_pages;
			} else if (!r && (memcmp(session, hello.session, 16) || hello.nchannels != c->nch ||
					  hello.features != c->features || hello.chunk_pages != c->chunk_pages)) {
				r = pm_err_set(err, EPROTO, "channel %u belongs to another migration session",
					       hello.channel);
			}
			if (!r && conns[hello.channel].fd >= 0)
				r = pm_err_set(err, EPROTO, "channel %u connected twice", hello.channel);
			if (!r)
				r = pm_send_frame(&conn, PM_FR_HELLO_ACK, body, sizeof(body), err);
			if (r) {
				pm_send_error_frame(&conn, err->code, err->msg);
				pm_conn_close(&conn);
				goto fail;
			}
			conns[hello.channel] = conn;
			if (++have == c->nch) {
				c->rx = calloc(c->nch, sizeof(*c->rx));
				if (!c->rx) {
					r = pm_err_set(err, ENOMEM, "out of memory");
					goto fail;
				}
				for (unsigned k = 0; k < c->nch; k++) {
					c->rx[k].conn = conns[k];
					c->rx[k].idx = k;
					c->rx[k].c = c;
				}
				return 0;
			}
		}
	}
fail:
	for (unsigned i = 0; i < PM_MAX_CHANNELS; i++)
		if (conns[i].fd >= 0) {
			pm_send_error_frame(&conns[i], err->code, err->msg);
			pm_conn_close(&conns[i]);
		}
	return r ? r : -EIO;
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
	if (!r)
		r = pm_layout_check(&src, &c->layout, err);
	if (!r)
		r = pm_send_frame(conn, PM_FR_LAYOUT_ACK, NULL, 0, err);
	return r;
}

static int setup_receivers(struct dst_ctx *c, struct pm_err *err)
{
	size_t run = (size_t)c->chunk_pages * PM_PAGE_SIZE;
	enum pm_compress comp = c->features & PM_FEAT_ZSTD ? PM_COMPRESS_ZSTD :
				c->features & PM_FEAT_LZ4 ? PM_COMPRESS_LZ4 : PM_COMPRESS_NONE;

	for (unsigned i = 0; i < c->nch; i++) {
		struct receiver *x = &c->rx[i];
		x->run = malloc(run);
		x->iov = calloc(c->chunk_pages, sizeof(*x->iov));
		x->rbuf = malloc(RX_BUF);
		if (!x->run || !x->iov || !x->rbuf)
			return pm_err_set(err, ENOMEM, "out of memory");
		if (comp != PM_COMPRESS_NONE) {
			/* Accept either codec's worst case. */
			x->cbuf_cap = run + run / 64 + 1024;
			x->cbuf = malloc(x->cbuf_cap);
			if (!x->cbuf || pm_codec_new(&x->codec, comp, 0))
				return pm_err_set(err, ENOMEM, "out of memory");
		}
	}
	return 0;
}

int pm_incoming_run(struct pm_incoming *in, struct pm_backend *be, struct pm_report *rep,
		    struct pm_err *err)
{
	struct dst_ctx *c = calloc(1, sizeof(*c));
	double t0 = 0;
	int r;

	memset(rep, 0, sizeof(*rep));
	rep->role = "destination";
	if (!c)
		return pm_err_set(err, ENOMEM, "out of memory");
	c->be = be;
	pthread_mutex_init(&c->err_lock, NULL);
	pthread_mutex_init(&c->drain.lock, NULL);
	pthread_cond_init(&c->drain.cond, NULL);
	pm_rangelock_init(&c->lock);
	pm_layout_of(be, &c->layout);
	for (unsigned i = 0; i < be->nregions; i++) {
		c->region_base[i] = c->total_pages;
		c->total_pages += be->regions[i].npages;
	}
	c->page_round = calloc(c->total_pages, sizeof(*c->page_round));
	if (!c->page_round) {
		r = pm_err_set(err, ENOMEM, "out of memory");
		goto out;
	}
	r = accept_channels(in, c, err);
	if (r)
		goto out;
	t0 = pm_now_ms();
	rep->channels = c->nch;
	rep->barrier = c->features & PM_FEAT_BARRIER;
	r = check_layout(c, err);
	if (!r)
		r = setup_receivers(c, err);
	if (r) {
		pm_send_error_frame(&c->rx[0].conn, err->code, err->msg);
		goto out;
	}
	for (unsigned i = 0; i < c->nch; i++) {
		if (pthread_create(&c->rx[i].thread, NULL, receiver_main, &c->rx[i])) {
			struct pm_err e = { 0 };
			pm_err_set(&e, EAGAIN, "cannot start receiver thread");
			dst_fail(c, &e);
			break;
		}
		c->rx[i].started = true;
	}
	/* Watch for a cancel while the receivers work. */
	unsigned started = 0;
	for (unsigned i = 0; i < c->nch; i++)
		started += c->rx[i].started;
	while (atomic_load(&c->finished) < started) {
		struct pollfd p = { .fd = in->cancel[0], .events = POLLIN };
		if (poll(&p, 1, 50) > 0 && !atomic_load(&c->failed)) {
			struct pm_err e = { 0 };
			pm_err_set(&e, ECANCELED, "cancelled on the destination");
			dst_fail(c, &e);
		}
	}
	for (unsigned i = 0; i < c->nch; i++)
		if (c->rx[i].started)
			pthread_join(c->rx[i].thread, NULL);
	if (!atomic_load(&c->failed) && !c->have_state) {
		struct pm_err e = { 0 };
		pm_err_set(&e, EPROTO, "every channel ended but no device state arrived");
		dst_fail(c, &e);
	}
	if (atomic_load(&c->failed)) {
		r = pm_err_set(err, c->err.code, "%s", c->err.msg);
		goto out;
	}
	if (cancelled(in)) {
		r = pm_err_set(err, ECANCELED, "cancelled on the destination before resuming");
		for (unsigned i = 0; i < c->nch; i++)
			pm_send_error_frame(&c->rx[i].conn, err->code, err->msg);
		goto out;
	}
	/* Everything counted has arrived and been applied. */
	r = be->ops->load_state(be->vm, c->state, c->state_len, err);
	double t_dump = pm_now_ms();
	if (!r && in->dump_on_resume)
		r = pm_dump_memory(be, in->dump_on_resume, err);
	uint8_t done[PM_DONE_LEN];
	pm_put64(done, in->dump_on_resume ? (uint64_t)((pm_now_ms() - t_dump) * 1e3) : 0);
	if (!r)
		r = be->ops->resume(be->vm, err);
	if (r) {
		for (unsigned i = 0; i < c->nch; i++)
			pm_send_error_frame(&c->rx[i].conn, err->code, err->msg);
		goto out;
	}
	for (unsigned i = 0; i < c->nch; i++) {
		struct pm_err e = { 0 };
		/* The VM runs here now; a lost DONE only delays the source's report. */
		pm_send_frame(&c->rx[i].conn, PM_FR_DONE, done, sizeof(done), &e);
	}
out:
	rep->status = r;
	if (r)
		snprintf(rep->error, sizeof(rep->error), "%s", err->msg);
	rep->total_time_ms = t0 ? pm_now_ms() - t0 : 0;
	rep->vm_pages = c->total_pages;
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
		pm_conn_close(&x->conn);
		pm_codec_free(x->codec);
		free(x->cbuf);
		free(x->run);
		free(x->iov);
		free(x->rbuf);
	}
	rep->throughput_mbps = rep->total_time_ms > 0 ? rep->bytes_sent / 1e3 / rep->total_time_ms : 0;
	free(c->rx);
	free(c->state);
	free(c->page_round);
	pm_rangelock_destroy(&c->lock);
	pthread_mutex_destroy(&c->err_lock);
	pthread_mutex_destroy(&c->drain.lock);
	pthread_cond_destroy(&c->drain.cond);
	free(c);
	return r;
}
