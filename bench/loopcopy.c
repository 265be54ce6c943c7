/*
 * loopcopy: the "bare copy" limit of the pmigrate benchmark.
 *
 * Moves SIZE bytes from a populated source buffer to a populated destination
 * buffer over N TCP streams, and nothing else: no pages, no headers per page,
 * no dirty tracking, no compression, no locks.  It is what any migration tool
 * has to do at the very least to move guest memory (read it, push it through
 * the kernel's TCP stack, land it in distinct destination memory), so it is a
 * tighter limit than iperf3, whose buffers are reused and stay in cache.
 *
 * Memory is set up like pmigrate's synthetic VM: a memfd mapped MAP_SHARED.
 * The source is filled with a pseudo-random pattern (every page written, so
 * populated); the destination is prefaulted with MADV_POPULATE_WRITE (and,
 * with --huge, advised MADV_HUGEPAGE first, as pmigrate's destination does).
 * Set-up (allocation, filling, prefaulting, connecting) is not timed.
 *
 * Stream i carries chunks i, i+N, i+2N, ... of --chunk bytes (default 1 MiB),
 * as a migration hands chunks of guest memory to its channels (--layout
 * slices: the i-th contiguous slice instead), one write per chunk straight
 * from source memory; the receiving thread of stream i reads straight into
 * the same places of the destination.  The sender's clock runs
 * from the moment all streams are connected until every stream has been
 * acknowledged by the receiver after *all* bytes of *all* streams arrived.
 *
 * Modes:
 *   loopcopy --listen HOST:PORT[,HOST:PORT...] --streams N --size SIZE [opts]
 *       receiver: accepts N connections on any of the listed addresses (one
 *       per link), prints {"listening": ...} once ready, then its result.
 *   loopcopy --connect HOST:PORT[,HOST:PORT...] [--bind HOST[,HOST...]]
 *            --streams N --size SIZE [opts]
 *       sender: stream i connects to address i mod K (bound to source address
 *       i mod K), like pmigrate's channels; prints one JSON object with its
 *       timing and the receiver's (sent back over stream 0).
 *   loopcopy --local --streams N --size SIZE [opts]
 *       both ends in one process (threads), over 127.0.0.1.
 *
 * Options: --size SIZE (K/M/G suffixes; default 1G), --streams N (default 4),
 * --chunk BYTES (default 1M), --huge (MADV_HUGEPAGE on the destination),
 * --dst-mem memfd|anon (default memfd; anon = private anonymous memory, which
 * gets transparent huge pages under THP "madvise" even where shmem does not),
 * --verify (the receiver checks every byte against the pattern; not timed),
 * --layout interleaved|slices (which bytes each stream carries, see piece()).
 *
 * The output is one JSON line on stdout (sender or --local), e.g.
 *   {"tool":"loopcopy","status":"completed","bytes":1073741824,"streams":4,
 *    "seconds":1.02,"throughput_MBps":1052.6,"gbit_s":8.42,"dst_huge_kb":0,...}
 * MB = 10^6 bytes, as everywhere in the benchmark.
 *
 * Standalone: Linux, libc and pthreads only; no pmigrate code.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define PAGE 4096UL
#define MAX_STREAMS 64
#define MAX_ADDRS 16
#define MAGIC 0x4c4f4f50434f5059ULL /* "LOOPCOPY" */

/* ------------------------------------------------------------------ options */

static struct {
	size_t size;
	size_t chunk;
	int streams;
	bool huge;
	bool anon;
	bool verify;
	bool local;
	bool slices;   /* --layout slices: stream i = i-th contiguous slice */
	char *listen;  /* receiver: comma list of HOST:PORT */
	char *connect; /* sender: comma list of HOST:PORT */
	char *bind;    /* sender: comma list of HOST (source addresses) */
} opt = { .size = 1UL << 30, .chunk = 1UL << 20, .streams = 4 };

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("loopcopy: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	/* A JSON line too, so a driver parsing stdout sees the failure. */
	printf("{\"tool\":\"loopcopy\",\"status\":\"error\"}\n");
	fflush(stdout);
	exit(1);
}

