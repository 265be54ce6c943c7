/* SPDX-License-Identifier: MIT */
/* libpmigrate: parallel live migration of a VM behind a struct pm_backend.
 *
 * Source:      pm_migrate_outgoing() runs a whole migration (pre-copy rounds,
 *              switchover, completion handshake) and returns when the
 *              destination has acknowledged, or on failure with the source VM
 *              running again -- or, when the final state went out and neither
 *              DONE nor the destination's ERROR came back, with PM_UNKNOWN
 *              and the source VM paused: management decides (resume it here
 *              or drop it), never the engine alone.  pm_migration_start()
 *              runs the same in a thread of its own, with progress, cancel
 *              and wait (for a VMM's event loop: no signals needed).
 * Destination: pm_incoming_listen() binds the listening addresses, then
 *              pm_incoming_run() receives a migration and resumes the VM only
 *              when everything the source counted has arrived and been applied.
 */
#ifndef PMIGRATE_MIGRATE_H
#define PMIGRATE_MIGRATE_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <pmigrate/backend.h>
#include <pmigrate/error.h>

#define PM_MAX_CHANNELS 64
#define PM_MAX_ROUNDS 256

/* Returned (and in pm_report.status) when the outcome is unknown: the
 * source sent its final state, then neither DONE nor an explicit ERROR came
 * back.  The destination may be running the VM; the source's VM stays
 * paused until its owner resumes it (the destination did not run it) or
 * drops it (it did). */
#define PM_UNKNOWN (-EINPROGRESS)

enum pm_compress { PM_COMPRESS_NONE = 0, PM_COMPRESS_LZ4, PM_COMPRESS_ZSTD };
enum pm_nonconverge {
	PM_NC_THROTTLE = 0, /* slow the vCPUs down step by step (auto-converge) */
	PM_NC_FORCE,        /* switch over anyway, with an honest downtime */
	PM_NC_ABORT,        /* give up; the VM keeps running at the source */
};

/* Transport security (docs/security.md).  Every channel runs TLS 1.3 when
 * creds_dir or psk_file is set; without either, plain TCP, which both ends
 * refuse for any non-loopback address unless `insecure` is set. */
enum pm_tls_mode { PM_TLS_NONE = 0, PM_TLS_X509, PM_TLS_PSK };
struct pm_tls_params {
	/* X.509 with mutual authentication, QEMU's layout: ca-cert.pem, and
	 * server-cert.pem + server-key.pem (destination) or client-cert.pem +
	 * client-key.pem (source); ca-crl.pem is used if present. */
	const char *creds_dir;
	/* Pre-shared keys, QEMU's format: lines "identity:hexkey" (at least
	 * 16 bytes of key).  The source uses the first line. */
	const char *psk_file;
	/* Source, X.509: the name the destination's certificate must carry;
	 * NULL: the host of each destination address. */
	const char *hostname;
	/* Destination, X.509: only clients whose subject DN (RFC 4514, e.g.
	 * "CN=src.example,O=Example") matches a line of this file ('*' and
	 * '?' glob); NULL: any client the CA signed. */
	const char *authz_file;
	/* Keep the record layer in OpenSSL even where the kernel has TLS. */
	bool no_ktls;
};
/* Names for reports and options: "none", "x509", "psk". */
const char *pm_tls_mode_name(enum pm_tls_mode m);

struct pm_progress {
	const char *phase;          /* "connecting", "precopy", "switchover", "completing" */
	unsigned round;
	uint64_t dirty_pages;       /* dirty at the start of this round */
	uint64_t pages_sent, zero_pages, bytes_sent;
	double elapsed_ms;
	unsigned nchannels;
	double channel_mbps[PM_MAX_CHANNELS]; /* over the last interval */
	unsigned throttle_pct;
	unsigned channels_lost;     /* lost now (failover carries their work) */
	unsigned losses;            /* channel losses so far (a reconnected one counts) */
};
typedef void (*pm_progress_fn)(void *opaque, const struct pm_progress *p);

