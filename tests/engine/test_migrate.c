/* SPDX-License-Identifier: MIT */
/* In-process migrations between two fake VMs (tests/engine/fakevm.h) over
 * loopback: pm_incoming_run in a thread, pm_migrate_outgoing in the test
 * thread.  A writer thread dirties pages during pre-copy; at the pause it
 * stops, so the destination must then equal the source byte for byte --
 * with rounds overlapping (no barrier), this checks the per-page round
 * rule end to end.  Also the chunk/round logic as seen from outside
 * (report counts, every page sent once when idle, chunk sizes), and the
 * failure cases: smaller destination, nothing listening, policy abort,
 * destination refusing the device state after the pause. */
#include <errno.h>
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
#include "engine/protocol.h"
#include "fakevm.h"
#include "harness.h"

static const uint64_t gpas[2] = { 0, 0x100000000ull };
/* 612 + 300 pages (3.6 MiB): region ends fall inside chunks. */
static const uint64_t src_pages[2] = { 612, 300 };

static void dest_start_tls(struct dest_run *d, struct fakevm *vm, unsigned nlisten, const char *dump,
			   enum pm_tls_mode tls)
{
	struct pm_tls_params t = tls_params(tls);

	dest_start_with(d, vm, nlisten, dump, 15000, &t);
}

struct cfg {
	unsigned channels, nlisten, chunk_pages, downtime_ms, max_rounds;
	bool barrier, serial, writer, dumps, progress, verify;
	enum pm_compress compress;
	enum pm_tls_mode tls;
};

static atomic_int progress_calls, progress_bad;

static void on_progress(void *opaque, const struct pm_progress *p)
{
	static const char *const phases[] = { "connecting", "precopy", "switchover", "completing" };
	bool ok = false;

	for (unsigned i = 0; i < 4; i++)
		if (p->phase && !strcmp(p->phase, phases[i]))
			ok = true;
	if (!ok || p->nchannels != *(unsigned *)opaque)
		atomic_fetch_add(&progress_bad, 1);
	atomic_fetch_add(&progress_calls, 1);
}

static bool file_equals_vm(const char *path, struct fakevm *vm)
{
	FILE *f = fopen(path, "rb");
	uint8_t page[PM_PAGE_SIZE];
	bool ok = f != NULL;

	for (uint64_t g = 0; ok && g < vm->total; g++)
		ok = fread(page, 1, sizeof(page), f) == sizeof(page) &&
		     !memcmp(page, fakevm_page(vm, g), sizeof(page));
	if (ok)
		ok = fread(page, 1, 1, f) == 0;
	if (f)
		fclose(f);
	return ok;
}

/* The timeline: samples in time order from round 1 to "done", a sample at
 * the pause in the final round, rounds starting in order with the final one
 * at the pause, per-channel bytes that only grow and end at what was sent;
 * the guest's write rate passed on from the backend. */
static void check_timeline(const struct pm_report *rep, unsigned nch, bool writer)
{
	const struct pm_sample *s = rep->samples, *last = &s[rep->nsamples - 1];
	bool saw_pause = false;
	uint64_t total = 0;

	assert_true(rep->nsamples >= 3);
	assert_true(rep->nsamples <= PM_MAX_SAMPLES);
	assert_int_equal(s[0].round, 1);
	assert_int_equal(s[0].phase, PM_PH_PRECOPY);
	assert_int_equal(last->phase, PM_PH_DONE);
	assert_true(last->t_ms <= rep->total_time_ms + 1);
	for (unsigned i = 0; i < rep->nsamples; i++) {
		if (i) {
			assert_true(s[i].t_ms >= s[i - 1].t_ms);
			assert_true(s[i].round >= s[i - 1].round);
			assert_true(s[i].phase >= s[i - 1].phase);
			for (unsigned k = 0; k < nch && k < PM_SAMPLE_CHANNELS; k++)
				assert_true(s[i].channel_bytes[k] >= s[i - 1].channel_bytes[k]);
		}
		if (s[i].phase == PM_PH_PAUSED) {
			saw_pause = true;
			assert_int_equal(s[i].round, rep->nrounds);
			assert_true(s[i].t_ms >= rep->pause_at_ms);
		}
	}
	assert_true(saw_pause);
	for (unsigned k = 0; k < nch; k++)
		total += last->channel_bytes[k];
	assert_true(total == rep->bytes_sent);
	assert_true(rep->pause_at_ms > 0 && rep->pause_at_ms <= rep->total_time_ms);
	for (unsigned i = 1; i < rep->nrounds; i++)
		assert_true(rep->rounds[i].start_ms >= rep->rounds[i - 1].start_ms);
	assert_true(rep->rounds[rep->nrounds - 1].start_ms == rep->pause_at_ms);
	assert_true(rep->write_rate_asked_mbps == 1.0);
	/* (A short migration may see no write from a busy writer.) */
	assert_true(rep->write_rate_mbps >= 0);
	if (!writer)
		assert_true(rep->write_rate_mbps == 0);
}

