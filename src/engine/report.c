/* SPDX-License-Identifier: MIT */
/* Migration reports for people (a table) and programs (JSON), the memory
 * dump used to verify migrations, and the names of the engine's options. */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <stdbool.h>
#include <unistd.h>
#include <pmigrate/guestmem.h>
#include <pmigrate/disk.h>
#include <pmigrate/migrate.h>
#include "engine/report.h"

static const char *const compress_names[] = { "none", "lz4", "zstd" };
static const char *const nonconverge_names[] = { "throttle", "force", "abort" };

/* Index of s in names, or -EINVAL. */
static int name_index(const char *const *names, int n, const char *s)
{
	for (int i = 0; i < n; i++)
		if (!strcmp(names[i], s))
			return i;
	return -EINVAL;
}

const char *pm_compress_name(enum pm_compress c)
{
	return (unsigned)c < 3 ? compress_names[c] : "none";
}

int pm_compress_parse(const char *s, enum pm_compress *out)
{
	int i = name_index(compress_names, 3, s);

	if (i < 0)
		return i;
	*out = i;
	return 0;
}

const char *pm_nonconverge_name(enum pm_nonconverge p)
{
	return (unsigned)p < 3 ? nonconverge_names[p] : "throttle";
}

int pm_nonconverge_parse(const char *s, enum pm_nonconverge *out)
{
	int i = name_index(nonconverge_names, 3, s);

	if (i < 0)
		return i;
	*out = i;
	return 0;
}

/* A dump file: guest memory and disks are secret, so private, never
 * through a symlink someone planted, never into a FIFO or device. */
static int dump_open(const char *path, struct pm_err *err)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
	struct stat st;

	if (fd < 0 && errno == ELOOP)
		return pm_err_set(err, ELOOP, "cannot create memory dump %s: it is a symbolic link", path);
	if (fd < 0)
		return pm_err_set(err, errno, "cannot create memory dump %s: %s", path, strerror(errno));
	if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
		close(fd);
		return pm_err_set(err, EINVAL, "cannot create memory dump %s: not a regular file", path);
	}
	if (fchmod(fd, 0600) || ftruncate(fd, 0)) {
		int e = errno;
		close(fd);
		return pm_err_set(err, e, "cannot create memory dump %s: %s", path, strerror(e));
	}
	return fd;
}

/* Disk i of be to PATH.disk<i>: its data ranges, holes left holes. */
static int dump_disk(const struct pm_backend *be, unsigned i, const char *path, struct pm_err *err)
{
	const struct pm_blockdev *bd = &be->disks[i];
	char name[4096 + 16];
	uint8_t *buf;
	uint64_t off = 0;
	int fd, r = 0;

	snprintf(name, sizeof(name), "%s.disk%u", path, i);
	fd = dump_open(name, err);
	if (fd < 0)
		return fd;
	buf = malloc(1u << 20);
	if (!buf || ftruncate(fd, (off_t)bd->size))
		r = pm_err_set(err, buf ? errno : ENOMEM, "writing disk dump %s: %s", name,
			       strerror(buf ? errno : ENOMEM));
	while (!r && off < bd->size) {
		uint64_t data, hole;
		r = pm_disk_next_data(bd->fd, off, bd->size, &data, &hole, err);
		if (r || data >= bd->size)
			break;
		for (uint64_t o = data; !r && o < hole;) {
			size_t k = hole - o < (1u << 20) ? hole - o : (1u << 20);
			ssize_t n = pread(bd->fd, buf, k, (off_t)o);
			if (n > 0 && pwrite(fd, buf, n, (off_t)o) != n)
				n = -1;
			if (n <= 0)
				r = pm_err_set(err, n < 0 ? errno : EIO, "writing disk dump %s: %s", name,
					       n < 0 ? strerror(errno) : "the image ended early");
			o += n > 0 ? (uint64_t)n : 0;
		}
		off = hole;
	}
	free(buf);
	if (close(fd) && !r)
		r = pm_err_set(err, errno, "writing disk dump %s: %s", name, strerror(errno));
	return r;
}

