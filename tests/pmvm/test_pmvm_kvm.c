// SPDX-License-Identifier: MIT
/* pmvm under KVM, in process: a guest runs and exits with its code; vCPU
 * and device state round-trips through save/load unchanged; the dirty log
 * starts all-set, harvests clear it, and guest writes show up again.
 * Every test reports SKIP where /dev/kvm is missing or unusable. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <cmocka.h>

#include "config.h"
#include "loader.h"
#include "pmvm.h"
#include "engine/protocol.h"

#define NTESTS 7

static void skip_without_kvm(void)
{
	if (access("/dev/kvm", R_OK | W_OK) != 0) {
		print_message("# no usable /dev/kvm: %s\n", strerror(errno));
		skip();
	}
}

struct vmfix {
	struct pmvm vm;
	struct pmvm_config c;
	char serial[64];
	uint8_t *image;
	size_t image_len;
	bool created;
};

/* Each test gets a fixture that the teardown destroys even when an
 * assertion fails half-way, so no VM outlives its test. */
static int fix_setup(void **state)
{
	struct vmfix *f = calloc(1, sizeof(*f));

	if (!f)
		return -1;
	f->serial[0] = 0;
	*state = f;
	return 0;
}

static void stop_vm(struct vmfix *f)
{
	if (f->created)
		pmvm_destroy(&f->vm);
	memset(&f->vm, 0, sizeof(f->vm));
	f->created = false;
	free(f->image);
	f->image = NULL;
	if (f->serial[0])
		unlink(f->serial);
	f->serial[0] = 0;
}

static int fix_teardown(void **state)
{
	struct vmfix *f = *state;

	stop_vm(f);
	free(f);
	return 0;
}

static void start_vm2(struct vmfix *f, const char *guest, unsigned vcpus, uint64_t mem,
		      const char *const *keys, const uint64_t *vals, unsigned nparams)
{
	struct pm_err err = {0};
	char path[512];

	stop_vm(f);
	memset(&f->c, 0, sizeof(f->c));
	f->c.mem_bytes = mem;
	f->c.vcpus = vcpus;
	f->c.kvm_path = "/dev/kvm";
	snprintf(f->serial, sizeof(f->serial), "/tmp/pmvm-test-serial-XXXXXX");
	close(mkstemp(f->serial));
	f->c.serial = f->serial;
	for (unsigned i = 0; i < nparams; i++) {
		snprintf(f->c.params[i].key, PMVM_PARAM_KEY_LEN, "%s", keys[i]);
		f->c.params[i].value = vals[i];
	}
	f->c.nparams = nparams;
	snprintf(path, sizeof(path), "%s/%s", GUEST_DIR, guest);
	if (pmvm_read_file(path, &f->image, &f->image_len, PMVM_MAX_IMAGE, &err))
		fail_msg("%s", err.msg);
	f->created = true;
	if (pmvm_create(&f->vm, &f->c, &err)) {
		print_message("# KVM unusable: %s\n", err.msg);
		stop_vm(f);
		skip();
	}
	if (pmvm_boot(&f->vm, &f->c, f->image, f->image_len, &err) ||
	    pmvm_vcpus_start(&f->vm, false, &err))
		fail_msg("%s", err.msg);
}

static void start_vm(struct vmfix *f, const char *guest, unsigned vcpus, uint64_t mem,
		     const char *k1, uint64_t v1)
{
	start_vm2(f, guest, vcpus, mem, &k1, &v1, k1 ? 1 : 0);
}

static void read_serial(struct vmfix *f, char *buf, size_t cap)
{
	FILE *fp;
	size_t n;

	pmvm_serial_flush(&f->vm);
	fp = fopen(f->serial, "r");
	n = fp ? fread(buf, 1, cap - 1, fp) : 0;
	if (fp)
		fclose(fp);
	buf[n] = 0;
}

/* Waits until the serial output contains text.  Fails at once when the
 * guest reports a failure, exits, or the VM dies. */
