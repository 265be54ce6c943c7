// SPDX-License-Identifier: MIT
/* pmvm as a struct pm_backend: KVM's dirty log with manual protection,
 * pause/resume of the vCPU threads, and the device-state blob. */
#include "pmvm.h"
#include "dirtylog.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

static int dirty_sync(void *opaque, struct pm_err *err);
static void dirty_stop(void *opaque);

static int dirty_start(void *opaque, struct pm_err *err)
{
	struct pmvm *vm = opaque;
	struct kvm_enable_cap cap = { .cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 };
	const uint64_t want = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET;
	int have = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);

	if (have < 0 || ((uint64_t)have & want) != want)
		return pm_err_set(err, ENOTSUP, "this KVM lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 "
				  "with KVM_DIRTY_LOG_INITIALLY_SET (Linux 5.8+)");
	/* Enable before turning logging on: the bitmaps are created all-set
	 * when the slots get KVM_MEM_LOG_DIRTY_PAGES. */
	cap.args[0] = want;
	if (ioctl(vm->vm_fd, KVM_ENABLE_CAP, &cap) < 0)
		return pm_err_set(err, errno, "KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2): %s",
				  strerror(errno));
	pthread_rwlock_wrlock(&vm->dirty_lock);
	for (unsigned i = 0; i < vm->nslots; i++) {
		struct pmvm_slot *sl = &vm->slots[i];
		uint64_t nw = (sl->npages + 63) / 64, b0, nb;

		pmvm_dirty_blocks(0, sl->npages, &b0, &nb);
		free(sl->bitmap);
		free(sl->synced);
		free(sl->cleared);
		sl->bitmap = calloc(nw, sizeof(uint64_t));
		sl->synced = calloc(nw, sizeof(uint64_t));
		sl->cleared = calloc(nb, 1);
		if (!sl->bitmap || !sl->synced || !sl->cleared) {
			pthread_rwlock_unlock(&vm->dirty_lock);
			return pm_err_set(err, ENOMEM, "out of memory for the dirty bitmaps");
		}
	}
	pthread_rwlock_unlock(&vm->dirty_lock);
	/* "Initially all dirty" covers what the devices wrote before. */
	for (unsigned i = 0; i < vm->nslots; i++)
		for (uint64_t w = 0; vm->slots[i].dev_dirty && w < (vm->slots[i].npages + 63) / 64; w++)
			atomic_store_explicit(&vm->slots[i].dev_dirty[w], 0, memory_order_relaxed);
	int r = pmvm_set_dirty_logging(vm, true, err);
	if (r)
		return r;
	vm->dirty_logging = true;
	/* Take KVM's initially-set bits now, so round 1's harvests clear them
	 * in KVM chunk by chunk just before reading: otherwise they stay set
	 * and round 2 sends every page again. */
	r = dirty_sync(vm, err);
	if (r) {
		dirty_stop(vm);
		return r;
	}
	return 0;
}

static int dirty_sync(void *opaque, struct pm_err *err)
{
	struct pmvm *vm = opaque;
	int r = 0;

	if (!vm->dirty_logging)
		return pm_err_set(err, EINVAL, "dirty tracking is not started");
	pthread_rwlock_wrlock(&vm->dirty_lock);
	for (unsigned i = 0; i < vm->nslots && !r; i++) {
		struct pmvm_slot *sl = &vm->slots[i];
		struct kvm_dirty_log log = { .slot = i, .dirty_bitmap = sl->synced };
		uint64_t b0, nb;

		/* With manual protection this only reads the bits; they are
		 * cleared a block at a time by the harvests (dirtylog.h). */
		if (ioctl(vm->vm_fd, KVM_GET_DIRTY_LOG, &log) < 0) {
			r = pm_err_set(err, errno, "KVM_GET_DIRTY_LOG slot %u: %s", i, strerror(errno));
			break;
		}
		pmvm_dirty_or(sl->bitmap, sl->synced, (sl->npages + 63) / 64);
		pmvm_dirty_blocks(0, sl->npages, &b0, &nb);
		memset(sl->cleared, 0, nb);
	}
	pthread_rwlock_unlock(&vm->dirty_lock);
	return r;
}

static int dirty_count(void *opaque, uint64_t *pages, struct pm_err *err)
{
	struct pmvm *vm = opaque;
	uint64_t n = 0;

	if (!vm->dirty_logging)
		return pm_err_set(err, EINVAL, "dirty tracking is not started");
	pthread_rwlock_rdlock(&vm->dirty_lock);
	for (unsigned i = 0; i < vm->nslots; i++)
		for (uint64_t w = 0; w < (vm->slots[i].npages + 63) / 64; w++)
			n += (uint64_t)__builtin_popcountll(
				__atomic_load_n(&vm->slots[i].bitmap[w], __ATOMIC_RELAXED) |
				(vm->slots[i].dev_dirty ? atomic_load_explicit(&vm->slots[i].dev_dirty[w],
									       memory_order_relaxed) : 0));
	pthread_rwlock_unlock(&vm->dirty_lock);
	*pages = n;
	return 0;
}