struct pm_migrate_params {
	const char *const *to;      /* "host:port" or "[v6]:port"; channel i uses to[i % nto] */
	unsigned nto;
	const char *const *bind;    /* optional local addresses "host[:port]"; likewise */
	unsigned nbind;
	unsigned channels;          /* 0: nto */
	unsigned downtime_ms;       /* target; 0: 300 */
	unsigned max_rounds;        /* 0: 30 */
	double max_bytes_factor;    /* stop iterating past this x VM size; 0: 8 */
	bool barrier;               /* drain every channel at each round end */
	bool serial;                /* no pipelining: one thread harvests and sends */
	enum pm_compress compress;
	int compress_level;
	enum pm_nonconverge policy;
	unsigned chunk_pages;       /* 0: 512 (2 MiB) */
	unsigned timeout_ms;        /* deadline of every wait on the network; 0: 30000 */
	bool no_failover;           /* a lost channel fails the migration (v1 behaviour) */
	bool no_reconnect;          /* a lost channel is not dialled again */
	bool mptcp;                 /* Multipath TCP for every channel where the kernel offers it */
	const char *dump_at_pause;  /* write guest memory here when paused */
	struct pm_tls_params tls;
	bool insecure;              /* allow plain TCP to a non-loopback address */
	/* Compare a digest (XXH3-128) of every 2 MiB of memory at the pause
	 * with the destination's just before it resumes; a difference fails
	 * the migration (the destination never runs it).  Its time is a
	 * verification aid: excluded from downtime, reported as verify_ms. */
	bool verify;
	/* The VM's disks are on storage the destination shares: no block is
	 * sent; each disk is flushed (fdatasync) once the VM is paused. */
	bool shared_storage;
	pm_progress_fn progress;
	void *progress_opaque;
	unsigned progress_interval_ms; /* 0: 250 */
};

struct pm_round_stat {
	unsigned round;
	double start_ms;            /* since the migration started */
	uint64_t dirty_at_start;    /* pages (estimate) when the round began */
	uint64_t pages;             /* data pages sent */
	uint64_t zero_pages;
	uint64_t unpopulated_pages; /* never written at the source: sent as a record, never read */
	uint64_t bytes;             /* wire bytes */
	double duration_ms;
	bool final;                 /* the round sent while paused */
	/* Disks: blocks dirty when the round began, blocks sent in it (data,
	 * zero and unallocated) and their wire bytes (also in bytes). */
	uint64_t disk_dirty_at_start, disk_blocks, disk_bytes;
};

/* One disk's share of a migration. */
#define PM_REPORT_MAX_DISKS 16
struct pm_disk_report {
	char name[256];             /* the image (source), as the backend names it */
	uint64_t size_bytes, block_bytes;
	uint64_t blocks;            /* data blocks sent */
	uint64_t zero_blocks;       /* allocated but zero: sent as a record, a hole there */
	uint64_t unallocated_blocks; /* holes: sent as a record, a hole there */
	uint64_t bytes;             /* wire bytes of its frames */
	double busy_ms;             /* the workers' time on its chunks, summed over channels */
};

/* A timeline sample, taken by whichever thread is working when the sample
 * interval has passed (workers after a chunk, the migration thread at
 * round starts, the pause and the end): no thread sleeps to take them. */
#define PM_MAX_SAMPLES 256          /* then every other one is dropped */
#define PM_SAMPLE_CHANNELS 16       /* per-channel bytes of the first 16 */
enum pm_sample_phase { PM_PH_PRECOPY, PM_PH_PAUSED, PM_PH_COMPLETING, PM_PH_DONE };
struct pm_sample {
	double t_ms;                /* since the migration started */
	uint32_t round;
	uint8_t phase;              /* enum pm_sample_phase */
	uint8_t throttle_pct;
	uint64_t dirty_left;        /* pages of the round's dirty set not sent yet */
	uint64_t guest_pages_written; /* backend's counter (0: not known) */
	uint64_t channel_bytes[PM_SAMPLE_CHANNELS]; /* wire bytes so far */
};

/* Where the pause went (ms), source and destination; their sum is the
 * downtime.  network_ms is what is left: the wire and the wake-ups. */
struct pm_downtime_breakdown {
	double pause_ms;            /* stopping the vCPUs */
	double final_sync_ms;       /* last dirty sync and count */
	double final_send_ms;       /* last dirty pages harvested and sent */
	double state_ms;            /* device state saved and sent, END on every channel */
	double dst_drain_ms;        /* destination: first END to every channel ended */
	double dst_sync_ms;         /* destination: fsync of its disk images */
	double dst_load_ms;         /* destination: load_state */
	double dst_resume_ms;       /* destination: resume */
	double network_ms;          /* the rest, until DONE arrived */
};

