/* SPDX-License-Identifier: MIT */
/* Guest memory: creating it in each kind, giving pages back, populating
 * them ahead of a write, and what it costs the host (resident, huge). */
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <pmigrate/guestmem.h>

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004u
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23                  /* Linux 5.14 */
#endif

#define PAGE 4096ull
#define THP (2ull << 20)

static const char *const kind_names[] = { "anon", "memfd", "hugetlb" };

const char *pm_mem_kind_name(enum pm_mem_kind k)
{
	return (unsigned)k < 3 ? kind_names[k] : "?";
}

int pm_mem_kind_parse(const char *s, enum pm_mem_kind *out)
{
	for (unsigned i = 0; i < 3; i++)
		if (s && !strcmp(s, kind_names[i])) {
			*out = (enum pm_mem_kind)i;
			return 0;
		}
	return -EINVAL;
}

/* Free huge pages of the default size, for the error message. */
static long free_hugepages(uint64_t *size)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[128];
	long n = -1;

	*size = THP;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long v;

		if (sscanf(line, "HugePages_Free: %lu", &v) == 1)
			n = (long)v;
		else if (sscanf(line, "Hugepagesize: %lu kB", &v) == 1)
			*size = (uint64_t)v << 10;
	}
	fclose(f);
	return n;
}

/* Anonymous memory 2 MiB aligned, so that transparent huge pages can back
 * all of it: map a little more and trim. */
static uint8_t *map_anon(uint64_t bytes)
{
	uint64_t len = bytes + THP;
	uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	uintptr_t a;

	if (p == MAP_FAILED)
		return NULL;
	a = ((uintptr_t)p + THP - 1) & ~(uintptr_t)(THP - 1);
	if (a > (uintptr_t)p)
		munmap(p, a - (uintptr_t)p);
	if ((uintptr_t)p + len > a + bytes)
		munmap((uint8_t *)(a + bytes), (uintptr_t)p + len - (a + bytes));
	return (uint8_t *)a;
}

int pm_guestmem_create(struct pm_guestmem *m, enum pm_mem_kind kind, uint64_t bytes,
		       struct pm_err *err)
{
	memset(m, 0, sizeof(*m));
	m->fd = -1;
	m->pagemap_fd = -1;
	m->scan_ok = -1;
	m->kind = kind;
	m->bytes = bytes;
	m->page_size = PAGE;
	if (bytes == 0 || bytes % PAGE)
		return pm_err_set(err, EINVAL, "guest memory of %llu bytes: must be a positive multiple of 4 KiB",
				  (unsigned long long)bytes);
	switch (kind) {
	case PM_MEM_ANON:
		m->base = map_anon(bytes);
		if (!m->base)
			return pm_err_set(err, errno, "cannot map %llu MiB of anonymous guest memory: %s",
					  (unsigned long long)(bytes >> 20), strerror(errno));
		/* Where THP is "madvise" this is what gives 2 MiB pages. */
		madvise(m->base, bytes, MADV_HUGEPAGE);
		break;
	case PM_MEM_MEMFD:
		m->fd = memfd_create("pmigrate-guest", MFD_CLOEXEC);
		if (m->fd < 0 || ftruncate(m->fd, (off_t)bytes) < 0) {
			int e = errno;

			pm_guestmem_destroy(m);
			return pm_err_set(err, e, "cannot create a memfd of %llu MiB for guest memory: %s",
					  (unsigned long long)(bytes >> 20), strerror(e));
		}
		m->base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
		if (m->base == MAP_FAILED) {
			int e = errno;

			m->base = NULL;
			pm_guestmem_destroy(m);
			return pm_err_set(err, e, "cannot map the guest memfd: %s", strerror(e));
		}
		/* Effective where shmem_enabled is "advise" or "within_size". */
		madvise(m->base, bytes, MADV_HUGEPAGE);
		break;
	case PM_MEM_HUGETLB: {
		uint64_t hsize;
		long nfree = free_hugepages(&hsize);

		m->page_size = hsize;
		if (bytes % hsize)
			return pm_err_set(err, EINVAL, "hugetlb guest memory must be a multiple of the %llu KiB huge page",
					  (unsigned long long)(hsize >> 10));
		m->fd = memfd_create("pmigrate-guest", MFD_CLOEXEC | MFD_HUGETLB);
		if (m->fd < 0 || ftruncate(m->fd, (off_t)bytes) < 0) {
			int e = errno;

			pm_guestmem_destroy(m);
			return pm_err_set(err, e, "cannot create a hugetlbfs memfd: %s", strerror(e));
		}
		/* A shared hugetlb mapping reserves its pages here: too few
		 * free huge pages fail now, not with a SIGBUS later. */
		m->base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
		if (m->base == MAP_FAILED) {
			int e = errno;

			m->base = NULL;
			pm_guestmem_destroy(m);
			return pm_err_set(err, e, "cannot reserve %llu huge pages of %llu KiB for guest memory: %s "
					  "(%ld free; raise vm.nr_hugepages)",
					  (unsigned long long)(bytes / hsize), (unsigned long long)(hsize >> 10),
					  strerror(e), nfree);
		}
		break;
	}
	default:
		return pm_err_set(err, EINVAL, "unknown guest memory kind %d", (int)kind);
	}
	/* For the populated scan; without it every page counts as populated. */
	m->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	return 0;
}