static bool wait_serial(struct vmfix *f, const char *text, int seconds)
{
	static char buf[1 << 20];

	for (int i = 0; i < seconds * 20; i++) {
		bool failed, exited;
		char msg[sizeof(f->vm.fail_msg)];

		read_serial(f, buf, sizeof(buf));
		if (strstr(buf, text))
			return true;
		if (strstr(buf, "VERIFY FAIL"))
			fail_msg("guest reported: %.300s", strstr(buf, "VERIFY FAIL"));
		pthread_mutex_lock(&f->vm.lock);
		failed = f->vm.failed;
		exited = f->vm.guest_exited;
		snprintf(msg, sizeof(msg), "%s", f->vm.fail_msg);
		pthread_mutex_unlock(&f->vm.lock);
		if (failed)
			fail_msg("VM failed while waiting for \"%s\": %s", text, msg);
		if (exited) {
			read_serial(f, buf, sizeof(buf));
			if (strstr(buf, text))
				return true;
			fail_msg("guest exited while waiting for \"%s\"", text);
		}
		usleep(50000);
	}
	return false;
}

static int wait_exit(struct vmfix *f, int seconds)
{
	struct timespec ts;
	int code = -1;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += seconds;
	pthread_mutex_lock(&f->vm.lock);
	while (!f->vm.guest_exited && !f->vm.failed)
		if (pthread_cond_timedwait(&f->vm.cond, &f->vm.lock, &ts) == ETIMEDOUT)
			break;
	if (f->vm.failed)
		print_message("# VM failed: %s\n", f->vm.fail_msg);
	if (f->vm.guest_exited)
		code = f->vm.exit_code;
	pthread_mutex_unlock(&f->vm.lock);
	return code;
}

static void test_exit_code(void **state)
{
	struct vmfix *f = *state;

	skip_without_kvm();
	start_vm(f, "exitcode.bin", 1, 16 << 20, "code", 7);
	assert_int_equal(wait_exit(f, 60), 7);
	assert_true(wait_serial(f, "EXITCODE 7 vcpus 1", 5));

	/* The ELF image, two vCPUs, the default code. */
	start_vm(f, "exitcode.elf", 2, 16 << 20, NULL, 0);
	assert_int_equal(wait_exit(f, 60), 42);
}

static void test_verifier_runs(void **state)
{
	struct vmfix *f = *state;
	const char *k[] = { "steps", "spread", "classes" };
	const uint64_t v[] = { 8, 50, 4 };

	skip_without_kvm();
	start_vm2(f, "verifier.bin", 2, 16 << 20, k, v, 3);
	assert_int_equal(wait_exit(f, 120), 0);
	assert_true(wait_serial(f, "VERIFY OK 8", 5));
	/* Two full sweeps of the spread pages, on both vCPUs. */
	assert_true(wait_serial(f, "VERIFY SWEEP 2 cpu0", 5));
}

/* A vCPU that dies takes the VM with it: the failure names the vCPU, and
 * the other vCPUs stop running guest code. */
static void test_vcpu_failure_stops_all(void **state)
{
	struct vmfix *f = *state;
	static char a[1 << 16], b[1 << 16];
	const char *k[] = { "cpu", "after" };
	const uint64_t v[] = { 1, 3 };

	skip_without_kvm();
	start_vm2(f, "faulter.bin", 2, 16 << 20, k, v, 2);
	assert_int_equal(wait_exit(f, 60), -1);
	pthread_mutex_lock(&f->vm.lock);
	assert_true(f->vm.failed);
	assert_non_null(strstr(f->vm.fail_msg, "vCPU 1"));
	pthread_mutex_unlock(&f->vm.lock);
	/* Every vCPU is parked or gone within a second... */
	for (int i = 0; i < 100 && !pmvm_is_paused(&f->vm); i++)
		usleep(10000);
	assert_true(pmvm_is_paused(&f->vm));
	/* ...and prints nothing more. */
	read_serial(f, a, sizeof(a));
	usleep(300000);
	read_serial(f, b, sizeof(b));
	assert_string_equal(a, b);
	/* It cannot be resumed. */
	struct pm_err err = {0};
	assert_int_not_equal(pmvm_resume(&f->vm, &err), 0);
}

