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

/* A chunk of guest memory, or of a disk: the unit a worker harvests and
 * sends.  For a disk, region is the disk and npages/first count blocks. */
struct chunk_ref {
	uint32_t region;
	uint32_t npages;
	uint64_t first;
	bool disk;
};

/* A disk being migrated (disk_send.c). */
struct src_disk {
	const struct pm_blockdev *bd;
	const uint8_t *map;             /* read-only mapping, to tell zero blocks (NULL: none) */
	uint64_t nblocks;
	uint32_t chunk_blocks, nchunks;
	uint64_t dirty_at[PM_MAX_ROUNDS + 2]; /* dirty blocks at each round's start */
	_Atomic uint64_t blocks, zero, unalloc, bytes;
	_Atomic uint64_t busy_us;       /* workers' time on this disk's chunks */
};

/* A chunk sent on a channel and not yet acknowledged: if the channel is
 * lost, the chunk is sent again on another one. */
struct sent_chunk {
	uint32_t chunk;
	uint64_t seq;                   /* the channel's PAGES frame count after it */
};

/* One channel and the worker thread that uses it.  Whoever does I/O on a
 * channel holds its io lock: the worker during a chunk, the migration
 * thread for STATE, END, barriers and the outcome.  (One thread at a time
 * per connection: TLS needs it, and frames must not interleave.) */
struct worker {
	struct src_ctx *c;
	unsigned idx;
	pthread_mutex_t io;
	struct pm_conn conn;
	unsigned generation;            /* reconnects of this channel */
	pthread_t thread;
	bool started;
	struct pm_codec *codec;
	uint8_t *cbuf;                  /* compressed payloads of one chunk */
	uint8_t *snap;                  /* stable copy of the run being compressed */
	size_t cbuf_cap;
	uint8_t (*hdrs)[PM_FRAME_HDR_LEN + PM_PAGES_FIXED_LEN];
	uint8_t *dhead;                 /* a disk chunk's header-only frames */
	struct iovec *iov;
	struct pm_end sent;             /* what END will count */
	bool io_failed;                 /* the last error was the channel's, not the VM's */
	uint32_t cur_chunk;             /* the chunk being sent */
	double last_send;               /* for PING */
	char to[256], bind[256];
	char peer[300];                 /* "10.0.0.2:7000 (channel 2)" */
	char what[160];                 /* "channel 2 (10.0.0.2:7000): sending pages" */
	_Atomic uint64_t wire_bytes;
	_Atomic uint64_t busy_us;       /* time spent harvesting and sending */
	uint64_t busy_at_round;         /* busy_us when the round started (migration thread) */
	struct pm_err err;
	/* Replies of the destination (ACK, LOST, ERROR, DONE, ...), read
	 * without blocking: a partial frame waits here for the rest. */
	uint8_t reply[PM_FRAME_HDR_LEN + PM_LOST_FIXED_LEN + PM_MAX_ERROR_LEN];
	size_t reply_len;
	bool dead;                      /* closed or broken: nothing more comes */
	struct pm_err dead_why;
	/* Failover (under io) */
	struct sent_chunk *log;         /* ring of unacknowledged chunks */
	unsigned log_head, log_len, log_cap;
	uint64_t acked;                 /* PAGES frames the destination applied */
	atomic_bool lost;               /* given up: its work went to the others */
	atomic_bool lost_req;           /* asked by another thread to give it up */
	struct pm_err lost_why;         /* under c->lost_lock */
	int event;                      /* index of its loss in the report, -1 */
};

struct round_acc {
	_Atomic uint64_t pages, zero, unpop, bytes; /* bytes: all wire bytes, disks' too */
	_Atomic uint64_t dblocks, dzero, dunalloc, dbytes; /* disk blocks and their wire bytes */
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
	/* Disks: their chunks follow memory's in chunks[] (from mem_chunks). */
	uint32_t mem_chunks;
	unsigned ndisks;
	bool disk_copy;                 /* read and send instead of sendfile (a benchmark's switch) */
	unsigned disks_tracked;         /* disks whose dirty tracking runs (the first n) */
	struct src_disk disk[PM_MAX_DISKS];
	uint64_t dirty_bytes;           /* at the current round's start, memory and disks */
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
	uint64_t min_dirty;             /* lowest dirty bytes at a round start */
	unsigned no_progress;
	double t0, t_round, t_pause, bw, dump_ms;
	double t_end_sent;              /* the last END went out: DONE's wait starts */
	double verify_src_ms;           /* digests of --verify, inside the pause */
	uint64_t bytes_at_round;
	double round_ms[PM_MAX_ROUNDS + 2];
	uint64_t dirty_at[PM_MAX_ROUNDS + 2];

	/* Failover: chunks to send whole again (their last copy was on a lost
	 * channel), channels alive, losses for the report. */
	bool failover;
	atomic_uchar *resend;
	atomic_uint resend_pending;
	_Atomic uint64_t resent_pages;
	atomic_uint alive;
	atomic_bool reconnect_open;     /* cleared before barriers and switchover */
	pthread_mutex_t lost_lock;      /* events, lost_why, reconnects */
	unsigned nevents;
	struct pm_lost_channel events[PM_MAX_LOST];
	atomic_int state_channel;       /* where the last STATE went, -1 */
	uint8_t *digests;               /* --verify: the VERIFY body, sent after each STATE */
	size_t digests_len;
	atomic_uint mptcp_channels;     /* connections that are Multipath TCP */

