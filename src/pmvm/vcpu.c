// SPDX-License-Identifier: MIT
/* vCPUs: one thread each running KVM_RUN, parked and released by
 * pause/resume, and the complete vCPU state in and out.
 *
 * Kicking a vCPU out of the guest: pmvm_pause() sets pause_req and every
 * run->immediate_exit under vm->lock, then sends PMVM_KICK_SIGNAL to each
 * thread.  A thread resets immediate_exit only under the lock and only after
 * it saw pause_req clear, so either it parks, or KVM_RUN returns EINTR at
 * once (immediate_exit), or the signal interrupts the guest. */
#include "pmvm.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "bootinfo.h"
#include "cpu_setup.h"
#include "cpuid.h"

static void kick_all(struct pmvm *vm);

void pmvm_fail(struct pmvm *vm, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&vm->lock);
	if (!vm->failed) {
		va_start(ap, fmt);
		vsnprintf(vm->fail_msg, sizeof(vm->fail_msg), fmt, ap);
		va_end(ap);
		vm->failed = true;
	}
	/* The other vCPUs stop too: a VM with a dead vCPU must not run on
	 * (resume refuses once failed). */
	vm->pause_req = true;
	for (unsigned i = 0; vm->vcpus && i < vm->nvcpus; i++)
		if (vm->vcpus[i].run)
			vm->vcpus[i].run->immediate_exit = 1;
	kick_all(vm);
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
}

static uint64_t realtime_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void pmvm_heartbeat_beat(struct pmvm *vm)
{
	struct pmvm_heartbeat *hb = &vm->hb;
	uint64_t now = realtime_ns();
	uint64_t prev = atomic_exchange(&hb->last_ns, now);
	uint64_t gap = prev && now > prev ? now - prev : 0;
	uint64_t max = atomic_load(&hb->max_gap_ns);

	atomic_fetch_add(&hb->count, 1);
	while (gap > max && !atomic_compare_exchange_weak(&hb->max_gap_ns, &max, gap))
		;
	if (atomic_exchange(&hb->resume_pending, false)) {
		atomic_store(&hb->resume_gap_ns, gap);
		atomic_fetch_add(&hb->resumes, 1);
	}
}

static int probe_msrs(struct pmvm *vm, struct pm_err *err)
{
	unsigned k = 0;

	for (unsigned i = 0; i < vm->nmsrs; i++) {
		struct {
			struct kvm_msrs h;
			struct kvm_msr_entry e;
		} m = { .h = { .nmsrs = 1 }, .e = { .index = vm->msrs[i] } };

		/* KVM lists some MSRs that the guest's CPUID does not enable:
		 * keep those this vCPU reads and takes back unchanged, so that a
		 * destination on the same kind of host accepts what we send. */
		if (ioctl(vm->vcpus[0].fd, KVM_GET_MSRS, &m) == 1 &&
		    ioctl(vm->vcpus[0].fd, KVM_SET_MSRS, &m) == 1)
			vm->msrs[k++] = vm->msrs[i];
	}
	vm->nmsrs = k;
	(void)err;
	return 0;
}