int pm_dump_memory(const struct pm_backend *be, const char *path, struct pm_err *err)
{
	int fd = dump_open(path, err);

	if (fd < 0)
		return fd;
	for (unsigned i = 0; i < be->nregions; i++) {
		const uint8_t *p = be->regions[i].host;
		uint64_t left = be->regions[i].npages * PM_PAGE_SIZE;
		while (left) {
			ssize_t n = write(fd, p, left > (1u << 30) ? (1u << 30) : left);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				int e = n < 0 ? errno : EIO;
				close(fd);
				return pm_err_set(err, e, "writing memory dump %s: %s", path, strerror(e));
			}
			p += n;
			left -= n;
		}
	}
	if (close(fd))
		return pm_err_set(err, errno, "writing memory dump %s: %s", path, strerror(errno));
	for (unsigned i = 0; i < be->ndisks; i++) {
		int r = dump_disk(be, i, path, err);
		if (r)
			return r;
	}
	return 0;
}

static json_object *round_json(const struct pm_round_stat *s)
{
	json_object *o = json_object_new_object();

	json_object_object_add(o, "round", json_object_new_int(s->round));
	json_object_object_add(o, "start_ms", json_object_new_double(s->start_ms));
	json_object_object_add(o, "dirty_at_start", json_object_new_int64(s->dirty_at_start));
	json_object_object_add(o, "pages", json_object_new_int64(s->pages));
	json_object_object_add(o, "zero_pages", json_object_new_int64(s->zero_pages));
	json_object_object_add(o, "unpopulated_pages", json_object_new_int64(s->unpopulated_pages));
	json_object_object_add(o, "bytes", json_object_new_int64(s->bytes));
	json_object_object_add(o, "duration_ms", json_object_new_double(s->duration_ms));
	json_object_object_add(o, "final", json_object_new_boolean(s->final));
	return o;
}

static double jd(json_object *o, const char *k);
static uint64_t ju(json_object *o, const char *k);
static void js(json_object *o, const char *k, char *buf, size_t len);

/* Disks: a list, and per round the blocks (docs/control.md). */
static void disks_json(const struct pm_report *r, json_object *o, json_object *rounds)
{
	json_object *a = json_object_new_array();

	for (unsigned i = 0; i < r->ndisks && i < PM_REPORT_MAX_DISKS; i++) {
		const struct pm_disk_report *d = &r->disks[i];
		json_object *e = json_object_new_object();
		json_object_object_add(e, "name", json_object_new_string(d->name));
		json_object_object_add(e, "size_bytes", json_object_new_int64((int64_t)d->size_bytes));
		json_object_object_add(e, "block_bytes", json_object_new_int64((int64_t)d->block_bytes));
		json_object_object_add(e, "blocks", json_object_new_int64((int64_t)d->blocks));
		json_object_object_add(e, "zero_blocks", json_object_new_int64((int64_t)d->zero_blocks));
		json_object_object_add(e, "unallocated_blocks", json_object_new_int64((int64_t)d->unallocated_blocks));
		json_object_object_add(e, "bytes", json_object_new_int64((int64_t)d->bytes));
		json_object_object_add(e, "busy_ms", json_object_new_double(d->busy_ms));
		json_object_array_add(a, e);
	}
	json_object_object_add(o, "disks", a);
	json_object_object_add(o, "shared_storage", json_object_new_boolean(r->shared_storage));
	if (r->disk_flush_ms > 0)
		json_object_object_add(o, "disk_flush_ms", json_object_new_double(r->disk_flush_ms));
	if (r->role && !strcmp(r->role, "destination"))
		json_object_object_add(o, "disk_sync_ms", json_object_new_double(r->disk_sync_ms));
	for (size_t i = 0; i < json_object_array_length(rounds); i++) {
		json_object *e = json_object_array_get_idx(rounds, i), *v;
		unsigned k = json_object_object_get_ex(e, "round", &v) ? json_object_get_int(v) : 0;
		if (!k || k > PM_MAX_ROUNDS)
			continue;
		const struct pm_round_stat *s = &r->rounds[k - 1];
		json_object_object_add(e, "disk_dirty_at_start", json_object_new_int64((int64_t)s->disk_dirty_at_start));
		json_object_object_add(e, "disk_blocks", json_object_new_int64((int64_t)s->disk_blocks));
		json_object_object_add(e, "disk_bytes", json_object_new_int64((int64_t)s->disk_bytes));
	}
}

