/* SPDX-License-Identifier: MIT */
/* Long-mode boot state: identity-mapping page tables, a 64-bit GDT with a
 * TSS, and the special registers that go with them.  Pure functions over
 * guest memory and KVM structs, so they are unit-tested without /dev/kvm. */
#ifndef PMVM_CPU_SETUP_H
#define PMVM_CPU_SETUP_H

#include <stddef.h>
#include <stdint.h>
#include <linux/kvm.h>
#include <pmigrate/error.h>

/* Page-table entry bits. */
#define PMVM_PTE_P   (1ull << 0)
#define PMVM_PTE_RW  (1ull << 1)
#define PMVM_PTE_PS  (1ull << 7)

/* GDT selectors. */
#define PMVM_SEL_CODE 0x08
#define PMVM_SEL_DATA 0x10
#define PMVM_SEL_TSS  0x18
#define PMVM_GDT_ENTRIES 5            /* null, code, data, TSS (two slots) */

#define PMVM_CR0_PE  (1ull << 0)
#define PMVM_CR0_MP  (1ull << 1)
#define PMVM_CR0_ET  (1ull << 4)
#define PMVM_CR0_NE  (1ull << 5)
#define PMVM_CR0_WP  (1ull << 16)
#define PMVM_CR0_PG  (1ull << 31)
#define PMVM_CR4_PAE (1ull << 5)
#define PMVM_CR4_OSFXSR (1ull << 9)
#define PMVM_CR4_OSXMMEXCPT (1ull << 10)
#define PMVM_EFER_LME (1ull << 8)
#define PMVM_EFER_LMA (1ull << 10)

/* Bytes of identity map needed to cover [0, top): whole GiBs. */
unsigned pmvm_pt_gib(uint64_t top);

/* Writes PML4, PDPT and page directories into mem (guest-physical 0 at
 * mem[0], mem_len bytes) so that [0, round_up(top, 1 GiB)) is identity
 * mapped with 2 MiB pages.  Fails if top needs more than PMVM_MAX_PD GiB or
 * the tables do not fit in mem. */
int pmvm_build_page_tables(uint8_t *mem, size_t mem_len, uint64_t top, struct pm_err *err);

/* Fills gdt[PMVM_GDT_ENTRIES]: null, 64-bit code, data, 64-bit TSS at
 * tss_base (limit 0x67). */
void pmvm_build_gdt(uint64_t gdt[PMVM_GDT_ENTRIES], uint64_t tss_base);

/* Decodes the base/limit/attributes of one 8-byte code/data descriptor
 * into a kvm_segment (selector set by the caller). */
void pmvm_gdt_to_segment(uint64_t desc, struct kvm_segment *seg);

/* Edits sregs (as read from a fresh vCPU) for 64-bit long mode with the
 * tables above: CR0/CR3/CR4/EFER, segments, GDT/IDT, TR. */
void pmvm_setup_long_mode_sregs(struct kvm_sregs *s);

/* Initial general registers of vCPU index. */
void pmvm_setup_regs(struct kvm_regs *r, uint64_t entry, unsigned index);

/* Initial x87/SSE state (FCW 0x37f, MXCSR 0x1f80). */
void pmvm_setup_fpu(struct kvm_fpu *f);

#endif
