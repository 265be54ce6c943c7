// SPDX-License-Identifier: MIT
/* pmvm's pure parts, without /dev/kvm: state blob codec, long-mode tables,
 * GDT and registers, CPUID/MSR policy, 16550, loader and the built guests,
 * command line, dirty-bit harvesting. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <cmocka.h>

#include "bootinfo.h"
#include "bzimage.h"
#include "e820.h"
#include "mptable.h"
#include "rtc.h"
#include "config.h"
#include "cpu_setup.h"
#include "cpuid.h"
#include "dirtylog.h"
#include "loader.h"
#include "serial.h"
#include "state.h"

static uint64_t rng = 0x1234567;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void fill_rand(void *p, size_t n)
{
	uint8_t *b = p;

	for (size_t i = 0; i < n; i++)
		b[i] = (uint8_t)rnd();
}

/* ---- state blob ---- */

static void make_state(struct pmvm_vm_state *st, unsigned nvcpus)
{
	struct pm_err err = {0};

	assert_int_equal(pmvm_state_init(st, nvcpus, &err), 0);
	st->mem_bytes = 32ull << 20;
	fill_rand(&st->pic_master, sizeof(st->pic_master));
	st->pic_master.chip_id = KVM_IRQCHIP_PIC_MASTER;
	fill_rand(&st->pic_slave, sizeof(st->pic_slave));
	st->pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
	fill_rand(&st->ioapic, sizeof(st->ioapic));
	st->ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
	fill_rand(&st->pit, sizeof(st->pit));
	fill_rand(&st->clock, sizeof(st->clock));
	st->serial = (struct pmvm_serial_state){ .ier = 2, .lcr = 3, .mcr = 0xb, .scr = 0x5a,
						 .dll = 1, .lsr = 0x60 };
	st->has_rtc = true;
	fill_rand(st->rtc.ram, sizeof(st->rtc.ram));
	st->rtc.index = 0x0e;
	st->has_virtio_blk = true;
	st->virtio_blk = (struct virtio_mmio_state){ .status = 15, .driver_features = 1ull << 32 | 1u << 9,
		.int_status = 1, .q[0] = { .num = 16, .ready = 1, .desc = 0x10000, .avail = 0x11000,
					    .used = 0x12000, .last_avail = 77 } };
	for (unsigned i = 0; i < nvcpus; i++) {
		struct pmvm_vcpu_state *v = &st->vcpus[i];

		fill_rand(&v->regs, sizeof(v->regs));
		fill_rand(&v->sregs, sizeof(v->sregs));
		fill_rand(&v->fpu, sizeof(v->fpu));
		v->xsave_len = 4096 + (i ? 64 : 0);
		v->xsave = malloc(v->xsave_len);
		fill_rand(v->xsave, v->xsave_len);
		v->has_xcrs = true;
		fill_rand(&v->xcrs, sizeof(v->xcrs));
		v->xcrs.nr_xcrs = 1;
		v->xcrs.flags = 0;
		v->nmsrs = 5;
		v->msrs = calloc(5, sizeof(*v->msrs));
		for (unsigned k = 0; k < 5; k++) {
			v->msrs[k].index = 0x10 + k * 0x100;
			v->msrs[k].data = rnd();
		}
		fill_rand(&v->lapic, sizeof(v->lapic));
		fill_rand(&v->events, sizeof(v->events));
		v->mp.mp_state = KVM_MP_STATE_RUNNABLE;
		fill_rand(&v->debugregs, sizeof(v->debugregs));
	}
}

static void assert_state_equal(const struct pmvm_vm_state *a, const struct pmvm_vm_state *b)
{
	assert_int_equal(a->mem_bytes, b->mem_bytes);
	assert_int_equal(a->nvcpus, b->nvcpus);
	assert_memory_equal(&a->pic_master, &b->pic_master, sizeof(a->pic_master));
	assert_memory_equal(&a->pic_slave, &b->pic_slave, sizeof(a->pic_slave));
	assert_memory_equal(&a->ioapic, &b->ioapic, sizeof(a->ioapic));
	assert_memory_equal(&a->pit, &b->pit, sizeof(a->pit));
	assert_memory_equal(&a->clock, &b->clock, sizeof(a->clock));
	assert_memory_equal(&a->serial, &b->serial, sizeof(a->serial));
	assert_int_equal(a->has_rtc, b->has_rtc);
	assert_memory_equal(&a->rtc, &b->rtc, sizeof(a->rtc));
	assert_int_equal(a->has_virtio_blk, b->has_virtio_blk);
	assert_memory_equal(&a->virtio_blk, &b->virtio_blk, sizeof(a->virtio_blk));
	for (unsigned i = 0; i < a->nvcpus; i++) {
		const struct pmvm_vcpu_state *x = &a->vcpus[i], *y = &b->vcpus[i];

		assert_memory_equal(&x->regs, &y->regs, sizeof(x->regs));
		assert_memory_equal(&x->sregs, &y->sregs, sizeof(x->sregs));
		assert_memory_equal(&x->fpu, &y->fpu, sizeof(x->fpu));
		assert_int_equal(x->xsave_len, y->xsave_len);
		assert_memory_equal(x->xsave, y->xsave, x->xsave_len);
		assert_int_equal(x->has_xcrs, y->has_xcrs);
		assert_memory_equal(&x->xcrs, &y->xcrs, sizeof(x->xcrs));
		assert_int_equal(x->nmsrs, y->nmsrs);
		assert_memory_equal(x->msrs, y->msrs, x->nmsrs * sizeof(*x->msrs));
		assert_memory_equal(&x->lapic, &y->lapic, sizeof(x->lapic));
		assert_memory_equal(&x->events, &y->events, sizeof(x->events));
		assert_memory_equal(&x->mp, &y->mp, sizeof(x->mp));
		assert_memory_equal(&x->debugregs, &y->debugregs, sizeof(x->debugregs));
	}
}

static void test_state_roundtrip(void **unused)
{
	struct pmvm_vm_state a, b;
	struct pm_err err = {0};
	void *buf;
	size_t len;

	make_state(&a, 2);
	assert_int_equal(pmvm_state_encode(&a, &buf, &len, &err), 0);
	assert_int_equal(len % 8, 0);
	assert_memory_equal(buf, PMVM_STATE_MAGIC, 8);
	assert_int_equal(pmvm_state_decode(buf, len, &b, &err), 0);
	assert_state_equal(&a, &b);

	/* Without the optional sections too. */
	pmvm_state_free(&b);
	free(buf);
	a.has_rtc = false;
	memset(&a.rtc, 0, sizeof(a.rtc));
	a.has_virtio_blk = false;
	memset(&a.virtio_blk, 0, sizeof(a.virtio_blk));
	for (unsigned i = 0; i < a.nvcpus; i++) {
		free(a.vcpus[i].xsave);
		a.vcpus[i].xsave = NULL;
		a.vcpus[i].xsave_len = 0;
		a.vcpus[i].has_xcrs = false;
		memset(&a.vcpus[i].xcrs, 0, sizeof(a.vcpus[i].xcrs));
	}
	assert_int_equal(pmvm_state_encode(&a, &buf, &len, &err), 0);
	assert_int_equal(pmvm_state_decode(buf, len, &b, &err), 0);
	assert_state_equal(&a, &b);
	pmvm_state_free(&a);
	pmvm_state_free(&b);
	free(buf);
}