/* The heartbeat measures the pause the guest saw. */
static void test_heartbeat(void **state)
{
	struct vmfix *f = *state;
	struct pm_err err = {0};
	uint64_t c0, gap;

	skip_without_kvm();
	start_vm(f, "verifier.bin", 1, 16 << 20, NULL, 0);
	assert_true(wait_serial(f, "VERIFY OK 2\n", 120));
	c0 = atomic_load(&f->vm.hb.count);
	assert_true(c0 > 0);
	assert_int_equal(pmvm_pause(&f->vm, &err), 0);
	usleep(300000);
	assert_int_equal(pmvm_resume(&f->vm, &err), 0);
	for (int i = 0; i < 200 && !atomic_load(&f->vm.hb.resumes); i++)
		usleep(10000);
	assert_int_equal(atomic_load(&f->vm.hb.resumes), 1);
	gap = atomic_load(&f->vm.hb.resume_gap_ns);
	print_message("# pause of 300 ms seen by the guest as %.1f ms\n", gap / 1e6);
	assert_true(gap >= 300000000ull && gap < 3000000000ull);
	assert_true(atomic_load(&f->vm.hb.max_gap_ns) >= gap);
}

static int cmp_states(const struct pmvm_vm_state *a, const struct pmvm_vm_state *b)
{
	int bad = 0;

#define SAME(x, what)                                                     \
	do {                                                              \
		if (memcmp(&a->x, &b->x, sizeof(a->x))) {                \
			print_error("%s differs after save/load\n", what); \
			bad++;                                            \
		}                                                         \
	} while (0)
	SAME(pic_master, "PIC master");
	SAME(pic_slave, "PIC slave");
	SAME(ioapic, "IOAPIC");
	SAME(serial, "serial");
	for (unsigned i = 0; i < a->nvcpus; i++) {
		SAME(vcpus[i].regs, "regs");
		SAME(vcpus[i].sregs, "sregs");
		SAME(vcpus[i].fpu, "fpu");
		SAME(vcpus[i].xcrs, "xcrs");
		SAME(vcpus[i].events, "vcpu events");
		SAME(vcpus[i].mp, "mp state");
		SAME(vcpus[i].debugregs, "debugregs");
		if (a->vcpus[i].xsave_len != b->vcpus[i].xsave_len ||
		    memcmp(a->vcpus[i].xsave, b->vcpus[i].xsave, a->vcpus[i].xsave_len)) {
			print_error("xsave differs\n");
			bad++;
		}
		/* The LAPIC timer's current count (0x390) runs on; the rest must match. */
		struct kvm_lapic_state la = a->vcpus[i].lapic, lb = b->vcpus[i].lapic;

		memset(la.regs + 0x390, 0, 4);
		memset(lb.regs + 0x390, 0, 4);
		if (memcmp(&la, &lb, sizeof(la))) {
			print_error("LAPIC differs\n");
			bad++;
		}
		if (a->vcpus[i].nmsrs != b->vcpus[i].nmsrs) {
			print_error("MSR count differs\n");
			bad++;
			continue;
		}
		for (unsigned k = 0; k < a->vcpus[i].nmsrs; k++) {
			const struct kvm_msr_entry *x = &a->vcpus[i].msrs[k], *y = &b->vcpus[i].msrs[k];

			if (x->index == 0x10)   /* the TSC keeps counting while paused */
				continue;
			if (x->index != y->index || x->data != y->data) {
				print_error("MSR 0x%x: 0x%llx != 0x%llx\n", x->index,
					    (unsigned long long)x->data, (unsigned long long)y->data);
				bad++;
			}
		}
	}
#undef SAME
	return bad;
}

