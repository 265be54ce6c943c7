/* SPDX-License-Identifier: MIT */
/* The synthetic VM's disks and their writers (vdisk.h).  A writer writes
 * bs bytes of fresh pseudo-random data per write through pm_disk_write(),
 * which marks the blocks dirty after the data is in the image: the VM's
 * own write path is its dirty tracker, as a VMM's block layer is. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "synvm/vdisk.h"

#define MAX_WRITERS 64
#define SLICE_NS 1000000L
#define STATE_MAGIC 0x314b44564e5953ull   /* "SYNVDK1" */
#define STATE_HEAD 40u
#define STATE_PER_WRITER 24u

struct writer {
	struct vdisks *vd;
	unsigned idx;
	pthread_t thread;
	uint64_t rng, cursor;
	_Atomic uint64_t written;       /* bytes */
	uint8_t *buf;
};

struct vdisks {
	struct synvm *vm;
	unsigned n;
	struct pm_disk *disk[SYNVM_MAX_DISKS];
	struct pm_blockdev bd[SYNVM_MAX_DISKS];
	struct synvm_diskload load;
	unsigned nwriters;
	bool started;
	struct writer w[MAX_WRITERS];
};

static const char *const kind_names[] = { "idle", "randwrite", "seqwrite" };

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1Dull;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void sleep_ns(long ns)
{
	struct timespec ts = { .tv_sec = ns / 1000000000L, .tv_nsec = ns % 1000000000L };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* ---- specs ---- */

int synvm_parse_disk(const char *spec, struct synvm_disk_spec *d, struct pm_err *err)
{
	char buf[sizeof(d->path) + 128], *save = NULL, *tok;
	int r = 0;

	memset(d, 0, sizeof(*d));
	if (!spec || !*spec || strlen(spec) >= sizeof(buf))
		return pm_err_set(err, EINVAL, "bad --disk '%s' (FILE[,size=SIZE][,populated=SIZE][,block=SIZE])",
				  spec ? spec : "");
	strcpy(buf, spec);
	tok = strtok_r(buf, ",", &save);
	if (!tok || strchr(tok, '='))
		return pm_err_set(err, EINVAL, "--disk '%s' must start with the image file", spec);
	snprintf(d->path, sizeof(d->path), "%s", tok);
	while (!r && (tok = strtok_r(NULL, ",", &save))) {
		char *eq = strchr(tok, '=');
		uint64_t v;
		if (!eq)
			return pm_err_set(err, EINVAL, "--disk option '%s' is not key=value", tok);
		*eq++ = '\0';
		if (!strcmp(tok, "size")) {
			r = synvm_parse_size(eq, &d->size, err);
			if (!r && (!d->size || d->size % 512))
				r = pm_err_set(err, EINVAL, "disk size '%s' must be a positive multiple of 512 bytes", eq);
		} else if (!strcmp(tok, "populated")) {
			r = synvm_parse_size(eq, &d->populate, err);
		} else if (!strcmp(tok, "block")) {
			r = synvm_parse_size(eq, &v, err);
			if (!r && (v < PM_DISK_MIN_BLOCK || v > PM_DISK_MAX_BLOCK || (v & (v - 1))))
				r = pm_err_set(err, EINVAL, "disk block '%s' must be a power of two from 4K to 1M", eq);
			d->block_size = v;
		} else {
			return pm_err_set(err, EINVAL, "unknown --disk option '%s' (size, populated, block)", tok);
		}
	}
	if (!r && d->size && d->populate > d->size)
		r = pm_err_set(err, EINVAL, "disk %s: populated= is larger than size=", d->path);
	return r;
}

int synvm_parse_diskload(const char *spec, struct synvm_diskload *w, struct pm_err *err)
{
	char buf[256], *save = NULL, *tok, *end;
	unsigned k;
	int r = 0;

	*w = (struct synvm_diskload){ .kind = SYNVM_DISK_IDLE, .rate = 10e6, .bs = 64u << 10,
				      .threads = 1, .seed = 1 };
	if (!spec || strlen(spec) >= sizeof(buf))
		return pm_err_set(err, EINVAL, "bad disk workload spec");
	strcpy(buf, spec);
	tok = strtok_r(buf, ",", &save);
	for (k = 0; tok && k < 3; k++)
		if (!strcmp(tok, kind_names[k]))
			break;
	if (!tok || k == 3)
		return pm_err_set(err, EINVAL, "unknown disk workload '%s' (idle, randwrite, seqwrite)",
				  tok ? tok : "");
	w->kind = k;
	while (!r && (tok = strtok_r(NULL, ",", &save))) {
		char *eq = strchr(tok, '=');
		if (!eq)
			return pm_err_set(err, EINVAL, "disk workload option '%s' is not key=value", tok);
		*eq++ = '\0';
		if (!strcmp(tok, "rate")) {
			r = synvm_parse_rate(eq, &w->rate, err);
		} else if (!strcmp(tok, "bs")) {
			uint64_t v;
			r = synvm_parse_size(eq, &v, err);
			if (!r && (v < 512 || v > (1u << 20) || v % 512))
				r = pm_err_set(err, EINVAL, "bad bs '%s' (a multiple of 512, up to 1M)", eq);
			w->bs = v;
		} else if (!strcmp(tok, "threads")) {
			long t = strtol(eq, &end, 10);
			if (*end || t < 1 || t > MAX_WRITERS)
				return pm_err_set(err, EINVAL, "bad threads '%s' (1..%u)", eq, MAX_WRITERS);
			w->threads = t;
		} else if (!strcmp(tok, "seed")) {
			if (synvm_parse_seed(eq, &w->seed, err))
				return -EINVAL;
		} else {
			return pm_err_set(err, EINVAL, "unknown disk workload option '%s' (rate, bs, threads, seed)", tok);
		}
	}
	return r;
}

void synvm_format_diskload(const struct synvm_diskload *w, char *buf, size_t len)
{
	if (w->kind == SYNVM_DISK_IDLE)
		snprintf(buf, len, "idle");
	else
		snprintf(buf, len, "%s,rate=%.0fMB/s,bs=%uK,threads=%u", kind_names[w->kind], w->rate / 1e6,
			 w->bs >> 10, w->threads);
}

/* ---- writers ---- */

static uint64_t slots_of(const struct vdisks *vd, unsigned d)
{
	uint64_t n = pm_disk_size(vd->disk[d]) / vd->load.bs;

	return n ? n : 1;
}

/* Where writer v writes next: a bs-aligned offset of one of the disks.
 * seqwrite walks the disks one after another (cursor counts writes). */
static void pick(struct writer *v, unsigned *disk, uint64_t *off)
{
	struct vdisks *vd = v->vd;
	uint64_t r = xorshift(&v->rng), total = 0;

	if (vd->load.kind == SYNVM_DISK_SEQWRITE) {
		for (unsigned d = 0; d < vd->n; d++)
			total += slots_of(vd, d);
		uint64_t c = v->cursor % total;
		v->cursor = (c + 1) % total;
		for (*disk = 0; c >= slots_of(vd, *disk); (*disk)++)
			c -= slots_of(vd, *disk);
		*off = c * vd->load.bs;
		return;
	}
	*disk = vd->n > 1 ? (unsigned)(r % vd->n) : 0;
	*off = (r >> 16) % slots_of(vd, *disk) * vd->load.bs;
}

static void *writer_main(void *arg)
{
	struct writer *v = arg;
	struct vdisks *vd = v->vd;
	const struct synvm_diskload *w = &vd->load;
	double per_ns = w->rate / w->bs / 1e9 / w->threads;
	uint64_t t_start = now_ns(), done = 0;
	unsigned last_thr = 0;
	bool reported = false;

	while (synvm_checkpoint(vd->vm)) {
		uint64_t now = now_ns();
		unsigned thr = synvm_throttle_pct(vd->vm);

		/* A new throttle counts from now (as the memory workload's). */
		if (thr != last_thr) {
			t_start = now;
			done = 0;
			last_thr = thr;
		}
		double due = (now - t_start) * per_ns * (100 - thr) / 100.0;

		/* Catch up at most a slice after a pause. */
		if (due - done > per_ns * SLICE_NS * 4 + 1)
			done = due - per_ns * SLICE_NS;
		while (done < due && !synvm_pause_requested(vd->vm)) {
			unsigned d;
			uint64_t off;
			struct pm_err e = { 0 };

			pick(v, &d, &off);
			for (uint32_t i = 0; i < w->bs / 8; i++) {
				uint64_t x = xorshift(&v->rng);
				memcpy(v->buf + 8 * i, &x, 8);
			}
			uint64_t len = w->bs;
			if (off + len > pm_disk_size(vd->disk[d]))
				len = pm_disk_size(vd->disk[d]) - off;
			if (pm_disk_write(vd->disk[d], v->buf, len, off, &e) && !reported) {
				/* A guest would see an I/O error; say it once. */
				fprintf(stderr, "pmigrate vm: disk writer %u: %s\n", v->idx, e.msg);
				reported = true;
			}
			done++;
			atomic_fetch_add_explicit(&v->written, len, memory_order_relaxed);
		}
		sleep_ns(SLICE_NS);
		if (synvm_pause_requested(vd->vm)) {
			synvm_checkpoint(vd->vm);
			t_start = now_ns();
			done = 0;
		}
	}
	return NULL;
}

int vdisks_start(struct vdisks *vd, unsigned *started, struct pm_err *err)
{
	*started = 0;
	if (!vd || vd->load.kind == SYNVM_DISK_IDLE)
		return 0;
	vd->nwriters = vd->load.threads;
	for (unsigned i = 0; i < vd->nwriters; i++) {
		struct writer *v = &vd->w[i];
		v->vd = vd;
		v->idx = i;
		if (!v->rng) {         /* fresh, not restored: spread the writers */
			uint64_t total = 0;
			for (unsigned d = 0; d < vd->n; d++)
				total += slots_of(vd, d);
			v->rng = (vd->load.seed + 7) * 0x9E3779B97F4A7C15ull + i * 0xD1B54A32D192ED03ull;
			v->cursor = total * i / vd->nwriters;
		}
		v->buf = malloc(vd->load.bs);
		if (!v->buf || pthread_create(&v->thread, NULL, writer_main, v)) {
			free(v->buf);
			v->buf = NULL;
			vd->nwriters = i;
			*started = i;
			vd->started = i > 0;
			return pm_err_set(err, EAGAIN, "cannot start disk writer thread %u", i);
		}
	}
	vd->started = true;
	*started = vd->nwriters;
	return 0;
}

void vdisks_join(struct vdisks *vd)
{
	if (!vd || !vd->started)
		return;
	for (unsigned i = 0; i < vd->nwriters; i++) {
		pthread_join(vd->w[i].thread, NULL);
		free(vd->w[i].buf);
		vd->w[i].buf = NULL;
	}
	vd->started = false;
}

/* ---- disks ---- */

int vdisks_open(struct vdisks **out, struct synvm *vm, const struct synvm_opts *o, struct pm_err *err)
{
	struct vdisks *vd;

	*out = NULL;
	if (!o->ndisks) {
		if (o->diskload.kind != SYNVM_DISK_IDLE)
			return pm_err_set(err, EINVAL, "a disk workload needs a disk (--disk FILE)");
		return 0;
	}
	if (o->ndisks > SYNVM_MAX_DISKS)
		return pm_err_set(err, EINVAL, "at most %u disks", SYNVM_MAX_DISKS);
	vd = calloc(1, sizeof(*vd));
	if (!vd)
		return pm_err_set(err, ENOMEM, "out of memory");
	vd->vm = vm;
	vd->load = o->diskload;
	if (vd->load.threads < 1)
		vd->load.threads = 1;
	for (unsigned i = 0; i < o->ndisks; i++) {
		const struct synvm_disk_spec *s = &o->disks[i];
		struct pm_disk_params p = { .path = s->path, .size = s->size, .block_size = s->block_size,
					    .create = true, .seed = o->diskload.seed + i };
		if (o->incoming && s->populate) {
			vdisks_close(vd);
			return pm_err_set(err, EINVAL, "disk %s: populated= and --incoming exclude each other "
					  "(a destination's disk comes from the source)", s->path);
		}
		p.populate = s->populate;
		int r = pm_disk_open(&vd->disk[i], &p, err);
		if (r) {
			vdisks_close(vd);
			return r;
		}
		vd->n++;
		pm_disk_blockdev(vd->disk[i], i, &vd->bd[i]);
	}
	for (unsigned i = 0; i < vd->n; i++)
		if (vd->load.kind != SYNVM_DISK_IDLE && pm_disk_size(vd->disk[i]) < vd->load.bs) {
			struct pm_err e = { 0 };
			pm_err_set(&e, EINVAL, "disk %s (%llu bytes) is smaller than one write of the disk workload (bs)",
				   pm_disk_path(vd->disk[i]), (unsigned long long)pm_disk_size(vd->disk[i]));
			vdisks_close(vd);
			*err = e;
			return -EINVAL;
		}
	*out = vd;
	return 0;
}

void vdisks_close(struct vdisks *vd)
{
	if (!vd)
		return;
	vdisks_join(vd);
	for (unsigned i = 0; i < vd->n; i++)
		pm_disk_close(vd->disk[i]);
	free(vd);
}

unsigned vdisks_count(const struct vdisks *vd) { return vd ? vd->n : 0; }
struct pm_blockdev *vdisks_blockdevs(struct vdisks *vd) { return vd ? vd->bd : NULL; }
struct pm_disk *vdisks_disk(struct vdisks *vd, unsigned i) { return vd && i < vd->n ? vd->disk[i] : NULL; }
const struct synvm_diskload *vdisks_load(const struct vdisks *vd) { return vd ? &vd->load : NULL; }

uint64_t vdisks_bytes_written(const struct vdisks *vd)
{
	uint64_t n = 0;

	for (unsigned i = 0; vd && i < vd->load.threads && i < MAX_WRITERS; i++)
		n += atomic_load_explicit(&vd->w[i].written, memory_order_relaxed);
	return n;
}

/* ---- state: the workload and each writer's position ---- */

static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

size_t vdisks_state_len(const struct vdisks *vd)
{
	return vd ? STATE_HEAD + (size_t)vd->load.threads * STATE_PER_WRITER : 0;
}

void vdisks_save(const struct vdisks *vd, uint8_t *out)
{
	uint64_t rate;

	memcpy(&rate, &vd->load.rate, 8);
	put64(out, STATE_MAGIC);
	put64(out + 8, (uint64_t)vd->load.kind | (uint64_t)vd->load.threads << 32);
	put64(out + 16, rate);
	put64(out + 24, (uint64_t)vd->load.bs | (uint64_t)vd->n << 32);
	put64(out + 32, vd->load.seed);
	for (unsigned i = 0; i < vd->load.threads; i++) {
		uint8_t *p = out + STATE_HEAD + i * STATE_PER_WRITER;
		put64(p, vd->w[i].rng);
		put64(p + 8, vd->w[i].cursor);
		put64(p + 16, atomic_load(&vd->w[i].written));
	}
}

int vdisks_restore(struct vdisks *vd, const uint8_t *in, size_t len, struct pm_err *err)
{
	struct synvm_diskload l = { 0 };
	uint64_t rate, ndisks;

	if (!vd)
		return pm_err_set(err, EPROTO, "the source's VM has disks, this one has none (--disk FILE)");
	if (len < STATE_HEAD || get64(in) != STATE_MAGIC)
		return pm_err_set(err, EPROTO, "synthetic VM disk state is malformed");
	l.kind = (uint32_t)get64(in + 8);
	l.threads = (uint32_t)(get64(in + 8) >> 32);
	rate = get64(in + 16);
	memcpy(&l.rate, &rate, 8);
	l.bs = (uint32_t)get64(in + 24);
	ndisks = get64(in + 24) >> 32;
	l.seed = get64(in + 32);
	if (l.kind > SYNVM_DISK_SEQWRITE || l.threads < 1 || l.threads > MAX_WRITERS || !(l.rate >= 0) ||
	    !isfinite(l.rate) || l.bs < 512 || l.bs > (1u << 20) || l.bs % 512 ||
	    len != STATE_HEAD + (size_t)l.threads * STATE_PER_WRITER)
		return pm_err_set(err, EPROTO, "synthetic VM disk state has out-of-range fields");
	if (ndisks != vd->n)
		return pm_err_set(err, EPROTO, "the source's VM has %llu disks, this one %u",
				  (unsigned long long)ndisks, vd->n);
	for (unsigned i = 0; i < vd->n; i++)
		if (l.kind != SYNVM_DISK_IDLE && pm_disk_size(vd->disk[i]) < l.bs)
			return pm_err_set(err, EPROTO, "disk %u is smaller than one write of the source's disk workload", i);
	if (vd->started)
		return pm_err_set(err, EBUSY, "cannot load disk state into a VM that has run");
	vd->load = l;
	for (unsigned i = 0; i < l.threads; i++) {
		const uint8_t *p = in + STATE_HEAD + i * STATE_PER_WRITER;
		vd->w[i].rng = get64(p);
		vd->w[i].cursor = get64(p + 8);
		atomic_store(&vd->w[i].written, get64(p + 16));
	}
	return 0;
}
