/* SPDX-License-Identifier: MIT */
/* pmigrate migrate: asks the VM behind a control socket to migrate, shows
 * live progress, prints the report and exits non-zero if it failed. */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cli/cli.h"

static void show_progress(json_object *d)
{
	json_object *v, *ch;
	char line[512];
	int n;

	n = snprintf(line, sizeof(line), "\r%-10s round %-3d dirty %-9lld sent %8.1f MB  %6.1f s  MB/s:",
		     json_object_object_get_ex(d, "phase", &v) ? json_object_get_string(v) : "",
		     json_object_object_get_ex(d, "round", &v) ? json_object_get_int(v) : 0,
		     json_object_object_get_ex(d, "dirty_pages", &v) ? (long long)json_object_get_int64(v) : 0,
		     json_object_object_get_ex(d, "bytes_sent", &v) ? json_object_get_int64(v) / 1e6 : 0,
		     json_object_object_get_ex(d, "elapsed_ms", &v) ? json_object_get_double(v) / 1e3 : 0);
	if (json_object_object_get_ex(d, "channel_mbps", &ch))
		for (size_t i = 0; i < json_object_array_length(ch) && n < (int)sizeof(line) - 16; i++)
			n += snprintf(line + n, sizeof(line) - n, " %.0f",
				      json_object_get_double(json_object_array_get_idx(ch, i)));
	if (json_object_object_get_ex(d, "throttle_pct", &v) && json_object_get_int(v))
		snprintf(line + n, sizeof(line) - n, "  throttle %d%%", json_object_get_int(v));
	fprintf(stderr, "%s\033[K", line);
}

