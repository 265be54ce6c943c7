/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>
#include <pmigrate/disk.h>
#include "engine/digest.h"
#include "engine/protocol.h"

static const uint8_t zero_page[PM_PAGE_SIZE];
static uint64_t zero_hash;
static pthread_once_t zero_once = PTHREAD_ONCE_INIT;

static void zero_hash_init(void)
{
	zero_hash = XXH3_64bits(zero_page, PM_PAGE_SIZE);
}

static uint64_t mem_chunks(const struct pm_backend *be, unsigned chunk_pages)
{
	uint64_t n = 0;

	for (unsigned i = 0; i < be->nregions; i++)
		n += (be->regions[i].npages + chunk_pages - 1) / chunk_pages;
	return n;
}

static uint64_t disk_chunks(const struct pm_blockdev *bd, unsigned chunk_pages)
{
	uint32_t per = pm_disk_chunk_blocks(bd->block_size, chunk_pages);

	return (pm_disk_nblocks(bd->size, bd->block_size) + per - 1) / per;
}

uint64_t pm_digest_nchunks(const struct pm_backend *be, unsigned chunk_pages, bool disks)
{
	uint64_t n = mem_chunks(be, chunk_pages);

	for (unsigned i = 0; disks && i < be->ndisks; i++)
		n += disk_chunks(&be->disks[i], chunk_pages);
	return n;
}

bool pm_digest_disk_chunk_at(const struct pm_backend *be, unsigned chunk_pages, uint64_t k,
			     uint32_t *disk, uint64_t *first, uint64_t *nblocks)
{
	uint64_t m = mem_chunks(be, chunk_pages);

	if (k < m)
		return false;
	k -= m;
	for (unsigned i = 0; i < be->ndisks; i++) {
		const struct pm_blockdev *bd = &be->disks[i];
		uint64_t nk = disk_chunks(bd, chunk_pages), total = pm_disk_nblocks(bd->size, bd->block_size);
		uint32_t per = pm_disk_chunk_blocks(bd->block_size, chunk_pages);

		if (k < nk) {
			*disk = i;
			*first = k * per;
			*nblocks = total - *first < per ? total - *first : per;
			return true;
		}
		k -= nk;
	}
	return false;
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

static void put_digest(struct digest_run *d, uint64_t k, XXH3_state_t *st, const uint8_t *ph, size_t len)
{
	XXH128_hash_t h;

	XXH3_128bits_reset(st);
	XXH3_128bits_update(st, ph, len);
	h = XXH3_128bits_digest(st);
	pm_put64(d->out + k * PM_DIGEST_LEN, h.low64);
	pm_put64(d->out + k * PM_DIGEST_LEN + 8, h.high64);
}

/* A disk chunk: blocks read with pread (a hole reads as zeros, the same on
 * both sides whatever each image allocated), blocks wholly in a hole
 * hashed without reading. */
static int digest_disk_chunk(struct digest_run *d, uint64_t k, uint32_t disk, uint64_t first, uint64_t n,
			     XXH3_state_t *st, uint8_t *buf, struct pm_err *err)
{
	const struct pm_blockdev *bd = &d->j->be->disks[disk];
	uint32_t bs = bd->block_size;
	uint64_t off = first * bs, end = off + pm_disk_run_bytes(bd->size, bs, first, n);
	uint8_t ph[PM_MAX_CHUNK_PAGES * 8];
	uint64_t data = 0, hole = 0;

	for (uint64_t b = 0; b < n; b++) {
		uint64_t o = off + b * bs, len = pm_disk_run_bytes(bd->size, bs, first + b, 1);
		if (o >= hole) {
			int r = pm_disk_next_data(bd->fd, o, end, &data, &hole, err);
			if (r)
				return r;
		}
		if (o + len <= data || o >= hole) {
			memset(buf, 0, len);            /* wholly in a hole */
		} else {
			for (size_t got = 0; got < len;) {
				ssize_t r = pread(bd->fd, buf + got, len - got, (off_t)(o + got));
				if (r <= 0)
					return pm_err_set(err, r < 0 ? errno : EIO, "disk %u: reading block %llu",
							  disk, (unsigned long long)(first + b));
				got += r;
			}
		}
		pm_put64(ph + b * 8, XXH3_64bits(buf, len));
	}
	put_digest(d, k, st, ph, n * 8);
	return 0;
}

static int digest_chunk(struct digest_run *d, uint64_t k, XXH3_state_t *st, uint8_t *buf, struct pm_err *err)
{
	const struct pm_digest_job *j = d->j;
	uint64_t bits[PM_MAX_CHUNK_PAGES / 64], first, n;
	uint32_t region;

	if (pm_digest_disk_chunk_at(j->be, j->chunk_pages, k, &region, &first, &n))
		return digest_disk_chunk(d, k, region, first, n, st, buf, err);
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
	put_digest(d, k, st, ph, n * 8);
	return 0;
}

static void *digest_main(void *arg)
{
	struct digest_run *d = arg;
	XXH3_state_t *st = XXH3_createState();
	uint8_t *buf = d->j->disks && d->j->be->ndisks ? malloc(PM_MAX_BLOCK_SIZE) : NULL;
	struct pm_err e = { 0 };

	if (!st || (d->j->disks && d->j->be->ndisks && !buf)) {
		pm_err_set(&e, ENOMEM, "out of memory for a digest state");
		goto fail;
	}
	for (;;) {
		uint64_t k = atomic_fetch_add(&d->next, 1);

		if (k >= d->nchunks || atomic_load(&d->failed))
			break;
		if (digest_chunk(d, k, st, buf, &e))
			goto fail;
	}
	XXH3_freeState(st);
	free(buf);
	return NULL;
fail:
	pthread_mutex_lock(&d->lock);
	if (!d->err.code)
		d->err = e;
	pthread_mutex_unlock(&d->lock);
	atomic_store(&d->failed, true);
	XXH3_freeState(st);
	free(buf);
	return NULL;
}

int pm_digest_compute(const struct pm_digest_job *j, unsigned nthreads, uint8_t *out,
		      struct pm_err *err)
{
	struct digest_run d = { .j = j, .out = out, .nchunks = pm_digest_nchunks(j->be, j->chunk_pages, j->disks) };
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
