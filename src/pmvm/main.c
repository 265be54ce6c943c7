// SPDX-License-Identifier: MIT
/* pmvm run: a KVM VM whose migration is libpmigrate.
 *
 * Exit status: the guest's code when it writes one to the debug-exit port;
 * 0 after "quit" or SIGINT/SIGTERM (a source whose VM migrated away stays,
 * paused, in state "migrated" until then); 1 when
 * the VM cannot run (no /dev/kvm, KVM error, guest crash, failed incoming
 * migration); 2 for a bad command line or guest image. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <unistd.h>

#include <pmigrate/control.h>
#include <pmigrate/migrate.h>

#include "config.h"
#include "loader.h"
#include "pmvm.h"

/* What the control socket's callbacks see. */
struct ctl_ctx {
	struct pmvm *vm;
	struct pm_incoming *in;     /* while waiting for a migration */
};

static void ctl_status(void *opaque, json_object *out)
{
	struct ctl_ctx *cc = opaque;
	struct pmvm *vm = cc->vm;

	json_object_object_add(out, "vm", json_object_new_string("kvm"));
	json_object_object_add(out, "guest", json_object_new_string(vm->linux_guest ? "linux" : "freestanding"));
	json_object_object_add(out, "vcpus", json_object_new_int((int)vm->nvcpus));
	json_object_object_add(out, "mem_bytes", json_object_new_int64((int64_t)vm->mem_bytes));
	json_object_object_add(out, "paused", json_object_new_boolean(pmvm_is_paused(vm)));
	json_object *hb = json_object_new_object();
	json_object_object_add(hb, "count", json_object_new_int64((int64_t)atomic_load(&vm->hb.count)));
	json_object_object_add(hb, "max_gap_ms", json_object_new_double(atomic_load(&vm->hb.max_gap_ns) / 1e6));
	json_object_object_add(hb, "resume_gap_ms",
			       json_object_new_double(atomic_load(&vm->hb.resume_gap_ns) / 1e6));
	json_object_object_add(hb, "resumes", json_object_new_int64((int64_t)atomic_load(&vm->hb.resumes)));
	json_object_object_add(out, "heartbeat", hb);
	pthread_mutex_lock(&vm->lock);
	if (vm->guest_exited)
		json_object_object_add(out, "guest_exit_code", json_object_new_int(vm->exit_code));
	if (vm->failed)
		json_object_object_add(out, "vm_error", json_object_new_string(vm->fail_msg));
	pthread_mutex_unlock(&vm->lock);
	struct pm_incoming *in = __atomic_load_n(&cc->in, __ATOMIC_ACQUIRE);
	if (in) {
		json_object *a = json_object_new_array();
		for (unsigned i = 0; pm_incoming_address(in, i); i++)
			json_object_array_add(a, json_object_new_string(pm_incoming_address(in, i)));
		json_object_object_add(out, "incoming", a);
	}
}

static void ctl_quit(void *opaque)
{
	struct pmvm *vm = ((struct ctl_ctx *)opaque)->vm;

	pthread_mutex_lock(&vm->lock);
	vm->quit = true;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
}

static const struct pm_control_ops ctl_ops = {
	.status = ctl_status,
	.quit = ctl_quit,
};

enum outcome { RUNNING, GUEST_EXIT, FAILED, QUIT, MIGRATED };

static enum outcome check(struct pmvm *vm, struct pm_control *ctl)
{
	enum outcome o = RUNNING;

	pthread_mutex_lock(&vm->lock);
	if (vm->guest_exited)
		o = GUEST_EXIT;
	else if (vm->failed)
		o = FAILED;
	else if (vm->quit)
		o = QUIT;
	pthread_mutex_unlock(&vm->lock);
	if (o == RUNNING && ctl) {
		char buf[64];
		const char *s = pm_control_state(ctl, buf, sizeof(buf));

		if (s && !strcmp(s, "migrated"))
			o = MIGRATED;
	}
	return o;
}

/* Reads the kernel and initrd, makes the command line and checks that it
 * all fits this VM's memory (nothing is written yet). */
