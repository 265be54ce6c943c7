/* SPDX-License-Identifier: MIT */
/* pmigrate demo: a source and a destination synthetic VM as separate
 * processes on this host, a live migration between them under a
 * write-heavy workload, and proof that it worked: the destination's memory
 * at resume equals the source's at pause, and its heartbeat keeps going. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "cli/cli.h"
#include "cli/demo.h"
#include "synvm/synvm.h"


static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st; (void)flag; (void)ftw;
	return remove(path);
}

/* --tls: a fresh pre-shared key for this run only (identity:hexkey, mode
 * 0600), which both VM processes read: TLS 1.3 with PSK authentication. */
static int make_psk(const char *path, struct pm_err *err)
{
	uint8_t key[32];
	FILE *f;
	int fd;

	if (getrandom(key, sizeof(key), 0) != (ssize_t)sizeof(key))
		return pm_err_set(err, errno ? errno : EIO, "cannot get random bytes for the key: %s", strerror(errno));
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 || !(f = fdopen(fd, "w"))) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		return pm_err_set(err, e, "cannot create %s: %s", path, strerror(e));
	}
	fputs("pmigrate-demo:", f);
	for (size_t i = 0; i < sizeof(key); i++)
		fprintf(f, "%02x", key[i]);
	fputc('\n', f);
	explicit_bzero(key, sizeof(key));
	if (fclose(f))
		return pm_err_set(err, errno, "cannot write %s: %s", path, strerror(errno));
	return 0;
}

/* What a verifier guest's serial log says. */
struct guest_log {
	long oks;                /* "VERIFY OK" lines */
	long sweeps[2];          /* "VERIFY SWEEP" lines of vCPU 0 and 1 */
	bool fail;
	char last[128];          /* the last VERIFY OK line */
	char fail_line[160];
};

static void scan_serial(const char *path, struct guest_log *g)
{
	FILE *f = fopen(path, "r");
	char line[256];

	memset(g, 0, sizeof(*g));
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\r\n")] = '\0';
		if (!strncmp(line, "VERIFY OK", 9)) {
			g->oks++;
			snprintf(g->last, sizeof(g->last), "%.100s", line);
		} else if (!strncmp(line, "VERIFY SWEEP", 12)) {
			const char *c = strstr(line, " cpu");
			if (c && (c[4] == '0' || c[4] == '1') && c[5] == ' ')
				g->sweeps[c[4] - '0']++;
		} else if (strstr(line, "VERIFY FAIL") && !g->fail) {
			g->fail = true;
			snprintf(g->fail_line, sizeof(g->fail_line), "%.150s", line);
		}
	}
	fclose(f);
}

/* The KVM demo's check: the verifier guest stamps 90% of its memory and
 * re-checks every page each 16 steps.  Success is a destination that
 * completes two full sweeps per vCPU (so one that started after the
 * switchover checked every page there) and never a VERIFY FAIL. */
static bool kvm_check(struct child *dst, const char *src_serial, const char *dst_serial, double *gap)
{
	struct guest_log s, d;
	struct pm_err err = { 0 };
	bool swept = false;

	scan_serial(src_serial, &s);
	printf("guest view   waiting for the destination to re-check every page");
	fflush(stdout);
	for (int i = 0; i < 1200; i++) {     /* 2 minutes: about 10 sweeps on a slow host */
		scan_serial(dst_serial, &d);
		swept = d.sweeps[0] >= 2 && d.sweeps[1] >= 2;
		if (swept || d.fail || child_exited(dst))
			break;
		if (i % 20 == 0) {
			putchar('.');
			fflush(stdout);
		}
		sleep_ms(100);
	}
	putchar('\n');
	json_object *st = wait_status(dst, 5000, &err);
	*gap = st ? hb_field(st, "resume_gap_ms") : -1;
	json_object_put(st);
	printf("guest view   source's last: \"%s\"; destination's latest: \"%s\"; %ld + %ld full sweeps at the destination\n",
	       s.last, d.last, d.sweeps[0], d.sweeps[1]);
	printf("             pause seen by the guest (heartbeat) %.1f ms\n", *gap);
	if (s.fail || d.fail)
		printf("             %s\n", s.fail ? s.fail_line : d.fail_line);
	printf("guest check  %s\n",
	       s.fail || d.fail ? "FAILED (VERIFY FAIL seen)" : swept ? "OK (every page re-checked)" : "NOT finished");
	return swept && !s.fail && !d.fail;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: pmigrate demo [--mem SIZE] [--channels N] [--workload SPEC] [--json FILE]\n"
		"                     [--barrier] [--downtime MS] [--keep] [--vm synthetic|kvm|linux]\n"
		"                     [--guest FILE] [--kernel BZIMAGE] [--tls]\n"
		"  Runs a source and a destination synthetic VM as processes on this host, migrates\n"
		"  live over loopback and verifies the destination's memory against the source's.\n"
		"  Defaults: --mem 512M --channels 4 --workload zipf,rate=300MB/s,hot=10%%\n"
		"  --tls: every channel over TLS 1.3, authenticated by a pre-shared key made for\n"
		"  this run (docs/security.md has X.509 and how to make credentials).\n"
		"  --vm kvm: a pmvm KVM guest instead (the verifier, 2 vCPUs, 256M, stamping 90%% of its\n"
		"  memory); needs /dev/kvm. It checks that the guest re-checks every page at the\n"
		"  destination and never prints VERIFY FAIL. pmvm and the guest are found next to\n"
		"  pmigrate, or via $PMVM / --guest.\n"
		"  --vm linux: Linux (the newest /boot/vmlinuz-*, or --kernel) in pmvm with the project's\n"
		"  initramfs, 2 vCPUs, 256M; --workload takes its pmw_KEY=VALUE settings. It checks that\n"
		"  the guest's heartbeat continues and its own memory check passes at the destination,\n"
		"  with no oops. It runs inside the nested L1 of tools/nested/run (PMIGRATE_LINUX_DIRECT=1:\n"
		"  on this host's KVM).\n");
}