static void disks_from_json(json_object *o, struct pm_report *r)
{
	json_object *a, *v, *rounds;

	r->shared_storage = json_object_object_get_ex(o, "shared_storage", &v) && json_object_get_boolean(v);
	r->disk_flush_ms = jd(o, "disk_flush_ms");
	r->disk_sync_ms = jd(o, "disk_sync_ms");
	if (json_object_object_get_ex(o, "disks", &a) && json_object_is_type(a, json_type_array))
		for (size_t i = 0; i < json_object_array_length(a) && i < PM_REPORT_MAX_DISKS; i++) {
			json_object *e = json_object_array_get_idx(a, i);
			struct pm_disk_report *d = &r->disks[i];
			js(e, "name", d->name, sizeof(d->name));
			d->size_bytes = ju(e, "size_bytes");
			d->block_bytes = ju(e, "block_bytes");
			d->blocks = ju(e, "blocks");
			d->zero_blocks = ju(e, "zero_blocks");
			d->unallocated_blocks = ju(e, "unallocated_blocks");
			d->bytes = ju(e, "bytes");
			d->busy_ms = jd(e, "busy_ms");
			r->ndisks = i + 1;
		}
	if (json_object_object_get_ex(o, "rounds", &rounds) && json_object_is_type(rounds, json_type_array))
		for (size_t i = 0; i < json_object_array_length(rounds) && i < PM_MAX_ROUNDS; i++) {
			json_object *e = json_object_array_get_idx(rounds, i);
			r->rounds[i].disk_dirty_at_start = ju(e, "disk_dirty_at_start");
			r->rounds[i].disk_blocks = ju(e, "disk_blocks");
			r->rounds[i].disk_bytes = ju(e, "disk_bytes");
		}
}

static void disks_print(const struct pm_report *r, FILE *f)
{
	for (unsigned i = 0; i < r->ndisks && i < PM_REPORT_MAX_DISKS; i++) {
		const struct pm_disk_report *d = &r->disks[i];
		if (r->shared_storage) {
			fprintf(f, "disk %-7u %s: %.0f MiB, shared storage: nothing sent\n", i, d->name,
				d->size_bytes / 1048576.0);
			continue;
		}
		fprintf(f, "disk %-7u %s: %.0f MiB in %llu KiB blocks; %.1f MB sent: %llu data blocks, "
			"%llu zero, %llu unallocated (holes)%s", i, d->name, d->size_bytes / 1048576.0,
			(unsigned long long)(d->block_bytes >> 10), d->bytes / 1e6, (unsigned long long)d->blocks,
			(unsigned long long)d->zero_blocks, (unsigned long long)d->unallocated_blocks,
			d->busy_ms > 0 ? "" : "\n");
		if (d->busy_ms > 0)
			fprintf(f, ", %.0f ms of channel time\n", d->busy_ms);
	}
	if (r->shared_storage && r->disk_flush_ms > 0)
		fprintf(f, "disk flush   %.1f ms at the pause (shared storage)\n", r->disk_flush_ms);
	if (r->ndisks && r->role && !strcmp(r->role, "destination") && !r->shared_storage)
		fprintf(f, "disk sync    %.1f ms (fsync before DONE)\n", r->disk_sync_ms);
}

/* "12.3 disk fsync + " when the destination synced disk images. */
static const char *dk_sync_text(const struct pm_downtime_breakdown *b, const struct pm_report *r)
{
	static __thread char buf[48];

	if (!r->ndisks || r->shared_storage)
		return "";
	snprintf(buf, sizeof(buf), "%.1f disk fsync + ", b->dst_sync_ms);
	return buf;
}

static const char *const phase_names[] = { "precopy", "paused", "completing", "done" };

/* Double rounded to 0.1 (keeps a timeline's JSON short). */
static json_object *d1(double v)
{
	char b[32];

	snprintf(b, sizeof(b), "%.1f", v);
	return json_object_new_double_s(v, b);
}

