/* SPDX-License-Identifier: MIT */
/* Engine support code: address parsing (net.c), page-run compression
 * (codec.c), the JSON report and its parser (report.c), option names. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <pmigrate/hostmem.h>
#include <pmigrate/migrate.h>
#include "engine/codec.h"
#include "engine/net.h"
#include "engine/protocol.h"
#include "engine/timeline.h"

/* ------------------------------------------------------------ addresses */

static void test_addr_ipv4(void **state)
{
	struct sockaddr_storage ss;
	socklen_t len = 0;
	struct pm_err e = { 0 };
	char buf[80];

	assert_int_equal(pm_parse_addr("127.0.0.1:4444", &ss, &len, 0, &e), 0);
	assert_int_equal(ss.ss_family, AF_INET);
	assert_int_equal(len, sizeof(struct sockaddr_in));
	assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 4444);
	pm_format_addr((struct sockaddr *)&ss, buf, sizeof(buf));
	assert_string_equal(buf, "127.0.0.1:4444");

	assert_int_equal(pm_parse_addr("10.1.2.3:0", &ss, &len, 0, &e), 0);
	assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 0);
	assert_int_equal(pm_parse_addr("10.1.2.3:65535", &ss, &len, 0, &e), 0);
	assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 65535);
	/* A name that resolves locally. */
	assert_int_equal(pm_parse_addr("localhost:80", &ss, &len, 0, &e), 0);
	/* Host alone is fine for bind addresses. */
	assert_int_equal(pm_parse_addr("127.0.0.1", &ss, &len, 1, &e), 0);
	assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 0);
	assert_int_equal(pm_parse_addr("127.0.0.1:5", &ss, &len, 1, &e), 0);
	assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 5);
}

static void test_addr_ipv6(void **state)
{
	struct sockaddr_storage ss;
	socklen_t len = 0;
	struct pm_err e = { 0 };
	char buf[80];

	assert_int_equal(pm_parse_addr("[::1]:4444", &ss, &len, 0, &e), 0);
	assert_int_equal(ss.ss_family, AF_INET6);
	assert_int_equal(len, sizeof(struct sockaddr_in6));
	assert_int_equal(ntohs(((struct sockaddr_in6 *)&ss)->sin6_port), 4444);
	pm_format_addr((struct sockaddr *)&ss, buf, sizeof(buf));
	assert_string_equal(buf, "[::1]:4444");
	assert_int_equal(pm_parse_addr("[fe80::1:2]:1", &ss, &len, 0, &e), 0);
	assert_int_equal(pm_parse_addr("[::1]", &ss, &len, 1, &e), 0);
	assert_int_equal(ntohs(((struct sockaddr_in6 *)&ss)->sin6_port), 0);
}

static void expect_bad(const char *s, int allow_no_port, const char *needle)
{
	struct sockaddr_storage ss;
	socklen_t len = 0;
	struct pm_err e = { 0 };
	int r = pm_parse_addr(s, &ss, &len, allow_no_port, &e);

	if (r >= 0 || !strstr(e.msg, needle))
		fail_msg("'%s': expected an error mentioning '%s', got %d '%s'", s ? s : "(null)",
			 needle, r, e.msg);
	assert_int_equal(r, -EINVAL);
}

