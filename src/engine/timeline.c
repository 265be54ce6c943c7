/* SPDX-License-Identifier: MIT */
#include <string.h>
#include "engine/timeline.h"

void pm_timeline_init(struct pm_timeline *tl, double interval_ms)
{
	pthread_mutex_init(&tl->lock, NULL);
	tl->interval_ms = interval_ms;
	tl->n = 0;
	atomic_store(&tl->next_us, 0);
}

void pm_timeline_destroy(struct pm_timeline *tl)
{
	pthread_mutex_destroy(&tl->lock);
}

bool pm_timeline_due(struct pm_timeline *tl, double now_ms, bool force)
{
	uint64_t now = (uint64_t)(now_ms * 1e3), next = atomic_load(&tl->next_us);

	if (force)
		return true;
	/* One of the threads that see the time pass wins the sample. */
	return now >= next && atomic_compare_exchange_strong(&tl->next_us, &next, UINT64_MAX);
}

void pm_timeline_add(struct pm_timeline *tl, const struct pm_sample *s)
{
	pthread_mutex_lock(&tl->lock);
	/* Samples from two threads can arrive out of order by a hair. */
	unsigned i = tl->n;
	if (i == PM_MAX_SAMPLES) {
		for (unsigned k = 1; k < PM_MAX_SAMPLES / 2; k++)
			tl->s[k] = tl->s[2 * k];
		tl->n = i = PM_MAX_SAMPLES / 2;
		tl->interval_ms *= 2;
	}
	while (i > 0 && tl->s[i - 1].t_ms > s->t_ms) {
		tl->s[i] = tl->s[i - 1];
		i--;
	}
	tl->s[i] = *s;
	tl->n++;
	atomic_store(&tl->next_us, (uint64_t)((s->t_ms + tl->interval_ms) * 1e3));
	pthread_mutex_unlock(&tl->lock);
}

void pm_timeline_report(struct pm_timeline *tl, struct pm_report *rep)
{
	pthread_mutex_lock(&tl->lock);
	rep->nsamples = tl->n;
	rep->sample_interval_ms = tl->interval_ms;
	memcpy(rep->samples, tl->s, tl->n * sizeof(tl->s[0]));
	pthread_mutex_unlock(&tl->lock);
}
