/* SPDX-License-Identifier: MIT */
/* The fault-injecting proxy (fault.h).  One accept thread; per connection
 * two pump threads, one per direction, each cutting its byte stream into
 * frames (8-byte header: type, length) so rules can act on a frame, or at an
 * exact byte count, or at a time, or when the test fires them. */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include "fault.h"

#define MAX_RULES 16
#define MAX_CONNS 256
#define BUF (256u << 10)

static const char *const frame_names[] = {
	"?", "HELLO", "HELLO_ACK", "LAYOUT", "LAYOUT_ACK", "PAGES", "ROUND_END", "ROUND_ACK",
	"STATE", "END", "DONE", "ERROR", "ACK", "LOST", "PING",
	[20] = "BLOCKS",
};
#define NFRAMES (sizeof(frame_names) / sizeof(frame_names[0]))

static const char *const action_names[] = {
	"drop", "delay", "corrupt", "cut", "close", "stall", "blackhole",
};

struct fp_conn;

struct pump {
	struct fp_conn *k;
	enum fp_dir dir;
	int in, out;
	uint64_t bytes;                 /* read from in so far */
	unsigned seen[NFRAMES];         /* frames of each type so far */
	pthread_t th;
	bool started;
};

struct fp_conn {
	struct fp_proxy *p;
	unsigned idx;
	int a, b;                       /* a: the source's side, b: the destination's */
	double t0;
	struct pump pump[2];
	atomic_bool dead, blackhole;
	unsigned exited;                /* under p->lock */
};