/* Samples with rates over the interval since the previous sample. */
static json_object *timeline_json(const struct pm_report *r)
{
	json_object *tl = json_object_new_object(), *a = json_object_new_array();
	unsigned nch = r->channels < PM_SAMPLE_CHANNELS ? r->channels : PM_SAMPLE_CHANNELS;

	for (unsigned i = 0; i < r->nsamples && i < PM_MAX_SAMPLES; i++) {
		const struct pm_sample *s = &r->samples[i], *p = i ? &r->samples[i - 1] : NULL;
		double dt = p ? s->t_ms - p->t_ms : 0;
		json_object *o = json_object_new_object(), *ch = json_object_new_array();

		json_object_object_add(o, "t_ms", d1(s->t_ms));
		json_object_object_add(o, "round", json_object_new_int(s->round));
		json_object_object_add(o, "phase", json_object_new_string(
			s->phase < 4 ? phase_names[s->phase] : "?"));
		json_object_object_add(o, "dirty_left", json_object_new_int64(s->dirty_left));
		json_object_object_add(o, "write_mbps", d1(dt > 0 && s->guest_pages_written >= p->guest_pages_written ?
			(s->guest_pages_written - p->guest_pages_written) * (double)PM_PAGE_SIZE / 1e3 / dt : 0));
		json_object_object_add(o, "throttle_pct", json_object_new_int(s->throttle_pct));
		for (unsigned k = 0; k < nch; k++)
			json_object_array_add(ch, d1(dt > 0 ? (s->channel_bytes[k] - p->channel_bytes[k]) / 1e3 / dt : 0));
		json_object_object_add(o, "channel_mbps", ch);
		json_object_array_add(a, o);
	}
	json_object_object_add(tl, "interval_ms", json_object_new_double(r->sample_interval_ms));
	json_object_object_add(tl, "samples", a);
	return tl;
}

