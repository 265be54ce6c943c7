/* SPDX-License-Identifier: MIT */
/* Faults on the channels of in-process migrations between two fake VMs
 * over loopback, with the fault injector (tests/fault) in front of some
 * channels: DONE lost on one or on every channel, a stalled channel, and
 * cancel -- through the migration handle -- while connecting, in pre-copy,
 * while paused, and too late.  Each checks the one thing that matters:
 * never two running copies, and a failure leaves the source running. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
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

/* Sanitized builds run 2-5x slower on 2 shared cores: the second a fault
 * may take beyond --timeout stretches with them (the timeout does not). */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SLACK_MS 3000
#else
#define SLACK_MS 1000
#endif

static const uint64_t gpas[2] = { 0, 0x100000000ull };
static const uint64_t npages[2] = { 612, 300 };

/* Two fake VMs, a destination thread, and channel i going through proxy i
 * when bit i of `proxied` is set (each proxy with the same rules). */
struct pair {
	struct fakevm *src, *dst;
	struct dest_run d;
	struct fp_proxy *px[4];
	char to[4][80];
	const char *top[4];
	unsigned nch;
	bool joined;
	struct pm_report *rep;
	struct pm_err err;
};

static void pair_join(struct pair *f)
{
	dest_join(&f->d);
	f->joined = true;
}

static void pair_start_tls(struct pair *f, unsigned nch, unsigned proxied, const struct fp_rule *rules,
			   unsigned nrules, unsigned dest_timeout_ms, const struct pm_tls_params *tls)
{
	memset(f, 0, sizeof(*f));
	f->nch = nch;
	f->src = fakevm_new("src", 2, npages, gpas);
	f->dst = fakevm_new("dst", 2, npages, gpas);
	f->rep = calloc(1, sizeof(*f->rep));
	fakevm_fill_source(f->src, 77);
	fakevm_fill_dest(f->dst);
	dest_start_with(&f->d, f->dst, 1, NULL, dest_timeout_ms, tls);
	for (unsigned i = 0; i < nch; i++) {
		if (proxied & 1u << i) {
			assert_int_equal(fp_start(&f->px[i], "127.0.0.1:0", f->d.addr[0], rules, nrules, NULL), 0);
			snprintf(f->to[i], sizeof(f->to[i]), "%s", fp_address(f->px[i]));
		} else {
			snprintf(f->to[i], sizeof(f->to[i]), "%s", f->d.addr[0]);
		}
		f->top[i] = f->to[i];
	}
}

static void pair_start(struct pair *f, unsigned nch, unsigned proxied, const struct fp_rule *rules,
		       unsigned nrules, unsigned dest_timeout_ms)
{
	pair_start_tls(f, nch, proxied, rules, nrules, dest_timeout_ms, NULL);
}

static struct pm_migrate_params pair_params(struct pair *f, unsigned timeout_ms)
{
	return (struct pm_migrate_params){ .to = f->top, .nto = f->nch, .channels = f->nch,
					   .timeout_ms = timeout_ms, .policy = PM_NC_FORCE,
					   .downtime_ms = 50, .max_rounds = 3 };
}

static void pair_free(struct pair *f)
{
	/* A destination whose source went away before its session was
	 * complete keeps waiting for a real one (issue 9): end it. */
	if (!f->joined) {
		pm_incoming_cancel(f->d.in);
		dest_join(&f->d);
	}
	for (unsigned i = 0; i < 4; i++)
		fp_stop(f->px[i]);
	free(f->rep);
	free(f->d.rep);
	fakevm_free(f->src);
	fakevm_free(f->dst);
}

/* The source VM runs: not paused, and its writer keeps writing. */
static void source_runs(struct fakevm *vm)
{
	assert_false(vm->paused);
	assert_int_equal(vm->pauses, vm->resumes);
	if (vm->writer_started) {
		/* (a loaded machine may not run the writer for a while) */
		uint64_t w = fakevm_writes(vm);
		for (unsigned i = 0; i < 500 && fakevm_writes(vm) == w; i++)
			usleep(10000);
		assert_true(fakevm_writes(vm) > w);
	}
}

