/* SPDX-License-Identifier: MIT */
/* pmigrate vm: runs a synthetic VM with a control socket; with --incoming
 * it first waits as a migration destination. */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pmigrate/control.h>
#include <pmigrate/disk.h>
#include "cli/cli.h"
#include "synvm/synvm.h"

struct vm_proc {
	struct synvm *vm;
	struct pm_incoming *in;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool quit;
};

static struct vm_proc *the_proc;
/* While waiting for (or receiving) an incoming migration, a signal or
 * "quit" cancels it: no VM has run yet, so there is nothing to save. */
static volatile sig_atomic_t incoming_phase, incoming_stop; /* 1: signal, 2: quit */

static void vm_status(void *opaque, json_object *o)
{
	struct vm_proc *p = opaque;
	struct synvm_heartbeat hb;
	json_object *h = json_object_new_object();
	char wl[128];

	synvm_heartbeat(p->vm, &hb);
	json_object_object_add(h, "count", json_object_new_int64(hb.count));
	json_object_object_add(h, "max_gap_ms", json_object_new_double(hb.max_gap_ns / 1e6));
	json_object_object_add(h, "resume_gap_ms", json_object_new_double(hb.resume_gap_ns / 1e6));
	json_object_object_add(h, "resumes", json_object_new_int64(hb.resumes));
	json_object_object_add(o, "heartbeat", h);
	synvm_format_workload(synvm_workload_of(p->vm), wl, sizeof(wl));
	json_object_object_add(o, "workload", json_object_new_string(wl));
	json_object_object_add(o, "dirty_method", json_object_new_string(synvm_dirty_method(p->vm)));
	json_object_object_add(o, "pages_written", json_object_new_int64(synvm_pages_written(p->vm)));
	/* Asked and achieved side by side: tracking can slow the guest down. */
	json_object_object_add(o, "write_rate_asked_mbps",
			       json_object_new_double(synvm_workload_of(p->vm)->kind == SYNVM_IDLE ? 0 :
						      synvm_workload_of(p->vm)->rate / 1e6));
	json_object_object_add(o, "write_rate_mbps", json_object_new_double(synvm_write_rate(p->vm) / 1e6));
	json_object_object_add(o, "pid", json_object_new_int(getpid()));
	if (synvm_ndisks(p->vm)) {
		json_object *a = json_object_new_array();
		for (unsigned i = 0; i < synvm_ndisks(p->vm); i++) {
			struct pm_disk *d = synvm_disk(p->vm, i);
			json_object *e = json_object_new_object();
			json_object_object_add(e, "path", json_object_new_string(pm_disk_path(d)));
			json_object_object_add(e, "size_bytes", json_object_new_int64((int64_t)pm_disk_size(d)));
			json_object_object_add(e, "block_bytes", json_object_new_int64(pm_disk_block_size(d)));
			json_object_object_add(e, "allocated_bytes", json_object_new_int64((int64_t)pm_disk_allocated(d)));
			json_object_object_add(e, "bytes_written", json_object_new_int64((int64_t)pm_disk_bytes_written(d)));
			json_object_array_add(a, e);
		}
		json_object_object_add(o, "disks", a);
		synvm_format_diskload(synvm_diskload_of(p->vm), wl, sizeof(wl));
		json_object_object_add(o, "disk_workload", json_object_new_string(wl));
		json_object_object_add(o, "disk_write_rate_asked_mbps",
				       json_object_new_double(synvm_diskload_of(p->vm)->kind == SYNVM_DISK_IDLE ? 0 :
							      synvm_diskload_of(p->vm)->rate / 1e6));
		json_object_object_add(o, "disk_write_rate_mbps",
				       json_object_new_double(synvm_disk_write_rate(p->vm) / 1e6));
	}
	/* What the guest memory costs the host, right now. */
	const struct pm_guestmem *gm = synvm_memory(p->vm);
	struct pm_guestmem_usage u;
	struct pm_err e = { 0 };
	json_object *m = json_object_new_object();
	json_object_object_add(m, "backend", json_object_new_string(pm_mem_kind_name(gm->kind)));
	if (synvm_prealloc_ms(p->vm) > 0)
		json_object_object_add(m, "prealloc_ms", json_object_new_double(synvm_prealloc_ms(p->vm)));
	json_object_object_add(m, "span_bytes", json_object_new_int64((int64_t)synvm_span_pages(p->vm) * PM_PAGE_SIZE));
	if (!pm_guestmem_usage(gm, &u, &e)) {
		json_object_object_add(m, "resident_bytes", json_object_new_int64((int64_t)u.resident_bytes));
		json_object_object_add(m, "huge_bytes", json_object_new_int64((int64_t)u.huge_bytes));
	}
	json_object_object_add(o, "memory", m);
	if (p->in) {
		json_object *a = json_object_new_array();
		for (unsigned i = 0; pm_incoming_address(p->in, i); i++)
			json_object_array_add(a, json_object_new_string(pm_incoming_address(p->in, i)));
		json_object_object_add(o, "incoming", a);
	}
}