void pm_guestmem_destroy(struct pm_guestmem *m)
{
	if (m->base)
		munmap(m->base, m->bytes);
	if (m->fd >= 0)
		close(m->fd);
	if (m->pagemap_fd >= 0)
		close(m->pagemap_fd);
	m->base = NULL;
	m->fd = m->pagemap_fd = -1;
}

static int range_ok(const struct pm_guestmem *m, uint64_t first, uint64_t n, struct pm_err *err)
{
	if (first > m->bytes / PAGE || n > m->bytes / PAGE - first)
		return pm_err_set(err, EINVAL, "pages [%llu, +%llu) lie outside guest memory of %llu pages",
				  (unsigned long long)first, (unsigned long long)n,
				  (unsigned long long)(m->bytes / PAGE));
	return 0;
}

int pm_guestmem_discard(const struct pm_guestmem *m, uint64_t first, uint64_t n,
			struct pm_err *err)
{
	uint64_t off = first * PAGE, len = n * PAGE;
	int r = range_ok(m, first, n, err);

	if (r || n == 0)
		return r;
	switch (m->kind) {
	case PM_MEM_ANON:
		if (madvise(m->base + off, len, MADV_DONTNEED) < 0)
			return pm_err_set(err, errno, "MADV_DONTNEED on guest pages [%llu, +%llu): %s",
					  (unsigned long long)first, (unsigned long long)n, strerror(errno));
		return 0;
	case PM_MEM_MEMFD:
		if (fallocate(m->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0)
			return pm_err_set(err, errno, "punching a hole at guest pages [%llu, +%llu): %s",
					  (unsigned long long)first, (unsigned long long)n, strerror(errno));
		return 0;
	case PM_MEM_HUGETLB: {
		uint64_t h = m->page_size, a = (off + h - 1) / h * h, b = (off + len) / h * h;

		if (a >= b) {
			memset(m->base + off, 0, len);
			return 0;
		}
		memset(m->base + off, 0, a - off);
		memset(m->base + b, 0, off + len - b);
		if (fallocate(m->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)a, (off_t)(b - a)) < 0)
			memset(m->base + a, 0, b - a);
		return 0;
	}
	}
	return pm_err_set(err, EINVAL, "unknown guest memory kind");
}

int pm_guestmem_populate(const struct pm_guestmem *m, uint64_t first, uint64_t n,
			 struct pm_err *err)
{
	int r = range_ok(m, first, n, err);

	if (r || n == 0)
		return r;
	/* Best effort: kernels before 5.14 lack it and the write faults the
	 * pages in anyway. */
	if (madvise(m->base + first * PAGE, n * PAGE, MADV_POPULATE_WRITE) < 0 &&
	    errno != EINVAL)
		return pm_err_set(err, errno, "populating guest pages [%llu, +%llu): %s",
				  (unsigned long long)first, (unsigned long long)n, strerror(errno));
	return 0;
}

struct prealloc_slice {
	const struct pm_guestmem *m;
	uint64_t first, n;      /* 4 KiB pages */
	bool by_writes;         /* the kernel lacks MADV_POPULATE_WRITE */
	bool threaded;
	int r;                  /* 0 or -errno */
};