static void test_addr_bad(void **state)
{
	char longname[400];

	/* Missing port. */
	expect_bad("127.0.0.1", 0, "has no port (expected host:port)");
	expect_bad("[::1]", 0, "has no port");
	expect_bad("localhost", 0, "has no port");
	/* Bad ports. */
	expect_bad("127.0.0.1:", 0, "bad port");
	expect_bad("127.0.0.1:65536", 0, "bad port in address '127.0.0.1:65536'");
	expect_bad("127.0.0.1:-1", 0, "bad port");
	expect_bad("127.0.0.1:80x", 0, "bad port");
	expect_bad("127.0.0.1:99999999999999999999", 0, "bad port");
	expect_bad("[::1]:", 0, "bad port");
	expect_bad("[::1]:http", 0, "bad port");
	/* IPv6 without brackets. */
	expect_bad("::1:80", 0, "write IPv6 as [addr]:port");
	expect_bad("fe80::1", 1, "[addr]:port");
	/* Brackets. */
	expect_bad("[::1:80", 0, "missing ']'");
	expect_bad("[::1]80", 0, "expected ':' after ']'");
	/* Empty things. */
	expect_bad("", 0, "empty");
	expect_bad(NULL, 0, "empty");
	expect_bad(":80", 0, "has no host");
	expect_bad("[]:80", 0, "has no host");
	/* Names that do not resolve, oversized input. */
	expect_bad("no-such-host.invalid:80", 0, "cannot resolve 'no-such-host.invalid'");
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	expect_bad(longname, 0, "too long");
}

static void test_connect_refused(void **state)
{
	struct pm_err e = { 0 };
	char addr[80];
	int l = pm_tcp_listen("127.0.0.1:0", &e);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);

	/* Learn a free port, then close it: nothing listens there now. */
	assert_true(l >= 0);
	assert_int_equal(getsockname(l, (struct sockaddr *)&ss, &sl), 0);
	pm_format_addr((struct sockaddr *)&ss, addr, sizeof(addr));
	close(l);
	int r = pm_tcp_connect(addr, NULL, 2000, &e);
	assert_true(r < 0);
	assert_non_null(strstr(e.msg, "cannot connect to 127.0.0.1:"));
	assert_non_null(strstr(e.msg, "refused"));
	/* Family mismatch between bind and destination. */
	pm_err_clear(&e);
	r = pm_tcp_connect(addr, "[::1]", 2000, &e);
	assert_true(r < 0);
	assert_non_null(strstr(e.msg, "different families"));
	/* Listen on a bad address. */
	pm_err_clear(&e);
	assert_true(pm_tcp_listen("127.0.0.1", &e) < 0);
	assert_non_null(strstr(e.msg, "no port"));
}


/* ------------------------------------------------------------- deadlines */

/* A receive from a silent peer fails after the budget, not before, and not
 * much after; the message says how long it waited. */
static void test_conn_recv_deadline(void **state)
{
	struct pm_err e = { 0 };
	struct pm_conn c;
	int sv[2];
	char b[16];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	pm_conn_init(&c, sv[0]);
	pm_conn_set_timeout(&c, 300);
	double t = pm_now_ms();
	assert_int_equal(pm_recv_buf(&c, b, sizeof(b), &e, "waiting for DONE"), -ETIMEDOUT);
	double dt = pm_now_ms() - t;
	assert_true(dt >= 299 && dt < 300 + 1000);
	assert_non_null(strstr(e.msg, "waiting for DONE: timed out after 300 ms"));
	/* A peer that drips a byte at a time does not stretch the deadline:
	 * one operation has one budget. */
	pm_err_clear(&e);
	assert_int_equal(write(sv[1], "x", 1), 1);
	t = pm_now_ms();
	assert_int_equal(pm_recv_buf(&c, b, sizeof(b), &e, "reading"), -ETIMEDOUT);
	assert_true(pm_now_ms() - t < 300 + 1000);
	/* An absolute deadline wins over the budget. */
	pm_err_clear(&e);
	pm_conn_set_deadline(&c, pm_now_ms() + 100);
	t = pm_now_ms();
	assert_int_equal(pm_recv_some(&c, b, sizeof(b), &e, "reading"), -ETIMEDOUT);
	dt = pm_now_ms() - t;
	assert_true(dt >= 99 && dt < 100 + 1000);
	/* A closed peer is not a timeout. */
	pm_conn_set_deadline(&c, 0);
	close(sv[1]);
	pm_err_clear(&e);
	assert_int_equal(pm_recv_buf(&c, b, sizeof(b), &e, "reading"), -ECONNRESET);
	assert_non_null(strstr(e.msg, "connection closed by peer"));
	pm_conn_close(&c);
}