/* VM-specific control commands: "discard" {"offset": bytes, "length": bytes}. */
static int vm_command(void *opaque, const char *name, json_object *args, json_object **ret,
		      struct pm_err *err)
{
	struct vm_proc *p = opaque;
	json_object *off, *len;

	(void)ret;
	if (strcmp(name, "discard"))
		return -ENOENT;
	if (!args || !json_object_object_get_ex(args, "offset", &off) ||
	    !json_object_object_get_ex(args, "length", &len) ||
	    !json_object_is_type(off, json_type_int) || !json_object_is_type(len, json_type_int) ||
	    json_object_get_int64(off) < 0 || json_object_get_int64(len) <= 0)
		return pm_err_set(err, EINVAL, "discard needs integer 'offset' and 'length' in bytes");
	return synvm_discard(p->vm, json_object_get_int64(off), json_object_get_int64(len), err);
}

static void vm_quit(void *opaque)
{
	struct vm_proc *p = opaque;

	if (incoming_phase) {
		incoming_stop = 2;
		pm_incoming_cancel(p->in);
	}
	pthread_mutex_lock(&p->lock);
	p->quit = true;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
}

static void on_signal(int sig)
{
	(void)sig;
	if (incoming_phase && the_proc) {
		incoming_stop = 1;
		pm_incoming_cancel(the_proc->in);   /* async-signal-safe */
	}
	/* Only async-signal-safe work here: the waiter polls the flag. */
	if (the_proc)
		__atomic_store_n(&the_proc->quit, true, __ATOMIC_RELEASE);
}

/* The destination's warnings and rejected connections. */
static void vm_log(void *opaque, const char *msg)
{
	(void)opaque;
	fprintf(stderr, "pmigrate vm: %s\n", msg);
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: pmigrate vm --mem SIZE --control SOCKET [options]\n"
		"  --mem SIZE            guest memory, e.g. 256M, 1G\n"
		"  --mem-backend KIND    anon (default: private, transparent huge pages), memfd\n"
		"                        (shared), hugetlb (reserved huge pages, vm.nr_hugepages)\n"
		"  --populated SIZE      how much of the memory the guest has written (default all);\n"
		"                        the rest is untouched, as in a freshly booted guest;\n"
		"                        the host must have this much free (--incoming: what the\n"
		"                        source populated, else all of --mem)\n"
		"  --prealloc            allocate all of the memory at start, as QEMU's prealloc=on\n"
		"                        (a destination then pays no first touch as pages arrive)\n"
		"  --workload SPEC       idle | seq,rate=R | random,rate=R | zipf,rate=R,hot=P%%\n"
		"                        [,threads=N][,seed=S][,span=all]; R like 200MB/s (default\n"
		"                        idle); writes stay in the populated part unless span=all\n"
		"  --control SOCKET      JSON control socket (see docs/control.md)\n"
		"  --mem-file FILE       initial memory content (as QEMU's memory-backend-file)\n"
		"  --fill F              without --mem-file: mixed (default: 3/4 random, 1/4 zero),\n"
		"                        random, zero\n"
		"  --dirty M             dirty tracking: auto (default), uffd-wp, soft-dirty, or self\n"
		"                        (the vCPUs log their own writes, as KVM's dirty ring does)\n"
		"  --incoming ADDR,...   wait as a migration destination on these host:port\n"
		"  --timeout MS          destination: deadline of every wait on the network (default 30000)\n"
		"  --mptcp               destination: listen with Multipath TCP (takes TCP clients too)\n"
		"  --tls-creds DIR       destination: TLS 1.3 with X.509 (QEMU's layout: ca-cert.pem,\n"
		"                        server-cert.pem, server-key.pem); sources need a client cert\n"
		"  --tls-psk FILE        destination: TLS 1.3 with pre-shared keys (identity:hexkey lines)\n"
		"  --tls-authz FILE      destination, X.509: accept only the client DNs listed\n"
		"  --insecure            destination: allow plain TCP on a non-loopback address\n"
		"  --no-ktls             keep TLS records in userspace even if the kernel has kTLS\n"
		"                        (docs/security.md)\n"
		"  --paused              start with the vCPUs paused\n"
		"  --dump-at-pause FILE  source: write guest memory here when paused for switchover\n"
		"  --dump-on-resume FILE destination: write guest memory here just before resuming\n"
		"  --disk FILE[,size=SIZE][,populated=SIZE][,block=SIZE]\n"
		"                        a raw disk image (repeatable, up to %u), created sparse if\n"
		"                        missing; populated= writes that much of it first (source);\n"
		"                        block= is the dirty-tracking unit (default 64K)\n"
		"  --disk-workload SPEC  idle | randwrite,rate=R | seqwrite,rate=R\n"
		"                        [,bs=SIZE][,threads=N][,seed=S] (default idle, bs 64K)\n",
		SYNVM_MAX_DISKS);
}

