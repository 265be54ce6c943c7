/* SPDX-License-Identifier: MIT */
/* An Intel MultiProcessor Specification 1.4 table: how a guest without
 * ACPI (Linux among them) finds its CPUs, the IOAPIC and how ISA
 * interrupts reach it.  Written at PMVM_EBDA_GPA (e820.h), where Linux
 * scans for the floating pointer. */
#ifndef PMVM_MPTABLE_H
#define PMVM_MPTABLE_H

#include <stddef.h>
#include <stdint.h>

#define PMVM_LAPIC_GPA   0xfee00000u
#define PMVM_IOAPIC_GPA  0xfec00000u
#define PMVM_ISA_IRQS    16u

/* Bytes the table takes for nvcpus (at most 1 KiB: the EBDA page). */
size_t pmvm_mptable_size(unsigned nvcpus);

/* Writes the floating pointer and the configuration table at buf, which
 * is guest-physical gpa: one processor entry per vCPU (APIC ID = index,
 * vCPU 0 the boot processor), an ISA bus, the IOAPIC (ID nvcpus) and ISA
 * IRQ i on IOAPIC pin i (KVM's default GSI routing), ExtINT on LINT0 and
 * NMI on LINT1.  cpu_signature and cpu_features come from CPUID leaf 1
 * (EAX, EDX).  Returns the bytes written. */
size_t pmvm_mptable_write(uint8_t *buf, uint32_t gpa, unsigned nvcpus, uint32_t cpu_signature,
			  uint32_t cpu_features);

#endif
