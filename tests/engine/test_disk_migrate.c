/* SPDX-License-Identifier: MIT */
/* In-process migrations of fake VMs with disks (pm_disk images in /tmp)
 * over loopback.  A disk writer writes data, zero blocks and discards
 * while the rounds run; it stops at the pause, so the destination's image
 * must then equal the source's byte for byte, and its memory too -- the
 * per-unit round rule for blocks, end to end, under ThreadSanitizer in the
 * concurrency suite.  Also: every block sent once when idle, holes where
 * the source has holes or zeros, shared storage sends nothing and flushes,
 * and the destination refuses other disks, or the source's own image. */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include <pmigrate/disk.h>
#include <pmigrate/migrate.h>
#include "fakevm.h"
#include "harness.h"

static const uint64_t gpas[1] = { 0 };
static const uint64_t mem_pages[1] = { 700 };

struct vmd {
	struct fakevm *vm;
	struct pm_disk *disk[2];
	struct pm_blockdev bd[2];
	unsigned ndisks;
	char path[2][96];
	pthread_t writer;
	bool writing;
	uint64_t dwrites;
};

static void vmd_open(struct vmd *v, const char *name, unsigned ndisks, const uint64_t *sizes,
		     const uint32_t *blocks, uint64_t populate, bool keep_file)
{
	memset(v, 0, sizeof(*v));
	v->vm = fakevm_new(name, 1, mem_pages, gpas);
	v->ndisks = ndisks;
	for (unsigned i = 0; i < ndisks; i++) {
		struct pm_disk_params p = { .path = v->path[i], .size = sizes[i], .block_size = blocks[i],
					    .create = true, .populate = populate, .seed = i };
		struct pm_err err = { 0 };
		snprintf(v->path[i], sizeof(v->path[i]), "/tmp/pm-test-dm-%d-%s-%u.img", getpid(), name, i);
		if (!keep_file)
			unlink(v->path[i]);
		if (pm_disk_open(&v->disk[i], &p, &err))
			fail_msg("disk: %s", err.msg);
		pm_disk_blockdev(v->disk[i], i, &v->bd[i]);
	}
	v->vm->be.ndisks = ndisks;
	v->vm->be.disks = v->bd;
}

static void vmd_close(struct vmd *v, bool remove)
{
	for (unsigned i = 0; i < v->ndisks; i++) {
		pm_disk_close(v->disk[i]);
		if (remove)
			unlink(v->path[i]);
	}
	fakevm_free(v->vm);
}

/* The guest's disk I/O: under the VM's lock, so a pause waits for a write
 * in flight, as a VMM's pause drains its I/O. */
static void *disk_writer(void *arg)
{
	struct vmd *v = arg;
	struct fakevm *vm = v->vm;
	uint64_t s = 0xfeedface;
	uint8_t *buf = malloc(65536);

	for (;;) {
		pthread_mutex_lock(&vm->lock);
		while (vm->paused && !vm->stop)
			pthread_cond_wait(&vm->cond, &vm->lock);
		if (vm->stop) {
			pthread_mutex_unlock(&vm->lock);
			break;
		}
		uint64_t x = fake_rand(&s);
		unsigned d = (unsigned)(x % v->ndisks);
		uint64_t size = pm_disk_size(v->disk[d]);
		uint64_t off = (x >> 8) % (size / 4096) * 4096, len = 4096;
		struct pm_err err = { 0 };
		int r;

		if ((x >> 40) % 10 == 0) {
			len = size - off < 65536 ? size - off : 65536;
			memset(buf, 0, len);                    /* written zeros */
			r = pm_disk_write(v->disk[d], buf, len, off, &err);
		} else if ((x >> 40) % 10 == 1) {
			r = pm_disk_discard(v->disk[d], off, 4096, &err);   /* a hole */
		} else {
			for (unsigned i = 0; i < len; i += 8)
				*(uint64_t *)(buf + i) = fake_rand(&s);
			r = pm_disk_write(v->disk[d], buf, len, off, &err);
		}
		v->dwrites++;
		pthread_mutex_unlock(&vm->lock);
		if (r)
			break;
		if (v->dwrites % 4 == 0)
			usleep(100);
	}
	free(buf);
	return NULL;
}

