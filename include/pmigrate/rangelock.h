/* SPDX-License-Identifier: MIT */
/* Reader/writer range locks over half-open ranges [start, end) of 64-bit
 * integers (page numbers in the engine).
 *
 * Readers share with readers; a writer excludes every holder whose range
 * overlaps its own; requests whose ranges are disjoint never wait for each
 * other.  Conflicting requests are served in arrival order (FIFO): a request
 * waits only for earlier requests that overlap it and conflict with it, so a
 * writer is never overtaken by readers that arrive after it and cannot
 * starve.  Blocked callers sleep (futex); nothing allocates.
 *
 * The lock object and the per-acquisition record (struct pm_range) are plain
 * structs the caller places anywhere (stack, inside a task).  A record is
 * owned by the lock from the moment it is passed to a lock function until the
 * matching pm_range_unlock() returns (or until a try-lock returns false); it
 * must not be moved, freed or reused in that time.  Unlock may be done by a
 * different thread than the one that locked.
 *
 * See docs/rangelock.md for the algorithm and its correctness argument.
 */
#ifndef PMIGRATE_RANGELOCK_H
#define PMIGRATE_RANGELOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

/* One request (waiting or granted).  All fields are private to the lock. */
struct pm_range {
	uint64_t start, end;           /* [start, end) */
	struct pm_range *prev, *next;  /* arrival-ordered queue of the lock */
	struct pm_range *wake_next;    /* private list of requests to wake */
	uint32_t blockers;             /* earlier conflicting requests queued */
	uint32_t state;                /* futex word: waiting/sleeping/granted */
	bool writer;
};

/* The lock.  All fields are private. */
struct pm_rangelock {
	pthread_mutex_t mu;            /* protects the queue, held briefly */
	struct pm_range *head, *tail;  /* requests in arrival order */
	uint32_t nwaiting;             /* queued requests not yet granted */
};

/* Returns 0 or a negative errno. */
int pm_rangelock_init(struct pm_rangelock *rl);
/* The lock must be idle (no holders, no waiters). */
void pm_rangelock_destroy(struct pm_rangelock *rl);

/* Blocking acquisitions.  start <= end is required; an empty range
 * (start == end) conflicts with nothing and is granted at once. */
void pm_range_rdlock(struct pm_rangelock *rl, struct pm_range *r,
		     uint64_t start, uint64_t end);
void pm_range_wrlock(struct pm_rangelock *rl, struct pm_range *r,
		     uint64_t start, uint64_t end);

/* Non-blocking acquisitions: succeed only if the request would be granted
 * at once, i.e. no queued request (granted or still waiting) overlaps and
 * conflicts with it.  On false, r is not owned by the lock. */
bool pm_range_tryrdlock(struct pm_rangelock *rl, struct pm_range *r,
			uint64_t start, uint64_t end);
bool pm_range_trywrlock(struct pm_rangelock *rl, struct pm_range *r,
			uint64_t start, uint64_t end);

/* Releases a granted request (read or write). */
void pm_range_unlock(struct pm_rangelock *rl, struct pm_range *r);

/* Number of requests currently blocked in the lock (a snapshot; for
 * statistics and tests). */
unsigned pm_rangelock_waiters(struct pm_rangelock *rl);

#endif
