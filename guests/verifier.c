// SPDX-License-Identifier: MIT
/* Proves that memory and registers survive a migration.
 *
 * Dense check: each vCPU owns a table page and P data pages.  Step n
 * rewrites one page with content that depends on n, records the page's
 * checksum and n in the table, then re-checks every page against the table,
 * the step counter kept in a register and on the stack against the one in
 * the table, and a value kept in XMM7 (FPU/XSAVE state) against n - 1.
 *
 * Spread check (spread=S): the vCPUs share S% of the memory left after the
 * dense areas.  Every page of a vCPU's slice carries a stamp in its first
 * and last word that depends on the page and on the last step that wrote
 * it.  The slice's pages fall into C classes (page index mod C); step n
 * first checks the stamps of one class, then re-stamps class n mod C, so
 * every page is written and checked every C steps without a table, and a
 * page lost anywhere in a large guest is caught.  After each full cycle of
 * C steps a vCPU prints "VERIFY SWEEP <k> cpu<i> pages <count>".
 *
 * vCPU 0 prints "VERIFY OK <n>" after each step; other vCPUs print
 * "VERIFY OK <n> cpu<i>" every 16 steps; any mismatch prints
 * "VERIFY FAIL ..." and exits with code 1.  Every vCPU writes a heartbeat
 * about once a millisecond (see guest.h).
 *
 * Parameters: pages (P, default 32, at most 500), steps (vCPU 0 exits with
 * 0 after this many steps, 0 = never), delay (busy-loop iterations between
 * steps, default 0), spread (percent of the remaining memory, default 0 =
 * off), classes (C, default 16).
 *
 * Only instructions that KVM's instruction emulator runs (guests/README.md):
 * XMM7 is reached with movdqu through memory, never movq/movd. */
#include "guest.h"

#define MAXP 500
#define VMAGIC 0x5645524946595447ull
#define SPREAD_SALT 0x5350524541443031ull

struct vtable {
	uint64_t magic;
	uint64_t counter;
	uint64_t sums[MAXP];
};

struct spread {
	uint64_t base;          /* first page of this vCPU's slice (address) */
	uint64_t npages;
	uint64_t classes;
};

static struct heartbeat hb[PMVM_MAX_VCPUS];

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
	heartbeat(&hb[cpu]);
	return s;
}

static uint64_t checksum(const volatile uint64_t *page, uint64_t cpu)
{
	uint64_t s = 0;

	for (unsigned j = 0; j < 512; j++)
		s = rotl(s, 1) ^ page[j];
	heartbeat(&hb[cpu]);
	return s;
}

/* XMM7 through a 16-byte memory slot: KVM's emulator runs movdqu, not
 * movq between a general register and an XMM register. */
static uint64_t get_xmm7(void)
{
	uint64_t v[2];

	__asm__ volatile("movdqu %%xmm7, %0" : "=m"(v));
	return v[0];
}