static bool files_equal(const char *a, const char *b)
{
	FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
	bool eq = fa && fb;
	char x[4096], y[4096];

	while (eq) {
		size_t na = fread(x, 1, sizeof(x), fa), nb = fread(y, 1, sizeof(y), fb);
		if (na != nb || memcmp(x, y, na))
			eq = false;
		if (!na)
			break;
	}
	if (fa)
		fclose(fa);
	if (fb)
		fclose(fb);
	return eq;
}

static uint64_t allocated(const char *path)
{
	struct stat st;

	return stat(path, &st) ? 0 : (uint64_t)st.st_blocks * 512;
}

struct dcfg {
	unsigned channels;
	bool barrier, serial, busy, shared, verify;
	enum pm_compress compress;
	enum pm_tls_mode tls;
};

static void run(const struct dcfg *cfg)
{
	static const uint64_t sizes[2] = { 8u << 20, (3u << 20) + 4096 };
	static const uint32_t blocks[2] = { 65536, 16384 };
	struct vmd s, d;
	struct pm_report *rep = calloc(1, sizeof(*rep));
	struct pm_err err = { 0 };
	struct dest_run dr;
	unsigned nch = cfg->serial ? 1 : cfg->channels;

	vmd_open(&s, "src", 2, sizes, blocks, 2u << 20, false);
	if (cfg->shared) {
		/* The destination opens the very same images. */
		d = (struct vmd){ 0 };
		d.vm = fakevm_new("dst", 1, mem_pages, gpas);
		d.ndisks = 2;
		for (unsigned i = 0; i < 2; i++) {
			struct pm_disk_params p = { .path = s.path[i], .block_size = blocks[i] };
			assert_int_equal(pm_disk_open(&d.disk[i], &p, &err), 0);
			pm_disk_blockdev(d.disk[i], i, &d.bd[i]);
			snprintf(d.path[i], sizeof(d.path[i]), "%s", s.path[i]);
		}
		d.vm->be.ndisks = 2;
		d.vm->be.disks = d.bd;
	} else {
		vmd_open(&d, "dst", 2, sizes, blocks, 0, false);
		/* Stale content at the destination that must not survive. */
		struct pm_err e2 = { 0 };
		char junk[65536];
		memset(junk, 0x5a, sizeof(junk));
		assert_int_equal(pm_disk_write(d.disk[0], junk, sizeof(junk), 5u << 20, &e2), 0);
	}
	fakevm_fill_source(s.vm, 777);
	fakevm_fill_dest(d.vm);
	struct pm_tls_params tls = tls_params(cfg->tls);
	dest_start_with(&dr, d.vm, 1, NULL, 15000, &tls);
	struct pm_migrate_params p = {
		.to = dr.to, .nto = dr.nlisten, .channels = cfg->channels, .barrier = cfg->barrier,
		.serial = cfg->serial, .compress = cfg->compress, .policy = PM_NC_FORCE,
		.timeout_ms = 15000, .downtime_ms = cfg->busy ? 1 : 0, .max_rounds = cfg->busy ? 5 : 0,
		.shared_storage = cfg->shared, .verify = cfg->verify, .tls = tls,
	};
	if (cfg->busy) {
		/* Slower rounds, so the disk writer lands in many of them. */
		s.vm->harvest_delay_us = 300;
		fakevm_start_writer(s.vm, 50);
		assert_int_equal(pthread_create(&s.writer, NULL, disk_writer, &s), 0);
		s.writing = true;
	}
	int r = pm_migrate_outgoing(&s.vm->be, &p, rep, &err);
	fakevm_stop_writer(s.vm);
	if (s.writing)
		pthread_join(s.writer, NULL);
	dest_join(&dr);
	if (r || dr.rc)
		fail_msg("migration failed: %s (destination: %s)", err.msg, dr.err.msg);

	/* Memory and every image equal the source's at the pause. */
	assert_true(fakevm_first_diff(s.vm, d.vm) < 0);
	for (unsigned i = 0; i < 2; i++)
		if (!files_equal(s.path[i], d.path[i]))
			fail_msg("disk %u differs after migration (%u channels, barrier %d, serial %d, %s, "
				 "%llu disk writes, %u rounds, %llu stale)", i, nch, cfg->barrier, cfg->serial,
				 pm_compress_name(cfg->compress), (unsigned long long)s.dwrites, rep->nrounds,
				 (unsigned long long)dr.rep->stale_pages);
	assert_int_equal(rep->ndisks, 2);
	assert_int_equal(rep->verified, cfg->verify);
	if (cfg->tls) {
		/* Kernel records: the blocks went by sendfile through kTLS;
		 * userspace records: read and sent through OpenSSL. */
		const char *want = ktls_usable() ? "ktls" : "userspace";
		if (getenv("PM_EXPECT_KTLS"))
			assert_string_equal(want, "ktls");      /* in the nested L1 */
		assert_string_equal(rep->tls_records, want);
		assert_string_equal(dr.rep->tls_records, want);
	}
	assert_int_equal(dr.rep->ndisks, 2);
	if (cfg->shared) {
		assert_true(rep->shared_storage);
		for (unsigned i = 0; i < 2; i++)
			assert_true(rep->disks[i].bytes == 0 && rep->disks[i].blocks == 0);
		assert_true(rep->disk_flush_ms > 0);
	} else {
		uint64_t nblk[2] = { (8u << 20) / 65536, ((3u << 20) + 4096 + 16383) / 16384 };
		uint64_t rblocks = 0, rbytes = 0;
		for (unsigned i = 0; i < 2; i++) {
			const struct pm_disk_report *x = &rep->disks[i], *y = &dr.rep->disks[i];
			uint64_t sent = x->blocks + x->zero_blocks + x->unallocated_blocks;
			assert_true(sent >= nblk[i]);
			if (!cfg->busy) /* idle: each block exactly once, sorted by kind */
				assert_true(sent == nblk[i] && x->zero_blocks > 0 && x->unallocated_blocks > 0 &&
					    x->blocks > 0);
			assert_true(y->blocks == x->blocks && y->zero_blocks == x->zero_blocks &&
				    y->unallocated_blocks == x->unallocated_blocks && y->bytes == x->bytes);
			assert_true(x->size_bytes == sizes[i] && x->block_bytes == blocks[i]);
		}
		for (unsigned k = 0; k < rep->nrounds; k++) {
			rblocks += rep->rounds[k].disk_blocks;
			rbytes += rep->rounds[k].disk_bytes;
		}
		assert_true(rblocks == rep->disks[0].blocks + rep->disks[0].zero_blocks + rep->disks[0].unallocated_blocks +
				       rep->disks[1].blocks + rep->disks[1].zero_blocks + rep->disks[1].unallocated_blocks);
		assert_true(rbytes == rep->disks[0].bytes + rep->disks[1].bytes);
		assert_true(rep->rounds[0].disk_dirty_at_start == nblk[0] + nblk[1]);
		/* The destination allocated no more than the source (zeros and
		 * holes are holes there, at page granularity); a little slack
		 * for the file system's own bookkeeping. */
		for (unsigned i = 0; i < 2; i++)
			if (allocated(d.path[i]) > allocated(s.path[i]) + 65536)
				fail_msg("disk %u: destination allocated %llu bytes, the source %llu", i,
					 (unsigned long long)allocated(d.path[i]),
					 (unsigned long long)allocated(s.path[i]));
		assert_true(dr.rep->disk_sync_ms >= 0);
	}
	assert_true(dr.rep->frames == rep->frames);
	assert_true(dr.rep->bytes_sent == rep->bytes_sent);
	if (cfg->barrier || nch == 1)
		assert_true(dr.rep->stale_pages == 0);
	free(rep);
	free(dr.rep);
	vmd_close(&d, !cfg->shared);
	vmd_close(&s, true);
}

