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
		free(vm->slots[i].bitmap);
		vm->slots[i].bitmap = calloc((vm->slots[i].npages + 63) / 64, sizeof(uint64_t));
		if (!vm->slots[i].bitmap) {
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
		struct kvm_dirty_log log = { .slot = i, .dirty_bitmap = vm->slots[i].bitmap };

		/* With manual protection this only reads the bits; they are
		 * cleared chunk by chunk in dirty_harvest. */
		if (ioctl(vm->vm_fd, KVM_GET_DIRTY_LOG, &log) < 0)
			r = pm_err_set(err, errno, "KVM_GET_DIRTY_LOG slot %u: %s", i, strerror(errno));
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

static int dirty_harvest(void *opaque, uint32_t region, uint64_t first, uint64_t n,
			 uint64_t *out, struct pm_err *err)
{
	struct pmvm *vm = opaque;
	struct pmvm_slot *s;
	uint64_t a0, a1, nwords, any = 0;
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

	/* KVM_CLEAR_DIRTY_LOG wants first_page 64-aligned and a multiple of 64
	 * pages unless the range reaches the end of the slot. */
	pmvm_dirty_clear_range(s->npages, first, n, &a0, &a1);
	nwords = (a1 - a0 + 63) / 64;
	taken = calloc(nwords, sizeof(uint64_t));
	if (!taken)
		return pm_err_set(err, ENOMEM, "out of memory");

	pthread_rwlock_rdlock(&vm->dirty_lock);
	any = pmvm_dirty_take(s->bitmap, first, n, a0, a1, taken);
	if (any) {
		struct kvm_clear_dirty_log clr = {
			.slot = region,
			.num_pages = (uint32_t)(a1 - a0),
			.first_page = a0,
			.dirty_bitmap = taken,
		};

		/* Re-protect exactly the pages we report, just before the engine
		 * reads them: a write after this is caught by the next sync. */
		if (ioctl(vm->vm_fd, KVM_CLEAR_DIRTY_LOG, &clr) < 0)
			r = pm_err_set(err, errno, "KVM_CLEAR_DIRTY_LOG slot %u pages [%llu, %llu): %s",
				       region, (unsigned long long)a0, (unsigned long long)a1,
				       strerror(errno));
	}
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
		vm->slots[i].bitmap = NULL;
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