/* A send to a peer that stopped reading fails within the budget, and marks
 * the connection torn: no ERROR frame goes after half a frame. */
static void test_conn_send_deadline(void **state)
{
	struct pm_err e = { 0 };
	struct pm_conn c;
	int sv[2];
	size_t len = 8 << 20;
	uint8_t *big = calloc(1, len);

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	pm_conn_init(&c, sv[0]);
	pm_conn_set_timeout(&c, 200);
	double t = pm_now_ms();
	assert_int_equal(pm_send_buf(&c, big, len, &e, "sending pages"), -ETIMEDOUT);
	assert_true(pm_now_ms() - t < 200 + 1000);
	assert_true(c.torn);
	/* The peer reads what arrived: no ERROR frame header follows. */
	pm_send_error_frame(&c, EIO, "nope");
	uint8_t buf[65536];
	ssize_t n, total = 0;
	while ((n = recv(sv[1], buf, sizeof(buf), MSG_DONTWAIT)) > 0)
		total += n;
	assert_true(total > 0 && (size_t)total < len);
	pm_conn_close(&c);
	close(sv[1]);
	free(big);
}

/* The wake fd ends any wait at once with -ECANCELED (how a migration is
 * cancelled without signals). */
static void test_conn_wake(void **state)
{
	struct pm_err e = { 0 };
	struct pm_conn c;
	int sv[2], wp[2];
	char b[4];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	assert_int_equal(pipe(wp), 0);
	pm_conn_init(&c, sv[0]);
	pm_conn_set_timeout(&c, 30000);
	pm_conn_set_wake(&c, wp[0]);
	assert_int_equal(write(wp[1], "c", 1), 1);
	double t = pm_now_ms();
	assert_int_equal(pm_recv_buf(&c, b, sizeof(b), &e, "waiting for DONE"), -ECANCELED);
	assert_true(pm_now_ms() - t < 1000);
	assert_non_null(strstr(e.msg, "cancelled"));
	pm_conn_close(&c);
	close(sv[1]);
	close(wp[0]);
	close(wp[1]);
}


struct drainer {
	int fd;
	atomic_bool go;
	size_t got;
};

static void *drain_main(void *arg)
{
	struct drainer *d = arg;
	uint8_t b[65536];
	ssize_t n;

	while (!atomic_load(&d->go))
		usleep(1000);
	while ((n = recv(d->fd, b, sizeof(b), 0)) > 0)
		d->got += n;
	return NULL;
}

/* A send woken (cancel) in the middle of a frame finishes the frame when
 * the peer takes it within the grace, so the channel stays usable for the
 * ERROR that says why; a peer that takes nothing leaves it torn. */
static void test_conn_wake_mid_frame(void **state)
{
	struct pm_err e = { 0 };
	struct pm_conn c;
	int sv[2], wp[2];
	size_t len = 4 << 20;
	uint8_t *big = calloc(1, len);
	struct drainer d = { 0 };
	pthread_t th;

	for (int peer_reads = 1; peer_reads >= 0; peer_reads--) {
		assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
		assert_int_equal(pipe(wp), 0);
		pm_conn_init(&c, sv[0]);
		pm_conn_set_timeout(&c, 30000);
		pm_conn_set_wake(&c, wp[0]);
		/* Woken before the send even starts: the first wait is mid-frame. */
		assert_int_equal(write(wp[1], "c", 1), 1);
		d = (struct drainer){ .fd = sv[1] };
		assert_int_equal(pthread_create(&th, NULL, drain_main, &d), 0);
		if (peer_reads)
			atomic_store(&d.go, true);
		pm_err_clear(&e);
		double t = pm_now_ms();
		int r = pm_send_buf(&c, big, len, &e, "sending pages");
		if (peer_reads) {
			assert_int_equal(r, 0);
			assert_false(c.torn);
		} else {
			assert_true(r < 0);
			assert_true(c.torn);
			assert_true(pm_now_ms() - t < 2000);
		}
		pm_conn_close(&c);
		atomic_store(&d.go, true);
		pthread_join(th, NULL);
		close(sv[1]);
		close(wp[0]);
		close(wp[1]);
		if (peer_reads)
			assert_true(d.got == len);
	}
	free(big);
}

