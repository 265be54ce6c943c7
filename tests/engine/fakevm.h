/* SPDX-License-Identifier: MIT */
/* A fake VM for engine tests: a struct pm_backend over mmap'ed memory with a
 * trivially exact dirty tracker (a bitmap set by a "writer" thread under a
 * mutex; harvest is get-and-clear under the same mutex), pause/resume that
 * stop the writer, counters of every backend call, and knobs for failures.
 *
 * The writer's stores are plain machine stores hidden from ThreadSanitizer
 * (inline asm), as a guest's writes are: the engine reads guest memory while
 * the guest writes it by design, and the dirty tracker, not the memory
 * model, makes that correct. */
#ifndef TESTS_ENGINE_FAKEVM_H
#define TESTS_ENGINE_FAKEVM_H

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <pmigrate/backend.h>
#include <pmigrate/migrate.h>

#define FAKEVM_MAX_REGIONS 4

struct fakevm {
	char name[16];
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned nregions;
	struct pm_region regions[FAKEVM_MAX_REGIONS];
	uint64_t base[FAKEVM_MAX_REGIONS];      /* first global page of each region */
	uint64_t total;
	uint64_t *dirty;                        /* one bit per page, global index */
	bool tracking, paused, stop;
	/* call counters (under lock) */
	unsigned starts, syncs, stops, pauses, resumes, saves, loads, harvests;
	unsigned bad_harvests;                  /* out-of-range or overlapping calls */
	unsigned in_harvest;
	/* device state */
	void *loaded_state;
	size_t loaded_len;
	/* knobs */
	bool fail_load;                         /* load_state fails */
	int64_t lost_write_page;                /* >= 0: at the pause, a write to this page the tracker misses */
	unsigned harvest_delay_us;              /* slows the source down (a "slow link") */
	void (*on_pause)(void *arg);            /* called in pause(), from the engine's thread */
	void *on_pause_arg;
	void (*on_sync)(void *arg);             /* called in dirty_sync() (each round's start) */
	void *on_sync_arg;
	/* writer */
	pthread_t writer;
	bool writer_started;
	unsigned writer_pause_us;               /* sleep after every 64 writes; 0: flat out */
	uint64_t writes;
	uint64_t rng;
	struct pm_backend be;
};

static inline void guest_store64(void *p, uint64_t v)
{
#if defined(__x86_64__)
	__asm__ __volatile__("movq %1, %0" : "=m"(*(uint64_t *)p) : "r"(v));
#elif defined(__aarch64__)
	__asm__ __volatile__("str %1, %0" : "=m"(*(uint64_t *)p) : "r"(v));
#else
	__atomic_store_n((uint64_t *)p, v, __ATOMIC_RELAXED);
#endif
}

