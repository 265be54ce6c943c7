/* SPDX-License-Identifier: MIT */
/* Tests of the reader/writer range lock (include/pmigrate/rangelock.h).
 *
 *   test_rangelock                 semantics + short concurrency tests
 *   test_rangelock --stress SECS   only the long hammer, for SECS seconds
 */
#include <pmigrate/rangelock.h>

#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#define DEADLINE_MS 10000  /* generous: TSan on a loaded 2-core machine */

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_us(long us)
{
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
	nanosleep(&ts, NULL);
}

/* Polls until *flag >= want or the deadline passes. */
static bool wait_for(atomic_int *flag, int want, int ms)
{
	uint64_t end = now_ns() + (uint64_t)ms * 1000000u;
	while (atomic_load(flag) < want) {
		if (now_ns() > end)
			return false;
		sleep_us(200);
	}
	return true;
}

static bool wait_waiters(struct pm_rangelock *rl, unsigned want, int ms)
{
	uint64_t end = now_ns() + (uint64_t)ms * 1000000u;
	while (pm_rangelock_waiters(rl) < want) {
		if (now_ns() > end)
			return false;
		sleep_us(200);
	}
	return true;
}

/* ---- a thread that takes one range, holds it until told, releases ---- */

struct locker {
	struct pm_rangelock *rl;
	struct pm_range r;
	uint64_t start, end;
	bool writer;
	atomic_int acquired;
	atomic_int release;
	atomic_int skip_unlock;  /* someone else unlocks l->r */
	pthread_t th;
};

static void *locker_main(void *arg)
{
	struct locker *l = arg;
	if (l->writer)
		pm_range_wrlock(l->rl, &l->r, l->start, l->end);
	else
		pm_range_rdlock(l->rl, &l->r, l->start, l->end);
	atomic_store(&l->acquired, 1);
	while (!atomic_load(&l->release))
		sleep_us(200);
	if (!atomic_load(&l->skip_unlock))
		pm_range_unlock(l->rl, &l->r);
	return NULL;
}

static void locker_start(struct locker *l, struct pm_rangelock *rl,
			 uint64_t start, uint64_t end, bool writer)
{
	memset(l, 0, sizeof(*l));
	l->rl = rl;
	l->start = start;
	l->end = end;
	l->writer = writer;
	assert_int_equal(pthread_create(&l->th, NULL, locker_main, l), 0);
}

static void locker_finish(struct locker *l)
{
	atomic_store(&l->release, 1);
	assert_int_equal(pthread_join(l->th, NULL), 0);
}

static int setup_lock(void **state)
{
	struct pm_rangelock *rl = malloc(sizeof(*rl));
	if (!rl || pm_rangelock_init(rl) != 0)
		return -1;
	*state = rl;
	return 0;
}

static int teardown_lock(void **state)
{
	struct pm_rangelock *rl = *state;
	/* A failed test may leave ranges held (its records are gone): then
	 * leak the lock rather than destroy a busy one. */
	if (rl->head != NULL)
		return -1;
	pm_rangelock_destroy(rl);
	free(rl);
	return 0;
}

/* ---------------------------- semantics ---------------------------- */

static void test_try_semantics(void **state)
{
	struct pm_rangelock *rl = *state;
	struct pm_range a, b, c, d, e, f, g;

	assert_true(pm_range_trywrlock(rl, &a, 0, 10));
	/* Overlapping requests of either kind conflict with a writer. */
	assert_false(pm_range_tryrdlock(rl, &b, 5, 6));
	assert_false(pm_range_trywrlock(rl, &b, 9, 20));
	assert_false(pm_range_trywrlock(rl, &b, 0, 1));
	assert_false(pm_range_tryrdlock(rl, &b, 0, 100));
	/* Half-open: [10, 20) touches [0, 10) but does not overlap. */
	assert_true(pm_range_trywrlock(rl, &b, 10, 20));
	/* Readers share. */
	assert_true(pm_range_tryrdlock(rl, &c, 20, 30));
	assert_true(pm_range_tryrdlock(rl, &d, 25, 26));
	assert_true(pm_range_tryrdlock(rl, &e, 20, 40));
	/* A writer does not get in among readers. */
	assert_false(pm_range_trywrlock(rl, &f, 29, 31));
	assert_false(pm_range_trywrlock(rl, &f, 39, 50));
	assert_true(pm_range_trywrlock(rl, &f, 40, 50));
	/* An empty range conflicts with nothing. */
	assert_true(pm_range_trywrlock(rl, &g, 5, 5));
	pm_range_unlock(rl, &g);
	/* Full 64-bit values. */
	assert_true(pm_range_trywrlock(rl, &g, UINT64_MAX - 10, UINT64_MAX));
	pm_range_unlock(rl, &g);

	pm_range_unlock(rl, &a);
	assert_true(pm_range_tryrdlock(rl, &a, 0, 10));
	assert_false(pm_range_trywrlock(rl, &g, 5, 25));  /* a, b, c */
	pm_range_unlock(rl, &b);
	pm_range_unlock(rl, &c);
	pm_range_unlock(rl, &d);
	pm_range_unlock(rl, &e);
	pm_range_unlock(rl, &f);
	assert_false(pm_range_trywrlock(rl, &g, 0, UINT64_MAX));  /* a */
	pm_range_unlock(rl, &a);
	assert_true(pm_range_trywrlock(rl, &g, 0, UINT64_MAX));
	pm_range_unlock(rl, &g);
	assert_int_equal(pm_rangelock_waiters(rl), 0);
}

