/* SPDX-License-Identifier: MIT */
/* Parsing of sizes, rates and workload specs for the synthetic VM. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "synvm/synvm.h"

int synvm_parse_seed(const char *s, uint64_t *out, struct pm_err *err)
{
	char *end;

	/* strtoull takes "-1" as 2^64 - 1: refuse a sign, as for sizes. */
	errno = 0;
	*out = strtoull(s, &end, 0);
	if (!*s || *end || errno || strchr(s, '-') || strchr(s, '+') || *s == ' ')
		return pm_err_set(err, EINVAL, "bad seed '%s' (0 to 2^64-1)", s);
	return 0;
}

int synvm_parse_size(const char *s, uint64_t *out, struct pm_err *err)
{
	char *end;
	double v;
	uint64_t mult = 1;

	errno = 0;
	v = strtod(s, &end);
	if (end == s || errno || v < 0 || !isfinite(v))
		return pm_err_set(err, EINVAL, "bad size '%s' (expected e.g. 256M, 1G)", s);
	if (*end) {
		if (!strcasecmp(end, "k") || !strcasecmp(end, "kib") || !strcasecmp(end, "kb"))
			mult = 1ull << 10;
		else if (!strcasecmp(end, "m") || !strcasecmp(end, "mib") || !strcasecmp(end, "mb"))
			mult = 1ull << 20;
		else if (!strcasecmp(end, "g") || !strcasecmp(end, "gib") || !strcasecmp(end, "gb"))
			mult = 1ull << 30;
		else if (!strcasecmp(end, "t") || !strcasecmp(end, "tib"))
			mult = 1ull << 40;
		else
			return pm_err_set(err, EINVAL, "bad size unit in '%s' (K, M, G, T)", s);
	}
	if (v * mult > (double)(1ull << 46))
		return pm_err_set(err, EINVAL, "size '%s' is too large", s);
	*out = (uint64_t)(v * mult);
	return 0;
}

int synvm_parse_rate(const char *s, double *out, struct pm_err *err)
{
	char *end;
	double v, mult = 1;
	char unit[16];
	size_t ul;

	errno = 0;
	v = strtod(s, &end);
	if (end == s || errno || v < 0 || !isfinite(v))
		return pm_err_set(err, EINVAL, "bad rate '%s' (expected e.g. 200MB/s)", s);
	ul = strlen(end);
	if (ul >= 2 && !strcmp(end + ul - 2, "/s"))
		ul -= 2;
	if (ul >= sizeof(unit))
		return pm_err_set(err, EINVAL, "bad rate unit in '%s'", s);
	memcpy(unit, end, ul);
	unit[ul] = '\0';
	if (!*unit || !strcasecmp(unit, "b"))
		mult = 1;
	else if (!strcasecmp(unit, "kb") || !strcasecmp(unit, "k"))
		mult = 1e3;
	else if (!strcasecmp(unit, "mb") || !strcasecmp(unit, "m"))
		mult = 1e6;
	else if (!strcasecmp(unit, "gb") || !strcasecmp(unit, "g"))
		mult = 1e9;
	else if (!strcasecmp(unit, "kib"))
		mult = 1024.0;
	else if (!strcasecmp(unit, "mib"))
		mult = 1048576.0;
	else if (!strcasecmp(unit, "gib"))
		mult = 1073741824.0;
	else
		return pm_err_set(err, EINVAL, "bad rate unit in '%s' (B, KB, MB, GB, KiB, MiB, GiB per s)", s);
	*out = v * mult;
	return 0;
}

static const char *const kind_names[] = { "idle", "seq", "random", "zipf" };

int synvm_parse_workload(const char *spec, struct synvm_workload *w, struct pm_err *err)
{
	char buf[256], *save = NULL, *tok;
	int r = 0;

	*w = (struct synvm_workload){ .kind = SYNVM_IDLE, .rate = 100e6, .hot = 0.10,
				      .threads = 1, .seed = 1 };
	if (!spec || strlen(spec) >= sizeof(buf))
		return pm_err_set(err, EINVAL, "bad workload spec");
	strcpy(buf, spec);
	tok = strtok_r(buf, ",", &save);
	if (!tok)
		return pm_err_set(err, EINVAL, "empty workload spec (idle, seq, random, zipf)");
	unsigned k;
	for (k = 0; k < 4; k++)
		if (!strcmp(tok, kind_names[k]))
			break;
	if (k == 4)
		return pm_err_set(err, EINVAL, "unknown workload '%s' (idle, seq, random, zipf)", tok);
	w->kind = k;
	while (!r && (tok = strtok_r(NULL, ",", &save))) {
		char *eq = strchr(tok, '='), *end;
		if (!eq)
			return pm_err_set(err, EINVAL, "workload option '%s' is not key=value", tok);
		*eq++ = '\0';
		if (!strcmp(tok, "rate")) {
			r = synvm_parse_rate(eq, &w->rate, err);
		} else if (!strcmp(tok, "hot")) {
			double h = strtod(eq, &end);
			if (end == eq || (*end && strcmp(end, "%")) || h <= 0 || h > 100)
				return pm_err_set(err, EINVAL, "bad hot set '%s' (e.g. hot=10%%)", eq);
			w->hot = h / 100;
		} else if (!strcmp(tok, "threads")) {
			long t = strtol(eq, &end, 10);
			if (*end || t < 1 || t > 64)
				return pm_err_set(err, EINVAL, "bad threads '%s' (1..64)", eq);
			w->threads = t;
		} else if (!strcmp(tok, "span")) {
			if (strcmp(eq, "all") && strcmp(eq, "populated"))
				return pm_err_set(err, EINVAL, "bad span '%s' (populated or all)", eq);
			w->all = !strcmp(eq, "all");
		} else if (!strcmp(tok, "seed")) {
			if (synvm_parse_seed(eq, &w->seed, err))
				return -EINVAL;
		} else {
			return pm_err_set(err, EINVAL, "unknown workload option '%s' (rate, hot, threads, seed, span)", tok);
		}
	}
	return r;
}

void synvm_format_workload(const struct synvm_workload *w, char *buf, size_t len)
{
	if (w->kind == SYNVM_IDLE)
		snprintf(buf, len, "idle");
	else if (w->kind == SYNVM_ZIPF)
		snprintf(buf, len, "zipf,rate=%.0fMB/s,hot=%.0f%%,threads=%u%s", w->rate / 1e6, w->hot * 100,
			 w->threads, w->all ? ",span=all" : "");
	else
		snprintf(buf, len, "%s,rate=%.0fMB/s,threads=%u%s", kind_names[w->kind], w->rate / 1e6,
			 w->threads, w->all ? ",span=all" : "");
}
