/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>
#include <time.h>
#include "engine/queue.h"
#include "engine/clock.h"

int pm_queue_init(struct pm_queue *q, unsigned cap)
{
	pthread_condattr_t ca;

	*q = (struct pm_queue){ .cap = cap };
	q->slots = calloc(cap, sizeof(*q->slots));
	if (!q->slots)
		return -ENOMEM;
	pthread_mutex_init(&q->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&q->not_empty, &ca);
	pthread_cond_init(&q->not_full, &ca);
	pthread_cond_init(&q->idle, &ca);
	pthread_condattr_destroy(&ca);
	return 0;
}

void pm_queue_destroy(struct pm_queue *q)
{
	pthread_mutex_destroy(&q->lock);
	pthread_cond_destroy(&q->not_empty);
	pthread_cond_destroy(&q->not_full);
	pthread_cond_destroy(&q->idle);
	free(q->slots);
}

bool pm_queue_push(struct pm_queue *q, struct pm_task t)
{
	pthread_mutex_lock(&q->lock);
	while (q->count == q->cap && !q->closed)
		pthread_cond_wait(&q->not_full, &q->lock);
	if (q->closed) {
		pthread_mutex_unlock(&q->lock);
		return false;
	}
	q->slots[(q->head + q->count) % q->cap] = t;
	q->count++;
	q->pending++;
	pthread_cond_signal(&q->not_empty);
	pthread_mutex_unlock(&q->lock);
	return true;
}

bool pm_queue_pop(struct pm_queue *q, struct pm_task *t)
{
	pthread_mutex_lock(&q->lock);
	while (q->count == 0 && !q->closed)
		pthread_cond_wait(&q->not_empty, &q->lock);
	if (q->count == 0) {
		pthread_mutex_unlock(&q->lock);
		return false;
	}
	*t = q->slots[q->head];
	q->head = (q->head + 1) % q->cap;
	q->count--;
	pthread_cond_signal(&q->not_full);
	pthread_mutex_unlock(&q->lock);
	return true;
}

int pm_queue_pop_timed(struct pm_queue *q, struct pm_task *t, unsigned timeout_ms)
{
	struct timespec dl;
	int r = 1;

	pm_deadline_after_ms(&dl, timeout_ms);
	pthread_mutex_lock(&q->lock);
	while (q->count == 0 && !q->closed)
		if (pthread_cond_timedwait(&q->not_empty, &q->lock, &dl) == ETIMEDOUT && q->count == 0) {
			r = q->closed ? -1 : 0;
			break;
		}
	if (r == 1 && q->count == 0)
		r = -1;
	if (r == 1) {
		*t = q->slots[q->head];
		q->head = (q->head + 1) % q->cap;
		q->count--;
		pthread_cond_signal(&q->not_full);
	}
	pthread_mutex_unlock(&q->lock);
	return r;
}

void pm_queue_done(struct pm_queue *q)
{
	pthread_mutex_lock(&q->lock);
	if (--q->pending == 0)
		pthread_cond_broadcast(&q->idle);
	pthread_mutex_unlock(&q->lock);
}

bool pm_queue_wait_idle(struct pm_queue *q, unsigned timeout_ms)
{
	struct timespec dl;
	bool ok = true;

	pm_deadline_after_ms(&dl, timeout_ms);
	pthread_mutex_lock(&q->lock);
	while (q->pending && ok)
		ok = pthread_cond_timedwait(&q->idle, &q->lock, &dl) != ETIMEDOUT || !q->pending;
	pthread_mutex_unlock(&q->lock);
	return ok;
}

void pm_queue_close(struct pm_queue *q)
{
	pthread_mutex_lock(&q->lock);
	q->closed = true;
	pthread_cond_broadcast(&q->not_empty);
	pthread_cond_broadcast(&q->not_full);
	pthread_mutex_unlock(&q->lock);
}