int run_migration(const char *control, json_object *args, struct migrate_run *mr, struct pm_err *err)
{
	struct ctl_conn c;
	json_object *ret, *ev;
	int r;

	mr->report_json = NULL;
	r = ctl_open(&c, control, err);
	if (r) {
		json_object_put(args);
		return r;
	}
	ret = ctl_execute(&c, "migrate", args, err);
	if (!ret) {
		ctl_close(&c);
		return -(err->code ? err->code : EIO);
	}
	json_object_put(ret);
	r = -EIO;
	while ((ev = ctl_recv(&c, err))) {
		json_object *name, *data;
		if (!json_object_object_get_ex(ev, "event", &name) ||
		    !json_object_object_get_ex(ev, "data", &data)) {
			json_object_put(ev);
			continue;
		}
		const char *n = json_object_get_string(name);
		if (!strcmp(n, "progress")) {
			if (mr->progress)
				show_progress(data);
		} else if (!strcmp(n, "migration-completed") || !strcmp(n, "migration-failed") ||
			   !strcmp(n, "migration-unknown")) {
			if (mr->progress)
				fprintf(stderr, "\r\033[K");
			mr->report_json = strdup(json_object_to_json_string_ext(data, JSON_C_TO_STRING_PRETTY |
									      JSON_C_TO_STRING_SPACED));
			if (!strcmp(n, "migration-completed")) {
				r = 0;
			} else if (!strcmp(n, "migration-unknown")) {
				json_object *e;
				r = pm_err_set(err, EINPROGRESS, "%s",
					       json_object_object_get_ex(data, "error", &e) ?
					       json_object_get_string(e) : "outcome unknown");
			} else {
				json_object *e;
				r = pm_err_set(err, EIO, "migration failed: %s",
					       json_object_object_get_ex(data, "error", &e) ?
					       json_object_get_string(e) : "unknown error");
			}
			json_object_put(ev);
			break;
		}
		json_object_put(ev);
	}
	if (!mr->report_json && !err->code)
		pm_err_set(err, ECONNRESET, "the VM process went away during the migration");
	ctl_close(&c);
	return mr->report_json ? r : -(err->code ? err->code : EIO);
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: pmigrate migrate --control SOCKET --to ADDR[,ADDR...] [options]\n"
		"  --to ADDR,...        destination host:port list; channel i uses the i-th (wrapping)\n"
		"  --bind ADDR,...      local address per channel (wrapping), e.g. to pick NICs\n"
		"  --channels N         parallel channels (default: number of --to addresses)\n"
		"  --downtime MS        downtime target (default 300)\n"
		"  --max-rounds N       pre-copy rounds before forcing switchover (default 30)\n"
		"  --max-bytes-factor X stop iterating after sending X times the VM size (default 8)\n"
		"  --policy P           when it does not converge: throttle (default), force, abort\n"
		"  --barrier            drain all channels at every round end (QEMU-style baseline)\n"
		"  --serial             one thread harvests and sends, no pipelining (baseline)\n"
		"  --compress C         none (default), lz4, zstd\n"
		"  --shared-storage     the disks are on storage the destination shares: send no\n"
		"                       block, flush them at the pause\n"
		"  --timeout MS         deadline of every wait on the network (default 30000)\n"
		"  --tls-creds DIR      TLS 1.3 with X.509 (QEMU's layout: ca-cert.pem, client-cert.pem,\n"
		"                       client-key.pem); the destination's certificate must name --to\n"
		"  --tls-hostname NAME  the name the destination's certificate must carry instead\n"
		"  --tls-psk FILE       TLS 1.3 with a pre-shared key (the first identity:hexkey line)\n"
		"  --insecure           allow plain TCP to a non-loopback address\n"
		"  --no-ktls            keep TLS records in userspace even if the kernel has kTLS\n"
		"  --verify             compare a digest of all memory at the pause with the\n"
		"                       destination's before it resumes; a difference fails it\n"
		"  --no-failover        a lost channel fails the migration (default: its work moves\n"
		"                       to the other channels, and it dials again in pre-copy)\n"
		"  --no-reconnect       a lost channel stays lost\n"
		"  --mptcp              Multipath TCP on every channel, where the kernel has it\n"
		"  --json FILE          write the report as JSON ('-' for stdout)\n"
		"  --timeline FILE.svg  draw the migration over time: MB/s per channel, round starts,\n"
		"                       dirty pages left, the guest's write rate, the pause\n"
		"  --progress / --no-progress   live progress on stderr (default: if a terminal)\n"
		"  --quiet              no report table\n"
		"exit status: 0 the destination runs the VM; 1 failed, the VM runs here; 2 usage;\n"
		"  3 outcome unknown: the VM stays paused here until 'cont' (resume here) or 'quit'\n");
}

