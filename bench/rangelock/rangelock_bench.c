/* SPDX-License-Identifier: MIT */
/* rangelock_bench: the pmigrate range lock against one global
 * pthread_rwlock, one global mutex and a striped per-page rwlock array.
 *
 * Each thread repeatedly locks a range of pages [s, e), copies a 4 KiB page
 * per page of the range (writers copy into guest memory, readers out of it),
 * and unlocks.  Workloads:
 *   disjoint  each thread works in its own slice of guest memory
 *   overlap   all threads pick random ranges in one shared hot region
 * Prints ops/s and GiB/s per lock and the ratios; --json for machines.
 */
#include <pmigrate/rangelock.h>

#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/mman.h>

#include "bench_util.h"

struct opts {
	int threads[16];
	int nthreads;
	double seconds;
	uint64_t pages;      /* guest memory size, pages */
	uint64_t hot;        /* shared region of the overlap workload, pages */
	uint64_t max_len;    /* ranges are 1..max_len pages */
	unsigned write_pct;
	unsigned stripes;
	int reps;
	bool json;
};

/* ------------------------------ locks ------------------------------ */

struct lock_ops {
	const char *name;
	void *(*create)(const struct opts *o);
	void (*destroy)(void *l);
	/* tok: per-acquisition storage the caller keeps until unlock */
	void (*lock)(void *l, void *tok, uint64_t s, uint64_t e, bool wr);
	void (*unlock)(void *l, void *tok, uint64_t s, uint64_t e, bool wr);
};

/* pmigrate range lock */
static void *rl_create(const struct opts *o)
{
	(void)o;
	struct pm_rangelock *rl = malloc(sizeof(*rl));
	if (!rl || pm_rangelock_init(rl) != 0)
		abort();
	return rl;
}
static void rl_destroy(void *l) { pm_rangelock_destroy(l); free(l); }
static void rl_lock(void *l, void *tok, uint64_t s, uint64_t e, bool wr)
{
	if (wr)
		pm_range_wrlock(l, tok, s, e);
	else
		pm_range_rdlock(l, tok, s, e);
}
static void rl_unlock(void *l, void *tok, uint64_t s, uint64_t e, bool wr)
{
	(void)s; (void)e; (void)wr;
	pm_range_unlock(l, tok);
}

/* one global pthread_rwlock */
static void *rw_create(const struct opts *o)
{
	(void)o;
	pthread_rwlock_t *l = malloc(sizeof(*l));
	if (!l || pthread_rwlock_init(l, NULL) != 0)
		abort();
	return l;
}
static void rw_destroy(void *l) { pthread_rwlock_destroy(l); free(l); }
static void rw_lock(void *l, void *tok, uint64_t s, uint64_t e, bool wr)
{
	(void)tok; (void)s; (void)e;
	if (wr)
		pthread_rwlock_wrlock(l);
	else
		pthread_rwlock_rdlock(l);
}
static void rw_unlock(void *l, void *tok, uint64_t s, uint64_t e, bool wr)
{
	(void)tok; (void)s; (void)e; (void)wr;
	pthread_rwlock_unlock(l);
}

/* one global mutex */
static void *mx_create(const struct opts *o)
{
	(void)o;
	pthread_mutex_t *l = malloc(sizeof(*l));
	if (!l || pthread_mutex_init(l, NULL) != 0)
		abort();
	return l;
}
static void mx_destroy(void *l) { pthread_mutex_destroy(l); free(l); }
static void mx_lock(void *l, void *tok, uint64_t s, uint64_t e, bool wr)
{
	(void)tok; (void)s; (void)e; (void)wr;
	pthread_mutex_lock(l);
}
static void mx_unlock(void *l, void *tok, uint64_t s, uint64_t e, bool wr)
{
	(void)tok; (void)s; (void)e; (void)wr;
	pthread_mutex_unlock(l);
}

/* striped per-page rwlocks: page p is covered by stripe p % n; a range
 * takes its stripes in ascending index order (no deadlock). */