static void test_state_roundtrip(void **state)
{
	struct vmfix *f = *state;
	struct pm_backend be;
	struct pm_err err = {0};
	struct pmvm_vm_state a, b;
	void *blob1, *blob2;
	size_t len1, len2;

	skip_without_kvm();
	start_vm(f, "verifier.bin", 2, 16 << 20, NULL, 0);
	pmvm_backend_init(&be, &f->vm);
	assert_true(wait_serial(f, "VERIFY OK 3\n", 120));
	assert_int_equal(be.ops->pause(be.vm, &err), 0);
	if (be.ops->save_state(be.vm, &blob1, &len1, &err) ||
	    be.ops->load_state(be.vm, blob1, len1, &err) ||
	    be.ops->save_state(be.vm, &blob2, &len2, &err))
		fail_msg("%s", err.msg);
	assert_int_equal(pmvm_state_decode(blob1, len1, &a, &err), 0);
	assert_int_equal(pmvm_state_decode(blob2, len2, &b, &err), 0);
	assert_int_equal(cmp_states(&a, &b), 0);
	assert_true(a.has_heartbeat && b.has_heartbeat);
	assert_int_equal(a.heartbeat.count, b.heartbeat.count);
	/* A corrupted blob is refused and the VM keeps its state. */
	((uint8_t *)blob2)[len2 / 2] ^= 1;
	assert_int_equal(be.ops->load_state(be.vm, blob2, len2, &err), -EPROTO);
	pmvm_state_free(&a);
	pmvm_state_free(&b);
	free(blob1);
	free(blob2);
	/* The guest carries on after the restore. */
	assert_int_equal(be.ops->resume(be.vm, &err), 0);
	assert_true(wait_serial(f, "VERIFY OK 6\n", 120));
}

static void test_dirty_log(void **state)
{
	struct vmfix *f = *state;
	struct pm_backend be;
	struct pm_err err = {0};
	uint64_t count, npages, *bm;

	skip_without_kvm();
	start_vm(f, "dirtier.bin", 1, 16 << 20, "pages", 64);
	pmvm_backend_init(&be, &f->vm);
	npages = be.regions[0].npages;
	bm = calloc((npages + 63) / 64, 8);
	if (be.ops->dirty_start(be.vm, &err)) {
		print_message("# %s\n", err.msg);
		skip();
	}
	assert_int_equal(be.ops->dirty_sync(be.vm, &err), 0);
	assert_int_equal(be.ops->dirty_count(be.vm, &count, &err), 0);
	assert_int_equal(count, npages);               /* initially all set */
	assert_int_equal(be.ops->pause(be.vm, &err), 0);
	for (uint64_t p = 0; p < npages; p += 512) {
		uint64_t n = npages - p < 512 ? npages - p : 512;

		assert_int_equal(be.ops->dirty_harvest(be.vm, 0, p, n, bm, &err), 0);
		for (uint64_t i = 0; i < n; i++)
			assert_true((bm[i / 64] >> (i % 64)) & 1);
	}
	assert_int_equal(be.ops->dirty_count(be.vm, &count, &err), 0);
	assert_int_equal(count, 0);
	assert_int_equal(be.ops->dirty_sync(be.vm, &err), 0);
	assert_int_equal(be.ops->dirty_count(be.vm, &count, &err), 0);
	assert_int_equal(count, 0);                    /* paused: nothing written */
	assert_int_equal(be.ops->resume(be.vm, &err), 0);
	usleep(500000);
	assert_int_equal(be.ops->dirty_sync(be.vm, &err), 0);
	assert_int_equal(be.ops->dirty_count(be.vm, &count, &err), 0);
	assert_true(count > 0 && count < npages);
	be.ops->dirty_stop(be.vm);
	free(bm);
}

