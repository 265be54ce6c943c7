/* SPDX-License-Identifier: MIT */
/* The soak: live migrations back and forth between two VMs (the fake VM of
 * the engine tests, a writer dirtying it all the time) over loopback, with a
 * fault injected at a random moment into most of them -- a channel cut,
 * closed, stalled, blackholed, a frame dropped, delayed or corrupted, DONE
 * lost on one or every channel, every channel cut, a cancel at the source or
 * the destination.  Seeded (every choice comes from --seed) and bounded in
 * time.  Each migration must end one of three ways:
 *
 *   completed  the destination runs the VM with the source's memory at the
 *              pause (compared page by page), the source stays paused;
 *   failed     the source runs on, the destination never ran the VM;
 *   unknown    the source paused in "unknown": then the destination either
 *              runs (management drops the source) or does not (management
 *              resumes the source) -- never both.
 *
 * Anything else is counted as a violation: corrupted (memory differs) or
 * two running copies.  Prints TAP (one line per migration, then a summary)
 * and exits non-zero on any violation or when fewer than --min migrations
 * ran.
 *
 *   pm-soak [--seed N] [--migrations N] [--seconds S] [--min N] [--verbose] */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <pmigrate/migrate.h>
#include "engine/net.h"
#include "fakevm.h"
#include "fault.h"
#include "harness.h"

static const uint64_t gpas[2] = { 0, 0x100000000ull };
static const uint64_t npages[2] = { 612, 300 };

enum fault {
	F_NONE, F_CUT, F_CLOSE, F_STALL, F_BLACKHOLE, F_DROP_DONE_ONE, F_DROP_DONE_ALL,
	F_DELAY_DONE, F_CORRUPT, F_DELAY_FRAME, F_CUT_ALL, F_CANCEL_SRC, F_CANCEL_DST, NFAULTS
};
static const char *const fault_names[] = {
	"none", "cut", "close", "stall", "blackhole", "drop DONE on one channel",
	"drop DONE on every channel", "delay DONE", "corrupt a frame", "delay a frame",
	"cut every channel", "cancel at the source", "cancel at the destination",
};

static uint64_t rnd_state;

static uint64_t rnd(void)
{
	uint64_t x = rnd_state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rnd_state = x;
}

static unsigned below(unsigned n)
{
	return (unsigned)(rnd() % n);
}

struct counts {
	unsigned completed, failed, unknown_ran, unknown_not, corrupted, two_running;
	unsigned by_fault[NFAULTS][3];  /* completed, failed, unknown */
	unsigned lost_channels;
	unsigned fired;                 /* migrations whose fault did strike */
};

/* The fault's rules for the injector in front of the channels it hits. */
static unsigned fault_rules(enum fault f, struct fp_rule *r, bool tls)
{
	/* Mostly early, sometimes late: a channel carries about a megabyte. */
	uint64_t bytes = 48 + (below(2) ? rnd() % (256u << 10) : rnd() % (2u << 20));
	unsigned frame_nth = 1 + below(20);

	memset(r, 0, 2 * sizeof(*r));
	switch (f) {
	case F_CUT:
	case F_CUT_ALL:
		r->conn = 1, r->dir = FP_TO_DEST, r->bytes = bytes, r->action = FP_CUT;
		return 1;
	case F_CLOSE:
		r->conn = 1, r->dir = FP_TO_DEST, r->bytes = bytes, r->action = FP_CLOSE;
		return 1;
	case F_STALL:
		r->conn = 1, r->dir = below(4) ? FP_TO_DEST : FP_TO_SRC, r->bytes = bytes / 8,
		r->action = FP_STALL;
		return 1;
	case F_BLACKHOLE:
		r->conn = 1, r->dir = FP_TO_DEST, r->bytes = bytes, r->action = FP_BLACKHOLE;
		return 1;
	case F_DROP_DONE_ONE:
	case F_DROP_DONE_ALL:
		r->dir = FP_TO_SRC, r->frame = 10 /* DONE */, r->action = FP_DROP;
		return 1;
	case F_DELAY_DONE:
		r->dir = FP_TO_SRC, r->frame = 10, r->action = FP_DELAY, r->delay_ms = 50 + below(800);
		return 1;
	case F_CORRUPT:
		r->conn = 1, r->dir = FP_TO_DEST, r->frame = 5 /* PAGES */, r->nth = frame_nth,
		r->action = FP_CORRUPT;
		return 1;
	case F_DELAY_FRAME:
		r->conn = 1, r->dir = FP_TO_DEST, r->frame = 5, r->nth = frame_nth, r->action = FP_DELAY,
		r->delay_ms = 20 + below(500);
		return 1;
	default:
		(void)tls;
		return 0;
	}
}

struct canceller {
	pthread_t th;
	unsigned delay_us;
	struct pm_migration *_Atomic m;
	struct pm_incoming *in;
	bool dst;
	int rc;
};