static void run_migration(const struct cfg *cfg)
{
	struct fakevm *src = fakevm_new("src", 2, src_pages, gpas);
	struct fakevm *dst = fakevm_new("dst", 2, src_pages, gpas);
	struct pm_report *rep = calloc(1, sizeof(*rep));
	struct pm_err err = { 0 };
	struct dest_run d;
	char dump_src[64] = "", dump_dst[64] = "";
	unsigned nch = cfg->serial ? 1 : cfg->channels;

	if (cfg->dumps) {
		snprintf(dump_src, sizeof(dump_src), "/tmp/pm-test-src-%d.img", getpid());
		snprintf(dump_dst, sizeof(dump_dst), "/tmp/pm-test-dst-%d.img", getpid());
	}
	fakevm_fill_source(src, 12345);
	fakevm_fill_dest(dst);
	dest_start_tls(&d, dst, cfg->nlisten ? cfg->nlisten : 1, cfg->dumps ? dump_dst : NULL, cfg->tls);

	struct pm_migrate_params p = {
		.to = d.to, .nto = d.nlisten, .channels = cfg->channels, .barrier = cfg->barrier,
		.serial = cfg->serial, .compress = cfg->compress, .chunk_pages = cfg->chunk_pages,
		.downtime_ms = cfg->downtime_ms, .max_rounds = cfg->max_rounds,
		.policy = PM_NC_FORCE, .timeout_ms = 15000,
		.dump_at_pause = cfg->dumps ? dump_src : NULL, .tls = tls_params(cfg->tls),
		.verify = cfg->verify,
	};
	if (cfg->progress) {
		p.progress = on_progress;
		p.progress_opaque = &nch;
		p.progress_interval_ms = 2;
		atomic_store(&progress_calls, 0);
		atomic_store(&progress_bad, 0);
	}
	if (cfg->writer)
		fakevm_start_writer(src, 20);
	int r = pm_migrate_outgoing(&src->be, &p, rep, &err);
	uint64_t writes = cfg->writer ? fakevm_writes(src) : 0;
	fakevm_stop_writer(src);
	dest_join(&d);
	if (r)
		fail_msg("migration failed: %s (destination: %s)", err.msg, d.err.msg);
	if (d.rc)
		fail_msg("destination failed: %s", d.err.msg);

	/* The destination equals the source as paused. */
	int64_t diff = fakevm_first_diff(src, dst);
	if (diff >= 0) {
		const uint8_t *a = fakevm_page(src, diff), *b = fakevm_page(dst, diff);
		unsigned nbytes = 0, first = PM_PAGE_SIZE, npages = 0;
		for (unsigned i = 0; i < PM_PAGE_SIZE; i++)
			if (a[i] != b[i]) {
				nbytes++;
				if (first == PM_PAGE_SIZE)
					first = i;
			}
		for (uint64_t g = 0; g < src->total; g++)
			npages += memcmp(fakevm_page(src, g), fakevm_page(dst, g), PM_PAGE_SIZE) != 0;
		fail_msg("page %lld differs after migration (%u pages differ; %u bytes from offset %u, "
			 "src %02x dst %02x there; %u channels, barrier %d, serial %d, %s, %llu writes, "
			 "%u rounds, %llu stale)",
			 (long long)diff, npages, nbytes, first, a[first], b[first], nch, cfg->barrier,
			 cfg->serial, pm_compress_name(cfg->compress), (unsigned long long)writes,
			 rep->nrounds, (unsigned long long)d.rep->stale_pages);
	}
	/* Backends: the source paused once and stays paused; the destination
	 * loaded the source's device state and resumed once. */
	assert_int_equal(src->pauses, 1);
	assert_int_equal(src->resumes, 0);
	assert_true(src->paused);
	assert_int_equal(src->starts, 1);
	assert_int_equal(src->stops, 1);
	assert_int_equal(src->bad_harvests, 0);
	assert_false(src->tracking);
	assert_int_equal(dst->loads, 1);
	assert_int_equal(dst->resumes, 1);
	assert_int_equal(dst->pauses, 0);
	assert_int_equal(dst->loaded_len, 3000);
	for (size_t i = 0; i < dst->loaded_len; i++)
		assert_int_equal(((uint8_t *)dst->loaded_state)[i], (uint8_t)(i * 31 + 7));

	/* Source report. */
	assert_int_equal(rep->status, 0);
	assert_string_equal(rep->role, "source");
	assert_string_equal(rep->dirty_method, "test-exact");
	assert_int_equal(rep->channels, nch);
	assert_int_equal(rep->barrier, cfg->barrier);
	assert_int_equal(rep->serial, cfg->serial);
	assert_int_equal(rep->compress, cfg->compress);
	assert_true(rep->vm_pages == src->total);
	assert_true(rep->nrounds >= 2);
	assert_true(rep->nrounds <= (cfg->max_rounds ? cfg->max_rounds : 30) + 1);
	assert_true(rep->pages_sent + rep->zero_pages >= src->total);
	assert_true(rep->bytes_sent > 0);
	assert_true(rep->frames > 0);
	assert_true(rep->total_time_ms > 0);
	assert_true(rep->downtime_ms > 0);
	assert_true(rep->downtime_ms <= rep->total_time_ms);
	assert_true(rep->switchover_reason[0] != '\0');
	assert_string_equal(rep->tls, pm_tls_mode_name(cfg->tls));
	assert_string_equal(d.rep->tls, pm_tls_mode_name(cfg->tls));
	if (cfg->tls) {
		/* The kernel makes the records wherever it can. */
		const char *want = ktls_usable() ? "ktls" : "userspace";
		assert_string_equal(rep->tls_records, want);
		assert_string_equal(d.rep->tls_records, want);
	} else {
		assert_string_equal(rep->tls_records, "none");
	}
	uint64_t pages = 0, zero = 0, bytes = 0, chb = 0;
	for (unsigned i = 0; i < rep->nrounds; i++) {
		assert_int_equal(rep->rounds[i].round, i + 1);
		assert_int_equal(rep->rounds[i].final, i + 1 == rep->nrounds);
		pages += rep->rounds[i].pages;
		zero += rep->rounds[i].zero_pages;
		bytes += rep->rounds[i].bytes;
	}
	/* Round 1 starts with every page dirty.  (It need not send them all:
	 * a chunk whose round-1 task is still queued when round 2 harvests it
	 * is skipped in round 1 and sent in round 2.) */
	assert_true(rep->rounds[0].dirty_at_start == src->total);
	assert_true(pages == rep->pages_sent);
	assert_true(zero == rep->zero_pages);
	assert_true(bytes == rep->bytes_sent);
	/* (A channel may stay idle: there may be fewer chunks than channels.) */
	for (unsigned i = 0; i < nch; i++)
		chb += rep->channel_bytes[i];
	for (unsigned i = nch; i < PM_MAX_CHANNELS; i++)
		assert_true(rep->channel_bytes[i] == 0);
	assert_true(chb == rep->bytes_sent);
	if (!cfg->writer) {
		/* Idle guest: every page exactly once, then an empty final round. */
		assert_string_equal(rep->switchover_reason, "converged");
		assert_true(rep->pages_sent + rep->zero_pages == src->total);
		assert_true(rep->rounds[rep->nrounds - 1].pages + rep->rounds[rep->nrounds - 1].zero_pages == 0);
		assert_true(d.rep->stale_pages == 0);
	}
	check_timeline(rep, nch, cfg->writer);
	if (cfg->compress == PM_COMPRESS_NONE)
		assert_true(rep->bytes_sent == rep->frames * 40 + rep->pages_sent * PM_PAGE_SIZE);
	else
		assert_true(rep->bytes_sent < rep->frames * 40 + rep->pages_sent * PM_PAGE_SIZE);

	/* Destination report: what arrived is what was sent. */
	assert_int_equal(d.rep->status, 0);
	assert_string_equal(d.rep->role, "destination");
	assert_int_equal(d.rep->channels, nch);
	assert_int_equal(d.rep->barrier, cfg->barrier);
	assert_true(d.rep->frames == rep->frames);
	assert_true(d.rep->pages_sent + d.rep->zero_pages == rep->pages_sent + rep->zero_pages);
	assert_true(d.rep->bytes_sent == rep->bytes_sent);
	assert_true(d.rep->stale_pages <= d.rep->pages_sent + d.rep->zero_pages);
	/* The destination counts rounds by the highest round it received. */
	unsigned last_sent = 0;
	for (unsigned i = 0; i < rep->nrounds; i++)
		if (rep->rounds[i].pages + rep->rounds[i].zero_pages)
			last_sent = i + 1;
	assert_int_equal(d.rep->nrounds, last_sent);
	if (cfg->barrier || nch == 1)
		assert_true(d.rep->stale_pages == 0);   /* rounds cannot overtake */

	if (cfg->dumps) {
		assert_true(file_equals_vm(dump_src, src));
		assert_true(file_equals_vm(dump_dst, dst));
		assert_true(rep->verify_dump_ms > 0);
		unlink(dump_src);
		unlink(dump_dst);
	}
	if (cfg->verify) {
		assert_true(rep->verify && rep->verified && rep->verify_ms > 0);
		assert_true(d.rep->verify && d.rep->verified);
		assert_true(rep->verify_error[0] == '\0');
	}
	if (cfg->progress) {
		assert_true(atomic_load(&progress_calls) > 0);
		assert_int_equal(atomic_load(&progress_bad), 0);
	}
	free(rep);
	free(d.rep);
	fakevm_free(src);
	fakevm_free(dst);
}

