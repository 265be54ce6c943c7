// SPDX-License-Identifier: MIT
/* pmvm-workload: /init of the Linux guest's initramfs (any VMM: pmvm or
 * QEMU).  It writes guest memory at a set rate and pattern, prints a
 * heartbeat line on the console every few milliseconds (so the host, which
 * timestamps the lines as they arrive, measures the pause the guest saw),
 * and keeps checking its own memory, as pmvm's verifier guest does:
 *
 *   every page of the working set holds a stamp that depends on the page
 *   and on how many times it was written; a table (also in guest memory)
 *   keeps the count.  One thread writes and checks, so a page is never
 *   checked half-written; every page is re-checked once per sweep.
 *
 * A page that lost a write in a migration no longer matches its count.
 * Settings come from the kernel command line (Linux hands unknown
 * KEY=VALUE words to init as environment variables):
 *
 *   pmw_mem=MiB        working set (default 64)
 *   pmw_rate=MB/s      page writes per second, in MB (10^6 B) (default 20; 0 = none)
 *   pmw_pattern=P      seq | random | hot (90 % of writes to 10 % of the pages)
 *   pmw_check=MB/s     how fast the sweep re-reads pages (default 64)
 *   pmw_hb_ms=N        heartbeat period (default 10)
 *   pmw_jump_ms=N      a clock step larger than this is reported (default 1000)
 *   pmw_port=0|1       also write pmvm's heartbeat port 0xf5 (default 1), through
 *                      /dev/port: the kernel's OUT runs at CPL 0, where no I/O
 *                      bitmap is consulted (a user-space OUT after a migration
 *                      faults under QEMU's TCG, which takes only an "available"
 *                      TSS type where KVM restores the architectural "busy")
 *
 * Console lines, each complete in one write():
 *   PMW START ...                  settings
 *   PMW READY pages <n>            working set stamped: migrate from now on
 *   HB <seq> <ms>                  heartbeat; ms = guest CLOCK_MONOTONIC
 *   CHECK OK <sweep> pages <n> writes <w>   a whole sweep matched
 *   CHECK FAIL page <i> word <j> have <x> want <y>
 *   CLOCK JUMP <ms> | CLOCK BACKWARDS <ns>
 * On a failure it keeps running (as PID 1 it must not exit) but stops
 * checking, so the first FAIL is the one reported. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WORDS (PAGE / 8)
#define HB_PORT 0xf5

enum pattern { SEQ, RANDOM, HOT };

struct cfg {
	uint64_t mem_mib, rate_mb, check_mb, hb_ms, jump_ms;
	enum pattern pattern;
	int port;                      /* fd of /dev/port, or -1 */
};

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	/* One write per line: lines never interleave with the kernel's. */
	while (write(STDOUT_FILENO, buf, (size_t)n) < 0 && errno == EINTR)
		;
}