static size_t parse_size(const char *s)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 10);

	switch (*end) {
	case 'k': case 'K': v <<= 10; end++; break;
	case 'm': case 'M': v <<= 20; end++; break;
	case 'g': case 'G': v <<= 30; end++; break;
	case 't': case 'T': v <<= 40; end++; break;
	}
	if (*end == 'i' || *end == 'B')
		end += strspn(end, "iB");
	if (*end || v == 0)
		die("bad size '%s'", s);
	return v;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------ memory */

/* The source pattern: xorshift64 of the word index, so the receiver can check
 * any byte without the source, and nothing compresses or is zero. */
static inline uint64_t pattern(uint64_t i)
{
	uint64_t x = i * 0x9E3779B97F4A7C15ULL + 0x1234567ULL;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return x;
}

/* A size-byte buffer like a guest's memory: memfd + MAP_SHARED (or private
 * anonymous memory with --dst-mem anon for the destination). */
static void *guest_memory(size_t size, bool anon, const char *name)
{
	void *p;

	if (anon) {
		p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	} else {
		int fd = memfd_create(name, MFD_CLOEXEC);

		if (fd < 0 || ftruncate(fd, (off_t)size))
			die("memfd of %zu bytes: %s", size, strerror(errno));
		p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		close(fd); /* the mapping keeps the memory */
	}
	if (p == MAP_FAILED)
		die("mmap of %zu bytes: %s", size, strerror(errno));
	return p;
}

static uint8_t *source_memory(void)
{
	uint64_t *w = guest_memory(opt.size, false, "loopcopy-src");

	for (size_t i = 0; i < opt.size / 8; i++) /* writes, hence populates, every page */
		w[i] = pattern(i);
	return (uint8_t *)w;
}

static uint8_t *dest_memory(void)
{
	uint8_t *p = guest_memory(opt.size, opt.anon, "loopcopy-dst");

	/* Huge pages first (if the host allows them for this kind of memory),
	 * then prefault, so no page fault happens on the receive path. */
	if (opt.huge && madvise(p, opt.size, MADV_HUGEPAGE))
		fprintf(stderr, "loopcopy: MADV_HUGEPAGE: %s (continuing)\n", strerror(errno));
	if (madvise(p, opt.size, MADV_POPULATE_WRITE))
		memset(p, 0, opt.size); /* older kernels: touch every page */
	return p;
}

/* Kilobytes of the mapping at addr backed by PMD (2 MiB) pages, from
 * /proc/self/smaps: AnonHugePages (anon) or ShmemPmdMapped (memfd). */
static long huge_kb(const void *addr)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	unsigned long lo, hi, a = (unsigned long)addr;
	bool in = false;
	long kb = 0, v;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = a >= lo && a < hi;
			continue;
		}
		if (in && (sscanf(line, "AnonHugePages: %ld kB", &v) == 1 ||
			   sscanf(line, "ShmemPmdMapped: %ld kB", &v) == 1 ||
			   sscanf(line, "FilePmdMapped: %ld kB", &v) == 1))
			kb += v;
	}
	fclose(f);
	return kb;
}

/* ------------------------------------------------------------------ sockets */

struct hdr {        /* first bytes of every stream, sender -> receiver */
	uint64_t magic;
	uint64_t stream; /* i: which pieces this stream carries (see piece()) */
	uint64_t layout; /* 1 slices, 0 interleaved */
	uint64_t total;  /* SIZE, checked against the receiver's */
	uint64_t chunk;  /* piece size when interleaved */
};

/* The k-th piece of stream i: with --layout interleaved (the default), chunks
 * i, i+N, i+2N, ... of --chunk bytes, as a migration hands chunks of guest
 * memory to its channels; with --layout slices, one contiguous slice (page
 * aligned) per stream.  Returns false when stream i has no k-th piece.  Both
 * ends compute the same pieces, so no per-piece header is sent. */
