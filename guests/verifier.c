// SPDX-License-Identifier: MIT
/* Proves that memory and registers survive a migration.  Each vCPU owns a
 * table page and P data pages.  Step n rewrites one page with content that
 * depends on n, records the page's checksum and n in the table, then
 * re-checks every page against the table, the step counter kept in a
 * register and on the stack against the one in the table, and a value kept
 * in XMM7 (FPU/XSAVE state) against n - 1.  vCPU 0 prints "VERIFY OK <n>"
 * after each step; other vCPUs print "VERIFY OK <n> cpu<i>" every 16 steps;
 * any mismatch prints "VERIFY FAIL ..." and exits with code 1.
 * Parameters: pages (P, default 32, at most 500), steps (vCPU 0 exits with 0
 * after this many steps, 0 = never), delay (busy-loop iterations between
 * steps, default 0). */
#include "guest.h"

#define MAXP 500
#define VMAGIC 0x5645524946595447ull

struct vtable {
	uint64_t magic;
	uint64_t counter;
	uint64_t sums[MAXP];
};

static inline uint64_t rotl(uint64_t x, unsigned r)
{
	return (x << r) | (x >> (64 - r));
}

static uint64_t fill(volatile uint64_t *page, uint64_t cpu, uint64_t n, uint64_t k)
{
	uint64_t seed = mix64((n << 20) ^ (k << 4) ^ cpu), s = 0;

	for (unsigned j = 0; j < 512; j++) {
		uint64_t v = seed + j * 0x9e3779b97f4a7c15ull;

		page[j] = v;
		s = rotl(s, 1) ^ v;
	}
	return s;
}

static uint64_t checksum(const volatile uint64_t *page)
{
	uint64_t s = 0;

	for (unsigned j = 0; j < 512; j++)
		s = rotl(s, 1) ^ page[j];
	return s;
}

static uint64_t get_xmm7(void)
{
	uint64_t v;

	__asm__ volatile("movq %%xmm7, %0" : "=r"(v));
	return v;
}

static void set_xmm7(uint64_t v)
{
	__asm__ volatile("movq %0, %%xmm7" : : "r"(v));
}

static void fail(uint64_t cpu, const char *what, uint64_t step, uint64_t a, uint64_t b)
{
	console_lock();
	puts_raw("VERIFY FAIL cpu");
	putu_raw(cpu);
	putc_raw(' ');
	puts_raw(what);
	puts_raw(" step ");
	putu_raw(step);
	putc_raw(' ');
	putx_raw(a);
	putc_raw(' ');
	putx_raw(b);
	putc_raw('\n');
	console_unlock();
	guest_exit(1);
}

void guest_main(const struct pmvm_bootinfo *bi, uint64_t cpu)
{
	uint64_t P = param(bi, "pages", 32);
	uint64_t steps = param(bi, "steps", 0);
	uint64_t delay = param(bi, "delay", 0);
	uint64_t area, n;
	volatile struct vtable *t;

	if (P == 0 || P > MAXP)
		P = 32;
	area = free_start(bi) + cpu * (P + 1) * 4096;
	if (bi->magic != PMVM_BOOT_MAGIC || area + (P + 1) * 4096 > bi->low_mem_end)
		fail(cpu, "setup: bad boot info or memory too small", 0, area, bi->low_mem_end);
	t = (volatile struct vtable *)(uintptr_t)area;

	/* Initial content: step 0. */
	for (uint64_t k = 0; k < P; k++)
		t->sums[k] = fill((volatile uint64_t *)(uintptr_t)(area + (k + 1) * 4096), cpu, 0, k);
	t->counter = 0;
	t->magic = VMAGIC;
	set_xmm7(0);

	/* n lives in a register (and spills to the stack): compared with the
	 * table every step, so a lost register or stack page shows. */
	for (n = 1;; n++) {
		uint64_t k = (n * 7) % P;
		volatile uint64_t *page = (volatile uint64_t *)(uintptr_t)(area + (k + 1) * 4096);

		if (t->magic != VMAGIC)
			fail(cpu, "table magic", n, t->magic, VMAGIC);
		if (t->counter != n - 1)
			fail(cpu, "counter", n, t->counter, n - 1);
		if (get_xmm7() != n - 1)
			fail(cpu, "xmm7", n, get_xmm7(), n - 1);

		t->sums[k] = fill(page, cpu, n, k);
		t->counter = n;
		set_xmm7(n);

		for (uint64_t j = 0; j < P; j++) {
			uint64_t s = checksum((volatile uint64_t *)(uintptr_t)(area + (j + 1) * 4096));

			if (s != t->sums[j])
				fail(cpu, "page checksum", n, j, s);
		}
		if (cpu == 0 || n % 16 == 0) {
			console_lock();
			puts_raw("VERIFY OK ");
			putu_raw(n);
			if (cpu) {
				puts_raw(" cpu");
				putu_raw(cpu);
			}
			putc_raw('\n');
			console_unlock();
		}
		if (cpu == 0 && steps && n >= steps)
			guest_exit(0);
		for (volatile uint64_t d = 0; d < delay; d++)
			;
	}
}