struct fp_proxy {
	int lfd;
	char addr[80];
	char target[256];
	struct fp_rule rules[MAX_RULES];
	bool fired[MAX_RULES];          /* under lock: a rule that acts once has acted */
	unsigned nrules;
	FILE *log;
	pthread_t th;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stopping;
	atomic_bool signalled;
	atomic_uint hits;
	struct fp_conn *conns[MAX_CONNS];
	unsigned nconns;
};

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void logf_(struct fp_proxy *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(struct fp_proxy *p, const char *fmt, ...)
{
	va_list ap;

	if (!p->log)
		return;
	pthread_mutex_lock(&p->lock);
	va_start(ap, fmt);
	vfprintf(p->log, fmt, ap);
	va_end(ap);
	fputc('\n', p->log);
	fflush(p->log);
	pthread_mutex_unlock(&p->lock);
}

static const char *fname(uint32_t t)
{
	return t < NFRAMES && frame_names[t] ? frame_names[t] : "frame";
}

static int send_all(int fd, const uint8_t *b, size_t n)
{
	while (n) {
		ssize_t k = send(fd, b, n, MSG_NOSIGNAL);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		b += k;
		n -= k;
	}
	return 0;
}

/* Ends the connection abruptly (cut) or orderly (close). */
static void kill_conn(struct fp_conn *k, bool reset)
{
	struct linger l = { .l_onoff = 1, .l_linger = 0 };

	if (atomic_exchange(&k->dead, true))
		return;
	if (reset) {
		setsockopt(k->a, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
		setsockopt(k->b, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
	}
	shutdown(k->a, SHUT_RDWR);
	shutdown(k->b, SHUT_RDWR);
	pthread_mutex_lock(&k->p->lock);
	pthread_cond_broadcast(&k->p->cond);
	pthread_mutex_unlock(&k->p->lock);
}

/* Parks a pump for good (stall): until the proxy stops or the connection
 * dies some other way. */
static void park(struct pump *u)
{
	struct fp_proxy *p = u->k->p;

	pthread_mutex_lock(&p->lock);
	while (!p->stopping && !atomic_load(&u->k->dead))
		pthread_cond_wait(&p->cond, &p->lock);
	pthread_mutex_unlock(&p->lock);
}

/* The rule that acts now, if any: at a frame boundary (type set) or at a
 * byte position (type 0 and at_frame false). */
static int due(struct pump *u, bool at_frame, uint32_t type)
{
	struct fp_proxy *p = u->k->p;
	double age = now_ms() - u->k->t0;
	int hit = -1;

	pthread_mutex_lock(&p->lock);
	for (unsigned i = 0; i < p->nrules && hit < 0; i++) {
		const struct fp_rule *r = &p->rules[i];
		bool frame_rule = r->frame || r->action == FP_DROP || r->action == FP_DELAY ||
				  r->action == FP_CORRUPT;
		if (p->fired[i] || (r->conn && r->conn != u->k->idx) || r->dir != u->dir)
			continue;
		if (frame_rule != at_frame || (r->frame && r->frame != type))
			continue;
		if (u->bytes < r->bytes || age < r->after_ms ||
		    (r->on_signal && !atomic_load(&p->signalled)))
			continue;
		if (at_frame && r->nth && u->seen[type < NFRAMES ? type : 0] != r->nth)
			continue;
		hit = i;
		/* "every such frame" rules stay armed */
		if (!(at_frame && !r->nth && (r->action == FP_DROP || r->action == FP_DELAY ||
					       r->action == FP_CORRUPT)))
			p->fired[i] = true;
	}
	pthread_mutex_unlock(&p->lock);
	if (hit >= 0)
		atomic_fetch_add(&p->hits, 1);
	return hit;
}

/* Bytes the pump may read before a byte rule must act (UINT64_MAX: no limit),
 * and how long it may wait before a time or signal rule might. */
static uint64_t next_limit(struct pump *u, int *wait_ms)
{
	struct fp_proxy *p = u->k->p;
	uint64_t lim = UINT64_MAX;
	double age = now_ms() - u->k->t0;

	*wait_ms = -1;
	pthread_mutex_lock(&p->lock);
	for (unsigned i = 0; i < p->nrules; i++) {
		const struct fp_rule *r = &p->rules[i];
		if (p->fired[i] || (r->conn && r->conn != u->k->idx) || r->dir != u->dir)
			continue;
		if (r->bytes > u->bytes && r->bytes - u->bytes < lim)
			lim = r->bytes - u->bytes;
		int w = -1;
		if (r->after_ms > age)
			w = (int)(r->after_ms - age) + 1;
		else if (r->on_signal && !atomic_load(&p->signalled))
			w = 20;
		if (w >= 0 && (*wait_ms < 0 || w < *wait_ms))
			*wait_ms = w;
	}
	pthread_mutex_unlock(&p->lock);
	return lim;
}

/* Applies a stream action (cut, close, stall, blackhole); false: stop pumping. */
static bool stream_action(struct pump *u, int i, const char *where)
{
	struct fp_proxy *p = u->k->p;
	const struct fp_rule *r = &p->rules[i];
	const char *d = u->dir == FP_TO_DEST ? "to-dest" : "to-src";

	logf_(p, "conn %u %s: %s %s (%llu bytes)", u->k->idx, d,
	      r->action == FP_CUT ? "cut the channel" : r->action == FP_CLOSE ? "closed the channel" :
	      r->action == FP_STALL ? "stalled" : "blackholed the channel", where,
	      (unsigned long long)u->bytes);
	switch (r->action) {
	case FP_CUT:
	case FP_CLOSE:
		kill_conn(u->k, r->action == FP_CUT);
		return false;
	case FP_BLACKHOLE:
		atomic_store(&u->k->blackhole, true);
		/* fall through */
	default:
		park(u);
		return false;
	}
}

static void *pump_main(void *arg)
{
	struct pump *u = arg;
	struct fp_conn *k = u->k;
	struct fp_proxy *p = k->p;
	const char *d = u->dir == FP_TO_DEST ? "to-dest" : "to-src";
	uint8_t *buf = malloc(BUF), hdr[8];
	unsigned hlen = 0;
	uint64_t need = 0;              /* body bytes of the current frame still to come */
	bool discard = false;

	while (buf && !atomic_load(&k->dead)) {
		if (atomic_load(&k->blackhole)) {
			park(u);
			break;
		}
		int i = due(u, false, 0);
		if (i >= 0 && !stream_action(u, i, "at a byte count"))
			break;
		int wait_ms;
		uint64_t lim = next_limit(u, &wait_ms);
		size_t want = need ? (need < BUF ? need : BUF) : 8 - hlen;
		if (want > lim)
			want = lim;
		struct pollfd pf = { .fd = u->in, .events = POLLIN };
		int pr = poll(&pf, 1, wait_ms);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr == 0)
			continue;       /* a time or signal rule may be due */
		ssize_t n = recv(u->in, need ? buf : hdr + hlen, want, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			/* The sender closed: pass the close on. */
			if (!atomic_load(&k->blackhole))
				shutdown(u->out, SHUT_WR);
			break;
		}
		u->bytes += n;
		if (atomic_load(&k->blackhole))
			continue;       /* lost in the dark */
		if (need) {
			need -= n;
			if (!discard && send_all(u->out, buf, n))
				break;
			continue;
		}
		hlen += n;
		if (hlen < 8)
			continue;
		/* A whole header: the frame rules decide. */
		uint32_t type = hdr[0] | hdr[1] << 8 | hdr[2] << 16 | (uint32_t)hdr[3] << 24;
		uint32_t len = hdr[4] | hdr[5] << 8 | hdr[6] << 16 | (uint32_t)hdr[7] << 24;
		u->seen[type < NFRAMES ? type : 0]++;
		hlen = 0;
		need = len;
		discard = false;
		i = due(u, true, type);
		if (i >= 0) {
			const struct fp_rule *r = &p->rules[i];
			switch (r->action) {
			case FP_DROP:
				discard = true;
				logf_(p, "conn %u %s: dropped %s (%u bytes)", k->idx, d, fname(type), len);
				break;
			case FP_DELAY:
				logf_(p, "conn %u %s: delaying %s by %u ms", k->idx, d, fname(type), r->delay_ms);
				usleep(r->delay_ms * 1000u);
				break;
			case FP_CORRUPT:
				logf_(p, "conn %u %s: corrupted %s", k->idx, d, fname(type));
				memset(hdr, 0xee, 4);
				break;
			default:
				if (!stream_action(u, i, fname(type)))
					goto out;
			}
		}
		if (!discard && send_all(u->out, hdr, 8))
			break;
	}
out:
	free(buf);
	pthread_mutex_lock(&p->lock);
	bool last = ++k->exited == 2;
	pthread_mutex_unlock(&p->lock);
	if (last && !atomic_load(&k->blackhole)) {
		shutdown(k->a, SHUT_RDWR);
		shutdown(k->b, SHUT_RDWR);
	}
	return NULL;
}

static int parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *sl)
{
	char host[256];
	const char *colon = strrchr(s, ':');
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res;

	if (!colon || (size_t)(colon - s) >= sizeof(host))
		return -1;
	memcpy(host, s, colon - s);
	host[colon - s] = '\0';
	if (getaddrinfo(host, colon + 1, &hints, &res))
		return -1;
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	*sl = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

static void *accept_main(void *arg)
{
	struct fp_proxy *p = arg;

	for (;;) {
		int a = accept(p->lfd, NULL, NULL);
		if (a < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			break;
		}
		struct sockaddr_storage ss;
		socklen_t sl;
		int b = -1, one = 1;
		if (!parse_addr(p->target, &ss, &sl)) {
			b = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
			if (b >= 0 && connect(b, (struct sockaddr *)&ss, sl)) {
				close(b);
				b = -1;
			}
		}
		pthread_mutex_lock(&p->lock);
		if (b < 0 || p->stopping || p->nconns == MAX_CONNS) {
			pthread_mutex_unlock(&p->lock);
			close(a);
			if (b >= 0)
				close(b);
			continue;
		}
		setsockopt(a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		setsockopt(b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		struct fp_conn *k = calloc(1, sizeof(*k));
		k->p = p;
		k->idx = ++p->nconns;
		k->a = a;
		k->b = b;
		k->t0 = now_ms();
		p->conns[k->idx - 1] = k;
		k->pump[0] = (struct pump){ .k = k, .dir = FP_TO_DEST, .in = a, .out = b };
		k->pump[1] = (struct pump){ .k = k, .dir = FP_TO_SRC, .in = b, .out = a };
		for (unsigned d = 0; d < 2; d++)
			k->pump[d].started = !pthread_create(&k->pump[d].th, NULL, pump_main, &k->pump[d]);
		pthread_mutex_unlock(&p->lock);
		if (p->log) {
			pthread_mutex_lock(&p->lock);
			fprintf(p->log, "conn %u: open\n", k->idx);
			fflush(p->log);
			pthread_mutex_unlock(&p->lock);
		}
	}
	return NULL;
}

int fp_start(struct fp_proxy **out, const char *listen_addr, const char *target,
	     const struct fp_rule *rules, unsigned nrules, FILE *log)
{
	struct fp_proxy *p = calloc(1, sizeof(*p));
	struct sockaddr_storage ss;
	socklen_t sl;
	int one = 1;

	if (!p || nrules > MAX_RULES || strlen(target) >= sizeof(p->target) ||
	    parse_addr(listen_addr, &ss, &sl)) {
		free(p);
		return -EINVAL;
	}
	snprintf(p->target, sizeof(p->target), "%s", target);
	memcpy(p->rules, rules, nrules * sizeof(*rules));
	p->nrules = nrules;
	p->log = log;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	p->lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	setsockopt(p->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (p->lfd < 0 || bind(p->lfd, (struct sockaddr *)&ss, sl) || listen(p->lfd, 64)) {
		int e = errno;
		if (p->lfd >= 0)
			close(p->lfd);
		free(p);
		return -e;
	}
	sl = sizeof(ss);
	getsockname(p->lfd, (struct sockaddr *)&ss, &sl);
	char h[64];
	if (ss.ss_family == AF_INET) {
		inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, h, sizeof(h));
		snprintf(p->addr, sizeof(p->addr), "%s:%u", h, ntohs(((struct sockaddr_in *)&ss)->sin_port));
	} else {
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, h, sizeof(h));
		snprintf(p->addr, sizeof(p->addr), "[%s]:%u", h, ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
	}
	if (pthread_create(&p->th, NULL, accept_main, p)) {
		close(p->lfd);
		free(p);
		return -EAGAIN;
	}
	*out = p;
	return 0;
}

const char *fp_address(const struct fp_proxy *p)
{
	return p->addr;
}

void fp_fire(struct fp_proxy *p)
{
	atomic_store(&p->signalled, true);
}

unsigned fp_hits(struct fp_proxy *p)
{
	return atomic_load(&p->hits);
}

void fp_stop(struct fp_proxy *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->stopping = true;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	shutdown(p->lfd, SHUT_RDWR);
	close(p->lfd);
	pthread_join(p->th, NULL);
	for (unsigned i = 0; i < p->nconns; i++) {
		struct fp_conn *k = p->conns[i];
		atomic_store(&k->dead, true);
		shutdown(k->a, SHUT_RDWR);
		shutdown(k->b, SHUT_RDWR);
		pthread_mutex_lock(&p->lock);
		pthread_cond_broadcast(&p->cond);
		pthread_mutex_unlock(&p->lock);
		for (unsigned d = 0; d < 2; d++)
			if (k->pump[d].started)
				pthread_join(k->pump[d].th, NULL);
		close(k->a);
		close(k->b);
		free(k);
	}
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->cond);
	free(p);
}

int fp_parse_rule(const char *s, struct fp_rule *r, char *why, size_t wl)
{
	char buf[256], *save = NULL;
	bool have_action = false;

	memset(r, 0, sizeof(*r));
	if (strlen(s) >= sizeof(buf)) {
		snprintf(why, wl, "rule too long");
		return -EINVAL;
	}
	strcpy(buf, s);
	for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(t, '=');
		const char *v = eq ? eq + 1 : "";
		if (eq)
			*eq = '\0';
		if (!strcmp(t, "conn")) {
			r->conn = strtoul(v, NULL, 10);
		} else if (!strcmp(t, "dir")) {
			if (!strcmp(v, "to-dest"))
				r->dir = FP_TO_DEST;
			else if (!strcmp(v, "to-src"))
				r->dir = FP_TO_SRC;
			else
				goto bad;
		} else if (!strcmp(t, "frame")) {
			unsigned f;
			for (f = 1; f < NFRAMES && (!frame_names[f] || strcasecmp(v, frame_names[f])); f++)
				;
			if (f == NFRAMES)
				goto bad;
			r->frame = f;
		} else if (!strcmp(t, "nth")) {
			r->nth = strtoul(v, NULL, 10);
		} else if (!strcmp(t, "bytes")) {
			char *end;
			double b = strtod(v, &end);
			if (*end == 'K' || *end == 'k')
				b *= 1024;
			else if (*end == 'M' || *end == 'm')
				b *= 1 << 20;
			r->bytes = (uint64_t)b;
		} else if (!strcmp(t, "ms")) {
			r->after_ms = strtoul(v, NULL, 10);
		} else if (!strcmp(t, "signal")) {
			r->on_signal = true;
		} else if (!strcmp(t, "delay")) {
			r->delay_ms = strtoul(v, NULL, 10);
		} else if (!strcmp(t, "action")) {
			unsigned a;
			for (a = 0; a < sizeof(action_names) / sizeof(action_names[0]) && strcmp(v, action_names[a]); a++)
				;
			if (a == sizeof(action_names) / sizeof(action_names[0]))
				goto bad;
			r->action = a;
			have_action = true;
		} else {
			goto bad;
		}
		continue;
bad:
		snprintf(why, wl, "bad rule part '%s%s%s'", t, eq ? "=" : "", v);
		return -EINVAL;
	}
	if (!have_action) {
		snprintf(why, wl, "rule '%s' has no action", s);
		return -EINVAL;
	}
	return 0;
}