static unsigned hits(struct pair *f)
{
	unsigned n = 0;

	for (unsigned i = 0; i < 4; i++)
		if (f->px[i])
			n += fp_hits(f->px[i]);
	return n;
}

/* DONE dropped on one of two channels: one DONE is enough. */
static void test_done_lost_on_one(void **s)
{
	struct fp_rule drop = { .dir = FP_TO_SRC, .frame = 10 /* DONE */, .action = FP_DROP };
	struct pair f;

	pair_start(&f, 2, 1u << 1, &drop, 1, 15000);
	struct pm_migrate_params p = pair_params(&f, 3000);
	fakevm_start_writer(f.src, 50);
	int r = pm_migrate_outgoing(&f.src->be, &p, f.rep, &f.err);
	fakevm_stop_writer(f.src);
	pair_join(&f);
	if (r)
		fail_msg("migration failed: %s", f.err.msg);
	assert_int_equal(f.d.rc, 0);
	assert_true(f.src->paused);
	assert_int_equal(f.src->resumes, 0);
	assert_int_equal(f.dst->resumes, 1);
	assert_true(fakevm_first_diff(f.src, f.dst) < 0);
	pair_free(&f);
}

/* DONE dropped on every channel: the destination runs the VM, and the
 * source must not -- it stays paused, outcome unknown, until management
 * decides. */
static void test_done_lost_on_all(void **s)
{
	struct fp_rule drop = { .dir = FP_TO_SRC, .frame = 10 /* DONE */, .action = FP_DROP };
	struct pair f;

	pair_start(&f, 2, 3, &drop, 1, 15000);
	struct pm_migrate_params p = pair_params(&f, 1000);
	fakevm_start_writer(f.src, 50);
	int r = pm_migrate_outgoing(&f.src->be, &p, f.rep, &f.err);
	fakevm_stop_writer(f.src);
	pair_join(&f);
	assert_int_equal(r, PM_UNKNOWN);
	assert_int_equal(f.rep->status, PM_UNKNOWN);
	if (!strstr(f.err.msg, "outcome unknown") || !strstr(f.err.msg, "stays paused"))
		fail_msg("unclear message: %s", f.err.msg);
	assert_non_null(strstr(f.rep->error, "outcome unknown"));
	char *j = pm_report_to_json(f.rep);
	assert_non_null(strstr(j, "\"status\": \"unknown\""));
	free(j);
	assert_int_equal(hits(&f), 2);
	/* Never two running copies. */
	assert_int_equal(f.d.rc, 0);
	assert_int_equal(f.dst->resumes, 1);
	assert_true(f.src->paused);
	assert_int_equal(f.src->pauses, 1);
	assert_int_equal(f.src->resumes, 0);
	assert_false(f.src->tracking);
	assert_true(fakevm_first_diff(f.src, f.dst) < 0);
	pair_free(&f);
}

/* The report names the lost channel, when and why. */
static void names_lost(const struct pm_report *rep, unsigned channel, const char *why)
{
	bool found = false;

	for (unsigned i = 0; i < rep->nlost && i < PM_MAX_LOST; i++)
		if (rep->lost[i].channel == channel) {
			found = true;
			assert_true(rep->lost[i].at_ms > 0);
			assert_true(rep->lost[i].phase[0]);
			if (why && !strstr(rep->lost[i].reason, why))
				fail_msg("channel %u lost for '%s', expected /%s/", channel, rep->lost[i].reason, why);
		}
	if (!found)
		fail_msg("the report does not name channel %u as lost (%u losses)", channel, rep->nlost);
	char *j = pm_report_to_json(rep);
	assert_non_null(strstr(j, "\"lost_channels\""));
	free(j);
}

/* A completed migration: the source paused for good, the destination runs
 * the VM with the source's memory. */
static void completed(struct pair *f, int r)
{
	if (r)
		fail_msg("migration failed: %s (destination: %s)", f->err.msg, f->d.err.msg);
	assert_int_equal(f->d.rc, 0);
	assert_true(f->src->paused);
	assert_int_equal(f->src->resumes, 0);
	assert_int_equal(f->dst->resumes, 1);
	int64_t diff = fakevm_first_diff(f->src, f->dst);
	if (diff >= 0)
		fail_msg("page %lld differs after the migration", (long long)diff);
}