static inline uint64_t fake_rand(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static inline uint8_t *fakevm_page(struct fakevm *vm, uint64_t g)
{
	for (unsigned i = vm->nregions; i-- > 0;)
		if (g >= vm->base[i])
			return vm->regions[i].host + (g - vm->base[i]) * PM_PAGE_SIZE;
	return NULL;
}

static int fv_dirty_start(void *o, struct pm_err *err)
{
	struct fakevm *vm = o;

	pthread_mutex_lock(&vm->lock);
	memset(vm->dirty, 0xff, (vm->total + 63) / 64 * 8);
	vm->tracking = true;
	vm->starts++;
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

static int fv_dirty_sync(void *o, struct pm_err *err)
{
	struct fakevm *vm = o;

	pthread_mutex_lock(&vm->lock);
	vm->syncs++;
	pthread_mutex_unlock(&vm->lock);
	if (vm->on_sync)
		vm->on_sync(vm->on_sync_arg);
	return 0;
}

static int fv_dirty_count(void *o, uint64_t *pages, struct pm_err *err)
{
	struct fakevm *vm = o;
	uint64_t n = 0;

	pthread_mutex_lock(&vm->lock);
	for (uint64_t g = 0; g < vm->total; g++)
		n += vm->dirty[g / 64] >> (g % 64) & 1;
	pthread_mutex_unlock(&vm->lock);
	*pages = n;
	return 0;
}

static int fv_dirty_harvest(void *o, uint32_t region, uint64_t first, uint64_t n,
			    uint64_t *bitmap, struct pm_err *err)
{
	struct fakevm *vm = o;

	if (vm->harvest_delay_us)
		usleep(vm->harvest_delay_us);
	pthread_mutex_lock(&vm->lock);
	vm->harvests++;
	if (region >= vm->nregions || first + n > vm->regions[region].npages || !vm->tracking) {
		vm->bad_harvests++;
		pthread_mutex_unlock(&vm->lock);
		return pm_err_set(err, EINVAL, "fakevm: bad harvest region %u [%llu, +%llu)", region,
				  (unsigned long long)first, (unsigned long long)n);
	}
	memset(bitmap, 0, (n + 63) / 64 * 8);
	for (uint64_t i = 0; i < n; i++) {
		uint64_t g = vm->base[region] + first + i;
		if (vm->dirty[g / 64] >> (g % 64) & 1) {
			bitmap[i / 64] |= 1ull << (i % 64);
			vm->dirty[g / 64] &= ~(1ull << (g % 64));
		}
	}
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

static void fv_dirty_stop(void *o)
{
	struct fakevm *vm = o;

	pthread_mutex_lock(&vm->lock);
	vm->tracking = false;
	vm->stops++;
	pthread_mutex_unlock(&vm->lock);
}

static int fv_pause(void *o, struct pm_err *err)
{
	struct fakevm *vm = o;

	pthread_mutex_lock(&vm->lock);
	vm->paused = true;
	vm->pauses++;
	if (vm->lost_write_page >= 0)
		guest_store64(fakevm_page(vm, (uint64_t)vm->lost_write_page) + 8, 0x6c6f7374u);
	pthread_mutex_unlock(&vm->lock);
	if (vm->on_pause)
		vm->on_pause(vm->on_pause_arg);
	return 0;
}

static int fv_resume(void *o, struct pm_err *err)
{
	struct fakevm *vm = o;

	pthread_mutex_lock(&vm->lock);
	vm->paused = false;
	vm->resumes++;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

static int fv_save_state(void *o, void **buf, size_t *len, struct pm_err *err)
{
	struct fakevm *vm = o;
	size_t n = 3000;
	uint8_t *b = malloc(n);

	if (!b)
		return pm_err_set(err, ENOMEM, "fakevm: no memory");
	for (size_t i = 0; i < n; i++)
		b[i] = (uint8_t)(i * 31 + 7);
	pthread_mutex_lock(&vm->lock);
	vm->saves++;
	pthread_mutex_unlock(&vm->lock);
	*buf = b;
	*len = n;
	return 0;
}

static int fv_load_state(void *o, const void *buf, size_t len, struct pm_err *err)
{
	struct fakevm *vm = o;

	pthread_mutex_lock(&vm->lock);
	vm->loads++;
	if (vm->fail_load) {
		pthread_mutex_unlock(&vm->lock);
		return pm_err_set(err, EIO, "fakevm %s: device state rejected on purpose", vm->name);
	}
	free(vm->loaded_state);
	vm->loaded_state = malloc(len ? len : 1);
	memcpy(vm->loaded_state, buf, len);
	vm->loaded_len = len;
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

static const char *fv_dirty_method(void *o)
{
	return "test-exact";
}

/* Asks for 1 MB/s (any non-zero value: the tests check it is passed on). */
static void fv_write_stats(void *o, uint64_t *pages_written, double *asked)
{
	struct fakevm *vm = o;

	pthread_mutex_lock(&vm->lock);
	*pages_written = vm->writes;
	pthread_mutex_unlock(&vm->lock);
	*asked = 1e6;
}

static const struct pm_backend_ops fakevm_ops = {
	.dirty_start = fv_dirty_start,
	.dirty_sync = fv_dirty_sync,
	.dirty_count = fv_dirty_count,
	.dirty_harvest = fv_dirty_harvest,
	.dirty_stop = fv_dirty_stop,
	.pause = fv_pause,
	.resume = fv_resume,
	.throttle = NULL,
	.save_state = fv_save_state,
	.load_state = fv_load_state,
	.dirty_method = fv_dirty_method,
	.write_stats = fv_write_stats,
};

/* Initial content: a mix of zero pages, compressible pages and noise. */
static inline void fakevm_fill_source(struct fakevm *vm, uint64_t seed)
{
	uint64_t s = seed | 1;

	for (uint64_t g = 0; g < vm->total; g++) {
		uint8_t *p = fakevm_page(vm, g);
		if (g % 7 == 3 || (g >= 40 && g < 140)) {
			memset(p, 0, PM_PAGE_SIZE);
		} else if (g % 5 == 1) {
			for (unsigned i = 0; i < PM_PAGE_SIZE; i++)
				p[i] = (uint8_t)((g + i / 32) & 0x0f);
		} else {
			for (unsigned i = 0; i < PM_PAGE_SIZE; i += 8)
				*(uint64_t *)(p + i) = fake_rand(&s);
		}
	}
}

/* Destination content before a migration: not zero, with a few zero pages. */
static inline void fakevm_fill_dest(struct fakevm *vm)
{
	for (uint64_t g = 0; g < vm->total; g++)
		memset(fakevm_page(vm, g), g % 11 == 0 ? 0 : 0xa5, PM_PAGE_SIZE);
}

/* npages[i] pages per region, at gpa[i]. */
static inline struct fakevm *fakevm_new(const char *name, unsigned nregions, const uint64_t *npages,
					const uint64_t *gpa)
{
	struct fakevm *vm = calloc(1, sizeof(*vm));

	if (!vm || nregions > FAKEVM_MAX_REGIONS)
		abort();
	snprintf(vm->name, sizeof(vm->name), "%s", name);
	pthread_mutex_init(&vm->lock, NULL);
	pthread_cond_init(&vm->cond, NULL);
	vm->nregions = nregions;
	for (unsigned i = 0; i < nregions; i++) {
		void *m = mmap(NULL, npages[i] * PM_PAGE_SIZE, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m == MAP_FAILED)
			abort();
		vm->regions[i] = (struct pm_region){ .id = i, .gpa = gpa[i], .npages = npages[i], .host = m };
		vm->base[i] = vm->total;
		vm->total += npages[i];
	}
	vm->dirty = calloc((vm->total + 63) / 64, 8);
	vm->rng = 0x9e3779b97f4a7c15ull;
	vm->lost_write_page = -1;
	vm->be = (struct pm_backend){ .kind = "fake", .ops = &fakevm_ops, .vm = vm,
				      .nregions = nregions, .regions = vm->regions };
	return vm;
}

static void *fakevm_writer_main(void *arg)
{
	struct fakevm *vm = arg;
	unsigned n = 0;

	for (;;) {
		pthread_mutex_lock(&vm->lock);
		while (vm->paused && !vm->stop)
			pthread_cond_wait(&vm->cond, &vm->lock);
		if (vm->stop) {
			pthread_mutex_unlock(&vm->lock);
			break;
		}
		uint64_t x = fake_rand(&vm->rng);
		uint64_t g = x % vm->total;
		uint8_t *p = fakevm_page(vm, g);
		if ((x >> 40) % 16 == 0) {
			/* Zero the page (zero runs appear in later rounds). */
			for (unsigned i = 0; i < PM_PAGE_SIZE; i += 8)
				guest_store64(p + i, 0);
		} else {
			/* A few words somewhere in the page. */
			for (unsigned k = 0; k < 4; k++)
				guest_store64(p + ((x >> (20 + 9 * k)) % (PM_PAGE_SIZE / 8)) * 8, x + vm->writes);
		}
		vm->dirty[g / 64] |= 1ull << (g % 64);
		vm->writes++;
		pthread_mutex_unlock(&vm->lock);
		if (++n % 64 == 0) {
			if (vm->writer_pause_us)
				usleep(vm->writer_pause_us);
			else
				sched_yield();
		}
	}
	return NULL;
}

static inline void fakevm_start_writer(struct fakevm *vm, unsigned pause_us)
{
	vm->writer_pause_us = pause_us;
	if (pthread_create(&vm->writer, NULL, fakevm_writer_main, vm))
		abort();
	vm->writer_started = true;
}

static inline void fakevm_stop_writer(struct fakevm *vm)
{
	if (!vm->writer_started)
		return;
	pthread_mutex_lock(&vm->lock);
	vm->stop = true;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	pthread_join(vm->writer, NULL);
	vm->writer_started = false;
}

static inline uint64_t fakevm_writes(struct fakevm *vm)
{
	pthread_mutex_lock(&vm->lock);
	uint64_t w = vm->writes;
	pthread_mutex_unlock(&vm->lock);
	return w;
}

static inline void fakevm_free(struct fakevm *vm)
{
	if (!vm)
		return;
	fakevm_stop_writer(vm);
	for (unsigned i = 0; i < vm->nregions; i++)
		munmap(vm->regions[i].host, vm->regions[i].npages * PM_PAGE_SIZE);
	free(vm->dirty);
	free(vm->loaded_state);
	pthread_mutex_destroy(&vm->lock);
	pthread_cond_destroy(&vm->cond);
	free(vm);
}

/* First differing page between two VMs of the same shape, or -1. */
static inline int64_t fakevm_first_diff(struct fakevm *a, struct fakevm *b)
{
	for (uint64_t g = 0; g < a->total; g++)
		if (memcmp(fakevm_page(a, g), fakevm_page(b, g), PM_PAGE_SIZE))
			return (int64_t)g;
	return -1;
}

#endif
