// SPDX-License-Identifier: MIT
/* pmigrate demo --vm linux: Debian's kernel booted in pmvm with the
 * project's initramfs (guests/linux: a workload that writes memory, beats
 * and checks its own memory), migrated live to a second pmvm, and the
 * guest's own word that it went well: its heartbeat continues, its memory
 * check passes two more full sweeps at the destination, no oops, no clock
 * jump.  Linux needs a KVM that runs guest code at speed: unless
 * PMIGRATE_LINUX_DIRECT=1, the demo runs itself inside the nested L1 of
 * tools/nested/run, as the test suite does. */
#include <errno.h>
#include <ftw.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "cli/cli.h"
#include "cli/demo.h"

#define DEFAULT_WORKLOAD "pmw_mem=64 pmw_rate=50 pmw_pattern=hot pmw_check=128 pmw_hb_ms=10 pmw_jump_ms=10000"

/* What the guest's console says. */
struct console {
	long hb_first, hb_last;        /* heartbeat sequence numbers, -1: none */
	long t_first, t_last;          /* their guest times, ms */
	long checks;                   /* "CHECK OK" lines */
	char bad[200];                 /* the first line that shows trouble */
};

static const char *const trouble[] = {
	"Oops", "BUG:", "Kernel panic", "WARNING:", "Call Trace", "general protection",
	"soft lockup", "CHECK FAIL", "CLOCK ", "PMW FAIL", NULL,
};

static void scan_console(const char *path, struct console *c)
{
	FILE *f = fopen(path, "r");
	char line[512];

	memset(c, 0, sizeof(*c));
	c->hb_first = c->hb_last = -1;
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		long seq, t;
		char end;

		line[strcspn(line, "\r\n")] = '\0';
		if (sscanf(line, "HB %ld %ld%c", &seq, &t, &end) == 2) {
			if (c->hb_first < 0) {
				c->hb_first = seq;
				c->t_first = t;
			}
			c->hb_last = seq;
			c->t_last = t;
		} else if (!strncmp(line, "CHECK OK ", 9)) {
			c->checks++;
		}
		for (unsigned i = 0; trouble[i] && !c->bad[0]; i++)
			if (strstr(line, trouble[i]))
				snprintf(c->bad, sizeof(c->bad), "%.190s", line);
	}
	fclose(f);
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Waits until the console shows `checks` CHECK OK lines; false (and why)
 * on trouble, a dead VM or after timeout_s. */
static bool wait_checks(struct child *vm, const char *serial, long checks, unsigned timeout_s,
			struct console *c, const char *who)
{
	double end = now_ms() + timeout_s * 1e3;

	for (unsigned i = 0; now_ms() < end; i++) {
		scan_console(serial, c);
		if (c->bad[0]) {
			fprintf(stderr, "pmigrate demo: the %s guest is in trouble: %s\n", who, c->bad);
			return false;
		}
		if (c->checks >= checks)
			return true;
		if (child_exited(vm)) {
			fprintf(stderr, "pmigrate demo: the %s VM exited\n", who);
			show_log(vm, who);
			return false;
		}
		if (i % 20 == 19) {
			putchar('.');
			fflush(stdout);
		}
		sleep_ms(100);
	}
	fprintf(stderr, "pmigrate demo: the %s guest did not finish %ld memory checks in %u s\n", who,
		checks, timeout_s);
	return false;
}

static int newest_kernel(char *buf, size_t len)
{
	glob_t g;
	const char *best = NULL;

	if (glob("/boot/vmlinuz-*", 0, NULL, &g))
		return -ENOENT;
	for (size_t i = 0; i < g.gl_pathc; i++)
		if (!best || strverscmp(g.gl_pathv[i], best) > 0)
			best = g.gl_pathv[i];
	snprintf(buf, len, "%s", best);
	globfree(&g);
	return 0;
}