/* A channel that stalls (right after its HELLO: nothing sent on it later
 * arrives, nothing is closed): with failover its work moves to the other
 * channel and the migration completes within --timeout plus a second;
 * without, it fails within the same bound and the source runs on. */
static void test_stalled_channel(void **s)
{
	struct fp_rule stall = { .dir = FP_TO_DEST, .bytes = 8 + 40, .action = FP_STALL };
	struct pair f;

	for (int failover = 1; failover >= 0; failover--) {
		pair_start(&f, 2, 1u << 1, &stall, 1, 1000);
		struct pm_migrate_params p = pair_params(&f, 1000);
		p.no_failover = !failover;
		fakevm_start_writer(f.src, 50);
		double t = pm_now_ms();
		int r = pm_migrate_outgoing(&f.src->be, &p, f.rep, &f.err);
		double dt = pm_now_ms() - t;
		fakevm_stop_writer(f.src);
		pair_join(&f);
		if (hits(&f) != 1)
			fail_msg("stall hits %u", hits(&f));
		print_message("# stalled channel, failover %d: %.0f ms with a 1000 ms timeout\n", failover, dt);
		if (dt > 1000 + SLACK_MS)
			fail_msg("a stalled channel took %.0f ms (failover %d) with a 1000 ms timeout", dt, failover);
		if (failover) {
			completed(&f, r);
			names_lost(f.rep, 1, NULL);
			assert_true(f.rep->failover);
		} else {
			if (r >= 0 || r == PM_UNKNOWN)
				fail_msg("without failover: migration %d: %s", r, f.err.msg);
			if (!strstr(f.err.msg, "timed out") && !strstr(f.err.msg, "destination refused"))
				fail_msg("unclear message: %s", f.err.msg);
			assert_false(f.src->paused);
			assert_int_equal(f.src->pauses, f.src->resumes);
			assert_true(f.d.rc < 0);
			assert_int_equal(f.dst->resumes, 0);
		}
		pair_free(&f);
	}
}

/* Holds pre-copy (at a round start) until a lost channel is back, so the
 * test does not depend on how long pre-copy would have lasted. */
struct hold {
	struct pm_migration *_Atomic m;
	atomic_bool seen_back;
};

static void hold_until_back(void *arg)
{
	struct hold *h = arg;
	struct pm_progress pr;

	for (unsigned i = 0; i < 10000 && !atomic_load(&h->seen_back); i++) {
		struct pm_migration *m = atomic_load(&h->m);
		if (m) {
			pm_migration_progress(m, &pr);
			if (pr.losses == 0)
				return;         /* nothing lost (yet): go on */
			if (pr.channels_lost == 0) {
				atomic_store(&h->seen_back, true);
				return;
			}
		}
		usleep(1000);
	}
}

/* A migration of a busy guest in small chunks that needs several rounds
 * (downtime 1 ms), through the handle; with h, each round waits until a
 * lost channel is back (hold_until_back).  Returns its result, joined. */
static int run_busy(struct pair *f, struct pm_migrate_params *p, struct hold *h)
{
	struct pm_migration *m;

	p->chunk_pages = 64;
	p->downtime_ms = 1;
	p->max_rounds = 8;
	f->src->harvest_delay_us = 1000;        /* every worker sends again soon */
	if (h) {
		f->src->on_sync = hold_until_back;
		f->src->on_sync_arg = h;
	}
	fakevm_start_writer(f->src, 50);
	assert_int_equal(pm_migration_start(&m, &f->src->be, p, &f->err), 0);
	if (h)
		atomic_store(&h->m, m);
	int r = pm_migration_wait(m, f->rep, &f->err);
	pm_migration_free(m);
	fakevm_stop_writer(f->src);
	pair_join(f);
	return r;
}

/* One of four channels cut in pre-copy (reset at its first page run, on
 * its first connection only): the migration completes, memory equal, the
 * report names the channel -- and it dials again and comes back, unless
 * told not to. */