static void recrc(uint8_t *buf, size_t len)
{
	uint32_t crc = pmvm_crc32c(0, buf + PMVM_STATE_HDR_LEN, len - PMVM_STATE_HDR_LEN);

	memcpy(buf + 28, &crc, 4);
}

static void expect_reject(const void *buf, size_t len, const char *needle)
{
	struct pmvm_vm_state st;
	struct pm_err err = {0};

	assert_int_equal(pmvm_state_decode(buf, len, &st, &err), -EPROTO);
	assert_null(st.vcpus);
	if (needle && !strstr(err.msg, needle)) {
		print_error("message '%s' lacks '%s'\n", err.msg, needle);
		fail();
	}
}

/* Offset of the first section of type t in an encoded blob. */
static size_t find_section(const uint8_t *buf, size_t len, unsigned t)
{
	size_t off = PMVM_STATE_HDR_LEN;

	while (off + 16 <= len) {
		uint16_t type;
		uint32_t slen;

		memcpy(&type, buf + off, 2);
		memcpy(&slen, buf + off + 8, 4);
		if (type == t)
			return off;
		off += 16 + ((slen + 7) & ~7u);
	}
	fail_msg("section %u not found", t);
	return 0;
}

static void test_state_rejects(void **unused)
{
	struct pmvm_vm_state a;
	struct pm_err err = {0};
	uint8_t *buf, *bad;
	size_t len, off;
	void *v;

	make_state(&a, 2);
	assert_int_equal(pmvm_state_encode(&a, &v, &len, &err), 0);
	buf = v;
	bad = malloc(len);

	/* Every truncation. */
	for (size_t l = 0; l < len; l += (l < 64 ? 1 : 37))
		expect_reject(buf, l, NULL);
	expect_reject(buf, 10, "shorter than its");
	expect_reject(buf, len - 8, "truncated");

	/* Garbage. */
	fill_rand(bad, len);
	expect_reject(bad, len, "magic");

	/* A flipped bit anywhere after the header: the checksum. */
	for (int i = 0; i < 50; i++) {
		memcpy(bad, buf, len);
		bad[PMVM_STATE_HDR_LEN + rnd() % (len - PMVM_STATE_HDR_LEN)] ^= (uint8_t)(1u << (rnd() % 8));
		expect_reject(bad, len, "checksum");
	}

	/* A newer version is named. */
	memcpy(bad, buf, len);
	bad[8] = PMVM_STATE_VERSION + 1;
	char want[32];
	snprintf(want, sizeof(want), "version %u,", PMVM_STATE_VERSION + 1);
	expect_reject(bad, len, want);

	/* Deeper checks, with the checksum made right. */
	memcpy(bad, buf, len);
	off = find_section(bad, len, PMVM_SEC_MSRS);
	{
		uint32_t n = 100000;

		memcpy(bad + off + 16, &n, 4);
	}
	recrc(bad, len);
	expect_reject(bad, len, "MSR count");

	memcpy(bad, buf, len);
	off = find_section(bad, len, PMVM_SEC_REGS);
	{
		uint32_t vcpu = 7;

		memcpy(bad + off + 4, &vcpu, 4);
	}
	recrc(bad, len);
	expect_reject(bad, len, "vCPU 7");

	memcpy(bad, buf, len);
	off = find_section(bad, len, PMVM_SEC_LAPIC);
	{
		uint16_t t = 99;

		memcpy(bad + off, &t, 2);
	}
	recrc(bad, len);
	expect_reject(bad, len, "unknown type 99");

	/* A repeated section: turn vCPU 1's REGS into vCPU 0's. */
	memcpy(bad, buf, len);
	off = find_section(bad, len, PMVM_SEC_DEBUGREGS);   /* vCPU 0's last section */
	{
		size_t next = off + 16 + ((sizeof(struct kvm_debugregs) + 7) & ~7u); /* vCPU 1's REGS */
		uint32_t zero = 0;

		memcpy(bad + next + 4, &zero, 4);
	}
	recrc(bad, len);
	expect_reject(bad, len, "repeated");

	/* A missing section: rename vCPU 1's debugregs to ... vCPU 1's regs type
	 * would repeat; instead cut the blob before it and fix the header. */
	{
		size_t last = len - 16 - ((sizeof(struct kvm_debugregs) + 7) & ~7u);
		uint64_t total = last;
		uint32_t nsec;

		memcpy(bad, buf, last);
		memcpy(bad + 16, &total, 8);
		memcpy(&nsec, bad + 24, 4);
		nsec--;
		memcpy(bad + 24, &nsec, 4);
		recrc(bad, last);
		expect_reject(bad, last, "missing section debugregs of vCPU 1");
	}

	/* An rtc section in a version-1 blob (version 1 had none). */
	memcpy(bad, buf, len);
	bad[8] = 1;
	recrc(bad, len);
	expect_reject(bad, len, "for version 1");

	/* An rtc state no MC146818 has. */
	memcpy(bad, buf, len);
	off = find_section(bad, len, PMVM_SEC_RTC);
	bad[off + 16] = 0x80;
	recrc(bad, len);
	expect_reject(bad, len, "MC146818");

	/* A virtio-blk section in a version-2 blob (version 2 had none). */
	memcpy(bad, buf, len);
	bad[8] = 2;
	off = find_section(bad, len, PMVM_SEC_RTC);       /* keep rtc legal: it is version 2 */
	recrc(bad, len);
	expect_reject(bad, len, "for version 2");

	/* A virtio-blk state the device cannot be in: a queue size that is
	 * not a power of two, status bits that do not exist. */
	memcpy(bad, buf, len);
	off = find_section(bad, len, PMVM_SEC_VIRTIO_BLK);
	{
		struct virtio_mmio_state vs;
		memcpy(&vs, bad + off + 16, sizeof(vs));
		vs.q[0].num = 12;
		memcpy(bad + off + 16, &vs, sizeof(vs));
	}
	recrc(bad, len);
	expect_reject(bad, len, "virtio-blk state");
	memcpy(bad, buf, len);
	bad[off + 16] = 0x30;                             /* status: unknown bits */
	recrc(bad, len);
	expect_reject(bad, len, "virtio-blk state");

	/* Wrong chip in the PIC section. */
	memcpy(bad, buf, len);
	off = find_section(bad, len, PMVM_SEC_PIC_MASTER);
	bad[off + 16] = KVM_IRQCHIP_IOAPIC;
	recrc(bad, len);
	expect_reject(bad, len, "chip");

	free(bad);
	free(buf);
	pmvm_state_free(&a);
}

