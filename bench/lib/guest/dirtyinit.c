/* dirtyinit: PID 1 of the benchmark's tiny Linux guest (QEMU peer, scenario 3).
 *
 * Dirties pages of a buffer in uniform random order at a set rate and prints a
 * heartbeat line on the serial console every hb_ms (default 20) ms of guest time:
 *     hb <seq> rate=<MB/s achieved over the last second> pages=<total dirtied>
 * The host timestamps these lines on both ends of a migration: the gap between
 * the source's last line and the destination's first is the guest-visible pause.
 *
 * Parameters come from the kernel command line (the kernel hands unknown
 * key=value words to init as environment variables):
 *     dirty_rate=MB/s  (default 100)   dirty_mem=MiB  (default 128)   hb_ms=ms (20)
 *
 * Built static: gcc -O2 -static -o init dirtyinit.c
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t xs = 88172645463325252ull;
static uint64_t rnd(void)
{
	xs ^= xs << 13; xs ^= xs >> 7; xs ^= xs << 17;
	return xs;
}

int main(void)
{
	mkdir("/dev", 0755);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	int fd = open("/dev/ttyS0", O_RDWR | O_NOCTTY);
	if (fd < 0)
		fd = open("/dev/console", O_RDWR | O_NOCTTY);
	if (fd >= 0) {
		dup2(fd, 0); dup2(fd, 1); dup2(fd, 2);
	}
	setvbuf(stdout, NULL, _IOLBF, 0);

	const char *r = getenv("dirty_rate"), *m = getenv("dirty_mem"), *h = getenv("hb_ms");
	uint64_t hb_ns = (uint64_t)(h ? atol(h) : 20) * 1000000ull;
	if (hb_ns == 0)
		hb_ns = 20000000ull;
	double rate_mb = r ? atof(r) : 100.0;
	size_t mem = (size_t)(m ? atol(m) : 128) << 20;
	size_t npages = mem / 4096;
	volatile unsigned char *buf = mmap(NULL, mem, PROT_READ | PROT_WRITE,
					   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (buf == MAP_FAILED) {
		printf("dirtyinit: mmap %zu MiB failed\n", mem >> 20);
		for (;;) pause();
	}
	printf("dirtyinit: start rate=%.0fMB/s mem=%zuMiB\n", rate_mb, mem >> 20);

	const double pages_per_ns = rate_mb * 1e6 / 4096.0 / 1e9;
	uint64_t t0 = now_ns(), next_hb = t0 + hb_ns, seq = 0;
	uint64_t done = 0, win_t = t0, win_pages = 0;
	double achieved = 0;
	for (;;) {
		uint64_t t = now_ns();
		uint64_t due = (uint64_t)((double)(t - t0) * pages_per_ns);
		/* Never build a backlog larger than 50 ms of work (after a pause). */
		uint64_t cap = (uint64_t)(pages_per_ns * 50e6) + 1;
		if (due > done + cap)
			done = due - cap;
		while (done < due) {
			size_t p = rnd() % npages;
			buf[p * 4096 + (rnd() & 4095)] = (unsigned char)done;
			done++;
			win_pages++;
		}
		if (t >= next_hb) {
			if (t - win_t >= 1000000000ull) {
				achieved = (double)win_pages * 4096.0 / 1e6 /
					   ((double)(t - win_t) / 1e9);
				win_t = t;
				win_pages = 0;
			}
			printf("hb %llu rate=%.0f pages=%llu\n", (unsigned long long)seq++,
			       achieved, (unsigned long long)done);
			next_hb += hb_ns;
			if (next_hb < t)
				next_hb = t + hb_ns;
		}
		if (done >= due) {
			struct timespec ts = {0, 1000000};	/* 1 ms */
			nanosleep(&ts, NULL);
		}
	}
}
