// SPDX-License-Identifier: MIT
/* Makes one vCPU die while the others run: for tests of how pmvm reacts
 * to a failed vCPU.  Every vCPU prints "TICK <n> cpu<i>" every `delay`
 * iterations; vCPU `cpu` (default 1), after `after` ticks (default 3),
 * loads an empty IDT and executes ud2: the #UD cannot be delivered, nor
 * the #DF after it, so the vCPU triple-faults and KVM reports a shutdown. */
#include "guest.h"

struct __attribute__((packed)) idtr {
	uint16_t limit;
	uint64_t base;
};

void guest_main(const struct pmvm_bootinfo *bi, uint64_t cpu)
{
	uint64_t victim = param(bi, "cpu", 1);
	uint64_t after = param(bi, "after", 3);
	uint64_t delay = param(bi, "delay", 20000);
	struct heartbeat hb;

	heartbeat_init(&hb, bi, 1);
	for (uint64_t n = 1;; n++) {
		for (volatile uint64_t d = 0; d < delay; d++)
			heartbeat(&hb);
		console_lock();
		puts_raw("TICK ");
		putu_raw(n);
		puts_raw(" cpu");
		putu_raw(cpu);
		putc_raw('\n');
		console_unlock();
		if (cpu == victim && n >= after) {
			static const struct idtr empty = { 0, 0 };

			__asm__ volatile("lidt %0; ud2" : : "m"(empty));
		}
	}
}