int cmd_demo(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "mem", required_argument, 0, 'm' }, { "channels", required_argument, 0, 'n' },
		{ "workload", required_argument, 0, 'w' }, { "json", required_argument, 0, 'j' },
		{ "barrier", no_argument, 0, 'B' }, { "downtime", required_argument, 0, 'd' },
		{ "keep", no_argument, 0, 'k' }, { "vm", required_argument, 0, 'v' },
		{ "guest", required_argument, 0, 'g' }, { "kernel", required_argument, 0, 'K' },
		{ "tls", no_argument, 0, 't' }, { "help", no_argument, 0, 'h' }, { 0 } };
	bool kvm = false, linux_vm = false, mem_given = false, workload_given = false;
	const char *kernel = NULL;
	const char *guest = NULL;
	const char *mem = "512M", *workload = "zipf,rate=300MB/s,hot=10%", *json_path = NULL;
	unsigned channels = 4, downtime = 300;
	bool barrier = false, keep = false, verified = false, tls = false;
	struct child src = { 0 }, dst = { 0 };
	struct pm_err err = { 0 };
	char dir[] = "/tmp/pmigrate-demo.XXXXXX";
	struct migrate_run mr = { .progress = isatty(2) };
	json_object *st = NULL;
	int o, rc = 1;

	while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (o) {
		case 'm': mem = optarg; mem_given = true; break;
		case 'v':
			if (strcmp(optarg, "kvm") && strcmp(optarg, "synthetic") && strcmp(optarg, "linux")) {
				fprintf(stderr, "pmigrate demo: --vm must be synthetic, kvm or linux\n");
				return 2;
			}
			kvm = !strcmp(optarg, "kvm");
			linux_vm = !strcmp(optarg, "linux");
			break;
		case 'K': kernel = optarg; break;
		case 'g': guest = optarg; break;
		case 'w': workload = optarg; workload_given = true; break;
		case 'j': json_path = optarg; break;
		case 'B': barrier = true; break;
		case 'k': keep = true; break;
		case 't': tls = true; break;
		case 'n': case 'd': {
			char *end;
			long v = strtol(optarg, &end, 10);
			if (*end || v < 1 || (o == 'n' && v > PM_MAX_CHANNELS)) {
				fprintf(stderr, "pmigrate demo: bad value '%s'\n", optarg);
				return 2;
			}
			if (o == 'n')
				channels = v;
			else
				downtime = v;
			break;
		}
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (linux_vm && tls) {
		fprintf(stderr, "pmigrate demo: --tls goes with the synthetic or the kvm VM, not --vm linux yet\n");
		return 2;
	}
	if (linux_vm) {
		struct demo_linux_opts lo = {
			.mem = mem_given ? mem : NULL, .channels = channels, .downtime_ms = downtime,
			.barrier = barrier, .kernel = kernel, .workload = workload_given ? workload : NULL,
			.json_path = json_path, .keep = keep,
		};
		return demo_linux(&lo, argc, argv);
	}
	if (kernel) {
		fprintf(stderr, "pmigrate demo: --kernel goes with --vm linux\n");
		return 2;
	}
	/* Check the options here so that mistakes are reported before any VM. */
	uint64_t mem_bytes;
	struct synvm_workload wl;
	if (synvm_parse_size(mem, &mem_bytes, &err) || synvm_parse_workload(workload, &wl, &err)) {
		fprintf(stderr, "pmigrate demo: %s\n", err.msg);
		return 2;
	}
	char pmvm_buf[4096], guest_buf[4096];
	if (kvm) {
		static const char *const pmvm_rel[] = { "../pmvm/pmvm", "pmvm", NULL };
		static const char *const guest_rel[] = { "../../guests/verifier.bin", "../share/pmigrate/verifier.bin", NULL };
		int kfd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
		if (kfd < 0) {
			fprintf(stderr, "pmigrate demo: KVM is not available here (/dev/kvm: %s); "
				"the synthetic-VM demo (without --vm kvm) works everywhere\n", strerror(errno));
			return 1;
		}
		close(kfd);
		src.exe = dst.exe = find_sibling("PMVM", pmvm_rel, pmvm_buf, sizeof(pmvm_buf));
		if (!guest)
			guest = find_sibling("PMVM_GUEST", guest_rel, guest_buf, sizeof(guest_buf));
		if (!src.exe || !guest) {
			fprintf(stderr, "pmigrate demo: cannot find %s (set %s)\n", src.exe ? "the verifier guest" : "pmvm",
				src.exe ? "--guest FILE" : "PMVM=/path/to/pmvm");
			return 1;
		}
		if (!mem_given)
			mem = "256M";
	}
	if (!mkdtemp(dir)) {
		fprintf(stderr, "pmigrate demo: cannot create a temporary directory: %s\n", strerror(errno));
		return 1;
	}
	snprintf(src.sock, sizeof(src.sock), "%s/source.sock", dir);
	snprintf(dst.sock, sizeof(dst.sock), "%s/destination.sock", dir);
	snprintf(src.log, sizeof(src.log), "%s/source.log", dir);
	snprintf(dst.log, sizeof(dst.log), "%s/destination.log", dir);

	char psk[300];
	snprintf(psk, sizeof(psk), "%s/demo.psk", dir);
	if (tls && make_psk(psk, &err)) {
		fprintf(stderr, "pmigrate demo: %s\n", err.msg);
		goto out;
	}
	char src_serial[300], dst_serial[300];
	snprintf(src_serial, sizeof(src_serial), "%s/source.serial", dir);
	snprintf(dst_serial, sizeof(dst_serial), "%s/destination.serial", dir);
	if (kvm)
		printf("pmigrate demo: KVM guest %s (2 vCPUs, %s), %u channels over loopback%s%s\n", guest, mem,
		       channels, tls ? " with TLS 1.3 (PSK)" : "", barrier ? ", barrier mode" : "");
	else
		printf("pmigrate demo: %s VM, workload %s, %u channels over loopback%s%s\n", mem, workload,
		       channels, tls ? " with TLS 1.3 (PSK)" : "", barrier ? ", barrier mode" : "");
	char *src_argv[] = { "pmigrate", "vm", "--mem", (char *)mem, "--workload", (char *)workload,
			     "--control", src.sock, NULL };
	char *dst_argv[] = { "pmigrate", "vm", "--mem", (char *)mem, "--control", dst.sock,
			     "--incoming", "127.0.0.1:0", tls ? "--tls-psk" : NULL, psk, NULL };
	char *ksrc_argv[] = { "pmvm", "run", "--mem", (char *)mem, "--vcpus", "2", "--guest", (char *)guest,
			      "--param", "spread=90", "--param", "classes=16",
			      "--control", src.sock, "--serial", src_serial, NULL };
	char *kdst_argv[] = { "pmvm", "run", "--mem", (char *)mem, "--vcpus", "2", "--guest", (char *)guest,
			      "--param", "spread=90", "--param", "classes=16",
			      "--control", dst.sock, "--serial", dst_serial, "--incoming", "127.0.0.1:0",
			      tls ? "--tls-psk" : NULL, psk, NULL };
	if (spawn(&src, kvm ? ksrc_argv : src_argv) || spawn(&dst, kvm ? kdst_argv : dst_argv)) {
		fprintf(stderr, "pmigrate demo: cannot start VM processes: %s\n", strerror(errno));
		goto out;
	}
	json_object *sst = wait_status(&src, 60000, &err);
	if (!sst) {
		fprintf(stderr, "pmigrate demo: source: %s\n", err.msg);
		show_log(&src, "source");
		goto out;
	}
	json_object *v;
	printf("  source      pid %d\n", src.pid);
	json_object_put(sst);
	char to[128];
	if (!wait_listening(&dst, 60000, to, sizeof(to)))
		goto out;
	printf("  destination pid %d, listening on %s\n", dst.pid, to);
	/* Let the workload run for a moment so memory is being dirtied; a KVM
	 * guest first stamps all its spread pages (one sweep). */
	if (kvm) {
		struct guest_log g;
		for (int i = 0; i < 1200; i++) {
			scan_serial(src_serial, &g);
			if (g.sweeps[0] >= 1 || g.fail || child_exited(&src))
				break;
			sleep_ms(100);
		}
		if (g.sweeps[0] < 1) {
			fprintf(stderr, "pmigrate demo: the source guest did not complete its first sweep\n");
			show_log(&src, "source");
			goto out;
		}
	} else {
		sleep_ms(1000);
	}

	json_object *args = json_object_new_object();
	json_object_object_add(args, "to", split_list(to));
	json_object_object_add(args, "channels", json_object_new_int(channels));
	json_object_object_add(args, "downtime_ms", json_object_new_int(downtime));
	json_object_object_add(args, "barrier", json_object_new_boolean(barrier));
	if (tls)
		json_object_object_add(args, "tls_psk", json_object_new_string(psk));
	/* Memory digests at the pause and before the resume: the destination
	 * refuses to run memory that differs. */
	json_object_object_add(args, "verify", json_object_new_boolean(1));
	int r = run_migration(src.sock, args, &mr, &err);
	struct pm_report rep;
	bool have_rep = mr.report_json && !pm_report_from_json(mr.report_json, &rep);
	if (have_rep) {
		printf("  dirty tracking %s\n\n", rep.dirty_method[0] ? rep.dirty_method : "?");
		pm_report_print(&rep, stdout);
	}
	if (r) {
		fprintf(stderr, "pmigrate demo: %s\n", err.msg);
		show_log(&dst, "destination");
		goto out;
	}

	double gap = -1;
	bool mem_ok = have_rep && rep.verified;
	if (kvm) {
		verified = kvm_check(&dst, src_serial, dst_serial, &gap) && mem_ok;
		if (have_rep && rep.verify_ms > 0)
			printf("             (of the guest's pause, %.1f ms went to comparing memory digests)\n",
			       rep.verify_ms);
		goto result;
	}
	/* The destination must be running with its heartbeat advancing. */
	st = wait_status(&dst, 10000, &err);
	double c1 = st ? hb_field(st, "count") : -1;
	gap = st ? hb_field(st, "resume_gap_ms") : -1;
	json_object_put(st);
	sleep_ms(300);
	st = wait_status(&dst, 10000, &err);
	double c2 = st ? hb_field(st, "count") : -1;
	const char *state = st && json_object_object_get_ex(st, "state", &v) ? json_object_get_string(v) : "?";
	bool alive = c2 > c1 && c1 > 0 && !strcmp(state, "running");
	printf("guest view   destination %s, heartbeat %.0f -> %.0f (%s), pause seen by the guest %.1f ms\n",
	       state, c1, c2, alive ? "advancing" : "NOT advancing", gap);
	if (have_rep && rep.verify_ms > 0)
		printf("             (of which %.1f ms comparing memory digests: about %.1f ms without)\n",
		       rep.verify_ms, gap - rep.verify_ms);
	verified = mem_ok && alive;
result:
	if (json_path && mr.report_json) {
		json_object *j = json_tokener_parse(mr.report_json);
		json_object_object_add(j, "verified", json_object_new_boolean(verified));
		json_object_object_add(j, "guest_downtime_ms", json_object_new_double(gap));
		json_object_object_add(j, "vm", json_object_new_string(kvm ? "kvm" : "synthetic"));
		if (!kvm)
			json_object_object_add(j, "workload", json_object_new_string(workload));
		struct pm_err e2 = { 0 };
		if (write_text_file(json_path, json_object_to_json_string_ext(j, JSON_C_TO_STRING_PRETTY), &e2))
			fprintf(stderr, "pmigrate demo: %s\n", e2.msg);
		json_object_put(j);
	}
	printf("result       %s\n", verified ? "migrated live and verified" : "FAILED");
	rc = verified ? 0 : 1;
out:
	json_object_put(st);
	stop_child(&src);
	stop_child(&dst);
	free(mr.report_json);
	if (keep)
		printf("files kept in %s\n", dir);
	else
		nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
	return rc;
}