struct striped {
	unsigned n;
	struct { pthread_rwlock_t l; } __attribute__((aligned(64))) *s;
};
static void *st_create(const struct opts *o)
{
	struct striped *st = malloc(sizeof(*st));
	if (!st)
		abort();
	st->n = o->stripes;
	st->s = aligned_alloc(64, sizeof(*st->s) * st->n);
	if (!st->s)
		abort();
	for (unsigned i = 0; i < st->n; i++)
		pthread_rwlock_init(&st->s[i].l, NULL);
	return st;
}
static void st_destroy(void *l)
{
	struct striped *st = l;
	for (unsigned i = 0; i < st->n; i++)
		pthread_rwlock_destroy(&st->s[i].l);
	free(st->s);
	free(st);
}
/* Locks or unlocks the stripes of [s, e) in ascending index order. */
static void st_each(struct striped *st, uint64_t s, uint64_t e, bool wr, bool lock)
{
	uint64_t n = st->n;
	unsigned lo1, hi1, lo2 = 0, hi2 = 0;  /* [lo1,hi1) then [lo2,hi2) */
	if (e - s >= n) {
		lo1 = 0; hi1 = (unsigned)n;
	} else {
		unsigned a = (unsigned)(s % n), b = (unsigned)((e - 1) % n) + 1;
		if (a < b) {
			lo1 = a; hi1 = b;
		} else {  /* wraps: [0, b) then [a, n) */
			lo1 = 0; hi1 = b; lo2 = a; hi2 = (unsigned)n;
		}
	}
	for (int part = 0; part < 2; part++) {
		unsigned lo = part ? lo2 : lo1, hi = part ? hi2 : hi1;
		for (unsigned i = lo; i < hi; i++) {
			if (!lock)
				pthread_rwlock_unlock(&st->s[i].l);
			else if (wr)
				pthread_rwlock_wrlock(&st->s[i].l);
			else
				pthread_rwlock_rdlock(&st->s[i].l);
		}
	}
}
static void st_lock(void *l, void *tok, uint64_t s, uint64_t e, bool wr)
{
	(void)tok;
	st_each(l, s, e, wr, true);
}
static void st_unlock(void *l, void *tok, uint64_t s, uint64_t e, bool wr)
{
	(void)tok;
	st_each(l, s, e, wr, false);
}

static const struct lock_ops LOCKS[] = {
	{ "rangelock", rl_create, rl_destroy, rl_lock, rl_unlock },
	{ "rwlock",    rw_create, rw_destroy, rw_lock, rw_unlock },
	{ "mutex",     mx_create, mx_destroy, mx_lock, mx_unlock },
	{ "striped",   st_create, st_destroy, st_lock, st_unlock },
};
#define NLOCKS (sizeof(LOCKS) / sizeof(LOCKS[0]))

/* ---------------------------- workload ---------------------------- */

enum workload { W_DISJOINT, W_OVERLAP };
static const char *WNAME[] = { "disjoint", "overlap" };

struct run {
	const struct opts *o;
	const struct lock_ops *ops;
	void *lock;
	uint8_t *guest;
	enum workload w;
	int nthreads;
	pthread_barrier_t start;
	atomic_bool stop;
};

struct worker {
	struct run *run;
	int id;
	uint64_t ops, pages;
	pthread_t th;
};

static void *worker_main(void *arg)
{
	struct worker *wk = arg;
	struct run *run = wk->run;
	const struct opts *o = run->o;
	uint8_t *buf = aligned_alloc(BENCH_PAGE, BENCH_PAGE);
	uint64_t seed = 0x853c49e6748fea9bull + (uint64_t)wk->id * 0x9e3779b97f4a7c15ull;
	uint64_t base, span;
	struct pm_range tok;  /* storage for the range lock's record */

	if (!buf)
		abort();
	memset(buf, wk->id + 1, BENCH_PAGE);
	if (run->w == W_DISJOINT) {
		span = o->pages / (uint64_t)run->nthreads;
		base = span * (uint64_t)wk->id;
	} else {
		span = o->hot;
		base = 0;
	}
	uint64_t max_len = o->max_len < span ? o->max_len : span;

	pthread_barrier_wait(&run->start);
	while (!atomic_load_explicit(&run->stop, memory_order_relaxed)) {
		uint64_t r = bench_rand(&seed);
		uint64_t len = 1 + r % max_len;
		uint64_t s = base + (r >> 16) % (span - len + 1);
		uint64_t e = s + len;
		bool wr = (r >> 40) % 100 < o->write_pct;

		run->ops->lock(run->lock, &tok, s, e, wr);
		for (uint64_t p = s; p < e; p++) {
			if (wr)
				memcpy(run->guest + p * BENCH_PAGE, buf, BENCH_PAGE);
			else
				memcpy(buf, run->guest + p * BENCH_PAGE, BENCH_PAGE);
		}
		run->ops->unlock(run->lock, &tok, s, e, wr);
		wk->ops++;
		wk->pages += len;
	}
	/* keep the reads observable */
	__asm__ __volatile__("" : : "r"(buf) : "memory");
	free(buf);
	return NULL;
}