/* A guest that writes all the time; 1 ms downtime target and few rounds, so
 * several overlapping pre-copy rounds run while it writes. */
#define BUSY .writer = true, .downtime_ms = 1, .max_rounds = 4

static void test_idle_1ch(void **s) { run_migration(&(struct cfg){ .channels = 1 }); }
static void test_idle_4ch(void **s) { run_migration(&(struct cfg){ .channels = 4, .chunk_pages = 64 }); }
static void test_busy_1ch(void **s) { run_migration(&(struct cfg){ .channels = 1, BUSY }); }
static void test_busy_4ch(void **s) { run_migration(&(struct cfg){ .channels = 4, BUSY }); }
static void test_busy_4ch_small_chunks(void **s)
{
	run_migration(&(struct cfg){ .channels = 4, .chunk_pages = 64, .nlisten = 2, .writer = true,
				     .downtime_ms = 1, .max_rounds = 6 });
}
static void test_busy_1ch_barrier(void **s) { run_migration(&(struct cfg){ .channels = 1, .barrier = true, BUSY }); }
static void test_busy_4ch_barrier(void **s)
{
	run_migration(&(struct cfg){ .channels = 4, .chunk_pages = 128, .barrier = true, BUSY });
}
static void test_busy_serial(void **s) { run_migration(&(struct cfg){ .channels = 4, .serial = true, BUSY }); }
/* Compression with an idle guest.  (With a writer, see the regression tests below.) */
static void test_idle_lz4(void **s)
{
	run_migration(&(struct cfg){ .channels = 4, .chunk_pages = 64, .compress = PM_COMPRESS_LZ4 });
}
static void test_idle_zstd_barrier(void **s)
{
	run_migration(&(struct cfg){ .channels = 2, .compress = PM_COMPRESS_ZSTD, .barrier = true,
				     .downtime_ms = 1, .max_rounds = 3 });
}