/* ---- long mode ---- */

static uint64_t get64(const uint8_t *mem, uint64_t gpa)
{
	uint64_t v;

	memcpy(&v, mem + gpa, 8);
	return v;
}

static void test_page_tables(void **unused)
{
	size_t len = 8 << 20;
	uint8_t *mem = calloc(1, len);
	struct pm_err err = {0};

	assert_int_equal(pmvm_build_page_tables(mem, len, 64ull << 20, &err), 0);
	assert_int_equal(get64(mem, PMVM_PML4_GPA), PMVM_PDPT_GPA | 3);
	assert_int_equal(get64(mem, PMVM_PML4_GPA + 8), 0);
	assert_int_equal(get64(mem, PMVM_PDPT_GPA), PMVM_PD_GPA | 3);
	assert_int_equal(get64(mem, PMVM_PDPT_GPA + 8), 0);
	for (unsigned i = 0; i < 512; i++)
		assert_int_equal(get64(mem, PMVM_PD_GPA + i * 8), ((uint64_t)i << 21) | 0x83);

	/* 5 GiB (3 low + hole + 1 high): five directories. */
	memset(mem, 0, len);
	assert_int_equal(pmvm_build_page_tables(mem, len, 5ull << 30, &err), 0);
	for (unsigned g = 0; g < 5; g++) {
		uint64_t pd = PMVM_PD_GPA + g * 4096ull;

		assert_int_equal(get64(mem, PMVM_PDPT_GPA + g * 8), pd | 3);
		assert_int_equal(get64(mem, pd), ((uint64_t)g << 30) | 0x83);
		assert_int_equal(get64(mem, pd + 511 * 8), ((uint64_t)g << 30) + (511ull << 21) + 0x83);
	}
	assert_int_equal(get64(mem, PMVM_PDPT_GPA + 5 * 8), 0);
	/* The tables stay below the stacks and the image. */
	assert_true(PMVM_PD_GPA + PMVM_MAX_PD * 4096 <= PMVM_STACK_TOP - PMVM_MAX_VCPUS * PMVM_STACK_SIZE);

	err = (struct pm_err){0};
	assert_int_equal(pmvm_build_page_tables(mem, len, (PMVM_MAX_PD + 1ull) << 30, &err), -E2BIG);
	err = (struct pm_err){0};
	assert_int_equal(pmvm_build_page_tables(mem, 0x6000, 2ull << 30, &err), -ENOSPC);
	err = (struct pm_err){0};
	assert_int_equal(pmvm_build_page_tables(mem, len, 0, &err), -EINVAL);
	free(mem);
}

static void test_gdt(void **unused)
{
	uint64_t gdt[PMVM_GDT_ENTRIES];
	struct kvm_segment s;

	pmvm_build_gdt(gdt, PMVM_TSS_GPA);
	assert_int_equal(gdt[0], 0);
	assert_int_equal(gdt[1], 0x00af9b000000ffffull);   /* 64-bit code */
	assert_int_equal(gdt[2], 0x00cf93000000ffffull);   /* data */
	assert_int_equal(gdt[3], 0x00008b0018000067ull);   /* busy 64-bit TSS at 0x1800 */
	assert_int_equal(gdt[4], 0);

	memset(&s, 0, sizeof(s));
	pmvm_gdt_to_segment(gdt[1], &s);
	assert_int_equal(s.base, 0);
	assert_int_equal(s.limit, 0xffffffff);
	assert_int_equal(s.type, 11);
	assert_int_equal(s.s, 1);
	assert_int_equal(s.l, 1);
	assert_int_equal(s.db, 0);
	assert_int_equal(s.g, 1);
	assert_int_equal(s.present, 1);
	assert_int_equal(s.dpl, 0);
	pmvm_gdt_to_segment(gdt[2], &s);
	assert_int_equal(s.type, 3);
	assert_int_equal(s.db, 1);
	assert_int_equal(s.l, 0);
	pmvm_gdt_to_segment(gdt[3], &s);
	assert_int_equal(s.base, PMVM_TSS_GPA);
	assert_int_equal(s.limit, 0x67);
	assert_int_equal(s.type, 11);
	assert_int_equal(s.s, 0);
	assert_int_equal(s.g, 0);
}

static void test_sregs_regs(void **unused)
{
	struct kvm_sregs s;
	struct kvm_regs r;
	struct kvm_fpu f;

	memset(&s, 0xee, sizeof(s));
	pmvm_setup_long_mode_sregs(&s);
	assert_true(s.cr0 & PMVM_CR0_PE);
	assert_true(s.cr0 & PMVM_CR0_PG);
	assert_false(s.cr0 & (1ull << 2));             /* EM clear: SSE usable */
	assert_true(s.cr4 & PMVM_CR4_PAE);
	assert_true(s.cr4 & PMVM_CR4_OSFXSR);
	assert_int_equal(s.efer, PMVM_EFER_LME | PMVM_EFER_LMA);
	assert_int_equal(s.cr3, PMVM_PML4_GPA);
	assert_int_equal(s.cs.selector, PMVM_SEL_CODE);
	assert_int_equal(s.cs.l, 1);
	assert_int_equal(s.ss.selector, PMVM_SEL_DATA);
	assert_int_equal(s.ds.selector, PMVM_SEL_DATA);
	assert_int_equal(s.tr.selector, PMVM_SEL_TSS);
	assert_int_equal(s.tr.type, 11);
	assert_int_equal(s.gdt.base, PMVM_GDT_GPA);
	assert_int_equal(s.gdt.limit, PMVM_GDT_ENTRIES * 8 - 1);

	pmvm_setup_regs(&r, 0x100000, 1);
	assert_int_equal(r.rip, 0x100000);
	assert_int_equal(r.rflags, 2);
	assert_int_equal(r.rsp, PMVM_STACK_TOP - PMVM_STACK_SIZE);
	assert_int_equal(r.rsp % 16, 0);
	assert_int_equal(r.rdi, PMVM_BOOTINFO_GPA);
	assert_int_equal(r.rsi, 1);
	pmvm_setup_fpu(&f);
	assert_int_equal(f.fcw, 0x37f);
	assert_int_equal(f.mxcsr, 0x1f80);
}

/* ---- CPUID / MSR ---- */