/* The main thread holds `first`; a second thread asks for `second`, which
 * conflicts: it must block (and be counted as a waiter) until the release,
 * and then get the lock. */
static void check_blocks(struct pm_rangelock *rl, bool first_writer,
			 uint64_t s1, uint64_t e1, bool second_writer,
			 uint64_t s2, uint64_t e2)
{
	struct pm_range r;
	/* static: a failed assertion must not leave a running thread
	 * pointing into a reused stack frame */
	static struct locker l;

	if (first_writer)
		pm_range_wrlock(rl, &r, s1, e1);
	else
		pm_range_rdlock(rl, &r, s1, e1);
	locker_start(&l, rl, s2, e2, second_writer);
	assert_true(wait_waiters(rl, 1, DEADLINE_MS));
	sleep_us(20000);
	assert_int_equal(atomic_load(&l.acquired), 0);
	pm_range_unlock(rl, &r);
	assert_true(wait_for(&l.acquired, 1, DEADLINE_MS));
	assert_int_equal(pm_rangelock_waiters(rl), 0);
	locker_finish(&l);
}

static void test_writer_excludes_writer(void **state)
{
	check_blocks(*state, true, 0, 10, true, 5, 15);
	check_blocks(*state, true, 5, 15, true, 0, 6);
	check_blocks(*state, true, 0, 100, true, 50, 51);
}

static void test_writer_excludes_reader(void **state)
{
	check_blocks(*state, true, 0, 10, false, 9, 10);
	check_blocks(*state, true, 3, 4, false, 0, 100);
}

static void test_reader_excludes_writer(void **state)
{
	check_blocks(*state, false, 0, 10, true, 9, 12);
	check_blocks(*state, false, 10, 20, true, 0, 11);
}

static void test_readers_share(void **state)
{
	struct pm_rangelock *rl = *state;
	struct pm_range r;
	/* static: a failed assertion must not leave a running thread
	 * pointing into a reused stack frame */
	static struct locker l[3];

	pm_range_rdlock(rl, &r, 0, 10);
	locker_start(&l[0], rl, 5, 15, false);
	locker_start(&l[1], rl, 0, 10, false);
	locker_start(&l[2], rl, 9, 10, false);
	for (int i = 0; i < 3; i++)
		assert_true(wait_for(&l[i].acquired, 1, DEADLINE_MS));
	assert_int_equal(pm_rangelock_waiters(rl), 0);
	pm_range_unlock(rl, &r);
	for (int i = 0; i < 3; i++)
		locker_finish(&l[i]);
}

/* While the main thread holds a write lock, threads taking pairwise
 * disjoint ranges (also disjoint from the main one) all hold at the same
 * time, and none is ever counted as waiting. */
static void test_disjoint_never_block(void **state)
{
	struct pm_rangelock *rl = *state;
	enum { N = 6 };
	struct pm_range r;
	/* static: a failed assertion must not leave a running thread
	 * pointing into a reused stack frame */
	static struct locker l[N];

	pm_range_wrlock(rl, &r, 0, 100);
	for (int i = 0; i < N; i++) {
		uint64_t s = 100 + (uint64_t)i * 10;
		locker_start(&l[i], rl, s, s + 10, i % 2 == 0);
	}
	/* No thread releases before locker_finish, so all hold at once. */
	for (int i = 0; i < N; i++)
		assert_true(wait_for(&l[i].acquired, 1, DEADLINE_MS));
	assert_int_equal(pm_rangelock_waiters(rl), 0);
	pm_range_unlock(rl, &r);
	for (int i = 0; i < N; i++)
		locker_finish(&l[i]);
}

