/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <pmigrate/hostmem.h>
#include <pmigrate/rangelock.h>
#include "synvm/synvm.h"
#include "synvm/vdisk.h"

#define HB_MAGIC 0x5042454154484231ull   /* "PBEATHB1" */
#define STATE_MAGIC 0x53594e564d535431ull /* "SYNVMST1" */
#define STATE_VERSION 2u
#define STATE_SPAN_ALL 1u
#define MAX_VCPUS 65                      /* workload threads + heartbeat */
#define SLICE_NS 1000000L                 /* vCPUs check for pause every 1 ms */

struct vcpu {
	struct synvm *vm;
	unsigned idx;
	pthread_t thread;
	uint64_t rng;
	uint64_t cursor;                  /* seq: next page */
	uint64_t written;                 /* pages written so far */
};

struct synvm {
	struct synvm_opts o;
	struct pm_guestmem gm;
	uint8_t *mem;
	uint64_t npages;
	uint64_t span;                    /* pages the workload writes in (from 0) */
	struct pm_region region;
	struct pm_backend be;
	struct pm_dirty_tracker *dt;
	/* --dirty self: the vCPUs log every page they write, always (as a
	 * VMM's device model does), so tracking costs no fault per write. */
	struct pm_dirty_log *wlog;
	char dirty_name[32];
	double prealloc_ms;
	/* Pages written per second over the last second (a double's bits),
	 * measured by the heartbeat vCPU: the rate the workload achieved. */
	uint64_t write_rate_bits;
	/* Layout changes (discard) take this for writing over their pages and
	 * leave the pages in forced_dirty, which harvest folds in. */
	struct pm_rangelock layout_lock;
	uint64_t *forced_dirty;
	/* Disks and their writer threads (vdisk.c), which park with the vCPUs. */
	struct vdisks *vd;
	unsigned ndwriters;
	uint64_t disk_rate_bits;          /* bytes/s written over the last second */

	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool pause_req, quit, threads_started;
	unsigned nthreads, parked;
	unsigned discards;                /* in progress; pause waits for them */
	atomic_uint throttle;
	struct vcpu vcpu[MAX_VCPUS];
};

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1Dull;
}

