/* SPDX-License-Identifier: MIT */
/* CPUID and MSR policy: which CPUID entries a vCPU sees and which MSRs
 * migrate.  Pure functions, unit-tested without /dev/kvm. */
#ifndef PMVM_CPUID_H
#define PMVM_CPUID_H

#include <stdbool.h>
#include <stdint.h>
#include <linux/kvm.h>

#define PMVM_MSR_IA32_TSC           0x00000010u
#define PMVM_MSR_IA32_TSC_DEADLINE  0x000006e0u
#define PMVM_MSR_MTRR_DEF_TYPE      0x000002ffu

/* Edits the entries KVM_GET_SUPPORTED_CPUID returned for vCPU index of
 * nvcpus: initial APIC ID (leaf 1 EBX[31:24], leaves 0xb/0x1f EDX),
 * logical processor count, the hypervisor bit, and no PMU (leaf 0xa). */
void pmvm_cpuid_fixup(struct kvm_cpuid_entry2 *e, unsigned n, unsigned index, unsigned nvcpus);

/* True if the MSR is guest state pmvm carries across a migration. */
bool pmvm_msr_carried(uint32_t index);
/* True if the MSR must be restored after the LAPIC (TSC deadline). */
bool pmvm_msr_after_lapic(uint32_t index);

/* Keeps the carried MSRs of in[0, n) in out (may alias in), sorted and
 * without duplicates.  Returns how many were kept. */
unsigned pmvm_msr_filter(const uint32_t *in, unsigned n, uint32_t *out);

#endif