/* Runs this demo again inside L1; returns only on failure. */
static int run_nested(const char *kernel, int argc, char **argv)
{
	char build[4096], run[4096], *args[64];
	int n = 0;

	snprintf(build, sizeof(build), "%s", self_exe());
	for (int up = 0; up < 3; up++) {       /* BUILD/src/cli/pmigrate */
		char *slash = strrchr(build, '/');
		if (slash)
			*slash = '\0';
	}
	snprintf(run, sizeof(run), "%s/tools/nested/run", PMIGRATE_SOURCE_ROOT);
	if (access(run, X_OK)) {
		fprintf(stderr, "pmigrate demo: Linux runs in the nested L1 of tools/nested/run, which is not "
			"here (%s); on a host whose KVM runs guests at hardware speed, set PMIGRATE_LINUX_DIRECT=1\n",
			run);
		return 1;
	}
	args[n++] = run;
	args[n++] = "--project";
	args[n++] = build;
	args[n++] = "--include";
	args[n++] = (char *)kernel;
	args[n++] = "--mem";
	args[n++] = "1536M";
	args[n++] = "--timeout";
	args[n++] = "600";
	args[n++] = "--env";
	args[n++] = "PMIGRATE_LINUX_IN_L1=1";
	args[n++] = "--";
	args[n++] = (char *)self_exe();
	for (int i = 0; i < argc && n < 62; i++)
		args[n++] = argv[i];
	args[n] = NULL;
	printf("pmigrate demo: Linux needs a KVM that runs guests at speed: running inside the nested L1\n"
	       "              (tools/nested/run: Debian's kernel under QEMU TCG with kvm_amd); this host's\n"
	       "              own KVM is not used (PMIGRATE_LINUX_DIRECT=1 would)\n");
	fflush(stdout);
	execv(run, args);
	fprintf(stderr, "pmigrate demo: cannot run %s: %s\n", run, strerror(errno));
	return 1;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st; (void)flag; (void)ftw;
	return remove(path);
}