/* Channels end a vanished peer within about the budget: TCP_USER_TIMEOUT
 * and keepalive are set from it. */
static void test_tcp_tune(void **state)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0), v = 0;
	socklen_t l = sizeof(v);

	assert_true(fd >= 0);
	assert_int_equal(pm_tcp_tune(fd, 3000), 0);
	assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &v, &l), 0);
	assert_int_equal(v, 3000);
	assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &v, &l), 0);
	assert_int_equal(v, 1);
	assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &v, &l), 0);
	assert_int_equal(v, 1);
	close(fd);
}


/* -------------------------------------------------------- host memory */

static void put_file(const char *root, const char *rel, const char *text)
{
	char path[512], cmd[600];

	snprintf(path, sizeof(path), "%s/%s", root, rel);
	snprintf(cmd, sizeof(cmd), "mkdir -p \"$(dirname '%s')\"", path);
	assert_int_equal(system(cmd), 0);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

/* MemAvailable, capped by a v2 or v1 memory cgroup (at its path, or at the
 * root of the hierarchy as inside a container); unlimited cgroups ignored. */
static void test_host_memory(void **state)
{
	char root[] = "/tmp/pm-hostmem-XXXXXX", what[700], cmd[600];
	struct pm_err e = { 0 };
	uint64_t b;

	assert_non_null(mkdtemp(root));
	put_file(root, "proc/meminfo", "MemTotal: 8000000 kB\nMemAvailable: 4194304 kB\n");
	put_file(root, "proc/self/cgroup", "0::/a/b\n");
	put_file(root, "sys/fs/cgroup/a/b/memory.max", "max\n");
	assert_int_equal(pm_host_mem_available_at(root, &b, what, sizeof(what), &e), 0);
	assert_true(b == 4ull << 30);
	assert_non_null(strstr(what, "MemAvailable"));
	/* v2 limit below MemAvailable */
	put_file(root, "sys/fs/cgroup/a/b/memory.max", "1073741824\n");
	put_file(root, "sys/fs/cgroup/a/b/memory.current", "268435456\n");
	assert_int_equal(pm_host_mem_available_at(root, &b, what, sizeof(what), &e), 0);
	assert_true(b == 768ull << 20);
	assert_non_null(strstr(what, "memory cgroup /a/b: limit 1.0 GiB, 0.2 GiB in use"));
	/* v1, its path not visible: the mount's root holds the limit */
	put_file(root, "proc/self/cgroup", "4:memory:/docker/xyz\n");
	put_file(root, "sys/fs/cgroup/memory/memory.limit_in_bytes", "2147483648\n");
	put_file(root, "sys/fs/cgroup/memory/memory.usage_in_bytes", "2000000000\n");
	assert_int_equal(pm_host_mem_available_at(root, &b, what, sizeof(what), &e), 0);
	assert_true(b == 147483648ull);
	/* v1 "no limit" (a huge number) */
	put_file(root, "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
	assert_int_equal(pm_host_mem_available_at(root, &b, what, sizeof(what), &e), 0);
	assert_true(b == 4ull << 30);
	/* no MemAvailable: an error, not a guess */
	put_file(root, "proc/meminfo", "MemTotal: 8000000 kB\n");
	assert_true(pm_host_mem_available_at(root, &b, what, sizeof(what), &e) < 0);
	assert_non_null(strstr(e.msg, "no MemAvailable"));
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	assert_int_equal(system(cmd), 0);
	/* This host: 1 TiB is refused with the figures. */
	pm_err_clear(&e);
	assert_int_equal(pm_check_guest_memory(1ull << 40, &e), -ENOMEM);
	assert_non_null(strstr(e.msg, "cannot provide 1024.0 GiB of guest memory: only"));
	assert_int_equal(pm_check_guest_memory(16 << 20, &e), 0);
}

/* ----------------------------------------------------------- compression */

#define NPG 16

static void fill_compressible(uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)((i / 64) % 7 + (i % 3 == 0));
}

static void fill_random(uint8_t *p, size_t len, uint64_t seed)
{
	uint64_t x = seed | 1;

	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)(x >> 24);
	}
}

