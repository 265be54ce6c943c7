/* SPDX-License-Identifier: MIT */
/* mmap_bench: why guest memory is mapped once.
 *
 * N threads copy pages into guest memory held in a memfd, batch by batch:
 *   once     the memfd is mapped once; threads copy straight into it
 *   remap    each batch maps its pages with a fresh mmap, copies, munmaps
 *            (what PMigrate-Xen's workers did per batch of foreign pages)
 *   remap-populate   same, with MAP_POPULATE (no per-page faults, but the
 *            page-table set-up moves into the mmap call)
 * Every mmap/munmap takes the process's mmap lock for writing and munmap
 * shoots down TLB entries on every CPU running a thread of the process, so
 * remapping threads serialize; the mapping made once scales with cores.
 */
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/mman.h>

#include "bench_util.h"

enum mode { M_ONCE, M_REMAP, M_REMAP_POPULATE, NMODES };
static const char *MNAME[] = { "once", "remap", "remap-populate" };

struct opts {
	int threads[16];
	int nthreads;
	double seconds;
	uint64_t pages;  /* guest memory, pages */
	uint64_t batch;  /* pages per batch */
	int reps;
	bool json;
};

struct run {
	const struct opts *o;
	enum mode mode;
	int fd;
	uint8_t *map;  /* the mapping made once */
	int nthreads;
	pthread_barrier_t start;
	atomic_bool stop;
	/* next batch to copy, shared: all thread counts sweep the whole guest
	 * memory in the same order, so cache locality does not depend on N */
	atomic_uint_fast64_t next;
};

struct worker {
	struct run *run;
	int id;
	uint64_t pages, batches;
	int err;
	pthread_t th;
};

static void *worker_main(void *arg)
{
	struct worker *wk = arg;
	struct run *run = wk->run;
	const struct opts *o = run->o;
	uint64_t nbatches = o->pages / o->batch;
	size_t blen = (size_t)(o->batch * BENCH_PAGE);
	uint8_t *src = aligned_alloc(BENCH_PAGE, blen);

	if (!src)
		abort();
	memset(src, wk->id + 1, blen);
	pthread_barrier_wait(&run->start);
	while (!atomic_load_explicit(&run->stop, memory_order_relaxed)) {
		uint64_t b = atomic_fetch_add_explicit(&run->next, 1,
						       memory_order_relaxed) % nbatches;
		off_t off = (off_t)(b * blen);
		uint8_t *dst;

		if (run->mode == M_ONCE) {
			dst = run->map + off;
		} else {
			int flags = MAP_SHARED |
				    (run->mode == M_REMAP_POPULATE ? MAP_POPULATE : 0);
			dst = mmap(NULL, blen, PROT_READ | PROT_WRITE, flags, run->fd, off);
			if (dst == MAP_FAILED) {
				wk->err = errno;
				break;
			}
		}
		for (uint64_t p = 0; p < o->batch; p++)
			memcpy(dst + p * BENCH_PAGE, src + p * BENCH_PAGE, BENCH_PAGE);
		if (run->mode != M_ONCE && munmap(dst, blen) != 0) {
			wk->err = errno;
			break;
		}
		wk->pages += o->batch;
		wk->batches++;
	}
	free(src);
	return NULL;
}

struct result {
	double pages_s;
	double cpus;  /* CPU seconds used per wall second */
};

static struct result measure(const struct opts *o, int fd, uint8_t *map,
			     enum mode m, int nthreads)
{
	struct result best = { 0, 0 };

	for (int rep = 0; rep < o->reps; rep++) {
		struct run run = { .o = o, .mode = m, .fd = fd, .map = map,
				   .nthreads = nthreads };
		struct worker *wk = calloc((size_t)nthreads, sizeof(*wk));
		if (!wk)
			abort();
		atomic_init(&run.stop, false);
		atomic_init(&run.next, 0);
		pthread_barrier_init(&run.start, NULL, (unsigned)nthreads + 1);
		for (int i = 0; i < nthreads; i++) {
			wk[i].run = &run;
			wk[i].id = i;
			if (pthread_create(&wk[i].th, NULL, worker_main, &wk[i]) != 0) {
				perror("pthread_create");
				exit(1);
			}
		}
		pthread_barrier_wait(&run.start);
		double t0 = bench_now(), c0 = bench_cpu();
		bench_sleep(o->seconds);
		atomic_store(&run.stop, true);
		uint64_t pages = 0;
		for (int i = 0; i < nthreads; i++) {
			pthread_join(wk[i].th, NULL);
			if (wk[i].err) {
				fprintf(stderr, "mmap_bench: %s: %s\n", MNAME[m],
					strerror(wk[i].err));
				exit(1);
			}
			pages += wk[i].pages;
		}
		double dt = bench_now() - t0, dc = bench_cpu() - c0;
		pthread_barrier_destroy(&run.start);
		free(wk);
		if ((double)pages / dt > best.pages_s) {
			best.pages_s = (double)pages / dt;
			best.cpus = dc / dt;
		}
	}
	return best;
}

static void usage(const char *prog, FILE *f)
{
	fprintf(f,
"usage: %s [options]\n"
"  -t, --threads LIST   thread counts                  (default 1,2,4,8)\n"
"  -s, --seconds S      duration of each measurement   (default 0.4)\n"
"  -r, --reps N         repetitions, best is reported  (default 1)\n"
"  -p, --pages N        guest memory in 4 KiB pages    (default 16384)\n"
"  -b, --batch N        pages per batch                (default 32)\n"
"  -j, --json           print JSON instead of a table\n", prog);
}