/* Clears KVM's dirty bits of block b of a slot, once per sync (dirtylog.h).
 * Called with the dirty lock read-held. */
static int clear_block(struct pmvm *vm, uint32_t region, uint64_t b, struct pm_err *err)
{
	struct pmvm_slot *s = &vm->slots[region];
	uint64_t p0 = b * PMVM_CLEAR_BLOCK_PAGES, p1 = p0 + PMVM_CLEAR_BLOCK_PAGES, nw;
	uint64_t *bits = NULL, any = 0;
	int r = 0;

	if (__atomic_load_n(&s->cleared[b], __ATOMIC_ACQUIRE))
		return 0;
	pthread_mutex_lock(&s->clear_lock);
	if (s->cleared[b])
		goto out;
	if (p1 > s->npages)
		p1 = s->npages;
	nw = (p1 - p0 + 63) / 64;
	bits = malloc(nw * sizeof(uint64_t));
	if (!bits) {
		r = pm_err_set(err, ENOMEM, "out of memory");
		goto out;
	}
	/* What the sync reported and no harvest took yet (harvests of other
	 * blocks only take bits of their own block). */
	for (uint64_t w = 0; w < nw; w++) {
		bits[w] = __atomic_load_n(&s->bitmap[p0 / 64 + w], __ATOMIC_RELAXED);
		any |= bits[w];
	}
	if (any) {
		struct kvm_clear_dirty_log clr = {
			.slot = region, .num_pages = (uint32_t)(p1 - p0), .first_page = p0,
			.dirty_bitmap = bits,
		};

		if (ioctl(vm->vm_fd, KVM_CLEAR_DIRTY_LOG, &clr) < 0) {
			r = pm_err_set(err, errno, "KVM_CLEAR_DIRTY_LOG slot %u pages [%llu, %llu): %s",
				       region, (unsigned long long)p0, (unsigned long long)p1, strerror(errno));
			goto out;
		}
	}
	__atomic_store_n(&s->cleared[b], 1, __ATOMIC_RELEASE);
out:
	pthread_mutex_unlock(&s->clear_lock);
	free(bits);
	return r;
}

static int dirty_summary(void *opaque, uint32_t region, uint32_t chunk_pages, uint64_t *pages,
			 uint64_t *mask, struct pm_err *err)
{
	struct pmvm *vm = opaque;
	const struct pmvm_slot *s;
	uint64_t n = 0;

	if (!vm->dirty_logging)
		return pm_err_set(err, EINVAL, "dirty tracking is not started");
	if (region >= vm->nslots)
		return pm_err_set(err, EINVAL, "no memory region %u", region);
	if (chunk_pages == 0 || chunk_pages % 64)
		return pm_err_set(err, EINVAL, "chunks of %u pages: a multiple of 64 needed", chunk_pages);
	s = &vm->slots[region];
	memset(mask, 0, ((s->npages + chunk_pages - 1) / chunk_pages + 63) / 64 * sizeof(uint64_t));
	pthread_rwlock_rdlock(&vm->dirty_lock);
	for (uint64_t w = 0; w < (s->npages + 63) / 64; w++) {
		uint64_t k = w * 64 / chunk_pages;
		uint64_t bits = __atomic_load_n(&s->bitmap[w], __ATOMIC_RELAXED) |
				(s->dev_dirty ? atomic_load_explicit(&s->dev_dirty[w], memory_order_relaxed) : 0);

		if (bits) {
			n += (uint64_t)__builtin_popcountll(bits);
			mask[k / 64] |= 1ull << (k % 64);
		}
	}
	pthread_rwlock_unlock(&vm->dirty_lock);
	*pages = n;
	return 0;
}

static int dirty_harvest(void *opaque, uint32_t region, uint64_t first, uint64_t n,
			 uint64_t *out, struct pm_err *err)
{
	struct pmvm *vm = opaque;
	struct pmvm_slot *s;
	uint64_t a0, a1, nwords, any = 0, b0, b1;
	uint64_t *taken;
	int r = 0;

	if (!vm->dirty_logging)
		return pm_err_set(err, EINVAL, "dirty tracking is not started");
	if (region >= vm->nslots)
		return pm_err_set(err, EINVAL, "no memory region %u", region);
	s = &vm->slots[region];
	if (n == 0 || first >= s->npages || n > s->npages - first)
		return pm_err_set(err, EINVAL, "pages [%llu, +%llu) outside region %u of %llu pages",
				  (unsigned long long)first, (unsigned long long)n, region,
				  (unsigned long long)s->npages);
	memset(out, 0, (n + 63) / 64 * sizeof(uint64_t));
	pmvm_dirty_clear_range(s->npages, first, n, &a0, &a1);
	nwords = (a1 - a0 + 63) / 64;
	taken = calloc(nwords, sizeof(uint64_t));
	if (!taken)
		return pm_err_set(err, ENOMEM, "out of memory");

	pthread_rwlock_rdlock(&vm->dirty_lock);
	/* Before any page of a block is read this round, KVM's bits of the
	 * whole block are cleared (write-protected); a write after that is
	 * reported by the next sync.  The other harvests of the block wait
	 * for the clear, so none reads a page before it is protected. */
	pmvm_dirty_blocks(first, n, &b0, &b1);
	for (uint64_t b = b0; b < b1 && !r; b++)
		r = clear_block(vm, region, b, err);
	if (!r)
		any = pmvm_dirty_take(s->bitmap, first, n, a0, a1, taken);
	pthread_rwlock_unlock(&vm->dirty_lock);

	if (!r && any)
		pmvm_dirty_shift(taken, a0, a1, first, n, out);
	free(taken);
	/* What the devices wrote: taken after their stores (acquire), so the
	 * pages read next hold them. */
	for (uint64_t i = 0; !r && s->dev_dirty && i < n; i++) {
		uint64_t p = first + i;
		_Atomic uint64_t *word = &s->dev_dirty[p / 64];

		if (!atomic_load_explicit(word, memory_order_relaxed)) {
			i += 63 - p % 64;
			continue;
		}
		if (atomic_fetch_and_explicit(word, ~(1ull << (p % 64)), memory_order_acq_rel) & (1ull << (p % 64)))
			out[i / 64] |= 1ull << (i % 64);
	}
	return r;
}

