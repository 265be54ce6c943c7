// SPDX-License-Identifier: MIT
/* Register behaviour from the National Semiconductor PC16550D data sheet. */
#include "serial.h"

#include <errno.h>
#include <string.h>

#define IER_RDI  0x01
#define IER_THRI 0x02
#define IIR_NONE 0x01
#define IIR_THRI 0x02
#define IIR_RDI  0x04
#define IIR_FIFO 0xc0
#define LCR_DLAB 0x80
#define MCR_OUT2 0x08
#define MCR_LOOP 0x10
#define MSR_CTS  0x10
#define MSR_DSR  0x20
#define MSR_RI   0x40
#define MSR_DCD  0x80

static uint8_t iir_of(const struct pmvm_serial_state *s)
{
	uint8_t fifo = (s->fcr & 1) ? IIR_FIFO : 0;

	if ((s->ier & IER_RDI) && (s->lsr & PMVM_UART_LSR_DR))
		return IIR_RDI | fifo;
	if ((s->ier & IER_THRI) && s->thr_ipending)
		return IIR_THRI | fifo;
	return IIR_NONE | fifo;
}

/* Called with the lock held; returns true if the line changed. */
static bool update_irq(struct pmvm_serial *u)
{
	bool level = !(iir_of(&u->s) & IIR_NONE) && (u->s.mcr & MCR_OUT2);

	if (level == u->irq_level)
		return false;
	u->irq_level = level;
	return true;
}

static void notify(struct pmvm_serial *u, bool changed, bool level)
{
	if (changed && u->irq)
		u->irq(u->opaque, level);
}

void pmvm_serial_init(struct pmvm_serial *u, void (*out)(void *, uint8_t),
		      void (*irq)(void *, bool), void *opaque)
{
	memset(u, 0, sizeof(*u));
	pthread_mutex_init(&u->lock, NULL);
	u->s.lsr = PMVM_UART_LSR_THRE | PMVM_UART_LSR_TEMT;
	u->s.msr = MSR_DCD | MSR_DSR | MSR_CTS;
	u->s.dll = 0x0c;   /* 9600 baud */
	u->out = out;
	u->irq = irq;
	u->opaque = opaque;
}

void pmvm_serial_destroy(struct pmvm_serial *u)
{
	pthread_mutex_destroy(&u->lock);
}

void pmvm_serial_write(struct pmvm_serial *u, unsigned off, uint8_t val)
{
	struct pmvm_serial_state *s = &u->s;
	bool changed, level;

	pthread_mutex_lock(&u->lock);
	switch (off & 7) {
	case 0:
		if (s->lcr & LCR_DLAB) {
			s->dll = val;
			break;
		}
		if (s->mcr & MCR_LOOP) {
			s->rbr = val;
			s->lsr |= PMVM_UART_LSR_DR;
		} else if (u->out) {
			u->out(u->opaque, val);
		}
		s->thr_ipending = 1;   /* sent at once: THR empty again */
		break;
	case 1:
		if (s->lcr & LCR_DLAB) {
			s->dlm = val;
			break;
		}
		/* Enabling THRI while THR is empty raises it at once. */
		if ((val & IER_THRI) && !(s->ier & IER_THRI))
			s->thr_ipending = 1;
		s->ier = val & 0x0f;
		break;
	case 2:
		s->fcr = val & 0xc9;   /* FIFO enable, DMA mode, trigger level; resets self-clear */
		break;
	case 3:
		s->lcr = val;
		break;
	case 4:
		s->mcr = val & 0x1f;
		break;
	case 5: /* LSR: factory test only */
	case 6: /* MSR: read-only */
		break;
	case 7:
		s->scr = val;
		break;
	}
	changed = update_irq(u);
	level = u->irq_level;
	pthread_mutex_unlock(&u->lock);
	notify(u, changed, level);
}

uint8_t pmvm_serial_read(struct pmvm_serial *u, unsigned off)
{
	struct pmvm_serial_state *s = &u->s;
	bool changed, level;
	uint8_t v = 0;

	pthread_mutex_lock(&u->lock);
	switch (off & 7) {
	case 0:
		if (s->lcr & LCR_DLAB) {
			v = s->dll;
			break;
		}
		v = s->rbr;
		s->lsr &= (uint8_t)~PMVM_UART_LSR_DR;
		break;
	case 1:
		v = (s->lcr & LCR_DLAB) ? s->dlm : s->ier;
		break;
	case 2:
		v = iir_of(s);
		if ((v & 0x0f) == IIR_THRI)
			s->thr_ipending = 0;
		break;
	case 3:
		v = s->lcr;
		break;
	case 4:
		v = s->mcr;
		break;
	case 5:
		v = s->lsr | PMVM_UART_LSR_THRE | PMVM_UART_LSR_TEMT;
		break;
	case 6:
		if (s->mcr & MCR_LOOP) {
			/* Loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD. */
			v = (uint8_t)(((s->mcr & 0x01) ? MSR_DSR : 0) | ((s->mcr & 0x02) ? MSR_CTS : 0) |
				      ((s->mcr & 0x04) ? MSR_RI : 0) | ((s->mcr & 0x08) ? MSR_DCD : 0));
		} else {
			v = s->msr;
		}
		break;
	case 7:
		v = s->scr;
		break;
	}
	changed = update_irq(u);
	level = u->irq_level;
	pthread_mutex_unlock(&u->lock);
	notify(u, changed, level);
	return v;
}

void pmvm_serial_save(struct pmvm_serial *u, struct pmvm_serial_state *st)
{
	pthread_mutex_lock(&u->lock);
	*st = u->s;
	pthread_mutex_unlock(&u->lock);
}

int pmvm_serial_load(struct pmvm_serial *u, const struct pmvm_serial_state *st)
{
	bool changed, level;

	if ((st->ier & 0xf0) || (st->mcr & 0xe0) || (st->fcr & ~0xc9) || st->thr_ipending > 1 ||
	    (st->lsr & ~(PMVM_UART_LSR_DR | PMVM_UART_LSR_THRE | PMVM_UART_LSR_TEMT)))
		return -EINVAL;
	for (unsigned i = 0; i < sizeof(st->reserved); i++)
		if (st->reserved[i])
			return -EINVAL;
	pthread_mutex_lock(&u->lock);
	u->s = *st;
	u->s.lsr |= PMVM_UART_LSR_THRE | PMVM_UART_LSR_TEMT;
	changed = update_irq(u);
	level = u->irq_level;
	pthread_mutex_unlock(&u->lock);
	notify(u, changed, level);
	return 0;
}