static void test_cpuid_fixup(void **unused)
{
	struct kvm_cpuid_entry2 e[4];

	memset(e, 0, sizeof(e));
	e[0].function = 1;
	e[0].ebx = 0xff00abcd;
	e[1].function = 0xb;
	e[2].function = 0xa;
	e[2].eax = 0x07300403;
	e[3].function = 0x1f;
	pmvm_cpuid_fixup(e, 4, 3, 4);
	assert_int_equal(e[0].ebx, (3u << 24) | (4u << 16) | 0xabcd);
	assert_true(e[0].ecx & (1u << 31));
	assert_true(e[0].edx & (1u << 28));
	assert_int_equal(e[1].edx, 3);
	assert_int_equal(e[2].eax, 0);
	assert_int_equal(e[3].edx, 3);
}

static void test_cpuid_xsave(void **unused)
{
	struct kvm_cpuid_entry2 e[6];

	memset(e, 0, sizeof(e));
	e[0].function = 1;
	e[0].ecx = 0xffffffff & ~(1u << 31);
	e[1].function = 7;
	e[1].ebx = e[1].ecx = e[1].edx = 0xffffffff;
	e[2].function = 0xd;
	e[2].eax = 0x2e7;
	e[2].ebx = 0x340;
	e[2].ecx = 0xa88;
	e[3].function = 0xd;
	e[3].index = 1;
	e[3].eax = 0xf;
	e[3].ecx = 0x1800;
	e[4].function = 0xd;
	e[4].index = 9;
	e[4].eax = 8;
	e[4].ebx = 0xa80;
	e[5].function = 7;
	e[5].index = 1;
	e[5].eax = 0xffffffff;
	pmvm_cpuid_fixup(e, 6, 0, 1);
	/* No AVX, FMA, F16C; XSAVE/OSXSAVE and SSE stay. */
	assert_int_equal(e[0].ecx & PMVM_CPUID1_ECX_AVX, 0);
	assert_true(e[0].ecx & (1u << 26));
	assert_true(e[0].ecx & (1u << 0));
	/* No AVX2/AVX-512/PKU in leaf 7; other features stay. */
	assert_int_equal(e[1].ebx & PMVM_CPUID7_EBX_AVX, 0);
	assert_int_equal(e[1].ecx & PMVM_CPUID7_ECX_AVX, 0);
	assert_true(e[1].ebx & (1u << 0));      /* FSGSBASE */
	assert_int_equal(e[5].eax & PMVM_CPUID7_1_EAX_AVX, 0);
	/* XCR0 offers x87 and SSE only, in 576 bytes. */
	assert_int_equal(e[2].eax, 3);
	assert_int_equal(e[2].ebx, 576);
	assert_int_equal(e[2].ecx, 576);
	assert_int_equal(e[3].eax, 0x7);        /* XSAVEOPT, XSAVEC, XGETBV1; no XSAVES */
	assert_int_equal(e[3].ecx, 0);
	assert_int_equal(e[4].eax, 0);
	assert_int_equal(e[4].ebx, 0);
}

static void test_msr_filter(void **unused)
{
	uint32_t in[] = { 0xc0000082, 0x10, 0xc1, 0x40000000, 0x6e0, 0x10, 0x277, 0x38d,
			  0x4b564d01, 0x4b564d07, 0x4b564d00, 0x11, 0x480, 0xc0000102, 0x174, 0x400 };
	uint32_t want[] = { 0x10, 0x174, 0x277, 0x6e0, 0x4b564d01, 0xc0000082, 0xc0000102 };
	uint32_t out[16];
	unsigned n = pmvm_msr_filter(in, sizeof(in) / 4, out);

	assert_int_equal(n, sizeof(want) / 4);
	assert_memory_equal(out, want, sizeof(want));
	assert_true(pmvm_msr_after_lapic(0x6e0));
	assert_false(pmvm_msr_after_lapic(0x10));
	/* In place. */
	n = pmvm_msr_filter(in, sizeof(in) / 4, in);
	assert_memory_equal(in, want, sizeof(want));
}

/* ---- Linux boot: e820, bzImage, MP table, RTC ---- */

static void test_e820(void **unused)
{
	struct pmvm_e820 m;

	pmvm_e820_build(256ull << 20, &m);
	assert_int_equal(m.n, 3);
	assert_int_equal(m.e[0].addr, 0);
	assert_int_equal(m.e[0].size, PMVM_EBDA_GPA);
	assert_int_equal(m.e[0].type, PMVM_E820_RAM);
	assert_int_equal(m.e[1].type, PMVM_E820_RESERVED);
	assert_int_equal(m.e[1].addr + m.e[1].size, 0x100000);
	assert_int_equal(m.e[2].addr, 0x100000);
	assert_int_equal(m.e[2].addr + m.e[2].size, 256ull << 20);
	assert_true(pmvm_e820_is_ram(&m, 0x100000, 1 << 20));
	assert_false(pmvm_e820_is_ram(&m, PMVM_EBDA_GPA, 16));
	assert_false(pmvm_e820_is_ram(&m, (256ull << 20) - 4096, 8192));
	assert_int_equal(sizeof(m.e[0]), 20);   /* the boot protocol's layout */

	/* Above 3 GiB the rest of RAM starts at 4 GiB. */
	pmvm_e820_build(5ull << 30, &m);
	assert_int_equal(m.n, 4);
	assert_int_equal(m.e[2].addr + m.e[2].size, PMVM_LOW_MEM_MAX);
	assert_int_equal(m.e[3].addr, PMVM_HIGH_MEM_GPA);
	assert_int_equal(m.e[3].size, (5ull << 30) - PMVM_LOW_MEM_MAX);
}

static void put_le(uint8_t *p, uint64_t v, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* A minimal image with a valid setup header: 4 setup sectors + 1, then a
 * protected-mode part of `body` bytes. */
static uint8_t *fake_bzimage(size_t body, size_t *len)
{
	size_t setup = 5 * 512;
	uint8_t *f = calloc(1, setup + body);

	f[BP_SETUP_SECTS] = 4;
	put_le(f + BP_BOOT_FLAG, 0xaa55, 2);
	f[BP_JUMP] = 0xeb;
	f[BP_JUMP + 1] = 0x66;                  /* header ends at 0x268 */
	memcpy(f + BP_HEADER, "HdrS", 4);
	put_le(f + BP_VERSION, 0x020f, 2);
	f[BP_LOADFLAGS] = LOADED_HIGH;
	put_le(f + BP_INITRD_MAX, 0x7fffffff, 4);
	put_le(f + BP_KERNEL_ALIGN, 0x200000, 4);
	put_le(f + BP_XLOADFLAGS, XLF_KERNEL_64, 2);
	put_le(f + BP_CMDLINE_SIZE, 255, 4);
	put_le(f + 0x258, 0x1000000, 8);        /* pref_address */
	put_le(f + BP_INIT_SIZE, 8u << 20, 4);
	for (size_t i = 0; i < body; i++)
		f[setup + i] = (uint8_t)(i * 7 + 1);
	*len = setup + body;
	return f;
}

static uint32_t get32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return v;
}

