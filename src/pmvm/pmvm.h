/* SPDX-License-Identifier: MIT */
/* pmvm: one KVM virtual machine.  kvm.c owns the VM, its memory and
 * devices; vcpu.c the vCPU threads, pause/resume and vCPU state; backend.c
 * turns it into a struct pm_backend for the migration engine. */
#ifndef PMVM_PMVM_H
#define PMVM_PMVM_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <linux/kvm.h>
#include <pmigrate/backend.h>
#include <pmigrate/error.h>
#include <pmigrate/guestmem.h>

#include "bzimage.h"
#include "config.h"
#include "rtc.h"
#include "serial.h"
#include "state.h"
#include "virtio_blk.h"

#define PMVM_KICK_SIGNAL SIGUSR1
#define PMVM_MAX_SLOTS 2

struct pmvm;

struct pmvm_vcpu {
	struct pmvm *vm;
	unsigned index;
	int fd;
	struct kvm_run *run;
	size_t run_size;
	pthread_t thread;
	bool started;
	bool parked;                   /* under vm->lock */
	bool done;                     /* thread left its loop; under vm->lock */
	bool needs_completion;         /* last exit was I/O or MMIO: re-enter before saving state */
};

struct pmvm_slot {
	uint64_t gpa;
	uint64_t npages;
	uint8_t *host;
	uint64_t *bitmap;              /* dirty pages not harvested yet: syncs add, harvests take */
	uint64_t *synced;              /* KVM_GET_DIRTY_LOG's buffer */
	uint8_t *cleared;              /* per clear block: KVM's bits cleared since the last sync */
	pthread_mutex_t clear_lock;    /* first harvest of a block clears it, the others wait */
	/* Pages pmvm's devices wrote (KVM's log does not see them): set
	 * after the write, always, and folded into every harvest. */
	_Atomic uint64_t *dev_dirty;
};

/* The guest's heartbeat (writes to PMVM_HEARTBEAT_PORT), timestamped with
 * the host's CLOCK_REALTIME so that a gap spanning two hosts is measured
 * too: the last timestamp travels in the device state. */
struct pmvm_heartbeat {
	_Atomic uint64_t last_ns;      /* 0: none yet */
	_Atomic uint64_t count;
	_Atomic uint64_t max_gap_ns;
	_Atomic uint64_t resume_gap_ns; /* gap across the last pause */
	_Atomic uint64_t resumes;
	atomic_bool resume_pending;    /* the next beat measures resume_gap_ns */
};

struct pmvm {
	int kvm_fd, vm_fd;
	unsigned nvcpus;
	uint64_t mem_bytes;
	struct pm_guestmem gm;         /* all RAM, mapped once */
	uint8_t *mem;                  /* gm.base */
	unsigned nslots;
	struct pmvm_slot slots[PMVM_MAX_SLOTS];
	struct pm_region regions[PMVM_MAX_SLOTS];
	bool dirty_logging;
	pthread_rwlock_t dirty_lock;   /* sync (writer) vs harvests (readers) */

	/* Host capabilities. */
	uint32_t xsave_size;           /* 0: no XSAVE */
	bool has_xcrs;
	uint32_t tsc_khz;
	struct kvm_cpuid2 *cpuid;      /* KVM_GET_SUPPORTED_CPUID */
	uint32_t *msrs;                /* carried MSRs that this host reads */
	unsigned nmsrs;

	struct pmvm_vcpu *vcpus;
	bool linux_guest;              /* booted by the Linux boot protocol */

	/* Devices. */
	struct pmvm_heartbeat hb;
	struct pmvm_serial serial;
	struct pmvm_rtc rtc;
	int serial_fd;
	/* --disk: the image and its virtio-blk device; the engine's view. */
	struct pm_disk *disk;
	struct pmvm_virtio_blk vblk;
	struct pm_blockdev blockdev;
	char serial_line[256];
	size_t serial_len;

	/* vCPU run control, under lock. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool pause_req;
	bool stopping;
	unsigned nparked;
	unsigned throttle_pct;
	bool throttle_started;
	pthread_t throttle_thread;

	/* kvmclock stands still while the VM is paused (as QEMU's does): read
	 * at the pause, written back at the resume, so the guest's clocks do
	 * not count a pause, the pause of a migration included.  Under lock. */
	bool clock_frozen;
	struct kvm_clock_data clock_at_pause;

	/* Outcome, under lock; cond is broadcast when any changes. */
	bool guest_exited;
	int exit_code;
	bool failed;
	char fail_msg[400];
	bool quit;
};

/* kvm.c */
int pmvm_create(struct pmvm *vm, const struct pmvm_config *c, struct pm_err *err);
void pmvm_destroy(struct pmvm *vm);
int pmvm_boot(struct pmvm *vm, const struct pmvm_config *c, const uint8_t *image,
	      size_t image_len, struct pm_err *err);
/* Loads a Linux kernel (bzimage.h), writes the MP table and starts vCPU 0
 * at its 64-bit entry; the others wait for INIT/SIPI. */
int pmvm_boot_linux(struct pmvm *vm, const struct pmvm_linux_boot *b, struct pm_err *err);
int pmvm_set_dirty_logging(struct pmvm *vm, bool on, struct pm_err *err);
void pmvm_serial_flush(struct pmvm *vm);
int pmvm_save_vm(struct pmvm *vm, struct pmvm_vm_state *st, struct pm_err *err);
int pmvm_load_vm_early(struct pmvm *vm, const struct pmvm_vm_state *st, struct pm_err *err);
int pmvm_load_vm_late(struct pmvm *vm, const struct pmvm_vm_state *st, struct pm_err *err);
/* vm->lock held: kvmclock read at a pause, and written back at the resume. */
int pmvm_clock_freeze(struct pmvm *vm, struct pm_err *err);
int pmvm_clock_thaw(struct pmvm *vm, struct pm_err *err);

/* Host address of [gpa, gpa + len) when it lies in one RAM slot, else NULL. */
void *pmvm_gpa(struct pmvm *vm, uint64_t gpa, uint64_t len);
/* A device wrote guest memory [gpa, gpa + len): dirty for migration. */
void pmvm_mark_dirty(struct pmvm *vm, uint64_t gpa, uint64_t len);

/* vcpu.c */
int pmvm_vcpus_create(struct pmvm *vm, struct pm_err *err);
int pmvm_vcpu_boot(struct pmvm_vcpu *v, uint64_t entry, struct pm_err *err);
int pmvm_vcpu_boot_linux(struct pmvm_vcpu *v, uint64_t entry, uint64_t boot_params,
			 struct pm_err *err);
int pmvm_vcpus_start(struct pmvm *vm, bool paused, struct pm_err *err);
int pmvm_pause(struct pmvm *vm, struct pm_err *err);
int pmvm_resume(struct pmvm *vm, struct pm_err *err);
bool pmvm_is_paused(struct pmvm *vm);
int pmvm_throttle(struct pmvm *vm, unsigned pct);
void pmvm_vcpus_stop(struct pmvm *vm);
int pmvm_vcpu_save(struct pmvm_vcpu *v, struct pmvm_vcpu_state *st, struct pm_err *err);
int pmvm_vcpu_load(struct pmvm_vcpu *v, const struct pmvm_vcpu_state *st, struct pm_err *err);
/* Records a fatal condition, parks every vCPU and wakes the main thread. */
void pmvm_fail(struct pmvm *vm, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* One guest heartbeat, now. */
void pmvm_heartbeat_beat(struct pmvm *vm);

/* backend.c */
void pmvm_backend_init(struct pm_backend *be, struct pmvm *vm);

#endif