/* FIFO among conflicting requests: a writer waiting behind a reader is not
 * overtaken by readers that arrive after it; unrelated ranges still pass. */
static void test_writer_not_overtaken(void **state)
{
	struct pm_rangelock *rl = *state;
	struct pm_range r, t;
	/* static: a failed assertion must not leave a running thread
	 * pointing into a reused stack frame */
	static struct locker w, rd;

	pm_range_rdlock(rl, &r, 0, 10);
	locker_start(&w, rl, 0, 10, true);
	assert_true(wait_waiters(rl, 1, DEADLINE_MS));
	/* A reader compatible with the holder but not with the queued writer
	 * must not get in. */
	assert_false(pm_range_tryrdlock(rl, &t, 5, 6));
	locker_start(&rd, rl, 2, 3, false);
	assert_true(wait_waiters(rl, 2, DEADLINE_MS));
	/* A range disjoint from the writer is not held up. */
	assert_true(pm_range_tryrdlock(rl, &t, 10, 20));
	pm_range_unlock(rl, &t);
	assert_true(pm_range_trywrlock(rl, &t, 20, 30));
	pm_range_unlock(rl, &t);

	sleep_us(20000);
	assert_int_equal(atomic_load(&w.acquired), 0);
	assert_int_equal(atomic_load(&rd.acquired), 0);
	pm_range_unlock(rl, &r);
	assert_true(wait_for(&w.acquired, 1, DEADLINE_MS));
	sleep_us(20000);
	assert_int_equal(atomic_load(&rd.acquired), 0);
	locker_finish(&w);
	assert_true(wait_for(&rd.acquired, 1, DEADLINE_MS));
	locker_finish(&rd);
}

/* All readers queued behind one writer are granted together. */
static void test_readers_wake_together(void **state)
{
	struct pm_rangelock *rl = *state;
	enum { N = 4 };
	struct pm_range r;
	/* static: a failed assertion must not leave a running thread
	 * pointing into a reused stack frame */
	static struct locker l[N];

	pm_range_wrlock(rl, &r, 0, 100);
	for (int i = 0; i < N; i++)
		locker_start(&l[i], rl, (uint64_t)i * 10, (uint64_t)i * 10 + 50, false);
	assert_true(wait_waiters(rl, N, DEADLINE_MS));
	pm_range_unlock(rl, &r);
	/* None releases before all have acquired: they must coexist. */
	for (int i = 0; i < N; i++)
		assert_true(wait_for(&l[i].acquired, 1, DEADLINE_MS));
	for (int i = 0; i < N; i++)
		locker_finish(&l[i]);
}

/* A waiting lock can be released by another thread than the locker, and
 * a record can be reused right after unlock. */
static void test_cross_thread_unlock_and_reuse(void **state)
{
	struct pm_rangelock *rl = *state;
	/* static: a failed assertion must not leave a running thread
	 * pointing into a reused stack frame */
	static struct locker l;
	struct pm_range r;

	pm_range_wrlock(rl, &r, 0, 10);
	locker_start(&l, rl, 0, 10, true);
	assert_true(wait_waiters(rl, 1, DEADLINE_MS));
	pm_range_unlock(rl, &r);
	assert_true(wait_for(&l.acquired, 1, DEADLINE_MS));
	/* Reuse r for a disjoint range while l holds. */
	pm_range_wrlock(rl, &r, 10, 20);
	pm_range_unlock(rl, &r);
	assert_false(pm_range_trywrlock(rl, &r, 0, 20));
	/* Release l's range from this thread; l exits without unlocking. */
	pm_range_unlock(rl, &l.r);
	assert_true(pm_range_trywrlock(rl, &r, 0, 20));
	pm_range_unlock(rl, &r);
	atomic_store(&l.skip_unlock, 1);
	locker_finish(&l);
}

/* ---------------------- writer non-starvation ---------------------- */

struct reader_storm {
	struct pm_rangelock *rl;
	atomic_int stop;
	atomic_long rounds;
	int id;
};