int cmd_vm(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "mem", required_argument, 0, 'm' }, { "workload", required_argument, 0, 'w' },
		{ "control", required_argument, 0, 'c' }, { "mem-file", required_argument, 0, 'f' },
		{ "fill", required_argument, 0, 'F' }, { "dirty", required_argument, 0, 'D' },
		{ "incoming", required_argument, 0, 'i' }, { "timeout", required_argument, 0, 'T' },
		{ "paused", no_argument, 0, 'P' }, { "dump-at-pause", required_argument, 0, 'a' },
		{ "dump-on-resume", required_argument, 0, 'r' }, { "disk", required_argument, 0, 'k' },
		{ "disk-workload", required_argument, 0, 'K' }, { "help", no_argument, 0, 'h' },
		{ "tls-creds", required_argument, 0, 'X' }, { "tls-psk", required_argument, 0, 1001 },
		{ "tls-authz", required_argument, 0, 'Z' }, { "insecure", no_argument, 0, 'I' },
		{ "no-ktls", no_argument, 0, 1002 }, { "mem-backend", required_argument, 0, 'B' },
		{ "populated", required_argument, 0, 'p' }, { "prealloc", no_argument, 0, 1003 },
		{ "mptcp", no_argument, 0, 'M' }, { 0 } };
	struct synvm_opts so = { 0 };
	struct pm_err err = { 0 };
	const char *control = NULL, *incoming = NULL, *dump_pause = NULL, *dump_resume = NULL;
	unsigned timeout_ms = 0;
	struct pm_tls_params tls = { 0 };
	bool insecure = false;
	bool mptcp = false;
	struct vm_proc proc = { 0 };
	struct pm_control *ctl = NULL;
	int o, rc = 1;

	synvm_parse_workload("idle", &so.workload, &err);
	synvm_parse_diskload("idle", &so.diskload, &err);
	while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (o) {
		case 'm':
			if (synvm_parse_size(optarg, &so.mem_bytes, &err))
				goto bad_opt;
			break;
		case 'w':
			if (synvm_parse_workload(optarg, &so.workload, &err))
				goto bad_opt;
			break;
		case 'c': control = optarg; break;
		case 'f': so.mem_file = optarg; break;
		case 'B':
			if (pm_mem_kind_parse(optarg, &so.mem_kind)) {
				pm_err_set(&err, EINVAL, "--mem-backend must be anon, memfd or hugetlb");
				goto bad_opt;
			}
			break;
		case 'p':
			if (synvm_parse_size(optarg, &so.populated_bytes, &err))
				goto bad_opt;
			if (!so.populated_bytes) {
				pm_err_set(&err, EINVAL, "--populated must be at least 4K");
				goto bad_opt;
			}
			break;
		case 1003: so.prealloc = true; break;
		case 'F':
			if (!strcmp(optarg, "mixed")) so.fill = SYNVM_FILL_MIXED;
			else if (!strcmp(optarg, "random")) so.fill = SYNVM_FILL_RANDOM;
			else if (!strcmp(optarg, "zero")) so.fill = SYNVM_FILL_ZERO;
			else {
				pm_err_set(&err, EINVAL, "--fill must be mixed, random or zero");
				goto bad_opt;
			}
			break;
		case 'D':
			if (pm_dirty_method_parse(optarg, &so.dirty)) {
				pm_err_set(&err, EINVAL, "--dirty must be auto, uffd-wp, soft-dirty or self");
				goto bad_opt;
			}
			break;
		case 'i': incoming = optarg; break;
		case 'T': {
			char *end;
			errno = 0;
			unsigned long v = strtoul(optarg, &end, 10);
			if (!*optarg || *end || errno || *optarg == '-' || v == 0 || v > 3600000) {
				pm_err_set(&err, EINVAL, "bad --timeout '%s' (milliseconds, 1 to 3600000)", optarg);
				goto bad_opt;
			}
			timeout_ms = v;
			break;
		}
		case 'k':
			if (so.ndisks == SYNVM_MAX_DISKS) {
				pm_err_set(&err, EINVAL, "at most %u --disk options", SYNVM_MAX_DISKS);
				goto bad_opt;
			}
			if (synvm_parse_disk(optarg, &so.disks[so.ndisks], &err))
				goto bad_opt;
			so.ndisks++;
			break;
		case 'K':
			if (synvm_parse_diskload(optarg, &so.diskload, &err))
				goto bad_opt;
			break;
		case 'X': tls.creds_dir = optarg; break;
		case 1001: tls.psk_file = optarg; break;
		case 'Z': tls.authz_file = optarg; break;
		case 'I': insecure = true; break;
		case 1002: tls.no_ktls = true; break;
		case 'P': so.start_paused = true; break;
		case 'a': dump_pause = optarg; break;
		case 'r': dump_resume = optarg; break;
		case 'M': mptcp = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "pmigrate vm: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if (!so.mem_bytes || !control) {
		fprintf(stderr, "pmigrate vm: --mem and --control are required\n");
		usage(stderr);
		return 2;
	}
	so.mem_bytes = (so.mem_bytes + PM_PAGE_SIZE - 1) & ~(uint64_t)(PM_PAGE_SIZE - 1);
	so.incoming = incoming != NULL;
	if (so.diskload.kind != SYNVM_DISK_IDLE && !so.ndisks) {
		fprintf(stderr, "pmigrate vm: --disk-workload needs a --disk\n");
		return 2;
	}
	for (unsigned i = 0; i < so.ndisks; i++)
		if (incoming && so.disks[i].populate) {
			fprintf(stderr, "pmigrate vm: --disk %s: populated= and --incoming exclude each other "
				"(a destination's disk comes from the source)\n", so.disks[i].path);
			return 2;
		}
	if (!incoming && (tls.creds_dir || tls.psk_file || tls.authz_file || insecure)) {
		fprintf(stderr, "pmigrate vm: --tls-creds, --tls-psk, --tls-authz and --insecure are for a "
			"destination (--incoming); a source takes them with 'pmigrate migrate'\n");
		return 2;
	}
	if (incoming && so.mem_file) {
		fprintf(stderr, "pmigrate vm: --mem-file and --incoming exclude each other "
			"(a destination's memory comes from the source)\n");
		return 2;
	}
	so.populated_bytes = (so.populated_bytes + PM_PAGE_SIZE - 1) & ~(uint64_t)(PM_PAGE_SIZE - 1);
	if (so.populated_bytes > so.mem_bytes) {
		fprintf(stderr, "pmigrate vm: --populated is larger than --mem\n");
		return 2;
	}

	/* Listen before anything else so bad addresses fail before a VM exists. */
	if (incoming) {
		json_object *list = split_list(incoming);
		size_t n = json_object_array_length(list);
		const char *addrs[64];
		struct pm_incoming_params ip = { .listen = addrs, .nlisten = n, .timeout_ms = timeout_ms,
						 .dump_on_resume = dump_resume, .tls = tls, .insecure = insecure,
						 .log = vm_log, .mptcp = mptcp };
		for (size_t i = 0; i < n && i < 64; i++)
			addrs[i] = json_object_get_string(json_object_array_get_idx(list, i));
		int r = n > 64 ? pm_err_set(&err, EINVAL, "too many --incoming addresses") :
			pm_incoming_listen(&proc.in, &ip, &err);
		json_object_put(list);
		if (r) {
			fprintf(stderr, "pmigrate vm: %s\n", err.msg);
			return 1;
		}
	}
	if (synvm_create(&proc.vm, &so, &err)) {
		fprintf(stderr, "pmigrate vm: %s\n", err.msg);
		pm_incoming_close(proc.in);
		return 1;
	}
	pthread_mutex_init(&proc.lock, NULL);
	pthread_cond_init(&proc.cond, NULL);
	the_proc = &proc;
	incoming_phase = incoming != NULL;
	signal(SIGPIPE, SIG_IGN);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	static const struct pm_control_ops ops = { .status = vm_status, .quit = vm_quit,
						   .command = vm_command };
	if (pm_control_start(&ctl, control, synvm_backend(proc.vm), &ops, &proc,
			     incoming ? "incoming" : so.start_paused ? "paused" : "running", &err)) {
		fprintf(stderr, "pmigrate vm: %s\n", err.msg);
		goto out;
	}
	if (dump_pause)
		pm_control_set_dump_at_pause(ctl, dump_pause);

	if (incoming) {
		struct pm_report rep;
		/* Receiving into 4 KiB pages costs a TLB miss per page; say so
		 * when the host keeps shmem huge pages off. */
		FILE *thp = fopen("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "r");
		char mode[128] = "";
		if (thp) {
			if (!fgets(mode, sizeof(mode), thp))
				mode[0] = '\0';
			fclose(thp);
		}
		if (strstr(mode, "[never]") || strstr(mode, "[deny]"))
			fprintf(stderr, "pmigrate vm: note: this host keeps shmem huge pages off "
				"(/sys/kernel/mm/transparent_hugepage/shmem_enabled); with 'advise' "
				"receiving is faster\n");
		fprintf(stderr, "pmigrate vm: waiting for a migration on");
		for (unsigned i = 0; pm_incoming_address(proc.in, i); i++)
			fprintf(stderr, " %s", pm_incoming_address(proc.in, i));
		fprintf(stderr, "\n");
		int r = pm_incoming_run(proc.in, synvm_backend(proc.vm), &rep, &err);
		incoming_phase = 0;
		snprintf(rep.dirty_method, sizeof(rep.dirty_method), "-");
		pm_control_set_report(ctl, &rep);
		if (r && incoming_stop) {
			fprintf(stderr, "pmigrate vm: %s while waiting for a migration; no VM was started\n",
				incoming_stop == 2 ? "quit" : "interrupted");
			rc = incoming_stop == 2 ? 0 : 1;
			goto out;
		}
		if (r == -ECANCELED && strstr(err.msg, "source aborted: migration cancelled")) {
			/* An orderly end the operator asked for at the source. */
			pm_control_set_state(ctl, "failed");
			fprintf(stderr, "pmigrate vm: the source cancelled the migration; no VM was started\n");
			rc = 0;
			goto out;
		}
		if (r) {
			/* Never a half-started VM: report and exit. */
			pm_control_set_state(ctl, "failed");
			fprintf(stderr, "pmigrate vm: incoming migration failed: %s\n", err.msg);
			goto out;
		}
		pm_control_set_state(ctl, "running");
		fprintf(stderr, "pmigrate vm: migration received (%.0f ms, %u channels, %llu stale pages "
			"skipped); VM running\n", rep.total_time_ms, rep.channels,
			(unsigned long long)rep.stale_pages);
		pm_incoming_close(proc.in);
		proc.in = NULL;
	}
	/* Run until "quit" or a signal. */
	pthread_mutex_lock(&proc.lock);
	while (!__atomic_load_n(&proc.quit, __ATOMIC_ACQUIRE)) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 100000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&proc.cond, &proc.lock, &ts);
	}
	pthread_mutex_unlock(&proc.lock);
	rc = 0;
out:
	pm_control_stop(ctl);
	synvm_destroy(proc.vm);
	pm_incoming_close(proc.in);
	the_proc = NULL;
	return rc;
bad_opt:
	fprintf(stderr, "pmigrate vm: %s\n", err.msg);
	return 2;
}