static void dirty_stop(void *opaque)
{
	struct pmvm *vm = opaque;
	struct pm_err e = {0};

	if (!vm->dirty_logging)
		return;
	pmvm_set_dirty_logging(vm, false, &e);
	pthread_rwlock_wrlock(&vm->dirty_lock);
	for (unsigned i = 0; i < vm->nslots; i++) {
		free(vm->slots[i].bitmap);
		free(vm->slots[i].synced);
		free(vm->slots[i].cleared);
		vm->slots[i].bitmap = vm->slots[i].synced = NULL;
		vm->slots[i].cleared = NULL;
	}
	vm->dirty_logging = false;
	pthread_rwlock_unlock(&vm->dirty_lock);
}

static int be_pause(void *opaque, struct pm_err *err)
{
	return pmvm_pause(opaque, err);
}

static int be_resume(void *opaque, struct pm_err *err)
{
	return pmvm_resume(opaque, err);
}

static int be_throttle(void *opaque, unsigned pct)
{
	return pmvm_throttle(opaque, pct);
}

static int save_state(void *opaque, void **buf, size_t *len, struct pm_err *err)
{
	struct pmvm *vm = opaque;
	struct pmvm_vm_state st;
	int r;

	if (!pmvm_is_paused(vm))
		return pm_err_set(err, EBUSY, "save_state needs a paused VM");
	r = pmvm_state_init(&st, vm->nvcpus, err);
	if (r)
		return r;
	r = pmvm_save_vm(vm, &st, err);
	for (unsigned i = 0; i < vm->nvcpus && !r; i++)
		r = pmvm_vcpu_save(&vm->vcpus[i], &st.vcpus[i], err);
	if (!r)
		r = pmvm_state_encode(&st, buf, len, err);
	pmvm_state_free(&st);
	return r;
}

static int load_state(void *opaque, const void *buf, size_t len, struct pm_err *err)
{
	struct pmvm *vm = opaque;
	struct pmvm_vm_state st;
	int r;

	if (!pmvm_is_paused(vm))
		return pm_err_set(err, EBUSY, "load_state needs a paused VM");
	r = pmvm_state_decode(buf, len, &st, err);
	if (r)
		return r;
	if (st.nvcpus != vm->nvcpus || st.mem_bytes != vm->mem_bytes) {
		r = pm_err_set(err, EINVAL, "state is for %u vCPUs and %llu MiB, this VM has %u vCPUs and %llu MiB",
			       st.nvcpus, (unsigned long long)(st.mem_bytes >> 20), vm->nvcpus,
			       (unsigned long long)(vm->mem_bytes >> 20));
		pmvm_state_free(&st);
		return r;
	}
	r = pmvm_load_vm_early(vm, &st, err);
	for (unsigned i = 0; i < vm->nvcpus && !r; i++)
		r = pmvm_vcpu_load(&vm->vcpus[i], &st.vcpus[i], err);
	if (!r)
		r = pmvm_load_vm_late(vm, &st, err);
	pmvm_state_free(&st);
	return r;
}

static const char *dirty_method(void *opaque)
{
	(void)opaque;
	return "kvm-dirty-log";
}

static const struct pm_backend_ops pmvm_ops = {
	.dirty_start = dirty_start,
	.dirty_sync = dirty_sync,
	.dirty_count = dirty_count,
	.dirty_summary = dirty_summary,
	.dirty_harvest = dirty_harvest,
	.dirty_stop = dirty_stop,
	.pause = be_pause,
	.resume = be_resume,
	.throttle = be_throttle,
	.save_state = save_state,
	.load_state = load_state,
	.dirty_method = dirty_method,
};

void pmvm_backend_init(struct pm_backend *be, struct pmvm *vm)
{
	memset(be, 0, sizeof(*be));
	be->kind = "kvm";
	be->ops = &pmvm_ops;
	be->vm = vm;
	be->nregions = vm->nslots;
	be->regions = vm->regions;
	if (vm->disk) {
		be->ndisks = 1;
		be->disks = &vm->blockdev;
	}
}