/* Regression (found by this test, fixed in source.c): emit_run() compressed
 * straight from guest memory while the guest wrote it.  lz4/zstd do not promise a
 * correct stream for input that changes under them: a match found between
 * a stable page and a page being written can decode to the written page's
 * later bytes, so the stable page -- not dirty again, never resent --
 * arrives corrupted.  Seen as "page N differs" about once in 150 zstd
 * migrations with this writer.  The fix compresses a private copy of the
 * run (as QEMU's multifd zlib/zstd do). */
__attribute__((unused)) static void test_busy_lz4(void **s)
{
	for (int i = 0; i < 100; i++)
		run_migration(&(struct cfg){ .channels = 1, .compress = PM_COMPRESS_LZ4, BUSY });
}
__attribute__((unused)) static void test_busy_zstd(void **s)
{
	for (int i = 0; i < 100; i++)
		run_migration(&(struct cfg){ .channels = 1, .compress = PM_COMPRESS_ZSTD, BUSY });
}

/* Regression (fixed in report.c): pm_report_from_json() did not parse
 * "channel_bytes" back although pm_report_to_json() writes it. */
__attribute__((unused)) static void test_report_channel_bytes(void **s)
{
	struct pm_report *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));

	a->role = "source";
	a->channels = 3;
	for (unsigned i = 0; i < 3; i++)
		a->channel_bytes[i] = 1000 + i;
	char *j = pm_report_to_json(a);
	assert_int_equal(pm_report_from_json(j, b), 0);
	for (unsigned i = 0; i < 3; i++)
		assert_true(b->channel_bytes[i] == a->channel_bytes[i]);
	free(j);
	free(a);
	free(b);
}
/* The same over TLS 1.3: X.509 with a writer over 4 channels, PSK with
 * small chunks over 2 listeners, barrier mode, compression, one channel. */