int demo_linux(const struct demo_linux_opts *o, int argc, char **argv)
{
	static const char *const pmvm_rel[] = { "../pmvm/pmvm", "pmvm", NULL };
	static const char *const initrd_rel[] = { "../../guests/linux/linux-initramfs.cpio",
						  "../share/pmigrate/linux-initramfs.cpio", NULL };
	char kbuf[4096], pmvm_buf[4096], initrd_buf[4096], dir[] = "/tmp/pmigrate-demo.XXXXXX";
	char src_serial[300], dst_serial[300];
	const char *kernel = o->kernel, *pmvm, *initrd, *mem = o->mem ? o->mem : "256M";
	const char *append = o->workload ? o->workload : DEFAULT_WORKLOAD;
	struct child src = { 0 }, dst = { 0 };
	/* Inside L1 the terminal is a serial port that the host copies as a
	 * stream: no live progress line there. */
	struct migrate_run mr = { .progress = isatty(2) && !getenv("PMIGRATE_LINUX_IN_L1") };
	struct console sc, dc;
	struct pm_err err = { 0 };
	json_object *st = NULL;
	bool ok = false;
	double gap = -1;

	if (!kernel) {
		if (newest_kernel(kbuf, sizeof(kbuf))) {
			fprintf(stderr, "pmigrate demo: no Linux kernel in /boot (install linux-image-amd64 or "
				"give --kernel BZIMAGE)\n");
			return 1;
		}
		kernel = kbuf;
	}
	if (access(kernel, R_OK)) {
		fprintf(stderr, "pmigrate demo: kernel %s: %s\n", kernel, strerror(errno));
		return 1;
	}
	if (!getenv("PMIGRATE_LINUX_IN_L1") && !(getenv("PMIGRATE_LINUX_DIRECT") &&
						  !strcmp(getenv("PMIGRATE_LINUX_DIRECT"), "1")))
		return run_nested(kernel, argc, argv);

	pmvm = src.exe = dst.exe = find_sibling("PMVM", pmvm_rel, pmvm_buf, sizeof(pmvm_buf));
	initrd = find_sibling("PMIGRATE_LINUX_INITRD", initrd_rel, initrd_buf, sizeof(initrd_buf));
	if (!pmvm || !initrd) {
		fprintf(stderr, "pmigrate demo: cannot find %s\n",
			pmvm ? "the Linux initramfs (set PMIGRATE_LINUX_INITRD)" : "pmvm (set PMVM)");
		return 1;
	}
	if (!mkdtemp(dir)) {
		fprintf(stderr, "pmigrate demo: cannot create a temporary directory: %s\n", strerror(errno));
		return 1;
	}
	snprintf(src.sock, sizeof(src.sock), "%s/source.sock", dir);
	snprintf(dst.sock, sizeof(dst.sock), "%s/destination.sock", dir);
	snprintf(src.log, sizeof(src.log), "%s/source.log", dir);
	snprintf(dst.log, sizeof(dst.log), "%s/destination.log", dir);
	snprintf(src_serial, sizeof(src_serial), "%s/source.console", dir);
	snprintf(dst_serial, sizeof(dst_serial), "%s/destination.console", dir);
	printf("pmigrate demo: Linux guest %s (2 vCPUs, %s), initramfs %s\n"
	       "              workload: %s\n"
	       "              %u channels over loopback%s\n", kernel, mem, initrd, append, o->channels,
	       o->barrier ? ", barrier mode" : "");
	char *sargv[] = { "pmvm", "run", "--kernel", (char *)kernel, "--initrd", (char *)initrd,
			  "--append", (char *)append, "--mem", (char *)mem, "--vcpus", "2",
			  "--control", src.sock, "--serial", src_serial, NULL };
	char *dargv[] = { "pmvm", "run", "--kernel", (char *)kernel, "--initrd", (char *)initrd,
			  "--append", (char *)append, "--mem", (char *)mem, "--vcpus", "2",
			  "--control", dst.sock, "--serial", dst_serial, "--incoming", "127.0.0.1:0", NULL };
	double t0 = now_ms();
	if (spawn(&src, sargv) || spawn(&dst, dargv)) {
		fprintf(stderr, "pmigrate demo: cannot start pmvm: %s\n", strerror(errno));
		goto out;
	}
	printf("  booting     ");
	fflush(stdout);
	if (!wait_checks(&src, src_serial, 1, 180, &sc, "source"))
		goto out;
	printf("\n  source      pid %d: booted to the workload's first full memory check in %.1f s\n", src.pid,
	       (now_ms() - t0) / 1e3);
	char to[128];
	if (!wait_listening(&dst, 30000, to, sizeof(to)))
		goto out;
	printf("  destination pid %d, listening on %s\n", dst.pid, to);

	json_object *args = json_object_new_object();
	json_object_object_add(args, "to", split_list(to));
	json_object_object_add(args, "channels", json_object_new_int((int)o->channels));
	json_object_object_add(args, "downtime_ms", json_object_new_int((int)o->downtime_ms));
	json_object_object_add(args, "barrier", json_object_new_boolean(o->barrier));
	int r = run_migration(src.sock, args, &mr, &err);
	struct pm_report rep;
	if (mr.report_json && !pm_report_from_json(mr.report_json, &rep)) {
		printf("  dirty tracking %s\n\n", rep.dirty_method[0] ? rep.dirty_method : "?");
		pm_report_print(&rep, stdout);
	}
	if (r) {
		fprintf(stderr, "pmigrate demo: %s\n", err.msg);
		show_log(&dst, "destination");
		goto out;
	}
	printf("guest view   waiting for two full memory checks at the destination");
	fflush(stdout);
	scan_console(src_serial, &sc);
	ok = wait_checks(&dst, dst_serial, 2, 120, &dc, "destination");
	putchar('\n');
	st = wait_status(&dst, 5000, &err);
	gap = st ? hb_field(st, "resume_gap_ms") : -1;
	printf("guest view   heartbeat: source's last %ld (guest time %ld ms), destination's first %ld (%ld ms)\n"
	       "             guest clock across the switchover +%ld ms; pause seen by the guest %.1f ms\n"
	       "             memory checks at the destination: %ld full sweeps; console: %s\n",
	       sc.hb_last, sc.t_last, dc.hb_first, dc.t_first, dc.t_first - sc.t_last, gap, dc.checks,
	       dc.bad[0] ? dc.bad : sc.bad[0] ? sc.bad : "no oops, no warning");
	ok = ok && !sc.bad[0] && !dc.bad[0] && dc.hb_first > sc.hb_last && dc.hb_first <= sc.hb_last + 2;
	if (o->json_path && mr.report_json) {
		json_object *j = json_tokener_parse(mr.report_json);
		json_object_object_add(j, "verified", json_object_new_boolean(ok));
		json_object_object_add(j, "guest_downtime_ms", json_object_new_double(gap));
		json_object_object_add(j, "vm", json_object_new_string("linux"));
		json_object_object_add(j, "workload", json_object_new_string(append));
		struct pm_err e2 = { 0 };
		if (write_text_file(o->json_path, json_object_to_json_string_ext(j, JSON_C_TO_STRING_PRETTY), &e2))
			fprintf(stderr, "pmigrate demo: %s\n", e2.msg);
		json_object_put(j);
	}
	printf("result       %s\n", ok ? "Linux migrated live; the guest's own checks passed" : "FAILED");
out:
	json_object_put(st);
	stop_child(&src);
	stop_child(&dst);
	free(mr.report_json);
	if (o->keep)
		printf("files kept in %s\n", dir);
	else
		nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
	return ok ? 0 : 1;
}