int main(int argc, char **argv)
{
	struct opts o = { .seconds = 0.4, .pages = 16384, .batch = 32, .reps = 1 };
	static const struct option longopts[] = {
		{ "threads", required_argument, 0, 't' },
		{ "seconds", required_argument, 0, 's' },
		{ "reps", required_argument, 0, 'r' },
		{ "pages", required_argument, 0, 'p' },
		{ "batch", required_argument, 0, 'b' },
		{ "json", no_argument, 0, 'j' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *threads = "1,2,4,8";
	int c;

	while ((c = getopt_long(argc, argv, "t:s:r:p:b:jh", longopts, NULL)) != -1) {
		switch (c) {
		case 't': threads = optarg; break;
		case 's': o.seconds = bench_parse_double(argv[0], "--seconds", optarg); break;
		case 'r': o.reps = (int)bench_parse_double(argv[0], "--reps", optarg); break;
		case 'p': o.pages = (uint64_t)bench_parse_double(argv[0], "--pages", optarg); break;
		case 'b': o.batch = (uint64_t)bench_parse_double(argv[0], "--batch", optarg); break;
		case 'j': o.json = true; break;
		case 'h': usage(argv[0], stdout); return 0;
		default: usage(argv[0], stderr); return 2;
		}
	}
	o.nthreads = bench_parse_list(threads, o.threads, 16);
	if (o.nthreads <= 0 || o.reps < 1 || o.batch < 1 || o.pages < o.batch) {
		usage(argv[0], stderr);
		return 2;
	}
	o.pages -= o.pages % o.batch;

	size_t bytes = (size_t)o.pages * BENCH_PAGE;
	int fd = memfd_create("pmigrate-guest", MFD_CLOEXEC);
	if (fd < 0 || ftruncate(fd, (off_t)bytes) != 0) {
		perror("memfd");
		return 1;
	}
	/* the mapping made once; touching it allocates the memfd's pages so
	 * no mode pays for page allocation during the measurement */
	uint8_t *map = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
			    MAP_SHARED | MAP_POPULATE, fd, 0);
	if (map == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	memset(map, 0, bytes);

	struct result res[16][NMODES];
	for (int t = 0; t < o.nthreads; t++)
		for (int m = 0; m < NMODES; m++)
			res[t][m] = measure(&o, fd, map, (enum mode)m, o.threads[t]);

	if (o.json) {
		printf("{\n  \"benchmark\": \"mmap_bench\",\n  \"cpus\": %ld,\n"
		       "  \"params\": {\"seconds\": %g, \"reps\": %d, \"pages\": %llu, "
		       "\"batch\": %llu},\n  \"results\": [\n", bench_nproc(),
		       o.seconds, o.reps, (unsigned long long)o.pages,
		       (unsigned long long)o.batch);
		for (int t = 0; t < o.nthreads; t++) {
			for (int m = 0; m < NMODES; m++) {
				bool last = t + 1 == o.nthreads && m + 1 == NMODES;
				const struct result *r = &res[t][m];
				printf("    {\"threads\": %d, \"mode\": \"%s\", "
				       "\"pages_per_s\": %.0f, \"gib_per_s\": %.3f, "
				       "\"cpus_used\": %.2f, \"once_over_this\": %.3f, "
				       "\"vs_first_thread_count\": %.3f}%s\n",
				       o.threads[t], MNAME[m], r->pages_s,
				       r->pages_s * BENCH_PAGE / (1024.0 * 1024 * 1024),
				       r->cpus, res[t][M_ONCE].pages_s / r->pages_s,
				       r->pages_s / res[0][m].pages_s, last ? "" : ",");
			}
		}
		printf("  ]\n}\n");
	} else {
		printf("mmap_bench: %ld CPUs, %.2f s x %d per cell, %llu pages (%.0f MiB) "
		       "in a memfd, %llu pages per batch\n\n", bench_nproc(), o.seconds,
		       o.reps, (unsigned long long)o.pages,
		       (double)bytes / (1024 * 1024), (unsigned long long)o.batch);
		printf("%7s  %-15s %10s %8s %6s %14s %10s %8s\n", "threads", "mode",
		       "kpages/s", "GiB/s", "cpus", "kpages/cpu-s", "once/this",
		       "scaling");
		for (int t = 0; t < o.nthreads; t++) {
			for (int m = 0; m < NMODES; m++) {
				const struct result *r = &res[t][m];
				printf("%7d  %-15s %10.1f %8.2f %6.2f %14.1f %10.2f %8.2f\n",
				       o.threads[t], MNAME[m], r->pages_s / 1e3,
				       r->pages_s * BENCH_PAGE / (1024.0 * 1024 * 1024),
				       r->cpus, r->cpus > 0 ? r->pages_s / r->cpus / 1e3 : 0,
				       res[t][M_ONCE].pages_s / r->pages_s,
				       r->pages_s / res[0][m].pages_s);
			}
			printf("\n");
		}
		printf("cpus: CPU seconds used per wall second; scaling: throughput "
		       "relative to the first thread count\n");
	}
	munmap(map, bytes);
	close(fd);
	return 0;
}
