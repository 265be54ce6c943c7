/* SPDX-License-Identifier: MIT */
/* The guest's physical memory map as Linux reads it (e820 entries in the
 * boot_params), derived from pmvm's RAM layout: low RAM up to the EBDA,
 * the EBDA and BIOS area reserved (the MP table lives there), RAM from
 * 1 MiB to the end of slot 0, and RAM from 4 GiB for slot 1. */
#ifndef PMVM_E820_H
#define PMVM_E820_H

#include <stdint.h>

#define PMVM_E820_RAM      1u
#define PMVM_E820_RESERVED 2u
#define PMVM_E820_MAX      8u

#define PMVM_EBDA_GPA      0x9fc00ull   /* 639 KiB: where Linux looks for an MP table */
#define PMVM_BIOS_END      0x100000ull

struct pmvm_e820_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
} __attribute__((packed));

struct pmvm_e820 {
	unsigned n;
	struct pmvm_e820_entry e[PMVM_E820_MAX];
};

/* The map of a VM with mem_bytes of RAM laid out as pmvm does (bootinfo.h:
 * low RAM up to PMVM_LOW_MEM_MAX, the rest from PMVM_HIGH_MEM_GPA).
 * mem_bytes must be at least 2 MiB. */
void pmvm_e820_build(uint64_t mem_bytes, struct pmvm_e820 *map);

/* True if [addr, addr + len) lies inside one RAM entry. */
int pmvm_e820_is_ram(const struct pmvm_e820 *map, uint64_t addr, uint64_t len);

#endif