static void codec_roundtrip(enum pm_compress kind, int level)
{
	size_t raw = NPG * PM_PAGE_SIZE, bound = pm_codec_bound(kind, raw);
	uint8_t *src = malloc(raw), *out = malloc(raw), *dst = malloc(bound);
	struct pm_codec *c = NULL;

	assert_non_null(src);
	assert_non_null(dst);
	assert_non_null(out);
	assert_true(bound >= raw);
	/* The receiver's buffer (raw + raw/64 + 1024) holds either codec's worst case. */
	assert_true(bound <= raw + raw / 64 + 1024);
	assert_int_equal(pm_codec_new(&c, kind, level), 0);
	fill_compressible(src, raw);
	size_t n = pm_codec_compress(c, src, raw, dst, bound);
	assert_true(n > 0);
	assert_true(n < raw / 4);
	memset(out, 0xcc, raw);
	assert_int_equal(pm_codec_decompress(c, pm_codec_encoding(kind), dst, n, out, raw), 0);
	assert_memory_equal(out, src, raw);

	/* A zero run compresses too. */
	memset(src, 0, raw);
	n = pm_codec_compress(c, src, raw, dst, bound);
	assert_true(n > 0);
	assert_int_equal(pm_codec_decompress(c, pm_codec_encoding(kind), dst, n, out, raw), 0);
	assert_memory_equal(out, src, raw);

	/* Incompressible: 0 ("send raw"). */
	fill_random(src, raw, 42);
	assert_int_equal(pm_codec_compress(c, src, raw, dst, bound), 0);
	/* Output buffer too small to be useful: 0 as well. */
	fill_compressible(src, raw);
	assert_int_equal(pm_codec_compress(c, src, raw, dst, 8), 0);

	/* Corrupt input is rejected, never overruns. */
	n = pm_codec_compress(c, src, raw, dst, bound);
	assert_true(n > 0);
	/* Truncated. */
	assert_int_equal(pm_codec_decompress(c, pm_codec_encoding(kind), dst, n / 2, out, raw), -EPROTO);
	/* Wrong expected size (one page short or long). */
	assert_int_equal(pm_codec_decompress(c, pm_codec_encoding(kind), dst, n, out, raw - PM_PAGE_SIZE), -EPROTO);
	/* Garbage. */
	fill_random(dst, n, 7);
	assert_int_equal(pm_codec_decompress(c, pm_codec_encoding(kind), dst, n, out, raw), -EPROTO);
	/* Not a compressed encoding. */
	assert_int_equal(pm_codec_decompress(c, PM_ENC_RAW, dst, n, out, raw), -EPROTO);
	assert_int_equal(pm_codec_decompress(c, PM_ENC_ZERO, dst, n, out, raw), -EPROTO);
	assert_int_equal(pm_codec_decompress(c, 77, dst, n, out, raw), -EPROTO);

	pm_codec_free(c);
	free(src);
	free(dst);
	free(out);
}

static void test_codec_lz4(void **state)
{
	assert_int_equal(pm_codec_encoding(PM_COMPRESS_LZ4), PM_ENC_LZ4);
	codec_roundtrip(PM_COMPRESS_LZ4, 0);
	codec_roundtrip(PM_COMPRESS_LZ4, 8);
}

static void test_codec_zstd(void **state)
{
	assert_int_equal(pm_codec_encoding(PM_COMPRESS_ZSTD), PM_ENC_ZSTD);
	codec_roundtrip(PM_COMPRESS_ZSTD, 0);
	codec_roundtrip(PM_COMPRESS_ZSTD, 19);
}

