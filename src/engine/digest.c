/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#include "engine/digest.h"
#include "engine/protocol.h"

static const uint8_t zero_page[PM_PAGE_SIZE];
static uint64_t zero_hash;
static pthread_once_t zero_once = PTHREAD_ONCE_INIT;

static void zero_hash_init(void)
{
	zero_hash = XXH3_64bits(zero_page, PM_PAGE_SIZE);
}

uint64_t pm_digest_nchunks(const struct pm_backend *be, unsigned chunk_pages)
{
	uint64_t n = 0;

	for (unsigned i = 0; i < be->nregions; i++)
		n += (be->regions[i].npages + chunk_pages - 1) / chunk_pages;
	return n;
}

void pm_digest_chunk_at(const struct pm_backend *be, unsigned chunk_pages, uint64_t k,
			uint32_t *region, uint64_t *first, uint64_t *npages)
{
	unsigned i = 0;

	for (; i + 1 < be->nregions; i++) {
		uint64_t nk = (be->regions[i].npages + chunk_pages - 1) / chunk_pages;

		if (k < nk)
			break;
		k -= nk;
	}
	*region = i;
	*first = k * chunk_pages;
	*npages = be->regions[i].npages - *first < chunk_pages ? be->regions[i].npages - *first
								 : chunk_pages;
}

struct digest_run {
	const struct pm_digest_job *j;
	uint8_t *out;
	uint64_t nchunks;
	atomic_ullong next;
	atomic_bool failed;
	pthread_mutex_t lock;
	struct pm_err err;
};

static int digest_chunk(struct digest_run *d, uint64_t k, XXH3_state_t *st, struct pm_err *err)
{
	const struct pm_digest_job *j = d->j;
	uint64_t bits[PM_MAX_CHUNK_PAGES / 64], first, n;
	uint32_t region;
	XXH128_hash_t h;

	pm_digest_chunk_at(j->be, j->chunk_pages, k, &region, &first, &n);
	if (j->data) {
		int r = j->data(j->opaque, region, first, n, bits, err);
		if (r)
			return r;
	} else {
		memset(bits, 0xff, sizeof(bits));
	}
	/* A chunk's digest is XXH3-128 over its pages' XXH3-64s, so a page
	 * without data costs a constant, not 4 KiB of hashing. */
	const uint8_t *host = j->be->regions[region].host + first * PM_PAGE_SIZE;
	uint8_t ph[PM_MAX_CHUNK_PAGES * 8];
	for (uint64_t p = 0; p < n; p++) {
		bool data = bits[p / 64] >> (p % 64) & 1;
		pm_put64(ph + p * 8, data ? XXH3_64bits(host + p * PM_PAGE_SIZE, PM_PAGE_SIZE) : zero_hash);
	}
	XXH3_128bits_reset(st);
	XXH3_128bits_update(st, ph, n * 8);
	h = XXH3_128bits_digest(st);
	pm_put64(d->out + k * PM_DIGEST_LEN, h.low64);
	pm_put64(d->out + k * PM_DIGEST_LEN + 8, h.high64);
	return 0;
}

static void *digest_main(void *arg)
{
	struct digest_run *d = arg;
	XXH3_state_t *st = XXH3_createState();
	struct pm_err e = { 0 };

	if (!st) {
		pm_err_set(&e, ENOMEM, "out of memory for a digest state");
		goto fail;
	}
	for (;;) {
		uint64_t k = atomic_fetch_add(&d->next, 1);

		if (k >= d->nchunks || atomic_load(&d->failed))
			break;
		if (digest_chunk(d, k, st, &e))
			goto fail;
	}
	XXH3_freeState(st);
	return NULL;
fail:
	pthread_mutex_lock(&d->lock);
	if (!d->err.code)
		d->err = e;
	pthread_mutex_unlock(&d->lock);
	atomic_store(&d->failed, true);
	XXH3_freeState(st);
	return NULL;
}

int pm_digest_compute(const struct pm_digest_job *j, unsigned nthreads, uint8_t *out,
		      struct pm_err *err)
{
	struct digest_run d = { .j = j, .out = out, .nchunks = pm_digest_nchunks(j->be, j->chunk_pages) };
	pthread_t *t;
	unsigned started = 0;

	pthread_once(&zero_once, zero_hash_init);
	if (nthreads < 1)
		nthreads = 1;
	if (nthreads > 64)
		nthreads = 64;
	t = calloc(nthreads, sizeof(*t));
	if (!t)
		return pm_err_set(err, ENOMEM, "out of memory");
	pthread_mutex_init(&d.lock, NULL);
	/* This thread works too. */
	for (unsigned i = 1; i < nthreads; i++)
		if (!pthread_create(&t[started], NULL, digest_main, &d))
			started++;
	digest_main(&d);
	for (unsigned i = 0; i < started; i++)
		pthread_join(t[i], NULL);
	free(t);
	pthread_mutex_destroy(&d.lock);
	if (atomic_load(&d.failed))
		return pm_err_set(err, d.err.code ? d.err.code : EIO, "computing memory digests: %s", d.err.msg);
	return 0;
}