static void test_cut_one_of_four(void **s)
{
	struct fp_rule cut = { .conn = 1, .dir = FP_TO_DEST, .frame = 5 /* PAGES */, .nth = 1,
			       .action = FP_CUT };
	struct pair f;

	for (int reconnect = 1; reconnect >= 0; reconnect--) {
		struct hold h = { 0 };
		pair_start(&f, 4, 1u << 2, &cut, 1, 15000);
		struct pm_migrate_params p = pair_params(&f, 15000);
		p.no_reconnect = !reconnect;
		int r = run_busy(&f, &p, reconnect ? &h : NULL);
		assert_int_equal(hits(&f), 1);
		completed(&f, r);
		names_lost(f.rep, 2, NULL);
		assert_int_equal(f.rep->nlost, 1);
		if (reconnect && (!atomic_load(&h.seen_back) || f.rep->lost[0].reconnected_ms <= f.rep->lost[0].at_ms))
			fail_msg("channel 2 did not come back (lost at %.1f ms in %s, reconnected at %.1f ms)",
				 f.rep->lost[0].at_ms, f.rep->lost[0].phase, f.rep->lost[0].reconnected_ms);
		if (!reconnect)
			assert_true(f.rep->lost[0].reconnected_ms == 0);
		pair_free(&f);
	}
}


/* With TLS (a pre-shared key, removed at the program's end), a cut channel reconnects through a new
 * handshake, authenticated as the same peer, and the migration completes. */
static void test_tls_reconnect(void **s)
{
	struct fp_rule cut = { .conn = 1, .dir = FP_TO_DEST, .bytes = 128 << 10, .action = FP_CUT };
	struct pm_tls_params tls = tls_params(PM_TLS_PSK);
	struct hold h = { 0 };
	struct pair f;

	pair_start_tls(&f, 2, 1u << 1, &cut, 1, 15000, &tls);
	struct pm_migrate_params p = pair_params(&f, 15000);
	p.tls = tls;
	int r = run_busy(&f, &p, &h);
	assert_int_equal(hits(&f), 1);
	completed(&f, r);
	assert_string_equal(f.rep->tls, "psk");
	names_lost(f.rep, 1, NULL);
	if (!atomic_load(&h.seen_back) || f.rep->lost[0].reconnected_ms <= 0)
		fail_msg("channel 1 did not come back over TLS (lost in %s: %s)", f.rep->lost[0].phase,
			 f.rep->lost[0].reason);
	pair_free(&f);
}

/* Every channel cut at its first page run, long before the end: the
 * migration fails and the source runs on. */
static void test_cut_all(void **s)
{
	struct fp_rule cut = { .dir = FP_TO_DEST, .frame = 5 /* PAGES */, .nth = 1, .action = FP_CUT };
	struct pair f;

	pair_start(&f, 2, 3, &cut, 1, 15000);
	struct pm_migrate_params p = pair_params(&f, 15000);
	p.no_reconnect = true;
	p.chunk_pages = 64;
	f.src->harvest_delay_us = 1000;
	fakevm_start_writer(f.src, 50);
	int r = pm_migrate_outgoing(&f.src->be, &p, f.rep, &f.err);
	pair_join(&f);
	if (r >= 0 || r == PM_UNKNOWN || !strstr(f.err.msg, "every channel is lost"))
		fail_msg("migration %d: %s", r, f.err.msg);
	source_runs(f.src);
	assert_true(f.d.rc < 0);
	assert_int_equal(f.dst->resumes, 0);
	fakevm_stop_writer(f.src);
	pair_free(&f);
}

/* A channel cut at its END, after the point of no return: the destination
 * loses it before its END, says LOST on the other channel, and the source
 * sends that channel's unacknowledged work again and ENDs again. */
