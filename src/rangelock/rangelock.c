/* SPDX-License-Identifier: MIT */
/* Reader/writer range lock: an arrival-ordered queue of requests under a
 * small mutex, with a per-request futex for sleeping.
 *
 * Every request (granted or waiting) sits in the queue in arrival order.
 * When a request arrives it counts the earlier queued requests it conflicts
 * with (overlapping ranges, at least one of the two a writer): that count is
 * its `blockers`.  It is granted when the count is zero.  When a request is
 * released, every later queued request that conflicts with it loses one
 * blocker; those that reach zero are granted and woken.
 *
 * Invariant (under rl->mu): for every queued q,
 *     q->blockers == |{ p queued before q : conflict(p, q) }|
 * and q is granted iff q->blockers == 0.  Two conflicting queued requests
 * are never both granted: the later one counts the earlier one.  See
 * docs/rangelock.md for the full argument (safety, liveness, fairness).
 */
#include <pmigrate/rangelock.h>

#include <assert.h>
#include <errno.h>
#include <linux/futex.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <unistd.h>

enum {
	RS_WAITING  = 0,  /* queued, not granted, waiter not (yet) asleep */
	RS_SLEEPING = 1,  /* queued, not granted, waiter may be in futex_wait */
	RS_GRANTED  = 2,
};

/* Brief optimistic spin before sleeping: the typical holder copies a few
 * pages, so a short wait is often over before a futex round trip would be. */
#define RL_SPIN 100

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	__asm__ __volatile__("" ::: "memory");
#endif
}