static void test_tls_x509_busy_4ch(void **s)
{
	run_migration(&(struct cfg){ .channels = 4, .tls = PM_TLS_X509, BUSY });
}
static void test_tls_psk_busy_small_chunks(void **s)
{
	run_migration(&(struct cfg){ .channels = 4, .chunk_pages = 64, .nlisten = 2, .writer = true,
				     .downtime_ms = 1, .max_rounds = 6, .tls = PM_TLS_PSK });
}
static void test_tls_x509_barrier(void **s)
{
	run_migration(&(struct cfg){ .channels = 3, .chunk_pages = 128, .barrier = true, .tls = PM_TLS_X509, BUSY });
}
static void test_tls_psk_lz4_serial(void **s)
{
	run_migration(&(struct cfg){ .channels = 1, .serial = true, .compress = PM_COMPRESS_LZ4,
				     .tls = PM_TLS_PSK, BUSY });
}
static void test_dumps_progress(void **s)
{
	run_migration(&(struct cfg){ .channels = 3, .chunk_pages = 64, .dumps = true, .progress = true, BUSY });
}

/* ------------------------------------------------------------- failures */

static struct pm_migrate_params params_to(const char *const *to, unsigned nto, unsigned channels)
{
	return (struct pm_migrate_params){ .to = to, .nto = nto, .channels = channels,
					   .timeout_ms = 15000, .policy = PM_NC_FORCE };
}

static void test_smaller_destination(void **s)
{
	const uint64_t small[2] = { 300, 300 };
	struct fakevm *src = fakevm_new("src", 2, src_pages, gpas);
	struct fakevm *dst = fakevm_new("dst", 2, small, gpas);
	struct pm_report *rep = calloc(1, sizeof(*rep));
	struct pm_err err = { 0 };
	struct dest_run d;

	fakevm_fill_source(src, 1);
	dest_start(&d, dst, 1, NULL);
	struct pm_migrate_params p = params_to(d.to, 1, 2);
	fakevm_start_writer(src, 50);
	int r = pm_migrate_outgoing(&src->be, &p, rep, &err);
	dest_join(&d);
	assert_true(r < 0);
	if (!strstr(err.msg, "smaller"))
		fail_msg("source error does not say the destination is smaller: %s", err.msg);
	assert_non_null(strstr(err.msg, "destination refused"));
	assert_int_equal(rep->status, r);
	assert_non_null(strstr(rep->error, "smaller"));
	/* The destination refused too, and never resumed. */
	assert_true(d.rc < 0);
	assert_non_null(strstr(d.err.msg, "smaller"));
	assert_int_equal(dst->loads, 0);
	assert_int_equal(dst->resumes, 0);
	/* The source keeps running: never paused (or resumed as often). */
	assert_int_equal(src->pauses, src->resumes);
	assert_false(src->paused);
	uint64_t w = fakevm_writes(src);
	usleep(20000);
	assert_true(fakevm_writes(src) > w);
	free(rep);
	free(d.rep);
	fakevm_free(src);
	fakevm_free(dst);
}

