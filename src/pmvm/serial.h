/* SPDX-License-Identifier: MIT */
/* A 16550A UART on an I/O port range (COM1, 0x3f8): output only, enough
 * for a polling guest and for Linux's 8250 driver to probe it.  Transmit
 * is immediate (THR always empty); there is no input.  The interrupt line
 * follows IIR and MCR.OUT2 and is reported through a callback.
 * Thread-safe: vCPU threads may access it concurrently. */
#ifndef PMVM_SERIAL_H
#define PMVM_SERIAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

/* Registers that define the device; this is what migrates. */
struct pmvm_serial_state {
	uint8_t rbr, ier, fcr, lcr, mcr, lsr, msr, scr, dll, dlm;
	uint8_t thr_ipending;      /* THR-empty interrupt pending (cleared by reading IIR) */
	uint8_t reserved[5];
};

struct pmvm_serial {
	pthread_mutex_t lock;
	struct pmvm_serial_state s;
	bool irq_level;
	void (*out)(void *opaque, uint8_t byte);
	void (*irq)(void *opaque, bool level);
	void *opaque;
};

#define PMVM_UART_LSR_DR   0x01
#define PMVM_UART_LSR_THRE 0x20
#define PMVM_UART_LSR_TEMT 0x40

void pmvm_serial_init(struct pmvm_serial *u, void (*out)(void *, uint8_t),
		      void (*irq)(void *, bool), void *opaque);
void pmvm_serial_destroy(struct pmvm_serial *u);
/* One byte access at register offset off (0..7). */
void pmvm_serial_write(struct pmvm_serial *u, unsigned off, uint8_t val);
uint8_t pmvm_serial_read(struct pmvm_serial *u, unsigned off);
void pmvm_serial_save(struct pmvm_serial *u, struct pmvm_serial_state *st);
/* Returns -EINVAL if the state is not one this device can be in. */
int pmvm_serial_load(struct pmvm_serial *u, const struct pmvm_serial_state *st);

#endif
