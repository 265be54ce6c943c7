// SPDX-License-Identifier: MIT
/* Dirties a working set at a set rate and pattern.  Parameters (--param):
 *   pages    working-set pages, shared out among the vCPUs (default 256)
 *   pattern  0 sequential, 1 uniform random, 2 hot set: 90% of writes to
 *            the first 10% of the pages (default 0)
 *   rate     page writes per second per vCPU, 0 = as fast as possible
 *            (needs the TSC frequency from pmvm; default 0)
 *   full     1: write whole pages, 0: one 8-byte word per page (default 0)
 *   report   print "DIRTY <cpu> <writes>" every this many writes (default 4096)
 *   steps    vCPU 0 exits with code 0 after this many writes (0 = never)
 * Every vCPU writes a heartbeat about once a millisecond (guest.h). */
#include "guest.h"

void guest_main(const struct pmvm_bootinfo *bi, uint64_t cpu)
{
	uint64_t pages = param(bi, "pages", 256);
	uint64_t pattern = param(bi, "pattern", 0);
	uint64_t rate = param(bi, "rate", 0);
	uint64_t full = param(bi, "full", 0);
	uint64_t report = param(bi, "report", 4096);
	uint64_t steps = param(bi, "steps", 0);
	uint64_t ncpu = bi->nvcpus ? bi->nvcpus : 1;
	uint64_t per = pages / ncpu ? pages / ncpu : 1;
	uint64_t base = free_start(bi) + cpu * per * 4096;
	uint64_t tsc_per_write = 0, t0 = rdtsc(), rng = mix64(cpu + 1);
	struct heartbeat hb;

	heartbeat_init(&hb, bi, 1);

	if (base + per * 4096 > bi->low_mem_end) {
		console_lock();
		puts_raw("DIRTY FAIL working set does not fit in memory\n");
		console_unlock();
		guest_exit(3);
	}
	if (rate && bi->tsc_khz)
		tsc_per_write = bi->tsc_khz * 1000 / rate;

	for (uint64_t n = 1;; n++) {
		uint64_t k;

		switch (pattern) {
		case 1:
			rng = mix64(rng);
			k = rng % per;
			break;
		case 2: {
			uint64_t hot = per / 10 ? per / 10 : 1;

			rng = mix64(rng);
			k = (rng % 10) ? (rng >> 8) % hot : (rng >> 8) % per;
			break;
		}
		default:
			k = n % per;
			break;
		}
		volatile uint64_t *p = (volatile uint64_t *)(uintptr_t)(base + k * 4096);

		if (full) {
			for (unsigned j = 0; j < 512; j++)
				p[j] = n ^ j;
		} else {
			p[n % 512] = n;
		}
		heartbeat(&hb);
		if (report && n % report == 0) {
			console_lock();
			puts_raw("DIRTY ");
			putu_raw(cpu);
			putc_raw(' ');
			putu_raw(n);
			putc_raw('\n');
			console_unlock();
		}
		if (cpu == 0 && steps && n >= steps)
			guest_exit(0);
		if (tsc_per_write)
			while (rdtsc() - t0 < n * tsc_per_write)
				cpu_relax();
	}
}