	/* The first error of any worker (or a cancel). */
	atomic_bool failed;
	pthread_mutex_t err_lock;
	struct pm_err err;
	bool cancel_won;                /* the first error is the cancel */
	atomic_bool refused;            /* the destination sent ERROR: it does not run the VM */

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
/* One task on w's channel (holding its io lock), failures handled. */
void src_run_task(struct worker *w, struct pm_task t);
/* Allocates the buffers of a worker; frees them. */
int src_worker_init(struct worker *w, struct src_ctx *c, unsigned idx, struct pm_err *err);
void src_worker_free(struct worker *w);
/* disk_send.c */
/* Checks the backend's disks and maps them for zero checks. */
int src_disks_setup(struct src_ctx *c, struct pm_err *err);
void src_disks_free(struct src_ctx *c);
/* Harvests one disk chunk and sends its dirty blocks. */
int src_send_disk_chunk(struct worker *w, struct pm_task t);
/* Bytes of all disks (their full size). */
uint64_t src_disks_bytes(const struct src_ctx *c);

/* source.c: a timeline sample if one is due (always with force). */
void src_sample(struct src_ctx *c, bool force);

/* srcchan.c: the channels (holding w->io where it says "owner"). */
/* Owner: gives the channel up -- its unacknowledged chunks are marked to be
 * sent whole again; without failover, or with no channel left, the
 * migration fails with why. */
void chan_lost(struct worker *w, const struct pm_err *why);
/* Any thread: asks the owner to give channel w up (and wakes its I/O). */
void chan_request_lost(struct worker *w, const struct pm_err *why);
/* Owner: acts on a request; true if the channel is lost. */
bool chan_gone(struct worker *w);
/* Owner: before chunk frames go out, and after: the chunk is in flight. */
int chan_log(struct worker *w, uint32_t chunk);
/* Owner: what the destination sent, without blocking.  ACK and LOST are
 * handled here; 1 returns another frame at the start of w->reply (drop it
 * with chan_drop), 0 nothing more, -1 the channel is dead (dead_why). */
int chan_take(struct worker *w, struct pm_frame_hdr *h);
void chan_drop(struct worker *w, const struct pm_frame_hdr *h);
/* Owner (a worker between chunks): replies read, an ERROR fails the
 * migration, a dead channel is lost. */
void chan_poll(struct worker *w);
/* A chunk's last copy went on a lost channel. */
void chan_mark_resend(struct src_ctx *c, uint32_t chunk);
/* Idle worker: a PING if nothing went out for a while. */
void chan_ping(struct worker *w);
/* Worker of a lost channel: dials again while it may; true when back. */
bool chan_reconnect(struct worker *w);
/* A new connection of channel w (HELLO answered) into conn. */
int chan_connect(struct worker *w, struct pm_conn *conn, unsigned generation, unsigned timeout_ms,
		 struct pm_err *err);
/* On a fresh connection: the next frame, which must be `want` (an ERROR
 * becomes "destination refused: ..."). */
int chan_recv_reply(struct worker *w, struct pm_conn *conn, uint32_t want, uint8_t *body, uint32_t cap,
		    uint32_t *len, struct pm_err *err);
int chan_init(struct worker *w, struct pm_err *err);
void chan_free(struct worker *w);

/* source.c: the lifecycle's helpers the rounds use. */
void src_enter(struct src_ctx *c, enum src_phase ph);
/* Bytes sent so far, every round. */
uint64_t src_total_bytes(struct src_ctx *c);
/* An ERROR body as "destination refused: ..." in err: proof that the
 * destination does not run the VM. */
int src_refused(struct src_ctx *c, const uint8_t *body, uint32_t len, struct pm_err *err);
/* Channel w for the migration thread (its io lock): false if it is lost;
 * src_give() hands it back. */
bool src_take(struct worker *w);
void src_give(struct worker *w);
/* A worker failed: stops them all; its error (or the destination's
 * reason, if it said why) in err. */
int src_worker_error(struct src_ctx *c, struct pm_err *err);

/* rounds.c: pre-copy. */
/* After a dirty_sync: how many pages are dirty and, where the backend can
 * say, which chunks hold them. */
int src_count_dirty(struct src_ctx *c, uint64_t *dirty, struct pm_err *err);
/* One pass over this round's dirty chunks (inline in serial mode). */
int src_run_pass(struct src_ctx *c, uint32_t round);
/* Waits until the workers have sent everything queued. */
int src_wait_idle(struct src_ctx *c);
/* Barrier (and drain): ROUND_END on every live channel, then each one's
 * ROUND_ACK (a lost channel no longer counts; deadline twice the timeout). */
int src_round_barrier(struct src_ctx *c, uint32_t round);
/* Dirty blocks of every disk at the start of round r (their bytes in
 * c->dirty_bytes). */
int src_disks_dirty(struct src_ctx *c, unsigned r, struct pm_err *err);
/* Rounds while the VM runs, until the switchover is decided; c->round is
 * then the final round's number. */
int src_phase_precopy(struct src_ctx *c, struct pm_err *err);

#endif
