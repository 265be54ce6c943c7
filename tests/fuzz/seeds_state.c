/* SPDX-License-Identifier: MIT */
/* Seeds for fuzz/fuzz_state.c: device states as the real encoders make
 * them -- pmvm's (1 and 3 vCPUs, with MSRs and XSAVE) and the synthetic
 * VM's (without and with a disk) -- each of which must load. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <pmigrate/backend.h>
#include "pmvm/state.h"
#include "seed_vmstate.h"
#include "../../fuzz/fuzz_targets.h"
#include "seeds.h"

static struct seed with_selector(const char *name, uint8_t sel, const void *blob, size_t len)
{
	uint8_t *d = malloc(len + 1);

	d[0] = sel;
	memcpy(d + 1, blob, len);
	return (struct seed){ name, d, len + 1 };
}

static struct seed pmvm_seed(const char *name, unsigned nvcpus)
{
	struct pmvm_vm_state st = { 0 };
	struct pm_err e = { 0 };
	void *blob;
	size_t len;

	seed_vm_state(&st, nvcpus, 64 << 20);
	for (unsigned i = 0; i < nvcpus; i++) {
		struct pmvm_vcpu_state *v = &st.vcpus[i];
		v->regs.rip = 0x100000 + i;
		v->nmsrs = 3;
		v->msrs = calloc(3, sizeof(*v->msrs));
		for (unsigned k = 0; k < 3; k++)
			v->msrs[k] = (struct kvm_msr_entry){ .index = 0x10 + k, .data = k * 77 };
		v->xsave_len = PMVM_STATE_MIN_XSAVE;
		v->xsave = calloc(1, v->xsave_len);
	}
	if (pmvm_state_encode(&st, &blob, &len, &e))
		fail_msg("pmvm state: %s", e.msg);
	struct seed s = with_selector(name, FUZZ_STATE_PMVM, blob, len);
	free(blob);
	pmvm_state_free(&st);
	return s;
}

size_t fuzz_make_seeds(struct seed *s, size_t max)
{
	void *blob;
	size_t len, n = 0;

	s[n++] = pmvm_seed("pmvm-1vcpu", 1);
	s[n++] = pmvm_seed("pmvm-3vcpus", 3);
	for (int disk = 0; disk < 2; disk++) {
		if (fuzz_state_synvm_blob(disk, &blob, &len))
			fail_msg("synthetic VM state: cannot make one");
		s[n++] = with_selector(disk ? "synvm-disk" : "synvm", disk ? FUZZ_STATE_SYNVM_DISK : FUZZ_STATE_SYNVM,
				       blob, len);
		free(blob);
	}
	return n < max ? n : max;
}

void fuzz_check_seed(const struct seed *s)
{
	if (fuzz_state_last.rc)
		fail_msg("seed %s: the decoder refused a state its encoder made: %s", s->name, fuzz_state_last.msg);
}