char *pm_report_to_json(const struct pm_report *r)
{
	json_object *o = json_object_new_object(), *rounds = json_object_new_array();
	json_object *chb = json_object_new_array();
	char *s;

	json_object_object_add(o, "role", json_object_new_string(r->role ? r->role : "source"));
	json_object_object_add(o, "status", json_object_new_string(
		!r->status ? "completed" : r->status == PM_UNKNOWN ? "unknown" : "failed"));
	if (r->status)
		json_object_object_add(o, "error", json_object_new_string(r->error));
	json_object_object_add(o, "total_time_ms", json_object_new_double(r->total_time_ms));
	json_object_object_add(o, "downtime_ms", json_object_new_double(r->downtime_ms));
	json_object_object_add(o, "setup_ms", json_object_new_double(r->setup_ms));
	if (r->verify_dump_ms > 0)
		json_object_object_add(o, "verify_dump_ms", json_object_new_double(r->verify_dump_ms));
	for (unsigned i = 0; i < r->nrounds && i < PM_MAX_ROUNDS; i++)
		if (r->rounds[i].round)
			json_object_array_add(rounds, round_json(&r->rounds[i]));
	json_object_object_add(o, "rounds", rounds);
	json_object_object_add(o, "nrounds", json_object_new_int(r->nrounds));
	json_object_object_add(o, "bytes_sent", json_object_new_int64(r->bytes_sent));
	json_object_object_add(o, "pages_sent", json_object_new_int64(r->pages_sent));
	json_object_object_add(o, "zero_pages", json_object_new_int64(r->zero_pages));
	json_object_object_add(o, "unpopulated_pages", json_object_new_int64(r->unpopulated_pages));
	json_object_object_add(o, "frames", json_object_new_int64(r->frames));
	json_object_object_add(o, "vm_pages", json_object_new_int64(r->vm_pages));
	json_object_object_add(o, "channels", json_object_new_int(r->channels));
	for (unsigned i = 0; i < r->channels && i < PM_MAX_CHANNELS; i++)
		json_object_array_add(chb, json_object_new_int64(r->channel_bytes[i]));
	json_object_object_add(o, "channel_bytes", chb);
	json_object_object_add(o, "throughput_mbps", json_object_new_double(r->throughput_mbps));
	json_object_object_add(o, "barrier", json_object_new_boolean(r->barrier));
	json_object_object_add(o, "serial", json_object_new_boolean(r->serial));
	json_object_object_add(o, "compress", json_object_new_string(pm_compress_name(r->compress)));
	if (r->switchover_reason[0])
		json_object_object_add(o, "switchover_reason", json_object_new_string(r->switchover_reason));
	json_object_object_add(o, "throttle_pct", json_object_new_int(r->throttle_pct));
	if (r->dirty_method[0])
		json_object_object_add(o, "dirty_method", json_object_new_string(r->dirty_method));
	if (r->role && !strcmp(r->role, "destination")) {
		json_object_object_add(o, "stale_pages", json_object_new_int64(r->stale_pages));
		json_object_object_add(o, "rejected_connections", json_object_new_int(r->rejected_connections));
	}
	json_object_object_add(o, "tls", json_object_new_string(r->tls[0] ? r->tls : "none"));
	json_object_object_add(o, "tls_records", json_object_new_string(r->tls_records[0] ? r->tls_records : "none"));
	json_object_object_add(o, "failover", json_object_new_boolean(r->failover));
	json_object_object_add(o, "mptcp", json_object_new_boolean(r->mptcp));
	json_object *lost = json_object_new_array();
	for (unsigned i = 0; i < r->nlost && i < PM_MAX_LOST; i++) {
		const struct pm_lost_channel *l = &r->lost[i];
		json_object *e = json_object_new_object();
		json_object_object_add(e, "channel", json_object_new_int(l->channel));
		json_object_object_add(e, "at_ms", json_object_new_double(l->at_ms));
		json_object_object_add(e, "phase", json_object_new_string(l->phase));
		json_object_object_add(e, "reason", json_object_new_string(l->reason));
		if (l->reconnected_ms > 0)
			json_object_object_add(e, "reconnected_ms", json_object_new_double(l->reconnected_ms));
		json_object_array_add(lost, e);
	}
	json_object_object_add(o, "lost_channels", lost);
	if (r->nlost > PM_MAX_LOST)
		json_object_object_add(o, "lost_total", json_object_new_int(r->nlost));
	json_object_object_add(o, "resent_pages", json_object_new_int64(r->resent_pages));
	if (r->pause_at_ms > 0)
		json_object_object_add(o, "pause_at_ms", json_object_new_double(r->pause_at_ms));
	if (r->write_rate_asked_mbps > 0 || r->write_rate_mbps > 0) {
		json_object_object_add(o, "write_rate_asked_mbps", json_object_new_double(r->write_rate_asked_mbps));
		json_object_object_add(o, "write_rate_mbps", json_object_new_double(r->write_rate_mbps));
	}
	if (r->ndisks)
		disks_json(r, o, rounds);
	if (r->nsamples)
		json_object_object_add(o, "timeline", timeline_json(r));
	const struct pm_downtime_breakdown *b = &r->downtime_breakdown;
	json_object *bd = json_object_new_object();
	json_object_object_add(bd, "pause_ms", json_object_new_double(b->pause_ms));
	json_object_object_add(bd, "final_sync_ms", json_object_new_double(b->final_sync_ms));
	json_object_object_add(bd, "final_send_ms", json_object_new_double(b->final_send_ms));
	json_object_object_add(bd, "state_ms", json_object_new_double(b->state_ms));
	json_object_object_add(bd, "dst_drain_ms", json_object_new_double(b->dst_drain_ms));
	json_object_object_add(bd, "dst_sync_ms", json_object_new_double(b->dst_sync_ms));
	json_object_object_add(bd, "dst_load_ms", json_object_new_double(b->dst_load_ms));
	json_object_object_add(bd, "dst_resume_ms", json_object_new_double(b->dst_resume_ms));
	json_object_object_add(bd, "network_ms", json_object_new_double(b->network_ms));
	json_object_object_add(o, "downtime_breakdown", bd);
	json_object *m = json_object_new_object();
	json_object_object_add(m, "resident_bytes", json_object_new_int64((int64_t)r->mem.resident_bytes));
	json_object_object_add(m, "huge_bytes", json_object_new_int64((int64_t)r->mem.huge_bytes));
	json_object_object_add(o, "guest_memory", m);
	if (r->dst_data_pages && r->dst_data_pages != UINT64_MAX)
		json_object_object_add(o, "dst_data_pages", json_object_new_int64((int64_t)r->dst_data_pages));
	json_object_object_add(o, "engine_bytes", json_object_new_int64((int64_t)r->engine_bytes));
	if (r->verify) {
		json_object_object_add(o, "verified", json_object_new_boolean(r->verified));
		json_object_object_add(o, "verify_ms", json_object_new_double(r->verify_ms));
		if (r->verify_error[0])
			json_object_object_add(o, "verify_error", json_object_new_string(r->verify_error));
	}
	json_object_object_add(o, "engine_bytes_per_page",
			       json_object_new_double(r->vm_pages ? (double)r->engine_bytes / r->vm_pages : 0));
	s = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED));
	json_object_put(o);
	return s;
}