static void futex_wait(uint32_t *addr, uint32_t val)
{
	/* EAGAIN (value changed) and EINTR are both fine: the caller loops. */
	syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake_one(uint32_t *addr)
{
	syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* Half-open ranges; an empty range overlaps nothing. */
static inline bool overlap(const struct pm_range *a, const struct pm_range *b)
{
	return a->start < b->end && b->start < a->end &&
	       a->start < a->end && b->start < b->end;
}

static inline bool conflict(const struct pm_range *a, const struct pm_range *b)
{
	return (a->writer || b->writer) && overlap(a, b);
}

int pm_rangelock_init(struct pm_rangelock *rl)
{
	pthread_mutexattr_t attr;
	int rc = pthread_mutexattr_init(&attr);

	if (rc)
		return -rc;
#ifdef PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP
	/* Spins a little before sleeping: our critical sections are short. */
	pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
#endif
	rc = pthread_mutex_init(&rl->mu, &attr);
	pthread_mutexattr_destroy(&attr);
	if (rc)
		return -rc;
	rl->head = rl->tail = NULL;
	rl->nwaiting = 0;
	return 0;
}

void pm_rangelock_destroy(struct pm_rangelock *rl)
{
	assert(rl->head == NULL && "pm_rangelock_destroy on a busy lock");
	pthread_mutex_destroy(&rl->mu);
}

static void enqueue(struct pm_rangelock *rl, struct pm_range *r)
{
	r->next = NULL;
	r->prev = rl->tail;
	if (rl->tail)
		rl->tail->next = r;
	else
		rl->head = r;
	rl->tail = r;
}

static void dequeue(struct pm_rangelock *rl, struct pm_range *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else
		rl->head = r->next;
	if (r->next)
		r->next->prev = r->prev;
	else
		rl->tail = r->prev;
	r->prev = r->next = NULL;
}

static void wait_granted(struct pm_range *r)
{
	for (int i = 0; i < RL_SPIN; i++) {
		if (__atomic_load_n(&r->state, __ATOMIC_ACQUIRE) == RS_GRANTED)
			return;
		cpu_relax();
	}
	uint32_t expect = RS_WAITING;
	if (!__atomic_compare_exchange_n(&r->state, &expect, RS_SLEEPING, false,
					 __ATOMIC_ACQUIRE, __ATOMIC_ACQUIRE))
		return;  /* it was granted meanwhile (expect == RS_GRANTED) */
	while (__atomic_load_n(&r->state, __ATOMIC_ACQUIRE) != RS_GRANTED)
		futex_wait(&r->state, RS_SLEEPING);
}

/* Hands the lock to a waiter.  After the exchange the waiter may return,
 * unlock and reuse its record at once, so nothing but the futex address is
 * touched afterwards; a wake on a recycled address is a harmless spurious
 * wakeup for whoever waits there (every futex user loops on its condition). */
static void grant(struct pm_range *q)
{
	uint32_t old = __atomic_exchange_n(&q->state, RS_GRANTED, __ATOMIC_RELEASE);
	if (old == RS_SLEEPING)
		futex_wake_one(&q->state);
}

static void range_lock(struct pm_rangelock *rl, struct pm_range *r,
		       uint64_t start, uint64_t end, bool writer)
{
	assert(start <= end);
	r->start = start;
	r->end = end;
	r->writer = writer;
	r->wake_next = NULL;

	uint32_t n = 0;
	pthread_mutex_lock(&rl->mu);
	for (struct pm_range *p = rl->head; p; p = p->next)
		n += conflict(p, r);
	r->blockers = n;
	__atomic_store_n(&r->state, n ? RS_WAITING : RS_GRANTED, __ATOMIC_RELAXED);
	enqueue(rl, r);
	rl->nwaiting += n != 0;
	pthread_mutex_unlock(&rl->mu);

	if (n)
		wait_granted(r);
}

void pm_range_rdlock(struct pm_rangelock *rl, struct pm_range *r,
		     uint64_t start, uint64_t end)
{
	range_lock(rl, r, start, end, false);
}

void pm_range_wrlock(struct pm_rangelock *rl, struct pm_range *r,
		     uint64_t start, uint64_t end)
{
	range_lock(rl, r, start, end, true);
}

static bool range_trylock(struct pm_rangelock *rl, struct pm_range *r,
			  uint64_t start, uint64_t end, bool writer)
{
	assert(start <= end);
	r->start = start;
	r->end = end;
	r->writer = writer;
	r->wake_next = NULL;
	r->blockers = 0;

	pthread_mutex_lock(&rl->mu);
	for (struct pm_range *p = rl->head; p; p = p->next) {
		if (conflict(p, r)) {
			pthread_mutex_unlock(&rl->mu);
			return false;
		}
	}
	__atomic_store_n(&r->state, RS_GRANTED, __ATOMIC_RELAXED);
	enqueue(rl, r);
	pthread_mutex_unlock(&rl->mu);
	return true;
}

bool pm_range_tryrdlock(struct pm_rangelock *rl, struct pm_range *r,
			uint64_t start, uint64_t end)
{
	return range_trylock(rl, r, start, end, false);
}

bool pm_range_trywrlock(struct pm_rangelock *rl, struct pm_range *r,
			uint64_t start, uint64_t end)
{
	return range_trylock(rl, r, start, end, true);
}

void pm_range_unlock(struct pm_rangelock *rl, struct pm_range *r)
{
	struct pm_range *wake = NULL, **wake_tail = &wake;

	assert(__atomic_load_n(&r->state, __ATOMIC_RELAXED) == RS_GRANTED);
	pthread_mutex_lock(&rl->mu);
	/* Only later requests can have counted r as a blocker. */
	for (struct pm_range *q = r->next; q; q = q->next) {
		if (!conflict(r, q))
			continue;
		assert(q->blockers > 0);
		if (--q->blockers == 0) {
			q->wake_next = NULL;
			*wake_tail = q;
			wake_tail = &q->wake_next;
			rl->nwaiting--;
		}
	}
	dequeue(rl, r);
	pthread_mutex_unlock(&rl->mu);

	/* Grant outside the mutex: a granted-but-unwoken q cannot leave the
	 * queue (its owner is still blocked), so its record stays valid until
	 * grant() publishes RS_GRANTED.  Read the link before that. */
	while (wake) {
		struct pm_range *next = wake->wake_next;
		grant(wake);
		wake = next;
	}
}

unsigned pm_rangelock_waiters(struct pm_rangelock *rl)
{
	pthread_mutex_lock(&rl->mu);
	unsigned n = rl->nwaiting;
	pthread_mutex_unlock(&rl->mu);
	return n;
}