static void test_lost_at_end(void **s)
{
	struct fp_rule cut = { .dir = FP_TO_DEST, .frame = 9 /* END */, .action = FP_CUT };
	struct pair f;

	pair_start(&f, 2, 1u << 1, &cut, 1, 15000);
	struct pm_migrate_params p = pair_params(&f, 15000);
	fakevm_start_writer(f.src, 50);
	int r = pm_migrate_outgoing(&f.src->be, &p, f.rep, &f.err);
	fakevm_stop_writer(f.src);
	pair_join(&f);
	assert_int_equal(hits(&f), 1);
	completed(&f, r);
	names_lost(f.rep, 1, NULL);
	assert_string_equal(f.rep->lost[0].phase, "completing");
	pair_free(&f);
}

/* Barrier mode: a cut channel stops counting at the barriers; the
 * migration completes on the rest. */
static void test_cut_barrier(void **s)
{
	struct fp_rule cut = { .dir = FP_TO_DEST, .bytes = 128 << 10, .action = FP_CUT };
	struct pair f;

	pair_start(&f, 3, 1u << 1, &cut, 1, 15000);
	struct pm_migrate_params p = pair_params(&f, 15000);
	p.barrier = true;
	p.chunk_pages = 64;
	fakevm_start_writer(f.src, 50);
	int r = pm_migrate_outgoing(&f.src->be, &p, f.rep, &f.err);
	fakevm_stop_writer(f.src);
	pair_join(&f);
	assert_int_equal(hits(&f), 1);
	completed(&f, r);
	names_lost(f.rep, 1, NULL);
	pair_free(&f);
}

/* A corrupted frame is not a lost channel: the destination refuses the
 * stream and says so, the source runs on. */
static void test_corrupt_frame(void **s)
{
	struct fp_rule bad = { .dir = FP_TO_DEST, .frame = 5 /* PAGES */, .nth = 3, .action = FP_CORRUPT };
	struct pair f;

	pair_start(&f, 2, 1u << 1, &bad, 1, 15000);
	struct pm_migrate_params p = pair_params(&f, 15000);
	p.chunk_pages = 64;
	fakevm_start_writer(f.src, 50);
	int r = pm_migrate_outgoing(&f.src->be, &p, f.rep, &f.err);
	pair_join(&f);
	assert_int_equal(hits(&f), 1);
	if (r >= 0 || r == PM_UNKNOWN || !strstr(f.err.msg, "unknown frame type"))
		fail_msg("migration %d: %s", r, f.err.msg);
	source_runs(f.src);
	assert_true(f.d.rc < 0);
	assert_int_equal(f.dst->resumes, 0);
	fakevm_stop_writer(f.src);
	pair_free(&f);
}

/* ----------------------------------------------------- handle and cancel */

static bool wait_phase(struct pm_migration *m, const char *phase, unsigned ms)
{
	for (unsigned i = 0; i < ms; i++) {
		struct pm_progress pr;
		pm_migration_progress(m, &pr);
		if (pr.phase && !strcmp(pr.phase, phase) && pr.pages_sent + pr.zero_pages > 0)
			return true;
		usleep(1000);
	}
	return false;
}

static bool ended_within(struct pm_migration *m, unsigned ms)
{
	struct pollfd p = { .fd = pm_migration_fd(m), .events = POLLIN };

	return poll(&p, 1, ms) == 1;
}

/* Cancel in pre-copy: the migration stops at once, the destination is told
 * and never runs the VM, the source never paused. */
static void test_cancel_precopy(void **s)
{
	struct pair f;
	struct pm_migration *m;

	pair_start(&f, 2, 0, NULL, 0, 15000);
	f.src->harvest_delay_us = 2000;         /* a long pre-copy */
	struct pm_migrate_params p = pair_params(&f, 15000);
	p.chunk_pages = 64;
	p.downtime_ms = 1;
	p.max_rounds = 50;
	fakevm_start_writer(f.src, 0);
	assert_int_equal(pm_migration_start(&m, &f.src->be, &p, &f.err), 0);
	assert_true(wait_phase(m, "precopy", 10000));
	assert_false(ended_within(m, 0));
	double t = pm_now_ms();
	assert_int_equal(pm_migration_cancel(m), 0);
	assert_int_equal(pm_migration_cancel(m), 0);    /* twice is fine */
	assert_true(ended_within(m, 5000));
	assert_true(pm_now_ms() - t < 2000);
	int r = pm_migration_wait(m, f.rep, &f.err);
	assert_int_equal(r, -ECANCELED);
	assert_non_null(strstr(f.err.msg, "migration cancelled"));
	assert_int_equal(f.rep->status, -ECANCELED);
	assert_int_equal(pm_migration_cancel(m), -EALREADY);
	pm_migration_free(m);
	assert_int_equal(f.src->pauses, 0);
	assert_false(f.src->tracking);
	source_runs(f.src);
	pair_join(&f);
	assert_true(f.d.rc < 0);
	if (!strstr(f.d.err.msg, "source aborted: migration cancelled"))
		fail_msg("destination's reason: %s", f.d.err.msg);
	assert_int_equal(f.dst->resumes, 0);
	assert_int_equal(f.dst->loads, 0);
	fakevm_stop_writer(f.src);
	pair_free(&f);
}