static bool piece(bool slices, size_t chunk, int i, size_t k, size_t *off, size_t *len)
{
	size_t o;

	if (slices) {
		size_t slice = (opt.size / (size_t)opt.streams + PAGE - 1) / PAGE * PAGE;
		o = (size_t)i * slice;
		if (k || o >= opt.size)
			return false;
		*len = o + slice <= opt.size ? slice : opt.size - o;
	} else {
		o = ((size_t)i + k * (size_t)opt.streams) * chunk;
		if (o >= opt.size)
			return false;
		*len = o + chunk <= opt.size ? chunk : opt.size - o;
	}
	*off = o;
	return true;
}

struct ack {         /* receiver -> sender on every stream once all arrived */
	uint64_t magic;
	uint64_t recv_ns;   /* receiver: first header to last byte of all streams */
};

struct trailer {     /* receiver -> sender on stream 0 after the ack, untimed */
	int64_t huge_kb;    /* destination memory backed by 2 MiB pages */
	uint64_t verified;  /* 1 ok, 0 not checked, 2 mismatch */
};

static void split_hostport(char *s, char **host, char **port)
{
	char *c = strrchr(s, ':');

	if (!c)
		die("address '%s' needs HOST:PORT", s);
	*c = 0;
	*host = s;
	*port = c + 1;
	if (**host == '[') { /* [v6]:port */
		(*host)++;
		(*host)[strlen(*host) - 1] = 0;
	}
}

static struct addrinfo *resolve(const char *host, const char *port, bool passive)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = passive ? AI_PASSIVE : 0 };
	struct addrinfo *ai;
	int r = getaddrinfo(host, port, &hints, &ai);

	if (r)
		die("cannot resolve %s:%s: %s", host, port ? port : "", gai_strerror(r));
	return ai;
}

static int split_list(char *s, char **out, int max)
{
	int n = 0;

	for (char *t = strtok(s, ","); t && n < max; t = strtok(NULL, ","))
		out[n++] = t;
	return n;
}

static void io_full(int fd, void *buf, size_t len, bool send_it, const char *what)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = send_it ? send(fd, p, len, MSG_NOSIGNAL) : recv(fd, p, len, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("%s: %s", what, n ? strerror(errno) : "connection closed");
		p += n;
		len -= (size_t)n;
	}
}

/* ------------------------------------------------------------------ receiver */

struct rx {
	int fd;
	uint8_t *dst;
	pthread_t th;
	double t_first; /* header arrived */
	double t_done;  /* last byte arrived */
	struct hdr h;
};

static void *rx_stream(void *arg)
{
	struct rx *r = arg;

	io_full(r->fd, &r->h, sizeof(r->h), false, "receive header");
	r->t_first = now();
	if (r->h.magic != MAGIC || r->h.total != opt.size || r->h.stream >= (uint64_t)opt.streams ||
	    !r->h.chunk || r->h.chunk % 8)
		die("stream header does not match (size %zu, %d streams on this side)", opt.size, opt.streams);
	/* The data path: read straight into the stream's pieces of the
	 * destination, at most one chunk per call. */
	size_t off, len;
	for (size_t k = 0; piece(r->h.layout, r->h.chunk, (int)r->h.stream, k, &off, &len); k++) {
		uint8_t *p = r->dst + off;
		while (len) {
			ssize_t n = recv(r->fd, p, len < opt.chunk ? len : opt.chunk, 0);

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				die("receive: %s", n ? strerror(errno) : "connection closed early");
			p += n;
			len -= (size_t)n;
		}
	}
	r->t_done = now();
	return NULL;
}

static bool verify(const uint8_t *dst)
{
	const uint64_t *w = (const uint64_t *)dst;

	for (size_t i = 0; i < opt.size / 8; i++)
		if (w[i] != pattern(i))
			return false;
	return true;
}

/* Receives SIZE bytes over N streams accepted on lfd[0..nl-1]. ready_fd >= 0:
 * write one byte there once listening (the --local sender waits on it). */
