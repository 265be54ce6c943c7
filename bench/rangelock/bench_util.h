/* SPDX-License-Identifier: MIT */
/* Small helpers shared by the range-lock benchmarks. */
#ifndef PM_BENCH_RANGELOCK_UTIL_H
#define PM_BENCH_RANGELOCK_UTIL_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BENCH_PAGE 4096u
#define BENCH_MAX_THREADS 256

static inline double bench_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU time consumed by the whole process (all threads), seconds. */
static inline double bench_cpu(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline void bench_sleep(double s)
{
	struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static inline uint64_t bench_rand(uint64_t *s)
{
	/* xorshift64*: fast, good enough to pick ranges */
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545f4914f6cdd1dull;
}

/* Parses "1,2,4" into out[]; returns the count or -1. */
static inline int bench_parse_list(const char *s, int *out, int max)
{
	int n = 0;
	while (*s) {
		char *end;
		long v = strtol(s, &end, 10);
		if (end == s || v <= 0 || v > BENCH_MAX_THREADS || n == max)
			return -1;
		out[n++] = (int)v;
		s = end;
		if (*s == ',')
			s++;
		else if (*s)
			return -1;
	}
	return n;
}

static inline double bench_parse_double(const char *prog, const char *opt,
					const char *v)
{
	char *end;
	double d = strtod(v ? v : "", &end);
	if (!v || end == v || *end || d <= 0) {
		fprintf(stderr, "%s: %s needs a positive number\n", prog, opt);
		exit(2);
	}
	return d;
}

static inline long bench_nproc(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? n : 1;
}

#endif
