/* SPDX-License-Identifier: MIT */
/* Bounded task queue between the producer and the workers, with a count of
 * tasks handed out but not finished so the producer can wait for idle. */
#ifndef PM_ENGINE_QUEUE_H
#define PM_ENGINE_QUEUE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct pm_task {
	uint32_t chunk;
	uint32_t round;
};

struct pm_queue {
	pthread_mutex_t lock;
	pthread_cond_t not_empty, not_full, idle;
	struct pm_task *slots;
	unsigned cap, head, count;
	unsigned pending;       /* pushed and not yet done */
	bool closed;
};

int pm_queue_init(struct pm_queue *q, unsigned cap);
void pm_queue_destroy(struct pm_queue *q);
/* Blocks while full; returns false if the queue was closed. */
bool pm_queue_push(struct pm_queue *q, struct pm_task t);
/* Blocks while empty; returns false once closed and drained. */
bool pm_queue_pop(struct pm_queue *q, struct pm_task *t);
/* The same with a limit: 1 popped, 0 nothing within timeout_ms, -1 closed
 * and drained. */
int pm_queue_pop_timed(struct pm_queue *q, struct pm_task *t, unsigned timeout_ms);
/* A popped task is finished. */
void pm_queue_done(struct pm_queue *q);
/* Waits until every pushed task is done, or timeout; returns false on timeout. */
bool pm_queue_wait_idle(struct pm_queue *q, unsigned timeout_ms);
/* Wakes everyone; pushes fail, pops drain what is left. */
void pm_queue_close(struct pm_queue *q);

#endif