static void *storm_reader(void *arg)
{
	struct reader_storm *s = arg;
	struct pm_range r;
	while (!atomic_load(&s->stop)) {
		/* Staggered overlapping ranges: some reader always overlaps
		 * [0, 10), so a reader-preferring lock would starve writers. */
		pm_range_rdlock(s->rl, &r, (uint64_t)s->id, 10 + (uint64_t)s->id);
		sleep_us(300);
		pm_range_unlock(s->rl, &r);
		atomic_fetch_add(&s->rounds, 1);
	}
	return NULL;
}

static void test_writer_no_starvation(void **state)
{
	struct pm_rangelock *rl = *state;
	enum { R = 3, W_ROUNDS = 20 };
	struct reader_storm s[R];
	pthread_t th[R];
	uint64_t worst = 0;

	for (int i = 0; i < R; i++) {
		s[i].rl = rl;
		s[i].stop = 0;
		s[i].rounds = 0;
		s[i].id = i;
		assert_int_equal(pthread_create(&th[i], NULL, storm_reader, &s[i]), 0);
	}
	for (int i = 0; i < R; i++) {
		while (atomic_load(&s[i].rounds) == 0)
			sleep_us(200);
	}
	for (int k = 0; k < W_ROUNDS; k++) {
		struct pm_range w;
		uint64_t t0 = now_ns();
		pm_range_wrlock(rl, &w, 0, 10);
		uint64_t dt = now_ns() - t0;
		if (dt > worst)
			worst = dt;
		pm_range_unlock(rl, &w);
		sleep_us(500);
	}
	for (int i = 0; i < R; i++)
		atomic_store(&s[i].stop, 1);
	for (int i = 0; i < R; i++)
		pthread_join(th[i], NULL);
	/* Under FIFO the writer waits about one reader hold (300 us). */
	print_message("# worst writer wait %.3f ms\n", worst / 1e6);
	assert_true(worst < (uint64_t)DEADLINE_MS * 1000000u / 2);
}

/* ------------------------------ hammer ------------------------------ */

#define UNITS 64

struct unit {
	atomic_int readers, writers;
	uint64_t data;  /* plain: written by writers, read by readers */
};

struct hammer {
	struct pm_rangelock *rl;
	struct unit units[UNITS];
	atomic_long violations;
	atomic_long ops, wr_ops, try_ok, try_fail;
	uint64_t deadline;
};

struct hammer_arg {
	struct hammer *h;
	uint64_t seed;
	int id;
};

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static void *hammer_main(void *arg)
{
	struct hammer_arg *a = arg;
	struct hammer *h = a->h;
	uint64_t seed = a->seed;
	long ops = 0, wr = 0, tok = 0, tfail = 0, viol = 0;
	uint64_t stamp = (uint64_t)a->id << 48;

	for (;;) {
		if ((ops & 63) == 0 && now_ns() > h->deadline)
			break;
		uint64_t rnd = xorshift(&seed);
		uint64_t s = rnd % UNITS;
		uint64_t len = 1 + (rnd >> 8) % 8;
		uint64_t e = s + len > UNITS ? UNITS : s + len;
		bool writer = (rnd >> 16) % 100 < 35;
		bool use_try = (rnd >> 24) % 4 == 0;
		struct pm_range r;

		if ((rnd >> 32) % 64 == 0)
			e = s;  /* empty range now and then */
		if (use_try) {
			bool ok = writer ? pm_range_trywrlock(h->rl, &r, s, e)
					 : pm_range_tryrdlock(h->rl, &r, s, e);
			if (ok) {
				tok++;
			} else {
				tfail++;
				use_try = false;
			}
		}
		if (!use_try) {
			if (writer)
				pm_range_wrlock(h->rl, &r, s, e);
			else
				pm_range_rdlock(h->rl, &r, s, e);
		}

		if (writer) {
			stamp++;
			for (uint64_t u = s; u < e; u++)
				atomic_fetch_add(&h->units[u].writers, 1);
			for (uint64_t u = s; u < e; u++) {
				if (atomic_load(&h->units[u].writers) != 1 ||
				    atomic_load(&h->units[u].readers) != 0)
					viol++;
				h->units[u].data = stamp;
			}
			if ((rnd >> 40) % 8 == 0)
				sched_yield();
			for (uint64_t u = s; u < e; u++) {
				if (h->units[u].data != stamp)
					viol++;
				atomic_fetch_sub(&h->units[u].writers, 1);
			}
			wr++;
		} else {
			uint64_t sum = 0;
			for (uint64_t u = s; u < e; u++)
				atomic_fetch_add(&h->units[u].readers, 1);
			for (uint64_t u = s; u < e; u++) {
				if (atomic_load(&h->units[u].writers) != 0)
					viol++;
				sum += h->units[u].data;
			}
			if ((rnd >> 40) % 8 == 0)
				sched_yield();
			for (uint64_t u = s; u < e; u++) {
				if (atomic_load(&h->units[u].writers) != 0)
					viol++;
				sum -= h->units[u].data;  /* unchanged while held */
				atomic_fetch_sub(&h->units[u].readers, 1);
			}
			if (sum != 0)
				viol++;
		}
		pm_range_unlock(h->rl, &r);
		ops++;
	}
	atomic_fetch_add(&h->ops, ops);
	atomic_fetch_add(&h->wr_ops, wr);
	atomic_fetch_add(&h->try_ok, tok);
	atomic_fetch_add(&h->try_fail, tfail);
	atomic_fetch_add(&h->violations, viol);
	return NULL;
}