static void receiver(int *lfd, int nl, int ready_fd)
{
	uint8_t *dst = dest_memory();
	struct rx rx[MAX_STREAMS];
	struct pollfd pf[MAX_ADDRS];

	if (ready_fd >= 0) {
		char c = 1;
		if (write(ready_fd, &c, 1) != 1)
			die("ready pipe: %s", strerror(errno));
	} else {
		printf("{\"listening\":true,\"streams\":%d,\"bytes\":%zu}\n", opt.streams, opt.size);
		fflush(stdout);
	}
	for (int i = 0; i < nl; i++)
		pf[i] = (struct pollfd){ .fd = lfd[i], .events = POLLIN };
	for (int n = 0; n < opt.streams;) {
		if (poll(pf, (nfds_t)nl, -1) < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));
		for (int i = 0; i < nl && n < opt.streams; i++) {
			if (!(pf[i].revents & POLLIN))
				continue;
			int fd = accept(lfd[i], NULL, NULL);
			if (fd < 0)
				die("accept: %s", strerror(errno));
			rx[n] = (struct rx){ .fd = fd, .dst = dst };
			if (pthread_create(&rx[n].th, NULL, rx_stream, &rx[n]))
				die("pthread_create");
			n++;
		}
	}
	double t0 = 1e300, t1 = 0;
	for (int i = 0; i < opt.streams; i++) {
		pthread_join(rx[i].th, NULL);
		if (rx[i].t_first < t0)
			t0 = rx[i].t_first;
		if (rx[i].t_done > t1)
			t1 = rx[i].t_done;
	}
	/* The ack stops the sender's clock; reading smaps (a page-table walk) and
	 * the check come after, untimed, and follow on stream 0. */
	struct ack a = { .magic = MAGIC, .recv_ns = (uint64_t)((t1 - t0) * 1e9) };
	for (int i = 0; i < opt.streams; i++)
		io_full(rx[i].fd, &a, sizeof(a), true, "send ack");
	struct trailer tr = { .huge_kb = huge_kb(dst) };
	if (opt.verify)
		tr.verified = verify(dst) ? 1 : 2;
	io_full(rx[0].fd, &tr, sizeof(tr), true, "send trailer");
	for (int i = 0; i < opt.streams; i++)
		close(rx[i].fd);
	if (ready_fd < 0) {
		printf("{\"tool\":\"loopcopy\",\"role\":\"receiver\",\"status\":\"%s\",\"bytes\":%zu,"
		       "\"streams\":%d,\"recv_seconds\":%.6f,\"dst_huge_kb\":%ld}\n",
		       tr.verified == 2 ? "mismatch" : "completed", opt.size, opt.streams,
		       a.recv_ns / 1e9, (long)tr.huge_kb);
		fflush(stdout);
	}
	munmap(dst, opt.size);
}

static int listen_on(char *hostport)
{
	char *host, *port;
	int one = 1;

	split_hostport(hostport, &host, &port);
	struct addrinfo *ai = resolve(host, port, true);
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket: %s", strerror(errno));
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, MAX_STREAMS))
		die("cannot listen on %s:%s: %s", host, port, strerror(errno));
	freeaddrinfo(ai);
	return fd;
}

/* ------------------------------------------------------------------ sender */

struct tx {
	int fd, idx;
	const uint8_t *src;
	pthread_barrier_t *go;
	pthread_t th;
	struct ack ack;
};

static void *tx_stream(void *arg)
{
	struct tx *t = arg;
	struct hdr h = { .magic = MAGIC, .stream = (uint64_t)t->idx, .layout = opt.slices,
			 .total = opt.size, .chunk = opt.chunk };
	size_t off, len;

	pthread_barrier_wait(t->go); /* every stream starts together, with the clock */
	io_full(t->fd, &h, sizeof(h), true, "send header");
	/* The data path: large writes straight from the source memory. */
	for (size_t k = 0; piece(opt.slices, opt.chunk, t->idx, k, &off, &len); k++) {
		const uint8_t *p = t->src + off;
		while (len) {
			ssize_t n = send(t->fd, p, len < opt.chunk ? len : opt.chunk, MSG_NOSIGNAL);

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				die("send: %s", n ? strerror(errno) : "nothing sent");
			p += n;
			len -= (size_t)n;
		}
	}
	/* Done when the receiver says every stream has landed. */
	io_full(t->fd, &t->ack, sizeof(t->ack), false, "receive ack");
	if (t->ack.magic != MAGIC)
		die("bad ack");
	return NULL;
}

