// SPDX-License-Identifier: MIT
#include "e820.h"

#include "bootinfo.h"

static void add(struct pmvm_e820 *m, uint64_t addr, uint64_t size, uint32_t type)
{
	if (size && m->n < PMVM_E820_MAX)
		m->e[m->n++] = (struct pmvm_e820_entry){ .addr = addr, .size = size, .type = type };
}

void pmvm_e820_build(uint64_t mem_bytes, struct pmvm_e820 *map)
{
	uint64_t low = mem_bytes < PMVM_LOW_MEM_MAX ? mem_bytes : PMVM_LOW_MEM_MAX;

	map->n = 0;
	add(map, 0, PMVM_EBDA_GPA, PMVM_E820_RAM);
	/* EBDA and the BIOS area: what a PC has there, and where the MP
	 * table sits, so Linux never allocates it. */
	add(map, PMVM_EBDA_GPA, PMVM_BIOS_END - PMVM_EBDA_GPA, PMVM_E820_RESERVED);
	add(map, PMVM_BIOS_END, low - PMVM_BIOS_END, PMVM_E820_RAM);
	if (mem_bytes > low)
		add(map, PMVM_HIGH_MEM_GPA, mem_bytes - low, PMVM_E820_RAM);
}

int pmvm_e820_is_ram(const struct pmvm_e820 *map, uint64_t addr, uint64_t len)
{
	for (unsigned i = 0; i < map->n; i++) {
		const struct pmvm_e820_entry *e = &map->e[i];

		if (e->type == PMVM_E820_RAM && addr >= e->addr && len <= e->size &&
		    addr - e->addr <= e->size - len)
			return 1;
	}
	return 0;
}