/* Cancel while connecting to a destination that accepts but never answers:
 * no waiting for the 15 s timeout. */
static void test_cancel_connecting(void **s)
{
	struct fakevm *src = fakevm_new("src", 2, npages, gpas);
	struct pm_report *rep = calloc(1, sizeof(*rep));
	struct pm_err err = { 0 };
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char addr[80];
	const char *to[1] = { addr };
	struct pm_migration *m;
	int l = pm_tcp_listen("127.0.0.1:0", &err);   /* never accepts: HELLO_ACK never comes */

	assert_true(l >= 0);
	getsockname(l, (struct sockaddr *)&ss, &sl);
	pm_format_addr((struct sockaddr *)&ss, addr, sizeof(addr));
	struct pm_migrate_params p = { .to = to, .nto = 1, .channels = 2, .timeout_ms = 15000 };
	assert_int_equal(pm_migration_start(&m, &src->be, &p, &err), 0);
	usleep(100000);
	double t = pm_now_ms();
	assert_int_equal(pm_migration_cancel(m), 0);
	assert_true(ended_within(m, 5000));
	assert_true(pm_now_ms() - t < 1000);
	assert_int_equal(pm_migration_wait(m, rep, &err), -ECANCELED);
	assert_non_null(strstr(err.msg, "migration cancelled"));
	pm_migration_free(m);
	assert_int_equal(src->starts, 0);
	assert_int_equal(src->pauses, 0);
	close(l);
	free(rep);
	fakevm_free(src);
}

/* Cancel while the VM is paused for switchover (from inside pause(), so the
 * moment is exact): the VM is resumed, the destination never runs it. */
struct cancel_at_pause {
	struct pm_migration *_Atomic m;
	int rc;
};

static void cancel_in_pause(void *arg)
{
	struct cancel_at_pause *c = arg;

	for (unsigned i = 0; i < 50000 && !atomic_load(&c->m); i++)
		usleep(100);
	c->rc = pm_migration_cancel(atomic_load(&c->m));
}

static void test_cancel_while_paused(void **s)
{
	struct pair f;
	struct pm_migration *m;
	struct cancel_at_pause cp = { .rc = 1 };

	pair_start(&f, 2, 0, NULL, 0, 15000);
	struct pm_migrate_params p = pair_params(&f, 15000);
	f.src->on_pause = cancel_in_pause;
	f.src->on_pause_arg = &cp;
	fakevm_start_writer(f.src, 50);
	/* The handle is published before pause() can run: the first pass
	 * takes far longer than the store. */
	f.src->harvest_delay_us = 500;
	assert_int_equal(pm_migration_start(&m, &f.src->be, &p, &f.err), 0);
	atomic_store(&cp.m, m);
	int r = pm_migration_wait(m, f.rep, &f.err);
	pm_migration_free(m);
	assert_int_equal(cp.rc, 0);
	assert_int_equal(r, -ECANCELED);
	if (!strstr(f.err.msg, "cancelled; the VM runs here again"))
		fail_msg("message: %s", f.err.msg);
	assert_int_equal(f.src->pauses, 1);
	assert_int_equal(f.src->resumes, 1);
	source_runs(f.src);
	pair_join(&f);
	assert_true(f.d.rc < 0);
	assert_int_equal(f.dst->resumes, 0);
	fakevm_stop_writer(f.src);
	pair_free(&f);
}

