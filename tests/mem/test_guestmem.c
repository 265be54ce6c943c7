// SPDX-License-Identifier: MIT
/* Guest memory kinds and the populated scan: written pages are found,
 * read-only and never-touched ones are not, with and without a uffd-wp
 * tracker's markers on the memory; discard gives pages back as zeros;
 * populate and prealloc allocate; usage counts what is resident. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <cmocka.h>
#include <pmigrate/dirty.h>
#include <pmigrate/guestmem.h>

#define NP 1024u                 /* 4 MiB */

static bool bit(const uint64_t *bm, uint64_t i)
{
	return bm[i / 64] >> (i % 64) & 1;
}

static unsigned count(const uint64_t *bm, uint64_t n)
{
	unsigned c = 0;

	for (uint64_t i = 0; i < n; i++)
		c += bit(bm, i);
	return c;
}

static void scan(struct pm_guestmem *m, uint64_t *bm)
{
	struct pm_err err = {0};

	if (pm_guestmem_populated(m, 0, NP, bm, &err))
		fail_msg("%s", err.msg);
}

static void check_kind(enum pm_mem_kind kind)
{
	struct pm_guestmem m;
	struct pm_err err = {0};
	uint64_t bm[NP / 64];
	volatile uint8_t x;

	if (pm_guestmem_create(&m, kind, NP * 4096ull, &err))
		fail_msg("%s", err.msg);
	/* Page-exact here; test_anon_thp covers 2 MiB pages. */
	if (kind == PM_MEM_ANON)
		madvise(m.base, m.bytes, MADV_NOHUGEPAGE);
	scan(&m, bm);
	assert_int_equal(count(bm, NP), 0);              /* untouched */

	m.base[0] = 1;
	m.base[5 * 4096 + 100] = 2;
	m.base[(NP - 1) * 4096] = 3;
	x = m.base[10 * 4096];                           /* only read */
	(void)x;
	scan(&m, bm);
	assert_true(bit(bm, 0) && bit(bm, 5) && bit(bm, NP - 1));
	for (unsigned i = 1; i < 5; i++)
		assert_false(bit(bm, i));
	/* A read page of anonymous memory maps the zero page: no data.  A
	 * read of a memfd hole allocates a (zero) page: the file says data. */
	if (kind == PM_MEM_ANON)
		assert_false(bit(bm, 10));
	assert_true(count(bm, NP) <= 4);

	/* An unaligned sub-range. */
	uint64_t sub[2];
	assert_int_equal(pm_guestmem_populated(&m, 3, 70, sub, &err), 0);
	assert_true(bit(sub, 2));                        /* page 5 */
	assert_false(bit(sub, 0) || bit(sub, 1) || bit(sub, 69));

	/* A uffd-wp tracker leaves markers on every never-populated page:
	 * they are not data. */
	struct pm_dirty_tracker *t = NULL;
	if (pm_dirty_open(&t, m.base, NP, PM_DIRTY_UFFD_WP, &err) == 0) {
		scan(&m, bm);
		assert_true(bit(bm, 0) && bit(bm, 5));
		assert_false(bit(bm, 6) || bit(bm, 200));
		m.base[200 * 4096] = 4;                  /* through the protection */
		scan(&m, bm);
		assert_true(bit(bm, 200));
		assert_true(count(bm, NP) <= 5);
		pm_dirty_close(t);
	} else {
		print_message("# no uffd-wp here (%s): markers not checked\n", err.msg);
	}

	/* Discard gives pages back: zeros, and no longer populated. */
	assert_int_equal(pm_guestmem_discard(&m, 5, 1, &err), 0);
	scan(&m, bm);
	assert_false(bit(bm, 5));
	assert_true(bit(bm, 0));
	assert_int_equal(m.base[5 * 4096 + 100], 0);     /* (a memfd read allocates again) */

	/* Populate allocates for writing. */
	assert_int_equal(pm_guestmem_populate(&m, 512, 256, &err), 0);
	scan(&m, bm);
	assert_true(bit(bm, 512) && bit(bm, 767));
	assert_false(bit(bm, 768));

	struct pm_guestmem_usage u;
	assert_int_equal(pm_guestmem_usage(&m, &u, &err), 0);
	assert_true(u.resident_bytes >= 256 * 4096ull);
	assert_true(u.resident_bytes <= NP * 4096ull + (2u << 20));

	/* Ranges outside memory are refused. */
	assert_int_equal(pm_guestmem_populated(&m, NP - 1, 2, sub, &err), -EINVAL);
	assert_int_equal(pm_guestmem_discard(&m, NP, 1, &err), -EINVAL);
	pm_guestmem_destroy(&m);
}

