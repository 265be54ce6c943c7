/* SPDX-License-Identifier: MIT */
/* The pmvm device-state blob: everything besides RAM that a VM needs to
 * resume elsewhere.  Versioned and validated like the wire protocol (see
 * docs/pmvm.md, "State blob"): a decoder that returns 0 has checked every
 * length, index and count, and the checksum. */
#ifndef PMVM_STATE_H
#define PMVM_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <linux/kvm.h>
#include <pmigrate/error.h>

#include "rtc.h"
#include "serial.h"
#include "virtio_mmio.h"

#define PMVM_STATE_MAGIC     "PMVMSTAT"
#define PMVM_STATE_VERSION   3u    /* 2: rtc section; 3: virtio-blk section */
#define PMVM_STATE_MIN_VERSION 1u
#define PMVM_STATE_HDR_LEN   32u
#define PMVM_STATE_SEC_LEN   16u
#define PMVM_STATE_VM_INDEX  0xffffffffu
#define PMVM_STATE_MAX_MSRS  1024u
#define PMVM_STATE_MIN_XSAVE 4096u
#define PMVM_STATE_MAX_XSAVE (1u << 20)
#define PMVM_STATE_MAX_VCPUS 256u

enum pmvm_state_section {
	PMVM_SEC_CONFIG = 1,
	PMVM_SEC_PIC_MASTER,
	PMVM_SEC_PIC_SLAVE,
	PMVM_SEC_IOAPIC,
	PMVM_SEC_PIT2,
	PMVM_SEC_CLOCK,
	PMVM_SEC_SERIAL,
	PMVM_SEC_HEARTBEAT,    /* optional: older senders have none */
	PMVM_SEC_RTC,          /* optional, version 2 and up */
	PMVM_SEC_VIRTIO_BLK,   /* optional (a VM with a disk), version 3 and up */
	PMVM_SEC_VM_LAST = PMVM_SEC_VIRTIO_BLK,

	PMVM_SEC_REGS = 16,
	PMVM_SEC_SREGS,
	PMVM_SEC_FPU,
	PMVM_SEC_XSAVE,        /* optional: hosts without XSAVE */
	PMVM_SEC_XCRS,         /* optional: hosts without XCRs */
	PMVM_SEC_MSRS,
	PMVM_SEC_LAPIC,
	PMVM_SEC_EVENTS,
	PMVM_SEC_MP_STATE,
	PMVM_SEC_DEBUGREGS,
	PMVM_SEC_VCPU_LAST = PMVM_SEC_DEBUGREGS,
};

struct pmvm_vcpu_state {
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_fpu fpu;
	uint32_t xsave_len;            /* 0: no XSAVE section */
	uint8_t *xsave;                /* malloc'ed, xsave_len bytes */
	bool has_xcrs;
	struct kvm_xcrs xcrs;
	uint32_t nmsrs;
	struct kvm_msr_entry *msrs;    /* malloc'ed, nmsrs entries */
	struct kvm_lapic_state lapic;
	struct kvm_vcpu_events events;
	struct kvm_mp_state mp;
	struct kvm_debugregs debugregs;
};

/* The guest heartbeat's host timestamp travels, so the destination
 * measures the pause the guest saw across hosts. */
struct pmvm_heartbeat_state {
	uint64_t last_ns;              /* CLOCK_REALTIME of the last beat, 0: none */
	uint64_t count;
};

struct pmvm_vm_state {
	uint64_t mem_bytes;
	uint32_t nvcpus;
	struct kvm_irqchip pic_master, pic_slave, ioapic;
	struct kvm_pit_state2 pit;
	struct kvm_clock_data clock;
	struct pmvm_serial_state serial;
	bool has_heartbeat;
	struct pmvm_heartbeat_state heartbeat;
	bool has_rtc;
	struct pmvm_rtc_state rtc;
	bool has_virtio_blk;
	struct virtio_mmio_state virtio_blk;
	struct pmvm_vcpu_state *vcpus; /* malloc'ed, nvcpus entries */
};

/* Allocates st->vcpus (zeroed) for nvcpus. */
int pmvm_state_init(struct pmvm_vm_state *st, uint32_t nvcpus, struct pm_err *err);
void pmvm_state_free(struct pmvm_vm_state *st);

/* *buf is malloc'ed; the caller frees it. */
int pmvm_state_encode(const struct pmvm_vm_state *st, void **buf, size_t *len,
		      struct pm_err *err);
/* On success st is filled in (free with pmvm_state_free); on failure it is
 * left empty and err names what was wrong. */
int pmvm_state_decode(const void *buf, size_t len, struct pmvm_vm_state *st,
		      struct pm_err *err);

const char *pmvm_state_section_name(unsigned type);
uint32_t pmvm_crc32c(uint32_t crc, const void *buf, size_t len);

#endif