static void set_xmm7(uint64_t x)
{
	uint64_t v[2] = { x, ~x };

	__asm__ volatile("movdqu %0, %%xmm7" : : "m"(v));
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

static uint64_t stamp(uint64_t cpu, uint64_t page, uint64_t step)
{
	return mix64(SPREAD_SALT ^ (cpu << 56) ^ (page << 20) ^ step);
}

static void stamp_page(const struct spread *sp, uint64_t cpu, uint64_t p, uint64_t step)
{
	volatile uint64_t *w = (volatile uint64_t *)(uintptr_t)(sp->base + p * 4096);
	uint64_t v = stamp(cpu, p, step);

	w[0] = v;
	w[511] = ~v;
}

/* The last step before n that stamped a page of class cls (0: the
 * initial stamp). */
static uint64_t last_stamp_step(uint64_t n, uint64_t cls, uint64_t classes)
{
	uint64_t d = (n - 1 + classes - cls) % classes;

	return n - 1 >= d + 1 ? n - 1 - d : 0;
}

static void spread_check(const struct spread *sp, uint64_t cpu, uint64_t n, uint64_t cls)
{
	uint64_t want_step = last_stamp_step(n, cls, sp->classes);

	for (uint64_t p = cls; p < sp->npages; p += sp->classes) {
		volatile uint64_t *w = (volatile uint64_t *)(uintptr_t)(sp->base + p * 4096);
		uint64_t v = stamp(cpu, p, want_step);

		if (w[0] != v || w[511] != ~v)
			fail(cpu, "spread page", n, sp->base + p * 4096, w[0]);
		heartbeat(&hb[cpu]);
	}
}

static void spread_write(const struct spread *sp, uint64_t cpu, uint64_t n, uint64_t cls)
{
	for (uint64_t p = cls; p < sp->npages; p += sp->classes) {
		stamp_page(sp, cpu, p, n);
		heartbeat(&hb[cpu]);
	}
}

static void spread_setup(struct spread *sp, const struct pmvm_bootinfo *bi, uint64_t cpu,
			 uint64_t dense_end)
{
	uint64_t pct = param(bi, "spread", 0), ncpu = bi->nvcpus ? bi->nvcpus : 1;
	uint64_t avail = bi->low_mem_end > dense_end ? (bi->low_mem_end - dense_end) / 4096 : 0;
	uint64_t slice = (pct > 100 ? 100 : pct) * (avail / 100) / ncpu;

	sp->classes = param(bi, "classes", 16);
	if (sp->classes == 0)
		sp->classes = 16;
	sp->npages = slice;
	sp->base = dense_end + cpu * slice * 4096;
	for (uint64_t p = 0; p < sp->npages; p++) {
		stamp_page(sp, cpu, p, 0);
		heartbeat(&hb[cpu]);
	}
}

void guest_main(const struct pmvm_bootinfo *bi, uint64_t cpu)
{
	uint64_t P = param(bi, "pages", 32);
	uint64_t steps = param(bi, "steps", 0);
	uint64_t delay = param(bi, "delay", 0);
	uint64_t ncpu = bi->nvcpus ? bi->nvcpus : 1;
	uint64_t area, dense_end, n;
	struct spread sp;
	volatile struct vtable *t;

	if (cpu >= PMVM_MAX_VCPUS)
		guest_exit(2);
	heartbeat_init(&hb[cpu], bi, 1);
	if (P == 0 || P > MAXP)
		P = 32;
	area = free_start(bi) + cpu * (P + 1) * 4096;
	dense_end = free_start(bi) + ncpu * (P + 1) * 4096;
	if (bi->magic != PMVM_BOOT_MAGIC || dense_end > bi->low_mem_end)
		fail(cpu, "setup: bad boot info or memory too small", 0, area, bi->low_mem_end);
	t = (volatile struct vtable *)(uintptr_t)area;

	/* Initial content: step 0. */
	for (uint64_t k = 0; k < P; k++)
		t->sums[k] = fill((volatile uint64_t *)(uintptr_t)(area + (k + 1) * 4096), cpu, 0, k);
	t->counter = 0;
	t->magic = VMAGIC;
	set_xmm7(0);
	spread_setup(&sp, bi, cpu, dense_end);

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
			uint64_t s = checksum((volatile uint64_t *)(uintptr_t)(area + (j + 1) * 4096), cpu);

			if (s != t->sums[j])
				fail(cpu, "page checksum", n, j, s);
		}
		if (sp.npages) {
			spread_check(&sp, cpu, n, (n + sp.classes / 2) % sp.classes);
			spread_write(&sp, cpu, n, n % sp.classes);
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
		if (sp.npages && n % sp.classes == 0) {
			console_lock();
			puts_raw("VERIFY SWEEP ");
			putu_raw(n / sp.classes);
			puts_raw(" cpu");
			putu_raw(cpu);
			puts_raw(" pages ");
			putu_raw(sp.npages);
			putc_raw('\n');
			console_unlock();
		}
		if (cpu == 0 && steps && n >= steps)
			guest_exit(0);
		for (volatile uint64_t d = 0; d < delay; d++)
			;
	}
}
