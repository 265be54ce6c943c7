/* SPDX-License-Identifier: MIT */
/* Cost of dirty tracking (not a test):
 *   bench_dirty [--mem MiB] [--method uffd-wp|soft-dirty] [--dirty PERCENT]
 * Guest-like memory (a memfd, fully populated), harvested in 2 MiB chunks:
 * a pass with nothing written, and a pass after writing PERCENT of the
 * pages (spread evenly).  Prints µs per chunk and ms per full pass. */
#include <pmigrate/dirty.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PG 4096ull
#define CHUNK 512ull /* pages: 2 MiB */

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int die(const char *what, const struct pm_err *e)
{
	fprintf(stderr, "bench_dirty: %s: %s\n", what, e->msg);
	return 1;
}

int main(int argc, char **argv)
{
	uint64_t mib = 1024, pct = 10, npages, dirty = 0, reported = 0;
	enum pm_dirty_method method = PM_DIRTY_AUTO;
	struct pm_dirty_tracker *t;
	struct pm_err err = { 0 };
	uint64_t bm[CHUNK / 64];
	uint8_t *mem;
	double t0, t1, ts;
	int fd;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--mem"))
			mib = strtoull(argv[i + 1], NULL, 0);
		else if (!strcmp(argv[i], "--dirty"))
			pct = strtoull(argv[i + 1], NULL, 0);
		else if (!strcmp(argv[i], "--method") &&
			 pm_dirty_method_parse(argv[i + 1], &method) == 0)
			;
		else {
			fprintf(stderr, "usage: bench_dirty [--mem MiB] [--method uffd-wp|soft-dirty] [--dirty PERCENT]\n");
			return 2;
		}
	}
	npages = mib * 256;
	fd = memfd_create("bench-guest", MFD_CLOEXEC);
	if (fd < 0 || ftruncate(fd, (off_t)(npages * PG)) < 0) {
		perror("memfd");
		return 1;
	}
	mem = mmap(NULL, npages * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (mem == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	for (uint64_t p = 0; p < npages; p++)
		mem[p * PG] = 1;

	t0 = now_s();
	if (pm_dirty_open(&t, mem, npages, method, &err) < 0)
		return die("open", &err);
	t1 = now_s();
	printf("method %s, %llu MiB memfd, open %.2f ms\n",
	       pm_dirty_method_name(pm_dirty_method_of(t)), (unsigned long long)mib,
	       (t1 - t0) * 1e3);

	for (int pass = 0; pass < 3; pass++) {
		const char *what = pass == 0 ? "initial (all dirty)" :
				   pass == 1 ? "nothing written" : "after writes";

		if (pass == 2) {
			uint64_t step = pct ? 100 / pct : 0;

			dirty = 0;
			for (uint64_t p = 0; step && p < npages; p += step, dirty++)
				mem[p * PG]++;
		}
		reported = 0;
		ts = now_s();
		if (pm_dirty_sync(t, &err) < 0)
			return die("sync", &err);
		t0 = now_s();
		for (uint64_t first = 0; first < npages; first += CHUNK) {
			uint64_t n = npages - first < CHUNK ? npages - first : CHUNK;

			if (pm_dirty_harvest(t, first, n, bm, &err) < 0)
				return die("harvest", &err);
			for (unsigned w = 0; w < CHUNK / 64; w++)
				reported += (uint64_t)__builtin_popcountll(bm[w]);
		}
		t1 = now_s();
		printf("  %-20s sync %8.2f ms, harvest %8.2f us/2MiB-chunk, pass %8.2f ms, %llu pages reported%s\n",
		       what, (t0 - ts) * 1e3, (t1 - t0) * 1e6 / (double)((npages + CHUNK - 1) / CHUNK),
		       (t1 - ts) * 1e3, (unsigned long long)reported,
		       pass == 2 ? "" : "");
		if (pass == 2 && reported != dirty)
			fprintf(stderr, "  (wrote %llu pages)\n", (unsigned long long)dirty);
	}
	t0 = now_s();
	{
		uint64_t c;

		if (pm_dirty_count(t, &c, &err) < 0)
			return die("count", &err);
	}
	printf("  count %.2f ms\n", (now_s() - t0) * 1e3);
	pm_dirty_close(t);
	munmap(mem, npages * PG);
	close(fd);
	return 0;
}