/* Past the point of no return a cancel is refused: the DONE is held up by
 * the proxy, so the source is certainly waiting for it when cancel comes. */
static void test_cancel_too_late(void **s)
{
	struct fp_rule delay = { .dir = FP_TO_SRC, .frame = 10 /* DONE */, .action = FP_DELAY,
				 .delay_ms = 1500 };
	struct pair f;
	struct pm_migration *m;

	pair_start(&f, 2, 3, &delay, 1, 15000);
	struct pm_migrate_params p = pair_params(&f, 15000);
	assert_int_equal(pm_migration_start(&m, &f.src->be, &p, &f.err), 0);
	for (unsigned i = 0; i < 10000 && hits(&f) == 0; i++)
		usleep(1000);
	assert_true(hits(&f) > 0);
	assert_int_equal(pm_migration_cancel(m), -EBUSY);
	int r = pm_migration_wait(m, f.rep, &f.err);
	if (r)
		fail_msg("migration failed: %s", f.err.msg);
	assert_int_equal(f.rep->status, 0);
	pm_migration_free(m);
	pair_join(&f);
	assert_int_equal(f.d.rc, 0);
	assert_true(f.src->paused);
	assert_int_equal(f.src->resumes, 0);
	assert_int_equal(f.dst->resumes, 1);
	assert_true(fakevm_first_diff(f.src, f.dst) < 0);
	pair_free(&f);
}

/* The handle: progress phases, the end fd, wait, free without wait. */
static void test_handle(void **s)
{
	struct pair f;
	struct pm_migration *m;
	struct pm_progress pr;

	pair_start(&f, 2, 0, NULL, 0, 15000);
	struct pm_migrate_params p = pair_params(&f, 15000);
	assert_int_equal(pm_migration_start(&m, &f.src->be, &p, &f.err), 0);
	pm_migration_progress(m, &pr);
	assert_non_null(pr.phase);
	assert_true(ended_within(m, 10000));
	pm_migration_progress(m, &pr);
	assert_string_equal(pr.phase, "completing");
	assert_int_equal(pr.nchannels, 2);
	assert_true(pr.pages_sent + pr.zero_pages >= f.src->total);
	assert_int_equal(pm_migration_wait(m, f.rep, &f.err), 0);
	assert_int_equal(pm_migration_wait(m, NULL, NULL), 0);  /* again: same answer */
	assert_int_equal(pm_migration_cancel(m), -EALREADY);
	pm_migration_free(m);
	pair_join(&f);
	assert_int_equal(f.d.rc, 0);
	assert_true(fakevm_first_diff(f.src, f.dst) < 0);
	pair_free(&f);
	/* Freed while running: cancelled and waited for. */
	pair_start(&f, 2, 0, NULL, 0, 15000);
	f.src->harvest_delay_us = 1000;
	assert_int_equal(pm_migration_start(&m, &f.src->be, &p, &f.err), 0);
	pm_migration_free(m);
	assert_int_equal(f.src->pauses, f.src->resumes);
	pair_free(&f);
}

int main(void)
{
	if (getenv("PM_TEST_FILTER"))
		cmocka_set_test_filter(getenv("PM_TEST_FILTER"));
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_done_lost_on_one),
		cmocka_unit_test(test_done_lost_on_all),
		cmocka_unit_test(test_stalled_channel),
		cmocka_unit_test(test_cut_one_of_four),
		cmocka_unit_test(test_tls_reconnect),
		cmocka_unit_test(test_cut_all),
		cmocka_unit_test(test_lost_at_end),
		cmocka_unit_test(test_cut_barrier),
		cmocka_unit_test(test_corrupt_frame),
		cmocka_unit_test(test_cancel_precopy),
		cmocka_unit_test(test_cancel_connecting),
		cmocka_unit_test(test_cancel_while_paused),
		cmocka_unit_test(test_cancel_too_late),
		cmocka_unit_test(test_handle),
	};
	int r = cmocka_run_group_tests(tests, NULL, NULL);

	return tls_creds_remove() ? 1 : r;
}