static void run_hammer(int nthreads, double seconds)
{
	struct hammer *h = calloc(1, sizeof(*h));
	struct pm_rangelock rl;
	pthread_t th[64];
	struct hammer_arg args[64];

	assert_non_null(h);
	assert_true(nthreads <= 64);
	assert_int_equal(pm_rangelock_init(&rl), 0);
	h->rl = &rl;
	h->deadline = now_ns() + (uint64_t)(seconds * 1e9);
	for (int i = 0; i < nthreads; i++) {
		args[i].h = h;
		args[i].id = i + 1;
		args[i].seed = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1) ^ now_ns();
		if (args[i].seed == 0)
			args[i].seed = 1;
		assert_int_equal(pthread_create(&th[i], NULL, hammer_main, &args[i]), 0);
	}
	for (int i = 0; i < nthreads; i++)
		pthread_join(th[i], NULL);
	print_message("# hammer %d threads %.1f s: %ld ops (%ld writes), "
		      "try ok %ld / failed %ld, violations %ld\n",
		      nthreads, seconds, atomic_load(&h->ops),
		      atomic_load(&h->wr_ops), atomic_load(&h->try_ok),
		      atomic_load(&h->try_fail), atomic_load(&h->violations));
	assert_int_equal(atomic_load(&h->violations), 0);
	assert_true(atomic_load(&h->ops) > nthreads);
	assert_int_equal(pm_rangelock_waiters(&rl), 0);
	for (int u = 0; u < UNITS; u++) {
		assert_int_equal(atomic_load(&h->units[u].readers), 0);
		assert_int_equal(atomic_load(&h->units[u].writers), 0);
	}
	pm_rangelock_destroy(&rl);
	free(h);
}

static void test_hammer(void **state)
{
	(void)state;
	run_hammer(4, 1.0);
}

static double g_stress_seconds = 2.0;

static void test_stress(void **state)
{
	(void)state;
	run_hammer(8, g_stress_seconds);
}

int main(int argc, char **argv)
{
	if (argc >= 3 && strcmp(argv[1], "--stress") == 0) {
		g_stress_seconds = atof(argv[2]);
		if (g_stress_seconds <= 0)
			g_stress_seconds = 2.0;
		const struct CMUnitTest stress[] = {
			cmocka_unit_test(test_stress),
		};
		return cmocka_run_group_tests_name("rangelock_stress", stress, NULL, NULL);
	}

	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_try_semantics, setup_lock, teardown_lock),
		cmocka_unit_test_setup_teardown(test_writer_excludes_writer, setup_lock, teardown_lock),
		cmocka_unit_test_setup_teardown(test_writer_excludes_reader, setup_lock, teardown_lock),
		cmocka_unit_test_setup_teardown(test_reader_excludes_writer, setup_lock, teardown_lock),
		cmocka_unit_test_setup_teardown(test_readers_share, setup_lock, teardown_lock),
		cmocka_unit_test_setup_teardown(test_disjoint_never_block, setup_lock, teardown_lock),
		cmocka_unit_test_setup_teardown(test_writer_not_overtaken, setup_lock, teardown_lock),
		cmocka_unit_test_setup_teardown(test_readers_wake_together, setup_lock, teardown_lock),
		cmocka_unit_test_setup_teardown(test_cross_thread_unlock_and_reuse, setup_lock, teardown_lock),
		cmocka_unit_test_setup_teardown(test_writer_no_starvation, setup_lock, teardown_lock),
		cmocka_unit_test(test_hammer),
	};
	return cmocka_run_group_tests_name("rangelock", tests, NULL, NULL);
}