static void test_idle_1ch(void **st) { run(&(struct dcfg){ .channels = 1 }); }
static void test_idle_4ch(void **st) { run(&(struct dcfg){ .channels = 4 }); }
static void test_busy_4ch(void **st) { run(&(struct dcfg){ .channels = 4, .busy = true, .verify = true }); }
static void test_busy_3ch_lz4(void **st) { run(&(struct dcfg){ .channels = 3, .busy = true, .compress = PM_COMPRESS_LZ4 }); }
static void test_busy_4ch_barrier(void **st) { run(&(struct dcfg){ .channels = 4, .busy = true, .barrier = true }); }
static void test_busy_serial(void **st) { run(&(struct dcfg){ .channels = 2, .busy = true, .serial = true }); }
static void test_busy_shared(void **st) { run(&(struct dcfg){ .channels = 2, .busy = true, .shared = true, .verify = true }); }
/* Over TLS: with kernel records (where the kernel has TLS: engine-disk-migrate-ktls
 * runs these in the nested L1) blocks go by sendfile, else through OpenSSL. */
static void test_tls_x509_busy_4ch(void **st)
{
	run(&(struct dcfg){ .channels = 4, .busy = true, .verify = true, .tls = PM_TLS_X509 });
}
static void test_tls_psk_idle_2ch(void **st) { run(&(struct dcfg){ .channels = 2, .tls = PM_TLS_PSK }); }

