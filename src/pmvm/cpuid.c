// SPDX-License-Identifier: MIT
#include "cpuid.h"

#include <stdlib.h>
#include <string.h>

void pmvm_cpuid_fixup(struct kvm_cpuid_entry2 *e, unsigned n, unsigned index, unsigned nvcpus)
{
	for (unsigned i = 0; i < n; i++) {
		switch (e[i].function) {
		case 0x1:
			/* EBX[31:24] initial APIC ID, [23:16] logical processors. */
			e[i].ebx = (e[i].ebx & 0x0000ffffu) | (index << 24) | ((nvcpus & 0xff) << 16);
			e[i].ecx |= 1u << 31;            /* running under a hypervisor */
			e[i].ecx &= ~PMVM_CPUID1_ECX_AVX;
			if (nvcpus > 1)
				e[i].edx |= 1u << 28;    /* HTT: the count above is valid */
			break;
		case 0x7:
			if (e[i].index == 0) {
				e[i].ebx &= ~PMVM_CPUID7_EBX_AVX;
				e[i].ecx &= ~PMVM_CPUID7_ECX_AVX;
				e[i].edx &= ~PMVM_CPUID7_EDX_AVX;
			} else if (e[i].index == 1) {
				e[i].eax &= ~PMVM_CPUID7_1_EAX_AVX;
			}
			break;
		case 0xd:
			/* XSAVE covers x87 and SSE state only (XCR0 <= 3), with
			 * the standard layout: 512 + 64 bytes. */
			if (e[i].index == 0) {
				e[i].eax &= 0x3;
				e[i].edx = 0;
				e[i].ebx = e[i].ecx = 576;
			} else if (e[i].index == 1) {
				e[i].eax &= ~(1u << 3);      /* no XSAVES: no supervisor state */
				e[i].ebx = e[i].ecx = e[i].edx = 0;
			} else {
				e[i].eax = e[i].ebx = e[i].ecx = e[i].edx = 0;
			}
			break;
		case 0xa:
			/* No PMU: its MSRs would not migrate. */
			e[i].eax = e[i].ebx = e[i].ecx = e[i].edx = 0;
			break;
		case 0xb:
		case 0x1f:
			e[i].edx = index;                /* x2APIC ID */
			break;
		default:
			break;
		}
	}
}

/* MSRs that hold guest state and that KVM lets userspace save and restore.
 * EFER, FS/GS base and APIC base travel in kvm_sregs, not here.  Left out:
 * PMU counters (no PMU in the CPUID above), Hyper-V (not enabled), machine
 * check banks, VMX/SVM capability and other read-only feature MSRs, which
 * describe the host and are set by KVM from CPUID. */
static const struct { uint32_t first, last; } carried[] = {
	{ 0x00000010, 0x00000010 }, /* IA32_TSC */
	{ 0x00000012, 0x00000012 }, /* KVM system time (old); not the wall clock (below) */
	{ 0x0000003a, 0x0000003a }, /* IA32_FEATURE_CONTROL */
	{ 0x0000003b, 0x0000003b }, /* IA32_TSC_ADJUST */
	{ 0x00000048, 0x00000048 }, /* IA32_SPEC_CTRL */
	{ 0x000000e1, 0x000000e1 }, /* IA32_UMWAIT_CONTROL */
	{ 0x00000174, 0x00000176 }, /* SYSENTER_CS/ESP/EIP */
	{ 0x0000017a, 0x0000017b }, /* MCG_STATUS, MCG_CTL */
	{ 0x000001a0, 0x000001a0 }, /* IA32_MISC_ENABLE */
	{ 0x000001d9, 0x000001d9 }, /* IA32_DEBUGCTL */
	{ 0x00000200, 0x0000020f }, /* variable MTRRs */
	{ 0x00000250, 0x00000250 }, /* MTRRfix64K_00000 */
	{ 0x00000258, 0x00000259 }, /* MTRRfix16K */
	{ 0x00000268, 0x0000026f }, /* MTRRfix4K */
	{ 0x00000277, 0x00000277 }, /* IA32_PAT */
	{ 0x000002ff, 0x000002ff }, /* MTRRdefType */
	{ 0x000006e0, 0x000006e0 }, /* IA32_TSC_DEADLINE (after the LAPIC) */
	{ 0x000006e1, 0x000006e1 }, /* IA32_PKRS */
	{ 0x00000da0, 0x00000da0 }, /* IA32_XSS */
	/* KVM PV: system time, async PF, steal time, PV EOI, poll control.  Not
	 * the wall-clock MSRs (0x11, 0x4b564d00): a write makes KVM store the
	 * host's time into guest memory at once, so restoring one would change
	 * migrated memory; the guest reads that structure only at boot. */
	{ 0x4b564d01, 0x4b564d06 },
	{ 0xc0000081, 0xc0000084 }, /* STAR, LSTAR, CSTAR, SFMASK */
	{ 0xc0000102, 0xc0000103 }, /* KERNEL_GS_BASE, TSC_AUX */
	{ 0xc001011f, 0xc001011f }, /* AMD VIRT_SPEC_CTRL (SSBD) */
};

bool pmvm_msr_carried(uint32_t index)
{
	for (unsigned i = 0; i < sizeof(carried) / sizeof(carried[0]); i++)
		if (index >= carried[i].first && index <= carried[i].last)
			return true;
	return false;
}

bool pmvm_msr_after_lapic(uint32_t index)
{
	return index == PMVM_MSR_IA32_TSC_DEADLINE;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

unsigned pmvm_msr_filter(const uint32_t *in, unsigned n, uint32_t *out)
{
	unsigned k = 0;

	for (unsigned i = 0; i < n; i++)
		if (pmvm_msr_carried(in[i]))
			out[k++] = in[i];
	qsort(out, k, sizeof(*out), cmp_u32);
	unsigned m = 0;
	for (unsigned i = 0; i < k; i++)
		if (m == 0 || out[m - 1] != out[i])
			out[m++] = out[i];
	return m;
}