/* The stream of one codec is garbage to the other. */
static void test_codec_cross(void **state)
{
	size_t raw = NPG * PM_PAGE_SIZE;
	uint8_t *src = malloc(raw), *out = malloc(raw), *dst = malloc(2 * raw);
	struct pm_codec *lz = NULL, *zs = NULL;

	assert_int_equal(pm_codec_new(&lz, PM_COMPRESS_LZ4, 0), 0);
	assert_int_equal(pm_codec_new(&zs, PM_COMPRESS_ZSTD, 0), 0);
	fill_compressible(src, raw);
	size_t n = pm_codec_compress(zs, src, raw, dst, 2 * raw);
	assert_true(n > 0);
	assert_int_equal(pm_codec_decompress(lz, PM_ENC_LZ4, dst, n, out, raw), -EPROTO);
	/* Either codec object decodes either encoding by the frame's encoding. */
	assert_int_equal(pm_codec_decompress(lz, PM_ENC_ZSTD, dst, n, out, raw), 0);
	assert_memory_equal(out, src, raw);
	n = pm_codec_compress(lz, src, raw, dst, 2 * raw);
	assert_true(n > 0);
	assert_int_equal(pm_codec_decompress(zs, PM_ENC_ZSTD, dst, n, out, raw), -EPROTO);
	assert_int_equal(pm_codec_decompress(zs, PM_ENC_LZ4, dst, n, out, raw), 0);
	assert_memory_equal(out, src, raw);
	pm_codec_free(lz);
	pm_codec_free(zs);
	pm_codec_free(NULL);
	free(src);
	free(out);
	free(dst);
}

/* ----------------------------------------------------------------- report */

static void full_report(struct pm_report *r)
{
	memset(r, 0, sizeof(*r));
	r->role = "source";
	r->status = 0;
	snprintf(r->dirty_method, sizeof(r->dirty_method), "uffd-wp");
	r->channels = 4;
	r->barrier = true;
	r->serial = false;
	r->compress = PM_COMPRESS_ZSTD;
	r->vm_pages = 65536;
	r->setup_ms = 1.5;
	r->verify_dump_ms = 3.25;
	r->total_time_ms = 1234.25;
	r->downtime_ms = 12.5;
	r->bytes_sent = 300000000ull;
	r->pages_sent = 70000;
	r->zero_pages = 1234;
	r->frames = 999;
	r->throughput_mbps = 243.0625;
	r->nrounds = 3;
	for (unsigned i = 0; i < 3; i++) {
		r->rounds[i] = (struct pm_round_stat){ .round = i + 1, .dirty_at_start = 65536 >> i,
			.pages = 60000 >> (2 * i), .zero_pages = 1000 + i, .bytes = 250000000ull >> i,
			.duration_ms = 800.5 / (i + 1), .final = i == 2, .start_ms = 100.25 * i };
	}
	for (unsigned i = 0; i < 4; i++)
		r->channel_bytes[i] = 75000000ull + i;
	snprintf(r->switchover_reason, sizeof(r->switchover_reason), "converged");
	r->throttle_pct = 30;
	r->stale_pages = 0;
	r->pause_at_ms = 200.5;
	r->write_rate_asked_mbps = 400;
	r->write_rate_mbps = 399.5;
}