static uint64_t now_ns(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static struct synvm_heartbeat *hb_of(struct synvm *vm)
{
	return (struct synvm_heartbeat *)vm->mem;
}

/* Parks the calling vCPU while a pause is requested; false means quit. */
static bool checkpoint(struct synvm *vm)
{
	bool parked = false;

	if (!__atomic_load_n(&vm->pause_req, __ATOMIC_ACQUIRE) &&
	    !__atomic_load_n(&vm->quit, __ATOMIC_ACQUIRE))
		return true;
	pthread_mutex_lock(&vm->lock);
	while (vm->pause_req && !vm->quit) {
		if (!parked) {
			vm->parked++;
			parked = true;
			pthread_cond_broadcast(&vm->cond);
		}
		pthread_cond_wait(&vm->cond, &vm->lock);
	}
	if (parked)
		vm->parked--;
	bool go = !vm->quit;
	pthread_mutex_unlock(&vm->lock);
	return go;
}

bool synvm_checkpoint(struct synvm *vm)
{
	return checkpoint(vm);
}

bool synvm_pause_requested(struct synvm *vm)
{
	return __atomic_load_n(&vm->pause_req, __ATOMIC_ACQUIRE);
}

unsigned synvm_throttle_pct(struct synvm *vm)
{
	return atomic_load(&vm->throttle);
}

static void sleep_ns(long ns)
{
	struct timespec ts = { .tv_sec = ns / 1000000000L, .tv_nsec = ns % 1000000000L };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static void *heartbeat_main(void *arg)
{
	struct vcpu *v = arg;
	struct synvm *vm = v->vm;
	struct synvm_heartbeat *hb = hb_of(vm);
	bool after_pause = true;
	uint64_t meter_t = now_ns(CLOCK_MONOTONIC), meter_n = synvm_pages_written(vm);
	uint64_t meter_d = vdisks_bytes_written(vm->vd);

	while (checkpoint(vm)) {
		uint64_t mono = now_ns(CLOCK_MONOTONIC);
		if (mono - meter_t >= 1000000000ull) {
			uint64_t n = synvm_pages_written(vm);
			double rate = (double)(n - meter_n) * 1e9 / (double)(mono - meter_t);
			uint64_t bits;
			memcpy(&bits, &rate, sizeof(bits));
			__atomic_store_n(&vm->write_rate_bits, bits, __ATOMIC_RELAXED);
			uint64_t d = vdisks_bytes_written(vm->vd);
			rate = (double)(d - meter_d) * 1e9 / (double)(mono - meter_t);
			memcpy(&bits, &rate, sizeof(bits));
			__atomic_store_n(&vm->disk_rate_bits, bits, __ATOMIC_RELAXED);
			meter_t = mono;
			meter_n = n;
			meter_d = d;
		}
		uint64_t now = now_ns(CLOCK_REALTIME), last = hb->last_ns;
		if (last && now > last) {
			uint64_t gap = now - last;
			if (gap > hb->max_gap_ns)
				__atomic_store_n(&hb->max_gap_ns, gap, __ATOMIC_RELAXED);
			if (after_pause) {
				__atomic_store_n(&hb->resume_gap_ns, gap, __ATOMIC_RELAXED);
				__atomic_store_n(&hb->resumes, hb->resumes + 1, __ATOMIC_RELAXED);
			}
		}
		after_pause = false;
		__atomic_store_n(&hb->last_ns, now, __ATOMIC_RELAXED);
		__atomic_store_n(&hb->count, hb->count + 1, __ATOMIC_RELAXED);
		if (vm->wlog)
			pm_dirty_log_mark(vm->wlog, 0);
		sleep_ns(SLICE_NS);
		if (__atomic_load_n(&vm->pause_req, __ATOMIC_ACQUIRE))
			after_pause = true;
	}
	return NULL;
}

static uint64_t pick_page(struct vcpu *v, const struct synvm_workload *w, uint64_t npages)
{
	uint64_t usable = npages > 1 ? npages - 1 : 1;     /* page 0 is the heartbeat */
	uint64_t r = xorshift(&v->rng);

	switch (w->kind) {
	case SYNVM_SEQ:
		v->cursor = (v->cursor + 1) % usable;
		return 1 + v->cursor;
	case SYNVM_ZIPF: {
		/* 90% of writes go to a hot set, skewed toward its first pages
		 * like the popular keys of a cache; 10% anywhere. */
		uint64_t hot = (uint64_t)(usable * w->hot);
		if (hot == 0)
			hot = 1;
		if (r % 10) {
			double u = (double)(xorshift(&v->rng) >> 11) / (double)(1ull << 53);
			return 1 + (uint64_t)(hot * u * u * u) % hot;
		}
		return 1 + (r >> 8) % usable;
	}
	default:
		return 1 + (r >> 8) % usable;
	}
}

static void *workload_main(void *arg)
{
	struct vcpu *v = arg;
	struct synvm *vm = v->vm;
	const struct synvm_workload *w = &vm->o.workload;
	double pages_per_ns = w->rate / PM_PAGE_SIZE / 1e9 / w->threads;
	uint64_t t_start = now_ns(CLOCK_MONOTONIC), done = 0;
	unsigned last_thr = 0;

	while (checkpoint(vm)) {
		uint64_t now = now_ns(CLOCK_MONOTONIC);
		unsigned thr = atomic_load(&vm->throttle);

		/* A new throttle counts from now: measured from the start, the
		 * writes already done at full speed would stall the guest for a
		 * long while (a throttle of 30% stopped it for ~40 s). */
		if (thr != last_thr) {
			t_start = now;
			done = 0;
			last_thr = thr;
		}
		double due = (now - t_start) * pages_per_ns * (100 - thr) / 100.0;

		if (w->kind == SYNVM_IDLE) {
			sleep_ns(SLICE_NS);
			continue;
		}
		/* Catch up at most one slice's worth after a pause. */
		if (due - done > pages_per_ns * SLICE_NS * 4 + 1)
			done = due - pages_per_ns * SLICE_NS;
		while (done < due) {
			uint64_t p = pick_page(v, w, vm->span);
			uint64_t val = xorshift(&v->rng);
			uint64_t *slot = (uint64_t *)(vm->mem + p * PM_PAGE_SIZE) + (val & 511);
			__atomic_store_n(slot, val | 1, __ATOMIC_RELAXED);
			if (vm->wlog)
				pm_dirty_log_mark(vm->wlog, p);   /* after the store */
			done++;
			__atomic_store_n(&v->written, v->written + 1, __ATOMIC_RELAXED);
		}
		sleep_ns(SLICE_NS);
		if (__atomic_load_n(&vm->pause_req, __ATOMIC_ACQUIRE)) {
			/* Don't count paused time as owed writes. */
			checkpoint(vm);
			t_start = now_ns(CLOCK_MONOTONIC);
			done = 0;
		}
	}
	return NULL;
}

static int start_threads(struct synvm *vm, struct pm_err *err)
{
	const struct synvm_workload *w = &vm->o.workload;

	vm->nthreads = w->threads + 1;
	for (unsigned i = 0; i < vm->nthreads; i++) {
		struct vcpu *v = &vm->vcpu[i];
		v->vm = vm;
		v->idx = i;
		if (!v->rng)
			v->rng = (w->seed + 1) * 0x9E3779B97F4A7C15ull + i * 0xBF58476D1CE4E5B9ull;
		if (!v->cursor && vm->span > 1)
			v->cursor = (vm->span - 1) / w->threads * (i ? i - 1 : 0);
		if (pthread_create(&v->thread, NULL, i == 0 ? heartbeat_main : workload_main, v)) {
			vm->nthreads = i;
			return pm_err_set(err, EAGAIN, "cannot start vCPU thread %u", i);
		}
	}
	vm->threads_started = true;
	return vdisks_start(vm->vd, &vm->ndwriters, err);
}

/* ---- backend interface ---- */

static int be_pause(void *opaque, struct pm_err *err)
{
	struct synvm *vm = opaque;

	pthread_mutex_lock(&vm->lock);
	__atomic_store_n(&vm->pause_req, true, __ATOMIC_RELEASE);
	while ((vm->threads_started && vm->parked < vm->nthreads + vm->ndwriters) || vm->discards)
		pthread_cond_wait(&vm->cond, &vm->lock);
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

static int be_resume(void *opaque, struct pm_err *err)
{
	struct synvm *vm = opaque;
	int r = 0;

	pthread_mutex_lock(&vm->lock);
	if (!vm->threads_started)
		r = start_threads(vm, err);
	__atomic_store_n(&vm->pause_req, false, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	return r;
}

static int be_throttle(void *opaque, unsigned pct)
{
	struct synvm *vm = opaque;

	atomic_store(&vm->throttle, pct > 99 ? 99 : pct);
	return 0;
}

static int be_dirty_start(void *opaque, struct pm_err *err)
{
	struct synvm *vm = opaque;
	int r;

	if (vm->dt)
		return pm_err_set(err, EBUSY, "dirty tracking is already running");
	if (vm->wlog)
		r = pm_dirty_open_self(&vm->dt, vm->wlog, err);
	else
		r = pm_dirty_open(&vm->dt, vm->mem, vm->npages, vm->o.dirty, err);
	if (!r)
		snprintf(vm->dirty_name, sizeof(vm->dirty_name), "%s",
			 pm_dirty_method_name(pm_dirty_method_of(vm->dt)));
	return r;
}

static int be_dirty_sync(void *opaque, struct pm_err *err)
{
	struct synvm *vm = opaque;
	bool was_paused;
	int r;

	if (!pm_dirty_sync_needs_quiesce(vm->dt))
		return pm_dirty_sync(vm->dt, err);
	/* soft-dirty clears process-wide: stop the vCPUs for the instant. */
	pthread_mutex_lock(&vm->lock);
	was_paused = vm->pause_req;
	pthread_mutex_unlock(&vm->lock);
	if (!was_paused)
		be_pause(vm, err);
	r = pm_dirty_sync(vm->dt, err);
	if (!was_paused)
		be_resume(vm, err);
	return r;
}

static int be_dirty_count(void *opaque, uint64_t *pages, struct pm_err *err)
{
	return pm_dirty_count(((struct synvm *)opaque)->dt, pages, err);
}

static int be_dirty_summary(void *opaque, uint32_t region, uint32_t chunk_pages, uint64_t *pages,
			    uint64_t *mask, struct pm_err *err)
{
	struct synvm *vm = opaque;
	int r;

	if (region != 0)
		return pm_err_set(err, EINVAL, "synthetic VM has one region, not %u", region);
	r = pm_dirty_summary(vm->dt, chunk_pages, pages, mask, err);
	/* Pages a discard forced dirty (a 64-page word lies in one chunk). */
	for (uint64_t w = 0; !r && w < (vm->npages + 63) / 64; w++) {
		uint64_t bits = __atomic_load_n(&vm->forced_dirty[w], __ATOMIC_RELAXED);
		uint64_t k = w * 64 / chunk_pages;

		if (bits) {
			*pages += (uint64_t)__builtin_popcountll(bits);
			mask[k / 64] |= 1ull << (k % 64);
		}
	}
	return r;
}

static int be_dirty_harvest(void *opaque, uint32_t region, uint64_t first, uint64_t n,
			    uint64_t *bitmap, struct pm_err *err)
{
	struct synvm *vm = opaque;
	int r;

	if (region != 0)
		return pm_err_set(err, EINVAL, "synthetic VM has one region, not %u", region);
	r = pm_dirty_harvest(vm->dt, first, n, bitmap, err);
	for (uint64_t i = 0; !r && i < n; i++) {
		uint64_t p = first + i, bit = 1ull << (p % 64);
		uint64_t *word = &vm->forced_dirty[p / 64];
		if (__atomic_load_n(word, __ATOMIC_RELAXED) == 0) {
			i += 63 - p % 64;   /* skip the rest of an empty word */
			continue;
		}
		if (__atomic_fetch_and(word, ~bit, __ATOMIC_ACQ_REL) & bit)
			bitmap[i / 64] |= 1ull << (i % 64);
	}
	return r;
}

int synvm_discard(struct synvm *vm, uint64_t offset, uint64_t len, struct pm_err *err)
{
	struct pm_range lr;
	uint64_t first = offset / PM_PAGE_SIZE, n = len / PM_PAGE_SIZE;

	if (offset % PM_PAGE_SIZE || len % PM_PAGE_SIZE || !len)
		return pm_err_set(err, EINVAL, "discard offset and length must be non-zero multiples of 4096");
	if (first == 0 || first >= vm->npages || n > vm->npages - first)
		return pm_err_set(err, EINVAL, "discard range is outside guest memory (page 0 is the heartbeat)");
	/* A discard is the guest's doing (a balloon): a paused VM makes none,
	 * and pausing waits for one in progress. */
	pthread_mutex_lock(&vm->lock);
	if (vm->pause_req || !vm->threads_started) {
		pthread_mutex_unlock(&vm->lock);
		return pm_err_set(err, EBUSY, "the VM is paused: no discard until it runs");
	}
	vm->discards++;
	pthread_mutex_unlock(&vm->lock);

	pm_range_wrlock(&vm->layout_lock, &lr, first, first + n);
	struct pm_err e2 = { 0 };
	int r = pm_guestmem_discard(&vm->gm, first, n, &e2);
	for (uint64_t p = first; p < first + n; p++)
		__atomic_fetch_or(&vm->forced_dirty[p / 64], 1ull << (p % 64), __ATOMIC_RELEASE);
	pm_range_unlock(&vm->layout_lock, &lr);

	pthread_mutex_lock(&vm->lock);
	vm->discards--;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	if (r)
		return pm_err_set(err, -r, "discard failed: %s", e2.msg);
	return 0;
}

static void be_dirty_stop(void *opaque)
{
	struct synvm *vm = opaque;

	pm_dirty_close(vm->dt);
	vm->dt = NULL;
}

/* Device state: the workload and each vCPU's position, so the guest carries
 * on where it stopped.  Versioned and validated like the wire protocol. */
struct state_blob {
	uint64_t magic;
	uint32_t version, nthreads;
	uint64_t npages;
	uint32_t kind, flags;           /* flags: STATE_SPAN_ALL */
	double rate, hot;
	uint64_t seed;
	uint64_t span;                  /* pages the workload writes in */
	struct { uint64_t rng, cursor, written; } v[MAX_VCPUS];
};

static int be_save_state(void *opaque, void **buf, size_t *len, struct pm_err *err)
{
	struct synvm *vm = opaque;
	/* The disk writers' state follows the fixed part. */
	size_t dlen = vdisks_state_len(vm->vd);
	struct state_blob *s = calloc(1, sizeof(*s) + dlen);

	if (!s)
		return pm_err_set(err, ENOMEM, "out of memory");
	if (dlen)
		vdisks_save(vm->vd, (uint8_t *)(s + 1));
	s->magic = STATE_MAGIC;
	s->version = STATE_VERSION;
	s->nthreads = vm->o.workload.threads;
	s->npages = vm->npages;
	s->kind = vm->o.workload.kind;
	s->rate = vm->o.workload.rate;
	s->hot = vm->o.workload.hot;
	s->seed = vm->o.workload.seed;
	s->span = vm->span;
	s->flags = vm->o.workload.all ? STATE_SPAN_ALL : 0;
	for (unsigned i = 0; i <= s->nthreads && i < MAX_VCPUS; i++) {
		s->v[i].rng = vm->vcpu[i].rng;
		s->v[i].cursor = vm->vcpu[i].cursor;
		s->v[i].written = vm->vcpu[i].written;
	}
	*buf = s;
	*len = sizeof(*s) + dlen;
	return 0;
}

static int be_load_state(void *opaque, const void *buf, size_t len, struct pm_err *err)
{
	struct synvm *vm = opaque;
	struct state_blob s;

	if (len < sizeof(s) || (len == sizeof(s)) != !vm->vd)
		return pm_err_set(err, EPROTO, "synthetic VM state has %zu bytes, expected %zu%s", len, sizeof(s),
				  vm->vd ? " and the disks' state (the source has no disks, this VM has)" : "");
	memcpy(&s, buf, sizeof(s));
	if (s.magic != STATE_MAGIC || s.version != STATE_VERSION)
		return pm_err_set(err, EPROTO, "not a synthetic VM state of version %u", STATE_VERSION);
	if (s.npages != vm->npages)
		return pm_err_set(err, EPROTO, "state is for %llu pages, this VM has %llu",
				  (unsigned long long)s.npages, (unsigned long long)vm->npages);
	if (s.nthreads < 1 || s.nthreads >= MAX_VCPUS || s.kind > SYNVM_ZIPF || !(s.rate >= 0) ||
	    !(s.hot > 0 && s.hot <= 1) || s.span < 1 || s.span > vm->npages || (s.flags & ~STATE_SPAN_ALL))
		return pm_err_set(err, EPROTO, "synthetic VM state has out-of-range workload fields");
	if (vm->threads_started)
		return pm_err_set(err, EBUSY, "cannot load state into a VM that has run");
	if (len > sizeof(s)) {
		int r = vdisks_restore(vm->vd, (const uint8_t *)buf + sizeof(s), len - sizeof(s), err);
		if (r)
			return r;
	}
	vm->o.workload = (struct synvm_workload){ .kind = s.kind, .rate = s.rate, .hot = s.hot,
						  .threads = s.nthreads, .seed = s.seed,
						  .all = s.flags & STATE_SPAN_ALL };
	vm->span = s.span;
	for (unsigned i = 0; i <= s.nthreads; i++) {
		vm->vcpu[i].rng = s.v[i].rng;
		vm->vcpu[i].cursor = s.v[i].cursor;
		vm->vcpu[i].written = s.v[i].written;
	}
	return 0;
}

static const char *be_dirty_method(void *opaque)
{
	return ((struct synvm *)opaque)->dirty_name;
}

static void be_write_stats(void *opaque, uint64_t *pages_written, double *asked)
{
	struct synvm *vm = opaque;

	*pages_written = synvm_pages_written(vm);
	*asked = vm->o.workload.kind == SYNVM_IDLE ? 0 : vm->o.workload.rate;
}

static const struct pm_backend_ops synvm_ops = {
	.dirty_method = be_dirty_method,
	.write_stats = be_write_stats,
	.dirty_start = be_dirty_start,
	.dirty_sync = be_dirty_sync,
	.dirty_count = be_dirty_count,
	.dirty_summary = be_dirty_summary,
	.dirty_harvest = be_dirty_harvest,
	.dirty_stop = be_dirty_stop,
	.pause = be_pause,
	.resume = be_resume,
	.throttle = be_throttle,
	.save_state = be_save_state,
	.load_state = be_load_state,
};

/* ---- creation ---- */

static int fill_memory(struct synvm *vm, struct pm_err *err)
{
	uint64_t s = 0x243F6A8885A308D3ull ^ vm->o.workload.seed;

	if (vm->o.mem_file) {
		int fd = open(vm->o.mem_file, O_RDONLY | O_CLOEXEC);
		struct stat st;
		if (fd < 0)
			return pm_err_set(err, errno, "cannot open memory file %s: %s", vm->o.mem_file, strerror(errno));
		if (fstat(fd, &st) || (uint64_t)st.st_size > vm->o.populated_bytes) {
			close(fd);
			return pm_err_set(err, EINVAL, "memory file %s (%lld bytes) is larger than the VM's %s memory",
					  vm->o.mem_file, (long long)st.st_size,
					  vm->o.populated_bytes < vm->o.mem_bytes ? "populated" : "");
		}
		uint64_t off = 0;
		while (off < (uint64_t)st.st_size) {
			ssize_t n = read(fd, vm->mem + off, st.st_size - off > (1u << 30) ? (1u << 30) : st.st_size - off);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				close(fd);
				return pm_err_set(err, EIO, "reading memory file %s failed", vm->o.mem_file);
			}
			off += n;
		}
		close(fd);
		return 0;
	}
	if (vm->o.fill == SYNVM_FILL_ZERO) {
		/* Written, but with zeros: populated all the same. */
		if (vm->o.populated_bytes)
			memset(vm->mem, 0, vm->o.populated_bytes);
		return 0;
	}
	for (uint64_t p = 0; p < vm->o.populated_bytes / PM_PAGE_SIZE; p++) {
		/* mixed: every fourth page stays zero, as free guest memory does. */
		if (vm->o.fill == SYNVM_FILL_MIXED && p % 4 == 3)
			continue;
		uint64_t *w = (uint64_t *)(vm->mem + p * PM_PAGE_SIZE);
		for (unsigned i = 0; i < PM_PAGE_SIZE / 8; i++)
			w[i] = xorshift(&s);
	}
	return 0;
}

int synvm_create(struct synvm **out, const struct synvm_opts *o, struct pm_err *err)
{
	struct synvm *vm;
	int r;

	if (o->mem_bytes < 2 * PM_PAGE_SIZE || o->mem_bytes % PM_PAGE_SIZE)
		return pm_err_set(err, EINVAL, "memory size must be a multiple of 4 KiB and at least 8 KiB");
	if (o->workload.threads < 1 || o->workload.threads >= MAX_VCPUS)
		return pm_err_set(err, EINVAL, "workload threads must be 1..%u", MAX_VCPUS - 1);
	/* Before anything is allocated: a guest the host cannot hold is an
	 * error now, not the OOM killer later.  What it will hold is what it
	 * writes (memory is mapped untouched): the populated part, unless the
	 * workload spans all of it; a destination, what the source populated,
	 * which --populated states there too; all of it, preallocated. */
	uint64_t need = o->populated_bytes && !o->workload.all && !o->prealloc ? o->populated_bytes
										 : o->mem_bytes;
	r = pm_check_guest_memory(need, err);
	if (r)
		return r;
	vm = calloc(1, sizeof(*vm));
	if (!vm)
		return pm_err_set(err, ENOMEM, "out of memory");
	vm->o = *o;
	vm->npages = o->mem_bytes / PM_PAGE_SIZE;
	vm->gm.fd = vm->gm.pagemap_fd = -1;
	pthread_mutex_init(&vm->lock, NULL);
	pm_rangelock_init(&vm->layout_lock);
	vm->forced_dirty = calloc((vm->npages + 63) / 64, sizeof(uint64_t));
	if (!vm->forced_dirty) {
		r = pm_err_set(err, ENOMEM, "out of memory");
		goto fail;
	}
	pthread_cond_init(&vm->cond, NULL);
	if (o->dirty == PM_DIRTY_SELF) {
		r = pm_dirty_log_create(&vm->wlog, vm->npages, err);
		if (r)
			goto fail;
	}
	if (!o->populated_bytes)
		vm->o.populated_bytes = o->mem_bytes;
	if (vm->o.populated_bytes > o->mem_bytes || vm->o.populated_bytes % PM_PAGE_SIZE) {
		r = pm_err_set(err, EINVAL, "populated size must be a multiple of 4 KiB up to the memory size");
		goto fail;
	}
	vm->span = o->workload.all ? vm->npages : vm->o.populated_bytes / PM_PAGE_SIZE;
	if (vm->span < 2)
		vm->span = vm->npages < 2 ? vm->npages : 2;  /* the heartbeat page and one more */
	/* Mapped once for the VM's life: no address-space changes on the
	 * migration's hot path.  Untouched: a destination allocates only what
	 * arrives with data, a source only what its guest wrote. */
	r = pm_guestmem_create(&vm->gm, o->mem_kind, o->mem_bytes, err);
	if (r)
		goto fail;
	vm->mem = vm->gm.base;
	if (o->prealloc) {
		uint64_t t0 = now_ns(CLOCK_MONOTONIC);

		r = pm_guestmem_prealloc(&vm->gm, 0, err);
		if (r)
			goto fail;
		vm->prealloc_ms = (now_ns(CLOCK_MONOTONIC) - t0) / 1e6;
	}
	if (!o->incoming) {
		r = fill_memory(vm, err);
		if (r)
			goto fail;
		struct synvm_heartbeat *hb = hb_of(vm);
		memset(hb, 0, sizeof(*hb));
		hb->magic = HB_MAGIC;
	}
	vm->region = (struct pm_region){ .id = 0, .gpa = 0, .npages = vm->npages, .host = vm->mem,
					 .mem = &vm->gm };
	r = vdisks_open(&vm->vd, vm, o, err);
	if (r)
		goto fail;
	vm->be = (struct pm_backend){ .kind = "synthetic", .ops = &synvm_ops, .vm = vm,
				      .nregions = 1, .regions = &vm->region,
				      .layout_lock = &vm->layout_lock,
				      .ndisks = vdisks_count(vm->vd), .disks = vdisks_blockdevs(vm->vd) };
	snprintf(vm->dirty_name, sizeof(vm->dirty_name), "%s", pm_dirty_method_name(o->dirty));
	if (!o->incoming) {
		vm->pause_req = o->start_paused;
		r = start_threads(vm, err);
		if (r)
			goto fail;
	} else {
		vm->pause_req = true;
	}
	*out = vm;
	return 0;
fail:
	synvm_destroy(vm);
	return r;
}

void synvm_destroy(struct synvm *vm)
{
	if (!vm)
		return;
	pthread_mutex_lock(&vm->lock);
	__atomic_store_n(&vm->quit, true, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	for (unsigned i = 0; vm->threads_started && i < vm->nthreads; i++)
		pthread_join(vm->vcpu[i].thread, NULL);
	vdisks_close(vm->vd);
	if (vm->dt)
		pm_dirty_close(vm->dt);
	pm_guestmem_destroy(&vm->gm);
	pthread_mutex_destroy(&vm->lock);
	pthread_cond_destroy(&vm->cond);
	pm_rangelock_destroy(&vm->layout_lock);
	pm_dirty_log_destroy(vm->wlog);
	free(vm->forced_dirty);
	free(vm);
}

struct pm_backend *synvm_backend(struct synvm *vm)
{
	return &vm->be;
}

void synvm_heartbeat(struct synvm *vm, struct synvm_heartbeat *hb)
{
	const struct synvm_heartbeat *g = hb_of(vm);

	hb->magic = __atomic_load_n(&g->magic, __ATOMIC_RELAXED);
	hb->count = __atomic_load_n(&g->count, __ATOMIC_RELAXED);
	hb->last_ns = __atomic_load_n(&g->last_ns, __ATOMIC_RELAXED);
	hb->max_gap_ns = __atomic_load_n(&g->max_gap_ns, __ATOMIC_RELAXED);
	hb->resume_gap_ns = __atomic_load_n(&g->resume_gap_ns, __ATOMIC_RELAXED);
	hb->resumes = __atomic_load_n(&g->resumes, __ATOMIC_RELAXED);
}

double synvm_prealloc_ms(struct synvm *vm)
{
	return vm->prealloc_ms;
}

const struct pm_guestmem *synvm_memory(struct synvm *vm)
{
	return &vm->gm;
}

uint64_t synvm_span_pages(struct synvm *vm)
{
	return vm->span;
}

const char *synvm_dirty_method(struct synvm *vm)
{
	return vm->dirty_name;
}

const struct synvm_workload *synvm_workload_of(struct synvm *vm)
{
	return &vm->o.workload;
}

double synvm_write_rate(struct synvm *vm)
{
	uint64_t bits = __atomic_load_n(&vm->write_rate_bits, __ATOMIC_RELAXED);
	double rate;

	memcpy(&rate, &bits, sizeof(rate));
	return rate * PM_PAGE_SIZE;
}

uint64_t synvm_pages_written(struct synvm *vm)
{
	uint64_t n = 0;

	for (unsigned i = 1; i < vm->nthreads; i++)
		n += __atomic_load_n(&vm->vcpu[i].written, __ATOMIC_RELAXED);
	return n;
}


unsigned synvm_ndisks(struct synvm *vm)
{
	return vdisks_count(vm->vd);
}

struct pm_disk *synvm_disk(struct synvm *vm, unsigned i)
{
	return vdisks_disk(vm->vd, i);
}

const struct synvm_diskload *synvm_diskload_of(struct synvm *vm)
{
	return vdisks_load(vm->vd);
}

uint64_t synvm_disk_bytes_written(struct synvm *vm)
{
	return vdisks_bytes_written(vm->vd);
}

double synvm_disk_write_rate(struct synvm *vm)
{
	uint64_t bits = __atomic_load_n(&vm->disk_rate_bits, __ATOMIC_RELAXED);
	double rate;

	memcpy(&rate, &bits, sizeof(rate));
	return rate;
}