int pmvm_vcpus_create(struct pmvm *vm, struct pm_err *err)
{
	int mmap_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	size_t csize = sizeof(*vm->cpuid) + vm->cpuid->nent * sizeof(vm->cpuid->entries[0]);
	struct kvm_cpuid2 *c;

	if (mmap_size < (int)sizeof(struct kvm_run))
		return pm_err_set(err, errno ? errno : EINVAL, "KVM_GET_VCPU_MMAP_SIZE: %d", mmap_size);
	vm->vcpus = calloc(vm->nvcpus, sizeof(*vm->vcpus));
	c = malloc(csize);
	if (!vm->vcpus || !c) {
		free(c);
		return pm_err_set(err, ENOMEM, "out of memory");
	}
	for (unsigned i = 0; i < vm->nvcpus; i++)
		vm->vcpus[i].fd = -1;
	for (unsigned i = 0; i < vm->nvcpus; i++) {
		struct pmvm_vcpu *v = &vm->vcpus[i];

		v->vm = vm;
		v->index = i;
		v->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)i);
		if (v->fd < 0) {
			free(c);
			return pm_err_set(err, errno, "KVM_CREATE_VCPU %u: %s", i, strerror(errno));
		}
		v->run_size = (size_t)mmap_size;
		v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
		if (v->run == MAP_FAILED) {
			v->run = NULL;
			free(c);
			return pm_err_set(err, errno, "mmap of vCPU %u's kvm_run: %s", i, strerror(errno));
		}
		/* CPUID first: KVM checks CR4, XCR0 and MSR writes against it. */
		memcpy(c, vm->cpuid, csize);
		pmvm_cpuid_fixup(c->entries, c->nent, i, vm->nvcpus);
		if (ioctl(v->fd, KVM_SET_CPUID2, c) < 0) {
			free(c);
			return pm_err_set(err, errno, "KVM_SET_CPUID2 on vCPU %u: %s", i, strerror(errno));
		}
	}
	free(c);
	return probe_msrs(vm, err);
}

/* Best effort: without MTRRs enabled all memory would be uncached. */
static void set_mtrr_wb(struct pmvm_vcpu *v)
{
	struct {
		struct kvm_msrs h;
		struct kvm_msr_entry e;
	} mtrr = { .h = { .nmsrs = 1 },
		   .e = { .index = PMVM_MSR_MTRR_DEF_TYPE, .data = (1u << 11) | 6 } }; /* enabled, WB */

	(void)ioctl(v->fd, KVM_SET_MSRS, &mtrr);
}