static int connect_to(char *hostport, const char *bindhost)
{
	char buf[256], *host, *port;
	int one = 1;

	snprintf(buf, sizeof(buf), "%s", hostport); /* split_hostport edits its argument */
	split_hostport(buf, &host, &port);
	struct addrinfo *ai = resolve(host, port, false);
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket: %s", strerror(errno));
	if (bindhost && *bindhost) {
		struct addrinfo *b = resolve(bindhost, "0", true);
		if (bind(fd, b->ai_addr, b->ai_addrlen))
			die("cannot bind to %s: %s", bindhost, strerror(errno));
		freeaddrinfo(b);
	}
	for (int tries = 0;; tries++) { /* the receiver may still be setting up */
		if (!connect(fd, ai->ai_addr, ai->ai_addrlen))
			break;
		if (errno != ECONNREFUSED || tries > 200)
			die("cannot connect to %s:%s: %s", host, port, strerror(errno));
		usleep(50000);
	}
	/* No Nagle (the header is small); otherwise the kernel's defaults, as iperf3. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	freeaddrinfo(ai);
	return fd;
}

static void sender(char **to, int nto, char **from, int nfrom)
{
	const uint8_t *src = source_memory();
	struct tx tx[MAX_STREAMS];
	pthread_barrier_t go;

	pthread_barrier_init(&go, NULL, (unsigned)opt.streams + 1);
	for (int i = 0; i < opt.streams; i++) {
		tx[i] = (struct tx){ .fd = connect_to(to[i % nto], nfrom ? from[i % nfrom] : NULL),
				     .idx = i, .src = src, .go = &go };
		if (pthread_create(&tx[i].th, NULL, tx_stream, &tx[i]))
			die("pthread_create");
	}
	pthread_barrier_wait(&go);
	double t0 = now();
	for (int i = 0; i < opt.streams; i++)
		pthread_join(tx[i].th, NULL);
	double dt = now() - t0;
	const struct ack *a = &tx[0].ack;
	struct trailer tr;
	io_full(tx[0].fd, &tr, sizeof(tr), false, "receive trailer");
	int links = nto < opt.streams ? nto : opt.streams;

	printf("{\"tool\":\"loopcopy\",\"status\":\"%s\",\"bytes\":%zu,\"streams\":%d,\"channels\":%d,"
	       "\"links_used\":%d,\"chunk\":%zu,\"seconds\":%.6f,\"total_time_ms\":%.1f,"
	       "\"throughput_MBps\":%.1f,\"gbit_s\":%.3f,\"recv_seconds\":%.6f,"
	       "\"layout\":\"%s\",\"dst_mem\":\"%s\",\"huge_advised\":%s,\"dst_huge_kb\":%ld,\"verified\":%s}\n",
	       tr.verified == 2 ? "mismatch" : "completed", opt.size, opt.streams, opt.streams, links,
	       opt.chunk, dt, dt * 1e3, opt.size / dt / 1e6, opt.size * 8 / dt / 1e9,
	       a->recv_ns / 1e9, opt.slices ? "slices" : "interleaved", opt.anon ? "anon" : "memfd", opt.huge ? "true" : "false",
	       (long)tr.huge_kb, tr.verified == 1 ? "true" : tr.verified == 2 ? "false" : "null");
	fflush(stdout);
	for (int i = 0; i < opt.streams; i++)
		close(tx[i].fd);
	munmap((void *)src, opt.size);
	if (tr.verified == 2)
		exit(1);
}

/* ------------------------------------------------------------------ main */

struct local_rx {
	int lfd, ready;
};

static void *local_receiver(void *arg)
{
	struct local_rx *l = arg;

	receiver(&l->lfd, 1, l->ready);
	return NULL;
}

static void usage(FILE *f)
{
	fputs("usage: loopcopy --listen HOST:PORT[,...] | --connect HOST:PORT[,...] [--bind HOST[,...]] | --local\n"
	      "                [--size SIZE] [--streams N] [--chunk BYTES] [--huge] [--dst-mem memfd|anon]\n"
	      "                [--verify] [--layout interleaved|slices]\n"
	      "Moves SIZE bytes (default 1G) from a populated memfd to a populated memfd over N\n"
	      "TCP streams (default 4), in writes of --chunk bytes (default 1M); prints JSON.\n"
	      "Both ends must agree on --size and --streams; --huge/--dst-mem/--verify are the\n"
	      "receiver's.\n", f);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "listen", required_argument, NULL, 'l' }, { "connect", required_argument, NULL, 'c' },
		{ "bind", required_argument, NULL, 'b' },   { "local", no_argument, NULL, 'L' },
		{ "size", required_argument, NULL, 's' },   { "streams", required_argument, NULL, 'n' },
		{ "chunk", required_argument, NULL, 'k' },  { "huge", no_argument, NULL, 'H' },
		{ "dst-mem", required_argument, NULL, 'm' }, { "verify", no_argument, NULL, 'V' },
		{ "layout", required_argument, NULL, 'y' }, { "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	int c;

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'l': opt.listen = optarg; break;
		case 'c': opt.connect = optarg; break;
		case 'b': opt.bind = optarg; break;
		case 'L': opt.local = true; break;
		case 's': opt.size = parse_size(optarg); break;
		case 'n': opt.streams = atoi(optarg); break;
		case 'k': opt.chunk = parse_size(optarg); break;
		case 'H': opt.huge = true; break;
		case 'm':
			if (strcmp(optarg, "anon") && strcmp(optarg, "memfd"))
				die("--dst-mem is memfd or anon");
			opt.anon = !strcmp(optarg, "anon");
			break;
		case 'V': opt.verify = true; break;
		case 'y':
			if (strcmp(optarg, "slices") && strcmp(optarg, "interleaved"))
				die("--layout is interleaved or slices");
			opt.slices = !strcmp(optarg, "slices");
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc || (!!opt.listen + !!opt.connect + opt.local) != 1) {
		usage(stderr);
		return 2;
	}
	if (opt.streams < 1 || opt.streams > MAX_STREAMS)
		die("--streams must be 1..%d", MAX_STREAMS);
	if (opt.size % 8 || opt.chunk % 8)
		die("--size and --chunk must be multiples of 8 bytes");

	if (opt.listen) {
		char *addrs[MAX_ADDRS];
		int lfd[MAX_ADDRS], n = split_list(opt.listen, addrs, MAX_ADDRS);

		for (int i = 0; i < n; i++)
			lfd[i] = listen_on(addrs[i]);
		receiver(lfd, n, -1);
		return 0;
	}
	if (opt.connect) {
		char *to[MAX_ADDRS], *from[MAX_ADDRS];
		int nto = split_list(opt.connect, to, MAX_ADDRS);
		int nfrom = opt.bind ? split_list(opt.bind, from, MAX_ADDRS) : 0;

		sender(to, nto, from, nfrom);
		return 0;
	}
	/* --local: a listening socket on an ephemeral loopback port, the receiver
	 * in a thread, the sender here once the receiver's memory is ready. */
	char hp[64];
	struct sockaddr_in sa;
	socklen_t sl = sizeof(sa);
	int pfd[2];
	struct local_rx l;
	pthread_t th;
	char *to[1] = { hp };

	snprintf(hp, sizeof(hp), "127.0.0.1:0");
	l.lfd = listen_on(hp);
	if (getsockname(l.lfd, (struct sockaddr *)&sa, &sl) || pipe(pfd))
		die("local set-up: %s", strerror(errno));
	snprintf(hp, sizeof(hp), "127.0.0.1:%d", ntohs(sa.sin_port));
	l.ready = pfd[1];
	if (pthread_create(&th, NULL, local_receiver, &l))
		die("pthread_create");
	char ready;
	if (read(pfd[0], &ready, 1) != 1)
		die("local receiver did not start");
	sender(to, 1, NULL, 0);
	pthread_join(th, NULL);
	return 0;
}
