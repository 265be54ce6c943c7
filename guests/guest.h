/* SPDX-License-Identifier: MIT */
/* The little runtime of pmvm's freestanding guests. */
#ifndef PMVM_GUEST_H
#define PMVM_GUEST_H

#include <stddef.h>
#include <stdint.h>

#include "bootinfo.h"

extern char _end[];

static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outl(uint16_t port, uint32_t v)
{
	__asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;

	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;

	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

/* A heartbeat on PMVM_HEARTBEAT_PORT about every `ms` milliseconds of
 * guest time (TSC), or every 64 calls where the TSC rate is unknown: pmvm
 * timestamps them, so the host sees how long the guest really stopped. */
struct heartbeat {
	uint64_t period;       /* TSC ticks; 0: count calls instead */
	uint64_t last;
	uint64_t calls;
};

static inline void heartbeat(struct heartbeat *h)
{
	if (h->period) {
		uint64_t now = rdtsc();

		if (now - h->last < h->period)
			return;
		h->last = now;
	} else if (++h->calls % 64) {
		return;
	}
	outl(PMVM_HEARTBEAT_PORT, 1);
}

static inline void cpu_relax(void)
{
	__asm__ volatile("pause" ::: "memory");
}

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);

void console_lock(void);
void console_unlock(void);
/* Unlocked output primitives (take console_lock around a line). */
void putc_raw(char c);
void puts_raw(const char *s);
void putu_raw(uint64_t v);
void putx_raw(uint64_t v);

uint64_t param(const struct pmvm_bootinfo *bi, const char *key, uint64_t dflt);
/* First free page after the image. */
uint64_t free_start(const struct pmvm_bootinfo *bi);
void guest_exit(uint32_t code) __attribute__((noreturn));
void heartbeat_init(struct heartbeat *h, const struct pmvm_bootinfo *bi, uint64_t ms);

/* A fast, well-mixed 64-bit hash (splitmix64 finalizer). */
static inline uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

#endif
