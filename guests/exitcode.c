// SPDX-License-Identifier: MIT
/* Prints a line and exits through the debug-exit port with --param code=N
 * (default 42).  Other vCPUs halt. */
#include "guest.h"

void guest_main(const struct pmvm_bootinfo *bi, uint64_t cpu)
{
	uint32_t code = (uint32_t)param(bi, "code", 42);

	if (cpu != 0)
		return;
	if (bi->magic != PMVM_BOOT_MAGIC) {
		puts_raw("EXITCODE bad boot info\n");
		guest_exit(255);
	}
	console_lock();
	puts_raw("EXITCODE ");
	putu_raw(code);
	puts_raw(" vcpus ");
	putu_raw(bi->nvcpus);
	puts_raw("\n");
	console_unlock();
	guest_exit(code);
}