/* A destination that cannot take the disk: refused before anything is
 * written, the source VM runs on, its image untouched. */
static void refused(const uint64_t *dsizes, const uint32_t *dblocks, unsigned dn, bool same_file,
		    const char *phrase)
{
	static const uint64_t sizes[1] = { 4u << 20 };
	static const uint32_t blocks[1] = { 65536 };
	struct vmd s, d;
	struct pm_report *rep = calloc(1, sizeof(*rep));
	struct pm_err err = { 0 };
	struct dest_run dr;

	vmd_open(&s, "rs", 1, sizes, blocks, 1u << 20, false);
	if (same_file) {
		d = (struct vmd){ 0 };
		d.vm = fakevm_new("rd", 1, mem_pages, gpas);
		struct pm_disk_params p = { .path = s.path[0] };
		assert_int_equal(pm_disk_open(&d.disk[0], &p, &err), 0);
		pm_disk_blockdev(d.disk[0], 0, &d.bd[0]);
		d.ndisks = 1;
		d.vm->be.ndisks = 1;
		d.vm->be.disks = d.bd;
	} else {
		vmd_open(&d, "rd", dn, dsizes, dblocks, 0, false);
	}
	uint64_t before = allocated(s.path[0]);
	dest_start(&dr, d.vm, 1, NULL);
	struct pm_migrate_params p = { .to = dr.to, .nto = 1, .channels = 2, .timeout_ms = 15000 };
	int r = pm_migrate_outgoing(&s.vm->be, &p, rep, &err);
	dest_join(&dr);
	assert_true(r < 0);
	if (!strstr(err.msg, phrase))
		fail_msg("'%s' lacks '%s'", err.msg, phrase);
	assert_true(dr.rc < 0);
	assert_int_equal(d.vm->resumes, 0);
	assert_int_equal(s.vm->pauses, 0);
	assert_true(allocated(s.path[0]) == before);
	free(rep);
	free(dr.rep);
	vmd_close(&d, !same_file);
	vmd_close(&s, true);
}