void pm_report_print(const struct pm_report *r, FILE *f)
{
	bool dk = r->ndisks && !r->shared_storage;

	fprintf(f, "%-6s %12s %12s %10s %12s %12s %10s", "round", "dirty@start", "pages sent",
		"zero", "unpopulated", "MB sent", "ms");
	if (dk)
		fprintf(f, " %12s %12s", "disk dirty", "blocks sent");
	fputc('\n', f);
	for (unsigned i = 0; i < r->nrounds && i < PM_MAX_ROUNDS; i++) {
		const struct pm_round_stat *s = &r->rounds[i];
		if (!s->round)
			continue;
		fprintf(f, "%-6u %12llu %12llu %10llu %12llu %12.1f %10.1f", s->round,
			(unsigned long long)s->dirty_at_start, (unsigned long long)s->pages,
			(unsigned long long)s->zero_pages, (unsigned long long)s->unpopulated_pages,
			s->bytes / 1e6, s->duration_ms);
		if (dk)
			fprintf(f, " %12llu %12llu", (unsigned long long)s->disk_dirty_at_start,
				(unsigned long long)s->disk_blocks);
		fprintf(f, "%s\n", s->final ? "  (paused)" : "");
	}
	fprintf(f, "status       %s%s%s\n",
		!r->status ? "completed" : r->status == PM_UNKNOWN ? "UNKNOWN" : "FAILED",
		r->status ? ": " : "", r->status ? r->error : "");
	fprintf(f, "total time   %.1f ms (setup %.1f ms)\n", r->total_time_ms, r->setup_ms);
	fprintf(f, "downtime     %.1f ms (engine: pause to destination running)\n", r->downtime_ms);
	if (r->verify_dump_ms > 0)
		fprintf(f, "             (%.1f ms of verification -- dumps, digests -- excluded)\n", r->verify_dump_ms);
	fprintf(f, "sent         %.1f MB in %llu frames: %llu data pages, %llu zero pages, %llu never populated\n",
		r->bytes_sent / 1e6, (unsigned long long)r->frames,
		(unsigned long long)r->pages_sent, (unsigned long long)r->zero_pages,
		(unsigned long long)r->unpopulated_pages);
	fprintf(f, "throughput   %.1f MB/s over %u channel%s%s%s\n", r->throughput_mbps, r->channels,
		r->channels == 1 ? "" : "s", r->barrier ? ", barrier at round ends" : ", no round barrier",
		r->serial ? ", serial (no pipelining)" : "");
	if (r->tls[0] && strcmp(r->tls, "none"))
		fprintf(f, "security     TLS 1.3 (%s), records made by %s\n", r->tls,
			!strcmp(r->tls_records, "ktls") ? "the kernel (kTLS)" : "OpenSSL (userspace)");
	else if (r->tls[0])
		fprintf(f, "security     none (plain TCP)\n");
	if (r->switchover_reason[0])
		fprintf(f, "switchover   %s%s\n", r->switchover_reason,
			r->throttle_pct ? " (vCPUs throttled)" : "");
	for (unsigned i = 0; i < r->nlost && i < PM_MAX_LOST; i++) {
		const struct pm_lost_channel *l = &r->lost[i];
		fprintf(f, "lost         channel %u at %.1f ms (%s): %s", l->channel, l->at_ms, l->phase, l->reason);
		if (l->reconnected_ms > 0)
			fprintf(f, "; back at %.1f ms", l->reconnected_ms);
		fprintf(f, "\n");
	}
	if (r->resent_pages)
		fprintf(f, "failover     %llu pages sent again for lost channels\n",
			(unsigned long long)r->resent_pages);
	if (r->write_rate_asked_mbps > 0 || r->write_rate_mbps > 0)
		fprintf(f, "guest writes %.1f MB/s while migrating (asked %.1f MB/s)%s%s\n", r->write_rate_mbps,
			r->write_rate_asked_mbps, r->dirty_method[0] ? ", tracked by " : "", r->dirty_method);
	const struct pm_downtime_breakdown *b = &r->downtime_breakdown;
	if (!r->status && r->downtime_ms > 0)
		fprintf(f, "pause        %.1f stop + %.1f sync + %.1f last pages + %.1f state/END | destination "
			"%.1f drain + %s%.1f load + %.1f resume | %.1f wire = %.1f ms\n",
			b->pause_ms, b->final_sync_ms, b->final_send_ms, b->state_ms, b->dst_drain_ms,
			dk_sync_text(b, r), b->dst_load_ms, b->dst_resume_ms, b->network_ms,
			b->pause_ms + b->final_sync_ms + b->final_send_ms + b->state_ms + b->dst_drain_ms +
			b->dst_sync_ms + b->dst_load_ms + b->dst_resume_ms + b->network_ms);
	if (r->mem.resident_bytes)
		fprintf(f, "memory       %.0f MiB resident here, %.0f MiB on huge pages%s\n",
			r->mem.resident_bytes / 1048576.0, r->mem.huge_bytes / 1048576.0,
			r->role && !strcmp(r->role, "destination") ? " (after the resume)" : " (before the pause)");
	if (r->dst_data_pages && r->dst_data_pages != UINT64_MAX)
		fprintf(f, "destination  %.0f MiB of guest memory holds data\n", r->dst_data_pages * 4096.0 / 1048576.0);
	if (r->verify)
		fprintf(f, "verify       %s (memory digests compared in %.1f ms, outside the downtime)%s%s\n",
			r->verified ? "memory at resume == memory at pause" : "FAILED",
			r->verify_ms, r->verify_error[0] ? ": " : "", r->verify_error);
	disks_print(r, f);
}