/* Prefixes err's message with what it was about. */
static int err_about(struct pm_err *err, int r, const char *what, const char *path)
{
	char m[sizeof(err->msg)];

	snprintf(m, sizeof(m), "%s", err->msg);
	return pm_err_reset(err, -r, "%s %s: %s", what, path, m);
}

static int linux_prepare(const struct pmvm_config *c, struct pmvm_linux_boot *lb, uint8_t **kernel,
			 size_t *kernel_len, uint8_t **initrd, char **cmdline, struct pm_err *err)
{
	size_t ilen = 0, n;
	int r;

	r = pmvm_read_file(c->kernel, kernel, kernel_len, PMVM_MAX_IMAGE, err);
	if (r)
		return err_about(err, r, "kernel", c->kernel);
	if (c->initrd) {
		r = pmvm_read_file(c->initrd, initrd, &ilen, PMVM_MAX_INITRD, err);
		if (r)
			return err_about(err, r, "initrd", c->initrd);
	}
	n = strlen(PMVM_LINUX_CMDLINE) + (c->append ? 1 + strlen(c->append) : 0) + 1;
	*cmdline = malloc(n);
	if (!*cmdline)
		return pm_err_set(err, ENOMEM, "out of memory");
	snprintf(*cmdline, n, "%s%s%s", PMVM_LINUX_CMDLINE, c->append ? " " : "",
		 c->append ? c->append : "");
	pmvm_e820_build(c->mem_bytes, (struct pmvm_e820 *)lb->map);
	lb->kernel = *kernel;
	lb->kernel_len = *kernel_len;
	lb->initrd = *initrd;
	lb->initrd_len = ilen;
	lb->cmdline = *cmdline;
	r = pmvm_linux_load(lb, NULL, c->mem_bytes < PMVM_LOW_MEM_MAX ? c->mem_bytes : PMVM_LOW_MEM_MAX,
			    NULL, err);
	if (r)
		return err_about(err, r, "kernel", c->kernel);
	return 0;
}

