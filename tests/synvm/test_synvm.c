/* SPDX-License-Identifier: MIT */
/* The synthetic VM's workload and its self-logged writes, through the
 * backend interface the engine uses:
 *  - --dirty self: every page the workload writes is reported by the next
 *    harvest (the workload runs while we harvest, then pauses, then one
 *    last harvest: every page whose content changed since the previous
 *    copy was reported);
 *  - a throttle set while the guest runs slows it down without stopping it
 *    (regression: the writes already done at full speed once stalled it). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>
#include "synvm/synvm.h"

#define MEM (16u << 20)

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static struct synvm *vm_new(const char *workload, enum pm_dirty_method dirty)
{
	struct synvm_opts o = { .mem_bytes = MEM, .fill = SYNVM_FILL_RANDOM, .dirty = dirty };
	struct pm_err err = { 0 };
	struct synvm *vm = NULL;

	assert_int_equal(synvm_parse_workload(workload, &o.workload, &err), 0);
	if (synvm_create(&vm, &o, &err))
		fail_msg("synvm_create: %s", err.msg);
	return vm;
}

static void test_self_reports_every_write(void **state)
{
	struct synvm *vm = vm_new("random,rate=200MB/s,threads=2", PM_DIRTY_SELF);
	struct pm_backend *be = synvm_backend(vm);
	const struct pm_backend_ops *ops = be->ops;
	uint64_t n = be->regions[0].npages, bm[512 / 64];
	uint8_t *copy = malloc((size_t)n * PM_PAGE_SIZE), *mem = be->regions[0].host;
	struct pm_err err = { 0 };
	uint64_t missed = 0, reported = 0;

	(void)state;
	assert_non_null(copy);
	assert_int_equal(ops->dirty_start(be->vm, &err), 0);
	assert_string_equal(ops->dirty_method(be->vm), "self");
	/* Passes while the guest writes, copying what is reported, as the
	 * engine does; the first reports everything. */
	for (int pass = 0; pass < 6; pass++) {
		for (uint64_t f = 0; f < n; f += 512) {
			assert_int_equal(ops->dirty_harvest(be->vm, 0, f, 512, bm, &err), 0);
			for (unsigned i = 0; i < 512; i++)
				if (bm[i / 64] >> (i % 64) & 1) {
					memcpy(copy + (f + i) * PM_PAGE_SIZE, mem + (f + i) * PM_PAGE_SIZE, PM_PAGE_SIZE);
					reported++;
				}
		}
		sleep_ms(20);
	}
	assert_int_equal(ops->pause(be->vm, &err), 0);
	for (uint64_t f = 0; f < n; f += 512) {
		assert_int_equal(ops->dirty_harvest(be->vm, 0, f, 512, bm, &err), 0);
		for (unsigned i = 0; i < 512; i++)
			if (bm[i / 64] >> (i % 64) & 1)
				memcpy(copy + (f + i) * PM_PAGE_SIZE, mem + (f + i) * PM_PAGE_SIZE, PM_PAGE_SIZE);
	}
	for (uint64_t p = 0; p < n; p++)
		missed += memcmp(copy + p * PM_PAGE_SIZE, mem + p * PM_PAGE_SIZE, PM_PAGE_SIZE) != 0;
	print_message("# %llu pages written, %llu reports, %llu missed\n",
		      (unsigned long long)synvm_pages_written(vm), (unsigned long long)reported,
		      (unsigned long long)missed);
	assert_int_equal(missed, 0);
	assert_true(synvm_pages_written(vm) > 0);
	ops->dirty_stop(be->vm);
	free(copy);
	synvm_destroy(vm);
}

static void test_throttle_slows_not_stops(void **state)
{
	struct synvm *vm = vm_new("random,rate=100MB/s", PM_DIRTY_SELF);
	struct pm_backend *be = synvm_backend(vm);
	uint64_t w0, w1, asked_pages;
	double asked;

	(void)state;
	sleep_ms(2000);                      /* full speed for a while */
	be->ops->throttle(be->vm, 30);
	be->ops->write_stats(be->vm, &w0, &asked);
	sleep_ms(500);
	be->ops->write_stats(be->vm, &w1, &asked);
	asked_pages = (uint64_t)(asked / PM_PAGE_SIZE / 2);   /* in 500 ms */
	print_message("# 500 ms at throttle 30%%: %llu pages written, %llu asked at full speed\n",
		      (unsigned long long)(w1 - w0), (unsigned long long)asked_pages);
	assert_true(asked == 100e6);
	/* Not stalled (before the fix: 0 for ~0.9 s), and not above full speed. */
	assert_true(w1 > w0);
	assert_true(w1 - w0 <= asked_pages + asked_pages / 10 + 64);
	be->ops->throttle(be->vm, 0);
	synvm_destroy(vm);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_self_reports_every_write),
		cmocka_unit_test(test_throttle_slows_not_stops),
	};
	return cmocka_run_group_tests_name("synvm", tests, NULL, NULL);
}
