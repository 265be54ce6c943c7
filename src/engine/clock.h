/* SPDX-License-Identifier: MIT */
/* The engine's one clock, CLOCK_MONOTONIC: timings and condition-wait
 * deadlines (its condition variables are set to that clock). */
#ifndef PM_ENGINE_CLOCK_H
#define PM_ENGINE_CLOCK_H

#include <time.h>

static inline double pm_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* The time ms from now, for pthread_cond_timedwait. */
static inline void pm_deadline_after_ms(struct timespec *dl, unsigned ms)
{
	clock_gettime(CLOCK_MONOTONIC, dl);
	dl->tv_sec += ms / 1000;
	dl->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (dl->tv_nsec >= 1000000000L) {
		dl->tv_sec++;
		dl->tv_nsec -= 1000000000L;
	}
}

#endif