static void expect_linux_error(const struct pmvm_linux_boot *b, uint64_t low, const char *needle)
{
	struct pm_err err = {0};

	if (pmvm_linux_load(b, NULL, low, NULL, &err) >= 0)
		fail_msg("accepted, expected an error with '%s'", needle);
	if (!strstr(err.msg, needle))
		fail_msg("message '%s' lacks '%s'", err.msg, needle);
}

static void test_bzimage(void **unused)
{
	const uint64_t mem_len = 64ull << 20;
	struct pmvm_e820 map;
	struct pmvm_linux_layout lay;
	struct pm_err err = {0};
	uint8_t initrd[10000];
	size_t len;
	uint8_t *f = fake_bzimage(100000, &len), *bad = malloc(len);
	uint8_t *mem = calloc(1, mem_len);
	struct pmvm_linux_boot b = { .kernel = f, .kernel_len = len, .initrd = initrd,
				     .initrd_len = sizeof(initrd), .cmdline = "console=ttyS0 x=1",
				     .map = &map };
	struct pmvm_kernel_info ki;

	fill_rand(initrd, sizeof(initrd));
	pmvm_e820_build(mem_len, &map);
	assert_int_equal(pmvm_bzimage_parse(f, len, &ki, &err), 0);
	assert_int_equal(ki.setup_len, 5 * 512);
	assert_int_equal(ki.kernel_len, 100000);
	assert_int_equal(ki.entry, PMVM_KERNEL_GPA + 0x200);

	/* Validation alone writes nothing. */
	assert_int_equal(pmvm_linux_load(&b, NULL, mem_len, &lay, &err), 0);
	assert_int_equal(pmvm_linux_load(&b, mem, mem_len, &lay, &err), 0);
	assert_memory_equal(mem + PMVM_KERNEL_GPA, f + 5 * 512, 100000);
	assert_int_equal(lay.entry, PMVM_KERNEL_GPA + 0x200);
	assert_int_equal(lay.kernel_end, 0x1000000 + (8u << 20));
	/* The initrd at the top of RAM, page aligned. */
	assert_int_equal(lay.initrd_gpa % 4096, 0);
	assert_true(lay.initrd_gpa + sizeof(initrd) <= mem_len);
	assert_true(lay.initrd_gpa + sizeof(initrd) > mem_len - 4096);
	assert_memory_equal(mem + lay.initrd_gpa, initrd, sizeof(initrd));
	assert_string_equal((char *)mem + PMVM_CMDLINE_GPA, "console=ttyS0 x=1");
	/* boot_params: the header copied, the loader's fields, the e820 map. */
	uint8_t *bp = mem + PMVM_BOOT_PARAMS_GPA;
	assert_memory_equal(bp + BP_HEADER, "HdrS", 4);
	assert_int_equal(bp[BP_TYPE_OF_LOADER], 0xff);
	assert_int_equal(get32(bp + BP_CODE32_START), PMVM_KERNEL_GPA);
	assert_int_equal(get32(bp + BP_CMD_LINE_PTR), PMVM_CMDLINE_GPA);
	assert_int_equal(get32(bp + BP_RAMDISK_IMAGE), lay.initrd_gpa);
	assert_int_equal(get32(bp + BP_RAMDISK_SIZE), sizeof(initrd));
	assert_int_equal(bp[BP_E820_ENTRIES], map.n);
	assert_memory_equal(bp + BP_E820_TABLE, map.e, map.n * 20);
	assert_int_equal(get32(bp + BP_INIT_SIZE), 8u << 20);

	/* Rejections, each named. */
	memcpy(bad, f, len);
	bad[BP_BOOT_FLAG] = 0;
	b.kernel = bad;
	expect_linux_error(&b, mem_len, "not a bzImage");
	memcpy(bad, f, len);
	put_le(bad + BP_VERSION, 0x020b, 2);
	expect_linux_error(&b, mem_len, "older than 2.12");
	memcpy(bad, f, len);
	put_le(bad + BP_XLOADFLAGS, 0, 2);
	expect_linux_error(&b, mem_len, "XLF_KERNEL_64");
	memcpy(bad, f, len);
	bad[BP_SETUP_SECTS] = 200;
	expect_linux_error(&b, mem_len, "truncated");
	b.kernel_len = 100;
	expect_linux_error(&b, mem_len, "too short");
	b.kernel = f;
	b.kernel_len = len;
	char longline[300];
	memset(longline, 'x', sizeof(longline) - 1);
	longline[sizeof(longline) - 1] = 0;
	b.cmdline = longline;
	expect_linux_error(&b, mem_len, "at most 255");
	b.cmdline = "";
	/* RAM that ends before the kernel's decompression area does. */
	pmvm_e820_build(16ull << 20, &map);
	expect_linux_error(&b, 16ull << 20, "RAM up to 24 MiB");
	/* An initrd that would overlap the kernel. */
	pmvm_e820_build(mem_len, &map);
	b.initrd_len = mem_len - (20ull << 20);
	expect_linux_error(&b, mem_len, "initrd");
	free(f);
	free(bad);
	free(mem);
}

static uint8_t sum8(const uint8_t *p, size_t n)
{
	uint8_t s = 0;

	while (n--)
		s = (uint8_t)(s + *p++);
	return s;
}

static void test_mptable(void **unused)
{
	uint8_t buf[1024];
	size_t n = pmvm_mptable_write(buf, 0x9fc00, 3, 0x00a00f11, 0x178bfbff);
	uint16_t base_len, count;

	assert_int_equal(n, pmvm_mptable_size(3));
	assert_true(pmvm_mptable_size(PMVM_MAX_VCPUS) <= 1024);
	assert_memory_equal(buf, "_MP_", 4);
	assert_int_equal(get32(buf + 4), 0x9fc00 + 16);
	assert_int_equal(sum8(buf, 16), 0);
	assert_memory_equal(buf + 16, "PCMP", 4);
	memcpy(&base_len, buf + 16 + 4, 2);
	memcpy(&count, buf + 16 + 34, 2);
	assert_int_equal(base_len, n - 16);
	assert_int_equal(sum8(buf + 16, base_len), 0);
	assert_int_equal(get32(buf + 16 + 36), PMVM_LAPIC_GPA);
	assert_int_equal(count, 3 + 1 + 1 + 16 + 2);
	/* Processors: APIC IDs 0..2, only the first the boot processor. */
	const uint8_t *p = buf + 16 + 44;
	for (unsigned i = 0; i < 3; i++, p += 20) {
		assert_int_equal(p[0], 0);
		assert_int_equal(p[1], i);
		assert_int_equal(p[3], i == 0 ? 3 : 1);
		assert_int_equal(get32(p + 4), 0x00a00f11);
	}
	assert_int_equal(p[0], 1);                  /* the ISA bus */
	assert_memory_equal(p + 2, "ISA   ", 6);
	p += 8;
	assert_int_equal(p[0], 2);                  /* the IOAPIC, ID after the CPUs */
	assert_int_equal(p[1], 3);
	assert_int_equal(get32(p + 4), PMVM_IOAPIC_GPA);
	p += 8;
	for (unsigned irq = 0; irq < 16; irq++, p += 8) {
		assert_int_equal(p[0], 3);
		assert_int_equal(p[5], irq);            /* ISA IRQ i ... */
		assert_int_equal(p[6], 3);
		assert_int_equal(p[7], irq);            /* ... on pin i */
	}
	assert_int_equal(p[0], 4);                  /* ExtINT on LINT0 */
	assert_int_equal(p[1], 3);
	assert_int_equal(p[7], 0);
	assert_int_equal(p[8], 4);                  /* NMI on LINT1 */
	assert_int_equal(p[9], 1);
	assert_int_equal(p[15], 1);
}