static void test_nothing_listening(void **s)
{
	struct fakevm *src = fakevm_new("src", 2, src_pages, gpas);
	struct pm_report *rep = calloc(1, sizeof(*rep));
	struct pm_err err = { 0 };
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char addr[80];
	const char *to[1] = { addr };
	int l = pm_tcp_listen("127.0.0.1:0", &err);

	assert_true(l >= 0);
	getsockname(l, (struct sockaddr *)&ss, &sl);
	pm_format_addr((struct sockaddr *)&ss, addr, sizeof(addr));
	close(l);
	struct pm_migrate_params p = params_to(to, 1, 2);
	int r = pm_migrate_outgoing(&src->be, &p, rep, &err);
	assert_true(r < 0);
	if (!strstr(err.msg, "cannot connect to") || !strstr(err.msg, addr))
		fail_msg("unclear connect error: %s", err.msg);
	assert_int_equal(src->pauses, 0);
	assert_int_equal(src->starts, 0);
	assert_int_equal(rep->status, r);

	/* Bad parameters: clear errors before anything starts. */
	const char *bad[1] = { "127.0.0.1" };
	p = params_to(bad, 1, 1);
	pm_err_clear(&err);
	assert_true(pm_migrate_outgoing(&src->be, &p, rep, &err) < 0);
	assert_non_null(strstr(err.msg, "no port"));
	p = params_to(to, 0, 1);
	pm_err_clear(&err);
	assert_true(pm_migrate_outgoing(&src->be, &p, rep, &err) < 0);
	assert_non_null(strstr(err.msg, "no destination address"));
	p = params_to(to, 1, 65);
	pm_err_clear(&err);
	assert_true(pm_migrate_outgoing(&src->be, &p, rep, &err) < 0);
	assert_non_null(strstr(err.msg, "channel count 65"));
	p = params_to(to, 1, 1);
	p.chunk_pages = 100;
	pm_err_clear(&err);
	assert_true(pm_migrate_outgoing(&src->be, &p, rep, &err) < 0);
	assert_non_null(strstr(err.msg, "multiple of 64"));
	assert_int_equal(src->pauses, 0);
	assert_int_equal(src->starts, 0);
	free(rep);
	fakevm_free(src);
}

/* A dirty count that swings (8000, 5000, 7000, 5000, ... pages at the
 * round starts) makes no progress: with policy abort the migration gives
 * up for "no-progress" after two rounds without a new low, not only at
 * max-rounds as a rule of "did not fall since the last round" would. */
static void swing_dirty(void *arg)
{
	struct fakevm *vm = arg;
	uint64_t n;

	pthread_mutex_lock(&vm->lock);
	n = vm->syncs <= 1 ? 0 : vm->syncs == 2 ? 8000 : vm->syncs % 2 ? 5000 : 7000;
	for (uint64_t g = 0; g < n && g < vm->total; g++)
		vm->dirty[g / 64] |= 1ull << (g % 64);
	pthread_mutex_unlock(&vm->lock);
}

static void test_no_progress_swinging(void **s)
{
	static const uint64_t big[1] = { 16384 }, at0[1] = { 0 };   /* 64 MiB */
	struct fakevm *src = fakevm_new("src", 1, big, at0);
	struct fakevm *dst = fakevm_new("dst", 1, big, at0);
	struct pm_report *rep = calloc(1, sizeof(*rep));
	struct pm_err err = { 0 };
	struct dest_run d;

	fakevm_fill_source(src, 3);
	src->on_sync = swing_dirty;
	src->on_sync_arg = src;
	dest_start(&d, dst, 1, NULL);
	struct pm_migrate_params p = params_to(d.to, 1, 2);
	p.downtime_ms = 1;                     /* 20 MB of 5000 pages never fit */
	p.max_rounds = 12;
	p.max_bytes_factor = 100;
	p.policy = PM_NC_ABORT;
	int r = pm_migrate_outgoing(&src->be, &p, rep, &err);
	dest_join(&d);
	assert_true(r < 0);
	if (!strstr(err.msg, "no-progress"))
		fail_msg("gave up for another reason: %s", err.msg);
	/* Rounds 2 (8000), 3 (5000, the low), 4 (7000), 5 (5000): no new low twice. */
	assert_int_equal(rep->nrounds, 4);
	assert_false(src->paused);
	assert_int_equal(dst->resumes, 0);
	free(rep);
	free(d.rep);
	fakevm_free(src);
	fakevm_free(dst);
}

/* The guest dirties faster than the (slowed) link can send: with policy
 * abort the migration gives up and the VM keeps running at the source. */