/* Long mode with pmvm's identity map, the given registers, a clean FPU. */
static int enter_long_mode(struct pmvm_vcpu *v, const struct kvm_regs *regs, struct pm_err *err)
{
	struct kvm_sregs sregs;
	struct kvm_fpu fpu;

	if (ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
		return pm_err_set(err, errno, "KVM_GET_SREGS vCPU %u: %s", v->index, strerror(errno));
	pmvm_setup_long_mode_sregs(&sregs);
	if (ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0)
		return pm_err_set(err, errno, "KVM_SET_SREGS vCPU %u: %s", v->index, strerror(errno));
	if (ioctl(v->fd, KVM_SET_REGS, regs) < 0)
		return pm_err_set(err, errno, "KVM_SET_REGS vCPU %u: %s", v->index, strerror(errno));
	pmvm_setup_fpu(&fpu);
	if (ioctl(v->fd, KVM_SET_FPU, &fpu) < 0)
		return pm_err_set(err, errno, "KVM_SET_FPU vCPU %u: %s", v->index, strerror(errno));
	return 0;
}

int pmvm_vcpu_boot(struct pmvm_vcpu *v, uint64_t entry, struct pm_err *err)
{
	struct kvm_regs regs;
	struct kvm_mp_state mp = { .mp_state = KVM_MP_STATE_RUNNABLE };

	pmvm_setup_regs(&regs, entry, v->index);
	int r = enter_long_mode(v, &regs, err);
	if (r)
		return r;
	set_mtrr_wb(v);
	/* With the in-kernel LAPIC, APs wait for INIT/SIPI; pmvm starts every
	 * vCPU directly in long mode instead. */
	if (ioctl(v->fd, KVM_SET_MP_STATE, &mp) < 0)
		return pm_err_set(err, errno, "KVM_SET_MP_STATE vCPU %u: %s", v->index, strerror(errno));
	return 0;
}

/* The 64-bit boot protocol for vCPU 0: long mode, paging on with an
 * identity map, interrupts off, RSI = boot_params.  The others only get
 * their MTRRs: they stay as KVM made them, waiting for INIT/SIPI. */
int pmvm_vcpu_boot_linux(struct pmvm_vcpu *v, uint64_t entry, uint64_t boot_params,
			 struct pm_err *err)
{
	struct kvm_regs regs;

	set_mtrr_wb(v);
	if (v->index)
		return 0;
	pmvm_setup_regs(&regs, entry, v->index);
	regs.rdi = 0;
	regs.rsi = boot_params;
	return enter_long_mode(v, &regs, err);
}

/* ---- the run loop ---- */

static void guest_exit(struct pmvm *vm, int code)
{
	pthread_mutex_lock(&vm->lock);
	if (!vm->guest_exited) {
		vm->guest_exited = true;
		vm->exit_code = code;
	}
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
}

/* Returns false when the vCPU must stop. */
static bool handle_io(struct pmvm_vcpu *v)
{
	struct kvm_run *run = v->run;
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	uint16_t port = run->io.port;
	unsigned size = run->io.size;

	for (uint32_t i = 0; i < run->io.count; i++, data += size) {
		if (port >= PMVM_SERIAL_PORT && port < PMVM_SERIAL_PORT + 8) {
			if (run->io.direction == KVM_EXIT_IO_OUT) {
				pmvm_serial_write(&v->vm->serial, port - PMVM_SERIAL_PORT, data[0]);
			} else {
				memset(data, 0, size);
				data[0] = pmvm_serial_read(&v->vm->serial, port - PMVM_SERIAL_PORT);
			}
		} else if (port == PMVM_RTC_INDEX_PORT || port == PMVM_RTC_DATA_PORT) {
			if (run->io.direction == KVM_EXIT_IO_OUT) {
				pmvm_rtc_write(&v->vm->rtc, port, data[0]);
			} else {
				memset(data, 0xff, size);
				data[0] = pmvm_rtc_read(&v->vm->rtc, port);
			}
		} else if (port == PMVM_KBD_CMD_PORT && run->io.direction == KVM_EXIT_IO_OUT &&
			   data[0] == PMVM_KBD_CMD_RESET) {
			/* Linux's reboot=k, and its panic=-1: the guest wants a
			 * reset, which pmvm reports rather than perform. */
			pmvm_fail(v->vm, "guest vCPU %u asked for a reset (keyboard controller)", v->index);
			return false;
		} else if (port == PMVM_HEARTBEAT_PORT && run->io.direction == KVM_EXIT_IO_OUT) {
			pmvm_heartbeat_beat(v->vm);
		} else if (port == PMVM_EXIT_PORT && run->io.direction == KVM_EXIT_IO_OUT) {
			uint32_t val = 0;

			memcpy(&val, data, size < 4 ? size : 4);
			guest_exit(v->vm, (int)(val & 0xff));
			return false;
		} else if (run->io.direction == KVM_EXIT_IO_IN) {
			memset(data, 0xff, size);   /* nothing there: floating bus */
		}
	}
	return true;
}

static const char *internal_error_name(uint32_t suberror)
{
	switch (suberror) {
	case KVM_INTERNAL_ERROR_EMULATION: return "emulation failure: KVM cannot emulate the instruction";
	case KVM_INTERNAL_ERROR_SIMUL_EX: return "exception while delivering an exception";
	case KVM_INTERNAL_ERROR_DELIVERY_EV: return "event delivery failed";
	case KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: return "unexpected hardware exit reason";
	default: return "unknown";
	}
}

/* Up to 15 bytes at RIP, read through the guest's page tables. */
static unsigned read_at_rip(struct pmvm_vcpu *v, uint64_t rip, uint8_t *bytes)
{
	struct kvm_translation tr = { .linear_address = rip };
	struct pmvm *vm = v->vm;
	unsigned n = 0;

	if (ioctl(v->fd, KVM_TRANSLATE, &tr) < 0 || !tr.valid)
		return 0;
	for (unsigned i = 0; i < vm->nslots; i++) {
		const struct pmvm_slot *sl = &vm->slots[i];
		uint64_t off = tr.physical_address - sl->gpa;

		if (tr.physical_address < sl->gpa || off >= sl->npages * 4096ull)
			continue;
		for (; n < 15 && off + n < sl->npages * 4096ull; n++)
			bytes[n] = sl->host[off + n];
	}
	return n;
}

/* The instruction at RIP: what KVM reports (often only the bytes its
 * emulator fetched before it gave up), or more from guest memory. */
static unsigned fetch_insn(struct pmvm_vcpu *v, uint64_t rip, uint8_t *bytes)
{
	struct kvm_run *run = v->run;
	unsigned n = 0, m;
	uint8_t mem[15];

	if (run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION && run->internal.ndata >= 1 &&
	    (run->emulation_failure.flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)) {
		n = run->emulation_failure.insn_size;
		if (n > sizeof(run->emulation_failure.insn_bytes))
			n = sizeof(run->emulation_failure.insn_bytes);
		memcpy(bytes, run->emulation_failure.insn_bytes, n);
	}
	m = read_at_rip(v, rip, mem);
	if (m > n && !memcmp(mem, bytes, n)) {
		memcpy(bytes, mem, m);
		n = m;
	}
	return n;
}

static void report_internal_error(struct pmvm_vcpu *v)
{
	struct kvm_run *run = v->run;
	struct kvm_regs regs;
	uint8_t insn[16];
	char hex[16 * 3 + 1] = "";
	unsigned n = 0;

	if (ioctl(v->fd, KVM_GET_REGS, &regs) < 0)
		memset(&regs, 0, sizeof(regs));
	else
		n = fetch_insn(v, regs.rip, insn);
	for (unsigned i = 0; i < n; i++)
		snprintf(hex + 3 * i, sizeof(hex) - 3 * i, "%02x%s", insn[i], i + 1 < n ? " " : "");
	pmvm_fail(v->vm, "vCPU %u: KVM internal error, suberror %u (%s) at RIP 0x%llx, "
		  "instruction bytes: %s%s", v->index, run->internal.suberror,
		  internal_error_name(run->internal.suberror), (unsigned long long)regs.rip,
		  n ? hex : "unavailable",
		  run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION
			  ? " (this KVM emulates guest code and lacks this instruction: see guests/README.md)"
			  : "");
}

/* Returns false when the vCPU must stop. */
static bool handle_exit(struct pmvm_vcpu *v)
{
	struct kvm_run *run = v->run;
	struct pmvm *vm = v->vm;

	switch (run->exit_reason) {
	case KVM_EXIT_IO:
		v->needs_completion = true;
		return handle_io(v);
	case KVM_EXIT_MMIO: {
		uint64_t a = run->mmio.phys_addr;
		unsigned len = run->mmio.len <= 8 ? run->mmio.len : 8;

		v->needs_completion = true;
		if (vm->disk && a >= PMVM_VIRTIO_BLK_GPA && a - PMVM_VIRTIO_BLK_GPA < VIRTIO_MMIO_SIZE) {
			if (run->mmio.is_write)
				virtio_mmio_write(&vm->vblk.t, a - PMVM_VIRTIO_BLK_GPA, run->mmio.data, len);
			else
				virtio_mmio_read(&vm->vblk.t, a - PMVM_VIRTIO_BLK_GPA, run->mmio.data, len);
		} else if (!run->mmio.is_write) {
			memset(run->mmio.data, 0xff, sizeof(run->mmio.data));
		}
		return true;
	}
	case KVM_EXIT_HLT:
		return true;
	case KVM_EXIT_INTR:
		return true;
	case KVM_EXIT_SHUTDOWN:
		pmvm_fail(vm, "guest vCPU %u shut down (triple fault)", v->index);
		return false;
	case KVM_EXIT_SYSTEM_EVENT:
		pmvm_fail(vm, "guest vCPU %u: system event %u (reset or shutdown)", v->index,
			  run->system_event.type);
		return false;
	case KVM_EXIT_FAIL_ENTRY:
		pmvm_fail(vm, "vCPU %u: VM entry failed, hardware reason 0x%llx", v->index,
			  (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		return false;
	case KVM_EXIT_INTERNAL_ERROR:
		report_internal_error(v);
		return false;
	default:
		pmvm_fail(vm, "vCPU %u: unhandled exit reason %u", v->index, run->exit_reason);
		return false;
	}
}

static void throttle_sleep(struct pmvm *vm)
{
	unsigned pct = __atomic_load_n(&vm->throttle_pct, __ATOMIC_RELAXED);

	if (pct) {
		/* The ticker kicks every 10 ms; sleep pct% of that period. */
		struct timespec ts = { 0, (long)pct * 100000L };

		nanosleep(&ts, NULL);
	}
}

static void *vcpu_thread(void *arg)
{
	struct pmvm_vcpu *v = arg;
	struct pmvm *vm = v->vm;
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, PMVM_KICK_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);

	for (;;) {
		pthread_mutex_lock(&vm->lock);
		if ((vm->pause_req || vm->stopping) && v->needs_completion) {
			/* Let KVM finish the I/O instruction it exited for, so the
			 * state we hand out is consistent; no guest code runs. */
			v->run->immediate_exit = 1;
			pthread_mutex_unlock(&vm->lock);
			if (ioctl(v->fd, KVM_RUN, 0) < 0 && errno != EINTR) {
				pmvm_fail(vm, "vCPU %u: completing I/O: %s", v->index, strerror(errno));
				pthread_mutex_lock(&vm->lock);
				break;
			}
			v->needs_completion = false;
			continue;
		}
		if (vm->pause_req || vm->stopping) {
			v->parked = true;
			vm->nparked++;
			pthread_cond_broadcast(&vm->cond);
			while (vm->pause_req && !vm->stopping)
				pthread_cond_wait(&vm->cond, &vm->lock);
			v->parked = false;
			vm->nparked--;
			if (vm->stopping)
				break;
		}
		v->run->immediate_exit = 0;
		pthread_mutex_unlock(&vm->lock);

		if (ioctl(v->fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN) {
				v->needs_completion = false;
				throttle_sleep(vm);
				continue;
			}
			pmvm_fail(vm, "vCPU %u: KVM_RUN: %s", v->index, strerror(errno));
			pthread_mutex_lock(&vm->lock);
			break;
		}
		v->needs_completion = false;
		if (!handle_exit(v)) {
			pthread_mutex_lock(&vm->lock);
			break;
		}
	}
	/* Here with vm->lock held. */
	v->done = true;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	return NULL;
}

static void kick_handler(int sig)
{
	(void)sig;
}

int pmvm_vcpus_start(struct pmvm *vm, bool paused, struct pm_err *err)
{
	struct sigaction sa;
	sigset_t set, old;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = kick_handler;   /* no SA_RESTART: KVM_RUN must return EINTR */
	sigemptyset(&sa.sa_mask);
	if (sigaction(PMVM_KICK_SIGNAL, &sa, NULL) < 0)
		return pm_err_set(err, errno, "sigaction: %s", strerror(errno));

	pthread_mutex_lock(&vm->lock);
	vm->pause_req = paused;
	pthread_mutex_unlock(&vm->lock);
	/* Threads start with the kick signal blocked and unblock it
	 * themselves, so it is never delivered to a half-made thread. */
	sigemptyset(&set);
	sigaddset(&set, PMVM_KICK_SIGNAL);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	for (unsigned i = 0; i < vm->nvcpus; i++) {
		int r = pthread_create(&vm->vcpus[i].thread, NULL, vcpu_thread, &vm->vcpus[i]);

		if (r) {
			pthread_sigmask(SIG_SETMASK, &old, NULL);
			return pm_err_set(err, r, "cannot start vCPU thread %u: %s", i, strerror(r));
		}
		vm->vcpus[i].started = true;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	/* A destination's load_state must find every vCPU parked. */
	return paused ? pmvm_pause(vm, err) : 0;
}

static void kick_all(struct pmvm *vm)
{
	for (unsigned i = 0; i < vm->nvcpus; i++)
		if (vm->vcpus[i].started && !vm->vcpus[i].done)
			pthread_kill(vm->vcpus[i].thread, PMVM_KICK_SIGNAL);
}

static unsigned quiet_vcpus(struct pmvm *vm)
{
	unsigned n = 0;

	for (unsigned i = 0; i < vm->nvcpus; i++)
		if (!vm->vcpus[i].started || vm->vcpus[i].parked || vm->vcpus[i].done)
			n++;
	return n;
}

/* Waits on vm->cond (vm->lock held) for at most ms milliseconds. */
static void wait_ms(struct pmvm *vm, long ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += ms * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(&vm->cond, &vm->lock, &ts);
}

int pmvm_pause(struct pmvm *vm, struct pm_err *err)
{
	int r;

	pthread_mutex_lock(&vm->lock);
	vm->pause_req = true;
	for (unsigned i = 0; i < vm->nvcpus; i++)
		vm->vcpus[i].run->immediate_exit = 1;
	while (quiet_vcpus(vm) < vm->nvcpus) {
		kick_all(vm);
		wait_ms(vm, 50);
	}
	r = pmvm_clock_freeze(vm, err);
	pthread_mutex_unlock(&vm->lock);
	return r;
}

int pmvm_resume(struct pmvm *vm, struct pm_err *err)
{
	pthread_mutex_lock(&vm->lock);
	if (vm->failed) {
		pthread_mutex_unlock(&vm->lock);
		return pm_err_set(err, EIO, "cannot resume: %s", vm->fail_msg);
	}
	if (pmvm_clock_thaw(vm, err)) {
		pthread_mutex_unlock(&vm->lock);
		return -err->code;
	}
	if (vm->pause_req)
		atomic_store(&vm->hb.resume_pending, true);
	vm->pause_req = false;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

bool pmvm_is_paused(struct pmvm *vm)
{
	bool p;

	pthread_mutex_lock(&vm->lock);
	p = vm->pause_req && quiet_vcpus(vm) == vm->nvcpus;
	pthread_mutex_unlock(&vm->lock);
	return p;
}

static void *throttle_thread(void *arg)
{
	struct pmvm *vm = arg;

	pthread_mutex_lock(&vm->lock);
	while (!vm->stopping) {
		if (vm->throttle_pct && !vm->pause_req)
			kick_all(vm);
		wait_ms(vm, 10);
	}
	pthread_mutex_unlock(&vm->lock);
	return NULL;
}

int pmvm_throttle(struct pmvm *vm, unsigned pct)
{
	int r = 0;

	if (pct > 99)
		pct = 99;
	pthread_mutex_lock(&vm->lock);
	__atomic_store_n(&vm->throttle_pct, pct, __ATOMIC_RELAXED);
	if (pct && !vm->throttle_started && !vm->stopping) {
		r = pthread_create(&vm->throttle_thread, NULL, throttle_thread, vm);
		vm->throttle_started = r == 0;
	}
	pthread_mutex_unlock(&vm->lock);
	return -r;
}

void pmvm_vcpus_stop(struct pmvm *vm)
{
	if (!vm->vcpus)
		return;
	pthread_mutex_lock(&vm->lock);
	vm->stopping = true;
	for (unsigned i = 0; i < vm->nvcpus; i++)
		if (vm->vcpus[i].run)
			vm->vcpus[i].run->immediate_exit = 1;
	pthread_cond_broadcast(&vm->cond);
	while (true) {
		unsigned done = 0;

		for (unsigned i = 0; i < vm->nvcpus; i++)
			if (!vm->vcpus[i].started || vm->vcpus[i].done)
				done++;
		if (done == vm->nvcpus)
			break;
		kick_all(vm);
		wait_ms(vm, 50);
	}
	pthread_mutex_unlock(&vm->lock);
	for (unsigned i = 0; i < vm->nvcpus; i++)
		if (vm->vcpus[i].started) {
			pthread_join(vm->vcpus[i].thread, NULL);
			vm->vcpus[i].started = false;
		}
	if (vm->throttle_started) {
		pthread_join(vm->throttle_thread, NULL);
		vm->throttle_started = false;
	}
}

/* ---- vCPU state ---- */

#define VIOCTL(v, req, arg, what)                                                        \
	do {                                                                             \
		if (ioctl((v)->fd, (req), (arg)) < 0)                                    \
			return pm_err_set(err, errno, "%s on vCPU %u: %s", (what), (v)->index, \
					  strerror(errno));                              \
	} while (0)

static int get_msrs(struct pmvm_vcpu *v, struct pmvm_vcpu_state *st, struct pm_err *err)
{
	struct pmvm *vm = v->vm;
	struct kvm_msrs *m;
	int n;

	m = calloc(1, sizeof(*m) + (vm->nmsrs + 1) * sizeof(m->entries[0]));
	st->msrs = calloc(vm->nmsrs + 1, sizeof(*st->msrs));
	if (!m || !st->msrs) {
		free(m);
		return pm_err_set(err, ENOMEM, "out of memory");
	}
	m->nmsrs = vm->nmsrs;
	for (unsigned i = 0; i < vm->nmsrs; i++)
		m->entries[i].index = vm->msrs[i];
	n = ioctl(v->fd, KVM_GET_MSRS, m);
	if (n < 0 || (unsigned)n != vm->nmsrs) {
		int e = n < 0 ? errno : EIO;
		uint32_t bad = n >= 0 ? vm->msrs[n] : 0;

		free(m);
		return pm_err_set(err, e, "KVM_GET_MSRS on vCPU %u failed at MSR 0x%x", v->index, bad);
	}
	memcpy(st->msrs, m->entries, vm->nmsrs * sizeof(*st->msrs));
	st->nmsrs = vm->nmsrs;
	free(m);
	return 0;
}

int pmvm_vcpu_save(struct pmvm_vcpu *v, struct pmvm_vcpu_state *st, struct pm_err *err)
{
	struct pmvm *vm = v->vm;
	int r;

	VIOCTL(v, KVM_GET_REGS, &st->regs, "KVM_GET_REGS");
	VIOCTL(v, KVM_GET_SREGS, &st->sregs, "KVM_GET_SREGS");
	VIOCTL(v, KVM_GET_FPU, &st->fpu, "KVM_GET_FPU");
	if (vm->xsave_size) {
		st->xsave = calloc(1, vm->xsave_size);
		if (!st->xsave)
			return pm_err_set(err, ENOMEM, "out of memory");
		st->xsave_len = vm->xsave_size;
		if (vm->xsave_size > sizeof(struct kvm_xsave))
			VIOCTL(v, KVM_GET_XSAVE2, st->xsave, "KVM_GET_XSAVE2");
		else
			VIOCTL(v, KVM_GET_XSAVE, st->xsave, "KVM_GET_XSAVE");
	}
	if (vm->has_xcrs) {
		VIOCTL(v, KVM_GET_XCRS, &st->xcrs, "KVM_GET_XCRS");
		st->has_xcrs = true;
	}
	r = get_msrs(v, st, err);
	if (r)
		return r;
	VIOCTL(v, KVM_GET_LAPIC, &st->lapic, "KVM_GET_LAPIC");
	VIOCTL(v, KVM_GET_VCPU_EVENTS, &st->events, "KVM_GET_VCPU_EVENTS");
	VIOCTL(v, KVM_GET_MP_STATE, &st->mp, "KVM_GET_MP_STATE");
	VIOCTL(v, KVM_GET_DEBUGREGS, &st->debugregs, "KVM_GET_DEBUGREGS");
	return 0;
}

static int set_msrs(struct pmvm_vcpu *v, const struct pmvm_vcpu_state *st, bool late,
		    struct pm_err *err)
{
	struct kvm_msrs *m = calloc(1, sizeof(*m) + (st->nmsrs + 1) * sizeof(m->entries[0]));
	unsigned k = 0;
	int n;

	if (!m)
		return pm_err_set(err, ENOMEM, "out of memory");
	for (unsigned i = 0; i < st->nmsrs; i++)
		if (pmvm_msr_after_lapic(st->msrs[i].index) == late)
			m->entries[k++] = st->msrs[i];
	m->nmsrs = k;
	if (k == 0) {
		free(m);
		return 0;
	}
	n = ioctl(v->fd, KVM_SET_MSRS, m);
	if (n < 0 || (unsigned)n != k) {
		int e = n < 0 ? errno : EINVAL;
		uint32_t bad = n >= 0 ? m->entries[n].index : 0;

		free(m);
		return pm_err_set(err, e, "vCPU %u: this host refused MSR 0x%x (KVM_SET_MSRS)",
				  v->index, bad);
	}
	free(m);
	return 0;
}

/* The order KVM needs (docs/pmvm.md, "Restore order"). */
int pmvm_vcpu_load(struct pmvm_vcpu *v, const struct pmvm_vcpu_state *st, struct pm_err *err)
{
	struct pmvm *vm = v->vm;
	struct kvm_vcpu_events ev = st->events;
	struct kvm_mp_state mp = st->mp;
	struct kvm_debugregs dr = st->debugregs;
	struct kvm_regs regs = st->regs;
	struct kvm_sregs sregs = st->sregs;
	struct kvm_fpu fpu = st->fpu;
	struct kvm_lapic_state lapic = st->lapic;
	int r;

	if (st->xsave_len > vm->xsave_size)
		return pm_err_set(err, EINVAL, "vCPU %u: XSAVE area of %u bytes, this host takes %u",
				  v->index, st->xsave_len, vm->xsave_size);
	if (st->has_xcrs && !vm->has_xcrs)
		return pm_err_set(err, EINVAL, "vCPU %u: state has XCRs, this host has none", v->index);

	/* 1. sregs: EFER, CRs and APIC base, which MSR and LAPIC writes are checked against. */
	VIOCTL(v, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");
	/* 2. general registers. */
	VIOCTL(v, KVM_SET_REGS, &regs, "KVM_SET_REGS");
	/* 3. XCRs, then FPU and XSAVE (XSAVE supersedes the legacy FPU image). */
	if (st->has_xcrs) {
		struct kvm_xcrs x = st->xcrs;

		VIOCTL(v, KVM_SET_XCRS, &x, "KVM_SET_XCRS");
	}
	VIOCTL(v, KVM_SET_FPU, &fpu, "KVM_SET_FPU");
	if (st->xsave_len) {
		uint8_t *x = calloc(1, vm->xsave_size);

		if (!x)
			return pm_err_set(err, ENOMEM, "out of memory");
		memcpy(x, st->xsave, st->xsave_len);
		if (ioctl(v->fd, KVM_SET_XSAVE, x) < 0) {
			int e = errno;

			free(x);
			return pm_err_set(err, e, "KVM_SET_XSAVE on vCPU %u: %s", v->index, strerror(e));
		}
		free(x);
	}
	/* 4. MSRs, except those that depend on the LAPIC. */
	r = set_msrs(v, st, false, err);
	if (r)
		return r;
	/* 5. LAPIC (after the APIC base in sregs). */
	VIOCTL(v, KVM_SET_LAPIC, &lapic, "KVM_SET_LAPIC");
	/* 6. TSC deadline, which needs the LAPIC timer mode. */
	r = set_msrs(v, st, true, err);
	if (r)
		return r;
	/* 7. pending events: NMI and SIPI fields are taken only when flagged. */
	ev.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
	VIOCTL(v, KVM_SET_VCPU_EVENTS, &ev, "KVM_SET_VCPU_EVENTS");
	/* 8. MP state, after the LAPIC and events it interacts with. */
	VIOCTL(v, KVM_SET_MP_STATE, &mp, "KVM_SET_MP_STATE");
	/* 9. debug registers. */
	dr.flags = 0;
	VIOCTL(v, KVM_SET_DEBUGREGS, &dr, "KVM_SET_DEBUGREGS");
	return 0;
}
