// SPDX-License-Identifier: MIT
/* Long mode from the first instruction: the same state a 64-bit boot loader
 * leaves behind (as Firecracker and kvmtool set up for a 64-bit kernel),
 * written here from the Intel SDM vol. 3 descriptions. */
#include "cpu_setup.h"

#include <errno.h>
#include <string.h>

#include "bootinfo.h"

#define GIB (1ull << 30)
#define MIB2 (2ull << 20)

unsigned pmvm_pt_gib(uint64_t top)
{
	return (unsigned)((top + GIB - 1) / GIB);
}

static void put64(uint8_t *mem, uint64_t gpa, uint64_t v)
{
	memcpy(mem + gpa, &v, sizeof(v));
}

int pmvm_build_page_tables(uint8_t *mem, size_t mem_len, uint64_t top, struct pm_err *err)
{
	unsigned ngib = pmvm_pt_gib(top);

	if (ngib == 0)
		return pm_err_set(err, EINVAL, "nothing to map (top of memory is 0)");
	if (ngib > PMVM_MAX_PD)
		return pm_err_set(err, E2BIG, "identity map of %u GiB exceeds the %u GiB pmvm maps",
				  ngib, PMVM_MAX_PD);
	if (PMVM_PD_GPA + (uint64_t)ngib * 4096 > mem_len)
		return pm_err_set(err, ENOSPC, "page tables do not fit in %zu bytes of guest memory",
				  mem_len);

	memset(mem + PMVM_PML4_GPA, 0, 4096);
	memset(mem + PMVM_PDPT_GPA, 0, 4096);
	put64(mem, PMVM_PML4_GPA, PMVM_PDPT_GPA | PMVM_PTE_P | PMVM_PTE_RW);
	for (unsigned g = 0; g < ngib; g++) {
		uint64_t pd = PMVM_PD_GPA + (uint64_t)g * 4096;

		put64(mem, PMVM_PDPT_GPA + g * 8ull, pd | PMVM_PTE_P | PMVM_PTE_RW);
		for (unsigned i = 0; i < 512; i++) {
			uint64_t pa = (uint64_t)g * GIB + (uint64_t)i * MIB2;

			put64(mem, pd + i * 8ull, pa | PMVM_PTE_P | PMVM_PTE_RW | PMVM_PTE_PS);
		}
	}
	return 0;
}

/* An 8-byte segment descriptor (SDM 3.4.5). */
static uint64_t seg_desc(uint32_t base, uint32_t limit, unsigned access, unsigned flags)
{
	return ((uint64_t)(limit & 0xffff)) |
	       ((uint64_t)(base & 0xffffff) << 16) |
	       ((uint64_t)(access & 0xff) << 40) |
	       ((uint64_t)((limit >> 16) & 0xf) << 48) |
	       ((uint64_t)(flags & 0xf) << 52) |
	       ((uint64_t)((base >> 24) & 0xff) << 56);
}

void pmvm_build_gdt(uint64_t gdt[PMVM_GDT_ENTRIES], uint64_t tss_base)
{
	gdt[0] = 0;
	/* access 0x9b: present, DPL 0, code, exec/read, accessed;
	 * flags 0xa: G=1, L=1 (64-bit), D=0. */
	gdt[1] = seg_desc(0, 0xfffff, 0x9b, 0xa);
	/* access 0x93: present, DPL 0, data, read/write, accessed;
	 * flags 0xc: G=1, D/B=1. */
	gdt[2] = seg_desc(0, 0xfffff, 0x93, 0xc);
	/* 64-bit TSS, busy (type 0xb), present; 16 bytes (SDM 7.2.3). */
	gdt[3] = seg_desc((uint32_t)tss_base, 0x67, 0x8b, 0x0);
	gdt[4] = tss_base >> 32;
}

void pmvm_gdt_to_segment(uint64_t desc, struct kvm_segment *seg)
{
	unsigned access = (desc >> 40) & 0xff;
	unsigned flags = (desc >> 52) & 0xf;
	uint32_t limit = (uint32_t)((desc & 0xffff) | (((desc >> 48) & 0xf) << 16));

	seg->base = ((desc >> 16) & 0xffffff) | (((desc >> 56) & 0xff) << 24);
	seg->g = (flags >> 3) & 1;
	seg->limit = seg->g ? (limit << 12) | 0xfff : limit;
	seg->type = access & 0xf;
	seg->s = (access >> 4) & 1;
	seg->dpl = (access >> 5) & 3;
	seg->present = (access >> 7) & 1;
	seg->avl = (flags >> 0) & 1;
	seg->l = (flags >> 1) & 1;
	seg->db = (flags >> 2) & 1;
	seg->unusable = !seg->present;
}

void pmvm_setup_long_mode_sregs(struct kvm_sregs *s)
{
	uint64_t gdt[PMVM_GDT_ENTRIES];
	struct kvm_segment code = {0}, data = {0}, tss = {0};

	pmvm_build_gdt(gdt, PMVM_TSS_GPA);
	pmvm_gdt_to_segment(gdt[1], &code);
	code.selector = PMVM_SEL_CODE;
	pmvm_gdt_to_segment(gdt[2], &data);
	data.selector = PMVM_SEL_DATA;
	pmvm_gdt_to_segment(gdt[3], &tss);
	tss.selector = PMVM_SEL_TSS;
	tss.base = PMVM_TSS_GPA;

	s->cs = code;
	s->ds = s->es = s->fs = s->gs = s->ss = data;
	s->tr = tss;
	s->gdt.base = PMVM_GDT_GPA;
	s->gdt.limit = PMVM_GDT_ENTRIES * 8 - 1;
	s->idt.base = 0;
	s->idt.limit = 0;     /* no IDT: any exception ends in a triple fault */

	s->cr0 = PMVM_CR0_PE | PMVM_CR0_MP | PMVM_CR0_ET | PMVM_CR0_NE | PMVM_CR0_WP | PMVM_CR0_PG;
	s->cr3 = PMVM_PML4_GPA;
	s->cr4 = PMVM_CR4_PAE | PMVM_CR4_OSFXSR | PMVM_CR4_OSXMMEXCPT;
	s->efer = PMVM_EFER_LME | PMVM_EFER_LMA;
}

void pmvm_setup_regs(struct kvm_regs *r, uint64_t entry, unsigned index)
{
	memset(r, 0, sizeof(*r));
	r->rip = entry;
	r->rflags = 0x2;     /* bit 1 is reserved-one; IF clear */
	r->rsp = PMVM_STACK_TOP - (uint64_t)index * PMVM_STACK_SIZE;
	r->rdi = PMVM_BOOTINFO_GPA;
	r->rsi = index;
}

void pmvm_setup_fpu(struct kvm_fpu *f)
{
	memset(f, 0, sizeof(*f));
	f->fcw = 0x37f;
	f->mxcsr = 0x1f80;
}