static void test_anon(void **unused)
{
	check_kind(PM_MEM_ANON);
}

static void test_memfd(void **unused)
{
	check_kind(PM_MEM_MEMFD);
}

/* With transparent huge pages a write populates its whole 2 MiB page,
 * and no other. */
static void test_anon_thp(void **unused)
{
	struct pm_guestmem m;
	struct pm_err err = {0};
	uint64_t bm[NP / 64];

	if (pm_guestmem_create(&m, PM_MEM_ANON, NP * 4096ull, &err))
		fail_msg("%s", err.msg);
	assert_int_equal((uintptr_t)m.base % (2u << 20), 0);
	m.base[4096] = 1;
	scan(&m, bm);
	assert_true(bit(bm, 1));
	for (unsigned i = 512; i < NP; i++)
		assert_false(bit(bm, i));
	print_message("# one write populated %u pages (%s)\n", count(bm, NP),
		      count(bm, NP) == 512 ? "a 2 MiB huge page" : "4 KiB pages");
	assert_true(count(bm, NP) == 1 || count(bm, NP) == 512);
	pm_guestmem_destroy(&m);
}

/* Hugetlb needs reserved huge pages (vm.nr_hugepages); without them the
 * error says so at creation, never a SIGBUS later. */
static void test_hugetlb(void **unused)
{
	struct pm_guestmem m;
	struct pm_err err = {0};
	uint64_t bm[NP / 64];

	if (pm_guestmem_create(&m, PM_MEM_HUGETLB, 4u << 20, &err)) {
		print_message("# %s\n", err.msg);
		assert_true(strstr(err.msg, "nr_hugepages") || strstr(err.msg, "hugetlbfs"));
		return;
	}
	m.base[0] = 1;
	assert_int_equal(pm_guestmem_populated(&m, 0, NP, bm, &err), 0);
	assert_true(bit(bm, 0));
	assert_false(bit(bm, 600));                      /* the second huge page */
	pm_guestmem_destroy(&m);
}

/* Preallocation populates every page, in slices of whole 2 MiB pages on
 * several threads (the last one partial here), and keeps what was written. */
static void check_prealloc(enum pm_mem_kind kind, unsigned threads)
{
	enum { N = NP + 3 };
	struct pm_guestmem m;
	struct pm_guestmem_usage u;
	struct pm_err err = {0};
	uint64_t bm[(N + 63) / 64];

	if (pm_guestmem_create(&m, kind, N * 4096ull, &err))
		fail_msg("%s", err.msg);
	m.base[7 * 4096 + 1] = 42;
	assert_int_equal(pm_guestmem_prealloc(&m, threads, &err), 0);
	assert_int_equal(pm_guestmem_populated(&m, 0, N, bm, &err), 0);
	assert_int_equal(count(bm, N), N);
	assert_int_equal(m.base[7 * 4096 + 1], 42);
	assert_int_equal(m.base[(N - 1) * 4096], 0);
	assert_int_equal(pm_guestmem_usage(&m, &u, &err), 0);
	assert_true(u.resident_bytes >= N * 4096ull);
	pm_guestmem_destroy(&m);
}

static void test_prealloc(void **unused)
{
	check_prealloc(PM_MEM_ANON, 0);
	check_prealloc(PM_MEM_ANON, 3);
	check_prealloc(PM_MEM_MEMFD, 2);
	check_prealloc(PM_MEM_MEMFD, 64);      /* more threads than 2 MiB slices */
}

static void test_bad_sizes(void **unused)
{
	struct pm_guestmem m;
	struct pm_err err = {0};
	enum pm_mem_kind k;

	assert_int_equal(pm_guestmem_create(&m, PM_MEM_ANON, 0, &err), -EINVAL);
	assert_int_equal(pm_guestmem_create(&m, PM_MEM_MEMFD, 4097, &err), -EINVAL);
	assert_int_equal(pm_mem_kind_parse("memfd", &k), 0);
	assert_int_equal(k, PM_MEM_MEMFD);
	assert_int_equal(pm_mem_kind_parse("shm", &k), -EINVAL);
	assert_string_equal(pm_mem_kind_name(PM_MEM_HUGETLB), "hugetlb");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_anon),
		cmocka_unit_test(test_anon_thp),
		cmocka_unit_test(test_memfd),
		cmocka_unit_test(test_hugetlb),
		cmocka_unit_test(test_prealloc),
		cmocka_unit_test(test_bad_sizes),
	};

	return cmocka_run_group_tests_name("guestmem", tests, NULL, NULL);
}
