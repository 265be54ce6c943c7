/* SPDX-License-Identifier: MIT */
/* An MC146818 real-time clock and CMOS RAM on ports 0x70/0x71, as a PC
 * has it: the time is the host's (UTC, BCD, 24-hour), never "updating",
 * so Linux's rtc_cmos driver finds a working clock at once instead of
 * waiting seconds on a floating bus.  Writes to the time registers are
 * ignored (the host's clock is the clock); the rest is 128 bytes of RAM.
 * Thread-safe. */
#ifndef PMVM_RTC_H
#define PMVM_RTC_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

#define PMVM_RTC_INDEX_PORT 0x70u
#define PMVM_RTC_DATA_PORT  0x71u

/* What migrates: the selected register and the RAM. */
struct pmvm_rtc_state {
	uint8_t index;
	uint8_t reserved[7];
	uint8_t ram[128];
};

struct pmvm_rtc {
	pthread_mutex_t lock;
	struct pmvm_rtc_state s;
	time_t (*now)(void);           /* host time, replaceable for tests */
};

void pmvm_rtc_init(struct pmvm_rtc *r);
void pmvm_rtc_destroy(struct pmvm_rtc *r);
void pmvm_rtc_write(struct pmvm_rtc *r, uint16_t port, uint8_t val);
uint8_t pmvm_rtc_read(struct pmvm_rtc *r, uint16_t port);
void pmvm_rtc_save(struct pmvm_rtc *r, struct pmvm_rtc_state *st);
/* Returns -EINVAL for a state this device cannot be in. */
int pmvm_rtc_load(struct pmvm_rtc *r, const struct pmvm_rtc_state *st);

#endif