struct result {
	enum workload w;
	int threads;
	const char *lock;
	double ops_s, pages_s;
	double cpus;  /* CPU seconds used per wall second: the share we got */
};

static struct result measure(const struct opts *o, uint8_t *guest,
			     const struct lock_ops *ops, enum workload w,
			     int nthreads)
{
	struct result best = { w, nthreads, ops->name, 0, 0, 0 };

	for (int rep = 0; rep < o->reps; rep++) {
		struct run run = { .o = o, .ops = ops, .guest = guest, .w = w,
				   .nthreads = nthreads };
		struct worker *wk = calloc((size_t)nthreads, sizeof(*wk));
		if (!wk)
			abort();
		run.lock = ops->create(o);
		atomic_init(&run.stop, false);
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
		uint64_t nops = 0, npages = 0;
		for (int i = 0; i < nthreads; i++) {
			pthread_join(wk[i].th, NULL);
			nops += wk[i].ops;
			npages += wk[i].pages;
		}
		double dt = bench_now() - t0, dc = bench_cpu() - c0;
		pthread_barrier_destroy(&run.start);
		ops->destroy(run.lock);
		free(wk);
		/* best of reps: the machine is shared, noise only slows down */
		if ((double)nops / dt > best.ops_s) {
			best.ops_s = (double)nops / dt;
			best.pages_s = (double)npages / dt;
			best.cpus = dc / dt;
		}
	}
	return best;
}

static void usage(const char *prog, FILE *f)
{
	fprintf(f,
"usage: %s [options]\n"
"  -t, --threads LIST   thread counts, e.g. 2,4,8     (default 1,2,4)\n"
"  -s, --seconds S      duration of each measurement   (default 0.4)\n"
"  -r, --reps N         repetitions, best is reported  (default 1)\n"
"  -p, --pages N        guest memory in 4 KiB pages    (default 8192)\n"
"  -H, --hot N          shared region of 'overlap'     (default 128)\n"
"  -l, --max-len N      ranges are 1..N pages          (default 16)\n"
"  -w, --write-pct P    share of writers, percent      (default 50)\n"
"  -S, --stripes N      locks in the striped array     (default 1024)\n"
"  -j, --json           print JSON instead of a table\n", prog);
}

