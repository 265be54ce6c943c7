// SPDX-License-Identifier: MIT
#include "guest.h"

static volatile uint32_t console;   /* spinlock shared by the vCPUs */

void *memset(void *d, int c, size_t n)
{
	uint8_t *p = d;

	while (n--)
		*p++ = (uint8_t)c;
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	uint8_t *p = d;
	const uint8_t *q = s;

	while (n--)
		*p++ = *q++;
	return d;
}

void console_lock(void)
{
	while (__atomic_exchange_n(&console, 1, __ATOMIC_ACQUIRE))
		while (console)
			cpu_relax();
}

void console_unlock(void)
{
	__atomic_store_n(&console, 0, __ATOMIC_RELEASE);
}

void putc_raw(char c)
{
	/* Wait for THR empty (LSR bit 5); pmvm's UART is always ready. */
	while (!(inb(PMVM_SERIAL_PORT + 5) & 0x20))
		cpu_relax();
	outb(PMVM_SERIAL_PORT, (uint8_t)c);
}

void puts_raw(const char *s)
{
	while (*s)
		putc_raw(*s++);
}

void putu_raw(uint64_t v)
{
	char buf[21];
	int i = 20;

	buf[i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	puts_raw(buf + i);
}

void putx_raw(uint64_t v)
{
	static const char hex[] = "0123456789abcdef";

	puts_raw("0x");
	for (int s = 60; s >= 0; s -= 4)
		putc_raw(hex[(v >> s) & 0xf]);
}

static int key_eq(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return *a == *b;
}

uint64_t param(const struct pmvm_bootinfo *bi, const char *key, uint64_t dflt)
{
	for (uint32_t i = 0; i < bi->nparams && i < PMVM_MAX_PARAMS; i++)
		if (key_eq(bi->params[i].key, key))
			return bi->params[i].value;
	return dflt;
}

uint64_t free_start(const struct pmvm_bootinfo *bi)
{
	uint64_t end = ((uint64_t)(uintptr_t)_end + 4095) & ~4095ull;

	return bi->free_start > end ? bi->free_start : end;
}

void guest_exit(uint32_t code)
{
	outl(PMVM_EXIT_PORT, code);
	for (;;)
		__asm__ volatile("cli; hlt");
}

void heartbeat_init(struct heartbeat *h, const struct pmvm_bootinfo *bi, uint64_t ms)
{
	h->period = bi->tsc_khz * ms;
	h->last = rdtsc();
	h->calls = 0;
}