static void *cancel_main(void *arg)
{
	struct canceller *k = arg;

	usleep(k->delay_us);
	if (k->dst) {
		pm_incoming_cancel(k->in);
	} else {
		struct pm_migration *m;
		while (!(m = atomic_load(&k->m)))
			usleep(100);
		k->rc = pm_migration_cancel(m);
	}
	return NULL;
}

/* The source's run state: the writer moves on (and the backend was not
 * paused at the end) unless it is paused. */
static bool running(struct fakevm *vm)
{
	pthread_mutex_lock(&vm->lock);
	bool r = !vm->paused;
	pthread_mutex_unlock(&vm->lock);
	return r;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "seed", required_argument, 0, 's' }, { "migrations", required_argument, 0, 'n' },
		{ "seconds", required_argument, 0, 't' }, { "min", required_argument, 0, 'm' },
		{ "verbose", no_argument, 0, 'v' }, { 0 } };
	uint64_t seed = 1;
	unsigned want = 200, seconds = 600, min = 0;
	bool verbose = false;
	struct counts k = { 0 };
	int o;

	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 's': seed = strtoull(optarg, NULL, 0); break;
		case 'n': want = strtoul(optarg, NULL, 0); break;
		case 't': seconds = strtoul(optarg, NULL, 0); break;
		case 'm': min = strtoul(optarg, NULL, 0); break;
		case 'v': verbose = true; break;
		default:
			fprintf(stderr, "usage: pm-soak [--seed N] [--migrations N] [--seconds S] [--min N]\n");
			return 2;
		}
	}
	rnd_state = seed * 0x9e3779b97f4a7c15ull | 1;
	printf("# soak: seed %llu, up to %u migrations in %u s\n", (unsigned long long)seed, want, seconds);
	struct fakevm *vm[2] = { fakevm_new("a", 2, npages, gpas), fakevm_new("b", 2, npages, gpas) };
	unsigned cur = 0, done = 0;
	double t_end = pm_now_ms() + seconds * 1000.0;

	fakevm_fill_source(vm[0], seed);
	fakevm_start_writer(vm[0], 50);
	while (done < want && pm_now_ms() < t_end) {
		struct fakevm *src = vm[cur], *dst = vm[1 - cur];
		enum fault f = below(7) == 0 ? F_NONE : (enum fault)(1 + below(NFAULTS - 1));
		unsigned nch = 2 + below(3), hit = below(nch);
		unsigned timeout = 1000 + below(1000);
		struct fp_rule rules[2];
		unsigned nrules = fault_rules(f, rules, false);
		struct fp_proxy *px[4] = { 0 };
		char to[4][80];
		const char *top[4];
		struct dest_run d;
		struct pm_report *rep = calloc(1, sizeof(*rep));
		struct pm_err err = { 0 };
		struct canceller cn = { .delay_us = 1000 * below(60) };
		unsigned src_resumes = src->resumes, dst_resumes = dst->resumes, dst_loads = dst->loads;

		/* A slower guest some of the time: longer migrations, more moments
		 * for the fault to land in. */
		src->harvest_delay_us = below(3) ? 0 : 200 + below(800);
		/* The destination starts as an incoming VM would: not running. */
		pthread_mutex_lock(&dst->lock);
		dst->paused = true;
		pthread_mutex_unlock(&dst->lock);
		fakevm_fill_dest(dst);
		dest_start_timeout(&d, dst, 1, NULL, timeout);
		for (unsigned i = 0; i < nch; i++) {
			bool proxied = nrules && (i == hit || f == F_CUT_ALL || f == F_DROP_DONE_ALL ||
						  f == F_DELAY_DONE);
			if (proxied && !fp_start(&px[i], "127.0.0.1:0", d.addr[0], rules, nrules, NULL))
				snprintf(to[i], sizeof(to[i]), "%s", fp_address(px[i]));
			else
				snprintf(to[i], sizeof(to[i]), "%s", d.addr[0]);
			top[i] = to[i];
		}
		struct pm_migrate_params p = {
			.to = top, .nto = nch, .channels = nch, .timeout_ms = timeout,
			.policy = PM_NC_FORCE, .downtime_ms = 1 + below(50), .max_rounds = 2 + below(6),
			.chunk_pages = below(2) ? 64 : 512, .barrier = below(8) == 0,
			.compress = below(5) == 0 ? PM_COMPRESS_LZ4 : PM_COMPRESS_NONE,
			.no_failover = below(10) == 0,
		};
		struct pm_migration *m = NULL;
		int r = pm_migration_start(&m, &src->be, &p, &err);
		if (!r && (f == F_CANCEL_SRC || f == F_CANCEL_DST)) {
			cn.dst = f == F_CANCEL_DST;
			cn.in = d.in;
			atomic_store(&cn.m, m);
			pthread_create(&cn.th, NULL, cancel_main, &cn);
		}
		if (!r)
			r = pm_migration_wait(m, rep, &err);
		if (f == F_CANCEL_SRC || f == F_CANCEL_DST)
			pthread_join(cn.th, NULL);
		pm_migration_free(m);
		pthread_join(d.th, NULL);

		/* What happened, checked against what must hold. */
		bool dst_ran = dst->resumes > dst_resumes;
		bool src_runs = running(src);
		const char *how, *bad = NULL;
		int cls;
		if (!r) {
			how = "completed", cls = 0;
			if (!dst_ran || src_runs)
				bad = "completed, but not (destination runs, source paused)";
			else if (fakevm_first_diff(src, dst) >= 0)
				bad = "CORRUPTED: memory differs", k.corrupted++;
			else
				k.completed++;
		} else if (r == PM_UNKNOWN) {
			how = "unknown", cls = 2;
			if (src_runs)
				bad = "unknown, but the source runs";
			else if (dst_ran && fakevm_first_diff(src, dst) >= 0)
				bad = "CORRUPTED: memory differs", k.corrupted++;
			else if (dst_ran)
				k.unknown_ran++;       /* management drops the source */
			else
				k.unknown_not++;       /* management resumes the source */
		} else {
			how = "failed", cls = 1;
			if (dst_ran)
				bad = "failed, but the destination ran the VM";
			else if (!src_runs)
				bad = "failed, but the source is paused";
			else
				k.failed++;
		}
		if (dst_ran && src_runs) {
			k.two_running++;
			bad = "TWO RUNNING COPIES";
		}
		k.by_fault[f][cls]++;
		unsigned fired = 0;
		for (unsigned i = 0; i < 4; i++)
			if (px[i])
				fired += fp_hits(px[i]);
		if ((f == F_CANCEL_SRC && cn.rc == 0) || f == F_CANCEL_DST)
			fired++;
		k.fired += f != F_NONE && fired > 0;
		k.lost_channels += rep->nlost;
		done++;
		if (bad)
			printf("not ok %u - #%u %s (%u ch, %s%s): %s -- %s: %s; destination: %s\n", done, done,
			       fault_names[f], nch, p.barrier ? "barrier, " : "", p.no_failover ? "no failover" : "failover",
			       how, bad, err.msg, d.err.msg);
		else if (verbose || r)
			printf("ok %u - #%u %s (%u ch, %s%s): %s%s%s\n", done, done, fault_names[f], nch,
			       p.barrier ? "barrier, " : "", p.no_failover ? "no failover" : "failover", how,
			       r ? ": " : "", r ? err.msg : "");
		else
			printf("ok %u - #%u %s (%u ch): completed, verified%s\n", done, done, fault_names[f], nch,
			       rep->nlost ? ", a lost channel's work moved" : "");
		fflush(stdout);
		(void)src_resumes;
		(void)dst_loads;

		for (unsigned i = 0; i < 4; i++)
			fp_stop(px[i]);

		/* Management's part, and the next direction. */
		bool moved = dst_ran && !bad;
		if (r == PM_UNKNOWN && !dst_ran) {
			struct pm_err e2 = { 0 };
			src->be.ops->resume(src->be.vm, &e2);   /* "cont" */
		}
		if (moved) {
			fakevm_stop_writer(src);
			fakevm_start_writer(dst, 50);
			cur = 1 - cur;
		}
		free(rep);
		free(d.rep);
		pm_incoming_close(d.in);
		if (bad && (k.corrupted || k.two_running))
			break;
	}
	unsigned violations = done - k.completed - k.failed - k.unknown_ran - k.unknown_not;
	printf("# soak: %u migrations (seed %llu, %.0f s), a fault struck %u of them: %u completed and verified, "
	       "%u failed cleanly with the source running, %u unknown (%u the destination ran, %u it did not); "
	       "%u channels lost and carried over; %u corrupted, %u with two running copies, %u other violations\n",
	       done, (unsigned long long)seed, (pm_now_ms() - t_end) / 1e3 + seconds, k.fired, k.completed,
	       k.failed, k.unknown_ran + k.unknown_not, k.unknown_ran, k.unknown_not, k.lost_channels,
	       k.corrupted, k.two_running, violations - k.corrupted - k.two_running);
	for (unsigned f = 0; f < NFAULTS; f++)
		if (k.by_fault[f][0] + k.by_fault[f][1] + k.by_fault[f][2])
			printf("#   %-28s completed %3u  failed %3u  unknown %3u\n", fault_names[f],
			       k.by_fault[f][0], k.by_fault[f][1], k.by_fault[f][2]);
	bool ok = !violations && done >= min;
	printf("%s %u - soak: %u migrations, 0 corrupted and 0 with two running copies%s\n", ok ? "ok" : "not ok",
	       done + 1, done, done >= min ? "" : " (too few migrations)");
	printf("1..%u\n", done + 1);
	fakevm_free(vm[0]);
	fakevm_free(vm[1]);
	return ok ? 0 : 1;
}
