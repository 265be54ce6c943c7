// SPDX-License-Identifier: MIT
/* Register map from the Motorola MC146818A data sheet. */
#include "rtc.h"

#include <errno.h>
#include <string.h>

#define REG_SEC     0x00
#define REG_MIN     0x02
#define REG_HOUR    0x04
#define REG_WDAY    0x06
#define REG_MDAY    0x07
#define REG_MON     0x08
#define REG_YEAR    0x09
#define REG_A       0x0a
#define REG_B       0x0b
#define REG_C       0x0c
#define REG_D       0x0d
#define REG_CENTURY 0x32   /* IBM PC convention */

#define A_DIV_32K   0x26   /* 32.768 kHz time base, 1024 Hz rate; UIP (bit 7) never set */
#define B_24H       0x02   /* 24-hour mode, BCD, no interrupts */
#define D_VRT       0x80   /* valid RAM and time */

static uint8_t bcd(int v)
{
	return (uint8_t)(((v / 10) << 4) | (v % 10));
}

void pmvm_rtc_init(struct pmvm_rtc *r)
{
	memset(r, 0, sizeof(*r));
	pthread_mutex_init(&r->lock, NULL);
	r->s.ram[REG_A] = A_DIV_32K;
	r->s.ram[REG_B] = B_24H;
	r->s.ram[REG_D] = D_VRT;
	r->now = NULL;
}

void pmvm_rtc_destroy(struct pmvm_rtc *r)
{
	pthread_mutex_destroy(&r->lock);
}

void pmvm_rtc_write(struct pmvm_rtc *r, uint16_t port, uint8_t val)
{
	pthread_mutex_lock(&r->lock);
	if (port == PMVM_RTC_INDEX_PORT) {
		r->s.index = val & 0x7f;           /* bit 7: NMI mask, nothing to mask */
	} else {
		switch (r->s.index) {
		case REG_SEC: case REG_MIN: case REG_HOUR: case REG_WDAY:
		case REG_MDAY: case REG_MON: case REG_YEAR: case REG_CENTURY:
		case REG_C: case REG_D:
			break;                     /* the host's clock; read-only status */
		case REG_A:
			r->s.ram[REG_A] = val & 0x7f;
			break;
		case REG_B:
			/* Binary mode and 12-hour mode are not offered. */
			r->s.ram[REG_B] = (uint8_t)((val & ~0x06) | B_24H);
			break;
		default:
			r->s.ram[r->s.index] = val;
			break;
		}
	}
	pthread_mutex_unlock(&r->lock);
}

uint8_t pmvm_rtc_read(struct pmvm_rtc *r, uint16_t port)
{
	uint8_t v;
	time_t t;
	struct tm tm;

	if (port == PMVM_RTC_INDEX_PORT)
		return 0xff;                       /* write-only on a PC */
	t = r->now ? r->now() : time(NULL);
	gmtime_r(&t, &tm);
	pthread_mutex_lock(&r->lock);
	switch (r->s.index) {
	case REG_SEC: v = bcd(tm.tm_sec); break;
	case REG_MIN: v = bcd(tm.tm_min); break;
	case REG_HOUR: v = bcd(tm.tm_hour); break;
	case REG_WDAY: v = bcd(tm.tm_wday + 1); break;
	case REG_MDAY: v = bcd(tm.tm_mday); break;
	case REG_MON: v = bcd(tm.tm_mon + 1); break;
	case REG_YEAR: v = bcd(tm.tm_year % 100); break;
	case REG_CENTURY: v = bcd((tm.tm_year + 1900) / 100); break;
	case REG_C: v = 0; break;                  /* no interrupt flags */
	default: v = r->s.ram[r->s.index]; break;
	}
	pthread_mutex_unlock(&r->lock);
	return v;
}

void pmvm_rtc_save(struct pmvm_rtc *r, struct pmvm_rtc_state *st)
{
	pthread_mutex_lock(&r->lock);
	*st = r->s;
	pthread_mutex_unlock(&r->lock);
}

int pmvm_rtc_load(struct pmvm_rtc *r, const struct pmvm_rtc_state *st)
{
	if (st->index > 0x7f || (st->ram[REG_B] & 0x06) != B_24H || st->ram[REG_A] & 0x80)
		return -EINVAL;
	for (unsigned i = 0; i < sizeof(st->reserved); i++)
		if (st->reserved[i])
			return -EINVAL;
	pthread_mutex_lock(&r->lock);
	r->s = *st;
	pthread_mutex_unlock(&r->lock);
	return 0;
}
