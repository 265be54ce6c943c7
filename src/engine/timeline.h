/* SPDX-License-Identifier: MIT */
/* A migration's timeline: samples kept in a fixed array; when it is full,
 * every other sample goes and the interval doubles, so a migration of any
 * length fits and stays evenly sampled. */
#ifndef PM_ENGINE_TIMELINE_H
#define PM_ENGINE_TIMELINE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <pmigrate/migrate.h>

struct pm_timeline {
	pthread_mutex_t lock;
	_Atomic uint64_t next_us;       /* a sample is due from then on */
	double interval_ms;
	unsigned n;
	struct pm_sample s[PM_MAX_SAMPLES];
};

void pm_timeline_init(struct pm_timeline *tl, double interval_ms);
void pm_timeline_destroy(struct pm_timeline *tl);
/* True (for one caller) when a sample is due at now_ms, or always with
 * force.  The caller then fills a sample and passes it to pm_timeline_add. */
bool pm_timeline_due(struct pm_timeline *tl, double now_ms, bool force);
void pm_timeline_add(struct pm_timeline *tl, const struct pm_sample *s);
/* Copies the samples into the report. */
void pm_timeline_report(struct pm_timeline *tl, struct pm_report *rep);

#endif
