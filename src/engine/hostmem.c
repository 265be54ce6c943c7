/* SPDX-License-Identifier: MIT */
/* Memory available to this process: the kernel's estimate (MemAvailable)
 * and the memory cgroup's headroom, whichever is smaller. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pmigrate/hostmem.h>

/* The first number in a file ("max" and absent files: UINT64_MAX). */
static uint64_t read_u64(const char *root, const char *dir, const char *file)
{
	char path[1024], buf[64];
	FILE *f;
	uint64_t v = UINT64_MAX;

	/* A path that does not fit names no file we could read. */
	if (snprintf(path, sizeof(path), "%s%s/%s", root, dir, file) >= (int)sizeof(path))
		return UINT64_MAX;
	f = fopen(path, "re");
	if (!f)
		return UINT64_MAX;
	if (fgets(buf, sizeof(buf), f) && strncmp(buf, "max", 3))
		v = strtoull(buf, NULL, 10);
	fclose(f);
	return v;
}

/* This process's cgroup path for a v1 controller ("memory") or v2 (""). */
static int cgroup_path(const char *root, const char *ctl, char *out, size_t len)
{
	char path[512], line[1024];
	FILE *f;
	int found = -1;

	snprintf(path, sizeof(path), "%s/proc/self/cgroup", root);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (found && fgets(line, sizeof(line), f)) {
		/* "id:controllers:path"; v2 is "0::path" */
		char *a = strchr(line, ':'), *b = a ? strchr(a + 1, ':') : NULL;
		if (!b)
			continue;
		*a = *b = '\0';
		b[strcspn(b + 1, "\n") + 1] = '\0';
		if ((!*ctl && !strcmp(line, "0") && !a[1]) || (*ctl && !strcmp(a + 1, ctl))) {
			snprintf(out, len, "%s", b + 1);
			found = 0;
		}
	}
	fclose(f);
	return found;
}

/* Headroom of one cgroup directory (limit - usage), UINT64_MAX if unlimited. */
static uint64_t headroom(const char *root, const char *dir, const char *limit_file,
			 const char *usage_file, uint64_t *limit)
{
	uint64_t lim = read_u64(root, dir, limit_file), use;

	/* v1 writes "no limit" as a huge page-rounded number. */
	if (lim >= (UINT64_MAX >> 2))
		return UINT64_MAX;
	use = read_u64(root, dir, usage_file);
	if (use == UINT64_MAX)
		use = 0;
	*limit = lim;
	return lim > use ? lim - use : 0;
}

int pm_host_mem_available_at(const char *root, uint64_t *bytes, char *what, size_t wl,
			     struct pm_err *err)
{
	char path[512], line[256], cg[512], dir[1100];
	uint64_t avail = UINT64_MAX, lim = 0;
	FILE *f;

	snprintf(path, sizeof(path), "%s/proc/meminfo", root);
	f = fopen(path, "re");
	if (!f)
		return pm_err_set(err, errno, "cannot read %s: %s", path, strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		unsigned long long kb;
		if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
			avail = kb * 1024;
	}
	fclose(f);
	if (avail == UINT64_MAX)
		return pm_err_set(err, EIO, "no MemAvailable in %s", path);
	if (what)
		snprintf(what, wl, "MemAvailable in /proc/meminfo");
	/* cgroup v2, then v1; inside a container the cgroup may be mounted as
	 * the root of the hierarchy, so try the path and the root. */
	const char *ctl[2] = { "", "memory" };
	const char *mnt[2] = { "/sys/fs/cgroup", "/sys/fs/cgroup/memory" };
	const char *lf[2] = { "memory.max", "memory.limit_in_bytes" };
	const char *uf[2] = { "memory.current", "memory.usage_in_bytes" };
	for (unsigned v = 0; v < 2; v++) {
		if (cgroup_path(root, ctl[v], cg, sizeof(cg)))
			continue;
		for (unsigned k = 0; k < 2; k++) {
			snprintf(dir, sizeof(dir), "%s%s", mnt[v], k ? "" : cg);
			uint64_t h = headroom(root, dir, lf[v], uf[v], &lim);
			if (h == UINT64_MAX)
				continue;
			if (h < avail) {
				avail = h;
				if (what)
					snprintf(what, wl, "memory cgroup %s: limit %.1f GiB, %.1f GiB in use",
						 k ? "/" : cg, lim / 1073741824.0, (lim - h) / 1073741824.0);
			}
			break;
		}
	}
	*bytes = avail;
	return 0;
}

int pm_host_mem_available(uint64_t *bytes, char *what, size_t wl, struct pm_err *err)
{
	return pm_host_mem_available_at("", bytes, what, wl, err);
}

int pm_check_guest_memory(uint64_t bytes, struct pm_err *err)
{
	char what[700];
	uint64_t avail;
	int r = pm_host_mem_available(&avail, what, sizeof(what), err);

	if (r)
		return r;
	if (bytes <= avail)
		return 0;
	return pm_err_set(err, ENOMEM, "cannot provide %.1f GiB of guest memory: only %.1f GiB is available "
			  "(%s); ask for less memory or free some", bytes / 1073741824.0,
			  avail / 1073741824.0, what);
}
