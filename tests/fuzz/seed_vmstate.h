/* SPDX-License-Identifier: MIT */
/* A pmvm machine state as KVM would hand it over (the chips numbered, the
 * vCPUs runnable), for the seeds that carry a STATE. */
#ifndef TESTS_FUZZ_SEED_VMSTATE_H
#define TESTS_FUZZ_SEED_VMSTATE_H

#include <stdlib.h>
#include <string.h>
#include "pmvm/state.h"

static inline void seed_vm_state(struct pmvm_vm_state *st, unsigned nvcpus, uint64_t mem_bytes)
{
	struct pm_err e = { 0 };

	memset(st, 0, sizeof(*st));
	if (pmvm_state_init(st, nvcpus, &e))
		abort();
	st->pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
	st->ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
	for (unsigned i = 0; i < nvcpus; i++)
		st->vcpus[i].mp.mp_state = KVM_MP_STATE_RUNNABLE;
	st->mem_bytes = mem_bytes;
}

#endif
