// SPDX-License-Identifier: MIT
/* Layout from the Intel MultiProcessor Specification, version 1.4,
 * chapter 4 (MP configuration table). */
#include "mptable.h"

#include <string.h>

#define FPS_LEN      16u
#define HDR_LEN      44u
#define PROC_LEN     20u
#define SHORT_LEN    8u    /* bus, IOAPIC, interrupt entries */

enum { MP_PROCESSOR, MP_BUS, MP_IOAPIC, MP_INTSRC, MP_LINTSRC };
enum { MP_INT, MP_NMI, MP_SMI, MP_EXTINT };

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)v); put16(p + 2, (uint16_t)(v >> 16)); }

/* Sum of all bytes must be zero. */
static uint8_t checksum(const uint8_t *p, size_t n)
{
	uint8_t s = 0;

	while (n--)
		s = (uint8_t)(s + *p++);
	return (uint8_t)-s;
}

static unsigned nentries(unsigned nvcpus)
{
	return nvcpus + 1 /* bus */ + 1 /* IOAPIC */ + PMVM_ISA_IRQS + 2 /* LINT0, LINT1 */;
}

size_t pmvm_mptable_size(unsigned nvcpus)
{
	return FPS_LEN + HDR_LEN + nvcpus * PROC_LEN + (nentries(nvcpus) - nvcpus) * SHORT_LEN;
}

static uint8_t *intsrc(uint8_t *p, uint8_t type, uint8_t irqtype, uint8_t bus_irq, uint8_t apic,
		       uint8_t pin)
{
	p[0] = type;
	p[1] = irqtype;
	put16(p + 2, 0);          /* polarity and trigger: as the bus defines */
	p[4] = 0;                 /* source bus: ISA */
	p[5] = bus_irq;
	p[6] = apic;
	p[7] = pin;
	return p + SHORT_LEN;
}

size_t pmvm_mptable_write(uint8_t *buf, uint32_t gpa, unsigned nvcpus, uint32_t cpu_signature,
			  uint32_t cpu_features)
{
	size_t len = pmvm_mptable_size(nvcpus);
	uint8_t *fps = buf, *hdr = buf + FPS_LEN, *p = hdr + HDR_LEN;
	uint8_t ioapic_id = (uint8_t)nvcpus;

	memset(buf, 0, len);
	for (unsigned i = 0; i < nvcpus; i++, p += PROC_LEN) {
		p[0] = MP_PROCESSOR;
		p[1] = (uint8_t)i;                     /* local APIC ID */
		p[2] = 0x14;                           /* local APIC version */
		p[3] = (uint8_t)(0x01 | (i == 0 ? 0x02 : 0)); /* enabled, boot processor */
		put32(p + 4, cpu_signature);
		put32(p + 8, cpu_features);
	}
	p[0] = MP_BUS;
	p[1] = 0;
	memcpy(p + 2, "ISA   ", 6);
	p += SHORT_LEN;
	p[0] = MP_IOAPIC;
	p[1] = ioapic_id;
	p[2] = 0x11;                                   /* IOAPIC version (KVM's) */
	p[3] = 0x01;                                   /* enabled */
	put32(p + 4, PMVM_IOAPIC_GPA);
	p += SHORT_LEN;
	for (unsigned irq = 0; irq < PMVM_ISA_IRQS; irq++)
		p = intsrc(p, MP_INTSRC, MP_INT, (uint8_t)irq, ioapic_id, (uint8_t)irq);
	/* The 8259s' output on every LAPIC's LINT0, NMI on LINT1. */
	p = intsrc(p, MP_LINTSRC, MP_EXTINT, 0, 0xff, 0);
	p = intsrc(p, MP_LINTSRC, MP_NMI, 0, 0xff, 1);

	memcpy(hdr, "PCMP", 4);
	put16(hdr + 4, (uint16_t)(len - FPS_LEN));     /* base table length */
	hdr[6] = 4;                                    /* spec revision 1.4 */
	memcpy(hdr + 8, "PMVM    ", 8);                /* OEM ID */
	memcpy(hdr + 16, "PMIGRATE    ", 12);          /* product ID */
	put16(hdr + 34, (uint16_t)nentries(nvcpus));
	put32(hdr + 36, PMVM_LAPIC_GPA);
	hdr[7] = checksum(hdr, len - FPS_LEN);

	memcpy(fps, "_MP_", 4);
	put32(fps + 4, gpa + FPS_LEN);                 /* physical address of the table */
	fps[8] = 1;                                    /* length in 16-byte units */
	fps[9] = 4;                                    /* spec revision 1.4 */
	fps[10] = checksum(fps, FPS_LEN);
	return len;
}