static void *prealloc_slice(void *arg)
{
	struct prealloc_slice *s = arg;
	volatile uint8_t *p = s->m->base + s->first * PAGE;

	if (s->by_writes) {
		for (uint64_t i = 0; i < s->n; i++)
			p[i * PAGE] = p[i * PAGE];
	} else if (s->n && madvise((void *)p, s->n * PAGE, MADV_POPULATE_WRITE) < 0) {
		s->r = -errno;
	}
	return NULL;
}

int pm_guestmem_prealloc(const struct pm_guestmem *m, unsigned nthreads, struct pm_err *err)
{
	enum { MAX_THREADS = 16 };
	struct prealloc_slice s[MAX_THREADS];
	pthread_t tid[MAX_THREADS];
	/* Slices of whole backing pages (a huge page is never split). */
	uint64_t unit = (m->page_size > THP ? m->page_size : THP) / PAGE;
	uint64_t units = (m->bytes / PAGE + unit - 1) / unit, pages = m->bytes / PAGE, next = 0;
	/* An advice the kernel does not know fails even on no bytes (before 5.14). */
	bool by_writes = madvise(m->base, 0, MADV_POPULATE_WRITE) < 0 && errno == EINVAL;
	int r = 0;

	if (nthreads == 0) {
		long c = sysconf(_SC_NPROCESSORS_ONLN);
		nthreads = c > 0 ? (unsigned)c : 1;
	}
	if (nthreads > MAX_THREADS)
		nthreads = MAX_THREADS;
	if (nthreads > units)
		nthreads = (unsigned)units;
	for (unsigned i = 0; i < nthreads; i++) {
		uint64_t end = (units * (i + 1) / nthreads) * unit;

		if (end > pages)
			end = pages;
		s[i] = (struct prealloc_slice){ .m = m, .first = next, .n = end - next, .by_writes = by_writes };
		next = end;
		/* The last slice runs here, and any whose thread cannot start. */
		s[i].threaded = i + 1 < nthreads && pthread_create(&tid[i], NULL, prealloc_slice, &s[i]) == 0;
		if (!s[i].threaded)
			prealloc_slice(&s[i]);
	}
	for (unsigned i = 0; i < nthreads; i++) {
		if (s[i].threaded)
			pthread_join(tid[i], NULL);
		if (s[i].r && !r)
			r = pm_err_set(err, -s[i].r, "preallocating %llu MiB of guest memory: %s",
				       (unsigned long long)(m->bytes >> 20), strerror(-s[i].r));
	}
	return r;
}

int pm_guestmem_usage(const struct pm_guestmem *m, struct pm_guestmem_usage *u,
		      struct pm_err *err)
{
	uintptr_t lo = (uintptr_t)m->base, hi = lo + m->bytes;
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	bool in = false;
	uint64_t rss = 0, huge = 0, hugetlb = 0;
	struct stat st;

	memset(u, 0, sizeof(*u));
	if (!f)
		return pm_err_set(err, errno, "cannot read /proc/self/smaps: %s", strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b, kb;
		char key[64];

		/* A mapping's header ("7f00-7f80 rw-p ..."); keys start with a
		 * letter and never parse as "hex-hex". */
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2) {
			in = a < hi && b > lo;
			continue;
		}
		if (!in || sscanf(line, "%63[^:]: %lu kB", key, &kb) != 2)
			continue;
		if (!strcmp(key, "Rss"))
			rss += (uint64_t)kb << 10;
		else if (!strcmp(key, "AnonHugePages") || !strcmp(key, "ShmemPmdMapped") ||
			 !strcmp(key, "FilePmdMapped"))
			huge += (uint64_t)kb << 10;
		else if (!strcmp(key, "Private_Hugetlb") || !strcmp(key, "Shared_Hugetlb"))
			hugetlb += (uint64_t)kb << 10;
	}
	fclose(f);
	u->resident_bytes = rss + hugetlb;
	u->huge_bytes = huge + hugetlb;
	/* A memfd's pages count whether mapped here or not. */
	if (m->fd >= 0 && fstat(m->fd, &st) == 0 && (uint64_t)st.st_blocks * 512 > rss)
		u->resident_bytes = (uint64_t)st.st_blocks * 512;
	if (m->kind == PM_MEM_HUGETLB && u->huge_bytes < u->resident_bytes)
		u->huge_bytes = u->resident_bytes;
	return 0;
}