static int run(struct pmvm_config *c)
{
	struct pm_err err = {0};
	struct pmvm *vm = calloc(1, sizeof(*vm));
	struct pm_report *rep = calloc(1, sizeof(*rep));
	struct pm_incoming *in = NULL;
	struct pm_control *ctl = NULL;
	struct ctl_ctx cc = { 0 };
	struct pm_backend be;
	struct pmvm_image info;
	uint8_t *image = NULL;
	size_t image_len = 0;
	uint8_t *initrd = NULL;
	char *cmdline = NULL;
	struct pmvm_e820 map;
	struct pmvm_linux_boot lb = { .map = &map };
	uint64_t low = c->mem_bytes < PMVM_LOW_MEM_MAX ? c->mem_bytes : PMVM_LOW_MEM_MAX;
	enum outcome o = FAILED;
	sigset_t set;
	int status = 1;

	if (!vm || !rep) {
		fprintf(stderr, "pmvm: out of memory\n");
		free(vm);
		free(rep);
		return 1;
	}
	/* Everything that can be checked without KVM comes first. */
	if (c->kernel) {
		if (linux_prepare(c, &lb, &image, &image_len, &initrd, &cmdline, &err)) {
			fprintf(stderr, "pmvm: %s\n", err.msg);
			free(image);
			free(initrd);
			free(cmdline);
			free(vm);
			free(rep);
			return 2;
		}
	} else if (pmvm_read_file(c->guest, &image, &image_len, PMVM_MAX_IMAGE, &err) ||
		   pmvm_image_load(image, image_len, NULL, low, &info, &err)) {
		fprintf(stderr, "pmvm: guest %s: %s\n", c->guest, err.msg);
		free(image);
		free(vm);
		free(rep);
		return 2;
	}

	/* SIGINT/SIGTERM are taken by sigtimedwait below; every thread
	 * created from here on inherits the mask. */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	cc.vm = vm;
	if (pmvm_create(vm, c, &err))
		goto fail;
	vm->linux_guest = c->kernel != NULL;     /* a destination too, before any state */
	if (!c->nlisten && c->kernel && pmvm_boot_linux(vm, &lb, &err))
		goto fail;
	if (!c->nlisten && !c->kernel && pmvm_boot(vm, c, image, image_len, &err))
		goto fail;
	pmvm_backend_init(&be, vm);

	if (c->nlisten) {
		struct pm_incoming_params ip = {
			.listen = c->listen,
			.nlisten = c->nlisten,
			.dump_on_resume = c->dump_on_resume,
			.tls = c->tls,
			.insecure = c->insecure,
		};

		if (pm_incoming_listen(&in, &ip, &err))
			goto fail;
		for (unsigned i = 0; i < c->nlisten; i++)
			fprintf(stderr, "pmvm: listening on %s\n", pm_incoming_address(in, i));
	}
	if (pmvm_vcpus_start(vm, c->nlisten > 0, &err))
		goto fail;
	/* Threads inherit their creator's nice value: from here on (control,
	 * migration workers and receivers) they run below the vCPUs, so that a
	 * migration on a busy host does not starve the guest (no privilege
	 * needed to lower one's own priority). */
	if (c->migration_nice && setpriority(PRIO_PROCESS, 0, (int)c->migration_nice) < 0)
		fprintf(stderr, "pmvm: --migration-nice %u: %s\n", c->migration_nice, strerror(errno));
	if (c->control) {
		cc.in = in;
		if (pm_control_start(&ctl, c->control, &be, &ctl_ops, &cc,
				     c->nlisten ? "incoming" : "running", &err))
			goto fail;
		if (c->dump_at_pause)
			pm_control_set_dump_at_pause(ctl, c->dump_at_pause);
	}
	if (in) {
		int r = pm_incoming_run(in, &be, rep, &err);

		/* Closed at exit: a status request may still be reading it. */
		__atomic_store_n(&cc.in, NULL, __ATOMIC_RELEASE);
		if (r) {
			fprintf(stderr, "pmvm: incoming migration failed: %s\n", err.msg);
			goto out;
		}
		fprintf(stderr, "pmvm: incoming migration complete, guest resumed\n");
		if (ctl) {
			pm_control_set_report(ctl, rep);
			pm_control_set_state(ctl, "running");
		}
	}

	/* After an outgoing migration the VM stays paused in state "migrated"
	 * (as the synthetic VM does) so that `pmigrate status` still answers;
	 * "quit" or a signal ends the process. */
	bool told = false;

	while ((o = check(vm, ctl)) == RUNNING || o == MIGRATED) {
		struct timespec ts = { 0, 100 * 1000000L };
		int sig;

		if (o == MIGRATED && !told) {
			fprintf(stderr, "pmvm: VM migrated away; paused until quit\n");
			told = true;
		}
		sig = sigtimedwait(&set, NULL, &ts);
		if (sig == SIGINT || sig == SIGTERM)
			ctl_quit(&cc);
	}
	switch (o) {
	case GUEST_EXIT:
		status = vm->exit_code;
		break;
	case FAILED:
		fprintf(stderr, "pmvm: %s\n", vm->fail_msg);
		status = 1;
		break;
	default:
		status = 0;
		break;
	}
	goto out;

fail:
	fprintf(stderr, "pmvm: %s\n", err.msg);
	status = 1;
out:
	if (ctl)
		pm_control_stop(ctl);
	if (in)
		pm_incoming_close(in);
	pmvm_destroy(vm);
	free(image);
	free(initrd);
	free(cmdline);
	free(vm);
	free(rep);
	return status;
}

int main(int argc, char **argv)
{
	struct pmvm_config c;
	struct pm_err err = {0};
	int status;

	if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
			  !strcmp(argv[1], "help"))) {
		fputs(pmvm_usage(), stdout);
		return 0;
	}
	if (pmvm_parse_args(argc, argv, &c, &err)) {
		fprintf(stderr, "pmvm: %s\n%s", err.msg, pmvm_usage());
		pmvm_config_free(&c);
		return 2;
	}
	status = run(&c);
	pmvm_config_free(&c);
	return status;
}
