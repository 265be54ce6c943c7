/* SPDX-License-Identifier: MIT */
/* The task queue between the source's producer and its workers: FIFO
 * order, bounded capacity, close semantics, wait-for-idle with done and
 * timeout, and a producers/consumers run (suite 'concurrency'). */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include "engine/net.h"
#include "engine/queue.h"

static void test_fifo(void **state)
{
	struct pm_queue q;
	struct pm_task t;

	assert_int_equal(pm_queue_init(&q, 4), 0);
	/* Wrap around the ring a few times. */
	for (uint32_t round = 1; round <= 5; round++) {
		for (uint32_t i = 0; i < 3; i++)
			assert_true(pm_queue_push(&q, (struct pm_task){ .chunk = i, .round = round }));
		for (uint32_t i = 0; i < 3; i++) {
			assert_true(pm_queue_pop(&q, &t));
			assert_int_equal(t.chunk, i);
			assert_int_equal(t.round, round);
			pm_queue_done(&q);
		}
	}
	assert_true(pm_queue_wait_idle(&q, 0));
	pm_queue_destroy(&q);
}

/* A timed pop: nothing within the limit, a task, and closed-and-drained. */
static void test_pop_timed(void **state)
{
	struct pm_queue q;
	struct pm_task t;

	assert_int_equal(pm_queue_init(&q, 4), 0);
	double t0 = pm_now_ms();
	assert_int_equal(pm_queue_pop_timed(&q, &t, 50), 0);
	assert_true(pm_now_ms() - t0 >= 49);
	assert_true(pm_queue_push(&q, (struct pm_task){ .chunk = 7, .round = 2 }));
	assert_int_equal(pm_queue_pop_timed(&q, &t, 50), 1);
	assert_int_equal(t.chunk, 7);
	pm_queue_done(&q);
	assert_true(pm_queue_push(&q, (struct pm_task){ .chunk = 8, .round = 2 }));
	pm_queue_close(&q);
	assert_int_equal(pm_queue_pop_timed(&q, &t, 50), 1);
	assert_int_equal(t.chunk, 8);
	pm_queue_done(&q);
	assert_int_equal(pm_queue_pop_timed(&q, &t, 50), -1);
	pm_queue_destroy(&q);
}

static void test_close(void **state)
{
	struct pm_queue q;
	struct pm_task t;

	assert_int_equal(pm_queue_init(&q, 8), 0);
	assert_true(pm_queue_push(&q, (struct pm_task){ .chunk = 1, .round = 1 }));
	assert_true(pm_queue_push(&q, (struct pm_task){ .chunk = 2, .round = 1 }));
	pm_queue_close(&q);
	/* Pushes fail after close; pops drain what is left, then fail. */
	assert_false(pm_queue_push(&q, (struct pm_task){ .chunk = 3, .round = 1 }));
	assert_true(pm_queue_pop(&q, &t));
	assert_int_equal(t.chunk, 1);
	assert_true(pm_queue_pop(&q, &t));
	assert_int_equal(t.chunk, 2);
	assert_false(pm_queue_pop(&q, &t));
	assert_false(pm_queue_pop(&q, &t));
	pm_queue_close(&q);
	pm_queue_destroy(&q);
}

static void test_wait_idle(void **state)
{
	struct pm_queue q;
	struct pm_task t;
	double t0;

	assert_int_equal(pm_queue_init(&q, 4), 0);
	/* Empty queue: idle at once. */
	assert_true(pm_queue_wait_idle(&q, 1000));
	assert_true(pm_queue_push(&q, (struct pm_task){ .chunk = 9, .round = 2 }));
	/* Pushed, not done: times out (after about the timeout). */
	t0 = pm_now_ms();
	assert_false(pm_queue_wait_idle(&q, 50));
	assert_true(pm_now_ms() - t0 >= 45);
	/* Popped is not done either. */
	assert_true(pm_queue_pop(&q, &t));
	assert_false(pm_queue_wait_idle(&q, 10));
	pm_queue_done(&q);
	assert_true(pm_queue_wait_idle(&q, 10));
	/* Timeout beyond one second (nanosecond carry). */
	assert_true(pm_queue_push(&q, (struct pm_task){ .chunk = 1 }));
	assert_true(pm_queue_pop(&q, &t));
	pm_queue_done(&q);
	assert_true(pm_queue_wait_idle(&q, 1999));
	pm_queue_destroy(&q);
}

/* A full queue blocks the producer until a consumer pops; close wakes a
 * blocked producer and a blocked consumer. */
struct blocked {
	struct pm_queue *q;
	atomic_int state;       /* 0 started, 1 returned true, 2 returned false */
};

static void *push_thread(void *arg)
{
	struct blocked *b = arg;
	bool ok = pm_queue_push(b->q, (struct pm_task){ .chunk = 100 });
	atomic_store(&b->state, ok ? 1 : 2);
	return NULL;
}

static void *pop_thread(void *arg)
{
	struct blocked *b = arg;
	struct pm_task t;
	bool ok = pm_queue_pop(b->q, &t);
	atomic_store(&b->state, ok ? 1 : 2);
	return NULL;
}