static void test_refusals(void **st)
{
	static const uint64_t small[1] = { 2u << 20 }, same[2] = { 4u << 20, 4u << 20 };
	static const uint32_t b64[2] = { 65536, 65536 }, b4[1] = { 4096 };

	refused(small, b64, 1, false, "disk 0: source has 4194304 bytes, destination has 2097152");
	refused(same, b4, 1, false, "destination 4096");
	refused(same, b64, 2, false, "source has 1 disk, destination has 2");
	refused(NULL, NULL, 0, false, "source has 1 disk, destination has 0");
	refused(NULL, NULL, 0, true, "is the source's own file");
}

/* A write the VM's tracking missed (straight into the image, unmarked, at
 * the pause): without --verify the migration completes with the older
 * block at the destination; with it the destination compares digests of
 * every disk chunk and refuses to resume, naming the disk and the blocks. */
static void write_behind_tracking(void *arg)
{
	struct vmd *v = arg;
	char junk[4096];

	memset(junk, 0x77, sizeof(junk));
	if (pwrite(pm_disk_fd(v->disk[0]), junk, sizeof(junk), 3 * 65536) != sizeof(junk))
		abort();
}

static void missed_write(bool verify)
{
	static const uint64_t sizes[1] = { 4u << 20 };
	static const uint32_t blocks[1] = { 65536 };
	struct vmd s, d;
	struct pm_report *rep = calloc(1, sizeof(*rep));
	struct pm_err err = { 0 };
	struct dest_run dr;

	vmd_open(&s, "ms", 1, sizes, blocks, 1u << 20, false);
	vmd_open(&d, "md", 1, sizes, blocks, 0, false);
	s.vm->on_pause = write_behind_tracking;
	s.vm->on_pause_arg = &s;
	dest_start(&dr, d.vm, 1, NULL);
	struct pm_migrate_params p = { .to = dr.to, .nto = 1, .channels = 2, .timeout_ms = 15000,
				       .verify = verify };
	int r = pm_migrate_outgoing(&s.vm->be, &p, rep, &err);
	dest_join(&dr);
	if (verify) {
		assert_true(r < 0);
		if (!strstr(err.msg, "disk 0 differs from the source's at blocks [0, 32)"))
			fail_msg("unexpected: %s", err.msg);
		assert_int_equal(d.vm->resumes, 0);
		assert_int_equal(s.vm->resumes, 1);     /* the source runs on */
	} else {
		assert_int_equal(r, 0);
		assert_false(files_equal(s.path[0], d.path[0]));
	}
	free(rep);
	free(dr.rep);
	vmd_close(&d, true);
	vmd_close(&s, true);
}

static void test_missed_write_unverified(void **st) { missed_write(false); }
static void test_missed_write_verified(void **st) { missed_write(true); }

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_idle_1ch),
		cmocka_unit_test(test_idle_4ch),
		cmocka_unit_test(test_busy_4ch),
		cmocka_unit_test(test_busy_3ch_lz4),
		cmocka_unit_test(test_busy_4ch_barrier),
		cmocka_unit_test(test_busy_serial),
		cmocka_unit_test(test_busy_shared),
		cmocka_unit_test(test_tls_x509_busy_4ch),
		cmocka_unit_test(test_tls_psk_idle_2ch),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_missed_write_unverified),
		cmocka_unit_test(test_missed_write_verified),
	};

	if (getenv("PM_TEST_FILTER"))
		cmocka_set_test_filter(getenv("PM_TEST_FILTER"));
	int r = cmocka_run_group_tests(tests, NULL, NULL);
	/* A failed case leaves its images (its asserts jump past vmd_close). */
	char pat[64];
	glob_t g;
	snprintf(pat, sizeof(pat), "/tmp/pm-test-dm-%d-*.img", getpid());
	if (glob(pat, 0, NULL, &g) == 0) {
		for (size_t i = 0; i < g.gl_pathc; i++)
			unlink(g.gl_pathv[i]);
		globfree(&g);
	}
	return tls_creds_remove() ? 1 : r;
}