static time_t fixed_time(void)
{
	return 1796073430;   /* 2026-11-30 21:17:10 UTC, a Monday */
}

static void test_rtc(void **unused)
{
	struct pmvm_rtc r;
	struct pmvm_rtc_state st;
	static const struct { uint8_t reg, want; } t[] = {
		{ 0, 0x10 }, { 2, 0x17 }, { 4, 0x21 }, { 6, 0x02 }, { 7, 0x30 }, { 8, 0x11 }, { 9, 0x26 },
		{ 0x32, 0x20 }, { 0x0a, 0x26 }, { 0x0b, 0x02 }, { 0x0d, 0x80 },
	};

	pmvm_rtc_init(&r);
	r.now = fixed_time;
	for (unsigned i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		pmvm_rtc_write(&r, PMVM_RTC_INDEX_PORT, t[i].reg | 0x80);   /* NMI-mask bit ignored */
		assert_int_equal(pmvm_rtc_read(&r, PMVM_RTC_DATA_PORT), t[i].want);
	}
	/* Time registers ignore writes; RAM keeps them; binary mode is refused. */
	pmvm_rtc_write(&r, PMVM_RTC_INDEX_PORT, 0);
	pmvm_rtc_write(&r, PMVM_RTC_DATA_PORT, 0x59);
	assert_int_equal(pmvm_rtc_read(&r, PMVM_RTC_DATA_PORT), 0x10);
	pmvm_rtc_write(&r, PMVM_RTC_INDEX_PORT, 0x40);
	pmvm_rtc_write(&r, PMVM_RTC_DATA_PORT, 0xa5);
	assert_int_equal(pmvm_rtc_read(&r, PMVM_RTC_DATA_PORT), 0xa5);
	pmvm_rtc_write(&r, PMVM_RTC_INDEX_PORT, 0x0b);
	pmvm_rtc_write(&r, PMVM_RTC_DATA_PORT, 0x06);
	assert_int_equal(pmvm_rtc_read(&r, PMVM_RTC_DATA_PORT), 0x02);
	/* Save and load; a state with binary mode or a bad index is refused. */
	pmvm_rtc_write(&r, PMVM_RTC_INDEX_PORT, 0x40);
	pmvm_rtc_save(&r, &st);
	assert_int_equal(st.index, 0x40);
	pmvm_rtc_write(&r, PMVM_RTC_INDEX_PORT, 0);
	assert_int_equal(pmvm_rtc_load(&r, &st), 0);
	assert_int_equal(pmvm_rtc_read(&r, PMVM_RTC_DATA_PORT), 0xa5);
	st.ram[0x0b] = 0x06;
	assert_int_equal(pmvm_rtc_load(&r, &st), -EINVAL);
	st.ram[0x0b] = 0x02;
	st.index = 0x90;
	assert_int_equal(pmvm_rtc_load(&r, &st), -EINVAL);
	pmvm_rtc_destroy(&r);
}

/* ---- serial ---- */

struct sink {
	char buf[64];
	size_t len;
	int irq_changes;
	bool level;
};

static void sink_out(void *o, uint8_t b)
{
	struct sink *s = o;

	if (s->len < sizeof(s->buf))
		s->buf[s->len++] = (char)b;
}

static void sink_irq(void *o, bool level)
{
	struct sink *s = o;

	s->irq_changes++;
	s->level = level;
}

static void test_serial(void **unused)
{
	struct sink k = {0};
	struct pmvm_serial u, u2;
	struct pmvm_serial_state st, bad;

	pmvm_serial_init(&u, sink_out, sink_irq, &k);
	assert_int_equal(pmvm_serial_read(&u, 5), 0x60);           /* LSR: THR empty */
	assert_int_equal(pmvm_serial_read(&u, 2) & 0x0f, 0x01);    /* IIR: none */
	pmvm_serial_write(&u, 0, 'h');
	pmvm_serial_write(&u, 0, 'i');
	assert_int_equal(k.len, 2);
	assert_memory_equal(k.buf, "hi", 2);

	/* Divisor latch. */
	pmvm_serial_write(&u, 3, 0x83);
	pmvm_serial_write(&u, 0, 0x01);
	pmvm_serial_write(&u, 1, 0x00);
	assert_int_equal(pmvm_serial_read(&u, 0), 0x01);
	assert_int_equal(k.len, 2);                                 /* not transmitted */
	pmvm_serial_write(&u, 3, 0x03);
	assert_int_equal(pmvm_serial_read(&u, 3), 0x03);

	/* THR-empty interrupt: raised with IER.THRI and OUT2, cleared by IIR read. */
	pmvm_serial_write(&u, 4, 0x08);
	pmvm_serial_write(&u, 1, 0x02);
	assert_true(k.level);
	assert_int_equal(pmvm_serial_read(&u, 2) & 0x0f, 0x02);
	assert_false(k.level);
	assert_int_equal(pmvm_serial_read(&u, 2) & 0x0f, 0x01);
	pmvm_serial_write(&u, 0, '!');
	assert_true(k.level);

	/* Scratch register and save/load. */
	pmvm_serial_write(&u, 7, 0x5a);
	pmvm_serial_save(&u, &st);
	{
		struct sink k2 = {0};

		pmvm_serial_init(&u2, sink_out, sink_irq, &k2);
		assert_int_equal(pmvm_serial_load(&u2, &st), 0);
		assert_int_equal(pmvm_serial_read(&u2, 7), 0x5a);
		assert_int_equal(pmvm_serial_read(&u2, 1), 0x02);
		assert_true(k2.level);                      /* pending THRI came along */
		bad = st;
		bad.ier = 0xf0;
		assert_int_equal(pmvm_serial_load(&u2, &bad), -EINVAL);
		bad = st;
		bad.reserved[0] = 1;
		assert_int_equal(pmvm_serial_load(&u2, &bad), -EINVAL);
		pmvm_serial_destroy(&u2);
	}

	/* Loopback. */
	pmvm_serial_write(&u, 4, 0x10 | 0x08);
	pmvm_serial_write(&u, 0, 'x');
	assert_true(pmvm_serial_read(&u, 5) & 1);
	assert_int_equal(pmvm_serial_read(&u, 0), 'x');
	assert_false(pmvm_serial_read(&u, 5) & 1);
	assert_int_equal(k.len, 3);
	pmvm_serial_destroy(&u);
}