/* Guest memory on one side: what it costs the host. */
struct pm_mem_usage {
	uint64_t resident_bytes;
	uint64_t huge_bytes;        /* of which on huge pages */
};

/* A channel lost during the migration (failover moved its work). */
#define PM_MAX_LOST 16
struct pm_lost_channel {
	unsigned channel;
	double at_ms;               /* since the migration started */
	char phase[16];             /* "precopy", "switchover", "completing" */
	char reason[240];
	double reconnected_ms;      /* when it came back (0: never) */
};

struct pm_report {
	const char *role;           /* "source", "destination" */
	int status;                 /* 0, PM_UNKNOWN, or another -errno (failed) */
	char error[512];
	char dirty_method[32];
	unsigned channels;
	bool barrier, serial;
	enum pm_compress compress;
	uint64_t vm_pages;
	double setup_ms, total_time_ms, downtime_ms;
	double verify_dump_ms;      /* time spent writing dumps, excluded from the above */
	uint64_t bytes_sent, pages_sent, zero_pages, frames;
	uint64_t unpopulated_pages;
	double throughput_mbps;     /* wire MB/s (10^6 bytes) over the whole migration */
	unsigned nrounds;
	struct pm_round_stat rounds[PM_MAX_ROUNDS];
	uint64_t channel_bytes[PM_MAX_CHANNELS];
	char switchover_reason[64]; /* "converged", "max-rounds", "max-bytes", "no-progress" */
	unsigned throttle_pct;
	/* Transport: "none", "x509" or "psk"; and who made the records of the
	 * bulk direction (source: sending, destination: receiving): "ktls"
	 * (the kernel, on every channel), "userspace" (OpenSSL), "none". */
	char tls[8];
	char tls_records[12];
	unsigned rejected_connections; /* destination: closed before or instead of joining */
	bool failover;              /* a lost channel's work moves to the others */
	bool mptcp;                 /* every channel is Multipath TCP */
	unsigned nlost;             /* channels lost (each loss once; PM_MAX_LOST kept) */
	struct pm_lost_channel lost[PM_MAX_LOST];
	uint64_t resent_pages;      /* pages sent again because their channel was lost */
	uint64_t stale_pages;       /* destination: pages (and blocks) skipped as older than what it had */
	/* Disks (docs/storage.md). */
	unsigned ndisks;
	struct pm_disk_report disks[PM_REPORT_MAX_DISKS];
	bool shared_storage;        /* no block sent: the disks were flushed at the pause */
	double disk_flush_ms;       /* source, shared storage: the flush, inside the pause */
	double disk_sync_ms;        /* destination: fsync of every image before DONE */
	/* Source: when the VM was paused (ms since start; 0: never), and the
	 * guest's write rate asked and achieved from tracking start to the
	 * pause (MB/s of pages x 4096; 0: the backend does not say). */
	double pause_at_ms;
	double write_rate_asked_mbps, write_rate_mbps;
	double sample_interval_ms;
	unsigned nsamples;
	struct pm_sample samples[PM_MAX_SAMPLES];
	struct pm_downtime_breakdown downtime_breakdown;
	/* Source: guest memory before the pause.  Destination: after the
	 * resume (measured once DONE is out: reading /proc costs ms). */
	struct pm_mem_usage mem;
	uint64_t dst_data_pages;    /* source: pages holding data at the destination (DONE) */
	uint64_t engine_bytes;      /* the engine's own per-page state on this side */
	bool verify;                /* digests compared (verified says how it went) */
	bool verified;
	double verify_ms;           /* both sides' digest time */
	char verify_error[256];     /* where memory differed (failed verification) */
};

/* Runs a migration in the calling thread.  0: the destination runs the VM
 * (the source's stays paused); PM_UNKNOWN: see above; another -errno: it
 * failed and the source VM runs (or stays stopped if it was). */
int pm_migrate_outgoing(struct pm_backend *be, const struct pm_migrate_params *p,
			struct pm_report *rep, struct pm_err *err);

/* The same, in a thread of its own.  p and everything it points to must stay
 * valid until pm_migration_wait() returns. */
