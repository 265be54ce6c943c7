/* SPDX-License-Identifier: MIT */
/* pmigrate status: the VM's state, heartbeat and last migration. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"

static double num(json_object *o, const char *key)
{
	json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_double(v) : 0;
}

/* One line per disk and one for its writers, as the JSON's "disks" and
 * "disk_workload" (asked and achieved rate side by side, as for memory). */
static void print_disks(json_object *st)
{
	json_object *a, *v;

	if (!json_object_object_get_ex(st, "disks", &a) || !json_object_is_type(a, json_type_array))
		return;
	for (size_t i = 0; i < json_object_array_length(a); i++) {
		json_object *d = json_object_array_get_idx(a, i);
		printf("disk %-7zu %s: %.0f MiB in %.0f KiB blocks, %.1f MiB allocated, %.1f MB written\n", i,
		       json_object_object_get_ex(d, "path", &v) ? json_object_get_string(v) : "?",
		       num(d, "size_bytes") / 1048576, num(d, "block_bytes") / 1024,
		       num(d, "allocated_bytes") / 1048576, num(d, "bytes_written") / 1e6);
	}
	if (json_object_object_get_ex(st, "disk_workload", &v))
		printf("disk writes  %s (asked %.1f MB/s, achieved %.1f MB/s)\n", json_object_get_string(v),
		       num(st, "disk_write_rate_asked_mbps"), num(st, "disk_write_rate_mbps"));
}

static void print_human(json_object *st)
{
	json_object *v, *hb, *lm;

	printf("state        %s\n", json_object_object_get_ex(st, "state", &v) ? json_object_get_string(v) : "?");
	if (json_object_object_get_ex(st, "kind", &v))
		printf("kind         %s\n", json_object_get_string(v));
	if (json_object_object_get_ex(st, "memory_bytes", &v))
		printf("memory       %lld MiB\n", (long long)(json_object_get_int64(v) >> 20));
	if (json_object_object_get_ex(st, "workload", &v))
		printf("workload     %s\n", json_object_get_string(v));
	if (json_object_object_get_ex(st, "dirty_method", &v))
		printf("dirty track  %s\n", json_object_get_string(v));
	print_disks(st);
	if (json_object_object_get_ex(st, "incoming", &v))
		printf("incoming on  %s\n", json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN));
	if (json_object_object_get_ex(st, "heartbeat", &hb)) {
		json_object *c, *g, *rg;
		json_object_object_get_ex(hb, "count", &c);
		json_object_object_get_ex(hb, "max_gap_ms", &g);
		json_object_object_get_ex(hb, "resume_gap_ms", &rg);
		printf("heartbeat    %lld ticks, largest gap %.1f ms, last pause seen by guest %.1f ms\n",
		       (long long)json_object_get_int64(c), json_object_get_double(g), json_object_get_double(rg));
	}
	if (json_object_object_get_ex(st, "last_migration", &lm)) {
		struct pm_report rep;
		printf("last migration:\n");
		if (!pm_report_from_json(json_object_to_json_string(lm), &rep))
			pm_report_print(&rep, stdout);
	}
}

int cmd_status(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "control", required_argument, 0, 'c' }, { "json", no_argument, 0, 'j' },
		{ "help", no_argument, 0, 'h' }, { 0 } };
	const char *control = NULL;
	bool json = false;
	struct ctl_conn c;
	struct pm_err err = { 0 };
	json_object *st;
	int o;

	while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (o) {
		case 'c': control = optarg; break;
		case 'j': json = true; break;
		case 'h': printf("usage: pmigrate status --control SOCKET [--json]\n"); return 0;
		default: fprintf(stderr, "usage: pmigrate status --control SOCKET [--json]\n"); return 2;
		}
	}
	if (!control || optind < argc) {
		fprintf(stderr, "usage: pmigrate status --control SOCKET [--json]\n");
		return 2;
	}
	if (ctl_open(&c, control, &err)) {
		fprintf(stderr, "pmigrate status: %s\n", err.msg);
		return 1;
	}
	st = ctl_execute(&c, "status", NULL, &err);
	ctl_close(&c);
	if (!st) {
		fprintf(stderr, "pmigrate status: %s\n", err.msg);
		return 1;
	}
	if (json)
		puts(json_object_to_json_string_ext(st, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED));
	else
		print_human(st);
	json_object_put(st);
	return 0;
}
