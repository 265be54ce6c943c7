/* SPDX-License-Identifier: MIT */
/* Private to the source side.  One migration is a struct src_ctx, shared by
 * the lifecycle (source.c: the phases and the one function that decides
 * what a failure means) and the send path (send.c: workers that harvest a
 * chunk's dirty bits, encode its pages and send them on their channel). */
#ifndef PM_ENGINE_SOURCE_H
#define PM_ENGINE_SOURCE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>
#include <pmigrate/migrate.h>
#include "engine/net.h"
#include "engine/protocol.h"
#include "engine/queue.h"
#include "engine/timeline.h"

struct pm_codec;
struct pm_tls;

/* A chunk of guest memory: the unit a worker harvests and sends. */
struct chunk_ref {
	uint32_t region;
	uint32_t npages;
	uint64_t first;
};

/* One channel and the worker thread that owns it during a pass. */
struct worker {
	struct src_ctx *c;
	unsigned idx;
	struct pm_conn conn;
	pthread_t thread;
	bool started;
	struct pm_codec *codec;
	uint8_t *cbuf;                  /* compressed payloads of one chunk */
	uint8_t *snap;                  /* stable copy of the run being compressed */
	size_t cbuf_cap;
	uint8_t (*hdrs)[PM_FRAME_HDR_LEN + PM_PAGES_FIXED_LEN];
	struct iovec *iov;
	struct pm_end sent;             /* what END will count */
	char peer[300];                 /* "10.0.0.2:7000 (channel 2)" */
	char what[160];                 /* "channel 2 (10.0.0.2:7000): sending pages" */
	_Atomic uint64_t wire_bytes;
	_Atomic uint64_t busy_us;       /* time spent harvesting and sending */
	uint64_t busy_at_round;         /* busy_us when the round started (migration thread) */
	struct pm_err err;
	/* Replies of the destination, read without blocking while waiting for
	 * the outcome: a partial frame waits here for the rest. */
	uint8_t reply[PM_FRAME_HDR_LEN + PM_ERROR_FIXED_LEN + PM_MAX_ERROR_LEN];
	size_t reply_len;
	bool dead;                      /* closed or broken: nothing more comes */
	struct pm_err dead_why;
};

struct round_acc {
	_Atomic uint64_t pages, zero, unpop, bytes;
};

/* The lifecycle's phases, in order.  docs/engine.md draws them. */
enum src_phase {
	SRC_SETUP,              /* parameters checked, buffers allocated */
	SRC_CONNECT,            /* channels, HELLO, LAYOUT; dirty tracking starts */
	SRC_PRECOPY,            /* rounds while the VM runs */
	SRC_SWITCHOVER,         /* VM paused, final round */
	SRC_COMPLETING,         /* device state, END, waiting for DONE */
	SRC_COMPLETED,          /* DONE arrived: the destination runs the VM */
	SRC_FAILED,             /* the source VM runs (again) */
	SRC_UNKNOWN,            /* final state sent, no answer: paused until management decides */
};

/* Cancel against the point of no return: whichever comes first wins. */
enum src_gate {
	GATE_OPEN,              /* a cancel would be honoured */
	GATE_CANCELLED,         /* cancelled: the migration stops, the VM runs here */
	GATE_COMMITTED,         /* the last END is going out: too late to cancel */
	GATE_ENDED,             /* the migration has ended */
};

struct src_ctx {
	struct pm_backend *be;
	const struct pm_migrate_params *p;
	struct pm_report *rep;
	unsigned nch, chunk_pages, timeout_ms;
	uint32_t nchunks;
	struct chunk_ref *chunks;
	pthread_mutex_t *chunk_lock;
	uint32_t *chunk_round;          /* last round each chunk was harvested in */
	/* Chunks the current round visits (1 bit each): all in round 1, then
	 * those the backend's dirty summary names (all without one). */
	uint64_t *chunk_dirty;
	uint64_t *summary;              /* one region's summary, scratch */
	uint32_t region_chunk0[PM_MAX_REGIONS]; /* first chunk of each region */
	uint64_t region_base[PM_MAX_REGIONS]; /* global page number of each region */
	uint64_t vm_pages;
	uint8_t session[16];
	struct pm_queue q;
	struct worker *w;
	struct pm_tls *tls;             /* NULL: plain TCP */

	/* Lifecycle, owned by the migration thread. */
	enum src_phase phase;
	bool tracking, paused, workers_started;
	bool committed;                 /* every END of the final state was sent */
	atomic_int gate;                /* enum src_gate */
	int wake[2];                    /* a byte here ends every channel wait (cancel) */
	unsigned round;                 /* current round; the final one once paused */
	uint64_t prev_dirty;
	unsigned no_progress;
	double t0, t_round, t_pause, bw, dump_ms;
	double t_end_sent;              /* the last END went out: DONE's wait starts */
	double verify_src_ms;           /* digests of --verify, inside the pause */
	uint64_t bytes_at_round;
	double round_ms[PM_MAX_ROUNDS + 2];
	uint64_t dirty_at[PM_MAX_ROUNDS + 2];

	/* The first error of any worker (or a cancel). */
	atomic_bool failed;
	pthread_mutex_t err_lock;
	struct pm_err err;
	bool cancel_won;                /* the first error is the cancel */

	/* Read by the progress thread and pm_migration_progress(). */
	atomic_bool channels_ready;     /* nch and w are set */
	struct round_acc acc[PM_MAX_ROUNDS + 2];
	atomic_uint cur_round;
	atomic_ullong dirty_at_start;
	atomic_uint throttle;
	const char *_Atomic phase_name;
	pthread_t prog_thread;
	bool prog_init, prog_started;
	pthread_mutex_t prog_lock;
	pthread_cond_t prog_cond;
	bool prog_stop;

	/* Timeline: samples taken by whichever thread works when one is due
	 * (src_sample), times without verification dumps (excluded_us). */
	struct pm_timeline tl;
	atomic_uint sample_phase;       /* enum pm_sample_phase */
	_Atomic uint64_t excluded_us;
	double round_start[PM_MAX_ROUNDS + 2];
	double t_track, write_asked;    /* the guest's writes: backend write_stats */
	uint64_t written0, written1;
};

/* send.c */
/* Records a worker's error (the first one wins) and stops the migration. */
void src_fail(struct src_ctx *c, const struct pm_err *e);
/* Harvests one chunk and sends its dirty pages on w's channel. */
int src_process_chunk(struct worker *w, struct pm_task t);
void *src_worker_main(void *arg);
/* Allocates the buffers of a worker; frees them. */
int src_worker_init(struct worker *w, struct src_ctx *c, unsigned idx, struct pm_err *err);
void src_worker_free(struct worker *w);
/* source.c: a timeline sample if one is due (always with force). */
void src_sample(struct src_ctx *c, bool force);

#endif