static void test_policy_abort(void **s)
{
	struct fakevm *src = fakevm_new("src", 2, src_pages, gpas);
	struct fakevm *dst = fakevm_new("dst", 2, src_pages, gpas);
	struct pm_report *rep = calloc(1, sizeof(*rep));
	struct pm_err err = { 0 };
	struct dest_run d;

	fakevm_fill_source(src, 2);
	src->harvest_delay_us = 3000;          /* about 85 MB/s: slower than the writer */
	dest_start(&d, dst, 1, NULL);
	struct pm_migrate_params p = params_to(d.to, 1, 1);
	p.chunk_pages = 64;
	p.downtime_ms = 1;
	p.max_rounds = 3;
	p.policy = PM_NC_ABORT;
	fakevm_start_writer(src, 0);
	int r = pm_migrate_outgoing(&src->be, &p, rep, &err);
	dest_join(&d);
	assert_true(r < 0);
	if (!strstr(err.msg, "does not converge") || !strstr(err.msg, "keeps running"))
		fail_msg("unexpected error: %s", err.msg);
	assert_int_equal(rep->status, r);
	assert_true(rep->nrounds >= 3);
	assert_true(rep->downtime_ms == 0);
	assert_int_equal(src->pauses, 0);
	assert_false(src->paused);
	assert_int_equal(src->stops, 1);          /* tracking stopped */
	uint64_t w = fakevm_writes(src);
	usleep(20000);
	assert_true(fakevm_writes(src) > w);     /* the guest runs */
	/* The destination saw the source go away and did not resume. */
	assert_true(d.rc < 0);
	assert_int_equal(dst->loads, 0);
	assert_int_equal(dst->resumes, 0);
	free(rep);
	free(d.rep);
	fakevm_free(src);
	fakevm_free(dst);
}

/* Failure after the pause: the destination cannot load the device state.
 * It tells the source, which resumes its VM. */
static void test_busy_4ch_verify(void **s)
{
	run_migration(&(struct cfg){ .channels = 4, .verify = true, BUSY });
}

/* A write the dirty tracker missed: without --verify the migration
 * "succeeds" with memory that differs; with it, the destination refuses to
 * resume, names where memory differs, and the source runs on. */
static void test_verify_catches_lost_write(void **s)
{
	for (int verify = 0; verify < 2; verify++) {
		struct fakevm *src = fakevm_new("src", 2, src_pages, gpas);
		struct fakevm *dst = fakevm_new("dst", 2, src_pages, gpas);
		struct pm_report *rep = calloc(1, sizeof(*rep));
		struct pm_err err = { 0 };
		struct dest_run d;

		fakevm_fill_source(src, 7);
		src->lost_write_page = 300;
		dest_start(&d, dst, 1, NULL);
		struct pm_migrate_params p = params_to(d.to, 1, 2);
		p.verify = verify;
		int r = pm_migrate_outgoing(&src->be, &p, rep, &err);
		dest_join(&d);
		if (!verify) {
			assert_int_equal(r, 0);
			assert_true(fakevm_first_diff(src, dst) >= 0);
		} else {
			assert_int_equal(r, -EBADMSG);
			if (!strstr(err.msg, "verification failed: memory differs") || !strstr(err.msg, "region 0 pages [0, 512)"))
				fail_msg("unexpected error: %s", err.msg);
			assert_true(rep->verify && !rep->verified);
			assert_non_null(strstr(rep->verify_error, "pages ["));
			assert_int_equal(src->resumes, 1);
			assert_false(src->paused);
			assert_int_equal(dst->loads, 0);
			assert_int_equal(dst->resumes, 0);
			assert_int_equal(d.rc, -EBADMSG);
		}
		free(rep);
		free(d.rep);
		fakevm_free(src);
		fakevm_free(dst);
	}
}