static uint64_t env_num(const char *name, uint64_t def)
{
	const char *v = getenv(name);
	char *end;
	unsigned long long x;

	if (!v || !*v)
		return def;
	errno = 0;
	x = strtoull(v, &end, 10);
	if (errno || *end) {
		say("PMW bad %s=%s, using %llu", name, v, (unsigned long long)def);
		return def;
	}
	return x;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: the random and hot patterns. */
static uint64_t rnd(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545f4914f6cdd1dull;
}

static inline uint64_t stamp(uint64_t page, uint64_t ver, unsigned word)
{
	return (page * 0x9e3779b97f4a7c15ull) ^ (ver << 24) ^ ((uint64_t)word * 0xff51afd7ed558ccdull);
}

static void write_page(uint64_t *p, uint64_t page, uint32_t ver)
{
	for (unsigned j = 0; j < WORDS; j++)
		p[j] = stamp(page, ver, j);
}

/* Returns the first word that does not match, or -1. */
static int check_page(const uint64_t *p, uint64_t page, uint32_t ver)
{
	for (unsigned j = 0; j < WORDS; j++)
		if (p[j] != stamp(page, ver, j))
			return (int)j;
	return -1;
}

static void idle_forever(void)
{
	for (;;)
		pause();
}

int main(void)
{
	struct cfg c;
	const char *pat = getenv("pmw_pattern");
	uint64_t npages, seed = 0x853c49e6748fea9bull, next_seq = 0, sweep = 0, swept = 0;
	uint64_t writes = 0, hb_seq = 0, t0, last, next_hb, w_credit = 0, c_credit = 0;
	uint64_t hot;
	uint32_t *ver;
	uint8_t *mem;
	int failed = 0;

	c.mem_mib = env_num("pmw_mem", 64);
	c.rate_mb = env_num("pmw_rate", 20);
	c.check_mb = env_num("pmw_check", 64);
	c.hb_ms = env_num("pmw_hb_ms", 10);
	c.jump_ms = env_num("pmw_jump_ms", 1000);
	c.port = -1;
	if (env_num("pmw_port", 1)) {
		c.port = open("/dev/port", O_WRONLY | O_CLOEXEC);
		if (c.port < 0)
			say("PMW no heartbeat port: /dev/port: %s", strerror(errno));
	}
	c.pattern = !pat || !strcmp(pat, "random") ? RANDOM : !strcmp(pat, "seq") ? SEQ : HOT;
	if (pat && strcmp(pat, "random") && strcmp(pat, "seq") && strcmp(pat, "hot"))
		say("PMW bad pmw_pattern=%s, using hot", pat);
	if (c.mem_mib == 0)
		c.mem_mib = 1;
	if (c.hb_ms == 0)
		c.hb_ms = 1;
	say("PMW START mem=%lluMiB rate=%lluMB/s pattern=%s check=%lluMB/s hb=%llums",
	    (unsigned long long)c.mem_mib, (unsigned long long)c.rate_mb,
	    c.pattern == SEQ ? "seq" : c.pattern == RANDOM ? "random" : "hot",
	    (unsigned long long)c.check_mb, (unsigned long long)c.hb_ms);

	npages = c.mem_mib * (1u << 20) / PAGE;
	hot = npages / 10 ? npages / 10 : 1;
	mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
		   -1, 0);
	ver = calloc(npages, sizeof(*ver));
	if (mem == MAP_FAILED || !ver) {
		say("PMW FAIL cannot allocate %llu MiB", (unsigned long long)c.mem_mib);
		idle_forever();
	}
	for (uint64_t i = 0; i < npages; i++)
		write_page((uint64_t *)(mem + i * PAGE), i, 0);
	say("PMW READY pages %llu", (unsigned long long)npages);

	t0 = last = now_ns();
	next_hb = t0;
	for (;;) {
		uint64_t t = now_ns(), dt;

		if (t < last) {
			say("CLOCK BACKWARDS %llu", (unsigned long long)(last - t));
			t = last;
		}
		dt = t - last;
		if (dt > c.jump_ms * 1000000ull)
			say("CLOCK JUMP %llu", (unsigned long long)(dt / 1000000));
		last = t;
		/* Credits in pages: rate * dt, capped so a long stall does not
		 * turn into a burst. */
		w_credit += c.rate_mb * 1000000ull / PAGE * (dt > 100000000 ? 100000000 : dt);
		c_credit += c.check_mb * 1000000ull / PAGE * (dt > 100000000 ? 100000000 : dt);
		while (w_credit >= 1000000000ull) {
			uint64_t i;

			w_credit -= 1000000000ull;
			if (c.pattern == SEQ)
				i = next_seq++ % npages;
			else if (c.pattern == RANDOM)
				i = rnd(&seed) % npages;
			else
				i = rnd(&seed) % 10 ? rnd(&seed) % hot : rnd(&seed) % npages;
			write_page((uint64_t *)(mem + i * PAGE), i, ++ver[i]);
			writes++;
		}
		while (!failed && c_credit >= 1000000000ull) {
			uint64_t i = swept++;
			int j;

			c_credit -= 1000000000ull;
			j = check_page((const uint64_t *)(mem + i * PAGE), i, ver[i]);
			if (j >= 0) {
				const uint64_t *p = (const uint64_t *)(mem + i * PAGE);

				say("CHECK FAIL page %llu word %d have %016llx want %016llx (count %u)",
				    (unsigned long long)i, j, (unsigned long long)p[j],
				    (unsigned long long)stamp(i, ver[i], (unsigned)j), ver[i]);
				failed = 1;
			}
			if (swept == npages) {
				swept = 0;
				say("CHECK OK %llu pages %llu writes %llu", (unsigned long long)++sweep,
				    (unsigned long long)npages, (unsigned long long)writes);
			}
		}
		if (t >= next_hb) {
			say("HB %llu %llu", (unsigned long long)++hb_seq, (unsigned long long)((t - t0) / 1000000));
			if (c.port >= 0 && pwrite(c.port, "\1", 1, HB_PORT) != 1)
				say("PMW heartbeat port write failed: %s", strerror(errno));
			next_hb += c.hb_ms * 1000000ull;
			if (next_hb < t)
				next_hb = t + c.hb_ms * 1000000ull;
		}
		/* Sleep to the next heartbeat: writes and checks come in bursts
		 * of one period (every wakeup costs the guest exits). */
		uint64_t nap = next_hb > t ? next_hb - t : 0;
		if (nap) {
			struct timespec ts = { 0, (long)nap };

			nanosleep(&ts, NULL);
		}
	}
}