static void assert_reports_equal(const struct pm_report *a, const struct pm_report *b)
{
	assert_string_equal(a->role, b->role);
	assert_int_equal(a->status, b->status);
	assert_string_equal(a->error, b->error);
	assert_string_equal(a->dirty_method, b->dirty_method);
	assert_int_equal(a->channels, b->channels);
	assert_int_equal(a->barrier, b->barrier);
	assert_int_equal(a->serial, b->serial);
	assert_int_equal(a->compress, b->compress);
	assert_true(a->vm_pages == b->vm_pages);
	assert_true(a->setup_ms == b->setup_ms);
	assert_true(a->total_time_ms == b->total_time_ms);
	assert_true(a->downtime_ms == b->downtime_ms);
	assert_true(a->verify_dump_ms == b->verify_dump_ms);
	assert_true(a->bytes_sent == b->bytes_sent);
	assert_true(a->pages_sent == b->pages_sent);
	assert_true(a->zero_pages == b->zero_pages);
	assert_true(a->frames == b->frames);
	assert_true(a->throughput_mbps == b->throughput_mbps);
	assert_int_equal(a->nrounds, b->nrounds);
	for (unsigned i = 0; i < a->nrounds; i++) {
		assert_int_equal(a->rounds[i].round, b->rounds[i].round);
		assert_true(a->rounds[i].dirty_at_start == b->rounds[i].dirty_at_start);
		assert_true(a->rounds[i].pages == b->rounds[i].pages);
		assert_true(a->rounds[i].zero_pages == b->rounds[i].zero_pages);
		assert_true(a->rounds[i].bytes == b->rounds[i].bytes);
		assert_true(a->rounds[i].duration_ms == b->rounds[i].duration_ms);
		assert_true(a->rounds[i].start_ms == b->rounds[i].start_ms);
		assert_int_equal(a->rounds[i].final, b->rounds[i].final);
	}
	assert_string_equal(a->switchover_reason, b->switchover_reason);
	assert_int_equal(a->throttle_pct, b->throttle_pct);
	assert_true(a->stale_pages == b->stale_pages);
	assert_true(a->pause_at_ms == b->pause_at_ms);
	assert_true(a->write_rate_asked_mbps == b->write_rate_asked_mbps);
	assert_true(a->write_rate_mbps == b->write_rate_mbps);
}

static void test_report_roundtrip(void **state)
{
	struct pm_report *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
	char *s;

	full_report(a);
	s = pm_report_to_json(a);
	assert_non_null(s);
	/* The keys the issue names. */
	const char *keys[] = { "\"status\"", "\"total_time_ms\"", "\"downtime_ms\"", "\"rounds\"",
			       "\"pages\"", "\"bytes\"", "\"duration_ms\"", "\"bytes_sent\"",
			       "\"pages_sent\"", "\"zero_pages\"", "\"channels\"", "\"throughput_mbps\"" };
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		assert_non_null(strstr(s, keys[i]));
	assert_non_null(strstr(s, "\"completed\""));
	assert_int_equal(pm_report_from_json(s, b), 0);
	assert_reports_equal(a, b);
	free(s);

	/* A failed destination report: error and stale_pages survive. */
	full_report(a);
	a->role = "destination";
	a->status = -EIO;
	snprintf(a->error, sizeof(a->error), "channel 1: connection closed by peer \"quoted\"\n");
	a->stale_pages = 77;
	a->compress = PM_COMPRESS_LZ4;
	a->barrier = false;
	a->serial = true;
	s = pm_report_to_json(a);
	assert_non_null(strstr(s, "\"failed\""));
	assert_int_equal(pm_report_from_json(s, b), 0);
	assert_reports_equal(a, b);
	free(s);

	/* An empty report. */
	memset(a, 0, sizeof(*a));
	a->role = "source";
	s = pm_report_to_json(a);
	assert_int_equal(pm_report_from_json(s, b), 0);
	assert_reports_equal(a, b);
	free(s);
	free(a);
	free(b);
}

/* A full timeline keeps every sample's order and span: when it fills, every
 * other sample goes and the interval doubles. */
