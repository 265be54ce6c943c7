/* SPDX-License-Identifier: MIT */
/* Private to the destination side.  One incoming migration is a struct
 * dst_ctx, shared by the lifecycle (dest.c: accept, layout, wait, check,
 * resume) and the receivers (recv.c: one thread per channel that validates
 * and applies frames). */
#ifndef PM_ENGINE_DEST_H
#define PM_ENGINE_DEST_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>
#include <pmigrate/migrate.h>
#include <pmigrate/rangelock.h>
#include "engine/net.h"
#include "engine/protocol.h"

struct pm_codec;
struct pm_tls;

#define MAX_LISTEN 64
#define MAX_ADOPTED 128

struct pm_incoming {
	int cancel[2];          /* pipe: a byte here cancels a run */
	unsigned n;
	int lfd[MAX_LISTEN];    /* non-blocking */
	char addr[MAX_LISTEN][80];
	unsigned timeout_ms;
	const char *dump_on_resume;
	struct pm_tls *tls;     /* NULL: plain TCP */
	int adopted[MAX_ADOPTED]; /* connected sockets handed in, not yet taken */
	unsigned nadopted;
	void (*log)(void *opaque, const char *msg);
	void *log_opaque;
	bool mptcp;             /* listening with Multipath TCP */
};

enum rx_state {
	RX_RUNNING,             /* reading frames */
	RX_ENDED,               /* END arrived and matched (failover: more may come) */
	RX_LOST,                /* failover: its connection broke; the source resends its work */
	RX_FAILED,              /* its error is the migration's (or another's was first) */
};

struct receiver {
	struct dst_ctx *c;
	unsigned idx;
	struct pm_conn conn;
	pthread_mutex_t send_lock;      /* frames we send on it: one at a time */
	pthread_t thread;
	bool started;
	enum rx_state state;            /* under c->mu */
	unsigned generation;            /* failover: connections of this channel so far - 1 */
	bool replaced;                  /* under c->mu: a reconnect takes its place; exit quietly */
	bool io_failed;                 /* the last error was the connection's */
	uint64_t acked_frames, acked_bytes; /* what the last ACK said */
	bool ack_dead;                  /* an ACK could not go out: no more */
	struct pm_end got;              /* what arrived, compared with END */
	struct pm_end end;
	struct pm_codec *codec;
	uint8_t *cbuf, *run, *scratch;  /* compressed payload, decompressed run, a stale page */
	size_t cbuf_cap;
	struct iovec *iov;
	uint64_t stale, zero, unpop, data;
	uint64_t dblocks, dzero;        /* disk blocks: with data, and zero or unallocated */
	uint32_t max_round;
	uint8_t *rbuf;                  /* receive buffer for headers and small runs */
	size_t roff, rlen;
	struct pm_err err;
};

struct dst_ctx {
	struct pm_backend *be;
	struct pm_incoming *in;
	struct pm_layout layout;
	uint64_t region_base[PM_MAX_REGIONS];
	uint64_t total_pages;
	/* Round of the copy each unit holds (0 = none): memory's pages, then
	 * every disk's blocks (block b of disk d is unit disk_base[d] + b). */
	uint32_t *page_round;
	uint64_t total_units;
	/* Disks (disk_recv.c). */
	unsigned ndisks;
	bool shared_storage;            /* nothing of them comes: they are the source's */
	uint64_t disk_base[PM_MAX_DISKS];
	_Atomic uint64_t *disk_data[PM_MAX_DISKS]; /* blocks holding data in the image here */
	uint8_t *zeros;                 /* for file systems that cannot punch holes */
	struct { _Atomic uint64_t blocks, zero, unalloc, bytes; } disk_rx[PM_MAX_DISKS];
	double disk_sync_ms;
	/* Pages whose destination memory holds data (1 bit each, atomic): a
	 * zero or unpopulated run gives back only these, so untouched memory
	 * stays untouched.  Regions without a pm_guestmem are not tracked. */
	uint64_t *has_data;
	_Atomic double t_first_end;     /* when the first END arrived (ms), 0 before */
	struct pm_rangelock lock;       /* over page numbers: check-and-write of a run */
	unsigned nch, chunk_pages, timeout_ms;
	uint32_t features;
	char peer[300];                 /* the source's authenticated identity ("" without TLS) */
	unsigned rejected;              /* connections closed in the accept phase */
	struct receiver *rx;
	int notify[2];                  /* a receiver changed state: wakes the incoming thread */
	int stop[2];                    /* every receiver's wake fd: the end (done or failed) */
	bool failover;
	uint8_t session[16];

	/* Under mu: receiver states, the round barrier, the first error, the
	 * device state. */
	pthread_mutex_t mu;
	pthread_cond_t cond;
	unsigned running;               /* receivers in RX_RUNNING */
	unsigned barrier_count, barrier_gen;
	bool stopping;                  /* complete: receivers end quietly */
	uint64_t lost_union;            /* failover: channels the source gave up (END masks) */
	uint32_t final_round;           /* of the latest END set: every END must be of it */
	double last_change;             /* when a receiver last changed state */
	double t0;                      /* channels connected */
	unsigned nlost;                 /* channels this side lost (report) */
	struct pm_lost_channel lost[PM_MAX_LOST];
	bool failed;
	struct pm_err err;
	void *state;
	size_t state_len;
	bool have_state;
	uint8_t *verify;                /* the source's digests (VERIFY), or NULL */
	uint64_t verify_chunks;
};

/* disk_recv.c */
/* Units for the disks (after the layout and features are known), and
 * which blocks of each image hold data now. */
int dst_disks_init(struct dst_ctx *c, struct pm_err *err);
void dst_disks_free(struct dst_ctx *c);
/* A BLOCKS frame whose fixed part was validated: payload, then the round
 * rule and pwrite/punch under the range lock. */
int rx_apply_blocks(struct receiver *x, const struct pm_pages *pg);
/* fsync of every image (before DONE). */
int dst_disks_sync(struct dst_ctx *c, struct pm_err *err);

/* recv.c */
/* Marks a page as holding data (or not) at the destination. */
void rx_set_data(struct dst_ctx *c, uint64_t g, bool on);
/* Reads exactly len bytes of the channel (buffered), holding no lock. */
int rx_read(struct receiver *x, void *buf, size_t len, const char *what);
int rx_init(struct receiver *x, struct dst_ctx *c, unsigned idx, struct pm_err *err);
void rx_free(struct receiver *x);
void *rx_main(void *arg);
/* Sends a frame on a receiver's channel (serialised with its other sends). */
int rx_send(struct receiver *x, uint32_t type, const void *body, uint32_t len, struct pm_err *err);

/* accept.c: waits for the channels of one session (each authenticated
 * when TLS is on) and hands them to c->rx. */
int dst_accept(struct pm_incoming *in, struct dst_ctx *c, struct pm_err *err);
void dst_log(struct pm_incoming *in, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* dest.c */
/* The migration fails: the first error wins, the source is told on every
 * channel, every receiver wakes. */
void dst_fail(struct dst_ctx *c, const struct pm_err *e);
/* A receiver changed state (ended, failed). */
void dst_notify(struct dst_ctx *c);
bool dst_cancelled(const struct dst_ctx *c);

#endif