int main(int argc, char **argv)
{
	struct opts o = { .seconds = 0.4, .pages = 8192, .hot = 128, .max_len = 16,
			  .write_pct = 50, .stripes = 1024, .reps = 1 };
	static const struct option longopts[] = {
		{ "threads", required_argument, 0, 't' },
		{ "seconds", required_argument, 0, 's' },
		{ "reps", required_argument, 0, 'r' },
		{ "pages", required_argument, 0, 'p' },
		{ "hot", required_argument, 0, 'H' },
		{ "max-len", required_argument, 0, 'l' },
		{ "write-pct", required_argument, 0, 'w' },
		{ "stripes", required_argument, 0, 'S' },
		{ "json", no_argument, 0, 'j' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *threads = "1,2,4";
	int c;

	while ((c = getopt_long(argc, argv, "t:s:r:p:H:l:w:S:jh", longopts, NULL)) != -1) {
		switch (c) {
		case 't': threads = optarg; break;
		case 's': o.seconds = bench_parse_double(argv[0], "--seconds", optarg); break;
		case 'r': o.reps = (int)bench_parse_double(argv[0], "--reps", optarg); break;
		case 'p': o.pages = (uint64_t)bench_parse_double(argv[0], "--pages", optarg); break;
		case 'H': o.hot = (uint64_t)bench_parse_double(argv[0], "--hot", optarg); break;
		case 'l': o.max_len = (uint64_t)bench_parse_double(argv[0], "--max-len", optarg); break;
		case 'w': o.write_pct = (unsigned)atoi(optarg); break;
		case 'S': o.stripes = (unsigned)bench_parse_double(argv[0], "--stripes", optarg); break;
		case 'j': o.json = true; break;
		case 'h': usage(argv[0], stdout); return 0;
		default: usage(argv[0], stderr); return 2;
		}
	}
	o.nthreads = bench_parse_list(threads, o.threads, 16);
	if (o.nthreads <= 0 || o.write_pct > 100 || o.reps < 1 || o.max_len < 1 ||
	    o.hot < 1 || o.hot > o.pages || o.stripes < 1) {
		usage(argv[0], stderr);
		return 2;
	}
	for (int i = 0; i < o.nthreads; i++) {
		if (o.pages / (uint64_t)o.threads[i] < 1) {
			fprintf(stderr, "%s: --pages too small for %d threads\n",
				argv[0], o.threads[i]);
			return 2;
		}
	}

	size_t bytes = (size_t)o.pages * BENCH_PAGE;
	uint8_t *guest = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (guest == MAP_FAILED) {
		perror("mmap guest memory");
		return 1;
	}
	memset(guest, 0x5a, bytes);

	int ncells = 2 * o.nthreads * (int)NLOCKS;
	struct result *res = calloc((size_t)ncells, sizeof(*res));
	int n = 0;
	if (!res)
		abort();
	for (int w = 0; w < 2; w++)
		for (int t = 0; t < o.nthreads; t++)
			for (size_t l = 0; l < NLOCKS; l++)
				res[n++] = measure(&o, guest, &LOCKS[l], (enum workload)w,
						   o.threads[t]);

	if (o.json) {
		printf("{\n  \"benchmark\": \"rangelock_bench\",\n  \"cpus\": %ld,\n"
		       "  \"params\": {\"seconds\": %g, \"reps\": %d, \"pages\": %llu, "
		       "\"hot\": %llu, \"max_len\": %llu, \"write_pct\": %u, \"stripes\": %u},\n"
		       "  \"results\": [\n", bench_nproc(), o.seconds, o.reps,
		       (unsigned long long)o.pages, (unsigned long long)o.hot,
		       (unsigned long long)o.max_len, o.write_pct, o.stripes);
	} else {
		printf("rangelock_bench: %ld CPUs, %.2f s x %d per cell, %llu pages, "
		       "ranges 1..%llu pages, %u%% writers, overlap hot region %llu pages, "
		       "%u stripes\n\n", bench_nproc(), o.seconds, o.reps,
		       (unsigned long long)o.pages, (unsigned long long)o.max_len,
		       o.write_pct, (unsigned long long)o.hot, o.stripes);
		printf("%-9s %7s  %-10s %10s %8s %6s %11s %9s %12s\n", "workload",
		       "threads", "lock", "kops/s", "GiB/s", "cpus", "kops/cpu-s",
		       "vs mutex", "rangelock/x");
	}
	for (int i = 0; i < n; i++) {
		/* rows come in groups of NLOCKS: rangelock first, mutex third */
		const struct result *g = &res[i - i % (int)NLOCKS];
		double vs_mutex = g[2].ops_s > 0 ? res[i].ops_s / g[2].ops_s : 0;
		double rl_over = res[i].ops_s > 0 ? g[0].ops_s / res[i].ops_s : 0;
		double gib = res[i].pages_s * BENCH_PAGE / (1024.0 * 1024 * 1024);
		if (o.json) {
			printf("    {\"workload\": \"%s\", \"threads\": %d, \"lock\": \"%s\", "
			       "\"ops_per_s\": %.0f, \"pages_per_s\": %.0f, \"gib_per_s\": %.3f, "
			       "\"cpus_used\": %.2f, \"ratio_vs_mutex\": %.3f, "
			       "\"rangelock_over_this\": %.3f}%s\n",
			       WNAME[res[i].w], res[i].threads, res[i].lock, res[i].ops_s,
			       res[i].pages_s, gib, res[i].cpus, vs_mutex, rl_over,
			       i + 1 < n ? "," : "");
		} else {
			printf("%-9s %7d  %-10s %10.1f %8.2f %6.2f %11.1f %9.2f %12.2f\n",
			       WNAME[res[i].w], res[i].threads, res[i].lock,
			       res[i].ops_s / 1e3, gib, res[i].cpus,
			       res[i].cpus > 0 ? res[i].ops_s / res[i].cpus / 1e3 : 0,
			       vs_mutex, rl_over);
			if (i % (int)NLOCKS == (int)NLOCKS - 1)
				printf("\n");
		}
	}
	if (o.json)
		printf("  ]\n}\n");
	else
		printf("cpus: CPU seconds used per wall second (the share of the machine "
		       "the run got);\nvs mutex: ops/s over the global mutex's; "
		       "rangelock/x: the range lock's ops/s over this lock's.\n");
	free(res);
	munmap(guest, bytes);
	return 0;
}