static double jd(json_object *o, const char *k)
{
	json_object *v;
	return json_object_object_get_ex(o, k, &v) ? json_object_get_double(v) : 0;
}

static uint64_t ju(json_object *o, const char *k)
{
	json_object *v;
	return json_object_object_get_ex(o, k, &v) ? (uint64_t)json_object_get_int64(v) : 0;
}

static void js(json_object *o, const char *k, char *buf, size_t len)
{
	json_object *v;
	snprintf(buf, len, "%s", json_object_object_get_ex(o, k, &v) ? json_object_get_string(v) : "");
}

int pm_report_from_json(const char *text, struct pm_report *r)
{
	json_object *o = json_tokener_parse(text), *v, *rounds;
	char buf[64];

	memset(r, 0, sizeof(*r));
	if (!o || !json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		return -EINVAL;
	}
	js(o, "role", buf, sizeof(buf));
	r->role = !strcmp(buf, "destination") ? "destination" : "source";
	js(o, "status", buf, sizeof(buf));
	r->status = !strcmp(buf, "completed") ? 0 : !strcmp(buf, "unknown") ? PM_UNKNOWN : -EIO;
	js(o, "error", r->error, sizeof(r->error));
	r->total_time_ms = jd(o, "total_time_ms");
	r->downtime_ms = jd(o, "downtime_ms");
	r->setup_ms = jd(o, "setup_ms");
	r->verify_dump_ms = jd(o, "verify_dump_ms");
	r->bytes_sent = ju(o, "bytes_sent");
	r->pages_sent = ju(o, "pages_sent");
	r->zero_pages = ju(o, "zero_pages");
	r->unpopulated_pages = ju(o, "unpopulated_pages");
	r->frames = ju(o, "frames");
	r->vm_pages = ju(o, "vm_pages");
	r->channels = ju(o, "channels");
	r->throughput_mbps = jd(o, "throughput_mbps");
	r->throttle_pct = ju(o, "throttle_pct");
	r->stale_pages = ju(o, "stale_pages");
	r->pause_at_ms = jd(o, "pause_at_ms");
	r->write_rate_asked_mbps = jd(o, "write_rate_asked_mbps");
	r->write_rate_mbps = jd(o, "write_rate_mbps");
	json_object *bd, *m;
	if (json_object_object_get_ex(o, "downtime_breakdown", &bd)) {
		struct pm_downtime_breakdown *b = &r->downtime_breakdown;
		b->pause_ms = jd(bd, "pause_ms");
		b->final_sync_ms = jd(bd, "final_sync_ms");
		b->final_send_ms = jd(bd, "final_send_ms");
		b->state_ms = jd(bd, "state_ms");
		b->dst_drain_ms = jd(bd, "dst_drain_ms");
		b->dst_sync_ms = jd(bd, "dst_sync_ms");
		b->dst_load_ms = jd(bd, "dst_load_ms");
		b->dst_resume_ms = jd(bd, "dst_resume_ms");
		b->network_ms = jd(bd, "network_ms");
	}
	if (json_object_object_get_ex(o, "guest_memory", &m)) {
		r->mem.resident_bytes = ju(m, "resident_bytes");
		r->mem.huge_bytes = ju(m, "huge_bytes");
	}
	r->dst_data_pages = ju(o, "dst_data_pages");
	r->engine_bytes = ju(o, "engine_bytes");
	if (json_object_object_get_ex(o, "verified", &v)) {
		r->verify = true;
		r->verified = json_object_get_boolean(v);
		r->verify_ms = jd(o, "verify_ms");
		js(o, "verify_error", r->verify_error, sizeof(r->verify_error));
	}
	r->barrier = json_object_object_get_ex(o, "barrier", &v) && json_object_get_boolean(v);
	r->failover = json_object_object_get_ex(o, "failover", &v) && json_object_get_boolean(v);
	r->mptcp = json_object_object_get_ex(o, "mptcp", &v) && json_object_get_boolean(v);
	r->resent_pages = ju(o, "resent_pages");
	json_object *lost;
	if (json_object_object_get_ex(o, "lost_channels", &lost) && json_object_is_type(lost, json_type_array)) {
		size_t n = json_object_array_length(lost);
		r->nlost = n;
		for (size_t i = 0; i < n && i < PM_MAX_LOST; i++) {
			json_object *e = json_object_array_get_idx(lost, i);
			r->lost[i].channel = ju(e, "channel");
			r->lost[i].at_ms = jd(e, "at_ms");
			r->lost[i].reconnected_ms = jd(e, "reconnected_ms");
			js(e, "phase", r->lost[i].phase, sizeof(r->lost[i].phase));
			js(e, "reason", r->lost[i].reason, sizeof(r->lost[i].reason));
		}
		if (ju(o, "lost_total") > n)
			r->nlost = ju(o, "lost_total");
	}
	r->serial = json_object_object_get_ex(o, "serial", &v) && json_object_get_boolean(v);
	js(o, "compress", buf, sizeof(buf));
	pm_compress_parse(buf, &r->compress);
	js(o, "switchover_reason", r->switchover_reason, sizeof(r->switchover_reason));
	js(o, "dirty_method", r->dirty_method, sizeof(r->dirty_method));
	js(o, "tls", r->tls, sizeof(r->tls));
	js(o, "tls_records", r->tls_records, sizeof(r->tls_records));
	r->rejected_connections = ju(o, "rejected_connections");
	r->nrounds = ju(o, "nrounds");
	json_object *chb;
	if (json_object_object_get_ex(o, "channel_bytes", &chb) && json_object_is_type(chb, json_type_array))
		for (size_t i = 0; i < json_object_array_length(chb) && i < PM_MAX_CHANNELS; i++)
			r->channel_bytes[i] = json_object_get_int64(json_object_array_get_idx(chb, i));
	if (json_object_object_get_ex(o, "rounds", &rounds) && json_object_is_type(rounds, json_type_array)) {
		size_t n = json_object_array_length(rounds);
		for (size_t i = 0; i < n && i < PM_MAX_ROUNDS; i++) {
			json_object *e = json_object_array_get_idx(rounds, i);
			struct pm_round_stat *s = &r->rounds[i];
			s->round = ju(e, "round");
			s->start_ms = jd(e, "start_ms");
			s->dirty_at_start = ju(e, "dirty_at_start");
			s->pages = ju(e, "pages");
			s->zero_pages = ju(e, "zero_pages");
			s->unpopulated_pages = ju(e, "unpopulated_pages");
			s->bytes = ju(e, "bytes");
			s->duration_ms = jd(e, "duration_ms");
			s->final = json_object_object_get_ex(e, "final", &v) && json_object_get_boolean(v);
		}
	}
	disks_from_json(o, r);
	json_object_put(o);
	return 0;
}

void pm_guest_mem_usage(const struct pm_backend *be, struct pm_mem_usage *u)
{
	memset(u, 0, sizeof(*u));
	for (unsigned i = 0; i < be->nregions; i++) {
		const struct pm_guestmem *m = be->regions[i].mem;
		struct pm_guestmem_usage gu;
		struct pm_err e = { 0 };
		bool seen = false;

		for (unsigned j = 0; j < i; j++)
			seen |= be->regions[j].mem == m;
		if (m && !seen && !pm_guestmem_usage(m, &gu, &e)) {
			u->resident_bytes += gu.resident_bytes;
			u->huge_bytes += gu.huge_bytes;
		}
	}
}