/* Round 1 reads every page; round 2 must find only what the guest wrote
 * after round 1 harvested it, not KVM's initially-set bits. */
static void test_round2_only_written(void **state)
{
	struct vmfix *f = *state;
	struct pm_backend be;
	struct pm_err err = {0};
	const uint64_t ws = 64;
	uint64_t count, npages, *bm;

	skip_without_kvm();
	start_vm(f, "dirtier.bin", 1, 16 << 20, "pages", ws);
	pmvm_backend_init(&be, &f->vm);
	assert_true(wait_serial(f, "DIRTY 0 ", 60));
	npages = be.regions[0].npages;
	bm = calloc((PM_MAX_CHUNK_PAGES + 63) / 64, 8);
	if (be.ops->dirty_start(be.vm, &err)) {
		print_message("# %s\n", err.msg);
		free(bm);
		skip();
	}
	/* Round 1, as the engine runs it: harvest every chunk while the guest
	 * runs, then a sync at the start of round 2. */
	for (uint64_t p = 0; p < npages; p += PM_MAX_CHUNK_PAGES) {
		uint64_t n = npages - p < PM_MAX_CHUNK_PAGES ? npages - p : PM_MAX_CHUNK_PAGES;

		assert_int_equal(be.ops->dirty_harvest(be.vm, 0, p, n, bm, &err), 0);
	}
	usleep(300000);
	assert_int_equal(be.ops->dirty_sync(be.vm, &err), 0);
	assert_int_equal(be.ops->dirty_count(be.vm, &count, &err), 0);
	print_message("# round 2 finds %llu of %llu pages dirty (working set %llu)\n",
		      (unsigned long long)count, (unsigned long long)npages,
		      (unsigned long long)ws);
	/* The working set, its stack and a few pages of its own data. */
	assert_true(count > 0);
	assert_true(count <= ws + 16);
	be.ops->dirty_stop(be.vm);
	free(bm);
}

/* NULL if a VM can be created, else why not. */
static const char *kvm_unusable(void)
{
	static char why[128];
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC), vm;

	if (fd < 0) {
		snprintf(why, sizeof(why), "no usable /dev/kvm (%s)", strerror(errno));
		return why;
	}
	if (ioctl(fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
		close(fd);
		return "/dev/kvm has an unexpected API version";
	}
	vm = ioctl(fd, KVM_CREATE_VM, 0);
	if (vm < 0) {
		snprintf(why, sizeof(why), "KVM_CREATE_VM fails (%s)", strerror(errno));
		close(fd);
		return why;
	}
	close(vm);
	close(fd);
	return NULL;
}

int main(void)
{
	/* cmocka 1.1.5 prints skips as "not ok N # SKIP", which TAP counts as a
	 * failure: without KVM, say so in plain TAP. */
	const char *why = kvm_unusable();

	if (why) {
		printf("1..%d\n", NTESTS);
		for (int i = 1; i <= NTESTS; i++)
			printf("ok %d # SKIP %s\n", i, why);
		return 0;
	}

	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_exit_code, fix_setup, fix_teardown),
		cmocka_unit_test_setup_teardown(test_verifier_runs, fix_setup, fix_teardown),
		cmocka_unit_test_setup_teardown(test_vcpu_failure_stops_all, fix_setup, fix_teardown),
		cmocka_unit_test_setup_teardown(test_heartbeat, fix_setup, fix_teardown),
		cmocka_unit_test_setup_teardown(test_state_roundtrip, fix_setup, fix_teardown),
		cmocka_unit_test_setup_teardown(test_dirty_log, fix_setup, fix_teardown),
		cmocka_unit_test_setup_teardown(test_round2_only_written, fix_setup, fix_teardown),
	};
	_Static_assert(sizeof(tests) / sizeof(tests[0]) == NTESTS, "NTESTS");

	return cmocka_run_group_tests_name("pmvm-kvm", tests, NULL, NULL);
}