static void test_dest_load_fails(void **s)
{
	struct fakevm *src = fakevm_new("src", 2, src_pages, gpas);
	struct fakevm *dst = fakevm_new("dst", 2, src_pages, gpas);
	struct pm_report *rep = calloc(1, sizeof(*rep));
	struct pm_err err = { 0 };
	struct dest_run d;

	fakevm_fill_source(src, 3);
	dst->fail_load = true;
	dest_start(&d, dst, 1, NULL);
	struct pm_migrate_params p = params_to(d.to, 1, 2);
	fakevm_start_writer(src, 50);
	int r = pm_migrate_outgoing(&src->be, &p, rep, &err);
	dest_join(&d);
	assert_true(r < 0);
	if (!strstr(err.msg, "device state rejected on purpose"))
		fail_msg("source error does not carry the destination's reason: %s", err.msg);
	assert_int_equal(src->pauses, 1);
	assert_int_equal(src->resumes, 1);
	assert_false(src->paused);
	assert_true(rep->downtime_ms == 0);
	uint64_t w = fakevm_writes(src);
	usleep(20000);
	assert_true(fakevm_writes(src) > w);
	assert_true(d.rc < 0);
	assert_int_equal(dst->loads, 1);
	assert_int_equal(dst->resumes, 0);
	free(rep);
	free(d.rep);
	fakevm_free(src);
	fakevm_free(dst);
}

/* Two migrations in a row from the same listener are not supported by one
 * pm_incoming_run; but a listener can be reused for a second run. */
static void test_listener_reuse(void **s)
{
	struct fakevm *src = fakevm_new("src", 2, src_pages, gpas);
	struct fakevm *dst = fakevm_new("dst", 2, src_pages, gpas);
	struct pm_report *rep = calloc(1, sizeof(*rep));
	struct pm_err err = { 0 };
	struct dest_run d;

	fakevm_fill_source(src, 4);
	fakevm_fill_dest(dst);
	dest_start(&d, dst, 1, NULL);
	/* First attempt fails at the layout (region 1 moved)... */
	src->regions[1].gpa = 0x200000000ull;
	struct pm_migrate_params p = params_to(d.to, 1, 2);
	assert_true(pm_migrate_outgoing(&src->be, &p, rep, &err) < 0);
	assert_non_null(strstr(err.msg, "memory region 1: source at 0x200000000, destination at 0x100000000"));
	pthread_join(d.th, NULL);
	assert_true(d.rc < 0);
	/* ...a second run on the same listener then succeeds. */
	src->regions[1].gpa = gpas[1];
	assert_int_equal(pthread_create(&d.th, NULL, dest_main, &d), 0);
	pm_err_clear(&err);
	if (pm_migrate_outgoing(&src->be, &p, rep, &err))
		fail_msg("second migration failed: %s", err.msg);
	dest_join(&d);
	assert_int_equal(d.rc, 0);
	assert_true(fakevm_first_diff(src, dst) < 0);
	assert_int_equal(dst->resumes, 1);
	free(rep);
	free(d.rep);
	fakevm_free(src);
	fakevm_free(dst);
}

int main(void)
{
	if (getenv("PM_TEST_FILTER"))
		cmocka_set_test_filter(getenv("PM_TEST_FILTER"));
#ifdef PM_REGRESSIONS
	const struct CMUnitTest known[] = {
		cmocka_unit_test(test_report_channel_bytes),
		cmocka_unit_test(test_busy_zstd),
		cmocka_unit_test(test_busy_lz4),
	};
	return cmocka_run_group_tests(known, NULL, NULL);
#endif
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_idle_1ch),
		cmocka_unit_test(test_idle_4ch),
		cmocka_unit_test(test_busy_1ch),
		cmocka_unit_test(test_busy_4ch),
		cmocka_unit_test(test_busy_4ch_small_chunks),
		cmocka_unit_test(test_busy_1ch_barrier),
		cmocka_unit_test(test_busy_4ch_barrier),
		cmocka_unit_test(test_busy_serial),
		cmocka_unit_test(test_idle_lz4),
		cmocka_unit_test(test_idle_zstd_barrier),
		cmocka_unit_test(test_dumps_progress),
		cmocka_unit_test(test_tls_x509_busy_4ch),
		cmocka_unit_test(test_tls_psk_busy_small_chunks),
		cmocka_unit_test(test_tls_x509_barrier),
		cmocka_unit_test(test_tls_psk_lz4_serial),
		cmocka_unit_test(test_smaller_destination),
		cmocka_unit_test(test_nothing_listening),
		cmocka_unit_test(test_policy_abort),
		cmocka_unit_test(test_no_progress_swinging),
		cmocka_unit_test(test_busy_4ch_verify),
		cmocka_unit_test(test_verify_catches_lost_write),
		cmocka_unit_test(test_dest_load_fails),
		cmocka_unit_test(test_listener_reuse),
	};
	int r = cmocka_run_group_tests(tests, NULL, NULL);
	return tls_creds_remove() ? 1 : r;
}
