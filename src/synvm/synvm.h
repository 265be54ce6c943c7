/* SPDX-License-Identifier: MIT */
/* The synthetic VM: guest memory is a memfd mapped once; "vCPUs" are
 * threads running a workload that dirties memory at a set rate; a heartbeat
 * vCPU ticks every millisecond and records, in guest memory, the largest gap
 * it has seen: the pause a guest would notice.  It implements the engine's
 * backend interface with the process-memory dirty tracker, or (--dirty
 * self) with a log its vCPUs keep of every page they write. */
#ifndef PM_SYNVM_H
#define PM_SYNVM_H

#include <stdbool.h>
#include <stdint.h>
#include <pmigrate/backend.h>
#include <pmigrate/dirty.h>
#include <pmigrate/error.h>
#include <pmigrate/guestmem.h>

enum synvm_kind { SYNVM_IDLE, SYNVM_SEQ, SYNVM_RANDOM, SYNVM_ZIPF };
enum synvm_fill { SYNVM_FILL_MIXED, SYNVM_FILL_RANDOM, SYNVM_FILL_ZERO };

struct synvm_workload {
	enum synvm_kind kind;
	double rate;            /* bytes dirtied per second (pages * 4096) */
	double hot;             /* zipf: fraction of memory in the hot set */
	unsigned threads;       /* workload vCPUs */
	uint64_t seed;
	bool all;               /* span=all: write all memory, not only the populated part */
};

/* "idle", "seq,rate=100MB/s", "random,rate=1GB/s,threads=2",
 * "zipf,rate=200MB/s,hot=10%".  MB = 10^6 bytes, MiB = 2^20. */
int synvm_parse_workload(const char *s, struct synvm_workload *w, struct pm_err *err);
void synvm_format_workload(const struct synvm_workload *w, char *buf, size_t len);
/* "256M", "1G", "4096K", plain bytes; binary units. */
int synvm_parse_size(const char *s, uint64_t *out, struct pm_err *err);
/* A workload's seed=: an unsigned 64-bit number (decimal, 0x hex). */
int synvm_parse_seed(const char *s, uint64_t *out, struct pm_err *err);
/* "seq" or "random" or "zipf" ... rates: "200MB/s", "1GiB/s". */
int synvm_parse_rate(const char *s, double *out, struct pm_err *err);

/* Guest page 0: the heartbeat block (travels with the memory). */
struct synvm_heartbeat {
	uint64_t magic;
	uint64_t count;
	uint64_t last_ns;        /* CLOCK_REALTIME of the last tick */
	uint64_t max_gap_ns;     /* largest gap between ticks ever seen */
	uint64_t resume_gap_ns;  /* gap across the last pause (migration) */
	uint64_t resumes;
};

/* A disk: "FILE[,size=SIZE][,populated=SIZE][,block=SIZE]". */
#define SYNVM_MAX_DISKS 8
struct synvm_disk_spec {
	char path[4096];
	uint64_t size;          /* 0: the file's own (it must exist) */
	uint64_t populate;      /* write this much first (pm_disk_params.populate) */
	uint32_t block_size;    /* 0: 64 KiB */
};
int synvm_parse_disk(const char *spec, struct synvm_disk_spec *d, struct pm_err *err);

/* The disk workload: "idle", "randwrite,rate=R", "seqwrite,rate=R", with
 * [,bs=SIZE][,threads=N][,seed=S]: writer threads, each write bs bytes of
 * fresh data at a bs-aligned offset, rate = bytes written per second. */
enum synvm_disk_kind { SYNVM_DISK_IDLE, SYNVM_DISK_RANDWRITE, SYNVM_DISK_SEQWRITE };
struct synvm_diskload {
	enum synvm_disk_kind kind;
	double rate;
	uint32_t bs;            /* default 64 KiB */
	unsigned threads;
	uint64_t seed;
};
int synvm_parse_diskload(const char *spec, struct synvm_diskload *w, struct pm_err *err);
void synvm_format_diskload(const struct synvm_diskload *w, char *buf, size_t len);

struct synvm_opts {
	uint64_t mem_bytes;
	enum pm_mem_kind mem_kind;  /* anon (default), memfd, hugetlb */
	/* How much memory the guest has ever written (0: all of it), from
	 * the start; the rest stays untouched, as in a freshly booted guest. */
	uint64_t populated_bytes;
	/* Allocate all memory at creation (QEMU's prealloc=on): a destination
	 * then pays no first touch while pages arrive. */
	bool prealloc;
	struct synvm_workload workload;
	const char *mem_file;       /* initial content */
	enum synvm_fill fill;
	enum pm_dirty_method dirty;
	bool incoming;              /* memory stays zero, threads wait for load_state */
	bool start_paused;
	unsigned ndisks;
	struct synvm_disk_spec disks[SYNVM_MAX_DISKS];
	struct synvm_diskload diskload;
};

struct synvm;

int synvm_create(struct synvm **out, const struct synvm_opts *o, struct pm_err *err);
void synvm_destroy(struct synvm *vm);
struct pm_backend *synvm_backend(struct synvm *vm);
/* Reads the heartbeat block (a consistent snapshot is not guaranteed while
 * running; fields are 64-bit and individually atomic on x86-64). */
void synvm_heartbeat(struct synvm *vm, struct synvm_heartbeat *hb);
const char *synvm_dirty_method(struct synvm *vm);
/* Milliseconds --prealloc took (0 without it). */
double synvm_prealloc_ms(struct synvm *vm);
/* The guest memory (kind, usage). */
const struct pm_guestmem *synvm_memory(struct synvm *vm);
/* Pages the workload writes in: the populated part, or all (span=all). */
uint64_t synvm_span_pages(struct synvm *vm);
const struct synvm_workload *synvm_workload_of(struct synvm *vm);
uint64_t synvm_pages_written(struct synvm *vm);
/* Bytes (pages x 4096) the workload wrote per second over the last full
 * second: what it achieved, beside the rate it asked for. */
double synvm_write_rate(struct synvm *vm);
/* Disks (pmigrate vm --disk): how many, each one, the workload on them,
 * bytes the writers wrote, and their rate over the last full second. */
struct pm_disk;
unsigned synvm_ndisks(struct synvm *vm);
struct pm_disk *synvm_disk(struct synvm *vm, unsigned i);
const struct synvm_diskload *synvm_diskload_of(struct synvm *vm);
uint64_t synvm_disk_bytes_written(struct synvm *vm);
double synvm_disk_write_rate(struct synvm *vm);
/* Gives pages back (like a balloon): they read as zero afterwards.  Safe
 * during a migration: done under the layout range lock and the pages are
 * marked dirty so the destination gets the zeros too. */
int synvm_discard(struct synvm *vm, uint64_t offset, uint64_t len, struct pm_err *err);

#endif