static void test_blocking(void **state)
{
	struct pm_queue q;
	struct pm_task t;
	struct blocked b = { .q = &q };
	pthread_t th;

	assert_int_equal(pm_queue_init(&q, 2), 0);
	assert_true(pm_queue_push(&q, (struct pm_task){ .chunk = 0 }));
	assert_true(pm_queue_push(&q, (struct pm_task){ .chunk = 1 }));
	assert_int_equal(pthread_create(&th, NULL, push_thread, &b), 0);
	usleep(50000);
	assert_int_equal(atomic_load(&b.state), 0);   /* still blocked: full */
	assert_true(pm_queue_pop(&q, &t));
	assert_int_equal(t.chunk, 0);
	pthread_join(th, NULL);
	assert_int_equal(atomic_load(&b.state), 1);
	assert_true(pm_queue_pop(&q, &t));
	assert_int_equal(t.chunk, 1);
	assert_true(pm_queue_pop(&q, &t));
	assert_int_equal(t.chunk, 100);

	/* Full again, a producer blocks, close releases it with false. */
	assert_true(pm_queue_push(&q, (struct pm_task){ .chunk = 2 }));
	assert_true(pm_queue_push(&q, (struct pm_task){ .chunk = 3 }));
	atomic_store(&b.state, 0);
	assert_int_equal(pthread_create(&th, NULL, push_thread, &b), 0);
	usleep(20000);
	pm_queue_close(&q);
	pthread_join(th, NULL);
	assert_int_equal(atomic_load(&b.state), 2);
	pm_queue_destroy(&q);

	/* An empty queue blocks a consumer until close. */
	assert_int_equal(pm_queue_init(&q, 2), 0);
	atomic_store(&b.state, 0);
	assert_int_equal(pthread_create(&th, NULL, pop_thread, &b), 0);
	usleep(20000);
	assert_int_equal(atomic_load(&b.state), 0);
	pm_queue_close(&q);
	pthread_join(th, NULL);
	assert_int_equal(atomic_load(&b.state), 2);
	pm_queue_destroy(&q);
}

/* Producers/consumers: every task is delivered exactly once, each
 * producer's tasks in its order, and wait_idle returns only after every
 * pushed task was done. */
#define NPROD 3
#define NCONS 4
#define PER_PROD 3000

struct mt {
	struct pm_queue q;
	atomic_uint seen[NPROD * PER_PROD];
	atomic_uint done_count;
	atomic_int order_errors;
};

struct prod_arg {
	struct mt *m;
	uint32_t id;
};

static void *producer(void *arg)
{
	struct prod_arg *p = arg;

	for (uint32_t i = 0; i < PER_PROD; i++)
		if (!pm_queue_push(&p->m->q, (struct pm_task){ .chunk = p->id * PER_PROD + i, .round = p->id }))
			break;
	return NULL;
}

static void *consumer(void *arg)
{
	struct mt *m = arg;
	struct pm_task t;
	uint32_t last[NPROD];

	memset(last, 0xff, sizeof(last));
	while (pm_queue_pop(&m->q, &t)) {
		uint32_t prod = t.round, seq = t.chunk % PER_PROD;
		/* One consumer sees a producer's tasks in increasing order. */
		if (last[prod] != 0xffffffffu && seq <= last[prod])
			atomic_fetch_add(&m->order_errors, 1);
		last[prod] = seq;
		atomic_fetch_add(&m->seen[t.chunk], 1);
		if (t.chunk % 97 == 0)
			sched_yield();
		atomic_fetch_add(&m->done_count, 1);
		pm_queue_done(&m->q);
	}
	return NULL;
}

static void test_producers_consumers(void **state)
{
	struct mt *m = calloc(1, sizeof(*m));
	pthread_t pt[NPROD], ct[NCONS];
	struct prod_arg pa[NPROD];

	assert_int_equal(pm_queue_init(&m->q, 8), 0);
	for (unsigned i = 0; i < NCONS; i++)
		assert_int_equal(pthread_create(&ct[i], NULL, consumer, m), 0);
	for (unsigned i = 0; i < NPROD; i++) {
		pa[i] = (struct prod_arg){ .m = m, .id = i };
		assert_int_equal(pthread_create(&pt[i], NULL, producer, &pa[i]), 0);
	}
	for (unsigned i = 0; i < NPROD; i++)
		pthread_join(pt[i], NULL);
	/* Everything pushed; idle means everything done. */
	while (!pm_queue_wait_idle(&m->q, 100))
		;
	assert_int_equal(atomic_load(&m->done_count), NPROD * PER_PROD);
	pm_queue_close(&m->q);
	for (unsigned i = 0; i < NCONS; i++)
		pthread_join(ct[i], NULL);
	for (unsigned i = 0; i < NPROD * PER_PROD; i++)
		if (atomic_load(&m->seen[i]) != 1)
			fail_msg("task %u delivered %u times", i, atomic_load(&m->seen[i]));
	assert_int_equal(atomic_load(&m->order_errors), 0);
	pm_queue_destroy(&m->q);
	free(m);
}

/* Waiting for idle while workers finish in batches (the producer's
 * round-end wait in barrier mode). */
static void test_idle_rounds_mt(void **state)
{
	struct mt *m = calloc(1, sizeof(*m));
	pthread_t ct[NCONS];

	assert_int_equal(pm_queue_init(&m->q, 4), 0);
	for (unsigned i = 0; i < NCONS; i++)
		assert_int_equal(pthread_create(&ct[i], NULL, consumer, m), 0);
	for (uint32_t round = 0; round < 20; round++) {
		for (uint32_t i = 0; i < 50; i++)
			assert_true(pm_queue_push(&m->q, (struct pm_task){ .chunk = round * 50 + i, .round = 0 }));
		while (!pm_queue_wait_idle(&m->q, 100))
			;
		assert_int_equal(atomic_load(&m->done_count), (round + 1) * 50);
	}
	pm_queue_close(&m->q);
	for (unsigned i = 0; i < NCONS; i++)
		pthread_join(ct[i], NULL);
	pm_queue_destroy(&m->q);
	free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fifo),
		cmocka_unit_test(test_pop_timed),
		cmocka_unit_test(test_close),
		cmocka_unit_test(test_wait_idle),
		cmocka_unit_test(test_blocking),
		cmocka_unit_test(test_producers_consumers),
		cmocka_unit_test(test_idle_rounds_mt),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