/* ---- loader and guests ---- */

static void test_loader_flat(void **unused)
{
	uint8_t img[100], *mem = calloc(1, 4 << 20);
	struct pmvm_image info;
	struct pm_err err = {0};

	fill_rand(img, sizeof(img));
	img[0] = 0xfc;
	assert_int_equal(pmvm_image_load(img, sizeof(img), mem, 4 << 20, &info, &err), 0);
	assert_false(info.elf);
	assert_int_equal(info.entry, PMVM_IMAGE_GPA);
	assert_int_equal(info.load_end, PMVM_IMAGE_GPA + sizeof(img));
	assert_memory_equal(mem + PMVM_IMAGE_GPA, img, sizeof(img));
	assert_int_equal(pmvm_image_load(img, 0, mem, 4 << 20, &info, &err), -EINVAL);
	err = (struct pm_err){0};
	assert_int_equal(pmvm_image_load(img, sizeof(img), mem, PMVM_IMAGE_GPA + 50, &info, &err), -ENOSPC);
	free(mem);
}

static uint8_t *read_guest(const char *name, size_t *len)
{
	char path[512];
	struct pm_err err = {0};
	uint8_t *b = NULL;

	snprintf(path, sizeof(path), "%s/%s", GUEST_DIR, name);
	if (pmvm_read_file(path, &b, len, PMVM_MAX_IMAGE, &err))
		fail_msg("%s", err.msg);
	return b;
}

static void test_guests_built(void **unused)
{
	const char *names[] = { "exitcode", "dirtier", "verifier" };

	for (unsigned i = 0; i < 3; i++) {
		char n[64];
		size_t blen, elen;
		uint8_t *bin, *elf, *m1 = calloc(1, 8 << 20), *m2 = calloc(1, 8 << 20);
		struct pmvm_image bi, ei;
		struct pm_err err = {0};

		snprintf(n, sizeof(n), "%s.bin", names[i]);
		bin = read_guest(n, &blen);
		snprintf(n, sizeof(n), "%s.elf", names[i]);
		elf = read_guest(n, &elen);
		assert_true(blen > 16 && blen < 64 * 1024);
		assert_int_equal(bin[0], 0xfc);     /* _start: cld */
		assert_int_equal(pmvm_image_load(bin, blen, m1, 8 << 20, &bi, &err), 0);
		assert_int_equal(pmvm_image_load(elf, elen, m2, 8 << 20, &ei, &err), 0);
		assert_true(ei.elf);
		assert_int_equal(ei.entry, PMVM_IMAGE_GPA);
		assert_int_equal(ei.load_start, PMVM_IMAGE_GPA);
		assert_true(ei.load_end >= bi.load_end);
		/* The flat binary is the ELF's memory image. */
		assert_memory_equal(m1 + PMVM_IMAGE_GPA, m2 + PMVM_IMAGE_GPA, blen);

		/* Broken ELFs are refused with a reason. */
		err = (struct pm_err){0};
		elf[18] = 3;   /* e_machine = i386 */
		assert_int_equal(pmvm_image_load(elf, elen, NULL, 8 << 20, &ei, &err), -EINVAL);
		assert_non_null(strstr(err.msg, "machine"));
		elf[18] = 62;
		err = (struct pm_err){0};
		assert_int_equal(pmvm_image_load(elf, 40, NULL, 8 << 20, &ei, &err), -EINVAL);
		assert_non_null(strstr(err.msg, "truncated"));
		err = (struct pm_err){0};
		assert_int_equal(pmvm_image_load(elf, elen, NULL, PMVM_IMAGE_GPA + 64, &ei, &err), -ENOSPC);
		free(bin);
		free(elf);
		free(m1);
		free(m2);
	}
}

/* ---- command line ---- */

static int parse(struct pmvm_config *c, struct pm_err *err, ...)
{
	char *argv[32];
	int argc = 0;
	va_list ap;

	argv[argc++] = "pmvm";
	va_start(ap, err);
	for (char *a; (a = va_arg(ap, char *));)
		argv[argc++] = a;
	va_end(ap);
	memset(err, 0, sizeof(*err));
	return pmvm_parse_args(argc, argv, c, err);
}

static void expect_bad(struct pmvm_config *c, struct pm_err *e, int r, const char *needle)
{
	assert_int_equal(r, -EINVAL);
	if (!strstr(e->msg, needle))
		fail_msg("message '%s' lacks '%s'", e->msg, needle);
	pmvm_config_free(c);
}

