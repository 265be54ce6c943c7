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

/* The features that need XSAVE state beyond x87 and SSE, which pmvm's CPU
 * does not offer: AVX, FMA, F16C (leaf 1 ECX); AVX2, AVX-512, MPX, PKU,
 * VAES, VPCLMULQDQ, AMX (leaf 7).  The state KVM saves is then all the
 * guest has: on some nested KVMs (SVM emulated by QEMU's TCG) a guest's
 * XSETBV never reaches KVM, so a larger XCR0 would neither be seen by KVM
 * nor migrate, and Linux warns about the XSAVE size at boot. */
#define PMVM_CPUID1_ECX_AVX   ((1u << 12) | (1u << 28) | (1u << 29))
#define PMVM_CPUID7_EBX_AVX   ((1u << 5) | (1u << 14) | (1u << 16) | (1u << 17) | (1u << 21) | \
			       (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31))
#define PMVM_CPUID7_ECX_AVX   ((1u << 1) | (1u << 3) | (1u << 4) | (1u << 6) | (1u << 9) | \
			       (1u << 10) | (1u << 11) | (1u << 12) | (1u << 14))
#define PMVM_CPUID7_EDX_AVX   ((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | \
			       (1u << 24) | (1u << 25))
#define PMVM_CPUID7_1_EAX_AVX ((1u << 4) | (1u << 5))

/* Edits the entries KVM_GET_SUPPORTED_CPUID returned for vCPU index of
 * nvcpus: initial APIC ID (leaf 1 EBX[31:24], leaves 0xb/0x1f EDX),
 * logical processor count, the hypervisor bit, no PMU (leaf 0xa), and
 * XSAVE state limited to x87 and SSE (leaves 1, 7 and 0xd, above). */
void pmvm_cpuid_fixup(struct kvm_cpuid_entry2 *e, unsigned n, unsigned index, unsigned nvcpus);

/* True if the MSR is guest state pmvm carries across a migration. */
bool pmvm_msr_carried(uint32_t index);
/* True if the MSR must be restored after the LAPIC (TSC deadline). */
bool pmvm_msr_after_lapic(uint32_t index);

/* Keeps the carried MSRs of in[0, n) in out (may alias in), sorted and
 * without duplicates.  Returns how many were kept. */
unsigned pmvm_msr_filter(const uint32_t *in, unsigned n, uint32_t *out);

#endif