int cmd_migrate(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "control", required_argument, 0, 'c' }, { "to", required_argument, 0, 't' },
		{ "bind", required_argument, 0, 'b' }, { "channels", required_argument, 0, 'n' },
		{ "downtime", required_argument, 0, 'd' }, { "max-rounds", required_argument, 0, 'r' },
		{ "max-bytes-factor", required_argument, 0, 'F' }, { "policy", required_argument, 0, 'P' },
		{ "barrier", no_argument, 0, 'B' }, { "serial", no_argument, 0, 'S' },
		{ "compress", required_argument, 0, 'z' }, { "timeout", required_argument, 0, 'T' },
		{ "json", required_argument, 0, 'j' }, { "progress", no_argument, 0, 'p' },
		{ "no-progress", no_argument, 0, 'N' }, { "quiet", no_argument, 0, 'q' },
		{ "timeline", required_argument, 0, 'L' },
		{ "tls-creds", required_argument, 0, 'X' }, { "tls-psk", required_argument, 0, 'K' },
		{ "tls-hostname", required_argument, 0, 'H' }, { "insecure", no_argument, 0, 'I' },
		{ "no-ktls", no_argument, 0, 'k' },
		{ "verify", no_argument, 0, 'V' },
		{ "no-failover", no_argument, 0, 'O' }, { "no-reconnect", no_argument, 0, 'R' },
		{ "mptcp", no_argument, 0, 'M' }, { "shared-storage", no_argument, 0, 'G' },
		{ "help", no_argument, 0, 'h' }, { 0 } };
	const char *control = NULL, *json_path = NULL, *timeline_path = NULL;
	json_object *args = json_object_new_object();
	struct migrate_run mr = { .progress = isatty(2) };
	struct pm_err err = { 0 };
	bool have_to = false, timeline_failed = false;
	int o, r;

	while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		char *end;
		long v;
		switch (o) {
		case 'c': control = optarg; break;
		case 't':
			json_object_object_add(args, "to", split_list(optarg));
			have_to = true;
			break;
		case 'b': json_object_object_add(args, "bind", split_list(optarg)); break;
		case 'n': case 'd': case 'r': case 'T':
			errno = 0;
			v = strtol(optarg, &end, 10);
			/* The same limits as the control socket's, so that a bad value
			 * is a usage error (exit 2) here rather than a failure. */
			if (!*optarg || *end || errno || v < 0 || (o == 'n' && (v < 1 || v > PM_MAX_CHANNELS)) ||
			    (o == 'r' && v > PM_MAX_ROUNDS - 1) || ((o == 'd' || o == 'T') && v > 3600000)) {
				fprintf(stderr, "pmigrate migrate: bad value '%s' for --%s\n", optarg,
					o == 'n' ? "channels" : o == 'd' ? "downtime" : o == 'r' ? "max-rounds" : "timeout");
				goto bad;
			}
			json_object_object_add(args, o == 'n' ? "channels" : o == 'd' ? "downtime_ms" :
					       o == 'r' ? "max_rounds" : "timeout_ms", json_object_new_int64(v));
			break;
		case 'F': {
			double f = strtod(optarg, &end);
			if (*end || f <= 0) {
				fprintf(stderr, "pmigrate migrate: bad --max-bytes-factor '%s'\n", optarg);
				goto bad;
			}
			json_object_object_add(args, "max_bytes_factor", json_object_new_double(f));
			break;
		}
		case 'P': {
			enum pm_nonconverge p;
			if (pm_nonconverge_parse(optarg, &p)) {
				fprintf(stderr, "pmigrate migrate: --policy must be throttle, force or abort\n");
				goto bad;
			}
			json_object_object_add(args, "policy", json_object_new_string(optarg));
			break;
		}
		case 'z': {
			enum pm_compress cz;
			if (pm_compress_parse(optarg, &cz)) {
				fprintf(stderr, "pmigrate migrate: --compress must be none, lz4 or zstd\n");
				goto bad;
			}
			json_object_object_add(args, "compress", json_object_new_string(optarg));
			break;
		}
		case 'X': case 'K': {
			/* The VM process reads them, from its own working directory. */
			char *abs = realpath(optarg, NULL);
			if (!abs) {
				fprintf(stderr, "pmigrate migrate: --%s %s: %s\n", o == 'X' ? "tls-creds" : "tls-psk",
					optarg, strerror(errno));
				json_object_put(args);
				return 1;
			}
			json_object_object_add(args, o == 'X' ? "tls_creds" : "tls_psk", json_object_new_string(abs));
			free(abs);
			break;
		}
		case 'H': json_object_object_add(args, "tls_hostname", json_object_new_string(optarg)); break;
		case 'I': json_object_object_add(args, "insecure", json_object_new_boolean(1)); break;
		case 'k': json_object_object_add(args, "no_ktls", json_object_new_boolean(1)); break;
		case 'B': json_object_object_add(args, "barrier", json_object_new_boolean(1)); break;
		case 'G': json_object_object_add(args, "shared_storage", json_object_new_boolean(1)); break;
		case 'S': json_object_object_add(args, "serial", json_object_new_boolean(1)); break;
		case 'V': json_object_object_add(args, "verify", json_object_new_boolean(1)); break;
		case 'O': json_object_object_add(args, "failover", json_object_new_boolean(0)); break;
		case 'R': json_object_object_add(args, "reconnect", json_object_new_boolean(0)); break;
		case 'M': json_object_object_add(args, "mptcp", json_object_new_boolean(1)); break;
		case 'j': json_path = optarg; break;
		case 'L': timeline_path = optarg; break;
		case 'p': mr.progress = true; break;
		case 'N': mr.progress = false; break;
		case 'q': mr.quiet = true; break;
		case 'h': usage(stdout); json_object_put(args); return 0;
		default: goto bad;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "pmigrate migrate: unexpected argument '%s'\n", argv[optind]);
		goto bad;
	}
	if (!control || !have_to) {
		fprintf(stderr, "pmigrate migrate: --control and --to are required\n");
		goto bad;
	}
	r = run_migration(control, args, &mr, &err);
	if (mr.report_json) {
		struct pm_report rep;
		if (!mr.quiet && !pm_report_from_json(mr.report_json, &rep))
			pm_report_print(&rep, stdout);
		if (json_path) {
			struct pm_err e2 = { 0 };
			if (!strcmp(json_path, "-"))
				puts(mr.report_json);
			else if (write_text_file(json_path, mr.report_json, &e2))
				fprintf(stderr, "pmigrate migrate: %s\n", e2.msg);
		}
		if (timeline_path) {
			struct pm_err e2 = { 0 };
			if (timeline_svg(mr.report_json, timeline_path, &e2)) {
				fprintf(stderr, "pmigrate migrate: timeline: %s\n", e2.msg);
				timeline_failed = true;
			}
		}
		free(mr.report_json);
	}
	if (r) {
		fprintf(stderr, "pmigrate migrate: %s\n", err.msg);
		if (r == -EINPROGRESS)
			fprintf(stderr, "pmigrate migrate: once you know: 'pmigrate cont --control %s' if the "
				"destination does not run the VM, 'pmigrate quit --control %s' if it does\n",
				control, control);
		return r == -EINPROGRESS ? 3 : 1;
	}
	return timeline_failed ? 1 : 0;