static void test_sizes(void **unused)
{
	struct pm_err e = {0};
	uint64_t v;

	assert_int_equal(pmvm_parse_size("64M", &v, &e), 0);
	assert_int_equal(v, 64ull << 20);
	assert_int_equal(pmvm_parse_size("1GiB", &v, &e), 0);
	assert_int_equal(v, 1ull << 30);
	assert_int_equal(pmvm_parse_size("4096", &v, &e), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(pmvm_parse_size("2k", &v, &e), 0);
	assert_int_equal(v, 2048);
	assert_int_equal(pmvm_parse_size("", &v, &e), -EINVAL);
	assert_int_equal(pmvm_parse_size("abc", &v, &e), -EINVAL);
	assert_int_equal(pmvm_parse_size("12Q", &v, &e), -EINVAL);
	assert_int_equal(pmvm_parse_size("-5", &v, &e), -EINVAL);
	assert_int_equal(pmvm_parse_size("99999999999T", &v, &e), -EINVAL);
}

static void test_args(void **unused)
{
	struct pmvm_config c;
	struct pm_err e;

	assert_int_equal(parse(&c, &e, "run", "--guest", "g.bin", "--mem", "32M", "--vcpus", "2",
			       "--control", "s.sock", "--serial=out.txt", "--param", "pages=64",
			       "--param", "steps=0x10", "--incoming", "127.0.0.1:0,[::1]:4444", NULL), 0);
	assert_int_equal(c.mem_bytes, 32ull << 20);
	assert_int_equal(c.vcpus, 2);
	assert_string_equal(c.guest, "g.bin");
	assert_string_equal(c.serial, "out.txt");
	assert_string_equal(c.kvm_path, "/dev/kvm");
	assert_int_equal(c.nlisten, 2);
	assert_string_equal(c.listen[0], "127.0.0.1:0");
	assert_string_equal(c.listen[1], "[::1]:4444");
	assert_int_equal(c.nparams, 2);
	assert_string_equal(c.params[1].key, "steps");
	assert_int_equal(c.params[1].value, 16);
	assert_false(c.prealloc);
	pmvm_config_free(&c);
	assert_int_equal(parse(&c, &e, "run", "--guest", "g.bin", "--prealloc", NULL), 0);
	assert_true(c.prealloc);
	pmvm_config_free(&c);

	expect_bad(&c, &e, parse(&c, &e, NULL), "missing command");
	expect_bad(&c, &e, parse(&c, &e, "start", NULL), "unknown command");
	expect_bad(&c, &e, parse(&c, &e, "run", NULL), "--guest");
	expect_bad(&c, &e, parse(&c, &e, "run", "--guest", "g", "--mem", "1M", NULL), "out of range");
	expect_bad(&c, &e, parse(&c, &e, "run", "--guest", "g", "--mem", "100G", NULL), "out of range");
	expect_bad(&c, &e, parse(&c, &e, "run", "--guest", "g", "--mem", "5000001", NULL), "multiple of 4 KiB");
	expect_bad(&c, &e, parse(&c, &e, "run", "--guest", "g", "--mem", "lots", NULL), "bad size");
	expect_bad(&c, &e, parse(&c, &e, "run", "--guest", "g", "--vcpus", "0", NULL), "--vcpus");
	expect_bad(&c, &e, parse(&c, &e, "run", "--guest", "g", "--vcpus", "17", NULL), "--vcpus");
	expect_bad(&c, &e, parse(&c, &e, "run", "--guest", "g", "--incoming", "nowhere", NULL), "bad address");
	expect_bad(&c, &e, parse(&c, &e, "run", "--guest", "g", "--incoming", "h:99999", NULL), "bad port");
	expect_bad(&c, &e, parse(&c, &e, "run", "--guest", "g", "--param", "x", NULL), "KEY=VALUE");
	expect_bad(&c, &e, parse(&c, &e, "run", "--guest", "g", "--param", "x=y", NULL), "not a number");
	expect_bad(&c, &e, parse(&c, &e, "run", "--guest", "g", "--frob", "1", NULL), "unknown option");
	expect_bad(&c, &e, parse(&c, &e, "run", "--guest", NULL), "needs a value");
	expect_bad(&c, &e, parse(&c, &e, "run", "--guest", "g", "--prealloc=yes", NULL), "takes no value");
	expect_bad(&c, &e, parse(&c, &e, "run", "--guest", "g", "--dump-on-resume", "f", NULL), "--incoming");
}

/* ---- dirty bits ---- */

static void test_dirty_bits(void **unused)
{
	uint64_t bm[16], orig[16], taken[16], out[16], a0, a1, b0, b1;
	const uint64_t npages = 1000;

	/* Clear blocks: a chunk inside one block, one across two, the last. */
	pmvm_dirty_blocks(512, 512, &b0, &b1);
	assert_int_equal(b0, 0);
	assert_int_equal(b1, 1);
	pmvm_dirty_blocks(PMVM_CLEAR_BLOCK_PAGES - 64, 128, &b0, &b1);
	assert_int_equal(b0, 0);
	assert_int_equal(b1, 2);
	pmvm_dirty_blocks(3 * PMVM_CLEAR_BLOCK_PAGES, 1, &b0, &b1);
	assert_int_equal(b0, 3);
	assert_int_equal(b1, 4);
	/* A sync adds to what waits; it never drops a bit. */
	{
		uint64_t w[2] = { 0x0f, 0x100 }, in[2] = { 0xf0, 0 };

		pmvm_dirty_or(w, in, 2);
		assert_int_equal(w[0], 0xff);
		assert_int_equal(w[1], 0x100);
	}

	fill_rand(bm, sizeof(bm));
	bm[15] &= (1ull << (npages % 64)) - 1;
	memcpy(orig, bm, sizeof(bm));

	/* Aligned chunk. */
	pmvm_dirty_clear_range(npages, 512, 256, &a0, &a1);
	assert_int_equal(a0, 512);
	assert_int_equal(a1, 768);
	memset(taken, 0, sizeof(taken));
	pmvm_dirty_take(bm, 512, 256, a0, a1, taken);
	pmvm_dirty_shift(taken, a0, a1, 512, 256, out);
	assert_memory_equal(out, &orig[8], 4 * 8);
	assert_int_equal(bm[8] | bm[9] | bm[10] | bm[11], 0);
	assert_memory_equal(bm, orig, 8 * 8);
	assert_memory_equal(&bm[12], &orig[12], 4 * 8);

	/* Unaligned range, bits outside it untouched. */
	memcpy(bm, orig, sizeof(bm));
	pmvm_dirty_clear_range(npages, 100, 200, &a0, &a1);
	assert_int_equal(a0, 64);
	assert_int_equal(a1, 320);
	memset(taken, 0, sizeof(taken));
	memset(out, 0xff, sizeof(out));
	pmvm_dirty_take(bm, 100, 200, a0, a1, taken);
	pmvm_dirty_shift(taken, a0, a1, 100, 200, out);
	for (uint64_t p = 0; p < npages; p++) {
		int was = (orig[p / 64] >> (p % 64)) & 1, now = (bm[p / 64] >> (p % 64)) & 1;

		if (p >= 100 && p < 300) {
			assert_int_equal(now, 0);
			assert_int_equal((out[(p - 100) / 64] >> ((p - 100) % 64)) & 1, was);
			/* Bits handed to KVM_CLEAR_DIRTY_LOG are relative to a0. */
			assert_int_equal((taken[(p - a0) / 64] >> ((p - a0) % 64)) & 1, was);
		} else {
			assert_int_equal(now, was);
			if (p >= a0 && p < a1)
				assert_int_equal((taken[(p - a0) / 64] >> ((p - a0) % 64)) & 1, 0);
		}
	}
	assert_int_equal(out[3] >> 8, 0);   /* nothing past n */

	/* The end of a slot that is not a multiple of 64. */
	pmvm_dirty_clear_range(npages, 960, 40, &a0, &a1);
	assert_int_equal(a0, 960);
	assert_int_equal(a1, 1000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_state_roundtrip),
		cmocka_unit_test(test_state_rejects),
		cmocka_unit_test(test_page_tables),
		cmocka_unit_test(test_gdt),
		cmocka_unit_test(test_sregs_regs),
		cmocka_unit_test(test_cpuid_fixup),
		cmocka_unit_test(test_cpuid_xsave),
		cmocka_unit_test(test_msr_filter),
		cmocka_unit_test(test_e820),
		cmocka_unit_test(test_bzimage),
		cmocka_unit_test(test_mptable),
		cmocka_unit_test(test_rtc),
		cmocka_unit_test(test_serial),
		cmocka_unit_test(test_loader_flat),
		cmocka_unit_test(test_guests_built),
		cmocka_unit_test(test_sizes),
		cmocka_unit_test(test_args),
		cmocka_unit_test(test_dirty_bits),
	};

	return cmocka_run_group_tests_name("pmvm-unit", tests, NULL, NULL);
}