struct pm_migration;
int pm_migration_start(struct pm_migration **out, struct pm_backend *be,
		       const struct pm_migrate_params *p, struct pm_err *err);
/* Where it is now (channel_mbps: since the previous call).  Any thread. */
void pm_migration_progress(struct pm_migration *m, struct pm_progress *out);
/* Asks it to stop; the VM keeps running here and the destination is told.
 * 0: it will stop; -EBUSY: too late, the final state went out (wait for the
 * outcome); -EALREADY: it has ended.  Any thread (not from a signal handler). */
int pm_migration_cancel(struct pm_migration *m);
/* A file descriptor that becomes readable when the migration has ended
 * (for poll()-based event loops); owned by m. */
int pm_migration_fd(const struct pm_migration *m);
/* Waits for the end; returns as pm_migrate_outgoing() would. */
int pm_migration_wait(struct pm_migration *m, struct pm_report *rep, struct pm_err *err);
/* Frees m (cancelling and waiting first if it still runs). */
void pm_migration_free(struct pm_migration *m);

struct pm_incoming;
struct pm_incoming_params {
	const char *const *listen;  /* "host:port"; port 0 picks one */
	unsigned nlisten;
	/* A connection must finish its handshake and HELLO within this, and
	 * all channels of the session must arrive within it of the first;
	 * 0: 30000. */
	unsigned timeout_ms;
	const char *dump_on_resume; /* write guest memory here just before resume */
	struct pm_tls_params tls;
	bool insecure;              /* allow plain TCP on a non-loopback address (warns) */
	/* Warnings and rejected connections, one line each (no newline);
	 * NULL: to stderr prefixed "pmigrate: ". */
	void (*log)(void *opaque, const char *msg);
	void *log_opaque;
	bool mptcp;                 /* listen with Multipath TCP where the kernel offers it */
};
int pm_incoming_listen(struct pm_incoming **out, const struct pm_incoming_params *p,
		       struct pm_err *err);
/* Hands an already connected stream socket (one a management process
 * passed in, say) to the destination as if it had been accepted, before
 * pm_incoming_run(); the destination owns it from now on.  With adopted
 * sockets, params.nlisten may be 0. */
int pm_incoming_adopt(struct pm_incoming *in, int fd, struct pm_err *err);
/* Actual bound address of listener i ("127.0.0.1:40123"). */
const char *pm_incoming_address(const struct pm_incoming *in, unsigned i);
/* Receives one migration into be; on success the VM has been resumed. */
int pm_incoming_run(struct pm_incoming *in, struct pm_backend *be,
		    struct pm_report *rep, struct pm_err *err);
/* Makes a pm_incoming_run() in progress (waiting or receiving) fail with
 * -ECANCELED without resuming anything.  Async-signal-safe. */
void pm_incoming_cancel(struct pm_incoming *in);
void pm_incoming_close(struct pm_incoming *in);

/* Writes every region of be, in order, to path (for cmp-style checks), and
 * each disk i to path.disk<i> (holes stay holes). */
int pm_dump_memory(const struct pm_backend *be, const char *path, struct pm_err *err);

const char *pm_compress_name(enum pm_compress c);
int pm_compress_parse(const char *s, enum pm_compress *out);
const char *pm_nonconverge_name(enum pm_nonconverge p);
int pm_nonconverge_parse(const char *s, enum pm_nonconverge *out);

/* Report as JSON text (malloc'ed, caller frees).  Keys: status, error,
 * total_time_ms, downtime_ms, rounds[{round,start_ms,pages,zero_pages,bytes,
 * duration_ms,dirty_at_start,final}], bytes_sent, pages_sent, zero_pages,
 * channels, throughput_mbps, ..., timeline {interval_ms, samples[{t_ms,
 * round, phase, dirty_left, write_mbps, throttle_pct, channel_mbps[]}]}
 * (rates over the interval since the previous sample). */
char *pm_report_to_json(const struct pm_report *r);
/* Parses pm_report_to_json() output back (role/error strings point to
 * static text or into r; timeline samples are not read back: draw them
 * from the JSON); returns -EINVAL on malformed text. */
int pm_report_from_json(const char *text, struct pm_report *r);
/* Human-readable table of the report to f. */
#include <stdio.h>
void pm_report_print(const struct pm_report *r, FILE *f);

#endif