static void test_timeline_decimation(void **state)
{
	struct pm_timeline *tl = calloc(1, sizeof(*tl));
	struct pm_report *r = calloc(1, sizeof(*r));
	double t = 0;
	unsigned added = 0;

	pm_timeline_init(tl, 10);
	for (; t < 30000; t += 1) {
		if (!pm_timeline_due(tl, t, false))
			continue;
		/* Only one caller wins a due sample. */
		assert_false(pm_timeline_due(tl, t, false));
		struct pm_sample s = { .t_ms = t, .round = 1 + added / 100 };
		pm_timeline_add(tl, &s);
		added++;
	}
	struct pm_sample late = { .t_ms = 29999.5, .phase = PM_PH_DONE };
	assert_true(pm_timeline_due(tl, 0, true));       /* forced */
	pm_timeline_add(tl, &late);
	pm_timeline_report(tl, r);
	assert_true(added > PM_MAX_SAMPLES);
	assert_true(r->nsamples > PM_MAX_SAMPLES / 2 && r->nsamples <= PM_MAX_SAMPLES);
	assert_true(r->sample_interval_ms > 10);
	assert_true(r->samples[0].t_ms == 0);
	assert_int_equal(r->samples[r->nsamples - 1].phase, PM_PH_DONE);
	for (unsigned i = 1; i < r->nsamples; i++) {
		double gap = r->samples[i].t_ms - r->samples[i - 1].t_ms;
		assert_true(gap >= 0);
		assert_true(gap <= 2 * r->sample_interval_ms + 1);
	}
	/* In the JSON report, with rates between samples. */
	r->channels = 1;
	char *js = pm_report_to_json(r);
	assert_non_null(strstr(js, "\"timeline\""));
	assert_non_null(strstr(js, "\"channel_mbps\""));
	assert_non_null(strstr(js, "\"phase\": \"done\""));
	free(js);
	pm_timeline_destroy(tl);
	free(tl);
	free(r);
}

static void test_report_malformed(void **state)
{
	struct pm_report *r = calloc(1, sizeof(*r));
	const char *bad[] = { "", "{", "{\"status\":}", "[1,2,3]", "42", "\"text\"", "null",
			      "{\"status\":\"completed\"", "not json at all" };

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (pm_report_from_json(bad[i], r) != -EINVAL)
			fail_msg("'%s' was accepted", bad[i]);
	/* Wrongly typed fields do not crash. */
	assert_int_equal(pm_report_from_json("{\"rounds\": 5, \"channels\": \"x\", \"role\": [1]}", r), 0);
	assert_int_equal(r->nrounds, 0);
	assert_int_equal(pm_report_from_json("{\"rounds\": [1, \"a\", null, {}]}", r), 0);
	free(r);
}

static void test_report_print(void **state)
{
	struct pm_report *r = calloc(1, sizeof(*r));
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	full_report(r);
	pm_report_print(r, f);
	fclose(f);
	assert_non_null(strstr(buf, "(paused)"));
	assert_non_null(strstr(buf, "completed"));
	assert_non_null(strstr(buf, "4 channels"));
	assert_non_null(strstr(buf, "converged"));
	free(buf);
	free(r);
}

static void test_option_names(void **state)
{
	enum pm_compress c;
	enum pm_nonconverge p;

	for (int i = PM_COMPRESS_NONE; i <= PM_COMPRESS_ZSTD; i++) {
		assert_int_equal(pm_compress_parse(pm_compress_name(i), &c), 0);
		assert_int_equal(c, i);
	}
	assert_int_equal(pm_compress_parse("gzip", &c), -EINVAL);
	for (int i = PM_NC_THROTTLE; i <= PM_NC_ABORT; i++) {
		assert_int_equal(pm_nonconverge_parse(pm_nonconverge_name(i), &p), 0);
		assert_int_equal(p, i);
	}
	assert_int_equal(pm_nonconverge_parse("", &p), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_addr_ipv4),
		cmocka_unit_test(test_addr_ipv6),
		cmocka_unit_test(test_addr_bad),
		cmocka_unit_test(test_connect_refused),
		cmocka_unit_test(test_conn_recv_deadline),
		cmocka_unit_test(test_conn_send_deadline),
		cmocka_unit_test(test_conn_wake),
		cmocka_unit_test(test_conn_wake_mid_frame),
		cmocka_unit_test(test_tcp_tune),
		cmocka_unit_test(test_host_memory),
		cmocka_unit_test(test_codec_lz4),
		cmocka_unit_test(test_codec_zstd),
		cmocka_unit_test(test_codec_cross),
		cmocka_unit_test(test_report_roundtrip),
		cmocka_unit_test(test_report_malformed),
		cmocka_unit_test(test_timeline_decimation),
		cmocka_unit_test(test_report_print),
		cmocka_unit_test(test_option_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