bad:
	json_object_put(args);
	usage(stderr);
	return 2;
}

/* One control command without arguments: pmigrate NAME --control SOCKET. */
static int simple_command(int argc, char **argv, const char *name, const char *command,
			  const char *said)
{
	static const struct option opts[] = {
		{ "control", required_argument, 0, 'c' }, { "help", no_argument, 0, 'h' }, { 0 } };
	const char *control = NULL;
	struct pm_err err = { 0 };
	struct ctl_conn c;
	json_object *ret;
	int o;

	while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (o) {
		case 'c': control = optarg; break;
		case 'h': printf("usage: pmigrate %s --control SOCKET\n", name); return 0;
		default: fprintf(stderr, "usage: pmigrate %s --control SOCKET\n", name); return 2;
		}
	}
	if (!control || optind < argc) {
		fprintf(stderr, "usage: pmigrate %s --control SOCKET\n", name);
		return 2;
	}
	if (ctl_open(&c, control, &err)) {
		fprintf(stderr, "pmigrate %s: %s\n", name, err.msg);
		return 1;
	}
	ret = ctl_execute(&c, command, NULL, &err);
	ctl_close(&c);
	if (!ret) {
		fprintf(stderr, "pmigrate %s: %s\n", name, err.msg);
		return 1;
	}
	json_object_put(ret);
	fprintf(stderr, "pmigrate %s: %s\n", name, said);
	return 0;
}

/* pmigrate cancel: stops the migration running out of the VM behind a
 * control socket; the VM keeps running there and the destination is told. */
int cmd_cancel(int argc, char **argv)
{
	return simple_command(argc, argv, "cancel", "migrate_cancel",
			      "the migration is being cancelled; the VM keeps running here");
}

/* pmigrate cont / quit: resume a stopped VM (or one left paused by an
 * unknown outcome: the destination does not run it), or end the VM process
 * (it does). */
int cmd_cont(int argc, char **argv)
{
	return simple_command(argc, argv, "cont", "cont", "the VM runs");
}

int cmd_quit(int argc, char **argv)
{
	return simple_command(argc, argv, "quit", "quit", "the VM process ends");
}
